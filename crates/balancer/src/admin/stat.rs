//! `show stat [domain proxy] [{<iid>|<proxy>} <type> <sid>] [typed|json] [desc] [up|no-maint]`:
//! the stats rows of [`Snapshot`], chosen as HAProxy 2.6 chooses them and printed as its CSV,
//! its typed lines or its JSON (an array per row of one object per field). The rows and their
//! values come from [`crate::report`]; this module only selects and lays them out.

use serde_json::{Map, Value, json};

use crate::report::typed::{Item, json_item, typed_line};
use crate::report::{Kind, Row, STAT, Snapshot, csv};
use crate::state::State;

/// Which rows: HAProxy's `<iid> <type> <sid>` and the `up` / `no-maint` modifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Filter {
    /// A proxy number, or -1 for all.
    iid: i64,
    /// 1 frontends, 2 backends, 4 servers, or'ed; -1 for all.
    types: i64,
    /// A server number, or -1 for all.
    sid: i64,
    /// `up`: only servers up (or not checked).
    only_up: bool,
    /// `no-maint`: no server in maintenance.
    no_maint: bool,
}

/// The layout asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Typed,
    Json,
}

/// C's `atoi`: the leading integer, 0 when there is none.
fn atoi(s: &str) -> i64 {
    let s = s.trim_start();
    let (sign, digits) = match s.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, s.strip_prefix('+').unwrap_or(s)),
    };
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    sign * digits[..end].parse::<i64>().unwrap_or(0)
}

/// `show stat …`.
pub fn show_stat(b: &State, mut args: &[&str]) -> String {
    if args.first() == Some(&"domain") {
        match args.get(1) {
            Some(&"proxy") => args = &args[2..],
            // Shoal has no resolvers section: nothing to list.
            Some(&"resolvers") => return String::new(),
            _ => return "Invalid statistics domain.\n".into(),
        }
    }
    let mut filter = Filter { iid: -1, types: -1, sid: -1, only_up: false, no_maint: false };
    if let [proxy, types, sid, ..] = args {
        filter.iid = proxy_id(b, proxy);
        if filter.iid == 0 {
            return "No such proxy.\n".into();
        }
        filter.types = atoi(types);
        filter.sid = atoi(sid);
        args = &args[3..];
    }
    let (mut format, mut desc) = (Format::Csv, false);
    for a in args {
        match *a {
            "typed" => format = Format::Typed,
            "json" => format = Format::Json,
            "desc" => desc = true,
            "no-maint" => filter.no_maint = true,
            "up" => filter.only_up = true,
            _ => {}
        }
    }
    let snap = Snapshot::collect(b);
    let rows = snap.rows.iter().filter(|r| filter.keeps(r));
    match format {
        Format::Csv => csv(rows),
        Format::Typed => rows.map(|r| typed(r, desc)).collect(),
        Format::Json => format!("{}\n", Value::Array(rows.map(json_row).collect())),
    }
}

/// A pool's or frontend's number from its name, else the number given (0: none).
fn proxy_id(b: &State, name: &str) -> i64 {
    if let Some(p) = b.pools().get(name) {
        return i64::from(p.id);
    }
    if let Some((_, fe)) = b.frontend_stats().into_iter().find(|(n, _)| n == name) {
        return i64::from(fe.id.load(std::sync::atomic::Ordering::Relaxed));
    }
    atoi(name)
}

impl Filter {
    fn keeps(&self, r: &Row) -> bool {
        let bit = match r.kind {
            Kind::Frontend => 1,
            Kind::Backend => 2,
            Kind::Server => 4,
        };
        let proxy = self.iid == -1 || r.num("iid") as i64 == self.iid;
        let kind = self.types == -1 || self.types & bit != 0;
        let server = r.kind != Kind::Server
            || ((self.sid == -1 || r.num("sid") as i64 == self.sid)
                && !(self.no_maint && r.state == "MAINT")
                && (!self.only_up || matches!(r.state, "UP" | "NOLB" | "DRAIN")));
        proxy && kind && server
    }
}

/// The fields of a row that have a value, with their position and tags.
fn items(r: &Row) -> impl Iterator<Item = Item<'_>> {
    let backend = r.kind == Kind::Backend;
    STAT.iter().zip(&r.values).enumerate().filter(|(_, (_, v))| !v.is_empty()).map(move |(pos, (f, v))| {
        // HAProxy tags a backend's act, bck, rate and rate_max as plain gauges.
        let tags =
            if backend && matches!(f.name, "act" | "bck" | "rate" | "rate_max") { "MGP" } else { f.tags };
        Item { pos, field: f, tags, value: v }
    })
}

fn typed(r: &Row, desc: bool) -> String {
    let mut out = String::new();
    let (letter, iid, sid) = (r.letter(), r.num("iid"), r.num("sid"));
    for item in items(r) {
        typed_line(
            &mut out,
            &format!("{letter}.{iid}.{sid}.{}.{}.1", item.pos, item.field.name),
            &item,
            desc,
        );
    }
    out
}

fn json_row(r: &Row) -> Value {
    let kind = match r.kind {
        Kind::Frontend => "Frontend",
        Kind::Backend => "Backend",
        Kind::Server => "Server",
    };
    let head = |_: &Item| {
        let mut m = Map::new();
        m.insert("objType".into(), json!(kind));
        m.insert("proxyId".into(), json!(r.num("iid")));
        m.insert("id".into(), json!(r.num("sid")));
        m
    };
    Value::Array(items(r).map(|item| json_item(head(&item), &item)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atoi_reads_like_c() {
        assert_eq!(atoi("-1"), -1);
        assert_eq!(atoi("4x"), 4);
        assert_eq!(atoi("web"), 0);
        assert_eq!(atoi(" +7"), 7);
    }
}
