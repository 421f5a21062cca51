//! `shoal balancer`: an agent and an HTTP load balancer in one process.

use std::path::Path;

use anyhow::Context;
use shoal_agent::Agent;
use shoal_balancer::AccessLogFormat;
use shoal_balancer::{Balancer, BalancerConfig, PoolConfig};
use shoal_rpc::{LogTap, ServerConfig};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::BalancerArgs;

/// The balancer configuration from `--config`, or from the flags.
pub fn balancer_config(args: &BalancerArgs, log_json: bool) -> anyhow::Result<BalancerConfig> {
    if let Some(path) = &args.config {
        return load_file(path, args);
    }
    let mut pool = PoolConfig::new("backend", &args.backend_role, args.backend_port);
    pool.tags = shoal_agent::parse_tags(&args.backend_tags)?;
    pool.algorithm = args.algorithm.parse().map_err(anyhow::Error::msg)?;
    pool.sticky_cookie = args.sticky_cookie.clone();
    pool.health.path = args.health_path.clone();
    pool.health.interval = args.health_interval;
    pool.health.enabled = !args.no_health_checks;
    let mut cfg = BalancerConfig::simple(args.listen.clone(), pool, Some(args.stats));
    cfg.access_log = if log_json { AccessLogFormat::Json } else { AccessLogFormat::HttpLog };
    apply_flags(&mut cfg, args);
    cfg.validate()?;
    Ok(cfg)
}

/// Stats, access log and runtime API flags: they fill in what a config file leaves unset.
fn apply_flags(cfg: &mut BalancerConfig, args: &BalancerArgs) {
    cfg.stats = cfg.stats.or(Some(args.stats));
    cfg.stats_auth = cfg.stats_auth.take().or_else(|| args.stats_auth.clone());
    cfg.stats_token = cfg.stats_token.take().or_else(|| args.stats_token.clone());
    if let Some(format) = args.access_log {
        cfg.access_log = format;
    }
    if cfg.admin.socket.is_none() && !matches!(args.admin_socket.as_str(), "" | "none") {
        cfg.admin.socket = Some(args.admin_socket.clone().into());
    }
    cfg.admin.listen = cfg.admin.listen.or(args.admin_listen);
    cfg.admin.token = cfg.admin.token.take().or_else(|| args.admin_token.clone());
}

fn load_file(path: &Path, args: &BalancerArgs) -> anyhow::Result<BalancerConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut cfg = BalancerConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?;
    apply_flags(&mut cfg, args);
    cfg.validate().with_context(|| format!("in {} with the command-line flags", path.display()))?;
    Ok(cfg)
}

/// Runs until SIGTERM/SIGINT (drain, leave, exit 0); SIGHUP re-reads `--config`.
pub async fn run(args: BalancerArgs, log_tap: LogTap, log_json: bool) -> anyhow::Result<()> {
    let bal_cfg = balancer_config(&args, log_json)?;
    let render = crate::render_cmd::config(&args.agent.render)?;
    let mut agent_cfg = crate::agent_cmd::config(&args.agent)?;
    agent_cfg.tags.entry("role".into()).or_insert_with(|| "balancer".into());
    let handlers = agent_cfg.event_handlers.clone();
    let agent = Agent::start(agent_cfg).await.context("cannot start the agent")?;
    let server =
        ServerConfig { auth: args.agent.rpc_auth.clone(), event_handlers: handlers, log_tap: Some(log_tap) };
    let (_, rpc) = shoal_rpc::start(args.agent.rpc_addr, agent.handle(), server)
        .await
        .with_context(|| format!("cannot listen for RPC on {}", args.agent.rpc_addr))?;
    let balancer =
        Balancer::start(bal_cfg, agent.handle().members()).await.context("cannot start the balancer")?;
    balancer.attach_agent(agent.handle());
    balancer.follow_distances(agent.handle().distances());
    crate::render_cmd::spawn_with_agent(render, &agent.handle());

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let handle = agent.handle();
    loop {
        tokio::select! {
            _ = hup.recv() => match &args.config {
                Some(path) => match load_file(path, &args) {
                    Ok(cfg) => if let Err(e) = balancer.reload(cfg).await {
                        tracing::error!(error = %e, "reload refused; the running configuration is unchanged");
                    },
                    Err(e) => tracing::error!(error = format!("{e:#}"), "reload refused; the running configuration is unchanged"),
                },
                None => tracing::warn!("SIGHUP ignored: no --config file to re-read"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
            () = handle.shutdown_requested() => break,
        }
    }
    tracing::info!("stopping: leaving the cluster and draining connections");
    let stop = async {
        tokio::join!(balancer.shutdown(), agent.leave_and_shutdown());
    };
    tokio::select! {
        () = stop => {}
        _ = term.recv() => std::process::exit(1),
        _ = int.recv() => std::process::exit(1),
    }
    rpc.abort();
    Ok(())
}
