//! Shoal's gossip core: memberlist (SWIM + Lifeguard) and Serf, as a sans-IO
//! state machine that speaks HashiCorp's wire protocol.
//!
//! [`Gossip`] is one cluster member. It owns no socket, clock, thread or
//! entropy source: the driver hands it datagrams, stream messages and the
//! current [`std::time::Instant`], and takes back [`Output`]s — datagrams to
//! send, TCP exchanges to run, [`Event`]s for the application — plus the next
//! instant it wants to be woken at. Given the same inputs and seed it makes the
//! same decisions, so whole clusters run in a simulated network in tests.
//!
//! On the wire a Shoal member is indistinguishable from a Serf 0.9/0.10 agent:
//! same msgpack messages, compound and CRC framing, LZW decompression, AES-GCM
//! keyring, optional label header, Lamport-stamped intents, user events and
//! queries, tags in node metadata.
//!
//! ```
//! use std::time::Instant;
//! use shoal_gossip::{Config, Gossip, Output, Profile};
//!
//! let now = Instant::now();
//! let cfg = Config::new("web-1", "127.0.0.1:7946".parse().unwrap(), Profile::Lan);
//! let mut node = Gossip::new(cfg, now, 42).unwrap();
//! let join = node.join(now, &["127.0.0.1:7947".parse().unwrap()], false);
//! // The driver now runs the TCP exchange the core asks for…
//! while let Some(out) = node.poll_output() {
//!     if let Output::Stream(req) = out {
//!         // …and reports back: here, as if the peer were unreachable.
//!         node.handle_stream_reply(now, req.id, Err("connection refused".into()));
//!     }
//! }
//! assert_eq!(node.alive_count(), 1);
//! # let _ = join;
//! ```

pub mod broadcast;
pub mod config;
mod coordinate;
pub mod envelope;
pub mod escape;
pub mod event;
mod gossip;
pub mod keyring;
pub mod limits;
pub mod messages;
#[macro_use]
pub mod mp;
mod query;
mod serf;
mod swim;
mod timers;

pub use config::{Config, Profile, SerfTiming, Timing};
pub use coordinate::{Coordinate, DIMENSIONALITY};
pub use envelope::{DropReason, Frame, StreamFramer, stream_frame_len};
pub use event::{
    Event, IncomingQuery, JoinId, Member, MemberEventKind, MemberStatus, QueryId, QueryReplyTo, Tags,
    UserEvent, Versions,
};
pub use gossip::{CommandError, Gossip, Output, Stats, StreamId, StreamKind, StreamRequest};
pub use keyring::{KeyError, Keyring, decode_key, encode_key};
pub use limits::{META_MAX_SIZE, Violation};
pub use query::{INTERNAL_QUERY_PREFIX, QueryParams};
pub use serf::{decode_tags, encode_tags};
