//! The HTTP/1.1 fast path: a wire adapter that serves well-formed HTTP/1.1 requests straight
//! from their bytes, over plain TCP or TLS.
//!
//! The head is parsed in place (`httparse`, no header map) and shown to the
//! [pipeline](crate::pipeline), which routes it and writes the head the server gets; the body —
//! by `Content-Length` or chunked — is buffered when small (so the request can be sent again)
//! and relayed as it arrives when large; the server's answer is relayed by its framing with its
//! head rewritten by the same rules every path follows; an upgrade (WebSocket) splices both
//! connections once the server says `101`. Between requests an idle connection holds no buffer,
//! and a plain one idle for a second leaves its task for the [parking lot](crate::park).
//!
//! Anything else — `Expect`, HTTP/1.0, an absolute-form target, a head too large, ambiguous or
//! malformed, a body over the limit — is handed, with the bytes read so far, to the general
//! (hyper) path, which serves the rest of the connection with every check it makes (413, 431,
//! smuggling 400s).

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
use tokio::time::Instant;

use crate::buffers;
use crate::codec::{BadFraming, Chunks, Framing, HeaderSink, MAX_HEADERS, local_answer, status_line};
use crate::conn::{LazyTimer, RESPONSE_408, Stop};
use crate::forward::{Unanswered, forward};
use crate::frontend::{ConnCtx, Frontend};
use crate::park::PARK_AFTER;
use crate::pipeline::{BodyFraming, Plan, RequestHead, Txn, plan, upstream_head};
use crate::retry::Failure;
use crate::upstream::{Answer, BodyStream, ClientBodyError, DropInterim, Interim, NoBody};

/// Room made for each read.
const READ_SIZE: usize = 8 * 1024;
/// Bodies up to this size are read whole before the request goes out, so that it can be sent
/// again (to the same server on a connection found dead, or elsewhere if its method allows).
pub(crate) const RESEND_BUFFER: u64 = 64 * 1024;

/// A client connection the balancer can serve: a byte stream that can also say when a read
/// would find data, so an idle connection waits without a buffer.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when a read would not block (streams that cannot tell are always ready).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }

    /// Whether [`into_socket`](ClientIo::into_socket) gives the socket (an idle connection can
    /// then wait outside its task).
    const PLAIN_SOCKET: bool = false;

    /// The plain socket underneath, out of the runtime, for an idle connection to wait
    /// outside its task; `None` for streams that are more than a socket.
    fn into_socket(self) -> Option<std::net::TcpStream>
    where
        Self: Sized,
    {
        None
    }
}

impl ClientIo for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    const PLAIN_SOCKET: bool = true;

    fn into_socket(self) -> Option<std::net::TcpStream> {
        self.into_std().ok()
    }
}

impl<S: ClientIo> ClientIo for tokio_rustls::server::TlsStream<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (inner, tls) = self.get_ref();
        // Plaintext already decrypted (or a state change to act on) needs no new bytes.
        if !tls.wants_read() {
            return Poll::Ready(Ok(()));
        }
        inner.poll_read_ready(cx)
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
    /// Idle for [`PARK_AFTER`] between requests (when asked to say so): the connection may
    /// wait outside its task until the client speaks, or until this deadline.
    Idle(Instant),
}

/// How a connection comes to the fast path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    /// New: its first request gets `request_headers` to arrive, later ones `keepalive`.
    pub fresh: bool,
    /// Whether to return [`Served::Idle`] when it idles between requests.
    pub may_park: bool,
}

/// Serves requests on `io` until the connection ends, one needs the general path, or (when
/// `arrival.may_park`) it idles long enough to park.
pub(crate) async fn serve<S: ClientIo>(
    io: &mut S,
    ctx: &ConnCtx,
    fe: &Frontend,
    stop: &Stop,
    arrival: Arrival,
) -> Served {
    let timeouts = &fe.timeouts;
    let mut buf: Vec<u8> = Vec::new();
    let mut timer = LazyTimer::new();
    let mut idle_since = Instant::now();
    let mut first = arrival.fresh;
    loop {
        if buf.is_empty() {
            buffers::give(std::mem::take(&mut buf)); // an idle connection holds no buffer
            let wait = if first { timeouts.request_headers } else { timeouts.keepalive };
            let deadline = idle_since + wait;
            // Only between requests: a connection that has not spoken yet stays in its task.
            let park_at =
                Some(idle_since + PARK_AFTER).filter(|&t| arrival.may_park && !first && t < deadline);
            match wait_readable(io, &mut timer, park_at.unwrap_or(deadline), stop).await {
                Wake::Readable => {}
                Wake::Timeout if park_at.is_some() => return Served::Idle(deadline),
                Wake::Closed | Wake::Timeout => return Served::Closed,
            }
        }
        if buf.capacity() == 0 {
            buf = buffers::take();
        }
        // Boxed: between requests the connection's task holds a pointer, not a request's state.
        let request = Box::pin(one_request(io, ctx, &mut buf, &mut timer, stop));
        match request.await {
            Next::Continue => {}
            Next::Closed => {
                buffers::give(buf);
                return Served::Closed;
            }
            Next::Handoff => return Served::Handoff(buf),
        }
        first = false;
        idle_since = Instant::now();
    }
}

/// What follows one request on a connection.
enum Next {
    /// Another request may come.
    Continue,
    /// The connection is over.
    Closed,
    /// The request in the buffer is for the general path.
    Handoff,
}

/// Reads a request head (408 when it does not complete in time), plans it and forwards it;
/// the next request's bytes stay in `buf`.
async fn one_request<S: ClientIo>(
    io: &mut S,
    ctx: &ConnCtx,
    buf: &mut Vec<u8>,
    timer: &mut LazyTimer,
    stop: &Stop,
) -> Next {
    // Read on every request: a reload applies to open connections.
    let frontend = ctx.frontend.load_full();
    let (timeouts, max_header) = (frontend.timeouts.clone(), frontend.max_header);
    let head_started = Instant::now();
    let deadline = head_started + timeouts.request_headers;
    let request = loop {
        match examine(buf, ctx, &frontend, max_header) {
            Examined::Ready(r) => break r,
            Examined::Partial if buf.len() < max_header => {}
            Examined::Partial | Examined::Refused => return Next::Handoff,
        }
        match read_until(io, buf, timer, deadline).await {
            Ok(Some(0)) | Err(_) => return Next::Closed,
            Ok(Some(_)) => {}
            Ok(None) if buf.is_empty() => {
                // Woken, yet nothing came: an idle connection, closed without a word.
                return Next::Closed;
            }
            Ok(None) => {
                tracing::debug!(client = %ctx.client, "request head incomplete after {:?}: 408", timeouts.request_headers);
                send(io, RESPONSE_408, timeouts.client).await;
                return Next::Closed;
            }
        }
    };
    let head_len = request.head_len;
    let close = request.close || stop.is_set();
    let now = Instant::now();
    let head_age = now.saturating_duration_since(head_started);
    let txn = Txn::begin(ctx, frontend, now.into_std(), head_age, || request.line.clone());
    if !proxy(io, buf, txn, request, close, timeouts.client).await {
        return Next::Closed;
    }
    buf.drain(..head_len);
    Next::Continue
}

enum Wake {
    Readable,
    Closed,
    Timeout,
}

/// Waits, holding no buffer, until the client sends something, the idle deadline passes or
/// the balancer shuts down.
async fn wait_readable<S: ClientIo>(io: &S, timer: &mut LazyTimer, deadline: Instant, stop: &Stop) -> Wake {
    let mut stop = std::pin::pin!(stop.wait());
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
    // TLS streams buffer what they encrypt.
    matches!(tokio::time::timeout(inactivity, io.flush()).await, Ok(Ok(())))
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
    /// What the pipeline decided.
    plan: Plan,
    /// The head to send upstream.
    upstream: Vec<u8>,
    /// How the client frames its body.
    body: RequestBody,
    /// The client asked to close after this request.
    close: bool,
    /// `METHOD TARGET HTTP/1.1`, when requests are logged.
    line: String,
}

/// How a client's request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestBody {
    None,
    Length(u64),
    Chunked,
}

enum Examined {
    Ready(Request),
    Partial,
    Refused,
}

/// A request head as `httparse` found it.
struct RawHead<'h, 'b> {
    method: Method,
    target: &'b str,
    headers: &'h [httparse::Header<'b>],
}

impl RequestHead for RawHead<'_, '_> {
    fn method(&self) -> &Method {
        &self.method
    }

    fn target(&self) -> &str {
        self.target
    }

    fn host(&self) -> Option<&str> {
        self.field("host").and_then(|h| std::str::from_utf8(h).ok())
    }

    fn authority(&self) -> Option<&str> {
        None
    }

    fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|h| (h.name, h.value))
    }
}

/// Parses what `buf` holds of a request head and, when it is complete and the fast path
/// serves it, plans it and builds the head to send upstream.
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
    let head = RawHead { method, target, headers: &*req.headers };
    let (mut hosts, mut length, mut lengths, mut chunked, mut close) = (0, None, 0, false, false);
    let (mut upgrade_field, mut upgrade_token) = (false, false);
    for h in head.headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            length = std::str::from_utf8(h.value).ok().and_then(|v| v.parse::<u64>().ok());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only a plain `chunked`: anything else, and the checks it needs, are the general path's.
            if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Examined::Refused;
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("expect") {
            return Examined::Refused;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_field = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                close |= token.eq_ignore_ascii_case(b"close");
                upgrade_token |= token.eq_ignore_ascii_case(b"upgrade");
            }
        }
    }
    let body = match (lengths, length, chunked) {
        (0, _, false) => RequestBody::None,
        (1, Some(0), false) => RequestBody::None,
        (1, Some(n), false) if n <= fe.max_body => RequestBody::Length(n),
        (0, _, true) => RequestBody::Chunked,
        // Duplicate, invalid or oversized lengths, a length with chunking: refused there.
        _ => return Examined::Refused,
    };
    let upgrade = upgrade_field && upgrade_token;
    if hosts != 1 || (upgrade && body != RequestBody::None) {
        return Examined::Refused;
    }
    let plan = plan(fe, ctx.client.ip(), &head, upgrade);
    let framing = match body {
        RequestBody::None => BodyFraming::None,
        RequestBody::Length(n) => BodyFraming::Length(n),
        RequestBody::Chunked => BodyFraming::Chunked,
    };
    let mut upstream = Vec::with_capacity(head_len + 128);
    upstream_head(&head, &plan, ctx, fe.tls, framing, &mut upstream);
    let line = if ctx.log.is_some() { format!("{} {target} HTTP/1.1", head.method) } else { String::new() };
    Examined::Ready(Request { head_len, plan, upstream, body, close, line })
}

/// The client's body, read from the connection as it is sent upstream. Body bytes live in the
/// client's buffer after the head; what has gone upstream is dropped from it, and whatever
/// follows the body (a pipelined request) stays.
struct ClientBody<'a, S> {
    io: &'a mut S,
    buf: &'a mut Vec<u8>,
    /// Where the body starts in `buf` (the head's length).
    start: usize,
    framing: Framing,
    /// Bytes at `buf[start..]` handed out last time, dropped on the next call.
    handed: usize,
    total: u64,
    limit: u64,
    timeout: Duration,
    started: bool,
}

impl<S: ClientIo> ClientBody<'_, S> {
    /// Reads until `buf` holds `start + want` bytes; false when the client left or stalled.
    async fn fill(&mut self, want: usize) -> bool {
        while self.buf.len() < self.start + want {
            self.buf.reserve(READ_SIZE.max(self.start + want - self.buf.len()));
            match tokio::time::timeout(self.timeout, self.io.read_buf(self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return false,
            }
        }
        true
    }
}

impl<S: ClientIo> BodyStream for ClientBody<'_, S> {
    async fn next(&mut self) -> Result<Option<&[u8]>, ClientBodyError> {
        if self.handed > 0 {
            self.buf.drain(self.start..self.start + self.handed);
            self.handed = 0;
        }
        if self.framing.is_done() {
            return Ok(None);
        }
        if self.buf.len() == self.start && !self.fill(1).await {
            return Err(ClientBodyError::Gone);
        }
        let (n, _) =
            self.framing.take(&self.buf[self.start..]).map_err(|BadFraming| ClientBodyError::Malformed)?;
        self.total += n as u64;
        if self.total > self.limit {
            return Err(ClientBodyError::TooLarge);
        }
        (self.handed, self.started) = (n, true);
        Ok(Some(&self.buf[self.start..self.start + n]))
    }

    fn started(&self) -> bool {
        self.started
    }
}

/// Interim answers go to the client as they come.
struct ToClient<'a, S> {
    io: &'a mut S,
    timeout: Duration,
}

impl<S: ClientIo> Interim<Vec<u8>> for ToClient<'_, S> {
    async fn relay(&mut self, status: u16, fields: Vec<u8>) -> bool {
        let mut head = Vec::with_capacity(fields.len() + 32);
        status_line(status, &mut head);
        head.extend_from_slice(&fields);
        head.extend_from_slice(b"\r\n");
        send(self.io, &head, self.timeout).await
    }
}

/// Forwards one request and relays the answer; returns whether the connection stays open
/// (its next request starts after the head in `buf`; the body, if any, is gone from it).
async fn proxy<S: ClientIo>(
    io: &mut S,
    buf: &mut Vec<u8>,
    mut txn: Txn,
    req: Request,
    close: bool,
    client_timeout: Duration,
) -> bool {
    let fe = txn.frontend().clone();
    txn.routed(&req.plan.pool);
    txn.received(req.head_len as u64);
    let start = req.head_len;
    let upstream = req.upstream;
    // A small body is read whole and sent with the head: the request can then go out twice.
    let whole = match req.body {
        RequestBody::None => Some(0),
        RequestBody::Length(n) if n <= RESEND_BUFFER => Some(n as usize),
        RequestBody::Chunked => {
            let mut c = Chunks::new();
            match c.walk(&buf[start..], |_, _| {}) {
                Ok((n, true)) if n as u64 <= RESEND_BUFFER.min(fe.max_body) => Some(n),
                Ok(_) => None,
                Err(BadFraming) => {
                    txn.denied(400, *b"CR");
                    return local(
                        io,
                        &mut txn,
                        StatusCode::BAD_REQUEST,
                        "Bad request body\n",
                        false,
                        true,
                        client_timeout,
                    )
                    .await;
                }
            }
        }
        RequestBody::Length(_) => None,
    };
    let framing = match req.body {
        RequestBody::None => Framing::Empty,
        RequestBody::Length(n) => Framing::Length(n),
        RequestBody::Chunked => Framing::Chunked(Chunks::new()),
    };
    let mut body = ClientBody {
        io,
        buf,
        start,
        framing,
        handed: 0,
        total: 0,
        limit: fe.max_body,
        timeout: client_timeout,
        started: false,
    };
    let forwarded = match whole {
        Some(n) => {
            if !body.fill(n).await {
                txn.cut(*b"CR");
                return false;
            }
            txn.received(n as u64);
            let mut interim = ToClient { io: &mut *body.io, timeout: client_timeout };
            let request = [upstream.as_slice(), &body.buf[start..start + n]];
            let result = forward(&req.plan, &fe, &mut txn, request, &mut NoBody, &mut interim, close).await;
            body.buf.drain(start..start + n);
            result
        }
        None => {
            // Interim answers are dropped while the body streams: the connection is busy with it.
            let request = [upstream.as_slice(), &[][..]];
            let result = forward(&req.plan, &fe, &mut txn, request, &mut body, &mut DropInterim, close).await;
            txn.received(body.total);
            result
        }
    };
    match forwarded {
        Ok((server, answer)) => relay(io, buf, start, &mut txn, &server, answer, client_timeout).await,
        Err(Unanswered::Failed(f)) => {
            let (status, text) = f.answer();
            txn.answered_locally(status.as_u16(), f.termination());
            local(io, &mut txn, status, text, req.plan.head_only, close, client_timeout).await
        }
        Err(Unanswered::Client(e)) => {
            let (status, text, why) = match e {
                ClientBodyError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Payload too large\n", *b"PR"),
                ClientBodyError::Malformed => (StatusCode::BAD_REQUEST, "Bad request body\n", *b"CR"),
                ClientBodyError::Gone => {
                    txn.cut(*b"CD");
                    return false;
                }
            };
            txn.denied(status.as_u16(), why);
            local(io, &mut txn, status, text, false, true, client_timeout).await;
            linger(io).await;
            false
        }
    }
}

/// Closes a connection whose client may still be sending a body nobody will read: the answer
/// is followed by a FIN, and what the client still sends is read and dropped for a while, so
/// that closing with unread bytes (a TCP reset) cannot destroy the answer before the client
/// has read it (nginx's lingering close).
async fn linger<S: ClientIo>(io: &mut S) {
    const LINGER: Duration = Duration::from_secs(2);
    const LINGER_BYTES: usize = 4 * 1024 * 1024;
    let _ = io.shutdown().await;
    let mut sink = [0u8; 8192];
    let mut total = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = io.read(&mut sink).await {
            total += n;
            if n == 0 || total > LINGER_BYTES {
                break;
            }
        }
    })
    .await;
}

/// Sends the balancer's own answer; returns whether the connection stays open.
async fn local<S: ClientIo>(
    io: &mut S,
    txn: &mut Txn,
    status: StatusCode,
    text: &str,
    head_only: bool,
    close: bool,
    client_timeout: Duration,
) -> bool {
    let sent = send(io, &local_answer(status, text, head_only, close), client_timeout).await;
    if !head_only {
        txn.sent(text.len() as u64);
    }
    if sent {
        txn.complete();
    }
    sent && !close
}

/// Relays the server's answer to the client: its head, then its body by its framing; the server
/// connection goes back to the pool when the body was read to its end with nothing after it.
/// A `101` splices the two connections until either closes. Returns whether the client
/// connection stays open.
async fn relay<S: ClientIo>(
    io: &mut S,
    buf: &mut Vec<u8>,
    head_len: usize,
    txn: &mut Txn,
    server: &Arc<crate::server::Server>,
    answer: Answer<Vec<u8>>,
    client_timeout: Duration,
) -> bool {
    let Answer { mut conn, mut rest, head, fields, timing: _, cut_short } = answer;
    let server_timeout = txn.frontend().timeouts.server;
    let mut out = Vec::with_capacity(fields.len() + 64 + rest.len().min(READ_SIZE));
    status_line(head.status, &mut out);
    out.extend_from_slice(&fields);
    if matches!(head.framing, Framing::Chunked(_)) {
        out.field(b"transfer-encoding", b"chunked");
    }
    let close_client = head.close_client || cut_short;
    if close_client && !head.switches() {
        out.field(b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if head.switches() {
        out.extend_from_slice(&rest);
        if !send(io, &out, client_timeout).await {
            return false;
        }
        txn.complete();
        // Bytes the client sent after its request are the new protocol's.
        let early = buf.split_off(head_len);
        if !early.is_empty() && conn.stream.write_all(&early).await.is_err() {
            return false;
        }
        if let Err(e) = tokio::io::copy_bidirectional(io, &mut conn.stream).await {
            tracing::debug!(server = %shoal_gossip::escape::Esc(&server.name), error = %e, "upgraded connection ended");
        }
        return false;
    }
    let mut framing = head.framing;
    let mut bytes = 0u64;
    let mut start = 0;
    let (complete, clean) = loop {
        let (taken, done) = match framing.take(&rest[start..]) {
            Ok(t) => t,
            Err(BadFraming) if bytes == 0 && !out.is_empty() => {
                // Broken framing before anything went to the client: it gets a clean 502.
                server.stats.response_errors.fetch_add(1, Ordering::Relaxed);
                let f = Failure::BadResponse;
                let (code, text) = f.answer();
                txn.status(code.as_u16(), f.termination());
                send(io, &local_answer(code, text, false, true), client_timeout).await;
                txn.sent(text.len() as u64);
                return false;
            }
            Err(BadFraming) => {
                server.stats.response_errors.fetch_add(1, Ordering::Relaxed);
                txn.cut(*b"SD");
                return false;
            }
        };
        let extra = start + taken < rest.len();
        out.extend_from_slice(&rest[start..start + taken]);
        bytes += taken as u64;
        if !send(io, &out, client_timeout).await {
            server.stats.bytes_out.fetch_add(bytes, Ordering::Relaxed);
            txn.sent(bytes);
            txn.cut(*b"CD");
            return false;
        }
        if done {
            // Bytes past the end of the body: the server is not speaking HTTP/1.1 properly.
            break (true, !extra);
        }
        out.clear();
        rest.clear();
        start = 0;
        rest.reserve(READ_SIZE);
        let deadline = Instant::now() + server_timeout;
        let crate::idle::RawConn { stream, timer } = &mut conn;
        let read = tokio::select! {
            biased;
            r = stream.read_buf(&mut rest) => Some(r),
            () = poll_fn(|cx| timer.poll_expired(cx, deadline)) => None,
        };
        match read {
            Some(Ok(n)) if n > 0 => {}
            Some(Ok(_)) if framing == Framing::UntilClose => break (true, false),
            None => {
                txn.cut(*b"sD");
                break (false, false);
            }
            _ => {
                server.stats.response_errors.fetch_add(1, Ordering::Relaxed);
                txn.cut(*b"SD");
                break (false, false);
            }
        }
    };
    server.stats.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    txn.sent(bytes);
    if complete {
        txn.complete();
    }
    buffers::give_bytes(rest);
    if cut_short {
        drop(conn);
        linger(io).await;
    } else if complete && clean && head.server_keeps {
        server.conns.put(conn);
    }
    complete && !close_client
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
