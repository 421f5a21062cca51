//! The RPC client commands (`members`, `join`, `event`, `query`, `keys`, …): the
//! Serf CLI's behaviour and output, against a Shoal or a Serf agent.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, bail};
use serde_json::json;
use shoal_rpc::RpcClient;
use shoal_rpc::protocol::{QueryRequest, RpcMember, cmd, query_record};

use crate::cli::*;

async fn connect(rpc: &RpcArgs) -> anyhow::Result<RpcClient> {
    RpcClient::connect(&rpc.rpc_addr, rpc.rpc_auth.as_deref())
        .await
        .with_context(|| format!("cannot reach the agent's RPC at {}", rpc.rpc_addr))
}

/// `KEY=VALUE` pairs into a map.
fn pairs(specs: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    specs
        .iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("invalid {what} {s:?}: expected KEY=VALUE"),
        })
        .collect()
}

fn member_addr(m: &RpcMember) -> String {
    let ip = match m.addr.len() {
        4 => <[u8; 4]>::try_from(m.addr.as_slice()).map(IpAddr::from).ok(),
        16 => <[u8; 16]>::try_from(m.addr.as_slice()).map(IpAddr::from).ok(),
        _ => None,
    };
    ip.map_or_else(|| "?".to_string(), |ip| SocketAddr::new(ip, m.port).to_string())
}

/// Member data from the agent (a Serf agent may hold names Shoal refuses), escaped for one
/// line of a terminal: control characters and backslashes as `\n`, `\u{1b}`, …
fn text(s: &str) -> String {
    shoal_gossip::escape::control(s).into_owned()
}

fn tags_text(tags: &BTreeMap<String, String>) -> String {
    tags.iter().map(|(k, v)| format!("{}={}", text(k), text(v))).collect::<Vec<_>>().join(",")
}

/// Prints rows as aligned columns separated by two spaces.
fn print_columns(rows: &[Vec<String>]) {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..width)
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = std::io::stdout().lock();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

pub async fn members(a: MembersArgs) -> anyhow::Result<()> {
    let mut c = connect(&a.rpc).await?;
    let filtered = a.status.is_some() || !a.tags.is_empty() || a.name.is_some();
    let mut members = if filtered {
        let tags = pairs(&a.tags, "tag filter")?;
        c.members_filtered(tags, a.status.as_deref().unwrap_or(""), a.name.as_deref().unwrap_or("")).await?
    } else {
        c.members().await?
    };
    members.sort_by(|x, y| x.name.cmp(&y.name));
    match a.format {
        Format::Json => {
            let list: Vec<_> = members
                .iter()
                .map(|m| {
                    json!({
                        "name": m.name,
                        "addr": member_addr(m),
                        "port": m.port,
                        "tags": m.tags,
                        "status": m.status,
                        // A Go map: its keys come out sorted.
                        "protocol": {"max": m.delegate_max, "min": m.delegate_min, "version": m.delegate_cur},
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&json!({ "members": list }))?);
        }
        Format::Text => {
            let rows: Vec<Vec<String>> = members
                .iter()
                .map(|m| {
                    let mut row = vec![text(&m.name), member_addr(m), text(&m.status), tags_text(&m.tags)];
                    if a.detailed {
                        row.push(format!(
                            "protocol={}/{}/{} delegate={}/{}/{}",
                            m.protocol_min,
                            m.protocol_max,
                            m.protocol_cur,
                            m.delegate_min,
                            m.delegate_max,
                            m.delegate_cur
                        ));
                    }
                    row
                })
                .collect();
            print_columns(&rows);
        }
    }
    Ok(())
}

pub async fn join(a: JoinArgs) -> anyhow::Result<()> {
    let mut c = connect(&a.rpc).await?;
    let n = c.join(&a.addresses, a.replay).await.context("join failed")?;
    println!("Successfully joined cluster by contacting {n} nodes.");
    Ok(())
}

pub async fn leave(a: RpcArgs) -> anyhow::Result<()> {
    let mut c = connect(&a).await?;
    c.leave().await.context("leave failed")?;
    println!("Graceful leave complete");
    Ok(())
}

pub async fn force_leave(a: ForceLeaveArgs) -> anyhow::Result<()> {
    let mut c = connect(&a.rpc).await?;
    c.force_leave(&a.node, a.prune).await.context("force-leave failed")?;
    Ok(())
}

pub async fn event(a: EventArgs) -> anyhow::Result<()> {
    let mut c = connect(&a.rpc).await?;
    let payload = a.payload.unwrap_or_default();
    c.user_event(&a.name, payload.as_bytes(), !a.no_coalesce).await.context("event failed")?;
    println!("Event '{}' dispatched! Coalescing enabled: {}", a.name, !a.no_coalesce);
    Ok(())
}

pub async fn query(a: QueryArgs) -> anyhow::Result<()> {
    let mut c = connect(&a.rpc).await?;
    let req = QueryRequest {
        filter_nodes: a.nodes.clone(),
        filter_tags: pairs(&a.tags, "tag filter")?,
        request_ack: !a.no_ack,
        relay_factor: a.relay_factor,
        timeout: a.timeout.map_or(0, |t| i64::try_from(t.as_nanos()).unwrap_or(i64::MAX)),
        name: a.name.clone(),
        payload: a.payload.clone().unwrap_or_default().into_bytes(),
    };
    let seq = c.query(req).await.context("query failed")?;
    let text = a.format == Format::Text;
    if text {
        println!("Query '{}' dispatched", a.name);
    }
    let (mut acks, mut responses) = (Vec::new(), BTreeMap::new());
    loop {
        let r = c.next_query_record(seq).await?;
        match r.kind.as_str() {
            query_record::ACK => {
                if text {
                    println!("Ack from '{}'", r.from);
                }
                acks.push(r.from);
            }
            query_record::RESPONSE => {
                let payload = String::from_utf8_lossy(&r.payload).into_owned();
                if text {
                    println!("Response from '{}': {}", r.from, payload.trim_end());
                }
                responses.insert(r.from, payload);
            }
            _ => break,
        }
    }
    if text {
        if !a.no_ack {
            println!("Total Acks: {}", acks.len());
        }
        println!("Total Responses: {}", responses.len());
    } else {
        println!("{}", serde_json::to_string_pretty(&json!({ "Acks": acks, "Responses": responses }))?);
    }
    Ok(())
}

pub async fn tags(a: TagsArgs) -> anyhow::Result<()> {
    if a.set.is_empty() && a.delete.is_empty() {
        bail!("nothing to do: give --set KEY=VALUE and/or --delete KEY");
    }
    let mut c = connect(&a.rpc).await?;
    c.update_tags(pairs(&a.set, "tag")?, a.delete).await.context("tags update failed")?;
    println!("Successfully updated agent tags");
    Ok(())
}

pub async fn monitor(a: MonitorArgs, level: &str) -> anyhow::Result<()> {
    let mut c = connect(&a.rpc).await?;
    let level = match level.to_ascii_lowercase().as_str() {
        "error" | "err" => "ERR",
        "warn" => "WARN",
        "debug" => "DEBUG",
        "trace" => "TRACE",
        _ => "INFO",
    };
    let seq = c.monitor(level).await.context("monitor failed")?;
    loop {
        tokio::select! {
            line = c.next_log(seq) => println!("{}", line?),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

pub async fn keys(a: KeysArgs) -> anyhow::Result<()> {
    let mut c = connect(&a.rpc).await?;
    let (command, key, verb) = match (&a.action.install, &a.action.use_key, &a.action.remove) {
        (Some(k), _, _) => (cmd::INSTALL_KEY, Some(k.as_str()), "Installing key"),
        (_, Some(k), _) => (cmd::USE_KEY, Some(k.as_str()), "Changing primary key"),
        (_, _, Some(k)) => (cmd::REMOVE_KEY, Some(k.as_str()), "Removing key"),
        _ => (cmd::LIST_KEYS, None, "Gathering installed encryption keys"),
    };
    println!("{verb}...");
    let (resp, error) = c.key(command, key).await?;
    for (node, msg) in &resp.messages {
        println!("\t{node}: {msg}");
    }
    if !error.is_empty() {
        bail!("{error}");
    }
    if command == cmd::LIST_KEYS {
        println!("\nKeys gathered, listing cluster keys...\n");
        let rows: Vec<Vec<String>> =
            resp.keys.iter().map(|(k, n)| vec![k.clone(), format!("[{n}/{}]", resp.num_nodes)]).collect();
        print_columns(&rows);
    } else {
        println!("Success! ({} of {} nodes)", resp.num_resp, resp.num_nodes);
    }
    Ok(())
}

pub async fn info(a: InfoArgs) -> anyhow::Result<()> {
    let mut c = connect(&a.rpc).await?;
    let stats = c.stats().await?;
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&stats)?),
        Format::Text => {
            for (section, values) in &stats {
                println!("{section}:");
                for (k, v) in values {
                    println!("\t{k} = {v}");
                }
            }
        }
    }
    Ok(())
}

/// Serf's hints after a reachability test that missed or doubled acks.
const TOO_MANY_ACKS: &str =
    "This could mean Serf is detecting false-failures due to a misconfiguration or network issue.";
const TOO_FEW_ACKS: &str =
    "This could mean Serf gossip packets are being lost due to a misconfiguration or network issue.";
const DUPLICATES: &str =
    "Duplicate responses means there is a misconfiguration. Verify that node names are unique.";
const TROUBLESHOOTING: &str = "
Troubleshooting tips:
* Ensure that the bind addr:port is accessible by all other nodes
* If an advertise address is set, ensure it routes to the bind address
* Check that no nodes are behind a NAT
* If nodes are behind firewalls or iptables, check that Serf traffic is permitted (UDP and TCP)
* Verify networking equipment is functional";

/// `shoal reachability`: Serf's internal `_serf_ping` query with acks, compared with the live
/// members; exit status 1 when an ack is missing, extra or doubled. Output as `serf reachability`.
pub async fn reachability(a: ReachabilityArgs) -> anyhow::Result<()> {
    let mut c = connect(&a.rpc).await?;
    let members = c.members().await.context("Error getting members")?;
    let live: std::collections::BTreeSet<String> =
        members.iter().filter(|m| m.status == "alive").map(|m| m.name.clone()).collect();
    println!("Total members: {}, live members: {}", members.len(), live.len());
    let req = QueryRequest { request_ack: true, name: "_serf_ping".into(), ..QueryRequest::default() };
    let seq = c.query(req).await.context("Error sending query")?;
    println!("Starting reachability test...");
    let start = std::time::Instant::now();
    let mut last = start;
    let mut acks = std::collections::BTreeSet::new();
    let (mut count, mut duplicates) = (0usize, false);
    loop {
        let r = c.next_query_record(seq).await?;
        if r.kind != query_record::ACK {
            if r.kind == query_record::RESPONSE {
                continue;
            }
            break;
        }
        if a.verbose {
            println!("\tAck from '{}'", text(&r.from));
        }
        count += 1;
        if !acks.insert(r.from.clone()) {
            duplicates = true;
            println!("Duplicate response from '{}'", text(&r.from));
        }
        last = std::time::Instant::now();
    }
    if a.verbose {
        println!(
            "Query time: {:.2} sec, time to last response: {:.2} sec",
            start.elapsed().as_secs_f64(),
            (last - start).as_secs_f64()
        );
    }
    if duplicates {
        println!("{DUPLICATES}");
    }
    let failed = match count.cmp(&live.len()) {
        std::cmp::Ordering::Equal => {
            println!("Successfully contacted all live nodes");
            duplicates
        }
        std::cmp::Ordering::Greater => {
            println!("Received more acks than live nodes! Acks from non-live nodes:");
            for m in acks.difference(&live) {
                println!("\t{}", text(m));
            }
            println!("{TOO_MANY_ACKS}\n{TROUBLESHOOTING}");
            true
        }
        std::cmp::Ordering::Less => {
            println!("Received less acks than live nodes! Missing acks from:");
            for m in live.difference(&acks) {
                println!("\t{}", text(m));
            }
            println!("{TOO_FEW_ACKS}\n{TROUBLESHOOTING}");
            true
        }
    };
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// `shoal rtt A [B]`: the distance between two members' Vivaldi coordinates (B defaults to the
/// agent itself), as `serf rtt` prints it.
pub async fn rtt(a: RttArgs) -> anyhow::Result<()> {
    let mut c = connect(&a.rpc).await?;
    let mut nodes = a.nodes.clone();
    if nodes.len() == 1 {
        let stats = c.stats().await.context("Error querying agent")?;
        let me = stats
            .get("agent")
            .and_then(|s| s.get("name"))
            .cloned()
            .context("the agent did not say its name")?;
        nodes.push(me);
    }
    let mut coords = Vec::new();
    for node in &nodes {
        let r = c.get_coordinate(node).await.context("Error getting coordinates")?;
        if !r.ok {
            bail!("Could not find a coordinate for node {:?}", text(node));
        }
        coords.push(r.coord);
    }
    let ms = coords[0].distance_to(&coords[1]).as_secs_f64() * 1000.0;
    println!("Estimated {} <-> {} rtt: {ms:.3} ms", text(&nodes[0]), text(&nodes[1]));
    Ok(())
}

/// `shoal keygen`: a fresh 32-byte key from the kernel's random source, in base64.
pub fn keygen() -> anyhow::Result<()> {
    use std::io::Read as _;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .context("cannot read /dev/urandom")?;
    println!("{}", shoal_gossip::encode_key(&key));
    Ok(())
}
