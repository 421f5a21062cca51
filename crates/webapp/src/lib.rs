//! The reference stack's demo web app, with the same HTTP contract as the
//! Node/Express original:
//!
//! * `GET` / `HEAD /`: counts views per session (cookie `NODESESSID`, set on the
//!   first visit) and answers 200 with `X-Backend-Ip: <ip>` and
//!   `{"hello":"world!","ip":…,"host":…,"tag":…,"sessionViews":n,"id":…}`
//!   (`tag` only when `TAG`/`SERVER_TAG` is set);
//! * `POST /delay` with `{"delay": N}`: later requests sleep N ms first; answers
//!   `{"message":"New timeout of Nms configured."}`, or 500 if `delay` is missing;
//! * anything else: 404.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, COOKIE, HeaderValue, SET_COOKIE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rand::TryRngCore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// The session cookie's name (express-session's, as the reference app configured it).
pub const SESSION_COOKIE: &str = "NODESESSID";
/// Sessions kept before the least recently used are forgotten.
const MAX_SESSIONS: usize = 100_000;

/// Who this server says it is.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// `SERVER_IP` (default: the address it listens on, or the first private IPv4).
    pub ip: String,
    /// `SERVER_NAME` (default: the host name).
    pub name: String,
    /// `TAG` or `SERVER_TAG`, if any.
    pub tag: Option<String>,
}

/// The app's state: sessions, the configured delay, the requests being handled.
pub struct App {
    cfg: AppConfig,
    sessions: std::sync::Mutex<HashMap<String, (u64, Instant)>>,
    delay_ms: AtomicU64,
    in_flight: AtomicU64,
}

impl App {
    /// A fresh app.
    pub fn new(cfg: AppConfig) -> Arc<App> {
        Arc::new(App {
            cfg,
            sessions: std::sync::Mutex::new(HashMap::new()),
            delay_ms: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        })
    }

    /// Requests being handled right now (read, not yet answered): what a test waits on to
    /// know that a request is in flight, instead of sleeping and hoping it is.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn session(&self, req: &Request<Incoming>) -> (String, u64, bool) {
        let existing = req
            .headers()
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == SESSION_COOKIE)
            .map(|(_, v)| v.to_string());
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = existing
            && let Some((views, seen)) = sessions.get_mut(&id)
        {
            *views += 1;
            *seen = Instant::now();
            return (id, *views, false);
        }
        if sessions.len() >= MAX_SESSIONS {
            let mut by_age: Vec<Instant> = sessions.values().map(|(_, t)| *t).collect();
            by_age.sort_unstable();
            let cutoff = by_age[by_age.len() / 2];
            sessions.retain(|_, (_, t)| *t > cutoff);
        }
        let mut raw = [0u8; 16];
        rand::rngs::OsRng.try_fill_bytes(&mut raw).ok();
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        sessions.insert(id.clone(), (1, Instant::now()));
        (id, 1, true)
    }

    /// Handles one request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        /// Counts the request in [`App::in_flight`] until it is answered or dropped.
        struct InFlight<'a>(&'a AtomicU64);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _counted = InFlight(&self.in_flight);
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        Ok(match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/") => self.hello(&req),
            (&Method::POST, "/delay") => self.set_delay(req).await,
            _ => text(StatusCode::NOT_FOUND, "Not Found"),
        })
    }

    fn hello(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let (id, views, fresh) = self.session(req);
        let mut body = format!(
            "{{\"hello\":\"world!\",\"ip\":{},\"host\":{}",
            json_str(&self.cfg.ip),
            json_str(&self.cfg.name)
        );
        if let Some(tag) = &self.cfg.tag {
            body.push_str(&format!(",\"tag\":{}", json_str(tag)));
        }
        body.push_str(&format!(",\"sessionViews\":{views},\"id\":{}}}", json_str(&id)));
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        if let Ok(ip) = HeaderValue::from_str(&self.cfg.ip) {
            h.insert("x-backend-ip", ip);
        }
        if fresh && let Ok(c) = HeaderValue::from_str(&format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly")) {
            h.insert(SET_COOKIE, c);
        }
        resp
    }

    async fn set_delay(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return json(StatusCode::PAYLOAD_TOO_LARGE, "{\"message\":\"Body too large.\"}"),
        };
        let delay = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("delay").and_then(serde_json::Value::as_u64));
        match delay {
            Some(ms) => {
                self.delay_ms.store(ms, Ordering::Relaxed);
                tracing::info!(delay_ms = ms, "delay configured");
                json(StatusCode::OK, &format!("{{\"message\":\"New timeout of {ms}ms configured.\"}}"))
            }
            None => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                "{\"message\":\"Send a JSON body with a numeric `delay` in milliseconds.\"}",
            ),
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn json(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Serves the app on `listener` until `stop` yields a grace period: then it stops
/// accepting, lets in-flight requests finish within the grace period and closes
/// idle connections. Dropping the future drops every connection at once.
pub async fn serve(listener: TcpListener, app: Arc<App>, stop: oneshot::Receiver<Duration>) {
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    let grace = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let svc = service_fn(move |req| app.clone().handle(req));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                conns.spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            grace = &mut stop => break grace.unwrap_or_default(),
        }
    };
    drop(listener);
    let open = conns.len();
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(open, ?grace, "grace period over: closing the connections still busy");
    }
}

/// A web app serving in the background. Dropping it drops every connection, like
/// a killed process; [`Running::shutdown`] stops it gracefully.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<Duration>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, waits up to `grace` for in-flight requests, closes the rest.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
        let _ = (&mut self.task).await;
    }

    /// Stops at once, dropping every connection (what `kill -9` does to a process).
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves in the background.
pub async fn start(addr: SocketAddr, app: Arc<App>) -> std::io::Result<Running> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel();
    Ok(Running { addr: bound, stop: Some(stop), task: tokio::spawn(serve(listener, app, stopped)) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    async fn get(
        client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
        url: &str,
        cookie: Option<&str>,
    ) -> (StatusCode, hyper::HeaderMap, String) {
        let mut req = Request::get(url);
        if let Some(c) = cookie {
            req = req.header(COOKIE, c);
        }
        let resp = client.request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn the_reference_contract() {
        let cfg = AppConfig { ip: "10.0.0.7".into(), name: "s1".into(), tag: Some("blue".into()) };
        let app = start("127.0.0.1:0".parse().unwrap(), App::new(cfg)).await.unwrap();
        let addr = app.addr;
        let client = Client::builder(TokioExecutor::new()).build_http();
        let base = format!("http://{addr}");

        let (status, headers, body) = get(&client, &format!("{base}/"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-backend-ip"], "10.0.0.7");
        let cookie = headers[SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_string();
        assert!(cookie.starts_with("NODESESSID="));
        assert!(body.starts_with("{\"hello\":\"world!\",\"ip\":\"10.0.0.7\",\"host\":\"s1\",\"tag\":\"blue\",\"sessionViews\":1,\"id\":\""), "{body}");
        let (_, headers, body) = get(&client, &format!("{base}/"), Some(&cookie)).await;
        assert!(body.contains("\"sessionViews\":2"), "{body}");
        assert!(headers.get(SET_COOKIE).is_none(), "the cookie is set once");
        let (_, _, body) = get(&client, &format!("{base}/"), None).await;
        assert!(body.contains("\"sessionViews\":1"));

        assert_eq!(get(&client, &format!("{base}/nope"), None).await.0, StatusCode::NOT_FOUND);

        let post = |b: &'static str| {
            Request::post(format!("{base}/delay")).body(Full::new(Bytes::from_static(b.as_bytes()))).unwrap()
        };
        let bad = client.request(post("{\"nodelay\":1}")).await.unwrap();
        assert_eq!(bad.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let ok = client.request(post("{\"delay\":150}")).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        let body = ok.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"{\"message\":\"New timeout of 150ms configured.\"}");
        let started = Instant::now();
        get(&client, &format!("{base}/"), None).await;
        assert!(started.elapsed() >= Duration::from_millis(150), "later requests wait");
    }

    #[tokio::test]
    async fn a_graceful_stop_finishes_in_flight_requests_and_refuses_new_ones() {
        let cfg = AppConfig { ip: "127.0.0.1".into(), name: "s1".into(), tag: None };
        let state = App::new(cfg);
        let app = start("127.0.0.1:0".parse().unwrap(), state.clone()).await.unwrap();
        let addr = app.addr;
        let client = Client::builder(TokioExecutor::new()).build_http();
        let delay = Request::post(format!("http://{addr}/delay"))
            .body(Full::new(Bytes::from_static(b"{\"delay\":300}")))
            .unwrap();
        assert_eq!(client.request(delay).await.unwrap().status(), StatusCode::OK);
        let in_flight = tokio::spawn({
            let client = client.clone();
            async move { get(&client, &format!("http://{addr}/"), None).await.0 }
        });
        // The request is being served (its 300 ms delay has begun).
        let served = async {
            while state.in_flight() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), served).await.expect("the request is in flight");
        app.shutdown(Duration::from_secs(5)).await;
        assert_eq!(in_flight.await.unwrap(), StatusCode::OK, "the in-flight request finished");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer accepting");
    }
}
