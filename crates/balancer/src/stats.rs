//! The stats listener: for now a plain-text status of every pool and server,
//! and `/;up` for liveness probes.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::Balancer;
use crate::pool::{Admin, Health};

/// A server's state as HAProxy names it: UP, DOWN, DRAIN, MAINT, NOLB.
pub fn state_name(s: &crate::pool::Server, now: Instant) -> &'static str {
    match (s.admin(), s.health()) {
        (Admin::Maint, _) => "MAINT",
        (Admin::Drain, _) => "DRAIN",
        _ if s.member_status() != shoal_gossip::MemberStatus::Alive => "DRAIN",
        (_, Health::Down) => "DOWN",
        (_, Health::Unknown) => "DOWN (checking)",
        _ if s.is_ejected(now) => "NOLB",
        _ => "UP",
    }
}

fn status_text(b: &Balancer) -> String {
    let now = Instant::now();
    let mut out = String::new();
    for (name, fe) in b.frontend_stats() {
        let _ = writeln!(
            out,
            "frontend {name}: connections {} open, {} total; requests {}; denied {}; no server {}",
            fe.current_connections.load(Ordering::Relaxed),
            fe.connections.load(Ordering::Relaxed),
            fe.requests.load(Ordering::Relaxed),
            fe.denied.load(Ordering::Relaxed),
            fe.no_server.load(Ordering::Relaxed),
        );
    }
    for (name, pool) in b.pools().iter() {
        let eligible = pool.view().servers.len();
        let _ = writeln!(out, "pool {name}: {eligible} serving");
        for s in pool.servers() {
            let st = &s.stats;
            let check = s.last_check.lock().ok().and_then(|c| c.clone()).map_or("-".to_string(), |c| {
                format!("{} {} in {:?}", if c.ok { "L7OK" } else { "L7FAIL" }, c.detail, c.duration)
            });
            let _ = writeln!(
                out,
                "  {:<24} {:<22} {:<16} gossip={:<8} weight={:<3} active={:<4} requests={:<8} 5xx={:<6} connect_errors={:<5} retries={:<5} check={check}",
                s.name,
                s.addr,
                state_name(&s, now),
                s.member_status().as_str(),
                s.weight.load(Ordering::Relaxed),
                s.active.load(Ordering::Relaxed),
                st.requests.load(Ordering::Relaxed),
                st.responses[4].load(Ordering::Relaxed),
                st.connect_errors.load(Ordering::Relaxed),
                st.retries.load(Ordering::Relaxed),
            );
        }
    }
    out
}

async fn handle(req: Request<Incoming>, b: Balancer) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.uri().path() {
        "/" | "/status" => (StatusCode::OK, status_text(&b)),
        "/;up" => (StatusCode::OK, "OK\n".to_string()),
        _ => (StatusCode::NOT_FOUND, "Not found\n".to_string()),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
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
