//! Helpers for interop tests: real `serf` agents, `shoal` processes, free ports, polling.
//!
//! Tests wait on signals, never on a fixed sleep: [`wait_for`] polls an observable condition
//! up to a deadline, and a negative assertion ("X must not happen") is made only after
//! positive evidence that the system had its chance to do X (a counter advanced, a later
//! event arrived, a log line was written).
#![allow(dead_code, missing_docs)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Whether a tool is installed; under `CI` a missing tool fails the test instead of skipping it.
pub fn require(tool: &str) -> bool {
    let found =
        Command::new(tool).arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("`{tool}` is not installed: run scripts/test.sh, which installs it");
        }
        eprintln!("SKIPPED: `{tool}` is not installed (run scripts/test.sh to install it)");
    }
    found
}

static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// The lowest port the kernel picks for outgoing connections. Test servers take ports below
/// it: a port in that range can be taken between our probe and the server's bind by any of the
/// short-lived client connections the load tests open by the thousand.
fn ephemeral_floor() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A loopback port free for both UDP and TCP (gossip needs both), below the ephemeral range.
pub fn free_port() -> u16 {
    const LOWEST: u32 = 10_000;
    const SPREAD: u32 = 100;
    let span = (u32::from(ephemeral_floor()).max(LOWEST + 10 * SPREAD)) - LOWEST;
    // Spread test processes apart, then probe upwards (wrapping within the span).
    let start = (std::process::id() % (span / SPREAD)) * SPREAD + 1;
    let _ = NEXT_PORT.compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = (LOWEST + NEXT_PORT.fetch_add(1, Ordering::SeqCst) % span) as u16;
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A child process killed (by its own pid) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to this process.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status();
    }

    /// Waits until this process accepts TCP connections at `at`; panics with its log
    /// (the path `shoal` returned) if it exits first or takes more than ten seconds.
    pub fn wait_listening(&mut self, at: SocketAddr, log: &std::path::Path) {
        let up = wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(at).is_ok() || matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if up.is_none() || matches!(self.child.try_wait(), Ok(Some(_))) {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{} does not listen on {at}:\n{log}", self.name);
        }
    }

    /// Waits for exit, up to `timeout`; returns the exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut code = None;
        wait_for(timeout, || match self.child.try_wait() {
            Ok(Some(status)) => {
                code = status.code();
                true
            }
            _ => false,
        });
        code
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A real HashiCorp Serf agent.
pub struct Serf {
    pub proc: Proc,
    pub name: String,
    pub bind: SocketAddr,
    pub rpc: SocketAddr,
}

impl Serf {
    /// Starts `serf agent` with extra flags; waits until its RPC answers.
    pub fn start(name: &str, extra: &[&str]) -> Serf {
        let (bind, rpc) = (addr(free_port()), addr(free_port()));
        // Named after the port, not the node: a node name may hold anything, slashes and
        // newlines included (the hostile-member tests use such names).
        let log = std::env::temp_dir().join(format!("shoal-test-serf-{}.log", bind.port()));
        let child = Command::new("serf")
            .arg("agent")
            .arg(format!("-node={name}"))
            .arg(format!("-bind={bind}"))
            .arg(format!("-rpc-addr={rpc}"))
            .args(extra)
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serf");
        let proc = Proc { child, name: format!("serf {}", name.escape_debug()) };
        let serf = Serf { proc, name: name.into(), bind, rpc };
        wait_for(Duration::from_secs(10), || serf.try_members().is_some()).expect("serf RPC comes up");
        serf
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new("serf")
            .arg(args[0])
            .arg(format!("-rpc-addr={}", self.rpc))
            .args(&args[1..])
            .output()
            .expect("run serf CLI")
    }

    fn try_members(&self) -> Option<Vec<Value>> {
        let out = self.cli(&["members", "-format=json"]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["members"].as_array().cloned()
    }

    /// `serf members -format json` of this agent.
    pub fn members(&self) -> Vec<Value> {
        self.try_members().expect("serf members")
    }

    /// The status this Serf agent reports for `node` (`alive`, `left`, `failed`…).
    pub fn status_of(&self, node: &str) -> Option<String> {
        self.members()
            .into_iter()
            .find(|m| m["name"] == node)
            .and_then(|m| m["status"].as_str().map(str::to_string))
    }

    pub fn member(&self, node: &str) -> Option<Value> {
        self.members().into_iter().find(|m| m["name"] == node)
    }
}

/// A `shoal SUBCOMMAND ARGS…` process, its stderr logged to the returned path
/// (and its stdout, such as the access log, to the same path with `.out`).
pub fn shoal(name: &str, args: &[&str], env: &[(&str, &str)]) -> (Proc, std::path::PathBuf) {
    let log = std::env::temp_dir().join(format!("shoal-test-{name}-{}.log", free_port()));
    let child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(log.with_extension("out")).expect("stdout file"))
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn shoal");
    (Proc { child, name: name.into() }, log)
}

/// A `shoal agent` process.
pub fn shoal_agent(name: &str, bind: SocketAddr, extra: &[&str]) -> Proc {
    shoal_agent_logged(name, bind, extra).0
}

/// A `shoal agent` process and the path of its log (stderr).
pub fn shoal_agent_logged(name: &str, bind: SocketAddr, extra: &[&str]) -> (Proc, std::path::PathBuf) {
    let bind = bind.to_string();
    let mut args = vec!["agent", "--node", name, "--bind", &bind];
    // Every agent serves RPC; give each its own port unless the test chose one.
    let rpc = addr(free_port()).to_string();
    if !extra.contains(&"--rpc-addr") {
        args.extend(["--rpc-addr", &rpc]);
    }
    args.extend(extra);
    shoal(name, &args, &[])
}

/// Polls `cond` every 50 ms until it holds; returns the time it took.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond().then(|| start.elapsed())
}

/// Async polling for in-process agents.
pub async fn wait_for_async(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    wait_for_with(timeout, || std::future::ready(cond())).await
}

/// Polls an async `cond` (an RPC, the agent's stats) every 50 ms until it holds; returns the
/// time it took.
pub async fn wait_for_with<F: std::future::Future<Output = bool>>(
    timeout: Duration,
    mut cond: impl FnMut() -> F,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond().await.then(|| start.elapsed())
}

/// The lines a reader (a child's stdout) has produced so far, collected by a thread.
pub struct Lines {
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Lines {
    pub fn collect(from: impl Read + Send + 'static) -> Lines {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(from).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Lines { lines, reader: Some(reader) }
    }

    /// The lines read so far.
    pub fn so_far(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Waits until a line satisfies `cond`.
    pub fn wait(&self, timeout: Duration, mut cond: impl FnMut(&str) -> bool) -> Option<Duration> {
        wait_for(timeout, || self.lines.lock().unwrap().iter().any(|l| cond(l)))
    }

    /// Every line, once the reader has reached the end (the writer closed it).
    pub fn finish(mut self) -> Vec<String> {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.so_far()
    }
}

/// The body of a balancer's stats CSV (`GET /;csv` on its stats listener); empty if it does
/// not answer.
pub fn stats_csv(stats: SocketAddr) -> String {
    use std::io::Write as _;
    let Ok(mut s) = std::net::TcpStream::connect(stats) else { return String::new() };
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let _ = s.write_all(b"GET /;csv HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string()
}

/// The server rows of a stats CSV, HAProxy's fields in HAProxy's order: `pxname` (the pool),
/// `svname` (the server), … `scur` (4, requests in flight) … `status` (17).
pub fn csv_servers(csv: &str) -> Vec<Vec<String>> {
    csv.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f.len() > 17 && f[1] != "FRONTEND" && f[1] != "BACKEND")
        .collect()
}

/// Runs `docker ARGS`: stdout, or the error with stderr.
pub fn try_docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker").args(args).output().map_err(|e| format!("docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Runs `docker ARGS`, returning stdout; panics with stderr on failure.
pub fn docker(args: &[&str]) -> String {
    try_docker(args).unwrap_or_else(|e| panic!("{e}"))
}
