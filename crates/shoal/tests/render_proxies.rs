//! `shoal render` driving real HAProxy (master-worker, reload by signal) and real
//! nginx (`nginx -s reload`): under continuous load, 20 backends join and leave one
//! by one with zero failed requests; a template edited into an invalid config is
//! refused by the check and the proxy keeps serving its last good config; the
//! reference stack's template renders unchanged beside a real Serf agent; hostile Serf
//! members whose name or tag holds newlines never get a line into haproxy.cfg, and the
//! format helpers keep odd names one token for the real HAProxy and nginx.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// What the load client saw.
#[derive(Default)]
struct Seen {
    ok: u64,
    failed: Vec<String>,
    hosts: HashMap<String, u64>,
    /// The `X-Backends` header of the last answer: how many servers the config that served it has.
    backends: Option<usize>,
}

/// A client sending GETs on fresh connections until dropped, counting every failure.
struct Load {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(front: SocketAddr) -> Load {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let answer = one_get(front);
                let mut seen = s.lock().unwrap();
                match answer {
                    Ok((200, host, backends)) => {
                        seen.ok += 1;
                        *seen.hosts.entry(host).or_default() += 1;
                        seen.backends = backends;
                    }
                    // No backend in the config: the proxy answers 502/503 by design.
                    Ok((502 | 503, _, Some(0))) => seen.backends = Some(0),
                    Ok((status, _, _)) => seen.failed.push(format!("status {status}")),
                    Err(e) => seen.failed.push(e),
                }
                drop(seen);
                std::thread::sleep(Duration::from_millis(3));
            }
        });
        Load { seen, stop, thread: Some(thread) }
    }

    fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap())
    }

    fn wait(&self, what: &str, mut cond: impl FnMut(&Seen) -> bool) {
        let ok = wait_for(Duration::from_secs(20), || self.seen(&mut cond));
        assert!(ok.is_some(), "timed out waiting until {what}");
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One GET with `Connection: close`: status, the `host` answering, and `X-Backends`.
fn one_get(front: SocketAddr) -> Result<(u16, String, Option<usize>), String> {
    let mut s = TcpStream::connect(front).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| format!("read: {e}"))?;
    let status =
        raw.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("no status in {raw:?}"))?;
    let header = |name: &str| {
        raw.lines().take_while(|l| !l.is_empty()).find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string())
        })
    };
    let host = raw.split("\"host\":\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("").to_string();
    Ok((status, host, header("x-backends").and_then(|v| v.parse().ok())))
}

/// How many processes have `pid` as their parent.
fn children_of(pid: u32) -> usize {
    let parent = |p: &str| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
    };
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
                .filter(|e| e.file_name().to_str().and_then(parent) == Some(pid))
                .count()
        })
        .unwrap_or(0)
}

/// A web app and its agent.
struct Backend {
    name: String,
    app: Proc,
    agent: Proc,
}

fn start_backend(name: &str, seed: SocketAddr) -> Backend {
    let port = free_port();
    let (mut app, log) = shoal(
        &format!("{name}-app"),
        &["webapp", &format!("--listen=127.0.0.1:{port}")],
        &[("SERVER_NAME", name)],
    );
    app.wait_listening(addr(port), &log);
    let agent = shoal_agent(
        name,
        addr(free_port()),
        &["--profile=fast", "--tag=role=backend", &format!("--tag=port={port}"), &format!("--join={seed}")],
    );
    Backend { name: name.into(), app, agent }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shoal-test-{name}-{}", free_port()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A proxy under test: how to template, check, reload and start it.
struct ProxyKind {
    name: &'static str,
    template: fn(front: SocketAddr, dir: &Path) -> String,
    /// A line that makes the config invalid, and where to put it (after this text).
    poison: (&'static str, &'static str),
    check: fn(dir: &Path) -> String,
    reload: fn(dir: &Path, dest: &Path) -> String,
    start: fn(dir: &Path, dest: &Path) -> Command,
}

fn haproxy() -> ProxyKind {
    ProxyKind {
        name: "haproxy",
        template: |front, _| {
            format!(
                "global\n    maxconn 2000\n\
                 defaults\n    mode http\n    timeout connect 1s\n    timeout client 10s\n    timeout server 10s\n    \
                 retries 3\n    option redispatch\n    retry-on conn-failure empty-response\n\
                 frontend fe\n    bind {front}\n    default_backend nodes\n\
                 backend nodes\n    balance roundrobin\n    option httpchk HEAD /\n    \
                 http-response set-header X-Backends {{{{len backends}}}}\n    \
                 http-after-response set-header X-Backends {{{{len backends}}}}\n    \
                 {{{{#each backends}}}}\n    server {{{{ name }}}} {{{{ addr }}}} check inter 1s\n    {{{{/each}}}}\n"
            )
        },
        poison: ("backend nodes\n", "    this-is-not-a-keyword\n"),
        check: |_| "haproxy -c -f {{src}}".into(),
        // The first render comes before HAProxy runs: nothing to reload then.
        reload: |dir, _| {
            format!("test ! -f {0}/haproxy.pid || kill -USR2 $(cat {0}/haproxy.pid)", dir.display())
        },
        start: |dir, dest| {
            let mut c = Command::new("haproxy");
            c.args(["-W", "-db", "-f"]).arg(dest).arg("-p").arg(dir.join("haproxy.pid"));
            c
        },
    }
}

fn nginx() -> ProxyKind {
    ProxyKind {
        name: "nginx",
        template: |front, dir| {
            let d = dir.display();
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\ndaemon off;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
                 fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
                 upstream app {{\n{{{{#each backends}}}}    server {{{{ addr }}}};\n{{{{else}}}}    server 127.0.0.1:9 down;\n{{{{/each}}}}  }}\n  \
                 server {{\n    listen {front};\n    add_header X-Backends {{{{len backends}}}} always;\n    \
                 location / {{ proxy_pass http://app; proxy_next_upstream error timeout; }}\n  }}\n}}\n"
            )
        },
        poison: ("http {\n", "  this_is_not_a_directive on;\n"),
        check: |dir| {
            format!("nginx -t -q -p {} -e {}/check.log -c {{{{src}}}}", dir.display(), dir.display())
        },
        reload: |dir, dest| {
            format!(
                "test ! -f {0}/nginx.pid || nginx -p {0} -e {0}/error.log -c {1} -s reload",
                dir.display(),
                dest.display()
            )
        },
        start: |dir, dest| {
            let mut c = Command::new("nginx");
            c.arg("-p").arg(dir).arg("-e").arg(dir.join("error.log")).arg("-c").arg(dest);
            c
        },
    }
}

const BACKENDS: usize = 20;

/// The whole scenario against one proxy.
fn joins_and_leaves_under_load(kind: ProxyKind) {
    let dir = temp_dir(kind.name);
    let front = addr(free_port());
    let template = dir.join("proxy.cfg.hbs");
    let dest = dir.join("proxy.cfg");
    let text = (kind.template)(front, &dir);
    std::fs::write(&template, &text).unwrap();
    let seed = addr(free_port());
    let rpc = addr(free_port());
    // The cluster's first agent; `shoal render` follows it over RPC, as it would follow Serf.
    let _seed_agent = shoal_agent("lb", seed, &["--profile=fast", "--rpc-addr", &rpc.to_string()]);
    assert!(wait_for(Duration::from_secs(10), || TcpStream::connect(rpc).is_ok()).is_some());
    let (_render, render_log) = shoal(
        &format!("render-{}", kind.name),
        &[
            "render",
            &format!("--rpc-addr={rpc}"),
            &format!("--template={}:{}", template.display(), dest.display()),
            &format!("--check={}", (kind.check)(&dir)),
            &format!("--command={}", (kind.reload)(&dir, &dest)),
            "--wait=50ms:500ms",
        ],
        &[],
    );
    assert!(wait_for(Duration::from_secs(10), || dest.exists()).is_some(), "first render");
    let proxy =
        (kind.start)(&dir, &dest).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("proxy starts");
    let mut proxy = Proc { child: proxy, name: kind.name.into() };
    assert!(
        wait_for(Duration::from_secs(10), || TcpStream::connect(front).is_ok()).is_some(),
        "{} listens",
        kind.name
    );
    let load = Load::start(front);

    // Join one by one: each is routed to before the next starts.
    let mut backends = Vec::new();
    for i in 1..=BACKENDS {
        let b = start_backend(&format!("web-{i}"), seed);
        let routed = wait_for(Duration::from_secs(20), || load.seen(|s| s.hosts.contains_key(&b.name)));
        assert!(
            routed.is_some(),
            "{} is never routed to; answers so far: {:?}\nthe live config:\n{}\nrender's log:\n{}",
            b.name,
            load.seen(|s| s.hosts.clone()),
            std::fs::read_to_string(&dest).unwrap_or_default(),
            std::fs::read_to_string(&render_log).unwrap_or_default(),
        );
        backends.push(b);
    }
    // web-20 may have been seen through a new worker while an old one still answers with 19.
    load.wait("every backend is in the live config", |s| s.backends == Some(BACKENDS));

    // A template edited into an invalid config: refused by the check, the proxy keeps serving.
    let good = std::fs::read_to_string(&dest).unwrap();
    let (after, line) = kind.poison;
    std::fs::write(&template, text.replacen(after, &format!("{after}{line}"), 1)).unwrap();
    let extra = start_backend("web-extra", seed);
    let refused = wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(&render_log).unwrap_or_default().contains("check refused the new file")
    });
    assert!(refused.is_some(), "the check refused the bad config");
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), good, "the destination keeps the last good config");
    let before = load.seen(|s| s.ok);
    load.wait("the proxy keeps serving on its last good config", |s| s.ok > before + 20);
    assert!(!load.seen(|s| s.hosts.contains_key("web-extra")), "the refused change never went live");
    // Fixed template: the next change (web-extra leaving) renders and reloads again.
    std::fs::write(&template, &text).unwrap();
    extra.agent.signal("TERM");
    load.wait("the fixed config is live", |s| s.backends == Some(BACKENDS));
    drop(extra);

    // Leave one by one: the agent leaves, the proxy's new config drops it, then the app stops.
    while let Some(mut b) = backends.pop() {
        b.agent.signal("TERM");
        let left = backends.len();
        load.wait(&format!("{} is out of the config", b.name), |s| s.backends == Some(left));
        // Old workers may still accept connections until the reload completes: wait for them
        // to finish and exit, as an operator (or a stop hook) would before stopping the app.
        let one_worker = wait_for(Duration::from_secs(20), || children_of(proxy.child.id()) == 1);
        assert!(one_worker.is_some(), "{}'s old workers exited", kind.name);
        b.app.signal("TERM");
        let _ = b.app.wait_exit(Duration::from_secs(10));
    }

    let (ok, failed) = load.seen(|s| (s.ok, s.failed.clone()));
    drop(load);
    // A graceful stop: the master waits for its workers (a SIGKILLed nginx master leaves them behind).
    proxy.signal("TERM");
    assert!(proxy.wait_exit(Duration::from_secs(10)).is_some(), "{} stops on SIGTERM", kind.name);
    eprintln!("{}: {ok} requests answered, {} failed", kind.name, failed.len());
    assert!(ok > 500, "the load ran throughout: {ok}");
    assert!(
        failed.is_empty(),
        "{} failed requests during joins and leaves: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    let log = std::fs::read_to_string(&render_log).unwrap_or_default();
    assert!(log.contains("rendered; command ran"), "{log}");
}

#[test]
fn haproxy_reloads_through_render_with_zero_failed_requests() {
    joins_and_leaves_under_load(haproxy());
}

#[test]
fn nginx_reloads_through_render_with_zero_failed_requests() {
    joins_and_leaves_under_load(nginx());
}

/// The reference stack's HAProxy config with its server block templated, as the lab had it.
const REFERENCE_TEMPLATE: &str = "global
    maxconn 4096

defaults
    mode http
    timeout connect 5000ms
    timeout client 50000ms
    timeout server 50000ms

frontend localnodes
    bind *:80
    mode http
    default_backend nodes

backend nodes
    mode http
    balance roundrobin
    option forwardfor
    http-request set-header X-Forwarded-Port %[dst_port]
    option httpchk HEAD / HTTP/1.1\\r\\nHost:localhost
    {{#each addresses}}
    server {{ host }} {{ ip }}:3000 check
    {{/each}}

listen stats
    bind *:1936
    mode http
    stats enable
    stats uri /
    stats hide-version
";

#[test]
fn the_reference_template_renders_unchanged_beside_real_serf_and_haproxy_accepts_it() {
    if !require("serf") {
        return;
    }
    let dir = temp_dir("reference");
    let template = dir.join("haproxy.cfg.hbs");
    let dest = dir.join("haproxy.cfg");
    std::fs::write(&template, REFERENCE_TEMPLATE).unwrap();
    // A real Serf agent, with a Shoal backend and a Serf backend in its cluster.
    let serf = Serf::start("ha", &["-tag", "role=balancer"]);
    let _s1 = shoal_agent("s1", addr(free_port()), &["--tag=role=backend", &format!("--join={}", serf.bind)]);
    let s2 = Serf::start("s2", &["-tag", "role=backend", "-join", &serf.bind.to_string()]);
    assert!(wait_for(Duration::from_secs(15), || serf.members().len() == 3).is_some(), "three members");

    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["render", "--once", &format!("--rpc-addr={}", serf.rpc)])
        .arg(format!("--template={}:{}", template.display(), dest.display()))
        .arg("--check=haproxy -c -q -f {{src}}")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cfg = std::fs::read_to_string(&dest).unwrap();
    let servers: Vec<&str> = cfg.lines().filter(|l| l.trim_start().starts_with("server ")).collect();
    assert_eq!(
        servers,
        ["    server s1 127.0.0.1:3000 check", "    server s2 127.0.0.1:3000 check"],
        "{cfg}"
    );
    let check = Command::new("haproxy").args(["-c", "-f"]).arg(&dest).output().unwrap();
    assert!(check.status.success(), "HAProxy accepts it: {}", String::from_utf8_lossy(&check.stderr));

    // Unchanged output: nothing is written (the file is not even touched). Its time is set in
    // the past first, so that any write shows, however soon it comes.
    let before = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options().write(true).open(&dest).unwrap().set_modified(before).unwrap();
    let again = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["render", "--once", &format!("--rpc-addr={}", serf.rpc)])
        .arg(format!("--template={}:{}", template.display(), dest.display()))
        .arg(format!("--command=touch {}/ran", dir.display()))
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(!dir.join("ran").exists(), "no command when nothing changed");
    assert_eq!(std::fs::metadata(&dest).unwrap().modified().unwrap(), before);
    drop(s2);
}

/// A config file bind-mounted into a container cannot be renamed over (EBUSY): it is
/// rewritten in place, so the process reading the mount sees the new content.
#[test]
fn a_bind_mounted_destination_is_rewritten_in_place() {
    let dir = temp_dir("bind");
    let (template, host_file, mounted) = (dir.join("t.hbs"), dir.join("host.cfg"), dir.join("mounted.cfg"));
    std::fs::write(&template, "{{#each members}}{{name}} {{/each}}").unwrap();
    std::fs::write(&host_file, "old\n").unwrap();
    std::fs::write(&mounted, "").unwrap();
    let (seed, rpc) = (addr(free_port()), addr(free_port()));
    let _agent = shoal_agent("solo", seed, &["--rpc-addr", &rpc.to_string()]);
    assert!(wait_for(Duration::from_secs(10), || TcpStream::connect(rpc).is_ok()).is_some());
    // In a private mount namespace: `mounted.cfg` is `host.cfg`, bind-mounted like `docker run -v`.
    let script = format!(
        "mount --bind {host} {mounted} && {shoal} render --once --rpc-addr={rpc} --template={t}:{mounted}",
        host = host_file.display(),
        mounted = mounted.display(),
        shoal = env!("CARGO_BIN_EXE_shoal"),
        t = template.display(),
    );
    let out =
        Command::new("unshare").args(["--mount", "--", "sh", "-c", &script]).output().expect("unshare runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "solo ", "written through the bind mount");
    let leftovers: Vec<_> =
        std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 3, "no staged file left: {leftovers:?}");
}

/// A real Serf agent as a cluster member, under any name.
fn serf_member(name: &str, args: &[&str]) -> Proc {
    Serf::start(name, args).proc
}

fn lines_of(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// The reference template, on `backends` and with each backend's `zone` tag in a comment.
fn zoned_template() -> String {
    REFERENCE_TEMPLATE.replace(
        "{{#each addresses}}\n    server {{ host }} {{ ip }}:3000 check",
        "{{#each backends}}\n    server {{ host }} {{ ip }}:3000 check # zone {{ tags.zone }}",
    )
}

/// Rendered without the guard and checked by HAProxy: what `shoal render` wrote before
/// members were distrusted. `Some(config)` if HAProxy accepts it.
fn unguarded_haproxy_config(dir: &Path, name: &str, tags: &[(&str, &str)]) -> Option<String> {
    use shoal_render::model::{Cluster, MemberView, Selection, model};
    let mut tags: std::collections::BTreeMap<String, String> =
        tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    tags.insert("role".into(), "backend".into());
    let member = MemberView { name: name.into(), addr: addr(7946), status: "alive".into(), tags };
    let data = model(&Cluster { local: None, members: vec![member] }, &Selection::default());
    let text = shoal_render::template::render("t", &zoned_template(), &data, false).unwrap();
    let path = dir.join("unguarded.cfg");
    std::fs::write(&path, &text).unwrap();
    let check = Command::new("haproxy").args(["-c", "-q", "-f"]).arg(&path).output().unwrap();
    check.status.success().then_some(text)
}

/// Hostile members, played by real Serf agents (Serf accepts any node name and tag value):
/// a name, then a tag value, holding newlines and a `program` section. HAProxy would accept
/// either as rendered before; now `shoal render` refuses the output, naming the member: the
/// live haproxy.cfg keeps its bytes and the reload command does not run. Once the member is
/// gone, the next join renders and reloads again.
#[test]
fn a_member_name_or_tag_with_newlines_never_reaches_haproxy_cfg() {
    if !require("serf") || !require("haproxy") {
        return;
    }
    let dir = temp_dir("hostile-render");
    let (template, dest, reloads) =
        (dir.join("haproxy.cfg.hbs"), dir.join("haproxy.cfg"), dir.join("reloads"));
    std::fs::write(&template, zoned_template()).unwrap();
    let ha = Serf::start("ha", &["-tag", "role=balancer"]);
    let join = format!("-join={}", ha.bind);
    let (_render, render_log) = shoal(
        "render-hostile",
        &[
            "render",
            &format!("--rpc-addr={}", ha.rpc),
            &format!("--template={}:{}", template.display(), dest.display()),
            "--check=haproxy -c -q -f {{src}}",
            // One line per reload, with the number of servers in the file it reloaded.
            &format!(
                "--command=echo reloaded $(grep -c '# zone' {}) >> {}",
                dest.display(),
                reloads.display()
            ),
            "--wait=50ms:500ms",
        ],
        &[],
    );
    let log = || std::fs::read_to_string(&render_log).unwrap_or_default();
    let _s1 = serf_member("s1", &["-tag", "role=backend", "-tag", "zone=eu", &join]);
    // The reload command runs after the new file is in place: wait for the reload of s1's file
    // too, or its line could land inside the first round and read as one the attack caused.
    let rendered = wait_for(Duration::from_secs(15), || {
        std::fs::read_to_string(&dest).is_ok_and(|c| c.contains("server s1 127.0.0.1:3000 check # zone eu\n"))
            && std::fs::read_to_string(&reloads).is_ok_and(|r| r.lines().any(|l| l == "reloaded 1"))
    });
    assert!(rendered.is_some(), "s1 is rendered and reloaded:\n{}", log());

    // A second `global` section turns master-worker mode on, which `program` sections need;
    // the rest of the server's line goes to a server of another backend.
    let program =
        format!("global\n    master-worker\nprogram x\n    command /bin/touch {}/pwned", dir.display());
    let attacks = [
        (format!("x 127.0.0.1:9\n{program}\nbackend spare\n    server y"), "zone=eu".to_string(), "name"),
        ("s-zone".to_string(), format!("zone=eu\n{program}"), "tag \"zone\""),
    ];
    let mut joined = Vec::new();
    for (round, (name, tag, field)) in attacks.iter().enumerate() {
        let good = std::fs::read(&dest).unwrap();
        let reloaded = lines_of(&reloads);
        // The attack is real: unguarded, HAProxy accepts the file with a `program` section.
        let (_, value) = tag.split_once('=').unwrap();
        let unguarded = unguarded_haproxy_config(&dir, name, &[("zone", value)]);
        assert!(
            unguarded.as_deref().is_some_and(|c| c.lines().any(|l| l.starts_with("program "))),
            "unguarded, haproxy -c accepts an injected program section: {unguarded:?}"
        );

        let refusals = log().matches("refused: destination and service kept").count();
        let evil = serf_member(name, &["-tag", "role=backend", "-tag", tag, &join]);
        let seen = wait_for(Duration::from_secs(15), || ha.status_of(name).as_deref() == Some("alive"));
        assert!(seen.is_some(), "Serf admits the member {name:?}");
        let refused = wait_for(Duration::from_secs(15), || {
            log().matches("refused: destination and service kept").count() > refusals
        });
        assert!(refused.is_some(), "render refuses the output:\n{}", log());
        let escaped_name = shoal_render::model::escaped(name);
        let line = log().lines().rfind(|l| l.contains("refused: destination")).unwrap_or("").to_string();
        assert!(
            line.contains(&format!("member {escaped_name}: its {field} holds a control character (U+000A)")),
            "the log names the member and the field: {line}"
        );
        assert!(!log().contains("\nprogram "), "no raw newline from the member reaches render's log");
        assert_eq!(std::fs::read(&dest).unwrap(), good, "round {round}: haproxy.cfg keeps its bytes");
        assert_eq!(lines_of(&reloads), reloaded, "round {round}: no reload");
        assert!(!dir.join("pwned").exists());

        // The member leaves; render keeps going: the next join is rendered and reloaded.
        evil.signal("INT");
        let left = wait_for(Duration::from_secs(15), || ha.status_of(name).as_deref() != Some("alive"));
        assert!(left.is_some(), "{name:?} leaves");
        let next = format!("s{}", round + 2);
        joined.push(serf_member(&next, &["-tag", "role=backend", &join]));
        let line = format!("server {next} 127.0.0.1:3000 check # zone \n");
        let rendered = wait_for(Duration::from_secs(15), || {
            std::fs::read_to_string(&dest).is_ok_and(|c| c.contains(&line)) && lines_of(&reloads) > reloaded
        });
        assert!(rendered.is_some(), "{next} is rendered and reloaded after the member left:\n{}", log());
        let cfg = std::fs::read_to_string(&dest).unwrap();
        assert!(!cfg.contains("program") && !cfg.contains("pwned"), "{cfg}");
        let check = Command::new("haproxy").args(["-c", "-q", "-f"]).arg(&dest).output().unwrap();
        assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
        drop(evil);
    }
}

/// A name without control characters can still rewrite a line it is written into as is (a
/// space starts the server's address): `haproxy_name` and `nginx_string` make it one valid
/// token, which the real HAProxy and nginx accept, with the address the member really has.
#[test]
fn format_helpers_keep_an_odd_name_one_token_for_real_haproxy_and_nginx() {
    if !require("haproxy") || !require("nginx") {
        return;
    }
    let dir = temp_dir("helpers");
    let odd = "x 10.9.9.9:80 backup #\"a;b}{c$host\\";
    let data = serde_json::json!({ "backends": [ { "name": odd, "addr": "127.0.0.1:3000" } ] });
    let haproxy = |server: &str| {
        let t = format!(
            "defaults\n    mode http\n    timeout connect 1s\n    timeout client 1s\n    timeout server 1s\n\
             frontend fe\n    bind 127.0.0.1:9\n    default_backend nodes\n\
             backend nodes\n{{{{#each backends}}}}    server {server} {{{{addr}}}}\n{{{{/each}}}}"
        );
        let text = shoal_render::template::render("t", &t, &data, true).unwrap();
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, &text).unwrap();
        let ok = Command::new("haproxy").args(["-c", "-q", "-f"]).arg(&path).status().unwrap().success();
        (ok, text)
    };
    // As is, the name moves the server to 10.9.9.9 as a backup, and HAProxy accepts it.
    let (ok, raw) = haproxy("{{name}}");
    assert!(ok && raw.contains("server x 10.9.9.9:80 backup #"), "{raw}");
    let (ok, safe) = haproxy("{{haproxy_name name}}");
    assert!(ok, "{safe}");
    assert!(safe.contains("    server x_10.9.9.9:80_backup___a_b__c_host_ 127.0.0.1:3000\n"), "{safe}");

    let nginx = |header: &str| {
        let d = dir.display();
        let t = format!(
            "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ }}\nhttp {{\n  access_log off;\n  \
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  server {{\n    listen 127.0.0.1:9;\n\
             {{{{#each backends}}}}    add_header X-Backend {header};\n{{{{/each}}}}  }}\n}}\n"
        );
        let text = shoal_render::template::render("t", &t, &data, true).unwrap();
        let path = dir.join("nginx.conf");
        std::fs::write(&path, &text).unwrap();
        let check = Command::new("nginx")
            .args(["-t", "-q", "-p"])
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("check.log"))
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        (check.status.success(), text)
    };
    let (ok, raw) = nginx("{{name}}");
    assert!(!ok, "nginx refuses the name as is: {raw}");
    let (ok, safe) = nginx("{{nginx_string name}}");
    assert!(ok, "{safe}");
    assert!(safe.contains(r#"add_header X-Backend "x 10.9.9.9:80 backup #\"a;b}{c_host\\";"#), "{safe}");
}
