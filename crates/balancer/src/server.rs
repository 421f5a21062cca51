//! One backend server: its gossip, health and operator state, passive ejection, slow start,
//! its counters and its idle connections. The pool decides which servers exist; a server
//! decides whether it may take a request now.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::HeaderValue;
use shoal_gossip::{MemberStatus, Tags};

use crate::config::PoolConfig;
use crate::idle::ConnPool;
use crate::metrics::ServerStats;
use shoal_gossip::escape::Esc;

/// Result of active health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// Not checked yet (or checks are off: treated as up).
    Unknown = 0,
    /// Passing.
    Up = 1,
    /// Failing.
    Down = 2,
}

/// An operator's decision (runtime API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Admin {
    /// Serving.
    Ready = 0,
    /// No new requests; in-flight ones finish; sticky sessions too are moved.
    Drain = 1,
    /// Out of service.
    Maint = 2,
}
/// The outcome class of an active check, as HAProxy names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// The expected status came back (`L7OK`).
    Passed,
    /// Another status came back (`L7STS`).
    WrongStatus,
    /// No connection (`L4CON`).
    Refused,
    /// No answer in time (`L7TOUT`).
    Timeout,
    /// Not HTTP (`L7RSP`).
    BadResponse,
}

impl CheckStatus {
    /// HAProxy's short code for it.
    pub fn code(self) -> &'static str {
        match self {
            CheckStatus::Passed => "L7OK",
            CheckStatus::WrongStatus => "L7STS",
            CheckStatus::Refused => "L4CON",
            CheckStatus::Timeout => "L7TOUT",
            CheckStatus::BadResponse => "L7RSP",
        }
    }
}

/// The outcome of the last active check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Whether it passed.
    pub ok: bool,
    /// Its class.
    pub status: CheckStatus,
    /// The HTTP status, when one came back.
    pub code: Option<u16>,
    /// Status code, or why there is none.
    pub detail: String,
    /// How long it took.
    pub duration: Duration,
}

/// One backend server.
#[derive(Debug)]
pub struct Server {
    /// Member name.
    pub name: Arc<str>,
    /// Number within its pool (HAProxy's `sid`), stable while the member stays.
    pub id: u32,
    /// The member's tags.
    pub tags: ArcSwap<Tags>,
    /// Where its service listens.
    pub addr: SocketAddr,
    /// Weight from the `weight` tag (1 when absent, at most the pool's `max_weight`), or the
    /// operator's.
    pub weight: AtomicU32,
    /// The weight before any operator's: the member's `weight` tag, or what `add server` gave
    /// (HAProxy's initial weight, the base of relative weights).
    pub initial_weight: AtomicU32,
    /// The weight is an operator's (`set server weight`): not capped by `max_share`.
    pub(crate) operator_weight: AtomicBool,
    /// The number behind the server's sticky cookie value ([`Server::cookie`]), also the seed
    /// of its hash-ring points.
    pub(crate) cookie_value: u64,
    /// `Set-Cookie` value sticking a client here (`NAME=TOKEN; Path=/`), when the pool sticks.
    pub(crate) set_cookie: Option<HeaderValue>,
    /// Gossip status (as [`MemberStatus`] code).
    member: AtomicU8,
    health: AtomicU8,
    admin: AtomicU8,
    /// Requests in flight.
    pub active: AtomicU32,
    /// Estimated round trip from this balancer, in microseconds (0: unknown), from the
    /// network coordinates.
    pub(crate) rtt_us: AtomicU32,
    /// Requests in flight on its pool's servers (shared by them).
    pub(crate) pool_active: Arc<AtomicU32>,
    /// Counters.
    pub stats: ServerStats,
    /// Idle upstream connections.
    pub(crate) conns: ConnPool,
    /// Milliseconds since the pool's epoch until which the server is ejected.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    consecutive_connect_failures: AtomicU32,
    consecutive_5xx: AtomicU32,
    /// When it last became eligible (for slow start), ms since the epoch.
    up_since: AtomicU64,
    /// Forgotten by the pool (left or failed).
    pub(crate) removed: AtomicBool,
    /// Declared failed by gossip: requests waiting on it give up (see [`Server::failed`]).
    failed: AtomicBool,
    failed_notify: tokio::sync::Notify,
    /// The last active check.
    pub last_check: std::sync::Mutex<Option<CheckResult>>,
    /// Whether it was serving at the last rebuild.
    serving: AtomicBool,
    /// When its serving state last changed, ms since the pool's epoch.
    last_change_ms: AtomicU64,
    /// Total time not serving, ms, up to `last_change_ms` when not serving now.
    downtime_ms: AtomicU64,
    epoch: Instant,
}

fn status_code(s: MemberStatus) -> u8 {
    match s {
        MemberStatus::Alive => 0,
        MemberStatus::Leaving => 1,
        MemberStatus::Left => 2,
        MemberStatus::Failed => 3,
    }
}

impl Server {
    pub(crate) fn new(
        name: Arc<str>,
        addr: SocketAddr,
        weight: u32,
        checked: bool,
        epoch: Instant,
        sticky_cookie: Option<&str>,
    ) -> Server {
        let now = Instant::now();
        let cookie_value = crate::sticky::token_value(&name);
        // Both parts are header-safe: a validated cookie name and hex digits.
        let set_cookie = sticky_cookie.and_then(|c| {
            HeaderValue::from_str(&format!("{c}={}; Path=/", crate::sticky::token(&name))).ok()
        });
        Server {
            name,
            id: 0,
            tags: ArcSwap::from_pointee(Tags::new()),
            addr,
            weight: AtomicU32::new(weight),
            initial_weight: AtomicU32::new(weight),
            operator_weight: AtomicBool::new(false),
            cookie_value,
            set_cookie,
            member: AtomicU8::new(0),
            health: AtomicU8::new(if checked { Health::Unknown } else { Health::Up } as u8),
            admin: AtomicU8::new(Admin::Ready as u8),
            active: AtomicU32::new(0),
            rtt_us: AtomicU32::new(0),
            pool_active: Arc::default(),
            stats: ServerStats::default(),
            conns: ConnPool::default(),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_connect_failures: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            up_since: AtomicU64::new(0),
            removed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            failed_notify: tokio::sync::Notify::new(),
            last_check: std::sync::Mutex::new(None),
            serving: AtomicBool::new(false),
            last_change_ms: AtomicU64::new(now.saturating_duration_since(epoch).as_millis() as u64),
            downtime_ms: AtomicU64::new(0),
            epoch,
        }
    }

    /// The estimated round trip from this balancer (network coordinates), if known.
    pub fn estimated_rtt(&self) -> Option<std::time::Duration> {
        match self.rtt_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(std::time::Duration::from_micros(u64::from(us))),
        }
    }

    /// Records the estimated round trip (`None`: unknown).
    pub fn set_estimated_rtt(&self, rtt: Option<std::time::Duration>) {
        let us = rtt.map_or(0, |d| u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1));
        self.rtt_us.store(us, Ordering::Relaxed);
    }

    /// The sticky cookie value that stands for this server ([`crate::sticky::token`]).
    pub fn cookie(&self) -> String {
        format!("{:016x}", self.cookie_value)
    }

    /// Whether a sticky cookie's value points here.
    pub(crate) fn is_cookie(&self, value: &str) -> bool {
        crate::sticky::parse_token(value) == Some(self.cookie_value)
    }

    /// Time since its serving state last changed.
    pub fn since_last_change(&self, now: Instant) -> Duration {
        Duration::from_millis(self.ms(now).saturating_sub(self.last_change_ms.load(Ordering::Relaxed)))
    }

    /// Total time it has not been serving since it joined the pool.
    pub fn downtime(&self, now: Instant) -> Duration {
        let mut ms = self.downtime_ms.load(Ordering::Relaxed);
        if !self.serving.load(Ordering::Relaxed) {
            ms += self.ms(now).saturating_sub(self.last_change_ms.load(Ordering::Relaxed));
        }
        Duration::from_millis(ms)
    }

    /// Time since the last request was sent to it, if any was.
    pub fn since_last_request(&self, now: Instant) -> Option<Duration> {
        match self.stats.last_request_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Duration::from_millis(self.ms(now).saturating_sub(t))),
        }
    }

    /// A request goes to it: counted in flight here and on its pool.
    pub(crate) fn acquire(&self) {
        let active = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        self.stats.max_active.fetch_max(active, Ordering::Relaxed);
        self.pool_active.fetch_add(1, Ordering::Relaxed);
    }

    /// A request it held is over.
    pub(crate) fn release(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        self.pool_active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a request sent to it at `now`.
    pub(crate) fn sent(&self, now: Instant) {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let ms = self.ms(now).max(1);
        self.stats.last_request_ms.store(ms, Ordering::Relaxed);
        self.stats.rate.hit(ms / 1000);
    }

    /// Seconds since the pool's epoch, for [`Rate::per_second`].
    pub fn rate_second(&self, now: Instant) -> u64 {
        self.ms(now) / 1000
    }

    /// Records whether it serves after a rebuild at `now`.
    pub(crate) fn note_serving(&self, serving: bool, now: Instant) {
        if self.serving.swap(serving, Ordering::Relaxed) == serving {
            return;
        }
        let at = self.ms(now);
        let since = self.last_change_ms.swap(at, Ordering::Relaxed);
        if serving {
            self.downtime_ms.fetch_add(at.saturating_sub(since), Ordering::Relaxed);
        }
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Resolves once gossip declares the server failed (at once if it already has): a request
    /// waiting for its answer stops waiting for a host that is gone.
    pub async fn failed(&self) {
        let notified = self.failed_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.failed.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }

    /// Records the member's gossip status.
    pub(crate) fn set_member_status(&self, s: MemberStatus) {
        self.member.store(status_code(s), Ordering::Relaxed);
    }

    /// Gossip declared the member failed: requests waiting on it give up ([`Server::failed`]).
    pub(crate) fn declare_failed(&self) {
        self.failed.store(true, Ordering::SeqCst);
        self.failed_notify.notify_waiters();
    }

    /// It has just joined the view at `now`: slow start ramps from here.
    pub(crate) fn became_eligible(&self, now: Instant) {
        self.up_since.store(self.ms(now), Ordering::Relaxed);
    }

    /// Gossip status.
    pub fn member_status(&self) -> MemberStatus {
        match self.member.load(Ordering::Relaxed) {
            0 => MemberStatus::Alive,
            1 => MemberStatus::Leaving,
            2 => MemberStatus::Left,
            _ => MemberStatus::Failed,
        }
    }

    /// Health-check state.
    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            1 => Health::Up,
            2 => Health::Down,
            _ => Health::Unknown,
        }
    }

    pub(crate) fn set_health(&self, h: Health) {
        self.health.store(h as u8, Ordering::Relaxed);
    }

    /// Operator state.
    pub fn admin(&self) -> Admin {
        match self.admin.load(Ordering::Relaxed) {
            1 => Admin::Drain,
            2 => Admin::Maint,
            _ => Admin::Ready,
        }
    }

    /// Sets the operator state.
    pub fn set_admin(&self, a: Admin) {
        self.admin.store(a as u8, Ordering::Relaxed);
    }

    /// Whether passive outlier detection has taken it out at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > self.ms(now)
    }

    /// Whether it may receive new requests at `now`.
    pub fn eligible(&self, now: Instant) -> bool {
        self.member_status() == MemberStatus::Alive
            && matches!(self.health(), Health::Up)
            && self.admin() == Admin::Ready
            && !self.is_ejected(now)
            && !self.removed.load(Ordering::Relaxed)
    }

    /// Counts a connection failure; returns true if that ejects the server.
    pub(crate) fn connect_failed(&self, now: Instant, cfg: &PoolConfig) -> bool {
        self.stats.connect_errors.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive_connect_failures.fetch_add(1, Ordering::Relaxed) + 1;
        cfg.passive.enabled && n >= cfg.passive.connect_failures && self.eject(now, cfg)
    }

    /// Counts a response status; a streak of 5xx may eject.
    pub(crate) fn responded(&self, now: Instant, status: u16, cfg: &PoolConfig) -> bool {
        self.consecutive_connect_failures.store(0, Ordering::Relaxed);
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        self.stats.responses[class].fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            let n = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
            return cfg.passive.enabled && n >= cfg.passive.consecutive_5xx && self.eject(now, cfg);
        }
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.ejections.store(0, Ordering::Relaxed);
        false
    }

    /// Takes the server out for a growing time. Returns false if it already was.
    fn eject(&self, now: Instant, cfg: &PoolConfig) -> bool {
        if self.is_ejected(now) {
            return false;
        }
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let backoff = cfg.passive.base_ejection.saturating_mul(1 << n).min(cfg.passive.max_ejection);
        self.ejected_until.store(self.ms(now + backoff), Ordering::Relaxed);
        self.consecutive_connect_failures.store(0, Ordering::Relaxed);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        tracing::warn!(target: "shoal::server", server = %Esc(&self.name), addr = %self.addr, ?backoff, "server ejected after failures");
        true
    }

    /// Effective weight at `now`, ramping up after it became eligible when slow start is on.
    pub(crate) fn effective_weight(&self, now: Instant, slow_start: Duration) -> u32 {
        let w = self.weight.load(Ordering::Relaxed);
        if slow_start.is_zero() || w == 0 {
            return w;
        }
        let since = self.up_since.load(Ordering::Relaxed);
        let elapsed = self.ms(now).saturating_sub(since);
        let total = slow_start.as_millis() as u64;
        if elapsed >= total {
            return w;
        }
        ((u64::from(w) * elapsed.max(1) / total) as u32).max(1)
    }

    /// Whether it is still ramping up.
    pub(crate) fn ramping(&self, now: Instant, slow_start: Duration) -> bool {
        !slow_start.is_zero()
            && self.ms(now).saturating_sub(self.up_since.load(Ordering::Relaxed))
                < slow_start.as_millis() as u64
    }
}

impl PartialEq for Server {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for Server {}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, weight: u32) -> Arc<Server> {
        let s =
            Server::new(Arc::from(name), "127.0.0.1:1".parse().unwrap(), weight, false, Instant::now(), None);
        Arc::new(s)
    }

    #[test]
    fn ejection_backs_off_and_streaks_reset() {
        let mut cfg = PoolConfig::new("p", "backend", 80);
        cfg.passive.base_ejection = Duration::from_secs(1);
        let s = server("a", 1);
        let t0 = Instant::now();
        assert!(s.connect_failed(t0, &cfg));
        assert!(s.is_ejected(t0 + Duration::from_millis(900)));
        assert!(!s.is_ejected(t0 + Duration::from_millis(1100)));
        let t1 = t0 + Duration::from_secs(2);
        assert!(s.connect_failed(t1, &cfg));
        assert!(s.is_ejected(t1 + Duration::from_millis(1900)), "second ejection lasts twice as long");
        let t2 = t1 + Duration::from_secs(3);
        for _ in 0..4 {
            assert!(!s.responded(t2, 503, &cfg));
        }
        assert!(s.responded(t2, 503, &cfg), "the fifth 5xx in a row ejects");
    }

    #[test]
    fn slow_start_ramps_weight() {
        let s = server("a", 100);
        let start = Instant::now();
        s.up_since.store(s.ms(start), Ordering::Relaxed);
        let ramp = Duration::from_secs(10);
        assert!(s.effective_weight(start + Duration::from_secs(1), ramp) <= 11);
        assert_eq!(s.effective_weight(start + Duration::from_secs(5), ramp), 50);
        assert_eq!(s.effective_weight(start + Duration::from_secs(11), ramp), 100);
    }
}
