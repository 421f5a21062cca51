//! The general path: a wire adapter over hyper, for HTTP/2 clients and for the HTTP/1
//! requests the fast path hands over (`Expect`, HTTP/1.0, absolute-form targets, ambiguous or
//! oversized heads and bodies).
//!
//! hyper parses and frames; this adapter makes the checks hyper does not (two `Host` fields,
//! an authority that disagrees with `Host`, `Content-Length` with `Transfer-Encoding`, the body
//! limit), then shows the head to the [pipeline](crate::pipeline) and sends it with the same
//! exchange and retry loop as the fast path. The server's answer comes back as a hyper body;
//! an upgrade is spliced once both sides have switched.

use std::cell::Cell;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::codec::HeaderSink;
use crate::codec::{hex_len, is_hop_by_hop, itoa};
use crate::forward::{Unanswered, forward};
use crate::frontend::ConnCtx;
use crate::h1::RESEND_BUFFER;
use crate::pipeline::{BodyFraming, Txn, plan, upstream_head};
use crate::upstream::{Answer, BodyError, BodyStream, ClientBodyError, DropInterim, NoBody, UpstreamBody};
use shoal_gossip::escape::Esc;

/// Handles one client request.
pub(crate) async fn handle(
    req: Request<Incoming>,
    ctx: ConnCtx,
) -> Result<Response<GuardedBody>, Infallible> {
    let fe = ctx.frontend.load_full();
    let now = Instant::now();
    // Logged in origin form whatever the protocol: `GET /path HTTP/2.0`.
    let line = || {
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let version = match req.version() {
            Version::HTTP_09 => "HTTP/0.9",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_11 => "HTTP/1.1",
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/?",
        };
        let method = req.method().as_str();
        let mut line = String::with_capacity(method.len() + target.len() + version.len() + 2);
        for part in [method, " ", target, " ", version] {
            line.push_str(part);
        }
        line
    };
    let head_age = ctx.state.as_ref().map_or(Duration::ZERO, |s| s.head_age(now));
    let mut txn = Txn::begin(&ctx, fe.clone(), now, head_age, line);
    if ctx.state.as_ref().is_some_and(|s| s.smuggling.load(Ordering::Relaxed)) {
        tracing::warn!(client = %ctx.client, "request with both Content-Length and Transfer-Encoding refused");
        txn.denied(400, *b"PR");
        return Ok(local(txn, StatusCode::BAD_REQUEST, "Bad request: ambiguous message length\n", true));
    }
    if let Some(why) = host_problem(&req, fe.tls) {
        tracing::debug!(client = %ctx.client, why, "request refused");
        txn.denied(400, *b"PR");
        return Ok(local(txn, StatusCode::BAD_REQUEST, why, true));
    }
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > fe.max_body) {
        txn.denied(413, *b"PR");
        return Ok(local(txn, StatusCode::PAYLOAD_TOO_LARGE, "Payload too large\n", true));
    }
    let upgrade = wants_upgrade(&req);
    let mut req = req;
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let plan = plan(&fe, ctx.client.ip(), &parts, upgrade);
    txn.routed(&plan.pool);
    txn.received(head_len(&parts));

    // A small body (declared, or found to be small as it comes) is read whole: the request
    // can then go out twice, with its length.
    let mut whole: Option<Vec<u8>> = None;
    let mut stream = None;
    if body.is_end_stream() || declared == Some(0) {
        whole = Some(Vec::new());
    } else if declared.is_some_and(|n| n > RESEND_BUFFER) {
        stream = Some(ClientBody::new(body, declared, Vec::new(), fe.max_body, fe.timeouts.client));
    } else {
        let mut body = body;
        let mut read = Vec::new();
        loop {
            match tokio::time::timeout(fe.timeouts.client, body.frame()).await {
                Ok(None) => {
                    whole = Some(read);
                    break;
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        read.extend_from_slice(&data);
                    }
                    if read.len() as u64 > RESEND_BUFFER.min(fe.max_body) {
                        stream = Some(ClientBody::new(body, declared, read, fe.max_body, fe.timeouts.client));
                        break;
                    }
                }
                Err(_) | Ok(Some(Err(_))) => {
                    txn.denied(400, *b"CR");
                    return Ok(local(txn, StatusCode::BAD_REQUEST, "Bad request body\n", true));
                }
            }
        }
    }
    // The framing the client chose: its length, or chunks when it declared none.
    let framing = match (&whole, declared) {
        (Some(b), _) if b.is_empty() => BodyFraming::None,
        (_, Some(n)) => BodyFraming::Length(n),
        (_, None) => BodyFraming::Chunked,
    };
    let mut request = Vec::with_capacity(512 + whole.as_ref().map_or(0, Vec::len));
    upstream_head(&parts, &plan, &ctx, fe.tls, framing, &mut request);
    if let Some(b) = whole.as_ref().filter(|b| !b.is_empty()) {
        if framing == BodyFraming::Chunked {
            request.extend_from_slice(hex_len(b.len(), &mut [0u8; 16]));
            request.extend_from_slice(b"\r\n");
            request.extend_from_slice(b);
            request.extend_from_slice(b"\r\n0\r\n\r\n");
        } else {
            request.extend_from_slice(b);
        }
        txn.received(b.len() as u64);
    }
    let forwarded = match &mut stream {
        None => forward(&plan, &fe, &mut txn, [&request, &[]], &mut NoBody, &mut DropInterim, false).await,
        Some(s) => {
            let r = forward(&plan, &fe, &mut txn, [&request, &[]], s, &mut DropInterim, false).await;
            txn.received(s.total);
            r
        }
    };
    let (server, answer) = match forwarded {
        Ok(a) => a,
        Err(Unanswered::Failed(f)) => {
            let (status, text) = f.answer();
            txn.answered_locally(status.as_u16(), f.termination());
            return Ok(local(txn, status, text, false));
        }
        Err(Unanswered::Client(e)) => {
            let (status, text, why) = match e {
                ClientBodyError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Payload too large\n", *b"PR"),
                ClientBodyError::Malformed | ClientBodyError::Gone => {
                    (StatusCode::BAD_REQUEST, "Bad request body\n", *b"CD")
                }
            };
            txn.denied(status.as_u16(), why);
            return Ok(local(txn, status, text, true));
        }
    };
    let status = StatusCode::from_u16(answer.head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut head = Response::new(());
    *head.status_mut() = status;
    if answer.head.switches()
        && let Some(client_upgrade) = client_upgrade
    {
        let Answer { conn, rest, fields, .. } = answer;
        *head.headers_mut() = fields;
        let name = server.name.clone();
        tokio::spawn(async move {
            let mut server_io = conn.stream;
            match client_upgrade.await {
                Ok(c) => {
                    let mut client_io = hyper_util::rt::TokioIo::new(c);
                    if !rest.is_empty()
                        && tokio::io::AsyncWriteExt::write_all(&mut client_io, &rest).await.is_err()
                    {
                        return;
                    }
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client_io, &mut server_io).await {
                        tracing::debug!(server = %Esc(&name), error = %e, "upgraded connection ended");
                    }
                }
                Err(e) => tracing::debug!(server = %Esc(&name), error = %e, "upgrade failed"),
            }
        });
        txn.complete();
        return Ok(head.map(|()| GuardedBody::new(RespBody::Empty, txn)));
    }
    let mut answer = answer;
    let mut fields = std::mem::take(&mut answer.fields);
    if answer.cut_short {
        // The server answered before it had the whole body: the rest of it is not read.
        fields.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    *head.headers_mut() = fields;
    let body = UpstreamBody::new(answer, server, fe.timeouts.server);
    Ok(head.map(|()| GuardedBody::new(RespBody::Upstream(Box::new(body)), txn)))
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
fn head_len(parts: &http::request::Parts) -> u64 {
    let target = parts.uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = parts.method.as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let headers: usize = parts.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    (line + headers + 2) as u64
}

fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// A client's body streamed from hyper, framed for the server (a length it declared, or
/// chunked), under the body limit and the client timeout.
struct ClientBody {
    inner: Incoming,
    /// Data read before streaming began, sent first.
    first: Vec<u8>,
    chunked: bool,
    out: Vec<u8>,
    total: u64,
    limit: u64,
    timeout: Duration,
    started: bool,
    done: bool,
}

impl ClientBody {
    fn new(
        inner: Incoming,
        declared: Option<u64>,
        first: Vec<u8>,
        limit: u64,
        timeout: Duration,
    ) -> ClientBody {
        ClientBody {
            inner,
            chunked: declared.is_none(),
            out: Vec::new(),
            total: first.len() as u64,
            first,
            limit,
            timeout,
            started: false,
            done: false,
        }
    }
}

impl ClientBody {
    /// Appends `data` to the output, as a chunk when the body goes chunked.
    fn frame_data(&mut self, data: &[u8]) {
        if !self.chunked {
            self.out.extend_from_slice(data);
            return;
        }
        self.out.extend_from_slice(hex_len(data.len(), &mut [0u8; 16]));
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(data);
        self.out.extend_from_slice(b"\r\n");
    }
}

impl BodyStream for ClientBody {
    async fn next(&mut self) -> Result<Option<&[u8]>, ClientBodyError> {
        loop {
            if self.done {
                return Ok(None);
            }
            if !self.first.is_empty() {
                let first = std::mem::take(&mut self.first);
                self.started = true;
                self.out.clear();
                self.frame_data(&first);
                return Ok(Some(&self.out));
            }
            let frame = match tokio::time::timeout(self.timeout, self.inner.frame()).await {
                Err(_) => return Err(ClientBodyError::Gone),
                Ok(Some(Err(e))) if e.is_incomplete_message() => return Err(ClientBodyError::Gone),
                Ok(Some(Err(_))) => return Err(ClientBodyError::Malformed),
                Ok(Some(Ok(frame))) => Some(frame),
                Ok(None) => None,
            };
            self.out.clear();
            self.started = true;
            let Some(frame) = frame else {
                self.done = true;
                if !self.chunked {
                    return Ok(None);
                }
                self.out.extend_from_slice(b"0\r\n\r\n");
                return Ok(Some(&self.out));
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => {
                    self.total += data.len() as u64;
                    if self.total > self.limit {
                        return Err(ClientBodyError::TooLarge);
                    }
                    self.frame_data(&data);
                    return Ok(Some(&self.out));
                }
                Err(frame) => {
                    // Trailers end a chunked body; a body of declared length has none to carry.
                    self.done = true;
                    if !self.chunked {
                        return Ok(None);
                    }
                    self.out.extend_from_slice(b"0\r\n");
                    if let Ok(trailers) = frame.into_trailers() {
                        for (name, value) in trailers.iter().filter(|(n, _)| !is_hop_by_hop(n.as_str())) {
                            self.out.field(name.as_str().as_bytes(), value.as_bytes());
                        }
                    }
                    self.out.extend_from_slice(b"\r\n");
                    return Ok(Some(&self.out));
                }
            }
        }
    }

    fn started(&self) -> bool {
        self.started
    }
}

/// Response bodies given to hyper: from a server, or made here.
#[derive(Debug)]
pub(crate) enum RespBody {
    /// Streamed from a server.
    Upstream(Box<UpstreamBody>),
    /// Made by the balancer.
    Local(Full<Bytes>),
    /// None (an upgrade's `101`).
    Empty,
}

/// A response body that carries its request's [`Txn`]: bytes are counted as they go, and the
/// record is written when the body is done (or dropped).
#[derive(Debug)]
pub(crate) struct GuardedBody {
    body: RespBody,
    txn: Txn,
    /// The body reached its end (set from `is_end_stream`, which takes `&self`).
    finished: Cell<bool>,
}

impl GuardedBody {
    fn new(body: RespBody, txn: Txn) -> GuardedBody {
        GuardedBody { body, txn, finished: Cell::new(false) }
    }
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        if self.finished.get() {
            self.txn.complete();
        }
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.body {
            RespBody::Upstream(b) => Pin::new(&mut **b).poll_frame(cx),
            RespBody::Local(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            RespBody::Empty => Poll::Ready(None),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.txn.sent(d.len() as u64);
                }
            }
            Poll::Ready(Some(Err(BodyError::Timeout))) => this.txn.cut(*b"sD"),
            Poll::Ready(Some(Err(BodyError::Broken))) => this.txn.cut(*b"SD"),
            Poll::Ready(None) => this.finished.set(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = match &self.body {
            RespBody::Upstream(b) => b.is_end_stream(),
            RespBody::Local(b) => b.is_end_stream(),
            RespBody::Empty => true,
        };
        // hyper stops polling a body that says it has ended: that is its end too.
        if end {
            self.finished.set(true);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            RespBody::Upstream(b) => b.size_hint(),
            RespBody::Local(b) => b.size_hint(),
            RespBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// The balancer's own plain-text answer.
fn local(txn: Txn, status: StatusCode, text: &'static str, close: bool) -> Response<GuardedBody> {
    let mut r =
        Response::new(GuardedBody::new(RespBody::Local(Full::new(Bytes::from_static(text.as_bytes()))), txn));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r.headers_mut().insert(
        header::CONTENT_LENGTH,
        HeaderValue::from_bytes(itoa(text.len() as u64, &mut [0; 20]))
            .unwrap_or(HeaderValue::from_static("0")),
    );
    if close {
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}
