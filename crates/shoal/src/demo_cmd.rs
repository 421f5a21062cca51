//! `shoal demo`: the reference lab on loopback in one command — a balancer and N
//! web apps, each app with its own gossip agent — with keys to add, remove and
//! crash backends and watch the pool follow.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use shoal_agent::{Agent, AgentConfig, Coalescing, JoinTarget};
use shoal_balancer::{Balancer, BalancerConfig, PoolConfig};
use shoal_gossip::{Profile, Tags};
use shoal_webapp::{App, AppConfig};
use tokio::io::AsyncBufReadExt;

use crate::cli::DemoArgs;

struct Backend {
    name: String,
    agent: Agent,
    app: shoal_webapp::Running,
}

fn agent_config(name: &str, role: &str, join: Option<SocketAddr>, extra: Tags) -> AgentConfig {
    let mut tags = Tags::from([("role".to_string(), role.to_string())]);
    tags.extend(extra);
    AgentConfig {
        node: Some(name.into()),
        bind: "127.0.0.1:0".parse().expect("literal address"),
        join: join.map(|a| JoinTarget { host: a.ip().to_string(), port: a.port() }).into_iter().collect(),
        tags,
        profile: Profile::Fast,
        coalescing: Coalescing::off(),
        rejoin_interval: Duration::from_secs(5),
        ..AgentConfig::default()
    }
}

async fn start_backend(i: usize, seed: SocketAddr) -> anyhow::Result<Backend> {
    let name = format!("web-{i}");
    let app_cfg = AppConfig { ip: "127.0.0.1".into(), name: name.clone(), tag: Some(format!("demo-{i}")) };
    let app = shoal_webapp::start("127.0.0.1:0".parse()?, App::new(app_cfg)).await?;
    let addr = app.addr;
    let tags = Tags::from([("port".to_string(), addr.port().to_string())]);
    let agent = Agent::start(agent_config(&name, "backend", Some(seed), tags)).await?;
    println!("  + {name}: app on http://{addr}/, agent on {}", agent.local_addr());
    Ok(Backend { name, agent, app })
}

/// Runs the demo until Ctrl-C or `q`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let lb_agent = Agent::start(agent_config("ha", "balancer", None, Tags::new())).await?;
    let seed = lb_agent.local_addr();
    let mut pool = PoolConfig::new("backend", "backend", 3000);
    pool.health.interval = Duration::from_secs(1);
    let mut cfg = BalancerConfig::simple(vec![args.listen], pool, Some(args.stats));
    // The demo's terminal shows server changes; the access log would drown them.
    cfg.access_log = shoal_balancer::AccessLogFormat::Off;
    let socket = std::env::temp_dir().join(format!("shoal-demo-{}.sock", std::process::id()));
    cfg.admin.socket = Some(socket.clone());
    let balancer = Balancer::start(cfg, lb_agent.handle().members())
        .await
        .with_context(|| format!("cannot start the balancer on {}", args.listen))?;
    balancer.attach_agent(lb_agent.handle());
    balancer.follow_distances(lb_agent.handle().distances());
    println!("balancer 'ha': gossip on {seed}");
    let mut backends = Vec::new();
    for i in 1..=args.backends {
        backends.push(start_backend(i, seed).await?);
    }
    let mut next = args.backends + 1;
    // The banner comes once the starting backends serve, after their log lines.
    let serving = || balancer.pools().values().map(|p| p.view().servers.len()).sum::<usize>();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while serving() < args.backends && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!();
    println!("  front: http://{}/", args.listen);
    println!("  stats: http://{}/   (also /;csv, /;json, /metrics)", args.stats);
    println!("  drain: shoal server --socket {} drain web-2", socket.display());
    println!();
    println!("  keys: a = add a backend, r = remove one gracefully, k = kill one, s = status, q = quit");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            l = lines.next_line(), if args.interactive => l,
        };
        let cmd = match line {
            Ok(Some(l)) => l.trim().to_string(),
            Ok(None) | Err(_) => {
                // stdin closed: keep running until Ctrl-C.
                tokio::signal::ctrl_c().await.ok();
                break;
            }
        };
        match cmd.as_str() {
            "a" => {
                backends.push(start_backend(next, seed).await?);
                next += 1;
            }
            "r" => match backends.pop() {
                Some(b) => {
                    println!("  - {}: leaving gracefully", b.name);
                    b.agent.leave_and_shutdown().await;
                    b.app.shutdown(Duration::from_secs(5)).await;
                }
                None => println!("  no backend to remove"),
            },
            "k" => match backends.pop() {
                Some(b) => {
                    println!("  x {}: killed (no goodbye)", b.name);
                    b.agent.shutdown();
                    b.app.abort();
                }
                None => println!("  no backend to kill"),
            },
            "s" => {
                for (name, pool) in balancer.pools().iter() {
                    let view = pool.view();
                    let serving: Vec<&str> = view.servers.iter().map(|s| &*s.name).collect();
                    println!("  pool {name}: {} serving: {}", serving.len(), serving.join(", "));
                }
            }
            "q" => break,
            "" => {}
            other => println!("  unknown command {other:?}: a, r, k, s or q"),
        }
    }
    println!("stopping…");
    for b in backends {
        b.agent.leave_and_shutdown().await;
        b.app.shutdown(Duration::from_secs(5)).await;
    }
    balancer.shutdown().await;
    lb_agent.leave_and_shutdown().await;
    Ok(())
}
