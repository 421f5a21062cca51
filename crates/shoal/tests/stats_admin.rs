//! The balancer's stats and runtime API, seen by the tools operators use: HAProxy's
//! own CSV header and a CSV parser, the Prometheus HAProxy exporter, headless
//! Chromium on the stats page, the runtime API over its unix socket, TCP and
//! HTTP, compared answer for answer with a real HAProxy 2.6, read by `hatop`,
//! `shoal server`, and the access log.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// An HTTP/1.1 response: status, headers (lower-case names), body.
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// One request on a fresh connection (`Connection: close`), read to the end.
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers.get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        dechunk(body)
    } else {
        body.to_string()
    };
    Reply { status, headers, body }
}

/// Decodes a chunked body (HAProxy's stats page is sent that way).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    http(addr, "GET", path, &[], "")
}

/// The `host` the web app reports: which server answered.
fn served_by(front: SocketAddr) -> String {
    let r = get(front, "/");
    serde_json::from_str::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["host"].as_str().map(String::from))
        .unwrap_or_default()
}

fn tally(front: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        *seen.entry(served_by(front)).or_default() += 1;
    }
    seen
}

/// Sends a line of runtime API commands and reads the answer to the end.
fn converse(mut s: impl Read + Write, line: &str) -> String {
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A line of runtime API commands over the unix socket.
fn admin(socket: &Path, line: &str) -> String {
    let s = UnixStream::connect(socket).expect("connect to the admin socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    converse(s, line)
}

/// The same over TCP.
fn admin_tcp(addr: SocketAddr, line: &str) -> String {
    let s = TcpStream::connect(addr).expect("connect to the admin port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    converse(s, line)
}

/// A web app and its agent, announced as a backend.
struct Backend {
    _app: Proc,
    agent: Proc,
    app: SocketAddr,
}

fn backend(name: &str, seed: SocketAddr, app: SocketAddr) -> Backend {
    let (app_proc, _) =
        shoal(&format!("{name}-app"), &["webapp", &format!("--listen={app}")], &[("SERVER_NAME", name)]);
    Backend { _app: app_proc, agent: start_agent(name, seed, app), app }
}

fn start_agent(name: &str, seed: SocketAddr, app: SocketAddr) -> Proc {
    shoal_agent(
        name,
        addr(free_port()),
        &[
            "--profile=fast",
            "--tag=role=backend",
            &format!("--tag=port={}", app.port()),
            &format!("--join={seed}"),
        ],
    )
}

struct Cluster {
    lb: Proc,
    lb_log: PathBuf,
    front: SocketAddr,
    stats: SocketAddr,
    gossip: SocketAddr,
    socket: PathBuf,
    backends: Vec<Backend>,
}

impl Cluster {
    fn start(extra: &[&str]) -> Cluster {
        let (front, stats, gossip) = (addr(free_port()), addr(free_port()), addr(free_port()));
        let socket = std::env::temp_dir().join(format!("shoal-test-admin-{}.sock", free_port()));
        let mut args = vec![
            "balancer".to_string(),
            "--node=lb".into(),
            "--profile=fast".into(),
            format!("--bind={gossip}"),
            format!("--rpc-addr={}", addr(free_port())),
            format!("--listen={front}"),
            format!("--stats={stats}"),
            format!("--admin-socket={}", socket.display()),
            "--health-interval=200ms".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (lb, lb_log) = shoal("lb", &args, &[]);
        assert!(
            wait_for(Duration::from_secs(10), || TcpStream::connect(stats).is_ok()).is_some(),
            "stats listener up"
        );
        let backends =
            ["web-1", "web-2"].iter().map(|n| backend(n, gossip, addr(free_port()))).collect::<Vec<_>>();
        let c = Cluster { lb, lb_log, front, stats, gossip, socket, backends };
        let both = wait_for(Duration::from_secs(20), || {
            let seen = tally(c.front, 4);
            seen.contains_key("web-1") && seen.contains_key("web-2")
        });
        assert!(both.is_some(), "both backends serve through the balancer");
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.lb_log).unwrap_or_default()
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.lb_log.with_extension("out")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.lb.signal("KILL");
    }
}

/// Runs `shoal server …` against the cluster's socket.
fn shoal_server(c: &Cluster, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("server")
        .arg(format!("--socket={}", c.socket.display()))
        .args(args)
        .output()
        .expect("run shoal server");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The server rows of `show servers state`, by name: (op_state, admin_state, weight).
fn servers_state(socket: &Path) -> HashMap<String, (u8, u8, u32)> {
    admin(socket, "show servers state")
        .lines()
        .skip(2)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 10).then(|| {
                (f[3].to_string(), (f[5].parse().unwrap(), f[6].parse().unwrap(), f[7].parse().unwrap()))
            })
        })
        .collect()
}

/// Where test artifacts go: `target/test-artifacts`.
fn artifacts() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_shoal"));
    let dir = exe.ancestors().nth(2).unwrap_or(Path::new(".")).join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a command with a deadline; returns its stdout.
fn run_bounded(cmd: &mut Command, deadline: Duration) -> String {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let finished = wait_for(deadline, || matches!(child.try_wait(), Ok(Some(_))));
    if finished.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    reader.join().unwrap_or_default()
}

/// A real HAProxy 2.6 on loopback, with a stats page and an admin-level stats socket, and a
/// backend `backend` of `servers` (name and address) checked with `HEAD /`, as Shoal's pool.
struct Haproxy {
    proc: Proc,
    stats: SocketAddr,
    socket: PathBuf,
}

impl Haproxy {
    fn start(servers: &[(&str, SocketAddr)]) -> Haproxy {
        let (port, front) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("shoal-test-haproxy-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("admin.sock");
        let mut cfg = format!(
            "global\n  maxconn 100\n  stats socket {} mode 600 level admin\n\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n\
             frontend stats\n  bind 127.0.0.1:{port}\n  stats enable\n  stats uri /\n\
             frontend http\n  bind 127.0.0.1:{front}\n  default_backend backend\n\
             backend backend\n  balance roundrobin\n  option httpchk HEAD /\n",
            socket.display()
        );
        for (name, addr) in servers {
            cfg.push_str(&format!("  server {name} {addr} check inter 200ms\n"));
        }
        if servers.is_empty() {
            cfg.push_str("  server s1 127.0.0.1:9\n");
        }
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, cfg).unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let proc = Proc {
            child: child.expect("haproxy is installed (scripts/install-test-deps.sh)"),
            name: "haproxy".into(),
        };
        let stats = addr(port);
        assert!(
            wait_for(Duration::from_secs(10), || TcpStream::connect(stats).is_ok() && socket.exists())
                .is_some(),
            "haproxy up"
        );
        Haproxy { proc, stats, socket }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.proc.signal("KILL");
        let _ = self.proc.wait_exit(Duration::from_secs(5));
    }
}

/// HAProxy's own stats CSV header, from a real HAProxy.
fn haproxy_csv_header() -> String {
    let hp = Haproxy::start(&[]);
    let csv = get(hp.stats, "/;csv").body;
    csv.lines().next().unwrap_or_default().to_string()
}

#[test]
fn stats_views_read_by_haproxy_tools_prometheus_and_a_browser() {
    let c = Cluster::start(&[]);
    for _ in 0..10 {
        assert!(!served_by(c.front).is_empty());
    }

    // The CSV has HAProxy 2.6's header (its static fields, a `-` column, then its stats
    // modules' ssl/h2/h1 counters), and a CSV parser reads the rows with it.
    let csv = get(c.stats, "/;csv").body;
    let header = haproxy_csv_header();
    assert!(header.starts_with("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,"), "{header}");
    assert_eq!(csv.lines().next().unwrap(), header, "Shoal's CSV header is HAProxy's");
    let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(csv.as_bytes());
    let names: Vec<String> = header.trim_start_matches("# ").split(',').map(String::from).collect();
    let rows: Vec<HashMap<String, String>> = reader
        .records()
        .skip(1)
        .map(|r| {
            names.iter().cloned().zip(r.expect("a well-formed CSV row").iter().map(String::from)).collect()
        })
        .collect();
    let row =
        |sv: &str| rows.iter().find(|r| r["svname"] == sv).unwrap_or_else(|| panic!("no {sv} row in\n{csv}"));
    let total: u64 = ["web-1", "web-2"].iter().map(|s| row(s)["stot"].parse::<u64>().unwrap()).sum();
    assert!(total >= 14, "server sessions counted: {total}");
    for (i, name) in ["web-1", "web-2"].iter().enumerate() {
        let r = row(name);
        assert_eq!(r["pxname"], "backend");
        assert_eq!(r["status"], "UP");
        assert_eq!(r["weight"], "1");
        assert_eq!(r["type"], "2");
        assert_eq!(r["addr"], c.backends[i].app.to_string());
        assert_eq!(r["check_status"], "L7OK");
        assert!(r["hrsp_2xx"].parse::<u64>().unwrap() > 0);
    }
    assert_eq!(row("BACKEND")["status"], "UP");
    assert_eq!(row("BACKEND")["act"], "2");
    assert_eq!(row("FRONTEND")["status"], "OPEN");
    assert!(row("FRONTEND")["req_tot"].parse::<u64>().unwrap() >= 14);

    // JSON: the same rows, plus the gossip view.
    let json: serde_json::Value = serde_json::from_str(&get(c.stats, "/;json").body).expect("JSON");
    let web1 = json.as_array().unwrap().iter().find(|r| r["svname"] == "web-1").expect("web-1 in JSON");
    assert_eq!(web1["gossip"], "alive");
    assert_eq!(web1["tags"]["role"], "backend");
    assert_eq!(web1["status"], "UP");

    // Prometheus text format, once the balancer's agent has sent its first probe (the test
    // can get here within the first probe interval).
    let probed = wait_for(Duration::from_secs(10), || {
        get(c.stats, "/metrics").body.lines().any(|l| {
            l.strip_prefix("shoal_gossip_probes_total").and_then(|v| v.trim().parse::<f64>().ok()) > Some(0.0)
        })
    });
    assert!(probed.is_some(), "the gossip probe counter never moved");
    let metrics = get(c.stats, "/metrics");
    assert!(metrics.headers["content-type"].starts_with("application/openmetrics-text"));
    let m = &metrics.body;
    let value = |series: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in\n{m}"))
    };
    let requests = value("shoal_server_requests_total{pool=\"backend\",server=\"web-1\"}")
        + value("shoal_server_requests_total{pool=\"backend\",server=\"web-2\"}");
    assert!(requests >= 14.0, "{requests}");
    assert_eq!(value("shoal_server_state{pool=\"backend\",server=\"web-1\",state=\"UP\"}"), 1.0);
    assert_eq!(value("shoal_server_state{pool=\"backend\",server=\"web-1\",state=\"DRAIN\"}"), 0.0);
    assert!(value("shoal_server_response_seconds_count{pool=\"backend\",server=\"web-1\"}") > 0.0);
    assert!(
        m.contains("shoal_server_response_seconds_bucket{le=\"+Inf\",pool=\"backend\",server=\"web-1\"}")
            || m.contains(
                "shoal_server_response_seconds_bucket{pool=\"backend\",server=\"web-1\",le=\"+Inf\"}"
            )
    );
    assert!(value("shoal_server_responses_total{pool=\"backend\",server=\"web-2\",code=\"2xx\"}") > 0.0);
    assert_eq!(value("shoal_members{status=\"alive\"}"), 3.0);
    assert!(value("shoal_gossip_probes_total") > 0.0);
    assert_eq!(value("shoal_gossip_dropped_total{reason=\"decrypt\"}"), 0.0);
    assert!(m.trim_end().ends_with("# EOF"));

    // Network coordinates: once the balancer's agent has probed both backends, each server has
    // an estimated round trip (a loopback one: under 5 ms) in the metrics, the JSON and the page.
    let rtt_of = |server: &str| -> Option<f64> {
        let series =
            format!("shoal_server_estimated_rtt_microseconds{{pool=\"backend\",server=\"{server}\"}}");
        get(c.stats, "/metrics").body.lines().find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
    };
    let estimated =
        wait_for(Duration::from_secs(20), || rtt_of("web-1").is_some() && rtt_of("web-2").is_some());
    assert!(estimated.is_some(), "no RTT estimates in\n{}", get(c.stats, "/metrics").body);
    for server in ["web-1", "web-2"] {
        let us = rtt_of(server).unwrap();
        assert!(us > 0.0 && us < 5000.0, "{server}: {us} µs");
    }
    let json: serde_json::Value = serde_json::from_str(&get(c.stats, "/;json").body).expect("JSON");
    let web2 = json.as_array().unwrap().iter().find(|r| r["svname"] == "web-2").expect("web-2 in JSON");
    assert!(web2["rtt_us"].as_u64().is_some_and(|us| us > 0), "{web2}");
    let page = get(c.stats, "/").body;
    assert!(page.contains(">RTT") && page.contains(" ms</td>"), "the page shows the estimates");

    // The Prometheus HAProxy exporter reads Shoal as if it were HAProxy.
    let exporter = addr(free_port());
    let mut exp = Proc {
        child: Command::new("prometheus-haproxy-exporter")
            .arg(format!("--haproxy.scrape-uri=http://{}/;csv", c.stats))
            .arg(format!("--web.listen-address={exporter}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-haproxy-exporter is installed (scripts/install-test-deps.sh)"),
        name: "exporter".into(),
    };
    let mut scraped = String::new();
    let ok = wait_for(Duration::from_secs(15), || {
        scraped = TcpStream::connect(exporter).map(|_| get(exporter, "/metrics").body).unwrap_or_default();
        scraped.lines().any(|l| l == "haproxy_up 1")
    });
    exp.signal("KILL");
    let _ = exp.wait_exit(Duration::from_secs(5));
    assert!(ok.is_some(), "the exporter scraped Shoal:\n{scraped}");
    for series in [
        "haproxy_server_up{backend=\"backend\",server=\"web-1\"} 1",
        "haproxy_server_up{backend=\"backend\",server=\"web-2\"} 1",
        "haproxy_backend_up{backend=\"backend\"} 1",
        "haproxy_exporter_csv_parse_failures_total 0",
    ] {
        assert!(scraped.lines().any(|l| l == series), "exporter shows {series}:\n{scraped}");
    }
    let fe_requests = scraped
        .lines()
        .find_map(|l| l.strip_prefix("haproxy_frontend_http_requests_total{frontend=\"http\"} "))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("frontend requests through the exporter");
    assert!(fe_requests >= 14.0);

    // A real browser renders the page: servers, states and gossip show, no external assets.
    let url = format!("http://{}/?refresh=0", c.stats);
    let profile = std::env::temp_dir().join(format!("shoal-test-chromium-{}", free_port()));
    let chromium = |extra: &[String]| {
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1500,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(&url);
        cmd
    };
    let dom = run_bounded(&mut chromium(&["--dump-dom".into()]), Duration::from_secs(60));
    for text in
        ["Shoal stats", "Pool backend", "web-1", "web-2", "Gossip members", "alive", "role=backend", "L7OK"]
    {
        assert!(dom.contains(text), "the rendered page shows {text:?}:\n{dom}");
    }
    assert!(dom.contains("class=\"l UP\">UP</td>"), "UP shown with its colour class");
    assert!(!dom.contains("<script") && !dom.contains("<link"), "no scripts, no external assets");
    let shot = artifacts().join("stats-page.png");
    let _ = std::fs::remove_file(&shot);
    run_bounded(&mut chromium(&[format!("--screenshot={}", shot.display())]), Duration::from_secs(60));
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot ({} bytes)", png.len());
    let _ = std::fs::remove_dir_all(&profile);
    eprintln!("stats page screenshot: {}", shot.display());

    // Sorting is done by the server: descending by name puts web-2 first.
    let sorted = get(c.stats, "/?sort=name&dir=desc&refresh=0").body;
    assert!(sorted.find(">web-2<").unwrap() < sorted.find(">web-1<").unwrap());
    assert!(get(c.stats, "/").body.contains("http-equiv=\"refresh\""));
    assert!(!sorted.contains("http-equiv=\"refresh\""));
    assert_eq!(get(c.stats, "/nope").status, 404);
    assert_eq!(http(c.stats, "DELETE", "/", &[], "").status, 405);
}

#[test]
fn runtime_api_steers_servers_and_the_state_survives_churn() {
    let admin_port = addr(free_port());
    let mut c = Cluster::start(&[
        &format!("--admin-listen={admin_port}"),
        "--admin-token=s3cret",
        "--stats-auth=admin:pw",
        "--stats-token=tok",
    ]);
    let socket = c.socket.clone();

    // Stats credentials: Basic or Bearer; `/;up` stays open for probes.
    let unauth = get(c.stats, "/;csv");
    assert_eq!(unauth.status, 401);
    assert!(unauth.headers["www-authenticate"].starts_with("Basic"));
    assert_eq!(http(c.stats, "GET", "/;csv", &[("Authorization", "Basic YWRtaW46cHc=")], "").status, 200);
    assert_eq!(http(c.stats, "GET", "/;csv", &[("Authorization", "Basic YWRtaW46bm8=")], "").status, 401);
    assert_eq!(http(c.stats, "GET", "/metrics", &[("Authorization", "Bearer tok")], "").status, 200);
    assert_eq!(get(c.stats, "/;up").status, 200);

    // Read-only commands.
    let help = admin(&socket, "help");
    for cmd in ["show stat", "show info", "show servers state", "set server <bk>/<srv> [opts]", "add server"]
    {
        assert!(help.contains(cmd), "help lists {cmd}:\n{help}");
    }
    let info = admin(&socket, "show info");
    assert!(
        info.contains("Name: Shoal\n") && info.contains("node: lb\n") && info.contains("MembersAlive: 3\n"),
        "{info}"
    );
    assert!(admin(&socket, "show stat").starts_with("# pxname,svname,qcur,"));
    let state = admin(&socket, "show servers state");
    assert!(
        state.starts_with("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state"),
        "{state}"
    );
    assert_eq!(servers_state(&socket)["web-1"], (2, 0, 1));
    assert_eq!(admin(&socket, "show servers state nope"), "Can't find backend.\n\n");

    // Errors, HAProxy style.
    assert!(
        admin(&socket, "frobnicate")
            .starts_with("Unknown command, but maybe one of the following ones is a better match:\n")
    );
    assert_eq!(
        admin(&socket, "set server backend/web-1 state sleepy"),
        "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n\n"
    );
    assert_eq!(admin(&socket, "set server backend/nope state drain"), "No such server.\n\n");
    assert_eq!(admin(&socket, "set server nope/web-1 state drain"), "No such backend.\n\n");
    assert_eq!(
        admin(&socket, "set server backend/web-1 weight lots"),
        "Empty weight string empty or preceded by garbage\n"
    );

    // Drain with the CLI: web-1 gets no new requests.
    let (ok, out) = shoal_server(&c, &["drain", "web-1"]);
    assert!(ok, "{out}");
    assert!(out.contains("backend/web-1: state drain"), "{out}");
    assert_eq!(tally(c.front, 10).get("web-1"), None, "a drained server gets no new requests");
    assert_eq!(servers_state(&socket)["web-1"].1, 0x08);
    assert!(
        admin(&socket, "show stat").lines().any(|l| l.starts_with("backend,web-1,") && l.contains(",DRAIN,"))
    );
    let (ok, shown) = shoal_server(&c, &["show"]);
    assert!(ok && shown.lines().any(|l| l.contains("web-1") && l.contains("DRAIN")), "{shown}");

    // Churn: web-1's agent leaves and comes back; the operator's drain holds.
    c.backends[0].agent.signal("TERM");
    assert!(c.backends[0].agent.wait_exit(Duration::from_secs(10)).is_some());
    assert!(
        wait_for(Duration::from_secs(15), || !servers_state(&socket).contains_key("web-1")).is_some(),
        "web-1 left the pool"
    );
    c.backends[0].agent = start_agent("web-1", c.gossip, c.backends[0].app);
    assert!(
        wait_for(Duration::from_secs(15), || servers_state(&socket).contains_key("web-1")).is_some(),
        "web-1 is back in the pool"
    );
    assert_eq!(servers_state(&socket)["web-1"].1, 0x08, "still draining after it rejoined");
    // The rejoined server starts unchecked; once its health checks pass it is running (op
    // state 2): the moment it would take traffic again if the drain had been lost.
    assert!(
        wait_for(Duration::from_secs(15), || servers_state(&socket).get("web-1").is_some_and(|s| s.0 == 2))
            .is_some(),
        "the rejoined web-1 passed its health checks: {}",
        admin(&socket, "show servers state")
    );
    assert_eq!(servers_state(&socket)["web-1"].1, 0x08, "still draining once UP");
    assert_eq!(tally(c.front, 10).get("web-1"), None, "the rejoined server stays drained");

    // Ready: traffic comes back.
    let (ok, out) = shoal_server(&c, &["ready", "backend/web-1"]);
    assert!(ok, "{out}");
    assert!(wait_for(Duration::from_secs(10), || tally(c.front, 4).contains_key("web-1")).is_some());

    // TCP: `auth` first, then commands; weight 3 against 1.
    assert!(admin_tcp(admin_port, "show info").starts_with("Permission denied"));
    assert!(admin_tcp(admin_port, "auth wrong; show info").starts_with("Permission denied"));
    assert_eq!(admin_tcp(admin_port, "auth s3cret; set server backend/web-2 weight 3"), "\n");
    let seen = tally(c.front, 40);
    let web2 = seen.get("web-2").copied().unwrap_or(0);
    assert!((28..=32).contains(&web2), "weight 3:1 gives web-2 about 30 of 40: {seen:?}");

    // HTTP: `POST /;cmd` needs the admin token; the stats token is not enough.
    assert_eq!(http(c.stats, "POST", "/;cmd", &[("Authorization", "Bearer tok")], "show info").status, 403);
    let anonymous = http(c.stats, "POST", "/;cmd", &[], "disable server backend/web-1");
    assert_eq!(anonymous.status, 403, "no token, no command");
    assert_eq!(servers_state(&socket)["web-1"].1, 0, "and nothing was done");
    assert_eq!(http(c.stats, "GET", "/;cmd", &[("Authorization", "Bearer s3cret")], "").status, 405);
    let posted =
        http(c.stats, "POST", "/;cmd", &[("Authorization", "Bearer s3cret")], "show servers state backend");
    assert_eq!(posted.status, 200);
    assert!(
        posted.body.lines().any(|l| l.contains(" web-2 ") && l.contains(" 3 1 ")),
        "weight 3, initially 1:\n{}",
        posted.body
    );
    assert_eq!(servers_state(&socket)["web-2"].2, 3);
    let disabled =
        http(c.stats, "POST", "/;cmd", &[("Authorization", "Bearer s3cret")], "disable server backend/web-2");
    assert_eq!((disabled.status, disabled.body.as_str()), (200, ""));
    assert_eq!(tally(c.front, 8).get("web-2"), None, "a disabled server gets nothing");
    assert_eq!(servers_state(&socket)["web-2"].1, 0x01);
    assert!(
        admin(&socket, "show stat").lines().any(|l| l.starts_with("backend,web-2,") && l.contains(",MAINT,"))
    );
    assert_eq!(admin(&socket, "enable server backend/web-2"), "\n");
    assert!(wait_for(Duration::from_secs(10), || tally(c.front, 4).contains_key("web-2")).is_some());

    // Every membership, health and operator change of a server is one log line.
    let log = c.log();
    for line in [
        "server added",
        "server UP",
        "server removed",
        "server state set by an operator",
        "server weight set by an operator",
    ] {
        assert!(log.contains(line), "the log has {line:?}:\n{log}");
    }

    // The access log: HAProxy's httplog on stdout.
    let access = c.access_log();
    let line = access
        .lines()
        .find(|l| l.contains(" http backend/web-2 ") && l.ends_with("\"GET / HTTP/1.1\""))
        .unwrap_or_else(|| panic!("an httplog line for web-2 in\n{access}"));
    let f: Vec<&str> = line.split(' ').collect();
    assert!(f[0].starts_with("127.0.0.1:"), "client: {line}");
    assert!(f[1].starts_with('[') && f[1].contains("/20"), "date: {line}");
    assert_eq!(f[4].split('/').count(), 5, "TR/Tw/Tc/Tr/Ta: {line}");
    assert!(f[4].split('/').all(|t| t.parse::<i64>().is_ok()), "timers: {line}");
    assert_eq!(f[5], "200", "status: {line}");
    assert!(f[6].parse::<u64>().unwrap() > 0, "bytes: {line}");
    assert_eq!(f[9], "----", "termination state: {line}");
}

/// `show info` names, in order.
fn info_names(info: &str) -> Vec<String> {
    info.lines().filter_map(|l| l.split_once(": ").map(|(k, _)| k.to_string())).collect()
}

/// A typed line's shape: `<head>:<tags>:<type>`, the value left out (for stats, the object's
/// numbers too: `S.<pos>.<name>`).
fn typed_shapes(typed: &str, stats: bool) -> Vec<String> {
    let mut shapes: Vec<String> = typed
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(4, ':');
            let (head, tags, ty) = (parts.next()?, parts.next()?, parts.next()?);
            let head = if stats {
                let h: Vec<&str> = head.split('.').collect();
                format!("{}.{}.{}", h[0], h[3], h[4])
            } else {
                head.to_string()
            };
            Some(format!("{head}:{tags}:{ty}"))
        })
        .collect();
    shapes.sort();
    shapes.dedup();
    shapes
}

/// A JSON answer's shape: each object with its value replaced by its type, ids dropped.
fn json_shapes(json: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let mut objects: Vec<&serde_json::Value> = Vec::new();
    for item in v.as_array().expect("an array") {
        match item.as_array() {
            Some(row) => objects.extend(row),
            None => objects.push(item),
        }
    }
    let mut shapes: Vec<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{} {} {} {} {}",
                o["objType"].as_str().unwrap_or("-"),
                o["field"],
                o["processNum"],
                o["tags"],
                o["value"]["type"]
            )
        })
        .collect();
    shapes.sort();
    shapes.dedup();
    shapes
}

/// What Shoal has that HAProxy has not: its cluster lines after HAProxy's `show info`.
const SHOAL_INFO: [&str; 6] =
    ["Members", "MembersAlive", "MembersLeaving", "MembersLeft", "MembersFailed", "MembersRefused"];

#[test]
fn the_runtime_api_answers_as_haproxy_2_6_does() {
    let c = Cluster::start(&[]);
    let hp = Haproxy::start(&[("web-1", c.backends[0].app), ("web-2", c.backends[1].app)]);
    let haproxy = |line: &str| admin(&hp.socket, line);
    let shoal = |line: &str| admin(&c.socket, line);
    let both_checked = wait_for(Duration::from_secs(15), || {
        [haproxy("show stat"), shoal("show stat")].iter().all(|csv| csv.matches(",L7OK,").count() == 2)
    });
    assert!(both_checked.is_some(), "both see two servers pass their checks");

    // `show info`: HAProxy's fields in HAProxy's order, types and tags, then Shoal's own.
    let (h, s) = (info_names(&haproxy("show info")), info_names(&shoal("show info")));
    assert_eq!(s[..h.len()], h[..], "show info lists HAProxy's fields in order");
    assert_eq!(s[h.len()..], SHOAL_INFO.map(String::from));
    let shoal_only = |shapes: Vec<String>| -> Vec<String> {
        shapes.into_iter().filter(|l| !SHOAL_INFO.iter().any(|n| l.contains(&format!(".{n}.")))).collect()
    };
    assert_eq!(
        shoal_only(typed_shapes(&shoal("show info typed"), false)),
        typed_shapes(&haproxy("show info typed"), false)
    );
    let json = json_shapes(&shoal("show info json"));
    let json: Vec<String> =
        json.into_iter().filter(|l| !SHOAL_INFO.iter().any(|n| l.contains(&format!("\"{n}\"")))).collect();
    assert_eq!(json, json_shapes(&haproxy("show info json")));
    assert!(shoal("show info desc").contains("Uptime_sec: "));
    assert!(shoal("show info typed desc").contains(":\"Product name\"\n"));

    // `show stat`: the same header, and per kind of row the same fields, tags and types.
    let first = |t: String| t.lines().next().unwrap_or_default().to_string();
    assert_eq!(first(shoal("show stat")), first(haproxy("show stat")));
    assert_eq!(
        typed_shapes(&shoal("show stat typed"), true),
        typed_shapes(&haproxy("show stat typed"), true)
    );
    assert_eq!(json_shapes(&shoal("show stat json")), json_shapes(&haproxy("show stat json")));
    let desc = shoal("show stat typed desc");
    assert!(
        desc.lines().filter(|l| !l.is_empty()).all(|l| l.ends_with('"')),
        "every typed line carries its description:\n{desc}"
    );
    // Filters: servers only; then one server by number.
    let servers_only = shoal("show stat -1 4 -1");
    assert!(
        servers_only.lines().skip(1).filter(|l| !l.is_empty()).all(|l| l.starts_with("backend,web-")),
        "{servers_only}"
    );
    let one = shoal("show stat backend 4 2");
    assert_eq!(one.lines().count(), 3, "header, one server, the blank line: {one}");
    assert_eq!(
        shoal("show stat http 1 -1").lines().nth(1).map(|l| l.starts_with("http,FRONTEND,")),
        Some(true)
    );

    // `show servers state|conn`, `show backend`: HAProxy's headers and columns.
    let (hs, ss) = (haproxy("show servers state"), shoal("show servers state"));
    assert_eq!(ss.lines().take(2).collect::<Vec<_>>(), hs.lines().take(2).collect::<Vec<_>>());
    let columns = |t: &str| {
        t.lines().skip(2).filter(|l| !l.is_empty()).map(|l| l.split(' ').count()).collect::<Vec<_>>()
    };
    assert_eq!(columns(&ss), columns(&hs));
    let (hc, sc) = (haproxy("show servers conn"), shoal("show servers conn"));
    let head = |t: &str| t.lines().next().unwrap().split(' ').take(13).collect::<Vec<_>>().join(" ");
    assert_eq!(head(&sc), head(&hc));
    assert_eq!(shoal("show backend"), haproxy("show backend").replace("stats\n", "").replace("http\n", ""));

    // The same answers, byte for byte.
    for line in [
        "get weight backend/web-1",
        "get weight backend/nope",
        "get weight nope/web-1",
        "get weight backend",
        "set server backend/web-1 state sleepy",
        "set server backend/web-1 health sideways",
        "set server backend/web-1 weight 300",
        "set server backend/web-1 weight 2x",
        "set server backend/web-1 weight abc",
        "set server backend/web-1 weight -1%",
        "set server backend/web-1 addr",
        "set server nope/web-1 state drain",
        "set weight backend/web-1",
        "show servers state nope",
        "show servers conn nope",
        "show stat nope 1 1",
        "show stat domain nope",
        "add server nope/web-9 127.0.0.1:1",
        "add server backend",
        "add server backend/web-9",
        "add server backend/web-9 127.0.0.1:abc",
        "add server backend/web-9 127.0.0.1:1 bogus",
        "add server backend/web-9 127.0.0.1:1 weight 300",
        "add server backend/web$9 127.0.0.1:1",
        "add server backend/web-1 127.0.0.1:1",
        "del server backend",
        "del server nope/web-1",
        "del server backend/nope",
        "show env SHOAL_TEST_NO_SUCH_VARIABLE",
        "clear counters",
        "set weight backend/web-2 50%;get weight backend/web-2;set server backend/web-2 weight 100%",
    ] {
        assert_eq!(shoal(line), haproxy(line), "{line}");
    }
    let unknown = |t: String| t.lines().next().unwrap_or_default().to_string();
    assert_eq!(unknown(shoal("show foo")), unknown(haproxy("show foo")));
    assert_eq!(unknown(shoal("help")), unknown(haproxy("help")));
}

#[test]
fn hatop_reads_shoal_as_haproxy() {
    let c = Cluster::start(&[]);
    // hatop is a curses program: it gets a terminal from `script`, and input that stays open.
    let screen = std::env::temp_dir().join(format!("shoal-test-hatop-{}.out", free_port()));
    let cmd = format!("stty cols 160 rows 40; hatop -s {}", c.socket.display());
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("sleep 8 | TERM=xterm timeout 5 script -qfc '{cmd}' {}", screen.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh");
    let _ = wait_for(Duration::from_secs(15), || matches!(child.try_wait(), Ok(Some(_))));
    let _ = child.kill();
    let raw = std::fs::read(&screen).expect("hatop ran (Debian's hatop, scripts/install-test-deps.sh)");
    let text = String::from_utf8_lossy(&raw);
    assert!(
        !text.contains("Traceback") && !text.contains("RuntimeError"),
        "hatop parsed everything:\n{text}"
    );
    for shown in ["Shoal", "backend", "web-1", "web-2", "UP", "FRONTEND", "BACKEND"] {
        assert!(text.contains(shown), "hatop shows {shown}");
    }
    let _ = std::fs::remove_file(&screen);
}

#[test]
fn an_operator_adds_a_server_that_takes_traffic_and_deletes_it_in_maintenance() {
    let c = Cluster::start(&[]);
    let socket = c.socket.clone();
    // A web app that is no member: the operator adds it by address.
    let app = addr(free_port());
    let (_static_app, _) =
        shoal("web-9-app", &["webapp", &format!("--listen={app}")], &[("SERVER_NAME", "web-9")]);
    assert_eq!(
        admin(&socket, &format!("add server backend/web-9 {app} weight 2")),
        "New server registered.\n\n"
    );
    assert_eq!(
        admin(&socket, &format!("add server backend/web-9 {app}")),
        "Already exists a server with the same name in backend.\n\n"
    );
    assert_eq!(admin(&socket, "get weight backend/web-9"), "2 (initial 2)\n\n");
    assert!(
        wait_for(Duration::from_secs(15), || tally(c.front, 8).contains_key("web-9")).is_some(),
        "the added server passed its checks and takes traffic: {}",
        admin(&socket, "show servers state")
    );
    assert!(
        admin(&socket, "show stat").lines().any(|l| l.starts_with("backend,web-9,") && l.contains(",L7OK,"))
    );

    // Deleting needs maintenance first, as in HAProxy; members are gossip's, not deletable.
    assert_eq!(
        admin(&socket, "del server backend/web-9"),
        "Only servers in maintenance mode can be deleted.\n"
    );
    assert_eq!(
        admin(&socket, "disable server backend/web-1;del server backend/web-1"),
        "\nThis server cannot be removed at runtime due to other configuration elements pointing to it.\n"
    );
    assert_eq!(admin(&socket, "enable server backend/web-1"), "\n");
    assert_eq!(
        admin(&socket, "set server backend/web-9 state maint;del server backend/web-9"),
        "\nServer deleted.\n"
    );
    assert!(!admin(&socket, "show servers state").contains(" web-9 "));
    assert_eq!(tally(c.front, 8).get("web-9"), None, "a deleted server gets nothing");

    // An address change moves a member's traffic; the interactive prompt answers each command.
    let mut s = UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"prompt\nshow backend\nquit\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert_eq!(out, "\n> # name\nbackend\n\n> ", "prompt, then each answer ends with the prompt");
    let moved = admin(&socket, &format!("set server backend/web-2 addr {} port {}", app.ip(), app.port()));
    assert_eq!(
        moved,
        format!(
            "no need to change the addr, port changed from '{}' to '{}' by 'stats socket command'\n\n",
            c.backends[1].app.port(),
            app.port()
        )
    );
    assert!(
        wait_for(Duration::from_secs(15), || tally(c.front, 8).contains_key("web-9")).is_some(),
        "web-2's requests now reach web-9's app"
    );
    assert_eq!(admin(&socket, "clear counters all"), "\n");
    let web1 = admin(&socket, "show stat backend 4 -1");
    assert!(web1.lines().any(|l| l.starts_with("backend,web-1,0,0,0,0,,0,")), "counters cleared: {web1}");
}
