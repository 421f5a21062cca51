//! The numbers behind every stats view, laid out as HAProxy's stats fields:
//! one row per frontend, per pool (`BACKEND`) and per server, in the field
//! order of HAProxy's management guide. CSV, JSON, the HTML page and the
//! runtime API's `show stat` all render this one snapshot. Values are kept as
//! they are (member names included); each format escapes them its own way.

use std::fmt::Display;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use shoal_gossip::{MemberStatus, Tags};

use crate::pool::Pool;
use crate::server::{Admin, Health, Server};
use crate::state::State;

mod fields;
pub mod typed;

pub use fields::{Field, INFO, STAT, Ty};

/// How many of [`STAT`]'s fields are HAProxy's static ones (up to `agg_check_status`); the
/// CSV prints a `-` column after them, then the ssl, h2 and h1 modules' fields.
pub const STATIC_FIELDS: usize = 103;

/// The position of stats field `name` in [`STAT`].
pub fn field(name: &str) -> usize {
    STAT.iter().position(|f| f.name == name).unwrap_or_else(|| panic!("unknown stats field {name}"))
}

/// What a row describes (HAProxy's `type` field: 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A frontend.
    Frontend,
    /// A pool, as a whole.
    Backend,
    /// One server of a pool.
    Server,
}

/// One row of stats.
#[derive(Debug, Clone)]
pub struct Row {
    /// What it describes.
    pub kind: Kind,
    /// One value per [`STAT`] entry (empty where Shoal has no equivalent).
    pub values: Vec<String>,
    /// For servers: the gossip status of its member.
    pub gossip: Option<MemberStatus>,
    /// For servers: the member's tags.
    pub tags: Option<Arc<Tags>>,
    /// For servers: the state as shown to people (`DOWN (checking)`, …).
    pub state: &'static str,
    /// For servers: the round trip estimated from the network coordinates, if known.
    pub rtt: Option<std::time::Duration>,
}

impl Row {
    fn new(kind: Kind, pxname: &str, svname: &str) -> Row {
        let mut r = Row {
            kind,
            values: vec![String::new(); STAT.len()],
            gossip: None,
            tags: None,
            state: "",
            rtt: None,
        };
        r.set("pxname", pxname);
        r.set("svname", svname);
        r.set("pid", 1);
        r.set("type", kind as u8);
        r.set("mode", "http");
        // The modules' counters HAProxy prints for this kind of row: ssl for all, h2 and h1 for
        // proxies (Shoal counts none of them apart).
        let modules = if kind == Kind::Server { 3 } else { STAT.len() - STATIC_FIELDS };
        for v in &mut r.values[STATIC_FIELDS..STATIC_FIELDS + modules] {
            *v = "0".into();
        }
        r
    }

    /// HAProxy's letter for the row in typed output: `F`, `B` or `S`.
    pub fn letter(&self) -> char {
        match self.kind {
            Kind::Frontend => 'F',
            Kind::Backend => 'B',
            Kind::Server => 'S',
        }
    }

    fn set(&mut self, name: &str, v: impl Display) {
        self.values[field(name)] = v.to_string();
    }

    /// Sets fields HAProxy prints for this kind of row and Shoal does not count to 0.
    fn zero(&mut self, names: &[&str]) {
        for name in names {
            self.set(name, 0);
        }
    }

    /// The value of field `name` ("" when empty).
    pub fn get(&self, name: &str) -> &str {
        &self.values[field(name)]
    }

    /// The value of field `name` as a number (0 when empty).
    pub fn num(&self, name: &str) -> u64 {
        self.get(name).parse().unwrap_or(0)
    }
}

/// A server's state as HAProxy names it: UP, DOWN, DRAIN, MAINT or NOLB.
pub fn state_name(s: &Server, now: Instant) -> &'static str {
    match (s.admin(), s.health()) {
        (Admin::Maint, _) => "MAINT",
        (Admin::Drain, _) => "DRAIN",
        _ if s.member_status() != MemberStatus::Alive => "DRAIN",
        (_, Health::Down) => "DOWN",
        (_, Health::Unknown) => "DOWN (checking)",
        _ if s.is_ejected(now) => "NOLB",
        _ => "UP",
    }
}

/// Everything the stats views show, taken at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Frontend, then per pool its servers and its BACKEND row.
    pub rows: Vec<Row>,
    /// The cluster as gossip sees it.
    pub members: Arc<shoal_agent::Membership>,
    /// Time since the balancer started.
    pub uptime: std::time::Duration,
}

/// A CSV field: control characters escaped (a value is always one line), quoted when it holds
/// a comma or a quote.
fn csv_escape(v: &str) -> std::borrow::Cow<'_, str> {
    let v = shoal_gossip::escape::control(v);
    if v.contains([',', '"']) { format!("\"{}\"", v.replace('"', "\"\"")).into() } else { v }
}

/// HAProxy's stats CSV of `rows`: the header (with its `-` column after the static fields),
/// then one line per row.
pub fn csv<'a>(rows: impl Iterator<Item = &'a Row>) -> String {
    let names: Vec<&str> = STAT.iter().map(|f| f.name).collect();
    let mut out = format!("# {},-,{},\n", names[..STATIC_FIELDS].join(","), names[STATIC_FIELDS..].join(","));
    for r in rows {
        for (i, v) in r.values.iter().enumerate() {
            if i == STATIC_FIELDS {
                out.push_str("-,");
            }
            out.push_str(&csv_escape(v));
            out.push(',');
        }
        out.push('\n');
    }
    out
}

impl Snapshot {
    /// Collects the rows of every frontend, pool and server.
    pub fn collect(b: &State) -> Snapshot {
        let now = Instant::now();
        let max_connections = b.max_connections();
        let mut rows = Vec::new();
        for (name, fe) in b.frontend_stats() {
            rows.push(frontend_row(&name, &fe, max_connections, now));
        }
        for pool in b.pools().values() {
            let servers = pool.servers();
            let server_rows: Vec<Row> = servers.iter().map(|s| server_row(pool, s, now)).collect();
            let backend = backend_row(pool, &servers, &server_rows, now);
            rows.extend(server_rows);
            rows.push(backend);
        }
        Snapshot { rows, members: b.members(), uptime: now.saturating_duration_since(b.started()) }
    }

    /// HAProxy's stats CSV: the `# pxname,svname,…` header, then one line per row.
    pub fn csv(&self) -> String {
        csv(self.rows.iter())
    }

    /// The same rows as JSON: an array of objects with HAProxy's field names (empty fields
    /// left out), plus `gossip` and `tags` for servers.
    pub fn json(&self) -> serde_json::Value {
        let rows = self
            .rows
            .iter()
            .map(|r| {
                let mut o = serde_json::Map::new();
                for (f, v) in STAT.iter().map(|f| f.name).zip(&r.values).filter(|(_, v)| !v.is_empty()) {
                    let value = match v.parse::<i64>() {
                        Ok(n) => serde_json::Value::from(n),
                        Err(_) => serde_json::Value::from(v.as_str()),
                    };
                    o.insert((*f).to_string(), value);
                }
                if let Some(g) = r.gossip {
                    o.insert("gossip".into(), g.as_str().into());
                }
                if let Some(t) = &r.tags {
                    o.insert("tags".into(), serde_json::to_value(&**t).unwrap_or_default());
                }
                if let Some(rtt) = r.rtt {
                    o.insert("rtt_us".into(), (rtt.as_micros() as u64).into());
                }
                serde_json::Value::Object(o)
            })
            .collect();
        serde_json::Value::Array(rows)
    }
}

fn frontend_row(name: &str, fe: &crate::metrics::FrontendStats, limit: usize, now: Instant) -> Row {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let second = fe.second(now);
    let mut r = Row::new(Kind::Frontend, name, "FRONTEND");
    r.set("scur", load(&fe.current_connections));
    r.set("smax", load(&fe.max_connections));
    r.set("slim", limit);
    r.set("stot", load(&fe.connections));
    r.set("bin", load(&fe.bytes_in));
    r.set("bout", load(&fe.bytes_out));
    r.set("dreq", load(&fe.denied));
    r.set("dresp", 0);
    r.set("ereq", load(&fe.denied));
    r.set("status", "OPEN");
    r.set("iid", fe.id.load(Ordering::Relaxed));
    r.set("sid", 0);
    r.set("rate", fe.connection_rate.per_second(second));
    r.set("rate_lim", 0);
    r.set("rate_max", fe.connection_rate.max());
    for (i, class) in ["hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx"].iter().enumerate() {
        r.set(class, load(&fe.responses[i]));
    }
    r.set("hrsp_other", 0);
    r.set("req_rate", fe.request_rate.per_second(second));
    r.set("req_rate_max", fe.request_rate.max());
    r.set("req_tot", load(&fe.requests));
    r.set("conn_rate", fe.connection_rate.per_second(second));
    r.set("conn_rate_max", fe.connection_rate.max());
    r.set("conn_tot", load(&fe.connections));
    r.zero(&[
        "comp_in",
        "comp_out",
        "comp_byp",
        "comp_rsp",
        "intercepted",
        "dcon",
        "dses",
        "wrew",
        "cache_lookups",
        "cache_hits",
        "eint",
    ]);
    r
}

/// HAProxy's status text for a server in the CSV.
fn csv_status(s: &Server, checked: bool, now: Instant) -> &'static str {
    match state_name(s, now) {
        "DOWN (checking)" => "DOWN",
        "UP" if !checked => "no check",
        other => other,
    }
}

fn server_row(pool: &Pool, s: &Arc<Server>, now: Instant) -> Row {
    let st = &s.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let checked = pool.cfg.health.enabled;
    let mut r = Row::new(Kind::Server, &pool.cfg.name, &s.name);
    r.state = state_name(s, now);
    r.gossip = Some(s.member_status());
    r.rtt = s.estimated_rtt();
    r.tags = Some(s.tags.load_full());
    r.set("qcur", 0);
    r.set("qmax", 0);
    r.set("scur", s.active.load(Ordering::Relaxed));
    r.set("smax", st.max_active.load(Ordering::Relaxed));
    r.set("stot", load(&st.requests));
    r.set("bin", load(&st.bytes_in));
    r.set("bout", load(&st.bytes_out));
    r.set("dresp", 0);
    r.set("econ", load(&st.connect_errors));
    r.set("eresp", load(&st.response_errors));
    r.set("wretr", load(&st.retries));
    r.set("wredis", load(&st.redispatches));
    r.set("status", csv_status(s, checked, now));
    r.set("weight", s.weight.load(Ordering::Relaxed));
    r.set("uweight", s.weight.load(Ordering::Relaxed));
    r.set("act", 1);
    r.set("bck", 0);
    r.set("lastchg", s.since_last_change(now).as_secs());
    r.set("downtime", s.downtime(now).as_secs());
    r.set("iid", pool.id);
    r.set("sid", s.id);
    r.set("lbtot", load(&st.requests));
    r.set("rate", st.rate.per_second(s.rate_second(now)));
    r.set("rate_max", st.rate.max());
    for (i, class) in ["hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx"].iter().enumerate() {
        r.set(class, load(&st.responses[i]));
    }
    r.set("hrsp_other", 0);
    r.set("cli_abrt", 0);
    r.set("srv_abrt", 0);
    r.set("lastsess", s.since_last_request(now).map_or(-1, |d| d.as_secs() as i64));
    r.set("qtime", 0);
    r.set("ctime", st.connect_time.mean_ms());
    r.set("rtime", st.response_time.mean_ms());
    r.set("ttime", st.response_time.mean_ms());
    r.set("req_tot", load(&st.requests));
    r.set("used_conn_cur", s.active.load(Ordering::Relaxed));
    r.zero(&[
        "wrew",
        "connect",
        "reuse",
        "srv_icur",
        "qtime_max",
        "ctime_max",
        "rtime_max",
        "ttime_max",
        "eint",
        "idle_conn_cur",
        "safe_conn_cur",
        "need_conn_est",
    ]);
    r.set("addr", s.addr);
    if pool.cfg.sticky_cookie.is_some() {
        r.set("cookie", s.cookie());
    }
    if checked {
        r.set("chkfail", load(&st.check_failures));
        r.set("chkdown", load(&st.check_downs));
        r.set("check_rise", pool.cfg.health.rise);
        r.set("check_fall", pool.cfg.health.fall);
        r.set("check_health", check_health(pool, s));
        let last = s.last_check.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match last {
            Some(c) => {
                r.set("check_status", c.status.code());
                if let Some(code) = c.code {
                    r.set("check_code", code);
                }
                r.set("check_duration", c.duration.as_millis());
                r.set("last_chk", &c.detail);
                r.set("check_desc", check_desc(c.status));
            }
            None => {
                r.set("check_status", "INI");
                r.set("check_desc", "Initializing");
            }
        }
    }
    r
}

/// HAProxy's health level: from 0 (down) up to `rise + fall - 1` (up, as far from down as can
/// be); Shoal keeps the state, not the level, so a server is at one end or the other.
pub fn check_health(pool: &Pool, s: &Server) -> u32 {
    let h = &pool.cfg.health;
    if s.health() == Health::Up { h.rise + h.fall - 1 } else { 0 }
}

fn check_desc(s: crate::server::CheckStatus) -> &'static str {
    use crate::server::CheckStatus::*;
    match s {
        Passed => "Layer7 check passed",
        WrongStatus => "Layer7 wrong status",
        Refused => "Layer4 connection problem",
        Timeout => "Layer7 timeout",
        BadResponse => "Layer7 invalid response",
    }
}

fn backend_row(pool: &Pool, servers: &[Arc<Server>], rows: &[Row], now: Instant) -> Row {
    let sum = |f: &str| rows.iter().map(|r| r.num(f)).sum::<u64>();
    let view = pool.view();
    let mut r = Row::new(Kind::Backend, &pool.cfg.name, "BACKEND");
    for f in [
        "scur", "stot", "bin", "bout", "econ", "eresp", "wretr", "wredis", "lbtot", "rate", "hrsp_1xx",
        "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "chkdown",
    ] {
        r.set(f, sum(f));
    }
    r.set("qcur", 0);
    r.set("qmax", 0);
    r.set("smax", rows.iter().map(|r| r.num("smax")).max().unwrap_or(0));
    r.set("dreq", 0);
    r.set("dresp", 0);
    r.set("req_tot", sum("stot"));
    r.set("status", if view.servers.is_empty() { "DOWN" } else { "UP" });
    let weight: u32 = view.servers.iter().map(|s| s.weight.load(Ordering::Relaxed)).sum();
    r.set("weight", weight);
    r.set("uweight", weight);
    r.set("act", view.servers.len());
    r.set("bck", 0);
    let last_change = servers.iter().map(|s| s.since_last_change(now)).min().unwrap_or_default();
    r.set("lastchg", last_change.as_secs());
    r.set("iid", pool.id);
    r.set("sid", 0);
    r.set("rate_max", rows.iter().map(|r| r.num("rate_max")).sum::<u64>());
    r.set("hrsp_other", 0);
    r.set("algo", pool.cfg.algorithm.name());
    for f in ["qtime", "ctime", "rtime", "ttime"] {
        r.set(f, sum(f).checked_div(rows.len() as u64).unwrap_or(0));
    }
    r.zero(&[
        "slim",
        "downtime",
        "cli_abrt",
        "srv_abrt",
        "comp_in",
        "comp_out",
        "comp_byp",
        "comp_rsp",
        "wrew",
        "connect",
        "reuse",
        "cache_lookups",
        "cache_hits",
        "qtime_max",
        "ctime_max",
        "rtime_max",
        "ttime_max",
        "eint",
        "agg_server_status",
        "agg_server_check_status",
        "agg_check_status",
    ]);
    if let Some(newest) = servers.iter().filter_map(|s| s.since_last_request(now)).min() {
        r.set("lastsess", newest.as_secs());
    } else {
        r.set("lastsess", -1);
    }
    r
}
