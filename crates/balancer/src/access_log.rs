//! The access log: one line per request on stdout, in HAProxy's `httplog`
//! format or as JSON lines, written by a thread of its own so that the request
//! path never waits for the terminal (when the writer falls behind, lines are
//! dropped and counted rather than slowing requests down). Names (a server's is
//! a gossip member's) are escaped as one field each ([`crate::escape::field`]),
//! so a name can neither add a line nor shift the fields; JSON lines are JSON.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::escape;

/// Lines buffered between the request path and the writer thread.
const QUEUE: usize = 16 * 1024;

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

/// One finished request.
#[derive(Debug, Clone)]
pub struct Record {
    /// When the request started.
    pub at: SystemTime,
    /// The client.
    pub client: SocketAddr,
    /// The frontend.
    pub frontend: Arc<str>,
    /// The pool, if routing got that far.
    pub backend: Option<Arc<str>>,
    /// The server that answered, if any.
    pub server: Option<Arc<str>>,
    /// Time to receive the request head.
    pub t_request: Duration,
    /// Time to connect to the server (none: no new connection was needed, or none was tried).
    pub t_connect: Option<Duration>,
    /// Time from sending the request to the response head (none: no server answered).
    pub t_response: Option<Duration>,
    /// Time from the request head to the end of the response.
    pub t_active: Duration,
    /// The status sent to the client.
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
    pub request: String,
}

impl Record {
    /// An empty record, filled in as the request goes.
    pub fn placeholder() -> Record {
        Record {
            at: UNIX_EPOCH,
            client: SocketAddr::from(([0, 0, 0, 0], 0)),
            frontend: Arc::from(""),
            backend: None,
            server: None,
            t_request: Duration::ZERO,
            t_connect: None,
            t_response: None,
            t_active: Duration::ZERO,
            status: 0,
            bytes: 0,
            termination: *b"--",
            frontend_conns: 0,
            backend_conns: 0,
            server_conns: 0,
            retries: 0,
            request: String::new(),
        }
    }
}

/// The access log sink.
#[derive(Debug)]
pub struct AccessLog {
    format: Format,
    tx: SyncSender<Record>,
    /// Lines dropped because the writer fell behind.
    pub dropped: AtomicU64,
}

impl AccessLog {
    /// Starts the writer thread, or returns `None` for [`Format::Off`].
    pub fn start(format: Format) -> Option<Arc<AccessLog>> {
        Self::start_with(format, Box::new(std::io::stdout()))
    }

    /// Like [`AccessLog::start`], writing to `out`.
    pub fn start_with(format: Format, out: Box<dyn Write + Send>) -> Option<Arc<AccessLog>> {
        if format == Format::Off {
            return None;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let spawned =
            std::thread::Builder::new().name("access-log".into()).spawn(move || write_loop(format, rx, out));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access log writer; access log off");
            return None;
        }
        Some(Arc::new(AccessLog { format, tx, dropped: AtomicU64::new(0) }))
    }

    /// The format in use.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Queues one record (never blocks).
    pub fn log(&self, record: Record) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(record) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn write_loop(format: Format, rx: Receiver<Record>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(256);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Write everything queued, then flush once.
        while let Some(r) = next {
            line.clear();
            match format {
                Format::Json => json_line(&r, &mut line),
                _ => httplog_line(&r, &mut line),
            }
            line.push('\n');
            if out.write_all(line.as_bytes()).is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn opt_ms(d: Option<Duration>) -> i128 {
    d.map_or(-1, |d| d.as_millis() as i128)
}

/// `client:port [date] frontend backend/server TR/Tw/Tc/Tr/Ta status bytes - - TTTT
/// actconn/feconn/beconn/srv_conn/retries 0/0 "request"`, as HAProxy's `option httplog`.
pub fn httplog_line(r: &Record, out: &mut String) {
    use std::fmt::Write as _;
    let backend = escape::field(r.backend.as_deref().unwrap_or(&r.frontend));
    let server = r.server.as_deref().map_or(std::borrow::Cow::Borrowed("<NOSRV>"), escape::field);
    let t = [r.termination[0] as char, r.termination[1] as char];
    let _ = write!(
        out,
        "{} [{}] {} {}/{} {}/0/{}/{}/{} {} {} - - {}{}-- {}/{}/{}/{}/{} 0/0 \"{}\"",
        r.client,
        haproxy_date(r.at),
        escape::field(&r.frontend),
        backend,
        server,
        ms(r.t_request),
        opt_ms(r.t_connect.or(r.t_response.map(|_| Duration::ZERO))),
        opt_ms(r.t_response),
        ms(r.t_active),
        r.status,
        r.bytes,
        t[0],
        t[1],
        r.frontend_conns,
        r.frontend_conns,
        r.backend_conns,
        r.server_conns,
        r.retries,
        r.request.escape_debug(),
    );
}

fn json_line(r: &Record, out: &mut String) {
    let v = serde_json::json!({
        "time": rfc3339(r.at),
        "client": r.client.to_string(),
        "frontend": &*r.frontend,
        "backend": r.backend.as_deref(),
        "server": r.server.as_deref(),
        "request_ms": ms(r.t_request) as u64,
        "connect_ms": r.t_connect.map(|d| d.as_millis() as u64),
        "response_ms": r.t_response.map(|d| d.as_millis() as u64),
        "total_ms": ms(r.t_active) as u64,
        "status": r.status,
        "bytes": r.bytes,
        "termination": format!("{}{}--", r.termination[0] as char, r.termination[1] as char),
        "frontend_conns": r.frontend_conns,
        "backend_conns": r.backend_conns,
        "server_conns": r.server_conns,
        "retries": r.retries,
        "request": &r.request,
    });
    out.push_str(&v.to_string());
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

fn split(t: SystemTime) -> ((i64, u32, u32), u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    (civil((secs / 86_400) as i64), secs % 86_400, d.subsec_millis())
}

/// `06/Feb/2009:12:14:14.655` (UTC).
pub fn haproxy_date(t: SystemTime) -> String {
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let ((y, m, d), s, milli) = split(t);
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02}.{milli:03}",
        MONTHS[(m - 1) as usize],
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// `2009-02-06T12:14:14.655Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let ((y, m, d), s, milli) = split(t);
    format!("{y}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            at: UNIX_EPOCH + Duration::from_millis(1_233_922_454_655),
            client: "10.0.1.2:33317".parse().unwrap(),
            frontend: Arc::from("http-in"),
            backend: Some(Arc::from("static")),
            server: Some(Arc::from("srv1")),
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
            request: "GET /index.html HTTP/1.1".into(),
        }
    }

    #[test]
    fn httplog_lines_read_like_haproxys() {
        let mut line = String::new();
        httplog_line(&record(), &mut line);
        assert_eq!(
            line,
            "10.0.1.2:33317 [06/Feb/2009:12:14:14.655] http-in static/srv1 10/0/30/69/109 200 2750 - - ---- 1/1/1/1/0 0/0 \"GET /index.html HTTP/1.1\""
        );
        let mut r = record();
        (r.server, r.t_connect, r.t_response, r.status, r.termination) = (None, None, None, 503, *b"SC");
        line.clear();
        httplog_line(&r, &mut line);
        assert!(line.contains(" static/<NOSRV> 10/0/-1/-1/109 503 2750 - - SC-- "), "{line}");
    }

    #[test]
    fn a_hostile_server_name_stays_one_field_of_one_line() {
        let mut r = record();
        r.server = Some(Arc::from("evil 1\n10.0.0.1:1 [x] forged/line"));
        let mut line = String::new();
        httplog_line(&r, &mut line);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains(" static/evil\\x201\\n10.0.0.1:1\\x20[x]\\x20forged/line 10/0/30/69/109 "),
            "{line}"
        );
        assert_eq!(line.split(' ').count(), 15, "the field count is unchanged: {line}");
        line.clear();
        json_line(&r, &mut line);
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["server"], "evil 1\n10.0.0.1:1 [x] forged/line", "JSON carries the name exactly");
    }

    #[test]
    fn json_lines_carry_the_same_facts() {
        let mut line = String::new();
        json_line(&record(), &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2009-02-06T12:14:14.655Z");
        assert_eq!(v["server"], "srv1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["termination"], "----");
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(haproxy_date(UNIX_EPOCH + Duration::from_secs(1_795_619_578)), "25/Nov/2026:15:12:58.000");
    }
}
