//! Idle keep-alive connections to one server, newest first, none kept past its age limit.
//!
//! A request takes one (or dials a new one) and gives it back only when its response was read
//! to the end with nothing after it, so a connection is never shared by two requests and a
//! half-read response never poisons the next one.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::conn::LazyTimer;

/// Idle connections kept per server.
const MAX_IDLE: usize = 512;
/// An idle connection older than this is not reused (the server may close it any moment).
const MAX_IDLE_AGE: Duration = Duration::from_secs(30);

/// A connection to a server.
#[derive(Debug)]
pub(crate) struct RawConn {
    /// The socket.
    pub(crate) stream: TcpStream,
    /// The server timeout's timer.
    pub(crate) timer: LazyTimer,
}

impl RawConn {
    /// A fresh connection.
    pub(crate) fn new(stream: TcpStream) -> RawConn {
        RawConn { stream, timer: LazyTimer::new() }
    }

    /// Whether the server has closed (or written to) it while it sat idle: no readiness since
    /// its last answer was read says so without a system call; else a read that would block
    /// means it is still good to send on.
    fn is_quiet(&self) -> bool {
        !readable_now(&self.stream)
            || matches!(self.stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Whether the socket has something to read now, without a system call when tokio knows it
/// has not (no readiness event since its last short or failed read).
pub(crate) fn readable_now(stream: &TcpStream) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    stream.poll_read_ready(&mut cx).is_ready()
}

/// Idle connections to one server.
#[derive(Default)]
pub struct ConnPool(std::sync::Mutex<Vec<(RawConn, Instant)>>);

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool").field("idle", &self.len()).finish()
    }
}

impl ConnPool {
    /// The newest idle connection that is young enough and still open (older ones are dropped).
    pub(crate) fn take(&self) -> Option<RawConn> {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((c, since)) = idle.pop() {
            if since.elapsed() < MAX_IDLE_AGE && c.is_quiet() {
                return Some(c);
            }
        }
        None
    }

    /// Keeps a connection whose last response was read to its end, unless [`MAX_IDLE`] are
    /// kept already.
    pub(crate) fn put(&self, c: RawConn) {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((c, Instant::now()));
        }
    }

    /// How many idle connections it keeps now.
    pub(crate) fn len(&self) -> usize {
        self.0.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Drops every idle connection (the server is gone).
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
