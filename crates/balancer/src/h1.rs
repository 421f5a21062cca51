//! The HTTP/1.1 fast path: bodiless keep-alive requests proxied straight from their head bytes.
//!
//! The common request — HTTP/1.1, no body, an origin-form target, one Host — is parsed with
//! `httparse` and forwarded as bytes: hop-by-hop headers dropped, the sticky cookie taken out,
//! `X-Forwarded-For/-Proto/-Port` appended, no header map built. The server's response head is
//! rewritten the same way and its body relayed by its framing (length, chunked, or up to the
//! end of the connection) over plain pooled sockets. Between requests a connection holds no
//! buffer at all.
//!
//! Anything else — a body, an upgrade, `Expect`, HTTP/1.0, HTTP/2, a head too large or
//! malformed — is handed, with the bytes read so far, to the general (hyper) path, which then
//! serves the rest of the connection with every check it makes (413, 431, smuggling 400s).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::access_log::Record;
use crate::conn::{IoTimeouts, LazyTimer, RESPONSE_408};
use crate::escape::Esc;
use crate::pool::{KeySource, Pool, Server, hash_key};
use crate::proxy::{ConnCtx, Frontend, is_hop_by_hop, is_idempotent, route_host};
use crate::retry::{AttemptError, Attempts, Failure, Next};
use crate::sticky::{cookie_in, cookies_without};
use crate::upstream::{RawConn, Timing, dial};

/// Headers parsed per message; a request with more goes to the general path.
const MAX_HEADERS: usize = 64;
/// Room made for each read.
const READ_SIZE: usize = 8 * 1024;
/// Largest response head taken from a server.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A client connection the balancer can serve: a byte stream that can also say when a read
/// would find data, so an idle connection waits without a buffer.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when a read would not block (streams that cannot tell are always ready).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }
}

impl ClientIo for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

impl ClientIo for tokio::io::DuplexStream {}

/// How the fast path left a connection.
pub(crate) enum Served {
    /// It is over.
    Closed,
    /// A request the fast path does not serve arrived: these bytes of it (and whatever
    /// follows on the connection) are for the general path.
    Handoff(Vec<u8>),
}

/// Serves requests on `io` until the connection ends or one needs the general path.
pub(crate) async fn serve<S: ClientIo>(
    io: &mut S,
    ctx: &ConnCtx,
    max_header: usize,
    timeouts: IoTimeouts,
    shutdown: &mut watch::Receiver<bool>,
) -> Served {
    let mut buf: Vec<u8> = Vec::new();
    let mut timer = LazyTimer::new();
    let mut idle_since = Instant::now();
    let mut first = true;
    loop {
        if buf.is_empty() {
            buf = Vec::new(); // an idle connection holds no buffer
            let wait = if first { timeouts.request_headers } else { timeouts.keepalive };
            match wait_readable(io, &mut timer, idle_since + wait, shutdown).await {
                Wake::Readable => {}
                Wake::Closed => return Served::Closed,
                Wake::Timeout => {
                    ctx.state.timed_out.store(true, Ordering::Relaxed);
                    return Served::Closed;
                }
            }
        }
        let head_started = Instant::now();
        let deadline = head_started + timeouts.request_headers;
        let frontend = ctx.frontend.load_full();
        let request = loop {
            match examine(&buf, ctx, &frontend, max_header) {
                Examined::Ready(r) => break r,
                Examined::Partial if buf.len() < max_header => {}
                Examined::Partial | Examined::Refused => return Served::Handoff(buf),
            }
            match read_until(io, &mut buf, &mut timer, deadline).await {
                Ok(Some(0)) | Err(_) => return Served::Closed,
                Ok(Some(_)) => {}
                Ok(None) if buf.is_empty() => {
                    // Woken, yet nothing came: an idle connection, closed without a word.
                    ctx.state.timed_out.store(true, Ordering::Relaxed);
                    return Served::Closed;
                }
                Ok(None) => {
                    ctx.state.timed_out.store(true, Ordering::Relaxed);
                    tracing::debug!(client = %ctx.client, "request head incomplete after {:?}: 408", timeouts.request_headers);
                    send(io, RESPONSE_408, timeouts.client).await;
                    return Served::Closed;
                }
            }
        };
        let consumed = request.head_len;
        let close = request.close || *shutdown.borrow();
        let head_age = head_started.elapsed();
        // Boxed: between requests the connection's task then holds a pointer, not a request.
        let keep = Box::pin(proxy(io, ctx, &frontend, request, head_age, close)).await;
        if !keep {
            return Served::Closed;
        }
        buf.drain(..consumed);
        first = false;
        idle_since = Instant::now();
    }
}

enum Wake {
    Readable,
    Closed,
    Timeout,
}

/// Waits, holding no buffer, until the client sends something, the idle deadline passes or
/// the balancer shuts down.
async fn wait_readable<S: ClientIo>(
    io: &S,
    timer: &mut LazyTimer,
    deadline: Instant,
    shutdown: &mut watch::Receiver<bool>,
) -> Wake {
    if *shutdown.borrow() {
        return Wake::Closed;
    }
    let mut stop = std::pin::pin!(shutdown.changed());
    poll_fn(|cx| {
        if let Poll::Ready(r) = io.poll_read_ready(cx) {
            return Poll::Ready(if r.is_ok() { Wake::Readable } else { Wake::Closed });
        }
        if stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Wake::Closed);
        }
        timer.poll_expired(cx, deadline).map(|()| Wake::Timeout)
    })
    .await
}

/// Writes `bytes` to the client; false when it failed or the client took in nothing for
/// `inactivity` (HAProxy's `timeout client`).
async fn send<S: AsyncWrite + Unpin>(io: &mut S, bytes: &[u8], inactivity: Duration) -> bool {
    let mut rest = bytes;
    while !rest.is_empty() {
        match tokio::time::timeout(inactivity, io.write(rest)).await {
            Ok(Ok(n)) if n > 0 => rest = &rest[n..],
            _ => return false,
        }
    }
    true
}

/// Reads more into `buf` before `deadline`: the count read (0 at end of stream), or `None` when
/// the deadline passed first.
async fn read_until<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
    timer: &mut LazyTimer,
    deadline: Instant,
) -> io::Result<Option<usize>> {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
    tokio::select! {
        biased;
        r = io.read_buf(buf) => r.map(Some),
        () = poll_fn(|cx| timer.poll_expired(cx, deadline)) => Ok(None),
    }
}

/// A request head the fast path will serve, made ready to send.
struct Request {
    /// Length of the head in the client's buffer.
    head_len: usize,
    method: Method,
    /// The head to send upstream.
    upstream: Vec<u8>,
    pool: Arc<Pool>,
    key: Option<Vec<u8>>,
    sticky_target: Option<String>,
    /// The client asked to close after this request.
    close: bool,
    /// `METHOD TARGET HTTP/1.1`, when requests are logged.
    line: Option<String>,
}

enum Examined {
    Ready(Request),
    Partial,
    Refused,
}

/// A parsed request head, as a hash key is read from it.
struct RawHead<'h, 'b> {
    headers: &'h [httparse::Header<'b>],
    target: &'b str,
}

impl<'b> RawHead<'_, 'b> {
    fn values<'n>(&self, name: &'n str) -> impl Iterator<Item = &'b [u8]> + use<'_, 'b, 'n> {
        self.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }

    fn cookies(&self) -> impl Iterator<Item = &'b str> + use<'_, 'b> {
        self.values("cookie").filter_map(|v| std::str::from_utf8(v).ok())
    }
}

impl KeySource for RawHead<'_, '_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.values(name).next()
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        cookie_in(self.cookies(), name)
    }

    fn target(&self) -> Option<&[u8]> {
        Some(self.target.as_bytes())
    }
}

/// Parses what `buf` holds of a request head and, when it is complete and the fast path
/// serves it, routes it and builds the head to send upstream.
fn examine(buf: &[u8], ctx: &ConnCtx, fe: &Frontend, max_header: usize) -> Examined {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= max_header => n,
        Ok(httparse::Status::Partial) => return Examined::Partial,
        _ => return Examined::Refused,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Examined::Refused;
    };
    if !target.starts_with('/') {
        return Examined::Refused;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Examined::Refused };
    let head = RawHead { headers: &*req.headers, target };
    let (mut host, mut hosts, mut lengths, mut close) = (None, 0, 0, false);
    for h in head.headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = std::str::from_utf8(h.value).ok();
        } else if name.eq_ignore_ascii_case("content-length") {
            // Only an explicit empty body; a body, and the checks it needs, are the general path's.
            lengths += 1;
            if h.value != b"0" {
                return Examined::Refused;
            }
        } else if ["transfer-encoding", "upgrade", "expect"].iter().any(|n| name.eq_ignore_ascii_case(n)) {
            return Examined::Refused;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                    // A header named as hop-by-hop: the general path strips those.
                    return Examined::Refused;
                }
            }
        }
    }
    let (Some(host), 1, 0..=1) = (host, hosts, lengths) else { return Examined::Refused };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let pool = fe.pool_for(Some(&route_host(host)), path).clone();
    let sticky_name = pool.cfg.sticky_cookie.as_deref();
    let sticky_target = sticky_name.and_then(|c| head.cookie(c)).map(str::to_string);
    let mut scratch = Vec::new();
    let key = hash_key(&pool.cfg.algorithm, ctx.client.ip(), &head, &mut scratch).map(<[u8]>::to_vec);

    let mut out = Vec::with_capacity(head_len + 128);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded_for = Vec::new();
    for h in head.headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded_for.extend_from_slice(h.value);
            forwarded_for.extend_from_slice(b", ");
            continue;
        }
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("x-forwarded-proto")
            || name.eq_ignore_ascii_case("x-forwarded-port")
            || (sticky_name.is_some() && name.eq_ignore_ascii_case("cookie"))
        {
            continue;
        }
        push_header(&mut out, name.as_bytes(), h.value);
    }
    if let Some(name) = sticky_name {
        let kept = cookies_without(head.cookies(), name).collect::<Vec<_>>().join("; ");
        if !kept.is_empty() {
            push_header(&mut out, b"cookie", kept.as_bytes());
        }
    }
    forwarded_for.extend_from_slice(ctx.client_ip.as_bytes());
    push_header(&mut out, b"x-forwarded-for", &forwarded_for);
    push_header(&mut out, b"x-forwarded-proto", if fe.tls { b"https" } else { b"http" });
    push_header(&mut out, b"x-forwarded-port", ctx.port_value.as_bytes());
    out.extend_from_slice(b"\r\n");
    let line = ctx.log.as_ref().map(|_| format!("{method} {target} HTTP/1.1"));
    Examined::Ready(Request { head_len, method, upstream: out, pool, key, sticky_target, close, line })
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How the request ended, for the counters and the access log.
struct Outcome {
    status: u16,
    server: Option<Arc<Server>>,
    timing: Timing,
    answered: bool,
    termination: [u8; 2],
    /// Body bytes sent to the client.
    bytes: u64,
    /// Retries it took.
    retries: u32,
    /// The client connection can take another request.
    keep: bool,
}

impl Outcome {
    fn after(mut self, tries: &Attempts<'_>) -> Outcome {
        self.retries = tries.retried();
        self
    }
}

/// Forwards one request and relays the answer; returns whether the connection stays open.
async fn proxy<S: ClientIo>(
    io: &mut S,
    ctx: &ConnCtx,
    fe: &Frontend,
    req: Request,
    head_age: Duration,
    close: bool,
) -> bool {
    ctx.state.begin();
    let started = std::time::Instant::now();
    let at = std::time::SystemTime::now();
    fe.stats.requests.fetch_add(1, Ordering::Relaxed);
    fe.stats.request_rate.hit(fe.stats.second(started));
    fe.stats.bytes_in.fetch_add(req.head_len as u64, Ordering::Relaxed);
    let out = forward(io, fe, &req, close).await;
    fe.stats.count_response(out.status);
    fe.stats.bytes_out.fetch_add(out.bytes, Ordering::Relaxed);
    if let Some(s) = &out.server {
        s.active.fetch_sub(1, Ordering::Relaxed);
    }
    if let (Some(sink), Some(line)) = (&ctx.log, req.line) {
        sink.log(Record {
            at,
            client: ctx.client,
            frontend: fe.name.clone(),
            backend: Some(req.pool.name.clone()),
            server: out.server.as_ref().map(|s| s.name.clone()),
            t_request: head_age,
            t_connect: out.timing.connect,
            t_response: out.answered.then_some(out.timing.response),
            t_active: started.elapsed(),
            status: out.status,
            bytes: out.bytes,
            termination: out.termination,
            frontend_conns: fe.stats.current_connections.load(Ordering::Relaxed),
            backend_conns: req.pool.view().servers.iter().map(|s| s.active.load(Ordering::Relaxed)).sum(),
            server_conns: out.server.as_ref().map_or(0, |s| s.active.load(Ordering::Relaxed) + 1),
            retries: out.retries,
            request: line,
        });
    }
    ctx.state.end();
    out.keep
}

async fn forward<S: ClientIo>(io: &mut S, fe: &Frontend, req: &Request, close: bool) -> Outcome {
    let head_only = req.method == Method::HEAD;
    let idempotent = is_idempotent(&req.method);
    let view = req.pool.view();
    let mut tries = Attempts::new(&req.pool, &view, idempotent, req.sticky_target.as_deref());
    loop {
        let Some(server) = tries.next_server(&view, req.key.as_deref()) else {
            let f = tries.exhausted(&fe.stats);
            return answer_locally(io, f, head_only, close, fe.timeouts.client).await.after(&tries);
        };
        server.stats.bytes_in.fetch_add(req.upstream.len() as u64, Ordering::Relaxed);
        // Made when the server joined the pool: the token, never the member's name.
        let set_cookie = server
            .set_cookie
            .as_ref()
            .filter(|_| !req.sticky_target.as_deref().is_some_and(|c| server.is_cookie(c)))
            .map(http::HeaderValue::as_bytes);
        let extras = Extras { head_only, set_cookie, close };
        let why = match exchange(io, &server, req, idempotent, &fe.timeouts, extras).await {
            Ok(answer) => {
                if tries.answered(&server, answer.head.status) {
                    continue;
                }
                return relay(io, server, answer, &fe.timeouts).await.after(&tries);
            }
            Err(why) => why,
        };
        tracing::debug!(server = %Esc(&server.name), ?why, "upstream attempt failed");
        match tries.failed(server, why) {
            Next::Resend | Next::Elsewhere => {}
            Next::Fail(f) => {
                return answer_locally(io, f, head_only, close, fe.timeouts.client).await.after(&tries);
            }
        }
    }
}

/// Sends the balancer's own answer for a failed forward.
async fn answer_locally<S: ClientIo>(
    io: &mut S,
    f: Failure,
    head_only: bool,
    close: bool,
    client_timeout: Duration,
) -> Outcome {
    let (status, text) = f.answer();
    let sent = send(io, &local_answer(status, text, head_only, close), client_timeout).await;
    Outcome {
        status: status.as_u16(),
        server: None,
        timing: Timing::default(),
        answered: false,
        termination: f.termination(),
        bytes: if head_only { 0 } else { text.len() as u64 },
        retries: 0,
        keep: sent && !close,
    }
}

/// A plain-text answer made by the balancer.
fn local_answer(status: StatusCode, text: &str, head_only: bool, close: bool) -> Vec<u8> {
    let reason = status.canonical_reason().unwrap_or("");
    let connection = if close { "connection: close\r\n" } else { "" };
    let body = if head_only { "" } else { text };
    format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{connection}\r\n{body}",
        status.as_u16(),
        text.len()
    )
    .into_bytes()
}

/// What the response head to the client gets besides the server's headers.
#[derive(Clone, Copy)]
struct Extras<'a> {
    head_only: bool,
    /// The `Set-Cookie` value sticking the client to the server that answers.
    set_cookie: Option<&'a [u8]>,
    close: bool,
}

/// A server's final response head, read and rewritten for the client.
struct Answer {
    conn: RawConn,
    /// What was read from the server: the head, then the start of the body.
    buf: Vec<u8>,
    head: ResponseHead,
    timing: Timing,
}

/// Sends the request on a pooled or new connection and reads the final response head,
/// relaying interim (1xx) heads to the client on the way.
async fn exchange<S: ClientIo>(
    io: &mut S,
    server: &Arc<Server>,
    req: &Request,
    idempotent: bool,
    timeouts: &crate::config::Timeouts,
    extras: Extras<'_>,
) -> Result<Answer, AttemptError> {
    let mut timing = Timing::default();
    let (mut conn, reused) = match server.conns.take_raw() {
        Some(c) => (c, true),
        None => {
            let stream =
                dial(server, timeouts.connect, &mut timing).await.map_err(|_| AttemptError::Connect)?;
            (RawConn { stream, timer: LazyTimer::new() }, false)
        }
    };
    // A pooled connection the server closed as the request went out: the request did not reach
    // it (or, for a method that may run twice, it may go again).
    let lost = if reused && idempotent { AttemptError::Unsent } else { AttemptError::NoResponse };
    let sending = std::time::Instant::now();
    if conn.stream.write_all(&req.upstream).await.is_err() {
        return Err(if reused { AttemptError::Unsent } else { AttemptError::NoResponse });
    }
    let deadline = Instant::now() + timeouts.server;
    let mut gone = std::pin::pin!(server.failed());
    let mut buf = Vec::with_capacity(READ_SIZE);
    let mut heard = false; // any byte of an answer (an interim head counts)
    loop {
        let head = loop {
            match parse_response(&buf, extras) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(()) => return Err(AttemptError::BadResponse),
            }
            let RawConn { stream, timer } = &mut conn;
            let read = tokio::select! {
                biased;
                () = gone.as_mut(), if idempotent => return Err(AttemptError::NoResponse),
                r = read_until(stream, &mut buf, timer, deadline) => r,
            };
            match read {
                Ok(Some(n)) if n > 0 => heard = true,
                Ok(None) => return Err(AttemptError::Timeout),
                _ if !heard => return Err(lost),
                _ => return Err(AttemptError::NoResponse),
            }
        };
        if !head.interim {
            timing.response = sending.elapsed();
            server.stats.response_time.observe(timing.response);
            return Ok(Answer { conn, buf, head, timing });
        }
        // 100 Continue, 103 Early Hints…: the client gets them as they come.
        if !send(io, &head.client_head, timeouts.client).await {
            return Err(AttemptError::NoResponse);
        }
        buf.drain(..head.len);
    }
}

/// Relays the response to the client; the connection goes back to the pool when its body was
/// read to the end and the server keeps it open.
async fn relay<S: ClientIo>(
    io: &mut S,
    server: Arc<Server>,
    answer: Answer,
    timeouts: &crate::config::Timeouts,
) -> Outcome {
    let (client_timeout, server_timeout) = (timeouts.client, timeouts.server);
    let Answer { mut conn, mut buf, head, timing } = answer;
    let mut body = head.body;
    let mut out = head.client_head;
    let (mut bytes, mut termination) = (0u64, *b"--");
    // The body reached its end; and nothing followed it (else the server connection is not reused).
    let (mut complete, mut clean) = (false, false);
    let mut client_ok = true;
    let mut start = head.len;
    let mut status = head.status;
    loop {
        let (taken, done) = match body.take(&buf[start..]) {
            Ok(t) => t,
            Err(()) if bytes == 0 && !out.is_empty() => {
                // Broken framing before anything went to the client: it gets a clean 502.
                server.stats.response_errors.fetch_add(1, Ordering::Relaxed);
                let (code, text) = Failure::BadResponse.answer();
                send(io, &local_answer(code, text, false, true), client_timeout).await;
                (status, termination, bytes) =
                    (code.as_u16(), Failure::BadResponse.termination(), text.len() as u64);
                break;
            }
            Err(()) => {
                server.stats.response_errors.fetch_add(1, Ordering::Relaxed);
                termination = *b"SD";
                break;
            }
        };
        let extra = start + taken < buf.len();
        out.extend_from_slice(&buf[start..start + taken]);
        bytes += taken as u64;
        if !send(io, &out, client_timeout).await {
            client_ok = false;
            termination = *b"CD";
            break;
        }
        if done {
            // Bytes past the end of the body: the server is not speaking HTTP/1.1 properly.
            (complete, clean) = (true, !extra);
            break;
        }
        out.clear();
        buf.clear();
        start = 0;
        let deadline = Instant::now() + server_timeout;
        let RawConn { stream, timer } = &mut conn;
        match read_until(stream, &mut buf, timer, deadline).await {
            Ok(Some(n)) if n > 0 => {}
            Ok(Some(_)) if matches!(body, Body::UntilClose) => break,
            Ok(None) => {
                termination = *b"sD";
                break;
            }
            _ => {
                server.stats.response_errors.fetch_add(1, Ordering::Relaxed);
                termination = *b"SD";
                break;
            }
        }
    }
    server.stats.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    if complete && clean && head.server_keeps {
        server.conns.put_raw(conn);
    }
    Outcome {
        status,
        server: Some(server),
        timing,
        answered: true,
        termination,
        bytes,
        retries: 0,
        keep: client_ok && complete && !head.close_client,
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// None (HEAD, 1xx, 204, 304).
    Empty,
    /// This many bytes are still to come.
    Length(u64),
    /// Chunked, relayed as it is.
    Chunked(Chunks),
    /// Everything up to the end of the connection.
    UntilClose,
}

impl Body {
    /// How many of `bytes` belong to the body, and whether the body is complete after them.
    fn take(&mut self, bytes: &[u8]) -> Result<(usize, bool), ()> {
        match self {
            Body::Empty => Ok((0, true)),
            Body::Length(left) => {
                let n = (*left).min(bytes.len() as u64);
                *left -= n;
                Ok((n as usize, *left == 0))
            }
            Body::Chunked(c) => c.scan(bytes),
            Body::UntilClose => Ok((bytes.len(), false)),
        }
    }
}

/// Where a chunked body stands: only the framing is read, to know where the body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunks {
    Size { digits: u8, size: u64 },
    Extension { size: u64 },
    SizeEnd { size: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunks {
    fn new() -> Chunks {
        Chunks::Size { digits: 0, size: 0 }
    }

    /// Reads `bytes` as chunked framing: how many belong to the body, and whether it has ended.
    fn scan(&mut self, bytes: &[u8]) -> Result<(usize, bool), ()> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            *self = match *self {
                Chunks::Done => return Ok((i, true)),
                Chunks::Data(left) => {
                    let n = left.min((bytes.len() - i) as u64);
                    i += n as usize;
                    *self = if n == left { Chunks::DataCr } else { Chunks::Data(left - n) };
                    continue;
                }
                Chunks::Size { digits, size } => match (b as char).to_digit(16) {
                    Some(d) if digits < 15 => {
                        Chunks::Size { digits: digits + 1, size: size << 4 | u64::from(d) }
                    }
                    None if digits > 0 && matches!(b, b';' | b' ' | b'\t') => Chunks::Extension { size },
                    None if digits > 0 && b == b'\r' => Chunks::SizeEnd { size },
                    _ => return Err(()),
                },
                Chunks::Extension { size } => match b {
                    b'\r' => Chunks::SizeEnd { size },
                    b'\n' => return Err(()),
                    _ => Chunks::Extension { size },
                },
                Chunks::SizeEnd { size: 0 } if b == b'\n' => Chunks::TrailerStart,
                Chunks::SizeEnd { size } if b == b'\n' => Chunks::Data(size),
                Chunks::DataCr if b == b'\r' => Chunks::DataLf,
                Chunks::DataLf if b == b'\n' => Chunks::new(),
                Chunks::TrailerStart if b == b'\r' => Chunks::EndLf,
                Chunks::TrailerStart | Chunks::Trailer if b != b'\r' && b != b'\n' => Chunks::Trailer,
                Chunks::Trailer if b == b'\r' => Chunks::TrailerLf,
                Chunks::TrailerLf if b == b'\n' => Chunks::TrailerStart,
                Chunks::EndLf if b == b'\n' => Chunks::Done,
                _ => return Err(()),
            };
            i += 1;
        }
        Ok((i, *self == Chunks::Done))
    }
}

/// A response head from a server, rewritten for the client.
struct ResponseHead {
    /// Its length in the server's bytes.
    len: usize,
    status: u16,
    /// 1xx other than 101: another head follows.
    interim: bool,
    body: Body,
    /// The server keeps the connection open after this response.
    server_keeps: bool,
    /// The client connection closes after this response.
    close_client: bool,
    /// The head to send to the client.
    client_head: Vec<u8>,
}

/// Parses a response head from `buf`: `None` while incomplete, `Err` when it is not a valid
/// HTTP/1 response head (or is one a request without `Upgrade` cannot get: 101).
fn parse_response(buf: &[u8], extras: Extras<'_>) -> Result<Option<ResponseHead>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_RESPONSE_HEAD => return Ok(None),
        _ => return Err(()),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else { return Err(()) };
    if status == 101 || !(100..600).contains(&status) {
        return Err(());
    }
    let interim = status < 200;
    let (mut length, mut chunked, mut encoded, mut server_closes) = (None, false, false, version == 0);
    let mut named: Vec<&[u8]> = Vec::new();
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok()).ok_or(())?;
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            encoded = true;
            let last = h.value.rsplit(|&b| b == b',').next().map(<[u8]>::trim_ascii);
            chunked = last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    server_closes = true;
                } else if version == 0 && token.eq_ignore_ascii_case(b"keep-alive") {
                    server_closes = false;
                }
                named.push(token);
            }
        }
    }
    if encoded && length.is_some() {
        return Err(()); // an ambiguous length: the framing of what follows cannot be trusted
    }
    let body = if interim || status == 204 || status == 304 || extras.head_only {
        Body::Empty
    } else if chunked {
        Body::Chunked(Chunks::new())
    } else if encoded {
        Body::UntilClose
    } else {
        length.map_or(Body::UntilClose, Body::Length)
    };
    let close_client = !interim && (extras.close || body == Body::UntilClose);
    let sticky = extras.set_cookie.filter(|_| !interim);

    let mut out = Vec::with_capacity(len + 64);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name;
        if is_hop_by_hop(name)
            || named.iter().any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
            || (sticky.is_some() && name.eq_ignore_ascii_case("cache-control"))
        {
            continue;
        }
        push_header(&mut out, name.as_bytes(), h.value);
    }
    if matches!(body, Body::Chunked(_)) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if let Some(cookie) = sticky {
        push_header(&mut out, b"set-cookie", cookie);
        out.extend_from_slice(b"cache-control: private\r\n");
    }
    if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        len,
        status,
        interim,
        body,
        server_keeps: !server_closes && body != Body::UntilClose,
        close_client,
        client_head: out,
    }))
}

/// A client stream with bytes already read put back in front, for the general path.
pub(crate) struct Rewind<S> {
    prefix: Vec<u8>,
    read: usize,
    inner: S,
}

impl<S> Rewind<S> {
    /// `inner`, whose next bytes are `prefix`.
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Rewind<S> {
        Rewind { prefix, read: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.read);
            buf.put_slice(&this.prefix[this.read..this.read + n]);
            this.read += n;
            if this.read == this.prefix.len() {
                this.prefix = Vec::new();
                this.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Extras<'static> = Extras { head_only: false, set_cookie: None, close: false };

    fn head(raw: &[u8], extras: Extras<'_>) -> ResponseHead {
        parse_response(raw, extras).expect("valid").expect("complete")
    }

    #[test]
    fn chunked_framing_is_found_however_the_bytes_are_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
        for split in 0..=body.len() {
            let mut c = Chunks::new();
            let (a, done_a) = c.scan(&body[..split]).unwrap();
            assert_eq!((a, done_a), (split, split == body.len()), "split at {split}");
            let (b, done) = c.scan(&body[split..]).unwrap();
            assert_eq!(a + b, body.len(), "split at {split}");
            assert!(done, "split at {split}");
        }
        // What follows the last chunk is not the body's.
        let mut c = Chunks::new();
        assert_eq!(c.scan(b"0\r\n\r\nHTTP/1.1 200 OK").unwrap(), (5, true));
    }

    #[test]
    fn bad_chunk_framing_is_an_error() {
        for bad in
            [&b"zz\r\n"[..], b"5\r\nhelloXY", b"\r\n", b"5\nhello", b"11111111111111111\r\n", b"0\r\n\r\r"]
        {
            assert!(Chunks::new().scan(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn response_framing_follows_the_rfc() {
        assert_eq!(head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", PLAIN).body, Body::Length(5));
        assert_eq!(head(b"HTTP/1.1 204 No Content\r\n\r\n", PLAIN).body, Body::Empty);
        assert_eq!(head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", PLAIN).body, Body::Empty);
        let head_only = Extras { head_only: true, ..PLAIN };
        assert_eq!(head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", head_only).body, Body::Empty);
        let chunked = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", PLAIN);
        assert!(matches!(chunked.body, Body::Chunked(_)));
        assert!(chunked.server_keeps);
        let until_close = head(b"HTTP/1.1 200 OK\r\n\r\n", PLAIN);
        assert_eq!(until_close.body, Body::UntilClose);
        assert!(until_close.close_client && !until_close.server_keeps);
        assert!(String::from_utf8_lossy(&until_close.client_head).contains("connection: close\r\n"));
        // HTTP/1.0 servers close unless they say keep-alive.
        assert!(!head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", PLAIN).server_keeps);
        assert!(
            head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", PLAIN)
                .server_keeps
        );
        assert!(
            !head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", PLAIN).server_keeps
        );
        assert!(head(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n", PLAIN).interim);
    }

    #[test]
    fn ambiguous_or_foreign_responses_are_refused() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            b"this is not HTTP at all\r\n\r\n",
        ] {
            assert!(parse_response(bad, PLAIN).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le", PLAIN).unwrap().is_none());
    }

    #[test]
    fn the_client_head_loses_hop_by_hop_headers_and_gains_the_sticky_cookie() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\nKeep-Alive: timeout=5\r\n\
                    X-Internal: secret\r\nCache-Control: public\r\nX-App: Kept\r\nContent-Length: 0\r\n\r\n";
        let sticky = Extras { set_cookie: Some(b"SERVERID=web-1; Path=/"), ..PLAIN };
        let text = String::from_utf8(head(raw, sticky).client_head).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nX-App: Kept\r\nContent-Length: 0\r\nset-cookie: SERVERID=web-1; Path=/\r\n\
             cache-control: private\r\n\r\n"
        );
    }

    #[test]
    fn local_answers_are_complete_messages() {
        let text =
            String::from_utf8(local_answer(StatusCode::SERVICE_UNAVAILABLE, "No server\n", false, true))
                .unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 10\r\n\
             connection: close\r\n\r\nNo server\n"
        );
        let head_only = local_answer(StatusCode::GATEWAY_TIMEOUT, "Gateway timeout\n", true, false);
        assert!(head_only.ends_with(b"content-length: 16\r\n\r\n"));
    }
}
