//! `shoal init` as a container's PID 1 would run it (here as a child subreaper):
//! init scripts, supervision and restarts, `finish` and `down`, stop order, grace
//! and SIGKILL, signal forwarding, zombie reaping, the main command's exit code, and s6's
//! control surface: `s6-svc`, `s6-svstat`, `s6-svscanctl` (ours and Debian's s6) and
//! `with-contenv` reading the environment init wrote.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A container layout in a temp folder: cont-init.d, services.d, cont-finish.d.
struct Layout {
    root: PathBuf,
}

impl Layout {
    fn new(name: &str) -> Layout {
        let root = std::env::temp_dir().join(format!("shoal-test-init-{name}-{}", free_port()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["cont-init.d", "services.d", "cont-finish.d"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        Layout { root }
    }

    fn script(&self, path: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let p = self.root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn file(&self, path: &str, body: &str) {
        std::fs::write(self.root.join(path), body).unwrap();
    }

    /// The shared event log services write to.
    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("events")).unwrap_or_default()
    }

    fn events(&self) -> PathBuf {
        self.root.join("events")
    }

    fn start(&self, extra: &[&str]) -> (Proc, PathBuf) {
        let out = self.root.join("stdout");
        let child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("init")
            .arg(format!("--cont-init-dir={}", self.root.join("cont-init.d").display()))
            .arg(format!("--services-dir={}", self.root.join("services.d").display()))
            .arg(format!("--cont-finish-dir={}", self.root.join("cont-finish.d").display()))
            .arg(format!("--scan-dir={},{}", self.scan().display(), self.root.join("s6/services").display()))
            .arg(format!("--contenv-dir={}", self.root.join("contenv").display()))
            .args(extra)
            .env("EVENTS", self.events())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(self.root.join("stderr")).unwrap())
            .spawn()
            .expect("shoal init starts");
        (Proc { child, name: "init".into() }, out)
    }

    /// The scan folder: each service's live folder, with its `supervise/`.
    fn scan(&self) -> PathBuf {
        self.root.join("service")
    }

    fn wait_log(&self, what: &str) {
        let ok = wait_for(Duration::from_secs(15), || self.log().contains(what));
        assert!(ok.is_some(), "waited for {what:?}; events:\n{}\nstderr:\n{}", self.log(), self.stderr());
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.root.join("stderr")).unwrap_or_default()
    }
}

fn lines_with(text: &str, what: &str) -> usize {
    text.lines().filter(|l| l.contains(what)).count()
}

/// Lines holding `what` after the first line holding `mark` (none if there is no such line).
fn lines_after(text: &str, mark: &str, what: &str) -> usize {
    text.lines().skip_while(|l| !l.contains(mark)).skip(1).filter(|l| l.contains(what)).count()
}

#[test]
fn services_run_after_init_scripts_restart_a_second_apart_and_obey_finish_and_down() {
    let l = Layout::new("supervise");
    l.script("cont-init.d/10-first", "echo init-1 >> $EVENTS");
    l.script("cont-init.d/20-second", "echo init-2 >> $EVENTS");
    // Exits at once every time: restarted no faster than once a second.
    l.script(
        "services.d/flaky/run",
        "echo \"flaky start $(date +%s%N)\" >> $EVENTS; echo hello from flaky; exit 3",
    );
    l.script("services.d/flaky/finish", "echo \"flaky finish $1 $2\" >> $EVENTS");
    // Its finish says 125 after the second run: down for good.
    l.script("services.d/once/run", "echo once start >> $EVENTS; exit 0");
    l.script(
        "services.d/once/finish",
        "n=$(grep -c 'once start' $EVENTS); [ \"$n\" -ge 2 ] && { echo once done >> $EVENTS; exit 125; }; exit 0",
    );
    l.script("services.d/sleeper/run", "echo sleeper start >> $EVENTS; exec sleep 1000");
    l.script("services.d/disabled/run", "echo disabled start >> $EVENTS; exec sleep 1000");
    l.file("services.d/disabled/down", "");
    let (mut init, stdout) = l.start(&[]);

    l.wait_log("flaky finish 3 0");
    l.wait_log("once done");
    let log = l.log();
    assert!(log.starts_with("init-1\ninit-2\n"), "init scripts first, in order:\n{log}");
    let ok = wait_for(Duration::from_secs(10), || lines_with(&l.log(), "flaky start") >= 3);
    assert!(ok.is_some(), "flaky restarted:\n{}", l.log());
    let starts: Vec<u128> =
        l.log().lines().filter_map(|x| x.strip_prefix("flaky start ")?.parse().ok()).collect();
    for pair in starts.windows(2) {
        assert!(pair[1] - pair[0] >= 950_000_000, "restarts at least a second apart: {starts:?}");
    }
    // `once` ran twice, then its finish said 125: it stays down. A restart would come one
    // restart delay after its last start; `flaky`, restarted every delay, starting three more
    // times after `once` was done shows that much time went by for the supervisor.
    let ok = wait_for(Duration::from_secs(15), || lines_after(&l.log(), "once done", "flaky start") >= 3);
    assert!(ok.is_some(), "flaky kept restarting after once was done:\n{}", l.log());
    assert_eq!(lines_with(&l.log(), "once start"), 2, "{}", l.log());
    assert_eq!(lines_with(&l.log(), "disabled start"), 0, "a `down` service is not started");
    assert_eq!(lines_with(&l.log(), "sleeper start"), 1, "a running service is left alone");
    let out = std::fs::read_to_string(&stdout).unwrap();
    assert!(
        out.lines().any(|x| x == "[flaky] hello from flaky"),
        "output prefixed with the service's name:\n{out}"
    );

    // A service killed by a signal: its finish gets 256 and the signal.
    let sleeper_pid = pid_of("sleep 1000", init.pid());
    let _ = Command::new("kill").arg("-KILL").arg(sleeper_pid.to_string()).status();
    l.wait_log("sleeper start\n");
    init.signal("TERM");
    assert_eq!(init.wait_exit(Duration::from_secs(20)), Some(0), "SIGTERM: an orderly stop, exit 0");
}

/// The pid of a process whose command line contains `needle`, descended from `ancestor`.
fn pid_of(needle: &str, ancestor: u32) -> u32 {
    let found = wait_for(Duration::from_secs(10), || find_descendant(needle, ancestor).is_some());
    assert!(found.is_some(), "no {needle:?} under {ancestor}");
    find_descendant(needle, ancestor).unwrap()
}

fn find_descendant(needle: &str, ancestor: u32) -> Option<u32> {
    let ppid = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
    };
    std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).find(
        |&pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if !cmd.contains(needle) {
                return false;
            }
            let mut p = pid;
            for _ in 0..10 {
                match ppid(p) {
                    Some(pp) if pp == ancestor => return true,
                    Some(pp) if pp > 1 => p = pp,
                    _ => return false,
                }
            }
            false
        },
    )
}

/// Zombie children of `pid`.
fn zombies_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                let rest: Vec<&str> =
                    s.rsplit_once(')').map(|x| x.1).unwrap_or("").split_whitespace().collect();
                rest.first() == Some(&"Z") && rest.get(1) == Some(&pid.to_string().as_str())
            })
        })
        .collect()
}

#[test]
fn the_agent_stops_before_the_app_and_stubborn_services_are_killed_after_the_grace() {
    let l = Layout::new("order");
    // Stop order 0: the agent takes 500 ms to leave.
    l.script(
        "services.d/agent/run",
        "trap 'echo agent term >> $EVENTS; sleep 0.5; echo agent left >> $EVENTS; exit 0' TERM; echo agent up >> $EVENTS; while :; do sleep 0.05; done",
    );
    // Stop order 1: the app, which must not be told before the agent is gone.
    l.script(
        "services.d/app/run",
        "trap 'echo app term >> $EVENTS; exit 0' TERM; echo app up >> $EVENTS; while :; do sleep 0.05; done",
    );
    l.file("services.d/app/stop-order", "1\n");
    // Stop order 2: ignores SIGTERM; SIGKILL after the grace.
    l.script(
        "services.d/stubborn/run",
        "trap '' TERM; echo stubborn up >> $EVENTS; while :; do sleep 0.05; done",
    );
    l.file("services.d/stubborn/stop-order", "2");
    l.script("cont-finish.d/done", "echo finished >> $EVENTS");
    let (mut init, _) = l.start(&["--grace=1s"]);
    for s in ["agent up", "app up", "stubborn up"] {
        l.wait_log(s);
    }

    let t = Instant::now();
    init.signal("TERM");
    assert_eq!(init.wait_exit(Duration::from_secs(20)), Some(0));
    let took = t.elapsed();
    let log = l.log();
    let at = |what: &str| log.find(what).unwrap_or_else(|| panic!("no {what:?} in\n{log}"));
    assert!(at("agent left") < at("app term"), "the app is stopped only after the agent left:\n{log}");
    assert!(at("app term") < at("finished"), "cont-finish.d runs last:\n{log}");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(10),
        "grace then SIGKILL: {took:?}"
    );
    assert!(l.stderr().contains("still running after the grace time"), "{}", l.stderr());
}

#[test]
fn orphans_are_reaped_and_the_main_commands_exit_code_is_the_containers() {
    let l = Layout::new("main");
    // Each run leaves an orphan that exits soon after: re-parented to init, which must reap it.
    l.script(
        "services.d/forker/run",
        "sh -c 'sleep 0.2 & echo orphan $! >> $EVENTS'; echo forked >> $EVENTS; exec sleep 1000",
    );
    // The main command runs until the test says so (30 s at most): init is still there to be
    // looked at.
    let go = l.root.join("go");
    let main = format!(
        "i=0; while [ ! -e {} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; exit 7",
        go.display()
    );
    let (mut init, _) = l.start(&["--", "sh", "-c", &main]);
    l.wait_log("forked");
    let orphan: u32 = l
        .log()
        .lines()
        .find_map(|x| x.strip_prefix("orphan ")?.parse().ok())
        .expect("the service wrote its orphan's pid");
    // Exited, the orphan is a zombie until its parent (init, by now) reaps it: gone means reaped.
    let reaped = wait_for(Duration::from_secs(15), || !Path::new(&format!("/proc/{orphan}")).exists());
    assert!(
        reaped.is_some(),
        "the orphan {orphan} was not reaped: zombies under init {:?}",
        zombies_of(init.pid())
    );
    assert!(matches!(init.child.try_wait(), Ok(None)), "init still runs");
    assert_eq!(zombies_of(init.pid()), Vec::<u32>::new(), "no zombie left under init");
    std::fs::write(&go, "").unwrap();
    assert_eq!(init.wait_exit(Duration::from_secs(20)), Some(7), "the main command's exit code");
}

#[test]
fn a_service_that_keeps_failing_stops_the_container_when_asked_to() {
    let l = Layout::new("failing");
    l.script("services.d/broken/run", "echo broken try >> $EVENTS; exit 1");
    let (mut init, _) = l.start(&["--max-failures=3"]);
    assert_eq!(init.wait_exit(Duration::from_secs(20)), Some(1), "{}", l.stderr());
    assert_eq!(lines_with(&l.log(), "broken try"), 3);
}

#[test]
fn signals_other_than_term_and_int_are_forwarded_to_services_and_the_main_command() {
    let l = Layout::new("forward");
    l.script(
        "services.d/hup/run",
        "trap 'echo service got HUP >> $EVENTS' HUP USR1; echo hup up >> $EVENTS; while :; do sleep 0.05; done",
    );
    let main = format!(
        "trap 'echo main got HUP >> {0}' HUP; trap 'echo main got USR1 >> {0}' USR1; echo main up >> {0}; while :; do sleep 0.05; done",
        l.events().display()
    );
    let (mut init, _) = l.start(&["--", "sh", "-c", &main]);
    l.wait_log("hup up");
    l.wait_log("main up");
    init.signal("HUP");
    l.wait_log("service got HUP");
    init.signal("USR1");
    l.wait_log("main got USR1");
    init.signal("INT");
    assert_eq!(init.wait_exit(Duration::from_secs(20)), Some(0), "SIGINT: an orderly stop");
}

/// Runs a tool (`shoal <tool>` or a program on the PATH, such as Debian's s6), returning its
/// exit code, stdout and stderr.
fn tool(program: &str, args: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let mut cmd = if program.starts_with("s6-") && program.ends_with("(debian)") {
        Command::new(program.trim_end_matches("(debian)"))
    } else {
        let mut c = Command::new(env!("CARGO_BIN_EXE_shoal"));
        c.arg(program);
        c
    };
    let out = cmd.args(args).envs(env.iter().map(|(k, v)| (k, v))).output().expect("the tool runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn s6_tools_drive_the_services_and_debians_s6_reads_and_drives_them_too() {
    let debian_s6 = require("s6-svstat");
    let l = Layout::new("s6");
    l.script(
        "services.d/app/run",
        "echo \"app start $$\" >> $EVENTS; trap 'echo \"app hup $$\" >> $EVENTS' HUP; \
         trap 'echo \"app term $$\" >> $EVENTS; exit 0' TERM; while :; do sleep 0.05; done",
    );
    l.script("services.d/later/run", "echo later start >> $EVENTS; exec sleep 1000");
    l.file("services.d/later/down", "");
    let (mut init, _) = l.start(&[]);
    l.wait_log("app start");
    let app = l.scan().join("app");
    let alias = l.root.join("s6/services/app");
    let app_s = app.to_str().unwrap();
    let first_pid = |log: &str, what: &str| -> Vec<String> {
        log.lines().filter_map(|x| x.strip_prefix(what).map(str::to_owned)).collect()
    };
    let pid = first_pid(&l.log(), "app start ")[0].clone();

    // s6-svstat, ours and Debian's, read the same status file and lock.
    let (code, out, err) = tool("s6-svstat", &[app_s], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("up (pid {pid}) ")), "{out}");
    if debian_s6 {
        let (code, out, err) = tool("s6-svstat(debian)", &[app_s], &[]);
        assert_eq!(code, 0, "Debian's s6-svstat reads shoal init's supervise folder: {err}");
        assert!(
            out.starts_with(&format!("up (pid {pid}) ")) && out.trim_end().ends_with(" seconds"),
            "{out}"
        );
        let (_, out, _) = tool("s6-svstat(debian)", &["-o", "up,wantedup,normallyup,pid", app_s], &[]);
        assert_eq!(out.trim(), format!("true true true {pid}"));
    }

    // -h through the s6-overlay v1/v2 path (a link to the scan folder): the service gets SIGHUP.
    let (code, _, err) = tool("s6-svc", &["-h", alias.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    l.wait_log(&format!("app hup {pid}"));

    // -d takes it down and keeps it down; -wd waits for that.
    let (code, _, err) = tool("s6-svc", &["-wd", "-d", app_s], &[]);
    assert_eq!(code, 0, "{err}");
    l.wait_log(&format!("app term {pid}"));
    let (_, out, _) = tool("s6-svstat", &["-o", "up,wantedup,exitcode", app_s], &[]);
    assert_eq!(out.trim(), "false false 0");
    let (_, out, _) = tool("s6-svstat", &[app_s], &[]);
    assert!(out.starts_with("down (exitcode 0) ") && out.contains(", normally up, ready "), "{out}");

    // -u brings it back, -r restarts it with a new pid; Debian's s6-svc (which waits on the
    // event/ fifodir through s6-svlisten1) drives it the same way.
    let (code, _, err) = tool("s6-svc", &["-wu", "-u", app_s], &[]);
    assert_eq!(code, 0, "{err}");
    let ok = wait_for(Duration::from_secs(10), || first_pid(&l.log(), "app start ").len() == 2);
    assert!(ok.is_some(), "{}", l.log());
    let (code, _, err) = tool("s6-svc", &["-wr", "-r", app_s], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(first_pid(&l.log(), "app start ").len(), 3, "{}", l.log());
    if debian_s6 {
        let (code, _, err) = tool("s6-svc(debian)", &["-T", "10000", "-wd", "-d", app_s], &[]);
        assert_eq!(code, 0, "Debian's s6-svc -wd: {err}");
        let (_, out, _) = tool("s6-svstat(debian)", &["-u", app_s], &[]);
        assert_eq!(out.trim(), "false");
        let (code, _, err) = tool("s6-svc(debian)", &["-T", "10000", "-wu", "-u", app_s], &[]);
        assert_eq!(code, 0, "Debian's s6-svc -wu: {err}");
        let (_, out, _) = tool("s6-svstat(debian)", &["-u", app_s], &[]);
        assert_eq!(out.trim(), "true");
    }

    // A service with a `down` file waits for -u; -o runs it once.
    let later = l.scan().join("later");
    let (_, out, _) = tool("s6-svstat", &[later.to_str().unwrap()], &[]);
    assert!(out.starts_with("down (exitcode 0) ") && !out.contains("normally up"), "{out}");
    assert_eq!(lines_with(&l.log(), "later start"), 0);
    let (code, _, err) = tool("s6-svc", &["-wu", "-o", later.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines_with(&l.log(), "later start"), 1);

    // Bad input: s6's messages and exit codes, and nothing changed.
    let missing = l.scan().join("nope");
    let (code, _, err) = tool("s6-svc", &["-h", missing.to_str().unwrap()], &[]);
    assert_eq!(
        (code, err.trim()),
        (
            111,
            format!("s6-svc: fatal: unable to control {}: No such file or directory", missing.display())
                .as_str()
        )
    );
    let (code, _, err) = tool("s6-svc", &["-h", l.root.to_str().unwrap()], &[]);
    assert_eq!(code, 100, "a folder nobody supervises: {err}");
    assert!(err.ends_with("supervisor not listening\n"), "{err}");
    let (code, _, err) = tool("s6-svc", &["-Z", app_s], &[]);
    assert_eq!(code, 100, "{err}");
    assert!(err.starts_with("s6-svc: fatal: usage: s6-svc "), "{err}");
    let (code, _, _) = tool("s6-svstat", &[l.root.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "s6-supervise not running");

    // with-contenv, run from outside init (as `docker exec` would), gets init's environment.
    let (code, out, err) = tool(
        "with-contenv",
        &["sh", "-c", "echo \"$EVENTS\""],
        &[("SHOAL_CONTENV_DIR", &l.root.join("contenv"))],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), l.events().display().to_string());

    // s6-svscanctl -t: the container stops as on SIGTERM.
    let (code, _, err) = tool("s6-svscanctl", &["-t", l.scan().to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(init.wait_exit(Duration::from_secs(20)), Some(0), "{}", l.stderr());
    let (code, _, _) = tool("s6-svstat", &[app_s], &[]);
    assert_eq!(code, 1, "once init is gone, no supervisor holds the lock");
}

#[test]
fn invoked_as_init_it_is_shoal_init_and_runs_its_arguments_as_the_main_command() {
    let l = Layout::new("as-init");
    let link = l.root.join("init");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_shoal"), &link).unwrap();
    l.script("services.d/svc/run", "echo svc start >> $EVENTS; exec sleep 1000");
    // s6-overlay's `/init CMD ARGS`: CMD is the main command; its exit code is the container's.
    let out = Command::new(&link)
        .args([
            "sh",
            "-c",
            "while ! grep -q 'svc start' \"$EVENTS\" 2>/dev/null; do sleep 0.05; done; exit 7",
        ])
        .env("EVENTS", l.events())
        .env("SHOAL_INIT_SERVICES_DIR", l.root.join("services.d"))
        .env("SHOAL_INIT_CONT_INIT_DIR", l.root.join("cont-init.d"))
        .env("SHOAL_INIT_CONT_FINISH_DIR", l.root.join("cont-finish.d"))
        .env("SHOAL_INIT_SCAN_DIRS", l.scan())
        .env("SHOAL_INIT_CONTENV_DIR", l.root.join("contenv"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lines_with(&l.log(), "svc start"), 1, "the services ran beside the main command");
}
