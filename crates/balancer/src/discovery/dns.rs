//! Servers from DNS: what a name resolves to (A, AAAA or SRV records), resolved again when the
//! answer's TTL runs out.
//!
//! The resolver is hickory's, configured from `/etc/resolv.conf` (inside a container that is
//! Docker's embedded DNS, 127.0.0.11, which answers compose service names and swarm's
//! `tasks.<service>`). Its cache is off: the task decides when to ask again, after the
//! answer's smallest TTL clamped into the source's `min_ttl..=max_ttl`.
//!
//! A/AAAA answers give one server per address, named `ADDRESS:PORT`. SRV answers give one
//! server per target and port (RFC 2782: only the records of the lowest priority), named
//! `TARGET:PORT`, at the target's first address, with the record's weight (0 counts as 1,
//! capped at the pool's `max_weight`). Answers are bounded: at most [`MAX_SERVERS`] servers.
//!
//! A failed or empty answer keeps the last good set for `keep_last` ([`Keeper`]), then empties
//! the pool; each transition is logged once.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{RData, RecordType};

use super::{Backoff, Found, Publisher, valid_name};
use crate::config::{DnsRecord, DnsSource};

/// Most servers one answer may give; the rest are ignored (logged).
pub const MAX_SERVERS: usize = 256;

/// What the pool needs of each server: the port of A/AAAA targets and the weight cap.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Port for A and AAAA answers.
    pub port: u16,
    /// The pool's `max_weight`.
    pub max_weight: u32,
}

/// Why a resolution gave no servers.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The resolver could not be set up (no usable `/etc/resolv.conf`).
    #[error("cannot set up the resolver: {0}")]
    Setup(hickory_resolver::net::NetError),
    /// The lookup failed (no answer, NXDOMAIN, timeout).
    #[error("{name} {record:?}: {source}")]
    Lookup {
        /// The name asked for.
        name: String,
        /// The record type.
        record: RecordType,
        /// Why.
        source: hickory_resolver::net::NetError,
    },
    /// The answer held no usable record.
    #[error("{0}: the answer holds no usable address")]
    Empty(String),
}

/// Follows `src`, publishing into `out` until the pool is gone.
pub async fn run(src: DnsSource, target: Target, pool: Arc<str>, out: Publisher) {
    let mut setup = Backoff::new(src.min_ttl, src.max_ttl);
    let resolver = loop {
        match resolver() {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(%pool, error = %e, "DNS discovery: no resolver; retrying");
                tokio::time::sleep(setup.next_wait()).await;
            }
        }
    };
    let mut keeper = Keeper::new(src.keep_last);
    let mut retry = Backoff::new(src.min_ttl, src.max_ttl);
    loop {
        let answer = resolve(&resolver, &src, target).await;
        let now = Instant::now();
        let wait = match &answer {
            Ok((_, ttl)) => {
                retry.reset();
                (*ttl).clamp(src.min_ttl, src.max_ttl)
            }
            Err(_) => retry.next_wait(),
        };
        let answer = answer.map(|(set, _)| set).map_err(|e| e.to_string());
        if let Some(set) = keeper.answer(answer, now, &pool)
            && !out.publish(set)
        {
            return;
        }
        tokio::time::sleep(keeper.remaining(now).map_or(wait, |left| wait.min(left.max(src.min_ttl)))).await;
    }
}

/// The system's resolver, without a cache: the task decides when to ask again.
fn resolver() -> Result<TokioResolver, DnsError> {
    let mut builder = TokioResolver::builder_tokio().map_err(DnsError::Setup)?;
    let opts = builder.options_mut();
    opts.cache_size = 0;
    opts.positive_max_ttl = Some(Duration::from_secs(1));
    opts.negative_max_ttl = Some(Duration::from_secs(1));
    builder.build().map_err(DnsError::Setup)
}

/// One resolution: the servers and the answer's smallest TTL.
async fn resolve(
    resolver: &TokioResolver,
    src: &DnsSource,
    target: Target,
) -> Result<(Vec<Found>, Duration), DnsError> {
    let record = match src.record {
        DnsRecord::A => RecordType::A,
        DnsRecord::Aaaa => RecordType::AAAA,
        DnsRecord::Srv => RecordType::SRV,
    };
    let failed = |source| DnsError::Lookup { name: src.name.clone(), record, source };
    let lookup = resolver.lookup(src.name.as_str(), record).await.map_err(failed)?;
    let ttl = lookup.answers().iter().map(|r| r.ttl).min().unwrap_or(0);
    let found = if src.record == DnsRecord::Srv {
        let records: Vec<Srv> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some(Srv {
                    priority: s.priority,
                    weight: s.weight,
                    port: s.port,
                    target: s.target.to_utf8(),
                }),
                _ => None,
            })
            .take(MAX_SERVERS)
            .collect();
        let mut addrs = Vec::new();
        for r in lowest_priority(&records) {
            // Addresses the answer carries need no second question.
            let ip = match additional_ip(&lookup, &r.target) {
                Some(ip) => Some(ip),
                None => match resolver.lookup_ip(r.target.as_str()).await {
                    Ok(ips) => ips.iter().next(),
                    Err(e) => {
                        tracing::debug!(target = %r.target, error = %e, "SRV target does not resolve");
                        None
                    }
                },
            };
            addrs.push((r.target.clone(), ip));
        }
        srv_servers(&records, &addrs, target.max_weight)
    } else {
        let ips = lookup.answers().iter().filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        });
        addr_servers(ips, target.port)
    };
    if found.is_empty() {
        return Err(DnsError::Empty(src.name.clone()));
    }
    Ok((found, Duration::from_secs(u64::from(ttl))))
}

fn additional_ip(lookup: &hickory_resolver::lookup::Lookup, target: &str) -> Option<IpAddr> {
    lookup.additionals().iter().find_map(|r| {
        if !r.name.to_utf8().eq_ignore_ascii_case(target) {
            return None;
        }
        match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        }
    })
}

/// One SRV record, as the answer gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// Lower is preferred.
    pub priority: u16,
    /// Relative weight among records of the same priority.
    pub weight: u16,
    /// The service's port on the target.
    pub port: u16,
    /// The target host's name.
    pub target: String,
}

/// The records of the lowest priority (RFC 2782: higher ones are only for when those fail,
/// which health checks and retries already cover).
pub fn lowest_priority(records: &[Srv]) -> impl Iterator<Item = &Srv> {
    let lowest = records.iter().map(|r| r.priority).min().unwrap_or(0);
    records.iter().filter(move |r| r.priority == lowest && r.port != 0 && r.target != ".")
}

/// The servers SRV `records` give, `addrs` saying where each target resolved (`None`: it did
/// not): one per target and port of the lowest priority, named `TARGET:PORT`.
pub fn srv_servers(records: &[Srv], addrs: &[(String, Option<IpAddr>)], max_weight: u32) -> Vec<Found> {
    let mut found = Vec::new();
    for r in lowest_priority(records) {
        let Some(ip) = addrs.iter().find(|(t, _)| *t == r.target).and_then(|(_, ip)| *ip) else { continue };
        let target = r.target.strip_suffix('.').unwrap_or(&r.target);
        let name = format!("{target}:{}", r.port);
        let addr = SocketAddr::new(ip, r.port);
        let Some(name) = valid_name(&name).or_else(|| valid_name(&addr.to_string())) else { continue };
        let weight = u32::from(r.weight).clamp(1, max_weight.max(1));
        found.push(Found { name, addr, weight, draining: false });
    }
    found.truncate(MAX_SERVERS);
    found
}

/// The servers A/AAAA answers give: one per address, named `ADDRESS:PORT`.
pub fn addr_servers(ips: impl Iterator<Item = IpAddr>, port: u16) -> Vec<Found> {
    let mut found: Vec<Found> = ips
        .take(MAX_SERVERS)
        .filter_map(|ip| {
            let addr = SocketAddr::new(ip, port);
            Some(Found { name: valid_name(&addr.to_string())?, addr, weight: 1, draining: false })
        })
        .collect();
    found.dedup();
    found
}

/// What a DNS source publishes: the last good set, kept for `keep_last` once answers fail or
/// come back empty, then nothing. Each transition is logged once.
#[derive(Debug)]
pub struct Keeper {
    keep_last: Duration,
    good: Vec<Found>,
    failing_since: Option<Instant>,
    emptied: bool,
}

impl Keeper {
    /// Nothing known yet.
    pub fn new(keep_last: Duration) -> Keeper {
        Keeper { keep_last, good: Vec::new(), failing_since: None, emptied: false }
    }

    /// Takes an answer (the servers, or why there are none); returns the set to publish when
    /// it changed.
    pub fn answer(
        &mut self,
        answer: Result<Vec<Found>, String>,
        now: Instant,
        pool: &str,
    ) -> Option<Vec<Found>> {
        match answer {
            Ok(set) if !set.is_empty() => {
                if self.failing_since.take().is_some() {
                    tracing::info!(%pool, servers = set.len(), "DNS discovery: answers again");
                }
                self.emptied = false;
                if set == self.good {
                    return None;
                }
                tracing::info!(%pool, servers = set.len(), "DNS discovery: the set of servers changed");
                self.good = set.clone();
                Some(set)
            }
            failed => {
                let why = failed.err().unwrap_or_else(|| "empty answer".into());
                let since = *self.failing_since.get_or_insert_with(|| {
                    tracing::warn!(%pool, error = %why, kept = self.good.len(), keep_last = ?self.keep_last, "DNS discovery: no good answer; the last good set is kept for now");
                    now
                });
                if self.emptied || now.duration_since(since) < self.keep_last {
                    return None;
                }
                self.emptied = true;
                tracing::warn!(%pool, error = %why, keep_last = ?self.keep_last, "DNS discovery: no good answer for keep_last; the pool is emptied");
                self.good.clear();
                Some(Vec::new())
            }
        }
    }

    /// While answers fail and the set is still kept: how long it is kept yet.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        let since = self.failing_since.filter(|_| !self.emptied)?;
        Some(self.keep_last.saturating_sub(now.duration_since(since)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> Srv {
        Srv { priority, weight, port, target: target.into() }
    }

    #[test]
    fn srv_records_map_to_servers_of_the_lowest_priority() {
        let records = [
            srv(10, 5, 8080, "a.web.local."),
            srv(10, 0, 8081, "b.web.local."),
            srv(20, 100, 80, "backup.web.local."),
            srv(10, 9000, 8082, "c.web.local."),
            srv(10, 1, 8083, "gone.web.local."),
            srv(10, 1, 0, "a.web.local."),
            srv(10, 1, 80, "."),
        ];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let addrs = vec![
            ("a.web.local.".to_string(), ip("10.0.0.1")),
            ("b.web.local.".to_string(), ip("fd00::2")),
            ("backup.web.local.".to_string(), ip("10.0.0.9")),
            ("c.web.local.".to_string(), ip("10.0.0.3")),
            ("gone.web.local.".to_string(), None),
        ];
        let found = srv_servers(&records, &addrs, 256);
        let got: Vec<(&str, String, u32)> =
            found.iter().map(|f| (&*f.name, f.addr.to_string(), f.weight)).collect();
        assert_eq!(
            got,
            [
                ("a.web.local:8080", "10.0.0.1:8080".to_string(), 5),
                ("b.web.local:8081", "[fd00::2]:8081".to_string(), 1),
                ("c.web.local:8082", "10.0.0.3:8082".to_string(), 256),
            ],
            "priority 20 left out, weight 0 counts as 1, the weight capped, unresolved, port 0 and '.' skipped"
        );
    }

    #[test]
    fn hostile_srv_targets_fall_back_to_the_address_and_answers_are_bounded() {
        let records = [srv(0, 1, 80, "evil\nname.")];
        let addrs = vec![("evil\nname.".to_string(), Some("10.0.0.7".parse().unwrap()))];
        let found = srv_servers(&records, &addrs, 256);
        assert_eq!(&*found[0].name, "10.0.0.7:80");
        let many = (0..1000u32).map(|i| IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]));
        assert_eq!(addr_servers(many, 3000).len(), MAX_SERVERS);
        let v6 = addr_servers(["fd00::1".parse().unwrap()].into_iter(), 3000);
        assert_eq!((&*v6[0].name, v6[0].weight), ("[fd00::1]:3000", 1));
    }

    #[test]
    fn a_failing_name_keeps_the_last_good_set_for_keep_last_then_empties_the_pool() {
        let t0 = Instant::now();
        let s = |n: u8| addr_servers([IpAddr::from([10, 0, 0, n])].into_iter(), 80);
        let mut k = Keeper::new(Duration::from_secs(10));
        assert_eq!(k.answer(Err("timeout".into()), t0, "p"), None, "nothing known yet: nothing to publish");
        assert_eq!(k.answer(Ok(s(1)), t0, "p"), Some(s(1)));
        assert_eq!(k.answer(Ok(s(1)), t0, "p"), None, "the same set is not published again");
        assert_eq!(k.answer(Ok(Vec::new()), t0 + Duration::from_secs(1), "p"), None, "empty: kept");
        assert_eq!(k.remaining(t0 + Duration::from_secs(4)), Some(Duration::from_secs(7)));
        assert_eq!(k.answer(Err("NXDOMAIN".into()), t0 + Duration::from_secs(10), "p"), None);
        assert_eq!(k.answer(Err("NXDOMAIN".into()), t0 + Duration::from_secs(11), "p"), Some(Vec::new()));
        assert_eq!(k.answer(Err("NXDOMAIN".into()), t0 + Duration::from_secs(12), "p"), None, "emptied once");
        assert_eq!(k.remaining(t0 + Duration::from_secs(12)), None);
        assert_eq!(k.answer(Ok(s(2)), t0 + Duration::from_secs(13), "p"), Some(s(2)), "back");
        assert_eq!(k.answer(Err("x".into()), t0 + Duration::from_secs(14), "p"), None, "a new failure: kept");
        assert_eq!(
            k.answer(Ok(s(2)), t0 + Duration::from_secs(15), "p"),
            None,
            "the same set, never dropped"
        );
    }
}
