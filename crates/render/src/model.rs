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

/// Builds the template data for `cluster`.
pub fn model(cluster: &Cluster, sel: &Selection) -> Value {
    let backends: Vec<&MemberView> =
        cluster.members.iter().filter(|m| m.role() == sel.role && m.status == "alive").collect();
    let addresses: Vec<Value> =
        backends.iter().map(|m| json!({ "host": m.name, "ip": m.addr.ip().to_string() })).collect();
    let backend_values: Vec<Value> = backends
        .iter()
        .map(|m| {
            let port =
                m.tags.get("port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0).unwrap_or(sel.port);
            let weight = m.tags.get("weight").and_then(|w| w.parse::<u32>().ok()).unwrap_or(1);
            json!({
                "name": m.name,
                "host": m.name,
                "ip": m.addr.ip().to_string(),
                "port": port,
                "addr": SocketAddr::new(m.addr.ip(), port).to_string(),
                "weight": weight,
                "status": m.status,
                "healthy": m.status == "alive",
                "role": m.role(),
                "tags": m.tags,
            })
        })
        .collect();
    let members: Vec<Value> = cluster
        .members
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "ip": m.addr.ip().to_string(),
                "port": m.addr.port(),
                "addr": m.addr.to_string(),
                "status": m.status,
                "role": m.role(),
                "tags": m.tags,
            })
        })
        .collect();
    let mut data = serde_json::Map::new();
    data.insert("addresses".into(), addresses.into());
    data.insert("backends".into(), backend_values.into());
    data.insert("members".into(), members.into());
    if let Some(local) = &cluster.local {
        data.insert("local".into(), json!({ "name": local }));
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
}
