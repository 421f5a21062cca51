//! Failover under steady load, Shoal next to the reference design it replaces
//! (HAProxy with a Serf agent whose event handler regenerates the config and
//! reloads it), each as real processes on its own loopback addresses:
//!
//! * join: a new backend's agent start to the first request it serves;
//! * kill -9 of a backend (app and agent): failed requests, and the time until
//!   the balancer no longer counts it as serving;
//! * graceful stop of a backend, as each design's container would do it:
//!   failed requests of any method.
//!
//! The load is GET, HEAD and `POST /delay` in turn over keep-alive connections,
//! paced at a steady rate; a request fails if it gets a 5xx or no answer.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;

use crate::procs::{Method, Proc, servers_up, spawn, wait_http, wait_tcp, write};
use crate::stats::{ms, summary};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rounds per design; each starts a fresh cluster of two backends, joins three more, kills one and stops one.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Steady load in requests per second (GET, HEAD and POST in turn).
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Keep-alive client connections carrying the load.
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// The shoal binary.
    #[arg(long, default_value = "target/release/shoal")]
    shoal: String,
    /// HashiCorp Serf, for the reference design.
    #[arg(long, default_value = "serf")]
    serf: String,
    /// HAProxy, for the reference design.
    #[arg(long, default_value = "haproxy")]
    haproxy: String,
}

const FRONT: u16 = 8080;
const STATS: u16 = 1936;
const GOSSIP: u16 = 7946;
const RPC: u16 = 7373;
const APP: u16 = 3000;
/// Longest wait for any one event before the run is declared broken.
const PATIENCE: Duration = Duration::from_secs(30);
/// Load kept running after a server left the pool, so late failures are counted.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Design {
    Shoal,
    Reference,
    Render,
}

impl Design {
    fn label(self) -> &'static str {
        match self {
            Design::Shoal => "shoal balancer + shoal agents",
            Design::Reference => "haproxy 2.6 + serf 0.9.4 + reload handler",
            Design::Render => "haproxy 2.6 + shoal agent --render (check + reload) + shoal agents",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Design::Shoal => "shoal balancer",
            Design::Reference => "reference",
            Design::Render => "haproxy + render",
        }
    }

    /// The pool's name on the stats CSV.
    fn pool(self) -> &'static str {
        if self == Design::Shoal { "backend" } else { "nodes" }
    }

    /// Each design gets its own 127.0.N.0/24, so ports never collide between runs.
    fn ip(self, host: u8) -> Ipv4Addr {
        let net = match self {
            Design::Shoal => 1,
            Design::Reference => 2,
            Design::Render => 3,
        };
        Ipv4Addr::new(127, 0, net, host)
    }

    fn balancer(self) -> Ipv4Addr {
        self.ip(254)
    }
}

/// The reference stack's handler, as a shell script: track backends in $NODES,
/// render the HAProxy config with one `server` line per backend, reload HAProxy.
const REFERENCE_HANDLER: &str = r#"#!/bin/sh
seen=
while IFS="$(printf '\t')" read -r name ip role tags; do
    [ "$role" = backend ] || continue
    seen=1
    case "$SERF_EVENT" in
        member-join) echo "$name $ip" > "$NODES/$name" ;;
        *) rm -f "$NODES/$name" ;;
    esac
done
[ -n "$seen" ] || exit 0
{
    cat "$CFG_HEAD"
    for f in "$NODES"/*; do
        [ -e "$f" ] || continue
        read -r n i < "$f"
        echo "    server $n $i:3000 check"
    done
    cat "$CFG_TAIL"
} > "$CFG.new" && mv "$CFG.new" "$CFG"
kill -USR2 "$HAPROXY_MASTER"
"#;

/// The reference's HAProxy configuration around its server lines.
fn haproxy_config(b: Ipv4Addr) -> (String, String) {
    let head = format!(
        "global\n    maxconn 4096\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 50s\n    \
         timeout server 50s\nfrontend fe\n    bind {b}:{FRONT}\n    default_backend nodes\nbackend nodes\n    \
         balance roundrobin\n    option httpchk HEAD /\n    option forwardfor\n    \
         http-request set-header X-Forwarded-Port %[dst_port]\n"
    );
    let tail = format!("listen stats\n    bind {b}:{STATS}\n    stats enable\n    stats uri /\n");
    (head, tail)
}

/// One backend: the demo web app and its gossip agent.
struct Backend {
    name: String,
    app: Proc,
    agent: Proc,
}

struct Cluster<'a> {
    args: &'a Args,
    design: Design,
    // Field order is drop order: backends go before the balancer.
    backends: Vec<Backend>,
    _balancer: Vec<Proc>,
}

impl<'a> Cluster<'a> {
    fn start(args: &'a Args, design: Design, dir: &Path) -> anyhow::Result<Self> {
        let b = design.balancer();
        let mut procs = Vec::new();
        match design {
            Design::Shoal => {
                procs.push(spawn(
                    "shoal balancer",
                    Command::new(&args.shoal)
                        .args(["balancer", "--node", "lb", "--log-level", "warn"])
                        .args(["--access-log", "off", "--admin-socket", "none"])
                        .args([
                            format!("--bind={b}:{GOSSIP}"),
                            format!("--rpc-addr={b}:{RPC}"),
                            format!("--listen={b}:{FRONT}"),
                            format!("--stats={b}:{STATS}"),
                        ]),
                )?);
                wait_tcp((b, STATS).into())?;
            }
            Design::Render => {
                let (head, tail) = haproxy_config(b);
                // The reference's template, rendered by the balancer's own agent.
                let template = write(
                    dir,
                    "haproxy.cfg.hbs",
                    &format!(
                        "{head}    {{{{#each addresses}}}}\n    server {{{{ host }}}} {{{{ ip }}}}:3000 check\n    {{{{/each}}}}\n{tail}"
                    ),
                )?;
                let cfg = dir.join("haproxy.cfg");
                let pid = dir.join("haproxy.pid");
                procs.push(spawn(
                    "shoal agent --render",
                    Command::new(&args.shoal)
                        .args(["agent", "--node", "lb", "--tag", "role=balancer", "--log-level", "warn"])
                        .args([format!("--bind={b}:{GOSSIP}"), format!("--rpc-addr={b}:{RPC}")])
                        .arg(format!("--template={}:{}", template.display(), cfg.display()))
                        .arg(format!("--check={} -c -f {{{{src}}}}", args.haproxy))
                        .arg(format!("--command=test ! -f {0} || kill -USR2 $(cat {0})", pid.display())),
                )?);
                let start = Instant::now();
                while !cfg.exists() && start.elapsed() < PATIENCE {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let haproxy = spawn(
                    "haproxy",
                    Command::new(&args.haproxy).arg("-W").arg("-f").arg(&cfg).arg("-p").arg(&pid),
                )?;
                wait_tcp((b, STATS).into())?;
                procs.push(haproxy);
            }
            Design::Reference => {
                let (head, tail) = haproxy_config(b);
                let head_path = write(dir, "haproxy.head", &head)?;
                let tail_path = write(dir, "haproxy.tail", &tail)?;
                let cfg = write(dir, "haproxy.cfg", &format!("{head}{tail}"))?;
                let handler = write(dir, "handler.sh", REFERENCE_HANDLER)?;
                let nodes = dir.join("nodes");
                std::fs::create_dir_all(&nodes)?;
                let haproxy = spawn("haproxy", Command::new(&args.haproxy).arg("-W").arg("-f").arg(&cfg))?;
                wait_tcp((b, STATS).into())?;
                let serf = spawn(
                    "serf (balancer)",
                    Command::new(&args.serf)
                        .args(["agent", "-node=lb", "-tag", "role=balancer"])
                        .args([format!("-bind={b}:{GOSSIP}"), format!("-rpc-addr={b}:{RPC}")])
                        .arg(format!("-event-handler=member-join=sh {}", handler.display()))
                        .arg(format!("-event-handler=member-leave,member-failed=sh {}", handler.display()))
                        .env("NODES", &nodes)
                        .env("CFG", &cfg)
                        .env("CFG_HEAD", &head_path)
                        .env("CFG_TAIL", &tail_path)
                        .env("HAPROXY_MASTER", haproxy.pid().to_string()),
                )?;
                wait_tcp((b, RPC).into())?;
                procs.push(serf);
                procs.push(haproxy);
            }
        }
        Ok(Cluster { args, design, backends: Vec::new(), _balancer: procs })
    }

    /// Starts backend `i`'s app, waits for it to answer, then starts its agent;
    /// returns the instant the agent was started.
    fn add_backend(&mut self, i: u8) -> anyhow::Result<Instant> {
        let (ip, name, b) = (self.design.ip(i), format!("web-{i}"), self.design.balancer());
        let app = spawn(
            format!("{name} app"),
            Command::new(&self.args.shoal)
                .args(["webapp", "--listen", &format!("{ip}:{APP}")])
                .env("SERVER_NAME", &name)
                .env("SERVER_IP", ip.to_string()),
        )?;
        wait_http((ip, APP).into())?;
        let started = Instant::now();
        let agent = match self.design {
            Design::Shoal | Design::Render => spawn(
                format!("{name} agent"),
                Command::new(&self.args.shoal)
                    .args(["agent", "--node", &name, "--tag", "role=backend", "--log-level", "warn"])
                    .args([
                        format!("--bind={ip}:{GOSSIP}"),
                        format!("--rpc-addr={ip}:{RPC}"),
                        format!("--join={b}:{GOSSIP}"),
                    ]),
            )?,
            Design::Reference => spawn(
                format!("{name} serf"),
                Command::new(&self.args.serf)
                    .args(["agent", &format!("-node={name}"), "-tag", "role=backend"])
                    .args([
                        format!("-bind={ip}:{GOSSIP}"),
                        format!("-rpc-addr={ip}:{RPC}"),
                        format!("-join={b}:{GOSSIP}"),
                    ]),
            )?,
        };
        self.backends.push(Backend { name, app, agent });
        Ok(started)
    }

    fn take(&mut self, name: &str) -> anyhow::Result<Backend> {
        let i = self.backends.iter().position(|b| b.name == name).context("no such backend")?;
        Ok(self.backends.remove(i))
    }

    fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let mut b = self.take(name)?;
        b.app.kill9();
        b.agent.kill9();
        Ok(())
    }

    /// Whether the balancer currently sends new requests to `name`, from its stats page.
    fn serving(&self, name: &str) -> bool {
        let stats = SocketAddr::from((self.design.balancer(), STATS));
        servers_up(stats, self.design.pool()).iter().any(|s| s == name)
    }

    fn wait_serving(&self, name: &str, want: bool) -> anyhow::Result<Instant> {
        let start = Instant::now();
        while start.elapsed() < PATIENCE {
            if self.serving(name) == want {
                return Ok(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!(
            "{}: {name} still {} after {PATIENCE:?}",
            self.design.label(),
            if want { "out" } else { "serving" }
        )
    }
}

/// Stops a backend the way its container would on `docker stop`. Shoal's
/// container leaves the cluster first, then stops the app (which finishes its
/// in-flight requests). The reference container's s6 sends SIGTERM to every
/// service at once: Node, which installs no handler, dies at once with its
/// connections (the app here gets SIGKILL to behave the same), and Serf, whose
/// default is not to leave on SIGTERM, just goes away.
fn stop_backend(design: Design, mut b: Backend) -> anyhow::Result<()> {
    match design {
        Design::Shoal | Design::Render => {
            b.agent.signal(Signal::SIGTERM);
            if !b.agent.wait_exit(PATIENCE) {
                bail!("{}'s agent did not leave within {PATIENCE:?}", b.name);
            }
            b.app.signal(Signal::SIGTERM);
            b.app.wait_exit(PATIENCE);
        }
        Design::Reference => {
            b.app.signal(Signal::SIGKILL);
            b.agent.signal(Signal::SIGTERM);
            b.app.wait_exit(PATIENCE);
            b.agent.wait_exit(PATIENCE);
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    kind: Method,
    /// The status and the serving backend's `X-Backend-Ip`, or no answer at all.
    answer: Option<(u16, Option<Ipv4Addr>)>,
}

impl Sample {
    fn failed(&self) -> bool {
        self.answer.is_none_or(|(status, _)| status >= 500)
    }
}

/// Steady load on the front end, every answer recorded.
struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(front: SocketAddr) -> Option<Sender> {
    let stream = tokio::net::TcpStream::connect(front).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(sender)
}

async fn one_request(sender: &mut Sender, kind: Method) -> Option<(u16, Option<Ipv4Addr>)> {
    sender.ready().await.ok()?;
    let req = match kind {
        Method::Get => Request::get("/").body(Full::default()),
        Method::Head => Request::head("/").body(Full::default()),
        Method::Post => Request::post("/delay")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(br#"{"delay":0}"#))),
    }
    .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let backend = resp.headers().get("x-backend-ip").and_then(|v| v.to_str().ok()?.parse().ok());
    resp.into_body().collect().await.ok()?;
    Some((status, backend))
}

impl Load {
    fn start(rt: &tokio::runtime::Runtime, front: SocketAddr, rate: u32, clients: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let every = Duration::from_secs_f64(f64::from(clients) / f64::from(rate));
        let tasks = (0..clients)
            .map(|c| {
                let (samples, stop) = (samples.clone(), stop.clone());
                rt.spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut sender = None;
                    let mut n = c as usize;
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let kind = Method::ALL[n % 3];
                        n += 1;
                        if sender.is_none() {
                            sender = connect(front).await;
                        }
                        let answer = match sender.as_mut() {
                            Some(s) => tokio::time::timeout(Duration::from_secs(10), one_request(s, kind))
                                .await
                                .ok()
                                .flatten(),
                            None => None,
                        };
                        if answer.is_none() {
                            sender = None;
                        }
                        let sample = Sample { at: Instant::now(), kind, answer };
                        samples.lock().unwrap_or_else(|e| e.into_inner()).push(sample);
                    }
                })
            })
            .collect();
        Load { samples, stop, tasks }
    }

    fn since(&self, t0: Instant) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| s.at >= t0)
            .cloned()
            .collect()
    }

    fn first_served_by(&self, ip: Ipv4Addr, t0: Instant) -> Option<Instant> {
        self.since(t0)
            .iter()
            .find(|s| s.answer.is_some_and(|(st, b)| st < 500 && b == Some(ip)))
            .map(|s| s.at)
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[derive(Debug, Default)]
struct Outcome {
    joins: Vec<Duration>,
    failed_during_joins: usize,
    kill_out: Vec<Duration>,
    kill_failed_gets: usize,
    kill_failed: usize,
    stop_out: Vec<Duration>,
    stop_failed: usize,
    requests: usize,
}

fn count_failed(samples: &[Sample], kind: Option<Method>) -> usize {
    samples.iter().filter(|s| s.failed() && kind.is_none_or(|k| s.kind == k)).count()
}

/// One round: a fresh cluster, three joins, a kill -9, a graceful stop. The
/// cluster is driven from this thread while the load runs on `rt`.
fn round(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    design: Design,
    dir: &Path,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(args, design, dir)?;
    for i in 1..=2 {
        cluster.add_backend(i)?;
    }
    for name in ["web-1", "web-2"] {
        cluster.wait_serving(name, true)?;
    }
    let load = Load::start(rt, (design.balancer(), FRONT).into(), args.rate, args.clients);
    let t_start = Instant::now();
    std::thread::sleep(Duration::from_secs(1));

    // Joins, one at a time.
    let t_joins = Instant::now();
    for i in 3..=5 {
        let ip = design.ip(i);
        let started = cluster.add_backend(i)?;
        let deadline = started + PATIENCE;
        let first = loop {
            if let Some(at) = load.first_served_by(ip, started) {
                break at;
            }
            if Instant::now() > deadline {
                bail!("{}: web-{i} got no request within {PATIENCE:?}", design.label());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        out.joins.push(first - started);
        std::thread::sleep(Duration::from_millis(500));
    }
    out.failed_during_joins += count_failed(&load.since(t_joins), None);

    // kill -9.
    let t_kill = Instant::now();
    cluster.kill("web-1")?;
    let gone = cluster.wait_serving("web-1", false)?;
    out.kill_out.push(gone - t_kill);
    std::thread::sleep(SETTLE);
    let window = load.since(t_kill);
    out.kill_failed_gets += count_failed(&window, Some(Method::Get));
    out.kill_failed += count_failed(&window, None);

    // Graceful stop.
    let t_stop = Instant::now();
    let stopping = std::thread::spawn({
        let b = cluster.take("web-2")?;
        move || stop_backend(design, b)
    });
    let gone = cluster.wait_serving("web-2", false)?;
    out.stop_out.push(gone - t_stop);
    stopping.join().map_err(|_| anyhow::anyhow!("the stopping thread panicked"))??;
    std::thread::sleep(SETTLE);
    out.stop_failed += count_failed(&load.since(t_stop), None);

    out.requests += load.since(t_start).len();
    rt.block_on(load.stop());
    Ok(())
}

fn run_design(rt: &tokio::runtime::Runtime, args: &Args, design: Design) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();
    for r in 0..args.rounds {
        eprintln!("== {}: round {}/{}", design.label(), r + 1, args.rounds);
        let dir = std::env::temp_dir().join(format!("shoal-bench-failover-{}-{r}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let result = round(rt, args, design, &dir, &mut out);
        let _ = std::fs::remove_dir_all(&dir);
        result?;
    }
    Ok(out)
}

fn requirements(args: &Args) -> anyhow::Result<()> {
    for (tool, flag) in [(&args.shoal, "--version"), (&args.serf, "version"), (&args.haproxy, "-v")] {
        Command::new(tool).arg(flag).output().with_context(|| format!("cannot run {tool}"))?;
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    requirements(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let designs = [Design::Shoal, Design::Reference, Design::Render];
    let outcomes = designs
        .iter()
        .map(|&d| run_design(&rt, &args, d).map(|o| (d, o)))
        .collect::<anyhow::Result<Vec<_>>>()?;

    println!();
    println!(
        "{} rounds per design; steady load {} req/s over {} keep-alive connections (GET, HEAD, POST /delay in turn)",
        args.rounds, args.rate, args.clients
    );
    println!(
        "a request fails if it gets a 5xx or no answer; every process on loopback, 2 cores shared by all"
    );
    println!();
    let line = |label: &str, f: &dyn Fn(&Outcome) -> String| {
        print!("{label:<44}");
        for (_, o) in &outcomes {
            print!(" {:>30}", f(o));
        }
        println!();
    };
    let durations =
        |v: &[Duration]| summary(v).map_or("-".into(), |s| format!("{} (max {})", ms(s.p50), ms(s.max)));
    print!("{:<44}", "");
    for (d, _) in &outcomes {
        print!(" {:>30}", d.short());
    }
    println!();
    line("new backend: agent start to 1st request, p50", &|o| durations(&o.joins));
    line("  failed requests during the joins", &|o| o.failed_during_joins.to_string());
    line("kill -9: out of the pool after, p50", &|o| durations(&o.kill_out));
    line("  failed GETs", &|o| o.kill_failed_gets.to_string());
    line("  failed requests, any method", &|o| o.kill_failed.to_string());
    line("graceful stop: out of the pool after, p50", &|o| durations(&o.stop_out));
    line("  failed requests, any method", &|o| o.stop_failed.to_string());
    line("requests sent in all", &|o| o.requests.to_string());
    println!();
    for (d, _) in &outcomes {
        println!("{:<16} = {}", d.short(), d.label());
    }
    Ok(())
}
