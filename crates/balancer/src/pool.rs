//! Backend pools: which members serve, in what state, and how one is picked.
//!
//! A [`Pool`] keeps every server it knows (control plane, behind a mutex) and
//! publishes an immutable [`View`] of the eligible ones through `arc-swap`: the
//! request path only loads that pointer and touches atomics, never a lock. A
//! server is eligible when gossip says it is alive (not leaving), its health
//! checks pass (if any), no operator has drained it and passive outlier
//! detection has not ejected it. The view carries what each algorithm needs,
//! precomputed at rebuild: the weighted round-robin order, the consistent-hash
//! ring and the sticky cookie lookup.
//!
//! What a member claims is bounded here: its address must pass the pool's
//! [`Admission`] policy (a refused member is logged once and counted), its
//! `weight` tag is capped at `max_weight` and its share of the pool at
//! `max_share`, and a rebuild costs O(servers) whatever weights are claimed.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::HeaderValue;
use shoal_agent::Membership;
use shoal_gossip::{Member, MemberStatus, Tags};

use crate::admission::{Admission, HostNets};
use crate::config::{Algorithm, PoolConfig};
use crate::escape::Esc;
use crate::upstream::ConnPool;

pub use crate::config::MAX_WEIGHT;

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

/// Upper bounds (seconds) of the response-time histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// A lock-free histogram of durations (for Prometheus and average times).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket of [`LATENCY_BUCKETS`], plus one for larger values (not cumulative).
    pub buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of observations, in microseconds.
    pub sum_us: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|&b| secs <= b).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Mean, in milliseconds (0 without observations).
    pub fn mean_ms(&self) -> u64 {
        let n = self.count();
        self.sum_us.load(Ordering::Relaxed).checked_div(n).map_or(0, |us| us / 1000)
    }
}

/// Events per second: the count of the last complete second, and the highest seen.
#[derive(Debug, Default)]
pub struct Rate {
    second: AtomicU64,
    current: AtomicU32,
    previous: AtomicU32,
    max: AtomicU32,
}

impl Rate {
    /// Counts one event in second `now_s`.
    pub fn hit(&self, now_s: u64) {
        let s = self.second.load(Ordering::Relaxed);
        if s != now_s && self.second.compare_exchange(s, now_s, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            let done = self.current.swap(0, Ordering::Relaxed);
            self.previous.store(if now_s == s + 1 { done } else { 0 }, Ordering::Relaxed);
        }
        // The running count of this second is a lower bound of its total: good for the maximum.
        let n = self.current.fetch_add(1, Ordering::Relaxed) + 1;
        self.max.fetch_max(n, Ordering::Relaxed);
    }

    /// Events during the last complete second, as of second `now_s`.
    pub fn per_second(&self, now_s: u64) -> u32 {
        let s = self.second.load(Ordering::Relaxed);
        if s == now_s {
            self.previous.load(Ordering::Relaxed)
        } else if s + 1 == now_s {
            self.current.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    /// Highest events per second seen.
    pub fn max(&self) -> u32 {
        self.max.load(Ordering::Relaxed)
    }
}

/// Counters for stats (all monotonic, relaxed atomics).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Requests sent to this server (attempts).
    pub requests: AtomicU64,
    /// Responses by class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [AtomicU64; 5],
    /// Connections that could not be made.
    pub connect_errors: AtomicU64,
    /// Broken or invalid responses.
    pub response_errors: AtomicU64,
    /// Attempts that were retried elsewhere.
    pub retries: AtomicU64,
    /// Requests sent here although their sticky server was another.
    pub redispatches: AtomicU64,
    /// Request bytes forwarded.
    pub bytes_in: AtomicU64,
    /// Response bytes returned.
    pub bytes_out: AtomicU64,
    /// Most requests in flight at once.
    pub max_active: AtomicU32,
    /// Requests per second.
    pub rate: Rate,
    /// Time from sending a request to the response head.
    pub response_time: Histogram,
    /// Time to open a new connection (pooled connections are not counted).
    pub connect_time: Histogram,
    /// When the last request was sent, ms since the pool's epoch (0: never).
    pub last_request_ms: AtomicU64,
    /// Failed active checks.
    pub check_failures: AtomicU64,
    /// Transitions from UP to DOWN by active checks.
    pub check_downs: AtomicU64,
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
    fn new(
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
            operator_weight: AtomicBool::new(false),
            cookie_value,
            set_cookie,
            member: AtomicU8::new(0),
            health: AtomicU8::new(if checked { Health::Unknown } else { Health::Up } as u8),
            admin: AtomicU8::new(Admin::Ready as u8),
            active: AtomicU32::new(0),
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
    fn note_serving(&self, serving: bool, now: Instant) {
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
    fn effective_weight(&self, now: Instant, slow_start: Duration) -> u32 {
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
    fn ramping(&self, now: Instant, slow_start: Duration) -> bool {
        !slow_start.is_zero()
            && self.ms(now).saturating_sub(self.up_since.load(Ordering::Relaxed))
                < slow_start.as_millis() as u64
    }
}

/// What the request path reads: the eligible servers and per-algorithm tables.
#[derive(Debug, Default)]
pub struct View {
    /// Eligible servers, sorted by name.
    pub servers: Vec<Arc<Server>>,
    /// The weight each server gets in this view (slow start and `max_share` applied).
    pub weights: Vec<u32>,
    rotation: Rotation,
    /// Hash-ring points, sorted: the point's hash in the high bits, the server's index in the
    /// low `ring_bits` (one word per point: half the memory, and a sort twice as fast).
    ring: Vec<u64>,
    ring_bits: u32,
    /// Cookie token value → server, sorted; a token two servers share is left out.
    cookies: Vec<(u64, u32)>,
    next: AtomicUsize,
}

fn hash_of(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// splitmix64's finaliser: a well-mixed point from a counter.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn gcd(a: u64, b: u64) -> u64 {
    let (mut a, mut b) = (a, b);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The weighted round-robin order: one period of `total` picks in which each server has as
/// many as its weight, spread evenly.
///
/// Pick `i` is the server whose share of `0..total` holds `i × step mod total`, `step` being
/// the integer nearest `total / φ` that is prime to `total`: a permutation of the period (the
/// proportions are exact) whose picks fall like a golden-ratio sequence, so each server's turns
/// are spread across the period rather than bunched. Building it costs O(servers), whatever
/// weights are claimed; short periods are unrolled into a table so a pick is one lookup, long
/// ones pick by a binary search over the servers' shares.
#[derive(Debug, Default)]
enum Rotation {
    /// No server has weight.
    #[default]
    Empty,
    /// Equal weights: the plain rotation over this many servers.
    Plain(usize),
    /// One period, unrolled.
    Table(Vec<u32>),
    /// Cumulative weights (end of each server's share) and the step.
    Spread { ends: Vec<u64>, step: u64 },
}

/// Periods up to this long are unrolled into a table.
const ROTATION_TABLE_MAX: u64 = 4096;

impl Rotation {
    fn build(weights: &[u32]) -> Rotation {
        let g = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w)));
        if g == 0 {
            return Rotation::Empty;
        }
        if weights.iter().all(|&w| w == weights[0]) {
            return Rotation::Plain(weights.len());
        }
        let mut ends = Vec::with_capacity(weights.len());
        let mut total = 0u64;
        for &w in weights {
            total += u64::from(w) / g;
            ends.push(total);
        }
        let mut step = ((total as f64) / 1.618_033_988_749_895).round().max(1.0) as u64;
        while gcd(step, total) != 1 {
            step += 1;
        }
        let spread = Rotation::Spread { ends, step };
        if total > ROTATION_TABLE_MAX {
            return spread;
        }
        Rotation::Table((0..total as usize).map(|i| spread.server(i) as u32).collect())
    }

    /// The length of one period.
    fn period(&self) -> usize {
        match self {
            Rotation::Empty => 0,
            Rotation::Plain(n) => *n,
            Rotation::Table(t) => t.len(),
            Rotation::Spread { ends, .. } => ends.last().map_or(0, |&t| t as usize),
        }
    }

    /// The server (index) of pick `i`.
    fn server(&self, i: usize) -> usize {
        match self {
            Rotation::Empty => 0,
            Rotation::Plain(n) => i % n,
            Rotation::Table(t) => t[i % t.len()] as usize,
            Rotation::Spread { ends, step } => {
                let total = ends.last().copied().unwrap_or(1);
                let x = ((i as u128 % u128::from(total)) * u128::from(*step) % u128::from(total)) as u64;
                ends.partition_point(|&end| end <= x)
            }
        }
    }
}

/// Brings weights down so that none of those not `fixed` exceeds `share` of their total (while
/// two servers or more have weight): the largest cap `c` with `c ≤ share × Σ min(wᵢ, c)`.
/// When no cap can do it (fewer servers than `1 / share`), the capped weights are made equal.
fn cap_shares(weights: &mut [u32], fixed: &[bool], share: f64) {
    if share >= 1.0 || weights.iter().filter(|&&w| w > 0).count() < 2 {
        return;
    }
    // The common case, in O(servers): nobody is over the share.
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let over = |w: u32| f64::from(w) > share * total as f64;
    if !weights.iter().zip(fixed).any(|(&w, &f)| !f && over(w)) {
        return;
    }
    let fixed_sum: u64 = weights.iter().zip(fixed).filter(|(_, f)| **f).map(|(&w, _)| u64::from(w)).sum();
    let mut free: Vec<u32> = weights.iter().zip(fixed).filter(|(_, f)| !**f).map(|(&w, _)| w).collect();
    if free.is_empty() {
        return;
    }
    free.sort_unstable_by(|a, b| b.cmp(a));
    // With the k heaviest capped at c, the rest keep their weights (summing to `rest`):
    // c = share × (k·c + rest), so c = share × rest / (1 − k·share).
    let mut rest: u64 = fixed_sum + free.iter().map(|&w| u64::from(w)).sum::<u64>();
    let mut cap = None;
    for k in 0..=free.len() {
        let room = 1.0 - k as f64 * share;
        if room <= 0.0 {
            // k servers at the same weight can each have at most 1/k ≤ share.
            cap = Some(free[k - 1]);
            break;
        }
        let c = (share * rest as f64 / room).floor();
        match free.get(k) {
            Some(&w) if f64::from(w) <= c => {
                if k > 0 {
                    cap = Some(c as u32);
                }
                break;
            }
            Some(&w) => rest -= u64::from(w),
            // Every free weight capped: only fixed ones to share with.
            None => cap = Some(if c >= 1.0 { c as u32 } else { free[free.len() - 1].max(1) }),
        }
    }
    if let Some(cap) = cap {
        for (w, _) in weights.iter_mut().zip(fixed).filter(|(_, f)| !**f) {
            *w = (*w).min(cap);
        }
    }
}

/// Hash-ring points per unit of weight.
const RING_POINTS_PER_WEIGHT: u64 = 64;
/// Most points on a ring (beyond, each server gets its share of these, at least one).
const RING_MAX_POINTS: u64 = 16 * 1024;

impl View {
    /// The view of `servers` for a pool configured as `cfg`: each one's weight after slow start
    /// and the `max_share` cap, the round-robin order, the cookie lookup when the pool sticks,
    /// and the consistent-hash ring when its algorithm hashes. Its cost is bounded whatever
    /// weights members claim: the rotation is O(servers) and the ring has at most
    /// [`RING_MAX_POINTS`] (+ one per server).
    fn build(mut servers: Vec<Arc<Server>>, now: Instant, cfg: &PoolConfig) -> View {
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut weights: Vec<u32> = servers.iter().map(|s| s.effective_weight(now, cfg.slow_start)).collect();
        let fixed: Vec<bool> = servers.iter().map(|s| s.operator_weight.load(Ordering::Relaxed)).collect();
        cap_shares(&mut weights, &fixed, cfg.max_share);
        let rotation = Rotation::build(&weights);
        let mut cookies: Vec<(u64, u32)> = Vec::new();
        if cfg.sticky_cookie.is_some() {
            cookies = servers.iter().enumerate().map(|(i, s)| (s.cookie_value, i as u32)).collect();
            cookies.sort_unstable();
            let ambiguous: Vec<u64> =
                cookies.windows(2).filter(|w| w[0].0 == w[1].0).map(|w| w[0].0).collect();
            if !ambiguous.is_empty() {
                // `ambiguous` is sorted (taken from the sorted table): a search, not a scan, so
                // crafted collisions cannot make the rebuild quadratic.
                cookies.retain(|(v, _)| ambiguous.binary_search(v).is_err());
            }
        }
        let mut ring = Vec::new();
        let ring_bits = usize::BITS - servers.len().saturating_sub(1).leading_zeros();
        if cfg.algorithm.hashes() {
            let g = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w))).max(1);
            let units: u64 = weights.iter().map(|&w| u64::from(w) / g).sum();
            let per_unit = RING_POINTS_PER_WEIGHT.min(RING_MAX_POINTS / units.max(1));
            let points = |w: u32| -> u64 {
                let units_w = u64::from(w) / g;
                if per_unit > 0 {
                    units_w * per_unit
                } else if w > 0 {
                    // More units than points: each server its share of the points, at least one.
                    (units_w * RING_MAX_POINTS / units).max(1)
                } else {
                    0
                }
            };
            ring.reserve(weights.iter().map(|&w| points(w) as usize).sum());
            for (i, s) in servers.iter().enumerate() {
                for p in 0..points(weights[i]) {
                    let point = mix(s.cookie_value.wrapping_add(p.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
                    ring.push(point >> ring_bits << ring_bits | i as u64);
                }
            }
            ring.sort_unstable();
        }
        View { servers, weights, rotation, ring, ring_bits, cookies, next: AtomicUsize::new(0) }
    }

    /// The eligible server named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Server>> {
        self.servers.binary_search_by(|s| (*s.name).cmp(name)).ok().map(|i| &self.servers[i])
    }

    /// The eligible server whose sticky cookie value is `value`.
    pub fn by_cookie(&self, value: &str) -> Option<&Arc<Server>> {
        let v = crate::sticky::parse_token(value)?;
        let i = self.cookies.binary_search_by(|(c, _)| c.cmp(&v)).ok()?;
        Some(&self.servers[self.cookies[i].1 as usize])
    }

    /// Picks a server with `algo`, skipping `exclude` and any server ejected since the last rebuild.
    pub fn pick(
        &self,
        algo: &Algorithm,
        key: Option<&[u8]>,
        exclude: &[Arc<Server>],
        now: Instant,
    ) -> Option<Arc<Server>> {
        let n = self.servers.len();
        if n == 0 {
            return None;
        }
        let ok = |s: &Arc<Server>| !s.is_ejected(now) && !exclude.iter().any(|e| Arc::ptr_eq(e, s));
        match algo {
            Algorithm::RoundRobin => {
                let len = self.rotation.period();
                for _ in 0..len.min(n * MAX_WEIGHT as usize) {
                    let i = self.next.fetch_add(1, Ordering::Relaxed);
                    let s = &self.servers[self.rotation.server(i)];
                    if ok(s) {
                        return Some(s.clone());
                    }
                }
                None
            }
            Algorithm::LeastConn => {
                // Fewest in flight per unit of weight; rotate the start so ties spread out.
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| self.weights[i] > 0 && ok(&self.servers[i]))
                    .min_by_key(|&i| {
                        u64::from(self.servers[i].active.load(Ordering::Relaxed)) * u64::from(MAX_WEIGHT)
                            / u64::from(self.weights[i])
                    })
                    .map(|i| self.servers[i].clone())
            }
            Algorithm::Random2 => {
                let candidates: Vec<&Arc<Server>> = self
                    .servers
                    .iter()
                    .zip(&self.weights)
                    .filter(|(s, w)| **w > 0 && ok(s))
                    .map(|(s, _)| s)
                    .collect();
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0].clone()),
                    m => {
                        let a = fast_random(m);
                        let mut b = fast_random(m - 1);
                        if b >= a {
                            b += 1;
                        }
                        let (x, y) = (candidates[a], candidates[b]);
                        let busy = |s: &Server| s.active.load(Ordering::Relaxed);
                        Some(if busy(y) < busy(x) { y.clone() } else { x.clone() })
                    }
                }
            }
            Algorithm::Source | Algorithm::Header(_) | Algorithm::Cookie(_) | Algorithm::Uri => {
                let Some(key) = key else {
                    return self.pick(&Algorithm::RoundRobin, None, exclude, now);
                };
                if self.ring.is_empty() {
                    return None;
                }
                let (bits, len) = (self.ring_bits, self.ring.len());
                let h = hash_of(key) >> bits;
                let start = self.ring.partition_point(|p| p >> bits < h);
                let index = |p: u64| (p & ((1u64 << bits) - 1)) as usize;
                (0..len).map(|k| &self.servers[index(self.ring[(start + k) % len])]).find(|s| ok(s)).cloned()
            }
        }
    }
}

thread_local! {
    static RNG: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A uniform number below `n` from a per-thread xorshift generator (not for secrets).
fn fast_random(n: usize) -> usize {
    RNG.with(|c| {
        let mut x = c.get();
        if x == 0 {
            x = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64))
                | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.set(x);
        (x % n as u64) as usize
    })
}

/// What an operator set on a server by name; it outlives the member's comings and goings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Override {
    /// Drain or maintenance (ready clears it).
    pub admin: Option<Admin>,
    /// A weight that replaces the member's `weight` tag.
    pub weight: Option<u32>,
}

/// A backend pool.
#[derive(Debug)]
pub struct Pool {
    /// Its configuration.
    pub cfg: PoolConfig,
    /// Its name (shared with logs).
    pub name: Arc<str>,
    /// Number within the balancer (HAProxy's `iid`).
    pub id: u32,
    servers: std::sync::Mutex<BTreeMap<Arc<str>, Arc<Server>>>,
    overrides: std::sync::Mutex<std::collections::HashMap<Arc<str>, Override>>,
    next_server_id: AtomicU32,
    view: ArcSwap<View>,
    epoch: Instant,
    changed: Arc<tokio::sync::Notify>,
    admission: ArcSwap<Admission>,
    /// Members refused at the last sync, with the address they were refused for.
    refused: std::sync::Mutex<HashMap<Arc<str>, SocketAddr>>,
    /// Members refused by the admission policy, counted once per member and address.
    pub members_refused: AtomicU64,
}

/// What changed for a server, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A member joined the pool.
    Added(Arc<Server>),
    /// A member left the pool (left, failed, or no longer matches).
    Removed(Arc<Server>, &'static str),
    /// A member announced it is leaving: drained.
    Draining(Arc<Server>),
}

impl PartialEq for Server {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for Server {}

impl Pool {
    /// An empty pool; `changed` is notified when the request path ejects a server.
    pub fn new(cfg: PoolConfig, id: u32, changed: Arc<tokio::sync::Notify>) -> Pool {
        Pool {
            name: Arc::from(cfg.name.as_str()),
            id,
            servers: Default::default(),
            overrides: Default::default(),
            next_server_id: AtomicU32::new(1),
            view: ArcSwap::from_pointee(View::default()),
            epoch: Instant::now(),
            changed,
            admission: ArcSwap::from_pointee(admission_of(&cfg, &HostNets::read(), &[])),
            refused: Default::default(),
            members_refused: AtomicU64::new(0),
            cfg,
        }
    }

    /// Sets the admission policy from the pool's `accept_networks`, the host's interfaces and
    /// the balancer's own listeners; it applies from the next sync.
    pub fn set_admission(&self, host: &HostNets, own: &[SocketAddr]) {
        self.admission.store(Arc::new(admission_of(&self.cfg, host, own)));
    }

    /// Members refused by the admission policy at the last sync, with their addresses.
    pub fn refused_members(&self) -> Vec<(Arc<str>, SocketAddr)> {
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = refused.iter().map(|(n, a)| (n.clone(), *a)).collect();
        v.sort();
        v
    }

    /// Asks the controller to rebuild views soon (a server was ejected).
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    /// The current view (lock-free).
    pub fn view(&self) -> arc_swap::Guard<Arc<View>> {
        self.view.load()
    }

    /// Every server the pool knows, eligible or not.
    pub fn servers(&self) -> Vec<Arc<Server>> {
        self.servers.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Whether a member belongs in this pool.
    pub fn selects(&self, m: &Member) -> bool {
        (self.cfg.role.is_empty() || m.role() == self.cfg.role)
            && self.cfg.tags.iter().all(|(k, v)| m.tags.get(k) == Some(v))
    }

    fn target(&self, m: &Member) -> (SocketAddr, u32) {
        let port = m
            .tags
            .get("port")
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p > 0)
            .unwrap_or(self.cfg.port);
        let weight = m
            .tags
            .get("weight")
            .and_then(|w| w.parse::<u32>().ok())
            .map_or(1, |w| w.min(self.cfg.max_weight));
        (SocketAddr::new(m.addr.ip(), port), weight)
    }

    /// Brings the pool in line with the cluster's membership; returns what changed.
    pub fn sync(&self, membership: &Membership, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = std::collections::HashSet::new();
        let admission = self.admission.load();
        let loopback_ok = membership.local.addr.ip().to_canonical().is_loopback();
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let mut refused_now = HashMap::new();
        for m in membership.members.iter().filter(|m| self.selects(m)) {
            if matches!(m.status, MemberStatus::Left | MemberStatus::Failed) {
                continue;
            }
            let (addr, weight) = self.target(m);
            if let Err(why) = admission.check(addr, loopback_ok) {
                // Logged and counted once per member and address, not at every sync.
                if refused.get(&m.name) != Some(&addr) {
                    self.members_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(target: "shoal::server", pool = %self.cfg.name, member = %Esc(&m.name), %addr, reason = %why, "member refused: not routed to");
                }
                refused_now.insert(m.name.clone(), addr);
                continue;
            }
            seen.insert(m.name.clone());
            let existing = servers.get(&m.name).cloned();
            let server = match existing {
                Some(s) if s.addr == addr => s,
                old => {
                    if let Some(o) = old {
                        o.removed.store(true, Ordering::Relaxed);
                        changes.push(Change::Removed(o, "address changed"));
                    }
                    let mut fresh = Server::new(
                        m.name.clone(),
                        addr,
                        weight,
                        self.cfg.health.enabled,
                        self.epoch,
                        self.cfg.sticky_cookie.as_deref(),
                    );
                    fresh.id = self.next_server_id.fetch_add(1, Ordering::Relaxed);
                    if let Some(a) = self.override_of(&m.name).admin {
                        fresh.set_admin(a);
                    }
                    let s = Arc::new(fresh);
                    servers.insert(m.name.clone(), s.clone());
                    changes.push(Change::Added(s.clone()));
                    s
                }
            };
            let operator = self.override_of(&m.name).weight;
            server.weight.store(operator.unwrap_or(weight), Ordering::Relaxed);
            server.operator_weight.store(operator.is_some(), Ordering::Relaxed);
            if **server.tags.load() != *m.tags {
                server.tags.store(m.tags.clone());
            }
            let before = server.member_status();
            server.member.store(status_code(m.status), Ordering::Relaxed);
            if before == MemberStatus::Alive && m.status == MemberStatus::Leaving {
                changes.push(Change::Draining(server.clone()));
            }
        }
        let gone: Vec<Arc<str>> = servers.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        for name in gone {
            if let Some(s) = servers.remove(&name) {
                s.removed.store(true, Ordering::Relaxed);
                let why = match membership.get(&name).map(|m| m.status) {
                    Some(MemberStatus::Left) => "left",
                    Some(MemberStatus::Failed) => {
                        s.failed.store(true, Ordering::SeqCst);
                        s.failed_notify.notify_waiters();
                        "failed"
                    }
                    _ if refused_now.contains_key(&name) => "refused by the admission policy",
                    _ => "no longer selected",
                };
                changes.push(Change::Removed(s, why));
            }
        }
        *refused = refused_now;
        drop(refused);
        drop(servers);
        self.rebuild(now);
        changes
    }

    /// Recomputes the view; returns whether any server is still ramping up (rebuild again soon).
    pub fn rebuild(&self, now: Instant) -> bool {
        let servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        let previous: std::collections::HashSet<*const Server> =
            self.view.load().servers.iter().map(Arc::as_ptr).collect();
        let eligible: Vec<Arc<Server>> = servers.values().filter(|s| s.eligible(now)).cloned().collect();
        for s in servers.values() {
            s.note_serving(s.eligible(now), now);
        }
        for s in &eligible {
            if !previous.contains(&Arc::as_ptr(s)) {
                s.up_since.store(s.ms(now), Ordering::Relaxed);
            }
        }
        let ramping = eligible.iter().any(|s| s.ramping(now, self.cfg.slow_start));
        self.view.store(Arc::new(View::build(eligible, now, &self.cfg)));
        ramping
    }

    /// The server named `name`, eligible or not.
    pub fn server(&self, name: &str) -> Option<Arc<Server>> {
        self.servers.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    fn override_of(&self, name: &str) -> Override {
        self.overrides.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied().unwrap_or_default()
    }

    /// An operator's state for server `name`: kept across the member's leaves and rejoins
    /// until set back to ready. Returns false if the pool has no such server.
    pub fn set_admin(&self, name: &str, admin: Admin, now: Instant) -> bool {
        let Some(server) = self.server(name) else { return false };
        let mut overrides = self.overrides.lock().unwrap_or_else(|e| e.into_inner());
        let o = overrides.entry(server.name.clone()).or_default();
        o.admin = (admin != Admin::Ready).then_some(admin);
        if *o == Override::default() {
            overrides.remove(name);
        }
        drop(overrides);
        server.set_admin(admin);
        tracing::info!(target: "shoal::server", pool = %self.cfg.name, server = %Esc(name), state = ?admin, "server state set by an operator");
        self.rebuild(now);
        true
    }

    /// An operator's weight for server `name` (kept across rejoins, like the state).
    pub fn set_weight(&self, name: &str, weight: u32, now: Instant) -> bool {
        let Some(server) = self.server(name) else { return false };
        let weight = weight.min(MAX_WEIGHT);
        self.overrides
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(server.name.clone())
            .or_default()
            .weight = Some(weight);
        server.weight.store(weight, Ordering::Relaxed);
        server.operator_weight.store(true, Ordering::Relaxed);
        tracing::info!(target: "shoal::server", pool = %self.cfg.name, server = %Esc(name), weight, "server weight set by an operator");
        self.rebuild(now);
        true
    }
}

/// The admission policy of a pool configured as `cfg`.
fn admission_of(cfg: &PoolConfig, host: &HostNets, own: &[SocketAddr]) -> Admission {
    // A list that does not parse (validation refuses it first) accepts only what does.
    let listed = cfg.accepted_networks().unwrap_or_else(|_| {
        Some(cfg.accept_networks.iter().flatten().filter_map(|n| n.parse().ok()).collect())
    });
    Admission::new(listed.as_deref(), host, own)
}

/// A request head a hash key is read from.
pub trait KeySource {
    /// The first value of header `name`.
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// The value of cookie `name`.
    fn cookie(&self, name: &str) -> Option<&str>;
    /// The request target (path and query).
    fn target(&self) -> Option<&[u8]>;
}

impl KeySource for http::request::Parts {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name).map(|v| v.as_bytes())
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        crate::sticky::cookie_value(&self.headers, name)
    }

    fn target(&self) -> Option<&[u8]> {
        self.uri.path_and_query().map(|p| p.as_str().as_bytes())
    }
}

/// The bytes a hashing algorithm hashes for a request (`None` when the algorithm does not
/// hash, or the request lacks what it hashes).
pub fn hash_key<'a, R: KeySource + ?Sized>(
    algo: &Algorithm,
    client: IpAddr,
    req: &'a R,
    scratch: &'a mut Vec<u8>,
) -> Option<&'a [u8]> {
    match algo {
        Algorithm::Source => {
            scratch.clear();
            match client {
                IpAddr::V4(v4) => scratch.extend_from_slice(&v4.octets()),
                IpAddr::V6(v6) => scratch.extend_from_slice(&v6.octets()),
            }
            Some(scratch.as_slice())
        }
        Algorithm::Header(h) => req.header(h),
        Algorithm::Cookie(c) => req.cookie(c).map(str::as_bytes),
        Algorithm::Uri => req.target(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, weight: u32) -> Arc<Server> {
        let s =
            Server::new(Arc::from(name), "127.0.0.1:1".parse().unwrap(), weight, false, Instant::now(), None);
        Arc::new(s)
    }

    /// A consistent-hashing, sticky pool whose weights are not capped.
    fn cfg(max_share: f64) -> PoolConfig {
        let mut cfg = PoolConfig::new("p", "backend", 80);
        (cfg.algorithm, cfg.sticky_cookie, cfg.max_share) =
            (Algorithm::Uri, Some("SERVERID".into()), max_share);
        cfg
    }

    fn build(servers: Vec<Arc<Server>>, now: Instant) -> View {
        View::build(servers, now, &cfg(1.0))
    }

    /// One period of the rotation, as server indices.
    fn period(weights: &[u32]) -> Vec<usize> {
        let r = Rotation::build(weights);
        (0..r.period()).map(|i| r.server(i)).collect()
    }

    #[test]
    fn weighted_round_robin_interleaves_by_weight() {
        assert_eq!(period(&[5, 1, 1]), [0, 0, 0, 1, 0, 2, 0]);
        assert_eq!(period(&[3, 1]), [0, 1, 0, 0]);
        assert_eq!(period(&[1, 1]), [0, 1]);
        assert!(period(&[0, 0]).is_empty());
        assert_eq!(period(&[2, 0, 1]), [0, 2, 0], "no turn for a weight of 0");
    }

    #[test]
    fn rotations_keep_exact_proportions_and_spread_turns() {
        // Long periods pick by search instead of a table: the same order either way.
        let weights: Vec<u32> = (0..40).map(|i| 200 + i).collect();
        let total: u32 = weights.iter().sum();
        assert!(u64::from(total) > ROTATION_TABLE_MAX);
        let order = period(&weights);
        assert_eq!(order.len(), total as usize);
        for (i, &w) in weights.iter().enumerate() {
            let turns: Vec<usize> =
                order.iter().enumerate().filter(|(_, s)| **s == i).map(|(k, _)| k).collect();
            assert_eq!(turns.len(), w as usize, "server {i}: exactly its weight per period");
            let largest_gap = turns.windows(2).map(|t| t[1] - t[0]).max().unwrap();
            assert!(
                largest_gap < 3 * total as usize / w as usize,
                "server {i}'s turns are spread: gap {largest_gap}"
            );
        }
        // Short periods: a table, same proportions.
        let order = period(&[7, 3, 2]);
        assert_eq!(order.iter().filter(|&&s| s == 0).count(), 7);
        assert_eq!(order.len(), 12);
    }

    #[test]
    fn max_share_caps_the_greedy_and_spares_the_operators_choice() {
        let capped = |w: &[u32], fixed: &[bool], share: f64| {
            let mut w = w.to_vec();
            cap_shares(&mut w, fixed, share);
            w
        };
        assert_eq!(capped(&[256, 1], &[false; 2], 0.5), [1, 1]);
        assert_eq!(capped(&[256, 1, 1], &[false; 3], 0.5), [2, 1, 1]);
        assert_eq!(capped(&[256, 100, 1], &[false; 3], 0.5), [101, 100, 1]);
        assert_eq!(capped(&[3, 1, 1, 1], &[false; 4], 0.5), [3, 1, 1, 1], "exactly half is allowed");
        assert_eq!(capped(&[256, 1], &[false; 2], 1.0), [256, 1], "a share of 1 caps nothing");
        assert_eq!(capped(&[256], &[false], 0.5), [256], "one server is all the pool");
        assert_eq!(capped(&[256, 0], &[false; 2], 0.5), [256, 0], "nor is one with weight");
        assert_eq!(capped(&[256, 7], &[true, false], 0.5), [256, 7], "an operator's weight stands");
        assert_eq!(capped(&[256, 10, 1], &[false, true, false], 0.5), [11, 10, 1]);
        assert_eq!(capped(&[9, 5], &[false; 2], 0.3), [5, 5], "an impossible share: equal weights");
        // Whatever is claimed, no capped server takes more than the share.
        for claims in
            [vec![256, 256, 1, 1, 1], vec![256, 200, 150, 3], vec![100; 10], vec![256, 1, 1, 1, 1, 1, 1, 1]]
        {
            for share in [0.25, 0.5, 0.9] {
                let w = capped(&claims, &vec![false; claims.len()], share);
                let total: u32 = w.iter().sum();
                if share * claims.len() as f64 >= 1.0 {
                    assert!(
                        w.iter().all(|&x| f64::from(x) <= share * f64::from(total) + 1e-9),
                        "{claims:?} {share}: {w:?}"
                    );
                }
                assert!(w.iter().all(|&x| x >= 1), "{w:?}");
            }
        }
    }

    #[test]
    fn the_ring_is_bounded_whatever_is_claimed() {
        let now = Instant::now();
        let servers: Vec<Arc<Server>> =
            (0..2000).map(|i| server(&format!("s{i:04}"), 256 - (i % 2))).collect();
        let v = View::build(servers, now, &cfg(0.5));
        assert!(v.ring.len() as u64 <= RING_MAX_POINTS + 2000, "{} points", v.ring.len());
        let mask = (1u64 << v.ring_bits) - 1;
        assert!((0..2000u64).all(|i| v.ring.iter().any(|p| p & mask == i)), "every server on the ring");
        assert!(matches!(v.rotation, Rotation::Spread { .. }));
        assert_eq!(v.rotation.period(), 2000 * 256 - 1000);
    }

    #[test]
    fn sticky_tokens_find_their_server_and_a_shared_token_finds_none() {
        let now = Instant::now();
        let (a, b) = (server("a", 1), server("b", 1));
        let v = build(vec![a.clone(), b.clone()], now);
        assert_eq!(a.cookie(), crate::sticky::token("a"));
        assert!(Arc::ptr_eq(v.by_cookie(&a.cookie()).unwrap(), &a));
        assert!(Arc::ptr_eq(v.by_cookie(&b.cookie()).unwrap(), &b));
        assert!(v.by_cookie("a").is_none(), "a name is not a token");
        let twin = Server::new(Arc::from("twin"), "127.0.0.1:1".parse().unwrap(), 1, false, now, None);
        let twin = Arc::new(Server { cookie_value: a.cookie_value, ..twin });
        let v = build(vec![a.clone(), b.clone(), twin], now);
        assert!(v.by_cookie(&a.cookie()).is_none(), "ambiguous: the algorithm decides");
        assert!(v.by_cookie(&b.cookie()).is_some());
    }

    #[test]
    fn round_robin_skips_excluded() {
        let now = Instant::now();
        let v = build(vec![server("a", 1), server("b", 1), server("c", 1)], now);
        let picks: Vec<String> = (0..6)
            .map(|_| v.pick(&Algorithm::RoundRobin, None, &[], now).unwrap().name.to_string())
            .collect();
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
        let b = v.by_name("b").unwrap().clone();
        for _ in 0..6 {
            assert_ne!(
                v.pick(&Algorithm::RoundRobin, None, std::slice::from_ref(&b), now).unwrap().name.as_ref(),
                "b"
            );
        }
    }

    #[test]
    fn rotations_keep_their_shape_after_the_shortcuts() {
        // Equal weights: the plain rotation; a common factor: the same interleaving.
        assert_eq!(period(&[3, 3, 3]), [0, 1, 2]);
        assert_eq!(period(&[10, 20]), period(&[1, 2]));
    }

    #[test]
    fn consistent_hash_moves_only_the_lost_servers_keys() {
        let now = Instant::now();
        let names = ["a", "b", "c", "d", "e"];
        let full = build(names.iter().map(|n| server(n, 1)).collect(), now);
        let without_c = build(names.iter().filter(|n| **n != "c").map(|n| server(n, 1)).collect(), now);
        let algo = Algorithm::Uri;
        let mut moved = 0;
        for i in 0..2000 {
            let key = format!("/item/{i}");
            let before = full.pick(&algo, Some(key.as_bytes()), &[], now).unwrap();
            let after = without_c.pick(&algo, Some(key.as_bytes()), &[], now).unwrap();
            if before.name != after.name {
                assert_eq!(&*before.name, "c", "only c's keys may move");
                moved += 1;
            }
        }
        assert!((250..550).contains(&moved), "about a fifth of the keys were on c: {moved}");
    }

    #[test]
    fn least_conn_prefers_the_idle_server() {
        let now = Instant::now();
        let v = build(vec![server("a", 1), server("b", 1)], now);
        v.servers[0].active.store(5, Ordering::Relaxed);
        for _ in 0..4 {
            assert_eq!(&*v.pick(&Algorithm::LeastConn, None, &[], now).unwrap().name, "b");
        }
    }

    #[test]
    fn random_of_two_spreads_load() {
        let now = Instant::now();
        let v = build((0..4).map(|i| server(&format!("s{i}"), 1)).collect(), now);
        let mut counts = [0; 4];
        for _ in 0..4000 {
            let s = v.pick(&Algorithm::Random2, None, &[], now).unwrap();
            counts[s.name[1..].parse::<usize>().unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 600), "{counts:?}");
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
