//! Counters the request path bumps and the stats read: per-server and per-frontend counters,
//! a lock-free latency histogram and a requests-per-second rate. Relaxed atomics only: nothing
//! here orders anything, it only counts.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

    /// Forgets every observation (`clear counters all`).
    pub fn clear(&self) {
        zero(&self.buckets);
        self.sum_us.store(0, Ordering::Relaxed);
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

    /// Forgets the highest rate seen (`clear counters`), or everything (`all`).
    pub fn clear(&self, all: bool) {
        self.max.store(0, Ordering::Relaxed);
        if all {
            self.current.store(0, Ordering::Relaxed);
            self.previous.store(0, Ordering::Relaxed);
        }
    }
}

fn zero(counters: &[AtomicU64]) {
    for c in counters {
        c.store(0, Ordering::Relaxed);
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

impl ServerStats {
    /// HAProxy's `clear counters`: the maxima; with `all`, every counter.
    pub fn clear(&self, all: bool) {
        self.max_active.store(0, Ordering::Relaxed);
        self.rate.clear(all);
        if !all {
            return;
        }
        zero(&self.responses);
        for c in [
            &self.requests,
            &self.connect_errors,
            &self.response_errors,
            &self.retries,
            &self.redispatches,
            &self.bytes_in,
            &self.bytes_out,
            &self.last_request_ms,
            &self.check_failures,
            &self.check_downs,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        self.response_time.clear();
        self.connect_time.clear();
    }
}

/// Frontend counters.
#[derive(Debug, Default)]
pub struct FrontendStats {
    /// Requests received.
    pub requests: AtomicU64,
    /// Requests refused (smuggling, too large, malformed).
    pub denied: AtomicU64,
    /// Requests no server could take.
    pub no_server: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections open now.
    pub current_connections: AtomicU64,
    /// Most connections open at once.
    pub max_connections: AtomicU64,
    /// Responses by class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [AtomicU64; 5],
    /// Request bytes received (bodies).
    pub bytes_in: AtomicU64,
    /// Response bytes sent (bodies).
    pub bytes_out: AtomicU64,
    /// Requests per second.
    pub request_rate: Rate,
    /// Connections per second.
    pub connection_rate: Rate,
    /// Number within the balancer (HAProxy's `iid`).
    pub id: AtomicU32,
    /// When counting started (for rates).
    pub epoch: std::sync::OnceLock<Instant>,
}

impl FrontendStats {
    /// Seconds since counting started, for [`Rate`].
    pub fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(*self.epoch.get_or_init(Instant::now)).as_secs()
    }
}

impl FrontendStats {
    /// HAProxy's `clear counters`: the maxima; with `all`, every counter (not the connections
    /// open now).
    pub fn clear(&self, all: bool) {
        self.max_connections.store(self.current_connections.load(Ordering::Relaxed), Ordering::Relaxed);
        self.request_rate.clear(all);
        self.connection_rate.clear(all);
        if !all {
            return;
        }
        zero(&self.responses);
        for c in [
            &self.requests,
            &self.denied,
            &self.no_server,
            &self.connections,
            &self.bytes_in,
            &self.bytes_out,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a response sent with `status`.
    pub fn count_response(&self, status: u16) {
        self.responses[usize::from((status / 100).clamp(1, 5) - 1)].fetch_add(1, Ordering::Relaxed);
    }
}
