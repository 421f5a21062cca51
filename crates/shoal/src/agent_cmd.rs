//! `shoal agent`: run a gossip member until SIGTERM/SIGINT, then leave gracefully.

use std::time::Duration;

use anyhow::Context;
use shoal_agent::{Agent, AgentConfig, JoinTarget, parse_tags};
use shoal_gossip::Profile;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::AgentArgs;

/// Builds the agent configuration from the command line.
pub fn config(args: &AgentArgs) -> anyhow::Result<AgentConfig> {
    let join = args.join.iter().map(|j| JoinTarget::parse(j)).collect::<Result<Vec<_>, _>>()?;
    Ok(AgentConfig {
        node: args.node.clone(),
        bind: args.bind,
        advertise: args.advertise,
        join,
        replay: args.replay,
        tags: parse_tags(&args.tags)?,
        encrypt: args.encrypt.clone(),
        keyring_file: args.keyring_file.clone(),
        profile: args.profile,
        label: args.label.clone(),
        leave_timeout: Duration::from_secs(args.leave_timeout),
        rejoin_interval: match args.profile {
            Profile::Fast => Duration::from_secs(5),
            _ => Duration::from_secs(30),
        },
    })
}

/// Runs until a signal: the first SIGTERM/SIGINT leaves gracefully, a second exits at once.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let agent = Agent::start(config(&args)?).await.context("cannot start the agent")?;
    wait_for_stop(agent).await
}

/// Waits for SIGTERM or SIGINT, then leaves (a second signal exits immediately).
pub async fn wait_for_stop(agent: Agent) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: leaving the cluster"),
        _ = int.recv() => tracing::info!("SIGINT: leaving the cluster"),
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
