//! memberlist's layer: SWIM failure detection with Lifeguard, and dissemination.
//!
//! Each probe period one member is pinged (round-robin over a shuffled list).
//! No ack within the probe timeout: `k` peers are asked to ping it indirectly
//! (and to nack if they fail), and a TCP ping is tried. No ack by the end of the
//! period: the member becomes *suspect*. Suspicion lasts long enough for the
//! member to refute it (by raising its incarnation), shrinking as independent
//! peers confirm it (Lifeguard), and then the member is declared *dead*.
//! Missed nacks raise our own health score, which stretches our probe deadline
//! (Lifeguard's local health awareness). News travels piggy-backed on pings and
//! acks and on periodic gossip to a few random members; a periodic TCP
//! push/pull of the full state repairs whatever gossip missed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::seq::SliceRandom;

use crate::envelope::{DropReason, make_compound};
use crate::gossip::{Gossip, StreamPurpose, StreamRequest, VERSIONS, ip_from_wire, ip_to_wire};
use crate::messages::{self as msg, kind, node_state};
use crate::mp::{self, Wire};
use crate::timers::{Timer, TimerId};

/// memberlist's view of a node's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Alive,
    Suspect,
    Dead,
    Left,
}

impl State {
    fn wire(self) -> u8 {
        match self {
            State::Alive => node_state::ALIVE,
            State::Suspect => node_state::SUSPECT,
            State::Dead => node_state::DEAD,
            State::Left => node_state::LEFT,
        }
    }

    pub fn dead_or_left(self) -> bool {
        matches!(self, State::Dead | State::Left)
    }
}

/// One entry of memberlist's node table.
#[derive(Debug, Clone)]
pub(crate) struct NodeState {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub meta: Arc<[u8]>,
    pub incarnation: u32,
    pub state: State,
    pub state_change: Instant,
    pub versions: [u8; 6],
}

impl NodeState {
    pub fn to_push_state(&self) -> msg::PushNodeState {
        msg::PushNodeState {
            name: self.name.to_string(),
            addr: ip_to_wire(self.addr.ip()),
            port: self.addr.port(),
            meta: self.meta.to_vec(),
            incarnation: self.incarnation,
            state: self.state.wire(),
            vsn: self.versions.to_vec(),
        }
    }
}

/// A decoded `alive` claim.
#[derive(Debug, Clone)]
pub(crate) struct AliveInfo {
    pub incarnation: u32,
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub meta: Arc<[u8]>,
    pub versions: Option<[u8; 6]>,
}

impl AliveInfo {
    pub fn from_wire(a: &msg::Alive, default_port: u16) -> Result<AliveInfo, DropReason> {
        let ip = ip_from_wire(&a.addr).ok_or(DropReason::Malformed)?;
        let port = if a.port == 0 { default_port } else { a.port };
        Ok(AliveInfo {
            incarnation: a.incarnation,
            name: Arc::from(a.node.as_str()),
            addr: SocketAddr::new(ip, port),
            meta: Arc::from(a.meta.as_slice()),
            versions: <[u8; 6]>::try_from(a.vsn.as_slice()).ok(),
        })
    }

    fn to_wire(&self) -> msg::Alive {
        msg::Alive {
            incarnation: self.incarnation,
            node: self.name.to_string(),
            addr: ip_to_wire(self.addr.ip()),
            port: self.addr.port(),
            meta: self.meta.to_vec(),
            vsn: self.versions.map(|v| v.to_vec()).unwrap_or_default(),
        }
    }
}

/// How far past a known member's incarnation a message about it may claim to be. Members bump
/// their incarnation once per refutation or tag change; a bigger jump is a forgery meant to leave
/// the member unable to refute (incarnations are 32-bit and never wrap here).
const INCARNATION_HORIZON: u32 = 1 << 20;
/// Indirect probes relayed for others at once.
const RELAYS_MAX: usize = 1024;
/// Most refused names remembered so that each is logged once.
const REFUSED_LOGGED_MAX: usize = 1024;

/// Checks what an `alive` claim would put into the view: name, metadata, address.
fn check_claim(a: &AliveInfo) -> Result<(), crate::limits::Violation> {
    crate::limits::check_name(&a.name)?;
    crate::limits::check_meta(&a.meta)?;
    crate::limits::check_addr(a.addr)
}

/// A peer's state as received in a push/pull exchange.
#[derive(Debug)]
pub(crate) struct RemoteState {
    pub join: bool,
    pub nodes: Vec<msg::PushNodeState>,
    pub user: Vec<u8>,
}

impl RemoteState {
    pub fn decode(body: &[u8]) -> Result<RemoteState, DropReason> {
        let mut r = mp::Reader::new(body);
        let header = msg::PushPullHeader::take(&mut r)?;
        let mut nodes = Vec::with_capacity((header.nodes as usize).min(body.len() / 8 + 1));
        for _ in 0..header.nodes {
            nodes.push(msg::PushNodeState::take(&mut r)?);
        }
        let user = r.rest().get(..header.user_state_len as usize).ok_or(DropReason::Truncated)?;
        Ok(RemoteState { join: header.join, nodes, user: user.to_vec() })
    }
}

/// The probe in flight.
#[derive(Debug)]
pub(crate) struct Probe {
    pub seq: u32,
    pub target: Arc<str>,
    pub sent: Instant,
    pub expected_nacks: u32,
    pub nacks: u32,
    pub fallback_pending: bool,
    pub fallback_contacted: bool,
    pub deadline_passed: bool,
    /// The probe timeout passed: later acks may come through relays, so their round trip
    /// says nothing of the direct path (no coordinate update, as in memberlist).
    pub indirect: bool,
    pub timers: Vec<TimerId>,
}

/// A ping we send on behalf of another member.
#[derive(Debug)]
pub(crate) struct Relay {
    pub origin: SocketAddr,
    pub origin_node: String,
    pub origin_seq: u32,
    pub want_nack: bool,
}

/// Lifeguard suspicion of one member.
#[derive(Debug)]
pub(crate) struct Suspicion {
    /// Confirmations wanted before the timeout reaches its minimum.
    pub k: u32,
    pub confirmations: HashSet<String>,
    pub min: Duration,
    pub max: Duration,
    pub start: Instant,
    pub timer: TimerId,
}

/// `suspicion_mult * max(1, log10(n)) * interval`: the shortest suspicion.
pub(crate) fn suspicion_timeout(mult: u32, n: usize, interval: Duration) -> Duration {
    let scale = (n.max(1) as f64).log10().max(1.0);
    let millis = (scale * 1000.0).floor() as u64;
    interval * mult * (millis as u32) / 1000
}

/// Lifeguard: the remaining suspicion after `n` of `k` wanted confirmations.
pub(crate) fn remaining_suspicion(
    n: u32,
    k: u32,
    elapsed: Duration,
    min: Duration,
    max: Duration,
) -> Duration {
    let frac = (f64::from(n) + 1.0).ln() / (f64::from(k) + 1.0).ln();
    let raw = max.as_secs_f64() - frac * (max.as_secs_f64() - min.as_secs_f64());
    let timeout = Duration::from_millis((1000.0 * raw).floor().max(0.0) as u64).max(min);
    timeout.saturating_sub(elapsed)
}

/// memberlist scales the push/pull interval beyond 32 members.
fn push_pull_scale(interval: Duration, n: usize) -> Duration {
    const THRESHOLD: usize = 32;
    if n <= THRESHOLD {
        return interval;
    }
    let mult = ((n as f64).log2() - (THRESHOLD as f64).log2()).ceil() + 1.0;
    interval.mul_f64(mult)
}

impl Gossip {
    /// Registers ourselves as alive (incarnation 1) at start-up.
    pub(crate) fn set_alive(&mut self, now: Instant, meta: Vec<u8>) {
        self.incarnation += 1;
        let a = AliveInfo {
            incarnation: self.incarnation,
            name: self.name.clone(),
            addr: self.advertise,
            meta: Arc::from(meta),
            versions: Some(VERSIONS),
        };
        self.alive_node(now, a, None, true);
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn self_ping(&mut self, target: &str) -> msg::Ping {
        msg::Ping {
            seq_no: self.next_seq(),
            node: target.to_string(),
            source_addr: ip_to_wire(self.advertise.ip()),
            source_port: self.advertise.port(),
            source_node: self.name.to_string(),
        }
    }

    pub(crate) fn node(&self, name: &str) -> Option<&NodeState> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    fn node_mut(&mut self, name: &str) -> Option<&mut NodeState> {
        self.index.get(name).map(|&i| &mut self.nodes[i])
    }

    fn apply_awareness(&mut self, delta: i64) {
        let max = i64::from(self.cfg.timing.awareness_max_multiplier.max(1)) - 1;
        self.awareness = (i64::from(self.awareness) + delta).clamp(0, max) as u32;
    }

    /// Up to `k` random nodes accepted by `keep` (memberlist's `kRandomNodes`).
    pub(crate) fn k_random_nodes(&mut self, k: usize, keep: impl Fn(&NodeState) -> bool) -> Vec<usize> {
        let n = self.nodes.len();
        let mut picked = Vec::with_capacity(k);
        for _ in 0..3 * n {
            if picked.len() >= k {
                break;
            }
            let i = self.rng.random_range(0..n);
            if picked.contains(&i) || !keep(&self.nodes[i]) {
                continue;
            }
            picked.push(i);
        }
        picked
    }

    pub(crate) fn any_alive_node(&self) -> bool {
        self.nodes.iter().any(|n| !n.state.dead_or_left() && n.name != self.name)
    }

    // -------------------------------------------------------- ping / ack

    pub(crate) fn handle_ping(
        &mut self,
        _now: Instant,
        from: SocketAddr,
        p: msg::Ping,
    ) -> Result<(), DropReason> {
        if !p.node.is_empty() && *p.node != *self.name {
            return Err(DropReason::WrongNode);
        }
        let payload = self.vivaldi.as_ref().map(|v| v.coordinate().ack_payload()).unwrap_or_default();
        let ack = mp::encode_with_type(kind::ACK, &msg::Ack { seq_no: p.seq_no, payload });
        let to = reply_addr(&p.source_addr, p.source_port).unwrap_or(from);
        let node = (!p.source_node.is_empty()).then_some(p.source_node.as_str());
        self.send_msg(to, node, ack);
        Ok(())
    }

    pub(crate) fn handle_indirect_ping(
        &mut self,
        now: Instant,
        from: SocketAddr,
        ind: msg::IndirectPing,
    ) -> Result<(), DropReason> {
        let ip = ip_from_wire(&ind.target).ok_or(DropReason::Malformed)?;
        let port = if ind.port == 0 { self.advertise.port() } else { ind.port };
        let target = SocketAddr::new(ip, port);
        // Anyone can ask for an indirect probe: never of a broadcast or multicast address, and
        // never more at once than a cluster's worth (each costs a timer and a datagram).
        crate::limits::check_addr(target).map_err(|_| DropReason::Refused)?;
        if self.relays.len() >= RELAYS_MAX {
            return Err(DropReason::Throttled);
        }
        let ping = self.self_ping(&ind.node);
        let seq = ping.seq_no;
        let origin = reply_addr(&ind.source_addr, ind.source_port).unwrap_or(from);
        self.relays.insert(
            seq,
            Relay {
                origin,
                origin_node: ind.source_node.clone(),
                origin_seq: ind.seq_no,
                want_nack: ind.nack,
            },
        );
        // memberlist's asker stops counting nacks at the end of its probe interval, which is
        // exactly when a relay waiting the full probe timeout would send one: nack a little
        // earlier so the nack arrives in time, but keep forwarding a late ack until the timeout.
        let timeout = self.cfg.timing.probe_timeout;
        self.timers.at(now + timeout.mul_f64(0.8), Timer::RelayNack(seq));
        self.timers.at(now + timeout, Timer::RelayExpire(seq));
        let m = mp::encode_with_type(kind::PING, &ping);
        let node = (!ind.node.is_empty()).then_some(ind.node.as_str());
        self.send_msg(target, node, m);
        Ok(())
    }

    pub(crate) fn relay_nack(&mut self, _now: Instant, seq: u32) {
        let Some(relay) = self.relays.get_mut(&seq) else { return };
        if !std::mem::take(&mut relay.want_nack) {
            return;
        }
        let (origin, origin_seq) = (relay.origin, relay.origin_seq);
        let node = (!relay.origin_node.is_empty()).then(|| relay.origin_node.clone());
        let nack = mp::encode_with_type(kind::NACK, &msg::Nack { seq_no: origin_seq });
        self.send_msg(origin, node.as_deref(), nack);
    }

    pub(crate) fn handle_ack(
        &mut self,
        now: Instant,
        from: SocketAddr,
        ack: msg::Ack,
    ) -> Result<(), DropReason> {
        if let Some(relay) = self.relays.remove(&ack.seq_no) {
            let fwd =
                mp::encode_with_type(kind::ACK, &msg::Ack { seq_no: relay.origin_seq, payload: vec![] });
            let node = (!relay.origin_node.is_empty()).then_some(relay.origin_node.as_str());
            self.send_msg(relay.origin, node, fwd);
            return Ok(());
        }
        let Some(p) = self.probe.as_ref().filter(|p| p.seq == ack.seq_no && !p.deadline_passed) else {
            return Ok(());
        };
        if !p.indirect && !ack.payload.is_empty() {
            let (target, rtt) = (p.target.clone(), now.saturating_duration_since(p.sent));
            self.observe_coordinate(from, &target, &ack.payload, rtt);
        }
        self.finish_probe(now, true);
        Ok(())
    }

    /// A direct ack's coordinate and round trip: Serf's Vivaldi update. A payload that is not a
    /// valid coordinate is counted (`dropped{reason=coordinate}`) and ignored; the ack counts.
    fn observe_coordinate(&mut self, from: SocketAddr, target: &Arc<str>, payload: &[u8], rtt: Duration) {
        let Some(vivaldi) = self.vivaldi.as_mut() else { return };
        match crate::coordinate::Coordinate::from_ack_payload(payload) {
            Ok(c) => {
                if let Err(why) = vivaldi.observe(&mut self.rng, target, c, rtt) {
                    tracing::debug!(node = %target, ?why, ?rtt, "coordinate update rejected");
                }
            }
            Err(reason) => self.drop_input(reason, from),
        }
    }

    pub(crate) fn handle_nack(&mut self, nack: msg::Nack) -> Result<(), DropReason> {
        if let Some(p) = self.probe.as_mut().filter(|p| p.seq == nack.seq_no) {
            p.nacks += 1;
        } else if let Some((seq, _, received)) = self.nack_window.as_mut()
            && *seq == nack.seq_no
        {
            *received += 1;
        }
        Ok(())
    }

    /// Lifeguard: nacks we expected but never got mean *we* may be the problem.
    pub(crate) fn nack_grace_over(&mut self, seq: u32) {
        if let Some((s, expected, received)) = self.nack_window
            && s == seq
        {
            self.nack_window = None;
            self.apply_awareness(i64::from(expected.saturating_sub(received)));
        }
    }

    // -------------------------------------------------------- probing

    pub(crate) fn probe_tick(&mut self, now: Instant) {
        let interval = self.cfg.timing.probe_interval;
        if let Some(p) = &self.probe {
            // Still busy with the last probe: try again once it is over.
            let retry = (p.sent + interval * (self.awareness + 1)).max(now + interval / 10);
            self.timers.at(retry, Timer::ProbeTick);
            return;
        }
        if let Some(target) = self.next_probe_target(now) {
            self.start_probe(now, target);
        }
        // Scheduled after the probe's own timers: at equal instants its deadline fires first.
        self.timers.at(now + interval, Timer::ProbeTick);
    }

    /// Round-robin over the shuffled node list, reshuffling (and dropping
    /// long-dead nodes) at the end of each round.
    fn next_probe_target(&mut self, now: Instant) -> Option<usize> {
        let mut checked = 0;
        while checked < self.nodes.len() {
            if self.probe_index >= self.nodes.len() {
                self.reset_nodes(now);
                self.probe_index = 0;
                checked += 1;
                continue;
            }
            let i = self.probe_index;
            self.probe_index += 1;
            let n = &self.nodes[i];
            if n.name == self.name || n.state.dead_or_left() {
                checked += 1;
                continue;
            }
            return Some(i);
        }
        None
    }

    /// Forgets nodes dead for longer than `gossip_to_the_dead` and reshuffles.
    fn reset_nodes(&mut self, now: Instant) {
        let keep_for = self.cfg.timing.gossip_to_the_dead;
        let me = self.name.clone();
        let before = self.nodes.len();
        self.nodes.retain(|n| {
            n.name == me
                || !n.state.dead_or_left()
                || now.saturating_duration_since(n.state_change) <= keep_for
        });
        if self.nodes.len() != before {
            let alive: HashSet<&Arc<str>> = self.nodes.iter().map(|n| &n.name).collect();
            self.suspicions.retain(|k, _| alive.contains(k));
        }
        self.nodes.shuffle(&mut self.rng);
        self.rebuild_index();
    }

    pub(crate) fn rebuild_index(&mut self) {
        self.index.clear();
        for (i, n) in self.nodes.iter().enumerate() {
            self.index.insert(n.name.clone(), i);
        }
    }

    fn start_probe(&mut self, now: Instant, i: usize) {
        self.stats.probes += 1;
        let target = self.nodes[i].clone();
        let ping = self.self_ping(&target.name);
        let seq = ping.seq_no;
        let ping_msg = mp::encode_with_type(kind::PING, &ping);
        if target.state == State::Alive {
            self.send_msg(target.addr, Some(&target.name), ping_msg);
        } else {
            // A suspect gets the accusation along with the ping, so it can refute at once.
            let s = msg::Suspect {
                incarnation: target.incarnation,
                node: target.name.to_string(),
                from: self.name.to_string(),
            };
            let sus = mp::encode_with_type(kind::SUSPECT, &s);
            let compound = make_compound(&[&ping_msg, &sus]);
            self.raw_send(target.addr, Some(&target.name), &compound);
        }
        let deadline = now + self.cfg.timing.probe_interval * (self.awareness + 1);
        let t1 = self.timers.at(now + self.cfg.timing.probe_timeout, Timer::ProbeNoAck(seq));
        let t2 = self.timers.at(deadline, Timer::ProbeDeadline(seq));
        self.probe = Some(Probe {
            seq,
            target: target.name.clone(),
            sent: now,
            expected_nacks: 0,
            nacks: 0,
            fallback_pending: false,
            fallback_contacted: false,
            deadline_passed: false,
            indirect: false,
            timers: vec![t1, t2],
        });
    }

    /// No direct ack in time: ask `k` peers to probe, and try TCP.
    pub(crate) fn probe_no_ack(&mut self, now: Instant, seq: u32) {
        let Some(p) = self.probe.as_ref().filter(|p| p.seq == seq) else { return };
        let target_name = p.target.clone();
        let deadline = p.sent + self.cfg.timing.probe_interval * (self.awareness + 1);
        let Some(target) = self.node(&target_name).cloned() else {
            self.probe = None;
            return;
        };
        tracing::debug!(node = %target.name, "no direct ack; probing indirectly");
        if let Some(p) = self.probe.as_mut() {
            p.indirect = true;
        }
        let me = self.name.clone();
        let peers = self.k_random_nodes(self.cfg.timing.indirect_checks, |n| {
            n.name != me && n.name != target.name && n.state == State::Alive
        });
        let mut expected_nacks = 0;
        for i in peers {
            let peer = self.nodes[i].clone();
            let nack = peer.versions[1] >= 4;
            expected_nacks += u32::from(nack);
            let ind = msg::IndirectPing {
                seq_no: seq,
                target: ip_to_wire(target.addr.ip()),
                port: target.addr.port(),
                node: target.name.to_string(),
                nack,
                source_addr: ip_to_wire(self.advertise.ip()),
                source_port: self.advertise.port(),
                source_node: self.name.to_string(),
            };
            let m = mp::encode_with_type(kind::INDIRECT_PING, &ind);
            self.send_msg(peer.addr, Some(&peer.name), m);
        }
        let fallback = target.versions[1] >= 3;
        if fallback {
            let ping = msg::Ping {
                seq_no: seq,
                node: target.name.to_string(),
                source_addr: ip_to_wire(self.advertise.ip()),
                source_port: self.advertise.port(),
                source_node: self.name.to_string(),
            };
            let data = mp::encode_with_type(kind::PING, &ping);
            let data = self.env.seal_stream(&mut self.rng, &data);
            let id = self.next_id();
            self.streams.insert(id, StreamPurpose::FallbackPing { seq });
            self.out.push_back(crate::gossip::Output::Stream(StreamRequest {
                id,
                kind: crate::gossip::StreamKind::Ping,
                to: target.addr,
                data,
                deadline: deadline.max(now),
            }));
        }
        if let Some(p) = self.probe.as_mut() {
            p.expected_nacks = expected_nacks;
            p.fallback_pending = fallback;
        }
    }

    pub(crate) fn fallback_result(&mut self, now: Instant, seq: u32, contacted: bool) {
        let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) else { return };
        p.fallback_pending = false;
        p.fallback_contacted = contacted;
        if contacted {
            tracing::warn!(node = %p.target, "reached over TCP but not UDP; network may be misconfigured");
        }
        if p.deadline_passed || contacted {
            self.finish_probe(now, contacted);
        }
    }

    pub(crate) fn probe_deadline(&mut self, now: Instant, seq: u32, grace_over: bool) {
        let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) else { return };
        p.deadline_passed = true;
        if p.fallback_pending && !grace_over {
            // memberlist waits for its TCP fallback before deciding; give it a little longer.
            let t = self.timers.at(now + self.cfg.timing.probe_timeout, Timer::ProbeGrace(seq));
            p.timers.push(t);
            return;
        }
        let ok = p.fallback_contacted;
        self.finish_probe(now, ok);
    }

    fn finish_probe(&mut self, now: Instant, ok: bool) {
        let Some(p) = self.probe.take() else { return };
        for t in &p.timers {
            self.timers.cancel(*t);
        }
        if ok {
            self.apply_awareness(-1);
            return;
        }
        if p.expected_nacks > 0 {
            // Give nacks that are already on their way a moment to arrive before judging ourselves.
            if let Some((seq, _, _)) = self.nack_window {
                self.nack_grace_over(seq);
            }
            self.nack_window = Some((p.seq, p.expected_nacks, p.nacks));
            self.timers.at(now + self.cfg.timing.probe_timeout / 4, Timer::NackGrace(p.seq));
        } else {
            self.apply_awareness(1);
        }
        self.stats.probe_failures += 1;
        let Some(inc) = self.node(&p.target).map(|n| n.incarnation) else { return };
        tracing::info!(node = %p.target, "suspect has failed, no acks received");
        let me = self.name.to_string();
        self.suspect_node(now, &p.target, inc, &me);
    }

    // -------------------------------------------------------- state changes

    /// Queues a memberlist broadcast about `node` (replacing older news about it).
    fn broadcast_about(&mut self, node: &Arc<str>, m: Vec<u8>, notify: Option<u64>) {
        self.ml_queue.push(Arc::from(m), Some(node.clone()), notify, &mut self.finished);
    }

    pub(crate) fn alive_node(&mut self, now: Instant, a: AliveInfo, notify: Option<u64>, bootstrap: bool) {
        let is_local = a.name == self.name;
        if self.has_left && is_local {
            return;
        }
        if let Some(v) = a.versions
            && (v[0] == 0 || v[1] == 0 || v[0] > v[1])
        {
            tracing::warn!(node = %a.name, "ignoring alive message with invalid protocol versions");
            return;
        }
        let known = self.index.get(&a.name).map(|&i| &self.nodes[i]);
        if let Some(n) = known
            && !is_local
            && a.incarnation > n.incarnation.saturating_add(INCARNATION_HORIZON)
        {
            self.drop_input(DropReason::Forged, a.addr);
            return;
        }
        if known.is_none() && self.nodes.len() >= self.cfg.max_members {
            self.drop_input(DropReason::Throttled, a.addr);
            return;
        }
        let claim_changed = known.is_none_or(|n| n.meta != a.meta || n.addr != a.addr);
        if claim_changed && let Err(why) = check_claim(&a) {
            self.refuse_member(&a.name, a.addr, &why);
            return;
        }
        let mut updates_node = false;
        let idx = match self.index.get(&a.name) {
            None => {
                // New node: insert at a random position so probe order stays random.
                let state = NodeState {
                    name: a.name.clone(),
                    addr: a.addr,
                    meta: a.meta.clone(),
                    incarnation: 0,
                    state: State::Dead,
                    state_change: now,
                    versions: a.versions.unwrap_or([0; 6]),
                };
                self.nodes.push(state);
                let last = self.nodes.len() - 1;
                let offset = self.rng.random_range(0..=last);
                self.nodes.swap(offset, last);
                let (moved, placed) = (self.nodes[last].name.clone(), self.nodes[offset].name.clone());
                self.index.insert(moved, last);
                self.index.insert(placed, offset);
                offset
            }
            Some(&i) => {
                let n = &self.nodes[i];
                if n.addr != a.addr {
                    let reclaim = self.cfg.timing.dead_node_reclaim_time;
                    let can_reclaim =
                        !reclaim.is_zero() && now.saturating_duration_since(n.state_change) > reclaim;
                    if n.state == State::Left || (n.state == State::Dead && can_reclaim) {
                        tracing::info!(node = %n.name, old = %n.addr, new = %a.addr, "updating address of departed node");
                        updates_node = true;
                    } else {
                        tracing::error!(node = %n.name, mine = %n.addr, theirs = %a.addr, "conflicting address for node");
                        if is_local {
                            self.emit(crate::event::Event::NameConflict { other: a.addr });
                        }
                        return;
                    }
                }
                i
            }
        };
        let n = &self.nodes[idx];
        if a.incarnation <= n.incarnation && !is_local && !updates_node {
            return;
        }
        if a.incarnation < n.incarnation && is_local {
            return;
        }
        if let Some(s) = self.suspicions.remove(&a.name) {
            self.timers.cancel(s.timer);
        }
        let old_state = n.state;
        let old_meta = n.meta.clone();
        if !bootstrap && is_local {
            let same = a.incarnation == n.incarnation
                && a.meta == n.meta
                && a.versions.is_none_or(|v| v == n.versions);
            if same {
                return;
            }
            tracing::warn!("refuting an alive message claiming to be us");
            self.refute(a.incarnation);
            return;
        }
        let m = mp::encode_with_type(kind::ALIVE, &a.to_wire());
        self.broadcast_about(&a.name, m, notify);
        let n = &mut self.nodes[idx];
        if let Some(v) = a.versions {
            n.versions = v;
        }
        n.incarnation = a.incarnation;
        n.meta = a.meta.clone();
        n.addr = a.addr;
        if n.state != State::Alive {
            n.state = State::Alive;
            n.state_change = now;
        }
        let node = n.clone();
        if old_state.dead_or_left() {
            self.notify_join(now, &node);
        } else if old_meta != node.meta || updates_node {
            self.notify_update(now, &node);
        }
    }

    /// Counts a refused member claim and logs it the first time its name is seen.
    pub(crate) fn refuse_member(&mut self, name: &str, addr: SocketAddr, why: &crate::limits::Violation) {
        self.drop_input(DropReason::Refused, addr);
        if self.refused.len() < REFUSED_LOGGED_MAX && self.refused.insert(Arc::from(name)) {
            tracing::warn!(
                node = %crate::escape::Esc(name), %addr, reason = %why,
                "member refused: its claim breaks the membership limits (logged once per name)"
            );
        }
    }

    /// Raises our incarnation above `accused` and re-announces ourselves.
    fn refute(&mut self, accused: u32) {
        self.incarnation = self.incarnation.saturating_add(1).max(accused.saturating_add(1));
        self.apply_awareness(1);
        let inc = self.incarnation;
        let name = self.name.clone();
        let Some(me) = self.node_mut(&name) else { return };
        me.incarnation = inc;
        let a = AliveInfo {
            incarnation: inc,
            name: me.name.clone(),
            addr: me.addr,
            meta: me.meta.clone(),
            versions: Some(me.versions),
        };
        let m = mp::encode_with_type(kind::ALIVE, &a.to_wire());
        self.broadcast_about(&name, m, None);
    }

    pub(crate) fn suspect_node(&mut self, now: Instant, node: &str, incarnation: u32, from: &str) {
        let Some(&i) = self.index.get(node) else { return };
        if incarnation < self.nodes[i].incarnation {
            return;
        }
        if incarnation > self.nodes[i].incarnation.saturating_add(INCARNATION_HORIZON) {
            let addr = self.nodes[i].addr;
            self.drop_input(DropReason::Forged, addr);
            return;
        }
        let name = self.nodes[i].name.clone();
        if self.suspicions.contains_key(node) {
            if self.confirm_suspicion(now, &name, from) {
                let s = msg::Suspect { incarnation, node: node.to_string(), from: from.to_string() };
                self.broadcast_about(&name, mp::encode_with_type(kind::SUSPECT, &s), None);
            }
            return;
        }
        if self.nodes[i].state != State::Alive {
            return;
        }
        if name == self.name {
            tracing::warn!(from, "refuting a suspicion of us");
            self.refute(incarnation);
            return;
        }
        let s = msg::Suspect { incarnation, node: node.to_string(), from: from.to_string() };
        self.broadcast_about(&name, mp::encode_with_type(kind::SUSPECT, &s), None);
        let n = &mut self.nodes[i];
        n.incarnation = incarnation;
        n.state = State::Suspect;
        n.state_change = now;

        let t = &self.cfg.timing;
        let count = self.nodes.len();
        let mut k = t.suspicion_mult.saturating_sub(2);
        if count.saturating_sub(2) < k as usize {
            k = 0;
        }
        let min = suspicion_timeout(t.suspicion_mult, count, t.probe_interval);
        let max = min * t.suspicion_max_timeout_mult;
        let timeout = if k < 1 { min } else { max };
        let timer = self.timers.at(now + timeout, Timer::Suspicion(name.clone()));
        self.suspicions.insert(
            name,
            Suspicion { k, confirmations: HashSet::from([from.to_string()]), min, max, start: now, timer },
        );
    }

    /// Counts an independent confirmation; the timeout shrinks (Lifeguard).
    fn confirm_suspicion(&mut self, now: Instant, node: &Arc<str>, from: &str) -> bool {
        let Some(s) = self.suspicions.get_mut(node) else { return false };
        let n = s.confirmations.len() as u32 - 1;
        if n >= s.k || s.confirmations.contains(from) {
            return false;
        }
        s.confirmations.insert(from.to_string());
        let remaining = remaining_suspicion(n + 1, s.k, now.saturating_duration_since(s.start), s.min, s.max);
        let old = s.timer;
        s.timer = self.timers.at(now + remaining, Timer::Suspicion(node.clone()));
        self.timers.cancel(old);
        true
    }

    pub(crate) fn suspicion_expired(&mut self, now: Instant, node: &Arc<str>) {
        if self.suspicions.remove(node).is_none() {
            return;
        }
        let Some(n) = self.node(node) else { return };
        if n.state != State::Suspect {
            return;
        }
        let inc = n.incarnation;
        tracing::info!(node = %node, "marking as failed, suspect timeout reached");
        let me = self.name.clone();
        self.dead_node(now, node, inc, &me);
    }

    pub(crate) fn dead_node(&mut self, now: Instant, node: &str, incarnation: u32, from: &str) {
        self.dead_node_notify(now, node, incarnation, from, None);
    }

    pub(crate) fn dead_node_notify(
        &mut self,
        now: Instant,
        node: &str,
        incarnation: u32,
        from: &str,
        notify: Option<u64>,
    ) {
        let Some(&i) = self.index.get(node) else { return };
        if incarnation < self.nodes[i].incarnation {
            return;
        }
        if incarnation > self.nodes[i].incarnation.saturating_add(INCARNATION_HORIZON) {
            let addr = self.nodes[i].addr;
            self.drop_input(DropReason::Forged, addr);
            return;
        }
        let name = self.nodes[i].name.clone();
        if let Some(s) = self.suspicions.remove(&name) {
            self.timers.cancel(s.timer);
        }
        if self.nodes[i].state.dead_or_left() {
            return;
        }
        let d = msg::Dead { incarnation, node: node.to_string(), from: from.to_string() };
        if name == self.name {
            if !self.has_left {
                tracing::warn!(from, "refuting a death notice about us");
                self.refute(incarnation);
                return;
            }
            self.broadcast_about(&name, mp::encode_with_type(kind::DEAD, &d), notify);
        } else {
            self.broadcast_about(&name, mp::encode_with_type(kind::DEAD, &d), None);
        }
        let n = &mut self.nodes[i];
        n.incarnation = incarnation;
        n.state = if node == from { State::Left } else { State::Dead };
        n.state_change = now;
        let node = n.clone();
        self.notify_leave(now, &node);
    }

    // -------------------------------------------------------- gossip & anti-entropy

    pub(crate) fn gossip_tick(&mut self, now: Instant) {
        self.timers.at(now + self.cfg.timing.gossip_interval, Timer::GossipTick);
        let me = self.name.clone();
        let dead_window = self.cfg.timing.gossip_to_the_dead;
        let targets = self.k_random_nodes(self.cfg.timing.gossip_nodes, |n| {
            n.name != me
                && match n.state {
                    State::Alive | State::Suspect => true,
                    State::Dead => now.saturating_duration_since(n.state_change) <= dead_window,
                    State::Left => false,
                }
        });
        let avail = self
            .cfg
            .timing
            .udp_buffer_size
            .saturating_sub(crate::gossip::COMPOUND_HEADER_OVERHEAD + self.env.packet_overhead());
        for i in targets {
            let msgs = self.get_broadcasts(crate::gossip::COMPOUND_OVERHEAD, avail);
            if msgs.is_empty() {
                return;
            }
            let (addr, name) = (self.nodes[i].addr, self.nodes[i].name.clone());
            if msgs.len() == 1 {
                self.raw_send(addr, Some(&name), &msgs[0]);
            } else {
                let parts: Vec<&[u8]> = msgs.iter().map(|m| &m[..]).collect();
                let compound = make_compound(&parts);
                self.raw_send(addr, Some(&name), &compound);
            }
        }
    }

    pub(crate) fn push_pull_tick(&mut self, now: Instant) {
        let interval = push_pull_scale(self.cfg.timing.push_pull_interval, self.nodes.len());
        self.timers.at(now + interval, Timer::PushPullTick);
        let me = self.name.clone();
        let picked = self.k_random_nodes(1, |n| n.name != me && n.state == State::Alive);
        if let Some(&i) = picked.first() {
            let addr = self.nodes[i].addr;
            self.start_push_pull(now, addr, None);
        }
    }

    /// Merges a peer's full state into ours (memberlist first, then Serf's part).
    pub(crate) fn merge_remote_state(
        &mut self,
        now: Instant,
        remote: RemoteState,
        own_join: bool,
        ignore_old: bool,
    ) {
        self.stats.push_pulls += 1;
        let me = self.name.to_string();
        for r in &remote.nodes {
            match r.state {
                node_state::ALIVE => {
                    let Some(ip) = ip_from_wire(&r.addr) else { continue };
                    let port = if r.port == 0 { self.advertise.port() } else { r.port };
                    let a = AliveInfo {
                        incarnation: r.incarnation,
                        name: Arc::from(r.name.as_str()),
                        addr: SocketAddr::new(ip, port),
                        meta: Arc::from(r.meta.as_slice()),
                        versions: <[u8; 6]>::try_from(r.vsn.as_slice()).ok(),
                    };
                    self.alive_node(now, a, None, false);
                }
                node_state::LEFT => self.dead_node(now, &r.name, r.incarnation, &r.name),
                node_state::DEAD | node_state::SUSPECT => self.suspect_node(now, &r.name, r.incarnation, &me),
                _ => {}
            }
        }
        if !remote.user.is_empty() {
            self.merge_serf_state(now, &remote.user, own_join, ignore_old);
        }
    }
}

/// The address in a message's `SourceAddr`/`SourcePort`, if both are set.
fn reply_addr(addr: &[u8], port: u16) -> Option<SocketAddr> {
    (port > 0).then(|| ip_from_wire(addr).map(|ip| SocketAddr::new(ip, port))).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspicion_timeouts_follow_memberlist() {
        let s = Duration::from_secs(1);
        assert_eq!(suspicion_timeout(4, 1, s), Duration::from_secs(4));
        assert_eq!(suspicion_timeout(4, 10, s), Duration::from_secs(4));
        assert_eq!(suspicion_timeout(4, 1000, s), Duration::from_secs(12));
        let (min, max) = (Duration::from_secs(2), Duration::from_secs(30));
        assert_eq!(remaining_suspicion(0, 3, Duration::ZERO, min, max), max);
        assert_eq!(remaining_suspicion(3, 3, Duration::ZERO, min, max), min);
        let mid = remaining_suspicion(1, 3, Duration::ZERO, min, max);
        assert!(mid < max && mid > min);
        assert_eq!(remaining_suspicion(3, 3, Duration::from_secs(5), min, max), Duration::ZERO);
    }

    #[test]
    fn push_pull_interval_scales_past_32() {
        let i = Duration::from_secs(30);
        assert_eq!(push_pull_scale(i, 32), i);
        assert_eq!(push_pull_scale(i, 33), i * 2);
        assert_eq!(push_pull_scale(i, 64), i * 2);
        assert_eq!(push_pull_scale(i, 65), i * 3);
    }
}
