//! Command-line interface: every subcommand and flag, with help texts and env vars.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use shoal_gossip::Profile;

/// Shoal turns a set of containers into a self-organizing web cluster.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Logging flags, shared by every subcommand.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log level: error, warn, info, debug or trace (or a tracing filter such as `shoal=debug`).
    #[arg(long, global = true, env = "SHOAL_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Write logs as JSON lines.
    #[arg(long, global = true, env = "SHOAL_LOG_JSON")]
    pub log_json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a gossip agent: a full member of a Shoal or HashiCorp Serf cluster.
    Agent(AgentArgs),
}

/// Flags of `shoal agent` (Serf's, with `--flag` spelling and `SHOAL_*` env vars).
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Node name, unique in the cluster [default: the host name].
    #[arg(long, env = "SHOAL_NODE")]
    pub node: Option<String>,
    /// Address to listen on for gossip (UDP and TCP).
    #[arg(long, env = "SHOAL_BIND", default_value = "0.0.0.0:7946")]
    pub bind: SocketAddr,
    /// Address to advertise to other members [default: the bind address, or the first private IPv4].
    #[arg(long, env = "SHOAL_ADVERTISE")]
    pub advertise: Option<SocketAddr>,
    /// Member to join (HOST or HOST:PORT); repeatable. Retried with back-off until one answers;
    /// host names are resolved at each attempt.
    #[arg(long = "join", env = "SHOAL_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    /// Replay past user events when joining.
    #[arg(long, env = "SHOAL_REPLAY")]
    pub replay: bool,
    /// Tag to publish as KEY=VALUE (e.g. role=backend); repeatable.
    #[arg(long = "tag", env = "SHOAL_TAGS", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Gossip encryption key: 16, 24 or 32 bytes in base64 (as `serf keygen` prints).
    #[arg(long, env = "SHOAL_ENCRYPT", hide_env_values = true)]
    pub encrypt: Option<String>,
    /// File that keeps the keyring (JSON list of base64 keys, primary first); created from
    /// --encrypt when missing, rewritten when keys are rotated.
    #[arg(long, env = "SHOAL_KEYRING_FILE")]
    pub keyring_file: Option<PathBuf>,
    /// Timing profile: lan (Serf's default), wan, local, or fast (containers on one network).
    #[arg(long, env = "SHOAL_PROFILE", default_value_t = Profile::Lan)]
    pub profile: Profile,
    /// Address of the Serf-compatible RPC server.
    #[arg(long, env = "SHOAL_RPC_ADDR", default_value = "127.0.0.1:7373")]
    pub rpc_addr: SocketAddr,
    /// Cluster label: sent with every packet; traffic with another label is dropped.
    #[arg(long, env = "SHOAL_LABEL")]
    pub label: Option<String>,
    /// Longest time a graceful leave may take on SIGTERM/SIGINT, in seconds.
    #[arg(long, env = "SHOAL_LEAVE_TIMEOUT", default_value_t = 15)]
    pub leave_timeout: u64,
}
