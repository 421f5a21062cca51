//! The one owner of every child wait: processes are spawned through the
//! [`Reaper`], which reaps with `waitpid(-1)` on SIGCHLD and hands each exit
//! status to whoever spawned that pid. Orphans re-parented to us (as PID 1 or
//! as a child subreaper) are reaped too, so no zombie outlives its parent.
//!
//! Nothing else in the process may wait for children (no `std`/tokio
//! `Child::wait`): a `waitpid(-1)` would otherwise steal their statuses.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl Exit {
    /// The shell's convention: the code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }

    /// Whether it exited 0.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => {
                let name = nix::sys::signal::Signal::try_from(*s).map_or("?", |s| s.as_str());
                write!(f, "signal {s} ({name})")
            }
        }
    }
}

type Waiters = HashMap<i32, oneshot::Sender<Exit>>;

/// Spawns processes and reaps every child of this process.
#[derive(Clone, Debug)]
pub struct Reaper {
    waiters: Arc<Mutex<Waiters>>,
}

impl Reaper {
    /// Starts reaping on SIGCHLD (and every second, in case signals were merged).
    pub fn start() -> io::Result<Reaper> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Reaper { waiters: Arc::default() };
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                let _ = tokio::time::timeout(Duration::from_secs(1), sigchld.recv()).await;
                r.reap();
            }
        });
        Ok(reaper)
    }

    /// Spawns `cmd`; the receiver gets its exit status.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, oneshot::Receiver<Exit>)> {
        let (tx, rx) = oneshot::channel();
        // Held across spawn and insert: the reaper cannot collect the child before we listen.
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn()?;
        waiters.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    /// Collects every exited child now.
    pub fn reap(&self) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) | Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return;
                }
            };
            match waiters.remove(&pid.as_raw()) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => tracing::debug!(pid = pid.as_raw(), %exit, "reaped an orphan"),
            }
        }
    }
}
