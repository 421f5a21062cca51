//! Log output: human-readable lines by default, JSON lines with `--log-json`;
//! long-running roles also feed a [`LogTap`] for `shoal monitor`. Dependencies' lines are
//! rate-limited per call site ([`crate::log_limit`]).

use shoal_rpc::LogTap;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogArgs;
use crate::log_limit::DependencyLimit;

/// What a command logs unless `--log-level` says otherwise.
#[derive(Debug, Clone, Copy)]
pub enum Verbosity {
    /// Client commands: warnings and errors only (their output is the answer).
    Client,
    /// Long-running roles: `info`.
    Service,
    /// `shoal demo`: the balancer's server changes; the agents' chatter is hidden.
    Demo,
}

/// What [`init`] hands back: the copy of the log for `shoal monitor`, and the dependency limit
/// whose pending counts are reported at exit.
pub struct Logging {
    /// Log lines for `shoal monitor`.
    pub tap: LogTap,
    /// The rate limit on dependencies' lines.
    pub limit: DependencyLimit,
}

/// Installs the global subscriber; `RUST_LOG` overrides `--log-level` when set. The level filter
/// runs first, then the dependency limit, then the outputs.
pub fn init(args: &LogArgs, verbosity: Verbosity) -> Logging {
    let level = match (verbosity, &args.log_level) {
        (Verbosity::Client, _) => "warn",
        (_, Some(level)) => level.as_str(),
        (Verbosity::Service, None) => "info",
        (Verbosity::Demo, None) => "warn,shoal::server=info",
    };
    // rustls warns on every handshake whose SNI is an IP address (clients connecting by IP,
    // such as load generators, send one although RFC 6066 forbids it): at `warn` that floods
    // the log with one line per connection, so its own warnings show only when asked for.
    let level = if level.contains("rustls") { level.to_string() } else { format!("{level},rustls=error") };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let tap = LogTap::default();
    let limit = DependencyLimit::default();
    let registry = tracing_subscriber::registry().with(filter).with(limit.clone()).with(tap.clone());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if args.log_json {
        registry.with(fmt.json().flatten_event(true)).init();
    } else {
        registry.with(fmt.with_target(false)).init();
    }
    Logging { tap, limit }
}
