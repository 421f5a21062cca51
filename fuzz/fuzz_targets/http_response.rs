//! Fuzzes the balancer's server side: a real balancer forwards a request to a loopback server
//! that answers with arbitrary bytes and closes. Whatever the server says (a valid answer, a
//! truncated one, chunked framing gone wrong, interim heads, garbage) the client gets an
//! HTTP/1.1 answer and the connection ends; nothing panics or hangs.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use shoal_agent::Membership;
use shoal_balancer::{Balancer, BalancerConfig};
use shoal_gossip::{Member, MemberStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::watch;

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

struct World {
    rt: Runtime,
    balancer: Balancer,
    reply: Arc<Mutex<Vec<u8>>>,
    _members: watch::Sender<Arc<Membership>>,
}

fn member(name: &str, addr: SocketAddr, tags: &[(&str, &str)]) -> Member {
    Member {
        name: Arc::from(name),
        addr,
        tags: Arc::new(tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        status: MemberStatus::Alive,
        versions: [1, 5, 2, 2, 5, 5],
    }
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

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let reply = Arc::new(Mutex::new(Vec::new()));
        let addr = rt.block_on(server(reply.clone()));
        let port = addr.port().to_string();
        let local = member("ha", "127.0.0.1:7946".parse().unwrap(), &[("role", "balancer")]);
        let app = member("app", "127.0.0.1:7947".parse().unwrap(), &[("role", "backend"), ("port", &port)]);
        let (tx, rx) = watch::channel(Arc::new(Membership { local: local.clone(), members: vec![app, local] }));
        let cfg = BalancerConfig::from_toml(CONFIG).expect("the fuzzing configuration is valid");
        let balancer = rt.block_on(async {
            let b = Balancer::start(cfg, rx).await.expect("the balancer starts");
            while b.pools()["app"].view().servers.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            b
        });
        World { rt, balancer, reply, _members: tx }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    *w.reply.lock().expect("not poisoned") = data.to_vec();
    let answer = w.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        let b = w.balancer.clone();
        let conn =
            tokio::spawn(async move { b.serve_connection(server, "10.1.2.3:40000".parse().unwrap()).await });
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
