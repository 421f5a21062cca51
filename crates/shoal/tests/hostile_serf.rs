//! Real HashiCorp Serf agents playing the hostile member: Serf accepts node names and tags
//! that Shoal refuses (newlines, config directives). A Shoal agent in such a mixed cluster
//! keeps the rogue out of its view and goes on working with everyone else; a Serf
//! `force-leave -prune` aimed at a live Shoal member cannot erase it.

mod common;

use std::time::Duration;

use common::{Serf, addr, free_port, require, wait_for, wait_for_async, wait_for_with};
use shoal_agent::{Agent, AgentConfig, AgentHandle, JoinTarget};
use shoal_gossip::{DropReason, MemberStatus, Profile};

const WAIT: Duration = Duration::from_secs(20);

async fn shoal(name: &str, join: Option<std::net::SocketAddr>) -> Agent {
    let cfg = AgentConfig {
        node: Some(name.into()),
        bind: addr(free_port()),
        tags: [("role".to_string(), "balancer".to_string())].into(),
        join: join.map(|a| JoinTarget::parse(&a.to_string()).unwrap()).into_iter().collect(),
        profile: Profile::Lan,
        ..AgentConfig::default()
    };
    Agent::start(cfg).await.expect("shoal agent starts")
}

fn status_in(h: &AgentHandle, node: &str) -> Option<MemberStatus> {
    h.members().borrow().get(node).map(|m| m.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serf_members_with_injected_names_or_tags_stay_out_of_the_shoal_view() {
    if !require("serf") {
        return;
    }
    let agent = shoal("shoal-h1", None).await;
    let join = format!("-join={}", agent.local_addr());
    let good = Serf::start("serf-good", &["-tag", "role=backend", &join]);
    let evil_name = "evil\nprogram pwn\n  command touch shoal-pwned";
    let evil = Serf::start(evil_name, &["-tag", "role=backend", &join]);
    let evil_tags =
        Serf::start("evil-tags", &["-tag", "role=backend\n  stats socket /tmp/s level admin", &join]);

    // Serf itself admits all three: the rogue members are real cluster members to it.
    wait_for(WAIT, || good.status_of(evil_name).as_deref() == Some("alive")).expect("serf admits the name");
    wait_for(WAIT, || good.status_of("evil-tags").as_deref() == Some("alive")).expect("and the tags");
    let h = agent.handle();
    wait_for_async(WAIT, || status_in(&h, "serf-good") == Some(MemberStatus::Alive))
        .await
        .expect("the honest Serf member is in the Shoal view");
    // Refusals are counted (one for each rogue at least): only then is their absence news.
    let refused = || {
        let h = h.clone();
        async move { h.stats().await.unwrap().gossip.dropped.get(&DropReason::Refused).copied().unwrap_or(0) }
    };
    let counted = wait_for_with(WAIT, || {
        let n = refused();
        async move { n.await >= 2 }
    })
    .await;
    assert!(counted.is_some(), "{:?}", h.stats().await.unwrap().gossip.dropped);
    // Neither rogue ever enters the view.
    let names: Vec<String> = h.members().borrow().members.iter().map(|m| m.name.to_string()).collect();
    assert_eq!(names, ["serf-good", "shoal-h1"]);

    // Everyone else still works with the Shoal agent: the honest member sees it alive, a user
    // event from it arrives, and the rogues' own views hold it too.
    wait_for(WAIT, || good.status_of("shoal-h1").as_deref() == Some("alive")).expect("serf sees shoal");
    wait_for(WAIT, || evil.status_of("shoal-h1").as_deref() == Some("alive")).expect("even the rogue does");
    let mut events = h.subscribe();
    assert!(good.cli(&["event", "deploy", "v2"]).status.success());
    let got = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(shoal_gossip::Event::User(u)) = events.recv().await
                && u.name == "deploy"
            {
                return u.payload;
            }
        }
    })
    .await
    .expect("the user event reaches the Shoal agent");
    assert_eq!(got, b"v2");
    drop(evil_tags);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serf_force_leave_prune_cannot_erase_a_live_shoal_member() {
    if !require("serf") {
        return;
    }
    let serf = Serf::start("serf-pruner", &["-tag", "role=backend"]);
    let a = shoal("shoal-p1", Some(serf.bind)).await;
    let b = shoal("shoal-p2", Some(serf.bind)).await;
    let ha = a.handle();
    wait_for_async(WAIT, || status_in(&ha, "shoal-p2") == Some(MemberStatus::Alive))
        .await
        .expect("converged");

    let out = serf.cli(&["force-leave", "-prune", "shoal-p2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Serf applies its own prune at once: shoal-p2 is gone from Serf's list.
    wait_for(WAIT, || serf.status_of("shoal-p2").is_none_or(|s| s == "left")).expect("serf prunes");
    // The forged leave reaches shoal-p1 (which keeps the member: it is not gone) and shoal-p2,
    // which refutes it; from first to last, shoal-p1's view holds shoal-p2.
    let mut statuses = Vec::new();
    let refuted = wait_for_async(WAIT, || {
        let s = status_in(&ha, "shoal-p2");
        statuses.push(s);
        s == Some(MemberStatus::Alive) && b.handle().members().borrow().get("shoal-p1").is_some()
    })
    .await;
    assert!(refuted.is_some(), "shoal-p2 is alive in shoal-p1's view again: {statuses:?}");
    assert!(statuses.iter().all(Option::is_some), "a live member was erased from the view: {statuses:?}");
    drop(b);
}
