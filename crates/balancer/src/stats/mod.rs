//! The stats listener: the HTML page (`/`), HAProxy's CSV (`/;csv`), JSON
//! (`/;json`), Prometheus metrics (`/metrics`), liveness (`/;up`) and the
//! runtime API over HTTP (`POST /;cmd`).
//!
//! With `stats_auth` or `stats_token` set, everything but `/;up` needs Basic
//! or Bearer credentials; `POST /;cmd` always needs the admin token.
//!
//! The listener is bounded like a frontend: `limits.max_stats_connections`
//! connections at once, a request head must arrive within
//! `timeouts.request_headers` (408 and close otherwise), an idle connection is
//! closed after `timeouts.keepalive`, and a `/;cmd` body must arrive within
//! `timeouts.client`.

mod html;
mod prom;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::admin::same_secret;
use crate::conn::{ConnState, GuardedIo, IoTimeouts};
use crate::report::Snapshot;
use crate::state::State;

/// Whether the request carries the stats credentials (or none are required).
fn authorized(req: &Request<Incoming>, auth: Option<&str>, token: Option<&str>) -> bool {
    if auth.is_none() && token.is_none() {
        return true;
    }
    let Some(given) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    if let (Some(basic), Some(encoded)) = (auth, given.strip_prefix("Basic ")) {
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).unwrap_or_default();
        return same_secret(basic, &String::from_utf8_lossy(&decoded));
    }
    matches!((token, given.strip_prefix("Bearer ")), (Some(t), Some(g)) if same_secret(t, g.trim()))
}

fn bearer_is(req: &Request<Incoming>, token: &str) -> bool {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|g| same_secret(token, g.trim()))
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

const TEXT: &str = "text/plain; charset=utf-8";

/// The query string as `key=value` pairs (no percent-decoding: keys and values are plain words).
fn query(req: &Request<Incoming>) -> Vec<(&str, &str)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect()
}

async fn handle(req: Request<Incoming>, b: Arc<State>) -> Result<Response<Full<Bytes>>, Infallible> {
    let cfg = b.config();
    let path = req.uri().path().to_string();
    if path == "/;up" {
        return Ok(reply(StatusCode::OK, TEXT, "OK\n"));
    }
    let method = req.method().clone();
    // Commands need the admin token, a stronger credential than the stats ones.
    if path == "/;cmd" {
        if method != Method::POST {
            return Ok(reply(
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT,
                "use POST with the command as the body\n",
            ));
        }
        let Some(token) = cfg.admin.token.as_deref().filter(|t| !t.is_empty()) else {
            return Ok(reply(
                StatusCode::FORBIDDEN,
                TEXT,
                "the runtime API over HTTP is off: set admin.token\n",
            ));
        };
        if !bearer_is(&req, token) {
            return Ok(reply(StatusCode::FORBIDDEN, TEXT, "403 Forbidden: wrong or missing admin token\n"));
        }
        let body = Limited::new(req.into_body(), crate::admin::MAX_LINE).collect();
        let body = match tokio::time::timeout(cfg.timeouts.client, body).await {
            Ok(Ok(c)) => c.to_bytes(),
            Ok(Err(_)) => return Ok(reply(StatusCode::PAYLOAD_TOO_LARGE, TEXT, "command too large\n")),
            Err(_) => {
                return Ok(reply(StatusCode::REQUEST_TIMEOUT, TEXT, "the command did not arrive in time\n"));
            }
        };
        let Ok(line) = std::str::from_utf8(&body) else {
            return Ok(reply(StatusCode::BAD_REQUEST, TEXT, "the command is not UTF-8\n"));
        };
        let out: String = line.split([';', '\n']).map(|c| crate::admin::execute(&b, c)).collect();
        return Ok(reply(StatusCode::OK, TEXT, out));
    }
    if !authorized(&req, cfg.stats_auth.as_deref(), cfg.stats_token.as_deref()) {
        let mut r = reply(StatusCode::UNAUTHORIZED, TEXT, "401 Unauthorized: credentials required\n");
        if cfg.stats_auth.is_some() {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"Shoal stats\""));
        }
        return Ok(r);
    }
    if method != Method::GET && method != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "405 Method Not Allowed\n"));
    }
    // HAProxy accepts options after the format (`/;csv;norefresh`).
    let r = match path.as_str() {
        p if p.starts_with("/;csv") => reply(StatusCode::OK, TEXT, Snapshot::collect(&b).csv()),
        p if p.starts_with("/;json") => {
            reply(StatusCode::OK, "application/json", format!("{:#}\n", Snapshot::collect(&b).json()))
        }
        "/metrics" => reply(StatusCode::OK, prom::CONTENT_TYPE, prom::render(&b).await),
        "/" => reply(StatusCode::OK, "text/html; charset=utf-8", html::page(&b, &query(&req))),
        _ => reply(StatusCode::NOT_FOUND, TEXT, "404 Not Found: try /, /;csv, /;json, /metrics or /;up\n"),
    };
    Ok(r)
}

/// Serves stats until the task is dropped: at most `limits.max_stats_connections` at once
/// (beyond, connections wait to be accepted), each with the frontends' head and idle timeouts.
pub async fn serve(listener: TcpListener, b: Arc<State>) {
    let permits = Arc::new(Semaphore::new(b.config().limits.max_stats_connections));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "stats accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let t = b.config().timeouts;
        let timeouts =
            IoTimeouts { request_headers: t.request_headers, keepalive: t.keepalive, client: t.client };
        let state = Arc::new(ConnState::new());
        let io = GuardedIo::new(stream, state.clone(), timeouts, false);
        let b = b.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (b, state) = (b.clone(), state.clone());
                async move {
                    // Busy while handled: the head and idle deadlines apply only between requests.
                    state.begin();
                    let resp = handle(req, b).await;
                    state.end();
                    resp
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc).await;
            drop(permit);
        });
    }
}
