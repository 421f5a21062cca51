//! Connections to backend servers: a keep-alive pool per server and one request exchange.
//!
//! Each server keeps a stack of idle HTTP/1.1 connections. A request takes one
//! (or dials a new one), and the connection goes back on the stack only when
//! its response body has been read to the end — so a connection is never
//! shared by two requests and a half-read response never poisons the next one.
//! Requests use origin-form URIs, exactly as the client sent them.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::future::Future;
use tokio::net::TcpStream;

use crate::conn::LazyTimer;
use crate::pool::Server;

/// Idle connections kept per server.
const MAX_IDLE: usize = 512;
/// An idle connection older than this is not reused (the server may close it any moment).
const MAX_IDLE_AGE: Duration = Duration::from_secs(30);

/// The body sent upstream: streamed from the client, or buffered so it can be retried.
#[derive(Debug)]
pub enum ProxyBody {
    /// Streamed as it arrives.
    Stream(crate::limits::LimitedBody),
    /// Held in memory (small, retryable).
    Buffered(Full<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ProxyBody::Stream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Buffered(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Stream(b) => b.is_end_stream(),
            ProxyBody::Buffered(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Stream(b) => b.size_hint(),
            ProxyBody::Buffered(b) => b.size_hint(),
        }
    }
}

type Sender = SendRequest<ProxyBody>;
/// The connection's I/O future (hyper's type for it, with upgrade support, cannot be named).
type Driver = dyn Future<Output = hyper::Result<()>> + Send;

/// One connection to a server: the handle to send on, and the I/O driver.
///
/// The driver is polled by whoever uses the connection (the request, then its
/// response body), not by a task of its own: no cross-task wake-up per request.
/// An idle connection in the pool is not polled at all.
pub struct Upstream {
    sender: Sender,
    driver: Pin<Box<Driver>>,
    closed: bool,
    /// Server timeout.
    timer: LazyTimer,
}

impl Upstream {
    /// Drives the connection's I/O; returns whether it is still open.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.closed && self.driver.as_mut().poll(cx).is_ready() {
            self.closed = true;
        }
        !self.closed
    }

    /// Hands the connection to a task of its own (after an upgrade, which needs the driver to finish).
    fn detach(self) {
        let driver = self.driver;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::trace!(error = %e, "upstream connection ended");
            }
        });
    }
}

/// A plain connection to a server, for the HTTP/1 fast path (which reads and writes it itself).
pub(crate) struct RawConn {
    /// The socket.
    pub stream: TcpStream,
    /// Server timeout.
    pub timer: LazyTimer,
}

impl RawConn {
    /// Whether the server has closed (or written to) it while it sat idle: a read that would
    /// block means it is still good to send on.
    fn is_quiet(&self) -> bool {
        matches!(self.stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Idle connections of one kind, newest on top; none is kept past [`MAX_IDLE_AGE`].
struct IdleStack<C>(std::sync::Mutex<Vec<(C, Instant)>>);

impl<C> Default for IdleStack<C> {
    fn default() -> Self {
        IdleStack(std::sync::Mutex::new(Vec::new()))
    }
}

impl<C> IdleStack<C> {
    /// The newest connection young enough that `usable` accepts (older ones are dropped).
    fn take(&self, usable: impl Fn(&C) -> bool) -> Option<C> {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((c, since)) = idle.pop() {
            if since.elapsed() < MAX_IDLE_AGE && usable(&c) {
                return Some(c);
            }
        }
        None
    }

    /// Keeps a connection, unless [`MAX_IDLE`] are kept already.
    fn put(&self, c: C) {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((c, Instant::now()));
        }
    }

    fn len(&self) -> usize {
        self.0.lock().map(|v| v.len()).unwrap_or(0)
    }

    fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Idle keep-alive connections to one server: hyper's for the general path, plain sockets for
/// the HTTP/1 fast path.
#[derive(Default)]
pub struct ConnPool {
    idle: IdleStack<Upstream>,
    raw: IdleStack<RawConn>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool").field("idle", &self.idle.len()).field("raw", &self.raw.len()).finish()
    }
}

impl ConnPool {
    fn take(&self) -> Option<Upstream> {
        self.idle.take(|s| !s.closed)
    }

    fn put(&self, s: Upstream) {
        if !s.closed && !s.sender.is_closed() {
            self.idle.put(s);
        }
    }

    /// An idle plain connection that is still open, if there is one.
    pub(crate) fn take_raw(&self) -> Option<RawConn> {
        self.raw.take(RawConn::is_quiet)
    }

    /// Keeps a plain connection whose last response was read to its end.
    pub(crate) fn put_raw(&self, c: RawConn) {
        self.raw.put(c);
    }

    /// Drops every idle connection (the server is gone).
    pub fn clear(&self) {
        self.idle.clear();
        self.raw.clear();
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be made; the request, untouched, comes back to go elsewhere.
    Connect(Box<Request<ProxyBody>>, std::io::Error),
    /// The request was never sent; here it is back, to try elsewhere.
    Unsent(Box<Request<ProxyBody>>, hyper::Error),
    /// The connection died before any response byte.
    NoResponse(hyper::Error),
    /// The server answered something that is not HTTP.
    BadResponse(hyper::Error),
    /// The server took too long.
    Timeout,
    /// Gossip declared the server failed while the request waited for its answer.
    ServerFailed,
    /// The client's request body failed (malformed chunk, too large, client gone).
    ClientBody(hyper::Error),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(_, e) => write!(f, "connect: {e}"),
            UpstreamError::Unsent(_, e) => write!(f, "not sent: {e}"),
            UpstreamError::NoResponse(e) => write!(f, "connection closed before the response: {e}"),
            UpstreamError::BadResponse(e) => write!(f, "invalid response: {e}"),
            UpstreamError::Timeout => f.write_str("server timeout"),
            UpstreamError::ServerFailed => {
                f.write_str("the server was declared failed while the request waited")
            }
            UpstreamError::ClientBody(e) => write!(f, "client request body: {e}"),
        }
    }
}

/// Opens a TCP connection to a server (Nagle off) within `timeout`; the time it took is
/// counted in the server's connect times and written to `timing`.
pub(crate) async fn dial(
    server: &Server,
    timeout: Duration,
    timing: &mut Timing,
) -> Result<TcpStream, std::io::Error> {
    let started = std::time::Instant::now();
    let stream = tokio::time::timeout(timeout, TcpStream::connect(server.addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))??;
    stream.set_nodelay(true)?;
    let took = started.elapsed();
    server.stats.connect_time.observe(took);
    timing.connect = Some(took);
    Ok(stream)
}

async fn connect(
    server: &Server,
    timeout: Duration,
    timing: &mut Timing,
) -> Result<Upstream, std::io::Error> {
    let stream = dial(server, timeout, timing).await?;
    // One flat buffer per flush: a request head and a small body leave in one `send`,
    // cheaper in the kernel than `writev` over several slices.
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    Ok(Upstream { sender, driver: Box::pin(conn.with_upgrades()), closed: false, timer: LazyTimer::new() })
}

/// Waits until the connection can take a request, driving it meanwhile.
async fn ready(up: &mut Upstream) -> bool {
    std::future::poll_fn(|cx| {
        let open = up.drive(cx);
        match up.sender.poll_ready(cx) {
            Poll::Ready(r) => Poll::Ready(r.is_ok() && open),
            Poll::Pending if !open => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// How long the parts of one exchange took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// Opening a new connection (none when a pooled one was reused).
    pub connect: Option<Duration>,
    /// From sending the request to the response head.
    pub response: Duration,
}

/// Sends `req` to `server` and waits for the response head (bounded by `server_timeout`).
pub async fn exchange(
    server: &Arc<Server>,
    req: Request<ProxyBody>,
    connect_timeout: Duration,
    server_timeout: Duration,
) -> Result<(Response<Incoming>, Upstream, Timing), UpstreamError> {
    let pooled = match server.conns.take() {
        Some(mut up) => ready(&mut up).await.then_some(up),
        None => None,
    };
    let mut timing = Timing::default();
    let mut up = match pooled {
        Some(up) => up,
        None => match connect(server, connect_timeout, &mut timing).await {
            Ok(up) => up,
            Err(e) => return Err(UpstreamError::Connect(Box::new(req), e)),
        },
    };
    let sending = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + server_timeout;
    let req_method = req.method().clone();
    let mut response = std::pin::pin!(up.sender.try_send_request(req));
    // An idempotent request stops waiting when gossip declares the server failed (it will be
    // retried elsewhere); any other keeps waiting: the host may be frozen, not gone, and would
    // still answer — sending it elsewhere could run it twice, and a 502 would cost it for nothing.
    let idempotent = crate::proxy::is_idempotent(&req_method);
    let mut gone = std::pin::pin!(server.failed());
    let (driver, closed, timer) = (&mut up.driver, &mut up.closed, &mut up.timer);
    let sent = std::future::poll_fn(|cx| {
        if idempotent && gone.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(None));
        }
        // Drive the connection first: it writes the request and reads the answer.
        if !*closed && driver.as_mut().poll(cx).is_ready() {
            *closed = true;
        }
        if let Poll::Ready(r) = response.as_mut().poll(cx) {
            return Poll::Ready(Some(Some(r)));
        }
        if timer.poll_expired(cx, deadline).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await;
    match sent {
        None => Err(UpstreamError::Timeout),
        Some(None) => Err(UpstreamError::ServerFailed),
        Some(Some(Ok(resp))) => {
            timing.response = sending.elapsed();
            server.stats.response_time.observe(timing.response);
            Ok((resp, up, timing))
        }
        Some(Some(Err(mut e))) => {
            let msg = e.take_message();
            let err = e.into_error();
            if let Some(req) = msg {
                return Err(UpstreamError::Unsent(Box::new(req), err));
            }
            if err.is_parse() || err.is_parse_status() {
                Err(UpstreamError::BadResponse(err))
            } else if err.is_user() || err.is_body_write_aborted() {
                Err(UpstreamError::ClientBody(err))
            } else {
                Err(UpstreamError::NoResponse(err))
            }
        }
    }
}

/// The response body streamed back to the client: drives its connection,
/// counts bytes, and returns the connection to the pool once the body has been
/// read to its end.
pub struct UpstreamBody {
    inner: Incoming,
    server: Arc<Server>,
    conn: Option<Upstream>,
    done: bool,
}

impl UpstreamBody {
    /// Wraps a response body from `server` arriving on `conn`.
    pub fn new(inner: Incoming, server: Arc<Server>, conn: Option<Upstream>) -> UpstreamBody {
        UpstreamBody { inner, server, conn, done: false }
    }

    /// For an upgrade: the connection goes to a task of its own, which completes the upgrade.
    pub fn detach(&mut self) {
        if let Some(c) = self.conn.take() {
            c.detach();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(c) = this.conn.as_mut() {
            c.drive(cx);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.server.stats.bytes_out.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) => {
                this.done = true;
                if let Some(c) = this.conn.take() {
                    this.server.conns.put(c);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.server.stats.response_errors.fetch_add(1, Ordering::Relaxed);
                this.conn = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304) may never be polled: it is complete all the same.
        if !self.done
            && self.inner.is_end_stream()
            && let Some(c) = self.conn.take()
        {
            self.server.conns.put(c);
        }
    }
}
