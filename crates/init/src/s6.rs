//! s6's supervise folder, laid out as s6 2.x lays it out so that s6's own tools read and drive
//! `shoal init`'s services: `supervise/lock` (write-locked while a supervisor runs),
//! `supervise/control` (a FIFO of one-letter commands), `supervise/status` (35 bytes, replaced
//! atomically) and `event/` (a fifodir whose listeners get one letter per transition). Both
//! sides live here: [`SuperviseDir`] for the supervisor, [`send_control`], [`read_status`] and
//! [`supervisor_running`] for the `s6-svc`, `s6-svscanctl` and `s6-svstat` tools.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};

use crate::reaper::Exit;

/// The supervisor's folder inside a service folder.
pub const SUPERVISE_DIR: &str = "supervise";
/// The scan folder's own control folder (`s6-svscanctl` writes to its `control`).
pub const SVSCAN_DIR: &str = ".s6-svscan";
/// Bytes of `supervise/status` (s6 2.x: two TAI64N stamps, pid, wait status, flags).
pub const STATUS_SIZE: usize = 35;

/// 2^62: TAI64's label of the epoch 1970-01-01 00:00:00 TAI.
const TAI_MAGIC: u64 = 1 << 62;
/// TAI − UTC since 2017-01-01 (10 s at 1972 plus 27 leap seconds), as skalibs converts the wall
/// clock. Stamps are only ever the current time, so the leap seconds before 2017 never matter.
const TAI_MINUS_UTC: u64 = 37;

/// A service's state as `supervise/status` holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// When it last went up or down.
    pub stamp: SystemTime,
    /// When it last became ready (up: never without readiness notification; down: when it
    /// finished).
    pub ready_stamp: SystemTime,
    /// The running process, 0 when down.
    pub pid: u32,
    /// How the last run ended, as `wait(2)` reports it.
    pub wstat: u16,
    /// Stopped with `s6-svc -p`.
    pub paused: bool,
    /// Its `finish` script runs (the service counts as down).
    pub finishing: bool,
    /// The supervisor keeps it up.
    pub want_up: bool,
    /// Ready (see `ready_stamp`).
    pub ready: bool,
}

impl Status {
    /// A service that has not run yet.
    pub fn new(want_up: bool, now: SystemTime) -> Status {
        Status {
            stamp: now,
            ready_stamp: now,
            pid: 0,
            wstat: 0,
            paused: false,
            finishing: false,
            want_up,
            ready: true,
        }
    }

    /// Up: a process runs and its `finish` does not.
    pub fn is_up(&self) -> bool {
        self.pid != 0 && !self.finishing
    }

    /// The file's 35 bytes.
    pub fn pack(&self) -> [u8; STATUS_SIZE] {
        let mut out = [0u8; STATUS_SIZE];
        out[..12].copy_from_slice(&tain_pack(self.stamp));
        out[12..24].copy_from_slice(&tain_pack(self.ready_stamp));
        out[24..32].copy_from_slice(&u64::from(self.pid).to_be_bytes());
        out[32..34].copy_from_slice(&self.wstat.to_be_bytes());
        out[34] = u8::from(self.paused)
            | u8::from(self.finishing) << 1
            | u8::from(self.want_up) << 2
            | u8::from(self.ready) << 3;
        out
    }

    /// Reads the file's 35 bytes.
    pub fn unpack(bytes: &[u8; STATUS_SIZE]) -> Status {
        let field = |range: std::ops::Range<usize>| &bytes[range];
        let pid = u64::from_be_bytes(field(24..32).try_into().unwrap_or_default());
        Status {
            stamp: tain_unpack(field(0..12)),
            ready_stamp: tain_unpack(field(12..24)),
            pid: u32::try_from(pid).unwrap_or(0),
            wstat: u16::from_be_bytes([bytes[32], bytes[33]]),
            paused: bytes[34] & 1 != 0,
            finishing: bytes[34] & 2 != 0,
            want_up: bytes[34] & 4 != 0,
            ready: bytes[34] & 8 != 0,
        }
    }

    /// How the last run ended.
    pub fn last_exit(&self) -> Exit {
        match self.wstat & 0x7f {
            0 => Exit::Code(i32::from(self.wstat >> 8)),
            sig => Exit::Signal(i32::from(sig)),
        }
    }
}

/// `wait(2)`'s status word for an exit.
pub fn wstat(exit: Exit) -> u16 {
    match exit {
        Exit::Code(c) => ((c & 0xff) as u16) << 8,
        Exit::Signal(s) => (s & 0x7f) as u16,
    }
}

/// A signal's name as s6 prints it (`SIGTERM`), or its number when it has none.
pub fn signal_name(signum: i32) -> String {
    nix::sys::signal::Signal::try_from(signum).map_or_else(|_| signum.to_string(), |s| s.as_str().to_owned())
}

/// TAI64N label of a wall-clock time: 8 bytes of seconds, 4 of nanoseconds, big-endian.
pub fn tain_pack(t: SystemTime) -> [u8; 12] {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&(TAI_MAGIC + TAI_MINUS_UTC + since.as_secs()).to_be_bytes());
    out[8..].copy_from_slice(&since.subsec_nanos().to_be_bytes());
    out
}

fn tain_unpack(bytes: &[u8]) -> SystemTime {
    let secs = u64::from_be_bytes(bytes[..8].try_into().unwrap_or_default());
    let nanos = u32::from_be_bytes(bytes[8..12].try_into().unwrap_or_default()).min(999_999_999);
    let unix = secs.saturating_sub(TAI_MAGIC + TAI_MINUS_UTC);
    UNIX_EPOCH + Duration::new(unix, nanos)
}

/// A write lock over the whole file, held while this open file stays open. An open file
/// description lock: s6's tools see it as they see skalibs' `fd_lock` (`F_GETLK` reports both
/// kinds), and unlike a process-wide POSIX lock, a second supervisor in this same process is
/// refused too, and closing some other descriptor of the file does not drop it.
fn lock_whole(file: &File) -> io::Result<bool> {
    let lock = whole_file(libc_lock_type::WRITE);
    match fcntl(file.as_fd(), FcntlArg::F_OFD_SETLK(&lock)) {
        Ok(_) => Ok(true),
        Err(Errno::EACCES | Errno::EAGAIN) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `flock` record types (the values every Linux ABI uses).
mod libc_lock_type {
    pub const READ: i16 = 0;
    pub const WRITE: i16 = 1;
    pub const UNLOCKED: i16 = 2;
}

/// A lock record over the whole file (from offset 0, length 0 = to the end).
fn whole_file(kind: i16) -> nix::libc::flock {
    nix::libc::flock { l_type: kind, l_whence: nix::libc::SEEK_SET as i16, l_start: 0, l_len: 0, l_pid: 0 }
}

/// Whether a supervisor holds `<service>/supervise/lock` (s6's `s6_svc_ok`): false when the
/// file does not exist.
pub fn supervisor_running(service: &Path) -> io::Result<bool> {
    let file = match File::open(service.join(SUPERVISE_DIR).join("lock")) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut lock = whole_file(libc_lock_type::READ);
    fcntl(file.as_fd(), FcntlArg::F_GETLK(&mut lock))?;
    Ok(lock.l_type != libc_lock_type::UNLOCKED)
}

/// Reads `<service>/supervise/status`.
pub fn read_status(service: &Path) -> io::Result<Status> {
    let bytes = std::fs::read(service.join(SUPERVISE_DIR).join("status"))?;
    let bytes: &[u8; STATUS_SIZE] =
        bytes.get(..STATUS_SIZE).and_then(|b| b.try_into().ok()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("status file shorter than {STATUS_SIZE} bytes"),
            )
        })?;
    Ok(Status::unpack(bytes))
}

/// Why a control command could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The FIFO exists but nothing reads it.
    #[error("supervisor not listening")]
    NotListening,
    /// No control FIFO where there should be one.
    #[error("{0} is not a supervised folder (no {1}/control)")]
    NotSupervised(PathBuf, &'static str),
    /// Anything else.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Writes `commands` to `<dir>/<sub>/control` without blocking on a missing reader
/// (s6's `s6_svc_writectl`); `sub` is [`SUPERVISE_DIR`] or [`SVSCAN_DIR`].
pub fn send_control(dir: &Path, sub: &'static str, commands: &[u8]) -> Result<(), ControlError> {
    let fifo = dir.join(sub).join("control");
    let mut file = match OpenOptions::new().write(true).custom_flags(nix::libc::O_NONBLOCK).open(&fifo) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => return Err(ControlError::NotListening),
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
            return Err(ControlError::NotSupervised(dir.to_path_buf(), sub));
        }
        Err(e) => return Err(e.into()),
    };
    file.write_all(commands)?;
    Ok(())
}

/// The supervisor's side of a service's `supervise/` and `event/` folders. Dropping it releases
/// the lock, so s6's tools then see no supervisor.
#[derive(Debug)]
pub struct SuperviseDir {
    service: PathBuf,
    _lock: File,
}

impl SuperviseDir {
    /// Creates `supervise/` (lock, control FIFO) and `event/` in `service`, and takes the lock.
    /// Fails when another supervisor holds it.
    pub fn create(service: &Path) -> io::Result<SuperviseDir> {
        let supervise = service.join(SUPERVISE_DIR);
        let mut dirs = std::fs::DirBuilder::new();
        dirs.recursive(true).mode(0o700).create(&supervise)?;
        let event = service.join("event");
        dirs.mode(0o3730).create(&event)?;
        // The mode of mkdir is masked by the umask; s6 wants exactly 03730 (listeners of any
        // user may create their FIFO, none may list or delete another's).
        std::fs::set_permissions(&event, std::fs::Permissions::from_mode(0o3730))?;
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(supervise.join("lock"))?;
        if !lock_whole(&lock)? {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another supervisor holds {}", supervise.join("lock").display()),
            ));
        }
        make_fifo(&supervise.join("control"))?;
        Ok(SuperviseDir { service: service.to_path_buf(), _lock: lock })
    }

    /// The service folder.
    pub fn service(&self) -> &Path {
        &self.service
    }

    /// The control FIFO.
    pub fn control_path(&self) -> PathBuf {
        self.service.join(SUPERVISE_DIR).join("control")
    }

    /// Replaces `supervise/status` atomically (written beside it, then renamed).
    pub fn write_status(&self, status: &Status) -> io::Result<()> {
        let dir = self.service.join(SUPERVISE_DIR);
        let staged = dir.join("status.new");
        std::fs::write(&staged, status.pack())?;
        std::fs::rename(&staged, dir.join("status"))
    }

    /// Tells the listeners of `event/` (`s6-svwait`, `s6-svc -w…`) what happened: `s` the
    /// supervisor started, `u` up, `d` down, `D` finished, `O` down for good, `x` supervisor gone.
    pub fn announce(&self, event: &[u8]) {
        notify_fifodir(&self.service.join("event"), event);
    }
}

/// Creates a FIFO (mode 0600), or accepts one that is already there.
pub fn make_fifo(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    match nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
        Ok(()) => Ok(()),
        Err(Errno::EEXIST) if std::fs::metadata(path)?.file_type().is_fifo() => Ok(()),
        Err(Errno::EEXIST) => {
            Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} is not a FIFO", path.display())))
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes `event` to every listener FIFO of a fifodir (`ftrig1:@` + 32 characters), without
/// blocking; a FIFO with no reader left is removed (skalibs' `ftrigw_notifyb_nosig`).
fn notify_fifodir(dir: &Path, event: &[u8]) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.as_encoded_bytes();
        if !name.starts_with(b"ftrig1:@") || name.len() != "ftrig1".len() + 33 {
            continue;
        }
        let path = entry.path();
        match OpenOptions::new().write(true).custom_flags(nix::libc::O_NONBLOCK).open(&path) {
            Ok(mut fifo) => {
                if fifo.write_all(event).is_err_and(|e| e.raw_os_error() == Some(nix::libc::EPIPE)) {
                    let _ = std::fs::remove_file(&path);
                }
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => {
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_s6s_35_bytes() {
        let t = UNIX_EPOCH + Duration::new(1_800_000_000, 123_456_789);
        let st = Status {
            stamp: t,
            ready_stamp: t + Duration::from_secs(2),
            pid: 4242,
            wstat: wstat(Exit::Code(3)),
            paused: false,
            finishing: true,
            want_up: true,
            ready: false,
        };
        let bytes = st.pack();
        // TAI64: 2^62 + 37 + unix seconds, big-endian; then the nanoseconds.
        assert_eq!(&bytes[..8], &(0x4000_0000_0000_0000u64 + 37 + 1_800_000_000).to_be_bytes());
        assert_eq!(&bytes[8..12], &123_456_789u32.to_be_bytes());
        assert_eq!(&bytes[24..32], &[0, 0, 0, 0, 0, 0, 0x10, 0x92]);
        assert_eq!(&bytes[32..34], &[3, 0]);
        assert_eq!(bytes[34], 0b0110);
        assert_eq!(Status::unpack(&bytes), st);
        assert_eq!(st.last_exit(), Exit::Code(3));
        assert!(!st.is_up(), "finishing counts as down");
        assert_eq!(Status { wstat: wstat(Exit::Signal(9)), ..st }.last_exit(), Exit::Signal(9));
    }

    #[test]
    fn control_reaches_only_a_listening_supervisor_and_the_lock_tells_who_runs() {
        let dir = std::env::temp_dir().join(format!("shoal-s6-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(send_control(&dir, SUPERVISE_DIR, b"u"), Err(ControlError::NotSupervised(..))));
        assert!(!supervisor_running(&dir).unwrap());
        let sup = SuperviseDir::create(&dir).unwrap();
        // A second supervisor, even in this process, is refused.
        assert!(SuperviseDir::create(&dir).is_err_and(|e| e.kind() == io::ErrorKind::AddrInUse));
        assert!(matches!(send_control(&dir, SUPERVISE_DIR, b"u"), Err(ControlError::NotListening)));
        let reader = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(sup.control_path())
            .unwrap();
        send_control(&dir, SUPERVISE_DIR, b"hu").unwrap();
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut &reader, &mut got);
        assert_eq!(got, b"hu");
        let mode = std::fs::metadata(dir.join("event")).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o3730);
        sup.write_status(&Status::new(true, SystemTime::now())).unwrap();
        assert!(read_status(&dir).unwrap().want_up);
        drop(sup);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
