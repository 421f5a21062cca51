//! Agent settings, and the small resolutions they need at start-up: the node
//! name (hostname), the advertise address (first private IPv4, like Serf), join
//! targets (`host[:port]`), and the keyring (`--encrypt` and `--keyring-file`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_gossip::{Profile, Tags, decode_key, encode_key};

/// The default gossip port (Serf's).
pub const DEFAULT_GOSSIP_PORT: u16 = 7946;

/// Errors in the agent's configuration; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `--tag` is not `KEY=VALUE`.
    #[error("invalid tag {0:?}: expected KEY=VALUE")]
    BadTag(String),
    /// A tag breaks the membership limits (control characters, `=` or `,` in a key, size).
    #[error("invalid tag {spec:?}")]
    InvalidTag {
        /// The tag as given (escaped when shown).
        spec: String,
        /// The rule it breaks.
        source: shoal_gossip::Violation,
    },
    /// The node name breaks the membership limits.
    #[error("invalid node name {name:?}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// The rule it breaks.
        source: shoal_gossip::Violation,
    },
    /// A join address has no host.
    #[error("invalid join address {0:?}: expected HOST or HOST:PORT")]
    BadJoin(String),
    /// The encryption key is unusable.
    #[error("invalid encryption key: {0}")]
    BadKey(#[from] shoal_gossip::KeyError),
    /// The keyring file could not be used.
    #[error("keyring file {path}: {reason}")]
    Keyring {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The snapshot file could not be opened.
    #[error("snapshot {path}: {reason}")]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// No usable advertise address could be found.
    #[error("no address to advertise: bind to a specific IP or pass --advertise")]
    NoAdvertise,
    /// The host name could not be read.
    #[error("cannot read the host name for the node name: {0}")]
    Hostname(String),
}

/// A place to join: a host name or IP, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTarget {
    /// Host name or IP literal (resolved at every attempt).
    pub host: String,
    /// Gossip port.
    pub port: u16,
}

impl JoinTarget {
    /// Parses `host`, `host:port`, `ip`, `ip:port`, `[v6]:port`.
    pub fn parse(s: &str) -> Result<JoinTarget, ConfigError> {
        let s = s.trim();
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(JoinTarget { host: addr.ip().to_string(), port: addr.port() });
        }
        if let Ok(ip) = s.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(JoinTarget { host: ip.to_string(), port: DEFAULT_GOSSIP_PORT });
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| ConfigError::BadJoin(s.to_string()))?),
            None => (s, DEFAULT_GOSSIP_PORT),
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(ConfigError::BadJoin(s.to_string()));
        }
        Ok(JoinTarget { host: host.to_string(), port })
    }
}

impl std::fmt::Display for JoinTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => write!(f, "[{}]:{}", self.host, self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// Parses `KEY=VALUE` tags.
pub fn parse_tags<S: AsRef<str>>(specs: &[S]) -> Result<Tags, ConfigError> {
    let mut tags = BTreeMap::new();
    for spec in specs {
        let spec = spec.as_ref();
        let (k, v) = spec.split_once('=').ok_or_else(|| ConfigError::BadTag(spec.to_string()))?;
        if k.is_empty() {
            return Err(ConfigError::BadTag(spec.to_string()));
        }
        shoal_gossip::limits::check_tag(k, v)
            .map_err(|source| ConfigError::InvalidTag { spec: spec.to_string(), source })?;
        tags.insert(k.to_string(), v.to_string());
    }
    shoal_gossip::limits::check_tags(&tags).map_err(|source| ConfigError::InvalidTag {
        spec: specs.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(","),
        source,
    })?;
    Ok(tags)
}

/// Everything `shoal agent` is told.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Node name (default: the host name).
    pub node: Option<String>,
    /// Where to listen for gossip (UDP and TCP).
    pub bind: SocketAddr,
    /// What to tell peers (default: the bind address, or the first private IPv4).
    pub advertise: Option<SocketAddr>,
    /// Where to join; retried with back-off until one succeeds.
    pub join: Vec<JoinTarget>,
    /// Replay past user events when joining.
    pub replay: bool,
    /// Tags to publish.
    pub tags: Tags,
    /// `--encrypt`: a base64 key.
    pub encrypt: Option<String>,
    /// `--keyring-file`: where keys are kept across restarts and rotations.
    pub keyring_file: Option<PathBuf>,
    /// Timing profile.
    pub profile: Profile,
    /// Cluster label (a header on every packet; other labels are dropped).
    pub label: Option<String>,
    /// How long a graceful leave may take before we exit anyway.
    pub leave_timeout: Duration,
    /// How often join targets are re-checked once joined (re-joined if not in the cluster).
    pub rejoin_interval: Duration,
    /// Event handler scripts.
    pub event_handlers: Vec<crate::handlers::HandlerSpec>,
    /// Kill a handler that runs longer than this.
    pub handler_timeout: Option<Duration>,
    /// How member and user events are batched for handlers and RPC streams.
    pub coalescing: crate::events::Coalescing,
    /// Serf-format snapshot file: rejoin known members and skip handled events after a restart.
    pub snapshot: Option<PathBuf>,
    /// Rejoin from the snapshot even after a graceful leave (Serf's `-rejoin`).
    pub rejoin: bool,
    /// Compute no network coordinates (Serf's `disable_coordinates`).
    pub disable_coordinates: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            node: None,
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_GOSSIP_PORT),
            advertise: None,
            join: Vec::new(),
            replay: false,
            tags: Tags::new(),
            encrypt: None,
            keyring_file: None,
            profile: Profile::Lan,
            label: None,
            leave_timeout: Duration::from_secs(15),
            rejoin_interval: Duration::from_secs(30),
            event_handlers: Vec::new(),
            handler_timeout: None,
            coalescing: crate::events::Coalescing::default(),
            snapshot: None,
            rejoin: false,
            disable_coordinates: false,
        }
    }
}

/// The machine's host name (the default node name, as in Serf).
pub fn hostname() -> Result<String, ConfigError> {
    let h = nix::unistd::gethostname().map_err(|e| ConfigError::Hostname(e.to_string()))?;
    Ok(h.to_string_lossy().into_owned())
}

/// The address to advertise: explicit, else the bind IP, else the first private IPv4.
pub fn advertise_addr(bind: SocketAddr, advertise: Option<SocketAddr>) -> Result<SocketAddr, ConfigError> {
    if let Some(a) = advertise {
        let port = if a.port() == 0 { bind.port() } else { a.port() };
        return Ok(SocketAddr::new(a.ip(), port));
    }
    if !bind.ip().is_unspecified() {
        return Ok(bind);
    }
    let ip = first_private_ipv4().ok_or(ConfigError::NoAdvertise)?;
    Ok(SocketAddr::new(IpAddr::V4(ip), bind.port()))
}

/// First private IPv4 on an interface that is up (RFC 1918 or RFC 6598), else any non-loopback one.
pub(crate) fn first_private_ipv4() -> Option<Ipv4Addr> {
    let addrs: Vec<Ipv4Addr> = nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|ifa| ifa.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP))
        .filter_map(|ifa| ifa.address.and_then(|a| a.as_sockaddr_in().map(|s| s.ip())))
        .filter(|ip| !ip.is_loopback())
        .collect();
    let shared = |ip: &Ipv4Addr| ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64;
    addrs.iter().copied().find(|ip| ip.is_private() || shared(ip)).or_else(|| addrs.first().copied())
}

/// Loads the keyring: `--keyring-file` if it exists, else `--encrypt`.
///
/// A fresh `--keyring-file` is created from `--encrypt`, so later rotations persist; once it
/// exists it wins over `--encrypt`, whose key may have been rotated away since.
pub fn load_keys(encrypt: Option<&str>, keyring_file: Option<&Path>) -> Result<Vec<Vec<u8>>, ConfigError> {
    let from_flag = encrypt.map(decode_key).transpose()?;
    let Some(path) = keyring_file else { return Ok(from_flag.into_iter().collect()) };
    let err = |reason: String| ConfigError::Keyring { path: path.to_path_buf(), reason };
    match std::fs::read(path) {
        Ok(data) => {
            let encoded: Vec<String> =
                serde_json::from_slice(&data).map_err(|e| err(format!("not a JSON list of keys: {e}")))?;
            if encoded.is_empty() {
                return Err(err("contains no keys".into()));
            }
            let keys = encoded
                .iter()
                .map(|k| decode_key(k).map_err(|e| err(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            // The file holds the rotated keys; a container restarted with its original
            // `--encrypt` must come back with them, so the file wins (as Consul does).
            if let Some(k) = from_flag
                && !keys.contains(&k)
            {
                tracing::warn!(
                    path = %path.display(),
                    "--encrypt names a key that is not in the keyring file (rotated since?); using the file"
                );
            }
            Ok(keys)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match from_flag {
            Some(k) => {
                save_keys(path, std::slice::from_ref(&k))?;
                Ok(vec![k])
            }
            None => Err(err("does not exist and no --encrypt key was given to create it".into())),
        },
        Err(e) => Err(err(e.to_string())),
    }
}

/// Writes the keyring file (JSON list of base64 keys, primary first, mode 0600).
pub fn save_keys(path: &Path, keys: &[Vec<u8>]) -> Result<(), ConfigError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| ConfigError::Keyring { path: path.to_path_buf(), reason: e.to_string() };
    let encoded: Vec<String> = keys.iter().map(|k| encode_key(k)).collect();
    let json = serde_json::to_vec_pretty(&encoded).unwrap_or_default();
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(&json).and_then(|()| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_targets_parse() {
        let t = |s| JoinTarget::parse(s).unwrap();
        assert_eq!(t("ha"), JoinTarget { host: "ha".into(), port: 7946 });
        assert_eq!(t("ha:8000"), JoinTarget { host: "ha".into(), port: 8000 });
        assert_eq!(t("10.0.0.1"), JoinTarget { host: "10.0.0.1".into(), port: 7946 });
        assert_eq!(t("[::1]:7000"), JoinTarget { host: "::1".into(), port: 7000 });
        assert_eq!(t("::1").port, 7946);
        assert_eq!(t("[::1]:7000").to_string(), "[::1]:7000");
        assert!(JoinTarget::parse("ha:port").is_err());
        assert!(JoinTarget::parse("").is_err());
    }

    #[test]
    fn tags_parse() {
        let tags = parse_tags(&["role=backend", "url=http://x?a=b"]).unwrap();
        assert_eq!(tags["url"], "http://x?a=b");
        assert!(parse_tags(&["novalue"]).is_err());
        assert!(parse_tags(&["=x"]).is_err());
    }

    #[test]
    fn keyring_file_is_created_loaded_and_checked() {
        let dir = std::env::temp_dir().join(format!("shoal-keyring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keyring.json");
        let _ = std::fs::remove_file(&path);
        let key = "5K9OtfP7efFrNKe5WCQvXvnaXJ5cWP0SvXiwe0kkjM4=";
        assert!(load_keys(None, Some(&path)).is_err());
        let keys = load_keys(Some(key), Some(&path)).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(load_keys(None, Some(&path)).unwrap(), keys);
        // After a rotation the file's keys win over the original flag.
        let other = "AAAAAAAAAAAAAAAAAAAAAA==";
        assert_eq!(load_keys(Some(other), Some(&path)).unwrap(), keys);
        std::fs::write(&path, "not json").unwrap();
        assert!(load_keys(None, Some(&path)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn advertise_prefers_explicit_then_bind() {
        let bind: SocketAddr = "127.0.0.5:7000".parse().unwrap();
        assert_eq!(advertise_addr(bind, None).unwrap(), bind);
        let adv: SocketAddr = "10.1.1.1:0".parse().unwrap();
        assert_eq!(advertise_addr(bind, Some(adv)).unwrap(), "10.1.1.1:7000".parse().unwrap());
    }
}
