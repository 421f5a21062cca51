//! HTTP/1.1 on the wire, as every path needs it: message framing (length, chunked, until the
//! close), a chunked-body walker that both relays framing untouched and decodes it, a response
//! head parser that writes the head it keeps into any [`HeaderSink`], and the balancer's own
//! plain-text answers.
//!
//! Nothing here does I/O; the adapters read and write, this only looks at bytes.

use std::ops::Range;

use http::StatusCode;

/// Headers parsed per message; a message with more is refused (requests go to the general path).
pub(crate) const MAX_HEADERS: usize = 64;
/// Largest response head taken from a server.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Largest trailer section kept when a chunked body is decoded.
const MAX_TRAILERS: usize = 8 * 1024;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// None (HEAD, 1xx, 204, 304, a request without a body).
    Empty,
    /// This many bytes are still to come.
    Length(u64),
    /// Chunked.
    Chunked(Chunks),
    /// Everything up to the end of the connection (responses only).
    UntilClose,
}

impl Framing {
    /// How many of `bytes` belong to the body, and whether the body is complete after them.
    pub(crate) fn take(&mut self, bytes: &[u8]) -> Result<(usize, bool), BadFraming> {
        match self {
            Framing::Empty => Ok((0, true)),
            Framing::Length(left) => {
                let n = (*left).min(bytes.len() as u64);
                *left -= n;
                Ok((n as usize, *left == 0))
            }
            Framing::Chunked(c) => c.walk(bytes, |_, _| {}),
            Framing::UntilClose => Ok((bytes.len(), false)),
        }
    }

    /// Whether the body has been read to its end (never for [`Framing::UntilClose`]).
    pub(crate) fn is_done(&self) -> bool {
        match self {
            Framing::Empty | Framing::Length(0) => true,
            Framing::Chunked(c) => *c == Chunks::Done,
            _ => false,
        }
    }
}

/// The chunked framing is broken: the message cannot be delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadFraming;

/// What a run of bytes inside a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Chunk data.
    Data,
    /// Part of the trailer section (header lines after the last chunk).
    Trailer,
}

/// Where a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunks {
    Size { digits: u8, size: u64 },
    Extension { size: u64 },
    SizeEnd { size: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunks {
    /// The start of a chunked body.
    pub(crate) fn new() -> Chunks {
        Chunks::Size { digits: 0, size: 0 }
    }

    /// Walks `bytes` as chunked framing, telling `on` where each run of chunk data and of the
    /// trailer section lies; returns how many bytes belong to the body and whether it ended.
    pub(crate) fn walk(
        &mut self,
        bytes: &[u8],
        mut on: impl FnMut(Piece, Range<usize>),
    ) -> Result<(usize, bool), BadFraming> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            *self = match *self {
                Chunks::Done => return Ok((i, true)),
                Chunks::Data(left) => {
                    let n = left.min((bytes.len() - i) as u64) as usize;
                    on(Piece::Data, i..i + n);
                    i += n;
                    *self = if n as u64 == left { Chunks::DataCr } else { Chunks::Data(left - n as u64) };
                    continue;
                }
                Chunks::Size { digits, size } => match (b as char).to_digit(16) {
                    Some(d) if digits < 15 => {
                        Chunks::Size { digits: digits + 1, size: size << 4 | u64::from(d) }
                    }
                    None if digits > 0 && matches!(b, b';' | b' ' | b'\t') => Chunks::Extension { size },
                    None if digits > 0 && b == b'\r' => Chunks::SizeEnd { size },
                    _ => return Err(BadFraming),
                },
                Chunks::Extension { size } => match b {
                    b'\r' => Chunks::SizeEnd { size },
                    b'\n' => return Err(BadFraming),
                    _ => Chunks::Extension { size },
                },
                Chunks::SizeEnd { size: 0 } if b == b'\n' => Chunks::TrailerStart,
                Chunks::SizeEnd { size } if b == b'\n' => Chunks::Data(size),
                Chunks::DataCr if b == b'\r' => Chunks::DataLf,
                Chunks::DataLf if b == b'\n' => Chunks::new(),
                Chunks::TrailerStart if b == b'\r' => Chunks::EndLf,
                Chunks::TrailerStart | Chunks::Trailer if b != b'\r' && b != b'\n' => {
                    on(Piece::Trailer, i..i + 1);
                    Chunks::Trailer
                }
                Chunks::Trailer if b == b'\r' => {
                    on(Piece::Trailer, i..i + 1);
                    Chunks::TrailerLf
                }
                Chunks::TrailerLf if b == b'\n' => {
                    on(Piece::Trailer, i..i + 1);
                    Chunks::TrailerStart
                }
                Chunks::EndLf if b == b'\n' => Chunks::Done,
                _ => return Err(BadFraming),
            };
            i += 1;
        }
        Ok((i, *self == Chunks::Done))
    }
}

/// Decodes a chunked body: the data, and the trailer section once the body has ended.
#[derive(Debug)]
pub(crate) struct Dechunker {
    state: Chunks,
    trailers: Vec<u8>,
}

impl Dechunker {
    /// A decoder at the start of a body.
    pub(crate) fn new() -> Dechunker {
        Dechunker { state: Chunks::new(), trailers: Vec::new() }
    }

    /// Decodes what `bytes` holds: appends its chunk data to `data`; returns how many bytes
    /// belong to the body and whether it ended.
    pub(crate) fn decode(&mut self, bytes: &[u8], data: &mut Vec<u8>) -> Result<(usize, bool), BadFraming> {
        let trailers = &mut self.trailers;
        self.state.walk(bytes, |piece, r| match piece {
            Piece::Data => data.extend_from_slice(&bytes[r]),
            // A trailer section larger than this is cut; the body itself is still relayed.
            Piece::Trailer if trailers.len() < MAX_TRAILERS => trailers.extend_from_slice(&bytes[r]),
            Piece::Trailer => {}
        })
    }

    /// The trailer fields, once the body has ended (none when there were none or they were
    /// not well-formed); hop-by-hop fields are left out.
    pub(crate) fn trailers(&self) -> Option<http::HeaderMap> {
        if self.trailers.is_empty() {
            return None;
        }
        let mut section = self.trailers.clone();
        section.extend_from_slice(b"\r\n");
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let httparse::Status::Complete((_, parsed)) = httparse::parse_headers(&section, &mut headers).ok()?
        else {
            return None;
        };
        let mut map = http::HeaderMap::new();
        for h in parsed.iter().filter(|h| !is_hop_by_hop(h.name)) {
            if let (Ok(n), Ok(v)) =
                (http::HeaderName::from_bytes(h.name.as_bytes()), http::HeaderValue::from_bytes(h.value))
            {
                map.append(n, v);
            }
        }
        (!map.is_empty()).then_some(map)
    }
}

/// Whether a header (any case) belongs to one connection and is never forwarded.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    ["connection", "te", "trailer", "transfer-encoding", "upgrade", "keep-alive", "proxy-connection"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// `n` in decimal, written at the end of `buf`.
pub(crate) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Appends `ip` as text (`10.0.0.1`, `2001:db8::1`), an IPv4 address without the formatter.
pub(crate) fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(itoa(u64::from(octet), &mut [0; 20]));
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends `addr` as text, as its `Display` shows it: `10.0.0.1:80`, `[2001:db8::1]:80`.
pub(crate) fn push_socket_addr(out: &mut Vec<u8>, addr: std::net::SocketAddr) {
    match addr {
        std::net::SocketAddr::V4(v4) => {
            push_ip(out, std::net::IpAddr::V4(*v4.ip()));
            out.push(b':');
            out.extend_from_slice(itoa(u64::from(v4.port()), &mut [0; 20]));
        }
        std::net::SocketAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// `n` in lower-case hex, written at the end of `buf`.
pub(crate) fn hex_len(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Where the header fields of a message go: bytes for an HTTP/1 client, a header map for the
/// general path.
pub(crate) trait HeaderSink {
    /// One field, as it will be sent.
    fn field(&mut self, name: &[u8], value: &[u8]);
}

impl HeaderSink for Vec<u8> {
    fn field(&mut self, name: &[u8], value: &[u8]) {
        self.extend_from_slice(name);
        self.extend_from_slice(b": ");
        self.extend_from_slice(value);
        self.extend_from_slice(b"\r\n");
    }
}

impl HeaderSink for http::HeaderMap {
    fn field(&mut self, name: &[u8], value: &[u8]) {
        if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(name), http::HeaderValue::from_bytes(value)) {
            self.append(n, v);
        }
    }
}

/// What the response head to the client gets besides the server's own fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Extras<'a> {
    /// The request was HEAD: the response has no body whatever it says.
    pub(crate) head_only: bool,
    /// The `Set-Cookie` value sticking the client to the server that answers.
    pub(crate) set_cookie: Option<&'a [u8]>,
    /// The client connection closes after this response.
    pub(crate) close: bool,
    /// The request asked for a protocol upgrade: a `101` is a valid answer.
    pub(crate) upgrade: bool,
}

/// A response head from a server: what it means for framing and connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResponseHead {
    /// Its length in the server's bytes.
    pub(crate) len: usize,
    pub(crate) status: u16,
    /// 1xx other than 101: another head follows.
    pub(crate) interim: bool,
    pub(crate) framing: Framing,
    /// The server keeps the connection open after this response.
    pub(crate) server_keeps: bool,
    /// The client connection closes after this response.
    pub(crate) close_client: bool,
}

impl ResponseHead {
    /// A `101 Switching Protocols`: both connections are now the upgraded protocol's.
    pub(crate) fn switches(&self) -> bool {
        self.status == 101
    }
}

/// Parses a response head from `buf`: `None` while incomplete, `Err` when it is not a valid
/// HTTP/1 response head (or is a `101` to a request that asked for no upgrade). The fields the
/// client gets — the server's end-to-end ones, then the sticky cookie — go to `sink` once the
/// head is complete; hop-by-hop fields and those `Connection` names stay behind.
pub(crate) fn parse_response(
    buf: &[u8],
    extras: Extras<'_>,
    sink: &mut impl HeaderSink,
) -> Result<Option<ResponseHead>, BadFraming> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_RESPONSE_HEAD => return Ok(None),
        _ => return Err(BadFraming),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else { return Err(BadFraming) };
    if (status == 101 && !extras.upgrade) || !(100..600).contains(&status) {
        return Err(BadFraming);
    }
    let interim = status < 200 && status != 101;
    let (mut length, mut chunked, mut encoded, mut server_closes) = (None, false, false, version == 0);
    let mut named: Vec<&[u8]> = Vec::new();
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(BadFraming)?;
            if length.is_some_and(|l| l != n) {
                return Err(BadFraming);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            encoded = true;
            let last = h.value.rsplit(|&b| b == b',').next().map(<[u8]>::trim_ascii);
            chunked = last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    server_closes = true;
                } else if version == 0 && token.eq_ignore_ascii_case(b"keep-alive") {
                    server_closes = false;
                }
                named.push(token);
            }
        }
    }
    if encoded && length.is_some() {
        return Err(BadFraming); // an ambiguous length: the framing of what follows cannot be trusted
    }
    let framing = if status < 200 || status == 204 || status == 304 || extras.head_only {
        Framing::Empty
    } else if chunked {
        Framing::Chunked(Chunks::new())
    } else if encoded {
        Framing::UntilClose
    } else {
        length.map_or(Framing::UntilClose, Framing::Length)
    };
    let close_client = !interim && (extras.close || framing == Framing::UntilClose);
    let sticky = extras.set_cookie.filter(|_| !interim && status != 101);
    let upgrading = status == 101;
    for h in resp.headers.iter() {
        let name = h.name;
        let kept_for_upgrade =
            upgrading && (name.eq_ignore_ascii_case("upgrade") || name.eq_ignore_ascii_case("connection"));
        if !kept_for_upgrade
            && (is_hop_by_hop(name)
                || named.iter().any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
                || (sticky.is_some() && name.eq_ignore_ascii_case("cache-control")))
        {
            continue;
        }
        sink.field(name.as_bytes(), h.value);
    }
    if let Some(cookie) = sticky {
        sink.field(b"set-cookie", cookie);
        sink.field(b"cache-control", b"private");
    }
    Ok(Some(ResponseHead {
        len,
        status,
        interim,
        framing,
        server_keeps: !server_closes && framing != Framing::UntilClose && !upgrading,
        close_client,
    }))
}

/// The status line of an HTTP/1.1 response to a client.
pub(crate) fn status_line(status: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut digits = [0u8; 3];
    digits[0] = b'0' + (status / 100 % 10) as u8;
    digits[1] = b'0' + (status / 10 % 10) as u8;
    digits[2] = b'0' + (status % 10) as u8;
    out.extend_from_slice(&digits);
    out.push(b' ');
    let reason = StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A plain-text answer made by the balancer, as HTTP/1.1 bytes.
pub(crate) fn local_answer(status: StatusCode, text: &str, head_only: bool, close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + text.len());
    status_line(status.as_u16(), &mut out);
    out.field(b"content-type", b"text/plain; charset=utf-8");
    out.field(b"content-length", text.len().to_string().as_bytes());
    if close {
        out.field(b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(text.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_their_display_shows_them() {
        for text in [
            "0.0.0.0:0",
            "10.0.1.2:33317",
            "255.255.255.255:65535",
            "[::1]:80",
            "[2001:db8::7]:443",
            "[fe80::1%2]:8080",
        ] {
            let addr: std::net::SocketAddr = text.parse().unwrap();
            let mut out = Vec::new();
            push_socket_addr(&mut out, addr);
            assert_eq!(String::from_utf8(out).unwrap(), addr.to_string());
            let mut ip = Vec::new();
            push_ip(&mut ip, addr.ip());
            assert_eq!(String::from_utf8(ip).unwrap(), addr.ip().to_string());
        }
    }

    const PLAIN: Extras<'static> =
        Extras { head_only: false, set_cookie: None, close: false, upgrade: false };

    fn head(raw: &[u8], extras: Extras<'_>) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let h = parse_response(raw, extras, &mut out).expect("valid").expect("complete");
        (h, String::from_utf8(out).unwrap())
    }

    #[test]
    fn chunked_framing_is_found_however_the_bytes_are_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
        for split in 0..=body.len() {
            let mut c = Chunks::new();
            let (a, done_a) = c.walk(&body[..split], |_, _| {}).unwrap();
            assert_eq!((a, done_a), (split, split == body.len()), "split at {split}");
            let (b, done) = c.walk(&body[split..], |_, _| {}).unwrap();
            assert_eq!(a + b, body.len(), "split at {split}");
            assert!(done, "split at {split}");
        }
        // What follows the last chunk is not the body's.
        let mut c = Chunks::new();
        assert_eq!(c.walk(b"0\r\n\r\nHTTP/1.1 200 OK", |_, _| {}).unwrap(), (5, true));
    }

    #[test]
    fn a_chunked_body_decodes_to_its_data_and_trailers_however_it_is_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\nGrpc-Status: 0\r\n\r\n";
        for split in 0..=body.len() {
            let mut d = Dechunker::new();
            let mut data = Vec::new();
            let (a, _) = d.decode(&body[..split], &mut data).unwrap();
            let (b, done) = d.decode(&body[split..], &mut data).unwrap();
            assert_eq!((a + b, done), (body.len(), true), "split at {split}");
            assert_eq!(data, b"hello world", "split at {split}");
            let t = d.trailers().expect("trailers");
            assert_eq!(t["x-trailer"], "t");
            assert_eq!(t["grpc-status"], "0");
        }
        let mut d = Dechunker::new();
        d.decode(b"0\r\n\r\n", &mut Vec::new()).unwrap();
        assert!(d.trailers().is_none());
    }

    #[test]
    fn bad_chunk_framing_is_an_error() {
        for bad in
            [&b"zz\r\n"[..], b"5\r\nhelloXY", b"\r\n", b"5\nhello", b"11111111111111111\r\n", b"0\r\n\r\r"]
        {
            assert!(Chunks::new().walk(bad, |_, _| {}).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn response_framing_follows_the_rfc() {
        assert_eq!(
            head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", PLAIN).0.framing,
            Framing::Length(5)
        );
        assert_eq!(head(b"HTTP/1.1 204 No Content\r\n\r\n", PLAIN).0.framing, Framing::Empty);
        assert_eq!(
            head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", PLAIN).0.framing,
            Framing::Empty
        );
        let head_only = Extras { head_only: true, ..PLAIN };
        assert_eq!(
            head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", head_only).0.framing,
            Framing::Empty
        );
        let (chunked, _) = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", PLAIN);
        assert!(matches!(chunked.framing, Framing::Chunked(_)));
        assert!(chunked.server_keeps);
        let (until_close, _) = head(b"HTTP/1.1 200 OK\r\n\r\n", PLAIN);
        assert_eq!(until_close.framing, Framing::UntilClose);
        assert!(until_close.close_client && !until_close.server_keeps);
        // HTTP/1.0 servers close unless they say keep-alive.
        assert!(!head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", PLAIN).0.server_keeps);
        assert!(
            head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", PLAIN)
                .0
                .server_keeps
        );
        assert!(
            !head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", PLAIN).0.server_keeps
        );
        assert!(head(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n", PLAIN).0.interim);
        // An upgrade keeps its Upgrade and Connection fields and ends HTTP on both connections.
        let upgrade = Extras { upgrade: true, ..PLAIN };
        let (switched, fields) = head(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            upgrade,
        );
        assert!(switched.switches() && !switched.interim && !switched.server_keeps);
        assert_eq!(fields, "Upgrade: websocket\r\nConnection: upgrade\r\n");
    }

    #[test]
    fn ambiguous_or_foreign_responses_are_refused() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            b"this is not HTTP at all\r\n\r\n",
        ] {
            assert!(
                parse_response(bad, PLAIN, &mut Vec::new()).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le", PLAIN, &mut Vec::new()).unwrap().is_none());
    }

    #[test]
    fn the_client_gets_no_hop_by_hop_fields_and_gains_the_sticky_cookie() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\nKeep-Alive: timeout=5\r\n\
                    X-Internal: secret\r\nCache-Control: public\r\nX-App: Kept\r\nContent-Length: 0\r\n\r\n";
        let sticky = Extras { set_cookie: Some(b"SERVERID=web-1; Path=/"), ..PLAIN };
        let (_, bytes) = head(raw, sticky);
        assert_eq!(
            bytes,
            "X-App: Kept\r\nContent-Length: 0\r\nset-cookie: SERVERID=web-1; Path=/\r\ncache-control: private\r\n"
        );
        // The same rules fill a header map.
        let mut map = http::HeaderMap::new();
        parse_response(raw, sticky, &mut map).unwrap().unwrap();
        assert_eq!(map.len(), 4);
        assert_eq!(map["set-cookie"], "SERVERID=web-1; Path=/");
        assert!(!map.contains_key("x-internal") && !map.contains_key("keep-alive"));
    }

    #[test]
    fn numbers_are_written_in_decimal_and_chunk_sizes_in_lower_case_hex() {
        for (n, dec) in [(0, "0"), (9, "9"), (1234567890, "1234567890"), (u64::MAX, "18446744073709551615")] {
            assert_eq!(itoa(n, &mut [0; 20]), dec.as_bytes());
        }
        for (n, hex) in [(0, "0"), (9, "9"), (10, "a"), (255, "ff"), (65_536, "10000")] {
            assert_eq!(hex_len(n, &mut [0; 16]), hex.as_bytes());
        }
    }

    #[test]
    fn local_answers_are_complete_messages() {
        let text =
            String::from_utf8(local_answer(StatusCode::SERVICE_UNAVAILABLE, "No server\n", false, true))
                .unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 10\r\n\
             connection: close\r\n\r\nNo server\n"
        );
        let head_only = local_answer(StatusCode::GATEWAY_TIMEOUT, "Gateway timeout\n", true, false);
        assert!(head_only.ends_with(b"content-length: 16\r\n\r\n"));
    }
}
