//! Where the running container shows itself to s6's tools, as s6-overlay lays it out: the scan
//! folder (`/run/service/<name>`, linked from `/var/run/s6/services`) with each service's
//! `supervise/` folder and the scan folder's own `.s6-svscan/control`, and the container's
//! environment dumped for `with-contenv`.

use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use crate::s6::{self, SVSCAN_DIR, SuperviseDir};
use crate::service::{self, Handle, ServiceDef, Supervision};

/// The scan folder: one live folder per service.
#[derive(Debug)]
pub struct ScanDir {
    dir: PathBuf,
}

impl ScanDir {
    /// Creates the first of `dirs` and links the others to it. `None` (with a warning) when it
    /// cannot be made — services then run without s6's control surface.
    pub fn prepare(dirs: &[PathBuf]) -> Option<ScanDir> {
        let (first, aliases) = dirs.split_first()?;
        if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o755).create(first) {
            tracing::warn!(dir = %first.display(), error = %e, "cannot create the scan folder: s6-svc and s6-svstat will not reach the services");
            return None;
        }
        for alias in aliases {
            if let Err(e) = link(first, alias) {
                tracing::warn!(alias = %alias.display(), to = %first.display(), error = %e, "cannot link the scan folder");
            }
        }
        Some(ScanDir { dir: first.clone() })
    }

    /// Letters written to `.s6-svscan/control` (`s6-svscanctl`).
    pub fn control(&self) -> Option<mpsc::Receiver<u8>> {
        let ctl = self.dir.join(SVSCAN_DIR);
        let made = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&ctl)
            .and_then(|()| s6::make_fifo(&ctl.join("control")));
        match made.and_then(|()| service::read_letters(&ctl.join("control"))) {
            Ok(rx) => Some(rx),
            Err(e) => {
                tracing::warn!(dir = %ctl.display(), error = %e, "cannot serve s6-svscanctl");
                None
            }
        }
    }

    /// The service's live folder: the entries of its definition folder, linked, beside the
    /// supervisor's own `supervise/` and `event/`.
    fn service_dir(&self, def: &ServiceDef) -> io::Result<SuperviseDir> {
        let live = self.dir.join(&def.name);
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(&live)?;
        let source = std::path::absolute(&def.dir)?;
        for entry in std::fs::read_dir(&source)? {
            let name = entry?.file_name();
            if name == s6::SUPERVISE_DIR || name == "event" {
                continue;
            }
            link(&source.join(&name), &live.join(&name))?;
        }
        SuperviseDir::create(&live)
    }
}

/// Makes `alias` a symlink to `target`, replacing an older link (a real file or folder there is
/// left alone, and reported).
fn link(target: &Path, alias: &Path) -> io::Result<()> {
    if let Some(parent) = alias.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::symlink_metadata(alias) {
        Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(alias)?,
        Ok(_) if alias.canonicalize().ok() == target.canonicalize().ok() => return Ok(()),
        Ok(_) => {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", alias.display())));
        }
        Err(_) => {}
    }
    std::os::unix::fs::symlink(target, alias)
}

/// Starts supervising `def`, with its live folder in `scan` when there is one.
pub fn supervise(scan: Option<&ScanDir>, def: ServiceDef, how: &Supervision) -> Handle {
    let control = scan.and_then(|s| match s.service_dir(&def) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(service = %def.name, error = %e, "no supervise folder: s6-svc will not reach it");
            None
        }
    });
    service::supervise(def, how.clone(), control)
}

/// `s6-svscanctl -a` / `-h`: services added to the folder since start are started, services
/// removed from it are stopped and left (`s6-svc -dx`).
pub fn rescan(scan: Option<&ScanDir>, services_dir: &Path, how: &Supervision, handles: &mut Vec<Handle>) {
    let defs = match service::discover(services_dir) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(dir = %services_dir.display(), error = %e, "rescan: cannot read the services");
            return;
        }
    };
    for def in &defs {
        if !handles.iter().any(|h| h.def.name == def.name) {
            tracing::info!(service = %def.name, "rescan: new service");
            handles.push(supervise(scan, def.clone(), how));
        }
    }
    handles.retain(|h| {
        if defs.iter().any(|d| d.name == h.def.name) {
            return true;
        }
        tracing::info!(service = %h.def.name, "rescan: service removed; stopping it");
        if let Some(scan) = scan {
            let live = scan.dir.join(&h.def.name);
            if let Err(e) = s6::send_control(&live, s6::SUPERVISE_DIR, b"dx") {
                tracing::warn!(service = %h.def.name, error = %e, "cannot stop the removed service");
            }
        }
        false
    });
}

/// Writes our environment to `dir`, one file per variable holding its value (s6-overlay's
/// `container_environment`), readable by this user only. Failures are logged: `with-contenv`
/// then runs commands with the environment they have.
pub fn dump_environment(dir: &Path) {
    let result = (|| -> io::Result<usize> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let mut n = 0;
        for (name, value) in std::env::vars_os() {
            let bytes = name.as_encoded_bytes();
            if bytes.is_empty() || bytes.contains(&b'/') || bytes.starts_with(b".") {
                continue;
            }
            write_private(&dir.join(&name), value.as_encoded_bytes())?;
            n += 1;
        }
        Ok(n)
    })();
    match result {
        Ok(n) => tracing::debug!(dir = %dir.display(), variables = n, "container environment written"),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write the container environment for with-contenv")
        }
    }
}

fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(contents)
}
