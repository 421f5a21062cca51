//! The HTTP/1.1 relay as a client and a server see it on the wire: response framings, interim
//! answers, pipelining, pooled server connections, header rewriting, request bodies (by length
//! and chunked, buffered and streamed, broken and too large) and a server that answers before
//! it has the whole body.

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
async fn a_request_with_a_body_keeps_the_connection_going() {
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

/// A harness in front of a recording backend that answers `ok`, with `max_body` bytes allowed.
async fn recording_harness(max_body: u64) -> (Harness, Arc<Mutex<Vec<Received>>>) {
    let mut p = PoolConfig::new("backend", "backend", 3000);
    p.health.enabled = false;
    let mut cfg = shoal_balancer::BalancerConfig::simple(vec!["127.0.0.1:0".parse().unwrap()], p, None);
    cfg.limits.max_body_bytes = max_body;
    let h = Harness::with_config(cfg).await;
    let (addr, seen) = recording_backend(|r| {
        format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Got: {}\r\n\r\nok", r.body.len()).into_bytes()
    })
    .await;
    h.set(vec![member("recorder", addr, Alive, &[])]);
    h.wait_serving(1).await;
    (h, seen)
}

fn chunked(body: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for p in body.chunks(piece) {
        out.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test]
async fn bodies_by_length_and_chunked_small_and_large_arrive_whole_on_one_connection() {
    let (h, seen) = recording_harness(64 * 1024 * 1024).await;
    let mut s = TcpStream::connect(h.front).await.unwrap();
    let mut buf = Vec::new();
    let body = |n: usize| (0..n).map(|i| (i % 253) as u8).collect::<Vec<u8>>();
    // Small and large by length, small and large chunked; the large ones are streamed.
    for (n, is_chunked) in [(1024, false), (300 * 1024, false), (3000, true), (300 * 1024, true)] {
        let b = body(n);
        let mut req = b"POST /up HTTP/1.1\r\nHost: app.test\r\n".to_vec();
        if is_chunked {
            req.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            req.extend_from_slice(&chunked(&b, 8192));
        } else {
            req.extend_from_slice(format!("Content-Length: {n}\r\n\r\n").as_bytes());
            req.extend_from_slice(&b);
        }
        s.write_all(&req).await.unwrap();
        let (status, head, _) = read_response(&mut s, &mut buf, false).await;
        assert_eq!(status, 200, "{head}");
        assert!(head.contains(&format!("X-Got: {n}")), "{n} bytes arrive: {head}");
        let got = seen.lock().unwrap().pop().unwrap();
        assert_eq!(got.body, b, "{n} bytes, chunked {is_chunked}: the same bytes");
        assert_eq!(got.field("transfer-encoding").is_some(), is_chunked, "{}", got.raw_head);
    }
    // Pipelined: a body and the next request in one write.
    let mut two = b"PUT /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello".to_vec();
    two.extend_from_slice(b"GET /b HTTP/1.1\r\nHost: app.test\r\n\r\n");
    s.write_all(&two).await.unwrap();
    assert_eq!(read_response(&mut s, &mut buf, false).await.0, 200);
    assert_eq!(read_response(&mut s, &mut buf, false).await.0, 200);
    let got = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(
        got.iter().map(|r| (r.target.as_str(), r.body.len())).collect::<Vec<_>>(),
        [("/a", 5), ("/b", 0)]
    );
}

#[tokio::test]
async fn broken_chunks_get_400_and_too_much_413_and_the_server_never_sees_them_whole() {
    let (h, seen) = recording_harness(100 * 1024).await;
    for (req, want) in [
        (
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            "400",
        ),
        (
            [
                &b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                &chunked(&vec![b'x'; 300 * 1024], 8192),
            ]
            .concat(),
            "413",
        ),
    ] {
        let (mut r, mut w) = TcpStream::connect(h.front).await.unwrap().into_split();
        let writer = tokio::spawn(async move { w.write_all(&req).await });
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut out)).await.expect("closed");
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(text.starts_with(&format!("HTTP/1.1 {want} ")), "{text}");
        assert!(text.contains("connection: close"), "{text}");
        writer.abort();
    }
    assert!(seen.lock().unwrap().is_empty(), "no server got a whole body: {:?}", seen.lock().unwrap().len());
}

#[tokio::test]
async fn a_server_answering_before_the_body_is_sent_is_relayed_and_the_rest_is_not_waited_for() {
    // The server reads the head only and refuses at once, as nginx does with a body it will not take.
    let (server, seen) = scripted_server(|_| {
        (b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope", true)
    })
    .await;
    let h = harness_for(server).await;
    let s = TcpStream::connect(h.front).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let body = vec![b'x'; 8 * 1024 * 1024];
    let writer = tokio::spawn(async move {
        let _ = w.write_all(b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 8388608\r\n\r\n").await;
        let _ = w.write_all(&body).await;
    });
    let mut buf = Vec::new();
    let (status, head, answer) = read_response(&mut r, &mut buf, false).await;
    assert_eq!((status, answer.as_slice()), (413, &b"nope"[..]), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection is closed, not left waiting for 8 MiB");
    writer.abort();
    assert_eq!(seen.heads().len(), 1);
}

/// A balancer with the given keep-alive timeout in front of the scripted server.
async fn keepalive_harness(keepalive: Duration) -> Harness {
    scripted_harness(|cfg| cfg.timeouts.keepalive = keepalive).await
}

/// A balancer configured by `edit` in front of the scripted server.
async fn scripted_harness(edit: impl FnOnce(&mut shoal_balancer::BalancerConfig)) -> Harness {
    let mut p = PoolConfig::new("backend", "backend", 3000);
    p.health.enabled = false;
    let mut cfg = shoal_balancer::BalancerConfig::simple(vec!["127.0.0.1:0".parse().unwrap()], p, None);
    edit(&mut cfg);
    let h = Harness::with_config(cfg).await;
    let (server, _) = scripted_server(script).await;
    h.set(vec![member("scripted", server, Alive, &[])]);
    h.wait_serving(1).await;
    h
}

#[tokio::test]
async fn an_idle_connection_parks_comes_back_for_its_next_request_and_closes_at_its_deadline() {
    let keepalive = Duration::from_secs(3);
    let h = keepalive_harness(keepalive).await;
    let mut s = TcpStream::connect(h.front).await.unwrap();
    let mut buf = Vec::new();
    ask(&mut s, &mut buf, "/length", "hello").await;
    wait_until("the idle connection to park", || h.balancer.parked_connections() == 1).await;
    assert_eq!(h.balancer.open_connections(), 1, "a parked connection is still an open one");
    // Back from the lot: the next request on the same connection is answered as usual.
    let again = ask(&mut s, &mut buf, "/chunked", "0\r\nX-Trailer: t\r\n\r\n").await;
    assert!(again.starts_with("HTTP/1.1 200 OK\r\n"), "{again}");
    let answered = std::time::Instant::now();
    wait_until("the connection to park again", || h.balancer.parked_connections() == 1).await;
    // Parked, it still closes at its keep-alive deadline, counted from its last answer.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(
        answered.elapsed() >= keepalive - Duration::from_millis(100),
        "closed after {:?}",
        answered.elapsed()
    );
    wait_until("the lot to empty", || h.balancer.parked_connections() == 0).await;
    wait_until("no open connection", || h.balancer.open_connections() == 0).await;
}

#[tokio::test]
async fn parked_connections_close_on_hang_up_and_on_shutdown() {
    let h = keepalive_harness(Duration::from_secs(60)).await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(h.front).await.unwrap();
        ask(&mut s, &mut Vec::new(), "/length", "hello").await;
        conns.push(s);
    }
    wait_until("three parked", || h.balancer.parked_connections() == 3).await;
    // A client that hangs up frees its place without a request.
    drop(conns.pop());
    wait_until("the hung-up one to go", || h.balancer.open_connections() == 2).await;
    assert_eq!(h.balancer.parked_connections(), 2);
    // Shutdown closes the parked ones at once: it does not wait out the drain timeout.
    let started = std::time::Instant::now();
    h.balancer.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
    for mut s in conns {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert!(rest.is_empty());
    }
    assert_eq!(h.balancer.open_connections(), 0);
}

#[tokio::test]
async fn parked_connections_keep_their_place_under_the_connection_cap() {
    // An attacker's idle connections cost little once parked, but they still count: the cap
    // bounds how many the lot holds.
    let h = scripted_harness(|cfg| cfg.limits.max_connections = 2).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(h.front).await.unwrap();
        ask(&mut s, &mut Vec::new(), "/length", "hello").await;
        held.push(s);
    }
    wait_until("both parked", || h.balancer.parked_connections() == 2).await;
    let mut third = TcpStream::connect(h.front).await.unwrap();
    third.write_all(b"GET /length HTTP/1.1\r\nHost: app.test\r\n\r\n").await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut [0u8; 64])).await;
    assert!(early.is_err(), "a third connection was served past a cap of 2");
    assert_eq!(h.balancer.open_connections(), 2);
    // One parked client leaves: its place goes to the waiting one.
    drop(held.pop());
    let answer = read_until(&mut third, &mut Vec::new(), "hello").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
}
