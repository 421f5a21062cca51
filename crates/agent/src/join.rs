//! Joining, and staying joined: `--join` targets are retried with back-off
//! until one answers (so start order never matters), then re-checked now and
//! then and re-joined if none of them is in our cluster any more (a restarted
//! seed with a new address, a healed partition).

use std::time::Duration;

use tokio::time::sleep;

use crate::config::JoinTarget;
use crate::driver::{AgentHandle, resolve};

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Joins through `targets` until one answers, then keeps watching them.
pub(crate) async fn retry_join(
    handle: AgentHandle,
    targets: Vec<JoinTarget>,
    replay: bool,
    recheck: Duration,
) {
    let shown = targets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1u32;
    loop {
        match handle.join(&targets, replay).await {
            Ok(n) => {
                tracing::info!(targets = %shown, answered = n, "joined the cluster");
                break;
            }
            Err(crate::AgentError::Stopped) => return,
            Err(e) => {
                tracing::warn!(targets = %shown, attempt, error = %e, retry_in = ?backoff, "join failed; retrying");
                sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
        }
    }
    if recheck.is_zero() {
        return;
    }
    let members = handle.members();
    loop {
        sleep(recheck).await;
        let (addrs, _) = resolve(&targets).await;
        let in_cluster = {
            let m = members.borrow();
            addrs.iter().any(|a| m.alive().any(|member| member.addr == *a))
        };
        let missing: Vec<_> = addrs.into_iter().filter(|a| *a != members.borrow().local.addr).collect();
        if in_cluster || missing.is_empty() {
            continue;
        }
        match handle.join_addrs(missing, replay).await {
            Ok(n) => tracing::info!(targets = %shown, answered = n, "re-joined through a join target"),
            Err(crate::AgentError::Stopped) => return,
            Err(e) => tracing::debug!(targets = %shown, error = %e, "re-join attempt failed"),
        }
    }
}

/// After a restart with a snapshot: joins any previously known member (first that answers).
pub(crate) async fn rejoin_previous(handle: AgentHandle, mut previous: Vec<(String, String)>) {
    use rand::seq::SliceRandom;
    previous.shuffle(&mut <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng());
    let me = handle.members().borrow().local.name.to_string();
    for (name, addr) in previous {
        if name == me {
            continue;
        }
        let Ok(target) = JoinTarget::parse(&addr) else { continue };
        match handle.join(std::slice::from_ref(&target), false).await {
            Ok(_) => {
                tracing::info!(node = %name, %addr, "re-joined a previously known member");
                return;
            }
            Err(crate::AgentError::Stopped) => return,
            Err(e) => {
                tracing::debug!(node = %name, %addr, error = %e, "previously known member did not answer")
            }
        }
    }
    tracing::warn!("failed to re-join any previously known member");
}
