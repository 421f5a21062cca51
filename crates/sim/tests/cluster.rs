//! Whole clusters in the simulated network: joining, leaving, failing, loss, partitions.

use std::time::Duration;

use shoal_gossip::{Event, MemberEventKind, MemberStatus, Profile, QueryParams, Tags};
use shoal_sim::Sim;

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

/// `n` members, all joined through member 0.
fn cluster(seed: u64, profile: Profile, n: usize) -> Sim {
    let mut sim = Sim::new(seed);
    sim.profile = profile;
    for i in 0..n {
        sim.add_node(&format!("node-{i}"));
    }
    for i in 1..n {
        sim.join(i, 0);
    }
    sim
}

#[test]
fn small_cluster_converges_and_agrees_on_details() {
    let mut sim = cluster(1, Profile::Lan, 5);
    let t = sim.run_until(50 * MS, 10 * S, Sim::converged).expect("converges");
    assert!(t < 2 * S, "took {t:?}");
    for i in 0..5 {
        let g = sim.gossip(i);
        assert_eq!(g.members().count(), 5);
        let m = g.member("node-3").unwrap();
        assert_eq!(m.addr, Sim::addr_for(3));
        assert_eq!(m.status, MemberStatus::Alive);
        assert_eq!(m.versions, [1, 5, 2, 2, 5, 5]);
    }
}

#[test]
fn graceful_leave_is_left_and_crash_is_failed() {
    let mut sim = cluster(2, Profile::Lan, 6);
    sim.run_until(50 * MS, 10 * S, Sim::converged).expect("converges");
    sim.record(0);

    sim.record(4);
    sim.with(4, |g, now| g.leave(now));
    let t = sim
        .run_until(50 * MS, 20 * S, |s| s.count_seeing("node-4", MemberStatus::Left) == 5)
        .expect("everyone sees node-4 left");
    assert!(t < 5 * S, "leave took {t:?}");
    sim.run_until(50 * MS, 10 * S, |s| s.node(4).events.iter().any(|(_, e)| *e == Event::Left))
        .expect("the leaver reports Left once its departure has spread");
    sim.crash(4);

    sim.crash(5);
    let t = sim
        .run_until(50 * MS, 60 * S, |s| s.count_seeing("node-5", MemberStatus::Failed) == 4)
        .expect("everyone sees node-5 failed");
    assert!(t < 15 * S, "failure detection took {t:?} on lan");
    let kinds: Vec<(String, MemberEventKind)> = sim
        .node(0)
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Member { kind, member } => Some((member.name.to_string(), *kind)),
            _ => None,
        })
        .collect();
    assert!(kinds.contains(&("node-4".into(), MemberEventKind::Leave)));
    assert!(kinds.contains(&("node-5".into(), MemberEventKind::Failed)));
    assert!(!kinds.contains(&("node-4".into(), MemberEventKind::Failed)));
    assert_eq!(sim.false_failures(), 0);
}

#[test]
fn a_thousand_members_converge() {
    let mut sim = Sim::new(3);
    sim.profile = Profile::Lan;
    let n = 1000;
    for i in 0..n {
        sim.add_node(&format!("node-{i}"));
    }
    // Join in waves through a handful of seeds, as a fleet would.
    for i in 1..n {
        sim.join(i, if i < 5 { 0 } else { i % 5 });
        if i % 100 == 0 {
            sim.run_for(100 * MS);
        }
    }
    let t = sim.run_until(500 * MS, 120 * S, Sim::converged).expect("1000 members converge");
    eprintln!("1000 members converged {t:?} after the last join");
    assert_eq!(sim.false_failures(), 0);
}

#[test]
fn crashed_member_is_declared_failed_by_all_fast() {
    let mut sim = cluster(4, Profile::Fast, 20);
    sim.run_until(50 * MS, 10 * S, Sim::converged).expect("converges");
    sim.run_for(2 * S);
    sim.crash(7);
    let t = sim
        .run_until(10 * MS, 30 * S, |s| s.count_seeing("node-7", MemberStatus::Failed) == 19)
        .expect("all see node-7 failed");
    eprintln!("fast profile: crash confirmed by all 19 peers in {t:?}");
    assert!(t <= 3 * S, "took {t:?}");
}

#[test]
fn ten_percent_loss_gives_no_false_failures() {
    for profile in [Profile::Fast, Profile::Lan] {
        let mut sim = cluster(5, profile, 30);
        sim.run_until(100 * MS, 20 * S, Sim::converged).expect("converges");
        sim.loss = 0.10;
        sim.run_for(120 * S);
        assert_eq!(sim.false_failures(), 0, "{profile}: false failures at 10% loss");
        assert!(sim.converged(), "{profile}: still converged");
        // A real failure is still detected under loss.
        sim.crash(3);
        sim.run_until(100 * MS, 60 * S, |s| s.count_seeing("node-3", MemberStatus::Failed) == 29)
            .unwrap_or_else(|| panic!("{profile}: crash detected under loss"));
        assert_eq!(sim.false_failures(), 0);
    }
}

#[test]
fn partition_heals() {
    let mut sim = cluster(6, Profile::Fast, 10);
    sim.run_until(50 * MS, 10 * S, Sim::converged).expect("converges");
    let (left, right): (Vec<usize>, Vec<usize>) = (0..10).partition(|i| i % 2 == 0);
    sim.partition(&[&left, &right]);
    sim.run_until(100 * MS, 30 * S, |s| s.count_seeing("node-1", MemberStatus::Failed) == 5)
        .expect("each side sees the other failed");
    sim.heal();
    let t = sim.run_until(100 * MS, 60 * S, Sim::converged).expect("heals");
    eprintln!("partition healed {t:?} after the network came back");
}

#[test]
fn tag_change_propagates_as_update() {
    let mut sim = cluster(7, Profile::Fast, 8);
    sim.run_until(50 * MS, 10 * S, Sim::converged).expect("converges");
    sim.record(5);
    let tags = Tags::from([("role".into(), "backend".into()), ("weight".into(), "3".into())]);
    sim.with(2, |g, now| g.set_tags(now, tags.clone())).unwrap();
    sim.run_until(20 * MS, 5 * S, |s| {
        (0..8).all(|i| s.gossip(i).member("node-2").is_some_and(|m| *m.tags == tags))
    })
    .expect("tags everywhere");
    assert!(sim.node(5).events.iter().any(|(_, e)| matches!(e,
        Event::Member { kind: MemberEventKind::Update, member } if &*member.name == "node-2")));
}

#[test]
fn user_events_reach_everyone_once() {
    let mut sim = cluster(8, Profile::Fast, 12);
    sim.run_until(50 * MS, 10 * S, Sim::converged).expect("converges");
    for i in 0..12 {
        sim.record(i);
    }
    sim.with(3, |g, now| g.user_event(now, "deploy", b"v2", false)).unwrap();
    sim.run_for(3 * S);
    for i in 0..12 {
        let n = sim
            .node(i)
            .events
            .iter()
            .filter(|(_, e)| matches!(e, Event::User(u) if u.name == "deploy"))
            .count();
        assert_eq!(n, 1, "node {i} got the event {n} times");
    }
    let too_big = vec![0u8; 600];
    assert!(sim.with(3, |g, now| g.user_event(now, "big", &too_big, false)).is_err());
}

#[test]
fn queries_collect_acks_and_answers() {
    let mut sim = cluster(9, Profile::Fast, 6);
    sim.run_until(50 * MS, 10 * S, Sim::converged).expect("converges");
    for i in 0..6 {
        sim.record(i);
    }
    let params =
        QueryParams { name: "load".into(), request_ack: true, relay_factor: 1, ..Default::default() };
    let q = sim.with(0, |g, now| g.query(now, params)).unwrap();
    // Every member answers its query events.
    sim.run_for(200 * MS);
    for i in 0..6 {
        let asks: Vec<_> = sim
            .node(i)
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Query(q) => Some(q.reply_to.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(asks.len(), 1, "node {i} saw the query once");
        let answer = format!("load of {i}");
        sim.with(i, |g, now| g.respond(now, &asks[0], answer.as_bytes())).unwrap();
    }
    sim.run_for(5 * S);
    let ev = &sim.node(0).events;
    let acks = ev.iter().filter(|(_, e)| matches!(e, Event::QueryAck { query, .. } if *query == q)).count();
    let answers: Vec<String> = ev
        .iter()
        .filter_map(|(_, e)| match e {
            Event::QueryResponse { query, payload, .. } if *query == q => {
                Some(String::from_utf8_lossy(payload).into())
            }
            _ => None,
        })
        .collect();
    assert_eq!(acks, 6);
    assert_eq!(answers.len(), 6, "{answers:?}");
    assert!(ev.iter().any(|(_, e)| *e == Event::QueryFinished { query: q }));
}

#[test]
fn filtered_queries_reach_only_matching_members() {
    let mut sim = cluster(10, Profile::Fast, 6);
    let tags = Tags::from([("role".into(), "backend".into())]);
    sim.with(4, |g, now| g.set_tags(now, tags)).unwrap();
    sim.run_until(50 * MS, 10 * S, Sim::converged).expect("converges");
    for i in 0..6 {
        sim.record(i);
    }
    let params = QueryParams {
        name: "who".into(),
        filter_tags: [("role".to_string(), "^back".to_string())].into(),
        ..Default::default()
    };
    sim.with(0, |g, now| g.query(now, params)).unwrap();
    sim.run_for(2 * S);
    let got: Vec<usize> =
        (0..6).filter(|&i| sim.node(i).events.iter().any(|(_, e)| matches!(e, Event::Query(_)))).collect();
    assert_eq!(got, vec![4]);
}

#[test]
fn encrypted_cluster_refuses_strangers() {
    let key = vec![7u8; 32];
    let mut sim = Sim::new(11);
    sim.profile = Profile::Fast;
    for i in 0..3 {
        let mut cfg = shoal_gossip::Config::new(format!("node-{i}"), Sim::addr_for(i), Profile::Fast);
        cfg.keys = vec![key.clone()];
        sim.add_node_with(cfg);
    }
    let mut cfg = shoal_gossip::Config::new("stranger", Sim::addr_for(3), Profile::Fast);
    cfg.keys = vec![vec![8u8; 16]];
    let stranger = sim.add_node_with(cfg);
    sim.join(1, 0);
    sim.join(2, 0);
    sim.join(stranger, 0);
    sim.run_for(3 * S);
    for i in 0..3 {
        assert_eq!(sim.gossip(i).alive_count(), 3, "node {i}");
        assert!(sim.gossip(i).member("stranger").is_none());
    }
    assert_eq!(sim.gossip(stranger).alive_count(), 1);
    assert!(sim.gossip(0).stats().dropped_total() > 0);
}

#[test]
fn restarted_member_rejoins_and_is_alive_again() {
    let mut sim = cluster(12, Profile::Fast, 5);
    sim.run_until(50 * MS, 10 * S, Sim::converged).expect("converges");
    sim.crash(2);
    sim.run_until(50 * MS, 20 * S, |s| s.count_seeing("node-2", MemberStatus::Failed) == 4).expect("failed");
    sim.restart(2);
    sim.join(2, 0);
    let t = sim.run_until(50 * MS, 20 * S, Sim::converged).expect("back");
    assert!(t < 3 * S, "{t:?}");
}

#[test]
fn lifeguard_blames_the_isolated_node_not_the_healthy_ones() {
    let mut sim = cluster(13, Profile::Lan, 12);
    sim.run_until(50 * MS, 10 * S, Sim::converged).expect("converges");
    // A crash: probers get their nacks in time, so nobody doubts its own health.
    sim.crash(11);
    sim.run_until(100 * MS, 30 * S, |s| s.count_seeing("node-11", MemberStatus::Failed) == 11)
        .expect("detected");
    let scores: Vec<u32> = (0..11).map(|i| sim.gossip(i).health_score()).collect();
    assert!(scores.iter().all(|&s| s == 0), "healthy probers stay healthy: {scores:?}");
    // A node cut off from everyone gets no acks and no nacks: it slows itself down.
    let others: Vec<usize> = (0..10).collect();
    sim.partition(&[&others, &[10]]);
    sim.run_for(3 * S);
    assert!(sim.gossip(10).health_score() > 0, "the isolated node lowers its own health");
    sim.heal();
}

#[test]
fn a_member_whose_address_changes_is_found_at_the_new_one() {
    let mut sim = cluster(11, Profile::Fast, 5);
    sim.run_until(50 * MS, 10 * S, Sim::converged).expect("converges");
    let new: std::net::SocketAddr = "10.99.0.3:7946".parse().unwrap();
    sim.readdress(3, new);
    let at_new = |s: &Sim| {
        (0..5).filter(|&i| i != 3).all(|i| {
            s.gossip(i).member("node-3").is_some_and(|m| m.addr == new && m.status == MemberStatus::Alive)
        })
    };
    let t = sim.run_until(50 * MS, 60 * S, at_new).expect("everyone finds node-3 at its new address");
    eprintln!("address change picked up by all in {t:?}");
    assert!(t <= 30 * S, "took {t:?}");
}

/// Serf's Vivaldi coordinates, from the round trips of direct probes: five members on a map
/// (a cluster of three close together, two far away) estimate every pair's round trip.
#[test]
fn network_coordinates_estimate_the_round_trip_of_every_pair() {
    let mut sim = Sim::new(11);
    sim.jitter = Duration::from_micros(100);
    let places = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [20.0, 0.0], [20.0, 15.0]];
    let names: Vec<String> = (0..places.len()).map(|i| format!("n{i}")).collect();
    for (i, at) in places.iter().enumerate() {
        sim.add_node(&names[i]);
        sim.place(i, *at);
    }
    for i in 1..places.len() {
        sim.join(i, 0);
    }
    sim.run_for(Duration::from_secs(240));
    let base_rtt_ms = 2.0 * sim.latency.as_secs_f64() * 1000.0 + 0.1;
    for a in 0..places.len() {
        for b in (a + 1)..places.len() {
            let true_ms = base_rtt_ms + (places[a][0] - places[b][0]).hypot(places[a][1] - places[b][1]);
            // What `serf rtt` does: both coordinates as member a knows them.
            let g = sim.gossip(a);
            let (ca, cb) = (g.coordinate(&names[a]).unwrap(), g.coordinate(&names[b]).unwrap());
            let est_ms = ca.distance_to(cb).as_secs_f64() * 1000.0;
            let off = (est_ms - true_ms).abs();
            assert!(
                off <= (0.25 * true_ms).max(1.0),
                "{} <-> {}: estimated {est_ms:.2} ms, true {true_ms:.2} ms",
                names[a],
                names[b]
            );
        }
    }
    // A member never probed directly has no coordinate yet; an unknown name none at all.
    assert!(sim.gossip(0).coordinate("nobody").is_none());
}
