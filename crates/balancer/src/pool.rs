//! Backend pools: which members serve, in what state, and how one is picked.
//!
//! A [`Pool`] keeps every server it knows (control plane, behind a mutex) and
//! publishes an immutable [`View`] of the eligible ones through `arc-swap`: the
//! request path only loads that pointer and touches atomics, never a lock. A
//! server is eligible when gossip says it is alive (not leaving), its health
//! checks pass (if any), no operator has drained it and passive outlier
//! detection has not ejected it. The view carries what each algorithm needs,
//! precomputed at rebuild: the smooth weighted round-robin sequence and the
//! consistent-hash ring.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use shoal_agent::Membership;
use shoal_gossip::{Member, MemberStatus, Tags};

use crate::config::{Algorithm, PoolConfig};
use crate::upstream::ConnPool;

/// Virtual nodes per unit of weight on the hash ring.
const RING_POINTS_PER_WEIGHT: u32 = 64;
/// Largest weight a `weight` tag may give (HAProxy's range).
pub const MAX_WEIGHT: u32 = 256;

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
    /// Weight from the `weight` tag (1 when absent).
    pub weight: AtomicU32,
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
    fn new(name: Arc<str>, addr: SocketAddr, weight: u32, checked: bool, epoch: Instant) -> Server {
        let now = Instant::now();
        Server {
            name,
            id: 0,
            tags: ArcSwap::from_pointee(Tags::new()),
            addr,
            weight: AtomicU32::new(weight),
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
        tracing::warn!(target: "shoal::server", server = %self.name, addr = %self.addr, ?backoff, "server ejected after failures");
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
    rr: Vec<u32>,
    ring: Vec<(u64, u32)>,
    next: AtomicUsize,
}

fn hash_of(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// nginx's smooth weighted round-robin, unrolled into one period of picks.
///
/// Weights are divided by their greatest common divisor first (the period only gets shorter),
/// and equal weights, the common case, give the plain rotation without the O(period × n) walk.
fn smooth_sequence(weights: &[u32]) -> Vec<u32> {
    let gcd = weights.iter().fold(0u32, |g, &w| {
        let (mut a, mut b) = (g, w);
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    });
    if gcd == 0 {
        return Vec::new();
    }
    if weights.iter().all(|&w| w == weights[0]) {
        return (0..weights.len() as u32).collect();
    }
    let weights: Vec<u32> = weights.iter().map(|&w| w / gcd).collect();
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        seq.push(best as u32);
    }
    seq
}

impl View {
    /// The view of `servers`; the consistent-hash ring (64 points per unit of weight, the
    /// costly part with many servers) only when the pool's algorithm hashes.
    fn build(mut servers: Vec<Arc<Server>>, now: Instant, slow_start: Duration, with_ring: bool) -> View {
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        let weights: Vec<u32> = servers.iter().map(|s| s.effective_weight(now, slow_start)).collect();
        let rr = smooth_sequence(&weights);
        let mut ring = Vec::new();
        if with_ring {
            ring.reserve(weights.iter().map(|&w| (w * RING_POINTS_PER_WEIGHT) as usize).sum());
            for (i, s) in servers.iter().enumerate() {
                for p in 0..weights[i] * RING_POINTS_PER_WEIGHT {
                    let mut h = std::hash::DefaultHasher::new();
                    (s.name.as_bytes(), p).hash(&mut h);
                    ring.push((h.finish(), i as u32));
                }
            }
            ring.sort_unstable();
        }
        View { servers, rr, ring, next: AtomicUsize::new(0) }
    }

    /// The eligible server named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Server>> {
        self.servers.binary_search_by(|s| (*s.name).cmp(name)).ok().map(|i| &self.servers[i])
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
                let len = self.rr.len();
                for _ in 0..len.min(n * MAX_WEIGHT as usize) {
                    let i = self.next.fetch_add(1, Ordering::Relaxed) % len.max(1);
                    let s = &self.servers[self.rr[i] as usize];
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
                    .map(|k| &self.servers[(start + k) % n])
                    .filter(|s| ok(s) && s.weight.load(Ordering::Relaxed) > 0)
                    .min_by_key(|s| {
                        u64::from(s.active.load(Ordering::Relaxed)) * u64::from(MAX_WEIGHT)
                            / u64::from(s.weight.load(Ordering::Relaxed).max(1))
                    })
                    .cloned()
            }
            Algorithm::Random2 => {
                let candidates: Vec<&Arc<Server>> =
                    self.servers.iter().filter(|s| ok(s) && s.weight.load(Ordering::Relaxed) > 0).collect();
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
                let h = hash_of(key);
                let start = self.ring.partition_point(|(p, _)| *p < h);
                (0..self.ring.len())
                    .map(|k| &self.servers[self.ring[(start + k) % self.ring.len()].1 as usize])
                    .find(|s| ok(s))
                    .cloned()
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
            cfg,
            id,
            servers: Default::default(),
            overrides: Default::default(),
            next_server_id: AtomicU32::new(1),
            view: ArcSwap::from_pointee(View::default()),
            epoch: Instant::now(),
            changed,
        }
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
        let weight =
            m.tags.get("weight").and_then(|w| w.parse::<u32>().ok()).map_or(1, |w| w.min(MAX_WEIGHT));
        (SocketAddr::new(m.addr.ip(), port), weight)
    }

    /// Brings the pool in line with the cluster's membership; returns what changed.
    pub fn sync(&self, membership: &Membership, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = std::collections::HashSet::new();
        for m in membership.members.iter().filter(|m| self.selects(m)) {
            if matches!(m.status, MemberStatus::Left | MemberStatus::Failed) {
                continue;
            }
            seen.insert(m.name.clone());
            let (addr, weight) = self.target(m);
            let existing = servers.get(&m.name).cloned();
            let server = match existing {
                Some(s) if s.addr == addr => s,
                old => {
                    if let Some(o) = old {
                        o.removed.store(true, Ordering::Relaxed);
                        changes.push(Change::Removed(o, "address changed"));
                    }
                    let mut fresh =
                        Server::new(m.name.clone(), addr, weight, self.cfg.health.enabled, self.epoch);
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
            let weight = self.override_of(&m.name).weight.unwrap_or(weight);
            server.weight.store(weight, Ordering::Relaxed);
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
                    _ => "no longer selected",
                };
                changes.push(Change::Removed(s, why));
            }
        }
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
        let with_ring = self.cfg.algorithm.hashes();
        self.view.store(Arc::new(View::build(eligible, now, self.cfg.slow_start, with_ring)));
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
        tracing::info!(target: "shoal::server", pool = %self.cfg.name, server = %name, state = ?admin, "server state set by an operator");
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
        tracing::info!(target: "shoal::server", pool = %self.cfg.name, server = %name, weight, "server weight set by an operator");
        self.rebuild(now);
        true
    }
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
        crate::proxy::cookie_value(&self.headers, name)
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
        let s = Server::new(Arc::from(name), "127.0.0.1:1".parse().unwrap(), weight, false, Instant::now());
        Arc::new(s)
    }

    #[test]
    fn smooth_round_robin_interleaves_by_weight() {
        assert_eq!(smooth_sequence(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_sequence(&[1, 1]), vec![0, 1]);
        assert!(smooth_sequence(&[0, 0]).is_empty());
    }

    #[test]
    fn round_robin_skips_excluded() {
        let now = Instant::now();
        let v = View::build(vec![server("a", 1), server("b", 1), server("c", 1)], now, Duration::ZERO, true);
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
    fn smooth_sequences_keep_their_shape_after_the_shortcuts() {
        // Equal weights: the plain rotation; a common factor: the same interleaving.
        assert_eq!(smooth_sequence(&[3, 3, 3]), [0, 1, 2]);
        assert_eq!(smooth_sequence(&[10, 20]), smooth_sequence(&[1, 2]));
        assert_eq!(smooth_sequence(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert!(smooth_sequence(&[0, 0]).is_empty());
    }

    #[test]
    fn consistent_hash_moves_only_the_lost_servers_keys() {
        let now = Instant::now();
        let names = ["a", "b", "c", "d", "e"];
        let full = View::build(names.iter().map(|n| server(n, 1)).collect(), now, Duration::ZERO, true);
        let without_c = View::build(
            names.iter().filter(|n| **n != "c").map(|n| server(n, 1)).collect(),
            now,
            Duration::ZERO,
            true,
        );
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
        let v = View::build(vec![server("a", 1), server("b", 1)], now, Duration::ZERO, true);
        v.servers[0].active.store(5, Ordering::Relaxed);
        for _ in 0..4 {
            assert_eq!(&*v.pick(&Algorithm::LeastConn, None, &[], now).unwrap().name, "b");
        }
    }

    #[test]
    fn random_of_two_spreads_load() {
        let now = Instant::now();
        let v = View::build((0..4).map(|i| server(&format!("s{i}"), 1)).collect(), now, Duration::ZERO, true);
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
