//! `shoal balancer`, `shoal webapp` and `shoal agent` as real processes: the pool
//! follows gossip, SIGHUP re-reads the config file without dropping a connection
//! (a bad file is refused and changes nothing), SIGTERM drains and exits 0.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

/// One HTTP/1.1 exchange on an open connection: status and body.
fn exchange(
    conn: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    host: &str,
    body: &str,
) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.get_mut().write_all(req.as_bytes()).expect("send");
    let mut status_line = String::new();
    conn.read_line(&mut status_line).expect("status line");
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut length = 0;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).expect("header");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    BufReader::new(s)
}

fn get(front: SocketAddr, host: &str) -> (u16, String) {
    match TcpStream::connect(front) {
        Ok(s) => {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            exchange(&mut BufReader::new(s), "GET", "/", host, "")
        }
        Err(_) => (0, String::new()),
    }
}

fn config(front: SocketAddr, extra_route: &str, extra_pool: &str) -> String {
    format!(
        r#"
[[frontends]]
name = "web"
listen = ["{front}"]
default_pool = "app"
routes = [ {extra_route} ]

[[pools]]
name = "app"
role = "backend"
health = {{ interval = "200ms" }}
{extra_pool}
"#
    )
}

#[test]
fn balancer_follows_gossip_reloads_on_sighup_and_drains_on_sigterm() {
    let (front, stats, app) = (addr(free_port()), addr(free_port()), addr(free_port()));
    let (lb_gossip, be_gossip) = (addr(free_port()), addr(free_port()));
    let dir = std::env::temp_dir().join(format!("shoal-balancer-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("balancer.toml");
    std::fs::write(&cfg, config(front, "", "")).unwrap();

    let (mut lb, lb_log) = shoal(
        "lb",
        &[
            "balancer",
            "--node=lb",
            &format!("--bind={lb_gossip}"),
            &format!("--rpc-addr={}", addr(free_port())),
            &format!("--stats={stats}"),
            &format!("--config={}", cfg.display()),
        ],
        &[],
    );
    let (_app, _) = shoal("web-1-app", &["webapp", &format!("--listen={app}")], &[("SERVER_NAME", "web-1")]);
    let _agent = shoal_agent(
        "web-1",
        be_gossip,
        &[
            "--tag",
            "role=backend",
            "--tag",
            &format!("port={}", app.port()),
            "--join",
            &lb_gossip.to_string(),
        ],
    );

    // The backend announced itself: it is routed to, no config names it.
    let routed = wait_for(Duration::from_secs(15), || get(front, "x").1.contains("\"host\":\"web-1\""));
    assert!(routed.is_some(), "web-1 is served through the balancer");

    // SIGHUP with a new route, while a keep-alive connection stays open across it.
    let mut kept = connect(front);
    assert_eq!(exchange(&mut kept, "GET", "/", "x", "").0, 200);
    let empty_pool = "[[pools]]\nname = \"empty\"\nrole = \"nobody\"";
    std::fs::write(&cfg, config(front, r#"{ host = "new.test", pool = "empty" }"#, empty_pool)).unwrap();
    lb.signal("HUP");
    let reloaded = wait_for(Duration::from_secs(10), || get(front, "new.test").0 == 503);
    assert!(reloaded.is_some(), "the new route to an empty pool answers 503");
    assert_eq!(exchange(&mut kept, "GET", "/", "x", "").0, 200, "the connection outlived the reload");

    // A bad file is refused with a reason and changes nothing.
    std::fs::write(&cfg, config(front, "", "algorithm = \"fastest\"")).unwrap();
    lb.signal("HUP");
    let refused = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&lb_log).unwrap_or_default().contains("reload refused")
    });
    assert!(refused.is_some(), "the refusal is logged");
    let log = std::fs::read_to_string(&lb_log).unwrap();
    assert!(log.contains("unknown algorithm"), "the log says why: {log}");
    assert_eq!(get(front, "new.test").0, 503, "the running configuration is unchanged");
    assert_eq!(exchange(&mut kept, "GET", "/", "x", "").0, 200);

    // SIGTERM: a request in flight finishes, then the process exits 0.
    let (status, _) = exchange(&mut kept, "POST", "/delay", "x", r#"{"delay":800}"#);
    assert_eq!(status, 200);
    let in_flight = std::thread::spawn(move || get(front, "x"));
    // The request is in flight once web-1 counts it (`scur`; the kept connection is idle).
    let serving =
        || csv_servers(&stats_csv(stats)).iter().any(|f| f[0] == "app" && f[1] == "web-1" && f[4] != "0");
    let seen = wait_for(Duration::from_secs(10), || serving() || in_flight.is_finished());
    assert!(seen.is_some() && !in_flight.is_finished(), "the request is seen in flight at web-1");
    lb.signal("TERM");
    let (status, body) = in_flight.join().unwrap();
    assert_eq!(status, 200, "the in-flight request finished: {body}");
    assert_eq!(lb.wait_exit(Duration::from_secs(15)), Some(0), "exit 0 after draining");
    assert!(TcpStream::connect(front).is_err(), "the listener is closed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_agent_refuses_a_node_name_or_tag_that_could_inject_lines() {
    for args in [
        vec!["agent", "--node", "web\nprogram pwn", "--bind", "127.0.0.1:0"],
        vec![
            "agent",
            "--node",
            "web",
            "--tag",
            "role=backend\n  stats socket /tmp/s",
            "--bind",
            "127.0.0.1:0",
        ],
        vec!["agent", "--node", "../etc/x", "--bind", "127.0.0.1:0"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal")).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("invalid node name") || err.contains("invalid tag"), "{err}");
        assert!(err.contains("may not contain") || err.contains("control character"), "{err}");
    }
}

#[test]
fn tls_clients_connecting_by_ip_address_do_not_flood_the_log() {
    let Some(text) = log_after_tls_handshakes_by_ip("lb-tls", 5, &[]) else { return };
    assert!(text.contains("listening"), "the log is there: {text}");
    assert!(!text.contains("SNI"), "one warning per handshake:\n{text}");
}

#[test]
fn a_flood_of_dependency_warnings_is_cut_to_a_burst_and_the_rest_counted() {
    // rustls' own warnings asked for: it warns once per handshake whose SNI is an IP address.
    let handshakes = 14;
    let Some(text) =
        log_after_tls_handshakes_by_ip("lb-tls-flood", handshakes, &["--log-level=info,rustls=warn"])
    else {
        return;
    };
    let shown = text.lines().filter(|l| l.contains("SNI")).count();
    let suppressed: usize = text
        .lines()
        .filter_map(|l| l.split_once("rustls::")?.1.split_once(": ")?.1.split_once(" log lines suppressed"))
        .map(|(n, _)| n.parse::<usize>().expect("a count"))
        .sum();
    // A burst of 10 (11 if a handshake came 10 s after the first), the rest counted at exit.
    assert!((10..=11).contains(&shown), "{shown} warnings shown:\n{text}");
    assert_eq!(shown + suppressed, handshakes, "every warning is shown or counted:\n{text}");
}

/// Starts a balancer with a TLS frontend (a fresh self-signed certificate), makes `handshakes`
/// clients connect by IP address and put it in SNI (as load generators do; RFC 6066 forbids
/// it), stops the balancer gracefully and returns its log. None without `openssl`.
fn log_after_tls_handshakes_by_ip(name: &str, handshakes: usize, extra: &[&str]) -> Option<String> {
    if !require("openssl") {
        return None;
    }
    let (front, lb_gossip) = (addr(free_port()), addr(free_port()));
    let dir = std::env::temp_dir().join(format!("shoal-tls-sni-{}", front.port()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let cfg = dir.join("balancer.toml");
    let text = format!(
        "[[frontends]]\nname = \"tls\"\nlisten = [\"{front}\"]\ndefault_pool = \"app\"\n\
         tls = {{ cert = \"{}\", key = \"{}\" }}\n\n[[pools]]\nname = \"app\"\nrole = \"backend\"\n",
        cert.display(),
        key.display()
    );
    std::fs::write(&cfg, text).unwrap();
    let stats = addr(free_port());
    let mut args = vec![
        "balancer".to_string(),
        format!("--node={name}"),
        format!("--bind={lb_gossip}"),
        format!("--rpc-addr={}", addr(free_port())),
        format!("--stats={stats}"),
        format!("--config={}", cfg.display()),
        "--admin-socket=none".to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let (mut lb, log) = shoal(name, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    lb.wait_listening(front, &log);
    for _ in 0..handshakes {
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-connect", &front.to_string(), "-servername", "127.0.0.1"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("BEGIN CERTIFICATE"), "handshake completed");
    }
    lb.signal("TERM");
    assert_eq!(lb.wait_exit(Duration::from_secs(15)), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    Some(text)
}
