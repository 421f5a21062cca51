//! The client's request body on its way upstream: size-limited (413) and
//! watched for malformed chunking (400), so the proxy can tell a bad request
//! from a bad server.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

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
