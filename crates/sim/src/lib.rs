//! A deterministic network simulator for [`shoal_gossip::Gossip`] clusters.
//!
//! Every member is a real `Gossip` state machine; only the network is fake:
//! datagrams are delivered after a configurable latency (with jitter), lost with
//! a configurable probability, and cut by partitions; TCP exchanges succeed or
//! fail as a real connection would (refused by a crashed host, timed out across
//! a partition). One seeded RNG drives everything, so a run is reproducible.
//!
//! ```
//! use std::time::Duration;
//! use shoal_sim::Sim;
//!
//! let mut sim = Sim::new(7);
//! let a = sim.add_node("a");
//! let b = sim.add_node("b");
//! sim.join(b, a);
//! sim.run_for(Duration::from_secs(2));
//! assert!(sim.converged());
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_gossip::{Config, Event, Frame, Gossip, MemberStatus, Output, Profile, StreamRequest};

/// Something in flight.
#[derive(Debug)]
enum Delivery {
    Packet { to: usize, from: SocketAddr, data: Vec<u8> },
    StreamRequest { from: usize, req: StreamRequest },
    StreamReply { to: usize, id: u64, result: Result<Vec<u8>, String> },
    Wake { node: usize, at: Instant },
}

/// One simulated host.
pub struct SimNode {
    /// The member (None once crashed).
    pub gossip: Option<Gossip>,
    /// Its address.
    pub addr: SocketAddr,
    /// Network group for partitions: nodes in different groups cannot talk.
    pub group: u32,
    /// Events the member reported, if recording is on for it.
    pub events: Vec<(Duration, Event)>,
    /// Whether to keep events.
    pub record: bool,
    /// Bytes this host sent (datagrams and streams).
    pub bytes_sent: u64,
    /// Of which in TCP exchanges (push/pull, fallback pings), both directions' bytes it wrote.
    pub stream_bytes: u64,
    /// TCP push/pull exchanges this host started.
    pub push_pulls_started: u64,
    /// Where the host sits on a map whose unit is a millisecond of round trip: datagrams
    /// between two placed hosts take half their distance on top of [`Sim::latency`].
    pub place: Option<[f64; 2]>,
    wake: Option<Instant>,
    config: Config,
}

/// A simulated network of gossip members.
pub struct Sim {
    base: Instant,
    now: Instant,
    seq: u64,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    deliveries: HashMap<usize, Delivery>,
    next_slot: usize,
    nodes: Vec<SimNode>,
    by_addr: HashMap<SocketAddr, usize>,
    rng: StdRng,
    /// Probability that any datagram is lost.
    pub loss: f64,
    /// One-way latency.
    pub latency: Duration,
    /// Extra random latency, uniform in `[0, jitter]`.
    pub jitter: Duration,
    /// Profile for nodes added with [`Sim::add_node`].
    pub profile: Profile,
    /// When set, every datagram sent is also copied into [`Sim::captured`].
    pub capture: bool,
    /// Datagrams captured while [`Sim::capture`] was set.
    pub captured: Vec<Vec<u8>>,
    seed: u64,
}

impl Sim {
    /// An empty network with 0.5 ms latency and no loss.
    pub fn new(seed: u64) -> Sim {
        let base = Instant::now();
        Sim {
            base,
            now: base,
            seq: 0,
            queue: BinaryHeap::new(),
            deliveries: HashMap::new(),
            next_slot: 0,
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            rng: StdRng::seed_from_u64(seed),
            loss: 0.0,
            latency: Duration::from_micros(500),
            jitter: Duration::from_micros(200),
            profile: Profile::Lan,
            capture: false,
            captured: Vec::new(),
            seed,
        }
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    /// The current simulated instant.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Adds a member named `name` using [`Sim::profile`].
    pub fn add_node(&mut self, name: &str) -> usize {
        let i = self.nodes.len();
        let addr = Self::addr_for(i);
        let cfg = Config::new(name, addr, self.profile);
        self.add_node_with(cfg)
    }

    /// The address given to the `i`-th node (10.x.y.z:7946).
    pub fn addr_for(i: usize) -> SocketAddr {
        let ip = Ipv4Addr::from(0x0a00_0000u32 + 1 + i as u32);
        SocketAddr::new(IpAddr::V4(ip), 7946)
    }

    /// Adds a member with a custom configuration (its `advertise` must be unique).
    pub fn add_node_with(&mut self, mut cfg: Config) -> usize {
        let i = self.nodes.len();
        if self.by_addr.contains_key(&cfg.advertise) {
            cfg.advertise = Self::addr_for(i);
        }
        let seed = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64);
        let gossip = Gossip::new(cfg.clone(), self.now, seed).expect("valid simulated config");
        self.by_addr.insert(cfg.advertise, i);
        self.nodes.push(SimNode {
            gossip: Some(gossip),
            addr: cfg.advertise,
            group: 0,
            events: Vec::new(),
            record: false,
            bytes_sent: 0,
            stream_bytes: 0,
            push_pulls_started: 0,
            place: None,
            wake: None,
            config: cfg,
        });
        self.service(i);
        i
    }

    /// The host at `i`.
    pub fn node(&self, i: usize) -> &SimNode {
        &self.nodes[i]
    }

    /// The member at `i` (panics if crashed).
    pub fn gossip(&self, i: usize) -> &Gossip {
        self.nodes[i].gossip.as_ref().expect("node is up")
    }

    /// Runs `f` on the member at `i`, then processes what it produced.
    pub fn with<R>(&mut self, i: usize, f: impl FnOnce(&mut Gossip, Instant) -> R) -> R {
        let now = self.now;
        let g = self.nodes[i].gossip.as_mut().expect("node is up");
        let r = f(g, now);
        self.service(i);
        r
    }

    /// Number of hosts (crashed ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the network has no hosts.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Keeps `i`'s events in [`SimNode::events`].
    pub fn record(&mut self, i: usize) {
        self.nodes[i].record = true;
    }

    /// Makes `i` join through `via`.
    pub fn join(&mut self, i: usize, via: usize) {
        let addr = self.nodes[via].addr;
        self.with(i, |g, now| g.join(now, &[addr], false));
    }

    /// Stops `i` abruptly (like kill -9): no more packets, streams refused.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].gossip = None;
        self.nodes[i].wake = None;
    }

    /// Brings a crashed host back as a fresh member with the same name and address.
    pub fn restart(&mut self, i: usize) {
        let seed = self.rng.random::<u64>();
        let g = Gossip::new(self.nodes[i].config.clone(), self.now, seed).expect("valid config");
        self.nodes[i].gossip = Some(g);
        self.service(i);
    }

    /// Moves `i` to another address (a container reconnected with a new IP): the old one
    /// stops answering, and the member is told its new address.
    pub fn readdress(&mut self, i: usize, new: SocketAddr) {
        let old = self.nodes[i].addr;
        self.by_addr.remove(&old);
        self.by_addr.insert(new, i);
        self.nodes[i].addr = new;
        self.nodes[i].config.advertise = new;
        self.with(i, |g, now| g.set_advertise(now, new));
    }

    /// Whether `i` is running.
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].gossip.is_some()
    }

    /// Splits the network: each slice is a group that can only reach itself.
    pub fn partition(&mut self, groups: &[&[usize]]) {
        for (g, members) in groups.iter().enumerate() {
            for &i in *members {
                self.nodes[i].group = g as u32 + 1;
            }
        }
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        for n in &mut self.nodes {
            n.group = 0;
        }
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.nodes[a].group == self.nodes[b].group
    }

    /// One-way delay of a datagram from `a` to `b`: the base latency, jitter, and half the
    /// distance between their places.
    fn delay(&mut self, a: usize, b: usize) -> Duration {
        let j = if self.jitter.is_zero() {
            Duration::ZERO
        } else {
            self.jitter.mul_f64(self.rng.random::<f64>())
        };
        let far = match (self.nodes[a].place, self.nodes[b].place) {
            (Some(p), Some(q)) => Duration::from_secs_f64(((p[0] - q[0]).hypot(p[1] - q[1])) / 2000.0),
            _ => Duration::ZERO,
        };
        self.latency + j + far
    }

    /// Puts host `i` at `at` on the latency map (see [`SimNode::place`]).
    pub fn place(&mut self, i: usize, at: [f64; 2]) {
        self.nodes[i].place = Some(at);
    }

    fn schedule(&mut self, at: Instant, d: Delivery) {
        self.seq += 1;
        let slot = self.next_slot;
        self.next_slot += 1;
        self.deliveries.insert(slot, d);
        self.queue.push(Reverse((at, self.seq, slot)));
    }

    /// Drains `i`'s outputs into the network and re-arms its timer.
    fn service(&mut self, i: usize) {
        loop {
            let Some(g) = self.nodes[i].gossip.as_mut() else { return };
            let Some(out) = g.poll_output() else { break };
            match out {
                Output::Packet { to, data } => {
                    self.nodes[i].bytes_sent += data.len() as u64;
                    if self.capture {
                        self.captured.push(data.clone());
                    }
                    let Some(&dest) = self.by_addr.get(&to) else { continue };
                    if !self.reachable(i, dest) || self.rng.random::<f64>() < self.loss {
                        continue;
                    }
                    let at = self.now + self.delay(i, dest);
                    let from = self.nodes[i].addr;
                    self.schedule(at, Delivery::Packet { to: dest, from, data });
                }
                Output::Stream(req) => {
                    self.nodes[i].bytes_sent += req.data.len() as u64;
                    self.nodes[i].stream_bytes += req.data.len() as u64;
                    if req.kind == shoal_gossip::StreamKind::PushPull {
                        self.nodes[i].push_pulls_started += 1;
                    }
                    let at = self.now + self.delay(i, i);
                    self.schedule(at, Delivery::StreamRequest { from: i, req });
                }
                Output::Event(e) => {
                    if self.nodes[i].record {
                        let t = self.elapsed();
                        self.nodes[i].events.push((t, e));
                    }
                }
            }
        }
        let next = self.nodes[i].gossip.as_ref().and_then(Gossip::poll_timeout);
        if let Some(at) = next
            && self.nodes[i].wake != Some(at)
        {
            self.nodes[i].wake = Some(at);
            self.schedule(at.max(self.now), Delivery::Wake { node: i, at });
        }
    }

    fn deliver(&mut self, d: Delivery) {
        let now = self.now;
        match d {
            Delivery::Wake { node, at } => {
                if self.nodes[node].wake != Some(at) {
                    return; // superseded by another schedule
                }
                self.nodes[node].wake = None;
                if let Some(g) = self.nodes[node].gossip.as_mut() {
                    g.handle_timeout(now);
                }
                self.service(node);
            }
            Delivery::Packet { to, from, data } => {
                if let Some(g) = self.nodes[to].gossip.as_mut() {
                    g.handle_packet(now, from, &data);
                    self.service(to);
                }
            }
            Delivery::StreamRequest { from, req } => {
                let dest = self.by_addr.get(&req.to).copied();
                let result = match dest {
                    Some(d) if self.nodes[d].gossip.is_some() && self.reachable(from, d) => {
                        // Exercise the framing a real driver relies on.
                        let frame = shoal_gossip::stream_frame_len(&req.data, 64 << 20);
                        assert_eq!(frame, Ok(Frame::Complete(req.data.len())), "stream framing");
                        let from_addr = self.nodes[from].addr;
                        let g = self.nodes[d].gossip.as_mut().expect("checked above");
                        let reply = g.handle_stream(now, from_addr, &req.data);
                        self.service(d);
                        match reply {
                            Some(r) => {
                                self.nodes[d].bytes_sent += r.len() as u64;
                                self.nodes[d].stream_bytes += r.len() as u64;
                                Ok(r)
                            }
                            None => Err("closed without reply".to_string()),
                        }
                    }
                    // A host that is down refuses at once; a partition times out.
                    Some(d) if self.nodes[d].gossip.is_none() && self.reachable(from, d) => {
                        Err("connection refused".to_string())
                    }
                    _ => {
                        let at = req.deadline.max(now);
                        self.schedule(
                            at,
                            Delivery::StreamReply { to: from, id: req.id, result: Err("timeout".into()) },
                        );
                        return;
                    }
                };
                let at = now + self.delay(from, from);
                self.schedule(at, Delivery::StreamReply { to: from, id: req.id, result });
            }
            Delivery::StreamReply { to, id, result } => {
                if let Some(g) = self.nodes[to].gossip.as_mut() {
                    g.handle_stream_reply(now, id, result);
                    self.service(to);
                }
            }
        }
    }

    /// Advances simulated time by `d`, processing everything due.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(&Reverse((at, _, slot))) = self.queue.peek() {
            if at > end {
                break;
            }
            self.queue.pop();
            self.now = self.now.max(at);
            if let Some(delivery) = self.deliveries.remove(&slot) {
                self.deliver(delivery);
            }
        }
        self.now = end;
    }

    /// Runs until `done` holds (checked every `step`) or `limit` passes; returns the time taken.
    pub fn run_until(
        &mut self,
        step: Duration,
        limit: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        while self.now - start < limit {
            if done(self) {
                return Some(self.now - start);
            }
            self.run_for(step);
        }
        done(self).then(|| self.now - start)
    }

    /// How many running members see `target` with `status`.
    pub fn count_seeing(&self, target: &str, status: MemberStatus) -> usize {
        self.nodes
            .iter()
            .filter_map(|n| n.gossip.as_ref())
            .filter(|g| g.member(target).is_some_and(|m| m.status == status))
            .count()
    }

    /// Fraction of (observer, member) pairs among running nodes where the observer sees the member alive.
    pub fn alive_fraction(&self) -> f64 {
        let up: Vec<&Gossip> = self.nodes.iter().filter_map(|n| n.gossip.as_ref()).collect();
        let total = (up.len() * up.len()) as f64;
        if total == 0.0 {
            return 1.0;
        }
        let seen: usize = up
            .iter()
            .map(|g| {
                up.iter()
                    .filter(|o| g.member(o.name()).is_some_and(|m| m.status == MemberStatus::Alive))
                    .count()
            })
            .sum();
        seen as f64 / total
    }

    /// Whether every running member sees every running member alive.
    pub fn converged(&self) -> bool {
        self.alive_fraction() >= 1.0
    }

    /// Members that some running node considers failed although they are running.
    pub fn false_failures(&self) -> usize {
        let up: Vec<&Gossip> = self.nodes.iter().filter_map(|n| n.gossip.as_ref()).collect();
        up.iter()
            .map(|g| {
                up.iter()
                    .filter(|o| g.member(o.name()).is_some_and(|m| m.status == MemberStatus::Failed))
                    .count()
            })
            .sum()
    }

    /// Total bytes sent by all hosts.
    pub fn total_bytes(&self) -> u64 {
        self.nodes.iter().map(|n| n.bytes_sent).sum()
    }

    /// Total bytes written into TCP exchanges by all hosts.
    pub fn total_stream_bytes(&self) -> u64 {
        self.nodes.iter().map(|n| n.stream_bytes).sum()
    }

    /// Total push/pull exchanges started by all hosts.
    pub fn total_push_pulls(&self) -> u64 {
        self.nodes.iter().map(|n| n.push_pulls_started).sum()
    }
}
