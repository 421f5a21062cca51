//! Mixed clusters of Shoal agents and real HashiCorp Serf agents (Debian's `serf`) on loopback.
//!
//! The Serf side is always checked with the real `serf members -rpc-addr=…`;
//! the Shoal side through the agent library (in-process agents) until Shoal
//! serves Serf's RPC itself.

mod common;

use std::time::Duration;

use common::{
    Serf, addr, free_port, require, shoal_agent, shoal_agent_logged, wait_for, wait_for_async, wait_for_with,
};
use shoal_agent::{Agent, AgentConfig, AgentHandle, JoinTarget};
use shoal_gossip::{MemberStatus, Profile, Tags};

const KEY: &str = "5K9OtfP7efFrNKe5WCQvXvnaXJ5cWP0SvXiwe0kkjM4=";
const WAIT: Duration = Duration::from_secs(20);

async fn shoal(
    name: &str,
    tags: &[(&str, &str)],
    join: Option<std::net::SocketAddr>,
    encrypt: Option<&str>,
) -> Agent {
    let cfg = AgentConfig {
        node: Some(name.into()),
        bind: addr(free_port()),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        join: join.map(|a| JoinTarget::parse(&a.to_string()).unwrap()).into_iter().collect(),
        encrypt: encrypt.map(str::to_string),
        profile: Profile::Lan,
        ..AgentConfig::default()
    };
    Agent::start(cfg).await.expect("shoal agent starts")
}

fn status_in(h: &AgentHandle, node: &str) -> Option<MemberStatus> {
    h.members().borrow().get(node).map(|m| m.status)
}

/// Both sides agree on names, addresses, tags and status.
async fn assert_agree(serf: &Serf, agent: &Agent, agent_tags: &Tags, serf_tags: &Tags) {
    let h = agent.handle();
    wait_for_async(WAIT, || status_in(&h, &serf.name) == Some(MemberStatus::Alive))
        .await
        .expect("shoal sees serf alive");
    wait_for(WAIT, || serf.status_of(agent.name()).as_deref() == Some("alive"))
        .expect("serf sees shoal alive");

    let seen_by_serf = serf.member(agent.name()).unwrap();
    assert_eq!(seen_by_serf["addr"], agent.local_addr().to_string());
    let tags: Tags = serde_json::from_value(seen_by_serf["tags"].clone()).unwrap();
    assert_eq!(&tags, agent_tags);

    let members = h.members().borrow().clone();
    let seen_by_shoal = members.get(&serf.name).unwrap();
    assert_eq!(seen_by_shoal.addr, serf.bind);
    assert_eq!(&*seen_by_shoal.tags, serf_tags);
    assert_eq!(seen_by_shoal.versions, [1, 5, 2, 2, 5, 5], "Serf's protocol versions");
}

fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn no_drops(agent: &Agent) {
    let stats = agent.handle().stats().await.unwrap();
    assert_eq!(stats.gossip.dropped_total(), 0, "packets dropped: {:?}", stats.gossip.dropped);
    assert!(stats.gossip.push_pulls >= 1, "a push/pull (Serf compresses it) was exchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoal_joins_serf() {
    if !require("serf") {
        return;
    }
    let serf = Serf::start("serf-a", &["-tag", "role=balancer"]);
    let agent = shoal("shoal-a", &[("role", "backend"), ("port", "3000")], Some(serf.bind), None).await;
    assert_agree(
        &serf,
        &agent,
        &tags(&[("role", "backend"), ("port", "3000")]),
        &tags(&[("role", "balancer")]),
    )
    .await;
    no_drops(&agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serf_joins_shoal() {
    if !require("serf") {
        return;
    }
    let agent = shoal("shoal-b", &[("role", "balancer")], None, None).await;
    let serf = Serf::start("serf-b", &["-tag", "role=backend", &format!("-join={}", agent.local_addr())]);
    assert_agree(&serf, &agent, &tags(&[("role", "balancer")]), &tags(&[("role", "backend")])).await;
    no_drops(&agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_mixed_cluster_in_both_directions() {
    if !require("serf") {
        return;
    }
    let encrypt = format!("-encrypt={KEY}");
    let serf = Serf::start("serf-c", &["-tag", "role=balancer", &encrypt]);
    let a = shoal("shoal-c1", &[("role", "backend")], Some(serf.bind), Some(KEY)).await;
    assert_agree(&serf, &a, &tags(&[("role", "backend")]), &tags(&[("role", "balancer")])).await;

    let b = shoal("shoal-c2", &[("role", "backend")], None, Some(KEY)).await;
    let serf2 = Serf::start("serf-c2", &[&encrypt, &format!("-join={}", b.local_addr())]);
    wait_for(WAIT, || serf2.status_of("shoal-c2").as_deref() == Some("alive"))
        .expect("serf joins encrypted shoal");
    // Serf-c2 joined b; b is not yet linked to serf-c. Link them and everything converges.
    b.handle().join_addrs(vec![serf.bind], false).await.unwrap();
    for node in ["serf-c", "serf-c2", "shoal-c1", "shoal-c2"] {
        wait_for(WAIT, || serf.status_of(node).as_deref() == Some("alive")).expect("all alive at serf-c");
        let h = a.handle();
        wait_for_async(WAIT, || status_in(&h, node) == Some(MemberStatus::Alive))
            .await
            .expect("all alive at shoal");
    }
    no_drops(&a).await;
    no_drops(&b).await;

    // A Serf agent with another key cannot get in, and nothing it sends is accepted.
    let wrong = Serf::start("serf-wrong", &["-encrypt=AAAAAAAAAAAAAAAAAAAAAA=="]);
    let dropped = || {
        let h = a.handle();
        async move { h.stats().await.unwrap().gossip.dropped_total() }
    };
    let before = dropped().await;
    let join = wrong.cli(&["join", &a.local_addr().to_string()]);
    assert!(!join.status.success(), "a wrong-key join is refused");
    // The stranger's traffic reached shoal-c1 and was dropped: only then is its absence news.
    let counted = wait_for_with(WAIT, || {
        let now = dropped();
        async move { now.await > before }
    })
    .await;
    assert!(counted.is_some(), "the stranger's traffic was dropped and counted");
    assert_eq!(status_in(&a.handle(), "serf-wrong"), None);
    assert_eq!(wrong.status_of("shoal-c1"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_is_left_and_kill_is_failed_on_both_sides() {
    if !require("serf") {
        return;
    }
    let serf = Serf::start("serf-d", &["-tag", "role=balancer"]);
    let observer = shoal("shoal-observer", &[], Some(serf.bind), None).await;
    let h = observer.handle();
    let join = format!("{}", serf.bind);

    // A shoal process stopped with SIGTERM leaves: `left` everywhere, exit code 0.
    let mut graceful = shoal_agent("shoal-graceful", addr(free_port()), &["--join", &join]);
    wait_for(WAIT, || serf.status_of("shoal-graceful").as_deref() == Some("alive")).expect("joined");
    wait_for_async(WAIT, || status_in(&h, "shoal-graceful") == Some(MemberStatus::Alive))
        .await
        .expect("seen");
    graceful.signal("TERM");
    assert_eq!(graceful.wait_exit(Duration::from_secs(15)), Some(0), "exit 0 after a graceful leave");
    wait_for(WAIT, || serf.status_of("shoal-graceful").as_deref() == Some("left")).expect("serf: left");
    wait_for_async(WAIT, || status_in(&h, "shoal-graceful") == Some(MemberStatus::Left))
        .await
        .expect("shoal: left");

    // A shoal process killed with SIGKILL fails.
    let crashed = shoal_agent("shoal-crashed", addr(free_port()), &["--join", &join]);
    wait_for(WAIT, || serf.status_of("shoal-crashed").as_deref() == Some("alive")).expect("joined");
    wait_for_async(WAIT, || status_in(&h, "shoal-crashed") == Some(MemberStatus::Alive)).await.expect("seen");
    crashed.signal("KILL");
    wait_for(Duration::from_secs(30), || serf.status_of("shoal-crashed").as_deref() == Some("failed"))
        .expect("serf: failed");
    wait_for_async(Duration::from_secs(30), || status_in(&h, "shoal-crashed") == Some(MemberStatus::Failed))
        .await
        .expect("shoal: failed");

    // A Serf agent that leaves is `left` for Shoal; one that is killed is `failed`.
    let serf_leaver = Serf::start("serf-leaver", &[&format!("-join={}", observer.local_addr())]);
    wait_for_async(WAIT, || status_in(&h, "serf-leaver") == Some(MemberStatus::Alive)).await.expect("seen");
    assert!(serf_leaver.cli(&["leave"]).status.success());
    wait_for_async(WAIT, || status_in(&h, "serf-leaver") == Some(MemberStatus::Left)).await.expect("left");
    wait_for(WAIT, || serf.status_of("serf-leaver").as_deref() == Some("left")).expect("serf agrees");

    let serf_victim = Serf::start("serf-victim", &[&format!("-join={}", observer.local_addr())]);
    wait_for_async(WAIT, || status_in(&h, "serf-victim") == Some(MemberStatus::Alive)).await.expect("seen");
    serf_victim.proc.signal("KILL");
    wait_for_async(Duration::from_secs(30), || status_in(&h, "serf-victim") == Some(MemberStatus::Failed))
        .await
        .expect("shoal: serf victim failed");
    // Serf takes Shoal's word at once when it knows the victim at the incarnation Shoal
    // declares dead (8 ms after Shoal, measured on a quiet machine). Otherwise it is Serf's own
    // detection: in a cluster this small its Lifeguard suspicion runs close to its maximum
    // (6 x 4 s) for want of confirmations, and on a loaded machine its local-health score
    // stretches every probe up to 9x (CI once took over 60 s): a wait for the state, bounded.
    let agreed =
        wait_for(Duration::from_secs(150), || serf.status_of("serf-victim").as_deref() == Some("failed"));
    assert!(agreed.is_some(), "serf agrees; it says {:?}", serf.status_of("serf-victim"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_changes_propagate_both_ways() {
    if !require("serf") {
        return;
    }
    let serf = Serf::start("serf-e", &["-tag", "role=balancer"]);
    let agent = shoal("shoal-e", &[("role", "backend")], Some(serf.bind), None).await;
    let h = agent.handle();
    wait_for(WAIT, || serf.status_of("shoal-e").as_deref() == Some("alive")).expect("joined");

    let new_tags = tags(&[("role", "backend"), ("weight", "5")]);
    h.set_tags(new_tags.clone()).await.unwrap();
    wait_for(WAIT, || {
        serf.member("shoal-e")
            .is_some_and(|m| serde_json::from_value::<Tags>(m["tags"].clone()).ok() == Some(new_tags.clone()))
    })
    .expect("serf sees the new tags");

    let mut events = h.subscribe();
    assert!(serf.cli(&["tags", "-set", "zone=eu"]).status.success());
    wait_for_async(WAIT, || {
        h.members()
            .borrow()
            .get("serf-e")
            .is_some_and(|m| m.tags.get("zone").map(String::as_str) == Some("eu"))
    })
    .await
    .expect("shoal sees serf's new tag");
    let mut saw_update = false;
    while let Ok(e) = events.try_recv() {
        saw_update |= matches!(e, shoal_gossip::Event::Member { kind: shoal_gossip::MemberEventKind::Update, ref member } if &*member.name == "serf-e");
    }
    assert!(saw_update, "member-update event for serf-e");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_by_host_name_and_retry_until_the_seed_exists() {
    if !require("serf") {
        return;
    }
    // The shoal agent starts first and keeps retrying `localhost:PORT` until Serf is there.
    let port = free_port();
    let (agent, log) =
        shoal_agent_logged("shoal-early", addr(free_port()), &["--join", &format!("localhost:{port}")]);
    // It has tried and failed at least twice: it is retrying, and the seed really comes later.
    let retrying = wait_for(WAIT, || {
        std::fs::read_to_string(&log).unwrap_or_default().matches("join failed; retrying").count() >= 2
    });
    assert!(
        retrying.is_some(),
        "the early agent retries: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let serf = {
        let rpc = addr(free_port());
        let child = std::process::Command::new("serf")
            .args([
                "agent",
                "-node=serf-late",
                &format!("-bind=127.0.0.1:{port}"),
                &format!("-rpc-addr={rpc}"),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Serf {
            proc: common::Proc { child, name: "serf-late".into() },
            name: "serf-late".into(),
            bind: addr(port),
            rpc,
        }
    };
    wait_for(Duration::from_secs(10), || serf.cli(&["members"]).status.success()).expect("serf up");
    let t = wait_for(Duration::from_secs(30), || serf.status_of("shoal-early").as_deref() == Some("alive"))
        .expect("the early agent joined once the seed appeared");
    eprintln!("joined {t:?} after the seed started");
    drop(agent);
}
