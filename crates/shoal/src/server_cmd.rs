//! `shoal server …`: drives a balancer's runtime API (unix socket or TCP), the
//! way `socat` and HAProxy's CLI are used against HAProxy.

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::cli::{AdminArgs, ServerAction, ServerArgs, ServerTarget};

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, line: &str) -> std::io::Result<String> {
    stream.write_all(format!("{line}\n").as_bytes()).await?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await?;
    Ok(out)
}

/// Sends one line of commands and returns the answer (without HAProxy's closing blank line).
async fn send(admin: &AdminArgs, line: &str) -> anyhow::Result<String> {
    let out = match &admin.admin_addr {
        Some(addr) => {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .with_context(|| format!("cannot reach the runtime API at {addr}"))?;
            let line = match &admin.admin_token {
                Some(t) => format!("auth {t}; {line}"),
                None => line.to_string(),
            };
            exchange(stream, &line).await?
        }
        None => {
            let stream = tokio::net::UnixStream::connect(&admin.socket).await.with_context(|| {
                format!(
                    "cannot reach the runtime API at {} (is the balancer running? see --socket)",
                    admin.socket.display()
                )
            })?;
            exchange(stream, line).await?
        }
    };
    if out.starts_with("Permission denied") {
        bail!("{}", out.trim_end());
    }
    Ok(out.strip_suffix('\n').unwrap_or(&out).to_string())
}

/// One server of `show servers state`.
struct ServerState {
    pool: String,
    name: String,
    addr: String,
    port: String,
    running: bool,
    admin: u8,
    weight: String,
}

fn parse_state(text: &str) -> Vec<ServerState> {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.split(' ').count() > 20)
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            ServerState {
                pool: f[1].into(),
                name: f[3].into(),
                addr: f[4].into(),
                port: f[18].into(),
                running: f[5] == "2",
                admin: f[6].parse().unwrap_or(0),
                weight: f[7].into(),
            }
        })
        .collect()
}

/// `POOL/NAME`: taken as given, or found by asking which pools hold NAME.
async fn resolve(admin: &AdminArgs, target: &ServerTarget) -> anyhow::Result<String> {
    if let Some((pool, name)) = target.name.split_once('/') {
        return Ok(format!("{pool}/{name}"));
    }
    if let Some(pool) = &target.pool {
        return Ok(format!("{pool}/{}", target.name));
    }
    let servers = parse_state(&send(admin, "show servers state").await?);
    let pools: Vec<&str> =
        servers.iter().filter(|s| s.name == target.name).map(|s| s.pool.as_str()).collect();
    match pools.as_slice() {
        [] => bail!("no pool has a server named {:?} (see `shoal server show`)", target.name),
        [pool] => Ok(format!("{pool}/{}", target.name)),
        many => bail!("{:?} is in pools {}: say which with --pool", target.name, many.join(", ")),
    }
}

async fn set(admin: &AdminArgs, target: &ServerTarget, what: &str) -> anyhow::Result<()> {
    let full = resolve(admin, target).await?;
    let answer = send(admin, &format!("set server {full} {what}")).await?;
    if !answer.trim().is_empty() {
        bail!("{full}: {}", answer.trim_end());
    }
    println!("{full}: {what}");
    Ok(())
}

/// Runs `shoal server …`.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let admin = &args.admin;
    match &args.action {
        ServerAction::Show => {
            let servers = parse_state(&send(admin, "show servers state").await?);
            println!("{:<16} {:<24} {:<22} {:<8} {:<6}", "POOL", "SERVER", "ADDRESS", "STATE", "WEIGHT");
            for s in servers {
                let state = match (s.admin, s.running) {
                    (a, _) if a & 0x01 != 0 => "MAINT",
                    (a, _) if a & 0x08 != 0 => "DRAIN",
                    (_, true) => "UP",
                    (_, false) => "DOWN",
                };
                println!(
                    "{:<16} {:<24} {:<22} {:<8} {:<6}",
                    s.pool,
                    s.name,
                    format!("{}:{}", s.addr, s.port),
                    state,
                    s.weight
                );
            }
            Ok(())
        }
        ServerAction::Drain(t) => set(admin, t, "state drain").await,
        ServerAction::Maint(t) => set(admin, t, "state maint").await,
        ServerAction::Ready(t) => set(admin, t, "state ready").await,
        ServerAction::Weight { target, weight } => set(admin, target, &format!("weight {weight}")).await,
        ServerAction::Exec { command } => {
            print!("{}", send(admin, &command.join(" ")).await?);
            Ok(())
        }
    }
}
