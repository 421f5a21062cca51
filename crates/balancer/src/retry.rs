//! The retry policy of one request: which server each attempt goes to, and what a failed
//! attempt leads to — another server, the same request sent again, or an error answer.
//!
//! Both request paths (the HTTP/1 fast path and the general one) follow it, so a request is
//! retried, counted and answered the same whichever path carried it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::StatusCode;

use crate::config::RetryOn;
use crate::metrics::FrontendStats;
use crate::pool::Pool;
use crate::select::View;
use crate::server::Server;

/// Re-sends of a request that provably never left (on a pooled connection that had just died).
const MAX_RESENDS: u32 = 2;

/// An answer the balancer makes itself when forwarding fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No server is eligible.
    NoServer,
    /// No server could be connected to.
    Unreachable,
    /// The request could not be sent, again and again.
    Unsendable,
    /// The server closed the connection before answering.
    ServerClosed,
    /// The server's answer is not HTTP.
    BadResponse,
    /// The server took too long.
    Timeout,
}

impl Failure {
    /// Status and body of the answer.
    pub fn answer(self) -> (StatusCode, &'static str) {
        match self {
            Failure::NoServer => (StatusCode::SERVICE_UNAVAILABLE, "No server available\n"),
            Failure::Unreachable => {
                (StatusCode::SERVICE_UNAVAILABLE, "Service unavailable: no server could be reached\n")
            }
            Failure::Unsendable => (StatusCode::BAD_GATEWAY, "Bad gateway\n"),
            Failure::ServerClosed => {
                (StatusCode::BAD_GATEWAY, "Bad gateway: the server closed the connection\n")
            }
            Failure::BadResponse => {
                (StatusCode::BAD_GATEWAY, "Bad gateway: invalid response from the server\n")
            }
            Failure::Timeout => (StatusCode::GATEWAY_TIMEOUT, "Gateway timeout\n"),
        }
    }

    /// HAProxy's termination state for it.
    pub fn termination(self) -> [u8; 2] {
        match self {
            Failure::NoServer | Failure::Unreachable | Failure::Unsendable => *b"SC",
            Failure::ServerClosed | Failure::BadResponse => *b"SH",
            Failure::Timeout => *b"sH",
        }
    }
}

/// Why one attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptError {
    /// The request never left (a pooled connection was found dead): send it again as it is.
    Unsent,
    /// No connection could be made.
    Connect,
    /// The connection died before any response byte (or gossip declared the server failed).
    NoResponse,
    /// The server answered something that is not HTTP.
    BadResponse,
    /// The server took too long.
    Timeout,
}

/// What follows a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Send the same request to the same server on a fresh connection.
    Resend,
    /// Try another server.
    Elsewhere,
    /// Give up with this answer.
    Fail(Failure),
}

/// One request's attempts so far.
pub struct Attempts<'p> {
    pool: &'p Pool,
    /// Whether the request may go to another server once it has been sent.
    can_retry: bool,
    max_attempts: u32,
    attempts: u32,
    resends: u32,
    retried: u32,
    tried: Vec<Arc<Server>>,
    resend_same: bool,
    last_failure: Failure,
    sticky: Option<Arc<Server>>,
    sticky_missed: bool,
}

impl<'p> Attempts<'p> {
    /// Attempts for a request to `pool`; `retryable` says the request may be sent twice
    /// (idempotent, and its body kept); `sticky` is its sticky cookie's value, the token of
    /// the server it points at.
    pub fn new(pool: &'p Pool, view: &View, retryable: bool, sticky: Option<&str>) -> Attempts<'p> {
        let can_retry = retryable && pool.cfg.retries > 0 && view.servers.len() > 1;
        let sticky_server =
            sticky.and_then(|c| view.by_cookie(c)).filter(|s| !s.is_ejected(Instant::now())).cloned();
        Attempts {
            pool,
            can_retry,
            max_attempts: if can_retry { pool.cfg.retries + 1 } else { 1 },
            attempts: 0,
            resends: 0,
            retried: 0,
            tried: Vec::new(),
            resend_same: false,
            last_failure: Failure::NoServer,
            sticky_missed: sticky.is_some() && sticky_server.is_none(),
            sticky: sticky_server,
        }
    }

    /// Retries made so far.
    pub fn retried(&self) -> u32 {
        self.retried
    }

    /// The server for the next attempt, counted as sent to; `None` when none is left (the
    /// answer is then [`Attempts::exhausted`]).
    pub fn next_server(&mut self, view: &View, key: Option<&[u8]>) -> Option<Arc<Server>> {
        let now = Instant::now();
        let server = match self.tried.last() {
            Some(last) if self.resend_same => Some(last.clone()),
            _ if self.attempts == 0 && self.sticky.is_some() => self.sticky.clone(),
            _ => view.pick(&self.pool.cfg.algorithm, key, &self.tried, now),
        }?;
        self.resend_same = false;
        if self.sticky_missed && self.attempts == 0 && self.resends == 0 {
            server.stats.redispatches.fetch_add(1, Ordering::Relaxed);
        }
        server.acquire();
        server.sent(now);
        Some(server)
    }

    /// The answer when no server is left: the last failure seen (counted as "no server").
    pub fn exhausted(&self, fe: &FrontendStats) -> Failure {
        fe.no_server.fetch_add(1, Ordering::Relaxed);
        self.last_failure
    }

    /// The server answered `status`; returns true when the answer is a gateway error to retry
    /// elsewhere (the attempt is then closed: the caller drops the response).
    pub fn answered(&mut self, server: &Arc<Server>, status: u16) -> bool {
        self.attempts += 1;
        if server.responded(Instant::now(), status, &self.pool.cfg) {
            self.pool.changed();
        }
        let retry = matches!(status, 502..=504) && self.may_retry(RetryOn::Gateway);
        if retry {
            server.release();
            self.note_retry(server.clone());
        }
        retry
    }

    /// An attempt on `server` failed for `why`: what to do next.
    pub fn failed(&mut self, server: Arc<Server>, why: AttemptError) -> Next {
        server.release();
        match why {
            AttemptError::Unsent if self.resends < MAX_RESENDS => {
                self.resends += 1;
                self.resend_same = true;
                self.tried.push(server);
                Next::Resend
            }
            AttemptError::Unsent => Next::Fail(Failure::Unsendable),
            AttemptError::Connect => {
                self.attempts += 1;
                if server.connect_failed(Instant::now(), &self.pool.cfg) {
                    self.pool.changed();
                }
                self.last_failure = Failure::Unreachable;
                // Nothing reached the server, so any method may go elsewhere.
                let cfg = &self.pool.cfg;
                if cfg.retries > 0
                    && self.attempts <= cfg.retries
                    && cfg.retry_on.contains(&RetryOn::ConnectFailure)
                {
                    self.note_retry(server);
                    Next::Elsewhere
                } else {
                    Next::Fail(Failure::Unreachable)
                }
            }
            AttemptError::NoResponse => {
                self.attempts += 1;
                server.stats.response_errors.fetch_add(1, Ordering::Relaxed);
                self.last_failure = Failure::ServerClosed;
                if self.may_retry(RetryOn::EmptyResponse) {
                    self.note_retry(server);
                    Next::Elsewhere
                } else {
                    Next::Fail(Failure::ServerClosed)
                }
            }
            AttemptError::BadResponse => {
                server.stats.response_errors.fetch_add(1, Ordering::Relaxed);
                Next::Fail(Failure::BadResponse)
            }
            AttemptError::Timeout => {
                server.stats.response_errors.fetch_add(1, Ordering::Relaxed);
                Next::Fail(Failure::Timeout)
            }
        }
    }

    fn may_retry(&self, why: RetryOn) -> bool {
        self.can_retry && self.attempts < self.max_attempts && self.pool.cfg.retry_on.contains(&why)
    }

    fn note_retry(&mut self, server: Arc<Server>) {
        self.retried += 1;
        server.stats.retries.fetch_add(1, Ordering::Relaxed);
        self.tried.push(server);
    }
}
