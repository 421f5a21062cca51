//! A client connection's socket, guarded: request-head and keep-alive timeouts
//! (with a `408 Request Timeout` for a head that never completes), and a
//! request-smuggling check hyper does not make.
//!
//! hyper quietly accepts a request carrying both `Content-Length` and
//! `Transfer-Encoding` (it drops the length). A proxy should refuse it, so the
//! raw bytes of each request head are looked at here and the service answers
//! such a request with 400 and closes. The state shared with the service says
//! whether a request is in progress: only between requests do the head and
//! keep-alive deadlines apply.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pub(crate) const RESPONSE_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// What the connection and the service share.
#[derive(Debug)]
pub struct ConnState {
    /// Requests in progress (from the service call until the response body is done).
    pub busy: AtomicU32,
    /// Requests completed.
    pub served: AtomicU64,
    /// The head being read carries both Content-Length and Transfer-Encoding.
    pub smuggling: AtomicBool,
    /// When the connection was accepted.
    pub accepted: std::time::Instant,
    /// When the current request head started, in µs after `accepted`.
    head_started_us: AtomicU64,
    /// The connection's task, parked on a read while a request was in progress: woken when it
    /// ends, so that the keep-alive deadline is armed even if hyper does not read again first.
    parked: std::sync::Mutex<Option<std::task::Waker>>,
}

impl Default for ConnState {
    fn default() -> Self {
        ConnState::new()
    }
}

impl ConnState {
    /// State for a connection accepted now.
    pub fn new() -> ConnState {
        ConnState {
            busy: AtomicU32::new(0),
            served: AtomicU64::new(0),
            smuggling: AtomicBool::new(false),
            accepted: std::time::Instant::now(),
            head_started_us: AtomicU64::new(0),
            parked: std::sync::Mutex::new(None),
        }
    }

    /// How long the current request head has been arriving, as of `now`.
    pub fn head_age(&self, now: std::time::Instant) -> Duration {
        let started = self.accepted + Duration::from_micros(self.head_started_us.load(Ordering::Relaxed));
        now.saturating_duration_since(started)
    }

    fn head_started(&self, at: std::time::Instant) {
        let us = at.saturating_duration_since(self.accepted).as_micros() as u64;
        self.head_started_us.store(us, Ordering::Relaxed);
    }

    /// Marks a request as started.
    pub fn begin(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a request as finished (its response body has been handed over).
    pub fn end(&self) {
        self.busy.fetch_sub(1, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        let parked = self.parked.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = parked {
            w.wake();
        }
    }

    /// Parks a read that has no deadline while a request is in progress.
    fn park(&self, waker: &std::task::Waker) {
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        if !parked.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *parked = Some(waker.clone());
        }
    }
}

/// The balancer's stop signal, as its connections wait on it: set once, seen by all. Waiters
/// spread over a few lists (as tokio's `watch` does), so that connections coming and going on
/// several threads do not all take one lock.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    set: AtomicBool,
    notify: [tokio::sync::Notify; 8],
}

impl Stop {
    /// Whether the balancer is stopping.
    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Stops: every waiter wakes.
    pub(crate) fn set(&self) {
        self.set.store(true, Ordering::Release);
        for n in &self.notify {
            n.notify_waiters();
        }
    }

    /// Resolves once the balancer stops (at once if it has).
    pub(crate) async fn wait(&self) {
        thread_local! {
            static LIST: usize = {
                static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed)
            };
        }
        let list = LIST.with(|i| *i) % self.notify.len();
        let notified = self.notify[list].notified();
        tokio::pin!(notified);
        // Registered before the flag is read: a `set` in between cannot be missed.
        notified.as_mut().enable();
        if self.is_set() {
            return;
        }
        notified.await;
    }
}

/// A timer for deadlines that mostly move later (the next request's, the next read's): it is
/// re-armed only when it fires before the deadline asked for, not every time the deadline
/// moves, so a busy connection does no timer-wheel work per request.
pub(crate) struct LazyTimer(Option<Pin<Box<Sleep>>>);

impl std::fmt::Debug for LazyTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LazyTimer").field(&self.0.as_ref().map(|s| s.deadline())).finish()
    }
}

impl LazyTimer {
    /// A timer armed for nothing yet (it takes no memory until it is first needed: a short
    /// connection whose bytes are always there never makes one).
    pub(crate) fn new() -> LazyTimer {
        LazyTimer(None)
    }

    /// Ready once `deadline` has passed; registers for a wake-up otherwise.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let sleep = self.0.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        }
        while sleep.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            sleep.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

/// Deadlines for a client connection.
#[derive(Debug, Clone, Copy)]
pub struct IoTimeouts {
    /// A request head must be complete this long after its first byte (or after accept).
    pub request_headers: Duration,
    /// An idle connection between requests is closed after this.
    pub keepalive: Duration,
    /// A client that takes in none of its response for this long is dropped.
    pub client: Duration,
}

/// The guarded socket.
pub struct GuardedIo<T> {
    inner: T,
    state: Arc<ConnState>,
    timeouts: IoTimeouts,
    timer: LazyTimer,
    /// Since when writes have been blocked, if they are.
    write_blocked: Option<Instant>,
    /// The timer for blocked writes (made when a write first blocks).
    write_timer: Option<LazyTimer>,
    idle_since: Instant,
    head_started: Option<Instant>,
    head: Vec<u8>,
    head_done: bool,
    seen_served: u64,
    passthrough: bool,
}

impl<T> GuardedIo<T> {
    /// Guards `inner`; with `h2` the request-level checks are off (HTTP/2 frames requests itself).
    pub fn new(inner: T, state: Arc<ConnState>, timeouts: IoTimeouts, h2: bool) -> GuardedIo<T> {
        let now = Instant::now();
        GuardedIo {
            inner,
            state,
            timeouts,
            timer: LazyTimer::new(),
            write_blocked: None,
            write_timer: None,
            idle_since: now,
            head_started: None,
            head: Vec::new(),
            head_done: false,
            seen_served: 0,
            passthrough: h2,
        }
    }

    fn reset_for_next_request(&mut self) {
        self.idle_since = Instant::now();
        self.head_started = None;
        self.head.clear();
        self.head_done = false;
        self.state.smuggling.store(false, Ordering::Relaxed);
    }

    /// Looks at head bytes for Content-Length together with Transfer-Encoding.
    fn scan(&mut self, bytes: &[u8]) {
        if self.head_done {
            return;
        }
        self.head.extend_from_slice(bytes);
        if self.head.len() >= H2_PREFACE.len() && self.head.starts_with(H2_PREFACE) {
            self.passthrough = true;
            return;
        }
        let Some(end) = find(&self.head, b"\r\n\r\n") else {
            if self.head.len() > 64 * 1024 {
                self.head_done = true; // hyper refuses it as too large anyway
            }
            return;
        };
        self.head_done = true;
        let (mut cl, mut te) = (false, false);
        for line in self.head[..end].split(|&b| b == b'\n').skip(1) {
            let name = line.split(|&b| b == b':').next().unwrap_or(&[]);
            let name = name.trim_ascii();
            cl |= name.eq_ignore_ascii_case(b"content-length");
            te |= name.eq_ignore_ascii_case(b"transfer-encoding");
        }
        if cl && te {
            self.state.smuggling.store(true, Ordering::Relaxed);
        }
    }
}

impl<T> GuardedIo<T> {
    /// Watches a write: one blocked for the client timeout fails with `TimedOut`.
    fn watch_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        if polled.is_ready() {
            self.write_blocked = None;
            return polled;
        }
        let since = *self.write_blocked.get_or_insert_with(Instant::now);
        let timer = self.write_timer.get_or_insert_with(LazyTimer::new);
        if timer.poll_expired(cx, since + self.timeouts.client).is_ready() {
            tracing::debug!("client took in nothing for {:?}: closing", self.timeouts.client);
            return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client timeout")));
        }
        Poll::Pending
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.passthrough {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let served = this.state.served.load(Ordering::Relaxed);
        if served != this.seen_served {
            this.seen_served = served;
            this.reset_for_next_request();
        }
        let busy = this.state.busy.load(Ordering::Relaxed) > 0;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 && !busy {
                    if this.head_started.is_none() {
                        let now = Instant::now();
                        this.head_started = Some(now);
                        this.state.head_started(now.into_std());
                    }
                    this.scan(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if busy || this.head_done {
                    // hyper may not read again after the answer: have `end` wake it, and look
                    // again at once if the request ended meanwhile.
                    this.state.park(cx.waker());
                    if this.state.served.load(Ordering::Relaxed) != served {
                        cx.waker().wake_by_ref();
                    }
                    return Poll::Pending;
                }
                let deadline = match this.head_started {
                    Some(t) => t + this.timeouts.request_headers,
                    None if served == 0 => this.idle_since + this.timeouts.request_headers,
                    None => this.idle_since + this.timeouts.keepalive,
                };
                if this.timer.poll_expired(cx, deadline).is_pending() {
                    return Poll::Pending;
                }
                if this.head_started.is_some() {
                    // A head that never completed: say so before closing (best effort).
                    let _ = Pin::new(&mut this.inner).poll_write(cx, RESPONSE_408);
                    let _ = Pin::new(&mut this.inner).poll_flush(cx);
                    tracing::debug!("request head incomplete after {:?}: 408", this.timeouts.request_headers);
                }
                // End of stream: hyper closes the connection.
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn timeouts() -> IoTimeouts {
        IoTimeouts {
            request_headers: Duration::from_millis(200),
            keepalive: Duration::from_millis(300),
            client: Duration::from_millis(300),
        }
    }

    #[tokio::test]
    async fn content_length_with_transfer_encoding_is_flagged() {
        let (mut client, server) = tokio::io::duplex(4096);
        let state = Arc::new(ConnState::default());
        let mut io = GuardedIo::new(server, state.clone(), timeouts(), false);
        client
            .write_all(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        assert!(state.smuggling.load(Ordering::Relaxed));

        let (mut client, server) = tokio::io::duplex(4096);
        let state = Arc::new(ConnState::default());
        let mut io = GuardedIo::new(server, state.clone(), timeouts(), false);
        client.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").await.unwrap();
        assert!(io.read(&mut buf).await.unwrap() > 0);
        assert!(!state.smuggling.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn an_incomplete_head_gets_408_and_eof() {
        let (mut client, server) = tokio::io::duplex(4096);
        let state = Arc::new(ConnState::default());
        let mut io = GuardedIo::new(server, state.clone(), timeouts(), false);
        client.write_all(b"GET / HTTP/1.1\r\nHost: slow").await.unwrap();
        let mut buf = [0u8; 256];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        assert_eq!(io.read(&mut buf).await.unwrap(), 0, "end of stream after the head timeout");
        let mut got = vec![0u8; RESPONSE_408.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, RESPONSE_408);
    }

    /// hyper reads once more after a head, before its service runs, then not again after a
    /// quick answer: the keep-alive deadline must be armed all the same.
    #[tokio::test]
    async fn an_idle_connection_after_a_quick_answer_is_closed() {
        use hyper::service::service_fn;
        let (mut client, server) = tokio::io::duplex(4096);
        let state = Arc::new(ConnState::default());
        let io = GuardedIo::new(server, state.clone(), timeouts(), false);
        let st = state.clone();
        let svc = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
            let st = st.clone();
            async move {
                st.begin();
                st.end();
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"OK\n"),
                )))
            }
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(io), svc),
        );
        client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = client.read(&mut buf).await.unwrap();
        assert!(buf[..n].ends_with(b"OK\n"));
        let idle = std::time::Instant::now();
        let n = tokio::time::timeout(Duration::from_secs(3), client.read(&mut buf))
            .await
            .expect("closed")
            .unwrap();
        assert_eq!(n, 0, "closed without a word");
        assert!(
            idle.elapsed() < Duration::from_secs(2),
            "after the keep-alive timeout: {:?}",
            idle.elapsed()
        );
    }

    #[tokio::test]
    async fn an_idle_connection_closes_silently() {
        let (mut client, server) = tokio::io::duplex(4096);
        let state = Arc::new(ConnState::default());
        let mut io = GuardedIo::new(server, state.clone(), timeouts(), false);
        let mut buf = [0u8; 16];
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        drop(io);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "no 408 for a connection that never sent anything");
    }
}
