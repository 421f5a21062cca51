//! One exchange with a server over HTTP/1.1, for every client protocol: send the request head
//! and its body on a pooled (or new) connection, read the final response head (relaying
//! interim ones), and, for the general path, the response body as a hyper body.
//!
//! The head comes ready-made from the pipeline ([`crate::pipeline::upstream_head`]); the
//! response head is parsed by [`crate::codec::parse_response`] into the adapter's own sink.
//! What went wrong is said as an [`AttemptError`], which the retry policy turns into the next
//! step.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::codec::{Dechunker, Extras, Framing, HeaderSink, ResponseHead, parse_response};
use crate::config::Timeouts;
use crate::idle::RawConn;
use crate::retry::AttemptError;
use crate::server::Server;

/// Room made for each read from a server.
const READ_SIZE: usize = 16 * 1024;

/// How long the parts of one exchange took.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Timing {
    /// Opening a new connection (none when a pooled one was reused).
    pub(crate) connect: Option<Duration>,
    /// From sending the request to the response head.
    pub(crate) response: Duration,
}

/// What is wrong with a client's request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientBodyError {
    /// Larger than `limits.max_body_bytes` (413).
    TooLarge,
    /// Malformed framing (400).
    Malformed,
    /// The client went away or stopped sending (nothing to answer).
    Gone,
}

/// A request body read from the client as it is sent upstream: once it has started, it
/// cannot be sent again.
pub(crate) trait BodyStream: Send {
    /// The next bytes to send, framed as the head announced; `None` after the last.
    fn next(&mut self) -> impl Future<Output = Result<Option<&[u8]>, ClientBodyError>> + Send;
    /// Whether any of it has been taken from the client.
    fn started(&self) -> bool;
    /// Whether there is anything to stream at all.
    fn streams(&self) -> bool {
        true
    }
}

/// No body to stream (the whole request is in its head bytes).
pub(crate) struct NoBody;

impl BodyStream for NoBody {
    async fn next(&mut self) -> Result<Option<&[u8]>, ClientBodyError> {
        Ok(None)
    }

    fn started(&self) -> bool {
        false
    }

    fn streams(&self) -> bool {
        false
    }
}

/// Where interim (1xx) response heads go: an HTTP/1 client gets them, others drop them.
pub(crate) trait Interim<S>: Send {
    /// Passes one on (its status and the fields the client gets); false when the client is gone.
    fn relay(&mut self, status: u16, fields: S) -> impl Future<Output = bool> + Send;
}

/// Drops interim heads.
pub(crate) struct DropInterim;

impl<S: Send> Interim<S> for DropInterim {
    async fn relay(&mut self, _: u16, _: S) -> bool {
        true
    }
}

/// Why an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExchangeError {
    /// The attempt failed on the server's side: the retry policy decides.
    Attempt(AttemptError),
    /// The client's body failed: the request is over.
    Client(ClientBodyError),
}

/// A server's final response head, read; its body follows on `conn`.
#[derive(Debug)]
pub(crate) struct Answer<S> {
    pub(crate) conn: RawConn,
    /// What was read from the server past the head: the start of the body.
    pub(crate) rest: BytesMut,
    pub(crate) head: ResponseHead,
    /// The fields the client gets, in the adapter's sink.
    pub(crate) fields: S,
    pub(crate) timing: Timing,
    /// The server answered before the whole request was sent: neither connection can carry
    /// another request.
    pub(crate) cut_short: bool,
}

/// Opens a TCP connection to a server (Nagle off) within `timeout`; the time it took is
/// counted in the server's connect times and written to `timing`.
pub(crate) async fn dial(
    server: &Server,
    timeout: Duration,
    timing: &mut Timing,
) -> std::io::Result<TcpStream> {
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

/// Sends `request` (the head, then a buffered body) and then `body`'s bytes to
/// `server`, and reads the final response head, bounded by the server timeout. A 1xx head
/// goes to `interim`; the final head's fields for the client go to a fresh `S`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn exchange<S: HeaderSink + Default + Send>(
    server: &Arc<Server>,
    request: [&[u8]; 2],
    body: &mut impl BodyStream,
    idempotent: bool,
    timeouts: &Timeouts,
    extras: Extras<'_>,
    interim: &mut impl Interim<S>,
) -> Result<Answer<S>, ExchangeError> {
    use AttemptError::*;
    let mut timing = Timing::default();
    let (mut conn, reused) = match server.conns.take() {
        Some(c) => (c, true),
        None => match dial(server, timeouts.connect, &mut timing).await {
            Ok(stream) => (RawConn::new(stream), false),
            Err(_) => return Err(ExchangeError::Attempt(Connect)),
        },
    };
    server.stats.bytes_in.fetch_add((request[0].len() + request[1].len()) as u64, Ordering::Relaxed);
    let sending = std::time::Instant::now();
    if write_parts(&mut conn.stream, request).await.is_err() {
        // A pooled connection the server closed as the request went out: it did not get it.
        return Err(ExchangeError::Attempt(if reused { Unsent } else { NoResponse }));
    }
    let mut rest = crate::buffers::take_bytes();
    let mut early: Option<(ResponseHead, S)> = None;
    // A server may answer before it has read the whole body (a 413, a redirect) and stop
    // reading: it is not waiting for the rest, and its answer is the one to relay.
    let early_answer = |conn: &RawConn, rest: &mut BytesMut| -> Option<(ResponseHead, S)> {
        if !crate::idle::readable_now(&conn.stream) {
            return None;
        }
        while conn.stream.try_read_buf(rest).is_ok_and(|n| n > 0) {}
        let mut fields = S::default();
        match parse_response(rest, extras, &mut fields) {
            Ok(Some(head)) if !head.interim => Some((head, fields)),
            _ => None,
        }
    };
    while let Some(bytes) = body.next().await.map_err(ExchangeError::Client)? {
        server.stats.bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if let Some(answer) = early_answer(&conn, &mut rest) {
            early = Some(answer);
            break;
        }
        match tokio::time::timeout(timeouts.server, conn.stream.write_all(bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => match early_answer(&conn, &mut rest) {
                Some(answer) => {
                    early = Some(answer);
                    break;
                }
                None => return Err(ExchangeError::Attempt(NoResponse)),
            },
            Err(_) => return Err(ExchangeError::Attempt(Timeout)),
        }
    }
    let cut_short = early.is_some();
    // The body has gone: a connection found dead now may have delivered the request.
    let lost = if reused && idempotent && !body.started() { Unsent } else { NoResponse };
    let deadline = Instant::now() + timeouts.server;
    let mut gone = std::pin::pin!(server.failed());
    let mut heard = !rest.is_empty(); // any byte of an answer (an interim head counts)
    let (head, fields) = loop {
        if let Some(done) = early.take() {
            break done;
        }
        let mut fields = S::default();
        match parse_response(&rest, extras, &mut fields) {
            Ok(Some(head)) if head.interim => {
                // 100 Continue, 103 Early Hints…: passed on as they come.
                if !interim.relay(head.status, fields).await {
                    return Err(ExchangeError::Attempt(NoResponse));
                }
                rest.advance(head.len);
                continue;
            }
            Ok(Some(head)) => break (head, fields),
            Ok(None) => {}
            Err(_) => return Err(ExchangeError::Attempt(BadResponse)),
        }
        rest.reserve(READ_SIZE);
        let RawConn { stream, timer } = &mut conn;
        // An idempotent request stops waiting when gossip declares the server failed (it is
        // retried elsewhere); any other keeps waiting: the host may be frozen, not gone, and
        // would still answer — sending it elsewhere could run it twice.
        let read = std::future::poll_fn(|cx| {
            if idempotent && gone.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(NoResponse));
            }
            if let Poll::Ready(r) = poll_read_buf(stream, cx, &mut rest) {
                return Poll::Ready(Ok(r));
            }
            timer.poll_expired(cx, deadline).map(|()| Err(Timeout))
        })
        .await
        .map_err(ExchangeError::Attempt)?;
        match read {
            Ok(n) if n > 0 => heard = true,
            _ if !heard => return Err(ExchangeError::Attempt(lost)),
            _ => return Err(ExchangeError::Attempt(NoResponse)),
        }
    };
    timing.response = sending.elapsed();
    server.stats.response_time.observe(timing.response);
    rest.advance(head.len);
    Ok(Answer { conn, rest, head, fields, timing, cut_short })
}

/// Writes both parts, the second after the first, without copying them together (one
/// `send` when there is only the first).
async fn write_parts(stream: &mut TcpStream, parts: [&[u8]; 2]) -> std::io::Result<()> {
    let [mut a, mut b] = parts;
    if b.is_empty() {
        return stream.write_all(a).await;
    }
    while !a.is_empty() || !b.is_empty() {
        let n = stream.write_vectored(&[std::io::IoSlice::new(a), std::io::IoSlice::new(b)]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}

/// Reads what the socket has into `buf` (0 at the end of the stream). Through tokio's own read:
/// a short read clears the socket's readiness, so the next wait costs no failed `recv`.
fn poll_read_buf(
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
}

/// Why a response body read from a server stopped short.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The server closed the connection or broke the framing.
    #[error("the server broke the response body")]
    Broken,
    /// The server sent nothing for the server timeout.
    #[error("the server sent nothing for the server timeout")]
    Timeout,
}

/// A response body read from a server, for the general path: framing taken off (chunked
/// decoded, trailers passed on), bytes counted, and the connection given back to the server's
/// pool once the body was read to its end with nothing after it.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    conn: Option<RawConn>,
    server: Arc<Server>,
    rest: BytesMut,
    framing: Framing,
    dechunk: Option<Dechunker>,
    /// The connection may carry another request once this body is done.
    reusable: bool,
    server_timeout: Duration,
    deadline: Option<Instant>,
    /// A chunked body's trailers, sent after its data.
    trailers: Option<http::HeaderMap>,
    done: bool,
}

impl UpstreamBody {
    /// The body of `answer`, from `server`.
    pub(crate) fn new<S>(answer: Answer<S>, server: Arc<Server>, server_timeout: Duration) -> UpstreamBody {
        let dechunk = matches!(answer.head.framing, Framing::Chunked(_)).then(Dechunker::new);
        let mut body = UpstreamBody {
            reusable: answer.head.server_keeps && !answer.cut_short,
            conn: Some(answer.conn),
            server,
            rest: answer.rest,
            framing: answer.head.framing,
            dechunk,
            server_timeout,
            deadline: None,
            trailers: None,
            done: false,
        };
        if body.framing.is_done() {
            body.finish();
        }
        body
    }

    /// The body is over: the connection goes back if nothing followed it.
    fn finish(&mut self) {
        self.done = true;
        if let Some(c) = self.conn.take()
            && self.reusable
            && self.rest.is_empty()
        {
            self.server.conns.put(c);
        }
    }

    fn broken(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.server.stats.response_errors.fetch_add(1, Ordering::Relaxed);
        self.conn = None;
        self.done = true;
        Poll::Ready(Some(Err(e)))
    }

    /// The next frame from what has been read, if any.
    fn frame(&mut self) -> Result<Option<Frame<Bytes>>, BodyError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let data = match &mut self.framing {
            Framing::Empty => return Ok(None),
            Framing::Length(left) => {
                let n = (*left).min(self.rest.len() as u64) as usize;
                *left -= n as u64;
                self.rest.split_to(n).freeze()
            }
            Framing::UntilClose => self.rest.split().freeze(),
            Framing::Chunked(_) => {
                let Some(d) = &mut self.dechunk else { return Err(BodyError::Broken) };
                let mut out = Vec::new();
                let (used, ended) = d.decode(&self.rest, &mut out).map_err(|_| BodyError::Broken)?;
                self.rest.advance(used);
                if ended {
                    self.framing = Framing::Empty;
                    self.trailers = d.trailers();
                }
                if out.is_empty() {
                    return Ok(None);
                }
                Bytes::from(out)
            }
        };
        self.server.stats.bytes_out.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(Some(Frame::data(data)))
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.frame() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) if this.framing.is_done() => {
                    this.finish();
                    return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
                }
                Ok(None) => {}
                Err(e) => return this.broken(e),
            }
            let Some(conn) = this.conn.as_mut() else { return this.broken(BodyError::Broken) };
            this.rest.reserve(READ_SIZE);
            match poll_read_buf(&mut conn.stream, cx, &mut this.rest) {
                Poll::Ready(Ok(0)) if this.framing == Framing::UntilClose => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return this.broken(BodyError::Broken),
                Poll::Ready(Ok(_)) => this.deadline = None,
                Poll::Pending => {
                    let deadline = *this.deadline.get_or_insert_with(|| Instant::now() + this.server_timeout);
                    if conn.timer.poll_expired(cx, deadline).is_ready() {
                        return this.broken(BodyError::Timeout);
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // All of it read (what is left to do, Drop does: hyper may not poll again).
        self.done || (self.framing.is_done() && self.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Empty => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper may stop polling once it has all the bytes a length announced.
        if !self.done && self.framing.is_done() {
            self.finish();
        }
        // The read buffer serves the next exchange on this thread (unless a frame of it is
        // still alive).
        crate::buffers::give_bytes(std::mem::take(&mut self.rest));
    }
}
