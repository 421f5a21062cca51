//! `show info [typed|json] [desc]`, `show version` and `show env [<name>]`: the process as
//! HAProxy 2.6 reports itself, every field of its list at its position (those Shoal has no
//! meaning for at HAProxy's zero, those HAProxy's Debian build leaves empty left out), then
//! Shoal's own cluster lines. Member-supplied text (the node name) is escaped.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use shoal_gossip::MemberStatus;
use shoal_gossip::escape;

use crate::report::typed::{Item, json_item, typed_line};
use crate::report::{Field, INFO, Ty};
use crate::state::State;

/// Shoal's lines after HAProxy's: the gossip view.
const CLUSTER: [Field; 6] = [
    Field { name: "Members", tags: "MGP", ty: Ty::U32, desc: "Members gossip knows, this node included" },
    Field { name: "MembersAlive", tags: "MGP", ty: Ty::U32, desc: "Members alive" },
    Field { name: "MembersLeaving", tags: "MGP", ty: Ty::U32, desc: "Members leaving the cluster" },
    Field { name: "MembersLeft", tags: "MGP", ty: Ty::U32, desc: "Members that left the cluster" },
    Field { name: "MembersFailed", tags: "MGP", ty: Ty::U32, desc: "Members declared failed" },
    Field {
        name: "MembersRefused",
        tags: "MCP",
        ty: Ty::U32,
        desc: "Members refused by a pool's admission policy (once per member and address)",
    },
];

/// When this Shoal was released (`Release_date`), if the build says.
const RELEASE_DATE: &str = match option_env!("SHOAL_RELEASE_DATE") {
    Some(d) => d,
    None => "unknown",
};

/// Environment variables whose values `show env` hides: Shoal's secrets.
const SECRET_WORDS: [&str; 5] = ["TOKEN", "AUTH", "KEY", "SECRET", "PASS"];

/// The output layout `show info` was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Plain,
    Typed,
    Json,
}

/// `show info [typed|json] [desc] [float]`: the last of `typed`/`json` wins, as in HAProxy.
pub fn show_info(b: &State, args: &[&str]) -> String {
    let mut format = Format::Plain;
    let mut desc = false;
    for a in args {
        match *a {
            "typed" => format = Format::Typed,
            "json" => format = Format::Json,
            "desc" => desc = true,
            _ => {}
        }
    }
    let values = values(b);
    match format {
        Format::Plain => plain(&values, desc),
        Format::Typed => typed(&values, desc),
        Format::Json => json(&values),
    }
}

/// Every field with a value, with its position.
fn values(b: &State) -> Vec<(usize, &'static Field, String)> {
    let mut by_name = haproxy_values(b);
    let mut out: Vec<(usize, &'static Field, String)> = Vec::new();
    for (pos, f) in INFO.iter().enumerate() {
        if let Some(i) = by_name.iter().position(|(n, _)| *n == f.name) {
            out.push((pos, f, by_name.swap_remove(i).1));
        }
    }
    for (i, (f, v)) in CLUSTER.iter().zip(cluster_values(b)).enumerate() {
        out.push((INFO.len() + i, f, v));
    }
    out
}

/// HAProxy's fields Shoal gives a value, by name (the others are left out, as HAProxy leaves
/// out `ZlibMemUsage`, `MaxZlibMemUsage` and `description` when it has none).
fn haproxy_values(b: &State) -> Vec<(&'static str, String)> {
    let now = Instant::now();
    let uptime = now.saturating_duration_since(b.started()).as_secs();
    let started =
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()).saturating_sub(uptime);
    let fronts = b.frontend_stats();
    let sum =
        |f: &dyn Fn(&crate::metrics::FrontendStats) -> u64| fronts.iter().map(|(_, s)| f(s)).sum::<u64>();
    let conn_rate = sum(&|s| u64::from(s.connection_rate.per_second(s.second(now))));
    let max_conn_rate = sum(&|s| u64::from(s.connection_rate.max()));
    let members = b.members();
    let peers = members.members.iter().filter(|m| m.status == MemberStatus::Alive).count().saturating_sub(1);
    let cfg = b.config();
    let listeners: usize = cfg.frontends.iter().map(|f| f.listen.len()).sum();
    let threads = tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers());
    let nofile =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(0, |l| l.0);
    let version = env!("CARGO_PKG_VERSION");
    let (d, h, m, s) = (uptime / 86_400, uptime / 3600 % 24, uptime / 60 % 60, uptime % 60);
    let mut v: Vec<(&str, String)> = vec![
        ("Name", "Shoal".into()),
        ("Version", version.into()),
        ("Release_date", RELEASE_DATE.into()),
        ("Nbthread", threads.to_string()),
        ("Nbproc", "1".into()),
        ("Process_num", "1".into()),
        ("Pid", std::process::id().to_string()),
        ("Uptime", format!("{d}d {h}h{m:02}m{s:02}s")),
        ("Uptime_sec", uptime.to_string()),
        ("Ulimit-n", nofile.to_string()),
        ("Maxsock", nofile.to_string()),
        ("Maxconn", b.max_connections().to_string()),
        ("Hard_maxconn", b.max_connections().to_string()),
        ("CurrConns", b.open_connections().to_string()),
        ("CumConns", sum(&|s| s.connections.load(Ordering::Relaxed)).to_string()),
        ("CumReq", sum(&|s| s.requests.load(Ordering::Relaxed)).to_string()),
        ("ConnRate", conn_rate.to_string()),
        ("MaxConnRate", max_conn_rate.to_string()),
        ("SessRate", conn_rate.to_string()),
        ("MaxSessRate", max_conn_rate.to_string()),
        ("Idle_pct", "100".into()),
        ("node", escape::control(&members.local.name).into_owned()),
        ("Jobs", (b.open_connections() + listeners).to_string()),
        ("Listeners", listeners.to_string()),
        ("ActivePeers", peers.to_string()),
        ("ConnectedPeers", peers.to_string()),
        ("TotalBytesOut", sum(&|s| s.bytes_out.load(Ordering::Relaxed)).to_string()),
        ("Build info", version.into()),
        ("Start_time_sec", started.to_string()),
        ("Tainted", "0".into()),
    ];
    // Every other field of HAProxy's list that it prints, at its zero.
    for f in INFO.iter().filter(|f| !matches!(f.name, "ZlibMemUsage" | "MaxZlibMemUsage" | "description")) {
        if !v.iter().any(|(n, _)| *n == f.name) {
            v.push((f.name, "0".into()));
        }
    }
    v
}

fn cluster_values(b: &State) -> Vec<String> {
    let members = b.members();
    let count = |st: MemberStatus| members.members.iter().filter(|m| m.status == st).count().to_string();
    let refused: u64 = b.pools().values().map(|p| p.members_refused.load(Ordering::Relaxed)).sum();
    vec![
        members.members.len().to_string(),
        count(MemberStatus::Alive),
        count(MemberStatus::Leaving),
        count(MemberStatus::Left),
        count(MemberStatus::Failed),
        refused.to_string(),
    ]
}

fn plain(values: &[(usize, &Field, String)], desc: bool) -> String {
    let mut out = String::new();
    for (_, f, v) in values {
        let _ = write!(out, "{}: {}", f.name, escape::control(v));
        if desc {
            let _ = write!(out, ":\"{}\"", f.desc);
        }
        out.push('\n');
    }
    out
}

fn typed(values: &[(usize, &Field, String)], desc: bool) -> String {
    let mut out = String::new();
    for (pos, f, v) in values {
        let item = Item { pos: *pos, field: f, tags: f.tags, value: v };
        typed_line(&mut out, &format!("{pos}.{}.1", f.name), &item, desc);
    }
    out
}

fn json(values: &[(usize, &Field, String)]) -> String {
    let items: Vec<Value> = values
        .iter()
        .map(|(pos, f, v)| json_item(Map::new(), &Item { pos: *pos, field: f, tags: f.tags, value: v }))
        .collect();
    format!("{}\n", Value::Array(items))
}

/// One `NAME=value` line of `show env`, the value hidden when the name speaks of a secret.
fn line(k: &str, v: &str) -> String {
    let hidden = SECRET_WORDS.iter().any(|w| k.to_ascii_uppercase().contains(w));
    format!("{}={}\n", escape::control(k), if hidden { "<hidden>".into() } else { escape::control(v) })
}

/// `show version`.
pub fn show_version() -> String {
    format!("{}\n", env!("CARGO_PKG_VERSION"))
}

/// `show env [<name>]`: `NAME=value` lines (values of Shoal's secrets hidden), or HAProxy's
/// `Variable not found`.
pub fn show_env(name: Option<&str>) -> String {
    match name {
        Some(n) => std::env::var(n).map_or_else(|_| "Variable not found\n".into(), |v| line(n, &v)),
        None => std::env::vars_os().map(|(k, v)| line(&k.to_string_lossy(), &v.to_string_lossy())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines_hide_secrets_and_stay_one_line() {
        assert_eq!(line("HOME", "/root"), "HOME=/root\n");
        assert_eq!(line("SHOAL_ADMIN_TOKEN", "s3cret"), "SHOAL_ADMIN_TOKEN=<hidden>\n");
        assert_eq!(line("X", "a\nb"), "X=a\\nb\n");
        assert_eq!(show_env(Some("SHOAL_SURELY_UNSET_VARIABLE")), "Variable not found\n");
    }
}
