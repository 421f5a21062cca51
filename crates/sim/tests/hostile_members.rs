//! A hostile member on the gossip port: crafted `alive` claims, forged Serf intents and
//! clocks, queries built to burn CPU. Each test asserts what the honest members end up
//! seeing: who is in the view, with which status, and that the cluster still converges.

use std::net::SocketAddr;
use std::time::Duration;

use shoal_gossip::messages::{self as msg, filter_kind, kind, serf_kind};
use shoal_gossip::mp::{self, Wire};
use shoal_gossip::{Config, DropReason, Gossip, MemberStatus, Profile, Tags, encode_tags};
use shoal_sim::Sim;

const ROGUE: &str = "10.66.6.6:7946";

fn cluster(seed: u64) -> Sim {
    let mut sim = Sim::new(seed);
    for i in 0..3 {
        let mut cfg = Config::new(format!("node-{i}"), Sim::addr_for(i), Profile::Fast);
        cfg.tags = Tags::from([("role".into(), "backend".into())]);
        sim.add_node_with(cfg);
    }
    sim.join(1, 0);
    sim.join(2, 0);
    sim.run_until(Duration::from_millis(50), Duration::from_secs(10), Sim::converged).expect("converges");
    sim
}

fn dropped(g: &Gossip, reason: DropReason) -> u64 {
    g.stats().dropped.get(&reason).copied().unwrap_or(0)
}

fn status(sim: &Sim, i: usize, name: &str) -> Option<MemberStatus> {
    sim.gossip(i).member(name).map(|m| m.status)
}

fn send(sim: &mut Sim, to: usize, packet: &[u8]) {
    let from: SocketAddr = ROGUE.parse().unwrap();
    sim.with(to, |g, now| g.handle_packet(now, from, packet));
}

fn alive(name: &str, addr: [u8; 4], meta: Vec<u8>) -> Vec<u8> {
    let a = msg::Alive {
        incarnation: 1,
        node: name.into(),
        addr: addr.to_vec(),
        port: 7946,
        meta,
        vsn: vec![1, 5, 2, 2, 5, 5],
    };
    mp::encode_with_type(kind::ALIVE, &a)
}

fn serf<T: Wire>(ty: u8, m: &T) -> Vec<u8> {
    let mut p = vec![kind::USER, ty];
    m.put(&mut p);
    p
}

fn tags(pairs: &[(&str, &str)]) -> Vec<u8> {
    encode_tags(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

#[test]
fn members_whose_claims_could_become_code_are_not_admitted() {
    let mut sim = cluster(31);
    let claims = [
        alive("x\nprogram pwn\n  command /bin/touch /tmp/pwned", [10, 0, 0, 9], tags(&[("role", "backend")])),
        alive("x\r\nX-Injected: yes", [10, 0, 0, 9], tags(&[("role", "backend")])),
        alive("../../etc/cron.d/x", [10, 0, 0, 9], tags(&[("role", "backend")])),
        alive("tagged", [10, 0, 0, 9], tags(&[("role", "backend\n  stats socket /tmp/s level admin")])),
        alive("eq-key", [10, 0, 0, 9], tags(&[("a=b", "c")])),
        alive("fat", [10, 0, 0, 9], tags(&[("blob", &"x".repeat(600))])),
        alive("garbled", [10, 0, 0, 9], vec![0xff, 0xc1, 0x00]),
        alive("nowhere", [0, 0, 0, 0], tags(&[("role", "backend")])),
        alive("everyone", [255, 255, 255, 255], tags(&[("role", "backend")])),
    ];
    // Each claim arrives many times, as gossip would repeat it.
    for _ in 0..50 {
        for c in &claims {
            send(&mut sim, 0, c);
        }
    }
    let g = sim.gossip(0);
    assert_eq!(g.members().count(), 3, "only the three honest members are in the view");
    assert_eq!(dropped(g, DropReason::Refused), 50 * claims.len() as u64);
    // An honest newcomer in the same breath is admitted, and the cluster still converges.
    send(&mut sim, 0, &alive("honest-4", [10, 0, 0, 4], tags(&[("role", "backend")])));
    assert_eq!(status(&sim, 0, "honest-4"), Some(MemberStatus::Alive));
    sim.run_for(Duration::from_secs(2));
    for i in 0..3 {
        assert_eq!(status(&sim, i, "node-0"), Some(MemberStatus::Alive));
        assert!(sim.gossip(i).members().all(|m| shoal_gossip::limits::check_name(&m.name).is_ok()));
    }
}

#[test]
fn a_bad_update_from_a_known_member_keeps_its_last_good_claim() {
    let mut sim = cluster(32);
    let std::net::IpAddr::V4(ip) = Sim::addr_for(2).ip() else { unreachable!("the simulation uses IPv4") };
    let update = msg::Alive {
        incarnation: 50,
        node: "node-2".into(),
        addr: ip.octets().to_vec(),
        port: Sim::addr_for(2).port(),
        meta: tags(&[("role", "backend\nuse_backend evil")]),
        vsn: vec![1, 5, 2, 2, 5, 5],
    };
    send(&mut sim, 0, &mp::encode_with_type(kind::ALIVE, &update));
    let m = sim.gossip(0).member("node-2").unwrap();
    assert_eq!(m.tags.get("role").map(String::as_str), Some("backend"));
    assert_eq!(dropped(sim.gossip(0), DropReason::Refused), 1);
}

#[test]
fn a_forged_prune_cannot_erase_a_live_member() {
    let mut sim = cluster(33);
    let ltime = sim.gossip(0).clocks().0 + 10;
    let forged = msg::SerfLeave { ltime, node: "node-2".into(), prune: true };
    send(&mut sim, 0, &serf(serf_kind::LEAVE, &forged));
    assert!(sim.gossip(0).member("node-2").is_some(), "a live member is never pruned");
    // The intent spreads, node-2 hears it and refutes; everyone ends with it alive.
    sim.run_until(Duration::from_millis(50), Duration::from_secs(10), |s| {
        (0..3).all(|i| status(s, i, "node-2") == Some(MemberStatus::Alive))
    })
    .expect("node-2 refutes the forged leave everywhere");
}

#[test]
fn a_leave_stamped_at_the_end_of_time_is_refused_and_no_clock_wraps() {
    let mut sim = cluster(34);
    for ltime in [u64::MAX, u64::MAX / 2 + 1, sim.gossip(0).clocks().0 + (1 << 24) + 1] {
        let forged = msg::SerfLeave { ltime, node: "node-2".into(), prune: false };
        send(&mut sim, 0, &serf(serf_kind::LEAVE, &forged));
        let event = msg::SerfUserEvent { ltime, name: "deploy".into(), payload: vec![], cc: false };
        send(&mut sim, 0, &serf(serf_kind::USER_EVENT, &event));
    }
    let g = sim.gossip(0);
    assert_eq!(dropped(g, DropReason::Forged), 6);
    assert_eq!(status(&sim, 0, "node-2"), Some(MemberStatus::Alive));
    let (clock, event_clock, _) = sim.gossip(0).clocks();
    assert!(clock < 1000 && event_clock < 1000, "clocks stayed put: {clock} {event_clock}");

    // A leave stamped far ahead but within the horizon is the refutable kind: node-2 wins.
    let ahead = sim.gossip(0).clocks().0 + (1 << 20);
    send(
        &mut sim,
        0,
        &serf(serf_kind::LEAVE, &msg::SerfLeave { ltime: ahead, node: "node-2".into(), prune: false }),
    );
    assert_eq!(status(&sim, 0, "node-2"), Some(MemberStatus::Leaving));
    sim.run_until(Duration::from_millis(50), Duration::from_secs(10), |s| {
        (0..3).all(|i| status(s, i, "node-2") == Some(MemberStatus::Alive))
    })
    .expect("node-2 refutes a leave stamped ahead of its clock");
}

#[test]
fn a_suspicion_with_an_exhausted_incarnation_is_refused() {
    let mut sim = cluster(35);
    let forged = msg::Suspect { incarnation: u32::MAX, node: "node-2".into(), from: "node-1".into() };
    send(&mut sim, 0, &mp::encode_with_type(kind::SUSPECT, &forged));
    let dead = msg::Dead { incarnation: u32::MAX, node: "node-1".into(), from: "node-0".into() };
    send(&mut sim, 0, &mp::encode_with_type(kind::DEAD, &dead));
    assert_eq!(dropped(sim.gossip(0), DropReason::Forged), 2);
    sim.run_for(Duration::from_secs(5));
    for i in 0..3 {
        for n in 0..3 {
            assert_eq!(status(&sim, i, &format!("node-{n}")), Some(MemberStatus::Alive), "view {i}");
        }
    }
}

fn query(ltime: u64, filters: Vec<Vec<u8>>) -> Vec<u8> {
    let q = msg::SerfQuery {
        ltime,
        id: ltime as u32,
        addr: vec![10, 66, 6, 6],
        port: 7946,
        source_node: "rogue".into(),
        filters,
        flags: msg::QUERY_FLAG_ACK,
        relay_factor: 0,
        timeout: 1_000_000_000,
        name: "load".into(),
        payload: vec![],
    };
    serf(serf_kind::QUERY, &q)
}

fn tag_filter(tag: &str, expr: &str) -> Vec<u8> {
    let mut f = vec![filter_kind::TAG];
    msg::FilterTag { tag: tag.into(), expr: expr.into() }.put(&mut f);
    f
}

#[test]
fn queries_with_hostile_filters_go_no_further() {
    let mut sim = cluster(36);
    let base = sim.gossip(0).clocks().2;
    let acks_before = sim.gossip(0).stats().packets_sent;
    // Too many filters; Unicode classes; a pattern past the length limit; one that does not compile.
    let hostile = [
        query(base + 1, vec![tag_filter("role", r"\w{0,50}x"); 100]),
        query(base + 2, vec![tag_filter("role", r"\p{L}{0,50}x")]),
        query(base + 3, vec![tag_filter("role", &"a".repeat(300))]),
        query(base + 4, vec![tag_filter("role", "(unclosed")]),
    ];
    let queued_before = sim.gossip(0).queue_depths().2;
    for q in &hostile {
        send(&mut sim, 0, q);
    }
    assert_eq!(dropped(sim.gossip(0), DropReason::Malformed), hostile.len() as u64);
    assert_eq!(sim.gossip(0).queue_depths().2, queued_before, "nothing hostile is regossiped");
    assert_eq!(sim.gossip(0).stats().packets_sent, acks_before, "and nothing is acknowledged");
    // An honest filter, ASCII classes included, is still answered (an ack goes back).
    send(&mut sim, 0, &query(base + 5, vec![tag_filter("role", r"^back\w+$")]));
    assert_eq!(sim.gossip(0).queue_depths().2, queued_before + 1);
    assert!(sim.gossip(0).stats().packets_sent > acks_before);
}

#[test]
fn a_hostile_push_pull_admits_only_the_honest_members_and_moves_no_clock() {
    let mut sim = cluster(37);
    let node = |name: &str, meta: Vec<u8>| msg::PushNodeState {
        name: name.into(),
        addr: vec![10, 0, 0, 7],
        port: 7946,
        meta,
        incarnation: 1,
        state: shoal_gossip::messages::node_state::ALIVE,
        vsn: vec![1, 5, 2, 2, 5, 5],
    };
    let nodes = [
        node("good-7", tags(&[("role", "backend")])),
        node("bad\nname", tags(&[("role", "backend")])),
        node("bad-tags", tags(&[("role", "x\ny")])),
    ];
    let serf_state = msg::SerfPushPull {
        ltime: u64::MAX,
        status_ltimes: [("node-2".to_string(), u64::MAX)].into(),
        left_members: vec!["node-2".into()],
        event_ltime: 1,
        events: vec![],
        query_ltime: 1,
    };
    let user = mp::encode_with_type(serf_kind::PUSH_PULL, &serf_state);
    let mut pp = vec![kind::PUSH_PULL];
    msg::PushPullHeader { nodes: nodes.len() as u32, user_state_len: user.len() as u32, join: false }
        .put(&mut pp);
    for n in &nodes {
        n.put(&mut pp);
    }
    pp.extend_from_slice(&user);
    let from: SocketAddr = ROGUE.parse().unwrap();
    let reply = sim.with(0, |g, now| g.handle_stream(now, from, &pp));
    assert!(reply.is_some());
    let g = sim.gossip(0);
    assert_eq!(status(&sim, 0, "good-7"), Some(MemberStatus::Alive));
    assert!(g.member("bad\nname").is_none() && g.member("bad-tags").is_none());
    assert_eq!(dropped(g, DropReason::Refused), 2);
    assert_eq!(dropped(g, DropReason::Forged), 1, "the state stamped at the end of time is refused");
    assert_eq!(status(&sim, 0, "node-2"), Some(MemberStatus::Alive));
    assert!(g.clocks().0 < 1000);
}

#[test]
fn fresh_filters_faster_than_the_compile_budget_are_throttled() {
    let mut sim = cluster(38);
    let base = sim.gossip(0).clocks().2 + 10;
    for i in 0..200u64 {
        send(&mut sim, 0, &query(base + i, vec![tag_filter("role", &format!(r"^back\w*{i}$"))]));
    }
    let throttled = dropped(sim.gossip(0), DropReason::Throttled);
    assert!((130..=140).contains(&throttled), "about 200 - 64 throttled, got {throttled}");
    // The budget refills with time: a second later new filters compile again, and filters
    // already compiled never cost budget.
    sim.run_for(Duration::from_secs(1));
    let queued = sim.gossip(0).queue_depths().2;
    send(&mut sim, 0, &query(base + 300, vec![tag_filter("role", r"^backend$")]));
    send(&mut sim, 0, &query(base + 301, vec![tag_filter("role", r"^back\w*3$")]));
    assert_eq!(dropped(sim.gossip(0), DropReason::Throttled), throttled);
    assert_eq!(sim.gossip(0).queue_depths().2, queued + 2);
}

#[test]
fn indirect_probe_requests_are_capped_and_never_reflected_to_broadcast() {
    let mut sim = cluster(39);
    let sent_before = sim.gossip(0).stats().packets_sent;
    let ind = |seq: u32, target: [u8; 4]| {
        let m = msg::IndirectPing {
            seq_no: seq,
            target: target.to_vec(),
            port: 7946,
            node: String::new(),
            nack: false,
            ..Default::default()
        };
        mp::encode_with_type(kind::INDIRECT_PING, &m)
    };
    send(&mut sim, 0, &ind(1, [255, 255, 255, 255]));
    send(&mut sim, 0, &ind(2, [224, 0, 0, 1]));
    assert_eq!(dropped(sim.gossip(0), DropReason::Refused), 2);
    for seq in 0..3000 {
        send(&mut sim, 0, &ind(seq + 10, [10, 1, (seq >> 8) as u8, seq as u8]));
    }
    let relayed = sim.gossip(0).stats().packets_sent - sent_before;
    assert_eq!(relayed, 1024, "one ping per accepted request, at most 1 024 in flight");
    assert_eq!(dropped(sim.gossip(0), DropReason::Throttled), 3000 - 1024);
    // Once they expire, the node relays again, and the cluster never noticed.
    sim.run_for(Duration::from_secs(2));
    for i in 0..3 {
        assert_eq!(status(&sim, i, "node-0"), Some(MemberStatus::Alive));
    }
}

#[test]
fn a_peer_inventing_members_cannot_grow_the_view_past_its_cap() {
    let mut sim = Sim::new(40);
    for i in 0..3 {
        let mut cfg = Config::new(format!("node-{i}"), Sim::addr_for(i), Profile::Fast);
        cfg.max_members = 10;
        sim.add_node_with(cfg);
    }
    sim.join(1, 0);
    sim.join(2, 0);
    sim.run_until(Duration::from_millis(50), Duration::from_secs(10), Sim::converged).expect("converges");
    for i in 0..20u8 {
        send(&mut sim, 0, &alive(&format!("invented-{i}"), [10, 0, 1, i], tags(&[("role", "backend")])));
    }
    assert_eq!(sim.gossip(0).members().count(), 10);
    assert_eq!(dropped(sim.gossip(0), DropReason::Throttled), 13);
    // Members already known keep being served; the honest three still see each other.
    assert_eq!(status(&sim, 0, "node-2"), Some(MemberStatus::Alive));
}

#[test]
fn a_push_pull_carrying_an_event_stamped_at_the_end_of_time_is_refused() {
    let mut sim = cluster(41);
    let serf_state = msg::SerfPushPull {
        ltime: 1,
        status_ltimes: Default::default(),
        left_members: vec![],
        event_ltime: 1,
        events: vec![Some(msg::SerfUserEvents {
            ltime: u64::MAX,
            events: vec![msg::SerfUserEventRecord { name: "deploy".into(), payload: b"x".to_vec() }],
        })],
        query_ltime: 1,
    };
    let user = mp::encode_with_type(serf_kind::PUSH_PULL, &serf_state);
    let mut pp = vec![kind::PUSH_PULL];
    msg::PushPullHeader { nodes: 0, user_state_len: user.len() as u32, join: false }.put(&mut pp);
    pp.extend_from_slice(&user);
    let from: SocketAddr = ROGUE.parse().unwrap();
    let before = sim.gossip(0).clocks().1;
    assert!(sim.with(0, |g, now| g.handle_stream(now, from, &pp)).is_some());
    assert_eq!(dropped(sim.gossip(0), DropReason::Forged), 1);
    assert_eq!(sim.gossip(0).clocks().1, before, "the event clock did not move");
}
