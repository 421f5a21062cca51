//! The runtime API: HAProxy's management commands (`show stat`, `show info`,
//! `show servers state`, `set server`, `enable`/`disable server`, `help`) on a
//! unix socket, optionally on TCP, and behind `POST /;cmd` on the stats listener.
//!
//! Like HAProxy's CLI, a connection sends one line of commands separated by `;`
//! and gets their output; after `prompt` it stays open and prompts with `> `.
//! On TCP with a token configured, the first command must be `auth TOKEN`.
//! A line is at most [`MAX_LINE`] bytes (a longer one is answered with an error
//! and the connection closed), and `limits.max_admin_connections` sessions run
//! at once. Member names in the output are escaped ([`shoal_gossip::escape`]).

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

use crate::pool::Pool;
use crate::report::Snapshot;
use crate::server::{Admin, Health, Server};
use crate::state::State;
use shoal_gossip::escape;

/// Longest command line, in bytes.
pub const MAX_LINE: usize = 64 * 1024;
/// How long a session may take to send a line.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// One line of the `help` output per command, HAProxy style.
const HELP: &[(&str, &str)] = &[
    ("help", "list commands"),
    ("prompt", "toggle interactive mode with prompt"),
    ("quit", "disconnect"),
    ("show info", "report information about the running process"),
    ("show stat [json]", "report counters for each proxy and server"),
    ("show servers state [<backend>]", "dump volatile server information (all or for a single backend)"),
    ("set server <bk>/<srv> state ready|drain|maint", "change a server's administrative state"),
    ("set server <bk>/<srv> weight <w>", "change a server's weight (kept until changed again)"),
    ("disable server <bk>/<srv>", "disable a server for maintenance (use 'set server' instead)"),
    ("enable server <bk>/<srv>", "enable a disabled server (use 'set server' instead)"),
];

/// The `help` text (also the tail of an unknown command's error).
pub fn help() -> String {
    let width = HELP.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    let mut out = String::from("The following commands are valid at this level:\n");
    for (cmd, what) in HELP {
        let _ = writeln!(out, "  {cmd:<width$} : {what}");
    }
    out
}

/// Runs one command (no `;`) and returns its output, HAProxy style: empty on success
/// of a `set`, a message ending in a newline otherwise.
/// Compares two secrets in time independent of where they differ.
pub fn same_secret(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn execute(b: &State, command: &str) -> String {
    let words: Vec<&str> = command.split_whitespace().collect();
    match words.as_slice() {
        [] => String::new(),
        ["help", ..] => help(),
        ["show", "info", ..] => show_info(b),
        ["show", "stat", "json", ..] => format!("{:#}\n", Snapshot::collect(b).json()),
        ["show", "stat", ..] => Snapshot::collect(b).csv(),
        ["show", "servers", "state", rest @ ..] => show_servers_state(b, rest.first().copied()),
        ["set", "server", target, "state", state] => match parse_state(state) {
            Some(admin) => with_server(b, target, |pool, s| pool.set_admin(&s.name, admin, Instant::now())),
            None => "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n".into(),
        },
        ["set", "server", _, "state"] => {
            "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n".into()
        }
        ["set", "server", target, "weight", weight] => match weight.trim_end_matches('%').parse::<u32>() {
            Ok(w) if w <= 256 => {
                with_server(b, target, |pool, s| pool.set_weight(&s.name, w, Instant::now()))
            }
            _ => "Require <weight> or <weight%>: an integer from 0 to 256.\n".into(),
        },
        ["set", "server", _, "weight"] => "Require <weight> or <weight%>.\n".into(),
        ["set", "server", _, ..] => "'set server <srv>' only supports 'state' and 'weight'.\n".into(),
        ["set", "server"] => "Require 'backend/server'.\n".into(),
        ["disable", "server", target] => {
            with_server(b, target, |pool, s| pool.set_admin(&s.name, Admin::Maint, Instant::now()))
        }
        ["enable", "server", target] => {
            with_server(b, target, |pool, s| pool.set_admin(&s.name, Admin::Ready, Instant::now()))
        }
        ["disable" | "enable", "server", ..] => "Require 'backend/server'.\n".into(),
        _ => format!("Unknown command: '{}'\n\n{}", command.trim(), help()),
    }
}

fn parse_state(s: &str) -> Option<Admin> {
    match s {
        "ready" => Some(Admin::Ready),
        "drain" => Some(Admin::Drain),
        "maint" => Some(Admin::Maint),
        _ => None,
    }
}

/// Finds `pool/server` and applies `f`; HAProxy's messages when either is missing.
fn with_server(b: &State, target: &str, f: impl FnOnce(&Pool, &Server) -> bool) -> String {
    let Some((pool_name, server_name)) = target.split_once('/') else {
        return "Require 'backend/server'.\n".into();
    };
    let pools = b.pools();
    let Some(pool) = pools.get(pool_name) else { return "No such backend.\n".into() };
    let Some(server) = pool.server(server_name) else { return "No such server.\n".into() };
    if f(pool, &server) { String::new() } else { "No such server.\n".into() }
}

fn show_info(b: &State) -> String {
    let uptime = Instant::now().saturating_duration_since(b.started()).as_secs();
    let fronts = b.frontend_stats();
    let sum = |f: fn(&crate::metrics::FrontendStats) -> u64| fronts.iter().map(|(_, s)| f(s)).sum::<u64>();
    let members = b.members();
    let count = |st: shoal_gossip::MemberStatus| members.members.iter().filter(|m| m.status == st).count();
    let (days, hours, mins, secs) = (uptime / 86_400, uptime / 3600 % 24, uptime / 60 % 60, uptime % 60);
    let lines: Vec<(&str, String)> = vec![
        ("Name", "Shoal".into()),
        ("Version", env!("CARGO_PKG_VERSION").into()),
        ("Pid", std::process::id().to_string()),
        ("Uptime", format!("{days}d {hours}h{mins:02}m{secs:02}s")),
        ("Uptime_sec", uptime.to_string()),
        ("Maxconn", b.max_connections().to_string()),
        ("CurrConns", b.open_connections().to_string()),
        ("CumConns", sum(|s| s.connections.load(Ordering::Relaxed)).to_string()),
        ("CumReq", sum(|s| s.requests.load(Ordering::Relaxed)).to_string()),
        (
            "Nbthread",
            tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers()).to_string(),
        ),
        ("node", escape::field(&members.local.name).into_owned()),
        ("Members", members.members.len().to_string()),
        ("MembersAlive", count(shoal_gossip::MemberStatus::Alive).to_string()),
        ("MembersLeaving", count(shoal_gossip::MemberStatus::Leaving).to_string()),
        ("MembersLeft", count(shoal_gossip::MemberStatus::Left).to_string()),
        ("MembersFailed", count(shoal_gossip::MemberStatus::Failed).to_string()),
        (
            "MembersRefused",
            b.pools().values().map(|p| p.members_refused.load(Ordering::Relaxed)).sum::<u64>().to_string(),
        ),
    ];
    lines.into_iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
}

/// HAProxy's check status numbers (`HCHK_STATUS_*`) for `show servers state`.
fn check_status_number(s: &Server) -> u8 {
    use crate::server::CheckStatus::*;
    let last = s.last_check.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|c| c.status);
    match last {
        None => 1,               // INI
        Some(Passed) => 15,      // L7OKD
        Some(WrongStatus) => 17, // L7STS
        Some(Refused) => 8,      // L4CON
        Some(Timeout) => 12,     // L7TOUT
        Some(BadResponse) => 13, // L7RSP
    }
}

fn show_servers_state(b: &State, only: Option<&str>) -> String {
    let pools = b.pools();
    if let Some(name) = only
        && !pools.contains_key(name)
    {
        return format!("Can't find backend '{name}'.\n");
    }
    let now = Instant::now();
    let mut out = String::from(
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight \
         srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state \
         srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl \
         srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n",
    );
    for pool in pools.values().filter(|p| only.is_none_or(|o| o == p.cfg.name)) {
        let checked = pool.cfg.health.enabled;
        for s in pool.servers() {
            let running = s.eligible(now) || (s.admin() != Admin::Ready && s.health() == Health::Up);
            let admin_bits = match s.admin() {
                Admin::Ready => 0,
                Admin::Drain => 0x08,
                Admin::Maint => 0x01,
            };
            let (status, result) = match (checked, s.health()) {
                (false, _) => (0, 0),
                (true, Health::Up) => (check_status_number(&s), 3),
                (true, Health::Down) => (check_status_number(&s), 2),
                (true, Health::Unknown) => (check_status_number(&s), 1),
            };
            let health = if s.health() == Health::Up { pool.cfg.health.fall } else { 0 };
            let weight = s.weight.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{} {} {} {} {} {} {} {weight} {weight} {} {status} {result} {health} {} 0 0 0 - {} - 0 0 - - 0",
                pool.id,
                escape::field(&pool.cfg.name),
                s.id,
                escape::field(&s.name),
                s.addr.ip(),
                if running { 2 } else { 0 },
                admin_bits,
                s.since_last_change(now).as_secs(),
                if checked { 6 } else { 0 },
                s.addr.port(),
            );
        }
    }
    out
}

/// Runs a line of `;`-separated commands; `authorized` tracks `auth TOKEN` on TCP.
fn execute_line(b: &State, line: &str, token: Option<&str>, authorized: &mut bool) -> String {
    let mut out = String::new();
    for command in line.split(';').map(str::trim).filter(|c| !c.is_empty()) {
        if let Some(given) = command.strip_prefix("auth ") {
            *authorized = token.is_some_and(|t| same_secret(t, given.trim()));
            if !*authorized {
                out.push_str("Permission denied: wrong token.\n");
                return out;
            }
            continue;
        }
        if !*authorized {
            out.push_str("Permission denied: send 'auth <token>' first.\n");
            return out;
        }
        out.push_str(&execute(b, command));
    }
    out
}

/// What reading a command line came to.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    /// A line (without its end).
    Line(String),
    /// The client closed.
    End,
    /// The line went over [`MAX_LINE`].
    TooLong,
}

/// Reads one line of at most [`MAX_LINE`] bytes, without holding more than that.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Read> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if line.is_empty() {
                Read::End
            } else {
                Read::Line(String::from_utf8_lossy(&line).into())
            });
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if line.len() + take > MAX_LINE {
            return Ok(Read::TooLong);
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take + usize::from(done));
        if done {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Read::Line(String::from_utf8_lossy(&line).into()));
        }
    }
}

/// Serves one CLI connection: a line of commands, or many after `prompt`.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    b: Arc<State>,
    stream: S,
    token: Option<String>,
) -> io::Result<()> {
    let mut authorized = token.is_none();
    let (read, mut write) = tokio::io::split(stream);
    let mut read = BufReader::new(read);
    let mut interactive = false;
    loop {
        let line = match tokio::time::timeout(LINE_TIMEOUT, read_line(&mut read)).await {
            Ok(Ok(Read::Line(line))) => line,
            Ok(Ok(Read::TooLong)) => {
                let msg = format!("Command line too long: at most {MAX_LINE} bytes.\n\n");
                write.write_all(msg.as_bytes()).await?;
                return write.shutdown().await;
            }
            _ => return Ok(()),
        };
        let mut rest = line.trim();
        if rest == "prompt" || rest.starts_with("prompt;") {
            interactive = !interactive;
            rest = rest.trim_start_matches("prompt").trim_start_matches(';');
        }
        if rest == "quit" {
            return Ok(());
        }
        let mut out = execute_line(&b, rest, token.as_deref(), &mut authorized);
        if !interactive {
            // HAProxy ends each answer with an empty line.
            out.push('\n');
            write.write_all(out.as_bytes()).await?;
            return write.shutdown().await;
        }
        out.push_str("\n> ");
        write.write_all(out.as_bytes()).await?;
    }
}

/// Binds the unix socket (mode 0600), replacing a stale one; refuses if a live balancer owns it.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(io::ErrorKind::AddrInUse, "another process serves this socket"));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the runtime API on a unix socket (no token: the file's permissions guard it), at
/// most as many sessions at once as `permits` holds.
pub async fn serve_unix(listener: UnixListener, b: Arc<State>, permits: Arc<Semaphore>) {
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let b = b.clone();
        tokio::spawn(async move {
            let _ = session(b, stream, None).await;
            drop(permit);
        });
    }
}

/// Serves the runtime API on TCP; with a token, `auth TOKEN` must come first. At most as many
/// sessions at once as `permits` holds (beyond, connections wait to be accepted).
pub async fn serve_tcp(listener: TcpListener, b: Arc<State>, token: Option<String>, permits: Arc<Semaphore>) {
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let (b, token) = (b.clone(), token.clone());
        tokio::spawn(async move {
            let _ = session(b, stream, token).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_within_their_bound() {
        let input = format!("show info\r\nhelp\n{}\n", "x".repeat(MAX_LINE + 1));
        let mut r = BufReader::with_capacity(1024, input.as_bytes());
        assert_eq!(read_line(&mut r).await.unwrap(), Read::Line("show info".into()));
        assert_eq!(read_line(&mut r).await.unwrap(), Read::Line("help".into()));
        assert_eq!(read_line(&mut r).await.unwrap(), Read::TooLong);
        let exact = format!("{}\n", "y".repeat(MAX_LINE));
        let mut r = BufReader::with_capacity(1024, exact.as_bytes());
        assert!(matches!(read_line(&mut r).await.unwrap(), Read::Line(l) if l.len() == MAX_LINE));
        assert_eq!(read_line(&mut r).await.unwrap(), Read::End);
        let mut r = BufReader::new(&b"quit"[..]);
        assert_eq!(
            read_line(&mut r).await.unwrap(),
            Read::Line("quit".into()),
            "a last line without its end"
        );
    }
}
