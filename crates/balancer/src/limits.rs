//! Limits on what a client may cost: the request body on its way upstream,
//! size-limited (413) and watched for malformed chunking (400) so the proxy can
//! tell a bad request from a bad server; and the connection cap, which follows
//! the process's descriptor limit (`RLIMIT_NOFILE`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept out of the connection cap: listeners, health checks, logs, files.
pub const FD_RESERVE: u64 = 256;

/// The connection cap `soft` descriptors allow: each proxied connection holds two (the client's
/// and the server's), after [`FD_RESERVE`]; never more than `configured`, never 0.
pub fn cap_for(configured: usize, soft: u64) -> usize {
    let allowed = soft.saturating_sub(FD_RESERVE) / 2;
    configured.min(usize::try_from(allowed).unwrap_or(usize::MAX)).max(1)
}

/// The connection cap in force for `configured` (`limits.max_connections`): the soft
/// descriptor limit is first raised towards the hard one as far as `configured` needs (as
/// HAProxy sizes its own), then the cap is what it allows ([`cap_for`]). Logged.
pub fn connection_cap(configured: usize) -> usize {
    let Ok((mut soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        tracing::warn!(
            max_connections = configured,
            "cannot read RLIMIT_NOFILE: the configured connection cap applies"
        );
        return configured;
    };
    let needed = (configured as u64).saturating_mul(2).saturating_add(FD_RESERVE);
    if soft < needed && soft < hard {
        let raised = needed.min(hard);
        match setrlimit(Resource::RLIMIT_NOFILE, raised, hard) {
            Ok(()) => soft = raised,
            Err(e) => tracing::debug!(error = %e, "cannot raise RLIMIT_NOFILE"),
        }
    }
    let cap = cap_for(configured, soft);
    if cap < configured {
        tracing::warn!(
            max_connections = configured,
            nofile = soft,
            cap,
            "the descriptor limit (RLIMIT_NOFILE) allows fewer connections than configured: raise it (ulimit -n) for more"
        );
    } else {
        tracing::info!(max_connections = cap, nofile = soft, "connection cap");
    }
    cap
}

/// What happened to a request body, seen by the proxy after the exchange.
#[derive(Debug, Default)]
pub struct BodyReport {
    /// The body went over the limit.
    pub too_large: AtomicBool,
    /// The body was malformed or the client went away mid-body.
    pub broken: AtomicBool,
    /// Bytes read.
    pub bytes: AtomicU64,
}

/// Error raised when the body exceeds the limit.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub struct TooLarge(pub u64);

/// A request body with a byte limit and a report.
#[derive(Debug)]
pub struct LimitedBody {
    inner: Incoming,
    limit: u64,
    report: Arc<BodyReport>,
}

impl LimitedBody {
    /// Wraps `inner`.
    pub fn new(inner: Incoming, limit: u64, report: Arc<BodyReport>) -> LimitedBody {
        LimitedBody { inner, limit, report }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let total =
                        this.report.bytes.fetch_add(d.len() as u64, Ordering::Relaxed) + d.len() as u64;
                    if total > this.limit {
                        this.report.too_large.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(TooLarge(this.limit)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.report.broken.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            other => other.map_err(|e| Box::new(e) as Self::Error),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_follows_the_descriptors() {
        assert_eq!(cap_for(65_536, 1024), 384, "(1024 - 256) / 2");
        assert_eq!(cap_for(100, 1_048_576), 100, "the configured cap when descriptors abound");
        assert_eq!(cap_for(100, 10), 1, "never 0");
        assert_eq!(cap_for(usize::MAX, u64::MAX), (u64::MAX / 2 - FD_RESERVE / 2) as usize);
    }
}
