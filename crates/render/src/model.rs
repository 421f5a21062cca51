//! The data a template sees: the reference stack's `addresses` (so its
//! template renders unchanged) plus every member and every backend in detail.
//!
//! ```json
//! {
//!   "addresses": [ { "host": "web-1", "ip": "172.18.0.3" } ],
//!   "backends":  [ { "name": "web-1", "host": "web-1", "ip": "172.18.0.3", "port": 3000,
//!                    "addr": "172.18.0.3:3000", "weight": 1, "status": "alive",
//!                    "healthy": true, "role": "backend", "tags": { … } } ],
//!   "members":   [ { "name": "ha", "ip": "172.18.0.2", "port": 7946, "addr": "172.18.0.2:7946",
//!                    "status": "alive", "role": "balancer", "tags": { … } } ],
//!   "local":     { "name": "ha" }
//! }
//! ```
//!
//! [`Model::build`] guards it: a member value holding a control character (a name or tag
//! with a newline) is replaced by a marker, and an output holding a marker is refused.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde_json::{Value, json};

/// One member, whichever way it was learned (in-process agent or RPC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Node name.
    pub name: String,
    /// Gossip address.
    pub addr: SocketAddr,
    /// `alive`, `leaving`, `left` or `failed`.
    pub status: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

impl MemberView {
    fn role(&self) -> &str {
        self.tags.get("role").map_or("", String::as_str)
    }
}

/// The cluster as a template sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    /// The local agent's name, when known.
    pub local: Option<String>,
    /// Every member, sorted by name.
    pub members: Vec<MemberView>,
}

impl Cluster {
    /// From an in-process agent's snapshot.
    pub fn from_membership(m: &shoal_agent::Membership) -> Cluster {
        let members = m
            .members
            .iter()
            .map(|m| MemberView {
                name: m.name.to_string(),
                addr: m.addr,
                status: m.status.as_str().to_string(),
                tags: (*m.tags).clone(),
            })
            .collect();
        Cluster { local: Some(m.local.name.to_string()), members }
    }

    /// From a Serf RPC `members` answer (works against real Serf agents too).
    pub fn from_rpc(members: &[shoal_rpc::protocol::RpcMember]) -> Cluster {
        let mut members: Vec<MemberView> = members
            .iter()
            .filter_map(|m| {
                let ip: IpAddr = match m.addr.len() {
                    4 => <[u8; 4]>::try_from(&m.addr[..]).ok()?.into(),
                    16 => {
                        let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&m.addr[..]).ok()?);
                        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
                    }
                    _ => return None,
                };
                Some(MemberView {
                    name: m.name.clone(),
                    addr: SocketAddr::new(ip, m.port),
                    status: m.status.clone(),
                    tags: m.tags.clone(),
                })
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        Cluster { local: None, members }
    }
}

/// Which members are backends, and where their service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Members with this `role` tag are backends.
    pub role: String,
    /// Their service port unless a `port` tag says otherwise.
    pub port: u16,
}

impl Default for Selection {
    fn default() -> Self {
        Selection { role: "backend".into(), port: 3000 }
    }
}

/// Whether `c` may not reach a rendered file from a member's value: Unicode control characters
/// (C0 such as newline, carriage return and tab; DEL; C1) and the line and paragraph separators.
/// The template's own text may hold any of them.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `s` as a Rust string literal (quoted, controls escaped), cut at 128 characters: safe to log.
pub fn escaped(s: &str) -> String {
    const MAX: usize = 128;
    let cut: String = s.chars().take(MAX).collect();
    let mut out = format!("{cut:?}");
    if cut.len() < s.len() {
        out.insert(out.len() - 1, '…');
    }
    out
}

/// A member value that holds a character [`is_unsafe_char`] refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsafeValue {
    /// The member's name, [`escaped`].
    pub member: String,
    /// Which of its values: `name`, `status`, `tag "KEY"` (its value) or `tag key "KEY"`.
    pub field: String,
    /// The first unsafe character, as `U+000A`.
    pub character: String,
}

impl std::fmt::Display for UnsafeValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "member {}: its {} holds a control character ({})", self.member, self.field, self.character)
    }
}

/// A rendered output refused because member values with control characters would be in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Refused {
    /// The values the output would hold, in the order they first appear in it (never empty).
    pub values: Vec<UnsafeValue>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(first) = self.values.first() {
            write!(f, "{first}")?;
        }
        if self.values.len() > 1 {
            write!(f, " (and {} more such values)", self.values.len() - 1)?;
        }
        write!(f, ": the file would not mean what its template says; not written")
    }
}

/// The template data for a cluster, guarded: a member value holding an unsafe character
/// ([`is_unsafe_char`]) is replaced by a marker, random per model, which [`Model::check`] finds
/// in a rendered output however the template put it there (`{{x}}`, `{{{x}}}`, a helper, a
/// partial, a tag key through `@key`). A value that only steers the template (`if`, `filter`,
/// `sort`) and never reaches the output does no harm and is not refused.
#[derive(Debug, Clone)]
pub struct Model {
    data: Value,
    marker: String,
    unsafe_values: Vec<UnsafeValue>,
}

impl Model {
    /// Builds the guarded data for `cluster`.
    pub fn build(cluster: &Cluster, sel: &Selection) -> Model {
        let marker = format!("SHOALREFUSED{:016x}N", crate::output::random_u64());
        let mut guard = Guard { marker: Some(marker.clone()), values: Vec::new() };
        let data = build(cluster, sel, &mut guard);
        Model { data, marker, unsafe_values: guard.values }
    }

    /// What templates see.
    pub fn data(&self) -> &Value {
        &self.data
    }

    /// The member values with unsafe characters, whether or not an output holds them.
    pub fn unsafe_values(&self) -> &[UnsafeValue] {
        &self.unsafe_values
    }

    /// Refuses `output` if it holds any value replaced by a marker.
    pub fn check(&self, output: &str) -> Result<(), Refused> {
        if self.unsafe_values.is_empty() {
            return Ok(());
        }
        let mut seen = vec![false; self.unsafe_values.len()];
        let mut values = Vec::new();
        for (at, _) in output.match_indices(&self.marker) {
            let rest = &output[at + self.marker.len()..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if let Ok(i) = rest[..digits].parse::<usize>()
                && i < seen.len()
                && !std::mem::replace(&mut seen[i], true)
            {
                values.push(self.unsafe_values[i].clone());
            }
        }
        if values.is_empty() { Ok(()) } else { Err(Refused { values }) }
    }
}

impl From<Value> for Model {
    /// Data given as is (no member values to guard): every output passes [`Model::check`].
    fn from(data: Value) -> Model {
        Model { data, marker: String::new(), unsafe_values: Vec::new() }
    }
}

/// Replaces unsafe values by markers (when it has a marker) and remembers them.
struct Guard {
    marker: Option<String>,
    values: Vec<UnsafeValue>,
}

impl Guard {
    fn value(&mut self, member: &str, field: impl FnOnce() -> String, value: &str) -> String {
        let Some(marker) = &self.marker else { return value.to_string() };
        let Some(c) = value.chars().find(|c| is_unsafe_char(*c)) else { return value.to_string() };
        let found = UnsafeValue {
            member: escaped(member),
            field: field(),
            character: format!("U+{:04X}", u32::from(c)),
        };
        let i = self.values.iter().position(|v| *v == found).unwrap_or_else(|| {
            self.values.push(found);
            self.values.len() - 1
        });
        format!("{marker}{i}E")
    }
}

/// A member's values as templates see them.
struct Shown {
    name: String,
    status: String,
    role: String,
    tags: serde_json::Map<String, Value>,
}

fn shown(m: &MemberView, guard: &mut Guard) -> Shown {
    let name = guard.value(&m.name, || "name".into(), &m.name);
    let status = guard.value(&m.name, || "status".into(), &m.status);
    let mut role = String::new();
    let mut tags = serde_json::Map::new();
    for (k, v) in &m.tags {
        let key = guard.value(&m.name, || format!("tag key {}", escaped(k)), k);
        let value = guard.value(&m.name, || format!("tag {}", escaped(k)), v);
        if k == "role" {
            role.clone_from(&value);
        }
        tags.insert(key, Value::String(value));
    }
    Shown { name, status, role, tags }
}

/// Builds the template data for `cluster`, with its values as they are: what is written
/// should come from [`Model::build`], which refuses values that would change a file's meaning.
pub fn model(cluster: &Cluster, sel: &Selection) -> Value {
    build(cluster, sel, &mut Guard { marker: None, values: Vec::new() })
}

fn build(cluster: &Cluster, sel: &Selection, guard: &mut Guard) -> Value {
    let shown: Vec<Shown> = cluster.members.iter().map(|m| shown(m, guard)).collect();
    let backends: Vec<(&MemberView, &Shown)> = cluster
        .members
        .iter()
        .zip(&shown)
        .filter(|(m, _)| m.role() == sel.role && m.status == "alive")
        .collect();
    let addresses: Vec<Value> =
        backends.iter().map(|(m, s)| json!({ "host": s.name, "ip": m.addr.ip().to_string() })).collect();
    let backend_values: Vec<Value> = backends
        .iter()
        .map(|(m, s)| {
            let port =
                m.tags.get("port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0).unwrap_or(sel.port);
            let weight = m.tags.get("weight").and_then(|w| w.parse::<u32>().ok()).unwrap_or(1);
            json!({
                "name": s.name,
                "host": s.name,
                "ip": m.addr.ip().to_string(),
                "port": port,
                "addr": SocketAddr::new(m.addr.ip(), port).to_string(),
                "weight": weight,
                "status": s.status,
                "healthy": m.status == "alive",
                "role": s.role,
                "tags": s.tags,
            })
        })
        .collect();
    let members: Vec<Value> = cluster
        .members
        .iter()
        .zip(&shown)
        .map(|(m, s)| {
            json!({
                "name": s.name,
                "ip": m.addr.ip().to_string(),
                "port": m.addr.port(),
                "addr": m.addr.to_string(),
                "status": s.status,
                "role": s.role,
                "tags": s.tags,
            })
        })
        .collect();
    let mut data = serde_json::Map::new();
    data.insert("addresses".into(), addresses.into());
    data.insert("backends".into(), backend_values.into());
    data.insert("members".into(), members.into());
    if let Some(local) = &cluster.local {
        data.insert("local".into(), json!({ "name": guard.value(local, || "name".into(), local) }));
    }
    Value::Object(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn member(name: &str, ip: &str, status: &str, tags: &[(&str, &str)]) -> MemberView {
        MemberView {
            name: name.into(),
            addr: SocketAddr::new(ip.parse().unwrap(), 7946),
            status: status.into(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn addresses_are_the_alive_backends_and_details_come_along() {
        let cluster = Cluster {
            local: Some("ha".into()),
            members: vec![
                member("ha", "10.0.0.1", "alive", &[("role", "balancer")]),
                member("s1", "10.0.0.2", "alive", &[("role", "backend")]),
                member("s2", "10.0.0.3", "failed", &[("role", "backend")]),
                member("s3", "10.0.0.4", "alive", &[("role", "backend"), ("port", "8080"), ("weight", "5")]),
                member("s4", "10.0.0.5", "leaving", &[("role", "backend")]),
            ],
        };
        let m = model(&cluster, &Selection::default());
        assert_eq!(
            m["addresses"],
            json!([{ "host": "s1", "ip": "10.0.0.2" }, { "host": "s3", "ip": "10.0.0.4" }])
        );
        assert_eq!(m["backends"][1]["addr"], "10.0.0.4:8080");
        assert_eq!(m["backends"][1]["weight"], 5);
        assert_eq!(m["backends"][0]["port"], 3000);
        assert_eq!(m["members"].as_array().unwrap().len(), 5);
        assert_eq!(m["members"][2]["status"], "failed");
        assert_eq!(m["local"]["name"], "ha");
        // The reference's key order: host before ip.
        assert_eq!(m["addresses"][0].to_string(), r#"{"host":"s1","ip":"10.0.0.2"}"#);
    }

    #[test]
    fn honest_members_build_the_same_data_guarded_or_not() {
        let cluster = Cluster {
            local: Some("ha".into()),
            members: vec![
                member("ha", "10.0.0.1", "alive", &[("role", "balancer")]),
                member("web 1", "10.0.0.2", "alive", &[("role", "backend"), ("zone", "eu \"west\"")]),
            ],
        };
        let guarded = Model::build(&cluster, &Selection::default());
        assert_eq!(guarded.data(), &model(&cluster, &Selection::default()));
        assert!(guarded.unsafe_values().is_empty());
        assert_eq!(guarded.check("anything\n\tat all\r\n"), Ok(()), "the template's own controls are fine");
    }

    #[test]
    fn values_with_control_characters_are_marked_and_named() {
        let evil = "x\nprogram x\n  command /bin/touch /tmp/pwned";
        let cluster = Cluster {
            local: Some("ha".into()),
            members: vec![
                member(evil, "10.0.0.2", "alive", &[("role", "backend")]),
                member(
                    "s2",
                    "10.0.0.3",
                    "alive\r",
                    &[("role", "backend"), ("zone", "eu\nbind :1"), ("k\u{7f}", "v")],
                ),
                member("s3", "10.0.0.4", "alive", &[("role", "backend"), ("note", "line\u{2028}sep \u{85}")]),
            ],
        };
        let m = Model::build(&cluster, &Selection::default());
        let fields: Vec<String> = m.unsafe_values().iter().map(ToString::to_string).collect();
        assert_eq!(
            fields,
            [
                r#"member "x\nprogram x\n  command /bin/touch /tmp/pwned": its name holds a control character (U+000A)"#,
                r#"member "s2": its status holds a control character (U+000D)"#,
                r#"member "s2": its tag key "k\u{7f}" holds a control character (U+007F)"#,
                r#"member "s2": its tag "zone" holds a control character (U+000A)"#,
                r#"member "s3": its tag "note" holds a control character (U+2028)"#,
            ]
        );
        // Selection reads the real values: the members are still backends (s2's status is not
        // "alive", so it is not one); what templates see holds markers, never the characters.
        let data = m.data().to_string();
        assert!(!data.contains("program") && !data.contains('\u{7f}') && !data.contains("\\r"), "{data}");
        assert_eq!(m.data()["addresses"].as_array().unwrap().len(), 2);
        let marker = m.data()["addresses"][0]["host"].as_str().unwrap().to_string();
        assert!(marker.chars().all(|c| c.is_ascii_alphanumeric()), "{marker}");
        let err = m.check(&format!("server {marker} 10.0.0.2:3000\n")).unwrap_err();
        assert_eq!(err.values, [m.unsafe_values()[0].clone()]);
        assert!(err.to_string().ends_with("not written"), "{err}");
        // Several at once: named in the order they appear, each once.
        let zone = m.data()["members"][1]["tags"]["zone"].as_str().unwrap().to_string();
        let err = m.check(&format!("{zone} {marker} {zone}")).unwrap_err();
        assert_eq!(err.values.len(), 2);
        assert!(
            err.to_string().contains(r#"its tag "zone" holds"#) && err.to_string().contains("(and 1 more")
        );
        // Another model's markers are its own.
        let other = Model::build(&cluster, &Selection::default());
        assert_eq!(other.check(&marker), Ok(()));
    }

    #[test]
    fn names_in_messages_are_escaped_and_bounded() {
        assert_eq!(escaped("a\"b\\c\n\u{1b}[31m"), r#""a\"b\\c\n\u{1b}[31m""#);
        let long = escaped(&"é".repeat(1000));
        assert_eq!(long.chars().count(), 128 + 3);
        assert!(long.ends_with("é…\""), "{long}");
    }
}
