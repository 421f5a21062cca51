//! Connections to backend servers: a keep-alive pool per server and one request exchange.
//!
//! Each server keeps a stack of idle HTTP/1.1 connections. A request takes one
//! (or dials a new one), and the connection goes back on the stack only when
//! its response body has been read to the end — so a connection is never
//! shared by two requests and a half-read response never poisons the next one.
//! Requests use origin-form URIs, exactly as the client sent them.

use std::net::SocketAddr;
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
use tokio::net::TcpStream;

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

/// Idle keep-alive connections to one server.
#[derive(Default)]
pub struct ConnPool {
    idle: std::sync::Mutex<Vec<(Sender, Instant)>>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.idle.lock().map(|v| v.len()).unwrap_or(0);
        f.debug_struct("ConnPool").field("idle", &n).finish()
    }
}

impl ConnPool {
    fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((s, since)) = idle.pop() {
            if !s.is_closed() && s.is_ready() && since.elapsed() < MAX_IDLE_AGE {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, s: Sender) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((s, Instant::now()));
        }
    }

    /// Drops every idle connection (the server is gone).
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be made.
    Connect(std::io::Error),
    /// The request was never sent; here it is back, to try elsewhere.
    Unsent(Box<Request<ProxyBody>>, hyper::Error),
    /// The connection died before any response byte.
    NoResponse(hyper::Error),
    /// The server answered something that is not HTTP.
    BadResponse(hyper::Error),
    /// The server took too long.
    Timeout,
    /// The client's request body failed (malformed chunk, too large, client gone).
    ClientBody(hyper::Error),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "connect: {e}"),
            UpstreamError::Unsent(_, e) => write!(f, "not sent: {e}"),
            UpstreamError::NoResponse(e) => write!(f, "connection closed before the response: {e}"),
            UpstreamError::BadResponse(e) => write!(f, "invalid response: {e}"),
            UpstreamError::Timeout => f.write_str("server timeout"),
            UpstreamError::ClientBody(e) => write!(f, "client request body: {e}"),
        }
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Sender, std::io::Error> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))??;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::trace!(%addr, error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// Sends `req` to `server` and waits for the response head (bounded by `server_timeout`).
pub async fn exchange(
    server: &Arc<Server>,
    req: Request<ProxyBody>,
    connect_timeout: Duration,
    server_timeout: Duration,
) -> Result<(Response<Incoming>, Option<Sender>), UpstreamError> {
    let mut sender = match server.conns.take() {
        Some(s) => s,
        None => connect(server.addr, connect_timeout).await.map_err(UpstreamError::Connect)?,
    };
    let sent = tokio::time::timeout(server_timeout, sender.try_send_request(req)).await;
    match sent {
        Err(_) => Err(UpstreamError::Timeout),
        Ok(Ok(resp)) => Ok((resp, Some(sender))),
        Ok(Err(mut e)) => {
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

/// The response body streamed back to the client: counts bytes, and returns the
/// connection to the pool once the body has been read to its end.
pub struct UpstreamBody {
    inner: Incoming,
    server: Arc<Server>,
    sender: Option<Sender>,
    done: bool,
}

impl UpstreamBody {
    /// Wraps a response body from `server`.
    pub fn new(inner: Incoming, server: Arc<Server>, sender: Option<Sender>) -> UpstreamBody {
        UpstreamBody { inner, server, sender, done: false }
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
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.server.stats.bytes_out.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) => {
                this.done = true;
                if let Some(s) = this.sender.take() {
                    this.server.conns.put(s);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.server.stats.response_errors.fetch_add(1, Ordering::Relaxed);
                this.sender = None;
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
            && let Some(s) = self.sender.take()
        {
            self.server.conns.put(s);
        }
    }
}
