//! Log output: human-readable lines by default, JSON lines with `--log-json`;
//! long-running roles also feed a [`LogTap`] for `shoal monitor`.

use shoal_rpc::LogTap;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogArgs;

/// Installs the global subscriber; `RUST_LOG` overrides `--log-level` when set.
/// Client commands only log warnings and errors (their output is the answer).
pub fn init(args: &LogArgs, long_running: bool) -> LogTap {
    let level = if long_running { args.log_level.as_str() } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let tap = LogTap::default();
    let registry = tracing_subscriber::registry().with(filter).with(tap.clone());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if args.log_json {
        registry.with(fmt.json().flatten_event(true)).init();
    } else {
        registry.with(fmt.with_target(false)).init();
    }
    tap
}
