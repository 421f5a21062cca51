//! Fuzzes the balancer's server side: a real balancer forwards a request to a loopback server
//! that answers with arbitrary bytes and closes. Whatever the server says (a valid answer, a
//! truncated one, chunked framing gone wrong, interim heads, garbage) the client gets an
//! HTTP/1.1 answer and the connection ends; nothing panics or hangs.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[path = "shared/balancer.rs"]
mod balancer;
use balancer::{World, member};

const CONFIG: &str = r#"
access_log = "off"

[[frontends]]
name = "web"
listen = ["127.0.0.1:0"]
default_pool = "app"

[[pools]]
name = "app"
sticky_cookie = "SERVERID"
health = { enabled = false }

[timeouts]
server = "2s"
client = "2s"
"#;

/// The balancer, and the answer its one server gives next.
struct Fixture {
    world: World,
    reply: Arc<Mutex<Vec<u8>>>,
}

/// A server that reads a request and answers it with the current input, then closes.
async fn server(reply: Arc<Mutex<Vec<u8>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let reply = reply.lock().expect("not poisoned").clone();
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = s.read(&mut head).await;
                let _ = s.write_all(&reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rt = balancer::runtime();
        let reply = Arc::new(Mutex::new(Vec::new()));
        let port = rt.block_on(server(reply.clone())).port().to_string();
        let app = member("app", "127.0.0.1:7947", &[("role", "backend"), ("port", &port)]);
        Fixture { world: World::start(rt, CONFIG, vec![app], &["app"]), reply }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    *f.reply.lock().expect("not poisoned") = data.to_vec();
    let answer = f.world.rt.block_on(async {
        let (mut client, conn) = f.world.connect();
        let _ = client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer)).await;
        conn.abort();
        let _ = conn.await;
        (answer, read.is_err())
    });
    let (answer, timed_out) = answer;
    assert!(!timed_out, "the connection was still open 10 s after the request");
    assert!(
        answer.starts_with(b"HTTP/1.1 "),
        "not an HTTP/1.1 answer: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(200)])
    );
});
