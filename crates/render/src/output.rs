//! Putting a rendered file in place safely: stage it next to its destination,
//! let a check command judge the staged copy, then swap it in atomically
//! (fsync, rename, fsync the folder) — or, when the destination is a
//! bind-mounted file that cannot be renamed over (EBUSY), rewrite it in place.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

/// A file staged next to its destination; removed on drop unless installed.
#[derive(Debug)]
pub struct Staged {
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

impl Staged {
    /// Writes `content` to a temporary file in `dest`'s folder, synced to disk.
    pub fn write(dest: &Path, content: &str, perms: Option<u32>) -> std::io::Result<Staged> {
        let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = dest.file_name().map_or_else(|| "render".into(), |n| n.to_string_lossy().into_owned());
        let path = dir.join(format!(".{name}.shoal-{}.tmp", std::process::id()));
        let mut f = std::fs::File::create(&path)?;
        let staged = Staged { path, dest: dest.to_path_buf(), installed: false };
        f.write_all(content.as_bytes())?;
        f.set_permissions(std::fs::Permissions::from_mode(mode_for(dest, perms)))?;
        f.sync_all()?;
        Ok(staged)
    }

    /// The staged file's path (what a check command reads).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the destination: `rename` (atomic), or an in-place rewrite when the
    /// destination is a mount point (EBUSY). With `backup`, the old file is kept as `DEST.bak`.
    pub fn install(mut self, backup: bool) -> std::io::Result<()> {
        if backup && self.dest.exists() {
            let mut bak = self.dest.clone().into_os_string();
            bak.push(".bak");
            std::fs::copy(&self.dest, PathBuf::from(bak))?;
        }
        match std::fs::rename(&self.path, &self.dest) {
            Ok(()) => {
                if let Some(dir) = self.dest.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::File::open(dir)?.sync_all()?;
                }
            }
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) => {
                tracing::debug!(dest = %self.dest.display(), "destination is a mount point: rewriting it in place");
                let content = std::fs::read(&self.path)?;
                let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&self.dest)?;
                f.write_all(&content)?;
                f.sync_all()?;
                std::fs::remove_file(&self.path)?;
            }
            Err(e) => return Err(e),
        }
        self.installed = true;
        Ok(())
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
}
