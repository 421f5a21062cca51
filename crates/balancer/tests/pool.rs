//! The pool follows membership and health; algorithms, stickiness and retries behave.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use shoal_balancer::Admin;
use shoal_balancer::PoolConfig;
use shoal_balancer::sticky_token as token;
use shoal_gossip::MemberStatus::{Alive, Failed, Leaving, Left};

fn pool() -> PoolConfig {
    let mut p = PoolConfig::new("backend", "backend", 3000);
    p.health.interval = Duration::from_millis(200);
    p
}

fn host_of(body: &str) -> String {
    body.split("\"host\":\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?").to_string()
}

#[tokio::test]
async fn joins_leaves_and_failures_change_the_pool_without_restart() {
    let h = Harness::new(pool()).await;
    let c = client();
    let (a1, _t1) = webapp("web-1").await;
    let (a2, t2) = webapp("web-2").await;
    assert_eq!(get(&c, &h.url("/"), &[]).await.0, 503, "empty pool: 503");

    h.set(vec![member("web-1", a1, Alive, &[])]);
    h.wait_serving(1).await;
    h.set(vec![member("web-1", a1, Alive, &[]), member("web-2", a2, Alive, &[])]);
    h.wait_serving(2).await;
    let hosts: Vec<String> = futures_join(&c, &h.url("/"), 4).await;
    assert_eq!(hosts, ["web-1", "web-2", "web-1", "web-2"], "round-robin alternates");

    // Leaving: no new requests for web-2.
    h.set(vec![member("web-1", a1, Alive, &[]), member("web-2", a2, Leaving, &[])]);
    h.wait_names(&["web-1"]).await;
    for _ in 0..4 {
        assert_eq!(host_of(&get(&c, &h.url("/"), &[]).await.2), "web-1");
    }
    // Left and failed members are removed; a failed member that comes back is routed again.
    h.set(vec![member("web-1", a1, Alive, &[]), member("web-2", a2, Left, &[])]);
    h.wait_names(&["web-1"]).await;
    h.set(vec![member("web-1", a1, Failed, &[]), member("web-2", a2, Alive, &[])]);
    h.wait_names(&["web-2"]).await;
    t2.abort();
}

async fn futures_join(c: &HttpClient, url: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(host_of(&get(c, url, &[]).await.2));
    }
    out
}

#[tokio::test]
async fn a_draining_server_finishes_its_in_flight_requests() {
    let h = Harness::new(pool()).await;
    let (a1, _t1) = echo_backend("one").await;
    let (a2, _t2) = echo_backend("two").await;
    h.set(vec![member("one", a1, Alive, &[])]);
    h.wait_serving(1).await;
    let c = client();
    let slow = tokio::spawn({
        let (c, url) = (c.clone(), h.url("/slow/700"));
        async move { get(&c, &url, &[]).await }
    });
    let backend = h.balancer.pools()["backend"].clone();
    wait_until("the slow request is in flight at one", || backend.active() == 1).await;
    h.set(vec![member("one", a1, Leaving, &[]), member("two", a2, Alive, &[])]);
    h.wait_names(&["two"]).await;
    let (status, headers, _) = get(&c, &h.url("/echo"), &[]).await;
    assert_eq!((status.as_u16(), headers["x-backend"].to_str().unwrap()), (200, "two"));
    let (status, headers, _) = slow.await.unwrap();
    assert_eq!(
        (status.as_u16(), headers["x-backend"].to_str().unwrap()),
        (200, "one"),
        "in-flight request finished"
    );
}

#[tokio::test]
async fn a_newcomer_is_routed_only_once_its_health_check_passes() {
    let h = Harness::new(pool()).await;
    let (a1, _t1) = echo_backend("one").await;
    h.set(vec![member("one", a1, Alive, &[])]);
    h.wait_serving(1).await;
    // web-2's agent is up but its app is not listening yet.
    let dead = dead_addr().await;
    h.set(vec![member("one", a1, Alive, &[]), member("late", dead, Alive, &[])]);
    let pool = h.balancer.pools()["backend"].clone();
    let failed_checks = || {
        pool.server("late").map_or(0, |s| s.stats.check_failures.load(std::sync::atomic::Ordering::Relaxed))
    };
    wait_until("three checks of the newcomer failed", || failed_checks() >= 3).await;
    assert_eq!(h.serving(), ["one"], "not routed before a passing check");
    let c = client();
    for _ in 0..10 {
        assert_eq!(get(&c, &h.url("/echo"), &[]).await.0, 200);
    }
}

#[tokio::test]
async fn killing_a_backend_under_load_fails_no_get() {
    let mut p = pool();
    p.health.enabled = false; // only gossip would notice, and it has not yet: retries must cover
    let h = Harness::new(p).await;
    let apps =
        [killable_webapp("web-1").await, killable_webapp("web-2").await, killable_webapp("web-3").await];
    h.set(
        apps.iter().enumerate().map(|(i, a)| member(&format!("web-{}", i + 1), a.addr, Alive, &[])).collect(),
    );
    h.wait_serving(3).await;
    let c = client();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let load = tokio::spawn({
        let (c, url, stop, done) = (c.clone(), h.url("/"), stop.clone(), done.clone());
        async move {
            let mut statuses = HashMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                *statuses.entry(get(&c, &url, &[]).await.0.as_u16()).or_insert(0) += 1;
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            statuses
        }
    });
    let served = || done.load(std::sync::atomic::Ordering::Relaxed);
    wait_until("the load is running", || served() >= 50).await;
    apps[1].abort(); // the app dies with its connections; its membership still says alive
    let at_kill = served();
    wait_until("web-2 is ejected", || !h.serving().contains(&"web-2".to_string())).await;
    wait_until("100 more requests after the kill", || served() >= at_kill + 100).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = load.await.unwrap();
    let total: u32 = statuses.values().sum();
    assert!(total > 100, "load ran: {statuses:?}");
    assert_eq!(statuses.get(&200), Some(&total), "every GET succeeded: {statuses:?}");
    let web2 = h.balancer.pools()["backend"].server("web-2").unwrap();
    let st = &web2.stats;
    use std::sync::atomic::Ordering::Relaxed;
    eprintln!(
        "web-2: requests {} connect_errors {} response_errors {} retries {}",
        st.requests.load(Relaxed),
        st.connect_errors.load(Relaxed),
        st.response_errors.load(Relaxed),
        st.retries.load(Relaxed)
    );
    assert!(st.connect_errors.load(Relaxed) >= 1);
    assert!(!h.serving().contains(&"web-2".to_string()), "passive detection ejected it");
}

#[tokio::test]
async fn a_refused_connection_sends_any_method_elsewhere() {
    let mut p = pool();
    p.health.enabled = false;
    let h = Harness::new(p).await;
    let (live, _t) = webapp("web-1").await;
    h.set(vec![member("web-1", live, Alive, &[]), member("web-dead", dead_addr().await, Alive, &[])]);
    h.wait_serving(2).await;
    let c = client();
    for _ in 0..4 {
        let req = hyper::Request::post(h.url("/delay"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(br#"{"delay":0}"#)))
            .unwrap();
        let resp = c.request(req).await.expect("response");
        assert_eq!(resp.status(), 200, "the POST never reached the dead server, so it went to web-1");
    }
    let dead = h.balancer.pools()["backend"].server("web-dead").unwrap();
    assert!(dead.stats.connect_errors.load(std::sync::atomic::Ordering::Relaxed) >= 1, "it was tried");
}

#[tokio::test]
async fn failing_health_checks_take_a_server_out() {
    let mut p = pool();
    p.health.path = "/nope".into(); // the web app answers 404 there
    p.health.expect = "200".into();
    let h = Harness::new(p).await;
    let (a1, _t1) = webapp("web-1").await;
    h.set(vec![member("web-1", a1, Alive, &[])]);
    let pool = h.balancer.pools()["backend"].clone();
    let failed_checks = || {
        pool.server("web-1").map_or(0, |s| s.stats.check_failures.load(std::sync::atomic::Ordering::Relaxed))
    };
    wait_until("three checks of web-1 failed", || failed_checks() >= 3).await;
    assert!(h.serving().is_empty(), "a server failing its check is never routed to");
    let c = client();
    assert_eq!(get(&c, &h.url("/"), &[]).await.0, 503);
}

#[tokio::test]
async fn weights_shape_the_round_robin() {
    // Weight tags alone decide (by default no member may take more than half of the pool).
    let mut p = pool();
    p.max_share = 1.0;
    let h = Harness::new(p).await;
    let (a1, _t1) = webapp("heavy").await;
    let (a2, _t2) = webapp("light").await;
    h.set(vec![
        member("heavy", a1, Alive, &[("weight", "3")]),
        member("light", a2, Alive, &[("weight", "1")]),
    ]);
    h.wait_serving(2).await;
    let c = client();
    let hosts = futures_join(&c, &h.url("/"), 8).await;
    assert_eq!(hosts.iter().filter(|h| *h == "heavy").count(), 6, "{hosts:?}");
}

#[tokio::test]
async fn sticky_sessions_keep_a_client_on_its_server_until_it_is_gone() {
    let mut p = pool();
    p.sticky_cookie = Some("SERVERID".into());
    let h = Harness::new(p).await;
    let (a1, _t1) = webapp("web-1").await;
    let (a2, _t2) = webapp("web-2").await;
    h.set(vec![member("web-1", a1, Alive, &[]), member("web-2", a2, Alive, &[])]);
    h.wait_serving(2).await;
    let c = client();
    let (_, headers, body) = get(&c, &h.url("/"), &[]).await;
    let first = host_of(&body);
    let cookies: Vec<String> = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect();
    let sticky = cookies.iter().find(|c| c.starts_with("SERVERID=")).expect("sticky cookie").clone();
    assert_eq!(sticky, format!("SERVERID={}", token(&first)), "the server's token, not its name");
    let session = cookies.iter().find(|c| c.starts_with("NODESESSID=")).expect("app cookie").clone();
    let jar = format!("{sticky}; {session}");
    for views in 2..=5 {
        let (_, headers, body) = get(&c, &h.url("/"), &[("cookie", &jar)]).await;
        assert_eq!(host_of(&body), first);
        assert!(body.contains(&format!("\"sessionViews\":{views}")), "the session climbs: {body}");
        assert!(headers.get("set-cookie").is_none());
    }
    // Its server leaves: the client is redispatched and re-stuck.
    let other = if first == "web-1" { "web-2" } else { "web-1" };
    let (keep, keep_addr) = if first == "web-1" { ("web-2", a2) } else { ("web-1", a1) };
    h.set(vec![member(keep, keep_addr, Alive, &[])]);
    h.wait_names(&[keep]).await;
    let (status, headers, body) = get(&c, &h.url("/"), &[("cookie", &jar)]).await;
    assert_eq!(status, 200);
    assert_eq!(host_of(&body), other);
    let restuck = headers
        .get_all("set-cookie")
        .iter()
        .any(|v| v.to_str().unwrap().starts_with(&format!("SERVERID={}", token(other))));
    assert!(restuck, "re-stuck to {other}: {headers:?}");
    let srv = h.balancer.pools()["backend"].server(other).unwrap();
    assert_eq!(srv.stats.redispatches.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn consistent_hashing_on_a_header_pins_keys() {
    let mut p = pool();
    p.algorithm = "header:X-User".parse().unwrap();
    let h = Harness::new(p).await;
    let mut members = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (a, t) = webapp(&format!("web-{i}")).await;
        members.push(member(&format!("web-{i}"), a, Alive, &[]));
        tasks.push(t);
    }
    h.set(members.clone());
    h.wait_serving(4).await;
    let c = client();
    let mut owner = HashMap::new();
    for u in 0..40 {
        let user = format!("user-{u}");
        let host = host_of(&get(&c, &h.url("/"), &[("x-user", &user)]).await.2);
        for _ in 0..2 {
            assert_eq!(
                host_of(&get(&c, &h.url("/"), &[("x-user", &user)]).await.2),
                host,
                "same key, same server"
            );
        }
        owner.insert(user, host);
    }
    assert!(owner.values().collect::<std::collections::HashSet<_>>().len() >= 3, "keys spread: {owner:?}");
    // Losing web-0 moves only web-0's keys.
    h.set(members[1..].to_vec());
    h.wait_serving(3).await;
    for (user, host) in &owner {
        let now = host_of(&get(&c, &h.url("/"), &[("x-user", user)]).await.2);
        if host != "web-0" {
            assert_eq!(&now, host, "{user} stayed on its server");
        }
    }
}

#[tokio::test]
async fn an_operators_drain_and_weight_outlive_the_members_comings_and_goings() {
    let h = Harness::new(pool()).await;
    let c = client();
    let (a1, _t1) = webapp("web-1").await;
    let (a2, _t2) = webapp("web-2").await;
    let both = || vec![member("web-1", a1, Alive, &[]), member("web-2", a2, Alive, &[])];
    h.set(both());
    h.wait_serving(2).await;
    let pools = h.balancer.pools();
    let p = &pools["backend"];
    let now = std::time::Instant::now();
    assert!(p.set_admin("web-1", Admin::Drain, now));
    assert!(p.set_weight("web-2", 7, now));
    assert!(!p.set_admin("web-9", Admin::Drain, now), "no such server");
    h.wait_names(&["web-2"]).await;

    // web-1 leaves, then comes back alive: still drained; web-2 fails and returns: still weight 7.
    h.set(vec![member("web-1", a1, Left, &[]), member("web-2", a2, Failed, &[])]);
    h.wait_serving(0).await;
    h.set(both());
    h.wait_names(&["web-2"]).await;
    assert_eq!(p.server("web-1").expect("web-1 is known again").admin(), Admin::Drain);
    assert_eq!(p.server("web-2").unwrap().weight.load(std::sync::atomic::Ordering::Relaxed), 7);
    for _ in 0..4 {
        assert_eq!(host_of(&get(&c, &h.url("/"), &[]).await.2), "web-2", "drained web-1 gets nothing");
    }
    // Ready clears it.
    assert!(p.set_admin("web-1", Admin::Ready, std::time::Instant::now()));
    h.wait_serving(2).await;
}

#[tokio::test]
async fn a_get_waiting_on_a_server_declared_failed_goes_elsewhere() {
    let mut cfg = pool();
    cfg.health.enabled = false;
    let h = Harness::new(cfg).await;
    let (a1, _t1) = webapp("web-1").await;
    // web-2 accepts and reads requests but never answers (a paused or frozen host).
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a2 = hung.local_addr().unwrap();
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
    let _hung = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut s, _)) = hung.accept().await else { return };
            let mut buf = [0u8; 4096];
            if tokio::io::AsyncReadExt::read(&mut s, &mut buf).await.unwrap_or(0) > 0 {
                let _ = got_tx.send(());
            }
            held.push(s);
        }
    });
    h.set(vec![member("web-1", a1, Alive, &[]), member("web-2", a2, Alive, &[])]);
    h.wait_serving(2).await;
    let c = client();
    let url = h.url("/");
    // Round-robin: one of the first two GETs is sent to the frozen web-2 and waits there.
    let pending = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move {
            let first = get(&c, &url, &[]).await;
            let second = get(&c, &url, &[]).await;
            (first, second)
        }
    });
    tokio::time::timeout(Duration::from_secs(5), got_rx.recv()).await.expect("web-2 got a request");
    let declared = std::time::Instant::now();
    h.set(vec![member("web-1", a1, Alive, &[]), member("web-2", a2, Failed, &[])]);
    let (first, second) = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("the waiting GET is answered without waiting for the server timeout")
        .unwrap();
    assert_eq!((first.0.as_u16(), second.0.as_u16()), (200, 200));
    assert_eq!((host_of(&first.2), host_of(&second.2)), ("web-1".into(), "web-1".into()));
    assert!(
        declared.elapsed() < Duration::from_secs(2),
        "answered {:?} after the failure",
        declared.elapsed()
    );
}
