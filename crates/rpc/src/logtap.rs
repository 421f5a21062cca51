//! A tracing layer that copies every log line to `monitor` subscribers, in
//! Serf's format: `2026/11/25 13:04:15 [INFO] target: message key=value`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use shoal_agent::Fanout;
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// One formatted log line.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// Its level.
    pub level: Level,
    /// The formatted line.
    pub line: String,
}

/// Fans log lines out to monitors; costs nothing while nobody listens (its ring of 1 024 lines
/// is allocated when the first monitor arrives).
#[derive(Debug, Clone)]
pub struct LogTap {
    tx: Arc<Fanout<LogLine>>,
}

impl Default for LogTap {
    fn default() -> Self {
        LogTap { tx: Arc::new(Fanout::new(1024)) }
    }
}

impl LogTap {
    /// Lines from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LogLine> {
        self.tx.subscribe()
    }
}

/// Parses Serf's level names (`TRACE`, `DEBUG`, `INFO`, `WARN`, `ERR`), any case.
pub fn parse_level(s: &str) -> Option<Level> {
    match s.to_ascii_uppercase().as_str() {
        "TRACE" => Some(Level::TRACE),
        "DEBUG" => Some(Level::DEBUG),
        "INFO" => Some(Level::INFO),
        "WARN" => Some(Level::WARN),
        "ERR" | "ERROR" => Some(Level::ERROR),
        _ => None,
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => "INFO",
        Level::WARN => "WARN",
        Level::ERROR => "ERR",
    }
}

/// `YYYY/MM/DD HH:MM:SS` in UTC, from the Unix epoch (no calendar crate needed).
pub fn timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}/{month:02}/{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for LogTap {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if !self.tx.has_subscribers() {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let line = format!(
            "{} [{}] {}: {}{}",
            timestamp(SystemTime::now()),
            level_name(*meta.level()),
            meta.target(),
            fields.message,
            fields.rest
        );
        self.tx.send(LogLine { level: *meta.level(), line });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_civil_utc() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970/01/01 00:00:00");
        assert_eq!(timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000/02/29 00:00:00");
        assert_eq!(timestamp(UNIX_EPOCH + Duration::from_secs(1_795_617_855)), "2026/11/25 14:44:15");
    }

    #[test]
    fn levels_parse_like_serf() {
        assert_eq!(parse_level("err"), Some(Level::ERROR));
        assert_eq!(parse_level("INFO"), Some(Level::INFO));
        assert_eq!(parse_level("loud"), None);
    }
}
