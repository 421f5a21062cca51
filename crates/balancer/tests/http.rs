//! HTTP behaviour at the edge: hostile requests, headers, upgrades, HTTP/2, TLS, reloads, draining.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use shoal_balancer::{BalancerConfig, PoolConfig};
use shoal_gossip::MemberStatus::Alive;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn echo_harness() -> Harness {
    let mut p = PoolConfig::new("backend", "backend", 3000);
    p.health.interval = Duration::from_millis(200);
    let mut cfg =
        BalancerConfig::simple(vec!["127.0.0.1:0".parse().unwrap()], p, Some("127.0.0.1:0".parse().unwrap()));
    cfg.timeouts.request_headers = Duration::from_millis(500);
    cfg.limits.max_body_bytes = 1000;
    let h = Harness::with_config(cfg).await;
    let (a, t) = echo_backend("echo").await;
    std::mem::forget(t);
    h.set(vec![member("echo", a, Alive, &[])]);
    h.wait_serving(1).await;
    h
}

fn status_line(resp: &str) -> &str {
    resp.lines().next().unwrap_or("")
}

#[tokio::test]
async fn smuggling_attempts_get_400_and_a_closed_connection() {
    let h = echo_harness().await;
    let wait = Duration::from_secs(3);
    let cases: [&[u8]; 4] = [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4x\r\n\r\nabcd",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ];
    for raw in cases {
        let started = Instant::now();
        let resp = raw_exchange(h.front, raw, wait).await;
        assert_eq!(
            status_line(&resp),
            "HTTP/1.1 400 Bad Request",
            "for {:?}: {resp}",
            String::from_utf8_lossy(raw)
        );
        assert!(started.elapsed() < wait, "the connection was closed, not left open");
        assert!(!resp.contains("/smuggled"), "nothing after the bad request was processed");
    }
}

#[tokio::test]
async fn slow_headers_get_408_oversized_headers_431_big_bodies_413() {
    let h = echo_harness().await;
    // A head that never completes.
    let mut s = TcpStream::connect(h.front).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: slow\r\n").await.unwrap();
    let mut out = Vec::new();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&out));
    assert!(started.elapsed() >= Duration::from_millis(400));

    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(40_000));
    let resp = raw_exchange(h.front, big.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(status_line(&resp), "HTTP/1.1 431 Request Header Fields Too Large");

    let declared =
        format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{}", "b".repeat(5000));
    let resp = raw_exchange(h.front, declared.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(status_line(&resp), "HTTP/1.1 413 Payload Too Large");
    let chunked = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1388\r\n{}\r\n0\r\n\r\n",
        "c".repeat(5000)
    );
    let resp = raw_exchange(h.front, chunked.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(status_line(&resp), "HTTP/1.1 413 Payload Too Large", "streamed bodies are counted too");
}

/// A client may shut down its sending side once its request is out (`nc -N` does): it still
/// gets the answer, as from HAProxy. Found by the `http_request` fuzz target, whose client does
/// exactly that and got nothing back for most requests.
#[tokio::test]
async fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    let h = echo_harness().await;
    let cases: [(&[u8], &str); 4] = [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200 OK"),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", "HTTP/1.1 200 OK"),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", "HTTP/1.1 413 Payload Too Large"),
        (b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", "HTTP/1.0 200 OK"),
    ];
    for (raw, want) in cases {
        let mut s = TcpStream::connect(h.front).await.unwrap();
        s.write_all(raw).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out))
            .await
            .expect("the balancer closes once it has answered")
            .unwrap();
        let resp = String::from_utf8_lossy(&out);
        assert_eq!(status_line(&resp), want, "for {:?}", String::from_utf8_lossy(raw));
    }
}

#[tokio::test]
async fn a_garbage_answering_backend_gives_502_and_is_counted() {
    let mut p = PoolConfig::new("backend", "backend", 3000);
    p.health.enabled = false;
    let h = Harness::new(p).await;
    let (g, _t) = raw_backend(b"this is not HTTP at all\r\n\r\n").await;
    h.set(vec![member("garbage", g, Alive, &[])]);
    h.wait_serving(1).await;
    let c = client();
    assert_eq!(get(&c, &h.url("/"), &[]).await.0, 502);
    let s = h.balancer.pools()["backend"].server("garbage").unwrap();
    assert_eq!(s.stats.response_errors.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn forwarded_headers_are_added_and_hop_by_hop_ones_dropped() {
    let h = echo_harness().await;
    let c = client();
    let (status, headers, body) = get(
        &c,
        &h.url("/echo?q=1"),
        &[("connection", "x-private"), ("x-private", "secret"), ("x-forwarded-for", "203.0.113.9")],
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("path=/echo?q=1"), "{body}");
    assert!(body.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1"), "{body}");
    assert!(body.contains("x-forwarded-proto: http"), "{body}");
    assert!(body.contains(&format!("x-forwarded-port: {}", h.front.port())), "{body}");
    assert!(!body.contains("x-private"), "headers named by Connection are dropped: {body}");
    assert!(headers.get("keep-alive").is_none(), "hop-by-hop response headers are dropped");
    assert_eq!(headers["x-backend"], "echo");
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let h = echo_harness().await;
    let mut s = TcpStream::connect(h.front).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket"), "{head}");
    s.write_all(b"ping over the tunnel").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"ping over the tunnel");
}

#[tokio::test]
async fn http2_clients_are_served_with_prior_knowledge() {
    let h = echo_harness().await;
    let stream = TcpStream::connect(h.front).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get(format!("http://{}/echo", h.front)).body(Full::new(Bytes::new())).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains(&format!("host: {}", h.front)),
            "the :authority became the Host header: {text}"
        );
    }
}

#[tokio::test]
async fn tls_termination_serves_http1_and_http2() {
    let dir = std::env::temp_dir().join(format!("shoal-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (tls, der) = self_signed(&dir);
    let mut p = PoolConfig::new("backend", "backend", 3000);
    p.health.interval = Duration::from_millis(200);
    let mut cfg = BalancerConfig::simple(vec!["127.0.0.1:0".parse().unwrap()], p, None);
    cfg.frontends[0].tls = Some(tls);
    let h = Harness::with_config(cfg).await;
    let (a, _t) = echo_backend("echo").await;
    h.set(vec![member("echo", a, Alive, &[])]);
    h.wait_serving(1).await;

    for alpn in [b"http/1.1".to_vec(), b"h2".to_vec()] {
        let io = TokioIo::new(tls_connect(h.front, &der, &alpn).await);
        let req = Request::get("https://localhost/echo")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = if alpn == b"h2" {
            let (mut s, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            s.send_request(req).await.unwrap()
        } else {
            let (mut s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            s.send_request(req).await.unwrap()
        };
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("x-forwarded-proto: https"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client's session store that counts the TLS 1.3 tickets it is given.
#[derive(Debug)]
struct CountingTickets {
    inner: rustls::client::ClientSessionMemoryCache,
    tickets: std::sync::atomic::AtomicUsize,
}

impl rustls::client::ClientSessionStore for CountingTickets {
    fn set_kx_hint(&self, name: rustls::pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value)
    }
    fn tls12_session(
        &self,
        name: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &rustls::pki_types::ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.insert_tls13_ticket(name, value)
    }
    fn take_tls13_ticket(
        &self,
        name: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

/// A balancer with a TLS frontend (a self-signed certificate for `localhost`, made in `dir`)
/// serving one echo backend; the certificate for clients to trust, and the backend's task.
async fn tls_echo_harness(
    dir: &std::path::Path,
) -> (Harness, rustls::pki_types::CertificateDer<'static>, tokio::task::JoinHandle<()>) {
    let (tls, der) = self_signed(dir);
    let mut cfg = BalancerConfig::simple(
        vec!["127.0.0.1:0".parse().unwrap()],
        PoolConfig::new("backend", "backend", 3000),
        None,
    );
    cfg.frontends[0].tls = Some(tls);
    let h = Harness::with_config(cfg).await;
    let (a, echo) = echo_backend("echo").await;
    h.set(vec![member("echo", a, Alive, &[])]);
    h.wait_serving(1).await;
    (h, der, echo)
}

#[tokio::test]
async fn tls_sessions_resume_from_one_stateless_ticket_even_after_many_other_handshakes() {
    let dir = std::env::temp_dir().join(format!("shoal-tls-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (h, der, _echo) = tls_echo_harness(&dir).await;

    let store = Arc::new(CountingTickets {
        inner: rustls::client::ClientSessionMemoryCache::new(16),
        tickets: Default::default(),
    });
    let mut cc = tls_client_config(&der);
    cc.resumption = rustls::client::Resumption::store(store.clone());
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cc));
    // One request and its answer on a connection: the ticket arrives after the handshake, and
    // the client takes it in while reading the response.
    let exchange = |resumed: bool| {
        let connector = connector.clone();
        let front = h.front;
        async move {
            let tcp = TcpStream::connect(front).await.unwrap();
            let mut s = connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
            let kind = s.get_ref().1.handshake_kind();
            let expected = if resumed { rustls::HandshakeKind::Resumed } else { rustls::HandshakeKind::Full };
            assert_eq!(kind, Some(expected));
            s.write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
            let mut buf = Vec::new();
            let (status, _, _) = read_response(&mut s, &mut buf, false).await;
            assert_eq!(status, 200);
        }
    };
    exchange(false).await;
    assert_eq!(store.tickets.load(std::sync::atomic::Ordering::SeqCst), 1, "one ticket per handshake");
    // Far more full handshakes from other clients than a session cache of ids would hold.
    for _ in 0..300 {
        drop(tls_connect(h.front, &der, b"http/1.1").await);
    }
    exchange(true).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn reload_applies_new_routes_keeps_connections_and_refuses_bad_configs() {
    let h = echo_harness().await;
    let (api, _t) = echo_backend("api").await;
    // The same configured address as at start (port 0): the listener is kept.
    let mut cur = BalancerConfig::simple(
        vec!["127.0.0.1:0".parse().unwrap()],
        PoolConfig::new("backend", "backend", 3000),
        None,
    );
    cur.pools[0].health.interval = Duration::from_millis(200);
    cur.limits.max_body_bytes = 1000;
    // An open keep-alive connection before the reload.
    let stream = TcpStream::connect(h.front).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = |p: &str| Request::get(p).header("host", "x").body(Full::new(Bytes::new())).unwrap();
    assert_eq!(sender.send_request(req("/echo")).await.unwrap().status(), 200);

    let mut bad = cur.clone();
    bad.frontends[0].default_pool = "missing".into();
    assert!(h.balancer.reload(bad).await.is_err(), "a bad configuration is refused");

    let mut next = cur.clone();
    let mut api_pool = PoolConfig::new("api", "api", 3000);
    api_pool.health.interval = Duration::from_millis(200);
    next.pools.push(api_pool);
    next.frontends[0].routes.push(shoal_balancer::Route {
        host: None,
        path_prefix: Some("/api/".into()),
        pool: "api".into(),
    });
    h.balancer.reload(next).await.unwrap();
    h.set(vec![
        member("echo", h.balancer.pools()["backend"].servers()[0].addr, Alive, &[]),
        member("api", api, Alive, &[("role", "api")]),
    ]);
    wait_until("the api pool serves", || !h.balancer.pools()["api"].view().servers.is_empty()).await;
    // The same connection sees the new routes.
    let resp = sender.send_request(req("/api/users")).await.unwrap();
    assert_eq!(resp.headers()["x-backend"], "api");
    let resp = sender.send_request(req("/echo")).await.unwrap();
    assert_eq!(resp.headers()["x-backend"], "echo");
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let h = echo_harness().await;
    let c = client();
    let slow = tokio::spawn({
        let (c, url) = (c.clone(), h.url("/slow/500"));
        async move { get(&c, &url, &[]).await.0 }
    });
    let backend = h.balancer.pools()["backend"].clone();
    wait_until("the slow request is in flight", || backend.active() == 1).await;
    let b = h.balancer.clone();
    let started = Instant::now();
    b.shutdown().await;
    assert_eq!(slow.await.unwrap(), 200, "the in-flight request completed");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(TcpStream::connect(h.front).await.is_err(), "no longer accepting");
}

#[tokio::test]
async fn shutdown_lets_in_flight_http2_streams_over_tls_finish_and_sends_goaway() {
    let dir = std::env::temp_dir().join(format!("shoal-h2-stop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (h, der, _echo) = tls_echo_harness(&dir).await;

    let io = TokioIo::new(tls_connect(h.front, &der, b"h2").await);
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
    let conn = tokio::spawn(conn);
    let req =
        |path: &str| Request::get(format!("https://localhost{path}")).body(Full::new(Bytes::new())).unwrap();
    assert_eq!(sender.send_request(req("/echo")).await.unwrap().status(), 200);
    let slow = tokio::spawn(sender.send_request(req("/slow/500")));
    let backend = h.balancer.pools()["backend"].clone();
    wait_until("the slow stream is in flight", || backend.active() == 1).await;
    h.balancer.shutdown().await;
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200, "the in-flight stream completed");
    // GOAWAY, then the connection's end: the client's connection task finishes cleanly.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "the client connection ended cleanly: {ended:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server that answers every request with a 64 MiB body, written as fast as it is taken.
async fn firehose_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                if s.read(&mut head).await.unwrap_or(0) == 0 {
                    return;
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 67108864\r\n\r\n").await;
                let zeros = vec![0u8; 64 * 1024];
                while s.write_all(&zeros).await.is_ok() {}
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_client_timeout() {
    let mut p = PoolConfig::new("backend", "backend", 3000);
    p.health.enabled = false;
    let mut cfg =
        BalancerConfig::simple(vec!["127.0.0.1:0".parse().unwrap()], p, Some("127.0.0.1:0".parse().unwrap()));
    cfg.timeouts.client = Duration::from_millis(300);
    let h = Harness::with_config(cfg).await;
    h.set(vec![member("firehose", firehose_backend().await, Alive, &[])]);
    h.wait_serving(1).await;
    // A bodiless GET and a POST with a body.
    for request in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
    ] {
        let mut s = TcpStream::connect(h.front).await.unwrap();
        s.write_all(request).await.unwrap();
        // Read nothing while the socket buffers fill up, until the balancer has let go.
        wait_until("the connection is open", || h.balancer.open_connections() == 1).await;
        wait_until("the balancer dropped the client that reads nothing", || {
            h.balancer.open_connections() == 0
        })
        .await;
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
        })
        .await;
        assert!(drained.is_ok(), "the balancer closed the connection");
        assert!(
            got < 64 << 20,
            "the response was cut short ({got} bytes) for {:?}",
            String::from_utf8_lossy(request)
        );
    }
}

/// A self-signed certificate for `names` in `dir/<file>.{pem,key}`, and its DER form.
fn cert_for(
    dir: &std::path::Path,
    file: &str,
    names: &[&str],
) -> (shoal_balancer::CertFiles, rustls::pki_types::CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let files = shoal_balancer::CertFiles {
        cert: dir.join(format!("{file}.pem")),
        key: dir.join(format!("{file}.key")),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    (files, cert.der().clone())
}

#[tokio::test]
async fn sni_serves_each_name_its_certificate_a_wildcard_its_subdomains_and_others_the_default() {
    let dir = std::env::temp_dir().join(format!("shoal-tls-sni-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (default, default_der) = cert_for(&dir, "default", &["default.test"]);
    let (api, api_der) = cert_for(&dir, "api", &["api.example.test"]);
    let (wild, wild_der) = cert_for(&dir, "wild", &["*.example.test"]);
    let mut cfg = BalancerConfig::simple(
        vec!["127.0.0.1:0".parse().unwrap()],
        PoolConfig::new("backend", "backend", 3000),
        None,
    );
    let mut tls = shoal_balancer::TlsConfig::single(default.cert, default.key);
    tls.certificates = vec![api, wild];
    cfg.frontends[0].tls = Some(tls);
    let h = Harness::with_config(cfg).await;
    let (a, _echo) = echo_backend("echo").await;
    h.set(vec![member("echo", a, Alive, &[])]);
    h.wait_serving(1).await;

    // The certificate the frontend presents for a server name (the client trusts all three
    // and checks the name, so a handshake also proves the certificate covers it).
    let presented = |name: &'static str| {
        let mut roots = rustls::RootCertStore::empty();
        for der in [&default_der, &api_der, &wild_der] {
            roots.add(der.clone()).unwrap();
        }
        let cc =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let front = h.front;
        async move {
            let tcp = TcpStream::connect(front).await.unwrap();
            let server = rustls::pki_types::ServerName::try_from(name).unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cc)).connect(server, tcp).await;
            tls.map(|s| s.get_ref().1.peer_certificates().unwrap()[0].clone()).map_err(|e| e.to_string())
        }
    };
    assert_eq!(presented("api.example.test").await.unwrap(), api_der);
    assert_eq!(presented("www.example.test").await.unwrap(), wild_der);
    assert_eq!(presented("default.test").await.unwrap(), default_der);
    // A name no certificate covers gets the default, which the client then refuses for that name.
    let e = presented("other.test").await.unwrap_err();
    assert!(e.contains("only valid for DnsName(\"default.test\")"), "the default certificate: {e}");
    let _ = std::fs::remove_dir_all(&dir);
}
