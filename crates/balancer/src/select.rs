//! Picking a server: the immutable view of a pool's eligible servers that the request path
//! reads, with what each algorithm needs precomputed at rebuild — the weighted round-robin
//! order, the consistent-hash ring, the sticky-token lookup — and the weight caps. A rebuild
//! costs O(servers) (plus a bounded ring) whatever weights members claim.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::config::{Algorithm, MAX_WEIGHT, PoolConfig};
use crate::server::Server;

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

/// `nearest` spills over to the next nearest server while the nearest has this many more
/// requests in flight than the least busy eligible one.
pub const SPILL_MARGIN: u32 = 8;

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
    pub(crate) fn build(mut servers: Vec<Arc<Server>>, now: Instant, cfg: &PoolConfig) -> View {
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
            Algorithm::Nearest => {
                // Nearest first (unknown distances last, ties rotated), but not one that has
                // SPILL_MARGIN more requests in flight than the least busy eligible server.
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                let mut eligible: Vec<usize> = (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| self.weights[i] > 0 && ok(&self.servers[i]))
                    .collect();
                let busy = |i: usize| self.servers[i].active.load(Ordering::Relaxed);
                let least = eligible.iter().map(|&i| busy(i)).min()?;
                let rtt = |i: usize| match self.servers[i].rtt_us.load(Ordering::Relaxed) {
                    0 => u32::MAX,
                    us => us,
                };
                eligible.sort_by_key(|&i| rtt(i));
                eligible.iter().find(|&&i| busy(i) < least + SPILL_MARGIN).map(|&i| self.servers[i].clone())
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
        let mut twin = Server::new(Arc::from("twin"), "127.0.0.1:1".parse().unwrap(), 1, false, now, None);
        twin.cookie_value = a.cookie_value;
        let twin = Arc::new(twin);
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
    fn nearest_goes_to_the_lowest_estimated_rtt_and_spills_over_under_load() {
        use std::time::Duration;
        let now = Instant::now();
        let v = build(vec![server("far", 1), server("near", 1), server("unknown", 1), server("mid", 1)], now);
        let by = |name: &str| v.servers.iter().find(|s| &*s.name == name).unwrap().clone();
        by("far").set_estimated_rtt(Some(Duration::from_millis(20)));
        by("near").set_estimated_rtt(Some(Duration::from_micros(300)));
        by("mid").set_estimated_rtt(Some(Duration::from_millis(2)));
        let pick = || v.pick(&Algorithm::Nearest, None, &[], now).unwrap().name.to_string();
        for _ in 0..10 {
            assert_eq!(pick(), "near");
        }
        // Busier than the least busy by the margin: the next nearest takes the overflow.
        by("near").active.store(SPILL_MARGIN, Ordering::Relaxed);
        assert_eq!(pick(), "mid");
        by("mid").active.store(SPILL_MARGIN, Ordering::Relaxed);
        assert_eq!(pick(), "far");
        // Excluded (a retry) or ejected: the next one.
        by("near").active.store(0, Ordering::Relaxed);
        assert_eq!(&*v.pick(&Algorithm::Nearest, None, &[by("near")], now).unwrap().name, "far");
        // No estimate at all: every server unknown ties, and the rotation spreads them.
        let w = build(vec![server("x", 1), server("y", 1)], now);
        let names: std::collections::BTreeSet<String> =
            (0..4).map(|_| w.pick(&Algorithm::Nearest, None, &[], now).unwrap().name.to_string()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!("nearest".parse::<Algorithm>().unwrap(), Algorithm::Nearest);
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
}
