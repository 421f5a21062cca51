//! Beyond one host: the Docker Swarm stack (`deploy/swarm`) deployed on a single-node swarm, and
//! the Kubernetes manifests (`deploy/k8s`) checked offline, then their pods replayed in Docker
//! with the settings the manifests give them (no Kubernetes here).
//!
//! The swarm test joins this engine to a swarm of its own if it is in none (on 127.0.0.1) and
//! leaves it at the end, also on failure; nothing is published: requests come from a client
//! container attached to the stack's overlay network. Everything a test creates (stacks,
//! containers, networks) is removed by id or by its own stack name, and checked gone.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

const IMAGE: &str = "shoal:dev";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The gossip key the deployment files read as a secret, made as the README says
/// (`scripts/gossip-key.sh`, which keeps an existing key): (its file, the key).
fn gossip_key() -> (PathBuf, String) {
    let out =
        Command::new(repo().join("scripts/gossip-key.sh")).output().expect("scripts/gossip-key.sh runs");
    assert!(out.status.success(), "scripts/gossip-key.sh: {}", String::from_utf8_lossy(&out.stderr));
    let file = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let key = std::fs::read_to_string(&file).expect("the key file").trim().to_string();
    (file, key)
}

/// Asserts that `shoal keys --list` in `container` shows `key`, and only it, on all `members`.
fn assert_cluster_key(container: &str, key: &str, members: usize) {
    let list = docker(&["exec", container, "shoal", "keys", "--list"]);
    let rows: Vec<&str> = list.lines().filter(|l| l.contains("/") && l.trim_start().ends_with(']')).collect();
    assert_eq!(
        rows.iter().map(|r| r.split_whitespace().collect::<Vec<_>>()).collect::<Vec<_>>(),
        [vec![key.to_string(), format!("[{members}/{members}]")]],
        "every member gossips with the secret's key, and only it:\n{list}"
    );
}

/// The user ids of a container's processes, one per line.
const UIDS: &str = "cat /proc/[0-9]*/status | sed -n 's/^Uid:[[:space:]]*\\([0-9]*\\).*/\\1/p' | sort -u";

fn lines(s: &str) -> Vec<String> {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
}

fn image_present() {
    assert!(
        !docker(&["images", "-q", IMAGE]).is_empty(),
        "the {IMAGE} image is missing: run docker/build-image.sh (scripts/test.sh does)"
    );
}

/// Server rows of a balancer's stats CSV: name → status.
fn pool_of_csv(csv: &str) -> BTreeMap<String, String> {
    csv_servers(csv).into_iter().map(|f| (f[1].clone(), f[17].clone())).collect()
}

fn up_of(pool: &BTreeMap<String, String>) -> BTreeSet<String> {
    pool.iter().filter(|(_, s)| *s == "UP").map(|(n, _)| n.clone()).collect()
}

/// A container removed (by id) when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", "-v", &self.0]).output();
    }
}

/// A network removed (by id) when dropped.
struct Network(String);

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["network", "rm", &self.0]).output();
    }
}

/// A busybox shell loop in a container: `wget` on a URL until told to stop (or `count` times),
/// one line per request: `ok HOST` (the demo app's `host` field) or `fail ERROR`.
struct Requests {
    container: String,
    stop_file: String,
    child: Child,
    lines: Option<Lines>,
}

// Busybox's `wget -T` crashes in Debian's static build: `timeout` bounds each request instead.
const LOOP: &str = r#"
url=$1; count=$2; stop=$3; i=0
while [ ! -e "$stop" ]; do
  if body=$(timeout 10 wget -q -O - "$url" 2>&1); then
    echo "ok $(echo "$body" | sed -n 's/.*"host":"\([^"]*\)".*/\1/p')"
  else
    echo "fail $(echo "$body" | tr '\n' ' ')"
  fi
  i=$((i + 1))
  [ "$count" -gt 0 ] && [ "$i" -ge "$count" ] && break
  sleep 0.02
done
"#;

impl Requests {
    fn start(container: &str, url: &str, count: usize) -> Requests {
        let stop_file = format!("/tmp/stop-{}", free_port());
        let mut child = Command::new("docker")
            .args(["exec", container, "/bin/sh", "-c", LOOP, "loop", url, &count.to_string(), &stop_file])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker exec runs");
        let lines = Some(Lines::collect(child.stdout.take().unwrap()));
        Requests { container: container.to_string(), stop_file, child, lines }
    }

    /// How many requests the loop has finished so far.
    fn done(&self) -> usize {
        self.lines.as_ref().map_or(0, Lines::count)
    }

    /// Waits until the loop has finished `n` more requests than `done` (one at a time: the
    /// last of them was sent after `done` was read).
    fn wait_more(&self, done: usize, n: usize, within: Duration) {
        let ok = wait_for(within, || self.done() >= done + n);
        assert!(ok.is_some(), "the client loop finished {} requests, not {}", self.done() - done, n);
    }

    /// Stops the loop (if it still runs) and returns its lines.
    fn finish(mut self) -> Vec<String> {
        let _ = Command::new("docker").args(["exec", &self.container, "touch", &self.stop_file]).output();
        wait_for(Duration::from_secs(30), || !matches!(self.child.try_wait(), Ok(None)));
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.lines.take().map(Lines::finish).unwrap_or_default()
    }

    /// `count` requests; the hosts that answered, and the failures.
    fn run(container: &str, url: &str, count: usize) -> (Vec<String>, Vec<String>) {
        let mut requests = Requests::start(container, url, count);
        // Each request is bounded by `timeout 10`.
        wait_for(Duration::from_secs(10 + count as u64), || !matches!(requests.child.try_wait(), Ok(None)));
        let lines = requests.finish();
        let hosts = lines.iter().filter_map(|l| l.strip_prefix("ok ")).map(str::to_string).collect();
        let failed = lines.iter().filter(|l| !l.starts_with("ok ")).cloned().collect();
        (hosts, failed)
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Docker Swarm
// ---------------------------------------------------------------------------------------------

/// Node label marking a swarm that a test initiated, so that whichever test finishes last
/// leaves it (a swarm the machine was already in is never left).
const INITIATED_LABEL: &str = "shoal.test.initiated";

/// This engine's membership of a swarm, for one test: left on drop if a test initiated it.
struct Swarm {
    initiated: bool,
    gwbridge_before: bool,
    done: bool,
}

fn swarm_state() -> String {
    try_docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).unwrap_or_default()
}

impl Swarm {
    /// Joins a single-node swarm if the engine is in none; `Err` says why swarm is unusable here.
    fn join() -> Result<Swarm, String> {
        let gwbridge_before = try_docker(&["network", "inspect", "docker_gwbridge"]).is_ok();
        let mut initiated = false;
        match swarm_state().as_str() {
            "active" => {}
            "inactive" => {
                let init =
                    ["swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377"];
                match try_docker(&init) {
                    Ok(_) => initiated = true,
                    // Another test process may have initiated it a moment ago.
                    Err(e) if swarm_state() != "active" => return Err(format!("cannot start a swarm: {e}")),
                    Err(_) => {}
                }
            }
            other => return Err(format!("the engine's swarm state is {other:?}")),
        }
        let mut swarm = Swarm { initiated, gwbridge_before, done: false };
        if try_docker(&["info", "--format", "{{.Swarm.ControlAvailable}}"]).as_deref() != Ok("true") {
            swarm.done = true;
            return Err("this engine is a swarm worker: stacks are deployed from a manager".into());
        }
        if initiated {
            let node = docker(&["info", "--format", "{{.Swarm.NodeID}}"]);
            docker(&["node", "update", "--label-add", &format!("{INITIATED_LABEL}=1"), &node]);
        }
        Ok(swarm)
    }

    /// Leaves the swarm if a test initiated it and no service runs on it any more.
    fn leave(&mut self) -> String {
        if std::mem::replace(&mut self.done, true) {
            return "already done".into();
        }
        let labelled = try_docker(&["node", "inspect", "self", "--format", "{{json .Spec.Labels}}"])
            .is_ok_and(|l| l.contains(INITIATED_LABEL));
        if !self.initiated && !labelled {
            return "the engine was in a swarm before: left as it was".into();
        }
        if !try_docker(&["service", "ls", "-q"]).unwrap_or_default().is_empty() {
            return "services still run on the swarm (another test?): not left".into();
        }
        if let Err(e) = try_docker(&["swarm", "leave", "--force"]) {
            return format!("could not leave the swarm: {e}");
        }
        if !self.gwbridge_before {
            // Swarm created it; it is left behind by `swarm leave`.
            let _ = try_docker(&["network", "rm", "docker_gwbridge"]);
        }
        "left the swarm this test had started".into()
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let what = self.leave();
        eprintln!("swarm: {what}");
    }
}

/// A deployed stack, removed on drop (by its name) unless removed already.
struct Stack {
    name: String,
    removed: bool,
}

impl Stack {
    fn deploy(name: &str, files: &[PathBuf]) -> Stack {
        let stack = Stack { name: name.to_string(), removed: false };
        let mut cmd = Command::new("docker");
        cmd.args(["stack", "deploy", "--resolve-image", "never"]);
        for f in files {
            cmd.arg("-c").arg(f);
        }
        // The file's defaults, whatever the caller's environment says.
        let out = cmd
            .arg(name)
            .env("SHOAL_IMAGE", IMAGE)
            .env_remove("SHOAL_PROFILE")
            .output()
            .expect("docker runs");
        assert!(out.status.success(), "docker stack deploy {name}: {}", String::from_utf8_lossy(&out.stderr));
        stack
    }

    fn service(&self, short: &str) -> String {
        format!("{}_{short}", self.name)
    }

    /// What of this stack is left: containers, services, networks.
    fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.stack.namespace={}", self.name);
        let mut left = Vec::new();
        for (what, args) in [
            ("container", vec!["ps", "-a", "-q", "--filter", &label]),
            ("service", vec!["service", "ls", "-q", "--filter", &label]),
            ("network", vec!["network", "ls", "-q", "--filter", &label]),
            ("secret", vec!["secret", "ls", "-q", "--filter", &label]),
        ] {
            left.extend(
                lines(&try_docker(&args).unwrap_or_default()).into_iter().map(|id| format!("{what} {id}")),
            );
        }
        left
    }

    /// `docker stack rm`, then waits until its containers, services, networks and secrets are gone.
    fn remove(&mut self, within: Duration) -> Result<Duration, Vec<String>> {
        let t = Instant::now();
        self.removed = true;
        let _ = try_docker(&["stack", "rm", &self.name]);
        match wait_for(within, || self.leftovers().is_empty()) {
            Some(_) => Ok(t.elapsed()),
            None => Err(self.leftovers()),
        }
    }

    /// Running task containers of a service: (container id, host name).
    fn tasks(&self, short: &str) -> Vec<(String, String)> {
        let filter = format!("label=com.docker.swarm.service.name={}", self.service(short));
        let ids = lines(&docker(&["ps", "-q", "--filter", &filter, "--filter", "status=running"]));
        ids.into_iter()
            .filter_map(|id| {
                let host = try_docker(&["inspect", "--format", "{{.Config.Hostname}}", &id]).ok()?;
                Some((id, host))
            })
            .collect()
    }

    fn logs(&self, short: &str) -> String {
        self.tasks(short)
            .iter()
            .map(|(id, host)| {
                let out = Command::new("docker").args(["logs", "--tail", "40", id]).output();
                let text = out
                    .map(|o| {
                        format!(
                            "{}{}",
                            String::from_utf8_lossy(&o.stdout),
                            String::from_utf8_lossy(&o.stderr)
                        )
                    })
                    .unwrap_or_default();
                format!("--- {host} ---\n{text}")
            })
            .collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.removed {
            eprintln!("{}{}", self.logs("ha"), self.logs("web"));
        }
        if !self.removed
            && let Err(left) = self.remove(Duration::from_secs(60))
        {
            eprintln!("stack {} not fully removed: {left:?}", self.name);
        }
    }
}

fn in_subnet(ip: Ipv4Addr, cidr: &str) -> bool {
    let Some((net, bits)) = cidr.split_once('/') else { return false };
    let (Ok(net), Ok(bits)) = (net.parse::<Ipv4Addr>(), bits.parse::<u32>()) else { return false };
    let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
    u32::from(ip) & mask == u32::from(net) & mask
}

/// An overlay network and a container on it: what the stack needs and swarm may lack.
fn overlay_works(prefix: &str) -> Result<(), String> {
    let net = Network(try_docker(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--attachable",
        &format!("{prefix}-probe"),
    ])?);
    let probe = try_docker(&[
        "run",
        "--rm",
        "--network",
        &net.0,
        "--entrypoint",
        "/bin/sh",
        IMAGE,
        "-c",
        "hostname -i",
    ])?;
    if probe.is_empty() {
        return Err("a container on an overlay network got no address".into());
    }
    Ok(())
}

/// `deploy/swarm/stack.yaml` on a single-node swarm: 3 web tasks UP behind ha and each served;
/// scaled to 5, then to 2 under a client loop without a failed request; removed without trace.
/// `publish.yaml` is deployed with no replicas (so nothing binds a port): the engine accepts it.
#[test]
fn swarm_stack_deploys_scales_and_is_removed_cleanly() {
    if !require("docker") {
        return;
    }
    image_present();
    // The stack sets SHOAL_ADVERTISE, then runs what the image's own entrypoint runs.
    let stack_file = std::fs::read_to_string(repo().join("deploy/swarm/stack.yaml")).unwrap();
    let exec = stack_file.lines().map(str::trim).find(|l| l.starts_with("exec ")).expect("an exec line");
    let image_entrypoint = docker(&["image", "inspect", "--format", "{{json .Config.Entrypoint}}", IMAGE]);
    assert!(
        image_entrypoint.contains(&exec.replace("$$", "$").replace('"', "\\\"")),
        "stack.yaml's entrypoint ({exec}) runs what the image's does: {image_entrypoint}"
    );
    let started = Instant::now();
    let name = format!("shoal-test-{}", std::process::id());
    let mut swarm = match Swarm::join() {
        Ok(s) => s,
        Err(why) => {
            eprintln!("SKIPPED: Docker Swarm does not work on this engine: {why}");
            return;
        }
    };
    if let Err(why) = overlay_works(&name) {
        eprintln!("SKIPPED: overlay networking does not work on this engine: {why}");
        return;
    }
    let mut figures =
        vec![format!("swarm ready after {:?} (initiated here: {})", started.elapsed(), swarm.initiated)];
    let files = repo().join("deploy/swarm");
    let (_, key) = gossip_key();

    // publish.yaml, with no task: the engine checks the merged spec, no port is bound.
    let zero = std::env::temp_dir().join(format!("{name}-zero.yaml"));
    std::fs::write(
        &zero,
        "services:\n  ha:\n    deploy:\n      replicas: 0\n  web:\n    deploy:\n      replicas: 0\n",
    )
    .unwrap();
    let mut published = Stack::deploy(
        &format!("{name}-pub"),
        &[files.join("stack.yaml"), files.join("publish.yaml"), zero.clone()],
    );
    let _ = std::fs::remove_file(&zero);
    let endpoint: Value = serde_json::from_str(&docker(&[
        "service",
        "inspect",
        "--format",
        "{{json .Endpoint.Spec}}",
        &published.service("ha"),
    ]))
    .unwrap();
    let ports: BTreeSet<(u64, u64, String)> = endpoint["Ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let n = |k: &str| p[k].as_u64().unwrap_or(0);
            (n("TargetPort"), n("PublishedPort"), p["PublishMode"].as_str().unwrap_or("").to_string())
        })
        .collect();
    assert_eq!(endpoint["Mode"], "dnsrr", "ha resolves to its tasks: {endpoint}");
    assert_eq!(
        ports,
        BTreeSet::from([(80, 80, "host".to_string()), (1936, 1936, "host".to_string())]),
        "publish.yaml publishes 80 and 1936 on the hosts running ha"
    );
    let _ = try_docker(&["stack", "rm", &published.name]);

    // The stack itself; a client container on its network.
    let t = Instant::now();
    let mut stack = Stack::deploy(&name, &[files.join("stack.yaml")]);
    let network = format!("{name}_shoal");
    let client = Container(docker(&[
        "run",
        "-d",
        "--name",
        &format!("{name}-client"),
        "--network",
        &network,
        "--entrypoint",
        "/bin/sh",
        IMAGE,
        "-c",
        "exec sleep 3600",
    ]));
    let pool = || {
        let csv =
            try_docker(&["exec", &client.0, "timeout", "5", "wget", "-q", "-O", "-", "http://ha:1936/;csv"]);
        pool_of_csv(&csv.unwrap_or_default())
    };
    let wait_up = |n: usize, within: Duration| -> Duration {
        let t = Instant::now();
        let ok = wait_for(within, || {
            let up = up_of(&pool());
            let hosts: BTreeSet<String> = stack.tasks("web").into_iter().map(|(_, h)| h).collect();
            up.len() == n && up == hosts
        });
        assert!(
            ok.is_some(),
            "wanted {n} web tasks UP; ha's pool: {:?}; running tasks: {:?}",
            pool(),
            stack.tasks("web")
        );
        t.elapsed()
    };

    // 1. Three web tasks UP, each advertising its address on the stack's network.
    wait_up(3, Duration::from_secs(40));
    figures
        .push(format!("deployed: 3 web tasks UP {} ms after `docker stack deploy`", t.elapsed().as_millis()));
    let subnets = lines(&docker(&[
        "network",
        "inspect",
        "--format",
        "{{range .IPAM.Config}}{{.Subnet}}\n{{end}}",
        &network,
    ]));
    let (ha_id, ha_host) = stack.tasks("ha").pop().expect("an ha task runs");
    let members: Value = serde_json::from_str(&docker(&[
        "exec", &ha_id, "shoal", "members", "--status", "alive", "--format", "json",
    ]))
    .unwrap();
    let members = members["members"].as_array().cloned().unwrap_or_default();
    assert_eq!(members.len(), 4, "ha and 3 web agents alive: {members:?}");
    for m in &members {
        let addr: std::net::SocketAddr = m["addr"].as_str().unwrap_or("").parse().expect("member address");
        let std::net::IpAddr::V4(ip) = addr.ip() else { panic!("IPv4 member address: {m}") };
        assert!(
            subnets.iter().any(|s| in_subnet(ip, s)),
            "{} advertises {addr}, outside the stack's network {subnets:?}",
            m["name"]
        );
    }
    assert!(members.iter().any(|m| m["name"] == ha_host.as_str()), "ha's node name is its host name");
    // Gossip is encrypted with the key from the stack's secret, on every member.
    assert_cluster_key(&ha_id, &key, 4);
    let secret = docker(&["exec", &ha_id, "/bin/sh", "-c", "stat -c '%u %a' /run/secrets/gossip_key"]);
    assert_eq!(secret, "65534 400", "the secret is readable by nobody alone");
    // Locked down as the file says: processes run as nobody, the root is read-only, and the
    // admin socket, in its volume, answers.
    for (id, host) in stack.tasks("ha").into_iter().chain(stack.tasks("web")) {
        let uids = docker(&["exec", &id, "/bin/sh", "-c", UIDS]);
        assert_eq!(lines(&uids), ["65534"], "{host}: every process runs as nobody");
        assert!(try_docker(&["exec", &id, "touch", "/probe"]).is_err(), "{host}: the root is read-only");
    }
    let show = docker(&["exec", &ha_id, "shoal", "server", "show"]);
    for (_, host) in stack.tasks("web") {
        assert!(show.contains(&host), "`shoal server show` on ha lists {host}: {show}");
    }

    // 2. Requests through ha reach every web task.
    let (hosts, failed) = Requests::run(&client.0, "http://ha/", 12);
    assert!(failed.is_empty(), "requests through ha failed: {failed:?}");
    let want: BTreeSet<String> = stack.tasks("web").into_iter().map(|(_, h)| h).collect();
    assert_eq!(
        hosts.iter().cloned().collect::<BTreeSet<_>>(),
        want,
        "12 requests reach all 3 tasks: {hosts:?}"
    );

    // 3. Scaled to 5: 5 UP, all served.
    let t = Instant::now();
    docker(&["service", "scale", "--detach", &format!("{}=5", stack.service("web"))]);
    wait_up(5, Duration::from_secs(40));
    figures.push(format!("scaled to 5: all UP {} ms after `docker service scale`", t.elapsed().as_millis()));
    let (hosts, failed) = Requests::run(&client.0, "http://ha/", 15);
    assert!(failed.is_empty(), "requests through ha failed: {failed:?}");
    assert_eq!(hosts.iter().collect::<BTreeSet<_>>().len(), 5, "15 requests reach all 5 tasks: {hosts:?}");

    // 4. Scaled down to 2 under a client loop: the three that go leave first; no request fails.
    let running = Requests::start(&client.0, "http://ha/", 0);
    running.wait_more(0, 5, Duration::from_secs(30));
    let t = Instant::now();
    docker(&["service", "scale", "--detach", &format!("{}=2", stack.service("web"))]);
    wait_up(2, Duration::from_secs(40));
    let down = t.elapsed();
    // The three are out of ha's pool altogether (their leave went through, not only their
    // health checks), then the loop goes on against the pool of two.
    let gone = wait_for(Duration::from_secs(40), || pool().len() == 2);
    assert!(gone.is_some(), "the three that went are removed from ha's pool: {:?}", pool());
    running.wait_more(running.done(), 5, Duration::from_secs(30));
    let samples = running.finish();
    let failed: Vec<&String> = samples.iter().filter(|l| !l.starts_with("ok ")).collect();
    assert!(samples.len() > 20, "the client loop ran: {samples:?}");
    assert!(
        failed.is_empty(),
        "scaling down cost {} failed requests of {}: {failed:?}",
        failed.len(),
        samples.len()
    );
    figures.push(format!(
        "scaled to 2: 2 UP and the others stopped {} ms after `docker service scale`; {} requests meanwhile, 0 failed",
        down.as_millis(),
        samples.len()
    ));

    // 5. Removed: its containers, services and network gone (the client first: it holds the network).
    drop(client);
    let gone =
        stack.remove(Duration::from_secs(60)).unwrap_or_else(|left| panic!("left after stack rm: {left:?}"));
    figures.push(format!("stack rm: everything gone after {} ms", gone.as_millis()));
    if let Err(left) = published.remove(Duration::from_secs(30)) {
        panic!("left after stack rm of the publish check: {left:?}");
    }
    let ours =
        |n: &String| *n == name || n.starts_with(&format!("{name}-")) || n.starts_with(&format!("{name}_"));
    let stray: Vec<String> = [
        docker(&["ps", "-a", "--format", "{{.Names}}"]),
        docker(&["network", "ls", "--format", "{{.Name}}"]),
        docker(&["service", "ls", "--format", "{{.Name}}"]),
        docker(&["secret", "ls", "--format", "{{.Name}}"]),
    ]
    .iter()
    .flat_map(|s| lines(s))
    .filter(ours)
    .collect();
    assert!(stray.is_empty(), "left behind: {stray:?}");
    let left = swarm.leave();
    if swarm.initiated && left.starts_with("left") {
        assert_eq!(swarm_state(), "inactive", "the swarm this test started is gone");
        assert!(try_docker(&["network", "inspect", "ingress"]).is_err(), "the ingress network went with it");
    }
    figures.push(format!("swarm: {left}; whole test {} ms", started.elapsed().as_millis()));
    eprintln!("swarm figures:\n  {}", figures.join("\n  "));
}

// ---------------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------------

/// Every YAML document of a file, as JSON (PyYAML: scripts/install-test-deps.sh installs it).
/// `None` (and a printed reason) when no Python with PyYAML is installed outside CI.
fn yaml_docs(path: &Path) -> Option<Vec<Value>> {
    const SCRIPT: &str = "import json, sys, yaml\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1], encoding='utf-8')))))";
    for python in ["/usr/bin/python3", "python3"] {
        let Ok(out) = Command::new(python).args(["-c", SCRIPT]).arg(path).output() else { continue };
        if out.status.success() {
            let docs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON from PyYAML");
            return Some(docs.into_iter().filter(|d| !d.is_null()).collect());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if !err.contains("No module named") {
            panic!("{} is not valid YAML: {err}", path.display());
        }
    }
    if std::env::var_os("CI").is_some() {
        panic!("no python3 with PyYAML: run scripts/install-test-deps.sh, which installs python3-yaml");
    }
    eprintln!("SKIPPED: no python3 with PyYAML (run scripts/install-test-deps.sh to install it)");
    None
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector.as_object().is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The `[env: NAME=]` variables of `shoal SUBCOMMAND --help`.
fn env_vars_of(subcommand: &str) -> BTreeSet<String> {
    let out =
        Command::new(env!("CARGO_BIN_EXE_shoal")).args([subcommand, "--help"]).output().expect("shoal runs");
    let text = String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
    text.split("[env: ")
        .skip(1)
        .map(|r| r.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>())
        .filter(|n| !n.is_empty())
        .collect()
}

/// What a role's container reads from its environment: `ROLE` (the image's entrypoint), the
/// variables its service scripts use, and those of every `shoal` command they run.
fn role_env(role: &str) -> BTreeSet<String> {
    let dir = repo().join("docker/roles").join(role).join("services.d");
    let mut vars = BTreeSet::from(["ROLE".to_string()]);
    let mut commands = BTreeSet::from(["init".to_string()]);
    for service in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let Ok(script) = std::fs::read_to_string(service.unwrap().path().join("run")) else { continue };
        let code: String =
            script.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
        for part in code.split('$').skip(1) {
            let name: String = part
                .trim_start_matches('{')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                vars.insert(name);
            }
        }
        for part in code.split("shoal ").skip(1) {
            commands.insert(part.split_whitespace().next().unwrap_or("").to_string());
        }
    }
    for command in commands {
        vars.extend(env_vars_of(&command));
    }
    vars
}

fn port_of(container: &Value, port: &Value) -> Option<(u64, String)> {
    container["ports"].as_array()?.iter().find_map(|p| {
        let hit = match port {
            Value::String(name) => p["name"] == name.as_str(),
            Value::Number(n) => p["containerPort"].as_u64() == n.as_u64(),
            _ => false,
        };
        hit.then(|| {
            (p["containerPort"].as_u64().unwrap_or(0), p["protocol"].as_str().unwrap_or("TCP").to_string())
        })
    })
}

fn env_of(container: &Value) -> Vec<(String, Value)> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (str_of(&e["name"]).to_string(), e.clone()))
        .collect()
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    env_of(container)
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, e)| e["value"].as_str().map(str::to_string))
}

/// The volume named `name` of a pod spec.
fn volume_of<'a>(spec: &'a Value, name: &str) -> &'a Value {
    spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("volume {name} is defined"))
}

/// The `shoal-gossip` Secret as the kubelet mounts it: its `gossip-key` in a folder, owned by
/// root and group `group` with `mode` (when this test may change owners; else readable by all).
fn secret_dir(prefix: &str, key: &str, mode: u32, group: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("{prefix}-secret"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gossip-key");
    let _ = std::fs::remove_file(&file);
    std::fs::write(&file, format!("{key}\n")).unwrap();
    let mode =
        if std::os::unix::fs::chown(&file, Some(0), Some(group)).is_ok() { mode } else { mode | 0o444 };
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    dir
}

/// Removes the folders [`secret_dir`] made for a test.
struct SecretDirs(String);

impl Drop for SecretDirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{}-secret", self.0)));
    }
}

/// `$(NAME)` references in an env value (Kubernetes' dependent variables).
fn refs(value: &str) -> Vec<String> {
    value.split("$(").skip(1).filter_map(|r| r.split_once(')')).map(|(n, _)| n.to_string()).collect()
}

struct Manifests {
    deployments: Vec<Value>,
    services: Vec<Value>,
}

impl Manifests {
    fn load() -> Option<Manifests> {
        let docs = yaml_docs(&repo().join("deploy/k8s/shoal.yaml"))?;
        let of = |kind: &str| docs.iter().filter(|d| d["kind"] == kind).cloned().collect::<Vec<_>>();
        Some(Manifests { deployments: of("Deployment"), services: of("Service") })
    }

    fn role_of(d: &Value) -> String {
        env_value(&d["spec"]["template"]["spec"]["containers"][0], "ROLE").unwrap_or_default()
    }

    fn deployment(&self, role: &str) -> &Value {
        self.deployments
            .iter()
            .find(|d| Manifests::role_of(d) == role)
            .unwrap_or_else(|| panic!("a {role} Deployment"))
    }

    /// Headless Services whose selector picks this Deployment's pods.
    fn headless_for(&self, d: &Value) -> Vec<String> {
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        self.services
            .iter()
            .filter(|s| s["spec"]["clusterIP"] == "None" && labels_match(&s["spec"]["selector"], labels))
            .map(|s| str_of(&s["metadata"]["name"]).to_string())
            .collect()
    }
}

/// The manifests hang together: they parse, kinds are known, selectors pick pods, ports and
/// probes name real ports, env vars are ones the image reads, the join addresses are headless
/// Services of the other role, pods are locked down and can stop gracefully. (The swarm files
/// parse too.)
#[test]
fn kubernetes_manifests_hang_together() {
    let Some(docs) = yaml_docs(&repo().join("deploy/k8s/shoal.yaml")) else { return };
    for f in ["stack.yaml", "publish.yaml"] {
        let swarm = yaml_docs(&repo().join("deploy/swarm").join(f)).unwrap();
        assert!(
            swarm.len() == 1 && swarm[0]["services"]["ha"].is_object(),
            "{f}: one document with services.ha"
        );
        // The stack's environment, too, is what the image reads.
        for (service, spec) in swarm[0]["services"].as_object().unwrap() {
            let Some(env) = spec["environment"].as_object() else { continue };
            let role = str_of(&env["ROLE"]);
            assert!(
                repo().join("docker/roles").join(role).is_dir(),
                "{f}: {service} has a ROLE of the image"
            );
            let reads = role_env(role);
            for var in env.keys() {
                assert!(reads.contains(var), "{f}: {service}'s {var} is not read by the image's {role} role");
            }
        }
    }
    assert!(!docs.is_empty(), "deploy/k8s/shoal.yaml has documents");
    let known = [
        ("v1", "Service"),
        ("apps/v1", "Deployment"),
        ("v1", "ConfigMap"),
        ("policy/v1", "PodDisruptionBudget"),
    ];
    let mut names = BTreeSet::new();
    for d in &docs {
        let (api, kind, name) =
            (str_of(&d["apiVersion"]), str_of(&d["kind"]), str_of(&d["metadata"]["name"]));
        assert!(known.contains(&(api, kind)), "unknown apiVersion/kind {api}/{kind}");
        assert!(
            !name.is_empty()
                && name.len() <= 63
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !name.starts_with('-')
                && !name.ends_with('-'),
            "{kind} name {name:?} is a DNS label"
        );
        assert!(names.insert((kind, name)), "{kind} {name} defined twice");
    }
    let m = Manifests::load().unwrap();
    let roles: BTreeSet<String> = m.deployments.iter().map(Manifests::role_of).collect();
    assert_eq!(
        roles,
        BTreeSet::from(["backend".to_string(), "balancer".to_string()]),
        "one Deployment per role"
    );

    for d in &m.deployments {
        let name = str_of(&d["metadata"]["name"]);
        let pod = &d["spec"]["template"];
        let spec = &pod["spec"];
        assert!(
            labels_match(&d["spec"]["selector"]["matchLabels"], &pod["metadata"]["labels"]),
            "{name}: selector picks its pods"
        );
        assert_eq!(spec["enableServiceLinks"], false, "{name}: no injected SHOAL_* service variables");
        // Two stop steps of `shoal init` (agent, then app or balancer), 10 s each, plus preStop.
        let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
        assert!(grace >= 25, "{name}: terminationGracePeriodSeconds {grace} leaves time for a graceful stop");
        let psc = &spec["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{name}: runAsNonRoot");
        assert!(psc["runAsUser"].as_u64().is_some_and(|u| u != 0), "{name}: a non-root runAsUser");
        let volumes: BTreeMap<String, Value> = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| (str_of(&v["name"]).to_string(), v.clone()))
            .collect();
        let containers = spec["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "{name}: one container (shoal init supervises the rest)");
        let c = &containers[0];
        assert!(str_of(&c["image"]).contains("shoal"), "{name}: runs the shoal image");
        let requests = &c["resources"]["requests"];
        assert!(
            requests["cpu"].is_string() && requests["memory"].is_string(),
            "{name}: cpu and memory requests"
        );
        let csc = &c["securityContext"];
        assert_eq!(csc["allowPrivilegeEscalation"], false, "{name}: no privilege escalation");
        assert_eq!(csc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{name}: no capabilities");
        assert_eq!(csc["readOnlyRootFilesystem"], true, "{name}: read-only root");
        let mounts: BTreeMap<String, String> = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| (str_of(&v["mountPath"]).to_string(), str_of(&v["name"]).to_string()))
            .collect();
        for path in ["/run/shoal", "/var/lib/shoal", "/tmp"] {
            let vol = mounts
                .get(path)
                .unwrap_or_else(|| panic!("{name}: {path} is mounted (the root is read-only)"));
            assert!(
                volumes.get(vol).is_some_and(|v| v["emptyDir"].is_object()),
                "{name}: {path} is an emptyDir volume"
            );
        }
        // Ports: unique names; probes name real ones.
        let port_names: Vec<&str> =
            c["ports"].as_array().into_iter().flatten().map(|p| str_of(&p["name"])).collect();
        assert_eq!(
            port_names.len(),
            port_names.iter().collect::<BTreeSet<_>>().len(),
            "{name}: port names unique"
        );
        for probe in ["readinessProbe", "livenessProbe"] {
            if let Some(get) = c[probe]["httpGet"].as_object() {
                assert!(port_of(c, &get["port"]).is_some(), "{name}: {probe} names a container port");
            }
        }
        // Env: what the image reads, or referenced by another value as $(NAME).
        let reads = role_env(&Manifests::role_of(d));
        let env = env_of(c);
        let referenced: BTreeSet<String> = env.iter().flat_map(|(_, e)| refs(str_of(&e["value"]))).collect();
        for (var, e) in &env {
            assert!(
                reads.contains(var) || referenced.contains(var),
                "{name}: env {var} is read by neither the image's {} role nor another variable",
                Manifests::role_of(d)
            );
            for r in refs(str_of(&e["value"])) {
                let pos = env.iter().position(|(n, _)| *n == r);
                let me = env.iter().position(|(n, _)| n == var);
                assert!(
                    pos.is_some() && pos < me,
                    "{name}: {var} refers to $({r}), which must be defined before it"
                );
            }
        }
        let role = Manifests::role_of(d);
        assert!(
            repo().join("docker/roles").join(&role).is_dir(),
            "{name}: ROLE={role} is a role of the image"
        );
        let advertise = env_value(c, "SHOAL_ADVERTISE").unwrap_or_default();
        assert!(advertise.ends_with(":7946"), "{name}: advertises the gossip port: {advertise:?}");
    }

    // Roles, probes and ports as the image serves them.
    let ha = m.deployment("balancer");
    let web = m.deployment("backend");
    let hac = &ha["spec"]["template"]["spec"]["containers"][0];
    let webc = &web["spec"]["template"]["spec"]["containers"][0];
    let listen = env_value(hac, "SHOAL_LISTEN").unwrap_or("0.0.0.0:80".into());
    let listen_port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(
        port_of(hac, &"http".into()).map(|p| p.0),
        Some(listen_port),
        "ha's `http` port is SHOAL_LISTEN's"
    );
    assert!(listen_port >= 1024, "the balancer runs as nobody: it listens above 1023 (no sysctl assumed)");
    let stats_port: u64 = env_value(hac, "SHOAL_STATS")
        .unwrap_or("0.0.0.0:1936".into())
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        port_of(hac, &"stats".into()).map(|p| p.0),
        Some(stats_port),
        "ha's `stats` port is SHOAL_STATS's"
    );
    let ready = &hac["readinessProbe"]["httpGet"];
    assert_eq!(
        (str_of(&ready["path"]), port_of(hac, &ready["port"]).map(|p| p.0)),
        ("/;up", Some(stats_port)),
        "ha ready on /;up"
    );
    let ready = &webc["readinessProbe"]["httpGet"];
    assert_eq!(
        (str_of(&ready["path"]), port_of(webc, &ready["port"]).map(|p| p.0)),
        ("/", Some(3000)),
        "web ready on / (3000)"
    );

    // Join addresses: headless, published before readiness, picking the other role only.
    let web_join = env_value(webc, "JOIN").expect("web pods have a JOIN address");
    let ha_join = env_value(hac, "SHOAL_JOIN").expect("ha pods have a SHOAL_JOIN address");
    assert!(
        m.headless_for(ha).contains(&web_join),
        "web joins {web_join}, a headless Service of the balancer pods"
    );
    assert!(m.headless_for(web).contains(&ha_join), "ha joins {ha_join}, a headless Service of the web pods");
    assert!(
        !m.headless_for(web).contains(&web_join) && !m.headless_for(ha).contains(&ha_join),
        "no pod joins itself"
    );
    for s in &m.services {
        let name = str_of(&s["metadata"]["name"]);
        let picked: Vec<&Value> = m
            .deployments
            .iter()
            .filter(|d| labels_match(&s["spec"]["selector"], &d["spec"]["template"]["metadata"]["labels"]))
            .collect();
        assert_eq!(picked.len(), 1, "Service {name} picks the pods of one Deployment");
        let c = &picked[0]["spec"]["template"]["spec"]["containers"][0];
        if s["spec"]["clusterIP"] == "None" {
            assert_eq!(s["spec"]["publishNotReadyAddresses"], true, "{name}: joinable before ready");
        }
        for p in s["spec"]["ports"].as_array().into_iter().flatten() {
            let target = if p["targetPort"].is_null() { &p["port"] } else { &p["targetPort"] };
            let (_, protocol) = port_of(c, target)
                .unwrap_or_else(|| panic!("{name}: targetPort {target} is a container port"));
            assert_eq!(protocol, p["protocol"].as_str().unwrap_or("TCP"), "{name}: {target} protocol");
        }
    }
    let front = m.services.iter().find(|s| s["spec"]["clusterIP"] != "None").expect("a front Service");
    let front_ports: BTreeSet<u64> =
        front["spec"]["ports"].as_array().unwrap().iter().filter_map(|p| p["port"].as_u64()).collect();
    assert_eq!(front_ports, BTreeSet::from([80, 1936]), "the front Service publishes 80 and 1936");
}

/// compose.yaml, the swarm stack and the Kubernetes manifests run encrypted gossip, every
/// agent reading the key from a file a secret provides: the one `scripts/gossip-key.sh` makes
/// for compose and swarm, a Kubernetes Secret created from it as the manifest's header says.
/// No key is in the files or in the environment.
#[test]
fn deployments_encrypt_gossip_with_a_key_from_a_secret() {
    for f in ["compose.yaml", "deploy/swarm/stack.yaml"] {
        let Some(docs) = yaml_docs(&repo().join(f)) else { return };
        let secrets = docs[0]["secrets"].as_object().unwrap_or_else(|| panic!("{f} defines secrets"));
        for (service, spec) in docs[0]["services"].as_object().unwrap() {
            let env = &spec["environment"];
            assert!(env.get("SHOAL_ENCRYPT").is_none(), "{f}: {service}: no key in the file");
            let path = str_of(&env["SHOAL_ENCRYPT_FILE"]);
            let mounted: Vec<(String, String)> = spec["secrets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| match s {
                    Value::String(name) => (name.clone(), name.clone()),
                    long => {
                        let source = str_of(&long["source"]).to_string();
                        (source.clone(), long["target"].as_str().map_or(source, str::to_string))
                    }
                })
                .collect();
            assert!(
                mounted.iter().any(|(source, target)| path == format!("/run/secrets/{target}")
                    && secrets.contains_key(source)),
                "{f}: {service}'s SHOAL_ENCRYPT_FILE ({path:?}) is a secret it mounts: {mounted:?}"
            );
        }
        let folder = repo().join(f).parent().unwrap().to_path_buf();
        for (name, secret) in secrets {
            let file = folder.join(str_of(&secret["file"])).canonicalize();
            assert_eq!(
                file.ok(),
                gossip_key().0.canonicalize().ok(),
                "{f}: secret {name} is the key file scripts/gossip-key.sh makes"
            );
        }
    }
    let Some(m) = Manifests::load() else { return };
    let header = std::fs::read_to_string(repo().join("deploy/k8s/shoal.yaml")).unwrap();
    for d in &m.deployments {
        let name = str_of(&d["metadata"]["name"]);
        let spec = &d["spec"]["template"]["spec"];
        let c = &spec["containers"][0];
        assert!(env_of(c).iter().all(|(n, _)| n != "SHOAL_ENCRYPT"), "{name}: no key in the environment");
        let path = env_value(c, "SHOAL_ENCRYPT_FILE").unwrap_or_else(|| panic!("{name}: SHOAL_ENCRYPT_FILE"));
        let mount = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| path.starts_with(&format!("{}/", str_of(&v["mountPath"]))))
            .unwrap_or_else(|| panic!("{name}: {path} is in a mounted volume"));
        assert_eq!(mount["readOnly"], true, "{name}: the key is mounted read-only");
        let secret = &volume_of(spec, str_of(&mount["name"]))["secret"];
        let key = &path[str_of(&mount["mountPath"]).len() + 1..];
        let secret_name = str_of(&secret["secretName"]);
        assert_eq!((secret_name, key), ("shoal-gossip", "gossip-key"), "{name}: the key is a Secret's file");
        let create = format!(
            "kubectl create secret generic {secret_name} --from-file={key}=deploy/secrets/gossip.key"
        );
        assert!(header.contains(&create), "the manifest says how to create the Secret: {create}");
        let mode = secret["defaultMode"].as_u64().unwrap_or(0o644);
        let group = spec["securityContext"]["fsGroup"].is_u64();
        assert!(
            mode & 0o007 == 0 && (!group || mode & 0o040 != 0),
            "{name}: mode {mode:o}: the pod's group only"
        );
    }
}

/// The manifests' pods, replayed in Docker as Kubernetes would run them: their env (with
/// `$(VAR)` and the pod IP), user and group, read-only root, dropped capabilities, no privilege
/// gain, emptyDirs (tmpfs), and the headless Services as network aliases. The balancer sees
/// every web pod UP, the probes answer, requests reach every web pod, every process runs as the
/// pod's user, and a web pod stops gracefully within its grace period.
#[test]
fn kubernetes_pods_run_in_docker_as_the_manifests_say() {
    if !require("docker") {
        return;
    }
    let Some(m) = Manifests::load() else { return };
    image_present();
    let prefix = format!("shoal-k8s-{}", std::process::id());
    let net = Network(docker(&["network", "create", &prefix]));
    let entrypoint: Vec<String> = serde_json::from_str(&docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}}",
        IMAGE,
    ]))
    .unwrap();
    let _secrets = SecretDirs(prefix.clone());
    let mut pods: Vec<(Container, String, &Value)> = Vec::new(); // (container, host name, deployment)
    let ha = m.deployment("balancer");
    for d in [ha, m.deployment("backend")] {
        let name = str_of(&d["metadata"]["name"]);
        let spec = &d["spec"]["template"]["spec"];
        let c = &spec["containers"][0];
        let (psc, csc) = (&spec["securityContext"], &c["securityContext"]);
        let uid = csc["runAsUser"].as_u64().or(psc["runAsUser"].as_u64()).unwrap();
        let gid = csc["runAsGroup"].as_u64().or(psc["runAsGroup"].as_u64()).unwrap_or(uid);
        let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--network".into(), net.0.clone()];
        args.extend(["--user".into(), format!("{uid}:{gid}")]);
        if let Some(g) = psc["fsGroup"].as_u64() {
            args.extend(["--group-add".into(), g.to_string()]);
        }
        if csc["readOnlyRootFilesystem"] == true {
            args.push("--read-only".into());
        }
        for cap in csc["capabilities"]["drop"].as_array().into_iter().flatten() {
            args.extend(["--cap-drop".into(), str_of(cap).into()]);
        }
        if csc["allowPrivilegeEscalation"] == false {
            args.extend(["--security-opt".into(), "no-new-privileges".into()]);
        }
        for v in c["volumeMounts"].as_array().into_iter().flatten() {
            let g = psc["fsGroup"].as_u64().unwrap_or(gid);
            let path = str_of(&v["mountPath"]);
            let volume = volume_of(spec, str_of(&v["name"]));
            if let Some(secret) = volume["secret"].as_object() {
                // A Secret's keys as files, as the kubelet writes them: owned by root and
                // fsGroup, with defaultMode.
                assert_eq!(
                    str_of(&secret["secretName"]),
                    "shoal-gossip",
                    "{name}: a Secret this test can replay"
                );
                let mode = secret["defaultMode"].as_u64().unwrap_or(0o644) as u32;
                let dir = secret_dir(&prefix, &gossip_key().1, mode, g as u32);
                let ro = if v["readOnly"] == true { ":ro" } else { "" };
                args.extend(["-v".into(), format!("{}:{path}{ro}", dir.display())]);
            } else {
                // An emptyDir is writable by the pod's user (0777, or group fsGroup).
                args.extend(["--tmpfs".into(), format!("{path}:uid={uid},gid={g}")]);
            }
        }
        for alias in m.headless_for(d) {
            args.extend(["--network-alias".into(), alias]);
        }
        // Env: plain values as given; the pod IP and $(VAR) values set the way the kubelet does,
        // by a shell before the image's own entrypoint.
        let mut script = String::new();
        for (var, e) in env_of(c) {
            if e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP" {
                script += &format!("export {var}=\"$(hostname -i | cut -d' ' -f1)\"; ");
            } else if let Some(v) = e["value"].as_str() {
                if refs(v).is_empty() {
                    args.extend(["-e".into(), format!("{var}={v}")]);
                } else {
                    assert!(
                        v.chars().all(|c| c.is_ascii_alphanumeric() || "$():._/-".contains(c)),
                        "{var}={v}"
                    );
                    script += &format!("export {var}=\"{}\"; ", v.replace("$(", "${").replace(')', "}"));
                }
            } else {
                panic!("{name}: env {var} comes from something this test cannot replay: {e}");
            }
        }
        script += "exec \"$@\"";
        let replicas = d["spec"]["replicas"].as_u64().unwrap_or(1);
        for i in 1..=replicas {
            let host = format!("{name}-{i}");
            let mut run = args.clone();
            run.extend(["--name".into(), format!("{prefix}-{host}"), "--hostname".into(), host.clone()]);
            run.extend([
                "--entrypoint".into(),
                "/bin/sh".into(),
                IMAGE.into(),
                "-c".into(),
                script.clone(),
                "pod".into(),
            ]);
            run.extend(entrypoint.iter().cloned());
            let id = docker(&run.iter().map(String::as_str).collect::<Vec<_>>());
            pods.push((Container(id), host, d));
        }
    }
    let ha_pod = &pods[0].0.0;
    let hac = &ha["spec"]["template"]["spec"]["containers"][0];
    let stats = port_of(hac, &"stats".into()).unwrap().0;
    let http = port_of(hac, &"http".into()).unwrap().0;
    let web_hosts: BTreeSet<String> = pods
        .iter()
        .filter(|(_, _, d)| Manifests::role_of(d) == "backend")
        .map(|(_, h, _)| h.clone())
        .collect();
    let pool = || {
        let url = format!("http://127.0.0.1:{stats}/;csv");
        pool_of_csv(
            &try_docker(&["exec", ha_pod, "timeout", "5", "wget", "-q", "-O", "-", &url]).unwrap_or_default(),
        )
    };
    let logs = |id: &str| {
        let o = Command::new("docker").args(["logs", "--tail", "30", id]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };
    let ok = wait_for(Duration::from_secs(30), || up_of(&pool()) == web_hosts);
    assert!(ok.is_some(), "ha sees {web_hosts:?} UP; its pool: {:?}\n{}", pool(), logs(ha_pod));
    assert_cluster_key(ha_pod, &gossip_key().1, pods.len());

    for (pod, host, d) in &pods {
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        // Probes answer (the kubelet would call them on the pod IP; loopback here).
        for probe in ["readinessProbe", "livenessProbe"] {
            let Some(get) = c[probe]["httpGet"].as_object() else { continue };
            let port = port_of(c, &get["port"]).unwrap().0;
            let url = format!("http://127.0.0.1:{port}{}", get["path"].as_str().unwrap_or("/"));
            let answer = try_docker(&["exec", &pod.0, "timeout", "5", "wget", "-q", "-O", "/dev/null", &url]);
            assert!(answer.is_ok(), "{host}: {probe} {url}: {answer:?}\n{}", logs(&pod.0));
        }
        // Every process runs as the pod's user; the root is read-only.
        let spec = &d["spec"]["template"]["spec"];
        let uid = c["securityContext"]["runAsUser"]
            .as_u64()
            .or(spec["securityContext"]["runAsUser"].as_u64())
            .unwrap();
        let uids = docker(&["exec", &pod.0, "/bin/sh", "-c", UIDS]);
        assert_eq!(lines(&uids), [uid.to_string()], "{host}: every process runs as the pod's user");
        assert!(try_docker(&["exec", &pod.0, "touch", "/probe"]).is_err(), "{host}: the root is read-only");
    }

    // Requests through the balancer's port reach every web pod.
    let (hosts, failed) = Requests::run(ha_pod, &format!("http://127.0.0.1:{http}/"), 3 * web_hosts.len());
    assert!(failed.is_empty(), "requests through ha failed: {failed:?}");
    assert_eq!(
        hosts.iter().cloned().collect::<BTreeSet<_>>(),
        web_hosts,
        "requests reach every web pod: {hosts:?}"
    );

    // A web pod stops as the kubelet stops it: SIGTERM, the grace period, exit 0, out of the pool.
    let (web, host, d) = pods.iter().find(|(_, _, d)| Manifests::role_of(d) == "backend").unwrap();
    let grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    let t = Instant::now();
    docker(&["stop", "-t", &grace.to_string(), &web.0]);
    let took = t.elapsed();
    assert_eq!(
        docker(&["inspect", "--format", "{{.State.ExitCode}}", &web.0]),
        "0",
        "{host} exits 0 on SIGTERM"
    );
    assert!(took < Duration::from_secs(grace), "{host} stopped in {took:?}, within its {grace} s");
    let rest: BTreeSet<String> = web_hosts.iter().filter(|h| *h != host).cloned().collect();
    let gone = wait_for(Duration::from_secs(10), || {
        let pool = pool();
        up_of(&pool) == rest && !pool.contains_key(host)
    });
    assert!(gone.is_some(), "{host} left ha's pool, the others stay UP: {:?}", pool());
    eprintln!(
        "k8s pods in docker: {} web pods UP behind ha; {host} stopped in {} ms",
        web_hosts.len(),
        took.as_millis()
    );
    drop(pods);
    drop(net);
    let left = lines(&docker(&["ps", "-a", "--format", "{{.Names}}"]));
    assert!(!left.iter().any(|n| n.starts_with(&prefix)), "containers left behind: {left:?}");
}
