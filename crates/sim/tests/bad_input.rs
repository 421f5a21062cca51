//! Hostile and broken input: every bad datagram or stream is dropped and counted by reason,
//! nothing panics, and the member's view of the cluster does not change.

use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_gossip::envelope::make_compound;
use shoal_gossip::{Config, DropReason, Event, Gossip, MemberStatus, Profile};
use shoal_sim::Sim;

const KEY: [u8; 16] = [9; 16];

/// A converged, encrypted three-member cluster with captured real traffic.
fn cluster(keys: bool) -> (Sim, Vec<Vec<u8>>) {
    let mut sim = Sim::new(21);
    for i in 0..3 {
        let mut cfg = Config::new(format!("node-{i}"), Sim::addr_for(i), Profile::Fast);
        if keys {
            cfg.keys = vec![KEY.to_vec()];
        }
        sim.add_node_with(cfg);
    }
    sim.capture = true;
    sim.join(1, 0);
    sim.join(2, 0);
    sim.with(1, |g, now| g.user_event(now, "deploy", b"v1", false)).unwrap();
    sim.run_until(Duration::from_millis(50), Duration::from_secs(10), Sim::converged).expect("converges");
    sim.run_for(Duration::from_secs(1));
    sim.capture = false;
    let captured = std::mem::take(&mut sim.captured);
    assert!(captured.len() > 20);
    (sim, captured)
}

type View = Vec<(String, MemberStatus, SocketAddr, Vec<(String, String)>)>;

fn view(g: &Gossip) -> View {
    let mut v: View = g
        .members()
        .map(|m| {
            let tags = m.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            (m.name.to_string(), m.status, m.addr, tags)
        })
        .collect();
    v.sort();
    v
}

fn dropped(g: &Gossip, reason: DropReason) -> u64 {
    g.stats().dropped.get(&reason).copied().unwrap_or(0)
}

/// Feeds `packets` to node 0 from a stranger's address and checks the view did not move.
fn feed(sim: &mut Sim, packets: &[Vec<u8>]) {
    let before = view(sim.gossip(0));
    let from: SocketAddr = "10.9.9.9:7946".parse().unwrap();
    for p in packets {
        sim.with(0, |g, now| g.handle_packet(now, from, p));
    }
    assert_eq!(view(sim.gossip(0)), before, "bad input changed the view");
}

#[test]
fn random_garbage_is_dropped_and_counted() {
    for keys in [false, true] {
        let (mut sim, _) = cluster(keys);
        let mut rng = StdRng::seed_from_u64(5);
        let garbage: Vec<Vec<u8>> = (0..20_000)
            .map(|_| {
                let len = rng.random_range(0..1500);
                (0..len).map(|_| rng.random::<u8>()).collect()
            })
            .collect();
        let before = sim.gossip(0).stats().dropped_total();
        feed(&mut sim, &garbage);
        let after = sim.gossip(0).stats().dropped_total();
        assert!(after - before >= 19_000, "keys={keys}: only {} of 20000 dropped", after - before);
        if keys {
            assert!(dropped(sim.gossip(0), DropReason::Decrypt) >= 19_000);
        }
    }
}

#[test]
fn every_truncation_of_real_traffic_is_harmless() {
    let (mut sim, captured) = cluster(false);
    let mut cuts = Vec::new();
    for p in captured.iter().take(40) {
        for len in 0..p.len() {
            cuts.push(p[..len].to_vec());
        }
    }
    feed(&mut sim, &cuts);
    let g = sim.gossip(0);
    assert!(dropped(g, DropReason::Truncated) + dropped(g, DropReason::Malformed) > 0);
}

#[test]
fn flipped_bits_fail_the_checksum_or_authentication() {
    for keys in [false, true] {
        let (mut sim, captured) = cluster(keys);
        let mut rng = StdRng::seed_from_u64(6);
        let flipped: Vec<Vec<u8>> = captured
            .iter()
            .filter(|p| keys || p.first() == Some(&12)) // plaintext: only CRC-protected packets
            .take(200)
            .map(|p| {
                let mut p = p.clone();
                let i = rng.random_range(if keys { 13 } else { 5 }..p.len());
                p[i] ^= 1 << rng.random_range(0..8);
                p
            })
            .collect();
        assert!(!flipped.is_empty());
        feed(&mut sim, &flipped);
        let reason = if keys { DropReason::Decrypt } else { DropReason::Checksum };
        assert_eq!(dropped(sim.gossip(0), reason), flipped.len() as u64, "keys={keys}");
    }
}

#[test]
fn wrong_key_and_plaintext_are_refused_by_an_encrypted_member() {
    let (mut sim, _) = cluster(true);
    let (mut other, captured) = cluster(false);
    let _ = &mut other;
    feed(&mut sim, &captured);
    assert_eq!(dropped(sim.gossip(0), DropReason::Decrypt), captured.len() as u64);

    // Traffic sealed with another key.
    let mut cfg = Config::new("stranger", "10.9.9.9:7946".parse().unwrap(), Profile::Fast);
    cfg.keys = vec![vec![1u8; 32]];
    let mut stranger = Gossip::new(cfg, sim.now(), 3).unwrap();
    stranger.join(sim.now(), &[Sim::addr_for(0)], false);
    let mut sealed = Vec::new();
    while let Some(out) = stranger.poll_output() {
        if let shoal_gossip::Output::Stream(req) = out {
            let reply =
                sim.with(0, |g, now| g.handle_stream(now, "10.9.9.9:7946".parse().unwrap(), &req.data));
            sealed.push(reply);
        }
    }
    assert_eq!(sealed.len(), 1);
    assert!(sealed[0].is_some(), "a refused stream gets an error reply");
    assert!(sim.gossip(0).member("stranger").is_none());
}

#[test]
fn unknown_types_and_oversized_claims_are_refused() {
    let (mut sim, captured) = cluster(false);
    let unknown = vec![vec![200u8, 1, 2, 3], vec![12, 0, 0, 0, 0], vec![8, 42, 0x80]];
    feed(&mut sim, &unknown);
    assert!(dropped(sim.gossip(0), DropReason::UnknownType) >= 2);

    // A compound whose parts claim more bytes than exist.
    let mut liar = make_compound(&[&captured[0], &captured[1]]);
    liar[2] = 0xff;
    liar[3] = 0xff;
    // Compounds nested beyond any sane depth.
    let mut nested = vec![0u8, 1, 2];
    for _ in 0..10 {
        nested = make_compound(&[&nested]);
    }
    feed(&mut sim, &[liar, nested]);
    assert!(dropped(sim.gossip(0), DropReason::TooDeep) >= 1);

    // A stream announcing a 100 MB encrypted message is refused before it is read.
    let mut huge = vec![10u8];
    huge.extend_from_slice(&100_000_000u32.to_be_bytes());
    assert_eq!(shoal_gossip::stream_frame_len(&huge, 20 << 20), Err(DropReason::Oversized));
}

#[test]
fn a_ping_for_another_name_is_not_answered() {
    let (mut sim, _) = cluster(false);
    let ping = shoal_gossip::mp::encode_with_type(
        shoal_gossip::messages::kind::PING,
        &shoal_gossip::messages::Ping { seq_no: 1, node: "someone-else".into(), ..Default::default() },
    );
    sim.with(0, |g, now| g.handle_packet(now, "10.9.9.9:7946".parse().unwrap(), &ping));
    assert_eq!(dropped(sim.gossip(0), DropReason::WrongNode), 1);
}

#[test]
fn labelled_clusters_do_not_mix() {
    let mut sim = Sim::new(22);
    for (i, label) in [(0, "blue"), (1, "blue"), (2, "green")] {
        let mut cfg = Config::new(format!("node-{i}"), Sim::addr_for(i), Profile::Fast);
        cfg.label = Some(label.to_string());
        sim.add_node_with(cfg);
    }
    sim.join(1, 0);
    sim.join(2, 0);
    sim.run_for(Duration::from_secs(3));
    assert_eq!(sim.gossip(0).alive_count(), 2);
    assert_eq!(sim.gossip(2).alive_count(), 1);
    assert!(sim.gossip(0).member("node-2").is_none());
    assert!(dropped(sim.gossip(0), DropReason::Label) >= 1);
}

// ------------------------------------------------------------------ forged and replayed gossip
//
// Memberlist and Serf authenticate nothing but the cluster key: whoever holds it (or, without
// encryption, anyone) can claim anything. The defences are the protocol's own: a member refutes
// news about itself, an address already held by a live member is not taken over, and news
// older than what is known (a lower incarnation, an older Lamport time) changes nothing.

const STRANGER: &str = "10.9.9.9:7946";

fn alive_packet(
    node: &str,
    addr: SocketAddr,
    incarnation: u32,
    tags: &[(&str, &str)],
    g: &Gossip,
) -> Vec<u8> {
    let tags: shoal_gossip::Tags = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let versions = g.member(node).map_or([1, 5, 2, 2, 5, 5], |m| m.versions);
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    let alive = shoal_gossip::messages::Alive {
        incarnation,
        node: node.into(),
        addr: ip,
        port: addr.port(),
        meta: shoal_gossip::encode_tags(&tags),
        vsn: versions.to_vec(),
    };
    shoal_gossip::mp::encode_with_type(shoal_gossip::messages::kind::ALIVE, &alive)
}

fn role_seen(sim: &Sim, i: usize, node: &str) -> Option<String> {
    sim.gossip(i).member(node).and_then(|m| m.tags.get("role").cloned())
}

#[test]
fn a_forged_alive_for_another_member_is_refuted_by_that_member() {
    let (mut sim, _) = cluster(false);
    let before = view(sim.gossip(0));
    // A stranger claims node-1 (at its real address) with a much higher incarnation and new tags.
    let forged = alive_packet("node-1", Sim::addr_for(1), 1000, &[("role", "evil")], sim.gossip(0));
    sim.with(0, |g, now| g.handle_packet(now, STRANGER.parse().unwrap(), &forged));
    assert_eq!(role_seen(&sim, 0, "node-1").as_deref(), Some("evil"), "the forgery lands at first");
    // node-1 hears the rumour about itself, refutes it with a higher incarnation, and wins.
    sim.run_until(Duration::from_millis(50), Duration::from_secs(10), |s| {
        (0..3).all(|i| role_seen(s, i, "node-1").is_none())
    })
    .expect("node-1's refutation reaches every member");
    sim.run_for(Duration::from_secs(2));
    assert_eq!(view(sim.gossip(0)), before, "the view is back to the truth");
    for i in 0..3 {
        assert_eq!(sim.gossip(i).member("node-1").unwrap().status, MemberStatus::Alive, "node {i}");
    }
}

#[test]
fn a_claim_to_another_members_name_from_another_address_is_refused() {
    let (mut sim, _) = cluster(false);
    sim.record(0);
    let before = view(sim.gossip(0));
    let thief: SocketAddr = STRANGER.parse().unwrap();
    // Someone else's name, and our own name, each claimed from the thief's address.
    let theirs = alive_packet("node-1", thief, 1000, &[], sim.gossip(0));
    let ours = alive_packet("node-0", thief, 1000, &[], sim.gossip(0));
    sim.with(0, |g, now| {
        g.handle_packet(now, thief, &theirs);
        g.handle_packet(now, thief, &ours);
    });
    assert_eq!(view(sim.gossip(0)), before, "no member changes address");
    assert!(
        sim.node(0).events.iter().any(|(_, e)| *e == Event::NameConflict { other: thief }),
        "the member reports that its own name is claimed elsewhere"
    );
    sim.run_for(Duration::from_secs(3));
    for i in 0..3 {
        assert_eq!(sim.gossip(i).member("node-1").unwrap().addr, Sim::addr_for(1), "node {i}");
        assert_eq!(sim.gossip(i).member("node-0").unwrap().addr, Sim::addr_for(0), "node {i}");
    }
}

#[test]
fn a_forged_leave_intent_is_refuted_by_the_member_itself() {
    let (mut sim, _) = cluster(false);
    let before = view(sim.gossip(0));
    let leave = shoal_gossip::messages::SerfLeave { ltime: 10_000, node: "node-1".into(), prune: false };
    let mut forged = vec![shoal_gossip::messages::kind::USER, shoal_gossip::messages::serf_kind::LEAVE];
    shoal_gossip::mp::Wire::put(&leave, &mut forged);
    sim.with(0, |g, now| g.handle_packet(now, STRANGER.parse().unwrap(), &forged));
    assert_eq!(sim.gossip(0).member("node-1").unwrap().status, MemberStatus::Leaving, "the forgery lands");
    sim.run_until(Duration::from_millis(50), Duration::from_secs(10), |s| {
        s.count_seeing("node-1", MemberStatus::Alive) == 3
    })
    .expect("node-1 refutes the leave with a newer join intent");
    sim.run_for(Duration::from_secs(2));
    assert_eq!(view(sim.gossip(0)), before);
}

#[test]
fn replayed_old_gossip_changes_nothing() {
    // Traffic recorded while node-2 joins (alive messages, join intents, a user event) and while
    // it leaves (its own death notice, its leave intent)...
    let (mut sim, mut recorded) = cluster(false);
    sim.capture = true;
    sim.with(2, |g, now| g.leave(now));
    sim.run_until(Duration::from_millis(50), Duration::from_secs(20), |s| {
        (0..2).all(|i| s.gossip(i).member("node-2").is_some_and(|m| m.status == MemberStatus::Left))
    })
    .expect("node-2 has left");
    sim.run_for(Duration::from_secs(1));
    sim.capture = false;
    recorded.append(&mut sim.captured);
    // ... then node-2 comes back as a new process (it refutes its old death: a higher
    // incarnation, a newer Lamport time).
    sim.crash(2);
    sim.restart(2);
    sim.join(2, 0);
    sim.run_until(Duration::from_millis(50), Duration::from_secs(20), Sim::converged)
        .expect("node-2 is back");
    sim.run_for(Duration::from_secs(1));
    sim.record(0);
    let before = view(sim.gossip(0));
    assert_eq!(sim.gossip(0).member("node-2").unwrap().status, MemberStatus::Alive);

    // Replaying all of it, oldest first, changes nothing: no one dies or leaves again, no event
    // is delivered twice.
    feed(&mut sim, &recorded);
    sim.run_for(Duration::from_secs(3));
    assert_eq!(view(sim.gossip(0)), before, "replayed gossip moved the view");
    for i in 0..3 {
        assert_eq!(sim.count_seeing(&format!("node-{i}"), MemberStatus::Alive), 3, "node-{i}");
    }
    let events: Vec<&Event> = sim.node(0).events.iter().map(|(_, e)| e).collect();
    assert!(
        !events.iter().any(|e| matches!(e, Event::Member { .. } | Event::User(_))),
        "replayed gossip raised events: {events:?}"
    );
}
