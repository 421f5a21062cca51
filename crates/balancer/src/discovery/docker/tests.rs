//! The Docker source against hostile JSON, and against a fake engine on a unix socket: the
//! list, `start`/`kill`/`die` events, and a reconnection after the engine drops the stream.

use std::sync::Mutex;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, watch};

use super::*;

const ID_A: &str = "aaaaaaaaaaaa000000000000000000000000000000000000000000000000000a";
const ID_B: &str = "bbbbbbbbbbbb000000000000000000000000000000000000000000000000000b";
const ID_C: &str = "cccccccccccc000000000000000000000000000000000000000000000000000c";

fn source() -> DockerSource {
    DockerSource {
        socket: "/var/run/docker.sock".into(),
        labels: [("shoal.pool".to_string(), "web".to_string())].into(),
        network: None,
    }
}

const TARGET: Target = Target { port: 3000, max_weight: 100 };

fn summary(id: &str, name: &str, ip: &str, extra: Value) -> Value {
    let mut labels = json!({ "shoal.pool": "web" });
    if let (Some(l), Some(e)) = (labels.as_object_mut(), extra.as_object()) {
        l.extend(e.clone());
    }
    json!({
        "Id": id,
        "Names": [format!("/{name}")],
        "State": "running",
        "Labels": labels,
        "NetworkSettings": { "Networks": { "lab": { "IPAddress": ip, "GlobalIPv6Address": "" } } },
    })
}

fn parse_list(list: &Value) -> BTreeMap<String, Found> {
    let list: Vec<Summary> = parse("/containers/json", list.to_string().as_bytes()).unwrap();
    from_list(list, &source(), TARGET, "web")
}

#[test]
fn containers_map_to_servers_by_their_labels_and_network() {
    let list = json!([
        summary(ID_A, "web-1", "172.20.0.2", json!({ "shoal.port": "8080", "shoal.weight": "7" })),
        summary(ID_B, "web-2", "172.20.0.3", json!({ "shoal.weight": "1000" })),
    ]);
    let found = parse_list(&list);
    let a = &found[ID_A];
    assert_eq!(
        (&*a.name, a.addr.to_string(), a.weight, a.draining),
        ("web-1", "172.20.0.2:8080".into(), 7, false)
    );
    let b = &found[ID_B];
    assert_eq!(
        (b.addr.to_string(), b.weight),
        ("172.20.0.3:3000".into(), 100),
        "the pool's port; weight capped"
    );
}

#[test]
fn the_named_network_gives_the_address_else_the_first_one() {
    let mut c = Container {
        id: ID_A.into(),
        name: "/w".into(),
        labels: source().labels.into_iter().collect(),
        running: true,
        networks: BTreeMap::new(),
    };
    let ep = |ip4: &str, ip6: &str| Endpoint { ip4: Some(ip4.into()), ip6: Some(ip6.into()) };
    c.networks.insert("b-net".into(), ep("10.1.0.5", ""));
    c.networks.insert("a-net".into(), ep("", "fd00::5"));
    assert_eq!(c.found(&source(), TARGET).unwrap().addr.to_string(), "[fd00::5]:3000", "first by name");
    let mut on_b = source();
    on_b.network = Some("b-net".into());
    assert_eq!(c.found(&on_b, TARGET).unwrap().addr.to_string(), "10.1.0.5:3000");
    on_b.network = Some("elsewhere".into());
    assert_eq!(c.found(&on_b, TARGET), Err("no address on the network"));
    c.running = false;
    assert_eq!(c.found(&source(), TARGET), Err("not running"));
}

#[test]
fn hostile_containers_are_bounded_escaped_or_left_out() {
    let long = "9".repeat(MAX_LABEL_BYTES + 1);
    let list = json!([
        // A name that is no member name: the short id stands in.
        summary(ID_A, "evil\nname with spaces", "172.20.0.2", json!({ "shoal.port": long })),
        // Not a container id.
        summary("../../etc/passwd", "x", "172.20.0.3", json!({})),
        // Without the labels (an engine that ignored the filter).
        json!({ "Id": ID_B, "Names": ["/other"], "State": "running", "Labels": null,
                "NetworkSettings": { "Networks": { "lab": { "IPAddress": "172.20.0.4" } } } }),
        // No address, null everything.
        json!({ "Id": ID_C, "Names": null, "State": "running", "Labels": { "shoal.pool": "web" },
                "NetworkSettings": null }),
        // Garbage in the fields used.
        summary(&"d".repeat(64), "w", "not-an-ip", json!({ "shoal.weight": "-3" })),
    ]);
    let found = parse_list(&list);
    assert_eq!(found.len(), 1, "{found:?}");
    let a = &found[ID_A];
    assert_eq!(&*a.name, "docker-aaaaaaaaaaaa");
    assert_eq!(a.addr.port(), 3000, "an oversized port label is ignored");
    // Not the JSON expected at all: an error, not a panic.
    for bad in [&b"{\"Id\": 5}"[..], b"[{\"Id\": 5}]", b"\xff\xfe", b"[", b"null"] {
        assert!(parse::<Vec<Summary>>("/containers/json", bad).is_err(), "{bad:?}");
    }
    // More containers than followed: the rest are left out.
    let many: Vec<Value> = (0..MAX_CONTAINERS + 10)
        .map(|i| summary(&format!("{i:064x}"), &format!("w{i}"), "172.20.0.9", json!({})))
        .collect();
    assert_eq!(parse_list(&Value::Array(many)).len(), MAX_CONTAINERS);
}

#[test]
fn event_lines_are_split_across_chunks_and_bounded() {
    let mut lines = LineBuf::default();
    assert_eq!(lines.push(b"{\"a\":1}\n{\"b\"").unwrap(), vec![b"{\"a\":1}".to_vec()]);
    assert_eq!(lines.push(b":2}\r\n\n").unwrap(), vec![b"{\"b\":2}".to_vec()]);
    let big = vec![b'x'; MAX_EVENT_BYTES];
    assert!(lines.push(&big).unwrap().is_empty());
    assert!(matches!(lines.push(b"xx"), Err(DockerError::EventTooLong)));
    assert_eq!(lines.push(b"{}\n").unwrap(), vec![b"{}".to_vec()], "a fresh start after the error");
}

#[test]
fn kill_signals_that_stop_drain_and_the_filters_are_encoded() {
    assert!(stops(Some("15")) && stops(Some("9")) && stops(Some("SIGQUIT")) && stops(None));
    assert!(!stops(Some("1")) && !stops(Some("SIGHUP")) && !stops(Some("28")));
    let f = filters(&source().labels, true);
    assert!(f.chars().all(|c| c.is_ascii_alphanumeric() || "%-._~".contains(c)), "{f}");
    assert!(f.contains("shoal.pool%3Dweb") && f.contains("kill"), "{f}");
}

/// A fake engine: `GET /containers/json` answers `list`, `GET /containers/{id}/json` the
/// matching entry as an inspection, `GET /events` streams what `events` sends until `cut`.
struct Engine {
    list: Mutex<Vec<Value>>,
    events: broadcast::Sender<Option<Value>>,
    streams: std::sync::atomic::AtomicUsize,
}

async fn serve(engine: Arc<Engine>, listener: tokio::net::UnixListener) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else { return };
        let engine = engine.clone();
        let mut events = engine.events.subscribe();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if conn.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_string();
            let path = head.split(' ').nth(1).unwrap_or("").to_string();
            let reply = |body: String| {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            };
            if path.starts_with("/events?") {
                engine.streams.fetch_add(1, Ordering::SeqCst);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").await;
                while let Ok(Some(ev)) = events.recv().await {
                    let line = format!("{ev}\n");
                    let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                    if conn.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                // Cut: the connection closes mid-stream.
            } else if path.starts_with("/containers/json?") {
                let body = Value::Array(engine.list.lock().unwrap().clone()).to_string();
                let _ = conn.write_all(reply(body).as_bytes()).await;
            } else if let Some(id) = path.strip_prefix("/containers/").and_then(|p| p.strip_suffix("/json")) {
                let found = engine.list.lock().unwrap().iter().find(|c| c["Id"] == id).cloned();
                let body = found.map_or(Value::Null, |c| {
                    json!({ "Id": c["Id"], "Name": c["Names"][0], "Config": { "Labels": c["Labels"] },
                            "State": { "Running": true }, "NetworkSettings": c["NetworkSettings"] })
                });
                let _ = conn.write_all(reply(body.to_string()).as_bytes()).await;
            }
        });
    }
}

use std::sync::atomic::Ordering;

/// Waits until what is published satisfies `cond`.
async fn until(rx: &mut watch::Receiver<Vec<Found>>, what: &str, cond: impl Fn(&[Found]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if cond(&rx.borrow_and_update()) {
            return;
        }
        if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
            panic!("{what}: still {:?}", *rx.borrow());
        }
    }
}

fn event(action: &str, id: &str, signal: Option<&str>) -> Option<Value> {
    let mut attributes = json!({ "shoal.pool": "web", "name": "x" });
    if let Some(s) = signal {
        attributes["signal"] = json!(s);
    }
    Some(json!({ "Type": "container", "Action": action, "Actor": { "ID": id, "Attributes": attributes } }))
}

#[tokio::test]
async fn a_fake_engine_is_followed_through_events_and_a_reconnection() {
    let dir = std::env::temp_dir().join(format!("shoal-docker-fake-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("docker.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let (events, _) = broadcast::channel(64);
    let engine = Arc::new(Engine {
        list: Mutex::new(vec![summary(ID_A, "a", "172.20.0.2", json!({ "shoal.port": "8080" }))]),
        events,
        streams: Default::default(),
    });
    let server = tokio::spawn(serve(engine.clone(), listener));
    let (tx, mut rx) = watch::channel(Vec::<Found>::new());
    let out = Publisher::to(move |found| tx.send(found).is_ok());
    let mut src = source();
    src.socket = socket.clone();
    let task = tokio::spawn(run(src, TARGET, Arc::from("web"), out));
    let names = |set: &[Found]| set.iter().map(|f| (f.name.to_string(), f.draining)).collect::<Vec<_>>();
    let is = |want: &'static [(&'static str, bool)]| {
        move |set: &[Found]| names(set) == want.iter().map(|(n, d)| (n.to_string(), *d)).collect::<Vec<_>>()
    };
    until(&mut rx, "the list", is(&[("a", false)])).await;
    let listed = rx.borrow().clone();
    assert_eq!(listed[0].addr.to_string(), "172.20.0.2:8080");

    engine.list.lock().unwrap().push(summary(ID_B, "b", "172.20.0.3", json!({})));
    engine.events.send(event("start", ID_B, None)).unwrap();
    until(&mut rx, "start adds", is(&[("a", false), ("b", false)])).await;
    engine.events.send(event("kill", ID_A, Some("1"))).unwrap();
    engine.events.send(event("kill", ID_A, Some("15"))).unwrap();
    until(&mut rx, "kill drains", is(&[("a", true), ("b", false)])).await;
    engine.events.send(event("die", ID_A, None)).unwrap();
    until(&mut rx, "die removes", is(&[("b", false)])).await;

    // The engine goes away while things change; back, it is listed again and reconciled.
    {
        let mut list = engine.list.lock().unwrap();
        list.clear();
        list.push(summary(ID_C, "c", "172.20.0.4", json!({})));
    }
    engine.events.send(None).unwrap();
    until(&mut rx, "reconnected and reconciled", is(&[("c", false)])).await;
    assert_eq!(engine.streams.load(Ordering::SeqCst), 2, "one reconnection");
    task.abort();
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
