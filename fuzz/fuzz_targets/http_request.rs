//! Fuzzes the balancer's client side: arbitrary bytes from a client, served by a real balancer
//! (the HTTP/1 fast path, the hand-over to the general path: the guarded socket with its head
//! deadline and smuggling check, hyper's HTTP/1 and HTTP/2, limits; routing, the proxy) whose
//! pools are empty, over an in-memory connection.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "shared/balancer.rs"]
mod balancer;
use balancer::World;

/// Two frontends' worth of routes and pools with every hashing algorithm and stickiness, all
/// empty: requests are parsed, checked, routed and answered by the balancer itself.
const CONFIG: &str = r#"
access_log = "off"

[[frontends]]
name = "web"
listen = ["127.0.0.1:0"]
default_pool = "app"
routes = [
    { host = "api.example.com", pool = "api" },
    { host = "*.static.example.com", path_prefix = "/assets/", pool = "static" },
    { path_prefix = "/uri/", pool = "by-uri" },
]

[[pools]]
name = "app"
sticky_cookie = "SERVERID"

[[pools]]
name = "api"
role = "api"
algorithm = "header:X-User"
retries = 0

[[pools]]
name = "static"
algorithm = "cookie:session"

[[pools]]
name = "by-uri"
algorithm = "uri"

[timeouts]
request_headers = "1s"
keepalive = "1s"
client = "2s"

[limits]
max_header_bytes = 8192
max_body_bytes = 4096
"#;

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| World::start(balancer::runtime(), CONFIG, Vec::new(), &[]))
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let answer = w.rt.block_on(async {
        let (client, conn) = w.connect();
        let (mut rd, mut wr) = tokio::io::split(client);
        let write = async {
            let _ = wr.write_all(data).await;
            let _ = wr.shutdown().await;
        };
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut answer));
        let ((), read) = tokio::join!(write, read);
        let timed_out = read.is_err();
        conn.abort();
        let _ = conn.await;
        (answer, timed_out)
    });
    let (answer, timed_out) = answer;
    assert!(!timed_out, "the connection was still open 5 s after the client's last byte");
    if answer.is_empty() {
        return;
    }
    if data.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") {
        // HTTP/2: the server's first frame is its SETTINGS (type 4) on stream 0.
        assert!(answer.len() >= 9 && answer[3] == 4, "not an HTTP/2 SETTINGS frame: {answer:02x?}");
    } else {
        // HTTP/1: a status line (hyper answers an HTTP/1.0 request in HTTP/1.0).
        assert!(
            answer.starts_with(b"HTTP/1.1 ") || answer.starts_with(b"HTTP/1.0 "),
            "not an HTTP/1 answer: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
    }
});
