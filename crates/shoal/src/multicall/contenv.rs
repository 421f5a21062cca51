//! `with-contenv`: s6-overlay's command that runs a program with the container's environment.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

/// Where s6-overlay keeps the container's environment, one file per variable: v3's place, then
/// v1 and v2's. `SHOAL_CONTENV_DIR` names another.
const CONTENV_DIRS: [&str; 2] = ["/run/s6/container_environment", "/var/run/s6/container_environment"];

/// `with-contenv PROG ARGS…` (also a script's `#!/usr/bin/with-contenv bash` line): PROG runs
/// with the variables of the container-environment folder laid over the current ones, as
/// s6-overlay's `s6-envdir -fn` does — a file's whole content is the value (NUL bytes read as
/// newlines), an empty file unsets its variable. `shoal init` passes the container's
/// environment to its services itself, so with no folder the command runs with the
/// environment it has.
pub fn with_contenv(args: &[OsString]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let Some((program, rest)) = args.split_first() else {
        eprintln!("with-contenv: usage: with-contenv PROG [ARGS…]");
        return ExitCode::from(100);
    };
    let mut command = std::process::Command::new(program);
    command.args(rest);
    let dir = std::env::var_os("SHOAL_CONTENV_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| CONTENV_DIRS.iter().map(std::path::PathBuf::from).find(|d| d.is_dir()));
    if let Some(dir) = dir {
        match contenv(&dir) {
            Ok(vars) => {
                for (name, value) in vars {
                    match value {
                        Some(v) => command.env(name, v),
                        None => command.env_remove(name),
                    };
                }
            }
            Err(e) => {
                eprintln!("with-contenv: cannot read {}: {e}", dir.display());
                return ExitCode::from(111);
            }
        }
    }
    let e = command.exec();
    eprintln!("with-contenv: cannot run {}: {e}", Path::new(program).display());
    ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 })
}

/// The variables of an s6 environment folder, in name order: `None` unsets (an empty file).
/// Names that cannot be variables (holding `=` or starting with `.`) are skipped.
fn contenv(dir: &Path) -> std::io::Result<Vec<(OsString, Option<OsString>)>> {
    use std::os::unix::ffi::OsStringExt;
    let mut vars = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let bytes = name.as_encoded_bytes();
        if bytes.is_empty() || bytes.starts_with(b".") || bytes.contains(&b'=') || !entry.path().is_file() {
            continue;
        }
        let mut value = std::fs::read(entry.path())?;
        for b in &mut value {
            if *b == 0 {
                *b = b'\n';
            }
        }
        vars.push((name, (!value.is_empty()).then(|| OsString::from_vec(value))));
    }
    vars.sort();
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_environment_folder_sets_whole_values_and_empty_files_unset() {
        let dir = std::env::temp_dir().join(format!("shoal-contenv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ROLE"), "backend").unwrap();
        std::fs::write(dir.join("MULTI"), b"a\0b\n").unwrap();
        std::fs::write(dir.join("GONE"), "").unwrap();
        std::fs::write(dir.join("A=B"), "x").unwrap();
        std::fs::write(dir.join(".hidden"), "x").unwrap();
        let vars = contenv(&dir).unwrap();
        assert_eq!(
            vars,
            vec![
                ("GONE".into(), None),
                ("MULTI".into(), Some("a\nb\n".into())),
                ("ROLE".into(), Some("backend".into())),
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
