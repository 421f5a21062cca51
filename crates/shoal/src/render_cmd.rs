//! `shoal render`: configuration files from membership, with check and reload,
//! beside any agent (Shoal's or HashiCorp Serf's) through its RPC.

use std::sync::Arc;

use anyhow::{Context, bail};
use shoal_render::{Cluster, RenderConfig, TemplateSpec};

use crate::cli::{RenderArgs, RenderFlags};

/// The render configuration from `--config`, or from the flags.
pub fn config(flags: &RenderFlags) -> anyhow::Result<Option<RenderConfig>> {
    let mut cfg = match &flags.render_config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            RenderConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?
        }
        None if flags.templates.is_empty() => return Ok(None),
        None => RenderConfig {
            templates: Vec::new(),
            wait: flags.wait,
            strict: flags.strict,
            backend_role: flags.render_role.clone(),
            backend_port: flags.render_port,
        },
    };
    for spec in &flags.templates {
        let mut t = TemplateSpec::parse(spec).map_err(anyhow::Error::msg)?;
        t.check = flags.check.clone();
        t.command = flags.command.clone();
        t.command_timeout = flags.command_timeout;
        t.perms = flags
            .perms
            .as_deref()
            .map(shoal_render::config::parse_perms)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        t.backup = flags.backup;
        cfg.templates.push(t);
    }
    cfg.validate()?;
    Ok(Some(cfg))
}

/// Starts rendering from an in-process agent (for `shoal agent --render …` and the balancer).
pub fn spawn_with_agent(cfg: Option<RenderConfig>, agent: &shoal_agent::AgentHandle) {
    if let Some(cfg) = cfg {
        tracing::info!(templates = cfg.templates.len(), "rendering templates from this agent's membership");
        tokio::spawn(shoal_render::run(cfg, shoal_render::agent_source(agent.members())));
    }
}

/// Runs `shoal render` until SIGTERM/SIGINT, or once with `--once`.
pub async fn run(args: RenderArgs) -> anyhow::Result<()> {
    let Some(cfg) = config(&args.flags)? else {
        bail!("nothing to render: give --template SRC:DEST or --config FILE");
    };
    let auth = args.rpc.rpc_auth.clone();
    if args.once {
        let cluster =
            shoal_render::rpc_source(args.rpc.rpc_addr.clone(), auth).await.map_err(anyhow::Error::msg)?;
        let snapshot: Arc<Cluster> = cluster.borrow().clone();
        let outcomes = shoal_render::render_all(&cfg, &snapshot).await;
        if outcomes.iter().any(|o| !o.is_ok()) {
            bail!("a template was not rendered (see above); its destination is unchanged");
        }
        return Ok(());
    }
    tracing::info!(rpc = %args.rpc.rpc_addr, templates = cfg.templates.len(), "following the agent's membership");
    let cluster = loop {
        match shoal_render::rpc_source(args.rpc.rpc_addr.clone(), auth.clone()).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "agent not reachable yet; retrying in 1s");
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = shoal_render::run(cfg, cluster) => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
