//! A per-call-site rate limit on log lines from dependencies, so that no library floods the log.
//!
//! Shoal's own events (target `shoal…`) always pass. Any other event — a dependency's, through
//! `tracing` or the `log` crate — is counted against its call site: a burst of [`BURST`] lines
//! passes, then one line per [`INTERVAL`] (a token bucket). The next line that passes from a
//! call site after some were dropped is preceded by a `shoal::log` line saying how many, at the
//! same level; [`DependencyLimit::report_suppressed`] says it for every call site still owing a
//! count (the process calls it as it exits). The `--log-level` filter runs first: what it hides
//! is neither shown nor counted.
//!
//! Memory is bounded. `tracing` call sites are statics, so a map keyed by them is bounded by
//! the binary; `log` records share one `tracing` call site per level and are told apart by their
//! own target, file and line, which are fixed in the binary too. The map is capped at
//! [`MAX_SITES`] all the same: call sites beyond it share one bucket.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_core::callsite::{Callsite, DefaultCallsite, Identifier};
use tracing_core::dispatcher::{Dispatch, WeakDispatch};
use tracing_core::field::{FieldSet, Value};
use tracing_core::metadata::Kind;
use tracing_subscriber::layer::{Context, Layer};

/// Lines a dependency's call site may log at once.
pub const BURST: u32 = 10;
/// After the burst, one more line per this interval.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Call sites with a bucket of their own; beyond this many, the rest share one.
pub const MAX_SITES: usize = 1024;

/// The target of the lines that report suppressed ones.
const REPORT_TARGET: &str = "shoal::log";

/// A burst and a refill interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Lines that pass at once.
    pub burst: u32,
    /// One more line per interval after the burst.
    pub interval: Duration,
}

impl Default for Rate {
    fn default() -> Self {
        Rate { burst: BURST, interval: INTERVAL }
    }
}

/// The [`Layer`] that rate-limits dependencies' events; clones share their state.
#[derive(Clone, Default)]
pub struct DependencyLimit {
    inner: Arc<Inner>,
}

struct Inner {
    rate: Rate,
    sites: Mutex<HashMap<SiteKey, Bucket>>,
    /// Where the reports go: the subscriber this layer is part of.
    dispatch: OnceLock<WeakDispatch>,
    clock: Box<dyn Fn() -> Instant + Send + Sync>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            rate: Rate::default(),
            sites: Mutex::default(),
            dispatch: OnceLock::new(),
            clock: Box::new(Instant::now),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SiteKey {
    /// A `tracing` call site; for `log` records, with a hash of their target, file and line.
    Site(Identifier, u64),
    /// Every call site past [`MAX_SITES`].
    Overflow,
}

/// One call site's token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: u32,
    refilled: Instant,
    suppressed: u64,
    level: Level,
    /// The call site's target (for a `log` record, the record's own).
    target: String,
}

impl Bucket {
    fn new(rate: Rate, now: Instant, level: Level, target: String) -> Self {
        Bucket { tokens: rate.burst, refilled: now, suppressed: 0, level, target }
    }

    /// Takes a token if there is one (true: the line passes); counts the line otherwise.
    fn take(&mut self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled);
        let periods = u32::try_from(elapsed.as_nanos() / rate.interval.as_nanos().max(1)).unwrap_or(u32::MAX);
        if periods > 0 {
            self.tokens = self.tokens.saturating_add(periods).min(rate.burst);
            // A full bucket starts its next interval now; otherwise the partial one carries on.
            self.refilled =
                if self.tokens == rate.burst { now } else { self.refilled + rate.interval * periods };
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// Whether a target is Shoal's own.
fn is_ours(target: &str) -> bool {
    target.starts_with("shoal")
}

/// Where a `log` record came from: `tracing-log` carries it in fields, under one call site
/// per level whose own target is just `log`.
#[derive(Default)]
struct LogOrigin {
    target: Option<String>,
    file: Option<String>,
    line: Option<u64>,
}

impl Visit for LogOrigin {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "log.target" => self.target = Some(value.to_string()),
            "log.file" => self.file = Some(value.to_string()),
            _ => {}
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "log.line" {
            self.line = Some(value);
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn Debug) {}
}

impl DependencyLimit {
    /// A limit that reads the time from `clock` (for tests).
    #[cfg(test)]
    fn with_clock(rate: Rate, clock: impl Fn() -> Instant + Send + Sync + 'static) -> Self {
        DependencyLimit { inner: Arc::new(Inner { rate, clock: Box::new(clock), ..Inner::default() }) }
    }

    /// Whether `event` may pass now; reports suppressed lines before one that passes.
    fn allow(&self, event: &Event<'_>) -> bool {
        let meta = event.metadata();
        if is_ours(meta.target()) {
            return true;
        }
        let (target, site) = if meta.fields().field("log.target").is_some() {
            let mut origin = LogOrigin::default();
            event.record(&mut origin);
            let target = origin.target.map_or(Cow::Borrowed(meta.target()), Cow::Owned);
            let mut h = DefaultHasher::new();
            (&target, &origin.file, origin.line).hash(&mut h);
            (target, h.finish())
        } else {
            (Cow::Borrowed(meta.target()), 0)
        };
        if is_ours(&target) {
            return true;
        }
        let key = SiteKey::Site(meta.callsite(), site);
        let now = (self.inner.clock)();
        let report = {
            let mut sites = self.inner.sites.lock().unwrap_or_else(PoisonError::into_inner);
            let (key, target) = if sites.len() >= MAX_SITES && !sites.contains_key(&key) {
                (SiteKey::Overflow, Cow::Borrowed("dependencies beyond the first call sites"))
            } else {
                (key, target)
            };
            let rate = self.inner.rate;
            let bucket = sites
                .entry(key)
                .or_insert_with(|| Bucket::new(rate, now, *meta.level(), target.into_owned()));
            if !bucket.take(rate, now) {
                return false;
            }
            let suppressed = std::mem::take(&mut bucket.suppressed);
            (suppressed > 0).then(|| (bucket.level, bucket.target.clone(), suppressed))
        };
        if let Some((level, target, suppressed)) = report {
            self.report(level, &target, suppressed);
        }
        true
    }

    /// Logs, for every call site that dropped lines since its last one passed, how many.
    pub fn report_suppressed(&self) {
        let pending: Vec<(Level, String, u64)> = {
            let mut sites = self.inner.sites.lock().unwrap_or_else(PoisonError::into_inner);
            sites
                .values_mut()
                .filter(|b| b.suppressed > 0)
                .map(|b| (b.level, b.target.clone(), std::mem::take(&mut b.suppressed)))
                .collect()
        };
        for (level, target, suppressed) in pending {
            self.report(level, &target, suppressed);
        }
    }

    /// One `shoal::log` line at `level`: `suppressed` lines from `target` were dropped.
    fn report(&self, level: Level, target: &str, suppressed: u64) {
        let Some(dispatch) = self.inner.dispatch.get().and_then(WeakDispatch::upgrade) else { return };
        let site = report_site(level);
        site.register();
        let meta = site.metadata();
        // The subscriber itself, not the thread's current one: this runs inside the dispatch of
        // another event, where tracing's macros would find no subscriber.
        if !dispatch.enabled(meta) {
            return;
        }
        let rate = self.inner.rate;
        let message = format!(
            "{target}: {suppressed} log lines suppressed (a dependency's call site may log {} lines at once, \
             then one every {:?})",
            rate.burst, rate.interval
        );
        let values: [Option<&dyn Value>; 3] = [Some(&message.as_str()), Some(&suppressed), Some(&target)];
        dispatch.event(&Event::new(meta, &meta.fields().value_set_all(&values)));
    }
}

/// The static call sites of the report lines, one per level (a call site has one level).
macro_rules! report_sites {
    ($($site:ident, $meta:ident, $level:expr;)*) => {
        $(
            static $meta: Metadata<'static> = Metadata::new(
                "suppressed log lines",
                REPORT_TARGET,
                $level,
                Some(file!()),
                Some(line!()),
                Some(module_path!()),
                FieldSet::new(&["message", "suppressed", "from"], tracing_core::identify_callsite!(&$site)),
                Kind::EVENT,
            );
            static $site: DefaultCallsite = DefaultCallsite::new(&$meta);
        )*
    };
}

report_sites! {
    ERROR_SITE, ERROR_META, Level::ERROR;
    WARN_SITE, WARN_META, Level::WARN;
    INFO_SITE, INFO_META, Level::INFO;
    DEBUG_SITE, DEBUG_META, Level::DEBUG;
    TRACE_SITE, TRACE_META, Level::TRACE;
}

fn report_site(level: Level) -> &'static DefaultCallsite {
    match level {
        Level::ERROR => &ERROR_SITE,
        Level::WARN => &WARN_SITE,
        Level::INFO => &INFO_SITE,
        Level::DEBUG => &DEBUG_SITE,
        Level::TRACE => &TRACE_SITE,
    }
}

impl<S: Subscriber> Layer<S> for DependencyLimit {
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.inner.dispatch.set(subscriber.downgrade());
    }

    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        self.allow(event)
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::{EnvFilter, Registry};

    use super::*;

    /// Every line that reaches the output, as `target: message`.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Lines {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            struct Message(String);
            impl Visit for Message {
                fn record_str(&mut self, field: &Field, value: &str) {
                    if field.name() == "message" {
                        self.0 = value.to_string();
                    }
                }
                fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut m = Message(String::new());
            event.record(&mut m);
            self.0.lock().unwrap().push(format!("{}: {}", event.metadata().target(), m.0));
        }
    }

    impl Lines {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    /// A subscriber as `logging::init` builds it: the level filter, then the limit, then output.
    fn subscriber(filter: &str, limit: &DependencyLimit) -> (Dispatch, Lines) {
        let lines = Lines::default();
        let s = Registry::default().with(EnvFilter::new(filter)).with(limit.clone()).with(lines.clone());
        (Dispatch::new(s), lines)
    }

    /// A clock that moves only when told to.
    #[derive(Clone)]
    struct Clock(Arc<Mutex<Instant>>);

    impl Clock {
        fn new() -> Self {
            Clock(Arc::new(Mutex::new(Instant::now())))
        }
        fn limit(&self, rate: Rate) -> DependencyLimit {
            let clock = self.clone();
            DependencyLimit::with_clock(rate, move || *clock.0.lock().unwrap())
        }
        fn advance(&self, by: Duration) {
            *self.0.lock().unwrap() += by;
        }
    }

    /// Sends an event as tracing-log does for a `log` record: its level's call site, the
    /// record's own target, file and line in fields.
    fn log_record(dispatch: &Dispatch, target: &str, file: &str, line: u64) {
        let meta = LOG_SITE.metadata();
        let values: [Option<&dyn Value>; 4] =
            [Some(&"SNI is an IP address"), Some(&target), Some(&file), Some(&line)];
        if dispatch.enabled(meta) {
            dispatch.event(&Event::new(meta, &meta.fields().value_set_all(&values)));
        }
    }

    static LOG_META: Metadata<'static> = Metadata::new(
        "log event",
        "log",
        Level::WARN,
        None,
        None,
        None,
        FieldSet::new(
            &["message", "log.target", "log.file", "log.line"],
            tracing_core::identify_callsite!(&LOG_SITE),
        ),
        Kind::EVENT,
    );
    static LOG_SITE: DefaultCallsite = DefaultCallsite::new(&LOG_META);

    #[test]
    fn a_burst_from_a_dependency_is_cut_to_the_limit_with_a_suppressed_count() {
        let clock = Clock::new();
        let limit = clock.limit(Rate::default());
        let (dispatch, lines) = subscriber("info", &limit);
        tracing::dispatcher::with_default(&dispatch, || {
            for i in 0..25 {
                tracing::warn!(target: "fake_dep::conn", "handshake quirk {i}");
            }
        });
        let out = lines.take();
        assert_eq!(out.len(), BURST as usize, "{out:#?}");
        assert_eq!(out.last().map(String::as_str), Some("fake_dep::conn: handshake quirk 9"));
        limit.report_suppressed();
        assert_eq!(
            lines.take(),
            [
                "shoal::log: fake_dep::conn: 15 log lines suppressed (a dependency's call site may log 10 lines at \
              once, then one every 10s)"
            ]
        );
        limit.report_suppressed();
        assert!(lines.take().is_empty(), "a count is reported once");
    }

    #[test]
    fn shoal_targets_pass_untouched() {
        let limit = Clock::new().limit(Rate::default());
        let (dispatch, lines) = subscriber("info", &limit);
        tracing::dispatcher::with_default(&dispatch, || {
            for i in 0..100 {
                tracing::info!(target: "shoal::member", "member-join n{i}");
                tracing::info!("from this crate {i}");
            }
        });
        assert_eq!(lines.take().len(), 200);
        limit.report_suppressed();
        assert!(lines.take().is_empty());
    }

    #[test]
    fn the_next_line_that_passes_says_how_many_were_dropped() {
        let clock = Clock::new();
        let limit = clock.limit(Rate { burst: 2, interval: Duration::from_secs(10) });
        let (dispatch, lines) = subscriber("info", &limit);
        tracing::dispatcher::with_default(&dispatch, || {
            let retry = || tracing::warn!(target: "fake_dep", "retrying");
            (0..5).for_each(|_| retry()); // 2 pass, 3 dropped
            clock.advance(Duration::from_secs(9));
            retry(); // no token yet: 4 dropped
            clock.advance(Duration::from_secs(1));
            retry(); // one token: the count, then the line
            retry(); // dropped
        });
        assert_eq!(
            lines.take(),
            [
                "fake_dep: retrying",
                "fake_dep: retrying",
                "shoal::log: fake_dep: 4 log lines suppressed (a dependency's call site may log 2 lines at once, \
                 then one every 10s)",
                "fake_dep: retrying",
            ]
        );
    }

    #[test]
    fn the_level_filter_applies_first() {
        let limit = Clock::new().limit(Rate::default());
        let (dispatch, lines) = subscriber("warn,fake_dep=error", &limit);
        tracing::dispatcher::with_default(&dispatch, || {
            for _ in 0..50 {
                tracing::warn!(target: "fake_dep", "hidden by the filter");
            }
            tracing::error!(target: "fake_dep", "shown");
        });
        assert_eq!(lines.take(), ["fake_dep: shown"]);
        limit.report_suppressed();
        assert!(lines.take().is_empty(), "filtered lines are not counted");
    }

    #[test]
    fn log_records_are_limited_per_call_site_and_reported_under_their_own_target() {
        let limit = Clock::new().limit(Rate::default());
        let (dispatch, lines) = subscriber("info", &limit);
        for line in [10, 20] {
            for _ in 0..15 {
                log_record(&dispatch, "rustls::server::hs", "hs.rs", line);
            }
        }
        for _ in 0..15 {
            log_record(&dispatch, "shoal_balancer::tls", "tls.rs", 1);
        }
        assert_eq!(lines.take().len(), 2 * BURST as usize + 15);
        limit.report_suppressed();
        let report = "shoal::log: rustls::server::hs: 5 log lines suppressed (a dependency's call site may log 10 \
                      lines at once, then one every 10s)";
        assert_eq!(lines.take(), [report, report]);
    }

    #[test]
    fn call_sites_beyond_the_cap_share_one_bucket() {
        let limit = Clock::new().limit(Rate::default());
        let (dispatch, lines) = subscriber("info", &limit);
        for line in 0..(MAX_SITES as u64 + 50) {
            log_record(&dispatch, "dep", "f.rs", line);
        }
        assert_eq!(limit.inner.sites.lock().unwrap().len(), MAX_SITES + 1);
        // The first MAX_SITES call sites pass once each; the 50 beyond share one burst.
        assert_eq!(lines.take().len(), MAX_SITES + BURST as usize);
        limit.report_suppressed();
        let report = lines.take();
        assert_eq!(report.len(), 1);
        assert!(
            report[0].starts_with("shoal::log: dependencies beyond the first call sites: 40 log lines"),
            "{report:?}"
        );
    }

    #[test]
    fn a_bucket_refills_one_line_per_interval_up_to_the_burst() {
        let rate = Rate { burst: 3, interval: Duration::from_secs(10) };
        let t0 = Instant::now();
        let mut b = Bucket::new(rate, t0, Level::WARN, "dep".into());
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!((0..3).all(|_| b.take(rate, at(0))));
        assert!(!b.take(rate, at(9)));
        assert!(b.take(rate, at(10)));
        assert!(!b.take(rate, at(15)));
        assert!(b.take(rate, at(20)));
        // A long calm refills the burst, no more.
        assert!((0..3).all(|_| b.take(rate, at(500))));
        assert!(!b.take(rate, at(500)));
        assert_eq!(b.suppressed, 3);
    }
}
