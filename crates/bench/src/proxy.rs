//! Proxies side by side with wrk: the same trivial backend (nginx `return 200`,
//! one worker) reached directly, through Shoal (one worker thread, then two),
//! HAProxy (`nbthread 1`) and nginx (one worker), each proxy keeping its
//! upstream connections alive and adding the same `X-Forwarded-For/-Proto/-Port`
//! headers (as Shoal does and the reference stack's HAProxy is configured to).
//! Rounds interleave the targets. Then memory: RSS idle and with many idle
//! keep-alive client connections open.

use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::procs::{spawn, wait_http, wait_tcp, write};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// wrk runs per target (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Idle keep-alive connections for the memory test (the fd limit is raised to fit when run as root).
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// The shoal binary.
    #[arg(long, default_value = "target/release/shoal")]
    shoal: String,
}

const BACKEND: u16 = 18_080;
const HAPROXY: u16 = 18_081;
const NGINX: u16 = 18_082;
const SHOAL1: u16 = 18_083;
const SHOAL2: u16 = 18_085;

fn local(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

#[derive(Debug, Clone, Copy)]
struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

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

fn wrk(port: u16, connections: u32, secs: u64, close: bool) -> anyhow::Result<Wrk> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", &format!("-c{connections}"), &format!("-d{secs}s"), "--latency"]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd.arg(format!("http://127.0.0.1:{port}/")).output().context("wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
    };
    let rps = field("Requests/sec:").and_then(|v| v.parse().ok()).context("wrk printed no Requests/sec")?;
    let p50_ms = field("50%").and_then(|v| parse_ms(&v)).unwrap_or(f64::NAN);
    let p99_ms = field("99%").and_then(|v| parse_ms(&v)).unwrap_or(f64::NAN);
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .flat_map(|l| l.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u64>().ok()))
        .sum();
    Ok(Wrk { rps, p50_ms, p99_ms, errors })
}

/// The middle value of `v` by `key` (the upper one of an even count).
fn median_by<T: Copy>(v: &[T], key: impl Fn(&T) -> f64) -> T {
    let mut v = v.to_vec();
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v[v.len() / 2]
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix(field))?;
    value.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Resident memory of `pid` and all its descendants (nginx's master forks its worker).
fn rss_kib(pid: u32) -> u64 {
    let mut total = status_field(pid, "VmRSS:").unwrap_or(0);
    let children = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| status_field(child, "PPid:") == Some(u64::from(pid)));
    for child in children {
        total += rss_kib(child);
    }
    total
}

/// Opens `n` keep-alive connections to `port`, one request on each, and keeps them open.
fn open_idle(port: u16, n: usize) -> anyhow::Result<Vec<std::net::TcpStream>> {
    use std::io::{Read, Write};
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).context("connect")?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
        conns.push(s);
    }
    let mut buf = [0u8; 512];
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let _ = s.read(&mut buf)?;
    }
    Ok(conns)
}

/// Raises the open-file limit (inherited by every process started here) to fit `conns` idle
/// connections: HAProxy reserves two descriptors per connection. Where the hard limit cannot be
/// raised (no CAP_SYS_RESOURCE), returns how many connections fit instead.
fn fit_fd_limit(conns: usize) -> anyhow::Result<usize> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let need = |n: usize| (n as u64) * 2 + 1_000;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if setrlimit(Resource::RLIMIT_NOFILE, need(conns).max(soft), hard.max(need(conns))).is_ok() {
        return Ok(conns);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    let fit = (hard.saturating_sub(1_000) / 2) as usize;
    eprintln!(
        "note: the open-file limit is {hard} and cannot be raised here; measuring {fit} idle connections, not {conns}"
    );
    Ok(fit.min(conns))
}

pub fn run(mut args: Args) -> anyhow::Result<()> {
    args.idle_connections = fit_fd_limit(args.idle_connections)?;
    let dir = std::env::temp_dir().join(format!("shoal-bench-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let nginx_conf = |port: u16, body: &str| {
        format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx-{port}.pid;\nerror_log {d}/nginx-{port}.err warn;\n\
             events {{ worker_connections 20000; }}\nhttp {{\n  access_log off;\n  keepalive_requests 10000000;\n  \
             keepalive_timeout 120s;\n{body}\n}}\n",
            d = dir.display()
        )
    };
    let backend = write(
        &dir,
        "backend.conf",
        &nginx_conf(
            BACKEND,
            &format!("  server {{ listen 127.0.0.1:{BACKEND}; location / {{ return 200 \"ok\\n\"; }} }}"),
        ),
    )?;
    let nginx_proxy = write(
        &dir,
        "proxy.conf",
        &nginx_conf(
            NGINX,
            &format!(
                "  upstream be {{ server 127.0.0.1:{BACKEND}; keepalive 256; }}\n  server {{ listen 127.0.0.1:{NGINX}; \
                 location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; \
                 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme; \
                 proxy_set_header X-Forwarded-Port $server_port; }} }}"
            ),
        ),
    )?;
    let haproxy = write(
        &dir,
        "haproxy.cfg",
        &format!(
            "global\n  nbthread 1\n  maxconn {maxconn}\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 50s\n  \
             timeout server 50s\n  timeout http-keep-alive 120s\nfrontend fe\n  bind 127.0.0.1:{HAPROXY}\n  default_backend be\n\
             backend be\n  option forwardfor\n  http-request set-header X-Forwarded-Port %[dst_port]\n  \
             http-request set-header X-Forwarded-Proto http\n  http-reuse always\n  server s1 127.0.0.1:{BACKEND}\n",
            maxconn = args.idle_connections + 100
        ),
    )?;

    eprintln!("== starting nginx backend, HAProxy, nginx proxy and two Shoal balancers");
    let _backend =
        spawn("nginx backend", Command::new("nginx").args(["-c", backend.to_str().unwrap_or_default()]))?;
    let hp = spawn("haproxy", Command::new("haproxy").args(["-f", haproxy.to_str().unwrap_or_default()]))?;
    let ng =
        spawn("nginx proxy", Command::new("nginx").args(["-c", nginx_proxy.to_str().unwrap_or_default()]))?;
    let shoal = |threads: &str, port: u16, gossip: u16| {
        let mut c = Command::new(&args.shoal);
        c.args(["balancer", "--threads", threads, "--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--stats",
                &format!("127.0.0.1:{}", port + 1000),
                "--bind",
                &format!("127.0.0.1:{gossip}"),
            ])
            .args([
                "--rpc-addr",
                &format!("127.0.0.1:{}", gossip + 1),
                "--no-health-checks",
                "--log-level",
                "warn",
            ])
            // Like the HAProxy and nginx configurations here: no access log, no admin socket.
            .args(["--access-log", "off", "--admin-socket", "none"])
            .args(["--profile", "fast"]);
        c
    };
    let s1 = spawn("shoal (1 thread)", &mut shoal("1", SHOAL1, 17_946))?;
    let s2 = spawn("shoal (2 threads)", &mut shoal("2", SHOAL2, 17_956))?;
    // Both balancers listen before the backend's agent joins them (it joins whoever answers).
    for port in [SHOAL1, SHOAL2] {
        wait_tcp(local(port + 1000))?;
    }
    // The backend announces itself to both balancers through gossip, as in production.
    let _agent = spawn(
        "backend agent",
        Command::new(&args.shoal).args([
            "agent",
            "--node",
            "nginx-backend",
            "--bind",
            "127.0.0.1:17966",
            "--rpc-addr",
            "127.0.0.1:17967",
            "--tag",
            "role=backend",
            "--tag",
            &format!("port={BACKEND}"),
            "--profile",
            "fast",
            "--log-level",
            "warn",
            "--join",
            "127.0.0.1:17946",
            "--join",
            "127.0.0.1:17956",
        ]),
    )?;
    for port in [BACKEND, HAPROXY, NGINX, SHOAL1, SHOAL2] {
        wait_http(local(port))?;
    }

    let targets: [(&str, u16); 5] = [
        ("direct to nginx backend", BACKEND),
        ("shoal, 1 thread", SHOAL1),
        ("haproxy 2.6, nbthread 1", HAPROXY),
        ("nginx 1.22, 1 worker", NGINX),
        ("shoal, 2 threads", SHOAL2),
    ];
    // Rounds interleave the targets (round 1 of each, then round 2 of each...), so a slow
    // stretch of this shared machine hits every target alike rather than one of them.
    for (name, port) in targets {
        eprintln!("== {name}: warm-up");
        wrk(port, args.connections, 2, false)?;
    }
    let mut runs: Vec<Vec<Wrk>> = vec![Vec::new(); targets.len()];
    for round in 1..=args.rounds {
        eprintln!("== round {round} of {}: {} s per target", args.rounds, args.duration);
        for ((_, port), runs) in targets.iter().zip(&mut runs) {
            runs.push(wrk(*port, args.connections, args.duration, false)?);
        }
    }
    let hp_index = targets.iter().position(|(n, _)| n.starts_with("haproxy")).unwrap_or(0);
    // Per-round ratios against HAProxy (same round, same machine weather), then their median.
    let ratios: Vec<(f64, f64)> = runs
        .iter()
        .map(|r| {
            let per_round: Vec<(f64, f64)> =
                r.iter().zip(&runs[hp_index]).map(|(a, h)| (a.rps / h.rps, a.p99_ms / h.p99_ms)).collect();
            (median_by(&per_round, |x| x.0).0, median_by(&per_round, |x| x.1).1)
        })
        .collect();
    let keepalive: Vec<(&str, Wrk)> =
        targets.iter().zip(runs).map(|((name, _), r)| (*name, median_by(&r, |w| w.rps))).collect();
    let mut close = Vec::new();
    for (name, port) in targets {
        eprintln!("== {name}: keep-alive off");
        close.push((name, wrk(port, args.connections, args.duration, true)?));
    }

    // Memory: idle, then with many idle keep-alive client connections.
    let mut memory = Vec::new();
    for (name, pid, port) in [
        ("shoal, 1 thread", s1.pid(), SHOAL1),
        ("haproxy 2.6", hp.pid(), HAPROXY),
        ("nginx 1.22", ng.pid(), NGINX),
    ] {
        std::thread::sleep(Duration::from_secs(1));
        let idle = rss_kib(pid);
        eprintln!("== {name}: opening {} keep-alive connections", args.idle_connections);
        let conns = open_idle(port, args.idle_connections)?;
        std::thread::sleep(Duration::from_secs(1));
        let loaded = rss_kib(pid);
        drop(conns);
        memory.push((name, idle, loaded));
    }
    let _ = (&s2, &ng);

    println!();
    println!(
        "wrk -t1 -c{} -d{}s --latency, median of {} runs; backend: nginx `return 200`, 1 worker; 2 cores shared by all",
        args.connections, args.duration, args.rounds
    );
    println!(
        "{:<26} {:>12} {:>9} {:>9} {:>7} {:>15}",
        "", "req/s", "p50 ms", "p99 ms", "errors", "no keep-alive"
    );
    for ((name, w), (_, c)) in keepalive.iter().zip(&close) {
        println!(
            "{name:<26} {:>12.0} {:>9.3} {:>9.3} {:>7} {:>11.0} req/s",
            w.rps, w.p50_ms, w.p99_ms, w.errors, c.rps
        );
    }
    println!();
    for ((name, _), (rps, p99)) in keepalive.iter().zip(&ratios).filter(|((n, _), _)| n.starts_with("shoal"))
    {
        println!(
            "{name} vs haproxy: {rps:.2}x req/s, p99 {p99:.2}x (median of per-round ratios; above 1 is more \
             throughput, below 1 is lower latency)"
        );
    }
    println!();
    println!("RSS: idle, and with {} idle keep-alive client connections", args.idle_connections);
    for (name, idle, loaded) in &memory {
        println!(
            "{name:<26} {:>8.1} MiB {:>8.1} MiB  ({:.1} KiB per connection)",
            *idle as f64 / 1024.0,
            *loaded as f64 / 1024.0,
            (loaded.saturating_sub(*idle)) as f64 / args.idle_connections as f64
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
