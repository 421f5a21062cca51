//! Serf queries: asking (part of) the cluster a question and collecting answers.
//!
//! A query spreads like a user event, filtered by node names and tag regular
//! expressions. Each member that matches may acknowledge receipt and answer;
//! acks and answers go straight back to the asker over UDP, optionally also
//! relayed through a few random members (`relay_factor`) in case the direct
//! path is lossy. Queries named `_serf_*` are Serf's own (ping, name-conflict
//! resolution, key management) and are answered here, not by handlers.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::envelope::DropReason;
use crate::event::{Event, IncomingQuery, MemberStatus, QueryId, QueryReplyTo};
use crate::gossip::{CommandError, Gossip, ip_from_wire, ip_to_wire};
use crate::keyring::{KeyError, encode_key};
use crate::messages::{self as msg, QUERY_FLAG_ACK, QUERY_FLAG_NO_BROADCAST, filter_kind, serf_kind};
use crate::mp::{self, Wire};
use crate::serf::Queue;
use crate::timers::Timer;

/// Prefix of Serf's internal queries.
pub const INTERNAL_QUERY_PREFIX: &str = "_serf_";
/// Most filters (node list and tag expressions together) a query may carry.
pub const FILTERS_MAX: usize = 16;
/// Longest tag-filter expression, in bytes.
pub const FILTER_EXPR_MAX: usize = 256;
/// Largest compiled program for one tag filter (the `regex` crate's size limit): the costliest
/// pattern that fits compiles in about 0.2 ms.
const FILTER_PROGRAM_MAX: usize = 64 * 1024;
/// Compiled tag filters kept for reuse; the cache is emptied when it fills.
const FILTER_CACHE_MAX: usize = 64;
/// New tag filters compiled per second at most (a token bucket of this depth): honest queries
/// reuse a handful of filters from the cache; a peer sending fresh ones is throttled, so the
/// core spends at most ~1 % of a core compiling and a probe waits at most one query's worth.
const FILTER_COMPILES_PER_SECOND: u32 = 64;

/// Compiles a tag filter with bounded cost: byte-oriented (ASCII classes, no Unicode tables),
/// at most [`FILTER_EXPR_MAX`] bytes of pattern and a bounded program, so a hostile query
/// costs microseconds to check, never a stalled core.
pub(crate) fn compile_filter(expr: &str) -> Result<regex::bytes::Regex, String> {
    if expr.len() > FILTER_EXPR_MAX {
        return Err(format!("the expression is {} bytes; the limit is {FILTER_EXPR_MAX}", expr.len()));
    }
    regex::bytes::RegexBuilder::new(expr)
        .unicode(false)
        .size_limit(FILTER_PROGRAM_MAX)
        .dfa_size_limit(FILTER_PROGRAM_MAX)
        .nest_limit(32)
        .build()
        .map_err(|e| e.to_string())
}

/// What to ask and whom.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryParams {
    /// Query name.
    pub name: String,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// Only these nodes answer (empty: all).
    pub filter_nodes: Vec<String>,
    /// Only nodes whose tag matches the regular expression answer.
    pub filter_tags: BTreeMap<String, String>,
    /// Ask every recipient to acknowledge.
    pub request_ack: bool,
    /// Also relay answers through this many random members.
    pub relay_factor: u8,
    /// How long to collect answers (default: Serf's formula).
    pub timeout: Option<Duration>,
}

/// A query we asked and are collecting answers for.
#[derive(Debug)]
pub(crate) struct PendingQuery {
    pub id: u32,
    pub acks: HashSet<String>,
    pub responses: HashSet<String>,
}

impl Gossip {
    /// Serf's default: `gossip_interval * query_timeout_mult * ceil(log10(n + 1))`.
    pub fn default_query_timeout(&self) -> Duration {
        let n = self.nodes.iter().filter(|n| !n.state.dead_or_left()).count();
        let scale = ((n as f64) + 1.0).log10().ceil().max(1.0) as u32;
        self.cfg.timing.gossip_interval * self.cfg.serf.query_timeout_mult * scale
    }

    /// Starts a query. Acks and answers arrive as [`Event::QueryAck`] and
    /// [`Event::QueryResponse`]; [`Event::QueryFinished`] ends it.
    pub fn query(&mut self, now: Instant, params: QueryParams) -> Result<QueryId, CommandError> {
        if self.serf_state != crate::serf::SerfState::Alive {
            return Err(CommandError::NotAlive);
        }
        if usize::from(!params.filter_nodes.is_empty()) + params.filter_tags.len() > FILTERS_MAX {
            return Err(CommandError::BadFilter(format!("more than {FILTERS_MAX} filters")));
        }
        let mut filters = Vec::new();
        if !params.filter_nodes.is_empty() {
            let mut f = vec![filter_kind::NODE];
            params.filter_nodes.put(&mut f);
            filters.push(f);
        }
        for (tag, expr) in &params.filter_tags {
            compile_filter(expr).map_err(|e| CommandError::BadFilter(format!("tag {tag:?}: {e}")))?;
            let mut f = vec![filter_kind::TAG];
            msg::FilterTag { tag: tag.clone(), expr: expr.clone() }.put(&mut f);
            filters.push(f);
        }
        let timeout = params.timeout.unwrap_or_else(|| self.default_query_timeout());
        let q = msg::SerfQuery {
            ltime: self.query_clock.time(),
            id: self.rng.random::<u32>() >> 1,
            addr: ip_to_wire(self.advertise.ip()),
            port: self.advertise.port(),
            source_node: self.name.to_string(),
            filters,
            flags: if params.request_ack { QUERY_FLAG_ACK } else { 0 },
            relay_factor: params.relay_factor,
            timeout: i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX),
            name: params.name,
            payload: params.payload,
        };
        let encoded = mp::encode_with_type(serf_kind::QUERY, &q);
        if encoded.len() > self.cfg.query_size_limit {
            return Err(CommandError::TooLarge {
                what: "query",
                size: encoded.len(),
                limit: self.cfg.query_size_limit,
            });
        }
        let ltime = q.ltime;
        self.pending_queries
            .insert(ltime, PendingQuery { id: q.id, acks: HashSet::new(), responses: HashSet::new() });
        self.timers.at(now + timeout, Timer::QueryExpire(ltime));
        self.handle_query(now, q.clone());
        self.queue_serf(Queue::Query, serf_kind::QUERY, &q, None);
        Ok(ltime)
    }

    pub(crate) fn query_expired(&mut self, ltime: u64) {
        if self.pending_queries.remove(&ltime).is_some() {
            self.emit(Event::QueryFinished { query: ltime });
        }
    }

    /// Returns whether the query should be re-broadcast.
    pub(crate) fn handle_query(&mut self, now: Instant, q: msg::SerfQuery) -> bool {
        self.query_clock.witness(q.ltime);
        if q.ltime < self.query_min_time {
            return false;
        }
        let len = self.query_buffer.len() as u64;
        let cur = self.query_clock.time();
        if cur > len && q.ltime < cur - len {
            tracing::warn!(name = %q.name, ltime = q.ltime, current = cur, "received old query");
            return false;
        }
        let slot = &mut self.query_buffer[(q.ltime % len) as usize];
        match slot {
            Some((t, ids)) if *t == q.ltime => {
                if ids.contains(&q.id) {
                    return false;
                }
                ids.push(q.id);
            }
            _ => *slot = Some((q.ltime, vec![q.id])),
        }
        let rebroadcast = q.flags & QUERY_FLAG_NO_BROADCAST == 0;
        match self.should_process(now, &q.filters) {
            Ok(true) => {}
            Ok(false) => return rebroadcast,
            Err(reason) => {
                // Filters no honest asker sends (too many, too long, not compilable, too many
                // new ones too fast): the query goes no further, from here.
                let from = ip_from_wire(&q.addr).map_or(self.advertise, |ip| SocketAddr::new(ip, q.port));
                self.drop_input(reason, from);
                return false;
            }
        }
        let Some(ip) = ip_from_wire(&q.addr) else { return rebroadcast };
        let reply_to = QueryReplyTo {
            ltime: q.ltime,
            id: q.id,
            addr: SocketAddr::new(ip, q.port),
            node: q.source_node.clone(),
            relay_factor: q.relay_factor,
            deadline: now + Duration::from_nanos(u64::try_from(q.timeout).unwrap_or(0)),
        };
        if q.flags & QUERY_FLAG_ACK != 0 {
            let ack = msg::SerfQueryResponse {
                ltime: q.ltime,
                id: q.id,
                from: self.name.to_string(),
                flags: QUERY_FLAG_ACK,
                payload: vec![],
            };
            self.send_response(&reply_to, &ack);
        }
        if let Some(internal) = q.name.strip_prefix(INTERNAL_QUERY_PREFIX) {
            let internal = internal.to_string();
            self.handle_internal_query(now, &internal, &q.payload, &reply_to);
        } else {
            self.emit(Event::Query(IncomingQuery {
                ltime: q.ltime,
                name: q.name,
                payload: q.payload,
                source: q.source_node,
                reply_to,
            }));
        }
        rebroadcast
    }

    /// Whether our node passes every filter; `Err` for filters no honest asker sends.
    fn should_process(&mut self, now: Instant, filters: &[Vec<u8>]) -> Result<bool, DropReason> {
        if filters.len() > FILTERS_MAX {
            return Err(DropReason::Malformed);
        }
        let mut pass = true;
        for f in filters {
            pass &= match f.split_first() {
                Some((&filter_kind::NODE, body)) => {
                    let nodes = mp::decode::<Vec<String>>(body)?;
                    nodes.iter().any(|n| **n == *self.name)
                }
                Some((&filter_kind::TAG, body)) => {
                    let ft = mp::decode::<msg::FilterTag>(body)?;
                    let re = self.tag_filter(now, &ft.expr)?;
                    re.is_match(self.tags.get(&ft.tag).map_or("", String::as_str).as_bytes())
                }
                _ => return Err(DropReason::Malformed),
            };
        }
        Ok(pass)
    }

    /// A compiled tag filter, from the cache when it was seen before; a new one only while
    /// the compile budget lasts.
    fn tag_filter(&mut self, now: Instant, expr: &str) -> Result<Arc<regex::bytes::Regex>, DropReason> {
        if let Some(re) = self.filter_cache.get(expr) {
            return re.clone().ok_or(DropReason::Malformed);
        }
        let (tokens, at) = self.filter_budget;
        let refill = now.saturating_duration_since(at).as_secs_f64() * f64::from(FILTER_COMPILES_PER_SECOND);
        let tokens = (tokens + refill).min(f64::from(FILTER_COMPILES_PER_SECOND));
        if tokens < 1.0 {
            self.filter_budget = (tokens, now);
            return Err(DropReason::Throttled);
        }
        self.filter_budget = (tokens - 1.0, now);
        if self.filter_cache.len() >= FILTER_CACHE_MAX {
            self.filter_cache.clear();
        }
        let re = compile_filter(expr).ok().map(Arc::new);
        self.filter_cache.insert(expr.to_string(), re.clone());
        re.ok_or(DropReason::Malformed)
    }

    /// Answers a query (a handler's output). Only the first answer counts.
    pub fn respond(
        &mut self,
        now: Instant,
        reply_to: &QueryReplyTo,
        payload: &[u8],
    ) -> Result<(), CommandError> {
        if now > reply_to.deadline {
            return Err(CommandError::PastDeadline);
        }
        let resp = msg::SerfQueryResponse {
            ltime: reply_to.ltime,
            id: reply_to.id,
            from: self.name.to_string(),
            flags: 0,
            payload: payload.to_vec(),
        };
        let size = mp::encode_with_type(serf_kind::QUERY_RESPONSE, &resp).len();
        if size > self.cfg.query_response_size_limit {
            return Err(CommandError::TooLarge {
                what: "query response",
                size,
                limit: self.cfg.query_response_size_limit,
            });
        }
        self.send_response(reply_to, &resp);
        Ok(())
    }

    /// Sends a response (or ack) to the asker, directly and through relays.
    fn send_response(&mut self, to: &QueryReplyTo, resp: &msg::SerfQueryResponse) {
        let raw = mp::encode_with_type(serf_kind::QUERY_RESPONSE, resp);
        self.send_user(to.addr, Some(&to.node), &raw);
        if to.relay_factor == 0 || self.members.len() < usize::from(to.relay_factor) + 1 {
            return;
        }
        let mut relay = vec![serf_kind::RELAY];
        msg::RelayHeader {
            dest_addr: msg::UdpAddr {
                ip: ip_to_wire(to.addr.ip()),
                port: i64::from(to.addr.port()),
                zone: String::new(),
            },
            dest_name: to.node.clone(),
        }
        .put(&mut relay);
        relay.extend_from_slice(&raw);
        let candidates: Vec<(SocketAddr, Arc<str>)> = self
            .members
            .values()
            .filter(|m| {
                m.member.status == MemberStatus::Alive
                    && m.member.versions[1] >= 5
                    && m.member.name != self.name
            })
            .map(|m| (m.member.addr, m.member.name.clone()))
            .collect();
        let mut picked = BTreeSet::new();
        for _ in 0..3 * candidates.len() {
            if picked.len() >= usize::from(to.relay_factor) {
                break;
            }
            picked.insert(self.rng.random_range(0..candidates.len()));
        }
        for i in picked {
            let (addr, name) = candidates[i].clone();
            self.send_user(addr, Some(&name), &relay);
        }
    }

    /// A relayed response: forward it to its destination.
    pub(crate) fn handle_relay(&mut self, body: &[u8]) -> Result<(), DropReason> {
        let mut r = mp::Reader::new(body);
        let header = msg::RelayHeader::take(&mut r)?;
        let ip = ip_from_wire(&header.dest_addr.ip).ok_or(DropReason::Malformed)?;
        let port = u16::try_from(header.dest_addr.port).map_err(|_| DropReason::Malformed)?;
        let inner = r.rest().to_vec();
        if inner.is_empty() {
            return Err(DropReason::Truncated);
        }
        let node = (!header.dest_name.is_empty()).then_some(header.dest_name.as_str());
        self.send_user(SocketAddr::new(ip, port), node, &inner);
        Ok(())
    }

    pub(crate) fn handle_query_response(&mut self, resp: msg::SerfQueryResponse) {
        let Some(q) = self.pending_queries.get_mut(&resp.ltime) else {
            tracing::debug!(ltime = resp.ltime, from = %resp.from, "reply for a query that is not running");
            return;
        };
        if q.id != resp.id {
            tracing::warn!(local = q.id, remote = resp.id, "query reply ID mismatch");
            return;
        }
        let query = resp.ltime;
        if resp.flags & QUERY_FLAG_ACK != 0 {
            if q.acks.insert(resp.from.clone()) {
                self.emit(Event::QueryAck { query, from: resp.from });
            }
        } else if q.responses.insert(resp.from.clone()) {
            self.emit(Event::QueryResponse { query, from: resp.from, payload: resp.payload });
        }
    }

    // -------------------------------------------------------- Serf's own queries

    fn handle_internal_query(&mut self, now: Instant, name: &str, payload: &[u8], reply_to: &QueryReplyTo) {
        match name {
            "ping" => {}
            "conflict" => {
                let node = String::from_utf8_lossy(payload);
                if node == *self.name {
                    return;
                }
                let mut out = vec![serf_kind::CONFLICT_RESPONSE];
                match self.members.get(&*node) {
                    Some(m) => msg::ConflictMember {
                        name: m.member.name.to_string(),
                        addr: ip_to_wire(m.member.addr.ip()),
                        port: m.member.addr.port(),
                        tags: (*m.member.tags).clone(),
                        status: m.member.status.code(),
                        protocol_min: m.member.versions[0],
                        protocol_max: m.member.versions[1],
                        protocol_cur: m.member.versions[2],
                        delegate_min: m.member.versions[3],
                        delegate_max: m.member.versions[4],
                        delegate_cur: m.member.versions[5],
                    }
                    .put(&mut out),
                    None => mp::put_nil(&mut out),
                }
                let _ = self.respond(now, reply_to, &out);
            }
            "install-key" | "use-key" | "remove-key" | "list-keys" => {
                let mut resp = self.key_query(name, payload);
                let total = resp.keys.len();
                loop {
                    let mut out = vec![serf_kind::KEY_RESPONSE];
                    resp.put(&mut out);
                    match self.respond(now, reply_to, &out) {
                        // Too many keys for one answer: send as many as fit, and say so.
                        Err(CommandError::TooLarge { .. }) if !resp.keys.is_empty() => {
                            resp.keys.pop();
                            resp.message = format!(
                                "truncated key list response, showing first {} of {total} keys",
                                resp.keys.len()
                            );
                        }
                        _ => break,
                    }
                }
            }
            other => tracing::warn!(query = other, "unhandled internal query"),
        }
    }

    fn key_query(&mut self, name: &str, payload: &[u8]) -> msg::KeyResponse {
        let mut resp = msg::KeyResponse::default();
        if !self.env.keyring.is_enabled() {
            resp.message = if name == "list-keys" {
                "Keyring is empty (encryption not enabled)".into()
            } else {
                "No keyring to modify (encryption not enabled)".into()
            };
            return resp;
        }
        if name == "list-keys" {
            resp.keys = self.env.keyring.keys().map(encode_key).collect();
            resp.primary_key = self.env.keyring.primary().map(encode_key).unwrap_or_default();
            resp.result = true;
            return resp;
        }
        let key = match payload.split_first() {
            Some((&serf_kind::KEY_REQUEST, body)) => match mp::decode::<msg::KeyRequest>(body) {
                Ok(r) => r.key,
                Err(e) => {
                    resp.message = format!("Failed to decode key request: {e}");
                    return resp;
                }
            },
            _ => {
                resp.message = "Failed to decode key request: bad message type".into();
                return resp;
            }
        };
        let result: Result<(), KeyError> = match name {
            "install-key" => self.env.keyring.install(&key),
            "use-key" => self.env.keyring.use_key(&key),
            _ => self.env.keyring.remove(&key),
        };
        match result {
            Ok(()) => {
                tracing::info!(query = name, "keyring changed by cluster query");
                resp.result = true;
                self.emit(Event::KeyringChanged);
            }
            Err(e) => resp.message = e.to_string(),
        }
        resp
    }
}
