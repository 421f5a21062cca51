//! Real agents on loopback, one cluster per implementation, measured the same
//! way: an observer's membership is polled over Serf's RPC every 5 ms (the
//! same client for Serf and Shoal).
//!
//! * join: from spawning a new agent process to the observer listing it alive;
//! * failure: from `kill -9` of a member to the observer listing it failed;
//! * memory: resident set size (and its anonymous part) of the first `--nodes` agents once
//!   the cluster has settled, and again after the measured joins and kills (median over them).
//!
//! `--baseline PATH` measures a second Shoal binary (say, the previous build) the same way in
//! the same run, so that a change's cost or saving is seen side by side.

use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shoal_rpc::RpcClient;

use crate::procs::{Memory, memory};
use crate::stats::{median_u64, ms, summary};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Agents per cluster before the measured joins.
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Joins and kills measured per implementation.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The shoal binary.
    #[arg(long, default_value = "target/release/shoal")]
    shoal: String,
    /// The serf binary.
    #[arg(long, default_value = "serf")]
    serf: String,
    /// Another shoal binary (e.g. the build before a change) to measure side by side.
    #[arg(long)]
    baseline: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    Serf,
    ShoalLan,
    ShoalFast,
    BaselineLan,
    BaselineFast,
}

impl Impl {
    fn label(self) -> &'static str {
        match self {
            Impl::Serf => "serf 0.9.4 (lan)",
            Impl::ShoalLan => "shoal (lan)",
            Impl::ShoalFast => "shoal (fast)",
            Impl::BaselineLan => "baseline (lan)",
            Impl::BaselineFast => "baseline (fast)",
        }
    }

    /// The Shoal binary and profile, or None for Serf.
    fn shoal(self, args: &Args) -> Option<(&str, &'static str)> {
        let baseline = args.baseline.as_deref().unwrap_or(&args.shoal);
        match self {
            Impl::Serf => None,
            Impl::ShoalLan => Some((&args.shoal, "lan")),
            Impl::ShoalFast => Some((&args.shoal, "fast")),
            Impl::BaselineLan => Some((baseline, "lan")),
            Impl::BaselineFast => Some((baseline, "fast")),
        }
    }
}

struct Agent {
    child: Child,
    rpc: String,
    name: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port(next: &mut u16) -> u16 {
    loop {
        let p = *next;
        *next += 1;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn spawn(args: &Args, which: Impl, name: &str, ports: &mut u16, join: Option<u16>) -> anyhow::Result<Agent> {
    let (gossip, rpc) = (free_port(ports), free_port(ports));
    let mut cmd = match which.shoal(args) {
        None => {
            let mut c = Command::new(&args.serf);
            c.args(["agent", &format!("-node={name}"), &format!("-bind=127.0.0.1:{gossip}")]);
            c.arg(format!("-rpc-addr=127.0.0.1:{rpc}"));
            if let Some(j) = join {
                c.arg(format!("-join=127.0.0.1:{j}"));
            }
            c
        }
        Some((binary, profile)) => {
            let mut c = Command::new(binary);
            c.args(["agent", "--node", name, "--bind", &format!("127.0.0.1:{gossip}")]);
            c.args(["--rpc-addr", &format!("127.0.0.1:{rpc}"), "--profile", profile, "--log-level", "warn"]);
            if let Some(j) = join {
                c.args(["--join", &format!("127.0.0.1:{j}")]);
            }
            c
        }
    };
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", which.label()))?;
    Ok(Agent { child, rpc: format!("127.0.0.1:{rpc}"), name: name.to_string() })
}

async fn connect(rpc: &str) -> anyhow::Result<RpcClient> {
    let start = Instant::now();
    loop {
        match RpcClient::connect(rpc, None).await {
            Ok(c) => return Ok(c),
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => bail!("agent RPC at {rpc} did not come up: {e}"),
        }
    }
}

/// Polls `client` every 5 ms until `node` has `status`; returns the time since `t0`.
async fn wait_status(
    client: &mut RpcClient,
    node: &str,
    status: &str,
    t0: Instant,
    limit: Duration,
) -> Option<Duration> {
    while t0.elapsed() < limit {
        if let Ok(members) = client.members().await
            && members.iter().any(|m| m.name == node && m.status == status)
        {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

struct Result {
    joins: Vec<Duration>,
    failures: Vec<Duration>,
    /// Once the first `--nodes` agents have converged.
    settled: Option<Memory>,
    /// The same agents after the measured joins and kills.
    churned: Option<Memory>,
}

/// The median RSS and the median anonymous memory over `agents`.
fn median_memory(agents: &[Agent]) -> Option<Memory> {
    let all: Vec<Memory> = agents.iter().filter_map(|a| memory(a.child.id())).collect();
    let rss = median_u64(&all.iter().map(|m| m.rss_kib).collect::<Vec<_>>())?;
    let anon = median_u64(&all.iter().map(|m| m.anon_kib).collect::<Vec<_>>())?;
    Some(Memory { rss_kib: rss, anon_kib: anon })
}

async fn measure(args: &Args, which: Impl, ports: &mut u16) -> anyhow::Result<Result> {
    eprintln!("== {}: starting {} agents", which.label(), args.nodes);
    let mut agents = vec![spawn(args, which, "n0", ports, None)?];
    let seed_port = *ports - 2;
    connect(&agents[0].rpc).await?;
    for i in 1..args.nodes {
        agents.push(spawn(args, which, &format!("n{i}"), ports, Some(seed_port))?);
    }
    let mut observer = connect(&agents[1].rpc).await?;
    let t0 = Instant::now();
    loop {
        let alive = observer.members().await?.iter().filter(|m| m.status == "alive").count();
        if alive == args.nodes {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("{}: cluster did not converge ({alive}/{} alive)", which.label(), args.nodes);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = median_memory(&agents);

    let mut joins = Vec::new();
    let mut victims = Vec::new();
    for r in 0..args.rounds {
        let name = format!("join{r}");
        let t0 = Instant::now();
        let agent = spawn(args, which, &name, ports, Some(seed_port))?;
        match wait_status(&mut observer, &name, "alive", t0, Duration::from_secs(30)).await {
            Some(t) => joins.push(t),
            None => eprintln!("   {name}: not seen within 30 s"),
        }
        victims.push(agent);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut failures = Vec::new();
    for mut victim in victims {
        let t0 = Instant::now();
        victim.child.kill().context("kill -9")?;
        match wait_status(&mut observer, &victim.name, "failed", t0, Duration::from_secs(60)).await {
            Some(t) => failures.push(t),
            None => eprintln!("   {}: not declared failed within 60 s", victim.name),
        }
        drop(victim);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(Result { joins, failures, settled, churned: median_memory(&agents) })
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut ports = 30_000;
    let mut results = Vec::new();
    let mut which = vec![Impl::Serf, Impl::ShoalLan, Impl::ShoalFast];
    if args.baseline.is_some() {
        which.extend([Impl::BaselineLan, Impl::BaselineFast]);
    }
    for which in which {
        let r = measure(&args, which, &mut ports).await?;
        results.push((which, r));
    }
    println!();
    println!(
        "gossip agents on loopback: {} agents + {} measured joins and kill -9s each; observer polled over RPC every 5 ms",
        args.nodes, args.rounds
    );
    println!(
        "RSS: median over the first {} agents, settled and after the joins and kills (anonymous part)",
        args.nodes
    );
    println!(
        "{:<18} {:>22} {:>30} {:>22} {:>22}",
        "", "join seen (p50 / max)", "kill -9 → failed (p50 / min / max)", "RSS settled", "RSS after churn"
    );
    let mem = |m: Option<Memory>| {
        m.map_or("-".into(), |m| format!("{} (anon {})", mib(m.rss_kib), mib(m.anon_kib)))
    };
    for (which, r) in &results {
        let j = summary(&r.joins);
        let f = summary(&r.failures);
        println!(
            "{:<18} {:>22} {:>30} {:>22} {:>22}",
            which.label(),
            j.map_or("-".into(), |s| format!("{} / {}", ms(s.p50), ms(s.max))),
            f.map_or("-".into(), |s| format!("{} / {} / {}", ms(s.p50), ms(s.min), ms(s.max))),
            mem(r.settled),
            mem(r.churned),
        );
    }
    let get = |w: Impl| results.iter().find(|(x, _)| *x == w).map(|(_, r)| r);
    println!();
    let pairs = [
        (Impl::ShoalLan, Impl::Serf),
        (Impl::ShoalFast, Impl::Serf),
        (Impl::BaselineLan, Impl::Serf),
        (Impl::BaselineFast, Impl::Serf),
        (Impl::ShoalLan, Impl::BaselineLan),
        (Impl::ShoalFast, Impl::BaselineFast),
    ];
    for (a, b) in pairs {
        if let (Some(ra), Some(rb)) = (get(a), get(b)) {
            println!("{} vs {}: {} (below 1 is better)", a.label(), b.label(), ratios(ra, rb));
        }
    }
    Ok(())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Join and failure-detection medians and RSS, `a` over `b`.
fn ratios(a: &Result, b: &Result) -> String {
    let ratio = |x: f64, y: f64| if y > 0.0 { format!("{:.2}x", x / y) } else { "-".into() };
    let p50 = |v: &[Duration]| summary(v).map_or(0.0, |s| s.p50.as_secs_f64());
    let rss = |m: Option<Memory>| m.map_or(0.0, |m| m.rss_kib as f64);
    format!(
        "join {}, failure detection {}, RSS settled {}, RSS after churn {}",
        ratio(p50(&a.joins), p50(&b.joins)),
        ratio(p50(&a.failures), p50(&b.failures)),
        ratio(rss(a.settled), rss(b.settled)),
        ratio(rss(a.churned), rss(b.churned)),
    )
}
