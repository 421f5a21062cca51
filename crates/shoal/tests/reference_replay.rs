//! The reference stack's own `ha` and `webapp` images, replayed: their s6 service folders, Serf
//! event handlers and Handlebars template unchanged (`docker/reference/`), built on Shoal
//! (`docker/build-reference-images.sh`, run by `scripts/test.sh`) with Debian's HAProxy as the
//! proxy. `/init` is `shoal init`; `serf`, `handlebars`, `with-contenv` and `s6-svc` are `shoal`
//! under those names. HAProxy must get the right configuration after each join and leave, and
//! `s6-svc -h` must reload it (same master process, new workers). Everything this test creates
//! is removed by id, also when it fails.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

const HA: &str = "shoal-reference-ha:test";
const WEBAPP: &str = "shoal-reference-webapp:test";
const WAIT: Duration = Duration::from_secs(60);

/// The network and containers of the test, removed on drop.
struct Lab {
    network: String,
    containers: Vec<String>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for id in &self.containers {
            let _ = try_docker(&["rm", "-f", "-v", id]);
        }
        let _ = try_docker(&["network", "rm", &self.network]);
    }
}

impl Lab {
    fn run(&mut self, args: &[&str]) -> String {
        let mut all = vec!["run", "-d", "--network", &self.network];
        all.extend(args);
        let id = docker(&all);
        self.containers.push(id.clone());
        id
    }
}

/// `GET /` through HAProxy: the `host` the web app answered with.
fn served_by(front: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&front, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: ha\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    if !body.starts_with("HTTP/1.1 200") {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(body.split("\r\n\r\n").nth(1)?).ok()?;
    json["host"].as_str().map(str::to_owned)
}

/// The hosts that answered `n` requests in a row (`None` for a failed one).
fn hosts(front: SocketAddr, n: usize) -> Vec<Option<String>> {
    (0..n).map(|_| served_by(front)).collect()
}

fn server_lines(ha: &str) -> Vec<String> {
    let cfg = try_docker(&["exec", ha, "cat", "/usr/local/etc/haproxy/haproxy.cfg"]).unwrap_or_default();
    cfg.lines().filter(|l| l.trim_start().starts_with("server ")).map(|l| l.trim().to_owned()).collect()
}

fn ip_of(id: &str, network: &str) -> String {
    docker(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        id,
    ])
}

#[test]
fn the_reference_images_own_files_run_unchanged_on_shoal_with_haproxy() {
    if !require("docker") {
        return;
    }
    for image in [HA, WEBAPP] {
        assert!(
            !docker(&["images", "-q", image]).is_empty(),
            "the {image} image is missing: run docker/build-reference-images.sh (scripts/test.sh does)"
        );
    }
    let prefix = format!("shoal-ref-{}", std::process::id());
    let network = format!("{prefix}-net");
    docker(&["network", "create", &network]);
    let mut lab = Lab { network: network.clone(), containers: Vec::new() };
    let front = addr(free_port());
    let publish = format!("127.0.0.1:{}:80", front.port());
    // As the lab starts it: `ha` first (the web agents join `ha` by name), then the web apps.
    let ha = lab.run(&[
        "--name",
        &format!("{prefix}-ha"),
        "--hostname",
        "ha",
        "--network-alias",
        "ha",
        "-p",
        &publish,
        HA,
    ]);
    let web: Vec<String> = (1..=2).map(|i| lab.run(&["--name", &format!("{prefix}-s{i}"), WEBAPP])).collect();
    let names: Vec<String> =
        web.iter().map(|id| docker(&["inspect", "-f", "{{.Config.Hostname}}", id])).collect();
    let expected = |which: &[usize]| -> Vec<String> {
        let mut lines: Vec<String> = which
            .iter()
            .map(|&i| format!("server {} {}:3000 check", names[i], ip_of(&web[i], &network)))
            .collect();
        lines.sort();
        lines
    };

    // Both joins: member-join.sh wrote /nodes, rendered the template with handlebars and ran
    // `s6-svc -h`: HAProxy's config holds both servers and it serves both.
    let both = expected(&[0, 1]);
    let ok = wait_for(WAIT, || server_lines(&ha) == both);
    assert!(
        ok.is_some(),
        "HAProxy's config after two joins: {:?}\n{}",
        server_lines(&ha),
        docker(&["logs", &ha])
    );
    let all: BTreeSet<String> = names.iter().cloned().collect();
    let ok = wait_for(WAIT, || hosts(front, 6).into_iter().flatten().collect::<BTreeSet<_>>() == all);
    assert!(ok.is_some(), "HAProxy serves both web apps: {:?}", hosts(front, 6));
    let nodes = docker(&["exec", &ha, "ls", "/nodes"]);
    assert_eq!(nodes.lines().collect::<BTreeSet<_>>(), names.iter().map(String::as_str).collect());

    // `s6-svc -h` reloaded HAProxy: the supervised process (its master) never changed, and
    // it loaded the new configuration in new workers.
    let status = docker(&["exec", &ha, "s6-svstat", "/var/run/s6/services/ha"]);
    let logs = docker(&["logs", &ha]);
    assert!(status.starts_with("up (pid "), "{status}");
    assert!(logs.contains("Reloading HAProxy"), "HAProxy was reloaded by SIGHUP:\n{logs}");
    let master = status.trim_start_matches("up (pid ").split(')').next().unwrap().to_owned();
    assert_eq!(
        logs.lines().filter(|l| l.contains("[ha]") && l.contains("Starting HAProxy")).count(),
        1,
        "the ha service ran once (pid {master}): reloaded, never restarted:\n{logs}"
    );

    // A leave (`docker stop`: the agent leaves gracefully): member-leave.sh takes it out, and
    // HAProxy stops sending it requests.
    docker(&["stop", &web[0]]);
    let one = expected(&[1]);
    let ok = wait_for(WAIT, || server_lines(&ha) == one);
    assert!(
        ok.is_some(),
        "HAProxy's config after the leave: {:?}\n{}",
        server_lines(&ha),
        docker(&["logs", &ha])
    );
    let only = Some(names[1].clone());
    let ok = wait_for(WAIT, || hosts(front, 6).iter().all(|h| *h == only));
    assert!(ok.is_some(), "only the remaining web app serves: {:?}", hosts(front, 6));
    assert_eq!(docker(&["exec", &ha, "ls", "/nodes"]), names[1]);
    let status = docker(&["exec", &ha, "s6-svstat", "/var/run/s6/services/ha"]);
    assert!(status.starts_with(&format!("up (pid {master}) ")), "still the same HAProxy master: {status}");

    // A new web app joins later: back to two servers.
    let third = lab.run(&["--name", &format!("{prefix}-s3"), WEBAPP]);
    let third_name = docker(&["inspect", "-f", "{{.Config.Hostname}}", &third]);
    let ok = wait_for(WAIT, || {
        server_lines(&ha).iter().any(|l| l.contains(&third_name)) && server_lines(&ha).len() == 2
    });
    assert!(ok.is_some(), "the third web app joined HAProxy's config: {:?}", server_lines(&ha));
}
