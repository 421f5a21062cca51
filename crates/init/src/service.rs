//! One supervised service: `/etc/services.d/<name>/run`, restarted when it
//! exits (at least a second apart), with its optional `finish` script, `down`
//! file and `stop-order`. Its output goes to our stdout, each line prefixed
//! with its name.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::reaper::{Exit, Reaper};

/// A `finish` script exiting with this code keeps the service down for good (s6's rule).
pub const PERMANENTLY_DOWN: i32 = 125;

/// What a service folder declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDef {
    /// The folder's name.
    pub name: String,
    /// Its folder.
    pub dir: PathBuf,
    /// A `down` file: do not start it.
    pub down: bool,
    /// From the `stop-order` file: lower numbers stop first (default 0).
    pub stop_order: i64,
}

/// The services in `dir`, by name. A missing folder means no services.
pub fn discover(dir: &Path) -> std::io::Result<Vec<ServiceDef>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut services = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if !path.join("run").is_file() {
            continue;
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stop_order = match std::fs::read_to_string(path.join("stop-order")) {
            Ok(text) => text.trim().parse().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: stop-order must be an integer, not {:?}", path.display(), text.trim()),
                )
            })?,
            Err(_) => 0,
        };
        services.push(ServiceDef { down: path.join("down").exists(), stop_order, dir: path, name });
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(services)
}

/// A command for a script: run directly when executable (its shebang decides), else by `/bin/sh`.
pub fn script_command(path: &Path) -> Command {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
    if executable {
        Command::new(path)
    } else {
        let mut c = Command::new("/bin/sh");
        c.arg(path);
        c
    }
}

/// Copies a child's output to our stdout, one prefixed line at a time.
pub fn forward_output(name: &str, from: impl Read + Send + 'static) {
    let prefix = format!("[{name}] ");
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            if line.last() != Some(&b'\n') {
                line.push(b'\n');
            }
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(prefix.as_bytes()).and_then(|()| out.write_all(&line));
            line.clear();
        }
    });
}

/// Spawns `cmd` with its output prefixed by `name`; returns its pid and exit.
pub fn spawn_logged(
    reaper: &Reaper,
    name: &str,
    cmd: &mut Command,
) -> std::io::Result<(i32, tokio::sync::oneshot::Receiver<Exit>)> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let (mut child, exit) = reaper.spawn(cmd)?;
    if let Some(out) = child.stdout.take() {
        forward_output(name, out);
    }
    if let Some(err) = child.stderr.take() {
        forward_output(name, err);
    }
    Ok((child.id() as i32, exit))
}

/// What the container does when a service keeps failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Restart it forever.
    Restart,
    /// Stop the container (exit 1) after this many failures in a row.
    StopAfter(u32),
}

/// A running supervisor's handle, for the stop sequence.
#[derive(Debug, Clone)]
pub struct Handle {
    /// Its definition.
    pub def: ServiceDef,
    /// The current process (0 between runs).
    pub pid: Arc<AtomicI32>,
    /// True once the supervisor will never run it again.
    pub done: watch::Receiver<bool>,
}

impl Handle {
    /// Sends `sig` to the running process, if any.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.pid.load(Ordering::SeqCst);
        if pid > 0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    }
}

/// Why the container should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// SIGTERM or SIGINT.
    Signal,
    /// The main command exited.
    Main(Exit),
    /// A service failed too often.
    Failing,
}

/// A run shorter than this that fails counts towards `StopAfter`.
const STABLE: Duration = Duration::from_secs(10);

/// Supervises one service until `stopping` turns true (or it is permanently down).
pub fn supervise(
    def: ServiceDef,
    reaper: Reaper,
    restart_delay: Duration,
    on_failure: OnFailure,
    stopping: watch::Receiver<bool>,
    stop: tokio::sync::mpsc::UnboundedSender<StopReason>,
) -> Handle {
    let pid = Arc::new(AtomicI32::new(0));
    let (done_tx, done) = watch::channel(def.down);
    let handle = Handle { def: def.clone(), pid: pid.clone(), done };
    if def.down {
        tracing::info!(service = %def.name, "not started: it has a `down` file");
        return handle;
    }
    tokio::spawn(async move {
        let mut stopping = stopping;
        let mut failures = 0u32;
        let mut last_start: Option<Instant> = None;
        while !*stopping.borrow() {
            if let Some(t) = last_start {
                let wait = restart_delay.saturating_sub(t.elapsed());
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = stopping.changed() => break,
                }
            }
            last_start = Some(Instant::now());
            let started = Instant::now();
            let mut cmd = script_command(&def.dir.join("run"));
            cmd.current_dir(&def.dir);
            let exit = match spawn_logged(&reaper, &def.name, &mut cmd) {
                Ok((p, exit)) => {
                    pid.store(p, Ordering::SeqCst);
                    tracing::info!(service = %def.name, pid = p, "started");
                    exit.await.unwrap_or(Exit::Code(-1))
                }
                Err(e) => {
                    tracing::error!(service = %def.name, error = %e, "cannot start");
                    Exit::Code(-1)
                }
            };
            pid.store(0, Ordering::SeqCst);
            let stopping_now = *stopping.borrow();
            if stopping_now {
                tracing::info!(service = %def.name, %exit, "stopped");
            } else {
                tracing::warn!(service = %def.name, %exit, ran = ?started.elapsed(), "exited; restarting");
            }
            if finish(&def, exit, &reaper).await == Some(PERMANENTLY_DOWN) {
                tracing::warn!(service = %def.name, "finish exited 125: the service stays down");
                break;
            }
            if stopping_now {
                break;
            }
            failures = if exit.success() || started.elapsed() >= STABLE { 0 } else { failures + 1 };
            if let OnFailure::StopAfter(n) = on_failure
                && failures >= n
            {
                tracing::error!(service = %def.name, failures, "keeps failing: stopping the container");
                let _ = stop.send(StopReason::Failing);
                break;
            }
        }
        let _ = done_tx.send(true);
    });
    handle
}

/// Runs the service's `finish EXITCODE SIGNAL` (s6's arguments: 256 and the signal when
/// killed by one); returns its exit code.
async fn finish(def: &ServiceDef, exit: Exit, reaper: &Reaper) -> Option<i32> {
    let path = def.dir.join("finish");
    if !path.is_file() {
        return None;
    }
    let (code, sig) = match exit {
        Exit::Code(c) => (c, 0),
        Exit::Signal(s) => (256, s),
    };
    let mut cmd = script_command(&path);
    cmd.current_dir(&def.dir).arg(code.to_string()).arg(sig.to_string());
    let name = format!("{}/finish", def.name);
    let (_, exit) = spawn_logged(reaper, &name, &mut cmd).ok()?;
    match tokio::time::timeout(Duration::from_secs(5), exit).await {
        Ok(Ok(e)) => Some(e.code()),
        _ => {
            tracing::warn!(service = %def.name, "finish script did not end within 5s");
            None
        }
    }
}
