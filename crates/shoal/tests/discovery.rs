//! Backends that run no agent, with the real things: web apps in Docker containers from the
//! `shoal:dev` image (`docker/build-image.sh`, which `scripts/test.sh` runs first) running only
//! `shoal webapp`, found by a balancer through the Docker engine's API (labels, events) or
//! through Docker's embedded DNS (a network alias).
//!
//! Traffic goes only to loopback and to containers on each test's own network. Everything a
//! test creates (containers, network, files) is removed by id when it ends, also on failure.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const IMAGE: &str = "shoal:dev";

/// Whether Docker and the image are here; in CI their absence fails the test.
fn have_docker() -> bool {
    if !require("docker") {
        return false;
    }
    if try_docker(&["image", "inspect", "--format", "{{.Id}}", IMAGE]).is_err() {
        assert!(std::env::var_os("CI").is_none(), "{IMAGE} is missing: run docker/build-image.sh");
        eprintln!("SKIPPED: {IMAGE} is missing (run docker/build-image.sh)");
        return false;
    }
    true
}

/// One test's network, containers and files, removed on drop.
struct Lab {
    prefix: String,
    net_name: String,
    net_id: String,
    containers: Mutex<Vec<String>>,
    dir: PathBuf,
}

impl Lab {
    fn new(short: &str) -> Lab {
        let prefix = format!("shoal-disc-{short}-{}", std::process::id());
        let net_name = format!("{prefix}-net");
        let net_id = docker(&["network", "create", &net_name]);
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        Lab { prefix, net_name, net_id, containers: Mutex::new(Vec::new()), dir }
    }

    fn run(&self, args: &[&str]) -> String {
        let id = docker(args);
        self.containers.lock().unwrap().push(id.clone());
        id
    }

    /// A container running only `shoal webapp` on port 3000, with `extra` `docker run` flags.
    fn web(&self, host: &str, extra: &[&str]) -> String {
        let name = format!("{}-{host}", self.prefix);
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            host,
            "--network",
            &self.net_name,
            "--read-only",
        ];
        args.extend(extra);
        args.extend(["--entrypoint", "/usr/bin/shoal", IMAGE, "webapp", "--listen", "0.0.0.0:3000"]);
        self.run(&args)
    }

    /// Writes the balancer's config file: one frontend on `front`, pool `web` from `source`.
    fn config(&self, stats: SocketAddr, front: SocketAddr, source: &str) -> PathBuf {
        let path = self.dir.join("balancer.toml");
        let text = format!(
            "stats = \"{stats}\"\naccess_log = \"off\"\n\n[[frontends]]\nname = \"http\"\nlisten = [\"{front}\"]\n\
             default_pool = \"web\"\n\n[[pools]]\nname = \"web\"\n\
             health = {{ interval = \"200ms\", rise = 1 }}\n{source}\n"
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn ip(&self, id: &str) -> String {
        docker(&["inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", id])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for id in self.containers.lock().unwrap().drain(..) {
            let _ = try_docker(&["rm", "-f", "-v", &id]);
        }
        let _ = try_docker(&["network", "rm", &self.net_id]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET /` through `front` on a new connection: the answering web app's host name.
fn served_by(front: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect(front).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| format!("read: {e}"))?;
    if !raw.starts_with("HTTP/1.1 200") {
        return Err(raw.lines().next().unwrap_or("no answer").to_string());
    }
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
    Ok(v["host"].as_str().unwrap_or("").to_string())
}

/// The pool's server rows in the stats: name → status.
fn servers(stats: SocketAddr) -> HashMap<String, String> {
    csv_servers(&stats_csv(stats)).into_iter().map(|f| (f[1].clone(), f[17].clone())).collect()
}

/// Answers by host, and the failures.
type Tally = (HashMap<String, u64>, Vec<String>);

/// A client loop through `front` until stopped (at most two minutes): answers by host, and
/// the failures.
struct Client {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Tally>>,
}

impl Client {
    fn start(front: SocketAddr) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failed) = (HashMap::new(), Vec::new());
            let start = Instant::now();
            while !flag.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(120) {
                match served_by(front) {
                    Ok(host) => *ok.entry(host).or_insert(0) += 1,
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failed)
        });
        Client { stop, thread: Some(thread) }
    }

    fn finish(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until requests through `front` have reached every host in `hosts`.
fn wait_serving(front: SocketAddr, hosts: &[&str], timeout: Duration) -> Option<Duration> {
    let mut seen = std::collections::HashSet::new();
    wait_for(timeout, || {
        if let Ok(h) = served_by(front) {
            seen.insert(h);
        }
        hosts.iter().all(|h| seen.contains(*h))
    })
}

#[test]
fn docker_labelled_containers_are_served_followed_live_and_stopped_without_a_failed_request() {
    if !have_docker() {
        return;
    }
    let lab = Lab::new("engine");
    let label = format!("shoal.pool={}", lab.prefix);
    let labels = ["--label", &label, "--label", "shoal.weight=2"];
    lab.web("w1", &labels);
    lab.web("w2", &labels);
    // Not labelled: never a server.
    lab.web("other", &[]);
    let (front, stats, gossip, rpc) =
        (addr(free_port()), addr(free_port()), addr(free_port()), addr(free_port()));
    let source = format!(
        r#"docker = {{ labels = {{ "shoal.pool" = "{}" }}, network = "{}" }}"#,
        lab.prefix, lab.net_name
    );
    let cfg = lab.config(stats, front, &source);
    let (gossip, rpc, cfg) = (gossip.to_string(), rpc.to_string(), cfg.display().to_string());
    let args = ["balancer", "--config", &cfg, "--node", "lb", "--bind", &gossip, "--rpc-addr", &rpc];
    let (mut lb, log) = shoal("disc-engine-lb", &[&args[..], &["--admin-socket", "none"]].concat(), &[]);
    lb.wait_listening(front, &log);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_serving(front, &["w1", "w2"], Duration::from_secs(20)).is_some(),
        "both labelled containers serve:\n{}",
        log_text()
    );
    let rows = servers(stats);
    assert!(rows.contains_key(&format!("{}-w1", lab.prefix)), "servers are named after containers: {rows:?}");
    assert!(!rows.keys().any(|n| n.ends_with("-other")), "unlabelled containers stay out: {rows:?}");

    // A new labelled container is added live: from `docker run` to its first request served.
    let client = Client::start(front);
    let started = Instant::now();
    lab.web("w3", &labels);
    let first = wait_serving(front, &["w3"], Duration::from_secs(20)).map(|_| started.elapsed());
    let first = first.unwrap_or_else(|| panic!("w3 never served:\n{}", log_text()));
    eprintln!("from `docker run` to the first request served by w3: {first:?}");

    // `docker stop` while the client loop runs: the kill event drains w1 first.
    let w1 = format!("{}-w1", lab.prefix);
    let stopping = Instant::now();
    docker(&["stop", &w1]);
    let stopped = stopping.elapsed();
    let gone = wait_for(Duration::from_secs(10), || !servers(stats).contains_key(&w1));
    assert!(gone.is_some(), "w1 leaves the pool once it died:\n{}", log_text());
    // Positive evidence that the loop ran on after the stop: more answers from w2 and w3.
    let before = Instant::now();
    assert!(wait_serving(front, &["w2", "w3"], Duration::from_secs(10)).is_some());
    let (ok, failed) = client.finish();
    eprintln!(
        "docker stop took {stopped:?}; answers {ok:?}; failed {}; kept serving {:?} after",
        failed.len(),
        before.elapsed()
    );
    assert!(failed.is_empty(), "docker stop cost requests: {failed:?}\n{}", log_text());
    assert!(ok.get("w1").copied().unwrap_or(0) > 0 && ok.get("w3").copied().unwrap_or(0) > 0, "{ok:?}");
    let text = log_text();
    assert!(text.contains("container killed: draining"), "the kill event drained w1:\n{text}");
    assert!(text.contains("server draining"), "{text}");
}

#[test]
fn dns_names_are_followed_through_dockers_embedded_dns() {
    if !have_docker() {
        return;
    }
    let lab = Lab::new("dns");
    let alias = ["--network-alias", "web"];
    let w1 = lab.web("w1", &alias);
    let w2 = lab.web("w2", &alias);
    let (ip1, ip2) = (lab.ip(&w1), lab.ip(&w2));
    let source = r#"dns = { name = "web", max_ttl = "1s", keep_last = "4s" }"#;
    lab.config("0.0.0.0:1936".parse().unwrap(), "0.0.0.0:8080".parse().unwrap(), source);
    // Readable by the image's user (nobody).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&lab.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(lab.dir.join("balancer.toml"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (front, stats) = (addr(free_port()), addr(free_port()));
    let (pf, ps) = (format!("127.0.0.1:{}:8080", front.port()), format!("127.0.0.1:{}:1936", stats.port()));
    let mount = format!("{}:/cfg:ro", lab.dir.display());
    let name = format!("{}-lb", lab.prefix);
    let lb = lab.run(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        &lab.net_name,
        "--read-only",
        "-p",
        &pf,
        "-p",
        &ps,
        "-v",
        &mount,
        "--entrypoint",
        "/usr/bin/shoal",
        IMAGE,
        "balancer",
        "--config",
        "/cfg/balancer.toml",
        "--node",
        "lb",
        "--admin-socket",
        "none",
    ]);
    let logs = || {
        let out = std::process::Command::new("docker").args(["logs", &lb]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    assert!(
        wait_serving(front, &["w1", "w2"], Duration::from_secs(20)).is_some(),
        "both web apps behind the name serve:\n{}",
        logs()
    );
    let (s1, s2) = (format!("{ip1}:3000"), format!("{ip2}:3000"));
    let rows = servers(stats);
    assert!(rows.contains_key(&s1) && rows.contains_key(&s2), "servers are named by address: {rows:?}");

    // One removed: gone once the name is resolved again (max_ttl, not Docker's 600 s TTL).
    let removed = Instant::now();
    docker(&["rm", "-f", &w2]);
    let gone = wait_for(Duration::from_secs(10), || !servers(stats).contains_key(&s2));
    assert!(gone.is_some(), "w2 still in the pool:\n{}", logs());
    eprintln!("a removed container left the pool {:?} after `docker rm`", removed.elapsed());

    // The last one removed: the empty answer keeps the last good set for keep_last (4 s),
    // then the pool is emptied, each logged once.
    let emptied_at = Instant::now();
    docker(&["rm", "-f", &w1]);
    // Docker's DNS forwards a name it does not know: the failure may take the resolver's timeout.
    let kept = wait_for(Duration::from_secs(40), || logs().contains("the last good set is kept for now"));
    assert!(kept.is_some(), "a failing answer is noticed:\n{}", logs());
    assert!(servers(stats).contains_key(&s1), "the last good set is kept: {:?}", servers(stats));
    let noticed = emptied_at.elapsed();
    let empty = wait_for(Duration::from_secs(40), || !servers(stats).contains_key(&s1));
    assert!(empty.is_some(), "the pool is emptied after keep_last:\n{}", logs());
    let after = emptied_at.elapsed();
    eprintln!("empty answer noticed after {noticed:?}; the pool emptied after {after:?} (keep_last 4 s)");
    assert!(after >= Duration::from_secs(4), "kept for keep_last: {after:?}");
    let text = logs();
    assert_eq!(text.matches("the pool is emptied").count(), 1, "logged once:\n{text}");
    assert_eq!(text.matches("the last good set is kept for now").count(), 1, "logged once:\n{text}");
}
