//! One pipeline, every wire path: the same requests sent over the HTTP/1.1 fast path, the
//! general (hyper) path, HTTP/2 with prior knowledge, and HTTP/1.1 and HTTP/2 over TLS reach the
//! server as the same request and leave the same access-log record.

mod common;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use shoal_balancer::{AccessLogFormat, BalancerConfig, FrontendConfig, PoolConfig};
use shoal_gossip::MemberStatus::Alive;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The ways a request reaches the balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Wire {
    /// HTTP/1.1, plain: the fast path.
    Fast,
    /// HTTP/1.1, plain, on a frontend without the fast path: hyper.
    General,
    /// HTTP/2 with prior knowledge: hyper.
    H2c,
    /// HTTP/1.1 over TLS: the fast path.
    TlsH1,
    /// HTTP/2 over TLS (ALPN): hyper.
    TlsH2,
}

impl Wire {
    const ALL: [Wire; 5] = [Wire::Fast, Wire::General, Wire::H2c, Wire::TlsH1, Wire::TlsH2];

    fn frontend(self) -> &'static str {
        match self {
            Wire::Fast | Wire::H2c => "fast",
            Wire::General => "general",
            Wire::TlsH1 | Wire::TlsH2 => "tls",
        }
    }

    fn h2(self) -> bool {
        matches!(self, Wire::H2c | Wire::TlsH2)
    }
}

/// A request to send every way.
struct Case {
    method: &'static str,
    target: &'static str,
    /// End-to-end fields, sent on every wire.
    fields: Vec<(&'static str, String)>,
    /// Connection-specific fields HTTP/2 cannot carry, sent on HTTP/1 wires only.
    h1_only: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    /// Sent chunked on HTTP/1 (and without a length on HTTP/2).
    chunked: bool,
}

fn cases() -> Vec<Case> {
    let token = shoal_balancer::sticky_token("recorder");
    let kib = |n: usize| (0..n * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
    vec![
        Case {
            method: "GET",
            target: "/a?x=1&y=%20",
            fields: vec![
                ("X-Request-Id", "7".into()),
                ("Accept", "*/*".into()),
                ("X-Forwarded-For", "203.0.113.9".into()),
                ("X-Forwarded-Proto", "gopher".into()),
                ("X-Forwarded-Port", "1".into()),
                ("Cookie", format!("a=1; SERVERID={token}; b=2")),
            ],
            h1_only: vec![
                ("Connection", "keep-alive, X-Private"),
                ("X-Private", "secret"),
                ("Keep-Alive", "timeout=9"),
                ("Proxy-Connection", "keep-alive"),
            ],
            body: Vec::new(),
            chunked: false,
        },
        Case {
            method: "HEAD",
            target: "/b",
            fields: vec![("Accept-Encoding", "gzip".into())],
            h1_only: vec![],
            body: Vec::new(),
            chunked: false,
        },
        Case {
            method: "POST",
            target: "/c",
            fields: vec![("Content-Type", "application/octet-stream".into())],
            h1_only: vec![],
            body: kib(1),
            chunked: false,
        },
        Case { method: "PUT", target: "/d", fields: vec![], h1_only: vec![], body: kib(100), chunked: false },
        Case {
            method: "POST",
            target: "/e",
            fields: vec![("X-Upload", "chunks".into())],
            h1_only: vec![],
            body: kib(20),
            chunked: true,
        },
        Case {
            method: "DELETE",
            target: "/f/%7Euser",
            fields: vec![("Cookie", "only=mine".into())],
            h1_only: vec![("TE", "trailers")],
            body: Vec::new(),
            chunked: false,
        },
    ]
}

/// The request as HTTP/1.1 bytes.
fn h1_bytes(c: &Case) -> Vec<u8> {
    let mut out = format!("{} {} HTTP/1.1\r\nHost: app.test\r\n", c.method, c.target);
    for (n, v) in &c.fields {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    for (n, v) in &c.h1_only {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    let mut bytes = if c.chunked {
        out.push_str("Transfer-Encoding: chunked\r\n\r\n");
        let mut b = out.into_bytes();
        for piece in c.body.chunks(7 * 1024) {
            b.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            b.extend_from_slice(piece);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"0\r\n\r\n");
        return b;
    } else if !c.body.is_empty() {
        out.push_str(&format!("Content-Length: {}\r\n\r\n", c.body.len()));
        out.into_bytes()
    } else {
        out.push_str("\r\n");
        out.into_bytes()
    };
    bytes.extend_from_slice(&c.body);
    bytes
}

/// A request body in pieces, with no length known in advance (sent without `content-length`).
struct Pieces(Vec<Bytes>);

impl hyper::body::Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready((!self.0.is_empty()).then(|| Ok(Frame::data(self.0.remove(0)))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        let mut h = SizeHint::new();
        if self.0.is_empty() {
            h.set_exact(0);
        }
        h
    }
}

/// The request for an HTTP/2 client.
fn h2_request(c: &Case, scheme: &str) -> Request<Pieces> {
    let mut r = Request::builder().method(c.method).uri(format!("{scheme}://app.test{}", c.target));
    for (n, v) in &c.fields {
        r = r.header(*n, v.as_str());
    }
    let pieces: Vec<Bytes> = c.body.chunks(7 * 1024).map(Bytes::copy_from_slice).collect();
    if !c.chunked && !c.body.is_empty() {
        r = r.header("content-length", c.body.len());
    }
    r.body(Pieces(pieces)).unwrap()
}

async fn h1_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    c: &Case,
) -> (u16, Vec<u8>) {
    s.write_all(&h1_bytes(c)).await.unwrap();
    let (status, _, body) = read_response(s, buf, c.method == "HEAD").await;
    (status, body)
}

async fn h2_exchange(
    sender: &mut hyper::client::conn::http2::SendRequest<Pieces>,
    c: &Case,
    scheme: &str,
) -> (u16, Vec<u8>) {
    let resp = sender.send_request(h2_request(c, scheme)).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes().to_vec())
}

/// What the server got, comparable across wires: line, fields by lower-case name (sorted,
/// without those that differ by design per frontend), body.
fn comparable(r: &Received) -> (String, String, Vec<(String, String)>, Vec<u8>) {
    let mut fields: Vec<(String, String)> = r
        .fields
        .iter()
        .filter(|(n, _)| n != "x-forwarded-port" && n != "x-forwarded-proto")
        .cloned()
        .collect();
    fields.sort();
    (r.method.clone(), r.target.clone(), fields, r.body.clone())
}

/// The facts of an access-log record that do not depend on the wire.
fn facts(v: &serde_json::Value) -> BTreeMap<&'static str, String> {
    let request = v["request"].as_str().unwrap_or("");
    // The version differs by design: `GET /a HTTP/1.1` and `GET /a HTTP/2.0`.
    let line = request.rsplit_once(' ').map_or(request, |(l, _)| l).to_string();
    let mut f = BTreeMap::new();
    f.insert("line", line);
    for k in ["backend", "server", "status", "bytes", "termination", "retries"] {
        f.insert(k, v[k].to_string());
    }
    f
}

#[tokio::test]
async fn every_wire_sends_the_same_upstream_request_and_leaves_the_same_record() {
    let dir = std::env::temp_dir().join(format!("shoal-pipeline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (tls, der) = self_signed(&dir);
    let mut pool = PoolConfig::new("backend", "backend", 3000);
    pool.health.enabled = false;
    pool.sticky_cookie = Some("SERVERID".into());
    let mut cfg = BalancerConfig::simple(vec!["127.0.0.1:0".parse().unwrap()], pool, None);
    cfg.frontends[0].name = "fast".into();
    // Port 0 on distinct addresses: each frontend its own listener.
    let frontend =
        |name: &str, ip: &str, tls: Option<shoal_balancer::TlsConfig>, fast_path: bool| FrontendConfig {
            name: name.into(),
            listen: vec![format!("{ip}:0").parse().unwrap()],
            tls,
            routes: Vec::new(),
            default_pool: "backend".into(),
            fast_path,
        };
    cfg.frontends.push(frontend("general", "127.0.0.2", None, false));
    cfg.frontends.push(frontend("tls", "127.0.0.3", Some(tls), true));
    cfg.access_log = AccessLogFormat::Json;
    let h = Harness::with_config(cfg).await;
    let log = LogLines::default();
    h.balancer.log_access_to(Box::new(log.clone()));
    let (backend, seen) = recording_backend(|r| {
        let body = if r.method == "HEAD" { "" } else { "ok" };
        format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Up: 1\r\n\r\n{body}").into_bytes()
    })
    .await;
    h.set(vec![member("recorder", backend, Alive, &[])]);
    h.wait_serving(1).await;
    let fronts: BTreeMap<String, std::net::SocketAddr> = h.balancer.listeners().await.into_iter().collect();

    let mut got: BTreeMap<(usize, Wire), (u16, Vec<u8>, Received)> = BTreeMap::new();
    for wire in Wire::ALL {
        let front = fronts[wire.frontend()];
        let cases = cases();
        let mut answers = Vec::new();
        match wire {
            Wire::Fast | Wire::General => {
                let mut s = TcpStream::connect(front).await.unwrap();
                let mut buf = Vec::new();
                for c in &cases {
                    answers.push(h1_exchange(&mut s, &mut buf, c).await);
                }
            }
            Wire::TlsH1 => {
                let mut s = tls_connect(front, &der, b"http/1.1").await;
                let mut buf = Vec::new();
                for c in &cases {
                    answers.push(h1_exchange(&mut s, &mut buf, c).await);
                }
            }
            Wire::H2c => {
                let tcp = TcpStream::connect(front).await.unwrap();
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                for c in &cases {
                    answers.push(h2_exchange(&mut sender, c, "http").await);
                }
            }
            Wire::TlsH2 => {
                let tls = tls_connect(front, &der, b"h2").await;
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                for c in &cases {
                    answers.push(h2_exchange(&mut sender, c, "https").await);
                }
            }
        }
        let received: Vec<Received> = std::mem::take(&mut *seen.lock().unwrap());
        assert_eq!(received.len(), cases.len(), "{wire:?}: one upstream request per request");
        for (i, ((status, body), r)) in answers.into_iter().zip(received).enumerate() {
            got.insert((i, wire), (status, body, r));
        }
    }

    for (i, c) in cases().iter().enumerate() {
        let (status, body, first) = &got[&(i, Wire::Fast)];
        assert_eq!(*status, 200, "{} {}", c.method, c.target);
        assert_eq!(body.as_slice(), if c.method == "HEAD" { &b""[..] } else { b"ok" });
        // What every path must have done to the request.
        assert_eq!(first.body, c.body, "{} {}: the body arrives whole", c.method, c.target);
        assert_eq!(first.field("host"), Some("app.test"));
        assert_eq!(
            first.field("x-forwarded-for"),
            Some(if i == 0 { "203.0.113.9, 127.0.0.1" } else { "127.0.0.1" })
        );
        for gone in ["connection", "keep-alive", "x-private", "proxy-connection", "te"] {
            assert_eq!(first.field(gone), None, "{gone} is not forwarded: {}", first.raw_head);
        }
        if i == 0 {
            assert_eq!(first.field("cookie"), Some("a=1; b=2"), "the balancer's cookie stays here");
        }
        for wire in Wire::ALL {
            let (status, body, r) = &got[&(i, wire)];
            assert_eq!(
                (*status, body),
                (200, &got[&(i, Wire::Fast)].1),
                "{wire:?} {} {}",
                c.method,
                c.target
            );
            assert_eq!(
                comparable(r),
                comparable(first),
                "{wire:?} {} {}: the server sees the same request\n{}\nvs\n{}",
                c.method,
                c.target,
                r.raw_head,
                first.raw_head
            );
            let tls = matches!(wire, Wire::TlsH1 | Wire::TlsH2);
            assert_eq!(r.field("x-forwarded-proto"), Some(if tls { "https" } else { "http" }));
            assert_eq!(
                r.field("x-forwarded-port"),
                Some(fronts[wire.frontend()].port().to_string().as_str())
            );
        }
    }

    // The records: one per request, the same facts whatever the wire.
    let want = Wire::ALL.len() * cases().len();
    wait_until("every request's access-log line", || log.json().len() >= want).await;
    let lines = log.json();
    assert_eq!(lines.len(), want);
    for (w, wire) in Wire::ALL.iter().enumerate() {
        for (i, c) in cases().iter().enumerate() {
            let line = &lines[w * cases().len() + i];
            assert_eq!(line["frontend"], wire.frontend(), "{wire:?}");
            assert!(line["request"].as_str().unwrap().starts_with(&format!("{} ", c.method)), "{line}");
            assert_eq!(facts(line), facts(&lines[i]), "{wire:?} {} {}: {line}", c.method, c.target);
            let version = if wire.h2() { "HTTP/2.0" } else { "HTTP/1.1" };
            assert!(line["request"].as_str().unwrap().ends_with(version), "{line}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn http2_bodies_stream_up_chunked_and_chunked_answers_come_back_decoded_with_trailers() {
    let mut pool = PoolConfig::new("backend", "backend", 3000);
    pool.health.enabled = false;
    let h = Harness::new(pool).await;
    let (backend, seen) = recording_backend(|_| {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Grpc-Status\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\nGrpc-Status: 0\r\nX-Sum: 11\r\n\r\n"
            .to_vec()
    })
    .await;
    h.set(vec![member("recorder", backend, Alive, &[])]);
    h.wait_serving(1).await;
    let tcp = TcpStream::connect(h.front).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    // 300 KiB with no length: more than is buffered, so it streams, chunked.
    let body: Vec<u8> = (0..300 * 1024).map(|i| (i % 241) as u8).collect();
    let pieces = body.chunks(16 * 1024).map(Bytes::copy_from_slice).collect();
    let req = Request::post(format!("http://{}/up", h.front)).body(Pieces(pieces)).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key("transfer-encoding"), "HTTP/2 has no chunking");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("the trailers came through");
    assert_eq!(collected.to_bytes(), "hello world");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-sum"], "11");
    let got = seen.lock().unwrap().pop().unwrap();
    assert_eq!(got.field("transfer-encoding"), Some("chunked"));
    assert_eq!(got.body, body, "the body arrived whole");
}
