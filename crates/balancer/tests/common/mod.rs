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
