//! The runtime API: HAProxy 2.6's management commands on a unix socket, optionally on TCP,
//! and behind `POST /;cmd` on the stats listener. [`execute`] runs one command; the modules
//! below do the work: [`cli`] (the command list, `help`, unknown commands), [`info`]
//! (`show info`, `show version`, `show env`), [`stat`] (`show stat`), [`servers`]
//! (`show servers state|conn`, `show backend`) and [`steer`] (`set server`, weights,
//! `enable`/`disable`, `add`/`del server`, `clear counters`).
//!
//! Like HAProxy's CLI, a connection sends one line of commands separated by `;`; each
//! command's output is followed by an empty line; after `prompt` the connection stays open
//! and each answer ends with `\n> `. On TCP with a token configured, the first command must
//! be `auth TOKEN`. A line is at most [`MAX_LINE`] bytes (a longer one is answered with an
//! error and the connection closed), and `limits.max_admin_connections` sessions run at once.
//! Member names and every other peer-supplied text in the output are escaped
//! ([`shoal_gossip::escape`]).

mod cli;
mod info;
mod servers;
mod stat;
mod steer;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

use crate::server::Admin;
use crate::state::State;
use steer::answer;

/// Longest command line, in bytes.
pub const MAX_LINE: usize = 64 * 1024;
/// How long a session may take to send a line.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs one command (no `;`) and returns its output as HAProxy prints it, without the empty
/// line that ends every answer: nothing for a change that worked, a message otherwise.
pub fn execute(b: &State, command: &str) -> String {
    let args: Vec<&str> = command.split_whitespace().collect();
    match args.as_slice() {
        [] => String::new(),
        ["help", rest @ ..] => cli::usage(rest, true),
        ["show", "info", rest @ ..] => info::show_info(b, rest),
        ["show", "version", ..] => info::show_version(),
        ["show", "env", rest @ ..] => info::show_env(rest.first().copied()),
        ["show", "stat", rest @ ..] => stat::show_stat(b, rest),
        ["show", "servers", "state", rest @ ..] => servers::state(b, rest.first().copied()),
        ["show", "servers", "conn", rest @ ..] => servers::conn(b, rest.first().copied()),
        ["show", "backend", ..] => servers::backends(b),
        ["set", "server", rest @ ..] => answer(steer::set_server(b, rest)),
        ["enable", "server", rest @ ..] => answer(steer::set_admin(b, rest, Admin::Ready)),
        ["disable", "server", rest @ ..] => answer(steer::set_admin(b, rest, Admin::Maint)),
        ["get", "weight", rest @ ..] => answer(steer::get_weight(b, rest)),
        ["set", "weight", rest @ ..] => answer(steer::set_weight(b, rest)),
        ["add", "server", rest @ ..] => steer::add_server(b, rest),
        ["del", "server", rest @ ..] => steer::del_server(b, rest),
        // Sessions end after `LINE_TIMEOUT` idle whatever is asked (hatop asks for 60 s).
        ["set", "timeout", "cli", delay] if delay.parse::<u32>().is_ok() => String::new(),
        ["set", "timeout", ..] => "'set timeout' only supports 'cli'.\n".into(),
        ["clear", "counters", rest @ ..] => steer::clear_counters(b, rest.first() == Some(&"all")),
        _ => cli::usage(&args, false),
    }
}

/// Runs a line of `;`-separated commands, each answer followed by `end` (HAProxy's empty
/// line, or `\n> ` in prompt mode); `authorized` tracks `auth TOKEN` on TCP.
fn execute_line(b: &State, line: &str, token: Option<&str>, authorized: &mut bool, end: &str) -> String {
    let mut out = String::new();
    for command in line.split(';').map(str::trim).filter(|c| !c.is_empty()) {
        if let Some(given) = command.strip_prefix("auth ") {
            *authorized = token.is_some_and(|t| same_secret(t, given.trim()));
            if !*authorized {
                out.push_str("Permission denied: wrong token.\n");
                out.push_str(end);
                return out;
            }
            continue;
        }
        if !*authorized {
            out.push_str("Permission denied: send 'auth <token>' first.\n");
            out.push_str(end);
            return out;
        }
        out.push_str(&execute(b, command));
        out.push_str(end);
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
        let end = if interactive { "\n> " } else { "\n" };
        let mut out = execute_line(&b, rest, token.as_deref(), &mut authorized, end);
        if out.is_empty() {
            // An empty line, or only `auth`: HAProxy's empty answer.
            out.push_str(end);
        }
        write.write_all(out.as_bytes()).await?;
        if !interactive {
            return write.shutdown().await;
        }
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
