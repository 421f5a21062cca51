//! Serf's network coordinates: Vivaldi with height, an adjustment term and gravity, updated
//! from each direct probe's round trip and the coordinate the peer put in its ack, exactly as
//! `serf/coordinate` does (same constants, same update rules, same wire form), so Serf and
//! Shoal members estimate each other's distance. Deterministic: the only random choice (a
//! direction when two coordinates coincide) comes from the caller's seeded RNG.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::envelope::DropReason;
use crate::mp::{self, Wire};

/// Dimensions of a coordinate (Serf's default).
pub const DIMENSIONALITY: usize = 8;
/// Largest error estimate, and a new coordinate's.
const ERROR_MAX: f64 = 1.5;
/// How fast the error estimate follows observations.
const CE: f64 = 0.25;
/// How far one observation moves the coordinate.
const CC: f64 = 0.25;
/// Samples of (observed − estimated) averaged into the adjustment term.
const ADJUSTMENT_WINDOW: usize = 20;
/// Least height, in seconds (10 µs).
const HEIGHT_MIN: f64 = 10.0e-6;
/// Round trips kept per peer; the median is used.
const LATENCY_FILTER: usize = 3;
/// Gravity's reach, in seconds: pulls coordinates back towards the origin.
const GRAVITY_RHO: f64 = 150.0;
/// Below this, a distance or error counts as zero.
const ZERO: f64 = 1.0e-6;
/// The first byte of an ack payload carrying a coordinate (Serf's `PingVersion`).
const PING_VERSION: u8 = 1;
/// Longest round trip accepted (Serf's bound).
const MAX_RTT: Duration = Duration::from_secs(10);
/// Largest magnitude accepted in a peer's coordinate, in seconds: a component beyond it
/// cannot come from a real network and would only drag ours away.
const MAX_COMPONENT: f64 = 1.0e4;

/// A point in Serf's latency space (seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Coordinate {
    /// Euclidean part.
    pub vec: Vec<f64>,
    /// Confidence in it (lower is better).
    pub error: f64,
    /// Added to every distance (average of what the Euclidean part misses).
    pub adjustment: f64,
    /// The access link's share of every round trip.
    pub height: f64,
}

impl Default for Coordinate {
    fn default() -> Self {
        Coordinate { vec: vec![0.0; DIMENSIONALITY], error: ERROR_MAX, adjustment: 0.0, height: HEIGHT_MIN }
    }
}

impl Coordinate {
    /// Every component finite.
    pub fn is_valid(&self) -> bool {
        self.vec.iter().chain([&self.error, &self.adjustment, &self.height]).all(|f| f.is_finite())
    }

    /// The estimated round trip between two coordinates (Serf's `DistanceTo`): Euclidean
    /// distance plus both heights, plus both adjustments unless that makes it negative.
    pub fn distance_to(&self, other: &Coordinate) -> Duration {
        let raw = self.raw_distance_to(other);
        let adjusted = raw + self.adjustment + other.adjustment;
        let secs = if adjusted > 0.0 { adjusted } else { raw };
        // Go's `time.Duration(secs * 1e9)`: truncated to whole nanoseconds.
        Duration::from_nanos((secs * 1.0e9).clamp(0.0, u64::MAX as f64) as u64)
    }

    fn raw_distance_to(&self, other: &Coordinate) -> f64 {
        magnitude(self.vec.iter().zip(&other.vec).map(|(a, b)| a - b)) + self.height + other.height
    }

    /// Moves by `force` along the line from `other` (Serf's `ApplyForce`).
    fn apply_force(&self, rng: &mut impl Rng, force: f64, other: &Coordinate) -> Coordinate {
        let (unit, mag) = unit_vector_at(rng, &self.vec, &other.vec);
        let mut out = self.clone();
        for (v, u) in out.vec.iter_mut().zip(&unit) {
            *v += u * force;
        }
        if mag > ZERO {
            out.height = ((out.height + other.height) * force / mag + out.height).max(HEIGHT_MIN);
        }
        out
    }

    /// The payload of an ack: Serf's ping version byte, then the coordinate in MessagePack.
    pub(crate) fn ack_payload(&self) -> Vec<u8> {
        let mut buf = vec![PING_VERSION];
        self.put(&mut buf);
        buf
    }

    /// A peer's ack payload, checked: Serf's version, our dimensionality, finite values within
    /// [`MAX_COMPONENT`], an error within [0, `ERROR_MAX`], a height of at least the minimum.
    pub(crate) fn from_ack_payload(payload: &[u8]) -> Result<Coordinate, DropReason> {
        let (&version, body) = payload.split_first().ok_or(DropReason::Truncated)?;
        if version != PING_VERSION {
            return Err(DropReason::Coordinate);
        }
        let c: Coordinate = mp::decode(body).map_err(|_| DropReason::Coordinate)?;
        let sane = |f: f64| f.is_finite() && f.abs() <= MAX_COMPONENT;
        if c.vec.len() != DIMENSIONALITY
            || !c.vec.iter().chain([&c.adjustment, &c.height]).all(|f| sane(*f))
            || !(0.0..=ERROR_MAX).contains(&c.error)
            || c.height < HEIGHT_MIN
        {
            return Err(DropReason::Coordinate);
        }
        Ok(c)
    }
}

impl Wire for Coordinate {
    fn put(&self, buf: &mut Vec<u8>) {
        // Go's field order: Vec, Error, Adjustment, Height.
        mp::put_map_len(buf, 4);
        mp::put_str(buf, "Vec");
        self.vec.put(buf);
        for (k, v) in [("Error", self.error), ("Adjustment", self.adjustment), ("Height", self.height)] {
            mp::put_str(buf, k);
            v.put(buf);
        }
    }

    fn take(r: &mut mp::Reader<'_>) -> Result<Self, mp::DecodeError> {
        let mut c = Coordinate { vec: Vec::new(), error: 0.0, adjustment: 0.0, height: 0.0 };
        for _ in 0..r.read_map_len()? {
            match r.read_raw()? {
                b"Vec" => c.vec = Wire::take(r)?,
                b"Error" => c.error = Wire::take(r)?,
                b"Adjustment" => c.adjustment = Wire::take(r)?,
                b"Height" => c.height = Wire::take(r)?,
                _ => r.skip()?,
            }
        }
        Ok(c)
    }
}

fn magnitude(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|x| x * x).sum::<f64>().sqrt()
}

/// The unit vector from `b` to `a` and the distance; a random direction when they coincide.
fn unit_vector_at(rng: &mut impl Rng, a: &[f64], b: &[f64]) -> (Vec<f64>, f64) {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let mag = magnitude(d.iter().copied());
    if mag > ZERO {
        return (d.iter().map(|x| x / mag).collect(), mag);
    }
    let r: Vec<f64> = d.iter().map(|_| rng.random::<f64>() - 0.5).collect();
    let rmag = magnitude(r.iter().copied());
    if rmag > ZERO {
        return (r.iter().map(|x| x / rmag).collect(), 0.0);
    }
    let mut unit = vec![0.0; d.len()];
    unit[0] = 1.0;
    (unit, 0.0)
}

/// Why an observation was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// Round trip outside 0..=10 s.
    Rtt,
    /// The update left no valid coordinate (ours was reset).
    Reset,
}

/// Our coordinate, and the latest known coordinate of every member (Serf's client and cache).
#[derive(Debug, Clone)]
pub(crate) struct Vivaldi {
    coord: Coordinate,
    origin: Coordinate,
    adjustment_samples: [f64; ADJUSTMENT_WINDOW],
    adjustment_index: usize,
    /// Recent round trips per member (seconds); entries go with their member.
    latency: BTreeMap<Arc<str>, Vec<f64>>,
    /// Members' coordinates as their last direct ack carried them.
    known: BTreeMap<Arc<str>, Coordinate>,
    /// Updates that broke the coordinate and reset it.
    pub resets: u64,
}

impl Default for Vivaldi {
    fn default() -> Self {
        let origin = Coordinate { error: ERROR_MAX, height: 0.0, ..Coordinate::default() };
        Vivaldi {
            coord: Coordinate::default(),
            origin,
            adjustment_samples: [0.0; ADJUSTMENT_WINDOW],
            adjustment_index: 0,
            latency: BTreeMap::new(),
            known: BTreeMap::new(),
            resets: 0,
        }
    }
}

impl Vivaldi {
    /// Our own coordinate.
    pub fn coordinate(&self) -> &Coordinate {
        &self.coord
    }

    /// A member's last known coordinate.
    pub fn of(&self, node: &str) -> Option<&Coordinate> {
        self.known.get(node)
    }

    /// Forgets a member that left the member list.
    pub fn forget(&mut self, node: &str) {
        self.latency.remove(node);
        self.known.remove(node);
    }

    /// One direct probe of `node`: its coordinate (already checked) and the round trip.
    pub fn observe(
        &mut self,
        rng: &mut impl Rng,
        node: &Arc<str>,
        other: Coordinate,
        rtt: Duration,
    ) -> Result<(), Rejected> {
        if rtt > MAX_RTT {
            return Err(Rejected::Rtt);
        }
        let rtt = self.latency_filter(node, rtt.as_secs_f64());
        self.update_vivaldi(rng, &other, rtt);
        self.update_adjustment(&other, rtt);
        self.update_gravity(rng);
        self.known.insert(node.clone(), other);
        if !self.coord.is_valid() {
            self.resets += 1;
            self.coord = Coordinate::default();
            return Err(Rejected::Reset);
        }
        Ok(())
    }

    /// The median of the last few round trips to `node`.
    fn latency_filter(&mut self, node: &Arc<str>, rtt: f64) -> f64 {
        let samples = self.latency.entry(node.clone()).or_default();
        samples.push(rtt);
        if samples.len() > LATENCY_FILTER {
            samples.remove(0);
        }
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    }

    fn update_vivaldi(&mut self, rng: &mut impl Rng, other: &Coordinate, rtt: f64) {
        let dist = self.coord.distance_to(other).as_secs_f64();
        let rtt = rtt.max(ZERO);
        let wrongness = (dist - rtt).abs() / rtt;
        let total = (self.coord.error + other.error).max(ZERO);
        let weight = self.coord.error / total;
        self.coord.error = (CE * weight * wrongness + self.coord.error * (1.0 - CE * weight)).min(ERROR_MAX);
        let force = CC * weight * (rtt - dist);
        self.coord = self.coord.apply_force(rng, force, other);
    }

    fn update_adjustment(&mut self, other: &Coordinate, rtt: f64) {
        self.adjustment_samples[self.adjustment_index] = rtt - self.coord.raw_distance_to(other);
        self.adjustment_index = (self.adjustment_index + 1) % ADJUSTMENT_WINDOW;
        self.coord.adjustment =
            self.adjustment_samples.iter().sum::<f64>() / (2.0 * ADJUSTMENT_WINDOW as f64);
    }

    fn update_gravity(&mut self, rng: &mut impl Rng) {
        let dist = self.origin.distance_to(&self.coord).as_secs_f64();
        let force = -(dist / GRAVITY_RHO).powi(2);
        self.coord = self.coord.apply_force(rng, force, &self.origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn the_ack_payload_is_serfs_version_byte_and_msgpack_map() {
        let c = Coordinate::default();
        let p = c.ack_payload();
        assert_eq!(p[0], 1);
        assert_eq!(p[1], 0x84, "a map of four fields");
        assert_eq!(&p[2..6], b"\xa3Vec");
        assert_eq!(Coordinate::from_ack_payload(&p).unwrap(), c);
        let mut wrong = p.clone();
        wrong[0] = 2;
        assert!(Coordinate::from_ack_payload(&wrong).is_err());
        let huge = Coordinate { vec: vec![1.0e9; DIMENSIONALITY], ..Coordinate::default() };
        assert!(Coordinate::from_ack_payload(&huge.ack_payload()).is_err(), "absurd components are refused");
        let short = Coordinate { vec: vec![0.0; 3], ..Coordinate::default() };
        assert!(Coordinate::from_ack_payload(&short.ack_payload()).is_err(), "another dimensionality");
        let nan = Coordinate { height: f64::NAN, ..Coordinate::default() };
        assert!(Coordinate::from_ack_payload(&nan.ack_payload()).is_err());
        assert!(Coordinate::from_ack_payload(&[1, 0xc1]).is_err());
    }

    /// Serf's own test: two clients 10 ms apart, updated back and forth, converge on 10 ms.
    #[test]
    fn two_members_a_fixed_distance_apart_converge_on_it() {
        let (mut a, mut b) = (Vivaldi::default(), Vivaldi::default());
        let (na, nb): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let rtt = Duration::from_millis(10);
        let mut r = rng();
        for _ in 0..200 {
            let cb = b.coordinate().clone();
            a.observe(&mut r, &nb, cb, rtt).unwrap();
            let ca = a.coordinate().clone();
            b.observe(&mut r, &na, ca, rtt).unwrap();
        }
        let est = a.coordinate().distance_to(b.coordinate()).as_secs_f64();
        assert!((est - 0.010).abs() < 0.0005, "estimated {est} s for a 10 ms link");
        assert!(a.coordinate().error < 0.2, "confidence grew: {}", a.coordinate().error);
        assert!(a.of("b").is_some(), "b's coordinate is kept");
        a.forget("b");
        assert!(a.of("b").is_none());
    }

    #[test]
    fn a_round_trip_over_ten_seconds_is_rejected_and_changes_nothing() {
        let mut a = Vivaldi::default();
        let before = a.coordinate().clone();
        let n: Arc<str> = "b".into();
        assert_eq!(
            a.observe(&mut rng(), &n, Coordinate::default(), Duration::from_secs(11)),
            Err(Rejected::Rtt)
        );
        assert_eq!(a.coordinate(), &before);
    }

    #[test]
    fn distance_matches_serfs_formula() {
        let a = Coordinate {
            vec: vec![0.003, 0.004, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            error: 1.0,
            adjustment: 0.001,
            height: 0.0001,
        };
        let b = Coordinate { vec: vec![0.0; 8], error: 1.0, adjustment: -0.0005, height: 0.0002 };
        // 5 ms Euclidean + 0.3 ms heights + 0.5 ms adjustments (to the nanosecond, truncated).
        let near = |d: Duration, ns: u64| d.as_nanos().abs_diff(u128::from(ns)) <= 1;
        assert!(near(a.distance_to(&b), 5_800_000), "{:?}", a.distance_to(&b));
        let neg = Coordinate { adjustment: -1.0, ..b.clone() };
        assert!(near(a.distance_to(&neg), 5_300_000), "a negative sum falls back to the raw distance");
    }
}
