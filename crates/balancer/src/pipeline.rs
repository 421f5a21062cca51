//! The request pipeline, written once for every wire path.
//!
//! Whatever carried a request — the HTTP/1.1 fast path, hyper (HTTP/1 or HTTP/2), later
//! HTTP/3 — its adapter shows the head through [`RequestHead`] and the pipeline decides the
//! rest, the same way for all of them:
//!
//! 1. [`plan`]: the pool (Host and path routes), the hash key its algorithm reads, the sticky
//!    cookie the client holds, whether the request may be sent twice;
//! 2. [`upstream_head`]: the exact HTTP/1.1 head the server gets — hop-by-hop fields and the
//!    balancer's cookie dropped, `X-Forwarded-For/-Proto/-Port` added, framing made explicit;
//! 3. the response's fields ([`crate::codec::parse_response`], into the adapter's sink) and the
//!    sticky `Set-Cookie` ([`set_cookie`]);
//! 4. [`Txn`]: the record of the request — the frontend's, pool's and server's counters and
//!    the access-log line — kept as the request goes and written once when it ends.
//!
//! Adapters only move bytes and translate framing; a rule or a counter added here holds on
//! every protocol.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use http::Method;

use crate::access_log::{AccessLog, Record};
use crate::codec::{HeaderSink, is_hop_by_hop, itoa, push_ip};
use crate::config::Algorithm;
use crate::conn::ConnState;
use crate::frontend::{ConnCtx, Frontend};
use crate::pool::Pool;
use crate::server::Server;
use crate::sticky::{cookie_in, cookies_without};

/// What the pipeline reads of a request head, whatever protocol carried it.
pub(crate) trait RequestHead {
    /// The method.
    fn method(&self) -> &Method;
    /// The target in origin form (`/path?query`).
    fn target(&self) -> &str;
    /// The host routes match: the Host field, else the target's authority (HTTP/2).
    fn host(&self) -> Option<&str>;
    /// The authority to send as Host when the request carries no Host field (HTTP/2).
    fn authority(&self) -> Option<&str>;
    /// Every header field, in order (names in any case).
    fn fields(&self) -> impl Iterator<Item = (&str, &[u8])>;

    /// The first value of field `name`.
    fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// The values of every Cookie field.
    fn cookies(&self) -> impl Iterator<Item = &str> {
        self.fields()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
    }
}

impl RequestHead for http::request::Parts {
    fn method(&self) -> &Method {
        &self.method
    }

    fn target(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    fn host(&self) -> Option<&str> {
        self.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| self.uri.authority().map(|a| a.as_str()))
    }

    fn authority(&self) -> Option<&str> {
        self.uri.authority().map(|a| a.as_str())
    }

    fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()))
    }
}

/// What the pipeline decided for a request before any server is tried.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The pool it goes to.
    pub(crate) pool: Arc<Pool>,
    /// What the pool's hashing algorithm hashes (none for the others, or when it is missing).
    pub(crate) key: Option<Box<[u8]>>,
    /// The sticky cookie's value the client sent, when the pool sticks.
    pub(crate) sticky: Option<Box<str>>,
    /// The method may run twice (RFC 9110 §9.2.2): a request that may have reached a server
    /// can be retried elsewhere.
    pub(crate) idempotent: bool,
    /// `HEAD`: the answer has no body whatever it says.
    pub(crate) head_only: bool,
    /// The client asks to switch protocols (WebSocket): `Upgrade` goes upstream.
    pub(crate) upgrade: bool,
}

/// Routes a request and reads what its pool needs from it.
pub(crate) fn plan(fe: &Frontend, client: IpAddr, head: &impl RequestHead, upgrade: bool) -> Plan {
    let target = head.target();
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let pool = fe.pool_for(head.host(), path).clone();
    let sticky = pool.cfg.sticky_cookie.as_deref().and_then(|c| cookie_in(head.cookies(), c)).map(Box::from);
    let key = hash_key(&pool.cfg.algorithm, client, head).map(Box::from);
    let method = head.method();
    Plan { key, sticky, idempotent: is_idempotent(method), head_only: method == Method::HEAD, upgrade, pool }
}

/// The bytes a hashing algorithm hashes for a request (`None` when the algorithm does not
/// hash, or the request lacks what it hashes).
fn hash_key<'h>(
    algo: &Algorithm,
    client: IpAddr,
    head: &'h impl RequestHead,
) -> Option<std::borrow::Cow<'h, [u8]>> {
    use std::borrow::Cow;
    match algo {
        Algorithm::Source => Some(Cow::Owned(match client {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        })),
        Algorithm::Header(h) => head.field(h).map(Cow::Borrowed),
        Algorithm::Cookie(c) => cookie_in(head.cookies(), c).map(|v| Cow::Borrowed(v.as_bytes())),
        Algorithm::Uri => Some(Cow::Borrowed(head.target().as_bytes())),
        _ => None,
    }
}

/// How the body goes upstream, as the head announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body.
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Writes the HTTP/1.1 head that goes to the server for `head`: the request line in origin
/// form, the client's end-to-end fields in their order and case — without hop-by-hop fields
/// (and those `Connection` names), without the balancer's sticky cookie, without earlier
/// `X-Forwarded-Proto/-Port` — then `Host` for an HTTP/2 client, the client's other cookies,
/// `X-Forwarded-For` (earlier hops, then this client), `X-Forwarded-Proto`, `X-Forwarded-Port`,
/// the body's framing, and `Connection: upgrade` when the client asked to switch protocols.
pub(crate) fn upstream_head(
    head: &impl RequestHead,
    plan: &Plan,
    ctx: &ConnCtx,
    tls: bool,
    framing: BodyFraming,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(head.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let sticky_name = plan.pool.cfg.sticky_cookie.as_deref();
    // Fields the client's Connection names are its own hop-by-hop ones (rare: scanned only then).
    let named = |name: &str| {
        head.fields().filter(|(n, _)| n.eq_ignore_ascii_case("connection")).any(|(_, v)| {
            v.split(|&b| b == b',').map(<[u8]>::trim_ascii).any(|t| {
                t.eq_ignore_ascii_case(name.as_bytes())
                    && !(plan.upgrade && t.eq_ignore_ascii_case(b"upgrade"))
            })
        })
    };
    let mut connection_named = false;
    let mut forwarded_for: Vec<u8> = Vec::new();
    let mut has_host = false;
    for (name, value) in head.fields() {
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded_for.extend_from_slice(value);
            forwarded_for.extend_from_slice(b", ");
            continue;
        }
        if name.eq_ignore_ascii_case("connection") {
            connection_named |= value.split(|&b| b == b',').map(<[u8]>::trim_ascii).any(|t| {
                !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
            });
            continue;
        }
        let upgrade_field = plan.upgrade && name.eq_ignore_ascii_case("upgrade");
        if (is_hop_by_hop(name) && !upgrade_field)
            || name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("x-forwarded-proto")
            || name.eq_ignore_ascii_case("x-forwarded-port")
            || (sticky_name.is_some() && name.eq_ignore_ascii_case("cookie"))
            || (connection_named && named(name))
        {
            continue;
        }
        has_host |= name.eq_ignore_ascii_case("host");
        out.field(name.as_bytes(), value);
    }
    if !has_host && let Some(authority) = head.authority() {
        out.field(b"host", authority.as_bytes());
    }
    if let Some(name) = sticky_name {
        let mut kept = cookies_without(head.cookies(), name);
        if let Some(first) = kept.next() {
            let mut cookie = first.as_bytes().to_vec();
            for c in kept {
                cookie.extend_from_slice(b"; ");
                cookie.extend_from_slice(c.as_bytes());
            }
            out.field(b"cookie", &cookie);
        }
    }
    push_ip(&mut forwarded_for, ctx.client.ip());
    out.field(b"x-forwarded-for", &forwarded_for);
    out.field(b"x-forwarded-proto", if tls { b"https" } else { b"http" });
    out.field(b"x-forwarded-port", itoa(u64::from(ctx.local_port), &mut [0; 20]));
    match framing {
        BodyFraming::None => {}
        BodyFraming::Length(n) => out.field(b"content-length", itoa(n, &mut [0; 20])),
        BodyFraming::Chunked => out.field(b"transfer-encoding", b"chunked"),
    }
    if plan.upgrade {
        out.field(b"connection", b"upgrade");
    }
    out.extend_from_slice(b"\r\n");
}

/// The `Set-Cookie` value that sticks the client to `server`, unless its cookie already does:
/// the token made when the server joined the pool, never the member's name.
pub(crate) fn set_cookie<'s>(plan: &Plan, server: &'s Server) -> Option<&'s [u8]> {
    let already = plan.sticky.as_deref().is_some_and(|c| server.is_cookie(c));
    server.set_cookie.as_ref().filter(|_| !already).map(http::HeaderValue::as_bytes)
}

/// Whether a request with this method may be sent twice (RFC 9110 §9.2.2).
pub(crate) fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

/// One request's record, from its head to the end of its answer: it counts the request on
/// its frontend when it starts, and when it is dropped counts the answer, releases the server
/// it held and writes the access-log line. Every path keeps one per request.
#[derive(Debug)]
pub(crate) struct Txn {
    fe: Arc<Frontend>,
    state: Option<Arc<ConnState>>,
    log: Option<Arc<AccessLog>>,
    /// `METHOD TARGET VERSION`, kept only when requests are logged.
    request: String,
    client: SocketAddr,
    at: SystemTime,
    started: Instant,
    t_request: Duration,
    pool: Option<Arc<Pool>>,
    /// The server that answered; the request counts in its `active` until the answer ends.
    server: Option<Arc<Server>>,
    t_connect: Option<Duration>,
    t_response: Option<Duration>,
    status: u16,
    retries: u32,
    termination: [u8; 2],
    /// Body bytes sent to the client.
    bytes: u64,
    /// The answer reached its end.
    complete: bool,
}

impl Txn {
    /// A request whose head, complete at `started`, took `head_age` to arrive; `line` makes its
    /// request line (called only when requests are logged).
    pub(crate) fn begin(
        ctx: &ConnCtx,
        fe: Arc<Frontend>,
        started: Instant,
        head_age: Duration,
        line: impl FnOnce() -> String,
    ) -> Txn {
        if let Some(s) = &ctx.state {
            s.begin();
        }
        fe.stats.requests.fetch_add(1, Ordering::Relaxed);
        fe.stats.request_rate.hit(fe.stats.second(started));
        Txn {
            request: if ctx.log.is_some() { line() } else { String::new() },
            log: ctx.log.clone(),
            state: ctx.state.clone(),
            client: ctx.client,
            at: SystemTime::now(),
            started,
            t_request: head_age,
            pool: None,
            server: None,
            t_connect: None,
            t_response: None,
            status: 0,
            retries: 0,
            termination: *b"--",
            bytes: 0,
            complete: false,
            fe,
        }
    }

    /// The frontend it came in on.
    pub(crate) fn frontend(&self) -> &Arc<Frontend> {
        &self.fe
    }

    /// Request bytes received (head and body), for the frontend's counter.
    pub(crate) fn received(&self, bytes: u64) {
        self.fe.stats.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The pool it was routed to.
    pub(crate) fn routed(&mut self, pool: &Arc<Pool>) {
        self.pool = Some(pool.clone());
    }

    /// The balancer refused it: counted as denied, answered `status`.
    pub(crate) fn denied(&mut self, status: u16, termination: [u8; 2]) {
        self.fe.stats.denied.fetch_add(1, Ordering::Relaxed);
        self.answered_locally(status, termination);
    }

    /// The balancer answered it itself (`status`; HAProxy's termination state).
    pub(crate) fn answered_locally(&mut self, status: u16, termination: [u8; 2]) {
        self.status = status;
        self.termination = termination;
    }

    /// `server` answered `status`: the request holds its `active` count until dropped.
    pub(crate) fn answered(&mut self, server: Arc<Server>, status: u16, timing: crate::upstream::Timing) {
        self.status = status;
        self.t_connect = timing.connect;
        self.t_response = Some(timing.response);
        self.server = Some(server);
    }

    /// Retries the request needed.
    pub(crate) fn retried(&mut self, retries: u32) {
        self.retries = retries;
    }

    /// The status sent, when it changed after [`Txn::answered`] (a broken body answered 502).
    pub(crate) fn status(&mut self, status: u16, termination: [u8; 2]) {
        (self.status, self.termination) = (status, termination);
    }

    /// Body bytes sent to the client.
    pub(crate) fn sent(&mut self, bytes: u64) {
        self.bytes += bytes;
    }

    /// The answer reached its end.
    pub(crate) fn complete(&mut self) {
        self.complete = true;
    }

    /// Why the answer stopped short (HAProxy's termination state), when it did.
    pub(crate) fn cut(&mut self, termination: [u8; 2]) {
        if self.termination == *b"--" {
            self.termination = termination;
        }
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        let fe = &self.fe.stats;
        if self.status != 0 {
            fe.count_response(self.status);
        }
        fe.bytes_out.fetch_add(self.bytes, Ordering::Relaxed);
        if self.termination == *b"--" && !self.complete {
            // The answer did not reach its end: the client left (the paths say when a server broke it).
            self.termination = *b"CD";
        }
        if let Some(log) = &self.log {
            log.log(&Record {
                at: self.at,
                client: self.client,
                frontend: &self.fe.name,
                backend: self.pool.as_ref().map(|p| &*p.name),
                server: self.server.as_ref().map(|s| &*s.name),
                t_request: self.t_request,
                t_connect: self.t_connect,
                t_response: self.t_response,
                t_active: self.started.elapsed(),
                status: self.status,
                bytes: self.bytes,
                termination: self.termination,
                frontend_conns: fe.current_connections.load(Ordering::Relaxed),
                backend_conns: self.pool.as_ref().map_or(0, |p| p.active()),
                server_conns: self.server.as_ref().map_or(0, |s| s.active.load(Ordering::Relaxed)),
                retries: self.retries,
                request: &self.request,
            });
        }
        if let Some(s) = &self.server {
            s.release();
        }
        if let Some(s) = &self.state {
            s.end();
        }
    }
}
