//! The HTTP/1.1 relay as a client and a server see it on the wire: response framings, interim
//! answers, pipelining, pooled server connections, header rewriting, and the hand-over to the
//! general path when a request carries a body.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use shoal_balancer::PoolConfig;
use shoal_gossip::MemberStatus::Alive;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a scripted server saw: each request head, with the number of the connection it came on.
#[derive(Default)]
struct Seen {
    heads: Mutex<Vec<(usize, String)>>,
}

impl Seen {
    fn heads(&self) -> Vec<(usize, String)> {
        self.heads.lock().unwrap().clone()
    }
}

/// A server that reads request heads and answers each with the bytes `answer` gives for its
/// target (closing the connection after it when the answer says `close`).
async fn scripted_server(answer: fn(&str) -> (&'static [u8], bool)) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let log = seen.clone();
    tokio::spawn(async move {
        for conn in 0.. {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let target = head.split(' ').nth(1).unwrap_or("").to_string();
                    log.heads.lock().unwrap().push((conn, head));
                    let (reply, close) = answer(target.split('?').next().unwrap_or(""));
                    if s.write_all(reply).await.is_err() || close {
                        let _ = s.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn script(target: &str) -> (&'static [u8], bool) {
    match target {
        "/length" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Case: Kept\r\n\r\nhello", false),
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\n\r\n\
              5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
        ),
        "/hints" => (
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/no-content" => (b"HTTP/1.1 204 No Content\r\n\r\n", false),
        "/bad-chunk" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false),
        "/until-close" => (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nto the end", true),
        "/extra" => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", false),
        "/then-close" => (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye", true),
        _ => (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false),
    }
}

async fn harness_for(server: SocketAddr) -> Harness {
    let mut p = PoolConfig::new("backend", "backend", 3000);
    p.health.enabled = false;
    let h = Harness::new(p).await;
    h.set(vec![member("scripted", server, Alive, &[])]);
    h.wait_serving(1).await;
    h
}

/// Reads from `s` until `buf` holds `want` (a response the test knows the end of).
async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, want: &str) -> String {
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(i) = String::from_utf8_lossy(buf).find(want) {
                let end = i + want.len();
                let text = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end);
                return text;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before {want:?}; got {:?}", String::from_utf8_lossy(buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {want:?} within 5 s; got {:?}", String::from_utf8_lossy(buf)))
}

async fn ask(s: &mut TcpStream, buf: &mut Vec<u8>, target: &str, ends_with: &str) -> String {
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes()).await.unwrap();
    read_until(s, buf, ends_with).await
}

#[tokio::test]
async fn every_response_framing_is_relayed_on_one_kept_alive_connection() {
    let (server, seen) = scripted_server(script).await;
    let h = harness_for(server).await;
    let mut s = TcpStream::connect(h.front).await.unwrap();
    let mut buf = Vec::new();

    let length = ask(&mut s, &mut buf, "/length", "hello").await;
    assert!(length.starts_with("HTTP/1.1 200 OK\r\n"), "{length}");
    assert!(length.contains("X-Case: Kept\r\n"), "header names keep their case: {length}");

    let chunked = ask(&mut s, &mut buf, "/chunked", "X-Trailer: t\r\n\r\n").await;
    assert!(chunked.contains("transfer-encoding: chunked\r\n"), "{chunked}");
    assert!(!chunked.to_ascii_lowercase().contains("keep-alive"), "hop-by-hop header dropped: {chunked}");
    assert!(chunked.ends_with("5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"), "{chunked}");

    let hints = ask(&mut s, &mut buf, "/hints", "\r\n\r\nok").await;
    assert!(
        hints.starts_with("HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"),
        "{hints}"
    );
    assert!(hints.contains("HTTP/1.1 200 OK\r\n"), "{hints}");

    let empty = ask(&mut s, &mut buf, "/no-content", "\r\n\r\n").await;
    assert!(empty.starts_with("HTTP/1.1 204 No Content\r\n"), "{empty}");

    // Nothing left over: each answer ended where its framing said.
    let missing = ask(&mut s, &mut buf, "/nothing-here", "\r\n\r\n").await;
    assert!(missing.starts_with("HTTP/1.1 404 Not Found\r\n"), "{missing}");
    assert!(buf.is_empty(), "stray bytes: {:?}", String::from_utf8_lossy(&buf));

    let conns: Vec<usize> = seen.heads().iter().map(|(c, _)| *c).collect();
    assert_eq!(conns, vec![0; 5], "the server connection was pooled and reused for every request");

    // Framing broken before anything reached the client: a clean 502, and that connection is done.
    let broken = ask(&mut s, &mut buf, "/bad-chunk", "invalid response from the server\n").await;
    assert!(broken.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{broken}");
    let s = h.balancer.pools()["backend"].server("scripted").unwrap();
    assert_eq!(s.stats.response_errors.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_body_that_runs_to_the_end_of_the_connection_closes_the_clients_too() {
    let (server, seen) = scripted_server(script).await;
    let h = harness_for(server).await;
    let mut s = TcpStream::connect(h.front).await.unwrap();
    s.write_all(b"GET /until-close HTTP/1.1\r\nHost: app.test\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nto the end"), "{text}");

    // A server that closes after its answer: the next request opens a fresh connection.
    let mut s = TcpStream::connect(h.front).await.unwrap();
    let mut buf = Vec::new();
    ask(&mut s, &mut buf, "/then-close", "bye").await;
    let again = ask(&mut s, &mut buf, "/length", "hello").await;
    assert!(again.starts_with("HTTP/1.1 200 OK"), "{again}");
    // A server that sends more than its length said: the client gets the answer and keeps its
    // connection; that server connection is not used again.
    let extra = ask(&mut s, &mut buf, "/extra", "\r\n\r\nok").await;
    assert!(extra.starts_with("HTTP/1.1 200 OK"), "{extra}");
    let after = ask(&mut s, &mut buf, "/length", "hello").await;
    assert!(after.starts_with("HTTP/1.1 200 OK"), "{after}");
    assert!(!after.contains("EXTRA") && buf.is_empty(), "{after}");
    let conns: Vec<usize> = seen.heads().iter().map(|(c, _)| *c).collect();
    assert_eq!(conns, vec![0, 1, 2, 2, 3], "no request went to a connection the server had closed");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let h = echo_harness().await;
    let mut s = TcpStream::connect(h.front).await.unwrap();
    s.write_all(
        b"GET /echo?n=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /echo?n=2 HTTP/1.1\r\nHost: x\r\n\r\n\
          HEAD /echo?n=3 HTTP/1.1\r\nHost: x\r\n\r\nGET /echo?n=4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out);
    let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("no {needle:?} in {text}"));
    assert!(at("path=/echo?n=1") < at("path=/echo?n=2"));
    assert!(at("path=/echo?n=2") < at("path=/echo?n=4"));
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 4, "{text}");
    assert!(!text.contains("path=/echo?n=3"), "a HEAD answer has no body: {text}");
}

#[tokio::test]
async fn a_request_with_a_body_hands_the_connection_to_the_general_path() {
    let h = echo_harness().await;
    let mut s = TcpStream::connect(h.front).await.unwrap();
    let mut buf = Vec::new();
    let first = ask(&mut s, &mut buf, "/echo?before", "body-bytes=0\n").await;
    assert!(first.contains("path=/echo?before"), "{first}");
    s.write_all(b"POST /echo?with-body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").await.unwrap();
    let posted = read_until(&mut s, &mut buf, "body-bytes=5\n").await;
    assert!(posted.contains("path=/echo?with-body"), "{posted}");
    let after = ask(&mut s, &mut buf, "/echo?after", "body-bytes=0\n").await;
    assert!(after.contains("path=/echo?after"), "the same connection goes on being served: {after}");
}

#[tokio::test]
async fn the_upstream_head_is_the_clients_minus_hop_by_hop_plus_forwarding() {
    let (server, seen) = scripted_server(script).await;
    let mut p = PoolConfig::new("backend", "backend", 3000);
    p.health.enabled = false;
    p.sticky_cookie = Some("SERVERID".into());
    let h = Harness::new(p).await;
    h.set(vec![member("scripted", server, Alive, &[])]);
    h.wait_serving(1).await;
    let mut s = TcpStream::connect(h.front).await.unwrap();
    let token = shoal_balancer::sticky_token("scripted");
    s.write_all(
        format!(
            "GET /length?q=1 HTTP/1.1\r\nHost: app.test\r\nX-Request-Id: 7\r\nConnection: keep-alive\r\n\
             Keep-Alive: timeout=9\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: gopher\r\n\
             Cookie: a=1; SERVERID={token}; b=2\r\nTE: trailers\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let answer = read_until(&mut s, &mut buf, "hello").await;
    assert!(!answer.contains("set-cookie"), "the client is already on its server: {answer}");
    let (_, head) = seen.heads().pop().unwrap();
    let port = h.front.port();
    assert_eq!(
        head,
        format!(
            "GET /length?q=1 HTTP/1.1\r\nHost: app.test\r\nX-Request-Id: 7\r\ncookie: a=1; b=2\r\n\
             x-forwarded-for: 203.0.113.9, 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-port: {port}\r\n\r\n"
        )
    );
}

async fn echo_harness() -> Harness {
    let mut p = PoolConfig::new("backend", "backend", 3000);
    p.health.enabled = false;
    let h = Harness::new(p).await;
    let (a, t) = echo_backend("echo").await;
    std::mem::forget(t);
    h.set(vec![member("echo", a, Alive, &[])]);
    h.wait_serving(1).await;
    h
}

#[tokio::test]
async fn a_connection_that_never_speaks_is_closed_without_a_word() {
    let mut p = PoolConfig::new("backend", "backend", 3000);
    p.health.enabled = false;
    let mut cfg = shoal_balancer::BalancerConfig::simple(
        vec!["127.0.0.1:0".parse().unwrap()],
        p,
        Some("127.0.0.1:0".parse().unwrap()),
    );
    cfg.timeouts.request_headers = Duration::from_millis(300);
    cfg.timeouts.keepalive = Duration::from_millis(300);
    let h = Harness::with_config(cfg).await;
    let (server, _) = scripted_server(script).await;
    h.set(vec![member("scripted", server, Alive, &[])]);
    h.wait_serving(1).await;
    // Silent from the start, and silent after a request: both end with no bytes (no 408).
    let mut silent = TcpStream::connect(h.front).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), silent.read_to_end(&mut out)).await.unwrap().unwrap();
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    let mut s = TcpStream::connect(h.front).await.unwrap();
    let mut buf = Vec::new();
    ask(&mut s, &mut buf, "/length", "hello").await;
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await.unwrap().unwrap();
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
}
