//! `serf`: HashiCorp Serf's command line (0.8–0.10) over Shoal's own commands. Go's flag
//! syntax (`-flag=v`, `-flag v`, `--flag v`, booleans as `-flag` or `-flag=false`, options end
//! at the first operand), Serf's flag names and its JSON `-config-file`/`-config-dir` files are
//! read here and turned into the `shoal` command line that does the same; `version` and
//! `keygen` are answered here.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The Serf release whose command line this follows, and its protocol range.
const SERF_VERSION: &str = "0.10.1";
const PROTOCOL_MAX: u8 = 5;
const PROTOCOL_MIN: u8 = 2;

/// What `serf …` becomes.
#[derive(Debug, PartialEq, Eq)]
pub enum Serf {
    /// Run this `shoal` command line (program name first).
    Shoal(Vec<OsString>),
    /// Print this on stdout and exit 0.
    Print(String),
    /// Print this on stderr and exit with this code.
    Fail(String, u8),
}

/// How a flag takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Value,
    /// Repeatable; each use adds one value.
    List,
}

/// The flags one command takes, by Serf's name.
type Spec = &'static [(&'static str, Kind)];

const RPC: Spec = &[("rpc-addr", Kind::Value), ("rpc-auth", Kind::Value)];

/// Every command, its flags (besides `-rpc-addr`/`-rpc-auth`, which every client command
/// takes) and its one-line synopsis.
const COMMANDS: &[(&str, Spec, &str)] = &[
    ("agent", AGENT, "Runs a Serf agent"),
    ("event", &[("coalesce", Kind::Bool)], "Send a custom event through the Serf cluster"),
    ("force-leave", &[("prune", Kind::Bool)], "Forces a member of the cluster to enter the \"left\" state"),
    ("info", &[("format", Kind::Value)], "Provides debugging information for operators"),
    ("join", &[("replay", Kind::Bool)], "Tell Serf agent to join cluster"),
    ("keygen", &[], "Generates a new encryption key"),
    (
        "keys",
        &[("install", Kind::Value), ("use", Kind::Value), ("remove", Kind::Value), ("list", Kind::Bool)],
        "Manipulate the internal encryption keyring used by Serf",
    ),
    ("leave", &[], "Gracefully leaves the Serf cluster and shuts down"),
    (
        "members",
        &[
            ("detailed", Kind::Bool),
            ("role", Kind::Value),
            ("status", Kind::Value),
            ("format", Kind::Value),
            ("tag", Kind::List),
            ("name", Kind::Value),
        ],
        "Lists the members of a Serf cluster",
    ),
    ("monitor", &[("log-level", Kind::Value)], "Stream logs from a Serf agent"),
    (
        "query",
        &[
            ("node", Kind::List),
            ("tag", Kind::List),
            ("timeout", Kind::Value),
            ("no-ack", Kind::Bool),
            ("format", Kind::Value),
            ("relay-factor", Kind::Value),
        ],
        "Send a query to the Serf cluster",
    ),
    ("reachability", &[("verbose", Kind::Bool)], "Test network reachability"),
    ("rtt", &[], "Estimates network round trip time between nodes"),
    ("tags", &[("set", Kind::List), ("delete", Kind::List)], "Modify tags of a running Serf agent"),
    ("version", &[], "Prints the Serf version"),
];

const AGENT: Spec = &[
    ("bind", Kind::Value),
    ("advertise", Kind::Value),
    ("config-file", Kind::List),
    ("config-dir", Kind::List),
    ("encrypt", Kind::Value),
    ("keyring-file", Kind::Value),
    ("event-handler", Kind::List),
    ("join", Kind::List),
    ("replay", Kind::Bool),
    ("log-level", Kind::Value),
    ("node", Kind::Value),
    ("protocol", Kind::Value),
    ("role", Kind::Value),
    ("rpc-addr", Kind::Value),
    ("profile", Kind::Value),
    ("snapshot", Kind::Value),
    ("tag", Kind::List),
    ("discover", Kind::Value),
    ("iface", Kind::Value),
    ("mdns-iface", Kind::Value),
    ("mdns-disable-ipv4", Kind::Bool),
    ("mdns-disable-ipv6", Kind::Bool),
    ("tags-file", Kind::Value),
    ("syslog", Kind::Bool),
    ("retry-join", Kind::List),
    ("retry-max", Kind::Value),
    ("retry-interval", Kind::Value),
    ("rejoin", Kind::Bool),
    ("disable-compression", Kind::Bool),
    ("broadcast-timeout", Kind::Value),
];

/// Parsed flags: each flag's values in order (booleans as "true"/"false"), and the operands.
#[derive(Debug, Default)]
struct Flags {
    values: BTreeMap<&'static str, Vec<String>>,
    operands: Vec<String>,
}

impl Flags {
    fn last(&self, name: &str) -> Option<&str> {
        self.values.get(name)?.last().map(String::as_str)
    }

    fn all(&self, name: &str) -> &[String] {
        self.values.get(name).map_or(&[], Vec::as_slice)
    }

    fn on(&self, name: &str) -> bool {
        self.last(name) == Some("true")
    }
}

/// Go's `flag` package: `-name`, `--name`, `-name=value`, `-name value` (not for booleans);
/// stops at `--`, a lone `-` or the first operand. Errors read as Go's.
fn parse_flags(args: &[String], spec: &[(&'static str, Kind)]) -> Result<Flags, String> {
    let mut flags = Flags::default();
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')).filter(|b| !b.is_empty())
        else {
            break;
        };
        i += 1;
        if arg == "--" {
            break;
        }
        if body.starts_with('-') || body.starts_with('=') {
            return Err(format!("bad flag syntax: {arg}"));
        }
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        let Some(&(name, kind)) = spec.iter().find(|(n, _)| *n == name) else {
            return Err(format!("flag provided but not defined: -{name}"));
        };
        let value = match (kind, inline) {
            (Kind::Bool, None) => "true".to_owned(),
            (Kind::Bool, Some(v)) => match parse_go_bool(&v) {
                Some(b) => b.to_string(),
                None => return Err(format!("invalid boolean value {v:?} for -{name}: parse error")),
            },
            (_, Some(v)) => v,
            (_, None) => {
                let v = args.get(i).ok_or_else(|| format!("flag needs an argument: -{name}"))?;
                i += 1;
                v.clone()
            }
        };
        flags.values.entry(name).or_default().push(value);
    }
    flags.operands = args[i..].to_vec();
    Ok(flags)
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Serf's top-level help (also for an unknown command, exit 127 as its CLI library does).
fn help() -> String {
    let width = COMMANDS.iter().map(|(n, ..)| n.len()).max().unwrap_or(0);
    let mut out =
        String::from("Usage: serf [--version] [--help] <command> [<args>]\n\nAvailable commands are:\n");
    for (name, _, what) in COMMANDS {
        out.push_str(&format!("    {name:<width$}    {what}\n"));
    }
    out
}

/// Turns `serf ARGS…` into what runs.
pub fn translate(args: &[OsString]) -> Serf {
    let args: Vec<String> = match args.iter().map(|a| a.clone().into_string()).collect() {
        Ok(a) => a,
        Err(bad) => return Serf::Fail(format!("argument is not UTF-8: {bad:?}"), 1),
    };
    let Some((command, rest)) = args.split_first() else { return Serf::Fail(help(), 127) };
    match command.as_str() {
        "-v" | "-version" | "--version" | "version" => return Serf::Print(version()),
        "-h" | "-help" | "--help" => return Serf::Print(help()),
        _ => {}
    }
    let Some(&(name, spec, what)) = COMMANDS.iter().find(|(n, ..)| n == command) else {
        return Serf::Fail(help(), 127);
    };
    let mut all: Vec<(&'static str, Kind)> = spec.to_vec();
    if !matches!(name, "agent" | "keygen" | "version") {
        all.extend_from_slice(RPC);
    }
    let usage = || format!("Usage: serf {name} [options]\n\n  {what}.\n");
    if rest.iter().take_while(|a| *a != "--").any(|a| matches!(a.as_str(), "-h" | "-help" | "--help")) {
        return Serf::Print(usage());
    }
    let flags = match parse_flags(rest, &all) {
        Ok(f) => f,
        Err(e) => return Serf::Fail(format!("{e}\n{}", usage()), 1),
    };
    let shoal = match name {
        "agent" => agent(&flags),
        "version" => return Serf::Print(version()),
        "keygen" => Ok(vec!["keygen".to_owned()]),
        _ => client(name, &flags),
    };
    match shoal {
        Ok(argv) => {
            Serf::Shoal(std::iter::once("shoal".to_owned()).chain(argv).map(OsString::from).collect())
        }
        Err(e) => Serf::Fail(format!("Error: {e}"), 1),
    }
}

/// `serf version`: Serf's two lines, and what actually answers.
fn version() -> String {
    format!(
        "Serf v{SERF_VERSION} (Shoal {})\nAgent Protocol: {PROTOCOL_MAX} (Understands back to: {PROTOCOL_MIN})\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// The RPC flags, from the command line or Serf's `SERF_RPC_ADDR`/`SERF_RPC_AUTH`.
fn rpc_flags(flags: &Flags, out: &mut Vec<String>) {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(addr) = flags.last("rpc-addr").map(str::to_owned).or_else(|| env("SERF_RPC_ADDR")) {
        out.extend(["--rpc-addr".to_owned(), addr]);
    }
    if let Some(auth) = flags.last("rpc-auth").map(str::to_owned).or_else(|| env("SERF_RPC_AUTH")) {
        out.extend(["--rpc-auth".to_owned(), auth]);
    }
}

/// A client command's `shoal` arguments.
fn client(name: &str, flags: &Flags) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    // `monitor -log-level` is Shoal's global level (the agent filters to it).
    if let Some(level) = flags.last("log-level") {
        out.extend(["--log-level".to_owned(), level.to_lowercase()]);
    }
    out.push(name.to_owned());
    rpc_flags(flags, &mut out);
    let value = |out: &mut Vec<String>, serf: &str, shoal: &str| {
        for v in flags.all(serf) {
            out.extend([shoal.to_owned(), v.clone()]);
        }
    };
    let switch = |out: &mut Vec<String>, serf: &str, shoal: &str| {
        if flags.on(serf) {
            out.push(shoal.to_owned());
        }
    };
    match name {
        "members" => {
            switch(&mut out, "detailed", "--detailed");
            value(&mut out, "status", "--status");
            value(&mut out, "format", "--format");
            value(&mut out, "tag", "--tag");
            value(&mut out, "name", "--name");
            if let Some(role) = flags.last("role") {
                println!("Deprecation warning: 'Role' has been replaced with 'Tags'");
                out.extend(["--tag".to_owned(), format!("role={role}")]);
            }
        }
        "join" => switch(&mut out, "replay", "--replay"),
        "force-leave" => switch(&mut out, "prune", "--prune"),
        "event" if flags.last("coalesce") == Some("false") => out.push("--no-coalesce".to_owned()),
        "query" => {
            value(&mut out, "node", "--node");
            value(&mut out, "tag", "--tag");
            value(&mut out, "timeout", "--timeout");
            switch(&mut out, "no-ack", "--no-ack");
            value(&mut out, "format", "--format");
            value(&mut out, "relay-factor", "--relay-factor");
        }
        "tags" => {
            value(&mut out, "set", "--set");
            value(&mut out, "delete", "--delete");
        }
        "keys" => {
            value(&mut out, "install", "--install");
            value(&mut out, "use", "--use");
            value(&mut out, "remove", "--remove");
            switch(&mut out, "list", "--list");
        }
        "info" => value(&mut out, "format", "--format"),
        "reachability" => switch(&mut out, "verbose", "--verbose"),
        _ => {}
    }
    if !flags.operands.is_empty() {
        out.push("--".to_owned());
        out.extend(flags.operands.iter().cloned());
    }
    Ok(out)
}

/// Serf's agent configuration file (`-config-file`, `-config-dir`): the fields Serf documents.
/// Unknown fields are refused, as Serf refuses them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_name: Option<String>,
    role: Option<String>,
    disable_coordinates: Option<bool>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    tags_file: Option<String>,
    bind: Option<String>,
    advertise: Option<String>,
    encrypt_key: Option<String>,
    keyring_file: Option<String>,
    log_level: Option<String>,
    rpc_addr: Option<String>,
    rpc_auth: Option<String>,
    protocol: Option<i64>,
    replay_on_join: Option<bool>,
    query_response_size_limit: Option<i64>,
    query_size_limit: Option<i64>,
    user_event_size_limit: Option<i64>,
    #[serde(default)]
    start_join: Vec<String>,
    #[serde(default)]
    event_handlers: Vec<String>,
    profile: Option<String>,
    snapshot_path: Option<String>,
    leave_on_terminate: Option<bool>,
    skip_leave_on_interrupt: Option<bool>,
    discover: Option<String>,
    mdns: Option<serde_json::Value>,
    interface: Option<String>,
    reconnect_interval: Option<String>,
    reconnect_timeout: Option<String>,
    tombstone_timeout: Option<String>,
    disable_name_resolution: Option<bool>,
    enable_syslog: Option<bool>,
    syslog_facility: Option<String>,
    #[serde(default)]
    retry_join: Vec<String>,
    retry_max_attempts: Option<i64>,
    retry_interval: Option<String>,
    rejoin_after_leave: Option<bool>,
    enable_compression: Option<bool>,
    statsite_addr: Option<String>,
    statsd_addr: Option<String>,
    broadcast_timeout: Option<String>,
    validate_node_names: Option<bool>,
}

impl FileConfig {
    /// Lays `later` over `self` as Serf's `MergeConfig` does: set values win, lists append,
    /// tags merge.
    fn merge(mut self, later: FileConfig) -> FileConfig {
        macro_rules! over {
            ($($f:ident),*) => { $( if later.$f.is_some() { self.$f = later.$f; } )* };
        }
        over!(
            node_name,
            role,
            disable_coordinates,
            tags_file,
            bind,
            advertise,
            encrypt_key,
            keyring_file,
            log_level,
            rpc_addr,
            rpc_auth,
            protocol,
            replay_on_join,
            query_response_size_limit,
            query_size_limit,
            user_event_size_limit,
            profile,
            snapshot_path,
            leave_on_terminate,
            skip_leave_on_interrupt,
            discover,
            mdns,
            interface,
            reconnect_interval,
            reconnect_timeout,
            tombstone_timeout,
            disable_name_resolution,
            enable_syslog,
            syslog_facility,
            retry_max_attempts,
            retry_interval,
            rejoin_after_leave,
            enable_compression,
            statsite_addr,
            statsd_addr,
            broadcast_timeout,
            validate_node_names
        );
        self.tags.extend(later.tags);
        self.start_join.extend(later.start_join);
        self.event_handlers.extend(later.event_handlers);
        self.retry_join.extend(later.retry_join);
        self
    }
}

/// Reads `-config-file`/`-config-dir` paths in order: a file as is, a folder's `*.json` files in
/// name order (Serf's `ReadConfigPaths`).
fn read_config_paths(paths: &[String]) -> Result<FileConfig, String> {
    let mut merged = FileConfig::default();
    for path in paths {
        let path = Path::new(path);
        let meta = std::fs::metadata(path).map_err(|e| format!("Error reading '{}': {e}", path.display()))?;
        let files: Vec<PathBuf> = if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("Error reading '{}': {e}", path.display()))?
                .filter_map(|e| Some(e.ok()?.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
                .collect();
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        for file in files {
            let text =
                std::fs::read(&file).map_err(|e| format!("Error reading '{}': {e}", file.display()))?;
            let config: FileConfig = serde_json::from_slice(&text)
                .map_err(|e| format!("Error decoding '{}': {e}", file.display()))?;
            merged = merged.merge(config);
        }
    }
    Ok(merged)
}

/// Serf's `-bind`/`-advertise` value (`IP`, `IP:PORT`, `[IPv6]:PORT`, `:PORT`) with Serf's
/// default port.
fn with_port(addr: &str, what: &str) -> Result<String, String> {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(addr.to_owned());
    }
    if let Some(port) = addr.strip_prefix(':') {
        return Ok(format!("0.0.0.0:{port}"));
    }
    match addr.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(std::net::SocketAddr::new(ip, 7946).to_string()),
        Err(_) => Err(format!("Failed to parse {what} address: {addr:?}")),
    }
}

/// `serf agent …`'s `shoal agent` arguments: the config files first, the flags over them.
fn agent(flags: &Flags) -> Result<Vec<String>, String> {
    let mut paths: Vec<String> = flags.all("config-file").to_vec();
    paths.extend(flags.all("config-dir").iter().cloned());
    let file = read_config_paths(&paths)?;
    let pick = |flag: &str, from_file: &Option<String>| {
        flags.last(flag).map(str::to_owned).or_else(|| from_file.clone())
    };
    let mut out = vec!["agent".to_owned()];
    let mut push = |k: &str, v: String| out.extend([k.to_owned(), v]);

    if let Some(level) = pick("log-level", &file.log_level) {
        push("--log-level", level.to_lowercase());
    }
    if let Some(node) = pick("node", &file.node_name) {
        push("--node", node);
    }
    if let Some(iface) = pick("iface", &file.interface) {
        return Err(format!(
            "Invalid network interface: binding to an interface ({iface}) is not supported; give -bind its address"
        ));
    }
    if let Some(discover) = pick("discover", &file.discover) {
        return Err(format!("mDNS discovery ({discover}) is not supported; use -join or -retry-join"));
    }
    if flags.last("mdns-iface").is_some() {
        return Err("mDNS interface specified without enabling mDNS discovery".into());
    }
    if let Some(bind) = pick("bind", &file.bind) {
        push("--bind", with_port(&bind, "bind")?);
    }
    if let Some(adv) = pick("advertise", &file.advertise) {
        push("--advertise", with_port(&adv, "advertise")?);
    }
    if let Some(key) = pick("encrypt", &file.encrypt_key) {
        push("--encrypt", key);
    }
    if let Some(ring) = pick("keyring-file", &file.keyring_file) {
        push("--keyring-file", ring);
    }
    if let Some(rpc) = pick("rpc-addr", &file.rpc_addr) {
        push("--rpc-addr", rpc);
    }
    if let Some(auth) = file.rpc_auth.clone() {
        push("--rpc-auth", auth);
    }
    if let Some(profile) = pick("profile", &file.profile) {
        push("--profile", profile);
    }
    if let Some(snapshot) = pick("snapshot", &file.snapshot_path) {
        push("--snapshot", snapshot);
    }
    if let Some(p) = pick("protocol", &file.protocol.map(|p| p.to_string())) {
        match p.parse::<i64>() {
            Ok(v) if (i64::from(PROTOCOL_MIN)..=i64::from(PROTOCOL_MAX)).contains(&v) => {}
            _ => {
                return Err(format!(
                    "Protocol version {p} is not supported: this agent speaks {PROTOCOL_MIN} to {PROTOCOL_MAX}"
                ));
            }
        }
    }
    let replay = flags.last("replay").map(|v| v == "true").or(file.replay_on_join).unwrap_or(false);
    if replay {
        out.push("--replay".to_owned());
    }
    if file.disable_coordinates == Some(true) {
        out.push("--disable-coordinates".to_owned());
    }
    let rejoin = flags.last("rejoin").map(|v| v == "true").or(file.rejoin_after_leave).unwrap_or(false);
    if rejoin {
        out.push("--rejoin".to_owned());
    }
    // Tags: the file's, then -role and -tag on top (Serf's order).
    let mut tags = file.tags.clone();
    if let Some(role) = pick("role", &file.role) {
        tags.insert("role".into(), role);
    }
    for t in flags.all("tag") {
        let (k, v) = t.split_once('=').ok_or_else(|| format!("Invalid tag format: '{t}'"))?;
        tags.insert(k.to_owned(), v.to_owned());
    }
    for (k, v) in tags {
        out.extend(["--tag".to_owned(), format!("{k}={v}")]);
    }
    // Joins: start_join and retry_join alike (Shoal's join retries with back-off until it answers).
    let joins: Vec<String> = file
        .start_join
        .iter()
        .chain(&file.retry_join)
        .chain(flags.all("join"))
        .chain(flags.all("retry-join"))
        .cloned()
        .collect();
    for j in joins {
        out.extend(["--join".to_owned(), j]);
    }
    for h in file.event_handlers.iter().chain(flags.all("event-handler")) {
        out.extend(["--event-handler".to_owned(), h.clone()]);
    }
    let ignored = [
        ("tags-file", flags.last("tags-file").is_some() || file.tags_file.is_some()),
        ("syslog", flags.on("syslog") || file.enable_syslog == Some(true)),
        ("statsite_addr/statsd_addr", file.statsite_addr.is_some() || file.statsd_addr.is_some()),
    ];
    for (what, set) in ignored {
        if set {
            eprintln!(
                "serf: note: {what} is not supported by Shoal and is ignored (logs go to stdout; metrics are on the stats page)"
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serf(args: &[&str]) -> Serf {
        translate(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    fn shoal(args: &[&str]) -> Vec<String> {
        match serf(args) {
            Serf::Shoal(argv) => argv.into_iter().map(|a| a.into_string().unwrap()).collect(),
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn go_flag_syntax_in_all_its_spellings() {
        let want = ["shoal", "members", "--rpc-addr", "127.0.0.1:7000", "--status", "alive"];
        assert_eq!(shoal(&["members", "-rpc-addr=127.0.0.1:7000", "-status", "alive"]), want);
        assert_eq!(shoal(&["members", "--rpc-addr", "127.0.0.1:7000", "--status=alive"]), want);
        assert_eq!(
            shoal(&["event", "-coalesce=false", "deploy", "v2"]),
            ["shoal", "event", "--no-coalesce", "--", "deploy", "v2"]
        );
        // Options end at the first operand, as in Go.
        assert_eq!(shoal(&["join", "a", "-replay"]), ["shoal", "join", "--", "a", "-replay"]);
        assert_eq!(shoal(&["members", "-role", "web"]), ["shoal", "members", "--tag", "role=web"]);
        assert_eq!(shoal(&["monitor", "-log-level=DEBUG"]), ["shoal", "--log-level", "debug", "monitor"]);
    }

    #[test]
    fn the_reference_agent_line_becomes_shoal_agent() {
        let argv = shoal(&[
            "agent",
            "--join",
            "ha",
            "--replay",
            "--event-handler",
            "member-join=/serf-handlers/member-join.sh",
            "--event-handler",
            "member-leave,member-failed=/serf-handlers/member-leave.sh",
            "--tag",
            "role=balancer",
        ]);
        assert_eq!(
            argv,
            [
                "shoal",
                "agent",
                "--replay",
                "--tag",
                "role=balancer",
                "--join",
                "ha",
                "--event-handler",
                "member-join=/serf-handlers/member-join.sh",
                "--event-handler",
                "member-leave,member-failed=/serf-handlers/member-leave.sh"
            ]
        );
    }

    #[test]
    fn bad_command_lines_fail_as_serf_does() {
        assert!(
            matches!(serf(&["members", "-x"]), Serf::Fail(m, 1) if m.starts_with("flag provided but not defined: -x\n"))
        );
        assert!(
            matches!(serf(&["agent", "-node"]), Serf::Fail(m, 1) if m.starts_with("flag needs an argument: -node"))
        );
        assert!(
            matches!(serf(&["agent", "-replay=maybe"]), Serf::Fail(m, 1) if m.contains("invalid boolean value"))
        );
        assert!(matches!(serf(&["frobnicate"]), Serf::Fail(m, 127) if m.contains("Available commands are:")));
        assert!(
            matches!(serf(&["agent", "-tag", "novalue"]), Serf::Fail(m, 1) if m == "Error: Invalid tag format: 'novalue'")
        );
        assert!(matches!(serf(&["agent", "-protocol", "9"]), Serf::Fail(..)));
        assert!(
            matches!(serf(&["version"]), Serf::Print(v) if v.starts_with("Serf v0.10.1 (Shoal ") && v.contains("Agent Protocol: 5 (Understands back to: 2)"))
        );
    }

    #[test]
    fn config_files_merge_in_order_and_unknown_fields_are_refused() {
        let dir = std::env::temp_dir().join(format!("shoal-serf-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        std::fs::write(
            dir.join("base.json"),
            r#"{"node_name":"web-1","tags":{"role":"backend","zone":"a"},"start_join":["ha"],"bind":"10.0.0.5"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("conf.d/10.json"),
            r#"{"tags":{"zone":"b"},"retry_join":["ha2"],"replay_on_join":true}"#,
        )
        .unwrap();
        std::fs::write(dir.join("conf.d/ignored.txt"), "not json").unwrap();
        let base = dir.join("base.json");
        let confd = dir.join("conf.d");
        let argv = shoal(&[
            "agent",
            "-config-file",
            base.to_str().unwrap(),
            "-config-dir",
            confd.to_str().unwrap(),
            "-tag",
            "port=80",
        ]);
        assert_eq!(
            argv,
            [
                "shoal",
                "agent",
                "--node",
                "web-1",
                "--bind",
                "10.0.0.5:7946",
                "--replay",
                "--tag",
                "port=80",
                "--tag",
                "role=backend",
                "--tag",
                "zone=b",
                "--join",
                "ha",
                "--join",
                "ha2"
            ]
        );
        std::fs::write(dir.join("bad.json"), r#"{"node_name":"x","nodename":"typo"}"#).unwrap();
        let bad = dir.join("bad.json");
        match serf(&["agent", "-config-file", bad.to_str().unwrap()]) {
            Serf::Fail(m, 1) => {
                assert!(m.contains("Error decoding") && m.contains("unknown field `nodename`"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
