//! Child processes the benchmarks start, owned by pid: signals, bounded waits,
//! and a drop that stops them (SIGTERM, then SIGKILL) so nothing outlives a run.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;

/// A process started by a benchmark.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (a process already gone is not an error).
    pub fn signal(&self, sig: Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }

    /// Waits up to `timeout` for it to exit; true if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    /// SIGTERM first, so nginx's or HAProxy's master takes its workers down with it; SIGKILL after 5 s.
    fn drop(&mut self) {
        self.signal(Signal::SIGTERM);
        if !self.wait_exit(Duration::from_secs(5)) {
            eprintln!("{} ignored SIGTERM; killing it", self.name);
            self.kill9();
        }
    }
}

/// Resident memory of one process, from `/proc/PID/smaps_rollup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident set size (what `ps` shows): private memory plus the pages of the executable
    /// and libraries mapped in, which processes running the same binary share.
    pub rss_kib: u64,
    /// Anonymous memory (heap, stacks, written data): what this process alone costs.
    pub anon_kib: u64,
}

/// `pid`'s resident memory, or None when it is gone.
pub fn memory(pid: u32) -> Option<Memory> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = rollup.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()
    };
    Some(Memory { rss_kib: field("Rss:")?, anon_kib: field("Anonymous:")? })
}

/// `pid` and every process descending from it (nginx's master forks its worker), parents first.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let ppid = |p: u32| -> Option<u32> {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
        status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim().parse().ok()
    };
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .collect();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().copied().filter(|&p| ppid(p) == Some(parent)));
        i += 1;
    }
    tree
}

/// CPU time (user + system, all threads) that `pid` and its descendants have used so far, in
/// seconds; a process that is gone counts nothing.
pub fn cpu_seconds(pid: u32) -> f64 {
    // `/proc` counts in USER_HZ: 100 on x86 and arm Linux.
    const TICKS_PER_SEC: f64 = 100.0;
    let ticks = |p: u32| -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        // Fields after the command name, which may hold spaces: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    let total: u64 = process_tree(pid).into_iter().filter_map(ticks).sum();
    total as f64 / TICKS_PER_SEC
}

/// Starts `cmd` with its output discarded.
pub fn spawn(name: impl Into<String>, cmd: &mut Command) -> anyhow::Result<Proc> {
    spawn_to(name, cmd, Stdio::null(), Stdio::null())
}

/// Starts `cmd` with its stdout and stderr sent to `stdout` and `stderr`.
pub fn spawn_to(
    name: impl Into<String>,
    cmd: &mut Command,
    stdout: Stdio,
    stderr: Stdio,
) -> anyhow::Result<Proc> {
    let name = name.into();
    let child = cmd.stdout(stdout).stderr(stderr).spawn().with_context(|| format!("cannot start {name}"))?;
    Ok(Proc { child, name })
}

/// Writes `text` to `dir/name`.
pub fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
    Ok(p)
}

/// One HTTP/1.0 request; the status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Ok((status, body))
}

/// The servers of `pool` a balancer's stats CSV (HAProxy's or Shoal's) shows as serving:
/// status, the 18th field, `UP` or `UP 1/3` (still serving while checks fail).
pub fn servers_up(stats: SocketAddr, pool: &str) -> Vec<String> {
    let Ok((_, body)) = http_get(stats, "/;csv") else { return Vec::new() };
    let mut up: Vec<String> = body
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.len() > 17 && f[0] == pool && f[1] != "BACKEND" && f[17].starts_with("UP"))
                .then(|| f[1].to_string())
        })
        .collect();
    up.sort();
    up
}

/// Waits until `addr` answers `GET /` with 200.
pub fn wait_http(addr: SocketAddr) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if matches!(http_get(addr, "/"), Ok((200, _))) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing answers 200 on {addr}")
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_tcp(addr: SocketAddr) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("nothing listens on {addr}")
}

/// What the load loops send: the demo web app's `GET /`, `HEAD /` and `POST /delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET /`: idempotent, retried by the balancer.
    Get,
    /// `HEAD /`: idempotent, retried by the balancer.
    Head,
    /// `POST /delay`: not retried.
    Post,
}

impl Method {
    /// Every kind, in the order the load loops take turns.
    pub const ALL: [Method; 3] = [Method::Get, Method::Head, Method::Post];
}
