//! Log output: human-readable lines by default, JSON lines with `--log-json`.

use tracing_subscriber::EnvFilter;

use crate::cli::LogArgs;

/// Installs the global subscriber; `RUST_LOG` overrides `--log-level` when set.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&args.log_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if args.log_json {
        builder.json().flatten_event(true).init();
    } else {
        builder.with_target(false).init();
    }
}
