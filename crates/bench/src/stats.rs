//! Small statistics helpers: medians and percentiles of measured durations.

use std::time::Duration;

/// Summary of a sample.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Smallest value.
    pub min: Duration,
    /// Median.
    pub p50: Duration,
    /// Largest value.
    pub max: Duration,
}

/// Summarises a non-empty sample.
pub fn summary(values: &[Duration]) -> Option<Summary> {
    let mut v = values.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort();
    Some(Summary { min: v[0], p50: v[v.len() / 2], max: v[v.len() - 1] })
}

/// Median of numbers.
pub fn median_u64(values: &[u64]) -> Option<u64> {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// Formats a duration in ms with one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// "p50 …, p99 …, max …" of a sample, in µs below a millisecond.
pub fn percentiles(values: &[Duration]) -> String {
    let mut v = values.to_vec();
    if v.is_empty() {
        return "no sample".into();
    }
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    let show = |d: Duration| {
        if d < Duration::from_millis(1) { format!("{} µs", d.as_micros()) } else { ms(d) }
    };
    format!("p50 {}, p99 {}, max {}", show(at(0.5)), show(at(0.99)), show(v[v.len() - 1]))
}
