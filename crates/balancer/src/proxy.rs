//! The request path: route, pick a server, forward, retry, stick, answer.
//!
//! A request is matched to a pool by Host and path prefix, a server is picked
//! (its sticky cookie first, then the pool's algorithm), hop-by-hop headers are
//! dropped and `X-Forwarded-For/-Proto/-Port` added, and the request goes out
//! on a pooled connection. A failure to connect, or a connection that dies
//! before any response byte, is retried on another server for idempotent
//! methods (and for any method when the request provably never left). Upgrades
//! (WebSocket) are spliced through once the server answers 101.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::access_log::{AccessLog, Record};
use crate::config::Timeouts;
use crate::conn::ConnState;
use crate::escape::Esc;
use crate::limits::{BodyReport, LimitedBody};
use crate::pool::{Pool, Server, hash_key};
use crate::retry::{AttemptError, Attempts, Failure, Next};
use crate::sticky::cookies_without;
use crate::upstream::{ProxyBody, Timing, UpstreamBody, UpstreamError, exchange};

/// Bodies up to this size are buffered so idempotent requests can be retried.
const RETRY_BUFFER: u64 = 64 * 1024;

/// One compiled route.
#[derive(Debug)]
pub struct RouteRule {
    /// Lower-cased host; a leading `*.` matches subdomains.
    pub host: Option<String>,
    /// Path prefix.
    pub path_prefix: Option<String>,
    /// Target pool.
    pub pool: Arc<Pool>,
}

impl RouteRule {
    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(want), Some(h)) => match want.strip_prefix("*.") {
                Some(suffix) => {
                    h.len() > suffix.len() + 1
                        && h.ends_with(suffix)
                        && h.as_bytes()[h.len() - suffix.len() - 1] == b'.'
                }
                None => h == want,
            },
        };
        host_ok && self.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
    }
}

/// What a frontend needs on the request path.
#[derive(Debug)]
pub struct Frontend {
    /// Name, for stats and logs.
    pub name: Arc<str>,
    /// Routes, first match wins.
    pub routes: Vec<RouteRule>,
    /// Pool when nothing matches.
    pub default_pool: Arc<Pool>,
    /// Whether clients come in over TLS.
    pub tls: bool,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Largest request body.
    pub max_body: u64,
    /// Counters.
    pub stats: Arc<FrontendStats>,
}

/// Frontend counters.
#[derive(Debug, Default)]
pub struct FrontendStats {
    /// Requests received.
    pub requests: std::sync::atomic::AtomicU64,
    /// Requests refused (smuggling, too large, malformed).
    pub denied: std::sync::atomic::AtomicU64,
    /// Requests no server could take.
    pub no_server: std::sync::atomic::AtomicU64,
    /// Connections accepted.
    pub connections: std::sync::atomic::AtomicU64,
    /// Connections open now.
    pub current_connections: std::sync::atomic::AtomicU64,
    /// Most connections open at once.
    pub max_connections: std::sync::atomic::AtomicU64,
    /// Responses by class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [std::sync::atomic::AtomicU64; 5],
    /// Request bytes received (bodies).
    pub bytes_in: std::sync::atomic::AtomicU64,
    /// Response bytes sent (bodies).
    pub bytes_out: std::sync::atomic::AtomicU64,
    /// Requests per second.
    pub request_rate: crate::pool::Rate,
    /// Connections per second.
    pub connection_rate: crate::pool::Rate,
    /// Number within the balancer (HAProxy's `iid`).
    pub id: std::sync::atomic::AtomicU32,
    /// When counting started (for rates).
    pub epoch: std::sync::OnceLock<Instant>,
}

impl FrontendStats {
    /// Seconds since counting started, for [`crate::pool::Rate`].
    pub fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(*self.epoch.get_or_init(Instant::now)).as_secs()
    }
}

impl FrontendStats {
    /// Counts a response sent with `status`.
    pub fn count_response(&self, status: u16) {
        self.responses[usize::from((status / 100).clamp(1, 5) - 1)].fetch_add(1, Ordering::Relaxed);
    }
}

/// A Host header's host, as routes match it: lower-case, without a port.
pub(crate) fn route_host(h: &str) -> String {
    h.rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(h, |(h, _)| h)
        .to_ascii_lowercase()
}

impl Frontend {
    pub(crate) fn pool_for(&self, host: Option<&str>, path: &str) -> &Arc<Pool> {
        self.routes.iter().find(|r| r.matches(host, path)).map_or(&self.default_pool, |r| &r.pool)
    }
}

/// Per-connection context handed to every request.
#[derive(Clone)]
pub struct ConnCtx {
    /// The frontend (re-read on every request, so a reload applies to open connections).
    pub frontend: Arc<arc_swap::ArcSwap<Frontend>>,
    /// The client.
    pub client: SocketAddr,
    /// The listener's port.
    pub local_port: u16,
    /// Shared with the guarded socket.
    pub state: Arc<ConnState>,
    /// The client's IP as a header value (made once per connection).
    pub client_ip: HeaderValue,
    /// The listener's port as a header value.
    pub port_value: HeaderValue,
    /// Where finished requests are logged.
    pub log: Option<Arc<AccessLog>>,
}

impl ConnCtx {
    /// Context for a new connection.
    pub fn new(
        frontend: Arc<arc_swap::ArcSwap<Frontend>>,
        client: SocketAddr,
        local_port: u16,
        log: Option<Arc<AccessLog>>,
    ) -> ConnCtx {
        ConnCtx {
            frontend,
            client,
            local_port,
            log,
            state: Arc::new(ConnState::new()),
            client_ip: HeaderValue::from_str(&client.ip().to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
            port_value: HeaderValue::from(local_port),
        }
    }
}

/// Response bodies we hand to hyper: from a server, or made here.
pub enum RespBody {
    /// Streamed from a server.
    Upstream(UpstreamBody),
    /// Generated locally.
    Local(Full<Bytes>),
}

/// A response body that tells the connection when the request is over, and
/// counts and logs the request when its body is done.
pub struct GuardedBody {
    body: RespBody,
    guard: RequestGuard,
}

struct RequestGuard {
    state: Arc<ConnState>,
    server: Option<Arc<Server>>,
    frontend: Arc<Frontend>,
    bytes: u64,
    /// The body reached its end (set from `is_end_stream`, which takes `&self`).
    finished: std::cell::Cell<bool>,
    server_broke: bool,
    log: Option<Box<PendingLog>>,
}

/// What the access log needs from a request while its response is still streaming.
struct PendingLog {
    sink: Arc<AccessLog>,
    record: Record,
    started: Instant,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.state.end();
        self.frontend.stats.bytes_out.fetch_add(self.bytes, Ordering::Relaxed);
        if let Some(s) = &self.server {
            s.active.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(mut p) = self.log.take() {
            let r = &mut p.record;
            r.bytes = self.bytes;
            r.t_active = p.started.elapsed();
            if r.termination == *b"--" && !self.finished.get() {
                // The body did not reach its end: the server broke it, or the client left.
                r.termination = if self.server_broke { *b"SD" } else { *b"CD" };
            }
            r.frontend_conns = self.frontend.stats.current_connections.load(Ordering::Relaxed);
            if let Some(s) = &self.server {
                r.server_conns = s.active.load(Ordering::Relaxed) + 1;
            }
            p.sink.log(std::mem::replace(r, Record::placeholder()));
        }
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.body {
            RespBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            RespBody::Local(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.guard.bytes += d.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => this.guard.server_broke = true,
            Poll::Ready(None) => this.guard.finished.set(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = match &self.body {
            RespBody::Upstream(b) => b.is_end_stream(),
            RespBody::Local(b) => b.is_end_stream(),
        };
        // hyper stops polling a body that says it has ended: that is its end too.
        if end {
            self.guard.finished.set(true);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            RespBody::Upstream(b) => b.size_hint(),
            RespBody::Local(b) => b.size_hint(),
        }
    }
}

pub use crate::sticky::cookie_value;

/// Removes cookie `name` from the request (the server never sees the balancer's cookie).
fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let values = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
    let kept = cookies_without(values, name).collect::<Vec<_>>().join("; ");
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept)
    {
        headers.insert(header::COOKIE, v);
    }
}

/// Whether a header (any case) belongs to one connection and is never forwarded.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    ["connection", "te", "trailer", "transfer-encoding", "upgrade", "keep-alive", "proxy-connection"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// Drops hop-by-hop headers (and those the Connection header names); keeps Upgrade when asked.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names: most messages carry none of these.
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if is_hop_by_hop(name.as_str())
            && !(keep_upgrade && (*name == header::UPGRADE || *name == header::CONNECTION))
        {
            doomed.push(name.clone());
        }
    }
    if doomed.is_empty() {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && *n == header::UPGRADE))
        .collect();
    for n in doomed.iter().chain(&named) {
        headers.remove(n);
    }
}

pub(crate) fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// A locally generated answer.
pub fn local(status: StatusCode, body: &'static str, close: bool) -> Response<RespBody> {
    let mut r = Response::new(RespBody::Local(Full::new(Bytes::from_static(body.as_bytes()))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if close {
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// The balancer's own answer for a failed forward.
fn local_failure(f: Failure) -> Response<RespBody> {
    let (status, text) = f.answer();
    local(status, text, false)
}

/// What forwarding a request came to.
struct Forwarded {
    resp: Response<RespBody>,
    server: Option<Arc<Server>>,
    pool: Option<Arc<Pool>>,
    timing: Timing,
    answered: bool,
    retries: u32,
    /// HAProxy's termination state when the request ended here (`--` otherwise).
    termination: [u8; 2],
}

impl Forwarded {
    /// A local answer: `why` is the termination state (`PR`: refused by the proxy, …).
    fn local(resp: Response<RespBody>, pool: Option<Arc<Pool>>, termination: &[u8; 2]) -> Forwarded {
        let timing = Timing::default();
        Forwarded { resp, server: None, pool, timing, answered: false, retries: 0, termination: *termination }
    }
}

fn guard(
    f: Forwarded,
    ctx: &ConnCtx,
    frontend: Arc<Frontend>,
    log: Option<Box<PendingLog>>,
) -> Response<GuardedBody> {
    let status = f.resp.status().as_u16();
    frontend.stats.count_response(status);
    let log = log.map(|mut p| {
        let r = &mut p.record;
        r.status = status;
        r.backend = f.pool.as_ref().map(|p| p.name.clone());
        r.server = f.server.as_ref().map(|s| s.name.clone());
        r.t_connect = f.timing.connect;
        r.t_response = f.answered.then_some(f.timing.response);
        r.termination = f.termination;
        r.retries = f.retries;
        r.backend_conns = f
            .pool
            .as_ref()
            .map_or(0, |p| p.view().servers.iter().map(|s| s.active.load(Ordering::Relaxed)).sum());
        p
    });
    let (parts, body) = f.resp.into_parts();
    let guard = RequestGuard {
        state: ctx.state.clone(),
        server: f.server,
        frontend,
        bytes: 0,
        finished: std::cell::Cell::new(false),
        server_broke: false,
        log,
    };
    Response::from_parts(parts, GuardedBody { body, guard })
}

/// Handles one client request.
pub async fn handle(req: Request<Incoming>, ctx: ConnCtx) -> Result<Response<GuardedBody>, Infallible> {
    ctx.state.begin();
    let frontend = ctx.frontend.load_full();
    let now = Instant::now();
    frontend.stats.requests.fetch_add(1, Ordering::Relaxed);
    frontend.stats.request_rate.hit(frontend.stats.second(now));
    let log = ctx.log.as_ref().map(|sink| {
        let record = Record {
            at: std::time::SystemTime::now(),
            client: ctx.client,
            frontend: frontend.name.clone(),
            t_request: ctx.state.head_age(now),
            request: format!("{} {} {:?}", req.method(), req.uri(), req.version()),
            ..Record::placeholder()
        };
        Box::new(PendingLog { sink: sink.clone(), record, started: now })
    });
    if ctx.state.smuggling.load(Ordering::Relaxed) {
        frontend.stats.denied.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(client = %ctx.client, "request with both Content-Length and Transfer-Encoding refused");
        let resp = local(StatusCode::BAD_REQUEST, "Bad request: ambiguous message length\n", true);
        return Ok(guard(Forwarded::local(resp, None, b"PR"), &ctx, frontend, log));
    }
    if let Some(why) = host_problem(&req, frontend.tls) {
        frontend.stats.denied.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(client = %ctx.client, why, "request refused");
        let resp = local(StatusCode::BAD_REQUEST, why, true);
        return Ok(guard(Forwarded::local(resp, None, b"PR"), &ctx, frontend, log));
    }
    let forwarded = forward(req, &ctx, &frontend).await;
    Ok(guard(forwarded, &ctx, frontend, log))
}

/// What is wrong with a request's Host, if anything, as the 400's text: more than one Host
/// header (HAProxy refuses it), or a target's authority (absolute form, HTTP/2's `:authority`)
/// that names another host than the Host header (RFC 9112 §3.2.2: the authority decides; a
/// proxy that routed by Host would send the request where the client did not mean to).
fn host_problem<B>(req: &Request<B>, tls: bool) -> Option<&'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next()?;
    if hosts.next().is_some() {
        return Some("Bad request: more than one Host header\n");
    }
    let authority = req.uri().authority()?;
    let Some(host) = host.to_str().ok().and_then(|h| h.parse::<http::uri::Authority>().ok()) else {
        return Some("Bad request: invalid Host header\n");
    };
    let default_port = match req.uri().scheme_str() {
        Some("https") => 443,
        Some("http") => 80,
        _ if tls => 443,
        _ => 80,
    };
    let port = |a: &http::uri::Authority| a.port_u16().unwrap_or(default_port);
    let same = authority.host().eq_ignore_ascii_case(host.host()) && port(authority) == port(&host);
    (!same).then_some("Bad request: the target's authority and the Host header differ\n")
}

/// The size of a request's head on the wire (HTTP/1), for the `bin` counters.
fn head_len<B>(req: &Request<B>) -> u64 {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let headers: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    (line + headers + 2) as u64
}

async fn forward(req: Request<Incoming>, ctx: &ConnCtx, fe: &Frontend) -> Forwarded {
    let head_bytes = head_len(&req);
    fe.stats.bytes_in.fetch_add(head_bytes, Ordering::Relaxed);
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > fe.max_body) {
        fe.stats.denied.fetch_add(1, Ordering::Relaxed);
        return Forwarded::local(
            local(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large\n", true),
            None,
            b"PR",
        );
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .map(route_host);
    let pool = fe.pool_for(host.as_deref(), req.uri().path()).clone();
    let fail = |resp: Response<RespBody>, why: &[u8; 2]| Forwarded::local(resp, Some(pool.clone()), why);
    let upgrade = wants_upgrade(&req);
    let mut req = req;
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    // Host for HTTP/2 clients, which send :authority instead.
    if !parts.headers.contains_key(header::HOST)
        && let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if upgrade {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    add_forwarded(&mut parts.headers, &ctx.client_ip, fe.tls, &ctx.port_value);
    let sticky_name = pool.cfg.sticky_cookie.clone();
    let sticky_target =
        sticky_name.as_deref().and_then(|c| cookie_value(&parts.headers, c)).map(str::to_string);
    if let Some(c) = &sticky_name {
        strip_cookie(&mut parts.headers, c);
    }
    let mut scratch = Vec::new();
    let key: Option<Vec<u8>> =
        hash_key(&pool.cfg.algorithm, ctx.client.ip(), &parts, &mut scratch).map(<[u8]>::to_vec);
    // Origin form upstream; HTTP/1 clients usually sent it already (no re-parse then).
    if parts.uri.authority().is_some()
        && let Some(pq) = parts.uri.path_and_query()
        && let Ok(uri) = pq.as_str().parse()
    {
        parts.uri = uri;
    }

    let retry_allowed = is_idempotent(&parts.method) && !upgrade;
    let report = Arc::new(BodyReport::default());
    let no_body = body.is_end_stream() || declared == Some(0);
    let mut buffered: Option<Bytes> = None;
    let mut stream: Option<Incoming> = None;
    if no_body {
        buffered = Some(Bytes::new());
    } else if retry_allowed && declared.is_some_and(|n| n <= RETRY_BUFFER) {
        match Limited::new(body, RETRY_BUFFER as usize).collect().await {
            Ok(b) => buffered = Some(b.to_bytes()),
            Err(_) => {
                fe.stats.denied.fetch_add(1, Ordering::Relaxed);
                return fail(local(StatusCode::BAD_REQUEST, "Bad request body\n", true), b"CR");
            }
        }
    } else {
        stream = Some(body);
    }
    if let Some(b) = &buffered {
        fe.stats.bytes_in.fetch_add(b.len() as u64, Ordering::Relaxed);
    }
    let view = pool.view();
    let mut tries =
        Attempts::new(&pool, &view, retry_allowed && buffered.is_some(), sticky_target.as_deref());
    let mut head = Some(Head { method: parts.method, uri: parts.uri, headers: parts.headers });
    let timeouts = &fe.timeouts;
    // A request that never reached a server, to send again as it is.
    let mut carried: Option<Request<ProxyBody>> = None;
    loop {
        let Some(server) = tries.next_server(&view, key.as_deref()) else {
            let why = tries.exhausted(&fe.stats);
            let mut f = fail(local_failure(why), &why.termination());
            f.retries = tries.retried();
            return f;
        };
        let req = match carried.take() {
            Some(r) => r,
            None => {
                let body = match (&buffered, stream.take()) {
                    (Some(b), _) => ProxyBody::Buffered(Full::new(b.clone())),
                    (None, Some(s)) => ProxyBody::Stream(LimitedBody::new(s, fe.max_body, report.clone())),
                    (None, None) => ProxyBody::Buffered(Full::new(Bytes::new())),
                };
                // Keep a copy of the head only while another attempt is possible.
                let h = if tries.may_need_copy() { head.clone() } else { head.take() };
                h.unwrap_or_default().into_request(body)
            }
        };
        server.stats.bytes_in.fetch_add(head_bytes, Ordering::Relaxed);
        if let Some(b) = &buffered {
            server.stats.bytes_in.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        let failure = match exchange(&server, req, timeouts.connect, timeouts.server).await {
            Ok((resp, conn, timing)) => {
                if tries.answered(&server, resp.status().as_u16()) {
                    continue;
                }
                let resp = finish(
                    resp,
                    conn,
                    &server,
                    sticky_name.as_deref(),
                    sticky_target.as_deref(),
                    client_upgrade,
                );
                return Forwarded {
                    resp,
                    server: Some(server),
                    pool: Some(pool.clone()),
                    timing,
                    answered: true,
                    retries: tries.retried(),
                    termination: *b"--",
                };
            }
            Err(e) => e,
        };
        // A client body that broke, ran over the limit or could not be sent is the client's
        // fault, whatever hyper called it.
        let client_fault = if report.too_large.load(Ordering::Relaxed) {
            Some((StatusCode::PAYLOAD_TOO_LARGE, "Payload too large\n", b"PR"))
        } else if report.broken.load(Ordering::Relaxed) || matches!(failure, UpstreamError::ClientBody(_)) {
            Some((StatusCode::BAD_REQUEST, "Bad request body\n", b"CD"))
        } else {
            None
        };
        if let Some((status, text, why)) = client_fault {
            server.active.fetch_sub(1, Ordering::Relaxed);
            fe.stats.denied.fetch_add(1, Ordering::Relaxed);
            return fail(local(status, text, true), why);
        }
        tracing::debug!(server = %Esc(&server.name), error = %failure, "upstream attempt failed");
        let why = match failure {
            UpstreamError::Unsent(req, _) => {
                carried = Some(*req);
                AttemptError::Unsent
            }
            UpstreamError::Connect(req, _) => {
                carried = Some(*req);
                AttemptError::Connect
            }
            // (ClientBody was answered above as the client's fault.)
            UpstreamError::NoResponse(_) | UpstreamError::ServerFailed | UpstreamError::ClientBody(_) => {
                AttemptError::NoResponse
            }
            UpstreamError::BadResponse(_) => AttemptError::BadResponse,
            UpstreamError::Timeout => AttemptError::Timeout,
        };
        match tries.failed(server, why) {
            Next::Resend | Next::Elsewhere => {}
            Next::Fail(f) => {
                let mut out = fail(local_failure(f), &f.termination());
                out.retries = tries.retried();
                return out;
            }
        }
    }
}

/// What is needed to (re)build the upstream request.
#[derive(Debug, Clone, Default)]
struct Head {
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
}

impl Head {
    fn into_request(self, body: ProxyBody) -> Request<ProxyBody> {
        let mut r = Request::new(body);
        *r.method_mut() = self.method;
        *r.uri_mut() = self.uri;
        *r.headers_mut() = self.headers;
        r
    }
}

fn add_forwarded(headers: &mut HeaderMap, client_ip: &HeaderValue, tls: bool, port: &HeaderValue) {
    let xff = HeaderName::from_static("x-forwarded-for");
    // Earlier hops, in order, then this client.
    let mut v = Vec::new();
    for prev in headers.get_all(&xff) {
        v.extend_from_slice(prev.as_bytes());
        v.extend_from_slice(b", ");
    }
    v.extend_from_slice(client_ip.as_bytes());
    headers.insert(xff, HeaderValue::from_bytes(&v).unwrap_or_else(|_| client_ip.clone()));
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    headers.insert(HeaderName::from_static("x-forwarded-port"), port.clone());
}

fn finish(
    resp: Response<Incoming>,
    conn: crate::upstream::Upstream,
    server: &Arc<Server>,
    sticky: Option<&str>,
    sticky_was: Option<&str>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<RespBody> {
    let mut resp = resp;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let server_upgrade = hyper::upgrade::on(&mut resp);
        let name = server.name.clone();
        tokio::spawn(async move {
            match (client_upgrade.await, server_upgrade.await) {
                (Ok(c), Ok(s)) => {
                    let mut c = hyper_util::rt::TokioIo::new(c);
                    let mut s = hyper_util::rt::TokioIo::new(s);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut s).await {
                        tracing::debug!(server = %Esc(&name), error = %e, "upgraded connection ended");
                    }
                }
                (c, s) => {
                    tracing::debug!(server = %Esc(&name), client = c.is_ok(), backend = s.is_ok(), "upgrade failed")
                }
            }
        });
        let (parts, body) = resp.into_parts();
        return Response::from_parts(
            parts,
            RespBody::Upstream(UpstreamBody::new(body, server.clone(), None)),
        );
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    // The token made when the server joined the pool, never the member's name.
    if sticky.is_some()
        && !sticky_was.is_some_and(|c| server.is_cookie(c))
        && let Some(v) = &server.set_cookie
    {
        parts.headers.append(header::SET_COOKIE, v.clone());
        parts.headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    }
    Response::from_parts(parts, RespBody::Upstream(UpstreamBody::new(body, server.clone(), Some(conn))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_named_ones_too() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-app"));
    }

    #[test]
    fn cookies_are_read_and_stripped() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; SERVERID=web-2; NODESESSID=xyz"));
        assert_eq!(cookie_value(&h, "SERVERID"), Some("web-2"));
        strip_cookie(&mut h, "SERVERID");
        assert_eq!(h[header::COOKIE], "a=1; NODESESSID=xyz");
        strip_cookie(&mut h, "a");
        strip_cookie(&mut h, "NODESESSID");
        assert!(!h.contains_key(header::COOKIE));
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        add_forwarded(&mut h, &HeaderValue::from_static("10.0.0.9"), true, &HeaderValue::from(443u16));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-port"], "443");
    }

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
        assert!(r(None, Some("/static/")).matches(None, "/static/x.css"));
        assert!(!r(None, Some("/static/")).matches(None, "/api"));
    }
}
