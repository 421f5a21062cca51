//! `shoal init`: PID 1 of a container, in place of s6-overlay's `/init`.
//!
//! It runs `/etc/cont-init.d/*` in order, supervises every
//! `/etc/services.d/<name>/run` ([`service`]), optionally runs a main command
//! whose exit code becomes the container's, forwards signals, and on
//! SIGTERM/SIGINT stops the services in their declared `stop-order` (so a
//! gossip agent leaves before the app behind it stops), then SIGKILLs what is
//! left after the grace time and runs `/etc/cont-finish.d/*`. Every child and
//! every orphan is reaped by one component ([`reaper`]).

mod live;
pub mod reaper;
pub mod s6;
pub mod service;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

pub use reaper::{Exit, Reaper};
pub use service::{OnFailure, ServiceDef, StopReason};

/// Where things are and how to behave.
#[derive(Debug, Clone)]
pub struct InitConfig {
    /// Scripts run once, in name order, before the services.
    pub cont_init_dir: PathBuf,
    /// One folder per service, each with an executable `run`.
    pub services_dir: PathBuf,
    /// Scripts run once, in name order, after the services stopped.
    pub cont_finish_dir: PathBuf,
    /// Time each stop-order group gets after SIGTERM before SIGKILL.
    pub grace: Duration,
    /// Least time between two starts of a service (at least 1 s).
    pub restart_delay: Duration,
    /// What to do when a service keeps failing.
    pub on_failure: OnFailure,
    /// The main command, whose exit ends the container with its code.
    pub main: Vec<String>,
    /// Where the services appear for s6's tools (`s6-svc`, `s6-svstat`, `s6-svscanctl`): the
    /// first holds each service's `supervise/` folder, the others become links to it.
    pub scan_dirs: Vec<PathBuf>,
    /// Where the container's environment is written, one file per variable, for `with-contenv`
    /// (none: not written).
    pub contenv_dir: Option<PathBuf>,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig {
            cont_init_dir: "/etc/cont-init.d".into(),
            services_dir: "/etc/services.d".into(),
            cont_finish_dir: "/etc/cont-finish.d".into(),
            grace: Duration::from_secs(10),
            restart_delay: Duration::from_secs(1),
            on_failure: OnFailure::Restart,
            main: Vec::new(),
            scan_dirs: vec!["/run/service".into(), "/var/run/s6/services".into()],
            contenv_dir: Some("/run/s6/container_environment".into()),
        }
    }
}

/// Errors that keep init from starting.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The services folder could not be read.
    #[error("cannot read services in {dir}: {source}")]
    Services {
        /// The folder.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// The scripts of a `*.d` folder, in name order.
fn scripts(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| Some(e.ok()?.path())).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Runs each script of `dir` to its end (at most `limit` each), logging failures.
async fn run_stage(reaper: &Reaper, dir: &Path, limit: Duration) {
    for script in scripts(dir) {
        let name = script.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let mut cmd = service::script_command(&script);
        match service::spawn_logged(reaper, &name, &mut cmd) {
            Ok((pid, exit)) => match tokio::time::timeout(limit, exit).await {
                Ok(Ok(e)) if e.success() => tracing::debug!(script = %script.display(), "done"),
                Ok(Ok(e)) => tracing::warn!(script = %script.display(), %e, "failed; going on"),
                _ => {
                    tracing::warn!(script = %script.display(), ?limit, "did not finish in time; killed");
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                }
            },
            Err(e) => tracing::warn!(script = %script.display(), error = %e, "cannot run; going on"),
        }
    }
}

/// Runs everything until the container should stop; returns its exit code.
pub async fn run(cfg: InitConfig) -> Result<i32, InitError> {
    if std::process::id() != 1 {
        // Not PID 1 (tests, or a runtime's own init): still adopt orphans, to reap them.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(error = %e, "cannot become a child subreaper: orphans will not be reaped here");
        }
    }
    let reaper = Reaper::start().map_err(InitError::Signals)?;
    let mut term = signal(SignalKind::terminate()).map_err(InitError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(InitError::Signals)?;
    let (forward_tx, mut forward_rx) = mpsc::unbounded_channel();
    for (kind, sig) in [
        (SignalKind::hangup(), Signal::SIGHUP),
        (SignalKind::user_defined1(), Signal::SIGUSR1),
        (SignalKind::user_defined2(), Signal::SIGUSR2),
        (SignalKind::quit(), Signal::SIGQUIT),
        (SignalKind::window_change(), Signal::SIGWINCH),
    ] {
        let mut stream = signal(kind).map_err(InitError::Signals)?;
        let tx = forward_tx.clone();
        tokio::spawn(async move { while stream.recv().await.is_some() && tx.send(sig).is_ok() {} });
    }

    if let Some(dir) = &cfg.contenv_dir {
        live::dump_environment(dir);
    }
    run_stage(&reaper, &cfg.cont_init_dir, Duration::from_secs(300)).await;
    let defs = service::discover(&cfg.services_dir)
        .map_err(|source| InitError::Services { dir: cfg.services_dir.clone(), source })?;
    let (stopping_tx, stopping) = watch::channel(false);
    let (stop_tx, mut stop_rx) = mpsc::unbounded_channel();
    let how = service::Supervision {
        reaper: reaper.clone(),
        restart_delay: cfg.restart_delay.max(Duration::from_secs(1)),
        on_failure: cfg.on_failure,
        stopping,
        stop: stop_tx.clone(),
    };
    let scan = live::ScanDir::prepare(&cfg.scan_dirs);
    let mut svscan_letters = scan.as_ref().and_then(live::ScanDir::control);
    let mut handles: Vec<service::Handle> =
        defs.into_iter().map(|d| live::supervise(scan.as_ref(), d, &how)).collect();
    tracing::info!(services = handles.len(), dir = %cfg.services_dir.display(), "supervising");

    let mut main_pid = None;
    if let Some((program, args)) = cfg.main.split_first() {
        let mut cmd = Command::new(program);
        cmd.args(args);
        match reaper.spawn(&mut cmd) {
            Ok((child, exit)) => {
                main_pid = Some(child.id() as i32);
                let tx = stop_tx.clone();
                tokio::spawn(async move {
                    let exit = exit.await.unwrap_or(Exit::Code(1));
                    let _ = tx.send(StopReason::Main(exit));
                });
            }
            Err(e) => {
                tracing::error!(command = %program, error = %e, "cannot start the main command");
                let _ = stop_tx.send(StopReason::Main(Exit::Code(127)));
            }
        }
    }

    let reason = loop {
        tokio::select! {
            _ = term.recv() => break StopReason::Signal,
            _ = int.recv() => break StopReason::Signal,
            Some(r) = stop_rx.recv() => break r,
            Some(letter) = async { svscan_letters.as_mut()?.recv().await }, if svscan_letters.is_some() => {
                match letter {
                    b'a' | b'h' => live::rescan(scan.as_ref(), &cfg.services_dir, &how, &mut handles),
                    b't' | b'i' | b'q' | b'b' => {
                        tracing::info!(command = %char::from(letter), "s6-svscanctl: stopping the container");
                        break StopReason::Signal;
                    }
                    _ => {}
                }
            }
            Some(sig) = forward_rx.recv() => {
                tracing::info!(signal = sig.as_str(), "forwarding");
                for h in &handles {
                    h.signal(sig);
                }
                if let Some(pid) = main_pid {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
                }
            }
        }
    };
    tracing::info!(?reason, "stopping the container");
    let _ = stopping_tx.send(true);
    drop(svscan_letters.take());
    stop_services(&handles, cfg.grace).await;
    if let (Some(pid), StopReason::Signal | StopReason::Failing) = (main_pid, reason) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
    }
    run_stage(&reaper, &cfg.cont_finish_dir, cfg.grace).await;
    // Whatever is left gets the end of the grace, then SIGKILL (as PID 1, its exit kills it anyway).
    reaper.reap();
    Ok(match reason {
        StopReason::Signal => 0,
        StopReason::Main(exit) => exit.code(),
        StopReason::Failing => 1,
    })
}

/// Stops services group by group in ascending stop-order: SIGTERM, wait up to `grace`,
/// then SIGKILL.
async fn stop_services(handles: &[service::Handle], grace: Duration) {
    let mut orders: Vec<i64> = handles.iter().map(|h| h.def.stop_order).collect();
    orders.sort_unstable();
    orders.dedup();
    for order in orders {
        let group: Vec<&service::Handle> = handles.iter().filter(|h| h.def.stop_order == order).collect();
        let names: Vec<&str> = group.iter().map(|h| h.def.name.as_str()).collect();
        tracing::info!(stop_order = order, services = ?names, "stopping");
        for h in &group {
            h.signal(Signal::SIGTERM);
        }
        let all_done = async {
            for h in &group {
                let mut done = h.done.clone();
                let _ = done.wait_for(|d| *d).await;
            }
        };
        if tokio::time::timeout(grace, all_done).await.is_err() {
            for h in &group {
                if !*h.done.borrow() {
                    tracing::warn!(service = %h.def.name, ?grace, "still running after the grace time: SIGKILL");
                    h.signal(Signal::SIGKILL);
                }
            }
            for h in &group {
                let mut done = h.done.clone();
                let _ = tokio::time::timeout(Duration::from_secs(5), done.wait_for(|d| *d)).await;
            }
        }
    }
}
