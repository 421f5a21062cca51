//! Frontends: where a request is routed (Host and path prefix rules, first match wins, else
//! the default pool) and what each client connection carries to every request it makes.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::config::Timeouts;
use crate::conn::ConnState;
use crate::metrics::FrontendStats;
use crate::pool::Pool;

/// One compiled route.
#[derive(Debug)]
pub(crate) struct RouteRule {
    /// Lower-cased host; a leading `*.` matches subdomains.
    pub host: Option<String>,
    /// Path prefix.
    pub path_prefix: Option<String>,
    /// Target pool.
    pub pool: Arc<Pool>,
}

impl RouteRule {
    /// Whether a request for `host` (a Host value: any case, perhaps with a port) and `path`
    /// takes this route.
    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = match (&self.host, host.map(without_port)) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(want), Some(h)) => match want.strip_prefix("*.") {
                Some(suffix) => {
                    let (h, s) = (h.as_bytes(), suffix.as_bytes());
                    h.len() > s.len() + 1
                        && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
                        && h[h.len() - s.len() - 1] == b'.'
                }
                None => h.eq_ignore_ascii_case(want),
            },
        };
        host_ok && self.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
    }
}

/// A Host value without its port.
fn without_port(h: &str) -> &str {
    h.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(h, |(h, _)| h)
}

/// What a frontend needs on the request path.
#[derive(Debug)]
pub(crate) struct Frontend {
    /// Name, for stats and logs.
    pub name: Arc<str>,
    /// Routes, first match wins.
    pub routes: Vec<RouteRule>,
    /// Pool when nothing matches.
    pub default_pool: Arc<Pool>,
    /// Whether clients come in over TLS.
    pub tls: bool,
    /// HTTP/1.1 requests take the fast path.
    pub fast_path: bool,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Largest request body.
    pub max_body: u64,
    /// Largest request head.
    pub max_header: usize,
    /// Counters.
    pub stats: Arc<FrontendStats>,
}

impl Frontend {
    /// The pool for a request to `host` (a Host value) and `path`: the first route that
    /// matches, else the default pool.
    pub(crate) fn pool_for(&self, host: Option<&str>, path: &str) -> &Arc<Pool> {
        self.routes.iter().find(|r| r.matches(host, path)).map_or(&self.default_pool, |r| &r.pool)
    }
}

/// Per-connection context handed to every request.
#[derive(Clone)]
pub(crate) struct ConnCtx {
    /// The frontend (re-read on every request, so a reload applies to open connections).
    pub frontend: Arc<arc_swap::ArcSwap<Frontend>>,
    /// The client.
    pub client: SocketAddr,
    /// Shared with the guarded socket, once hyper serves the connection (the fast path needs
    /// none of it).
    pub state: Option<Arc<ConnState>>,
    /// The listener's port.
    pub local_port: u16,
    /// Where finished requests are logged.
    pub log: Option<Arc<AccessLog>>,
}

impl ConnCtx {
    /// Context for a new connection.
    pub(crate) fn new(
        frontend: Arc<arc_swap::ArcSwap<Frontend>>,
        client: SocketAddr,
        local_port: u16,
        log: Option<Arc<AccessLog>>,
    ) -> ConnCtx {
        ConnCtx { frontend, client, log, state: None, local_port }
    }

    /// The same connection, with the state hyper's guarded socket shares.
    pub(crate) fn for_hyper(&self) -> ConnCtx {
        ConnCtx { state: Some(Arc::new(ConnState::new())), ..self.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_host_and_prefix() {
        let pool =
            Arc::new(Pool::new(crate::config::PoolConfig::new("p", "backend", 80), 1, Default::default()));
        let r = |host: Option<&str>, prefix: Option<&str>| RouteRule {
            host: host.map(str::to_string),
            path_prefix: prefix.map(str::to_string),
            pool: pool.clone(),
        };
        assert!(r(Some("api.example.com"), None).matches(Some("api.example.com"), "/"));
        assert!(!r(Some("api.example.com"), None).matches(Some("www.example.com"), "/"));
        assert!(r(Some("*.example.com"), None).matches(Some("a.example.com"), "/"));
        assert!(!r(Some("*.example.com"), None).matches(Some("example.com"), "/"));
        assert!(!r(Some("*.example.com"), None).matches(Some("badexample.com"), "/"));
        assert!(
            r(Some("api.example.com"), None).matches(Some("API.Example.com:8080"), "/"),
            "any case, any port"
        );
        assert!(r(Some("*.example.com"), None).matches(Some("A.EXAMPLE.COM"), "/"));
        assert!(r(None, Some("/static/")).matches(None, "/static/x.css"));
        assert!(!r(None, Some("/static/")).matches(None, "/api"));
    }
}
