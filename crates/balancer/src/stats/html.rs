//! The stats page: one table per frontend and pool, the gossip members, state
//! colours, server-side sorting and a switchable meta refresh. No JavaScript,
//! no external assets.

use std::fmt::Write as _;

use crate::report::{Kind, Row, Snapshot};
use crate::state::State;

/// Seconds between automatic refreshes.
const REFRESH_SECONDS: u32 = 5;

const STYLE: &str = "
body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}h2{font-size:15px;margin:18px 0 6px}
.meta{color:#555;margin-bottom:8px}.meta a{margin-right:12px}
table{border-collapse:collapse;background:#fff;margin-bottom:6px}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}
th{background:#e4e4ea;font-weight:600}th a{color:#222;text-decoration:none}th a:hover{text-decoration:underline}
td.l,th.l{text-align:left}tr.total td{background:#eef;font-weight:600}
.UP{background:#b8f0b8}.DOWN{background:#f4a8a8}.DRAIN{background:#a8c8f4}.MAINT{background:#d9c3a5}
.NOLB{background:#f6d98f}.CHECKING{background:#f4e8a8}.OPEN{background:#b8f0b8}
.alive{color:#17731b}.leaving{color:#1b4f9c}.left{color:#666}.failed{color:#b3121b;font-weight:600}
.tags{color:#555;text-align:left;font-size:12px}
";

/// Escapes text for HTML (control characters too, as [`shoal_gossip::escape::control`] shows them).
fn esc(s: &str) -> String {
    let s = shoal_gossip::escape::control(s);
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Seconds as `1d2h`, `3h4m`, `5m6s` or `7s`.
fn ago(secs: &str) -> String {
    let Ok(s) = secs.parse::<u64>() else { return "-".into() };
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{}h", s / 86_400, s / 3600 % 24),
    }
}

/// Bytes with a binary unit.
fn bytes(v: &str) -> String {
    let Ok(n) = v.parse::<u64>() else { return "-".into() };
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < units.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{x:.1} {}", units[u]) }
}

/// A server-table column: heading, how to sort, how to show.
struct Column {
    title: &'static str,
    key: &'static str,
    left: bool,
    show: fn(&Row) -> String,
}

fn v(r: &Row, f: &str) -> String {
    let s = r.get(f);
    if s.is_empty() { "-".into() } else { esc(s) }
}

const SERVER_COLUMNS: &[Column] = &[
    Column { title: "Server", key: "name", left: true, show: |r| v(r, "svname") },
    Column { title: "Address", key: "addr", left: true, show: |r| v(r, "addr") },
    Column { title: "Status", key: "status", left: true, show: |r| esc(r.state) },
    Column {
        title: "Gossip",
        key: "gossip",
        left: true,
        show: |r| r.gossip.map_or("-".into(), |g| g.as_str().into()),
    },
    Column { title: "Weight", key: "weight", left: false, show: |r| v(r, "weight") },
    Column { title: "RTT", key: "rtt", left: false, show: rtt_cell },
    Column { title: "Cur", key: "scur", left: false, show: |r| v(r, "scur") },
    Column { title: "Max", key: "smax", left: false, show: |r| v(r, "smax") },
    Column { title: "Total", key: "stot", left: false, show: |r| v(r, "stot") },
    Column { title: "Rate/s", key: "rate", left: false, show: |r| v(r, "rate") },
    Column { title: "Bytes in", key: "bin", left: false, show: |r| bytes(r.get("bin")) },
    Column { title: "Bytes out", key: "bout", left: false, show: |r| bytes(r.get("bout")) },
    Column { title: "Conn err", key: "econ", left: false, show: |r| v(r, "econ") },
    Column { title: "Resp err", key: "eresp", left: false, show: |r| v(r, "eresp") },
    Column { title: "Retries", key: "wretr", left: false, show: |r| v(r, "wretr") },
    Column { title: "Redisp", key: "wredis", left: false, show: |r| v(r, "wredis") },
    Column { title: "5xx", key: "hrsp_5xx", left: false, show: |r| v(r, "hrsp_5xx") },
    Column { title: "Last check", key: "check_status", left: true, show: check_cell },
    Column { title: "Last change", key: "lastchg", left: false, show: |r| ago(r.get("lastchg")) },
    Column { title: "Downtime", key: "downtime", left: false, show: |r| ago(r.get("downtime")) },
    Column { title: "Tags", key: "tags", left: true, show: tags_cell },
];

fn check_cell(r: &Row) -> String {
    let status = r.get("check_status");
    if status.is_empty() {
        return "no check".into();
    }
    let mut s = esc(status);
    if !r.get("check_code").is_empty() {
        let _ = write!(s, "/{}", esc(r.get("check_code")));
    }
    if !r.get("check_duration").is_empty() {
        let _ = write!(s, " in {}ms", esc(r.get("check_duration")));
    }
    s
}

fn tags_cell(r: &Row) -> String {
    r.tags.as_ref().map_or_else(String::new, |t| {
        t.iter().map(|(k, v)| format!("{}={}", esc(k), esc(v))).collect::<Vec<_>>().join(" ")
    })
}

/// The CSS class for a state (`DOWN (checking)` → `CHECKING`).
fn state_class(state: &str) -> &'static str {
    match state {
        "UP" => "UP",
        "DRAIN" => "DRAIN",
        "MAINT" => "MAINT",
        "NOLB" => "NOLB",
        "OPEN" => "OPEN",
        "DOWN (checking)" => "CHECKING",
        _ => "DOWN",
    }
}

/// The estimated round trip (network coordinates), in milliseconds; `–` when unknown.
fn rtt_cell(r: &Row) -> String {
    r.rtt.map_or_else(|| "–".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1000.0))
}

/// The sort key of a row for column `key`: numbers compare as numbers.
fn sort_key(r: &Row, key: &str) -> (u64, String) {
    if key == "rtt" {
        // Unknown last, whichever the direction.
        return (r.rtt.map_or(u64::MAX, |d| d.as_micros() as u64), String::new());
    }
    let text = match key {
        "name" => r.get("svname").to_string(),
        "status" => r.state.to_string(),
        "gossip" => r.gossip.map_or("", |g| g.as_str()).to_string(),
        "tags" => tags_cell(r),
        "check_status" => r.get("check_status").to_string(),
        k => r.get(k).to_string(),
    };
    (text.parse().unwrap_or(0), text)
}

/// How the page was asked for.
struct View<'a> {
    sort: &'a str,
    descending: bool,
    refresh: bool,
}

impl View<'_> {
    fn link(&self, sort: &str, descending: bool, refresh: bool) -> String {
        format!(
            "?sort={}&amp;dir={}&amp;refresh={}",
            esc(sort),
            if descending { "desc" } else { "asc" },
            u8::from(refresh)
        )
    }
}

/// Renders the page for query `params` (`sort`, `dir=asc|desc`, `refresh=0|1`).
pub fn page(b: &State, params: &[(&str, &str)]) -> String {
    let param = |k: &str| params.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let sort = param("sort").filter(|s| SERVER_COLUMNS.iter().any(|c| c.key == *s)).unwrap_or("name");
    let view =
        View { sort, descending: param("dir") == Some("desc"), refresh: param("refresh") != Some("0") };
    let snap = Snapshot::collect(b);
    let mut out = String::with_capacity(16 * 1024);
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Shoal stats</title>",
    );
    if view.refresh {
        let _ = write!(
            out,
            "<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS};url={}\">",
            view.link(view.sort, view.descending, true)
        );
    }
    let _ = write!(out, "<style>{STYLE}</style></head><body>");
    let up = snap.uptime.as_secs();
    let _ = write!(
        out,
        "<h1>Shoal stats</h1><div class=\"meta\">node <b>{}</b> · version {} · pid {} · up {} · {} members</div>",
        esc(&snap.members.local.name),
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        ago(&up.to_string()),
        snap.members.members.len(),
    );
    let toggle = if view.refresh {
        format!("<a href=\"{}\">Stop refreshing</a>", view.link(view.sort, view.descending, false))
    } else {
        format!(
            "<a href=\"{}\">Refresh every {REFRESH_SECONDS}s</a>",
            view.link(view.sort, view.descending, true)
        )
    };
    let _ = write!(
        out,
        "<div class=\"meta\">{toggle}<a href=\";csv\">CSV</a><a href=\";json\">JSON</a><a href=\"metrics\">Prometheus</a></div>"
    );
    frontends(&mut out, &snap);
    pools(&mut out, &snap, &view);
    members(&mut out, &snap);
    out.push_str("</body></html>\n");
    out
}

fn frontends(out: &mut String, snap: &Snapshot) {
    let heads = [
        "Frontend",
        "Status",
        "Cur",
        "Max",
        "Limit",
        "Total",
        "Conn/s",
        "Req/s",
        "Requests",
        "Bytes in",
        "Bytes out",
        "Denied",
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
    ];
    out.push_str("<h2>Frontends</h2><table><tr>");
    for (i, h) in heads.iter().enumerate() {
        let _ = write!(out, "<th{}>{h}</th>", if i == 0 { " class=\"l\"" } else { "" });
    }
    out.push_str("</tr>");
    for r in snap.rows.iter().filter(|r| r.kind == Kind::Frontend) {
        let _ =
            write!(out, "<tr><td class=\"l\">{}</td><td class=\"l OPEN\">OPEN</td>", esc(r.get("pxname")));
        for f in ["scur", "smax", "slim", "stot", "conn_rate", "req_rate", "req_tot"] {
            let _ = write!(out, "<td>{}</td>", v(r, f));
        }
        let _ = write!(out, "<td>{}</td><td>{}</td>", bytes(r.get("bin")), bytes(r.get("bout")));
        for f in ["dreq", "hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx"] {
            let _ = write!(out, "<td>{}</td>", v(r, f));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

fn pools(out: &mut String, snap: &Snapshot, view: &View) {
    let mut servers: Vec<&Row> = Vec::new();
    for r in &snap.rows {
        match r.kind {
            Kind::Frontend => {}
            Kind::Server => servers.push(r),
            Kind::Backend => {
                servers.sort_by_key(|r| sort_key(r, view.sort));
                if view.descending {
                    servers.reverse();
                }
                pool_table(out, r, &servers, view);
                servers.clear();
            }
        }
    }
}

fn pool_table(out: &mut String, backend: &Row, servers: &[&Row], view: &View) {
    let _ = write!(
        out,
        "<h2>Pool {} <small>({}, {} of {} serving)</small></h2><table><tr>",
        esc(backend.get("pxname")),
        esc(backend.get("algo")),
        esc(backend.get("act")),
        servers.len(),
    );
    for c in SERVER_COLUMNS {
        let descending = if c.key == view.sort { !view.descending } else { false };
        let arrow = match (c.key == view.sort, view.descending) {
            (true, false) => " ▲",
            (true, true) => " ▼",
            _ => "",
        };
        let _ = write!(
            out,
            "<th{}><a href=\"{}\">{}{arrow}</a></th>",
            if c.left { " class=\"l\"" } else { "" },
            view.link(c.key, descending, view.refresh),
            c.title
        );
    }
    out.push_str("</tr>");
    for r in servers {
        out.push_str("<tr>");
        for c in SERVER_COLUMNS {
            let class = match c.key {
                "status" => format!(" class=\"l {}\"", state_class(r.state)),
                "gossip" => format!(" class=\"l {}\"", r.gossip.map_or("", |g| g.as_str())),
                "tags" => " class=\"tags\"".into(),
                _ if c.left => " class=\"l\"".into(),
                _ => String::new(),
            };
            let _ = write!(out, "<td{class}>{}</td>", (c.show)(r));
        }
        out.push_str("</tr>");
    }
    out.push_str("<tr class=\"total\">");
    for c in SERVER_COLUMNS {
        let cell = match c.key {
            "name" => "Total".to_string(),
            "status" => esc(backend.get("status")),
            "addr" | "gossip" | "check_status" | "downtime" | "tags" | "rtt" => String::new(),
            _ => (c.show)(backend),
        };
        let class = if c.left { " class=\"l\"" } else { "" };
        let _ = write!(out, "<td{class}>{cell}</td>");
    }
    out.push_str("</tr></table>");
}

fn members(out: &mut String, snap: &Snapshot) {
    out.push_str(
        "<h2>Gossip members</h2><table><tr><th class=\"l\">Name</th><th class=\"l\">Address</th>\
         <th class=\"l\">Status</th><th class=\"l\">Tags</th></tr>",
    );
    let mut members: Vec<_> = snap.members.members.iter().collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    for m in members {
        let tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{}={}", esc(k), esc(v))).collect();
        let status = m.status.as_str();
        let _ = write!(
            out,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l {status}\">{status}</td><td class=\"tags\">{}</td></tr>",
            esc(&m.name),
            m.addr,
            tags.join(" ")
        );
    }
    out.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_units() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(esc("a\r\n<b>"), "a\\r\\n&lt;b&gt;");
        assert_eq!(ago("59"), "59s");
        assert_eq!(ago("61"), "1m1s");
        assert_eq!(ago("3700"), "1h1m");
        assert_eq!(ago("90000"), "1d1h");
        assert_eq!(ago(""), "-");
        assert_eq!(bytes("512"), "512 B");
        assert_eq!(bytes("1536"), "1.5 KiB");
        assert_eq!(bytes("5368709120"), "5.0 GiB");
    }
}
