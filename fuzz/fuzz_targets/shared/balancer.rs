//! A real balancer for the HTTP fuzz targets: started once on a current-thread runtime with a
//! fixed membership, each input served over an in-memory connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shoal_agent::Membership;
use shoal_balancer::{Balancer, BalancerConfig};
use shoal_gossip::{Member, MemberStatus};
use tokio::io::DuplexStream;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The balancer and what keeps it running.
pub struct World {
    pub rt: Runtime,
    pub balancer: Balancer,
    _members: watch::Sender<Arc<Membership>>,
}

/// An alive member.
pub fn member(name: &str, addr: &str, tags: &[(&str, &str)]) -> Member {
    Member {
        name: Arc::from(name),
        addr: addr.parse().expect("a socket address"),
        tags: Arc::new(tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        status: MemberStatus::Alive,
        versions: [1, 5, 2, 2, 5, 5],
    }
}

impl World {
    /// Starts a balancer from `config` on `rt`; `others` join the balancer's own member, and
    /// every pool named in `filled` has a server before this returns.
    pub fn start(rt: Runtime, config: &str, others: Vec<Member>, filled: &[&str]) -> World {
        let local = member("ha", "127.0.0.1:7946", &[("role", "balancer")]);
        let mut members = others;
        members.push(local.clone());
        let (tx, rx) = watch::channel(Arc::new(Membership { local, members }));
        let cfg = BalancerConfig::from_toml(config).expect("the fuzzing configuration is valid");
        let balancer = rt.block_on(async {
            let b = Balancer::start(cfg, rx).await.expect("the balancer starts");
            while filled.iter().any(|p| b.pools()[*p].view().servers.is_empty()) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            b
        });
        World { rt, balancer, _members: tx }
    }

    /// A new client connection, served by the balancer as an accepted one is (call within
    /// the runtime): the client's end, and the task serving the other.
    pub fn connect(&self) -> (DuplexStream, JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(256 * 1024);
        let b = self.balancer.clone();
        let peer: SocketAddr = "10.1.2.3:40000".parse().expect("a socket address");
        (client, tokio::spawn(async move { b.serve_connection(server, peer).await }))
    }
}

/// A current-thread runtime with timers and I/O.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}
