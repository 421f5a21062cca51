//! `shoal agent`: run a gossip member with its RPC server until SIGTERM/SIGINT
//! (or an RPC `leave`), then leave gracefully.

use std::time::Duration;

use anyhow::Context;
use shoal_agent::{Agent, AgentConfig, Coalescing, HandlerSpec, JoinTarget, parse_tags};
use shoal_gossip::Profile;
use shoal_rpc::{LogTap, ServerConfig};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::AgentArgs;

/// Builds the agent configuration from the command line.
pub fn config(args: &AgentArgs) -> anyhow::Result<AgentConfig> {
    let join = args.join.iter().map(|j| JoinTarget::parse(j)).collect::<Result<Vec<_>, _>>()?;
    let event_handlers = args
        .event_handlers
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| HandlerSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AgentConfig {
        node: args.node.clone(),
        bind: args.bind,
        advertise: args.advertise,
        join,
        replay: args.replay,
        tags: parse_tags(&args.tags)?,
        encrypt: match &args.encrypt_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the gossip key from {}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            None => args.encrypt.clone(),
        },
        keyring_file: args.keyring_file.clone(),
        profile: args.profile,
        label: args.label.clone(),
        leave_timeout: Duration::from_secs(args.leave_timeout),
        rejoin_interval: match args.profile {
            Profile::Fast => Duration::from_secs(5),
            _ => Duration::from_secs(30),
        },
        event_handlers,
        handler_timeout: args.handler_timeout,
        coalescing: Coalescing {
            member_period: args.coalesce_period,
            member_quiescent: args.quiescent_period,
            ..Coalescing::default()
        },
        snapshot: args.snapshot.clone(),
        rejoin: args.rejoin,
        disable_coordinates: args.disable_coordinates,
    })
}

/// Runs until a signal or an RPC `leave`.
pub async fn run(args: AgentArgs, log_tap: LogTap) -> anyhow::Result<()> {
    let cfg = config(&args)?;
    let render = crate::render_cmd::config(&args.render)?;
    let handlers = cfg.event_handlers.clone();
    let agent = Agent::start(cfg).await.context("cannot start the agent")?;
    crate::render_cmd::spawn_with_agent(render, &agent.handle());
    let server =
        ServerConfig { auth: args.rpc_auth.clone(), event_handlers: handlers, log_tap: Some(log_tap) };
    let (_, rpc) = shoal_rpc::start(args.rpc_addr, agent.handle(), server)
        .await
        .with_context(|| format!("cannot listen for RPC on {}", args.rpc_addr))?;
    let result = wait_for_stop(agent).await;
    rpc.abort();
    result
}

/// Waits for SIGTERM/SIGINT (then leaves; a second signal exits at once) or an RPC `leave`.
pub async fn wait_for_stop(agent: Agent) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let handle = agent.handle();
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: leaving the cluster"),
        _ = int.recv() => tracing::info!("SIGINT: leaving the cluster"),
        () = handle.shutdown_requested() => {
            tracing::info!("left over RPC; stopping");
            agent.shutdown();
            return Ok(());
        }
    }
    tokio::select! {
        () = agent.leave_and_shutdown() => Ok(()),
        _ = term.recv() => {
            tracing::warn!("second signal: exiting without waiting");
            std::process::exit(1)
        }
        _ = int.recv() => {
            tracing::warn!("second signal: exiting without waiting");
            std::process::exit(1)
        }
    }
}
