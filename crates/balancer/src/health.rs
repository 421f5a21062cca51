//! Active health checks: one task per checked server, `HEAD /` by default (like
//! the reference stack's `option httpchk`), with rise/fall hysteresis.
//!
//! A newcomer is checked at once and then every 200 ms until its first pass, so
//! it is routed to within moments of its application answering; after that the
//! configured interval applies. Every state change is one log line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::config::HealthConfig;
use crate::server::{CheckResult, CheckStatus, Health, Server};
use shoal_gossip::escape::Esc;

const NEWCOMER_INTERVAL: Duration = Duration::from_millis(200);

/// Why a check got no status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckError {
    /// The class of failure.
    pub status: CheckStatus,
    /// What happened.
    pub detail: String,
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// One check: connect, send, read the status line.
pub async fn check_once(addr: SocketAddr, cfg: &HealthConfig) -> Result<u16, CheckError> {
    let fail = |status, detail: String| CheckError { status, detail };
    let work = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| fail(CheckStatus::Refused, format!("connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(CheckStatus::BadResponse, format!("handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(cfg.method.as_str())
            .uri(cfg.path.as_str())
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::CONNECTION, "close")
            .header(hyper::header::USER_AGENT, "shoal-health-check")
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(CheckStatus::BadResponse, format!("request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| fail(CheckStatus::BadResponse, format!("response: {e}")))?;
        Ok(resp.status().as_u16())
    };
    tokio::time::timeout(cfg.timeout, work)
        .await
        .map_err(|_| fail(CheckStatus::Timeout, format!("no answer within {:?}", cfg.timeout)))?
}

/// Checks `server` until it is removed from its pool.
pub async fn check_loop(server: Arc<Server>, pool: String, cfg: HealthConfig, changed: Arc<Notify>) {
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        if server.removed.load(Ordering::Relaxed) {
            return;
        }
        let started = Instant::now();
        let result = check_once(server.addr, &cfg).await;
        let took = started.elapsed();
        let ok = matches!(result, Ok(s) if cfg.accepts(s));
        let (status, code, detail) = match &result {
            Ok(s) if ok => (CheckStatus::Passed, Some(*s), s.to_string()),
            Ok(s) => (CheckStatus::WrongStatus, Some(*s), format!("{s}, expected {}", cfg.expect)),
            Err(e) => (e.status, None, e.detail.clone()),
        };
        if !ok {
            server.stats.check_failures.fetch_add(1, Ordering::Relaxed);
        }
        *server.last_check.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(CheckResult { ok, status, code, detail: detail.clone(), duration: took });
        let before = server.health();
        let after = match (before, ok) {
            (Health::Unknown, true) => Health::Up,
            (Health::Unknown, false) => Health::Unknown,
            (Health::Up, true) => {
                failures = 0;
                Health::Up
            }
            (Health::Up, false) => {
                failures += 1;
                if failures >= cfg.fall { Health::Down } else { Health::Up }
            }
            (Health::Down, false) => {
                successes = 0;
                Health::Down
            }
            (Health::Down, true) => {
                successes += 1;
                if successes >= cfg.rise { Health::Up } else { Health::Down }
            }
        };
        if after != before {
            (successes, failures) = (0, 0);
            server.set_health(after);
            if before == Health::Up && after == Health::Down {
                server.stats.check_downs.fetch_add(1, Ordering::Relaxed);
            }
            changed.notify_one();
            match after {
                Health::Up => {
                    tracing::info!(target: "shoal::server", pool, server = %Esc(&server.name), addr = %server.addr, check = %Esc(&detail), ?took, "server UP")
                }
                _ => {
                    tracing::warn!(target: "shoal::server", pool, server = %Esc(&server.name), addr = %server.addr, check = %Esc(&detail), "server DOWN")
                }
            }
        }
        let wait = if server.health() == Health::Unknown { NEWCOMER_INTERVAL } else { cfg.interval };
        tokio::time::sleep(wait.saturating_sub(took)).await;
    }
}
