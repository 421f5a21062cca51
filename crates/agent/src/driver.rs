//! The event loop that runs a [`Gossip`] core on real sockets.
//!
//! One task owns the core. It waits on the UDP socket, on messages from TCP
//! tasks (inbound exchanges and results of outbound ones), on commands from
//! [`AgentHandle`]s, and on the core's next timer; after each input it carries
//! out the core's outputs: datagrams are sent, TCP exchanges are spawned as
//! their own tasks, events are logged, published as a [`Membership`] snapshot
//! (a `watch` channel) and broadcast to subscribers. A slow subscriber only
//! lags; it never holds the loop up.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use shoal_gossip::{
    CommandError, Config, Event, Frame, Gossip, JoinId, Member, MemberStatus, Output, QueryId, QueryParams,
    QueryReplyTo, Stats, StreamFramer, StreamRequest, Tags,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{AgentConfig, ConfigError, JoinTarget, advertise_addr, hostname, load_keys, save_keys};
use crate::events::{EventSinks, SerfEvent};
use crate::fanout::Fanout;
use crate::snapshot::Snapshot;

/// Events waiting to be coalesced for handlers and RPC streams.
const CORE_EVENT_QUEUE: usize = 8192;
/// Events a lagging subscriber of [`AgentHandle::subscribe`] or [`AgentHandle::subscribe_serf`]
/// may fall behind by before it is told how many it missed (allocated at the first subscriber).
const EVENT_RING: usize = 4096;
/// Inbound TCP exchanges handled at once (memberlist's limit).
const MAX_INBOUND_STREAMS: usize = 128;
/// Bytes all gossip streams together (in and out) may buffer at once. One push/pull of a
/// thousand members takes about 200 KiB; a peer that holds more than this open is refused.
const STREAM_BUFFER_BUDGET: usize = 64 * 1024 * 1024;
/// How much a stream's buffer grows by at a time (and is charged to the budget in).
const STREAM_CHUNK: usize = 16 * 1024;

/// The memory budget shared by every gossip stream's buffer.
fn stream_budget() -> &'static Semaphore {
    static BUDGET: std::sync::OnceLock<Semaphore> = std::sync::OnceLock::new();
    BUDGET.get_or_init(|| Semaphore::new(STREAM_BUFFER_BUDGET / STREAM_CHUNK))
}

/// A consistent view of the cluster at one moment.
#[derive(Debug, Clone)]
pub struct Membership {
    /// This agent.
    pub local: Member,
    /// Every known member (this one included), sorted by name.
    pub members: Vec<Member>,
}

/// Estimated round trips from this agent to the members whose network coordinates it knows
/// (its own coordinate's distance to theirs), refreshed every [`DISTANCE_REFRESH`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Distances {
    /// By member name.
    pub rtt: BTreeMap<Arc<str>, Duration>,
}

/// How often [`Distances`] are recomputed (coordinates move with each probe, about once a
/// second per member).
pub const DISTANCE_REFRESH: Duration = Duration::from_secs(2);

fn distances(g: &Gossip) -> Distances {
    let Some(me) = g.coordinate(g.name()) else { return Distances::default() };
    let rtt = g
        .members()
        .filter(|m| &*m.name != g.name())
        .filter_map(|m| Some((m.name.clone(), me.distance_to(g.coordinate(&m.name)?))))
        .collect();
    Distances { rtt }
}

impl Membership {
    /// Members with status `alive`.
    pub fn alive(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.status == MemberStatus::Alive)
    }

    /// A member by name.
    pub fn get(&self, name: &str) -> Option<&Member> {
        self.members.binary_search_by(|m| (*m.name).cmp(name)).ok().map(|i| &self.members[i])
    }
}

/// What a running query reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryUpdate {
    /// A node acknowledged.
    Ack(String),
    /// A node answered.
    Response {
        /// The node.
        from: String,
        /// Its answer.
        payload: Vec<u8>,
    },
}

/// Counters and state for `info`/`stats`.
#[derive(Debug, Clone)]
pub struct AgentStats {
    /// Core counters.
    pub gossip: Stats,
    /// Lamport clocks: membership, events, queries.
    pub clocks: (u64, u64, u64),
    /// Member counts: alive, leaving, left, failed.
    pub counts: [usize; 4],
    /// Broadcast queue depths: intents, events, queries.
    pub queues: (usize, usize, usize),
    /// Lifeguard health score.
    pub health_score: u32,
    /// Whether gossip is encrypted.
    pub encrypted: bool,
}

/// Errors from starting or driving an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A socket could not be bound.
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        /// UDP or TCP.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The core refused a command.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A join reached nobody.
    #[error("join failed: {0}")]
    Join(String),
    /// The agent has stopped.
    #[error("the agent has stopped")]
    Stopped,
}

type Reply<T> = oneshot::Sender<T>;

enum Command {
    Join { addrs: Vec<SocketAddr>, replay: bool, reply: Reply<Result<usize, AgentError>> },
    Leave { reply: Reply<()> },
    SetTags { tags: Tags, reply: Reply<Result<(), CommandError>> },
    UpdateTags { set: Tags, delete: Vec<String>, reply: Reply<Result<(), CommandError>> },
    UserEvent { name: String, payload: Vec<u8>, coalesce: bool, reply: Reply<Result<(), CommandError>> },
    Query { params: QueryParams, reply: Reply<Result<mpsc::Receiver<QueryUpdate>, CommandError>> },
    Respond { to: QueryReplyTo, payload: Vec<u8>, reply: Reply<Result<(), CommandError>> },
    ForceLeave { node: String, prune: bool },
    Stats { reply: Reply<AgentStats> },
    Keyring { reply: Reply<Vec<Vec<u8>>> },
    Coordinate { node: String, reply: Reply<Option<shoal_gossip::Coordinate>> },
}

enum StreamMsg {
    Inbound { from: SocketAddr, data: Vec<u8>, reply: Reply<Option<Vec<u8>>> },
    Reply { id: u64, result: Result<Vec<u8>, String> },
}

/// A cheap, cloneable way to talk to a running agent.
#[derive(Clone)]
pub struct AgentHandle {
    commands: mpsc::Sender<Command>,
    members: watch::Receiver<Arc<Membership>>,
    distances: watch::Receiver<Arc<Distances>>,
    events: Arc<Fanout<Event>>,
    serf_events: Arc<Fanout<SerfEvent>>,
    shutdown: Arc<tokio::sync::Notify>,
    handler_runs: Arc<crate::handlers::HandlerRuns>,
}

impl std::fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHandle").finish_non_exhaustive()
    }
}

impl AgentHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, AgentError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| AgentError::Stopped)?;
        rx.await.map_err(|_| AgentError::Stopped)
    }

    /// How the event handler scripts have ended so far.
    pub fn handler_runs(&self) -> &crate::handlers::HandlerRuns {
        &self.handler_runs
    }

    /// The latest membership snapshot, updated on every change.
    pub fn members(&self) -> watch::Receiver<Arc<Membership>> {
        self.members.clone()
    }

    /// Estimated round trips to the members, from the network coordinates.
    pub fn distances(&self) -> watch::Receiver<Arc<Distances>> {
        self.distances.clone()
    }

    /// Every core event from now on (membership, user events, queries…), uncoalesced.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Coalesced Serf events from now on, as handler scripts and RPC streams see them.
    pub fn subscribe_serf(&self) -> broadcast::Receiver<SerfEvent> {
        self.serf_events.subscribe()
    }

    /// Asks whoever runs the agent to stop it (after an RPC `leave`).
    pub fn request_shutdown(&self) {
        self.shutdown.notify_one();
    }

    /// Completes when [`AgentHandle::request_shutdown`] is called.
    pub async fn shutdown_requested(&self) {
        self.shutdown.notified().await;
    }

    /// Joins through already-resolved addresses; returns how many answered.
    pub async fn join_addrs(&self, addrs: Vec<SocketAddr>, replay: bool) -> Result<usize, AgentError> {
        self.call(|reply| Command::Join { addrs, replay, reply }).await?
    }

    /// Resolves `targets` (host names at this moment) and joins through them.
    pub async fn join(&self, targets: &[JoinTarget], replay: bool) -> Result<usize, AgentError> {
        let (addrs, errors) = resolve(targets).await;
        if addrs.is_empty() {
            return Err(AgentError::Join(errors.join("; ")));
        }
        self.join_addrs(addrs, replay).await
    }

    /// Leaves the cluster gracefully; returns once the departure has spread.
    pub async fn leave(&self) -> Result<(), AgentError> {
        self.call(|reply| Command::Leave { reply }).await
    }

    /// Replaces this agent's tags.
    pub async fn set_tags(&self, tags: Tags) -> Result<(), AgentError> {
        Ok(self.call(|reply| Command::SetTags { tags, reply }).await??)
    }

    /// Sets some tags and deletes others, atomically (Serf's `tags -set/-delete`).
    pub async fn update_tags(&self, set: Tags, delete: Vec<String>) -> Result<(), AgentError> {
        Ok(self.call(|reply| Command::UpdateTags { set, delete, reply }).await??)
    }

    /// This agent's own keyring, primary key first.
    pub async fn local_keys(&self) -> Result<Vec<Vec<u8>>, AgentError> {
        self.call(|reply| Command::Keyring { reply }).await
    }

    /// A member's network coordinate (ours for our own name), if known.
    pub async fn coordinate(&self, node: &str) -> Result<Option<shoal_gossip::Coordinate>, AgentError> {
        let node = node.to_string();
        self.call(|reply| Command::Coordinate { node, reply }).await
    }

    /// Fires a user event.
    pub async fn user_event(&self, name: &str, payload: &[u8], coalesce: bool) -> Result<(), AgentError> {
        let (name, payload) = (name.to_string(), payload.to_vec());
        Ok(self.call(|reply| Command::UserEvent { name, payload, coalesce, reply }).await??)
    }

    /// Starts a query; acks and answers arrive on the receiver, which closes at the timeout.
    pub async fn query(&self, params: QueryParams) -> Result<mpsc::Receiver<QueryUpdate>, AgentError> {
        Ok(self.call(|reply| Command::Query { params, reply }).await??)
    }

    /// Answers a query.
    pub async fn respond(&self, to: QueryReplyTo, payload: Vec<u8>) -> Result<(), AgentError> {
        Ok(self.call(|reply| Command::Respond { to, payload, reply }).await??)
    }

    /// Marks a failed member as left (and with `prune`, forgets it).
    pub async fn force_leave(&self, node: &str, prune: bool) -> Result<(), AgentError> {
        self.commands
            .send(Command::ForceLeave { node: node.to_string(), prune })
            .await
            .map_err(|_| AgentError::Stopped)
    }

    /// Counters and state.
    pub async fn stats(&self) -> Result<AgentStats, AgentError> {
        self.call(|reply| Command::Stats { reply }).await
    }
}

/// Binds UDP and TCP on the same port. With port 0, the port UDP got may be taken on TCP by
/// someone else: then another port is tried.
async fn bind_gossip(addr: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr), AgentError> {
    let mut attempts = 0;
    loop {
        let udp =
            UdpSocket::bind(addr).await.map_err(|source| AgentError::Bind { what: "UDP", addr, source })?;
        let bound = udp.local_addr().map_err(|source| AgentError::Bind { what: "UDP", addr, source })?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse && attempts < 10 => {
                attempts += 1;
            }
            Err(source) => return Err(AgentError::Bind { what: "TCP", addr: bound, source }),
        }
    }
}

/// Resolves join targets now; returns the addresses and the errors.
pub async fn resolve(targets: &[JoinTarget]) -> (Vec<SocketAddr>, Vec<String>) {
    let mut addrs = Vec::new();
    let mut errors = Vec::new();
    for t in targets {
        match tokio::net::lookup_host((t.host.as_str(), t.port)).await {
            Ok(found) => {
                let before = addrs.len();
                addrs.extend(found.filter(|a| !addrs.contains(a)).collect::<Vec<_>>());
                if addrs.len() == before {
                    errors.push(format!("{t}: no address"));
                }
            }
            Err(e) => errors.push(format!("{t}: {e}")),
        }
    }
    (addrs, errors)
}

/// A running agent.
pub struct Agent {
    handle: AgentHandle,
    local: SocketAddr,
    name: String,
    tasks: Vec<JoinHandle<()>>,
    leave_timeout: Duration,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("name", &self.name).field("local", &self.local).finish_non_exhaustive()
    }
}

impl Agent {
    /// Binds the gossip sockets, starts the loop and the join attempts.
    pub async fn start(cfg: AgentConfig) -> Result<Agent, AgentError> {
        let name = match &cfg.node {
            Some(n) => n.clone(),
            None => hostname()?,
        };
        shoal_gossip::limits::check_name(&name)
            .map_err(|source| ConfigError::InvalidName { name: name.clone(), source })?;
        let keys = load_keys(cfg.encrypt.as_deref(), cfg.keyring_file.as_deref())?;
        let (snapshot, previous) = match &cfg.snapshot {
            Some(path) => {
                let (snap, prev) = Snapshot::open(path, cfg.rejoin)
                    .map_err(|e| ConfigError::Snapshot { path: path.clone(), reason: e.to_string() })?;
                (Some(snap), prev)
            }
            None => (None, crate::snapshot::Previous::default()),
        };
        let (udp, tcp, bound) = bind_gossip(cfg.bind).await?;
        let advertise = advertise_addr(bound, cfg.advertise)?;

        let mut gc = Config::new(name.clone(), advertise, cfg.profile);
        gc.tags = cfg.tags.clone();
        gc.keys = keys;
        gc.label = cfg.label.clone();
        gc.coordinates = !cfg.disable_coordinates;
        let tcp_timeout = gc.timing.tcp_timeout;
        let max_stream = gc.max_stream_bytes;
        let seed = rand::rngs::StdRng::from_os_rng().next_u64();
        let mut gossip = Gossip::new(gc, Instant::now(), seed)?;
        gossip.restore_clocks(previous.clock, previous.event_clock, previous.query_clock);

        let (members_tx, members_rx) = watch::channel(Arc::new(membership(&gossip)));
        let (distances_tx, distances_rx) = watch::channel(Arc::new(Distances::default()));
        let events_tx = Arc::new(Fanout::new(EVENT_RING));
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let (stream_tx, stream_rx) = mpsc::channel(256);
        let serf_tx = Arc::new(Fanout::new(EVENT_RING));
        let (core_events_tx, core_events_rx) = mpsc::channel(CORE_EVENT_QUEUE);
        let handle = AgentHandle {
            commands: cmd_tx,
            members: members_rx,
            distances: distances_rx,
            events: events_tx.clone(),
            serf_events: serf_tx.clone(),
            shutdown: Arc::new(tokio::sync::Notify::new()),
            handler_runs: Arc::default(),
        };
        let mut tasks = Vec::new();
        let handler_tx = if cfg.event_handlers.is_empty() {
            None
        } else {
            let (tx, rx) = mpsc::channel(crate::events::HANDLER_QUEUE);
            tasks.push(tokio::spawn(crate::handlers::run_handlers(
                rx,
                cfg.event_handlers.clone(),
                handle.clone(),
                cfg.handler_timeout,
            )));
            Some(tx)
        };
        let sinks = EventSinks { broadcast: serf_tx, handlers: handler_tx, handler_drops: Arc::default() };
        tasks.push(tokio::spawn(crate::events::coalesce(core_events_rx, sinks, cfg.coalescing)));

        tracing::info!(
            node = %name, bind = %bound, advertise = %advertise, profile = %cfg.profile,
            encrypted = gossip.encrypted(), "shoal agent started"
        );
        let on_loopback = bound.ip().is_loopback() && advertise.ip().is_loopback();
        if !gossip.encrypted() && !on_loopback {
            tracing::warn!(
                bind = %bound,
                "gossip is not encrypted: any host that reaches this port can join, forge members and read \
                 the cluster's state; give every member the same key with --encrypt or --encrypt-file \
                 (`shoal keygen` makes one)"
            );
        }
        let udp = Arc::new(udp);
        let driver = Driver {
            gossip,
            udp: udp.clone(),
            stream_tx: stream_tx.clone(),
            members_tx,
            distances_tx,
            events_tx,
            joins: HashMap::new(),
            queries: HashMap::new(),
            leave_waiters: Vec::new(),
            keyring_file: cfg.keyring_file.clone(),
            max_stream,
            core_events: core_events_tx,
            event_drops: 0,
            snapshot,
            unsent: 0,
            auto_advertise: (cfg.advertise.is_none() && bound.ip().is_unspecified())
                .then_some(advertise.port()),
        };
        tasks.push(tokio::spawn(driver.run(cmd_rx, stream_rx)));
        tasks.push(tokio::spawn(accept_loop(tcp, stream_tx, tcp_timeout, max_stream)));
        if !previous.nodes.is_empty() {
            tasks.push(tokio::spawn(crate::join::rejoin_previous(handle.clone(), previous.nodes)));
        }
        if !cfg.join.is_empty() {
            tasks.push(tokio::spawn(crate::join::retry_join(
                handle.clone(),
                cfg.join.clone(),
                cfg.replay,
                cfg.rejoin_interval,
            )));
        }
        Ok(Agent { handle, local: bound, name, tasks, leave_timeout: cfg.leave_timeout })
    }

    /// A handle for commands and subscriptions.
    pub fn handle(&self) -> AgentHandle {
        self.handle.clone()
    }

    /// The bound gossip address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// This agent's node name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Leaves gracefully (bounded by the leave timeout), then stops.
    pub async fn leave_and_shutdown(self) {
        let leave = self.handle.leave();
        match tokio::time::timeout(self.leave_timeout, leave).await {
            Ok(Ok(())) => tracing::info!("left the cluster"),
            Ok(Err(e)) => tracing::warn!(error = %e, "leave failed"),
            Err(_) => tracing::warn!(timeout = ?self.leave_timeout, "leave timed out; stopping anyway"),
        }
        self.shutdown();
    }

    /// Stops at once, without telling the cluster (peers will see us fail).
    pub fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn membership(g: &Gossip) -> Membership {
    let mut members: Vec<Member> = g.members().cloned().collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let local = g.member(g.name()).cloned().unwrap_or_else(|| Member {
        name: Arc::from(g.name()),
        addr: g.advertise(),
        tags: Arc::new(g.tags().clone()),
        status: MemberStatus::Alive,
        versions: [0; 6],
    });
    Membership { local, members }
}

/// Formats tags as Serf's handlers see them: `k=v,k=v`.
/// Tags as `k=v,k=v` for a log line, each escaped (they are checked at the boundary; this is
/// the second line of defence).
pub fn tags_line(tags: &Tags) -> String {
    use shoal_gossip::escape::Esc;
    tags.iter().map(|(k, v)| format!("{}={}", Esc(k), Esc(v))).collect::<Vec<_>>().join(",")
}

struct Driver {
    gossip: Gossip,
    udp: Arc<UdpSocket>,
    stream_tx: mpsc::Sender<StreamMsg>,
    members_tx: watch::Sender<Arc<Membership>>,
    distances_tx: watch::Sender<Arc<Distances>>,
    events_tx: Arc<Fanout<Event>>,
    joins: HashMap<JoinId, Reply<Result<usize, AgentError>>>,
    queries: HashMap<QueryId, mpsc::Sender<QueryUpdate>>,
    leave_waiters: Vec<Reply<()>>,
    keyring_file: Option<PathBuf>,
    max_stream: usize,
    core_events: mpsc::Sender<Event>,
    /// Events the coalescer had no room for.
    event_drops: u64,
    snapshot: Option<Snapshot>,
    /// Datagrams dropped because the socket's send buffer was full.
    unsent: u64,
    /// With an automatically chosen address: its port, to follow the host's IP when it changes.
    auto_advertise: Option<u16>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut streams: mpsc::Receiver<StreamMsg>) {
        // Room for the largest datagram, written only as far as datagrams reach: gossip packets
        // are ~1.4 KB, so most of it never becomes resident.
        let mut buf = Vec::with_capacity(65_536);
        let mut snapshot_tick = tokio::time::interval(Duration::from_millis(500));
        let mut address_tick = tokio::time::interval(Duration::from_secs(2));
        let mut distance_tick = tokio::time::interval(DISTANCE_REFRESH);
        loop {
            let deadline =
                self.gossip.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            buf.clear();
            tokio::select! {
                r = self.udp.recv_buf_from(&mut buf) => match r {
                    Ok((_, from)) => self.gossip.handle_packet(Instant::now(), from, &buf),
                    Err(e) => tracing::debug!(error = %e, "UDP receive error"),
                },
                Some(m) = streams.recv() => match m {
                    StreamMsg::Inbound { from, data, reply } => {
                        let out = self.gossip.handle_stream(Instant::now(), from, &data);
                        let _ = reply.send(out);
                    }
                    StreamMsg::Reply { id, result } => self.gossip.handle_stream_reply(Instant::now(), id, result),
                },
                cmd = commands.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => return,
                },
                () = tokio::time::sleep_until(deadline.into()) => self.gossip.handle_timeout(Instant::now()),
                _ = address_tick.tick(), if self.auto_advertise.is_some() => {
                    // A container reconnected to its network may come back with another IP.
                    if let (Some(port), Some(ip)) = (self.auto_advertise, crate::config::first_private_ipv4()) {
                        self.gossip.set_advertise(Instant::now(), SocketAddr::new(ip.into(), port));
                    }
                }
                _ = distance_tick.tick() => {
                    let d = distances(&self.gossip);
                    if **self.distances_tx.borrow() != d {
                        self.distances_tx.send_replace(Arc::new(d));
                    }
                }
                _ = snapshot_tick.tick(), if self.snapshot.is_some() => {
                    if let Some(s) = self.snapshot.as_mut() {
                        s.clock(self.gossip.clocks().0);
                        s.flush();
                    }
                }
            }
            self.flush().await;
        }
    }

    fn command(&mut self, c: Command) {
        let now = Instant::now();
        match c {
            Command::Join { addrs, replay, reply } => {
                let id = self.gossip.join(now, &addrs, replay);
                self.joins.insert(id, reply);
            }
            Command::Leave { reply } => {
                self.leave_waiters.push(reply);
                if let Some(s) = self.snapshot.as_mut() {
                    s.leave();
                }
                self.gossip.leave(now);
            }
            Command::SetTags { tags, reply } => {
                let _ = reply.send(self.gossip.set_tags(now, tags));
            }
            Command::UpdateTags { set, delete, reply } => {
                let mut tags = self.gossip.tags().clone();
                tags.retain(|k, _| !delete.contains(k));
                tags.extend(set);
                let _ = reply.send(self.gossip.set_tags(now, tags));
            }
            Command::Coordinate { node, reply } => {
                let _ = reply.send(self.gossip.coordinate(&node).cloned());
            }
            Command::Keyring { reply } => {
                let _ = reply.send(self.gossip.keyring().keys().map(<[u8]>::to_vec).collect());
            }
            Command::UserEvent { name, payload, coalesce, reply } => {
                let _ = reply.send(self.gossip.user_event(now, &name, &payload, coalesce));
            }
            Command::Query { params, reply } => {
                let result = self.gossip.query(now, params).map(|id| {
                    let (tx, rx) = mpsc::channel(1024);
                    self.queries.insert(id, tx);
                    rx
                });
                let _ = reply.send(result);
            }
            Command::Respond { to, payload, reply } => {
                let _ = reply.send(self.gossip.respond(now, &to, &payload));
            }
            Command::ForceLeave { node, prune } => self.gossip.force_leave(now, &node, prune),
            Command::Stats { reply } => {
                let g = &self.gossip;
                let _ = reply.send(AgentStats {
                    gossip: g.stats().clone(),
                    clocks: g.clocks(),
                    counts: g.status_counts(),
                    queues: g.queue_depths(),
                    health_score: g.health_score(),
                    encrypted: g.encrypted(),
                });
            }
        }
    }

    /// Carries out everything the core asked for.
    async fn flush(&mut self) {
        let mut membership_changed = false;
        while let Some(out) = self.gossip.poll_output() {
            match out {
                // Wait for room in the send buffer only briefly: datagrams to a host whose
                // address does not resolve (ARP) can hold it for seconds, and the loop must go
                // on reading acks from everyone else. UDP may drop; after 50 ms, we do.
                Output::Packet { to, data } => match self.udp.try_send_to(&data, to) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let sent =
                            tokio::time::timeout(Duration::from_millis(50), self.udp.send_to(&data, to))
                                .await;
                        if !matches!(sent, Ok(Ok(_))) {
                            self.unsent += 1;
                            tracing::debug!(%to, unsent = self.unsent, "UDP send buffer full: datagram dropped");
                        }
                    }
                    Err(e) => tracing::debug!(%to, error = %e, "UDP send failed"),
                },
                Output::Stream(req) => {
                    tokio::spawn(outbound_stream(req, self.stream_tx.clone(), self.max_stream));
                }
                Output::Event(e) => {
                    membership_changed |= matches!(e, Event::Member { .. });
                    self.event(e);
                }
            }
        }
        if membership_changed {
            self.members_tx.send_replace(Arc::new(membership(&self.gossip)));
        }
    }

    fn event(&mut self, e: Event) {
        if let Some(s) = self.snapshot.as_mut() {
            s.record(&e);
        }
        if matches!(e, Event::Member { .. } | Event::User(_) | Event::Query(_))
            && let Err(mpsc::error::TrySendError::Full(_)) = self.core_events.try_send(e.clone())
        {
            // The gossip loop never waits on script runners or RPC streams.
            self.event_drops += 1;
            if self.event_drops.is_power_of_two() {
                tracing::warn!(dropped = self.event_drops, "event consumers cannot keep up; events dropped");
            }
        }
        match &e {
            Event::Member { kind, member } => {
                tracing::info!(
                    target: "shoal::member",
                    "{kind} {} {} {}", shoal_gossip::escape::Esc(&member.name), member.addr, tags_line(&member.tags)
                );
            }
            Event::JoinFinished { join, joined, errors } => {
                if let Some(reply) = self.joins.remove(join) {
                    let result =
                        if *joined > 0 { Ok(*joined) } else { Err(AgentError::Join(errors.join("; "))) };
                    let _ = reply.send(result);
                }
            }
            Event::Left => {
                for w in self.leave_waiters.drain(..) {
                    let _ = w.send(());
                }
            }
            Event::QueryAck { query, from } => {
                if let Some(tx) = self.queries.get(query) {
                    let _ = tx.try_send(QueryUpdate::Ack(from.clone()));
                }
            }
            Event::QueryResponse { query, from, payload } => {
                if let Some(tx) = self.queries.get(query) {
                    let _ =
                        tx.try_send(QueryUpdate::Response { from: from.clone(), payload: payload.clone() });
                }
            }
            Event::QueryFinished { query } => {
                self.queries.remove(query);
            }
            Event::KeyringChanged => {
                if let Some(path) = &self.keyring_file {
                    let keys: Vec<Vec<u8>> = self.gossip.keyring().keys().map(<[u8]>::to_vec).collect();
                    if let Err(e) = save_keys(path, &keys) {
                        tracing::error!(error = %e, "cannot persist the keyring");
                    }
                }
            }
            Event::NameConflict { other } => {
                tracing::error!(%other, "another node claims our name; node names must be unique");
            }
            Event::User(u) => tracing::info!(name = %u.name, ltime = u.ltime, "user event"),
            Event::Query(q) => tracing::debug!(name = %q.name, from = %q.source, "query"),
        }
        self.events_tx.send(e);
    }
}

/// Reads one framed gossip message from a TCP stream.
pub async fn read_frame(stream: &mut TcpStream, max: usize) -> std::io::Result<Vec<u8>> {
    match read_frame_or_garbage(stream, max).await? {
        Ok(frame) => Ok(frame),
        Err((reason, _)) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, reason)),
    }
}

/// Reads one framed message; input that cannot be framed is returned as
/// `Err((why, bytes))` so the core can count it and answer with an error.
///
/// Framing is incremental (each byte is looked at once), the message is capped at `max`
/// bytes, and its buffer is charged to the budget all streams share: a peer trickling a
/// giant message costs little CPU and cannot make the agent hold more than the budget.
async fn read_frame_or_garbage(
    stream: &mut TcpStream,
    max: usize,
) -> std::io::Result<Result<Vec<u8>, (String, Vec<u8>)>> {
    let mut framer = StreamFramer::new(max);
    let mut buf = Vec::new();
    let mut charged: Option<tokio::sync::SemaphorePermit<'static>> = None;
    loop {
        match framer.frame(&buf) {
            Ok(Frame::Complete(n)) => {
                buf.truncate(n);
                return Ok(Ok(buf));
            }
            Ok(Frame::Incomplete) => {}
            Err(reason) => return Ok(Err((reason.to_string(), buf))),
        }
        if buf.capacity() == buf.len() {
            // Grow geometrically (each byte is copied O(1) times), paying for the growth first.
            let want = (buf.capacity() * 2).clamp(STREAM_CHUNK, max.saturating_add(STREAM_CHUNK));
            let held = charged.as_ref().map_or(0, |p| p.num_permits());
            let more = u32::try_from(want.div_ceil(STREAM_CHUNK).saturating_sub(held)).unwrap_or(u32::MAX);
            let Ok(permit) = stream_budget().try_acquire_many(more) else {
                tracing::warn!(
                    buffered = buf.len(),
                    "gossip streams hold their whole memory budget; closing one"
                );
                return Err(std::io::ErrorKind::OutOfMemory.into());
            };
            match charged.as_mut() {
                Some(p) => p.merge(permit),
                None => charged = Some(permit),
            }
            buf.reserve_exact(want - buf.len());
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

async fn outbound_stream(req: StreamRequest, tx: mpsc::Sender<StreamMsg>, max: usize) {
    let StreamRequest { id, to, data, deadline, .. } = req;
    let exchange = async {
        let mut s = TcpStream::connect(to).await?;
        s.set_nodelay(true)?;
        s.write_all(&data).await?;
        read_frame(&mut s, max).await
    };
    let result = match tokio::time::timeout_at(deadline.into(), exchange).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(format!("{to}: {e}")),
        Err(_) => Err(format!("{to}: timed out")),
    };
    let _ = tx.send(StreamMsg::Reply { id, result }).await;
}

async fn accept_loop(listener: TcpListener, tx: mpsc::Sender<StreamMsg>, timeout: Duration, max: usize) {
    let limit = Arc::new(Semaphore::new(MAX_INBOUND_STREAMS));
    loop {
        let (mut stream, from) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%from, "too many concurrent gossip streams; closing");
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let work = async {
                // Garbage goes to the core too: it is counted and answered with an error.
                let data = match read_frame_or_garbage(&mut stream, max).await? {
                    Ok(frame) => frame,
                    Err((_, garbage)) => garbage,
                };
                let (reply_tx, reply_rx) = oneshot::channel();
                if tx.send(StreamMsg::Inbound { from, data, reply: reply_tx }).await.is_err() {
                    return Ok(());
                }
                if let Ok(Some(reply)) = reply_rx.await {
                    stream.write_all(&reply).await?;
                }
                stream.shutdown().await
            };
            match tokio::time::timeout(timeout, work).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%from, error = %e, "gossip stream failed"),
                Err(_) => tracing::debug!(%from, "gossip stream timed out"),
            }
        });
    }
}
