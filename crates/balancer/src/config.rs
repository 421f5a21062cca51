//! The balancer's configuration: frontends (listeners and routes), pools
//! (which members, how to pick one, health, stickiness, retries), timeouts and
//! limits. It comes from flags or a TOML file; [`BalancerConfig::validate`]
//! refuses a bad one with a message naming the field, before anything changes.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::cidr::Cidr;

/// Largest weight a server may have (HAProxy's range): the ceiling of `max_weight` and of an
/// operator's `set server weight`.
pub const MAX_WEIGHT: u32 = 256;

/// Parses `5s`, `500ms`, `1m` (and `0`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// How a pool picks a server for a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// Smooth weighted round-robin (nginx's; the reference stack's `balance roundrobin`).
    #[default]
    RoundRobin,
    /// Fewest requests in flight, relative to weight.
    LeastConn,
    /// Two random servers, the less busy one wins.
    Random2,
    /// Consistent hash of the client IP.
    Source,
    /// Consistent hash of a request header.
    Header(String),
    /// Consistent hash of a cookie.
    Cookie(String),
    /// Consistent hash of the path and query.
    Uri,
    /// Lowest estimated round trip (Serf's network coordinates), spilling over to the next
    /// nearest while the nearest is much busier than the least busy server.
    Nearest,
}

impl Algorithm {
    /// Whether it picks by consistent hashing (and so needs the hash ring).
    pub fn hashes(&self) -> bool {
        matches!(self, Algorithm::Source | Algorithm::Header(_) | Algorithm::Cookie(_) | Algorithm::Uri)
    }

    /// The name it is configured by (HAProxy's `algo` field).
    pub fn name(&self) -> String {
        match self {
            Algorithm::RoundRobin => "roundrobin".into(),
            Algorithm::LeastConn => "leastconn".into(),
            Algorithm::Random2 => "random".into(),
            Algorithm::Source => "source".into(),
            Algorithm::Uri => "uri".into(),
            Algorithm::Nearest => "nearest".into(),
            Algorithm::Header(h) => format!("header:{h}"),
            Algorithm::Cookie(c) => format!("cookie:{c}"),
        }
    }
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "roundrobin" => Algorithm::RoundRobin,
            "leastconn" => Algorithm::LeastConn,
            "random" | "random2" => Algorithm::Random2,
            "source" => Algorithm::Source,
            "uri" => Algorithm::Uri,
            "nearest" => Algorithm::Nearest,
            _ => match s.split_once(':') {
                Some(("header", h)) if !h.is_empty() => Algorithm::Header(h.to_ascii_lowercase()),
                Some(("cookie", c)) if !c.is_empty() => Algorithm::Cookie(c.to_string()),
                _ => {
                    return Err(format!(
                        "unknown algorithm {s:?}: expected roundrobin, leastconn, random, source, uri, nearest, header:NAME or cookie:NAME"
                    ));
                }
            },
        })
    }
}

impl<'de> Deserialize<'de> for Algorithm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// When a failed attempt is tried again on another server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The connection to the server could not be made.
    ConnectFailure,
    /// The connection died before any response byte.
    EmptyResponse,
    /// The server answered 502, 503 or 504.
    Gateway,
}

/// Active health checks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Whether to check at all.
    pub enabled: bool,
    /// HTTP method (`HEAD` like the reference stack).
    pub method: String,
    /// Path to request.
    pub path: String,
    /// Expected status: `2xx-3xx` (default), or one code such as `200`.
    pub expect: String,
    /// Time between checks.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Successes in a row that bring a server back up.
    pub rise: u32,
    /// Failures in a row that take a server down.
    pub fall: u32,
    /// How long one check may take.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            method: "HEAD".into(),
            path: "/".into(),
            expect: "2xx-3xx".into(),
            interval: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            timeout: Duration::from_secs(1),
        }
    }
}

impl HealthConfig {
    /// Whether a status passes the check.
    pub fn accepts(&self, status: u16) -> bool {
        match self.expect.as_str() {
            "2xx-3xx" => (200..400).contains(&status),
            "2xx" => (200..300).contains(&status),
            code => code.parse::<u16>().is_ok_and(|c| c == status),
        }
    }
}

/// Passive outlier detection: servers that fail real requests are taken out for a while.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveConfig {
    /// Whether to eject failing servers.
    pub enabled: bool,
    /// Connection failures in a row that eject a server.
    pub connect_failures: u32,
    /// 5xx answers in a row that eject a server.
    pub consecutive_5xx: u32,
    /// First ejection time; each further ejection in a row doubles it.
    #[serde(with = "duration")]
    pub base_ejection: Duration,
    /// Longest ejection.
    #[serde(with = "duration")]
    pub max_ejection: Duration,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        PassiveConfig {
            enabled: true,
            connect_failures: 1,
            consecutive_5xx: 5,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(60),
        }
    }
}

/// A set of backends selected from the cluster's members.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Pool name (used by routes and in stats).
    pub name: String,
    /// Members whose `role` tag is this (empty: any role).
    #[serde(default = "default_role")]
    pub role: String,
    /// Members must also carry these tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Port of the service on each member, unless its `port` tag says otherwise.
    #[serde(default = "default_port")]
    pub port: u16,
    /// How to pick a server.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Active checks.
    #[serde(default)]
    pub health: HealthConfig,
    /// Passive outlier detection.
    #[serde(default)]
    pub passive: PassiveConfig,
    /// Newcomers ramp up to their full weight over this long.
    #[serde(default, with = "duration")]
    pub slow_start: Duration,
    /// Sticky-session cookie (`SERVERID` in the reference); none: no stickiness.
    #[serde(default)]
    pub sticky_cookie: Option<String>,
    /// Attempts on other servers after a failure: a refused connection sends any request
    /// elsewhere; a dead connection or a 502-504 answer only idempotent ones.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Which failures are retried.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// Networks member addresses must lie in to be routed to (CIDR: `"10.0.0.0/8"`,
    /// `"fd00::/8"`, a bare address for one host). Unset: the private ranges (10/8, 172.16/12,
    /// 192.168/16, 100.64/10, fc00::/7), the networks of the host's interfaces, and loopback
    /// when the balancer's own gossip address is loopback. Link-local (cloud metadata),
    /// unspecified, multicast and broadcast addresses are refused unless a listed network lies
    /// inside their range; the balancer's own listeners unless listed as `/32` (`/128`). See
    /// [`crate::admission`].
    #[serde(default)]
    pub accept_networks: Option<Vec<String>>,
    /// Largest weight a member's `weight` tag may claim (1-256; HAProxy's range, 256 by default).
    #[serde(default = "default_max_weight")]
    pub max_weight: u32,
    /// Largest share of the pool's total weight one member may take while the pool has two
    /// servers or more (0 < share <= 1; 0.5 by default: a member claiming more is brought down
    /// to half the pool). An operator's `set server weight` is not capped by it. Set 1.0 to let
    /// weight tags alone decide.
    #[serde(default = "default_max_share")]
    pub max_share: f64,
    /// Servers from DNS answers instead of gossip ([`DnsSource`]).
    #[serde(default)]
    pub dns: Option<DnsSource>,
    /// Servers from the Docker engine's containers instead of gossip ([`DockerSource`]).
    #[serde(default)]
    pub docker: Option<DockerSource>,
}

/// Which DNS records name a pool's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum DnsRecord {
    /// IPv4 addresses, on the source's `port` (or the pool's).
    #[default]
    #[serde(alias = "a")]
    A,
    /// IPv6 addresses, on the source's `port` (or the pool's).
    #[serde(rename = "AAAA", alias = "aaaa")]
    Aaaa,
    /// Service records: each gives a target host, a port and a weight.
    #[serde(rename = "SRV", alias = "srv")]
    Srv,
}

/// A pool whose servers are what a DNS name resolves to (`dns = { name = "web" }`): compose
/// service names, swarm's `tasks.<service>`, any name with A, AAAA or SRV records. The name is
/// resolved again when its answer's TTL runs out, the TTL clamped into `min_ttl..=max_ttl`; a
/// failed or empty answer keeps the last good set for `keep_last`, then empties the pool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSource {
    /// The name to resolve (the resolver's search domains apply, as in `/etc/resolv.conf`).
    pub name: String,
    /// The record type: `A` (default), `AAAA` or `SRV`.
    #[serde(rename = "type", default)]
    pub record: DnsRecord,
    /// Port of the service on A and AAAA targets (the pool's `port` when unset); SRV records
    /// carry their own.
    #[serde(default)]
    pub port: Option<u16>,
    /// Shortest time between two resolutions, whatever the TTL says (at least 1 s).
    #[serde(default = "default_min_ttl", with = "duration")]
    pub min_ttl: Duration,
    /// Longest time between two resolutions, whatever the TTL says (Docker's DNS answers with
    /// 600 s: lower this to see tasks come and go sooner).
    #[serde(default = "default_max_ttl", with = "duration")]
    pub max_ttl: Duration,
    /// How long the last good set is kept once answers fail or come back empty.
    #[serde(default = "default_keep_last", with = "duration")]
    pub keep_last: Duration,
}

fn default_min_ttl() -> Duration {
    Duration::from_secs(1)
}
fn default_max_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_keep_last() -> Duration {
    Duration::from_secs(300)
}

/// A pool whose servers are the running containers of a Docker engine that carry `labels`
/// (`docker = { labels = { "shoal.pool" = "web" } }`), read-only through the engine's API on
/// its unix socket and kept live by its event stream. A container's `shoal.port` and
/// `shoal.weight` labels give its port and weight; its address is its IP on `network` (or on
/// the first network, by name, that gives it one).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerSource {
    /// The engine's API socket.
    #[serde(default = "default_docker_socket")]
    pub socket: PathBuf,
    /// Labels a container must carry (at least one).
    pub labels: BTreeMap<String, String>,
    /// The network whose address is routed to.
    #[serde(default)]
    pub network: Option<String>,
}

fn default_docker_socket() -> PathBuf {
    PathBuf::from("/var/run/docker.sock")
}

/// Whether `name` is a DNS name a resolver can be asked for: 1-253 bytes, labels of 1-63
/// letters, digits, `-` and `_` (service labels), an optional final dot.
fn valid_dns_name(name: &str) -> bool {
    let bare = name.strip_suffix('.').unwrap_or(name);
    !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl DnsSource {
    fn validate(&self, pool: &str) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(format!("pool {pool:?}: dns: {m}")));
        if !valid_dns_name(&self.name) {
            return err(format!("{:?} is not a DNS name", self.name));
        }
        if self.port == Some(0) {
            return err("port must not be 0".into());
        }
        if self.record == DnsRecord::Srv && self.port.is_some() {
            return err("SRV records give the port: leave port out".into());
        }
        if self.min_ttl < Duration::from_secs(1) {
            return err("min_ttl must be at least 1s".into());
        }
        if self.max_ttl < self.min_ttl || self.max_ttl > Duration::from_secs(3600) {
            return err("max_ttl must be between min_ttl and 1h".into());
        }
        Ok(())
    }
}

impl DockerSource {
    fn validate(&self, pool: &str) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(format!("pool {pool:?}: docker: {m}")));
        if !self.socket.is_absolute() {
            return err(format!("socket {} must be an absolute path", self.socket.display()));
        }
        if self.labels.is_empty() {
            return err("labels must name at least one label: every container would be a server".into());
        }
        let clean = |s: &str| s.len() <= 256 && !s.chars().any(char::is_control);
        for (k, v) in &self.labels {
            if k.is_empty() || k.contains('=') || !clean(k) || !clean(v) {
                return err(format!("invalid label {k:?} = {v:?}"));
            }
        }
        if self.network.as_deref().is_some_and(|n| n.is_empty() || !clean(n)) {
            return err("network must be a network's name".into());
        }
        Ok(())
    }
}

fn default_role() -> String {
    "backend".into()
}
fn default_port() -> u16 {
    3000
}
fn default_retries() -> u32 {
    3
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure, RetryOn::EmptyResponse]
}
fn default_max_weight() -> u32 {
    MAX_WEIGHT
}
fn default_max_share() -> f64 {
    0.5
}

impl PoolConfig {
    /// A pool of `role` members on `port` with every default.
    pub fn new(name: &str, role: &str, port: u16) -> PoolConfig {
        PoolConfig {
            name: name.into(),
            role: role.into(),
            tags: BTreeMap::new(),
            port,
            algorithm: Algorithm::default(),
            health: HealthConfig::default(),
            passive: PassiveConfig::default(),
            slow_start: Duration::ZERO,
            sticky_cookie: None,
            retries: default_retries(),
            retry_on: default_retry_on(),
            accept_networks: None,
            max_weight: default_max_weight(),
            max_share: default_max_share(),
            dns: None,
            docker: None,
        }
    }

    /// Whether its servers come from DNS or Docker rather than from gossip membership.
    pub fn discovers(&self) -> bool {
        self.dns.is_some() || self.docker.is_some()
    }

    /// The parsed `accept_networks` (`None` when unset: the default policy).
    pub fn accepted_networks(&self) -> Result<Option<Vec<Cidr>>, ConfigError> {
        let Some(list) = &self.accept_networks else { return Ok(None) };
        if list.is_empty() {
            return Err(ConfigError(format!(
                "pool {:?}: accept_networks is empty, which would refuse every member (leave it out for the default)",
                self.name
            )));
        }
        list.iter()
            .map(|n| {
                n.parse::<Cidr>()
                    .map_err(|e| ConfigError(format!("pool {:?}: accept_networks: {e}", self.name)))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

/// TLS for a frontend; files are re-read when they change.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain: the default certificate (clients without SNI, or with a name no
    /// other certificate covers).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// More certificates, picked by SNI from their DNS names (`*.` wildcards included).
    #[serde(default)]
    pub certificates: Vec<CertFiles>,
}

/// A certificate chain and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl TlsConfig {
    /// A frontend with one certificate.
    pub fn single(cert: PathBuf, key: PathBuf) -> TlsConfig {
        TlsConfig { cert, key, certificates: Vec::new() }
    }

    /// Every certificate, the default first.
    pub fn pairs(&self) -> Vec<CertFiles> {
        std::iter::once(CertFiles { cert: self.cert.clone(), key: self.key.clone() })
            .chain(self.certificates.iter().cloned())
            .collect()
    }
}

/// A rule sending requests to a pool by Host header and path prefix.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Host header to match (port ignored, case-insensitive; `*.example.com` matches subdomains).
    pub host: Option<String>,
    /// Path prefix to match.
    pub path_prefix: Option<String>,
    /// Pool to use.
    pub pool: String,
}

/// Listeners and the routes behind them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendConfig {
    /// Frontend name (in stats).
    pub name: String,
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// TLS termination.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Routes, first match wins.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Pool for requests no route matches.
    pub default_pool: String,
    /// HTTP/1.1 requests take the fast path (default); `false` sends every request through
    /// the general (hyper) path, to compare the two or to work around a fast-path problem.
    #[serde(default = "yes")]
    pub fast_path: bool,
}

fn yes() -> bool {
    true
}

/// Timeouts (HAProxy's names in parentheses).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Connecting to a server (`timeout connect`).
    #[serde(with = "duration")]
    pub connect: Duration,
    /// Client inactivity while a request is in progress (`timeout client`).
    #[serde(with = "duration")]
    pub client: Duration,
    /// Server inactivity while waiting for or streaming a response (`timeout server`).
    #[serde(with = "duration")]
    pub server: Duration,
    /// Receiving a complete request head (`timeout http-request`); 408 when exceeded.
    #[serde(with = "duration")]
    pub request_headers: Duration,
    /// Idle keep-alive connections are closed after this (`timeout http-keep-alive`).
    #[serde(with = "duration")]
    pub keepalive: Duration,
    /// Longest wait for in-flight requests on shutdown or reload.
    #[serde(with = "duration")]
    pub drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            client: Duration::from_secs(50),
            server: Duration::from_secs(50),
            request_headers: Duration::from_secs(10),
            keepalive: Duration::from_secs(60),
            drain: Duration::from_secs(10),
        }
    }
}

/// Limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Client connections at once (beyond: not accepted until one closes). It follows
    /// `RLIMIT_NOFILE`: at start the soft limit is raised towards the hard one as far as this
    /// needs, and the cap in force is the smaller of this and what the descriptors allow —
    /// (soft limit − 256 kept for listeners, health checks and files) / 2, as each proxied
    /// connection holds a client and a server socket. Both figures are logged at start;
    /// `show info` reports the cap in force as `Maxconn`.
    pub max_connections: usize,
    /// Largest request head, in bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: u64,
    /// Connections to the stats listener at once (beyond: not accepted until one closes). Its
    /// connections also get `timeouts.request_headers` for a head and `timeouts.keepalive`
    /// between requests.
    pub max_stats_connections: usize,
    /// Runtime API connections at once, unix socket and TCP together.
    pub max_admin_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 65_536,
            max_header_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024 * 1024,
            max_stats_connections: 64,
            max_admin_connections: 16,
        }
    }
}

/// Everything the balancer does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalancerConfig {
    /// Frontends.
    pub frontends: Vec<FrontendConfig>,
    /// Pools.
    pub pools: Vec<PoolConfig>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Stats and status listener.
    #[serde(default)]
    pub stats: Option<SocketAddr>,
    /// Basic authentication (`user:password`) for the stats listener (`/;up` stays open).
    #[serde(default)]
    pub stats_auth: Option<String>,
    /// Bearer token accepted by the stats listener (instead of, or besides, `stats_auth`).
    #[serde(default)]
    pub stats_token: Option<String>,
    /// Access log format: `httplog` (HAProxy's), `json` or `off`.
    #[serde(default)]
    pub access_log: crate::access_log::Format,
    /// The runtime API.
    #[serde(default)]
    pub admin: AdminConfig,
}

/// The runtime API (HAProxy's CLI subset) and who may use it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Unix socket path (created with mode 0600).
    pub socket: Option<PathBuf>,
    /// TCP address (like the reference's port 9999); without a token, loopback only.
    pub listen: Option<SocketAddr>,
    /// Token required on TCP (`auth TOKEN` first) and for `POST /;cmd` on the stats listener.
    pub token: Option<String>,
}

/// A configuration that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid balancer configuration: {0}")]
pub struct ConfigError(pub String);

impl BalancerConfig {
    /// One frontend on `listen` routing everything to one pool.
    pub fn simple(listen: Vec<SocketAddr>, pool: PoolConfig, stats: Option<SocketAddr>) -> BalancerConfig {
        BalancerConfig {
            frontends: vec![FrontendConfig {
                name: "http".into(),
                listen,
                tls: None,
                routes: Vec::new(),
                default_pool: pool.name.clone(),
                fast_path: true,
            }],
            pools: vec![pool],
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            stats,
            stats_auth: None,
            stats_token: None,
            access_log: crate::access_log::Format::default(),
            admin: AdminConfig::default(),
        }
    }

    /// Parses and validates a TOML file's text.
    pub fn from_toml(text: &str) -> Result<BalancerConfig, ConfigError> {
        let cfg: BalancerConfig = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks everything that can be checked without binding sockets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.frontends.is_empty() {
            return err("at least one frontend is needed".into());
        }
        if let Some(auth) = &self.stats_auth
            && auth.split_once(':').is_none_or(|(u, p)| u.is_empty() || p.is_empty())
        {
            return err("stats_auth must be user:password".into());
        }
        if let Some(addr) = self.admin.listen
            && !addr.ip().is_loopback()
            && self.admin.token.as_deref().is_none_or(str::is_empty)
        {
            return err(format!(
                "admin.listen {addr} is not a loopback address: set admin.token, or the runtime API would be open to the network"
            ));
        }
        let mut pools = HashSet::new();
        for p in &self.pools {
            if p.name.is_empty() {
                return err("a pool has an empty name".into());
            }
            if !pools.insert(p.name.as_str()) {
                return err(format!("pool {:?} is defined twice", p.name));
            }
            if p.port == 0 {
                return err(format!("pool {:?}: port must not be 0", p.name));
            }
            let h = &p.health;
            if h.enabled {
                if h.interval.is_zero() || h.timeout.is_zero() {
                    return err(format!("pool {:?}: health interval and timeout must be positive", p.name));
                }
                if h.rise == 0 || h.fall == 0 {
                    return err(format!("pool {:?}: health rise and fall must be at least 1", p.name));
                }
                if h.method.parse::<http::Method>().is_err() {
                    return err(format!("pool {:?}: invalid health method {:?}", p.name, h.method));
                }
                if !h.path.starts_with('/') {
                    return err(format!("pool {:?}: health path must start with '/'", p.name));
                }
                if !matches!(h.expect.as_str(), "2xx-3xx" | "2xx") && h.expect.parse::<u16>().is_err() {
                    return err(format!(
                        "pool {:?}: health expect must be 2xx-3xx, 2xx or a status code",
                        p.name
                    ));
                }
            }
            if let Some(c) = &p.sticky_cookie
                && (c.is_empty()
                    || !c.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)))
            {
                return err(format!("pool {:?}: invalid sticky cookie name {c:?}", p.name));
            }
            p.accepted_networks()?;
            if !(1..=MAX_WEIGHT).contains(&p.max_weight) {
                return err(format!("pool {:?}: max_weight must be 1-{}", p.name, MAX_WEIGHT));
            }
            if !(p.max_share > 0.0 && p.max_share <= 1.0) {
                return err(format!("pool {:?}: max_share must be above 0 and at most 1", p.name));
            }
            match (&p.dns, &p.docker) {
                (Some(_), Some(_)) => {
                    return err(format!(
                        "pool {:?}: dns and docker are both set: one source per pool",
                        p.name
                    ));
                }
                (Some(d), None) => d.validate(&p.name)?,
                (None, Some(d)) => d.validate(&p.name)?,
                (None, None) => {}
            }
        }
        let mut addrs = HashSet::new();
        let mut names = HashSet::new();
        for f in &self.frontends {
            if !names.insert(f.name.as_str()) {
                return err(format!("frontend {:?} is defined twice", f.name));
            }
            if f.listen.is_empty() {
                return err(format!("frontend {:?} listens nowhere", f.name));
            }
            // Port 0 asks the system for a free port: never a clash.
            for a in f.listen.iter().filter(|a| a.port() != 0) {
                if !addrs.insert(*a) || self.stats == Some(*a) {
                    return err(format!("address {a} is used twice"));
                }
            }
            if !pools.contains(f.default_pool.as_str()) {
                return err(format!("frontend {:?}: unknown default pool {:?}", f.name, f.default_pool));
            }
            for r in &f.routes {
                if !pools.contains(r.pool.as_str()) {
                    return err(format!("frontend {:?}: route to unknown pool {:?}", f.name, r.pool));
                }
                if r.host.is_none() && r.path_prefix.is_none() {
                    return err(format!("frontend {:?}: a route needs a host or a path_prefix", f.name));
                }
                if r.path_prefix.as_deref().is_some_and(|p| !p.starts_with('/')) {
                    return err(format!("frontend {:?}: path_prefix must start with '/'", f.name));
                }
            }
            if let Some(tls) = &f.tls {
                for pair in tls.pairs() {
                    for path in [&pair.cert, &pair.key] {
                        if !path.exists() {
                            return err(format!("frontend {:?}: {} does not exist", f.name, path.display()));
                        }
                    }
                }
            }
        }
        if self.limits.max_header_bytes < 8192 {
            return err("limits.max_header_bytes must be at least 8192".into());
        }
        if self.limits.max_connections == 0 {
            return err("limits.max_connections must be at least 1".into());
        }
        if self.limits.max_stats_connections == 0 || self.limits.max_admin_connections == 0 {
            return err(
                "limits.max_stats_connections and limits.max_admin_connections must be at least 1".into()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
        stats = "127.0.0.1:1936"

        [[frontends]]
        name = "web"
        listen = ["0.0.0.0:80"]
        default_pool = "app"
        routes = [
            { host = "api.example.com", pool = "api" },
            { path_prefix = "/static/", pool = "app" },
        ]

        [[pools]]
        name = "app"
        algorithm = "leastconn"
        sticky_cookie = "SERVERID"
        slow_start = "10s"
        health = { path = "/health", interval = "1s", expect = "200" }

        [[pools]]
        name = "api"
        role = "api"
        tags = { zone = "eu" }
        port = 8080
        algorithm = "header:X-User"
        retry_on = ["connect-failure", "gateway"]

        [timeouts]
        connect = "2s"
    "#;

    /// The README's full example parses, and the values it calls defaults are the defaults.
    #[test]
    fn the_readme_example_is_valid_and_shows_the_defaults() {
        let readme = include_str!("../../../README.md");
        let from = readme.find("The config file says all of it").expect("README section");
        let block = readme[from..].split("```toml\n").nth(1).and_then(|b| b.split("```").next()).unwrap();
        // The example's certificate files, so that validation finds them.
        let dir = std::env::temp_dir().join(format!("shoal-readme-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["site.pem", "site.key"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let block = block.replace("/certs/", &format!("{}/", dir.display()));
        let c = BalancerConfig::from_toml(&block).unwrap_or_else(|e| panic!("README example: {e}"));
        let _ = std::fs::remove_dir_all(&dir);
        let app = &c.pools[0];
        let defaults = PoolConfig::new("app", "backend", 3000);
        assert_eq!(app.health, defaults.health);
        assert_eq!(app.passive, defaults.passive);
        assert_eq!((app.retries, &app.retry_on), (defaults.retries, &defaults.retry_on));
        assert_eq!(app.algorithm, defaults.algorithm);
        assert_eq!(c.timeouts, Timeouts::default());
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn a_full_file_parses() {
        let c = BalancerConfig::from_toml(FULL).unwrap();
        assert_eq!(c.pools[0].algorithm, Algorithm::LeastConn);
        assert_eq!(c.pools[0].slow_start, Duration::from_secs(10));
        assert!(c.pools[0].health.accepts(200) && !c.pools[0].health.accepts(204));
        assert_eq!(c.pools[1].algorithm, Algorithm::Header("x-user".into()));
        assert_eq!(c.pools[1].port, 8080);
        assert_eq!(c.timeouts.connect, Duration::from_secs(2));
        assert_eq!(c.timeouts.client, Duration::from_secs(50));
        assert_eq!(c.frontends[0].routes.len(), 2);
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let cases = [
            (FULL.replace("default_pool = \"app\"", "default_pool = \"nope\""), "unknown default pool"),
            (FULL.replace("algorithm = \"leastconn\"", "algorithm = \"fastest\""), "unknown algorithm"),
            (FULL.replace("connect = \"2s\"", "connect = \"soon\""), "invalid duration"),
            (FULL.replace("port = 8080", "port = 0"), "port must not be 0"),
            (FULL.replace("name = \"api\"\n", "name = \"app\"\n"), "defined twice"),
            (FULL.replace("[timeouts]", "[timeout]"), "unknown field"),
            (FULL.replace("path = \"/health\"", "path = \"health\""), "must start with '/'"),
        ];
        for (text, why) in cases {
            let e = BalancerConfig::from_toml(&text).unwrap_err();
            assert!(e.0.contains(why), "{why}: got {e}");
        }
    }

    #[test]
    fn admission_and_weight_caps_are_checked_per_pool() {
        let c = BalancerConfig::from_toml(&FULL.replace(
            "port = 8080",
            "port = 8080\naccept_networks = [\"10.0.0.0/8\", \"fd00::/8\"]\nmax_weight = 100\nmax_share = 0.25",
        ))
        .unwrap();
        let api = &c.pools[1];
        assert_eq!(api.accepted_networks().unwrap().unwrap().len(), 2);
        assert_eq!((api.max_weight, api.max_share), (100, 0.25));
        assert_eq!(
            (c.pools[0].max_weight, c.pools[0].max_share, c.pools[0].accept_networks.as_ref()),
            (256, 0.5, None)
        );
        let cases = [
            (
                "accept_networks = [\"10.0.0.1/8\"]",
                "pool \"api\": accept_networks: \"10.0.0.1/8\" has host bits set",
            ),
            ("accept_networks = [\"lan\"]", "pool \"api\": accept_networks: \"lan\" is not an IP network"),
            ("accept_networks = []", "pool \"api\": accept_networks is empty"),
            ("max_weight = 0", "pool \"api\": max_weight must be 1-256"),
            ("max_weight = 257", "max_weight must be 1-256"),
            ("max_share = 0.0", "pool \"api\": max_share must be above 0"),
            ("max_share = 1.5", "max_share must be above 0 and at most 1"),
            ("sticky_cookie = \"a\\r\\nb\"", "invalid sticky cookie name"),
        ];
        for (line, why) in cases {
            let e = BalancerConfig::from_toml(&FULL.replace("port = 8080", &format!("port = 8080\n{line}")))
                .unwrap_err();
            assert!(e.0.contains(why), "{line}: got {e}");
        }
    }

    #[test]
    fn dns_and_docker_sources_parse_with_their_defaults() {
        let c = BalancerConfig::from_toml(&FULL.replace(
            "port = 8080",
            "port = 8080\ndns = { name = \"tasks.web\", type = \"SRV\", max_ttl = \"5s\", keep_last = \"1m\" }",
        ))
        .unwrap();
        let dns = c.pools[1].dns.as_ref().unwrap();
        assert_eq!((dns.name.as_str(), dns.record, dns.port), ("tasks.web", DnsRecord::Srv, None));
        assert_eq!(
            (dns.min_ttl, dns.max_ttl, dns.keep_last),
            (Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(60))
        );
        assert!(c.pools[1].discovers() && !c.pools[0].discovers());
        let c = BalancerConfig::from_toml(&FULL.replace("port = 8080", "dns = { name = \"web\" }")).unwrap();
        let dns = c.pools[1].dns.as_ref().unwrap();
        assert_eq!(
            (dns.record, dns.max_ttl, dns.keep_last),
            (DnsRecord::A, Duration::from_secs(60), Duration::from_secs(300))
        );
        let c =
            BalancerConfig::from_toml(&FULL.replace(
                "port = 8080",
                "docker = { labels = { \"shoal.pool\" = \"web\" }, network = \"lab\" }",
            ))
            .unwrap();
        let docker = c.pools[1].docker.as_ref().unwrap();
        assert_eq!(docker.socket, PathBuf::from("/var/run/docker.sock"));
        assert_eq!((docker.labels["shoal.pool"].as_str(), docker.network.as_deref()), ("web", Some("lab")));
    }

    #[test]
    fn bad_sources_are_refused_with_a_reason() {
        let docker = "docker = { labels = { \"shoal.pool\" = \"web\" } }";
        let cases = [
            ("dns = { name = \"web\", type = \"MX\" }".to_string(), "unknown variant `MX`"),
            ("dns = { type = \"A\" }".into(), "missing field `name`"),
            ("dns = { name = \"web\", ttl = \"1s\" }".into(), "unknown field `ttl`"),
            ("dns = { name = \"bad name\" }".into(), "pool \"api\": dns: \"bad name\" is not a DNS name"),
            ("dns = { name = \"\" }".into(), "is not a DNS name"),
            ("dns = { name = \"web\", port = 0 }".into(), "dns: port must not be 0"),
            ("dns = { name = \"web\", type = \"SRV\", port = 80 }".into(), "SRV records give the port"),
            ("dns = { name = \"web\", min_ttl = \"100ms\" }".into(), "min_ttl must be at least 1s"),
            (
                "dns = { name = \"web\", min_ttl = \"10s\", max_ttl = \"5s\" }".into(),
                "max_ttl must be between",
            ),
            ("dns = { name = \"web\", max_ttl = \"2h\" }".into(), "max_ttl must be between min_ttl and 1h"),
            (
                format!("dns = {{ name = \"web\" }}\n{docker}"),
                "dns and docker are both set: one source per pool",
            ),
            ("docker = { labels = {} }".into(), "docker: labels must name at least one label"),
            ("docker = { socket = \"/x.sock\" }".into(), "missing field `labels`"),
            (
                "docker = { socket = \"docker.sock\", labels = { a = \"b\" } }".into(),
                "must be an absolute path",
            ),
            ("docker = { labels = { \"a=b\" = \"c\" } }".into(), "invalid label"),
            ("docker = { labels = { a = \"b\\n\" } }".into(), "invalid label"),
            (
                "docker = { labels = { a = \"b\" }, network = \"\" }".into(),
                "network must be a network's name",
            ),
        ];
        for (line, why) in cases {
            let e = BalancerConfig::from_toml(&FULL.replace("port = 8080", &line)).unwrap_err();
            assert!(e.0.contains(why), "{line}: got {e}");
        }
    }

    #[test]
    fn algorithms_parse() {
        assert_eq!("random".parse::<Algorithm>().unwrap(), Algorithm::Random2);
        assert_eq!("cookie:SID".parse::<Algorithm>().unwrap(), Algorithm::Cookie("SID".into()));
        assert!("header:".parse::<Algorithm>().is_err());
    }
}
