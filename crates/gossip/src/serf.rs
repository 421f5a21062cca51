//! Serf's layer: member history with Lamport-ordered intents, tags, user events, reaping.
//!
//! memberlist only knows alive/suspect/dead. Serf adds *why* a member went away:
//! before leaving, a member broadcasts a leave *intent* stamped with its Lamport
//! clock, so when memberlist later reports it gone, everyone records `left`
//! instead of `failed`. Intents that arrive before the member itself is known
//! are buffered. Failed members are retried now and then (reconnect) and
//! forgotten after the reconnect timeout; members that left are forgotten after
//! the tombstone timeout. User events are de-duplicated in a ring of recent
//! Lamport times. Tags travel in memberlist metadata as `[0xff][msgpack map]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rand::Rng;

use crate::envelope::DropReason;
use crate::event::{Event, Member, MemberEventKind, MemberStatus, Tags, UserEvent};
use crate::gossip::{CommandError, Gossip};
use crate::limits::{LTIME_HORIZON, LTIME_MAX};
use crate::messages::{self as msg, kind, serf_kind};
use crate::mp::{self, Wire};
use crate::swim::{NodeState, State};

/// Marks metadata that holds msgpack-encoded tags rather than a bare role.
pub(crate) const TAG_MAGIC: u8 = 0xff;
/// Most intents kept for members not yet seen (each is a few dozen bytes).
const INTENTS_MAX: usize = 4096;
/// Serf's hard ceiling for a user event, whatever the configured limit.
const USER_EVENT_SANE_LIMIT: usize = 9 * 1024;

/// A Lamport clock.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Lamport(u64);

impl Lamport {
    pub fn time(self) -> u64 {
        self.0
    }
    pub fn increment(&mut self) -> u64 {
        self.0 = self.0.saturating_add(1);
        self.0
    }
    /// Moves past `t` if `t` is not behind us; never wraps.
    pub fn witness(&mut self, t: u64) {
        if t >= self.0 {
            self.0 = t.saturating_add(1);
        }
    }
    /// Whether a gossiped message stamped `t` could come from an honest member: not past
    /// [`LTIME_MAX`] and no more than [`LTIME_HORIZON`] ahead of this clock.
    pub fn plausible(self, t: u64) -> bool {
        t <= LTIME_MAX && t <= self.0.saturating_add(LTIME_HORIZON)
    }
}

/// Our own Serf state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SerfState {
    Alive,
    Leaving,
    Left,
}

/// A member with its Serf history.
#[derive(Debug, Clone)]
pub(crate) struct SerfMember {
    pub member: Member,
    pub status_ltime: u64,
    pub leave_time: Option<Instant>,
}

/// A join or leave intent for a member we have not seen yet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Intent {
    pub leave: bool,
    pub ltime: u64,
    pub seen: Instant,
}

/// Serf's three broadcast queues.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Queue {
    Intent,
    Event,
    Query,
}

/// Encodes tags as Serf (protocol ≥ 3) does: `[0xff][msgpack map]`.
pub fn encode_tags(tags: &Tags) -> Vec<u8> {
    let mut buf = vec![TAG_MAGIC];
    tags.put(&mut buf);
    buf
}

/// Decodes metadata into tags; metadata without the magic byte is a bare role.
pub fn decode_tags(meta: &[u8]) -> Tags {
    match meta.split_first() {
        Some((&TAG_MAGIC, rest)) => mp::decode::<BTreeMap<String, String>>(rest).unwrap_or_default(),
        _ => Tags::from([("role".to_string(), String::from_utf8_lossy(meta).into_owned())]),
    }
}

impl Gossip {
    fn member_from_node(n: &NodeState, status: MemberStatus) -> Member {
        Member {
            name: n.name.clone(),
            addr: n.addr,
            tags: Arc::new(decode_tags(&n.meta)),
            status,
            versions: n.versions,
        }
    }

    fn emit_member(&mut self, kind: MemberEventKind, member: Member) {
        tracing::debug!(event = %kind, node = %member.name, addr = %member.addr, "member event");
        self.emit(Event::Member { kind, member });
    }

    /// memberlist says `n` is alive (new, or back from the dead).
    pub(crate) fn notify_join(&mut self, _now: Instant, n: &NodeState) {
        let recent = self.intents.remove(&*n.name);
        let entry = self.members.entry(n.name.clone()).or_insert_with(|| SerfMember {
            member: Self::member_from_node(n, MemberStatus::Alive),
            status_ltime: 0,
            leave_time: None,
        });
        entry.member = Self::member_from_node(n, MemberStatus::Alive);
        entry.leave_time = None;
        if let Some(intent) = recent
            && intent.ltime > entry.status_ltime
        {
            entry.status_ltime = intent.ltime;
            if intent.leave {
                entry.member.status = MemberStatus::Leaving;
            }
        }
        let member = entry.member.clone();
        self.emit_member(MemberEventKind::Join, member);
    }

    /// memberlist says `n` is gone: `left` if it said goodbye, `failed` otherwise.
    pub(crate) fn notify_leave(&mut self, now: Instant, n: &NodeState) {
        let Some(m) = self.members.get_mut(&n.name) else { return };
        let status = match m.member.status {
            MemberStatus::Leaving => MemberStatus::Left,
            // memberlist itself knows the node left on purpose: trust it even if the intent was missed.
            MemberStatus::Alive if n.state == State::Left => MemberStatus::Left,
            MemberStatus::Alive => MemberStatus::Failed,
            _ => return,
        };
        m.member.status = status;
        m.leave_time = Some(now);
        let member = m.member.clone();
        let kind =
            if status == MemberStatus::Left { MemberEventKind::Leave } else { MemberEventKind::Failed };
        self.emit_member(kind, member);
    }

    /// memberlist says `n` changed its metadata or address.
    pub(crate) fn notify_update(&mut self, _now: Instant, n: &NodeState) {
        let Some(m) = self.members.get_mut(&n.name) else { return };
        let status = m.member.status;
        m.member = Self::member_from_node(n, status);
        let member = m.member.clone();
        self.emit_member(MemberEventKind::Update, member);
    }

    /// Whether anyone but us is alive (worth broadcasting to).
    pub(crate) fn has_alive_members(&self) -> bool {
        self.members.values().any(|m| m.member.status == MemberStatus::Alive && m.member.name != self.name)
    }

    /// Encodes a Serf message as a memberlist user message and queues it.
    pub(crate) fn queue_serf<T: Wire>(&mut self, q: Queue, ty: u8, m: &T, notify: Option<u64>) {
        let mut buf = vec![kind::USER, ty];
        m.put(&mut buf);
        self.queue_serf_raw(q, buf, notify);
    }

    fn queue_serf_raw(&mut self, q: Queue, user_msg: Vec<u8>, notify: Option<u64>) {
        let queue = match q {
            Queue::Intent => &mut self.intent_queue,
            Queue::Event => &mut self.event_queue,
            Queue::Query => &mut self.query_queue,
        };
        queue.push(Arc::from(user_msg), None, notify, &mut self.finished);
        // Like Serf, keep queues bounded: drop the most-sent messages first.
        let max = (2 * self.members.len()).max(4096);
        queue.prune(max, &mut self.finished);
    }

    pub(crate) fn broadcast_join(&mut self, now: Instant, ltime: u64) {
        let m = msg::SerfJoin { ltime, node: self.name.to_string() };
        self.clock.witness(ltime);
        self.handle_join_intent(now, &m);
        self.queue_serf(Queue::Intent, serf_kind::JOIN, &m, None);
    }

    /// A Serf message carried in a memberlist user message.
    pub(crate) fn notify_msg(&mut self, now: Instant, buf: &[u8]) -> Result<(), DropReason> {
        let Some((&ty, body)) = buf.split_first() else { return Ok(()) };
        let rebroadcast = match ty {
            serf_kind::LEAVE => {
                let m: msg::SerfLeave = mp::decode(body)?;
                self.plausible_clock(self.clock, m.ltime)?;
                self.handle_leave_intent(now, &m).then_some(Queue::Intent)
            }
            serf_kind::JOIN => {
                let m: msg::SerfJoin = mp::decode(body)?;
                self.plausible_clock(self.clock, m.ltime)?;
                self.handle_join_intent(now, &m).then_some(Queue::Intent)
            }
            serf_kind::USER_EVENT => {
                let m: msg::SerfUserEvent = mp::decode(body)?;
                self.plausible_clock(self.event_clock, m.ltime)?;
                self.handle_user_event(&m).then_some(Queue::Event)
            }
            serf_kind::QUERY => {
                let m: msg::SerfQuery = mp::decode(body)?;
                self.plausible_clock(self.query_clock, m.ltime)?;
                self.handle_query(now, m).then_some(Queue::Query)
            }
            serf_kind::QUERY_RESPONSE => {
                let m: msg::SerfQueryResponse = mp::decode(body)?;
                self.handle_query_response(m);
                None
            }
            serf_kind::RELAY => {
                self.handle_relay(body)?;
                None
            }
            _ => return Err(DropReason::UnknownType),
        };
        if let Some(q) = rebroadcast {
            let mut user = Vec::with_capacity(buf.len() + 1);
            user.push(kind::USER);
            user.extend_from_slice(buf);
            self.queue_serf_raw(q, user, None);
        }
        Ok(())
    }

    /// Refuses a message stamped too far ahead of `clock` (see [`Lamport::plausible`]).
    fn plausible_clock(&self, clock: Lamport, t: u64) -> Result<(), DropReason> {
        if clock.plausible(t) {
            return Ok(());
        }
        tracing::debug!(ltime = t, clock = clock.time(), "message stamped too far ahead: refused");
        Err(DropReason::Forged)
    }

    /// Returns whether the intent is news worth re-broadcasting.
    pub(crate) fn handle_leave_intent(&mut self, now: Instant, m: &msg::SerfLeave) -> bool {
        self.clock.witness(m.ltime);
        let Some(member) = self.members.get_mut(m.node.as_str()) else {
            return self.upsert_intent(now, &m.node, true, m.ltime);
        };
        if m.ltime <= member.status_ltime {
            return false;
        }
        if m.node == *self.name && self.serf_state == SerfState::Alive {
            tracing::debug!("refuting an older leave intent");
            let ltime = self.clock.time();
            self.broadcast_join(now, ltime);
            return false;
        }
        member.status_ltime = m.ltime;
        let rebroadcast = match member.member.status {
            MemberStatus::Alive => {
                member.member.status = MemberStatus::Leaving;
                true
            }
            MemberStatus::Failed => {
                member.member.status = MemberStatus::Left;
                let m2 = member.member.clone();
                self.emit_member(MemberEventKind::Leave, m2);
                true
            }
            MemberStatus::Leaving | MemberStatus::Left => true,
        };
        // Pruning forgets a member for good, so it only ever applies to one that is already
        // gone: a live member can still refute the leave, and must stay in the view to do so.
        let gone = self.members.get(m.node.as_str()).map(|x| x.member.status);
        if m.prune && matches!(gone, Some(MemberStatus::Left | MemberStatus::Failed)) {
            self.erase_member(&m.node);
        }
        rebroadcast
    }

    pub(crate) fn handle_join_intent(&mut self, now: Instant, m: &msg::SerfJoin) -> bool {
        self.clock.witness(m.ltime);
        let Some(member) = self.members.get_mut(m.node.as_str()) else {
            return self.upsert_intent(now, &m.node, false, m.ltime);
        };
        if m.ltime <= member.status_ltime {
            return false;
        }
        member.status_ltime = m.ltime;
        if member.member.status == MemberStatus::Leaving {
            member.member.status = MemberStatus::Alive;
        }
        true
    }

    fn upsert_intent(&mut self, now: Instant, node: &str, leave: bool, ltime: u64) -> bool {
        if crate::limits::check_name(node).is_err() {
            return false;
        }
        match self.intents.get(node) {
            Some(i) if ltime <= i.ltime => false,
            None if self.intents.len() >= INTENTS_MAX => false,
            _ => {
                self.intents.insert(node.to_string(), crate::serf::Intent { leave, ltime, seen: now });
                true
            }
        }
    }

    fn erase_member(&mut self, node: &str) {
        if let Some(v) = self.vivaldi.as_mut() {
            v.forget(node);
        }
        if let Some(m) = self.members.remove(node) {
            self.emit_member(MemberEventKind::Reap, m.member);
        }
    }

    // -------------------------------------------------------- user events

    /// Fires a user event cluster-wide (delivered locally too).
    pub fn user_event(
        &mut self,
        _now: Instant,
        name: &str,
        payload: &[u8],
        coalesce: bool,
    ) -> Result<(), CommandError> {
        let size = name.len() + payload.len();
        let limit = self.cfg.user_event_size_limit.min(USER_EVENT_SANE_LIMIT);
        if size > limit {
            return Err(CommandError::TooLarge { what: "user event", size, limit });
        }
        let m = msg::SerfUserEvent {
            ltime: self.event_clock.time(),
            name: name.to_string(),
            payload: payload.to_vec(),
            cc: coalesce,
        };
        let encoded = mp::encode_with_type(serf_kind::USER_EVENT, &m);
        if encoded.len() > limit {
            return Err(CommandError::TooLarge { what: "encoded user event", size: encoded.len(), limit });
        }
        self.event_clock.increment();
        self.handle_user_event(&m);
        self.queue_serf(Queue::Event, serf_kind::USER_EVENT, &m, None);
        Ok(())
    }

    /// Returns whether the event is new (and so worth re-broadcasting).
    pub(crate) fn handle_user_event(&mut self, m: &msg::SerfUserEvent) -> bool {
        self.event_clock.witness(m.ltime);
        if m.ltime < self.event_min_time {
            return false;
        }
        let len = self.event_buffer.len() as u64;
        let cur = self.event_clock.time();
        if cur > len && m.ltime < cur - len {
            tracing::warn!(name = %m.name, ltime = m.ltime, current = cur, "received old user event");
            return false;
        }
        let record = msg::SerfUserEventRecord { name: m.name.clone(), payload: m.payload.clone() };
        let slot = &mut self.event_buffer[(m.ltime % len) as usize];
        match slot {
            Some(seen) if seen.ltime == m.ltime => {
                if seen.events.contains(&record) {
                    return false;
                }
                seen.events.push(record);
            }
            _ => *slot = Some(msg::SerfUserEvents { ltime: m.ltime, events: vec![record] }),
        }
        self.emit(Event::User(UserEvent {
            ltime: m.ltime,
            name: m.name.clone(),
            payload: m.payload.clone(),
            coalesce: m.cc,
        }));
        true
    }

    // -------------------------------------------------------- push/pull

    /// Serf's part of our push/pull state.
    pub(crate) fn serf_local_state(&self) -> Vec<u8> {
        let pp = msg::SerfPushPull {
            ltime: self.clock.time(),
            status_ltimes: self.members.iter().map(|(k, m)| (k.to_string(), m.status_ltime)).collect(),
            left_members: self
                .members
                .values()
                .filter(|m| m.member.status == MemberStatus::Left)
                .map(|m| m.member.name.to_string())
                .collect(),
            event_ltime: self.event_clock.time(),
            events: self.event_buffer.iter().filter(|e| e.is_some()).cloned().collect(),
            query_ltime: self.query_clock.time(),
        };
        mp::encode_with_type(serf_kind::PUSH_PULL, &pp)
    }

    /// Merges a peer's Serf state. Its clocks may move ours far ahead only when the exchange is
    /// one our own join started (a fresh node learning the cluster's time); otherwise they are
    /// held to the same horizon as gossiped messages.
    pub(crate) fn merge_serf_state(&mut self, now: Instant, buf: &[u8], own_join: bool, ignore_old: bool) {
        let Some((&serf_kind::PUSH_PULL, body)) = buf.split_first() else {
            self.drop_input(DropReason::Malformed, self.advertise);
            return;
        };
        let Ok(pp) = mp::decode::<msg::SerfPushPull>(body) else {
            self.drop_input(DropReason::Malformed, self.advertise);
            return;
        };
        let plausible = |clock: Lamport, t: u64| {
            if own_join { t <= LTIME_MAX } else { clock.plausible(t) }
        };
        let clocks =
            [(pp.ltime, self.clock), (pp.event_ltime, self.event_clock), (pp.query_ltime, self.query_clock)];
        if clocks.iter().any(|&(t, clock)| !plausible(clock, t))
            || pp.status_ltimes.values().any(|&t| !plausible(self.clock, t))
            || pp.events.iter().flatten().any(|e| !plausible(self.event_clock, e.ltime))
        {
            tracing::debug!(
                ltime = pp.ltime,
                clock = self.clock.time(),
                "push/pull state stamped too far ahead: refused"
            );
            self.drop_input(DropReason::Forged, self.advertise);
            return;
        }
        if pp.ltime > 0 {
            self.clock.witness(pp.ltime - 1);
        }
        if pp.event_ltime > 0 {
            self.event_clock.witness(pp.event_ltime - 1);
        }
        if pp.query_ltime > 0 {
            self.query_clock.witness(pp.query_ltime - 1);
        }
        for name in &pp.left_members {
            let ltime = pp.status_ltimes.get(name).copied().unwrap_or(0).saturating_add(1);
            let leave = msg::SerfLeave { ltime, node: name.clone(), prune: false };
            let was_alive =
                self.members.get(name.as_str()).is_some_and(|m| m.member.status == MemberStatus::Alive);
            if self.handle_leave_intent(now, &leave) && was_alive {
                // Spread it: if the member is in fact alive, it hears of the claim and refutes it.
                self.queue_serf(Queue::Intent, serf_kind::LEAVE, &leave, None);
            }
        }
        let left: std::collections::BTreeSet<&str> = pp.left_members.iter().map(String::as_str).collect();
        for (name, &ltime) in &pp.status_ltimes {
            if left.contains(name.as_str()) {
                continue;
            }
            self.handle_join_intent(now, &msg::SerfJoin { ltime, node: name.clone() });
        }
        if ignore_old && pp.event_ltime > self.event_min_time {
            self.event_min_time = pp.event_ltime;
        }
        for events in pp.events.iter().flatten() {
            for e in &events.events {
                let m = msg::SerfUserEvent {
                    ltime: events.ltime,
                    name: e.name.clone(),
                    payload: e.payload.clone(),
                    cc: false,
                };
                self.handle_user_event(&m);
            }
        }
    }

    // -------------------------------------------------------- housekeeping

    /// Forgets failed and left members whose time is up, and stale intents.
    pub(crate) fn reap(&mut self, now: Instant) {
        self.timers.at(now + self.cfg.serf.reap_interval, crate::timers::Timer::Reap);
        let (reconnect, tombstone) = (self.cfg.serf.reconnect_timeout, self.cfg.serf.tombstone_timeout);
        let expired: Vec<Arc<str>> = self
            .members
            .values()
            .filter(|m| {
                let timeout = match m.member.status {
                    MemberStatus::Failed => reconnect,
                    MemberStatus::Left => tombstone,
                    _ => return false,
                };
                m.leave_time.is_some_and(|t| now.saturating_duration_since(t) > timeout)
            })
            .map(|m| m.member.name.clone())
            .collect();
        for name in expired {
            tracing::info!(node = %name, "reaping member");
            self.erase_member(&name);
        }
        let keep = self.cfg.serf.recent_intent_timeout;
        self.intents.retain(|_, i| now.saturating_duration_since(i.seen) <= keep);
    }

    /// Now and then, tries to reach a failed member again (it may be back after a partition).
    pub(crate) fn reconnect(&mut self, now: Instant) {
        self.timers.at(now + self.cfg.serf.reconnect_interval, crate::timers::Timer::Reconnect);
        let failed: Vec<SocketAddr> = self
            .members
            .values()
            .filter(|m| m.member.status == MemberStatus::Failed)
            .map(|m| m.member.addr)
            .collect();
        if failed.is_empty() || self.serf_state != SerfState::Alive {
            return;
        }
        let alive = self.members.len().saturating_sub(
            failed.len() + self.members.values().filter(|m| m.member.status == MemberStatus::Left).count(),
        );
        let prob = failed.len() as f64 / alive.max(1) as f64;
        if self.rng.random::<f64>() > prob {
            return;
        }
        let addr = failed[self.rng.random_range(0..failed.len())];
        tracing::debug!(%addr, "attempting reconnect to failed member");
        self.start_push_pull(now, addr, None);
    }

    /// Member counts by status: (alive, leaving, left, failed).
    pub fn status_counts(&self) -> [usize; 4] {
        let mut c = [0; 4];
        for m in self.members.values() {
            c[match m.member.status {
                MemberStatus::Alive => 0,
                MemberStatus::Leaving => 1,
                MemberStatus::Left => 2,
                MemberStatus::Failed => 3,
            }] += 1;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_bare_role() {
        let tags = Tags::from([("role".into(), "backend".into()), ("port".into(), "3000".into())]);
        let meta = encode_tags(&tags);
        assert_eq!(meta[0], 0xff);
        assert_eq!(decode_tags(&meta), tags);
        assert_eq!(decode_tags(b"web"), Tags::from([("role".into(), "web".into())]));
        assert_eq!(decode_tags(b""), Tags::from([("role".into(), String::new())]));
        assert_eq!(decode_tags(&[0xff, 0x01]), Tags::new());
    }

    #[test]
    fn lamport_clock_witnesses() {
        let mut c = Lamport::default();
        c.increment();
        c.witness(10);
        assert_eq!(c.time(), 11);
        c.witness(3);
        assert_eq!(c.time(), 11);
    }
}
