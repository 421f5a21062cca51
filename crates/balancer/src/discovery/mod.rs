//! Servers that run no agent: pools whose servers come from DNS answers ([`dns`]) or from a
//! Docker engine's containers ([`docker`]) instead of gossip membership.
//!
//! Each pool configured with a source gets one task ([`spawn`]) that follows it and publishes
//! the set of servers it currently finds through a [`Publisher`] into the pool, and the
//! controller syncs the pool as it does on a membership change; so a discovered server is
//! a server like any member: the same admission policy (an address must pass it to be routed
//! to), active health checks, passive detection, retries, drain, stats rows, sticky cookies
//! and weights (capped at the pool's `max_weight`). A server's name is what the source says
//! (a container's name, a DNS target), checked against the gossip core's limits for member
//! names ([`shoal_gossip::limits::check_name`]); what fails them falls back to a name made of
//! the address or the container's id.
//!
//! A publisher holds only a weak reference to its pool: a reload that replaces the pool aborts
//! the task, and a task that outlives its pool ends at its next publish.

pub mod dns;
pub mod docker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::PoolConfig;

/// A server a discovery source found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its name in the pool (stats, logs, the sticky cookie's hash).
    pub name: Arc<str>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its weight, already capped at the pool's `max_weight`.
    pub weight: u32,
    /// Going away (a container being stopped): no new requests, in-flight ones finish.
    pub draining: bool,
}

/// Where a source's task publishes what it finds: its pool, as long as the pool exists.
#[derive(Clone)]
pub struct Publisher {
    sink: Arc<dyn Fn(Vec<Found>) -> bool + Send + Sync>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// Publishes to `sink`, which says whether anyone still listens.
    pub fn to(sink: impl Fn(Vec<Found>) -> bool + Send + Sync + 'static) -> Publisher {
        Publisher { sink: Arc::new(sink) }
    }

    /// Replaces the pool's discovered servers (sorted by name, one per name); false once the
    /// pool is gone (the task ends).
    pub fn publish(&self, mut found: Vec<Found>) -> bool {
        found.sort_by(|a, b| a.name.cmp(&b.name));
        found.dedup_by(|a, b| a.name == b.name);
        (self.sink)(found)
    }
}

/// Starts following the source of pool `name` configured as `cfg`, if it has one, publishing
/// to `out`.
pub fn spawn(cfg: &PoolConfig, name: Arc<str>, out: Publisher) -> Option<JoinHandle<()>> {
    if let Some(src) = &cfg.dns {
        let target = dns::Target { port: src.port.unwrap_or(cfg.port), max_weight: cfg.max_weight };
        tracing::info!(pool = %name, dns = %src.name, record = ?src.record, "servers from DNS");
        return Some(tokio::spawn(dns::run(src.clone(), target, name, out)));
    }
    if let Some(src) = &cfg.docker {
        let target = docker::Target { port: cfg.port, max_weight: cfg.max_weight };
        tracing::info!(pool = %name, socket = %src.socket.display(), "servers from the Docker engine");
        return Some(tokio::spawn(docker::run(src.clone(), target, name, out)));
    }
    None
}

/// A server name from what a source says, if it meets the limits for member names.
pub fn valid_name(name: &str) -> Option<Arc<str>> {
    shoal_gossip::limits::check_name(name).ok().map(|()| Arc::from(name))
}

/// Exponential back-off between attempts: `first`, doubled after each failure up to `max`,
/// back to `first` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starting at `first`, never above `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max, next: first }
    }

    /// The wait before the next attempt (and doubles the one after).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// After a success: the next wait is `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling_and_starts_over_after_a_success() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let waits: Vec<u64> = (0..5).map(|_| b.next_wait().as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(500));
    }

    #[test]
    fn names_meet_the_member_name_limits() {
        assert_eq!(valid_name("web-1").as_deref(), Some("web-1"));
        assert_eq!(valid_name("10.0.0.1:3000").as_deref(), Some("10.0.0.1:3000"));
        for bad in ["", "a b", "a/b", "..", "x\u{1b}[31m", &"n".repeat(300)] {
            assert!(valid_name(bad).is_none(), "{bad:?}");
        }
    }
}
