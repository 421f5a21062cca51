//! `pool`: the balancer with 1 000 backends — what one membership change costs (pool
//! sync and view rebuild, measured on the library's own `Pool`), memory per backend, and
//! requests flowing through a real balancer while 500 backends join in a burst; and what a
//! rebuild costs when 2 000 members all claim the largest weight (hostile members).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use shoal_agent::Membership;
use shoal_balancer::Pool;
use shoal_balancer::{Balancer, BalancerConfig, PoolConfig};
use shoal_gossip::{Member, MemberStatus};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::stats::{ms, percentiles};

/// Flags of `shoal-bench pool`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Backends in the pool.
    #[arg(long, default_value_t = 1000)]
    pub backends: usize,
    /// How many of them join in the burst (the rest are there from the start).
    #[arg(long, default_value_t = 500)]
    pub burst: usize,
    /// Keep-alive client connections sending requests throughout.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Seconds of load before and after the burst.
    #[arg(long, default_value_t = 5)]
    pub calm: u64,
    /// Members claiming the largest weight, for the rebuild-cost figure.
    #[arg(long, default_value_t = 2000)]
    pub greedy: usize,
    /// Only the rebuild cost with greedy members (no membership-change or load figures).
    #[arg(long)]
    pub rebuild_only: bool,
}

fn member(i: usize, port: u16) -> Member {
    weighed(i, port, None)
}

fn weighed(i: usize, port: u16, weight: Option<u32>) -> Member {
    let mut tags: BTreeMap<String, String> =
        [("role".to_string(), "backend".to_string()), ("port".to_string(), port.to_string())].into();
    if let Some(w) = weight {
        tags.insert("weight".to_string(), w.to_string());
    }
    Member {
        name: Arc::from(format!("web-{i:05}")),
        addr: SocketAddr::from(([127, 0, 0, 1], 7946)),
        tags: Arc::new(tags),
        status: MemberStatus::Alive,
        versions: [1, 5, 2, 2, 5, 5],
    }
}

fn membership(members: &[Member]) -> Arc<Membership> {
    let mut local = member(0, 1);
    local.name = Arc::from("ha");
    Arc::new(Membership { local, members: members.to_vec() })
}

fn rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0)
}

/// Part 1: the library's pool, no IO — sync after one join or leave, and memory per server.
fn change_cost(n: usize) {
    // No health checks here, so every server is eligible and the view holds all of them.
    let mut cfg = PoolConfig::new("backend", "backend", 3000);
    cfg.health.enabled = false;
    let pool = Pool::new(cfg.clone(), 1, Arc::new(Notify::new()));
    let members: Vec<Member> = (0..=n).map(|i| member(i, 10_000 + (i % 50_000) as u16)).collect();
    let (base, plus_one) = (membership(&members[..n]), membership(&members));
    let now = Instant::now();
    let first = Instant::now();
    pool.sync(&base, now);
    let first = first.elapsed();
    let mut syncs = Vec::new();
    for round in 0..400 {
        let m = if round % 2 == 0 { &plus_one } else { &base };
        let t = Instant::now();
        pool.sync(m, now);
        syncs.push(t.elapsed());
    }
    let mut rebuilds = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        pool.rebuild(now);
        rebuilds.push(t.elapsed());
    }
    println!(
        "one membership change with {n} backends (pool sync + view rebuild, 400 changes alternating join/leave):"
    );
    println!("  first sync of {n} members      {}", ms(first));
    println!("  sync after one join or leave   {}", percentiles(&syncs));
    println!("  view rebuild alone             {}", percentiles(&rebuilds));

    // Memory: servers the pool keeps per member, from the process's RSS with 20 000 of them.
    let big = 20_000;
    let members: Vec<Member> = (0..big).map(|i| member(i, 10_000 + (i % 50_000) as u16)).collect();
    let all = membership(&members);
    drop(members);
    let before = rss_kib();
    let pool = Pool::new(cfg, 2, Arc::new(Notify::new()));
    pool.sync(&all, Instant::now());
    let after = rss_kib();
    println!(
        "  memory per backend in a pool   {:.2} KiB (RSS +{:.1} MiB for {big} servers and their view)",
        (after - before) / big as f64,
        (after - before) / 1024.0
    );
    drop(pool);
}

/// Part 0: `n` members all claiming the largest weight (256, or 256 and 255 in turn so that no
/// common factor or equal-weight shortcut helps), for each kind of algorithm: the cost of
/// one view rebuild, which the controller runs at least every 500 ms.
fn greedy_rebuild_cost(n: usize) {
    println!("view rebuild with {n} members claiming the largest weight (200 rebuilds each):");
    for (claims, what) in
        [(&[256u32, 256][..], "all weight 256"), (&[256, 255][..], "weights 256 and 255 in turn")]
    {
        for algorithm in ["roundrobin", "uri"] {
            let mut cfg = PoolConfig::new("backend", "backend", 3000);
            cfg.health.enabled = false;
            cfg.algorithm = algorithm.parse().expect("a known algorithm");
            let pool = Pool::new(cfg, 1, Arc::new(Notify::new()));
            let members: Vec<Member> = (0..n)
                .map(|i| weighed(i, 10_000 + (i % 50_000) as u16, Some(claims[i % claims.len()])))
                .collect();
            let now = Instant::now();
            pool.sync(&membership(&members), now);
            assert_eq!(pool.view().servers.len(), n, "every member serves");
            let mut rebuilds = Vec::new();
            for _ in 0..200 {
                let t = Instant::now();
                pool.rebuild(now);
                rebuilds.push(t.elapsed());
            }
            println!("  {algorithm:<10} {what:<28} {}", percentiles(&rebuilds));
        }
    }
}

/// A backend listening on `n` loopback ports, answering every request 200.
async fn backends(n: usize) -> anyhow::Result<Vec<u16>> {
    let mut ports = Vec::new();
    for _ in 0..n {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("cannot bind a backend port")?;
        ports.push(listener.local_addr()?.port());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = service_fn(|_req: Request<hyper::body::Incoming>| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    }
    Ok(ports)
}

#[derive(Clone, Copy)]
struct Answer {
    at: Instant,
    took: Duration,
    ok: bool,
}

/// Part 2: a real balancer under load while `burst` of `n` backends join.
async fn burst(args: &Args) -> anyhow::Result<()> {
    let n = args.backends;
    let ports = backends(n).await?;
    let members: Vec<Member> = ports.iter().enumerate().map(|(i, p)| member(i, *p)).collect();
    let mut pool = PoolConfig::new("backend", "backend", 3000);
    pool.health.interval = Duration::from_secs(2);
    let mut cfg = BalancerConfig::simple(vec!["127.0.0.1:0".parse()?], pool, None);
    cfg.access_log = shoal_balancer::AccessLogFormat::Off;
    let first = n - args.burst;
    let (tx, rx) = watch::channel(membership(&members[..first]));
    let balancer = Balancer::start(cfg, rx).await?;
    let front = balancer.local_addrs().await[0];
    let serving = |b: &Balancer| b.pools().values().map(|p| p.view().servers.len()).sum::<usize>();
    let t = Instant::now();
    while serving(&balancer) < first {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("only {} of {first} backends UP after 30 s", serving(&balancer));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let answers = Arc::new(Mutex::new(Vec::<Answer>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url: hyper::Uri = format!("http://{front}/").parse()?;
    let mut load = Vec::new();
    for _ in 0..args.connections {
        let (client, url, answers, stop) = (client.clone(), url.clone(), answers.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let ok = match client.get(url.clone()).await {
                    Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                answers.lock().unwrap_or_else(|e| e.into_inner()).push(Answer {
                    at: Instant::now(),
                    took: t.elapsed(),
                    ok,
                });
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.calm)).await;
    let burst_start = Instant::now();
    for i in first + 1..=n {
        tx.send_replace(membership(&members[..i]));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let sent = burst_start.elapsed();
    while serving(&balancer) < n {
        if burst_start.elapsed() > Duration::from_secs(60) {
            bail!("only {} of {n} backends UP 60 s after the burst", serving(&balancer));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all_up = burst_start.elapsed();
    tokio::time::sleep(Duration::from_secs(args.calm)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        let _ = l.await;
    }
    balancer.shutdown().await;

    let answers = answers.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let burst_end = burst_start + all_up;
    let phase = |name: &str, keep: &dyn Fn(&Answer) -> bool| {
        let took: Vec<Duration> = answers.iter().filter(|a| keep(a)).map(|a| a.took).collect();
        let failed = answers.iter().filter(|a| keep(a) && !a.ok).count();
        let span: f64 = match name {
            "before" => args.calm as f64,
            "during" => all_up.as_secs_f64(),
            _ => args.calm as f64,
        };
        println!(
            "  {name:<7} {:>7} requests {:>8.0} req/s, failed {failed}, latency {}",
            took.len(),
            took.len() as f64 / span,
            percentiles(&took)
        );
    };
    println!(
        "burst: {} backends join a pool of {first} ({} membership updates sent in {}), health checks on ({} s); {} keep-alive connections:",
        args.burst,
        args.burst,
        ms(sent),
        2,
        args.connections
    );
    println!(
        "  all {n} UP {} after the burst began (first health check of each newcomer included)",
        ms(all_up)
    );
    phase("before", &|a| a.at < burst_start);
    phase("during", &|a| a.at >= burst_start && a.at < burst_end);
    phase("after", &|a| a.at >= burst_end);
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.burst > args.backends {
        bail!("--burst must not exceed --backends");
    }
    greedy_rebuild_cost(args.greedy);
    if args.rebuild_only {
        return Ok(());
    }
    println!();
    change_cost(args.backends);
    println!();
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(burst(&args))
}
