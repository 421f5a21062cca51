//! What a running balancer shows and what its operators steer: the configuration in force,
//! the pools, the frontends' counters, the membership, the access log. The runtime API, the
//! stats and the request path read it; only the balancer's lifecycle ([`crate::Balancer`])
//! changes what it holds.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption};
use shoal_agent::Membership;
use tokio::sync::{Notify, watch};

use crate::access_log::AccessLog;
use crate::config::BalancerConfig;
use crate::metrics::FrontendStats;
use crate::pool::Pool;

/// The pools by name, swapped as a whole on reload.
pub type Pools = BTreeMap<String, Arc<Pool>>;

/// A running balancer's state.
pub struct State {
    pub(crate) cfg: Mutex<BalancerConfig>,
    pub(crate) pools: ArcSwap<Pools>,
    pub(crate) frontend_stats: Mutex<HashMap<String, Arc<FrontendStats>>>,
    /// Wakes the controller: a server was ejected, an operator changed something, a reload.
    pub(crate) changed: Arc<Notify>,
    pub(crate) members: watch::Receiver<Arc<Membership>>,
    /// The connection cap in force: `limits.max_connections` as the descriptors allow.
    pub(crate) max_conns: usize,
    pub(crate) open_conns: AtomicUsize,
    pub(crate) access_log: ArcSwapOption<AccessLog>,
    /// Proxy numbers (HAProxy's `iid`), shared by frontends and pools.
    next_id: AtomicU32,
    started: Instant,
    agent: OnceLock<shoal_agent::AgentHandle>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

impl State {
    pub(crate) fn new(
        cfg: BalancerConfig,
        members: watch::Receiver<Arc<Membership>>,
        max_conns: usize,
    ) -> State {
        State {
            cfg: Mutex::new(cfg),
            pools: ArcSwap::from_pointee(BTreeMap::new()),
            frontend_stats: Mutex::new(HashMap::new()),
            changed: Arc::new(Notify::new()),
            members,
            max_conns,
            open_conns: AtomicUsize::new(0),
            access_log: ArcSwapOption::empty(),
            next_id: AtomicU32::new(1),
            started: Instant::now(),
            agent: OnceLock::new(),
        }
    }

    /// A new proxy number (HAProxy's `iid`).
    pub(crate) fn next_id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Lets `/metrics` report the gossip agent's counters (probes, drops, handler runs).
    pub fn attach_agent(&self, agent: shoal_agent::AgentHandle) {
        let _ = self.agent.set(agent);
    }

    /// The agent attached with [`State::attach_agent`].
    pub fn agent(&self) -> Option<shoal_agent::AgentHandle> {
        self.agent.get().cloned()
    }

    /// When the balancer started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The configuration in force.
    pub fn config(&self) -> BalancerConfig {
        self.cfg.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The connection cap in force: `limits.max_connections`, or less when the descriptor
    /// limit (`RLIMIT_NOFILE`) allows fewer.
    pub fn max_connections(&self) -> usize {
        self.max_conns
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.open_conns.load(Ordering::Relaxed)
    }

    /// The access log, when one is on.
    pub fn access_log(&self) -> Option<Arc<AccessLog>> {
        self.access_log.load_full()
    }

    /// The cluster's membership as last seen.
    pub fn members(&self) -> Arc<Membership> {
        self.members.borrow().clone()
    }

    /// Every pool, by name.
    pub fn pools(&self) -> Arc<Pools> {
        self.pools.load_full()
    }

    /// Frontend counters, by name.
    pub fn frontend_stats(&self) -> Vec<(String, Arc<FrontendStats>)> {
        let mut v: Vec<_> = self
            .frontend_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}
