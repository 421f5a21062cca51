//! The stats listener: the HTML page (`/`), HAProxy's CSV (`/;csv`), JSON
//! (`/;json`), Prometheus metrics (`/metrics`), liveness (`/;up`) and the
//! runtime API over HTTP (`POST /;cmd`).
//!
//! With `stats_auth` or `stats_token` set, everything but `/;up` needs Basic
//! or Bearer credentials; `POST /;cmd` always needs the admin token.

mod html;
mod prom;
pub mod rows;

use std::convert::Infallible;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::Balancer;
use rows::Snapshot;

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

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

async fn handle(req: Request<Incoming>, b: Balancer) -> Result<Response<Full<Bytes>>, Infallible> {
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
        let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => return Ok(reply(StatusCode::PAYLOAD_TOO_LARGE, TEXT, "command too large\n")),
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

/// Serves stats until the task is dropped.
pub async fn serve(listener: TcpListener, b: Balancer) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let b = b.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, b.clone()));
            let _ =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
