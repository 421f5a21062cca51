//! Putting a rendered file in place safely: stage it next to its destination,
//! let a check command judge the staged copy, then swap it in atomically
//! (fsync, rename, fsync the folder) — or, when the destination is a
//! bind-mounted file that cannot be renamed over (EBUSY), rewrite it in place.
//!
//! The staged file (and the backup's) is created under a random name, exclusively
//! (`O_CREAT|O_EXCL|O_NOFOLLOW`: whatever already sits at that name, a symlink included, is
//! never opened) and with its final permission bits from the start, so it is never readable
//! more widely than the destination. Staged files a killed render left behind are removed
//! by the next one.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

/// A staged file older than this, of a destination's staging pattern, is a leftover of a
/// render that was killed before it could remove it (checks run for a few seconds at most).
pub const STALE_AFTER: Duration = Duration::from_secs(600);

/// A file staged next to its destination; removed on drop unless installed.
#[derive(Debug)]
pub struct Staged {
    file: File,
    path: PathBuf,
    dest: PathBuf,
    installed: bool,
}

/// How a shell command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// Whether it exited 0 in time.
    pub ok: bool,
    /// Exit code, signal or timeout, for people.
    pub status: String,
    /// Its stdout and stderr (the last 8 KiB).
    pub output: String,
}

/// The permission bits for `dest`: `perms` if given, else those of the file it replaces, else 0644.
fn mode_for(dest: &Path, perms: Option<u32>) -> u32 {
    perms.unwrap_or_else(|| std::fs::metadata(dest).map_or(0o644, |m| m.permissions().mode() & 0o7777))
}

/// 64 random bits from the operating system (from the standard library's randomly keyed
/// hasher, should the system have no random source).
pub(crate) fn random_u64() -> u64 {
    use rand::TryRngCore as _;
    rand::rngs::OsRng.try_next_u64().unwrap_or_else(|_| {
        use std::hash::{BuildHasher as _, Hasher as _};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
        );
        h.finish()
    })
}

/// Creates `path` as a new file with permission bits `mode`, open for reading and writing:
/// fails if anything exists there (a symlink included, dangling or not; it is not followed).
fn create_exclusive(path: &Path, mode: u32) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(path)?;
    // The umask may have cleared some of `mode`'s bits: set them on the descriptor, while
    // the file is still empty.
    if file.metadata()?.permissions().mode() & 0o7777 != mode {
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    Ok(file)
}

/// The folder `dest` is in, and the prefix of its staged files' names (`.NAME.shoal-`).
fn staging(dest: &Path) -> (&Path, String) {
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = dest.file_name().map_or_else(|| "render".into(), |n| n.to_string_lossy().into_owned());
    (dir, format!(".{name}.shoal-"))
}

/// A new file in `dir` named `PREFIX<random>.tmp` (see [`create_exclusive`]).
fn create_staged(dir: &Path, prefix: &str, mode: u32) -> std::io::Result<(File, PathBuf)> {
    let mut last = None;
    for _ in 0..8 {
        let path = dir.join(format!("{prefix}{:016x}.tmp", random_u64()));
        match create_exclusive(&path, mode) {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free staging name")))
}

/// Removes what earlier renders of a destination left in `dir`: names of its staging
/// pattern that are symlinks (renders never create one), or files older than [`STALE_AFTER`].
/// `unlink` removes a symlink itself, never what it points to.
fn remove_stale(dir: &Path, prefix: &str, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry.file_name().to_str().is_some_and(|n| n.starts_with(prefix) && n.ends_with(".tmp"));
        if !ours || path == keep {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        let old = meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age > STALE_AFTER);
        if meta.file_type().is_symlink() || (meta.file_type().is_file() && old) {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed a staged file left behind"),
                Err(e) => tracing::debug!(path = %path.display(), error = %e, "cannot remove a leftover"),
            }
        }
    }
}

impl Staged {
    /// Writes `content` to a new file in `dest`'s folder, with its final mode, synced to disk.
    pub fn write(dest: &Path, content: &str, perms: Option<u32>) -> std::io::Result<Staged> {
        let (dir, prefix) = staging(dest);
        let (file, path) = create_staged(dir, &prefix, mode_for(dest, perms))?;
        let mut staged = Staged { file, path, dest: dest.to_path_buf(), installed: false };
        staged.file.write_all(content.as_bytes())?;
        staged.file.sync_all()?;
        remove_stale(dir, &prefix, &staged.path);
        Ok(staged)
    }

    /// The staged file's path (what a check command reads).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the destination: `rename` (atomic), or an in-place rewrite when the
    /// destination is a mount point (EBUSY). With `backup`, the old file is kept as `DEST.bak`
    /// (itself staged and renamed into place: a symlink planted at `DEST.bak` is replaced, not followed).
    pub fn install(mut self, backup: bool) -> std::io::Result<()> {
        if backup && self.dest.exists() {
            self.back_up()?;
        }
        match std::fs::rename(&self.path, &self.dest) {
            Ok(()) => {
                if let Some(dir) = self.dest.parent().filter(|d| !d.as_os_str().is_empty()) {
                    File::open(dir)?.sync_all()?;
                }
            }
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) => {
                tracing::debug!(dest = %self.dest.display(), "destination is a mount point: rewriting it in place");
                let mut content = Vec::new();
                self.file.rewind()?;
                self.file.read_to_end(&mut content)?;
                let mut f = OpenOptions::new().write(true).truncate(true).open(&self.dest)?;
                f.write_all(&content)?;
                f.sync_all()?;
                std::fs::remove_file(&self.path)?;
            }
            Err(e) => return Err(e),
        }
        self.installed = true;
        Ok(())
    }

    /// Copies the destination to `DEST.bak`, through a staged file of its own.
    fn back_up(&self) -> std::io::Result<()> {
        let mut bak = self.dest.clone().into_os_string();
        bak.push(".bak");
        let content = std::fs::read(&self.dest)?;
        let (dir, prefix) = staging(&self.dest);
        let (mut f, path) = create_staged(dir, &prefix, mode_for(&self.dest, None))?;
        let result =
            f.write_all(&content).and_then(|()| f.sync_all()).and_then(|()| std::fs::rename(&path, &bak));
        if result.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        result
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.installed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Quotes `s` for `/bin/sh`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `/bin/sh -c script` with a deadline, stdout and stderr captured together.
pub async fn run_shell(script: &str, timeout: Duration, env: &[(&str, &str)]) -> CommandOutcome {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("exec 2>&1; {script}"))
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return CommandOutcome { ok: false, status: format!("cannot start: {e}"), output: String::new() };
        }
    };
    let group = child.id().and_then(|p| i32::try_from(p).ok());
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => {
            // The whole process group: a shell's children too.
            if let Some(pid) = group {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
            }
            CommandOutcome {
                ok: false,
                status: format!("timed out after {timeout:?}"),
                output: String::new(),
            }
        }
        Ok(Err(e)) => CommandOutcome { ok: false, status: format!("failed: {e}"), output: String::new() },
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.len() > 8192 {
                let cut = text.len() - 8192;
                let cut = (cut..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(cut);
                text.drain(..cut);
            }
            let status = match out.status.code() {
                Some(c) => format!("exit {c}"),
                None => "killed by a signal".into(),
            };
            CommandOutcome { ok: out.status.success(), status, output: text.trim_end().to_string() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shoal-render-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn staging_then_installing_replaces_atomically_and_keeps_a_backup() {
        let d = dir("install");
        let dest = d.join("haproxy.cfg");
        std::fs::write(&dest, "old").unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o640)).unwrap();
        let staged = Staged::write(&dest, "new", None).unwrap();
        assert_eq!(std::fs::read_to_string(staged.path()).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "old", "nothing changes before install");
        staged.install(true).unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(d.join("haproxy.cfg.bak")).unwrap(), "old");
        assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o640, "mode kept");
        let leftovers: Vec<_> = std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()).collect();
        assert_eq!(leftovers.len(), 2, "no temporary file left behind");
    }

    #[test]
    fn a_staged_file_not_installed_is_removed() {
        let d = dir("drop");
        let dest = d.join("out.conf");
        let staged = Staged::write(&dest, "x", Some(0o600)).unwrap();
        let path = staged.path().to_path_buf();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        drop(staged);
        assert!(!path.exists() && !dest.exists());
    }

    #[tokio::test]
    async fn shell_commands_report_status_and_output() {
        let ok = run_shell("echo hi; echo oops >&2", Duration::from_secs(5), &[]).await;
        assert!(ok.ok);
        assert_eq!(ok.output, "hi\noops");
        let bad = run_shell("echo 'line 3: bad'; exit 2", Duration::from_secs(5), &[]).await;
        assert_eq!((bad.ok, bad.status.as_str(), bad.output.as_str()), (false, "exit 2", "line 3: bad"));
        let slow = run_shell("sleep 5", Duration::from_millis(100), &[]).await;
        assert!(!slow.ok && slow.status.starts_with("timed out"));
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }

    /// The old staging name (`.NAME.shoal-PID.tmp`) was predictable: a symlink planted there
    /// made the render write through it. Now the staged file has a random name and is created
    /// exclusively; the planted link is never followed, and it is cleared away.
    #[test]
    fn a_symlink_planted_at_the_old_staging_path_is_not_followed() {
        let d = dir("symlink");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let dest = d.join("haproxy.cfg");
        let planted = d.join(format!(".haproxy.cfg.shoal-{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let staged = Staged::write(&dest, "new", Some(0o600)).unwrap();
        assert_ne!(staged.path(), planted);
        assert!(!std::fs::symlink_metadata(staged.path()).unwrap().file_type().is_symlink());
        staged.install(false).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious", "the link's target is untouched");
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "new");
        assert!(std::fs::symlink_metadata(&planted).is_err(), "the planted link is removed");
        // Whatever sits at the name chosen, a dangling link included, is not opened.
        let dangling = d.join("dangling");
        std::os::unix::fs::symlink(d.join("created-through-link"), &dangling).unwrap();
        let err = create_exclusive(&dangling, 0o644).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert!(!d.join("created-through-link").exists());
        let err = create_exclusive(&victim, 0o644).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    /// The file has its final mode while it is still empty (not set after the content is in),
    /// whatever the umask clears.
    #[test]
    fn a_staged_file_has_its_final_mode_from_its_creation() {
        let d = dir("mode");
        for mode in [0o600, 0o640, 0o666, 0o604] {
            let path = d.join(format!("f{mode:o}"));
            let f = create_exclusive(&path, mode).unwrap();
            let meta = f.metadata().unwrap();
            assert_eq!((meta.len(), meta.permissions().mode() & 0o7777), (0, mode), "{mode:o}");
        }
        let dest = d.join("out.cfg");
        std::fs::write(&dest, "old").unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o664)).unwrap();
        let staged = Staged::write(&dest, "new", None).unwrap();
        assert_eq!(std::fs::metadata(staged.path()).unwrap().permissions().mode() & 0o7777, 0o664);
        staged.install(false).unwrap();
        assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777, 0o664);
    }

    /// Leftovers of a killed render go; another render's fresh staged file, other
    /// destinations' files and folders stay.
    #[test]
    fn stale_staged_files_are_removed_and_nothing_else() {
        let d = dir("stale");
        let dest = d.join("out.cfg");
        let old = d.join(".out.cfg.shoal-1234.tmp");
        let fresh = d.join(".out.cfg.shoal-00000000deadbeef.tmp");
        let other = d.join(".other.cfg.shoal-1234.tmp");
        let folder = d.join(".out.cfg.shoal-dir.tmp");
        for f in [&old, &fresh, &other] {
            std::fs::write(f, "x").unwrap();
        }
        std::fs::create_dir(&folder).unwrap();
        let long_ago = std::time::SystemTime::now() - 2 * STALE_AFTER;
        for f in [&old, &other] {
            std::fs::File::options().write(true).open(f).unwrap().set_modified(long_ago).unwrap();
        }
        Staged::write(&dest, "new", None).unwrap().install(false).unwrap();
        assert!(!old.exists(), "a leftover is removed");
        assert!(fresh.exists() && other.exists() && folder.is_dir(), "nothing else is");
    }

    /// A symlink planted at `DEST.bak` is replaced by the backup, not written through.
    #[test]
    fn the_backup_does_not_follow_a_planted_symlink() {
        let d = dir("backup");
        let (dest, victim) = (d.join("out.cfg"), d.join("victim"));
        std::fs::write(&dest, "old").unwrap();
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, d.join("out.cfg.bak")).unwrap();
        Staged::write(&dest, "new", None).unwrap().install(true).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let bak = d.join("out.cfg.bak");
        assert!(std::fs::symlink_metadata(&bak).unwrap().file_type().is_file());
        assert_eq!(std::fs::read_to_string(&bak).unwrap(), "old");
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "new");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 3, "no staged file left");
    }
}
