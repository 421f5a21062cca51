//! `shoal webapp`: the reference stack's demo app.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use shoal_webapp::{App, AppConfig};

use crate::cli::WebappArgs;

/// Who the app says it is: flags and env, else the listen IP (or first private IPv4) and host name.
pub fn app_config(args: &WebappArgs) -> AppConfig {
    let ip = args.server_ip.clone().unwrap_or_else(|| {
        shoal_agent::advertise_addr(args.listen, None)
            .map_or_else(|_| args.listen.ip().to_string(), |a: SocketAddr| a.ip().to_string())
    });
    let name = args
        .server_name
        .clone()
        .unwrap_or_else(|| shoal_agent::hostname().unwrap_or_else(|_| "webapp".into()));
    let tag = args.tag.clone().or_else(|| std::env::var("SERVER_TAG").ok()).filter(|t| !t.is_empty());
    AppConfig { ip, name, tag }
}

/// How long in-flight requests may take to finish once a stop is asked.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves until SIGTERM/SIGINT, then stops gracefully.
pub async fn run(args: WebappArgs) -> anyhow::Result<()> {
    let cfg = app_config(&args);
    let app = shoal_webapp::start(args.listen, App::new(cfg.clone()))
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(addr = %app.addr, name = %cfg.name, ip = %cfg.ip, "web app serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!(grace = ?SHUTDOWN_GRACE, "stopping: finishing in-flight requests");
    app.shutdown(SHUTDOWN_GRACE).await;
    Ok(())
}
