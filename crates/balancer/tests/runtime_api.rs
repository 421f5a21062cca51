//! The runtime API command by command, as `Balancer::command` answers it (the text HAProxy
//! 2.6 prints before its closing empty line): outputs, HAProxy's error texts, and that a
//! refused command changes nothing. `crates/shoal/tests/stats_admin.rs` compares the same
//! answers with a real HAProxy and drives them over the socket.

mod common;

use std::time::Duration;

use common::*;
use shoal_balancer::PoolConfig;
use shoal_gossip::MemberStatus::Alive;

fn pool() -> PoolConfig {
    let mut p = PoolConfig::new("backend", "backend", 3000);
    p.health.enabled = false;
    p
}

/// A balancer with members `web-1` (weight 2) and `web-2`, serving.
async fn two() -> (Harness, Vec<tokio::task::JoinHandle<()>>) {
    let h = Harness::new(pool()).await;
    let (a1, t1) = echo_backend("web-1").await;
    let (a2, t2) = echo_backend("web-2").await;
    h.set(vec![member("web-1", a1, Alive, &[("weight", "2")]), member("web-2", a2, Alive, &[])]);
    h.wait_serving(2).await;
    (h, vec![t1, t2])
}

/// The `show servers state` line of `name`, split.
fn state_of(h: &Harness, name: &str) -> Vec<String> {
    let out = h.balancer.command("show servers state");
    let line =
        out.lines().find(|l| l.split(' ').nth(3) == Some(name)).unwrap_or_else(|| panic!("{name}: {out}"));
    line.split(' ').map(String::from).collect()
}

#[tokio::test]
async fn show_info_has_haproxys_fields_then_shoals() {
    let (h, _t) = two().await;
    let info = h.balancer.command("show info");
    let names: Vec<&str> = info.lines().map(|l| l.split_once(": ").unwrap().0).collect();
    assert_eq!(
        names[..10],
        [
            "Name",
            "Version",
            "Release_date",
            "Nbthread",
            "Nbproc",
            "Process_num",
            "Pid",
            "Uptime",
            "Uptime_sec",
            "Memmax_MB"
        ]
    );
    let tainted = names.iter().position(|n| *n == "Tainted").unwrap();
    assert_eq!(
        names[tainted + 1..],
        ["Members", "MembersAlive", "MembersLeaving", "MembersLeft", "MembersFailed", "MembersRefused"]
    );
    assert!(
        !names.contains(&"description") && !names.contains(&"ZlibMemUsage"),
        "left out as HAProxy leaves them"
    );
    let typed = h.balancer.command("show info typed");
    assert!(typed.starts_with("0.Name.1:POS:str:Shoal\n1.Version.1:POS:str:"), "{typed}");
    assert!(typed.contains("\n8.Uptime_sec.1:MDP:u32:"), "{typed}");
    let json: serde_json::Value = serde_json::from_str(&h.balancer.command("show info json")).unwrap();
    assert_eq!(json[0]["field"], serde_json::json!({"pos": 0, "name": "Name"}));
    assert_eq!(
        json[0]["tags"],
        serde_json::json!({"origin": "Product", "nature": "Output", "scope": "Service"})
    );
    assert_eq!(json[0]["value"], serde_json::json!({"type": "str", "value": "Shoal"}));
    assert!(h.balancer.command("show info desc").starts_with("Name: Shoal:\"Product name\"\n"));
    assert_eq!(h.balancer.command("show version"), format!("{}\n", env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn show_stat_filters_and_formats() {
    let (h, _t) = two().await;
    let csv = h.balancer.command("show stat");
    let header = csv.lines().next().unwrap();
    assert!(header.contains(",agg_check_status,-,ssl_sess,") && header.ends_with(",h1_spliced_bytes_out,"));
    assert_eq!(csv.lines().count(), 1 + 4, "header, frontend, two servers, backend");
    let columns = header.matches(',').count();
    assert!(csv.lines().all(|l| l.matches(',').count() == columns), "{csv}");
    let only = |args: &str| -> Vec<String> {
        h.balancer
            .command(&format!("show stat {args}"))
            .lines()
            .skip(1)
            .map(|l| l.split(',').take(2).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(only("-1 1 -1"), ["http,FRONTEND"]);
    assert_eq!(only("-1 2 -1"), ["backend,BACKEND"]);
    assert_eq!(only("backend 4 -1").len(), 2);
    assert_eq!(only("backend 6 1"), ["backend,web-1", "backend,BACKEND"]);
    assert_eq!(h.balancer.command("show stat nope 1 1"), "No such proxy.\n");
    assert_eq!(h.balancer.command("show stat domain dns"), "Invalid statistics domain.\n");
    assert_eq!(h.balancer.command("show stat domain resolvers"), "");
    // Maintenance hides a server from `no-maint` and `up`.
    h.balancer.command("disable server backend/web-2");
    assert_eq!(only("-1 4 -1 no-maint"), ["backend,web-1"]);
    assert_eq!(only("up -1 4 -1").len(), 0, "HAProxy reads 'up' as the proxy: none");
    assert_eq!(only("-1 4 -1 up"), ["backend,web-1"]);
    let typed = h.balancer.command("show stat -1 2 -1 typed");
    assert!(
        typed.starts_with("B.1.0.0.pxname.1:KNS:str:backend\nB.1.0.1.svname.1:KNS:str:BACKEND\n"),
        "{typed}"
    );
    assert!(typed.contains(".19.act.1:MGP:u32:1\n"), "a backend's act is a gauge: {typed}");
    let json: serde_json::Value = serde_json::from_str(&h.balancer.command("show stat -1 4 1 json")).unwrap();
    let first = &json[0][0];
    assert_eq!(first["objType"], "Server");
    assert_eq!(first["id"], 1);
    assert_eq!(first["field"], serde_json::json!({"pos": 0, "name": "pxname"}));
}

#[tokio::test]
async fn servers_state_conn_and_backends() {
    let (h, _t) = two().await;
    let state = h.balancer.command("show servers state");
    assert!(state.starts_with("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state "));
    assert_eq!(state_of(&h, "web-1").len(), 25);
    assert_eq!(state_of(&h, "web-1")[7..9], ["2", "2"], "user and initial weight");
    assert_eq!(h.balancer.command("show servers state nope"), "Can't find backend.\n");
    let conn = h.balancer.command("show servers conn backend");
    assert!(conn.starts_with("# bkname/svname bkid/svid addr port - purge_delay used_cur "), "{conn}");
    assert!(conn.lines().any(|l| l.starts_with("backend/web-1 1/")), "{conn}");
    assert_eq!(h.balancer.command("show servers conn nope"), "Can't find backend.\n");
    assert_eq!(h.balancer.command("show backend"), "# name\nbackend\n");
}

#[tokio::test]
async fn weights_states_and_health_are_set_as_in_haproxy() {
    let (h, _t) = two().await;
    let cmd = |c: &str| h.balancer.command(c);
    assert_eq!(cmd("get weight backend/web-1"), "2 (initial 2)\n");
    assert_eq!(cmd("set server backend/web-1 weight 50%"), "");
    assert_eq!(cmd("get weight backend/web-1"), "1 (initial 2)\n");
    assert_eq!(cmd("set weight backend/#1 7"), "", "servers and backends by #id too");
    assert_eq!(cmd("get weight #1/web-1"), "7 (initial 2)\n");
    for (bad, answer) in [
        ("set server backend/web-1 weight 257", "Absolute weight can only be between 0 and 256 inclusive.\n"),
        ("set server backend/web-1 weight", "Require <weight> or <weight%>.\n"),
        (
            "set server backend/web-1 state off",
            "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n",
        ),
        (
            "set server backend/web-1 health bad",
            "'set server <srv> health' expects 'up', 'stopping', or 'down'.\n",
        ),
        ("set server backend/web-1 agent bad", "'set server <srv> agent' expects 'up' or 'down'.\n"),
        ("set server backend/web-1 addr nope", "Invalid addr 'nope' by 'stats socket command'\n"),
        (
            "set server backend/web-1 frob",
            "usage: set server <backend>/<server> addr | agent | health | state | weight\n",
        ),
        ("set server backend/web-9 state drain", "No such server.\n"),
        ("set server nope/web-1 state drain", "No such backend.\n"),
        ("set server web-1 state drain", "Require 'backend/server'.\n"),
        ("enable server", "Require 'backend/server'.\n"),
    ] {
        assert_eq!(cmd(bad), answer, "{bad}");
    }
    assert_eq!(cmd("get weight backend/web-1"), "7 (initial 2)\n", "refused commands changed nothing");
    assert_eq!(state_of(&h, "web-1")[6], "0");
    assert_eq!(cmd("set server backend/web-2 health down"), "");
    h.wait_names(&["web-1"]).await;
    assert_eq!(cmd("set server backend/web-2 agent up"), "");
    h.wait_names(&["web-1", "web-2"]).await;
    assert_eq!(cmd("set server backend/web-2 state drain"), "");
    assert_eq!(state_of(&h, "web-2")[6], "8");
    h.wait_names(&["web-1"]).await;
    assert_eq!(cmd("set server backend/web-2 state ready"), "");
    h.wait_names(&["web-1", "web-2"]).await;
}

#[tokio::test]
async fn a_static_server_is_added_moved_and_deleted() {
    let (h, _t) = two().await;
    let cmd = |c: &str| h.balancer.command(c);
    let (a3, _t3) = echo_backend("web-3").await;
    assert_eq!(cmd(&format!("add server backend/web-3 {a3} weight 3 disabled")), "New server registered.\n");
    assert_eq!(state_of(&h, "web-3")[5..9], ["0", "1", "3", "3"], "in maintenance, weight 3");
    assert_eq!(cmd("set server backend/web-3 state ready"), "");
    h.wait_names(&["web-1", "web-2", "web-3"]).await;
    assert_eq!(cmd("set server backend/web-3 agent up"), "agent checks are not enabled on this server.\n");
    // Moving it keeps its number.
    let id = state_of(&h, "web-3")[2].clone();
    let (a4, _t4) = echo_backend("web-4").await;
    let moved = cmd(&format!("set server backend/web-3 addr {} port {}", a4.ip(), a4.port()));
    assert_eq!(
        moved,
        format!(
            "no need to change the addr, port changed from '{}' to '{}' by 'stats socket command'\n",
            a3.port(),
            a4.port()
        )
    );
    assert_eq!(state_of(&h, "web-3")[2], id);
    assert_eq!(state_of(&h, "web-3")[18], a4.port().to_string());
    for (bad, answer) in [
        ("add server backend/web-3 127.0.0.1:1", "Already exists a server with the same name in backend.\n"),
        ("add server nope/x 127.0.0.1:1", "No such backend."),
        (
            "add server backend/x 127.0.0.1:1 ssl",
            "'ssl' option is not implemented in this version (check build options)\n",
        ),
        ("add server backend/x 127.0.0.1:1 frob", "unknown keyword 'frob'.\n"),
        (
            "add server backend/x\u{1b}y 127.0.0.1:1",
            "character '\\x1b' is not permitted in server name 'x\\x1by'.\n",
        ),
        ("del server backend/web-3", "Only servers in maintenance mode can be deleted."),
        (
            "del server backend/web-1",
            "This server cannot be removed at runtime due to other configuration elements pointing to it.",
        ),
        ("del server backend/x", "No such server."),
        ("del server nope/x", "No such backend."),
        ("del server backend", "Require 'backend/server'."),
    ] {
        assert_eq!(cmd(bad), answer, "{bad}");
    }
    assert_eq!(cmd("disable server backend/web-3"), "");
    assert_eq!(cmd("del server backend/web-3"), "Server deleted.");
    h.wait_names(&["web-1", "web-2"]).await;
    assert!(!cmd("show servers state").contains("web-3"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!h.serving().contains(&"web-3".to_string()), "deleted for good: no sync brings it back");
}

#[tokio::test]
async fn help_unknown_commands_env_and_counters() {
    let (h, _t) = two().await;
    let cmd = |c: &str| h.balancer.command(c);
    assert!(
        cmd("help").starts_with("The following commands are valid at this level:\n  add server <bk>/<srv> ")
    );
    let unknown = cmd("show stats");
    assert!(
        unknown.starts_with(
            "Unknown command, but maybe one of the following ones is a better match:\n  show stat "
        ),
        "{unknown}"
    );
    assert!(unknown.ends_with("  quit                                    : disconnect\n"));
    assert_eq!(cmd("show env SHOAL_SURELY_UNSET_VARIABLE"), "Variable not found\n");
    for _ in 0..3 {
        let _ = get(&client(), &h.url("/"), &[]).await;
    }
    assert_eq!(cmd("clear counters"), "");
    assert!(
        cmd("show stat -1 4 -1").lines().nth(1).unwrap().starts_with("backend,web-1,0,0,0,0,"),
        "smax cleared"
    );
    assert_eq!(cmd("clear counters all"), "");
    let fe = cmd("show stat -1 1 -1");
    let row: Vec<&str> = fe.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(row[7], "0", "stot cleared: {fe}");
}
