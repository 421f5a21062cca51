//! A cancellable timer queue keyed by deadline: the core's only notion of time passing.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Instant;

/// What a timer is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Start the next probe.
    ProbeTick,
    /// Piggy-back gossip to a few members.
    GossipTick,
    /// Anti-entropy state exchange with one member.
    PushPullTick,
    /// No direct ack for probe `seq`: go indirect.
    ProbeNoAck(u32),
    /// Probe `seq` is out of time.
    ProbeDeadline(u32),
    /// Last chance for a TCP fallback result of probe `seq`.
    ProbeGrace(u32),
    /// We relayed a ping for someone and heard nothing yet: nack if asked.
    RelayNack(u32),
    /// We relayed a ping for someone; stop waiting for its ack.
    RelayExpire(u32),
    /// Late nacks for a failed probe have had their chance: update our health score.
    NackGrace(u32),
    /// Suspicion of a member ran out.
    Suspicion(Arc<str>),
    /// Forget failed/left members whose time is up.
    Reap,
    /// Try to reach a failed member again.
    Reconnect,
    /// Next step of a graceful leave.
    Leave,
    /// One of our queries is over.
    QueryExpire(u64),
}

/// Identifies a scheduled timer.
pub(crate) type TimerId = u64;

#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, TimerId)>>,
    live: HashMap<TimerId, Timer>,
    next: TimerId,
}

impl Timers {
    /// Schedules `timer` at `at`.
    pub fn at(&mut self, at: Instant, timer: Timer) -> TimerId {
        self.next += 1;
        self.heap.push(Reverse((at, self.next)));
        self.live.insert(self.next, timer);
        self.next
    }

    /// Cancels a timer (no-op if it already fired).
    pub fn cancel(&mut self, id: TimerId) {
        self.live.remove(&id);
        // Keep the heap from growing without bound under heavy cancellation.
        if self.heap.len() > 64 && self.heap.len() > 4 * self.live.len() {
            let live = &self.live;
            self.heap.retain(|Reverse((_, id))| live.contains_key(id));
        }
    }

    /// The earliest deadline, if any (may belong to a cancelled timer: a harmless early wake-up).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops the next timer due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now {
                return None;
            }
            self.heap.pop();
            if let Some(t) = self.live.remove(&id) {
                return Some(t);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fires_in_order_and_skips_cancelled() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.at(t0 + Duration::from_secs(2), Timer::GossipTick);
        let c = t.at(t0 + Duration::from_secs(1), Timer::Reap);
        t.at(t0 + Duration::from_secs(1), Timer::ProbeTick);
        t.cancel(c);
        assert_eq!(t.pop_due(t0), None);
        assert_eq!(t.pop_due(t0 + Duration::from_secs(3)), Some(Timer::ProbeTick));
        assert_eq!(t.pop_due(t0 + Duration::from_secs(3)), Some(Timer::GossipTick));
        assert_eq!(t.pop_due(t0 + Duration::from_secs(3)), None);
        assert_eq!(t.next_deadline(), None);
    }
}
