//! `shoal-bench`: measures Shoal next to its peers in one run and prints figures and ratios.
//!
//! * `gossip`: real agent processes on loopback — HashiCorp Serf, Shoal `lan`,
//!   Shoal `fast` — measuring join visibility, kill -9 to `failed`, and RSS.
//! * `scale`: the simulator — time for news to reach 99.99 % of members and
//!   bytes per second per member, for 100 and 1 000 members (full protocol) and
//!   10 000 (dissemination model), next to Serf's published model.
//!
//! Run through the scripts in `bench/`, which build in release mode first.

mod gossip;
mod proxy;
mod scale;
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
    /// HTTP proxies: throughput, latency and memory — Shoal vs HAProxy vs nginx.
    Proxy(proxy::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Gossip(a) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(gossip::run(a))
        }
        Command::Scale(a) => scale::run(a),
        Command::Proxy(a) => proxy::run(a),
    }
}
