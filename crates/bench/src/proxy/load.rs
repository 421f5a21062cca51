//! The load generators and what they print: wrk (HTTP/1.1, plain or TLS, keep-alive or a new
//! connection per request, a Lua script for a request body) and h2load (HTTP/2 over TLS, its
//! per-request log for percentiles), each run parsed into a [`Run`].

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::procs::write;

/// What one run of a load generator measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Responses received.
    pub requests: u64,
    /// Responses other than 2xx or 3xx.
    pub non_2xx: u64,
    /// Connect, read and write errors and timeouts (wrk); streams or connections that failed
    /// without an HTTP status (h2load).
    pub socket_errors: u64,
    /// CPU time the proxy (all its threads and processes) spent per response, µs; NaN where
    /// not measured. Where the load generator saturates its core before the proxy does (a full
    /// TLS handshake costs the client more than the server), req/s are the client's and this
    /// is what tells the proxies apart.
    pub cpu_us: f64,
}

impl Default for Run {
    fn default() -> Run {
        Run {
            rps: 0.0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            requests: 0,
            non_2xx: 0,
            socket_errors: 0,
            cpu_us: f64::NAN,
        }
    }
}

impl Run {
    /// Every failed request: bad statuses and socket errors.
    pub fn errors(&self) -> u64 {
        self.non_2xx + self.socket_errors
    }
}

/// The kind of request a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// wrk `GET /`; `keepalive: false` adds `Connection: close`, so every request opens a new
    /// connection (and over TLS makes a full handshake: wrk keeps no session cache).
    Get {
        /// Whether connections are reused.
        keepalive: bool,
    },
    /// wrk `POST /` with a body of this many bytes, over keep-alive connections.
    Post {
        /// Body size in bytes.
        body: usize,
    },
    /// h2load `GET /` over HTTP/2 (TLS with ALPN `h2`): 10 connections × 10 concurrent streams.
    H2,
}

/// How hard and how long a run loads its target.
#[derive(Debug, Clone)]
pub struct Load<'a> {
    /// wrk connections (h2load always opens 10 with 10 streams each).
    pub connections: u32,
    /// Seconds per run.
    pub secs: u64,
    /// The core the load generator is pinned to, if any.
    pub cpu: Option<u8>,
    /// Where Lua scripts and h2load's request log go.
    pub scratch: &'a Path,
}

impl Load<'_> {
    /// Runs `request` against `url` once.
    pub fn run(&self, request: Request, url: &str) -> anyhow::Result<Run> {
        match request {
            Request::Get { keepalive } => self.wrk(url, (!keepalive).then_some("Connection: close"), None),
            Request::Post { body } => {
                let script = write(
                    self.scratch,
                    &format!("post-{body}.lua"),
                    &format!(
                        "wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", {body})\n\
                         wrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n"
                    ),
                )?;
                self.wrk(url, None, Some(&script))
            }
            Request::H2 => self.h2load(url),
        }
    }

    /// `taskset -c CPU PROGRAM`, or just `PROGRAM` when unpinned.
    fn command(&self, program: &str) -> Command {
        match self.cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string(), program]);
                c
            }
            None => Command::new(program),
        }
    }

    fn wrk(&self, url: &str, header: Option<&str>, script: Option<&Path>) -> anyhow::Result<Run> {
        let mut cmd = self.command("wrk");
        cmd.args(["-t1", &format!("-c{}", self.connections), &format!("-d{}s", self.secs), "--latency"]);
        if let Some(h) = header {
            cmd.args(["-H", h]);
        }
        if let Some(s) = script {
            cmd.arg("-s").arg(s);
        }
        let text = output(cmd.arg(url), "wrk")?;
        parse_wrk(&text).with_context(|| format!("wrk against {url} printed:\n{text}"))
    }

    fn h2load(&self, url: &str) -> anyhow::Result<Run> {
        let log = self.scratch.join("h2load.tsv");
        let mut cmd = self.command("h2load");
        cmd.args(["-t1", "-c10", "-m10", "-D", &self.secs.to_string(), "--log-file"]).arg(&log).arg(url);
        let text = output(&mut cmd, "h2load")?;
        let tsv = std::fs::read_to_string(&log).with_context(|| format!("h2load wrote no {}", log.display()));
        let _ = std::fs::remove_file(&log);
        parse_h2load(&text, &tsv?).with_context(|| format!("h2load against {url} printed:\n{text}"))
    }
}

/// Runs `cmd` to its end; its stdout and stderr together, or an error naming `tool`.
fn output(cmd: &mut Command, tool: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {tool}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{tool} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

/// A wrk duration (`812.00us`, `1.20ms`, `2.01s`) in ms.
fn parse_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Some(v) = s.strip_suffix("us") {
        v.parse::<f64>().ok().map(|v| v / 1000.0)
    } else if let Some(v) = s.strip_suffix("ms") {
        v.parse().ok()
    } else if let Some(v) = s.strip_suffix('s') {
        v.parse::<f64>().ok().map(|v| v * 1000.0)
    } else {
        None
    }
}

/// The numbers in `line`, in order (`Socket errors: connect 0, read 12, …` gives 0, 12, …).
fn numbers(line: &str) -> impl Iterator<Item = u64> + '_ {
    line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok())
}

/// The line of `text` whose first word is `first`, split into words.
fn words<'t>(text: &'t str, first: &str) -> Option<Vec<&'t str>> {
    text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).find(|w| w.first() == Some(&first))
}

/// wrk's `--latency` report.
pub fn parse_wrk(text: &str) -> anyhow::Result<Run> {
    let second = |first: &str| words(text, first).and_then(|w| w.get(1).map(|s| s.to_string()));
    let rps = second("Requests/sec:").and_then(|v| v.parse().ok()).context("no Requests/sec line")?;
    let p50_ms = second("50%").and_then(|v| parse_ms(&v)).context("no 50% latency line")?;
    let p99_ms = second("99%").and_then(|v| parse_ms(&v)).context("no 99% latency line")?;
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| numbers(l).next())
        .context("no `N requests in` line")?;
    // The numbers after the label: `Non-2xx or 3xx responses: 12` counts 12, not 2 + 3 + 12.
    let sum_of = |label: &str| {
        text.lines().filter_map(|l| l.trim_start().strip_prefix(label)).flat_map(numbers).sum::<u64>()
    };
    Ok(Run {
        rps,
        p50_ms,
        p99_ms,
        requests,
        non_2xx: sum_of("Non-2xx or 3xx responses:"),
        socket_errors: sum_of("Socket errors:"),
        cpu_us: f64::NAN,
    })
}

/// h2load's report (req/s, request counts) and its `--log-file` (start µs, status, duration µs
/// per request, for the percentiles; h2load itself prints only min, max, mean and sd).
pub fn parse_h2load(text: &str, log: &str) -> anyhow::Result<Run> {
    let finished = words(text, "finished").context("no `finished in` line")?;
    let rps = finished
        .windows(2)
        .find(|w| w[1].starts_with("req/s"))
        .and_then(|w| w[0].parse().ok())
        .context("no req/s on the `finished in` line")?;
    // requests: 8653 total, 8753 started, 8653 done, 8653 succeeded, 0 failed, 0 errored, 0 timeout
    let counts = words(text, "requests:").context("no `requests:` line")?;
    let count = |name: &str| {
        counts
            .windows(2)
            .find(|w| w[1].trim_end_matches(',') == name)
            .and_then(|w| w[0].parse::<u64>().ok())
            .with_context(|| format!("no `{name}` count on the `requests:` line"))
    };
    let (done, failed, errored) = (count("done")?, count("failed")?, count("errored")?);
    let mut micros: Vec<u64> =
        log.lines().filter_map(|l| l.split('\t').nth(2)).filter_map(|d| d.trim().parse().ok()).collect();
    micros.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * micros.len() as f64).ceil() as usize).clamp(1, micros.len().max(1));
        micros.get(rank - 1).map_or(f64::NAN, |&us| us as f64 / 1000.0)
    };
    Ok(Run {
        rps,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        requests: done,
        // `failed` counts every failed request, `errored` those that failed without a status.
        non_2xx: failed.saturating_sub(errored),
        socket_errors: errored,
        cpu_us: f64::NAN,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Outputs captured from wrk 4.1.0 and h2load 1.52.0 (Debian 12) on this machine.

    #[test]
    fn wrk_keepalive() {
        let r = parse_wrk(include_str!("testdata/wrk-ka.txt")).unwrap();
        assert_eq!((r.rps, r.p50_ms, r.p99_ms, r.requests), (7767.44, 6.17, 36.19, 15574));
        assert_eq!((r.non_2xx, r.socket_errors), (0, 0));
        assert!(r.cpu_us.is_nan(), "a load generator does not know the proxy's CPU time");
    }

    #[test]
    fn wrk_tls_close() {
        let r = parse_wrk(include_str!("testdata/wrk-tls-close.txt")).unwrap();
        assert_eq!((r.rps, r.p50_ms, r.p99_ms, r.requests), (574.95, 41.29, 130.18, 1174));
        assert_eq!(r.errors(), 0);
    }

    #[test]
    fn wrk_non_2xx() {
        let r = parse_wrk(include_str!("testdata/wrk-502.txt")).unwrap();
        assert_eq!((r.requests, r.non_2xx, r.socket_errors), (5606, 5606, 0));
    }

    #[test]
    fn wrk_socket_errors() {
        // The server closed every connection without answering: no latency, 8 687 read errors.
        let r = parse_wrk(include_str!("testdata/wrk-drop.txt")).unwrap();
        assert_eq!((r.rps, r.p50_ms, r.requests, r.non_2xx, r.socket_errors), (0.0, 0.0, 0, 0, 8687));
    }

    #[test]
    fn wrk_usage_is_an_error() {
        assert!(parse_wrk("Usage: wrk <options> <url>\n  Options:\n").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_ms("812.00us"), Some(0.812));
        assert_eq!(parse_ms("1.20ms"), Some(1.2));
        assert_eq!(parse_ms("2.5s"), Some(2500.0));
        assert_eq!(parse_ms("-nan%"), None);
    }

    #[test]
    fn h2load_report_and_log() {
        let log = include_str!("testdata/h2load-log.tsv");
        let r = parse_h2load(include_str!("testdata/h2load.txt"), log).unwrap();
        assert_eq!((r.rps, r.requests, r.non_2xx, r.socket_errors), (4326.5, 8653, 0, 0));
        // The log's 20 durations: nearest rank 10 is the median, rank 20 the 99th percentile.
        let mut d: Vec<u64> = log.lines().map(|l| l.split('\t').nth(2).unwrap().parse().unwrap()).collect();
        d.sort_unstable();
        assert_eq!(r.p50_ms, d[9] as f64 / 1000.0);
        assert_eq!(r.p99_ms, d[19] as f64 / 1000.0);
    }

    #[test]
    fn h2load_5xx() {
        let r = parse_h2load(include_str!("testdata/h2load-502.txt"), "").unwrap();
        assert_eq!((r.rps, r.requests, r.non_2xx, r.socket_errors), (4440.0, 4440, 4440, 0));
        assert!(r.p50_ms.is_nan());
    }
}
