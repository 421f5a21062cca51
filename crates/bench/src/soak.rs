//! Soak sampling: RSS and open file descriptors of every Shoal process in a set of
//! containers, read from the host's `/proc`, and the least-squares slope of each series.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

/// One process, followed for as long as it lives (a restarted container is a new series).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProcKey {
    /// The container's short name (`ha`, `w3`, …).
    pub container: String,
    /// The Shoal command it runs: `init`, `balancer`, `agent`, `webapp`.
    pub role: String,
    pub pid: u32,
}

/// Samples over time: (seconds since start, RSS in KiB, open descriptors).
#[derive(Debug, Default)]
pub struct Soak {
    start: Option<Instant>,
    pub series: BTreeMap<ProcKey, Vec<(f64, f64, f64)>>,
}

impl Soak {
    /// Records one sample of every Shoal process in container `id` (named `short`).
    pub fn sample(&mut self, short: &str, id: &str) {
        let start = *self.start.get_or_insert_with(Instant::now);
        let Ok(out) = Command::new("docker").args(["top", id, "-eo", "pid,args"]).output() else { return };
        if !out.status.success() {
            return; // stopped or gone
        }
        for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
            let mut words = line.split_whitespace();
            let (Some(pid), Some(cmd), Some(role)) = (words.next(), words.next(), words.next()) else {
                continue;
            };
            let Ok(pid) = pid.parse::<u32>() else { continue };
            if !cmd.ends_with("shoal") {
                continue;
            }
            let (Some(rss), Some(fds)) = (rss_kib(pid), open_fds(pid)) else { continue };
            let key = ProcKey { container: short.to_string(), role: role.to_string(), pid };
            self.series.entry(key).or_default().push((start.elapsed().as_secs_f64(), rss, fds));
        }
    }

    /// Series that lived at least `min_secs`: key, first and last sample, slopes per minute.
    pub fn report(&self, min_secs: f64) -> Vec<SeriesReport> {
        self.series
            .iter()
            .filter(|(_, s)| s.len() >= 3 && s[s.len() - 1].0 - s[0].0 >= min_secs)
            .map(|(k, s)| {
                let rss: Vec<(f64, f64)> = s.iter().map(|(t, r, _)| (*t, *r)).collect();
                let fds: Vec<(f64, f64)> = s.iter().map(|(t, _, f)| (*t, *f)).collect();
                SeriesReport {
                    key: k.clone(),
                    minutes: (s[s.len() - 1].0 - s[0].0) / 60.0,
                    rss_first: s[0].1,
                    rss_last: s[s.len() - 1].1,
                    rss_max: s.iter().map(|x| x.1).fold(0.0, f64::max),
                    rss_slope: slope(&rss) * 60.0,
                    fds_first: s[0].2,
                    fds_last: s[s.len() - 1].2,
                    fds_slope: slope(&fds) * 60.0,
                }
            })
            .collect()
    }
}

/// What one long-lived process did over the run.
#[derive(Debug)]
pub struct SeriesReport {
    pub key: ProcKey,
    pub minutes: f64,
    pub rss_first: f64,
    pub rss_last: f64,
    pub rss_max: f64,
    /// KiB per minute.
    pub rss_slope: f64,
    pub fds_first: f64,
    pub fds_last: f64,
    /// Descriptors per minute.
    pub fds_slope: f64,
}

/// Least-squares slope of `points` (y per unit of x).
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let cov: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}

fn rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn open_fds(pid: u32) -> Option<f64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_noise() {
        let line: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 * i as f64 + 7.0)).collect();
        assert!((slope(&line) - 3.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, if i % 2 == 0 { 5.0 } else { 6.0 })).collect();
        assert!(slope(&flat).abs() < 0.1);
        assert_eq!(slope(&[(1.0, 1.0)]), 0.0);
    }
}
