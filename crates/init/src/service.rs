//! One supervised service: `/etc/services.d/<name>/run`, restarted when it
//! exits (at least a second apart), with its optional `finish` script, `down`
//! file, `down-signal` and `stop-order`, driven by s6's control letters. Its
//! output goes to our stdout, each line prefixed with its name.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::reaper::{Exit, Reaper};
use crate::s6::{self, Status, SuperviseDir};

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

/// What a supervisor needs besides its service.
#[derive(Debug, Clone)]
pub struct Supervision {
    /// Spawns and reaps.
    pub reaper: Reaper,
    /// Least time between two starts.
    pub restart_delay: Duration,
    /// What to do when the service keeps failing.
    pub on_failure: OnFailure,
    /// Turns true when the container stops.
    pub stopping: watch::Receiver<bool>,
    /// Where to ask for the container to stop.
    pub stop: tokio::sync::mpsc::UnboundedSender<StopReason>,
}

/// Supervises one service until `stopping` turns true, or `s6-svc -x` asks its supervisor to
/// end. With `control` (its folder in the scan folder), s6's tools drive it: `supervise/control`
/// takes `s6-svc`'s letters and `supervise/status` tells `s6-svstat` how it is.
pub fn supervise(def: ServiceDef, how: Supervision, control: Option<SuperviseDir>) -> Handle {
    let pid = Arc::new(AtomicI32::new(0));
    let (done_tx, done) = watch::channel(false);
    let handle = Handle { def: def.clone(), pid: pid.clone(), done };
    if def.down {
        tracing::info!(service = %def.name, "not started: it has a `down` file");
    }
    let letters = control.as_ref().and_then(|c| match read_letters(&c.control_path()) {
        Ok(rx) => Some(rx),
        Err(e) => {
            tracing::warn!(service = %def.name, error = %e, "cannot read supervise/control: s6-svc will not reach it");
            None
        }
    });
    let supervisor = Supervisor::new(def, how, control, pid);
    tokio::spawn(async move {
        supervisor.run(letters).await;
        let _ = done_tx.send(true);
    });
    handle
}

/// Reads a control FIFO one letter at a time. It is opened read-write, so it never reports end
/// of file when a writer leaves.
pub(crate) fn read_letters(fifo: &Path) -> std::io::Result<tokio::sync::mpsc::Receiver<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut fifo = tokio::net::unix::pipe::OpenOptions::new().read_write(true).open_receiver(fifo)?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = fifo.read(&mut buf).await {
            for &letter in &buf[..n] {
                if tx.send(letter).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// One service's supervisor: s6-supervise's states (down, up, finishing) and its commands.
struct Supervisor {
    def: ServiceDef,
    how: Supervision,
    control: Option<SuperviseDir>,
    pid: Arc<AtomicI32>,
    status: Status,
    /// `s6-svc -o` on a down service: start it once.
    start_once: bool,
    /// `s6-svc -x`: end the supervisor once the service is down.
    exit_when_down: bool,
    /// Earliest next start.
    next_start: tokio::time::Instant,
    failures: u32,
}

impl Supervisor {
    fn new(
        def: ServiceDef,
        how: Supervision,
        control: Option<SuperviseDir>,
        pid: Arc<AtomicI32>,
    ) -> Supervisor {
        let status = Status::new(!def.down, SystemTime::now());
        let supervisor = Supervisor {
            def,
            how,
            control,
            pid,
            status,
            start_once: false,
            exit_when_down: false,
            next_start: tokio::time::Instant::now(),
            failures: 0,
        };
        supervisor.announce(b"s");
        supervisor
    }

    /// Publishes the status and tells `event/` listeners what happened (nothing if `event` is empty).
    fn announce(&self, event: &[u8]) {
        if let Some(c) = &self.control {
            if let Err(e) = c.write_status(&self.status) {
                tracing::warn!(service = %self.def.name, error = %e, "cannot write supervise/status");
            }
            if !event.is_empty() {
                c.announce(event);
            }
        }
    }

    async fn run(mut self, mut letters: Option<tokio::sync::mpsc::Receiver<u8>>) {
        let mut stopping = self.how.stopping.clone();
        let mut running: Option<(Instant, tokio::sync::oneshot::Receiver<Exit>)> = None;
        loop {
            let stopping_now = *stopping.borrow();
            if running.is_none() {
                if stopping_now || self.exit_when_down {
                    break;
                }
                if (self.status.want_up || self.start_once) && tokio::time::Instant::now() >= self.next_start
                {
                    self.start_once = false;
                    running = self.start();
                    continue;
                }
            }
            let may_start = running.is_none() && (self.status.want_up || self.start_once);
            tokio::select! {
                exit = async { (&mut running.as_mut().expect("guarded").1).await }, if running.is_some() => {
                    let (started, _) = running.take().expect("guarded");
                    let stopping_now = *stopping.borrow();
                    self.exited(exit.unwrap_or(Exit::Code(-1)), started, stopping_now).await;
                }
                Some(letter) = async { letters.as_mut()?.recv().await }, if letters.is_some() => self.command(letter),
                () = tokio::time::sleep_until(self.next_start), if may_start => {}
                changed = stopping.changed(), if !stopping_now => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        if self.exit_when_down {
            tracing::info!(service = %self.def.name, "supervisor ends (s6-svc -x)");
        }
        self.announce(b"x");
    }

    /// Starts the run script; `None` when it cannot be spawned (tried again after the delay).
    fn start(&mut self) -> Option<(Instant, tokio::sync::oneshot::Receiver<Exit>)> {
        self.next_start = tokio::time::Instant::now() + self.how.restart_delay;
        let mut cmd = script_command(&self.def.dir.join("run"));
        cmd.current_dir(&self.def.dir);
        match spawn_logged(&self.how.reaper, &self.def.name, &mut cmd) {
            Ok((p, exit)) => {
                self.pid.store(p, Ordering::SeqCst);
                tracing::info!(service = %self.def.name, pid = p, "started");
                self.status.pid = p.unsigned_abs();
                self.status.ready = false;
                self.status.paused = false;
                self.status.stamp = SystemTime::now();
                self.announce(b"u");
                Some((Instant::now(), exit))
            }
            Err(e) => {
                tracing::error!(service = %self.def.name, error = %e, "cannot start");
                None
            }
        }
    }

    /// The run script ended: runs `finish`, then decides whether it comes back.
    async fn exited(&mut self, exit: Exit, started: Instant, stopping: bool) {
        self.pid.store(0, Ordering::SeqCst);
        if stopping {
            tracing::info!(service = %self.def.name, %exit, "stopped");
        } else if self.status.want_up {
            tracing::warn!(service = %self.def.name, %exit, ran = ?started.elapsed(), "exited; restarting");
        } else {
            tracing::info!(service = %self.def.name, %exit, "exited; stays down");
        }
        self.status.wstat = s6::wstat(exit);
        self.status.stamp = SystemTime::now();
        self.status.paused = false;
        self.status.finishing = true;
        self.announce(b"d");
        let finished = finish(&self.def, exit, &self.how.reaper).await;
        self.status.pid = 0;
        self.status.finishing = false;
        self.status.ready = true;
        self.status.ready_stamp = SystemTime::now();
        if finished == Some(PERMANENTLY_DOWN) {
            tracing::warn!(service = %self.def.name, "finish exited 125: the service stays down");
            self.status.want_up = false;
            self.announce(b"OD");
            return;
        }
        self.announce(b"D");
        if stopping || !self.status.want_up {
            return;
        }
        self.failures = if exit.success() || started.elapsed() >= STABLE { 0 } else { self.failures + 1 };
        if let OnFailure::StopAfter(n) = self.how.on_failure
            && self.failures >= n
        {
            tracing::error!(service = %self.def.name, failures = self.failures, "keeps failing: stopping the container");
            let _ = self.how.stop.send(StopReason::Failing);
            self.status.want_up = false;
        }
    }

    /// One letter of `supervise/control`, as s6-supervise acts on it (unknown letters ignored).
    fn command(&mut self, letter: u8) {
        use nix::sys::signal::Signal::*;
        let up = self.status.pid != 0 && !self.status.finishing;
        let signal = match letter {
            b'a' => Some(SIGALRM),
            b'b' => Some(SIGABRT),
            b'q' => Some(SIGQUIT),
            b'h' => Some(SIGHUP),
            b'k' => Some(SIGKILL),
            b't' => Some(SIGTERM),
            b'i' => Some(SIGINT),
            b'1' => Some(SIGUSR1),
            b'2' => Some(SIGUSR2),
            b'p' => Some(SIGSTOP),
            b'c' => Some(SIGCONT),
            b'y' => Some(SIGWINCH),
            b'r' => Some(down_signal(&self.def.dir)),
            _ => None,
        };
        tracing::debug!(service = %self.def.name, command = %char::from(letter), "s6-svc");
        if let Some(sig) = signal {
            if up {
                self.kill(sig);
                if matches!(letter, b'p' | b'c') {
                    self.status.paused = letter == b'p';
                    self.announce(b"");
                }
            }
            return;
        }
        match letter {
            b'u' | b'U' => {
                if letter == b'U' {
                    self.set_down_file(false);
                }
                self.status.want_up = true;
                self.next_start = tokio::time::Instant::now();
            }
            b'd' | b'D' => {
                if letter == b'D' {
                    self.set_down_file(true);
                }
                self.status.want_up = false;
                if up {
                    self.kill(down_signal(&self.def.dir));
                    self.kill(SIGCONT);
                }
            }
            b'o' => {
                self.status.want_up = false;
                if !up && self.status.pid == 0 {
                    self.start_once = true;
                    self.next_start = tokio::time::Instant::now();
                }
            }
            b'O' | b'Q' => {
                if letter == b'Q' {
                    self.set_down_file(true);
                }
                self.status.want_up = false;
            }
            b'x' => self.exit_when_down = true,
            _ => return,
        }
        self.announce(b"");
    }

    fn kill(&self, sig: nix::sys::signal::Signal) {
        if self.status.pid != 0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.status.pid as i32), sig);
        }
    }

    /// `s6-svc -D`/`-Q` create the service's `down` file, `-U` removes it (in its scan-folder copy).
    fn set_down_file(&self, present: bool) {
        let Some(c) = &self.control else { return };
        let path = c.service().join("down");
        let result = if present { std::fs::write(&path, b"") } else { std::fs::remove_file(&path) };
        if let Err(e) = result
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(service = %self.def.name, error = %e, "cannot change the down file");
        }
    }
}

/// The signal that stops the service: its `down-signal` file (a name such as `SIGUSR1` or
/// `USR1`, or a number), SIGTERM by default.
fn down_signal(dir: &Path) -> nix::sys::signal::Signal {
    use nix::sys::signal::Signal;
    let Ok(text) = std::fs::read_to_string(dir.join("down-signal")) else { return Signal::SIGTERM };
    let text = text.trim();
    let named = if text.starts_with("SIG") { text.to_owned() } else { format!("SIG{text}") };
    text.parse::<i32>()
        .ok()
        .and_then(|n| Signal::try_from(n).ok())
        .or_else(|| named.parse().ok())
        .unwrap_or(Signal::SIGTERM)
}

/// Runs the service's `finish EXITCODE SIGNAL NAME` (s6's arguments: 256 and the signal when
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
    cmd.current_dir(&def.dir).arg(code.to_string()).arg(sig.to_string()).arg(&def.name);
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
