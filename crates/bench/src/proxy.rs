//! Proxies side by side on what users send: the same trivial backend (nginx `return 200`, one
//! worker) reached directly and through Shoal (one worker thread), HAProxy (`nbthread 1`), nginx
//! (one worker) and Caddy (`GOMAXPROCS=1`), each with a plain and a TLS (ALPN h2) port, upstream
//! keep-alive and the same `X-Forwarded-For/-Proto/-Port` headers (as Shoal adds them and the
//! reference stack's HAProxy is configured to). Rows are kinds of requests — GET with and without
//! the access logs, with and without keep-alive, POST bodies of 1 and 64 KiB, TLS with keep-alive
//! and with a full handshake per request, HTTP/2 — measured with wrk or h2load pinned with the
//! backend to core 0 while each proxy runs alone on core 1; within a row, rounds interleave the
//! targets. Then Shoal's thread count (2 against 1, unpinned) and memory: RSS idle and with many
//! idle keep-alive client connections.

mod load;
mod memory;
mod report;
mod targets;

use std::path::PathBuf;

use anyhow::Context;
use load::{Load, Request};
use report::{Cell, RowResult};
use targets::{Env, Instance, Target};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds per measured run (per row, target and round).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Measured runs per row and target; rounds alternate between the targets and the median is
    /// reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of an unmeasured run against each target before a row's rounds (fills the
    /// upstream connection pools).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// wrk connections (h2load always opens 10 connections with 10 concurrent streams each).
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// What to measure, comma-separated [default: everything].
    #[arg(long, value_delimiter = ',', value_name = "ROW,…")]
    rows: Vec<Row>,
    /// Whom to measure, comma-separated [default: everyone]. The ratios need `shoal`.
    #[arg(long, value_delimiter = ',', value_name = "TARGET,…")]
    targets: Vec<Target>,
    /// Run everything unpinned. By default the load generator and the backend (and its agent)
    /// run on core 0 and each proxy on core 1.
    #[arg(long)]
    no_pin: bool,
    /// Idle keep-alive connections for the memory row (the fd limit is raised to fit when run as
    /// root).
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// The shoal binary.
    #[arg(long, default_value = "target/release/shoal")]
    shoal: String,
}

/// What the benchmark measures: kinds of requests, then two sections of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Row {
    /// GET, keep-alive, every access log off (the reference row).
    #[value(name = "get-nolog")]
    GetNolog,
    /// GET, keep-alive (this row and all below: access logs on).
    Get,
    /// GET, a new connection per request (`Connection: close`).
    GetClose,
    /// POST with a 1 KiB body, keep-alive.
    #[value(name = "post-1k")]
    Post1k,
    /// POST with a 64 KiB body, keep-alive.
    #[value(name = "post-64k")]
    Post64k,
    /// GET over TLS, keep-alive.
    Tls,
    /// GET over TLS, a new connection (a full handshake) per request.
    TlsClose,
    /// HTTP/2 over TLS with h2load: 10 connections × 10 streams.
    H2,
    /// Shoal with 2 worker threads against 1, unpinned, with wrk on the same machine.
    Threads,
    /// RSS of each proxy, idle and with --idle-connections idle keep-alive connections.
    Memory,
}

/// What a request row sends, and how.
struct Spec {
    title: &'static str,
    request: Request,
    tls: bool,
    logging: bool,
}

impl Row {
    const ALL: [Row; 10] = [
        Row::GetNolog,
        Row::Get,
        Row::GetClose,
        Row::Post1k,
        Row::Post64k,
        Row::Tls,
        Row::TlsClose,
        Row::H2,
        Row::Threads,
        Row::Memory,
    ];

    /// None for the two sections that are not a kind of request.
    fn spec(self) -> Option<Spec> {
        let ka = Request::Get { keepalive: true };
        let close = Request::Get { keepalive: false };
        let (title, request, tls, logging) = match self {
            Row::GetNolog => ("GET, keep-alive, access logs off", ka, false, false),
            Row::Get => ("GET, keep-alive", ka, false, true),
            Row::GetClose => ("GET, new connection per request", close, false, true),
            Row::Post1k => ("POST 1 KiB, keep-alive", Request::Post { body: 1024 }, false, true),
            Row::Post64k => ("POST 64 KiB, keep-alive", Request::Post { body: 64 * 1024 }, false, true),
            Row::Tls => ("TLS GET, keep-alive", ka, true, true),
            Row::TlsClose => ("TLS GET, new connection (full handshake) per request", close, true, true),
            Row::H2 => ("HTTP/2 over TLS, 10 connections × 10 streams", Request::H2, true, true),
            Row::Threads | Row::Memory => return None,
        };
        Some(Spec { title, request, tls, logging })
    }
}

/// The run's directory, removed when the run ends however it ends (declared before the
/// processes, so dropped after them).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(mut args: Args) -> anyhow::Result<()> {
    let rows: Vec<Row> =
        Row::ALL.into_iter().filter(|r| args.rows.is_empty() || args.rows.contains(r)).collect();
    let targets: Vec<Target> =
        Target::ALL.into_iter().filter(|t| args.targets.is_empty() || args.targets.contains(t)).collect();
    // HAProxy's maxconn follows the idle connections, and it refuses to start when the
    // descriptors cannot fit them: fit them whatever the rows.
    args.idle_connections = memory::fit_fd_limit(args.idle_connections)?;
    let dir = TempDir(std::env::temp_dir().join(format!("shoal-bench-proxy-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).with_context(|| format!("cannot create {}", dir.0.display()))?;
    let env = Env::new(dir.0.clone(), args.shoal.clone(), !args.no_pin, args.idle_connections + 100)?;
    print_setup(&args, &env, &rows, &targets);

    eprintln!("== starting the nginx backend and its agent");
    let _backend = targets::start_backend(&env)?;
    let load =
        Load { connections: args.connections, secs: args.duration, cpu: env.load_cpu(), scratch: &env.dir };
    let mut results = Vec::new();
    let mut rss = Vec::new();
    for logging in [false, true] {
        let specs: Vec<Spec> =
            rows.iter().filter_map(|r| r.spec()).filter(|s| s.logging == logging).collect();
        let memory = logging && rows.contains(&Row::Memory);
        if specs.is_empty() && !memory {
            continue;
        }
        eprintln!("== starting the targets, access logs {}", if logging { "on" } else { "off" });
        let instances =
            targets.iter().map(|&t| targets::start(&env, t, logging)).collect::<anyhow::Result<Vec<_>>>()?;
        for inst in &instances {
            inst.check()?;
        }
        for spec in specs {
            // The backend has no TLS: the direct target sits out the TLS rows.
            let measured: Vec<&Instance> =
                instances.iter().filter(|i| !spec.tls || i.tls.is_some()).collect();
            let mut row = measure(&args, &load, &spec, &measured)?;
            row.compare = RowResult::shoal_vs_peers(&row.cells);
            row.print();
            results.push(row);
        }
        if memory {
            // Fresh processes: what a proxy holds per idle connection, not what earlier rows
            // left in its heap.
            drop(instances);
            eprintln!("== restarting the targets to measure memory");
            let fresh =
                targets.iter().map(|&t| targets::start(&env, t, true)).collect::<anyhow::Result<Vec<_>>>()?;
            for inst in &fresh {
                inst.check()?;
            }
            rss = memory::measure(&fresh, args.idle_connections)?;
        }
    }
    let threads = if rows.contains(&Row::Threads) { Some(thread_count(&args, &env, &load)?) } else { None };
    println!();
    println!("{}", load_average("after the run"));
    report::print_markdown(&results, threads.as_ref(), &rss, args.idle_connections);
    Ok(())
}

/// The run's parameters, on stdout before any figure.
fn print_setup(args: &Args, env: &Env, rows: &[Row], targets: &[Target]) {
    let runs: u64 = rows
        .iter()
        .map(|r| match (r, r.spec()) {
            (_, Some(s)) => targets.iter().filter(|&&t| !s.tls || t != Target::Direct).count() as u64,
            (Row::Threads, None) => 2,
            _ => 0,
        })
        .sum();
    let secs = runs * (args.warmup + args.rounds as u64 * args.duration);
    eprintln!(
        "== {} runs of load, about {} minutes, plus start-up and the memory row",
        runs * (1 + args.rounds as u64),
        secs.div_ceil(60)
    );
    println!(
        "wrk -t1 -c{c} -d{d}s --latency; h2load -t1 -c10 -m10 -D {d}; {r} rounds alternating between the \
         targets, medians; backend: nginx `return 200`, 1 worker; {pin}; access logs on stdout, a file per \
         proxy in the run's temp dir, emptied after every run; {v}",
        c = args.connections,
        d = args.duration,
        r = args.rounds,
        pin = if env.pin {
            "load generator and backend pinned to core 0, each proxy to core 1"
        } else {
            "nothing pinned"
        },
        v = env.versions(),
    );
    println!("{}", load_average("before the run"));
}

/// The machine's load average, one line: other processes on these cores skew every figure (a
/// proxy with more runnable threads then gets a larger share of a busy core).
fn load_average(when: &str) -> String {
    let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let avg: Vec<&str> = avg.split_whitespace().take(3).collect();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    format!("load average {when}: {} (1, 5, 15 min; {cores} cores)", avg.join(" "))
}

/// One row: a warm-up against each target, then `rounds` rounds of one run per target.
fn measure(args: &Args, load: &Load, spec: &Spec, instances: &[&Instance]) -> anyhow::Result<RowResult> {
    let mut cells: Vec<Cell> = instances.iter().map(|i| Cell::new(i.target, &i.label)).collect();
    let warmup = Load { secs: args.warmup, ..load.clone() };
    for round in 0..=args.rounds {
        if round == 0 {
            eprintln!("== {}: warm-up", spec.title);
        } else {
            eprintln!("== {}: round {round} of {}", spec.title, args.rounds);
        }
        for (inst, cell) in instances.iter().zip(&mut cells) {
            if cell.failure.is_some() {
                continue;
            }
            let url = inst.url(spec.tls, "/").unwrap_or_default();
            let tool = if round == 0 { &warmup } else { load };
            let cpu_before = inst.cpu_seconds();
            match tool.run(spec.request, &url) {
                Ok(mut run) if round > 0 => {
                    if let (Some(before), Some(after)) = (cpu_before, inst.cpu_seconds()) {
                        run.cpu_us = (after - before) * 1e6 / run.requests.max(1) as f64;
                    }
                    cell.runs.push(run)
                }
                Ok(_) => {}
                Err(e) => cell.failure = Some(last_lines(&format!("{e:#}"))),
            }
            let lines = inst.take_log_lines()?;
            if round > 0
                && let Some(n) = lines
            {
                *cell.logged.get_or_insert(0) += n;
            }
        }
    }
    let detail = match spec.request {
        Request::H2 => format!("h2load -t1 -c10 -m10 -D {}", load.secs),
        Request::Get { keepalive: false } => {
            format!("wrk -t1 -c{} -d{}s -H 'Connection: close'", load.connections, load.secs)
        }
        Request::Get { keepalive: true } => format!("wrk -t1 -c{} -d{}s", load.connections, load.secs),
        Request::Post { body } => {
            format!("wrk -t1 -c{} -d{}s, Lua: POST {body} B", load.connections, load.secs)
        }
    };
    let title = spec.title.to_string();
    Ok(RowResult {
        title,
        detail: format!("{detail}, {} rounds, medians", args.rounds),
        cells,
        compare: vec![],
    })
}

/// The last few lines of an error, on one line.
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" / ")
}

/// Shoal with two worker threads (one per CPU, the default) against one, both unpinned, GET
/// keep-alive with the access log on, wrk unpinned on the same machine.
fn thread_count(args: &Args, env: &Env, load: &Load) -> anyhow::Result<RowResult> {
    eprintln!("== starting Shoal with 2 and with 1 worker threads, unpinned");
    let two = targets::start_shoal(env, 2, true, targets::threads_ports(2), None)?;
    let one = targets::start_shoal(env, 1, true, targets::threads_ports(1), None)?;
    two.check()?;
    one.check()?;
    let spec = Spec {
        title: "Shoal's worker threads, unpinned: GET, keep-alive",
        request: Request::Get { keepalive: true },
        tls: false,
        logging: true,
    };
    let mut row = measure(args, &Load { cpu: None, ..load.clone() }, &spec, &[&two, &one])?;
    row.detail += if env.pin { "; wrk unpinned, the backend still on core 0" } else { "; wrk unpinned" };
    row.compare = vec![(0, 1)];
    row.print();
    Ok(row)
}
