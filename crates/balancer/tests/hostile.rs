//! Hostile gossip members, and hostile clients at the edges: what a member may claim (a name that
//! splits headers or lines, an address that points at metadata services or the balancer itself,
//! a weight that takes the pool) and what a client may hold (two Hosts, a head never finished, an
//! endless admin line). Each test checks what a user sees: the response headers, which server
//! answered, the outputs an operator reads, the pool still serving.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use shoal_agent::Membership;
use shoal_balancer::sticky_token as token;
use shoal_balancer::{Balancer, BalancerConfig, PoolConfig};
use shoal_gossip::MemberStatus::Alive;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A name that would add a header to every answer if written raw.
const SPLITTER: &str = "x\r\nX-Injected: yes";
/// A name that would add lines, fields, cells, markup and metrics if written raw.
const NASTY: &str = "evil 1\n2,\"q\"<b>bold</b>\r\nshoal_fake_total 1";

fn pool() -> PoolConfig {
    let mut p = PoolConfig::new("backend", "backend", 3000);
    p.health.enabled = false;
    p
}

/// A response read off the wire.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
}

fn parse(raw: &str) -> Raw {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no complete head: {raw:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .map(|l| {
            l.split_once(':').map(|(k, v)| (k.to_string(), v.trim().to_string())).expect("a header line")
        })
        .collect();
    Raw { status, headers, body: body.to_string() }
}

/// Which request path a request takes: bodiless GETs the fast path, a POST with a body hyper.
#[derive(Debug, Clone, Copy)]
enum Path {
    Fast,
    General,
}

async fn request(front: SocketAddr, path: Path, cookie: Option<&str>) -> Raw {
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: SERVERID={c}\r\n"));
    let req = match path {
        Path::Fast => format!("GET /echo HTTP/1.1\r\nHost: app.test\r\n{cookie}Connection: close\r\n\r\n"),
        Path::General => format!(
            "POST /echo HTTP/1.1\r\nHost: app.test\r\n{cookie}Content-Length: 5\r\nConnection: close\r\n\r\nhello"
        ),
    };
    parse(&raw_exchange(front, req.as_bytes(), Duration::from_secs(5)).await)
}

fn info_value(b: &Balancer, key: &str) -> String {
    let info = b.command("show info");
    let prefix = format!("{key}: ");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key} in {info}"))
        .to_string()
}

// 1. The sticky cookie.

#[tokio::test]
async fn a_member_name_with_crlf_cannot_split_a_header_and_stickiness_still_works() {
    let mut p = pool();
    p.sticky_cookie = Some("SERVERID".into());
    let h = Harness::new(p).await;
    let (hostile, _t1) = echo_backend("hostile").await;
    let (honest, _t2) = echo_backend("honest").await;
    h.set(vec![member(SPLITTER, hostile, Alive, &[]), member("web-2", honest, Alive, &[])]);
    h.wait_serving(2).await;
    for path in [Path::Fast, Path::General] {
        // Round-robin: the hostile member answers one of the first two.
        let mut answered = None;
        for _ in 0..2 {
            let r = request(h.front, path, None).await;
            assert_eq!(r.status, 200, "{path:?}");
            assert!(r.header("x-injected").is_none(), "{path:?}: a header was injected: {:?}", r.headers);
            let expected = match r.header("x-backend") {
                Some("hostile") => token(SPLITTER),
                _ => token("web-2"),
            };
            assert_eq!(r.all("set-cookie"), [format!("SERVERID={expected}; Path=/")], "{path:?}: the token");
            if r.header("x-backend") == Some("hostile") {
                answered = Some(expected);
            }
        }
        let cookie = answered.unwrap_or_else(|| panic!("{path:?}: the hostile member never answered"));
        assert!(cookie.len() == 16 && cookie.bytes().all(|b| b.is_ascii_hexdigit()), "{cookie}");
        // The cookie keeps the client on its server, on both paths, without a new Set-Cookie.
        for again in [Path::Fast, Path::General, Path::Fast, Path::General] {
            let r = request(h.front, again, Some(&cookie)).await;
            assert_eq!(r.header("x-backend"), Some("hostile"), "{path:?} then {again:?}: stuck");
            assert!(r.header("set-cookie").is_none(), "{again:?}: {:?}", r.headers);
            assert!(!r.body.contains("SERVERID"), "the server never sees the balancer's cookie: {}", r.body);
        }
    }
}

// 2. Escaping wherever member data is written out.

/// A harness with the nasty member and an honest one, both serving.
async fn nasty_harness() -> (Harness, Vec<tokio::task::JoinHandle<()>>) {
    let mut p = pool();
    p.sticky_cookie = Some("SERVERID".into());
    let h = Harness::new(p).await;
    let (a1, t1) = echo_backend("nasty").await;
    let (a2, t2) = echo_backend("honest").await;
    h.set(vec![member(NASTY, a1, Alive, &[("note", "tag\nvalue <i>")]), member("web-2", a2, Alive, &[])]);
    h.wait_serving(2).await;
    (h, vec![t1, t2])
}

#[tokio::test]
async fn show_servers_state_keeps_one_line_of_fixed_fields_per_server() {
    let (h, _t) = nasty_harness().await;
    let out = h.balancer.command("show servers state");
    let lines: Vec<&str> = out.lines().collect();
    let columns = lines[1].trim_start_matches("# ").split(' ').count();
    assert_eq!(lines.len(), 4, "version, header, two servers: {out}");
    for l in &lines[2..] {
        assert_eq!(l.split(' ').count(), columns, "{l}");
    }
    let names: Vec<&str> = lines[2..].iter().map(|l| l.split(' ').nth(3).unwrap()).collect();
    assert!(names.contains(&"evil\\x201\\n2,\"q\"<b>bold</b>\\r\\nshoal_fake_total\\x201"), "{names:?}");
}

#[tokio::test]
async fn the_stats_csv_keeps_one_row_per_server_and_json_carries_the_exact_name() {
    let (h, _t) = nasty_harness().await;
    for csv in [h.balancer.command("show stat"), {
        let url = format!("http://{}/;csv", h.balancer.stats_addr().unwrap());
        get(&client(), &url, &[]).await.2
    }] {
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 5, "header, frontend, two servers, backend: {csv}");
        let row = lines.iter().find(|l| l.starts_with("backend,\"evil")).unwrap_or_else(|| panic!("{csv}"));
        assert!(
            row.starts_with("backend,\"evil 1\\n2,\"\"q\"\"<b>bold</b>\\r\\nshoal_fake_total 1\","),
            "{row}"
        );
        assert!(row.contains(&token(NASTY)), "the cookie column shows the token: {row}");
    }
    // `show stat json` is HAProxy's: an array per row of one object per field.
    let json: serde_json::Value = serde_json::from_str(&h.balancer.command("show stat json")).unwrap();
    let names: Vec<&serde_json::Value> = json
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .filter(|f| f["field"]["name"] == "svname")
        .map(|f| &f["value"]["value"])
        .collect();
    assert!(names.contains(&&serde_json::Value::from(NASTY)), "the exact name, JSON-escaped: {names:?}");
    // Its typed lines stay one line per field whatever the name holds.
    let typed = h.balancer.command("show stat typed");
    assert!(typed.lines().all(|l| l.starts_with(['F', 'B', 'S'])), "{typed}");
    // `/;json` is Shoal's: rows as objects, with the gossip tags.
    let url = format!("http://{}/;json", h.balancer.stats_addr().unwrap());
    let json: serde_json::Value = serde_json::from_str(&get(&client(), &url, &[]).await.2).unwrap();
    let row = json.as_array().unwrap().iter().find(|r| r["svname"] == NASTY).expect("the exact name");
    assert_eq!(row["tags"]["note"], "tag\nvalue <i>");
}

#[tokio::test]
async fn the_stats_page_escapes_member_names_and_tags() {
    let (h, _t) = nasty_harness().await;
    let url = format!("http://{}/", h.balancer.stats_addr().unwrap());
    let (status, _, page) = get(&client(), &url, &[]).await;
    assert_eq!(status, 200);
    assert!(!page.contains("<b>bold") && !page.contains("<i>"), "member markup reached the page");
    assert!(
        page.contains("evil 1\\n2,&quot;q&quot;&lt;b&gt;bold&lt;/b&gt;\\r\\nshoal_fake_total 1"),
        "the name, escaped"
    );
    assert!(page.contains("note=tag\\nvalue &lt;i&gt;"), "the tag, escaped");
}

#[tokio::test]
async fn prometheus_labels_carry_member_names_on_one_line() {
    let (h, _t) = nasty_harness().await;
    let url = format!("http://{}/metrics", h.balancer.stats_addr().unwrap());
    let (status, _, text) = get(&client(), &url, &[]).await;
    assert_eq!(status, 200);
    assert!(!text.lines().any(|l| l.starts_with("shoal_fake")), "a series was injected:\n{text}");
    let requests: Vec<&str> =
        text.lines().filter(|l| l.starts_with("shoal_server_requests_total{")).collect();
    assert_eq!(requests.len(), 2, "{requests:?}");
    // prometheus-client escapes `\` and `"` (it would escape \n too, but not \r: the name's
    // control characters were escaped before).
    let label = r#"server="evil 1\\n2,\"q\"<b>bold</b>\\r\\nshoal_fake_total 1""#;
    assert!(requests.iter().any(|l| l.contains(label)), "{requests:?}");
    for l in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        assert!(
            l.ends_with(|c: char| c.is_ascii_digit() || c == 'f' || c == 'N'),
            "a line cut in two: {l:?}"
        );
    }
}

/// One event's fields, as (name, value) pairs.
type Event = Vec<(String, String)>;

/// A tracing subscriber that keeps every event's fields.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Event>>>);

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_string(), format!("{value:?}")));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Vec::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(fields);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl Capture {
    /// The value of `field` in events whose message is `message`.
    fn values(&self, message: &str, field: &str) -> Vec<String> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter(|e| e.iter().any(|(k, v)| k == "message" && v == message))
            .filter_map(|e| e.iter().find(|(k, _)| k == field).map(|(_, v)| v.clone()))
            .collect()
    }
}

#[tokio::test]
async fn tracing_fields_carry_member_names_escaped() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let h = Harness::new(pool()).await;
    let (a1, _t1) = echo_backend("splitter").await;
    let metadata: SocketAddr = "169.254.169.254:80".parse().unwrap();
    h.set(vec![member(SPLITTER, a1, Alive, &[]), member("x\nrefused", metadata, Alive, &[])]);
    h.wait_serving(1).await;
    wait_until("the refusal is logged", || {
        !capture.values("member refused: not routed to", "member").is_empty()
    })
    .await;
    h.set(vec![]);
    h.wait_serving(0).await;
    wait_until("the removal is logged", || !capture.values("server removed", "server").is_empty()).await;
    assert_eq!(capture.values("server added", "server"), ["x\\r\\nX-Injected: yes"]);
    assert_eq!(capture.values("server removed", "server"), ["x\\r\\nX-Injected: yes"]);
    assert_eq!(capture.values("member refused: not routed to", "member"), ["x\\nrefused"]);
    let events = capture.0.lock().unwrap();
    for (k, v) in events.iter().flatten() {
        assert!(!v.contains(['\r', '\n']), "field {k} carries a raw line break: {v:?}");
    }
}

// 3. Admission: which addresses, how much weight.

#[tokio::test]
async fn members_pointing_at_metadata_or_the_balancer_itself_are_refused_logged_once_and_counted() {
    let mut cfg = BalancerConfig::simple(
        vec!["127.0.0.1:0".parse().unwrap()],
        pool(),
        Some("127.0.0.1:0".parse().unwrap()),
    );
    cfg.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.access_log = shoal_balancer::AccessLogFormat::Off;
    let h = Harness::with_config(cfg).await;
    let b = &h.balancer;
    let (app, _t) = echo_backend("honest").await;
    let hostile = vec![
        member("metadata", "169.254.169.254:80".parse().unwrap(), Alive, &[]),
        member("mapped-metadata", "[::ffff:169.254.169.254]:80".parse().unwrap(), Alive, &[]),
        member("loop-front", h.front, Alive, &[]),
        member("loop-stats", b.stats_addr().unwrap(), Alive, &[]),
        member("loop-admin", b.admin_addr().unwrap(), Alive, &[]),
        member("unspecified", "0.0.0.0:80".parse().unwrap(), Alive, &[]),
        member("multicast", "224.0.0.251:80".parse().unwrap(), Alive, &[]),
    ];
    let mut members = hostile.clone();
    members.push(member("web-1", app, Alive, &[]));
    h.set(members.clone());
    h.wait_names(&["web-1"]).await;
    wait_until("seven refusals", || info_value(b, "MembersRefused") == "7").await;
    let refused: Vec<String> =
        b.pools()["backend"].refused_members().iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(refused.len(), 7, "{refused:?}");
    let c = client();
    for _ in 0..6 {
        let (status, headers, _) = get(&c, &h.url("/echo"), &[]).await;
        assert_eq!((status.as_u16(), headers.get("x-backend").unwrap().to_str().unwrap()), (200, "honest"));
    }
    // Syncs go on (another member joins): the same refusals are not counted again.
    let (app2, _t2) = echo_backend("honest-2").await;
    members.push(member("web-2", app2, Alive, &[]));
    h.set(members);
    h.wait_names(&["web-1", "web-2"]).await;
    assert_eq!(info_value(b, "MembersRefused"), "7");
    let url = format!("http://{}/metrics", b.stats_addr().unwrap());
    let metrics = get(&c, &url, &[]).await.2;
    assert!(metrics.contains("shoal_members_refused_total{pool=\"backend\"} 7"), "{metrics}");
}

fn membership_with_local(local: SocketAddr, members: Vec<shoal_gossip::Member>) -> Arc<Membership> {
    let local = member("ha", local, Alive, &[("role", "balancer")]);
    Arc::new(Membership { local, members })
}

#[tokio::test]
async fn loopback_backends_need_a_balancer_on_loopback_or_an_explicit_network() {
    let h = Harness::new(pool()).await;
    let (app, _t) = echo_backend("local").await;
    let web = vec![member("web-1", app, Alive, &[])];
    // The balancer gossips on a routable address: a member claiming loopback is refused.
    h.members.send_replace(membership_with_local("10.1.2.3:7946".parse().unwrap(), web.clone()));
    wait_until("the refusal", || info_value(&h.balancer, "MembersRefused") == "1").await;
    assert!(h.serving().is_empty());
    assert_eq!(get(&client(), &h.url("/echo"), &[]).await.0, 503);
    // On loopback itself (one host, tests): loopback is accepted.
    h.members.send_replace(membership_with_local("127.0.0.1:7946".parse().unwrap(), web.clone()));
    h.wait_names(&["web-1"]).await;

    // Listed networks decide, whatever the balancer's address.
    let mut listed = pool();
    listed.accept_networks = Some(vec!["127.0.0.0/8".into()]);
    let h = Harness::new(listed).await;
    h.members.send_replace(membership_with_local("10.1.2.3:7946".parse().unwrap(), web.clone()));
    h.wait_names(&["web-1"]).await;
    let mut elsewhere = pool();
    elsewhere.accept_networks = Some(vec!["10.0.0.0/8".into()]);
    let h = Harness::new(elsewhere).await;
    h.set(web);
    wait_until("the refusal", || info_value(&h.balancer, "MembersRefused") == "1").await;
    assert!(h.serving().is_empty());
}

#[tokio::test]
async fn a_bad_network_is_refused_with_an_error_naming_its_pool() {
    let text = |networks: &str| {
        format!(
            "[[frontends]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\ndefault_pool = \"app\"\n\
             [[pools]]\nname = \"app\"\naccept_networks = {networks}\n"
        )
    };
    assert!(BalancerConfig::from_toml(&text("[\"10.0.0.0/8\", \"fd00::/8\", \"192.0.2.7\"]")).is_ok());
    for (bad, why) in [
        ("[\"10.0.0.1/8\"]", "did you mean 10.0.0.0/8"),
        ("[\"10.0.0.0/33\"]", "prefix"),
        ("[\"intranet\"]", "not an IP network"),
        ("[]", "empty"),
    ] {
        let e = BalancerConfig::from_toml(&text(bad)).unwrap_err().to_string();
        assert!(e.contains("pool \"app\"") && e.contains(why), "{bad}: {e}");
    }
    let mut p = pool();
    p.accept_networks = Some(vec!["10.0.0.1/8".into()]);
    let cfg = BalancerConfig::simple(vec!["127.0.0.1:0".parse().unwrap()], p, None);
    let (_tx, rx) = tokio::sync::watch::channel(membership(vec![]));
    let e = Balancer::start(cfg, rx).await.unwrap_err().to_string();
    assert!(e.contains("pool \"backend\""), "{e}");
}

/// Which backends answered `n` requests.
async fn answers(h: &Harness, n: usize) -> std::collections::BTreeMap<String, usize> {
    let c = client();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        let (_, headers, _) = get(&c, &h.url("/echo"), &[]).await;
        *seen.entry(headers.get("x-backend").unwrap().to_str().unwrap().to_string()).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn a_member_claiming_a_huge_weight_takes_at_most_its_share_of_the_pool() {
    let h = Harness::new(pool()).await;
    let (greedy, _t1) = echo_backend("greedy").await;
    let (a, _t2) = echo_backend("a").await;
    let (b, _t3) = echo_backend("b").await;
    h.set(vec![
        member("greedy", greedy, Alive, &[("weight", "4000000000")]),
        member("web-a", a, Alive, &[]),
        member("web-b", b, Alive, &[]),
    ]);
    h.wait_serving(3).await;
    let pool = &h.balancer.pools()["backend"];
    assert_eq!(
        pool.server("greedy").unwrap().weight.load(std::sync::atomic::Ordering::Relaxed),
        256,
        "max_weight"
    );
    let seen = answers(&h, 40).await;
    assert_eq!(seen["greedy"], 20, "half of the pool, not 256/258 of it: {seen:?}");
    assert_eq!((seen["a"], seen["b"]), (10, 10), "{seen:?}");
}

#[tokio::test]
async fn an_operators_weight_is_not_capped_by_the_share() {
    let h = Harness::new(pool()).await;
    let (a, _t1) = echo_backend("a").await;
    let (b, _t2) = echo_backend("b").await;
    h.set(vec![member("web-a", a, Alive, &[]), member("web-b", b, Alive, &[])]);
    h.wait_serving(2).await;
    assert_eq!(h.balancer.command("set server backend/web-a weight 3"), "");
    let seen = answers(&h, 40).await;
    assert_eq!(seen["a"], 30, "3:1 as the operator said: {seen:?}");
}

// 4. HTTP edges.

#[tokio::test]
async fn two_host_headers_get_400_on_both_paths() {
    let h = Harness::new(pool()).await;
    let (app, _t) = echo_backend("app").await;
    h.set(vec![member("web-1", app, Alive, &[])]);
    h.wait_serving(1).await;
    let get_twice = "GET /echo HTTP/1.1\r\nHost: app.test\r\nHost: evil.test\r\nConnection: close\r\n\r\n";
    let post_twice = "POST /echo HTTP/1.1\r\nHost: app.test\r\nHost: evil.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    for req in [get_twice, post_twice] {
        let r = parse(&raw_exchange(h.front, req.as_bytes(), Duration::from_secs(5)).await);
        assert_eq!(r.status, 400, "{req:?}");
        assert!(r.body.contains("more than one Host"), "{}", r.body);
        assert!(r.header("x-backend").is_none(), "never forwarded");
    }
    let fine = "POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    assert_eq!(parse(&raw_exchange(h.front, fine.as_bytes(), Duration::from_secs(5)).await).status, 200);
}

#[tokio::test]
async fn an_absolute_target_naming_another_host_than_host_gets_400() {
    let h = Harness::new(pool()).await;
    let (app, _t) = echo_backend("app").await;
    h.set(vec![member("web-1", app, Alive, &[])]);
    h.wait_serving(1).await;
    let ask = |target: &str, host: &str, body: bool| {
        let extra = if body { "Content-Length: 5\r\n" } else { "" };
        let tail = if body { "hello" } else { "" };
        format!(
            "{} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n{tail}",
            if body { "POST" } else { "GET" }
        )
    };
    for body in [false, true] {
        let r = parse(
            &raw_exchange(
                h.front,
                ask("http://evil.test/echo", "app.test", body).as_bytes(),
                Duration::from_secs(5),
            )
            .await,
        );
        assert_eq!(r.status, 400, "body {body}");
        assert!(r.body.contains("authority and the Host header differ"), "{}", r.body);
        for (target, host) in [("http://app.test/echo", "app.test"), ("http://APP.test:80/echo", "app.test")]
        {
            let r = parse(
                &raw_exchange(h.front, ask(target, host, body).as_bytes(), Duration::from_secs(5)).await,
            );
            assert_eq!((r.status, r.header("x-backend")), (200, Some("app")), "{target} with Host {host}");
            assert!(r.body.contains("path=/echo\n"), "origin form upstream: {}", r.body);
        }
    }
}

fn stats_config(timeout: Duration) -> BalancerConfig {
    let mut cfg = BalancerConfig::simple(
        vec!["127.0.0.1:0".parse().unwrap()],
        pool(),
        Some("127.0.0.1:0".parse().unwrap()),
    );
    cfg.timeouts.request_headers = timeout;
    cfg.timeouts.keepalive = timeout;
    cfg.access_log = shoal_balancer::AccessLogFormat::Off;
    cfg
}

#[tokio::test]
async fn the_stats_listener_closes_a_partial_head_and_an_idle_connection_within_the_timeouts() {
    let h = Harness::with_config(stats_config(Duration::from_millis(300))).await;
    let stats = h.balancer.stats_addr().unwrap();
    let started = Instant::now();
    let mut partial = TcpStream::connect(stats).await.unwrap();
    partial.write_all(b"GET /;csv HTTP/1.1\r\nHost: stats\r\nX-Slow: ").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), partial.read_to_end(&mut out))
        .await
        .expect("closed")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&out));
    // Idle after an answer: closed after the keep-alive timeout, without a word.
    let mut idle = TcpStream::connect(stats).await.unwrap();
    idle.write_all(b"GET /;up HTTP/1.1\r\nHost: stats\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    while !String::from_utf8_lossy(&buf).ends_with("OK\n") {
        let mut chunk = [0u8; 1024];
        let n = idle.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the answer");
        buf.extend_from_slice(&chunk[..n]);
    }
    let idle_since = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await.expect("closed").unwrap();
    assert!(rest.is_empty() && idle_since.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_client_idling_after_a_general_path_answer_is_closed_after_the_keepalive_timeout() {
    let h = Harness::with_config(stats_config(Duration::from_millis(300))).await;
    let mut s = TcpStream::connect(h.front).await.unwrap();
    // A body: the general path, which answers at once (no server: 503) and keeps the connection.
    s.write_all(b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\n\r\nhi").await.unwrap();
    let mut buf = Vec::new();
    while !String::from_utf8_lossy(&buf).ends_with("No server available\n") {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    let idle_since = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await.expect("closed").unwrap();
    assert!(rest.is_empty() && idle_since.elapsed() < Duration::from_secs(3));
}

/// Whether a GET of `/;up` sent on `s` is answered within `wait`.
async fn answered(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 256];
    matches!(tokio::time::timeout(wait, s.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
}

#[tokio::test]
async fn the_stats_listener_caps_its_connections() {
    let mut cfg = stats_config(Duration::from_secs(20));
    cfg.limits.max_stats_connections = 2;
    let h = Harness::with_config(cfg).await;
    let stats = h.balancer.stats_addr().unwrap();
    let holders = [TcpStream::connect(stats).await.unwrap(), TcpStream::connect(stats).await.unwrap()];
    let mut third = TcpStream::connect(stats).await.unwrap();
    third.write_all(b"GET /;up HTTP/1.1\r\nHost: stats\r\n\r\n").await.unwrap();
    assert!(!answered(&mut third, Duration::from_millis(300)).await, "a third connection is over the cap");
    drop(holders);
    assert!(answered(&mut third, Duration::from_secs(5)).await, "served once a slot is free");
}

fn admin_config(max: usize) -> BalancerConfig {
    let mut cfg = stats_config(Duration::from_secs(10));
    cfg.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.limits.max_admin_connections = max;
    cfg
}

#[tokio::test]
async fn an_overlong_admin_line_is_refused_and_the_connection_closed() {
    let h = Harness::with_config(admin_config(4)).await;
    let admin = h.balancer.admin_addr().unwrap();
    let mut s = TcpStream::connect(admin).await.unwrap();
    let line = vec![b'a'; shoal_balancer::ADMIN_MAX_LINE + 1];
    s.write_all(&line).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await.expect("closed").unwrap();
    assert!(out.starts_with("Command line too long"), "{out}");
    // The runtime API goes on serving.
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(b"show info\n").await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await.unwrap().unwrap();
    assert!(out.contains("Name: Shoal"), "{out}");
}

#[tokio::test]
async fn the_admin_listener_caps_its_connections() {
    let h = Harness::with_config(admin_config(1)).await;
    let admin = h.balancer.admin_addr().unwrap();
    let holder = TcpStream::connect(admin).await.unwrap();
    let mut second = TcpStream::connect(admin).await.unwrap();
    second.write_all(b"show info\n").await.unwrap();
    assert!(!answered(&mut second, Duration::from_millis(300)).await, "a second session is over the cap");
    drop(holder);
    assert!(answered(&mut second, Duration::from_secs(5)).await, "served once the first is gone");
}

#[tokio::test]
async fn max_connections_follows_the_descriptor_limit() {
    // In a process of its own: the limit is lowered for good there.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "nofile_child", "--nocapture"])
        .output()
        .expect("the test binary runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
}

/// Run by [`max_connections_follows_the_descriptor_limit`] in a child process.
#[tokio::test]
#[ignore = "run in a child process by max_connections_follows_the_descriptor_limit"]
async fn nofile_child() {
    use nix::sys::resource::{Resource, setrlimit};
    setrlimit(Resource::RLIMIT_NOFILE, 600, 600).expect("lower RLIMIT_NOFILE");
    let h = Harness::new(pool()).await;
    assert_eq!(h.balancer.max_connections(), 172, "(600 - 256) / 2, not the configured 65 536");
    assert_eq!(info_value(&h.balancer, "Maxconn"), "172");
}
