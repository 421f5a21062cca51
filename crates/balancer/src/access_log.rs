//! The access log: one line per request on stdout, in HAProxy's `httplog` format or as JSON
//! lines, at a cost the request path hardly feels.
//!
//! A line is formatted where the request ends, on its worker thread, straight into that
//! thread's shard of the log — a buffer behind an uncontended lock, no allocation, no queue
//! message, no wake-up. A writer thread takes every shard's lines in one pass and writes them
//! with one `write` per batch: it wakes when lines are waiting (at most every
//! [`FLUSH_INTERVAL`]) or when a shard fills up. When stdout cannot keep up, a full shard drops
//! lines and counts them rather than slow requests down or grow without bound.
//!
//! Names (a server's is a gossip member's) are escaped as one field each
//! ([`shoal_gossip::escape::field`]), so a name can neither add a line nor shift the fields; JSON lines
//! are JSON.

use std::cell::RefCell;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_gossip::escape;

use crate::codec::push_socket_addr;

/// Lines wait at most this long before they are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// A shard this full wakes the writer at once.
const SHARD_FLUSH: usize = 64 * 1024;
/// A shard this full drops lines (the writer is stuck: stdout does not drain).
const SHARD_MAX: usize = 4 * 1024 * 1024;
/// Shards: worker threads share them round-robin (one each, with the default thread counts).
const SHARDS: usize = 16;

/// How access-log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// No access log.
    Off,
    /// HAProxy's `option httplog` line.
    #[default]
    HttpLog,
    /// One JSON object per line.
    Json,
}

impl<'de> serde::Deserialize<'de> for Format {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <String as serde::Deserialize>::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" | "none" => Ok(Format::Off),
            "httplog" | "haproxy" => Ok(Format::HttpLog),
            "json" => Ok(Format::Json),
            other => Err(format!("unknown access log format {other:?} (expected httplog, json or off)")),
        }
    }
}

/// One finished request, as the pipeline's record saw it.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    /// When the request started.
    pub at: SystemTime,
    /// The client.
    pub client: SocketAddr,
    /// The frontend.
    pub frontend: &'a str,
    /// The pool, if routing got that far.
    pub backend: Option<&'a str>,
    /// The server that answered, if any.
    pub server: Option<&'a str>,
    /// Time to receive the request head.
    pub t_request: Duration,
    /// Time to connect to the server (none: no new connection was needed, or none was tried).
    pub t_connect: Option<Duration>,
    /// Time from sending the request to the response head (none: no server answered).
    pub t_response: Option<Duration>,
    /// Time from the request head to the end of the response.
    pub t_active: Duration,
    /// The status sent to the client (0: none was).
    pub status: u16,
    /// Response bytes sent to the client (body).
    pub bytes: u64,
    /// HAProxy's termination state: why the session ended, and in which phase.
    pub termination: [u8; 2],
    /// Connections open on the frontend.
    pub frontend_conns: u64,
    /// Requests in flight on the pool's servers.
    pub backend_conns: u32,
    /// Requests in flight on the server.
    pub server_conns: u32,
    /// Retries this request needed.
    pub retries: u32,
    /// `METHOD URI VERSION`.
    pub request: &'a str,
}

/// What the log's shards and its writer share.
struct Shared {
    format: Format,
    shards: Box<[Mutex<Vec<u8>>]>,
    out: Mutex<Box<dyn Write + Send>>,
    /// Lines are waiting: the writer has been (or is being) woken for them.
    pending: AtomicBool,
    wake: Condvar,
    wake_lock: Mutex<()>,
    stop: AtomicBool,
    dropped: AtomicU64,
}

/// The access log sink.
pub struct AccessLog {
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").field("format", &self.shared.format).finish_non_exhaustive()
    }
}

thread_local! {
    /// This thread's shard.
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
    };
    /// The formatted second of the last line this thread wrote, to reuse within that second.
    static DATE: RefCell<(u64, Format, Vec<u8>)> = const { RefCell::new((u64::MAX, Format::Off, Vec::new())) };
}

impl AccessLog {
    /// Starts the writer thread on stdout, or returns `None` for [`Format::Off`].
    pub fn start(format: Format) -> Option<Arc<AccessLog>> {
        // A descriptor of our own for stdout: unbuffered, one `write` per batch (std's stdout
        // would cut batches at lines).
        let out: Box<dyn Write + Send> =
            match std::os::fd::AsFd::as_fd(&std::io::stdout()).try_clone_to_owned() {
                Ok(fd) => Box::new(std::fs::File::from(fd)),
                Err(_) => Box::new(std::io::stdout()),
            };
        Self::start_with(format, out)
    }

    /// Like [`AccessLog::start`], writing to `out`.
    pub fn start_with(format: Format, out: Box<dyn Write + Send>) -> Option<Arc<AccessLog>> {
        if format == Format::Off {
            return None;
        }
        let shared = Arc::new(Shared {
            format,
            shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            out: Mutex::new(out),
            pending: AtomicBool::new(false),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
            stop: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .stack_size(64 * 1024)
            .spawn(move || write_loop(&s));
        match spawned {
            Ok(handle) => Some(Arc::new(AccessLog { shared, writer: Mutex::new(Some(handle)) })),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the access log writer; access log off");
                None
            }
        }
    }

    /// The format in use.
    pub fn format(&self) -> Format {
        self.shared.format
    }

    /// Lines dropped because stdout did not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Formats one line into this thread's shard (never blocks on the writer).
    pub fn log(&self, record: &Record<'_>) {
        let s = &self.shared;
        let shard = SHARD.with(|i| *i);
        let mut buf = s.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        if buf.len() >= SHARD_MAX {
            s.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match s.format {
            Format::Json => json_line(record, &mut buf),
            _ => httplog_line(record, &mut buf),
        }
        buf.push(b'\n');
        let full = buf.len() >= SHARD_FLUSH;
        drop(buf);
        // One wake-up per batch: the first line after a write, or a full shard.
        if !s.pending.swap(true, Ordering::AcqRel) || full {
            let _guard = s.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_one();
        }
    }

    /// Writes every line logged so far, before returning.
    pub fn flush(&self) {
        self.shared.flush();
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _guard = self.shared.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_one();
        }
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl Shared {
    /// Takes every shard's lines and writes them; one `write` per shard with lines.
    fn flush(&self) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        self.pending.store(false, Ordering::Release);
        let mut batch = Vec::new();
        for shard in self.shards.iter() {
            {
                let mut buf = shard.lock().unwrap_or_else(|e| e.into_inner());
                if buf.is_empty() {
                    continue;
                }
                std::mem::swap(&mut *buf, &mut batch);
                // The shard keeps a buffer of its usual size for the next lines.
                buf.reserve(batch.len().min(SHARD_FLUSH * 2));
            }
            if out.write_all(&batch).is_err() {
                self.dropped
                    .fetch_add(batch.iter().filter(|&&b| b == b'\n').count() as u64, Ordering::Relaxed);
            }
            batch.clear();
        }
        let _ = out.flush();
    }
}

fn write_loop(s: &Shared) {
    loop {
        {
            let guard = s.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
            let _unused = s
                .wake
                .wait_while(guard, |_| !s.pending.load(Ordering::Acquire) && !s.stop.load(Ordering::Acquire))
                .unwrap_or_else(|e| e.into_inner());
        }
        let stopping = s.stop.load(Ordering::Acquire);
        if !stopping {
            // Let the batch gather (a full shard cuts this short).
            let guard = s.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
            let _unused = s.wake.wait_timeout(guard, FLUSH_INTERVAL).unwrap_or_else(|e| e.into_inner());
        }
        s.flush();
        if stopping {
            return;
        }
    }
}

/// Appends `n` in decimal.
fn num(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(crate::codec::itoa(n, &mut [0; 20]));
}

/// Appends `d` in whole milliseconds, or -1 for none.
fn opt_ms(out: &mut Vec<u8>, d: Option<Duration>) {
    match d {
        Some(d) => num(out, d.as_millis() as u64),
        None => out.extend_from_slice(b"-1"),
    }
}

/// Appends the request line between quotes, escaped as a Rust string would show it (quotes,
/// backslashes, control characters), so it stays one field of one line.
fn quoted(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        out.extend_from_slice(s.as_bytes());
    } else {
        let _ = write!(out, "{}", s.escape_debug());
    }
    out.push(b'"');
}

/// `client:port [date] frontend backend/server TR/Tw/Tc/Tr/Ta status bytes - - TTTT
/// actconn/feconn/beconn/srv_conn/retries 0/0 "request"`, as HAProxy's `option httplog`.
pub fn httplog_line(r: &Record<'_>, out: &mut Vec<u8>) {
    push_socket_addr(out, r.client);
    out.extend_from_slice(b" [");
    date(r.at, Format::HttpLog, out);
    out.extend_from_slice(b"] ");
    out.extend_from_slice(escape::field(r.frontend).as_bytes());
    out.push(b' ');
    out.extend_from_slice(escape::field(r.backend.unwrap_or(r.frontend)).as_bytes());
    out.push(b'/');
    match r.server {
        Some(s) => out.extend_from_slice(escape::field(s).as_bytes()),
        None => out.extend_from_slice(b"<NOSRV>"),
    }
    out.push(b' ');
    num(out, r.t_request.as_millis() as u64);
    out.extend_from_slice(b"/0/");
    opt_ms(out, r.t_connect.or(r.t_response.map(|_| Duration::ZERO)));
    out.push(b'/');
    opt_ms(out, r.t_response);
    out.push(b'/');
    num(out, r.t_active.as_millis() as u64);
    out.push(b' ');
    if r.status == 0 {
        out.extend_from_slice(b"-1");
    } else {
        num(out, u64::from(r.status));
    }
    out.push(b' ');
    num(out, r.bytes);
    out.extend_from_slice(b" - - ");
    out.extend_from_slice(&r.termination);
    out.extend_from_slice(b"-- ");
    for (i, n) in
        [r.frontend_conns, r.frontend_conns, r.backend_conns.into(), r.server_conns.into(), r.retries.into()]
            .into_iter()
            .enumerate()
    {
        if i > 0 {
            out.push(b'/');
        }
        num(out, n);
    }
    out.extend_from_slice(b" 0/0 ");
    quoted(out, r.request);
}

/// One JSON object with the same facts.
pub fn json_line(r: &Record<'_>, out: &mut Vec<u8>) {
    let string = |out: &mut Vec<u8>, s: &str| {
        let _ = serde_json::to_writer(&mut *out, s);
    };
    let opt = |out: &mut Vec<u8>, s: Option<&str>| match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    };
    let opt_num = |out: &mut Vec<u8>, d: Option<Duration>| match d {
        Some(d) => num(out, d.as_millis() as u64),
        None => out.extend_from_slice(b"null"),
    };
    out.extend_from_slice(b"{\"time\":\"");
    date(r.at, Format::Json, out);
    out.extend_from_slice(b"\",\"client\":\"");
    push_socket_addr(out, r.client);
    out.extend_from_slice(b"\",\"frontend\":");
    string(out, r.frontend);
    out.extend_from_slice(b",\"backend\":");
    opt(out, r.backend);
    out.extend_from_slice(b",\"server\":");
    opt(out, r.server);
    out.extend_from_slice(b",\"request_ms\":");
    num(out, r.t_request.as_millis() as u64);
    out.extend_from_slice(b",\"connect_ms\":");
    opt_num(out, r.t_connect);
    out.extend_from_slice(b",\"response_ms\":");
    opt_num(out, r.t_response);
    out.extend_from_slice(b",\"total_ms\":");
    num(out, r.t_active.as_millis() as u64);
    out.extend_from_slice(b",\"status\":");
    num(out, u64::from(r.status));
    out.extend_from_slice(b",\"bytes\":");
    num(out, r.bytes);
    out.extend_from_slice(b",\"termination\":\"");
    for &b in &r.termination {
        // HAProxy's codes are letters and dashes; anything else is not written raw.
        out.push(if b.is_ascii_alphabetic() || b == b'-' { b } else { b'?' });
    }
    out.extend_from_slice(b"--\",\"frontend_conns\":");
    num(out, r.frontend_conns);
    out.extend_from_slice(b",\"backend_conns\":");
    num(out, r.backend_conns.into());
    out.extend_from_slice(b",\"server_conns\":");
    num(out, r.server_conns.into());
    out.extend_from_slice(b",\"retries\":");
    num(out, r.retries.into());
    out.extend_from_slice(b",\"request\":");
    string(out, r.request);
    out.push(b'}');
}

/// Appends the date of `t`: HAProxy's `06/Feb/2009:12:14:14.655` or RFC 3339's
/// `2009-02-06T12:14:14.655Z` (UTC). The part up to the second is formatted once a second per
/// thread.
fn date(t: SystemTime, format: Format, out: &mut Vec<u8>) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    DATE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs || cache.1 != format {
            cache.2.clear();
            let s = match format {
                Format::Json => rfc3339_seconds(secs),
                _ => haproxy_seconds(secs),
            };
            cache.2.extend_from_slice(s.as_bytes());
            (cache.0, cache.1) = (secs, format);
        }
        out.extend_from_slice(&cache.2);
    });
    let milli = d.subsec_millis();
    out.extend_from_slice(&[
        b'.',
        b'0' + (milli / 100) as u8,
        b'0' + (milli / 10 % 10) as u8,
        b'0' + (milli % 10) as u8,
    ]);
    if format == Format::Json {
        out.push(b'Z');
    }
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn haproxy_seconds(secs: u64) -> String {
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (y, m, d) = civil((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!("{d:02}/{}/{y}:{:02}:{:02}:{:02}", MONTHS[(m - 1) as usize], s / 3600, s / 60 % 60, s % 60)
}

fn rfc3339_seconds(secs: u64) -> String {
    let (y, m, d) = civil((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!("{y}-{m:02}-{d:02}T{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `06/Feb/2009:12:14:14.655` (UTC).
    fn haproxy_date(t: SystemTime) -> String {
        let mut out = Vec::new();
        date(t, Format::HttpLog, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// `2009-02-06T12:14:14.655Z`.
    fn rfc3339(t: SystemTime) -> String {
        let mut out = Vec::new();
        date(t, Format::Json, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn record() -> Record<'static> {
        Record {
            at: UNIX_EPOCH + Duration::from_millis(1_233_922_454_655),
            client: "10.0.1.2:33317".parse().unwrap(),
            frontend: "http-in",
            backend: Some("static"),
            server: Some("srv1"),
            t_request: Duration::from_millis(10),
            t_connect: Some(Duration::from_millis(30)),
            t_response: Some(Duration::from_millis(69)),
            t_active: Duration::from_millis(109),
            status: 200,
            bytes: 2750,
            termination: *b"--",
            frontend_conns: 1,
            backend_conns: 1,
            server_conns: 1,
            retries: 0,
            request: "GET /index.html HTTP/1.1",
        }
    }

    fn httplog(r: &Record<'_>) -> String {
        let mut out = Vec::new();
        httplog_line(r, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn json(r: &Record<'_>) -> String {
        let mut out = Vec::new();
        json_line(r, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn httplog_lines_read_like_haproxys() {
        assert_eq!(
            httplog(&record()),
            "10.0.1.2:33317 [06/Feb/2009:12:14:14.655] http-in static/srv1 10/0/30/69/109 200 2750 - - ---- 1/1/1/1/0 0/0 \"GET /index.html HTTP/1.1\""
        );
        let mut r = record();
        (r.server, r.t_connect, r.t_response, r.status, r.termination) = (None, None, None, 503, *b"SC");
        let line = httplog(&r);
        assert!(line.contains(" static/<NOSRV> 10/0/-1/-1/109 503 2750 - - SC-- "), "{line}");
        r.status = 0;
        assert!(httplog(&r).contains(" -1 2750 "), "no status sent shows as HAProxy's -1");
    }

    #[test]
    fn a_hostile_server_name_stays_one_field_of_one_line() {
        let mut r = record();
        r.server = Some("evil 1\n10.0.0.1:1 [x] forged/line");
        let line = httplog(&r);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains(" static/evil\\x201\\n10.0.0.1:1\\x20[x]\\x20forged/line 10/0/30/69/109 "),
            "{line}"
        );
        assert_eq!(line.split(' ').count(), 15, "the field count is unchanged: {line}");
        r.request = "GET /\"x\n HTTP/1.1";
        let line = httplog(&r);
        assert!(line.ends_with(" \"GET /\\\"x\\n HTTP/1.1\""), "{line}");
        let line = json(&r);
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["server"], "evil 1\n10.0.0.1:1 [x] forged/line", "JSON carries the name exactly");
    }

    #[test]
    fn json_lines_carry_the_same_facts() {
        let v: serde_json::Value = serde_json::from_str(&json(&record())).unwrap();
        assert_eq!(v["time"], "2009-02-06T12:14:14.655Z");
        assert_eq!(v["server"], "srv1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["termination"], "----");
        assert_eq!(v["connect_ms"], 30);
        assert_eq!(v["request"], "GET /index.html HTTP/1.1");
        let mut r = record();
        (r.server, r.t_connect) = (None, None);
        let v: serde_json::Value = serde_json::from_str(&json(&r)).unwrap();
        assert!(v["server"].is_null() && v["connect_ms"].is_null());
    }

    #[test]
    fn dates_are_civil_and_the_cached_second_follows_the_clock() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        let t = UNIX_EPOCH + Duration::from_secs(1_795_619_578);
        assert_eq!(haproxy_date(t), "25/Nov/2026:15:12:58.000");
        assert_eq!(rfc3339(t), "2026-11-25T15:12:58.000Z", "the per-thread cache keeps formats apart");
        assert_eq!(haproxy_date(t + Duration::from_millis(1_007)), "25/Nov/2026:15:12:59.007");
    }

    /// A writer that hands what it gets to the test.
    struct Sink(Arc<Mutex<Vec<u8>>>, Arc<AtomicUsize>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            self.1.fetch_add(1, Ordering::Relaxed);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_in_few_writes_and_flush_writes_them_all() {
        let (got, writes) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
        let log =
            AccessLog::start_with(Format::HttpLog, Box::new(Sink(got.clone(), writes.clone()))).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let log = &log;
                s.spawn(move || {
                    for i in 0..1000 {
                        let request = format!("GET /{t}/{i} HTTP/1.1");
                        log.log(&Record { request: &request, ..record() });
                    }
                });
            }
        });
        log.flush();
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 4000, "every line, none cut");
        for t in 0..4 {
            let mine: Vec<&str> = text.lines().filter(|l| l.contains(&format!("GET /{t}/"))).collect();
            assert_eq!(mine.len(), 1000);
            // One thread's lines keep their order.
            assert!(mine.iter().enumerate().all(|(i, l)| l.ends_with(&format!("GET /{t}/{i} HTTP/1.1\""))));
        }
        assert!(writes.load(Ordering::Relaxed) < 400, "batched: {} writes", writes.load(Ordering::Relaxed));
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn a_line_is_written_within_the_flush_interval_without_a_flush() {
        let (got, writes) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
        let log = AccessLog::start_with(Format::Json, Box::new(Sink(got.clone(), writes))).unwrap();
        log.log(&record());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while got.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the writer never wrote the line");
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with("}\n") && text.lines().count() == 1, "{text}");
    }

    #[test]
    fn dropping_the_log_writes_what_is_left() {
        let (got, writes) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
        let log = AccessLog::start_with(Format::HttpLog, Box::new(Sink(got.clone(), writes))).unwrap();
        for _ in 0..10 {
            log.log(&record());
        }
        drop(log);
        assert_eq!(String::from_utf8(got.lock().unwrap().clone()).unwrap().lines().count(), 10);
    }
}
