//! The connection cap, which follows the process's descriptor limit (`RLIMIT_NOFILE`).

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept out of the connection cap: listeners, health checks, logs, files.
pub const FD_RESERVE: u64 = 256;

/// The connection cap `soft` descriptors allow: each proxied connection holds two (the client's
/// and the server's), after [`FD_RESERVE`]; never more than `configured`, never 0.
pub fn cap_for(configured: usize, soft: u64) -> usize {
    let allowed = soft.saturating_sub(FD_RESERVE) / 2;
    configured.min(usize::try_from(allowed).unwrap_or(usize::MAX)).max(1)
}

/// The connection cap in force for `configured` (`limits.max_connections`): the soft
/// descriptor limit is first raised towards the hard one as far as `configured` needs (as
/// HAProxy sizes its own), then the cap is what it allows ([`cap_for`]). Logged.
pub fn connection_cap(configured: usize) -> usize {
    let Ok((mut soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        tracing::warn!(
            max_connections = configured,
            "cannot read RLIMIT_NOFILE: the configured connection cap applies"
        );
        return configured;
    };
    let needed = (configured as u64).saturating_mul(2).saturating_add(FD_RESERVE);
    if soft < needed && soft < hard {
        let raised = needed.min(hard);
        match setrlimit(Resource::RLIMIT_NOFILE, raised, hard) {
            Ok(()) => soft = raised,
            Err(e) => tracing::debug!(error = %e, "cannot raise RLIMIT_NOFILE"),
        }
    }
    let cap = cap_for(configured, soft);
    if cap < configured {
        tracing::warn!(
            max_connections = configured,
            nofile = soft,
            cap,
            "the descriptor limit (RLIMIT_NOFILE) allows fewer connections than configured: raise it (ulimit -n) for more"
        );
    } else {
        tracing::info!(max_connections = cap, nofile = soft, "connection cap");
    }
    cap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_follows_the_descriptors() {
        assert_eq!(cap_for(65_536, 1024), 384, "(1024 - 256) / 2");
        assert_eq!(cap_for(100, 1_048_576), 100, "the configured cap when descriptors abound");
        assert_eq!(cap_for(100, 10), 1, "never 0");
        assert_eq!(cap_for(usize::MAX, u64::MAX), (u64::MAX / 2 - FD_RESERVE / 2) as usize);
    }
}
