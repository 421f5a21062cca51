//! `shoal-bench`: measures Shoal next to its peers in one run and prints figures and ratios.
//!
//! * `gossip`: real agent processes on loopback — HashiCorp Serf, Shoal `lan`,
//!   Shoal `fast` — measuring join visibility, kill -9 to `failed`, and RSS.
//! * `scale`: the simulator — time for news to reach 99.99 % of members and
//!   bytes per second per member, for 100 and 1 000 members (full protocol) and
//!   10 000 (dissemination model), next to Serf's published model.
//! * `proxy`: wrk and h2load through Shoal, HAProxy, nginx and Caddy — GET, POST, TLS,
//!   HTTP/2, access logs on — Shoal's thread count; RSS with 10 000 idle connections.
//! * `failover`: joins, kill -9 and graceful stops under load — Shoal next to
//!   HAProxy reloaded by a Serf event handler (the reference design).
//! * `pool`: the balancer with 1 000 backends — cost of a membership change,
//!   memory per backend, requests through a burst of 500 joins.
//! * `hostile`: a hostile peer against real Serf and Shoal agents — probe-ack latency under a
//!   flood of costly queries, CPU for a trickled or a huge stream message.
//! * `chaos`: the Docker lab (two balancers, encrypted gossip) under load while web
//!   containers are stopped, killed, paused, disconnected, added and removed at random,
//!   a balancer is killed and restarted and the key rotated; soak figures (RSS, fds).
//!
//! Run through the scripts in `bench/`, which build in release mode first.

mod chaos;
mod failover;
mod gossip;
mod hostile;
mod pool;
mod procs;
mod proxy;
mod scale;
mod soak;
mod stats;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "shoal-bench", about = "Shoal benchmarks, side by side with the peers it replaces")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Gossip agents: join visibility, failure detection, memory — Serf vs Shoal.
    Gossip(gossip::Args),
    /// Simulated clusters: convergence time and traffic per member.
    Scale(scale::Args),
    /// HTTP proxies: throughput, latency and memory per kind of request — Shoal vs HAProxy, nginx and Caddy.
    Proxy(proxy::Args),
    /// Failover under load: joins, kill -9, graceful stops — Shoal vs HAProxy reloaded by Serf.
    Failover(failover::Args),
    /// The balancer with 1 000 backends: membership change cost, memory, a burst of joins under load.
    Pool(pool::Args),
    /// A hostile peer: probe acks under a query flood, CPU for trickled and huge streams — Serf vs Shoal.
    Hostile(hostile::Args),
    /// Chaos in Docker: random stop/kill/pause/disconnect/scale, balancer kills and key rotation under load.
    Chaos(chaos::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Gossip(a) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(gossip::run(a))
        }
        Command::Scale(a) => scale::run(a),
        Command::Proxy(a) => proxy::run(a),
        Command::Failover(a) => failover::run(a),
        Command::Pool(a) => pool::run(a),
        Command::Chaos(a) => chaos::run(a),
        Command::Hostile(a) => hostile::run(a),
    }
}
