//! Serf-style events for scripts and RPC streams: filters and coalescing.
//!
//! The core reports one member per event the moment it learns something. Serf's
//! consumers (handler scripts, `serf monitor`-style streams) instead see
//! *coalesced* events: member changes are batched for up to the coalesce period
//! (default 3 s) or until nothing happened for the quiescent period (1 s), and
//! only each member's latest change is delivered; user events marked
//! coalescible keep only the newest Lamport time per name. Consumers that must
//! react at once (the balancer, the membership snapshot) read the snapshot
//! instead and are never delayed.

use std::collections::HashMap;
use std::time::Duration;

use shoal_gossip::{Event, IncomingQuery, Member, MemberEventKind, UserEvent};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

/// An event as Serf's handlers and RPC streams see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerfEvent {
    /// Members joined, left, failed, changed or were reaped.
    Member {
        /// What happened.
        kind: MemberEventKind,
        /// To whom (one or more, after coalescing).
        members: Vec<Member>,
    },
    /// A user event.
    User(UserEvent),
    /// A query to answer.
    Query(IncomingQuery),
}

impl SerfEvent {
    /// Serf's event type name (`member-join`, …, `user`, `query`).
    pub fn type_name(&self) -> &'static str {
        match self {
            SerfEvent::Member { kind, .. } => kind.as_str(),
            SerfEvent::User(_) => "user",
            SerfEvent::Query(_) => "query",
        }
    }
}

/// One clause of Serf's event filter syntax (`member-join`, `user:deploy`, `query:load`, `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    /// Event type, or `*`.
    pub event: String,
    /// For `user` and `query`: the event or query name (empty: any).
    pub name: String,
}

/// Why a filter is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid event filter {0:?}: expected member-join, member-leave, member-failed, member-update, member-reap, user[:NAME], query[:NAME] or *"
)]
pub struct BadFilter(pub String);

impl EventFilter {
    /// Parses a comma-separated filter list; empty means `*`.
    pub fn parse_list(spec: &str) -> Result<Vec<EventFilter>, BadFilter> {
        let spec = if spec.is_empty() { "*" } else { spec };
        spec.split(',')
            .map(|clause| {
                let (event, name) = match clause.split_once(':') {
                    Some((e @ ("user" | "query"), n)) => (e, n),
                    _ => (clause, ""),
                };
                let valid = matches!(
                    event,
                    "member-join"
                        | "member-leave"
                        | "member-failed"
                        | "member-update"
                        | "member-reap"
                        | "user"
                        | "query"
                        | "*"
                );
                if !valid {
                    return Err(BadFilter(clause.to_string()));
                }
                Ok(EventFilter { event: event.to_string(), name: name.to_string() })
            })
            .collect()
    }

    /// Whether `e` passes this clause.
    pub fn matches(&self, e: &SerfEvent) -> bool {
        if self.event == "*" {
            return true;
        }
        if self.event != e.type_name() {
            return false;
        }
        match e {
            SerfEvent::User(u) => self.name.is_empty() || self.name == u.name,
            SerfEvent::Query(q) => self.name.is_empty() || self.name == q.name,
            SerfEvent::Member { .. } => true,
        }
    }
}

/// Whether any clause of `filters` passes `e`.
pub fn any_matches(filters: &[EventFilter], e: &SerfEvent) -> bool {
    filters.iter().any(|f| f.matches(e))
}

/// Coalescing periods; a zero period switches that kind of coalescing off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalescing {
    /// Longest a member change is held back.
    pub member_period: Duration,
    /// Member changes are released after this much calm.
    pub member_quiescent: Duration,
    /// Longest a coalescible user event is held back.
    pub user_period: Duration,
    /// Coalescible user events are released after this much calm.
    pub user_quiescent: Duration,
}

impl Default for Coalescing {
    /// Serf agent's defaults: 3 s period, 1 s quiescence, for both.
    fn default() -> Self {
        Coalescing {
            member_period: Duration::from_secs(3),
            member_quiescent: Duration::from_secs(1),
            user_period: Duration::from_secs(3),
            user_quiescent: Duration::from_secs(1),
        }
    }
}

impl Coalescing {
    /// No coalescing at all: every event is delivered at once.
    pub fn off() -> Self {
        Coalescing {
            member_period: Duration::ZERO,
            member_quiescent: Duration::ZERO,
            user_period: Duration::ZERO,
            user_quiescent: Duration::ZERO,
        }
    }
}

/// Batches member events: keeps each member's latest change, drops repeats.
#[derive(Default)]
struct MemberCoalescer {
    last: HashMap<String, MemberEventKind>,
    latest: HashMap<String, (MemberEventKind, Member)>,
}

impl MemberCoalescer {
    fn add(&mut self, kind: MemberEventKind, members: Vec<Member>) {
        for m in members {
            self.latest.insert(m.name.to_string(), (kind, m));
        }
    }

    fn flush(&mut self, out: &mut Vec<SerfEvent>) {
        let mut by_kind: Vec<(MemberEventKind, Vec<Member>)> = Vec::new();
        let mut latest: Vec<_> = self.latest.drain().collect();
        latest.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, (kind, member)) in latest {
            if self.last.get(&name) == Some(&kind) && kind != MemberEventKind::Update {
                continue;
            }
            self.last.insert(name, kind);
            match by_kind.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, ms)) => ms.push(member),
                None => by_kind.push((kind, vec![member])),
            }
        }
        out.extend(by_kind.into_iter().map(|(kind, members)| SerfEvent::Member { kind, members }));
    }
}

/// Keeps, per user event name, only the events of the newest Lamport time.
#[derive(Default)]
struct UserCoalescer {
    latest: HashMap<String, (u64, Vec<UserEvent>)>,
}

impl UserCoalescer {
    fn add(&mut self, e: UserEvent) {
        match self.latest.get_mut(&e.name) {
            Some((ltime, events)) if *ltime == e.ltime => events.push(e),
            Some((ltime, _)) if *ltime > e.ltime => {}
            _ => {
                self.latest.insert(e.name.clone(), (e.ltime, vec![e]));
            }
        }
    }

    fn flush(&mut self, out: &mut Vec<SerfEvent>) {
        out.extend(self.latest.drain().flat_map(|(_, (_, events))| events).map(SerfEvent::User));
    }
}

/// A timer pair: the batch ends at the period's end or after quiescence, whichever is first.
#[derive(Default)]
struct Window {
    period_end: Option<Instant>,
    calm_end: Option<Instant>,
}

impl Window {
    fn touch(&mut self, period: Duration, quiescent: Duration) {
        let now = Instant::now();
        self.period_end.get_or_insert(now + period);
        self.calm_end = Some(now + quiescent);
    }

    fn deadline(&self) -> Option<Instant> {
        match (self.period_end, self.calm_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn clear(&mut self) {
        *self = Window::default();
    }
}

/// Where coalesced events go.
#[derive(Clone)]
pub(crate) struct EventSinks {
    /// RPC streams and other best-effort subscribers.
    pub broadcast: std::sync::Arc<crate::fanout::Fanout<SerfEvent>>,
    /// The handler-script runner (bounded: see [`HANDLER_QUEUE`]).
    pub handlers: Option<mpsc::Sender<SerfEvent>>,
    /// Events the handler queue had no room for.
    pub handler_drops: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Events waiting for handler scripts. Member events wait for room (they are coalesced and
/// their rate follows membership churn); user events and queries, which any peer can send
/// at will, are dropped and counted when scripts cannot keep up.
pub(crate) const HANDLER_QUEUE: usize = 1024;

impl EventSinks {
    async fn send(&self, e: SerfEvent) {
        if let Some(h) = &self.handlers {
            let queued = match &e {
                SerfEvent::Member { .. } => h.send(e.clone()).await.is_ok(),
                _ => h.try_send(e.clone()).is_ok() || h.is_closed(),
            };
            if !queued {
                let n = self.handler_drops.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        dropped = n,
                        event = e.type_name(),
                        "handler scripts cannot keep up; events dropped"
                    );
                }
            }
        }
        self.broadcast.send(e);
    }
}

/// Turns the core's events into coalesced Serf events, until `input` closes.
pub(crate) async fn coalesce(mut input: mpsc::Receiver<Event>, sinks: EventSinks, cfg: Coalescing) {
    let coalesce_members = !cfg.member_period.is_zero() && !cfg.member_quiescent.is_zero();
    let coalesce_users = !cfg.user_period.is_zero() && !cfg.user_quiescent.is_zero();
    let (mut members, mut users) = (MemberCoalescer::default(), UserCoalescer::default());
    let (mut member_window, mut user_window) = (Window::default(), Window::default());
    let mut out = Vec::new();
    loop {
        let next = [member_window.deadline(), user_window.deadline()].into_iter().flatten().min();
        tokio::select! {
            e = input.recv() => {
                let Some(e) = e else { break };
                match e {
                    Event::Member { kind, member } if coalesce_members => {
                        members.add(kind, vec![member]);
                        member_window.touch(cfg.member_period, cfg.member_quiescent);
                    }
                    Event::Member { kind, member } => sinks.send(SerfEvent::Member { kind, members: vec![member] }).await,
                    Event::User(u) if coalesce_users && u.coalesce => {
                        users.add(u);
                        user_window.touch(cfg.user_period, cfg.user_quiescent);
                    }
                    Event::User(u) => sinks.send(SerfEvent::User(u)).await,
                    Event::Query(q) if !q.name.starts_with(shoal_gossip::INTERNAL_QUERY_PREFIX) => {
                        sinks.send(SerfEvent::Query(q)).await;
                    }
                    _ => {}
                }
            }
            () = async { if let Some(t) = next { sleep_until(t).await } else { std::future::pending().await } } => {
                let now = Instant::now();
                if member_window.deadline().is_some_and(|t| t <= now) {
                    members.flush(&mut out);
                    member_window.clear();
                }
                if user_window.deadline().is_some_and(|t| t <= now) {
                    users.flush(&mut out);
                    user_window.clear();
                }
                for e in out.drain(..) {
                    sinks.send(e).await;
                }
            }
        }
    }
    members.flush(&mut out);
    users.flush(&mut out);
    for e in out.drain(..) {
        sinks.send(e).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn member(name: &str) -> Member {
        Member {
            name: Arc::from(name),
            addr: "10.0.0.1:7946".parse().unwrap(),
            tags: Arc::default(),
            status: shoal_gossip::MemberStatus::Alive,
            versions: [1, 5, 2, 2, 5, 5],
        }
    }

    #[test]
    fn filters_parse_and_match_like_serf() {
        let f = EventFilter::parse_list("member-join,user:deploy,query").unwrap();
        assert_eq!(f.len(), 3);
        let join = SerfEvent::Member { kind: MemberEventKind::Join, members: vec![] };
        let leave = SerfEvent::Member { kind: MemberEventKind::Leave, members: vec![] };
        let user = |n: &str| {
            SerfEvent::User(UserEvent { ltime: 1, name: n.into(), payload: vec![], coalesce: false })
        };
        assert!(any_matches(&f, &join));
        assert!(!any_matches(&f, &leave));
        assert!(any_matches(&f, &user("deploy")));
        assert!(!any_matches(&f, &user("other")));
        assert!(any_matches(&EventFilter::parse_list("").unwrap(), &leave));
        assert!(EventFilter::parse_list("member-explode").is_err());
    }

    #[test]
    fn member_coalescer_keeps_latest_and_drops_repeats() {
        let mut c = MemberCoalescer::default();
        let mut out = Vec::new();
        c.add(MemberEventKind::Join, vec![member("a")]);
        c.add(MemberEventKind::Failed, vec![member("a")]);
        c.add(MemberEventKind::Join, vec![member("b")]);
        c.flush(&mut out);
        assert_eq!(out.len(), 2);
        out.clear();
        c.add(MemberEventKind::Join, vec![member("b")]); // same as last time: dropped
        c.add(MemberEventKind::Update, vec![member("b")]);
        c.flush(&mut out);
        assert_eq!(
            out,
            vec![SerfEvent::Member { kind: MemberEventKind::Update, members: vec![member("b")] }]
        );
    }

    #[test]
    fn user_coalescer_keeps_newest_ltime_per_name() {
        let mut c = UserCoalescer::default();
        let e = |l, n: &str| UserEvent { ltime: l, name: n.into(), payload: vec![], coalesce: true };
        c.add(e(1, "deploy"));
        c.add(e(3, "deploy"));
        c.add(e(2, "deploy"));
        c.add(e(3, "deploy"));
        c.add(e(1, "other"));
        let mut out = Vec::new();
        c.flush(&mut out);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|e| matches!(e, SerfEvent::User(u) if u.name == "other" || u.ltime == 3)));
    }
}
