//! `s6-svc`, `s6-svscanctl` and `s6-svstat` against `shoal init`'s services (or s6's own):
//! s6 2.11's options, output, messages (`s6-svc: fatal: …`) and exit codes (100 for usage and a
//! folder nobody supervises, 111 for system errors, 99 when a wait times out).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use shoal_init::s6::{self, ControlError, Status, signal_name};

/// A fatal error, printed as s6 prints it, with its exit code.
struct Fatal {
    code: u8,
    message: String,
}

impl Fatal {
    fn usage(usage: &str) -> Fatal {
        Fatal { code: 100, message: format!("usage: {usage}") }
    }

    fn report(self, program: &str) -> ExitCode {
        eprintln!("{program}: fatal: {}", self.message);
        ExitCode::from(self.code)
    }
}

/// Runs `program`'s body and turns a [`Fatal`] into its message and exit code.
fn exit(program: &str, body: impl FnOnce() -> Result<(), Fatal>) -> ExitCode {
    match body() {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.report(program),
    }
}

/// POSIX getopt as skalibs' subgetopt does it: clustered letters (`-wu`), an option's argument
/// attached or next (`-T5000`, `-T 5000`), `--` or the first operand ends the options.
fn getopt<'a>(
    args: &'a [OsString],
    spec: &str,
    mut on: impl FnMut(char, Option<&'a str>) -> Result<(), Fatal>,
    usage: &str,
) -> Result<&'a [OsString], Fatal> {
    let mut i = 0;
    while let Some(arg) = args.get(i).and_then(|a| a.to_str()) {
        if arg == "--" {
            i += 1;
            break;
        }
        let Some(letters) = arg.strip_prefix('-').filter(|l| !l.is_empty()) else { break };
        i += 1;
        for (at, letter) in letters.char_indices() {
            let Some(pos) = spec.find(letter).filter(|_| letter != ':') else {
                return Err(Fatal::usage(usage));
            };
            if spec[pos + 1..].starts_with(':') {
                let rest = &letters[at + letter.len_utf8()..];
                let value = if rest.is_empty() {
                    i += 1;
                    args.get(i - 1).and_then(|a| a.to_str()).ok_or_else(|| Fatal::usage(usage))?
                } else {
                    rest
                };
                on(letter, Some(value))?;
                break;
            }
            on(letter, None)?;
        }
    }
    Ok(&args[i..])
}

/// The one service folder operand (s6 warns about extra ones).
fn service_operand<'a>(program: &str, operands: &'a [OsString], usage: &str) -> Result<&'a Path, Fatal> {
    let (first, rest) = operands.split_first().ok_or_else(|| Fatal::usage(usage))?;
    if !rest.is_empty() {
        eprintln!("{program}: warning: ignoring extra arguments");
    }
    if first.is_empty() {
        return Err(Fatal { code: 100, message: "invalid service path".into() });
    }
    Ok(Path::new(first))
}

fn control_error(dir: &Path, sub: &str, e: ControlError) -> Fatal {
    let dir = dir.display();
    match e {
        ControlError::NotListening | ControlError::NotSupervised(..) => {
            Fatal { code: 100, message: format!("unable to control {dir}: supervisor not listening") }
        }
        ControlError::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Fatal { code: 111, message: format!("unable to control {dir}: No such file or directory") }
        }
        ControlError::Io(e) => Fatal { code: 111, message: format!("unable to control {dir}/{sub}: {e}") },
    }
}

const SVC_USAGE: &str =
    "s6-svc [ -wu | -wU | -wd | -wD | -wr | -wR ] [ -T timeout ] [ -abqhkti12pcyroduDUxOQ ] servicedir";

/// `s6-svc [-w u|U|d|D|r|R] [-T ms] -<letters> servicedir`.
pub fn svc(args: &[OsString]) -> ExitCode {
    exit("s6-svc", || {
        let mut letters = Vec::new();
        let mut wait = None;
        let mut timeout = None;
        let operands = getopt(
            args,
            "abqhkti12pcyroduDUxOQT:w:",
            |opt, value| {
                match (opt, value) {
                    ('T', Some(v)) => timeout = Some(v.parse::<u64>().map_err(|_| Fatal::usage(SVC_USAGE))?),
                    ('w', Some(v)) if v.len() == 1 && "dDuUrR".contains(v) => wait = v.chars().next(),
                    ('w', _) => return Err(Fatal::usage(SVC_USAGE)),
                    (letter, None) if letters.len() < 63 => letters.push(letter as u8),
                    _ => return Err(Fatal { code: 100, message: "too many commands".into() }),
                }
                Ok(())
            },
            SVC_USAGE,
        )?;
        let dir = service_operand("s6-svc", operands, SVC_USAGE)?;
        if !dir.is_dir() {
            let e = std::io::Error::from(std::io::ErrorKind::NotFound);
            return Err(control_error(dir, s6::SUPERVISE_DIR, ControlError::Io(e)));
        }
        let before = wait.map(|_| s6::read_status(dir).ok());
        if !letters.is_empty() || wait.is_none() {
            s6::send_control(dir, s6::SUPERVISE_DIR, &letters)
                .map_err(|e| control_error(dir, s6::SUPERVISE_DIR, e))?;
        }
        match wait {
            Some(event) => wait_for(dir, event, before.flatten(), timeout.filter(|&t| t > 0)),
            None => Ok(()),
        }
    })
}

/// Waits until the service reaches `event` (`s6-svc -w`): u up, U up and ready, d down,
/// D down and finished, r restarted, R restarted and ready. Reads `supervise/status` as it
/// changes (every 10 ms); gives up with 99 after `timeout_ms`.
fn wait_for(dir: &Path, event: char, before: Option<Status>, timeout_ms: Option<u64>) -> Result<(), Fatal> {
    let deadline = timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let restarted = |st: &Status| before.is_none_or(|b| st.stamp != b.stamp || st.pid != b.pid);
    loop {
        if !s6::supervisor_running(dir).unwrap_or(false) {
            return Err(Fatal {
                code: 102,
                message: format!("unable to wait for {}: supervisor died", dir.display()),
            });
        }
        if let Ok(st) = s6::read_status(dir) {
            let done = match event {
                'u' => st.is_up(),
                'U' => st.is_up() && st.ready,
                'd' => !st.is_up(),
                'D' => st.pid == 0 && st.ready,
                'r' => st.is_up() && restarted(&st),
                _ => st.is_up() && st.ready && restarted(&st),
            };
            if done {
                return Ok(());
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Fatal { code: 99, message: "timed out".into() });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

const SVSCANCTL_USAGE: &str = "s6-svscanctl [ -zabhitqnN ] svscandir";

/// `s6-svscanctl -<letters> scandir`: `-a`/`-h` rescan the services folder, `-t`/`-i`/`-q`/`-b`
/// stop the container (as s6-overlay's shutdown does).
pub fn svscanctl(args: &[OsString]) -> ExitCode {
    exit("s6-svscanctl", || {
        let mut letters = Vec::new();
        let operands = getopt(
            args,
            "zabhitqnN",
            |opt, _| {
                if letters.len() >= 64 {
                    return Err(Fatal { code: 100, message: "too many commands".into() });
                }
                letters.push(opt as u8);
                Ok(())
            },
            SVSCANCTL_USAGE,
        )?;
        let dir = operands.first().map(PathBuf::from).ok_or_else(|| Fatal::usage(SVSCANCTL_USAGE))?;
        s6::send_control(&dir, s6::SVSCAN_DIR, &letters).map_err(|e| control_error(&dir, s6::SVSCAN_DIR, e))
    })
}

const SVSTAT_USAGE: &str = "s6-svstat [ -uwNrpest | -o up,wantedup,normallyup,ready,paused,pid,exitcode,signal,signum,updownsince,readysince,updownfor,readyfor ] [ -n ] servicedir";

/// The fields `s6-svstat -o` (and its one-letter shortcuts) prints.
const FIELDS: [&str; 13] = [
    "up",
    "wantedup",
    "normallyup",
    "ready",
    "paused",
    "pid",
    "exitcode",
    "signal",
    "signum",
    "updownsince",
    "readysince",
    "updownfor",
    "readyfor",
];

/// `s6-svstat [-n] [-uwNrpest | -o fields] servicedir`.
pub fn svstat(args: &[OsString]) -> ExitCode {
    exit("s6-svstat", || {
        let mut numeric = false;
        let mut fields: Vec<&str> = Vec::new();
        let operands = getopt(
            args,
            "no:uwNrpest",
            |opt, value| {
                let add: Vec<&str> = match (opt, value) {
                    ('n', _) => {
                        numeric = true;
                        return Ok(());
                    }
                    ('o', Some(list)) => list
                        .split(',')
                        .map(|f| match FIELDS.iter().find(|k| **k == f) {
                            Some(k) => Ok(*k),
                            None if f.is_empty() => {
                                Err(Fatal { code: 100, message: "invalid null option field".into() })
                            }
                            None => Err(Fatal { code: 100, message: format!("invalid option field: {f}") }),
                        })
                        .collect::<Result<_, _>>()?,
                    ('u', _) => vec!["up"],
                    ('w', _) => vec!["wantedup"],
                    ('N', _) => vec!["normallyup"],
                    ('r', _) => vec!["ready"],
                    ('p', _) => vec!["pid"],
                    ('e', _) => vec!["exitcode"],
                    ('s', _) => vec!["signal"],
                    _ => vec!["updownfor"],
                };
                fields.extend(add);
                if fields.len() > 16 {
                    return Err(Fatal { code: 100, message: "too many option fields".into() });
                }
                Ok(())
            },
            SVSTAT_USAGE,
        )?;
        let dir = operands.first().map(PathBuf::from).ok_or_else(|| Fatal::usage(SVSTAT_USAGE))?;
        let show = dir.display();
        match s6::supervisor_running(&dir) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Fatal {
                    code: 1,
                    message: format!("unable to read status for {show}: s6-supervise not running"),
                });
            }
            Err(e) => return Err(Fatal { code: 111, message: format!("unable to check {show}: {e}") }),
        }
        let mut st = s6::read_status(&dir)
            .map_err(|e| Fatal { code: 111, message: format!("unable to read status for {show}: {e}") })?;
        let now = SystemTime::now();
        st.stamp = st.stamp.min(now);
        let normally_up = !dir.join("down").exists();
        let line = if fields.is_empty() {
            legacy(&st, normally_up, numeric, now)
        } else {
            fields.iter().map(|f| field(f, &st, normally_up, now)).collect::<Vec<_>>().join(" ")
        };
        println!("{line}");
        Ok(())
    })
}

fn seconds_since(t: SystemTime, now: SystemTime) -> u64 {
    now.duration_since(t).unwrap_or_default().as_secs()
}

/// s6-svstat's default line: `up (pid 12) 5 seconds, normally down, ready 5 seconds`.
fn legacy(st: &Status, normally_up: bool, numeric: bool, now: SystemTime) -> String {
    let up = st.is_up();
    let mut out = if up {
        format!("up (pid {}) ", st.pid)
    } else {
        match st.last_exit() {
            shoal_init::Exit::Signal(s) if numeric => format!("down (signal {s}) "),
            shoal_init::Exit::Signal(s) => format!("down (signal {}) ", signal_name(s)),
            shoal_init::Exit::Code(c) => format!("down (exitcode {c}) "),
        }
    };
    out.push_str(&format!("{} seconds", seconds_since(st.stamp, now)));
    if up && !normally_up {
        out.push_str(", normally down");
    }
    if !up && normally_up {
        out.push_str(", normally up");
    }
    if up && st.paused {
        out.push_str(", paused");
    }
    if !up && st.want_up {
        out.push_str(", want up");
    }
    if up && !st.want_up {
        out.push_str(", want down");
    }
    if st.ready {
        out.push_str(&format!(", ready {} seconds", seconds_since(st.ready_stamp, now)));
    }
    out
}

/// One `-o` field.
fn field(name: &str, st: &Status, normally_up: bool, now: SystemTime) -> String {
    let up = st.is_up();
    let (code, signum) = match (up, st.last_exit()) {
        (true, _) => (-1, -1),
        (false, shoal_init::Exit::Code(c)) => (c, -1),
        (false, shoal_init::Exit::Signal(s)) => (-1, s),
    };
    match name {
        "up" => up.to_string(),
        "wantedup" => st.want_up.to_string(),
        "normallyup" => normally_up.to_string(),
        "ready" => (st.pid != 0 && st.ready).to_string(),
        "paused" => st.paused.to_string(),
        "pid" => {
            if up {
                st.pid.to_string()
            } else {
                "-1".into()
            }
        }
        "exitcode" => code.to_string(),
        "signum" => signum.to_string(),
        "signal" if signum == -1 => "NA".into(),
        "signal" => signal_name(signum),
        "updownsince" => tai64n(st.stamp),
        "readysince" => tai64n(st.ready_stamp),
        "updownfor" => seconds_since(st.stamp, now).to_string(),
        _ => seconds_since(st.ready_stamp, now).to_string(),
    }
}

/// A TAI64N label as skalibs prints it: `@` and 24 hex digits.
fn tai64n(t: SystemTime) -> String {
    let mut out = String::from("@");
    for b in s6::tain_pack(t) {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn options_cluster_and_take_their_argument_attached_or_next() {
        let mut seen = Vec::new();
        let a = args(&["-wu", "-T", "500", "-h", "--", "-x"]);
        let record = |o, v: Option<&str>| {
            seen.push((o, v.map(str::to_owned)));
            Ok(())
        };
        let rest = getopt(&a, "abhT:w:", record, "u").ok().unwrap();
        assert_eq!(seen, vec![('w', Some("u".into())), ('T', Some("500".into())), ('h', None)]);
        assert_eq!(rest, &args(&["-x"])[..]);
        assert!(
            getopt(&args(&["-z"]), "ab", |_, _| Ok(()), "u").is_err(),
            "an unknown letter is a usage error"
        );
        assert!(getopt(&args(&["-T"]), "T:", |_, _| Ok(()), "u").is_err(), "a missing argument too");
    }

    #[test]
    fn the_legacy_line_reads_as_s6_svstat_prints_it() {
        let now = SystemTime::now();
        let ago = |s| now - Duration::from_secs(s);
        let up = Status { pid: 42, ready: false, want_up: true, ..Status::new(true, ago(7)) };
        assert_eq!(legacy(&up, true, false, now), "up (pid 42) 7 seconds");
        let down = Status {
            wstat: s6::wstat(shoal_init::Exit::Signal(15)),
            want_up: false,
            ..Status::new(false, ago(3))
        };
        assert_eq!(
            legacy(&down, true, false, now),
            "down (signal SIGTERM) 3 seconds, normally up, ready 3 seconds"
        );
        assert_eq!(legacy(&down, false, true, now), "down (signal 15) 3 seconds, ready 3 seconds");
        assert_eq!(field("signal", &down, true, now), "SIGTERM");
        assert_eq!(field("exitcode", &down, true, now), "-1");
        assert_eq!(field("pid", &up, true, now), "42");
        assert_eq!(tai64n(std::time::UNIX_EPOCH).len(), 25);
    }
}
