//! HAProxy's typed and JSON renderings of one field, shared by `show stat` and `show info`:
//! `<head>:<tags>:<type>:<value>[:"<desc>"]` lines and `{"field":…,"processNum":1,"tags":…,
//! "value":…}` objects, exactly as HAProxy 2.6 lays them out. Which fields and rows are shown
//! is decided by the callers; values arrive as text and are escaped here (typed lines are one
//! line each whatever a member's name holds; JSON strings are JSON-escaped).

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::{Field, Ty};

/// HAProxy's name for a type (`u32`, `str`, …).
pub fn type_name(ty: Ty) -> &'static str {
    match ty {
        Ty::S32 => "s32",
        Ty::U32 => "u32",
        Ty::U64 => "u64",
        Ty::Str => "str",
    }
}

/// One value to render: the field, its position, the tags in force and the text of the value.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    /// Position in HAProxy's list.
    pub pos: usize,
    /// The field.
    pub field: &'a Field,
    /// Origin, nature and scope letters (usually `field.tags`).
    pub tags: &'a str,
    /// The value, as text.
    pub value: &'a str,
}

/// Appends one typed line: `head` is what comes before the first colon (`F.2.0.4.scur.1`,
/// `8.Uptime_sec.1`); with `desc`, the field's description follows, quoted.
pub fn typed_line(out: &mut String, head: &str, item: &Item, desc: bool) {
    let value = shoal_gossip::escape::control(item.value);
    let _ = write!(out, "{head}:{}:{}:{value}", item.tags, type_name(item.field.ty));
    if desc {
        let _ = write!(out, ":\"{}\"", item.field.desc);
    }
    out.push('\n');
}

/// The JSON object HAProxy prints for one value: `head` holds the keys that come first
/// (`objType`, `proxyId`, `id` for stats; none for info).
pub fn json_item(mut head: Map<String, Value>, item: &Item) -> Value {
    head.insert("field".into(), json!({ "pos": item.pos, "name": item.field.name }));
    head.insert("processNum".into(), json!(1));
    head.insert("tags".into(), tags_json(item.tags));
    head.insert("value".into(), json!({ "type": type_name(item.field.ty), "value": json_value(item) }));
    Value::Object(head)
}

fn json_value(item: &Item) -> Value {
    let number = match item.field.ty {
        Ty::Str => None,
        Ty::S32 => item.value.parse::<i64>().ok().map(Value::from),
        Ty::U32 | Ty::U64 => item.value.parse::<u64>().ok().map(Value::from),
    };
    number.unwrap_or_else(|| Value::from(item.value))
}

/// The tags as words: `{"origin":"Metric","nature":"Gauge","scope":"Process"}`.
fn tags_json(tags: &str) -> Value {
    let mut c = tags.chars();
    let origin = match c.next() {
        Some('M') => "Metric",
        Some('S') => "Status",
        Some('K') => "Key",
        Some('C') => "Config",
        Some('P') => "Product",
        _ => "Unknown",
    };
    let nature = match c.next() {
        Some('G') => "Gauge",
        Some('L') => "Limit",
        Some('m') => "Min",
        Some('M') => "Max",
        Some('R') => "Rate",
        Some('C') => "Counter",
        Some('D') => "Duration",
        Some('A') => "Age",
        Some('T') => "Time",
        Some('N') => "Name",
        Some('O') => "Output",
        Some('a') => "Avg",
        _ => "Unknown",
    };
    let scope = match c.next() {
        Some('P') => "Process",
        Some('S') => "Service",
        Some('s') => "System",
        Some('C') => "Cluster",
        _ => "Unknown",
    };
    json!({ "origin": origin, "nature": nature, "scope": scope })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{INFO, STAT, field};

    #[test]
    fn a_typed_line_and_a_json_item_are_haproxys() {
        let scur = &STAT[field("scur")];
        let item = Item { pos: 4, field: scur, tags: scur.tags, value: "7" };
        let mut out = String::new();
        typed_line(&mut out, "F.2.0.4.scur.1", &item, false);
        typed_line(&mut out, "F.2.0.4.scur.1", &item, true);
        assert_eq!(
            out,
            "F.2.0.4.scur.1:MGP:u32:7\n\
             F.2.0.4.scur.1:MGP:u32:7:\"Number of current sessions on the frontend, backend or server\"\n"
        );
        let name = Item { pos: 0, field: &INFO[0], tags: INFO[0].tags, value: "Shoal\n\"x\"" };
        assert_eq!(
            json_item(Map::new(), &name).to_string(),
            r#"{"field":{"pos":0,"name":"Name"},"processNum":1,"tags":{"origin":"Product","nature":"Output","scope":"Service"},"value":{"type":"str","value":"Shoal\n\"x\""}}"#
        );
        let mut line = String::new();
        typed_line(&mut line, "0.Name.1", &name, false);
        assert_eq!(line, "0.Name.1:POS:str:Shoal\\n\"x\"\n", "one line whatever the value holds");
    }
}
