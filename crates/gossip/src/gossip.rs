//! [`Gossip`]: one cluster member as a deterministic state machine.
//!
//! The driver feeds it packets, stream messages, stream results and the
//! current time; it answers with [`Output`]s (datagrams to send, streams to
//! open, events) and the next instant it wants to be woken at. Nothing in here
//! touches a socket, a clock or a thread, so whole clusters run inside tests.
//!
//! The memberlist layer (failure detection and dissemination) lives in
//! [`crate::swim`], Serf's layer (member history, intents, user events) in
//! [`crate::serf`] and queries in [`crate::query`]; this module holds the
//! shared state, the public API and message dispatch.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::broadcast::{BroadcastQueue, NotifyToken, retransmit_limit};
use crate::config::Config;
use crate::envelope::{DropReason, Envelope, Part, make_compound};
use crate::event::{Event, JoinId, Member, MemberStatus, Tags};
use crate::keyring::{KeyError, Keyring};
use crate::messages::{self as msg, kind};
use crate::mp::{self, Wire};
use crate::serf::{Lamport, SerfMember, SerfState};
use crate::swim::{NodeState, Probe, Relay, Suspicion};
use crate::timers::{Timer, Timers};

/// memberlist protocol versions we understand and speak.
pub(crate) const PROTOCOL_MIN: u8 = 1;
pub(crate) const PROTOCOL_MAX: u8 = 5;
pub(crate) const PROTOCOL_CUR: u8 = 2;
/// Serf protocol versions we understand and speak.
pub(crate) const DELEGATE_MIN: u8 = 2;
pub(crate) const DELEGATE_MAX: u8 = 5;
pub(crate) const DELEGATE_CUR: u8 = 5;
/// Our version vector as sent in `alive` messages.
pub(crate) const VERSIONS: [u8; 6] =
    [PROTOCOL_MIN, PROTOCOL_MAX, PROTOCOL_CUR, DELEGATE_MIN, DELEGATE_MAX, DELEGATE_CUR];

/// Bytes a compound message spends on its header and per part.
pub(crate) const COMPOUND_HEADER_OVERHEAD: usize = 2;
pub(crate) const COMPOUND_OVERHEAD: usize = 2;

/// Identifies a stream the core asked the driver to open.
pub type StreamId = u64;

/// Why the core wants a TCP exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// A full state exchange (join, anti-entropy, reconnect).
    PushPull,
    /// A fallback ping for a member that did not answer over UDP.
    Ping,
}

/// A TCP exchange to run: connect, write `data`, read one framed reply (see
/// [`crate::stream_frame_len`]), and report with [`Gossip::handle_stream_reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    /// Reported back with the result.
    pub id: StreamId,
    /// What the exchange is for.
    pub kind: StreamKind,
    /// Where to connect.
    pub to: SocketAddr,
    /// What to write.
    pub data: Vec<u8>,
    /// Give up (and report an error) at this instant.
    pub deadline: Instant,
}

/// Work for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a datagram.
    Packet {
        /// Destination.
        to: SocketAddr,
        /// Bytes, ready for the wire.
        data: Vec<u8>,
    },
    /// Run a TCP exchange.
    Stream(StreamRequest),
    /// Tell the application.
    Event(Event),
}

/// Counters for operators and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams received.
    pub packets_received: u64,
    /// Datagrams sent.
    pub packets_sent: u64,
    /// Inbound datagrams, stream messages or message parts dropped, by reason.
    pub dropped: BTreeMap<DropReason, u64>,
    /// Probes started.
    pub probes: u64,
    /// Probes that ended with the target suspected.
    pub probe_failures: u64,
    /// Push/pull exchanges completed (either direction).
    pub push_pulls: u64,
}

impl Stats {
    /// Total drops across all reasons.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

/// What a stream we opened was for.
#[derive(Debug, Clone)]
pub(crate) enum StreamPurpose {
    PushPull { join: Option<JoinId> },
    FallbackPing { seq: u32 },
}

#[derive(Debug)]
pub(crate) struct PendingJoin {
    pub remaining: usize,
    pub joined: usize,
    pub errors: Vec<String>,
    pub ignore_old: bool,
}

/// Steps of a graceful leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeavePhase {
    None,
    /// Our leave intent is spreading (Serf layer).
    Intent(NotifyToken),
    /// Our own `dead` message is spreading (memberlist layer).
    Dead(NotifyToken),
    /// Giving the last messages time to land.
    Propagate,
    Done,
}

/// Errors returned by [`Gossip`] commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The node name or a tag breaks [`crate::limits`].
    #[error(transparent)]
    Invalid(#[from] crate::limits::Violation),
    /// A user event or query is too large.
    #[error("{what} is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The node is leaving or has left.
    #[error("this node has left the cluster")]
    NotAlive,
    /// A query response came after its deadline.
    #[error("response is past the deadline")]
    PastDeadline,
    /// A key operation failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A regular expression in a filter does not compile.
    #[error("invalid filter: {0}")]
    BadFilter(String),
}

/// One cluster member: memberlist and Serf as a deterministic state machine.
pub struct Gossip {
    // identity and configuration
    pub(crate) name: Arc<str>,
    pub(crate) advertise: SocketAddr,
    pub(crate) tags: Tags,
    pub(crate) cfg: Config,
    pub(crate) rng: StdRng,
    pub(crate) env: Envelope,
    pub(crate) timers: Timers,
    pub(crate) out: VecDeque<Output>,
    pub(crate) stats: Stats,

    // memberlist
    pub(crate) nodes: Vec<NodeState>,
    pub(crate) index: HashMap<Arc<str>, usize>,
    pub(crate) probe_index: usize,
    pub(crate) seq: u32,
    pub(crate) incarnation: u32,
    pub(crate) awareness: u32,
    pub(crate) probe: Option<Probe>,
    /// A failed probe still counting late nacks: (seq, expected, received).
    pub(crate) nack_window: Option<(u32, u32, u32)>,
    pub(crate) relays: HashMap<u32, Relay>,
    pub(crate) suspicions: HashMap<Arc<str>, Suspicion>,
    pub(crate) ml_queue: BroadcastQueue,
    pub(crate) has_left: bool,

    // streams and joins
    pub(crate) next_id: u64,
    pub(crate) streams: HashMap<StreamId, StreamPurpose>,
    pub(crate) joins: HashMap<JoinId, PendingJoin>,

    // serf
    pub(crate) clock: Lamport,
    pub(crate) event_clock: Lamport,
    pub(crate) query_clock: Lamport,
    // Ordered maps wherever iteration reaches an output (reconnect and relay choices, reap
    // order, push/pull state): the same inputs and seed give the same outputs.
    pub(crate) members: BTreeMap<Arc<str>, SerfMember>,
    pub(crate) intents: BTreeMap<String, crate::serf::Intent>,
    pub(crate) event_buffer: Vec<Option<msg::SerfUserEvents>>,
    pub(crate) event_min_time: u64,
    pub(crate) query_buffer: Vec<Option<(u64, Vec<u32>)>>,
    pub(crate) query_min_time: u64,
    pub(crate) intent_queue: BroadcastQueue,
    pub(crate) event_queue: BroadcastQueue,
    pub(crate) query_queue: BroadcastQueue,
    pub(crate) serf_state: SerfState,
    pub(crate) leave_phase: LeavePhase,
    pub(crate) leave_timer: Option<crate::timers::TimerId>,
    pub(crate) pending_queries: HashMap<u64, crate::query::PendingQuery>,
    pub(crate) finished: Vec<NotifyToken>,
    /// Names of refused members already logged (bounded).
    pub(crate) refused: std::collections::BTreeSet<Arc<str>>,
    /// Compiled query tag filters, by expression (`None`: it does not compile).
    pub(crate) filter_cache: BTreeMap<String, Option<Arc<regex::bytes::Regex>>>,
    /// Tag filters that may still be compiled, and when that was last counted.
    pub(crate) filter_budget: (f64, Instant),
    /// Network coordinates (none when turned off).
    pub(crate) vivaldi: Option<crate::coordinate::Vivaldi>,
}

impl std::fmt::Debug for Gossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossip")
            .field("name", &self.name)
            .field("advertise", &self.advertise)
            .field("nodes", &self.nodes.len())
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

impl Gossip {
    /// Creates a member that is alone in its cluster until it joins one.
    ///
    /// `seed` drives every random choice (probe order, gossip targets, nonces):
    /// a driver seeds it from the OS, a simulation from a fixed number.
    pub fn new(cfg: Config, now: Instant, seed: u64) -> Result<Gossip, CommandError> {
        let keyring = match cfg.keys.split_first() {
            Some((primary, others)) => Keyring::new(primary, others)?,
            None => Keyring::default(),
        };
        crate::limits::check_name(&cfg.name)?;
        crate::limits::check_tags(&cfg.tags)?;
        let meta = crate::serf::encode_tags(&cfg.tags);
        let env = Envelope {
            keyring,
            label: cfg.label.clone(),
            verify_incoming: cfg.verify_incoming,
            verify_outgoing: cfg.verify_outgoing,
            max_message: cfg.max_stream_bytes,
        };
        let mut g = Gossip {
            name: Arc::from(cfg.name.as_str()),
            advertise: cfg.advertise,
            tags: cfg.tags.clone(),
            rng: StdRng::seed_from_u64(seed),
            env,
            timers: Timers::default(),
            out: VecDeque::new(),
            stats: Stats::default(),
            nodes: Vec::new(),
            index: HashMap::new(),
            probe_index: 0,
            seq: 0,
            incarnation: 0,
            awareness: 0,
            probe: None,
            nack_window: None,
            relays: HashMap::new(),
            suspicions: HashMap::new(),
            ml_queue: BroadcastQueue::default(),
            has_left: false,
            next_id: 0,
            streams: HashMap::new(),
            joins: HashMap::new(),
            clock: Lamport::default(),
            event_clock: Lamport::default(),
            query_clock: Lamport::default(),
            members: BTreeMap::new(),
            intents: BTreeMap::new(),
            event_buffer: vec![None; cfg.event_buffer.max(1)],
            event_min_time: 0,
            query_buffer: vec![None; cfg.query_buffer.max(1)],
            query_min_time: 0,
            intent_queue: BroadcastQueue::default(),
            event_queue: BroadcastQueue::default(),
            query_queue: BroadcastQueue::default(),
            serf_state: SerfState::Alive,
            leave_phase: LeavePhase::None,
            leave_timer: None,
            pending_queries: HashMap::new(),
            finished: Vec::new(),
            refused: std::collections::BTreeSet::new(),
            filter_cache: BTreeMap::new(),
            filter_budget: (64.0, now),
            vivaldi: cfg.coordinates.then(crate::coordinate::Vivaldi::default),
            cfg,
        };
        g.clock.increment();
        g.event_clock.increment();
        g.query_clock.increment();
        g.set_alive(now, meta);
        g.schedule_periodic(now);
        Ok(g)
    }

    /// Restores Lamport clocks from a snapshot so old events are not replayed.
    pub fn restore_clocks(&mut self, clock: u64, event_clock: u64, query_clock: u64) {
        self.clock.witness(clock);
        self.event_clock.witness(event_clock);
        self.query_clock.witness(query_clock);
        self.event_min_time = self.event_min_time.max(event_clock + 1);
        self.query_min_time = self.query_min_time.max(query_clock + 1);
    }

    fn schedule_periodic(&mut self, now: Instant) {
        let t = self.cfg.timing.clone();
        let stagger = |rng: &mut StdRng, d: Duration| {
            if d.is_zero() { Duration::ZERO } else { d.mul_f64(rng.random::<f64>()) }
        };
        let at = now + stagger(&mut self.rng, t.probe_interval);
        self.timers.at(at, Timer::ProbeTick);
        let at = now + stagger(&mut self.rng, t.gossip_interval);
        self.timers.at(at, Timer::GossipTick);
        let at = now + stagger(&mut self.rng, t.push_pull_interval);
        self.timers.at(at, Timer::PushPullTick);
        self.timers.at(now + self.cfg.serf.reap_interval, Timer::Reap);
        self.timers.at(now + self.cfg.serf.reconnect_interval, Timer::Reconnect);
    }

    // ------------------------------------------------------------ inputs

    /// Feeds one received datagram.
    pub fn handle_packet(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.stats.packets_received += 1;
        let plain = match self.env.open_packet(data) {
            Ok(p) => p,
            Err(reason) => return self.drop_input(reason, from),
        };
        let mut parts = Vec::new();
        if let Err(reason) = self.env.split_messages(&plain, &mut parts) {
            return self.drop_input(reason, from);
        }
        for part in parts {
            let result = match part {
                Part::Borrowed(m) => self.handle_message(now, from, m),
                Part::Owned(m) => self.handle_message(now, from, &m),
                Part::Broken(reason) => Err(reason),
            };
            if let Err(reason) = result {
                self.drop_input(reason, from);
            }
        }
        self.after_input(now);
    }

    pub(crate) fn drop_input(&mut self, reason: DropReason, from: SocketAddr) {
        *self.stats.dropped.entry(reason).or_default() += 1;
        tracing::debug!(%from, %reason, "dropped gossip input");
    }

    /// Dispatches one message (`[type][body]`) found in a packet.
    fn handle_message(&mut self, now: Instant, from: SocketAddr, m: &[u8]) -> Result<(), DropReason> {
        let (&ty, body) = m.split_first().ok_or(DropReason::Truncated)?;
        match ty {
            kind::PING => self.handle_ping(now, from, mp::decode(body)?),
            kind::INDIRECT_PING => self.handle_indirect_ping(now, from, mp::decode(body)?),
            kind::ACK => self.handle_ack(now, from, mp::decode(body)?),
            kind::NACK => self.handle_nack(mp::decode(body)?),
            kind::SUSPECT => {
                let s: msg::Suspect = mp::decode(body)?;
                self.suspect_node(now, &s.node, s.incarnation, &s.from);
                Ok(())
            }
            kind::ALIVE => {
                let a: msg::Alive = mp::decode(body)?;
                let alive = crate::swim::AliveInfo::from_wire(&a, self.advertise.port())?;
                self.alive_node(now, alive, None, false);
                Ok(())
            }
            kind::DEAD => {
                let d: msg::Dead = mp::decode(body)?;
                self.dead_node(now, &d.node, d.incarnation, &d.from);
                Ok(())
            }
            kind::USER => self.notify_msg(now, body),
            _ => Err(DropReason::UnknownType),
        }
    }

    /// Handles one inbound stream message (framed with [`crate::stream_frame_len`])
    /// and returns the bytes to write back, if any.
    pub fn handle_stream(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Option<Vec<u8>> {
        let reply = match self.env.open_stream(data) {
            Ok(plain) => match self.handle_stream_message(now, from, &plain) {
                Ok(reply) => reply,
                Err(reason) => {
                    self.drop_input(reason, from);
                    Some(self.error_reply(reason))
                }
            },
            Err(reason) => {
                self.drop_input(reason, from);
                Some(self.error_reply(reason))
            }
        };
        self.after_input(now);
        reply
    }

    fn error_reply(&mut self, reason: DropReason) -> Vec<u8> {
        let m = mp::encode_with_type(kind::ERR, &msg::ErrResp { error: reason.to_string() });
        self.env.seal_stream(&mut self.rng, &m)
    }

    fn handle_stream_message(
        &mut self,
        now: Instant,
        from: SocketAddr,
        plain: &[u8],
    ) -> Result<Option<Vec<u8>>, DropReason> {
        let (&ty, body) = plain.split_first().ok_or(DropReason::Truncated)?;
        match ty {
            kind::PUSH_PULL => {
                let remote = crate::swim::RemoteState::decode(body)?;
                // Like memberlist: answer with our state first, then merge theirs.
                let reply = self.local_state_message(remote.join);
                let reply = self.env.seal_stream(&mut self.rng, &reply);
                self.merge_remote_state(now, remote, false, false);
                Ok(Some(reply))
            }
            kind::PING => {
                let p: msg::Ping = mp::decode(body)?;
                if !p.node.is_empty() && *p.node != *self.name {
                    return Err(DropReason::WrongNode);
                }
                let ack = mp::encode_with_type(kind::ACK, &msg::Ack { seq_no: p.seq_no, payload: vec![] });
                Ok(Some(self.env.seal_stream(&mut self.rng, &ack)))
            }
            kind::USER => {
                let mut r = mp::Reader::new(body);
                let h = msg::UserMsgHeader::take(&mut r)?;
                let rest = r.rest();
                let payload = rest.get(..h.user_msg_len as usize).ok_or(DropReason::Truncated)?;
                self.notify_msg(now, payload)?;
                let _ = from;
                Ok(None)
            }
            _ => Err(DropReason::UnknownType),
        }
    }

    /// Reports the outcome of a [`StreamRequest`]: the reply message, or why there is none.
    pub fn handle_stream_reply(&mut self, now: Instant, id: StreamId, reply: Result<Vec<u8>, String>) {
        let Some(purpose) = self.streams.remove(&id) else { return };
        let opened = reply.and_then(|data| {
            let plain = self.env.open_stream(&data).map_err(|r| format!("reply refused: {r}"))?;
            match plain.split_first() {
                Some((&kind::ERR, body)) => {
                    let e: msg::ErrResp = mp::decode(body).unwrap_or_default();
                    Err(format!("remote error: {}", e.error))
                }
                Some(_) => Ok(plain),
                None => Err("empty reply".to_string()),
            }
        });
        match purpose {
            StreamPurpose::PushPull { join } => {
                let result = opened.and_then(|plain| match plain.split_first() {
                    Some((&kind::PUSH_PULL, body)) => {
                        crate::swim::RemoteState::decode(body).map_err(|r| format!("bad state: {r}"))
                    }
                    _ => Err("unexpected reply to push/pull".to_string()),
                });
                let ignore_old = join.and_then(|j| self.joins.get(&j)).is_some_and(|j| j.ignore_old);
                let ok = match result {
                    Ok(remote) => {
                        self.merge_remote_state(now, remote, join.is_some(), ignore_old);
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = &ok {
                    tracing::debug!(error = %e, "push/pull failed");
                }
                if let Some(j) = join {
                    self.join_progress(now, j, ok);
                }
            }
            StreamPurpose::FallbackPing { seq } => {
                let contacted = opened.ok().and_then(|plain| match plain.split_first() {
                    Some((&kind::ACK, body)) => mp::decode::<msg::Ack>(body).ok(),
                    _ => None,
                });
                self.fallback_result(now, seq, contacted.is_some_and(|a| a.seq_no == seq));
            }
        }
        self.after_input(now);
    }

    /// Advances time: fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::ProbeTick => self.probe_tick(now),
                Timer::GossipTick => self.gossip_tick(now),
                Timer::PushPullTick => self.push_pull_tick(now),
                Timer::ProbeNoAck(seq) => self.probe_no_ack(now, seq),
                Timer::ProbeDeadline(seq) => self.probe_deadline(now, seq, false),
                Timer::ProbeGrace(seq) => self.probe_deadline(now, seq, true),
                Timer::RelayNack(seq) => self.relay_nack(now, seq),
                Timer::RelayExpire(seq) => {
                    self.relays.remove(&seq);
                }
                Timer::NackGrace(seq) => self.nack_grace_over(seq),
                Timer::Suspicion(node) => self.suspicion_expired(now, &node),
                Timer::Reap => self.reap(now),
                Timer::Reconnect => self.reconnect(now),
                Timer::Leave => self.leave_step(now, true),
                Timer::QueryExpire(ltime) => self.query_expired(ltime),
            }
            self.after_input(now);
        }
    }

    /// When [`Gossip::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// The next piece of work for the driver, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Processes broadcast completions (leave progress) after any input.
    fn after_input(&mut self, now: Instant) {
        if self.finished.is_empty() {
            return;
        }
        let finished = std::mem::take(&mut self.finished);
        for token in finished {
            match self.leave_phase {
                LeavePhase::Intent(t) | LeavePhase::Dead(t) if t == token => self.leave_step(now, false),
                _ => {}
            }
        }
    }

    // ------------------------------------------------------------ commands

    /// Joins the cluster through `addrs` (a TCP state exchange with each).
    ///
    /// Completion is reported as [`Event::JoinFinished`]. With `replay` false,
    /// user events that happened before the join are not delivered (Serf's default).
    pub fn join(&mut self, now: Instant, addrs: &[SocketAddr], replay: bool) -> JoinId {
        let id = self.next_id();
        if self.serf_state != SerfState::Alive || addrs.is_empty() {
            let why = if addrs.is_empty() { "no address to join" } else { "cannot join after leaving" };
            self.emit(Event::JoinFinished { join: id, joined: 0, errors: vec![why.to_string()] });
            return id;
        }
        self.joins.insert(
            id,
            PendingJoin { remaining: addrs.len(), joined: 0, errors: Vec::new(), ignore_old: !replay },
        );
        for &addr in addrs {
            self.start_push_pull(now, addr, Some(id));
        }
        id
    }

    fn join_progress(&mut self, now: Instant, id: JoinId, result: Result<(), String>) {
        let Some(j) = self.joins.get_mut(&id) else { return };
        j.remaining -= 1;
        match result {
            Ok(()) => j.joined += 1,
            Err(e) => j.errors.push(e),
        }
        if j.remaining > 0 {
            return;
        }
        let Some(j) = self.joins.remove(&id) else { return };
        if j.joined > 0 {
            let ltime = self.clock.time();
            self.broadcast_join(now, ltime);
        }
        self.emit(Event::JoinFinished { join: id, joined: j.joined, errors: j.errors });
    }

    /// Leaves gracefully: spreads our leave intent, then our departure, then
    /// reports [`Event::Left`]. Members will see us as `left`, not `failed`.
    pub fn leave(&mut self, now: Instant) {
        match self.serf_state {
            SerfState::Left => self.emit(Event::Left),
            SerfState::Leaving => {}
            SerfState::Alive => {
                self.serf_state = SerfState::Leaving;
                let m =
                    msg::SerfLeave { ltime: self.clock.time(), node: self.name.to_string(), prune: false };
                self.clock.increment();
                self.handle_leave_intent(now, &m);
                self.leave_phase = LeavePhase::None;
                if self.has_alive_members() {
                    let token = self.next_id();
                    self.queue_serf(crate::serf::Queue::Intent, msg::serf_kind::LEAVE, &m, Some(token));
                    self.leave_phase = LeavePhase::Intent(token);
                    self.leave_timer =
                        Some(self.timers.at(now + self.cfg.serf.broadcast_timeout, Timer::Leave));
                } else {
                    self.leave_step(now, false);
                }
            }
        }
    }

    /// Moves a graceful leave to its next phase (on broadcast completion or timeout).
    fn leave_step(&mut self, now: Instant, timed_out: bool) {
        if let Some(t) = self.leave_timer.take() {
            self.timers.cancel(t);
        }
        match self.leave_phase {
            LeavePhase::None | LeavePhase::Intent(_) => {
                if timed_out {
                    tracing::warn!("timed out spreading leave intent; leaving anyway");
                }
                self.has_left = true;
                let token = self.next_id();
                self.leave_phase = LeavePhase::Dead(token);
                let inc = self.incarnation;
                let name = self.name.clone();
                self.dead_node_notify(now, &name, inc, &name, Some(token));
                if self.any_alive_node() {
                    self.leave_timer =
                        Some(self.timers.at(now + self.cfg.serf.broadcast_timeout, Timer::Leave));
                } else {
                    self.leave_step(now, false);
                }
            }
            LeavePhase::Dead(_) => {
                if timed_out {
                    tracing::warn!("timed out spreading our departure; leaving anyway");
                }
                self.leave_phase = LeavePhase::Propagate;
                self.leave_timer =
                    Some(self.timers.at(now + self.cfg.serf.leave_propagate_delay, Timer::Leave));
            }
            LeavePhase::Propagate => {
                self.leave_phase = LeavePhase::Done;
                self.serf_state = SerfState::Left;
                self.emit(Event::Left);
            }
            LeavePhase::Done => {}
        }
    }

    /// Replaces our tags and announces them (peers see `member-update`).
    pub fn set_tags(&mut self, now: Instant, tags: Tags) -> Result<(), CommandError> {
        crate::limits::check_tags(&tags)?;
        let meta = crate::serf::encode_tags(&tags);
        self.tags = tags;
        self.incarnation += 1;
        let alive = crate::swim::AliveInfo {
            incarnation: self.incarnation,
            name: self.name.clone(),
            addr: self.advertise,
            meta: Arc::from(meta),
            versions: Some(VERSIONS),
        };
        self.alive_node(now, alive, None, true);
        Ok(())
    }

    /// Our address changed (a container moved to another network, or got a new IP): announce
    /// it with a new incarnation. Peers that still hold the old address take the new one once
    /// they have declared us dead (after `dead_node_reclaim_time`), which an address that no
    /// longer answers brings about by itself.
    pub fn set_advertise(&mut self, now: Instant, addr: SocketAddr) {
        if addr == self.advertise {
            return;
        }
        tracing::warn!(old = %self.advertise, new = %addr, "our address changed: announcing the new one");
        self.advertise = addr;
        if let Some(&i) = self.index.get(&self.name) {
            self.nodes[i].addr = addr;
        }
        self.incarnation += 1;
        let alive = crate::swim::AliveInfo {
            incarnation: self.incarnation,
            name: self.name.clone(),
            addr,
            meta: Arc::from(crate::serf::encode_tags(&self.tags)),
            versions: Some(VERSIONS),
        };
        self.alive_node(now, alive, None, true);
    }

    /// Removes a failed member now instead of waiting for the reconnect timeout
    /// (`force-leave`); with `prune` it is forgotten at once.
    pub fn force_leave(&mut self, now: Instant, node: &str, prune: bool) {
        let m = msg::SerfLeave { ltime: self.clock.time(), node: node.to_string(), prune };
        self.clock.increment();
        self.handle_leave_intent(now, &m);
        if self.has_alive_members() {
            self.queue_serf(crate::serf::Queue::Intent, msg::serf_kind::LEAVE, &m, None);
        }
    }

    // ------------------------------------------------------------ keyring

    /// The keyring (installed keys, primary first).
    pub fn keyring(&self) -> &Keyring {
        &self.env.keyring
    }

    /// Installs a key locally (cluster-wide installation is a query).
    pub fn install_key(&mut self, key: &[u8]) -> Result<(), CommandError> {
        if !self.env.keyring.is_enabled() {
            return Err(CommandError::Key(KeyError::NotInstalled));
        }
        Ok(self.env.keyring.install(key)?)
    }

    /// Makes an installed key primary locally.
    pub fn use_key(&mut self, key: &[u8]) -> Result<(), CommandError> {
        Ok(self.env.keyring.use_key(key)?)
    }

    /// Removes a non-primary key locally.
    pub fn remove_key(&mut self, key: &[u8]) -> Result<(), CommandError> {
        Ok(self.env.keyring.remove(key)?)
    }

    // ------------------------------------------------------------ views

    /// Our node name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Our gossip address.
    pub fn advertise(&self) -> SocketAddr {
        self.advertise
    }

    /// Our current tags.
    pub fn tags(&self) -> &Tags {
        &self.tags
    }

    /// Every member we know of (alive, leaving, left and failed), ourselves included.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values().map(|m| &m.member)
    }

    /// One member by name.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.get(name).map(|m| &m.member)
    }

    /// A member's network coordinate: ours, or the one its last direct ack carried (Serf's
    /// `GetCoordinate`). `None` when unknown or when coordinates are off.
    pub fn coordinate(&self, name: &str) -> Option<&crate::Coordinate> {
        let v = self.vivaldi.as_ref()?;
        if name == &*self.name { Some(v.coordinate()) } else { v.of(name) }
    }

    /// Members currently alive (ourselves included).
    pub fn alive_count(&self) -> usize {
        self.members.values().filter(|m| m.member.status == MemberStatus::Alive).count()
    }

    /// Lamport clocks: membership, events, queries.
    pub fn clocks(&self) -> (u64, u64, u64) {
        (self.clock.time(), self.event_clock.time(), self.query_clock.time())
    }

    /// Lifeguard's local health score (0 is healthy).
    pub fn health_score(&self) -> u32 {
        self.awareness
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Messages waiting in the intent, event and query queues.
    pub fn queue_depths(&self) -> (usize, usize, usize) {
        (self.intent_queue.len(), self.event_queue.len(), self.query_queue.len())
    }

    /// Whether gossip is encrypted.
    pub fn encrypted(&self) -> bool {
        self.env.keyring.is_enabled()
    }

    // ------------------------------------------------------------ plumbing

    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn emit(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    /// Sends a message with as many broadcasts piggy-backed as fit.
    pub(crate) fn send_msg(&mut self, to: SocketAddr, node: Option<&str>, m: Vec<u8>) {
        let avail = self
            .cfg
            .timing
            .udp_buffer_size
            .saturating_sub(m.len() + COMPOUND_HEADER_OVERHEAD + self.env.packet_overhead());
        let extra = self.get_broadcasts(COMPOUND_OVERHEAD, avail);
        if extra.is_empty() {
            self.raw_send(to, node, &m);
        } else {
            let mut parts: Vec<&[u8]> = Vec::with_capacity(extra.len() + 1);
            parts.push(&m);
            parts.extend(extra.iter().map(|e| &e[..]));
            let compound = make_compound(&parts);
            self.raw_send(to, node, &compound);
        }
    }

    /// Sends a message as is (plus CRC, encryption and label).
    pub(crate) fn raw_send(&mut self, to: SocketAddr, node: Option<&str>, m: &[u8]) {
        let with_crc = node.and_then(|n| self.index.get(n)).is_some_and(|&i| self.nodes[i].versions[1] >= 5);
        let data = self.env.seal_packet(&mut self.rng, m, with_crc);
        self.stats.packets_sent += 1;
        self.out.push_back(Output::Packet { to, data });
    }

    /// Sends a Serf message (already `[serf type][body]`) as a memberlist user packet.
    pub(crate) fn send_user(&mut self, to: SocketAddr, node: Option<&str>, serf_msg: &[u8]) {
        let mut m = Vec::with_capacity(serf_msg.len() + 1);
        m.push(kind::USER);
        m.extend_from_slice(serf_msg);
        self.raw_send(to, node, &m);
    }

    /// Broadcasts to piggy-back: memberlist's first, then Serf's intents, queries, events.
    pub(crate) fn get_broadcasts(&mut self, overhead: usize, limit: usize) -> Vec<Arc<[u8]>> {
        let mut out = Vec::new();
        let ml_limit = retransmit_limit(self.cfg.timing.retransmit_mult, self.nodes.len());
        let mut used = self.ml_queue.take(overhead, limit, ml_limit, &mut out, &mut self.finished);
        let serf_limit = retransmit_limit(self.cfg.timing.retransmit_mult, self.members.len());
        for q in [crate::serf::Queue::Intent, crate::serf::Queue::Query, crate::serf::Queue::Event] {
            if limit <= used + overhead {
                break;
            }
            let queue = match q {
                crate::serf::Queue::Intent => &mut self.intent_queue,
                crate::serf::Queue::Query => &mut self.query_queue,
                crate::serf::Queue::Event => &mut self.event_queue,
            };
            used += queue.take(overhead, limit - used, serf_limit, &mut out, &mut self.finished);
        }
        out
    }

    /// Starts a push/pull exchange with `addr`.
    pub(crate) fn start_push_pull(&mut self, now: Instant, addr: SocketAddr, join: Option<JoinId>) {
        let id = self.next_id();
        let data = self.local_state_message(join.is_some());
        let data = self.env.seal_stream(&mut self.rng, &data);
        self.streams.insert(id, StreamPurpose::PushPull { join });
        self.out.push_back(Output::Stream(StreamRequest {
            id,
            kind: StreamKind::PushPull,
            to: addr,
            data,
            deadline: now + self.cfg.timing.tcp_timeout,
        }));
    }

    /// Our full state as a push/pull message.
    pub(crate) fn local_state_message(&self, join: bool) -> Vec<u8> {
        let user = self.serf_local_state();
        let mut m = Vec::with_capacity(64 + 96 * self.nodes.len() + user.len());
        m.push(kind::PUSH_PULL);
        msg::PushPullHeader { nodes: self.nodes.len() as u32, user_state_len: user.len() as u32, join }
            .put(&mut m);
        for n in &self.nodes {
            n.to_push_state().put(&mut m);
        }
        m.extend_from_slice(&user);
        m
    }
}

/// Converts a wire address (4 or 16 bytes) to an IP.
pub(crate) fn ip_from_wire(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => {
            let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?);
            Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => None,
    }
}

/// Converts an IP to its wire form (4 bytes for IPv4, like Go's `To4`).
pub(crate) fn ip_to_wire(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}
