//! Test harness: a balancer fed a hand-made membership, real web apps, odd backends, clients.
#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use shoal_agent::Membership;
use shoal_balancer::{Balancer, BalancerConfig, PoolConfig};
use shoal_gossip::{Member, MemberStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub fn member(name: &str, app: SocketAddr, status: MemberStatus, extra: &[(&str, &str)]) -> Member {
    let mut tags: BTreeMap<String, String> =
        [("role".to_string(), "backend".to_string()), ("port".to_string(), app.port().to_string())].into();
    for (k, v) in extra {
        tags.insert(k.to_string(), v.to_string());
    }
    Member {
        name: Arc::from(name),
        addr: SocketAddr::new(app.ip(), 7946),
        tags: Arc::new(tags),
        status,
        versions: [1, 5, 2, 2, 5, 5],
    }
}

pub fn membership(members: Vec<Member>) -> Arc<Membership> {
    let mut members = members;
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let local = member("ha", "127.0.0.1:1".parse().unwrap(), MemberStatus::Alive, &[("role", "balancer")]);
    Arc::new(Membership { local, members })
}

/// A balancer whose membership the test controls.
pub struct Harness {
    pub members: watch::Sender<Arc<Membership>>,
    pub balancer: Balancer,
    pub front: SocketAddr,
}

impl Harness {
    pub async fn new(pool: PoolConfig) -> Harness {
        let mut cfg = BalancerConfig::simple(
            vec!["127.0.0.1:0".parse().unwrap()],
            pool,
            Some("127.0.0.1:0".parse().unwrap()),
        );
        cfg.access_log = shoal_balancer::AccessLogFormat::Off;
        Harness::with_config(cfg).await
    }

    pub async fn with_config(cfg: BalancerConfig) -> Harness {
        let (tx, rx) = watch::channel(membership(vec![]));
        let balancer = Balancer::start(cfg, rx).await.expect("balancer starts");
        let front = balancer.local_addrs().await[0];
        Harness { members: tx, balancer, front }
    }

    pub fn set(&self, members: Vec<Member>) {
        self.members.send_replace(membership(members));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.front)
    }

    /// Names of the servers the pool routes to now.
    pub fn serving(&self) -> Vec<String> {
        self.balancer
            .pools()
            .values()
            .flat_map(|p| p.view().servers.iter().map(|s| s.name.to_string()).collect::<Vec<_>>())
            .collect()
    }

    pub async fn wait_serving(&self, n: usize) {
        let start = Instant::now();
        while self.serving().len() != n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "pool never reached {n} servers: {:?}",
                self.serving()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until exactly these servers are routed to.
    pub async fn wait_names(&self, names: &[&str]) {
        let start = Instant::now();
        loop {
            let mut now = self.serving();
            now.sort();
            if now == names {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "pool never became {names:?}: {now:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Polls `f` until it holds (10 s at most): waiting on a signal, not for a time.
pub async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn get(
    c: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, hyper::HeaderMap, String) {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c.request(req.body(Full::new(Bytes::new())).unwrap()).await.expect("request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

/// A demo web app; `abort()` kills it like a process (listener and every connection).
pub async fn killable_webapp(name: &str) -> shoal_webapp::Running {
    let cfg = shoal_webapp::AppConfig { ip: "127.0.0.1".into(), name: name.into(), tag: None };
    shoal_webapp::start("127.0.0.1:0".parse().unwrap(), shoal_webapp::App::new(cfg)).await.unwrap()
}

/// A real demo web app named `name`, running until the handle is dropped.
pub async fn webapp(name: &str) -> (SocketAddr, shoal_webapp::Running) {
    let app = killable_webapp(name).await;
    (app.addr, app)
}

/// A backend that echoes what it received: `/echo` returns the request headers,
/// `/slow/MS` answers after MS milliseconds, `/ws` upgrades and echoes bytes.
pub async fn echo_backend(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let path = req.uri().path().to_string();
                    if let Some(ms) = path.strip_prefix("/slow/") {
                        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
                    }
                    if path == "/ws" {
                        let mut req = req;
                        let up = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(io) = up.await {
                                let mut io = TokioIo::new(io);
                                let mut buf = [0u8; 1024];
                                while let Ok(n) = io.read(&mut buf).await {
                                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        });
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                        r.headers_mut().insert("connection", "upgrade".parse().unwrap());
                        r.headers_mut().insert("upgrade", "websocket".parse().unwrap());
                        return Ok::<_, hyper::Error>(r);
                    }
                    let mut text = format!("backend={name}\nmethod={}\npath={}\n", req.method(), req.uri());
                    for (k, v) in req.headers() {
                        text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                    }
                    let body = req.into_body().collect().await?.to_bytes();
                    text.push_str(&format!("body-bytes={}\n", body.len()));
                    let mut r = Response::new(Full::new(Bytes::from(text)));
                    r.headers_mut().insert("x-backend", name.parse().unwrap());
                    r.headers_mut().insert("keep-alive", "timeout=5".parse().unwrap());
                    Ok(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, task)
}

/// A "backend" that answers every connection with `reply` and closes.
pub async fn raw_backend(reply: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// Sends raw bytes to `addr` and returns everything the server sent back before closing.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A free address nobody listens on.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// One request as a server received it: its line, fields (names lower-cased) and decoded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub fields: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The head exactly as it came.
    pub raw_head: String,
}

impl Received {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Reads one request (head and body, by length or chunked) from `s`, with `buf` holding what
/// was read past the previous one; `None` at the end of the connection.
pub async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Received> {
    async fn more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
        let mut chunk = [0u8; 16 * 1024];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Some(())
            }
        }
    }
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        more(s, buf).await?;
    };
    let raw_head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = raw_head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_string(), first.next()?.to_string());
    let fields: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    buf.drain(..end);
    let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(n) = field("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < n {
            more(s, buf).await?;
        }
        body = buf.drain(..n).collect();
    } else if field("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                more(s, buf).await?;
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        let empty = i == 0;
                        buf.drain(..i + 2);
                        if empty {
                            break;
                        }
                    } else {
                        more(s, buf).await?;
                    }
                }
                break;
            }
            while buf.len() < size + 2 {
                more(s, buf).await?;
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
        }
    }
    Some(Received { method, target, fields, body, raw_head })
}

/// A backend that records every request it gets and answers each with `answer(request)`
/// (a whole HTTP/1.1 response; the connection stays open unless it says `Connection: close`).
pub async fn recording_backend(
    answer: fn(&Received) -> Vec<u8>,
) -> (SocketAddr, Arc<std::sync::Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<std::sync::Mutex<Vec<Received>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(r) = read_request(&mut s, &mut buf).await {
                    let reply = answer(&r);
                    log.lock().unwrap().push(r);
                    let close =
                        String::from_utf8_lossy(&reply).to_ascii_lowercase().contains("connection: close");
                    if s.write_all(&reply).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A self-signed certificate for `localhost` in `dir`, and its DER form for clients to trust.
pub fn self_signed(
    dir: &std::path::Path,
) -> (shoal_balancer::TlsConfig, rustls::pki_types::CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    (shoal_balancer::TlsConfig::single(dir.join("cert.pem"), dir.join("key.pem")), cert.der().clone())
}

/// A TLS client configuration (rustls with *ring*) that trusts `der` alone.
pub fn tls_client_config(der: &rustls::pki_types::CertificateDer<'static>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A TLS connection to `addr` trusting `der`, offering `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    der: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut cc = tls_client_config(der);
    cc.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cc));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap()
}

/// Reads one HTTP/1.1 response (length-delimited, or bodiless for HEAD) from `s`.
pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    head_only: bool,
) -> (u16, String, Vec<u8>) {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before the answer: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    let length = if head_only { 0 } else { length };
    while buf.len() < length {
        let mut chunk = [0u8; 16 * 1024];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed in the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf.drain(..length).collect();
    (status, head, body)
}

/// A writer the access log can write to, whose lines the test reads.
#[derive(Clone, Default)]
pub struct LogLines(pub Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogLines {
    /// The JSON lines written so far.
    pub fn json(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
    }
}
