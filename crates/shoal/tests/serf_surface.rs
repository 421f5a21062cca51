//! The Serf agent surface: the stock `serf` CLI against a Shoal agent, the `shoal` CLI
//! against a Serf agent, handler scripts, user events, queries, key rotation and snapshots
//! across a mixed cluster.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Lines, Proc, Serf, addr, free_port, require, shoal_agent, wait_for};

const WAIT: Duration = Duration::from_secs(30);

/// A `shoal agent` process with its RPC on a free port.
struct ShoalProc {
    proc: Proc,
    bind: std::net::SocketAddr,
    rpc: std::net::SocketAddr,
}

fn shoal(name: &str, extra: &[&str]) -> ShoalProc {
    let (bind, rpc) = (addr(free_port()), addr(free_port()));
    let mut args = vec!["--rpc-addr".to_string(), rpc.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = shoal_agent(name, bind, &args);
    let p = ShoalProc { proc, bind, rpc };
    wait_for(Duration::from_secs(10), || serf_cli(&p.rpc, &["members"]).status.success())
        .expect("shoal RPC up");
    p
}

/// Runs the real `serf` CLI against any agent's RPC.
fn serf_cli(rpc: &std::net::SocketAddr, args: &[&str]) -> std::process::Output {
    Command::new("serf")
        .arg(args[0])
        .arg(format!("-rpc-addr={rpc}"))
        .args(&args[1..])
        .output()
        .expect("serf CLI")
}

/// Runs the `shoal` CLI against any agent's RPC.
fn shoal_cli(rpc: &std::net::SocketAddr, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .args(["--rpc-addr", &rpc.to_string()])
        .output()
        .expect("shoal CLI")
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn status_line(rpc: &std::net::SocketAddr, node: &str) -> Option<String> {
    stdout(&serf_cli(rpc, &["members"]))
        .lines()
        .find(|l| l.split_whitespace().next() == Some(node))
        .map(str::to_string)
}

fn status_of(rpc: &std::net::SocketAddr, node: &str) -> Option<String> {
    status_line(rpc, node).and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shoal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_script(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    Command::new("chmod").arg("+x").arg(&p).status().unwrap();
    p.display().to_string()
}

#[test]
fn the_serf_cli_drives_a_shoal_agent() {
    if !require("serf") {
        return;
    }
    let a = shoal("shoal-cli-a", &["--tag", "role=balancer", "--tag", "dc=eu"]);
    let serf = Serf::start("serf-cli-b", &["-tag", "role=backend"]);

    // join
    let out = serf_cli(&a.rpc, &["join", &serf.bind.to_string()]);
    assert!(stdout(&out).contains("Successfully joined cluster by contacting 1 nodes"), "{out:?}");
    wait_for(WAIT, || status_of(&a.rpc, "serf-cli-b").as_deref() == Some("alive")).expect("joined");

    // members and its filters
    let all = stdout(&serf_cli(&a.rpc, &["members"]));
    assert!(all.contains("shoal-cli-a") && all.contains("serf-cli-b"), "{all}");
    let backends = stdout(&serf_cli(&a.rpc, &["members", "-tag", "role=back.*"]));
    assert!(backends.contains("serf-cli-b") && !backends.contains("shoal-cli-a"), "{backends}");
    let by_name = stdout(&serf_cli(&a.rpc, &["members", "-name", "shoal.*", "-status", "alive"]));
    assert!(by_name.contains("shoal-cli-a") && !by_name.contains("serf-cli-b"), "{by_name}");
    let json: serde_json::Value =
        serde_json::from_slice(&serf_cli(&a.rpc, &["members", "-format", "json"]).stdout).unwrap();
    let me = json["members"].as_array().unwrap().iter().find(|m| m["name"] == "shoal-cli-a").unwrap().clone();
    assert_eq!(me["addr"], a.bind.to_string());
    assert_eq!(me["tags"]["dc"], "eu");
    assert_eq!(me["status"], "alive");

    // tags -set / -delete, seen by the Serf side
    assert!(serf_cli(&a.rpc, &["tags", "-set", "zone=a", "-delete", "dc"]).status.success());
    wait_for(WAIT, || {
        status_line(&serf.rpc, "shoal-cli-a").is_some_and(|l| l.contains("zone=a") && !l.contains("dc=eu"))
    })
    .expect("serf sees the new tags");

    // event and query (Serf answers its query itself with a handler-less ack)
    let ev = stdout(&serf_cli(&a.rpc, &["event", "deploy", "v2"]));
    assert!(ev.contains("Event 'deploy' dispatched"), "{ev}");
    let q = stdout(&serf_cli(&a.rpc, &["query", "-timeout=2s", "ping"]));
    assert!(q.contains("Ack from 'serf-cli-b'") && q.contains("Ack from 'shoal-cli-a'"), "{q}");
    assert!(q.contains("Total Acks: 2"), "{q}");

    // info
    let info = stdout(&serf_cli(&a.rpc, &["info"]));
    assert!(info.contains("name = shoal-cli-a") && info.contains("members = 2"), "{info}");

    // monitor streams log lines and events
    let mut monitor = Command::new("serf")
        .args(["monitor", &format!("-rpc-addr={}", a.rpc), "-log-level=info"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::collect(monitor.stdout.take().unwrap());
    // The monitor shows only what is logged after it attached: a probe event is sent until
    // the monitor shows one, then the event under test, once.
    let attached = wait_for(WAIT, || {
        let shown = lines.so_far().iter().any(|l| l.contains("monitor-probe"));
        if !shown {
            serf_cli(&a.rpc, &["event", "monitor-probe"]);
        }
        shown
    });
    assert!(attached.is_some(), "the monitor attached: {:?}", lines.so_far());
    serf_cli(&serf.rpc, &["event", "from-serf"]);
    let seen = lines.wait(WAIT, |l| l.contains("from-serf"));
    let _ = monitor.kill();
    let _ = monitor.wait();
    assert!(seen.is_some(), "monitor saw the event: {:?}", lines.finish());

    // keys without encryption: every member reports it
    let keys = serf_cli(&a.rpc, &["keys", "-list"]);
    assert!(!keys.status.success());
    assert!(stdout(&keys).contains("encryption not enabled"), "{keys:?}");

    // force-leave of a failed member, then a graceful leave that stops the agent
    let victim = Serf::start("serf-cli-victim", &[&format!("-join={}", a.bind)]);
    wait_for(WAIT, || status_of(&a.rpc, "serf-cli-victim").as_deref() == Some("alive")).expect("victim in");
    victim.proc.signal("KILL");
    wait_for(WAIT, || status_of(&a.rpc, "serf-cli-victim").as_deref() == Some("failed")).expect("failed");
    assert!(serf_cli(&a.rpc, &["force-leave", "serf-cli-victim"]).status.success());
    wait_for(WAIT, || status_of(&a.rpc, "serf-cli-victim").as_deref() == Some("left")).expect("forced out");

    let mut a = a;
    let leave = serf_cli(&a.rpc, &["leave"]);
    assert!(stdout(&leave).contains("Graceful leave complete"), "{leave:?}");
    assert_eq!(a.proc.wait_exit(Duration::from_secs(10)), Some(0), "the agent exits after an RPC leave");
    wait_for(WAIT, || status_of(&serf.rpc, "shoal-cli-a").as_deref() == Some("left")).expect("serf: left");
}

#[test]
fn the_shoal_cli_drives_a_serf_agent() {
    if !require("serf") {
        return;
    }
    let serf = Serf::start("serf-target", &["-tag", "role=backend"]);
    let other = shoal("shoal-peer", &["--tag", "role=balancer"]);
    let out = shoal_cli(&serf.rpc, &["join", &other.bind.to_string()]);
    assert!(stdout(&out).contains("contacting 1 nodes"), "{out:?}");
    wait_for(WAIT, || stdout(&shoal_cli(&serf.rpc, &["members"])).contains("shoal-peer")).expect("joined");

    let table = stdout(&shoal_cli(&serf.rpc, &["members", "--status", "alive", "--tag", "role=balancer"]));
    assert!(table.contains("shoal-peer") && !table.contains("serf-target"), "{table}");
    let json: serde_json::Value =
        serde_json::from_slice(&shoal_cli(&serf.rpc, &["members", "--format", "json"]).stdout).unwrap();
    assert_eq!(json["members"].as_array().unwrap().len(), 2);

    assert!(shoal_cli(&serf.rpc, &["tags", "--set", "zone=b"]).status.success());
    wait_for(WAIT, || stdout(&shoal_cli(&other.rpc, &["members"])).contains("zone=b")).expect("tag spread");
    assert!(stdout(&shoal_cli(&serf.rpc, &["event", "hello"])).contains("dispatched"));
    let q = stdout(&shoal_cli(&serf.rpc, &["query", "--timeout", "2s", "ping"]));
    assert!(q.contains("Total Acks: 2"), "{q}");
    let info = stdout(&shoal_cli(&serf.rpc, &["info"]));
    assert!(info.contains("name = serf-target"), "{info}");
    assert!(stdout(&shoal_cli(&serf.rpc, &["leave"])).contains("Graceful leave complete"));
    wait_for(WAIT, || status_of(&other.rpc, "serf-target").as_deref() == Some("left")).expect("left");
}

/// The reference stack's handler pattern: one file per live backend in a directory.
fn nodes_handlers(dir: &Path, nodes: &Path) -> Vec<String> {
    let join = write_script(
        dir,
        "join.sh",
        &format!(
            "while IFS=$(printf '\\t') read -r name ip role tags; do\n  [ \"$role\" = backend ] && echo \"$name $ip\" > {}/\"$name\"\ndone\nexit 0",
            nodes.display()
        ),
    );
    let leave = write_script(
        dir,
        "leave.sh",
        &format!(
            "while IFS=$(printf '\\t') read -r name ip role tags; do\n  [ \"$role\" = backend ] && rm -f {}/\"$name\"\ndone\nexit 0",
            nodes.display()
        ),
    );
    vec![format!("member-join={join}"), format!("member-leave,member-failed={leave}")]
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| {
                    format!(
                        "{} {}",
                        e.file_name().to_string_lossy(),
                        std::fs::read_to_string(e.path()).unwrap_or_default().trim()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn handler_directory_is_the_same_under_shoal_and_serf() {
    if !require("serf") {
        return;
    }
    let work = temp_dir("handlers");
    let (shoal_nodes, serf_nodes) = (work.join("shoal-nodes"), work.join("serf-nodes"));
    std::fs::create_dir_all(&shoal_nodes).unwrap();
    std::fs::create_dir_all(&serf_nodes).unwrap();
    let shoal_h = nodes_handlers(&work.join("."), &shoal_nodes);
    std::fs::create_dir_all(work.join("s")).unwrap();
    let serf_h = nodes_handlers(&work.join("s"), &serf_nodes);

    let mut shoal_args = vec!["--tag", "role=balancer"];
    for h in &shoal_h {
        shoal_args.extend(["--event-handler", h.as_str()]);
    }
    let ha_shoal = shoal("ha-shoal", &shoal_args);
    let join_flag = format!("-join={}", ha_shoal.bind);
    let serf_h0 = format!("-event-handler={}", serf_h[0]);
    let serf_h1 = format!("-event-handler={}", serf_h[1]);
    let _ha_serf = Serf::start("ha-serf", &["-tag", "role=balancer", &join_flag, &serf_h0, &serf_h1]);

    let join = ha_shoal.bind.to_string();
    let mut backends: Vec<Proc> = (1..=3)
        .map(|i| {
            shoal_agent(&format!("web-{i}"), addr(free_port()), &["--join", &join, "--tag", "role=backend"])
        })
        .collect();
    let _other = shoal_agent("cache-1", addr(free_port()), &["--join", &join, "--tag", "role=cache"]);

    let expect_same = |n: usize, what: &str| {
        wait_for(WAIT, || listing(&shoal_nodes).len() == n && listing(&serf_nodes) == listing(&shoal_nodes))
            .unwrap_or_else(|| {
                panic!("{what}: shoal {:?} serf {:?}", listing(&shoal_nodes), listing(&serf_nodes))
            });
    };
    expect_same(3, "three backends joined");
    assert!(
        listing(&shoal_nodes)
            .iter()
            .all(|l| l.starts_with("web-") && l.contains(" web-") && l.contains("127.0.0.1"))
    );

    backends[1].signal("TERM"); // web-2 leaves
    expect_same(2, "web-2 left");
    backends[2].signal("KILL"); // web-3 fails
    expect_same(1, "web-3 failed");
    assert_eq!(listing(&shoal_nodes)[0].split_whitespace().next(), Some("web-1"));
    backends.clear();
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn user_events_and_queries_cross_implementations() {
    if !require("serf") {
        return;
    }
    let work = temp_dir("events");
    let shoal_log = work.join("shoal-events");
    let serf_log = work.join("serf-events");
    let shoal_user = write_script(
        &work,
        "su.sh",
        &format!("echo \"$SERF_EVENT $SERF_USER_EVENT $(cat)\" >> {}", shoal_log.display()),
    );
    let serf_user = write_script(
        &work,
        "fu.sh",
        &format!("echo \"$SERF_EVENT $SERF_USER_EVENT $(cat)\" >> {}", serf_log.display()),
    );
    let shoal_q = write_script(&work, "sq.sh", "echo \"shoal says $(cat) to $SERF_QUERY_NAME\"");
    let serf_q = write_script(&work, "fq.sh", "echo \"serf says $(cat) to $SERF_QUERY_NAME\"");

    let a = shoal(
        "shoal-ev",
        &[
            "--event-handler",
            &format!("user:deploy={shoal_user}"),
            "--event-handler",
            &format!("query:whoami={shoal_q}"),
        ],
    );
    let serf = Serf::start(
        "serf-ev",
        &[
            &format!("-join={}", a.bind),
            &format!("-event-handler=user:deploy={serf_user}"),
            &format!("-event-handler=query:whoami={serf_q}"),
        ],
    );
    wait_for(WAIT, || status_of(&a.rpc, "serf-ev").as_deref() == Some("alive")).expect("joined");

    assert!(serf_cli(&serf.rpc, &["event", "-coalesce=false", "deploy", "from-serf"]).status.success());
    assert!(shoal_cli(&a.rpc, &["event", "--no-coalesce", "deploy", "from-shoal"]).status.success());
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    wait_for(WAIT, || {
        let (s, f) = (read(&shoal_log), read(&serf_log));
        s.contains("user deploy from-serf")
            && s.contains("user deploy from-shoal")
            && f.contains("user deploy from-shoal")
            && f.contains("user deploy from-serf")
    })
    .unwrap_or_else(|| panic!("handlers ran: shoal {:?} serf {:?}", read(&shoal_log), read(&serf_log)));

    for rpc in [a.rpc, serf.rpc] {
        let q = stdout(&serf_cli(&rpc, &["query", "-timeout=3s", "whoami", "hello"]));
        assert!(q.contains("Response from 'shoal-ev': shoal says hello to whoami"), "{q}");
        assert!(q.contains("Response from 'serf-ev': serf says hello to whoami"), "{q}");
    }
    let q = stdout(&shoal_cli(&a.rpc, &["query", "--timeout", "3s", "--node", "serf-ev", "whoami", "hi"]));
    assert!(q.contains("serf says hi") && !q.contains("shoal says"), "node filter: {q}");
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn key_rotation_in_a_mixed_cluster_keeps_membership() {
    if !require("serf") {
        return;
    }
    let old = "5K9OtfP7efFrNKe5WCQvXvnaXJ5cWP0SvXiwe0kkjM4=";
    let new = "vh1ADzNXoAeS6hreKdgg5u4nINaL/n+5i7sInOyquFo=";
    let work = temp_dir("keys");
    let ring = work.join("keyring.json");
    let a = shoal("shoal-k1", &["--encrypt", old, "--keyring-file", ring.to_str().unwrap()]);
    let s1 = Serf::start("serf-k1", &[&format!("-encrypt={old}"), &format!("-join={}", a.bind)]);
    let _s2 = Serf::start("serf-k2", &[&format!("-encrypt={old}"), &format!("-join={}", a.bind)]);
    let b = shoal("shoal-k2", &["--encrypt", old, "--join", &a.bind.to_string()]);
    let all_alive = |rpc: &std::net::SocketAddr| {
        ["shoal-k1", "shoal-k2", "serf-k1", "serf-k2"]
            .iter()
            .all(|n| status_of(rpc, n).as_deref() == Some("alive"))
    };
    wait_for(WAIT, || all_alive(&a.rpc) && all_alive(&s1.rpc)).expect("encrypted cluster formed");

    // User events keep gossip busy during the rotation.
    let busy = std::thread::spawn({
        let rpc = s1.rpc;
        move || {
            for i in 0..30 {
                serf_cli(&rpc, &["event", "traffic", &i.to_string()]);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    let install = serf_cli(&a.rpc, &["keys", "-install", new]);
    assert!(install.status.success(), "{install:?}");
    let use_new = serf_cli(&b.rpc, &["keys", "-use", new]);
    assert!(use_new.status.success(), "{use_new:?}");
    // Shoal's CLI against a Serf agent finishes the rotation.
    let remove = shoal_cli(&s1.rpc, &["keys", "--remove", old]);
    assert!(remove.status.success(), "{remove:?}");
    busy.join().unwrap();

    let list = stdout(&serf_cli(&a.rpc, &["keys", "-list"]));
    assert!(list.contains(new) && list.contains("[4/4]") && !list.contains(old), "{list}");
    // With the old key gone everywhere, every member still hears and answers a Shoal agent
    // and a Serf agent: a query from each is acknowledged by all four.
    for rpc in [a.rpc, s1.rpc] {
        let acked = wait_for(WAIT, || {
            stdout(&serf_cli(&rpc, &["query", "-timeout=3s", "after-rotation"])).contains("Total Acks: 4")
        });
        assert!(acked.is_some(), "all four acknowledge a query from {rpc} with the new key alone");
    }
    assert!(all_alive(&a.rpc) && all_alive(&s1.rpc), "membership survived the rotation");
    let saved = std::fs::read_to_string(&ring).unwrap();
    assert!(saved.contains(new) && !saved.contains(old), "keyring file follows: {saved}");

    // A newcomer with only the old key is now shut out.
    let late = Serf::start("serf-late", &[&format!("-encrypt={old}")]);
    assert!(!serf_cli(&late.rpc, &["join", &a.bind.to_string()]).status.success());
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn snapshot_rejoins_known_members_without_replaying_events() {
    if !require("serf") {
        return;
    }
    let work = temp_dir("snapshot");
    let snap = work.join("snap");
    let events = work.join("events");
    let handler = write_script(&work, "h.sh", &format!("echo \"$SERF_USER_EVENT\" >> {}", events.display()));
    let serf = Serf::start("serf-snap", &[]);
    let bind = addr(free_port());
    let rpc = addr(free_port());
    let args = |join: bool| {
        let mut v = vec![
            "--rpc-addr".to_string(),
            rpc.to_string(),
            "--snapshot".to_string(),
            snap.display().to_string(),
            "--event-handler".to_string(),
            format!("user={handler}"),
            "--coalesce-period".to_string(),
            "0".to_string(),
        ];
        if join {
            v.extend(["--join".to_string(), serf.bind.to_string()]);
        }
        v
    };
    let first_args = args(true);
    let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let first = shoal_agent("shoal-snap", bind, &first_args);
    wait_for(WAIT, || status_of(&serf.rpc, "shoal-snap").as_deref() == Some("alive")).expect("joined");
    serf_cli(&serf.rpc, &["event", "-coalesce=false", "before-restart"]);
    wait_for(WAIT, || std::fs::read_to_string(&events).unwrap_or_default().contains("before-restart"))
        .expect("ran");
    // The snapshot is flushed every 500 ms: kill only once it holds the event's clock (the
    // only user event so far).
    let recorded = wait_for(WAIT, || {
        std::fs::read_to_string(&snap).unwrap_or_default().lines().any(|l| l.starts_with("event-clock: "))
    });
    assert!(recorded.is_some(), "the snapshot records the event clock");
    first.signal("KILL");
    drop(first);

    // Restarted without --join: it finds the cluster through the snapshot, and does not
    // run the handler for the event it already handled.
    let second_args = args(false);
    let second_args: Vec<&str> = second_args.iter().map(String::as_str).collect();
    let _second = shoal_agent("shoal-snap", bind, &second_args);
    wait_for(WAIT, || status_of(&rpc, "serf-snap").as_deref() == Some("alive"))
        .expect("rejoined from the snapshot");
    serf_cli(&serf.rpc, &["event", "-coalesce=false", "after-restart"]);
    wait_for(WAIT, || std::fs::read_to_string(&events).unwrap_or_default().contains("after-restart"))
        .expect("new event");
    let seen = std::fs::read_to_string(&events).unwrap();
    assert_eq!(seen.matches("before-restart").count(), 1, "not replayed: {seen}");
    let _ = std::fs::remove_dir_all(&work);
}

/// A folder holding a `serf` symlink to the `shoal` under test.
fn serf_symlink(name: &str) -> PathBuf {
    let dir = temp_dir(name);
    let link = dir.join("serf");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_shoal"), &link).unwrap();
    link
}

/// Runs `program args…`; returns its exit code, stdout and stderr.
fn run(program: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(program).args(args).output().expect("runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn serf_command_lines_and_config_files_run_unchanged_on_shoal() {
    if !require("serf") {
        return;
    }
    let fake = serf_symlink("serf-multicall");
    let real = Path::new("serf");
    let dir = fake.parent().unwrap().to_path_buf();
    let real_serf = Serf::start("real-serf", &["-tag", "role=balancer"]);
    let (bind, rpc) = (addr(free_port()), addr(free_port()));

    // An agent started the way a Serf image starts it: Go flags, a JSON config file and a
    // config folder (merged in name order), `-join` to a real Serf agent.
    std::fs::write(
        dir.join("agent.json"),
        format!(r#"{{"node_name":"as-serf","bind":"{bind}","rpc_addr":"{rpc}","tags":{{"role":"web","zone":"a"}}}}"#),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    std::fs::write(dir.join("conf.d/10-zone.json"), r#"{"tags":{"zone":"b"},"replay_on_join":true}"#)
        .unwrap();
    let child = Command::new(&fake)
        .args(["agent", "-config-file", dir.join("agent.json").to_str().unwrap()])
        .arg(format!("--config-dir={}", dir.join("conf.d").display()))
        .args(["-tag", "port=3000", &format!("-join={}", real_serf.bind)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut agent = Proc { child, name: "shoal as serf".into() };
    wait_for(WAIT, || real_serf.status_of("as-serf").as_deref() == Some("alive"))
        .expect("joined the real Serf agent");
    let seen = real_serf.member("as-serf").unwrap();
    assert_eq!(seen["tags"]["zone"], "b", "the config folder's file laid over the config file: {seen}");
    assert_eq!(seen["tags"]["role"], "web");
    assert_eq!(seen["tags"]["port"], "3000");
    assert_eq!(seen["addr"], bind.to_string());

    // The client commands: the same lines from the real CLI and from the symlink, either agent.
    let rpc_flag = format!("-rpc-addr={rpc}");
    for args in [
        vec!["members", "-status=alive", "-role", "web"],
        vec!["members", "--format", "json", "-name=as-serf"],
    ] {
        let mut with_rpc = vec![args[0], rpc_flag.as_str()];
        with_rpc.extend(&args[1..]);
        let (code, ours, err) = run(&fake, &with_rpc);
        let (_, theirs, _) = run(real, &with_rpc);
        assert_eq!(code, 0, "{err}");
        assert_eq!(ours, theirs, "serf {args:?}");
    }
    let (code, out, err) = run(&fake, &["reachability", &format!("-rpc-addr={}", real_serf.rpc), "-verbose"]);
    assert_eq!(code, 0, "ours against the real agent: {out}{err}");
    assert!(
        out.contains("Total members: 2, live members: 2")
            && out.contains("Successfully contacted all live nodes"),
        "{out}"
    );
    let (code, out, _) = run(real, &["reachability", &rpc_flag]);
    assert_eq!(code, 0, "the real CLI against ours: {out}");
    // Coordinates: ours reads the real agent's (Serf's Vivaldi distance, printed as Serf does).
    let serf_rpc = format!("-rpc-addr={}", real_serf.rpc);
    let (code, ours, err) = run(&fake, &["rtt", &serf_rpc, "real-serf"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ours, run(real, &["rtt", &serf_rpc, "real-serf"]).1);
    // A node to itself: both heights (Serf's least is 10 µs each), so never 0.
    let ms = ours
        .trim()
        .strip_prefix("Estimated real-serf <-> real-serf rtt: ")
        .and_then(|x| x.strip_suffix(" ms"));
    assert!(ms.and_then(|x| x.parse::<f64>().ok()).is_some_and(|x| x >= 0.02), "{ours}");

    // Coordinates both ways: Serf learns ours from our acks, we learn Serf's from its acks, so
    // each side's `rtt` estimates the other (a loopback round trip: well under 5 ms).
    let estimate = |out: &str, pair: &str| -> Option<f64> {
        out.trim().strip_prefix(&format!("Estimated {pair} rtt: "))?.strip_suffix(" ms")?.parse().ok()
    };
    let serf_view = || run(real, &["rtt", &serf_rpc, "as-serf"]).1;
    let ok = wait_for(WAIT, || estimate(&serf_view(), "as-serf <-> real-serf").is_some());
    assert!(ok.is_some(), "serf rtt about a Shoal member: {}", serf_view());
    let ours_view = || run(&fake, &["rtt", &rpc_flag, "real-serf"]).1;
    let ok = wait_for(WAIT, || estimate(&ours_view(), "real-serf <-> as-serf").is_some());
    assert!(ok.is_some(), "shoal's rtt about a Serf member: {}", ours_view());
    for (out, pair) in [(serf_view(), "as-serf <-> real-serf"), (ours_view(), "real-serf <-> as-serf")] {
        let ms = estimate(&out, pair).unwrap();
        assert!(ms > 0.0 && ms < 5.0, "{out}");
    }

    // version and keygen as Serf prints them.
    let (code, out, _) = run(&fake, &["version"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("Serf v0.10.1 (Shoal ")
            && out.contains("\nAgent Protocol: 5 (Understands back to: 2)\n"),
        "{out}"
    );
    let (_, key, _) = run(&fake, &["keygen"]);
    assert_eq!(key.trim().len(), 44, "32 bytes in base64: {key}");

    // Bad input: Go's messages, Serf's exit codes, and the agent untouched.
    let (code, _, err) = run(&fake, &["members", "-bogus", &rpc_flag]);
    assert_eq!((code, err.lines().next()), (1, Some("flag provided but not defined: -bogus")));
    let (code, _, err) = run(&fake, &["frobnicate"]);
    assert_eq!(code, 127, "{err}");
    std::fs::write(dir.join("bad.json"), r#"{"node_name":"x","start_joins":["typo"]}"#).unwrap();
    let (code, _, err) = run(&fake, &["agent", "-config-file", dir.join("bad.json").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("Error decoding") && err.contains("start_joins"), "{err}");
    assert_eq!(real_serf.status_of("as-serf").as_deref(), Some("alive"));

    // leave, through the symlink: the agent leaves and exits 0.
    let (code, out, _) = run(&fake, &["leave", &rpc_flag]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(agent.wait_exit(Duration::from_secs(15)), Some(0));
    wait_for(WAIT, || real_serf.status_of("as-serf").as_deref() == Some("left")).expect("left");
}
