//! Backend pools: which members serve, in what state, and how one is picked.
//!
//! A [`Pool`] keeps every server it knows (control plane, behind a mutex) and
//! publishes an immutable [`View`] of the eligible ones through `arc-swap`: the
//! request path only loads that pointer and touches atomics, never a lock. A
//! server is eligible when gossip says it is alive (not leaving), its health
//! checks pass (if any), no operator has drained it and passive outlier
//! detection has not ejected it. The view carries what each algorithm needs,
//! precomputed at rebuild: the weighted round-robin order, the consistent-hash
//! ring and the sticky cookie lookup.
//!
//! What a member claims is bounded here: its address must pass the pool's
//! [`Admission`] policy (a refused member is logged once and counted), its
//! `weight` tag is capped at `max_weight` and its share of the pool at
//! `max_share`, and a rebuild costs O(servers) whatever weights are claimed.
//!
//! Operators add to this through the runtime API: a state, weight or address kept by server
//! name ([`Override`]), and static servers of their own ([`Pool::add_static`]) that serve like
//! members until deleted. What the runtime API changes outside a sync (a server added, moved or
//! deleted) waits in [`Pool::take_pending`] for the controller to start or stop its checks.
//!
//! A pool configured with a DNS or Docker source selects no member: its servers are what that
//! source found last (set by its task, merged at the next sync), admitted, weighted and
//! drained as members are.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use shoal_agent::Membership;
use shoal_gossip::{Member, MemberStatus};

use crate::admission::{Admission, HostNets};
use crate::config::{MAX_WEIGHT, PoolConfig};
use crate::discovery::Found;
use crate::select::View;
use crate::server::{Admin, Server};
use shoal_gossip::escape::Esc;

/// What an operator set on a server by name; it outlives the member's comings and goings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Override {
    /// Drain or maintenance (ready clears it).
    pub admin: Option<Admin>,
    /// A weight that replaces the member's `weight` tag.
    pub weight: Option<u32>,
    /// An address that replaces the member's (`set server addr`).
    pub addr: Option<SocketAddr>,
}

/// A server an operator added (`add server`): not a member, never refused, kept until deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Static {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its weight.
    pub weight: u32,
}

/// Why an operator's change to the pool's servers was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// `add server` with a name the pool already has.
    #[error("Already exists a server with the same name in backend.\n")]
    Exists,
    /// No server of that name.
    #[error("No such server.")]
    NoSuchServer,
    /// `del server` of a member: gossip, not the operator, decides whether it is in the pool.
    #[error("This server cannot be removed at runtime due to other configuration elements pointing to it.")]
    Member,
    /// `del server` of a server not in maintenance.
    #[error("Only servers in maintenance mode can be deleted.")]
    NotInMaintenance,
    /// `del server` of a server with requests in flight.
    #[error("Server still has connections attached to it, cannot remove it.")]
    Busy,
}

/// A backend pool.
#[derive(Debug)]
pub struct Pool {
    /// Its configuration.
    pub cfg: PoolConfig,
    /// Its name (shared with logs).
    pub name: Arc<str>,
    /// Number within the balancer (HAProxy's `iid`).
    pub id: u32,
    servers: std::sync::Mutex<BTreeMap<Arc<str>, Arc<Server>>>,
    overrides: std::sync::Mutex<std::collections::HashMap<Arc<str>, Override>>,
    statics: std::sync::Mutex<BTreeMap<Arc<str>, Static>>,
    /// Changes made outside a sync, for the controller.
    pending: std::sync::Mutex<Vec<Change>>,
    next_server_id: AtomicU32,
    view: ArcSwap<View>,
    epoch: Instant,
    changed: Arc<tokio::sync::Notify>,
    admission: ArcSwap<Admission>,
    /// Members refused at the last sync, with the address they were refused for.
    refused: std::sync::Mutex<HashMap<Arc<str>, SocketAddr>>,
    /// Members refused by the admission policy, counted once per member and address.
    pub members_refused: AtomicU64,
    /// Requests in flight on its servers.
    active: Arc<AtomicU32>,
    /// The servers its discovery source (DNS, Docker) found last, and whether they changed
    /// since the last sync.
    discovered: ArcSwap<Vec<Found>>,
    discovered_changed: std::sync::atomic::AtomicBool,
}

/// What changed for a server, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A member joined the pool.
    Added(Arc<Server>),
    /// A member left the pool (left, failed, or no longer matches).
    Removed(Arc<Server>, &'static str),
    /// A member announced it is leaving: drained.
    Draining(Arc<Server>),
}

impl Pool {
    /// An empty pool; `changed` is notified when the request path ejects a server.
    pub fn new(cfg: PoolConfig, id: u32, changed: Arc<tokio::sync::Notify>) -> Pool {
        Pool {
            name: Arc::from(cfg.name.as_str()),
            id,
            servers: Default::default(),
            overrides: Default::default(),
            statics: Default::default(),
            pending: Default::default(),
            next_server_id: AtomicU32::new(1),
            view: ArcSwap::from_pointee(View::default()),
            epoch: Instant::now(),
            changed,
            admission: ArcSwap::from_pointee(admission_of(&cfg, &HostNets::read(), &[])),
            refused: Default::default(),
            members_refused: AtomicU64::new(0),
            active: Arc::default(),
            discovered: ArcSwap::from_pointee(Vec::new()),
            discovered_changed: Default::default(),
            cfg,
        }
    }

    /// Sets the admission policy from the pool's `accept_networks`, the host's interfaces and
    /// the balancer's own listeners; it applies from the next sync.
    pub fn set_admission(&self, host: &HostNets, own: &[SocketAddr]) {
        self.admission.store(Arc::new(admission_of(&self.cfg, host, own)));
    }

    /// Members refused by the admission policy at the last sync, with their addresses.
    pub fn refused_members(&self) -> Vec<(Arc<str>, SocketAddr)> {
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = refused.iter().map(|(n, a)| (n.clone(), *a)).collect();
        v.sort();
        v
    }

    /// Requests in flight on its servers now.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Asks the controller to rebuild views soon (a server was ejected).
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    /// The current view (lock-free).
    pub fn view(&self) -> arc_swap::Guard<Arc<View>> {
        self.view.load()
    }

    /// Every server the pool knows, eligible or not.
    pub fn servers(&self) -> Vec<Arc<Server>> {
        self.servers.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Whether a member belongs in this pool (never in a pool whose servers a DNS or Docker
    /// source gives).
    pub fn selects(&self, m: &Member) -> bool {
        !self.cfg.discovers()
            && (self.cfg.role.is_empty() || m.role() == self.cfg.role)
            && self.cfg.tags.iter().all(|(k, v)| m.tags.get(k) == Some(v))
    }

    fn target(&self, m: &Member) -> (SocketAddr, u32) {
        let port = m
            .tags
            .get("port")
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p > 0)
            .unwrap_or(self.cfg.port);
        let weight = m
            .tags
            .get("weight")
            .and_then(|w| w.parse::<u32>().ok())
            .map_or(1, |w| w.min(self.cfg.max_weight));
        let addr = self.override_of(&m.name).addr.unwrap_or(SocketAddr::new(m.addr.ip(), port));
        (addr, weight)
    }

    /// Brings the pool in line with the cluster's membership (and the operator's static
    /// servers); returns what changed.
    pub fn sync(&self, membership: &Membership, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        let statics = self.statics.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut seen = std::collections::HashSet::new();
        let admission = self.admission.load();
        let loopback_ok = membership.local.addr.ip().to_canonical().is_loopback();
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let mut refused_now = HashMap::new();
        for (name, st) in &statics {
            seen.insert(name.clone());
            self.place(&mut servers, name, st.addr, &mut changes);
        }
        let mut admit = |name: &Arc<str>, addr: SocketAddr| match admission.check(addr, loopback_ok) {
            Ok(()) => true,
            Err(why) => {
                // Logged and counted once per member and address, not at every sync.
                if refused.get(name) != Some(&addr) {
                    self.members_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(target: "shoal::server", pool = %self.cfg.name, member = %Esc(name), %addr, reason = %why, "member refused: not routed to");
                }
                refused_now.insert(name.clone(), addr);
                false
            }
        };
        // Servers a DNS or Docker source found: admitted, weighted and drained like members.
        for f in self.discovered.load().iter().filter(|f| !statics.contains_key(&f.name)) {
            let addr = self.override_of(&f.name).addr.unwrap_or(f.addr);
            if !admit(&f.name, addr) {
                continue;
            }
            seen.insert(f.name.clone());
            let server = self.place(&mut servers, &f.name, addr, &mut changes);
            let status = if f.draining { MemberStatus::Leaving } else { MemberStatus::Alive };
            self.follow(&server, f.weight, status, &mut changes);
        }
        for m in membership.members.iter().filter(|m| self.selects(m) && !statics.contains_key(&m.name)) {
            if matches!(m.status, MemberStatus::Left | MemberStatus::Failed) {
                continue;
            }
            let (addr, weight) = self.target(m);
            if !admit(&m.name, addr) {
                continue;
            }
            seen.insert(m.name.clone());
            let server = self.place(&mut servers, &m.name, addr, &mut changes);
            if **server.tags.load() != *m.tags {
                server.tags.store(m.tags.clone());
            }
            self.follow(&server, weight, m.status, &mut changes);
        }
        let gone: Vec<Arc<str>> = servers.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        for name in gone {
            if let Some(s) = servers.remove(&name) {
                s.removed.store(true, Ordering::Relaxed);
                let why = match membership.get(&name).map(|m| m.status) {
                    Some(MemberStatus::Left) => "left",
                    Some(MemberStatus::Failed) => {
                        s.declare_failed();
                        "failed"
                    }
                    _ if refused_now.contains_key(&name) => "refused by the admission policy",
                    _ if self.cfg.discovers() => "no longer discovered",
                    _ => "no longer selected",
                };
                changes.push(Change::Removed(s, why));
            }
        }
        *refused = refused_now;
        drop(refused);
        drop(servers);
        self.rebuild(now);
        changes
    }

    /// Brings a server's weight (unless an operator set one) and status in line with what its
    /// member or source says; a server that starts leaving is drained.
    fn follow(&self, server: &Arc<Server>, weight: u32, status: MemberStatus, changes: &mut Vec<Change>) {
        let operator = self.override_of(&server.name).weight;
        server.initial_weight.store(weight, Ordering::Relaxed);
        server.weight.store(operator.unwrap_or(weight), Ordering::Relaxed);
        server.operator_weight.store(operator.is_some(), Ordering::Relaxed);
        let before = server.member_status();
        server.set_member_status(status);
        if before == MemberStatus::Alive && status == MemberStatus::Leaving {
            changes.push(Change::Draining(server.clone()));
        }
    }

    /// Replaces the servers its discovery source found; the controller syncs the pool next.
    pub(crate) fn set_discovered(&self, found: Vec<Found>) {
        self.discovered.store(Arc::new(found));
        self.discovered_changed.store(true, Ordering::Release);
        self.changed();
    }

    /// Whether the discovered servers changed since the last call: a sync is due.
    pub(crate) fn take_discovered_changed(&self) -> bool {
        self.discovered_changed.swap(false, Ordering::AcqRel)
    }

    /// The server `name` at `addr`: the one the pool has, or a new one (which keeps the old one's
    /// number when only the address changed).
    fn place(
        &self,
        servers: &mut BTreeMap<Arc<str>, Arc<Server>>,
        name: &Arc<str>,
        addr: SocketAddr,
        changes: &mut Vec<Change>,
    ) -> Arc<Server> {
        let old = match servers.get(name) {
            Some(s) if s.addr == addr => return s.clone(),
            old => old.cloned(),
        };
        let mut fresh = Server::new(
            name.clone(),
            addr,
            self.statics_of(name).map_or(1, |st| st.weight),
            self.cfg.health.enabled,
            self.epoch,
            self.cfg.sticky_cookie.as_deref(),
        );
        fresh.id = match &old {
            Some(o) => o.id,
            None => self.next_server_id.fetch_add(1, Ordering::Relaxed),
        };
        fresh.pool_active = self.active.clone();
        let o = self.override_of(name);
        if let Some(a) = o.admin {
            fresh.set_admin(a);
        }
        if let Some(w) = o.weight {
            fresh.weight.store(w, Ordering::Relaxed);
            fresh.operator_weight.store(true, Ordering::Relaxed);
        }
        if let Some(o) = old {
            o.removed.store(true, Ordering::Relaxed);
            changes.push(Change::Removed(o, "address changed"));
        }
        let s = Arc::new(fresh);
        servers.insert(name.clone(), s.clone());
        changes.push(Change::Added(s.clone()));
        s
    }

    fn statics_of(&self, name: &str) -> Option<Static> {
        self.statics.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied()
    }

    /// Whether `name` is a server an operator added (`add server`), not a member.
    pub fn is_static(&self, name: &str) -> bool {
        self.statics_of(name).is_some()
    }

    /// Changes made by the runtime API since the last call (servers added, moved, deleted):
    /// the controller starts and stops their checks.
    pub fn take_pending(&self) -> Vec<Change> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Applies changes made outside a sync at once: the view is rebuilt, the controller told.
    fn publish(&self, changes: Vec<Change>, now: Instant) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).extend(changes);
        self.rebuild(now);
        self.changed();
    }

    /// Adds a static server (`add server`): it serves like a member (checked when the pool
    /// checks) until deleted, in `admin` state to begin with.
    pub fn add_static(&self, name: &str, st: Static, admin: Admin, now: Instant) -> Result<(), PoolError> {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        let mut statics = self.statics.lock().unwrap_or_else(|e| e.into_inner());
        if servers.contains_key(name) || statics.contains_key(name) {
            return Err(PoolError::Exists);
        }
        let name: Arc<str> = Arc::from(name);
        statics.insert(name.clone(), st);
        drop(statics);
        {
            let mut overrides = self.overrides.lock().unwrap_or_else(|e| e.into_inner());
            overrides.remove(&name);
            if admin != Admin::Ready {
                overrides.insert(name.clone(), Override { admin: Some(admin), ..Override::default() });
            }
        }
        let mut changes = Vec::new();
        self.place(&mut servers, &name, st.addr, &mut changes);
        drop(servers);
        tracing::info!(target: "shoal::server", pool = %self.cfg.name, server = %Esc(&name), addr = %st.addr, weight = st.weight, "server added by an operator");
        self.publish(changes, now);
        Ok(())
    }

    /// Deletes a static server (`del server`): HAProxy's rules, it must be in maintenance with
    /// no request in flight. Members cannot be deleted: gossip decides whether they belong.
    pub fn del_static(&self, name: &str, now: Instant) -> Result<(), PoolError> {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        let server = servers.get(name).cloned().ok_or(PoolError::NoSuchServer)?;
        let mut statics = self.statics.lock().unwrap_or_else(|e| e.into_inner());
        if !statics.contains_key(name) {
            return Err(PoolError::Member);
        }
        if server.admin() != Admin::Maint {
            return Err(PoolError::NotInMaintenance);
        }
        if server.active.load(Ordering::Relaxed) > 0 {
            return Err(PoolError::Busy);
        }
        statics.remove(name);
        drop(statics);
        servers.remove(name);
        drop(servers);
        self.overrides.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        server.removed.store(true, Ordering::Relaxed);
        tracing::info!(target: "shoal::server", pool = %self.cfg.name, server = %Esc(name), "server deleted by an operator");
        self.publish(vec![Change::Removed(server, "deleted by an operator")], now);
        Ok(())
    }

    /// Moves server `name` to `addr` (`set server addr`); for a member, the address is kept by
    /// name like the state, across its rejoins, until set again. The server keeps its number;
    /// its counters start over. Returns false if the pool has no such server.
    pub fn set_addr(&self, name: &str, addr: SocketAddr, now: Instant) -> bool {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(key) = servers.get(name).map(|s| s.name.clone()) else { return false };
        let mut statics = self.statics.lock().unwrap_or_else(|e| e.into_inner());
        match statics.get_mut(name) {
            Some(st) => st.addr = addr,
            None => {
                self.overrides
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(key.clone())
                    .or_default()
                    .addr = Some(addr)
            }
        }
        drop(statics);
        let mut changes = Vec::new();
        self.place(&mut servers, &key, addr, &mut changes);
        drop(servers);
        tracing::info!(target: "shoal::server", pool = %self.cfg.name, server = %Esc(name), %addr, "server address set by an operator");
        self.publish(changes, now);
        true
    }

    /// Recomputes the view; returns whether any server is still ramping up (rebuild again soon).
    pub fn rebuild(&self, now: Instant) -> bool {
        let servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        let previous: std::collections::HashSet<*const Server> =
            self.view.load().servers.iter().map(Arc::as_ptr).collect();
        let eligible: Vec<Arc<Server>> = servers.values().filter(|s| s.eligible(now)).cloned().collect();
        for s in servers.values() {
            s.note_serving(s.eligible(now), now);
        }
        for s in &eligible {
            if !previous.contains(&Arc::as_ptr(s)) {
                s.became_eligible(now);
            }
        }
        let ramping = eligible.iter().any(|s| s.ramping(now, self.cfg.slow_start));
        self.view.store(Arc::new(View::build(eligible, now, &self.cfg)));
        ramping
    }

    /// Forces server `name`'s health (`set server health`/`agent`) until its next checks say
    /// otherwise. Returns false if the pool has no such server.
    pub fn set_health(&self, name: &str, health: crate::server::Health, now: Instant) -> bool {
        let Some(server) = self.server(name) else { return false };
        server.set_health(health);
        tracing::info!(target: "shoal::server", pool = %self.cfg.name, server = %Esc(name), ?health, "server health set by an operator");
        self.rebuild(now);
        true
    }

    /// The server named `name`, eligible or not.
    pub fn server(&self, name: &str) -> Option<Arc<Server>> {
        self.servers.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    fn override_of(&self, name: &str) -> Override {
        self.overrides.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied().unwrap_or_default()
    }

    /// An operator's state for server `name`: kept across the member's leaves and rejoins
    /// until set back to ready. Returns false if the pool has no such server.
    pub fn set_admin(&self, name: &str, admin: Admin, now: Instant) -> bool {
        let Some(server) = self.server(name) else { return false };
        let mut overrides = self.overrides.lock().unwrap_or_else(|e| e.into_inner());
        let o = overrides.entry(server.name.clone()).or_default();
        o.admin = (admin != Admin::Ready).then_some(admin);
        if *o == Override::default() {
            overrides.remove(name);
        }
        drop(overrides);
        server.set_admin(admin);
        tracing::info!(target: "shoal::server", pool = %self.cfg.name, server = %Esc(name), state = ?admin, "server state set by an operator");
        self.rebuild(now);
        true
    }

    /// An operator's weight for server `name` (kept across rejoins, like the state).
    pub fn set_weight(&self, name: &str, weight: u32, now: Instant) -> bool {
        let Some(server) = self.server(name) else { return false };
        let weight = weight.min(MAX_WEIGHT);
        self.overrides
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(server.name.clone())
            .or_default()
            .weight = Some(weight);
        server.weight.store(weight, Ordering::Relaxed);
        server.operator_weight.store(true, Ordering::Relaxed);
        tracing::info!(target: "shoal::server", pool = %self.cfg.name, server = %Esc(name), weight, "server weight set by an operator");
        self.rebuild(now);
        true
    }
}

/// The admission policy of a pool configured as `cfg`.
fn admission_of(cfg: &PoolConfig, host: &HostNets, own: &[SocketAddr]) -> Admission {
    // A list that does not parse (validation refuses it first) accepts only what does.
    let listed = cfg.accepted_networks().unwrap_or_else(|_| {
        Some(cfg.accept_networks.iter().flatten().filter_map(|n| n.parse().ok()).collect())
    });
    Admission::new(listed.as_deref(), host, own)
}
