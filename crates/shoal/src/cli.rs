//! Command-line interface: every subcommand and flag, with help texts and env vars.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
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
    /// Log level: error, warn, info, debug or trace (or a tracing filter such as `shoal_gossip=debug`)
    /// [default: info; `demo` shows only the balancer's server changes: warn,shoal::server=info].
    /// Lines that pass it from a dependency (any target outside `shoal*`) are limited per call
    /// site to 10 at once, then one every 10 s; how many were dropped is logged.
    #[arg(long, global = true, env = "SHOAL_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Write logs as JSON lines.
    #[arg(long, global = true, env = "SHOAL_LOG_JSON")]
    pub log_json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a gossip agent: a full member of a Shoal or HashiCorp Serf cluster.
    Agent(Box<AgentArgs>),
    /// Run an HTTP load balancer whose backend pool follows the cluster live (with its agent).
    Balancer(Box<BalancerArgs>),
    /// Run the demo web app of the reference stack.
    Webapp(WebappArgs),
    /// Run a whole cluster on loopback: a balancer and N web apps with their agents.
    Demo(DemoArgs),
    /// List the members an agent knows (works against Serf agents too).
    Members(MembersArgs),
    /// Tell an agent to join a cluster through the given addresses.
    Join(JoinArgs),
    /// Make an agent leave the cluster gracefully and stop.
    Leave(RpcArgs),
    /// Remove a failed member now instead of waiting for the reconnect timeout.
    ForceLeave(ForceLeaveArgs),
    /// Fire a user event across the cluster.
    Event(EventArgs),
    /// Ask the cluster a question and print the acks and answers.
    Query(QueryArgs),
    /// Set or delete an agent's tags at run time.
    Tags(TagsArgs),
    /// Stream an agent's log.
    Monitor(MonitorArgs),
    /// Manage gossip encryption keys on every member at once.
    Keys(KeysArgs),
    /// Print a new random gossip encryption key (32 bytes in base64), as `serf keygen` does.
    Keygen,
    /// Show an agent's state and statistics.
    Info(InfoArgs),
    /// Check that every live member answers a ping query, as `serf reachability` does.
    Reachability(ReachabilityArgs),
    /// Estimate the round trip time between two members from their network coordinates
    /// (one name: between it and the agent), as `serf rtt` does.
    Rtt(RttArgs),
    /// Steer a running balancer's servers through its runtime API (drain, ready, maint, weight).
    Server(ServerArgs),
    /// Render config files (HAProxy, nginx, …) from any agent's membership; check, then reload.
    Render(RenderArgs),
    /// Render the template on stdin with handlebars-cmd's command line: `--key value` pairs (a
    /// value that parses as JSON is JSON), an optional JSON data file, `--strict`. Also run when
    /// `shoal` is invoked as `handlebars` (a symlink).
    Handlebars(ToolArgs),
    /// Run a command with the container's environment, as s6-overlay's `with-contenv` (also run
    /// when `shoal` is invoked as `with-contenv`, e.g. from a `#!/usr/bin/with-contenv sh` line).
    WithContenv(ToolArgs),
    /// Send s6-svc's commands (`-h` SIGHUP, `-t` SIGTERM, `-r` restart, `-d` down, `-u` up, `-o`
    /// once, `-x` exit, `-wu`/`-wd` wait…) to a service of `shoal init` (or of s6), e.g.
    /// `s6-svc -h /var/run/s6/services/ha`. Also run as `s6-svc` (a symlink).
    #[command(name = "s6-svc")]
    S6Svc(ToolArgs),
    /// Send s6-svscanctl's commands to `shoal init`: `-a`/`-h` rescan the services folder,
    /// `-t` stop the container. Also run as `s6-svscanctl`.
    #[command(name = "s6-svscanctl")]
    S6Svscanctl(ToolArgs),
    /// Print a supervised service's state as s6-svstat does (`up (pid 12) 5 seconds`, or the
    /// fields of `-o up,pid,…`). Also run as `s6-svstat`.
    #[command(name = "s6-svstat")]
    S6Svstat(ToolArgs),
    /// Run HashiCorp Serf's command line (`serf agent -join ha -tag role=web`, `serf members
    /// -status=alive`, …): Go's flag syntax, Serf's flag names and JSON config files. Also run
    /// when `shoal` is invoked as `serf` (a symlink).
    Serf(ToolArgs),
    /// Be a container's PID 1: run init scripts, supervise services, stop them in order.
    Init(InitArgs),
}

/// Flags of `shoal init` (s6-overlay's layout by default).
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Scripts run once, in name order, before the services.
    #[arg(long, env = "SHOAL_INIT_CONT_INIT_DIR", default_value = "/etc/cont-init.d")]
    pub cont_init_dir: PathBuf,
    /// One folder per service with an executable `run` (optional `finish`, `down`, `stop-order`).
    #[arg(long, env = "SHOAL_INIT_SERVICES_DIR", default_value = "/etc/services.d")]
    pub services_dir: PathBuf,
    /// Scripts run once, in name order, after the services stopped.
    #[arg(long, env = "SHOAL_INIT_CONT_FINISH_DIR", default_value = "/etc/cont-finish.d")]
    pub cont_finish_dir: PathBuf,
    /// Time each stop-order group gets after SIGTERM before SIGKILL.
    #[arg(long, env = "SHOAL_INIT_GRACE", value_parser = parse_duration, default_value = "10s")]
    pub grace: Duration,
    /// Least time between two starts of a service (never below 1s).
    #[arg(long, env = "SHOAL_INIT_RESTART_DELAY", value_parser = parse_duration, default_value = "1s")]
    pub restart_delay: Duration,
    /// Stop the container with exit code 1 when a service fails this many times in a row
    /// (each run shorter than 10 s); 0 restarts forever.
    #[arg(long, env = "SHOAL_INIT_MAX_FAILURES", default_value_t = 0)]
    pub max_failures: u32,
    /// Where the services appear for s6-svc and s6-svstat, each with its `supervise/` folder:
    /// the first holds them, the others are made links to it (s6-overlay v3's place, then
    /// v1 and v2's). Repeatable; a folder that cannot be made only costs that control.
    #[arg(
        long = "scan-dir",
        env = "SHOAL_INIT_SCAN_DIRS",
        value_delimiter = ',',
        default_values = ["/run/service", "/var/run/s6/services"]
    )]
    pub scan_dirs: Vec<PathBuf>,
    /// Where the container's environment is written (one file per variable, readable by this
    /// user only) for `with-contenv`; `none` writes nothing.
    #[arg(long, env = "SHOAL_INIT_CONTENV_DIR", default_value = "/run/s6/container_environment")]
    pub contenv_dir: PathBuf,
    /// The main command (after `--`): its exit ends the container with its exit code.
    #[arg(last = true)]
    pub main: Vec<String>,
}

/// Template rendering, shared by `shoal render`, `shoal agent` and `shoal balancer`.
#[derive(Debug, Clone, Args)]
pub struct RenderFlags {
    /// Render the Handlebars template SRC to DEST on every membership change; repeatable.
    #[arg(
        long = "template",
        visible_alias = "render",
        value_name = "SRC:DEST",
        env = "SHOAL_RENDER_TEMPLATES",
        value_delimiter = ','
    )]
    pub templates: Vec<String>,
    /// Run on the staged file before it replaces DEST ({{src}} is its path), e.g.
    /// 'haproxy -c -f {{src}}'; if it fails, DEST and the service are left alone.
    #[arg(long, env = "SHOAL_RENDER_CHECK", value_name = "CMD")]
    pub check: Option<String>,
    /// Run after DEST changed, e.g. 'kill -USR2 $(cat /run/haproxy.pid)'.
    #[arg(long, env = "SHOAL_RENDER_COMMAND", value_name = "CMD")]
    pub command: Option<String>,
    /// Longest time for the check and the command.
    #[arg(long, env = "SHOAL_RENDER_COMMAND_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub command_timeout: Duration,
    /// Quiescence MIN:MAX: render once membership has been calm for MIN, at most MAX after the first change.
    #[arg(long, env = "SHOAL_RENDER_WAIT", default_value = "100ms:1s")]
    pub wait: shoal_render::Wait,
    /// Permission bits of DEST, in octal [default: those of the file it replaces, or 0644].
    #[arg(long, env = "SHOAL_RENDER_PERMS")]
    pub perms: Option<String>,
    /// Keep the previous DEST as DEST.bak.
    #[arg(long, env = "SHOAL_RENDER_BACKUP")]
    pub backup: bool,
    /// Fail on a missing value instead of rendering it empty.
    #[arg(long, env = "SHOAL_RENDER_STRICT")]
    pub strict: bool,
    /// Members with this `role` tag are the template's `addresses` and `backends`.
    #[arg(long, env = "SHOAL_RENDER_ROLE", default_value = "backend")]
    pub render_role: String,
    /// The backends' service port unless a member's `port` tag says otherwise.
    #[arg(long, env = "SHOAL_RENDER_PORT", default_value_t = 3000)]
    pub render_port: u16,
    /// TOML file listing templates with their own check, command, perms and backup (the flags
    /// above add to it).
    #[arg(long, env = "SHOAL_RENDER_CONFIG")]
    pub render_config: Option<PathBuf>,
}

impl Command {
    /// The stand-in tool this command runs, with its own arguments.
    pub fn tool(&self) -> Option<(crate::multicall::Tool, &[std::ffi::OsString])> {
        use crate::multicall::Tool;
        let (tool, args) = match self {
            Command::Handlebars(a) => (Tool::Handlebars, a),
            Command::WithContenv(a) => (Tool::WithContenv, a),
            Command::S6Svc(a) => (Tool::S6Svc, a),
            Command::S6Svscanctl(a) => (Tool::S6Svscanctl, a),
            Command::S6Svstat(a) => (Tool::S6Svstat, a),
            _ => return None,
        };
        Some((tool, &args.args))
    }
}

/// A stand-in tool's own command line, passed to it untouched.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct ToolArgs {
    /// The tool's arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<std::ffi::OsString>,
}

/// Flags of `shoal render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub flags: RenderFlags,
    /// The agent whose membership to follow (Shoal's or HashiCorp Serf's RPC).
    #[command(flatten)]
    pub rpc: RpcArgs,
    /// Render once from the current membership and exit (non-zero if a template failed).
    #[arg(long)]
    pub once: bool,
}

/// How to reach a balancer's runtime API.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The balancer's runtime API socket.
    #[arg(long, env = "SHOAL_ADMIN_SOCKET", default_value = "/run/shoal/admin.sock")]
    pub socket: PathBuf,
    /// Use the runtime API on TCP instead (HOST:PORT).
    #[arg(long, env = "SHOAL_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// Token for the runtime API on TCP.
    #[arg(long, env = "SHOAL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

/// Flags of `shoal server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(subcommand)]
    pub action: ServerAction,
}

/// What to do with a server.
#[derive(Debug, Subcommand)]
pub enum ServerAction {
    /// List every pool's servers with their state.
    Show,
    /// Stop sending new requests to a server; in-flight ones finish (kept until `ready`).
    Drain(ServerTarget),
    /// Take a server out of service (kept until `ready`).
    Maint(ServerTarget),
    /// Clear drain or maintenance.
    Ready(ServerTarget),
    /// Set a server's weight (0-256; kept across its restarts).
    Weight {
        #[command(flatten)]
        target: ServerTarget,
        /// The new weight.
        weight: u32,
    },
    /// Send raw runtime API commands (e.g. "show info").
    Exec {
        /// The command line.
        #[arg(required = true, num_args = 1..)]
        command: Vec<String>,
    },
}

/// A server, by name, optionally in one pool.
#[derive(Debug, Args)]
pub struct ServerTarget {
    /// Server (member) name, or POOL/NAME.
    pub name: String,
    /// The pool, when the name is in several.
    #[arg(long)]
    pub pool: Option<String>,
}

/// How to reach an agent's RPC.
#[derive(Debug, Clone, Args)]
pub struct RpcArgs {
    /// RPC address of the agent.
    #[arg(long, env = "SHOAL_RPC_ADDR", default_value = "127.0.0.1:7373")]
    pub rpc_addr: String,
    /// RPC auth token, if the agent requires one.
    #[arg(long, env = "SHOAL_RPC_AUTH", hide_env_values = true)]
    pub rpc_auth: Option<String>,
}

/// Output format of the listing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Text,
    /// JSON, as `serf … -format json` prints it.
    Json,
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
    #[arg(long, env = "SHOAL_ENCRYPT", hide_env_values = true, conflicts_with = "encrypt_file")]
    pub encrypt: Option<String>,
    /// File holding the gossip encryption key in base64 (a Docker or Kubernetes secret, e.g.
    /// /run/secrets/gossip_key); surrounding whitespace is ignored. Keeps the key out of the
    /// environment and the process list.
    #[arg(long, env = "SHOAL_ENCRYPT_FILE")]
    pub encrypt_file: Option<PathBuf>,
    /// File that keeps the keyring (JSON list of base64 keys, primary first); created from
    /// --encrypt when missing, rewritten when keys are rotated.
    #[arg(long, env = "SHOAL_KEYRING_FILE")]
    pub keyring_file: Option<PathBuf>,
    /// Timing profile: lan (Serf's default), wan, local, or fast (containers on one network).
    #[arg(long, env = "SHOAL_PROFILE", default_value_t = Profile::Lan)]
    pub profile: Profile,
    /// Address of the Serf-compatible RPC server (keep it on loopback, or set --rpc-auth).
    #[arg(long, env = "SHOAL_RPC_ADDR", default_value = "127.0.0.1:7373")]
    pub rpc_addr: SocketAddr,
    /// Token RPC clients must present before any other command.
    #[arg(long, env = "SHOAL_RPC_AUTH", hide_env_values = true)]
    pub rpc_auth: Option<String>,
    /// Cluster label: sent with every packet; traffic with another label is dropped.
    #[arg(long, env = "SHOAL_LABEL")]
    pub label: Option<String>,
    /// Event handler script, as [FILTER=]SCRIPT with Serf's filter syntax
    /// (member-join,member-leave,member-failed,member-update,member-reap,user[:NAME],query[:NAME],*); repeatable.
    #[arg(long = "event-handler", env = "SHOAL_EVENT_HANDLERS", value_delimiter = ';')]
    pub event_handlers: Vec<String>,
    /// Kill a handler script that runs longer than this (e.g. 30s) [default: never].
    #[arg(long, env = "SHOAL_HANDLER_TIMEOUT", value_parser = parse_duration)]
    pub handler_timeout: Option<Duration>,
    /// Longest time member events are batched for handlers and RPC streams (0 turns batching off).
    #[arg(long, env = "SHOAL_COALESCE_PERIOD", value_parser = parse_duration, default_value = "3s")]
    pub coalesce_period: Duration,
    /// Batched member events are released after this much calm.
    #[arg(long, env = "SHOAL_QUIESCENT_PERIOD", value_parser = parse_duration, default_value = "1s")]
    pub quiescent_period: Duration,
    /// Serf-format snapshot file: after a restart, rejoin known members and skip handled events.
    #[arg(long, env = "SHOAL_SNAPSHOT")]
    pub snapshot: Option<PathBuf>,
    /// Rejoin from the snapshot even after a graceful leave.
    #[arg(long, env = "SHOAL_REJOIN")]
    pub rejoin: bool,
    /// Compute no Vivaldi network coordinates and send none in acks (Serf's
    /// `disable_coordinates`); `rtt` and the `nearest` algorithm then know no distances.
    #[arg(long, env = "SHOAL_DISABLE_COORDINATES")]
    pub disable_coordinates: bool,
    /// Longest time a graceful leave may take on SIGTERM/SIGINT, in seconds.
    #[arg(long, env = "SHOAL_LEAVE_TIMEOUT", default_value_t = 15)]
    pub leave_timeout: u64,
    /// Config files rendered from this agent's membership (as `shoal render` does).
    #[command(flatten, next_help_heading = "Rendering templates")]
    pub render: RenderFlags,
}

/// Parses durations such as `500ms`, `5s`, `1m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 5s, 1m)"))
}

#[derive(Debug, Args)]
pub struct MembersArgs {
    #[command(flatten)]
    pub rpc: RpcArgs,
    /// Only members whose status matches this regular expression (alive, leaving, left, failed).
    #[arg(long)]
    pub status: Option<String>,
    /// Only members whose tag matches: KEY=REGEX; repeatable.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Only members whose name matches this regular expression.
    #[arg(long)]
    pub name: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Also show protocol versions.
    #[arg(long)]
    pub detailed: bool,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    #[command(flatten)]
    pub rpc: RpcArgs,
    /// Replay past user events.
    #[arg(long)]
    pub replay: bool,
    /// Addresses to join (HOST or HOST:PORT).
    #[arg(required = true)]
    pub addresses: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ForceLeaveArgs {
    #[command(flatten)]
    pub rpc: RpcArgs,
    /// Forget the member at once instead of keeping it as `left`.
    #[arg(long)]
    pub prune: bool,
    /// The failed member.
    pub node: String,
}

#[derive(Debug, Args)]
pub struct EventArgs {
    #[command(flatten)]
    pub rpc: RpcArgs,
    /// Deliver every event, even when newer ones of the same name arrive within the coalesce period.
    #[arg(long)]
    pub no_coalesce: bool,
    /// Event name.
    pub name: String,
    /// Optional payload.
    pub payload: Option<String>,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub rpc: RpcArgs,
    /// Only this node answers; repeatable.
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// Only nodes whose tag matches: KEY=REGEX; repeatable.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// How long to wait for answers (e.g. 5s) [default: Serf's formula from the cluster size].
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Do not ask nodes to acknowledge.
    #[arg(long)]
    pub no_ack: bool,
    /// Also relay answers through this many random members.
    #[arg(long, default_value_t = 0)]
    pub relay_factor: u8,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Query name.
    pub name: String,
    /// Optional payload.
    pub payload: Option<String>,
}

#[derive(Debug, Args)]
pub struct TagsArgs {
    #[command(flatten)]
    pub rpc: RpcArgs,
    /// Tag to set as KEY=VALUE; repeatable.
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Tag to delete; repeatable.
    #[arg(long = "delete")]
    pub delete: Vec<String>,
}

/// `shoal monitor` shows the agent's log from the global `--log-level` up (TRACE, DEBUG, INFO, WARN, ERR).
#[derive(Debug, Args)]
pub struct MonitorArgs {
    #[command(flatten)]
    pub rpc: RpcArgs,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct KeyAction {
    /// Install a new key on every member.
    #[arg(long)]
    pub install: Option<String>,
    /// Make an installed key the primary key everywhere.
    #[arg(long = "use")]
    pub use_key: Option<String>,
    /// Remove a key from every member.
    #[arg(long)]
    pub remove: Option<String>,
    /// List the keys in use and on how many members.
    #[arg(long)]
    pub list: bool,
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub rpc: RpcArgs,
    #[command(flatten)]
    pub action: KeyAction,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub rpc: RpcArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ReachabilityArgs {
    #[command(flatten)]
    pub rpc: RpcArgs,
    /// Print each ack and the query's timing.
    #[arg(long)]
    pub verbose: bool,
}

#[derive(Debug, Args)]
pub struct RttArgs {
    #[command(flatten)]
    pub rpc: RpcArgs,
    /// One or two member names.
    #[arg(required = true, num_args = 1..=2)]
    pub nodes: Vec<String>,
}

/// Flags of `shoal balancer`: every agent flag, plus the balancer's.
#[derive(Debug, Args)]
pub struct BalancerArgs {
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Address to serve HTTP on; repeatable.
    #[arg(long = "listen", env = "SHOAL_LISTEN", value_delimiter = ',', default_value = "0.0.0.0:80")]
    pub listen: Vec<SocketAddr>,
    /// Members with this `role` tag are backends.
    #[arg(long, env = "SHOAL_BACKEND_ROLE", default_value = "backend")]
    pub backend_role: String,
    /// Backends must also carry this tag (KEY=VALUE); repeatable.
    #[arg(long = "backend-tag", env = "SHOAL_BACKEND_TAGS", value_delimiter = ',')]
    pub backend_tags: Vec<String>,
    /// Port of the service on each backend (a member's `port` tag overrides it).
    #[arg(long, env = "SHOAL_BACKEND_PORT", default_value_t = 3000)]
    pub backend_port: u16,
    /// How to pick a backend: roundrobin, leastconn, random, source, uri, nearest (lowest
    /// estimated round trip from the network coordinates), header:NAME, cookie:NAME.
    #[arg(long, env = "SHOAL_ALGORITHM", default_value = "roundrobin")]
    pub algorithm: String,
    /// Sticky sessions: the cookie the balancer sets (e.g. SERVERID).
    #[arg(long, env = "SHOAL_STICKY_COOKIE")]
    pub sticky_cookie: Option<String>,
    /// Path of the active health check (HEAD PATH, like the reference stack's `option httpchk`).
    #[arg(long, env = "SHOAL_HEALTH_PATH", default_value = "/")]
    pub health_path: String,
    /// Time between health checks.
    #[arg(long, env = "SHOAL_HEALTH_INTERVAL", value_parser = parse_duration, default_value = "2s")]
    pub health_interval: Duration,
    /// Route to members as soon as gossip says they are alive, without active checks.
    #[arg(long, env = "SHOAL_NO_HEALTH_CHECKS")]
    pub no_health_checks: bool,
    /// Address of the stats page and status endpoints.
    #[arg(long, env = "SHOAL_STATS", default_value = "0.0.0.0:1936")]
    pub stats: SocketAddr,
    /// Require HTTP Basic credentials (USER:PASSWORD) on the stats listener (`/;up` stays open).
    #[arg(long, env = "SHOAL_STATS_AUTH", hide_env_values = true)]
    pub stats_auth: Option<String>,
    /// Accept `Authorization: Bearer TOKEN` on the stats listener (alone or besides --stats-auth).
    #[arg(long, env = "SHOAL_STATS_TOKEN", hide_env_values = true)]
    pub stats_token: Option<String>,
    /// Access log on stdout: httplog (HAProxy's format), json, or off [default: httplog, json with --log-json].
    #[arg(long, env = "SHOAL_ACCESS_LOG", value_parser = parse_access_log)]
    pub access_log: Option<shoal_balancer::AccessLogFormat>,
    /// Unix socket of the runtime API (HAProxy's `show stat`, `set server`, …); "none" turns it off.
    #[arg(long, env = "SHOAL_ADMIN_SOCKET", default_value = "/run/shoal/admin.sock")]
    pub admin_socket: String,
    /// Also serve the runtime API on TCP (like the reference's port 9999); needs --admin-token
    /// unless on loopback.
    #[arg(long, env = "SHOAL_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Token for the runtime API on TCP (`auth TOKEN` first) and for `POST /;cmd` on the stats listener.
    #[arg(long, env = "SHOAL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// TOML configuration (frontends, pools, routes, timeouts, limits); replaces the flags above.
    /// Re-read on SIGHUP.
    #[arg(long, env = "SHOAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Worker threads for the proxy [default: one per CPU minus one, at least one: the spare
    /// core serves the kernel's network work, the access-log writer and gossip].
    #[arg(long, env = "SHOAL_THREADS", value_parser = parse_threads)]
    pub threads: Option<usize>,
}

fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ 1..=1024) => Ok(n),
        _ => Err(format!("{s:?} is not a thread count from 1 to 1024")),
    }
}

/// The balancer's worker threads when `--threads` is not given: one per CPU it may run on,
/// minus one (at least one). Measured on 2 cores with the load beside it (`bench/proxy.sh
/// --rows threads`), one thread serves as many requests as two with a lower p99.
pub fn default_balancer_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

fn parse_access_log(s: &str) -> Result<shoal_balancer::AccessLogFormat, String> {
    s.parse()
}

/// Flags of `shoal webapp`.
#[derive(Debug, Args)]
pub struct WebappArgs {
    /// Address to serve on.
    #[arg(long, env = "SHOAL_WEBAPP_LISTEN", default_value = "0.0.0.0:3000")]
    pub listen: SocketAddr,
    /// Address this server reports [default: the listen IP, or the first private IPv4].
    #[arg(long, env = "SERVER_IP")]
    pub server_ip: Option<String>,
    /// Name this server reports [default: the host name].
    #[arg(long, env = "SERVER_NAME")]
    pub server_name: Option<String>,
    /// Tag this server reports (also read from SERVER_TAG).
    #[arg(long, env = "TAG")]
    pub tag: Option<String>,
}

/// Flags of `shoal demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Web apps to start with.
    #[arg(long, default_value_t = 3)]
    pub backends: usize,
    /// Where the balancer serves.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the stats are served.
    #[arg(long, default_value = "127.0.0.1:1936")]
    pub stats: SocketAddr,
    /// Read commands from stdin (a: add, r: remove, k: kill, s: status, q: quit).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub interactive: bool,
}
