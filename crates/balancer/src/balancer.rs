//! The balancer's lifecycle: binding frontends and the stats and admin listeners, following
//! membership (the controller that keeps each pool in line with the cluster and starts health
//! checks), reloading a configuration without dropping a connection, accepting connections and
//! handing each to the HTTP paths, and shutting down with a bounded drain.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use shoal_agent::Membership;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::access_log::{self, AccessLog};
use crate::config::{self, BalancerConfig, ConfigError};
use crate::conn::{GuardedIo, IoTimeouts, Stop};
use crate::frontend::{ConnCtx, Frontend, RouteRule};
use crate::h1::{self, ClientIo};
use crate::metrics::FrontendStats;
use crate::pool::{Change, Pool};
use crate::state::{Pools, State};
use crate::{admin, admission, discovery, general, health, limits, park, stats, tls};
use shoal_gossip::escape::Esc;

/// Errors from starting or reloading.
#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TLS files could not be loaded.
    #[error("TLS for frontend {frontend}: {reason}")]
    Tls {
        /// The frontend.
        frontend: String,
        /// Why.
        reason: String,
    },
    /// The parking lot for idle connections could not be set up.
    #[error("cannot set up the parking lot for idle connections: {0}")]
    Parking(std::io::Error),
}

/// Health-check tasks, by (pool, server).
type Checkers = HashMap<(String, Arc<str>), JoinHandle<()>>;
/// Listeners bound during a reload, before they are swapped in.
type Fresh = HashMap<SocketAddr, (TcpListener, Option<tokio_rustls::TlsAcceptor>, Option<JoinHandle<()>>)>;

struct Listener {
    bound: SocketAddr,
    frontend: Arc<ArcSwap<Frontend>>,
    tls: Option<config::TlsConfig>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Inner {
    /// What the runtime API and the stats read and steer.
    state: Arc<State>,
    listeners: tokio::sync::Mutex<HashMap<SocketAddr, Listener>>,
    conns: Arc<Semaphore>,
    drained: Arc<Notify>,
    /// Set on shutdown: open connections finish their request and close.
    stop: Arc<Stop>,
    /// Where idle plain keep-alive connections wait for their next request.
    parking: park::Lot<(ConnCtx, ConnGuard)>,
    checkers: std::sync::Mutex<Checkers>,
    /// The task following each pool's DNS or Docker source, by pool number.
    discovery: std::sync::Mutex<HashMap<u32, JoinHandle<()>>>,
    controller: std::sync::Mutex<Option<JoinHandle<()>>>,
    stats_task: std::sync::Mutex<Option<JoinHandle<()>>>,
    stats_addr: std::sync::Mutex<Option<SocketAddr>>,
    admin_tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    admin_socket: std::sync::Mutex<Option<std::path::PathBuf>>,
    admin_addr: std::sync::Mutex<Option<SocketAddr>>,
}

/// A running balancer.
#[derive(Clone)]
pub struct Balancer {
    inner: Arc<Inner>,
}

/// What a running balancer shows: its configuration, pools, counters and membership.
impl std::ops::Deref for Balancer {
    type Target = State;

    fn deref(&self) -> &State {
        &self.inner.state
    }
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer").finish_non_exhaustive()
    }
}

impl Balancer {
    /// Validates `cfg`, binds every listener and starts following `members`.
    pub async fn start(
        cfg: BalancerConfig,
        members: watch::Receiver<Arc<Membership>>,
    ) -> Result<Balancer, BalancerError> {
        cfg.validate()?;
        let max_conns = limits::connection_cap(cfg.limits.max_connections);
        let stop = Arc::new(Stop::default());
        let parking = park::Lot::start(stop.clone(), |stream, (ctx, guard)| {
            tokio::spawn(serve_plain(stream, ctx, guard, false));
        })
        .map_err(BalancerError::Parking)?;
        let inner = Arc::new(Inner {
            state: Arc::new(State::new(cfg.clone(), members, max_conns)),
            listeners: tokio::sync::Mutex::new(HashMap::new()),
            conns: Arc::new(Semaphore::new(max_conns)),
            drained: Arc::new(Notify::new()),
            stop: stop.clone(),
            parking,
            checkers: std::sync::Mutex::new(HashMap::new()),
            discovery: std::sync::Mutex::new(HashMap::new()),
            controller: std::sync::Mutex::new(None),
            stats_task: std::sync::Mutex::new(None),
            stats_addr: std::sync::Mutex::new(None),
            admin_tasks: std::sync::Mutex::new(Vec::new()),
            admin_socket: std::sync::Mutex::new(None),
            admin_addr: std::sync::Mutex::new(None),
        });
        let b = Balancer { inner };
        b.apply(cfg.clone(), true).await?;
        if let Some(addr) = cfg.stats {
            let listener =
                TcpListener::bind(addr).await.map_err(|source| BalancerError::Bind { addr, source })?;
            let bound = listener.local_addr().map_or(addr, |a| a);
            *b.inner.stats_addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(bound);
            tracing::info!(addr = %bound, "stats listening");
            let task = tokio::spawn(stats::serve(listener, b.inner.state.clone()));
            *b.inner.stats_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
        b.start_admin(&cfg.admin, cfg.limits.max_admin_connections).await?;
        // Every listener is bound now: no pool may route to one of them.
        {
            let listeners = b.inner.listeners.lock().await;
            let own = b.own_addrs(&listeners);
            let host = admission::HostNets::read();
            for pool in b.inner.state.pools.load().values() {
                pool.set_admission(&host, &own);
            }
        }
        let controller = tokio::spawn(b.clone().control());
        *b.inner.controller.lock().unwrap_or_else(|e| e.into_inner()) = Some(controller);
        Ok(b)
    }

    /// Follows the agent's round-trip estimates (Serf's network coordinates): each server's
    /// [`Server::estimated_rtt`], which the `nearest` algorithm, the stats page and the metrics
    /// read. Runs until the agent stops publishing them.
    pub fn follow_distances(&self, mut distances: watch::Receiver<Arc<shoal_agent::Distances>>) {
        let state = self.inner.state.clone();
        tokio::spawn(async move {
            loop {
                let d = distances.borrow_and_update().clone();
                for pool in state.pools.load().values() {
                    for server in pool.servers() {
                        server.set_estimated_rtt(d.rtt.get(&server.name).copied());
                    }
                }
                if distances.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Replaces the configuration. A bad one is refused before anything changes;
    /// open connections are kept and see the new routes on their next request.
    pub async fn reload(&self, cfg: BalancerConfig) -> Result<(), BalancerError> {
        cfg.validate()?;
        self.apply(cfg, false).await?;
        self.inner.state.changed.notify_one();
        tracing::info!("configuration reloaded");
        Ok(())
    }

    /// Opens the runtime API: the unix socket (a failure only warns: the balancer still
    /// serves) and the TCP listener (a failure is an error, like any listener).
    async fn start_admin(&self, admin: &config::AdminConfig, max_conns: usize) -> Result<(), BalancerError> {
        let mut tasks = Vec::new();
        // One cap for both: the unix socket and TCP serve the same sessions.
        let permits = Arc::new(Semaphore::new(max_conns));
        if let Some(path) = &admin.socket {
            match crate::admin::bind_unix(path) {
                Ok(listener) => {
                    tracing::info!(socket = %path.display(), "runtime API listening");
                    *self.inner.admin_socket.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.clone());
                    tasks.push(tokio::spawn(crate::admin::serve_unix(
                        listener,
                        self.inner.state.clone(),
                        permits.clone(),
                    )));
                }
                Err(e) => {
                    tracing::warn!(socket = %path.display(), error = %e, "runtime API socket not opened")
                }
            }
        }
        if let Some(addr) = admin.listen {
            let listener =
                TcpListener::bind(addr).await.map_err(|source| BalancerError::Bind { addr, source })?;
            let bound = listener.local_addr().map_or(addr, |a| a);
            tracing::info!(addr = %bound, token = admin.token.is_some(), "runtime API listening on TCP");
            *self.inner.admin_addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(bound);
            tasks.push(tokio::spawn(crate::admin::serve_tcp(
                listener,
                self.inner.state.clone(),
                admin.token.clone(),
                permits,
            )));
        }
        *self.inner.admin_tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        Ok(())
    }

    /// Runs one runtime API command (HAProxy's syntax, as on the admin socket) and returns its
    /// answer.
    pub fn command(&self, line: &str) -> String {
        admin::execute(&self.inner.state, line)
    }

    /// Every address the balancer listens on: frontends, stats, the runtime API on TCP.
    fn own_addrs(&self, listeners: &HashMap<SocketAddr, Listener>) -> Vec<SocketAddr> {
        let mut own: Vec<SocketAddr> = listeners.values().map(|l| l.bound).collect();
        own.extend(*self.inner.stats_addr.lock().unwrap_or_else(|e| e.into_inner()));
        own.extend(*self.inner.admin_addr.lock().unwrap_or_else(|e| e.into_inner()));
        own
    }

    /// Writes the access log (in the configured format) to `out` instead of stdout, until a
    /// reload changes the format. Lines already taken are written where they were going.
    pub fn log_access_to(&self, out: Box<dyn std::io::Write + Send>) {
        let format = self.config().access_log;
        self.inner.state.access_log.store(AccessLog::start_with(format, out));
    }

    async fn apply(&self, cfg: BalancerConfig, first: bool) -> Result<(), BalancerError> {
        let log_format = self.access_log().map_or(access_log::Format::Off, |l| l.format());
        if first || log_format != cfg.access_log {
            self.inner.state.access_log.store(access_log::AccessLog::start(cfg.access_log));
        }
        // Pools: keep the ones whose configuration did not change (with their servers and health).
        let old_pools = self.inner.state.pools.load_full();
        let mut pools = BTreeMap::new();
        for pc in &cfg.pools {
            let pool = match old_pools.get(&pc.name) {
                Some(p) if p.cfg == *pc => p.clone(),
                _ => Arc::new(Pool::new(pc.clone(), self.next_id(), self.inner.state.changed.clone())),
            };
            pools.insert(pc.name.clone(), pool);
        }
        // Frontends, and new listeners bound before anything is swapped in.
        let mut listeners = self.inner.listeners.lock().await;
        let mut fresh: Fresh = HashMap::new();
        let mut built = Vec::new();
        for fc in &cfg.frontends {
            let fe = Arc::new(self.frontend(fc, &cfg, &pools));
            for &addr in &fc.listen {
                let reuse = listeners.get(&addr).is_some_and(|l| l.tls == fc.tls);
                if !reuse {
                    let listener =
                        bind_frontend(addr).await.map_err(|source| BalancerError::Bind { addr, source })?;
                    let (acceptor, watcher) = match &fc.tls {
                        Some(t) => {
                            let (a, w) = tls::acceptor(t)
                                .map_err(|reason| BalancerError::Tls { frontend: fc.name.clone(), reason })?;
                            (Some(a), Some(w))
                        }
                        None => (None, None),
                    };
                    fresh.insert(addr, (listener, acceptor, watcher));
                }
                built.push((addr, fe.clone(), fc.tls.clone()));
            }
        }
        // Everything is ready: swap.
        let wanted: std::collections::HashSet<SocketAddr> = built.iter().map(|(a, _, _)| *a).collect();
        let gone: Vec<SocketAddr> = listeners.keys().filter(|a| !wanted.contains(a)).copied().collect();
        for addr in gone {
            if let Some(l) = listeners.remove(&addr) {
                let _ = l.stop.send(true);
                tracing::info!(%addr, "listener closed");
            }
        }
        for (addr, fe, tls) in built {
            match fresh.remove(&addr) {
                None => {
                    if let Some(l) = listeners.get(&addr) {
                        l.frontend.store(fe);
                    }
                }
                Some((listener, acceptor, watcher)) => {
                    if let Some(old) = listeners.remove(&addr) {
                        let _ = old.stop.send(true);
                    }
                    let frontend = Arc::new(ArcSwap::new(fe));
                    let (stop, stop_rx) = watch::channel(false);
                    let local = listener.local_addr().map_or(addr, |a| a);
                    tracing::info!(addr = %local, tls = acceptor.is_some(), "listening");
                    // The accept loop ends on `stop`; only the certificate watcher needs aborting.
                    tokio::spawn(self.clone().accept_loop(listener, frontend.clone(), acceptor, stop_rx));
                    let tasks = watcher.into_iter().collect();
                    listeners.insert(addr, Listener { bound: local, frontend, tls, stop, tasks });
                }
            }
        }
        // Before the pools are swapped in, so that no sync ever routes to a listener of ours.
        let own = self.own_addrs(&listeners);
        drop(listeners);
        let host = admission::HostNets::read();
        for pool in pools.values() {
            pool.set_admission(&host, &own);
        }
        let removed: Vec<Arc<Pool>> = old_pools
            .iter()
            .filter(|(n, p)| pools.get(*n).is_none_or(|q| !Arc::ptr_eq(p, q)))
            .map(|(_, p)| p.clone())
            .collect();
        // New pools start following their source; replaced ones stop.
        {
            let mut tasks = self.inner.discovery.lock().unwrap_or_else(|e| e.into_inner());
            for p in &removed {
                if let Some(task) = tasks.remove(&p.id) {
                    task.abort();
                }
            }
            for p in pools.values() {
                let pool = Arc::downgrade(p);
                let out = discovery::Publisher::to(move |found| {
                    pool.upgrade().map(|pool| pool.set_discovered(found)).is_some()
                });
                if !tasks.contains_key(&p.id)
                    && let Some(task) = discovery::spawn(&p.cfg, p.name.clone(), out)
                {
                    tasks.insert(p.id, task);
                }
            }
        }
        self.inner.state.pools.store(Arc::new(pools));
        *self.inner.state.cfg.lock().unwrap_or_else(|e| e.into_inner()) = cfg;
        // Checkers of replaced pools stop; the controller starts new ones.
        let mut checkers = self.inner.checkers.lock().unwrap_or_else(|e| e.into_inner());
        for p in removed {
            checkers.retain(|(pool, _), task| {
                let keep = *pool != p.cfg.name;
                if !keep {
                    task.abort();
                }
                keep
            });
        }
        let _ = first;
        Ok(())
    }

    fn frontend(
        &self,
        fc: &config::FrontendConfig,
        cfg: &BalancerConfig,
        pools: &BTreeMap<String, Arc<Pool>>,
    ) -> Frontend {
        let stats = self
            .inner
            .state
            .frontend_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(fc.name.clone())
            .or_insert_with(|| {
                let stats = FrontendStats::default();
                stats.id.store(self.next_id(), Ordering::Relaxed);
                Arc::new(stats)
            })
            .clone();
        Frontend {
            name: Arc::from(fc.name.as_str()),
            routes: fc
                .routes
                .iter()
                .map(|r| RouteRule {
                    host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
                    path_prefix: r.path_prefix.clone(),
                    pool: pools[&r.pool].clone(),
                })
                .collect(),
            default_pool: pools[&fc.default_pool].clone(),
            tls: fc.tls.is_some(),
            fast_path: fc.fast_path,
            timeouts: cfg.timeouts.clone(),
            max_body: cfg.limits.max_body_bytes,
            max_header: cfg.limits.max_header_bytes,
            stats,
        }
    }

    /// The addresses actually bound (useful with port 0).
    pub async fn local_addrs(&self) -> Vec<SocketAddr> {
        self.inner.listeners.lock().await.values().map(|l| l.bound).collect()
    }

    /// Idle keep-alive client connections parked outside the runtime, waiting for their next
    /// request (they are open connections too, and count as such).
    pub fn parked_connections(&self) -> usize {
        self.inner.parking.len()
    }

    /// Each frontend listener: the frontend's name and the address bound.
    pub async fn listeners(&self) -> Vec<(String, SocketAddr)> {
        let listeners = self.inner.listeners.lock().await;
        let mut out: Vec<(String, SocketAddr)> =
            listeners.values().map(|l| (l.frontend.load().name.to_string(), l.bound)).collect();
        out.sort();
        out
    }

    /// The stats listener's bound address.
    pub fn stats_addr(&self) -> Option<SocketAddr> {
        *self.inner.stats_addr.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The runtime API's TCP address, when it listens on TCP.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        *self.inner.admin_addr.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops accepting, asks open connections to finish their current request,
    /// and waits for them (at most the drain timeout).
    pub async fn shutdown(&self) {
        let drain = self.inner.state.cfg.lock().unwrap_or_else(|e| e.into_inner()).timeouts.drain;
        self.inner.stop.set();
        for (_, l) in self.inner.listeners.lock().await.drain() {
            let _ = l.stop.send(true);
        }
        let deadline = Instant::now() + drain;
        loop {
            // Register for the wake-up before reading the counter: the last connection's
            // `notify_waiters` between the read and the wait would otherwise be missed (it
            // stores no permit), and the drain would sit out its whole timeout.
            let drained = self.inner.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.inner.state.open_conns.load(Ordering::Acquire) == 0 || Instant::now() >= deadline {
                break;
            }
            let _ = tokio::time::timeout_at(deadline.into(), drained).await;
        }
        let left = self.inner.state.open_conns.load(Ordering::Relaxed);
        if left > 0 {
            tracing::warn!(connections = left, "drain timeout: closing the remaining connections");
        }
        if let Some(t) = self.inner.controller.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
        if let Some(t) = self.inner.stats_task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
        for (_, t) in self.inner.checkers.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            t.abort();
        }
        for (_, t) in self.inner.discovery.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            t.abort();
        }
        for t in self.inner.admin_tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
        if let Some(path) = self.inner.admin_socket.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = std::fs::remove_file(path);
        }
        // The last requests' lines are written before the process goes.
        if let Some(log) = self.access_log() {
            log.flush();
        }
    }

    /// Serves one client connection that did not come through a listener (an in-memory pipe,
    /// for tests and fuzzing) exactly as an accepted plain-HTTP connection of the first
    /// frontend is served: head and keep-alive deadlines (408), the smuggling check, header and
    /// body limits, routing, the proxy. Returns when the connection is over.
    pub async fn serve_connection<S: ClientIo>(&self, io: S, client: SocketAddr) {
        let Some(addr) = self.config().frontends.first().and_then(|f| f.listen.first().copied()) else {
            return;
        };
        let found =
            self.inner.listeners.lock().await.get(&addr).map(|l| (l.frontend.clone(), l.bound.port()));
        let Some((frontend, local_port)) = found else { return };
        let Ok(permit) = self.inner.conns.clone().acquire_owned().await else { return };
        let ctx = ConnCtx::new(frontend, client, local_port, self.inner.state.access_log.load_full());
        self.inner.state.open_conns.fetch_add(1, Ordering::Relaxed);
        serve_conn(io, ctx, None, self.inner.clone(), permit).await;
    }

    /// Keeps pools in line with membership, health and ejections.
    async fn control(self) {
        let mut members = self.inner.state.members.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What the pools were last synced with: a full sync walks every member, so it runs only
        // when the membership or the set of pools changed; health results, ejections and the
        // tick (slow start, ejections running out) only rebuild the views.
        let mut synced: Option<(Arc<Membership>, Arc<Pools>)> = None;
        loop {
            let snapshot = members.borrow_and_update().clone();
            let pools = self.inner.state.pools.load_full();
            let now = Instant::now();
            let same =
                synced.as_ref().is_some_and(|(m, p)| Arc::ptr_eq(m, &snapshot) && Arc::ptr_eq(p, &pools));
            for pool in pools.values() {
                let found = pool.take_discovered_changed();
                if same && !found {
                    pool.rebuild(now);
                } else {
                    for change in pool.sync(&snapshot, now) {
                        self.on_change(pool, change);
                    }
                }
                // Servers the runtime API added, moved or deleted.
                for change in pool.take_pending() {
                    self.on_change(pool, change);
                }
            }
            synced = Some((snapshot, pools));
            tokio::select! {
                r = members.changed() => if r.is_err() { return },
                () = self.inner.state.changed.notified() => {}
                _ = tick.tick() => {}
            }
        }
    }

    fn on_change(&self, pool: &Arc<Pool>, change: Change) {
        let name = &pool.cfg.name;
        let mut checkers = self.inner.checkers.lock().unwrap_or_else(|e| e.into_inner());
        match change {
            Change::Added(s) => {
                tracing::info!(target: "shoal::server", pool = %name, server = %Esc(&s.name), addr = %s.addr, "server added");
                if pool.cfg.health.enabled {
                    let task = tokio::spawn(health::check_loop(
                        s.clone(),
                        name.clone(),
                        pool.cfg.health.clone(),
                        self.inner.state.changed.clone(),
                    ));
                    if let Some(old) = checkers.insert((name.clone(), s.name.clone()), task) {
                        old.abort();
                    }
                }
            }
            Change::Removed(s, why) => {
                tracing::info!(target: "shoal::server", pool = %name, server = %Esc(&s.name), addr = %s.addr, why, "server removed");
                s.conns.clear();
                if let Some(t) = checkers.remove(&(name.clone(), s.name.clone())) {
                    t.abort();
                }
            }
            Change::Draining(s) => {
                tracing::info!(target: "shoal::server", pool = %name, server = %Esc(&s.name), addr = %s.addr, "server draining (member leaving)");
            }
        }
    }

    async fn accept_loop(
        self,
        listener: TcpListener,
        frontend: Arc<ArcSwap<Frontend>>,
        tls: Option<tokio_rustls::TlsAcceptor>,
        mut stop: watch::Receiver<bool>,
    ) {
        let local_port = listener.local_addr().map_or(0, |a| a.port());
        loop {
            let permit = tokio::select! {
                p = self.inner.conns.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = stop.changed() => return,
            };
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
                _ = stop.changed() => return,
            };
            let ctx =
                ConnCtx::new(frontend.clone(), peer, local_port, self.inner.state.access_log.load_full());
            let inner = self.inner.clone();
            let tls = tls.clone();
            inner.state.open_conns.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(serve_conn(stream, ctx, tls, inner, permit));
        }
    }
}

/// Binds a frontend's listener with the options the sockets it accepts inherit (on Linux), so
/// no `setsockopt` per connection: `TCP_NODELAY` (answers leave at once) and `TCP_QUICKACK`
/// off, HAProxy's `tcp-smart-accept`: the client's request is acknowledged by the answer
/// rather than by an ACK of its own, one segment fewer per new connection (the kernel still
/// acknowledges within 40 ms when an answer takes longer).
async fn bind_frontend(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    let socket = socket2::SockRef::from(&listener);
    socket.set_tcp_nodelay(true)?;
    socket.set_tcp_quickack(false)?;
    Ok(listener)
}

/// Serves one accepted connection to its end. This future is the connection's task: what it
/// holds while the connection is idle is what every idle keep-alive connection costs (until it
/// parks), so the TLS session and hyper's state are boxed and only the connections that need
/// them pay for them.
async fn serve_conn<S: ClientIo>(
    stream: S,
    ctx: ConnCtx,
    tls: Option<tokio_rustls::TlsAcceptor>,
    inner: Arc<Inner>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let fe = ctx.frontend.load_full();
    fe.stats.connections.fetch_add(1, Ordering::Relaxed);
    let open = fe.stats.current_connections.fetch_add(1, Ordering::Relaxed) + 1;
    fe.stats.max_connections.fetch_max(open, Ordering::Relaxed);
    fe.stats.connection_rate.hit(fe.stats.second(std::time::Instant::now()));
    let guard = ConnGuard { stats: fe.stats.clone(), inner, _permit: permit };
    match tls {
        None => serve_plain(stream, ctx, guard, true).await,
        Some(acceptor) => Box::pin(serve_tls(stream, acceptor, &ctx, &fe, &guard.inner.stop)).await,
    }
}

/// An open client connection's place under the connection cap and in the counters, given back
/// when the connection ends, whether its task or the parking lot holds it then.
struct ConnGuard {
    inner: Arc<Inner>,
    stats: Arc<FrontendStats>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.stats.current_connections.fetch_sub(1, Ordering::Relaxed);
        if self.inner.state.open_conns.fetch_sub(1, Ordering::Release) == 1 {
            self.inner.drained.notify_waiters();
        }
    }
}

/// Serves a plain connection, new (`fresh`) or back from the parking lot: HTTP/1.1 requests
/// the fast path serves never meet hyper; the first one it does not serve hands the connection
/// over, with the bytes read so far; a connection idle long enough parks.
async fn serve_plain<S: ClientIo>(mut stream: S, ctx: ConnCtx, guard: ConnGuard, fresh: bool) {
    let fe = ctx.frontend.load_full();
    let read = if fe.fast_path {
        let arrival = h1::Arrival { fresh, may_park: S::PLAIN_SOCKET };
        match h1::serve(&mut stream, &ctx, &fe, &guard.inner.stop, arrival).await {
            h1::Served::Closed => return,
            h1::Served::Handoff(read) => read,
            h1::Served::Idle(deadline) => {
                if let Some(stream) = stream.into_socket() {
                    let inner = guard.inner.clone();
                    let deadline = deadline.into_std();
                    inner.parking.park(park::Parked { stream, deadline, conn: (ctx, guard) });
                }
                return;
            }
        }
    } else {
        Vec::new()
    };
    Box::pin(hand_over(read, stream, &ctx, &fe, false, &guard.inner.stop)).await;
}

/// Serves a TLS connection: the handshake, then HTTP/1.1 on the fast path (HTTP/2, chosen by
/// ALPN, and frontends without the fast path go to hyper).
async fn serve_tls<S: ClientIo>(
    stream: S,
    acceptor: tokio_rustls::TlsAcceptor,
    ctx: &ConnCtx,
    fe: &Frontend,
    stop: &Stop,
) {
    let mut tls = match tokio::time::timeout(fe.timeouts.request_headers, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return tracing::debug!(client = %ctx.client, error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!(client = %ctx.client, "TLS handshake timed out"),
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let read = if fe.fast_path && !h2 {
        match h1::serve(&mut tls, ctx, fe, stop, h1::Arrival { fresh: true, may_park: false }).await {
            h1::Served::Handoff(read) => read,
            h1::Served::Closed | h1::Served::Idle(_) => return,
        }
    } else {
        Vec::new()
    };
    Box::pin(hand_over(read, tls, ctx, fe, h2, stop)).await;
}

/// The general path for the rest of a connection: hyper reads `read` first, then `stream`.
async fn hand_over<S: ClientIo>(
    read: Vec<u8>,
    stream: S,
    ctx: &ConnCtx,
    fe: &Frontend,
    h2: bool,
    stop: &Stop,
) {
    let ctx = ctx.for_hyper();
    let timeouts = IoTimeouts {
        request_headers: fe.timeouts.request_headers,
        keepalive: fe.timeouts.keepalive,
        client: fe.timeouts.client,
    };
    let state = ctx.state.clone().unwrap_or_default();
    let io = GuardedIo::new(h1::Rewind::new(read, stream), state, timeouts, h2);
    run_http(io, ctx, fe.max_header, stop).await;
}

async fn run_http<T>(io: GuardedIo<T>, ctx: ConnCtx, max_header: usize, stop: &Stop)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let client = ctx.client;
    // Boxed: an idle keep-alive connection then holds a pointer, not a whole request's state.
    let svc = service_fn(move |req| Box::pin(general::handle(req, ctx.clone())));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Half-closed clients (`shutdown(SHUT_WR)` after the request, as `nc -N` does) still get
    // their answer, as from HAProxy; hyper would otherwise drop the request on that EOF.
    // Flat writes: a response head and a small body leave in one `send` rather than a `writev`.
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(max_header)
        .keep_alive(true)
        .half_close(true)
        .writev(false);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(256);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%client, error = %e, "client connection ended with an error");
            }
        }
        () = stop.wait() => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(%client, error = %e, "client connection ended with an error");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_inherit_the_listeners_nodelay_and_delayed_acks() {
        let listener = bind_frontend("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap(), "Nagle is off without a setsockopt per connection");
        let quickack = socket2::SockRef::from(&accepted).tcp_quickack().unwrap();
        assert!(!quickack, "a request is acknowledged by its answer, not by an ACK of its own");
    }
}
