//! Tuning knobs of the gossip core and the named profiles (`lan`, `wan`, `local`, `fast`).
//!
//! `lan`, `wan` and `local` carry memberlist's and Serf's documented defaults so
//! a Shoal agent behaves like the Serf agent it stands next to. `fast` is tuned
//! for a container network (sub-millisecond RTT, a few to a few hundred members):
//! failures are confirmed in about a second instead of five to eight.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// A named set of timing parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// memberlist's LAN defaults (Serf's default).
    #[default]
    Lan,
    /// memberlist's WAN defaults.
    Wan,
    /// memberlist's loopback defaults.
    Local,
    /// Tuned for containers on one bridge or overlay network.
    Fast,
}

impl Profile {
    /// Every profile, for help texts and validation.
    pub const ALL: [Profile; 4] = [Profile::Lan, Profile::Wan, Profile::Local, Profile::Fast];

    /// The profile's name as given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Lan => "lan",
            Profile::Wan => "wan",
            Profile::Local => "local",
            Profile::Fast => "fast",
        }
    }
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown profile {s:?}: expected lan, wan, local or fast"))
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// memberlist-level timing (failure detection and dissemination).
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// Time between probes of one member.
    pub probe_interval: Duration,
    /// How long to wait for a direct ack before probing indirectly.
    pub probe_timeout: Duration,
    /// Peers asked to probe indirectly.
    pub indirect_checks: usize,
    /// Retransmissions of a broadcast are `retransmit_mult * ceil(log10(n + 1))`.
    pub retransmit_mult: usize,
    /// Suspicion lasts at least `suspicion_mult * max(1, log10(n)) * probe_interval`.
    pub suspicion_mult: u32,
    /// The longest suspicion is `suspicion_max_timeout_mult` times the shortest.
    pub suspicion_max_timeout_mult: u32,
    /// Period of anti-entropy push/pull exchanges (scaled up beyond 32 members).
    pub push_pull_interval: Duration,
    /// Period of piggy-back gossip.
    pub gossip_interval: Duration,
    /// Members gossiped to per period.
    pub gossip_nodes: usize,
    /// How long dead members are still gossiped to (and kept in the probe list).
    pub gossip_to_the_dead: Duration,
    /// Timeout of TCP exchanges (push/pull, fallback ping).
    pub tcp_timeout: Duration,
    /// Lifeguard: the probe interval and timeout are scaled by up to this factor.
    pub awareness_max_multiplier: u32,
    /// A dead member may reclaim its name from a new address after this long (zero: never).
    pub dead_node_reclaim_time: Duration,
    /// Largest UDP payload we build.
    pub udp_buffer_size: usize,
}

/// Serf-level timing (membership history, events, queries).
#[derive(Debug, Clone, PartialEq)]
pub struct SerfTiming {
    /// How often failed and left members are checked for reaping.
    pub reap_interval: Duration,
    /// How often a failed member is tried again.
    pub reconnect_interval: Duration,
    /// A failed member is forgotten (`member-reap`) after this long.
    pub reconnect_timeout: Duration,
    /// A member that left is forgotten after this long.
    pub tombstone_timeout: Duration,
    /// Intents for unknown members are kept this long.
    pub recent_intent_timeout: Duration,
    /// How long a leave waits for its intent to spread.
    pub broadcast_timeout: Duration,
    /// Extra wait after a leave before shutting down.
    pub leave_propagate_delay: Duration,
    /// Default query timeout is `gossip_interval * query_timeout_mult * ceil(log10(n + 1))`.
    pub query_timeout_mult: u32,
}

impl Profile {
    /// memberlist timing for this profile.
    pub fn timing(self) -> Timing {
        let lan = Timing {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_checks: 3,
            retransmit_mult: 4,
            suspicion_mult: 4,
            suspicion_max_timeout_mult: 6,
            push_pull_interval: Duration::from_secs(30),
            gossip_interval: Duration::from_millis(200),
            gossip_nodes: 3,
            gossip_to_the_dead: Duration::from_secs(30),
            tcp_timeout: Duration::from_secs(10),
            awareness_max_multiplier: 8,
            dead_node_reclaim_time: Duration::ZERO,
            udp_buffer_size: 1400,
        };
        match self {
            Profile::Lan => lan,
            Profile::Wan => Timing {
                tcp_timeout: Duration::from_secs(30),
                suspicion_mult: 6,
                push_pull_interval: Duration::from_secs(60),
                probe_timeout: Duration::from_secs(3),
                probe_interval: Duration::from_secs(5),
                gossip_nodes: 4,
                gossip_interval: Duration::from_millis(500),
                gossip_to_the_dead: Duration::from_secs(60),
                ..lan
            },
            Profile::Local => Timing {
                tcp_timeout: Duration::from_secs(1),
                indirect_checks: 1,
                retransmit_mult: 2,
                suspicion_mult: 3,
                push_pull_interval: Duration::from_secs(15),
                probe_timeout: Duration::from_millis(200),
                probe_interval: Duration::from_secs(1),
                gossip_interval: Duration::from_millis(100),
                gossip_to_the_dead: Duration::from_secs(15),
                ..lan
            },
            Profile::Fast => Timing {
                probe_interval: Duration::from_millis(200),
                probe_timeout: Duration::from_millis(100),
                indirect_checks: 3,
                retransmit_mult: 4,
                suspicion_mult: 3,
                suspicion_max_timeout_mult: 3,
                push_pull_interval: Duration::from_secs(10),
                gossip_interval: Duration::from_millis(50),
                gossip_nodes: 4,
                gossip_to_the_dead: Duration::from_secs(10),
                tcp_timeout: Duration::from_secs(2),
                awareness_max_multiplier: 8,
                dead_node_reclaim_time: Duration::from_secs(1),
                udp_buffer_size: 1400,
            },
        }
    }

    /// Serf timing for this profile.
    pub fn serf_timing(self) -> SerfTiming {
        let lan = SerfTiming {
            reap_interval: Duration::from_secs(15),
            reconnect_interval: Duration::from_secs(30),
            reconnect_timeout: Duration::from_secs(24 * 3600),
            tombstone_timeout: Duration::from_secs(24 * 3600),
            recent_intent_timeout: Duration::from_secs(300),
            broadcast_timeout: Duration::from_secs(5),
            leave_propagate_delay: Duration::from_secs(1),
            query_timeout_mult: 16,
        };
        match self {
            Profile::Lan | Profile::Wan | Profile::Local => lan,
            Profile::Fast => SerfTiming {
                reap_interval: Duration::from_secs(5),
                reconnect_interval: Duration::from_secs(2),
                reconnect_timeout: Duration::from_secs(3600),
                tombstone_timeout: Duration::from_secs(3600),
                broadcast_timeout: Duration::from_secs(2),
                leave_propagate_delay: Duration::from_millis(200),
                ..lan
            },
        }
    }
}

/// Everything the gossip core needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// This member's unique name.
    pub name: String,
    /// The address other members reach us at (IP and gossip port).
    pub advertise: SocketAddr,
    /// Tags published in our node metadata (the `role` tag among them).
    pub tags: BTreeMap<String, String>,
    /// memberlist timing.
    pub timing: Timing,
    /// Serf timing.
    pub serf: SerfTiming,
    /// Gossip keys (base64-decoded); the first is primary. Empty: no encryption.
    pub keys: Vec<Vec<u8>>,
    /// Refuse unencrypted packets and streams when encryption is on (Serf's default).
    pub verify_incoming: bool,
    /// Encrypt what we send when encryption is on (Serf's default).
    pub verify_outgoing: bool,
    /// Optional cluster label: a header on every packet and stream; traffic with another label is dropped.
    pub label: Option<String>,
    /// Largest user event (name + payload) accepted, in bytes (Serf: 512).
    pub user_event_size_limit: usize,
    /// Largest query accepted, in bytes (Serf: 1024).
    pub query_size_limit: usize,
    /// Largest query response accepted, in bytes (Serf: 1024).
    pub query_response_size_limit: usize,
    /// Recent user events remembered for de-duplication (Serf: 512).
    pub event_buffer: usize,
    /// Recent queries remembered for de-duplication (Serf: 512).
    pub query_buffer: usize,
    /// Largest TCP state exchange accepted, in bytes.
    pub max_stream_bytes: usize,
    /// Most members (of any status) the view holds: past it, new names are refused
    /// (`dropped{reason=throttled}`), so that a peer inventing members cannot grow it forever.
    pub max_members: usize,
    /// Compute Serf's network coordinates (and send ours in acks); off is Serf's
    /// `disable_coordinates`.
    pub coordinates: bool,
}

impl Config {
    /// A configuration with `profile`'s timing and Serf's defaults for the rest.
    pub fn new(name: impl Into<String>, advertise: SocketAddr, profile: Profile) -> Config {
        Config {
            name: name.into(),
            advertise,
            tags: BTreeMap::new(),
            timing: profile.timing(),
            serf: profile.serf_timing(),
            keys: Vec::new(),
            verify_incoming: true,
            verify_outgoing: true,
            label: None,
            user_event_size_limit: 512,
            query_size_limit: 1024,
            query_response_size_limit: 1024,
            event_buffer: 512,
            query_buffer: 512,
            max_stream_bytes: 20 * 1024 * 1024,
            max_members: 16_384,
            coordinates: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_and_fast_is_faster() {
        for p in Profile::ALL {
            assert_eq!(p.name().parse::<Profile>().unwrap(), p);
        }
        assert!("mars".parse::<Profile>().is_err());
        let (lan, fast) = (Profile::Lan.timing(), Profile::Fast.timing());
        assert!(fast.probe_interval < lan.probe_interval);
        assert!(fast.probe_timeout < fast.probe_interval);
        assert_eq!(lan.probe_interval, Duration::from_secs(1));
        assert_eq!(Profile::Wan.timing().probe_interval, Duration::from_secs(5));
    }
}
