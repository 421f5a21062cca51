//! What the core tells its driver: members, membership events, user events and queries.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// A member's tags (`role` among them), sorted by key.
pub type Tags = BTreeMap<String, String>;

/// A member's status as Serf reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberStatus {
    /// Reachable and in the cluster.
    Alive,
    /// Announced that it is leaving; still reachable.
    Leaving,
    /// Left gracefully.
    Left,
    /// Stopped answering without leaving.
    Failed,
}

impl MemberStatus {
    /// Serf's lower-case name (`alive`, `leaving`, `left`, `failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Alive => "alive",
            MemberStatus::Leaving => "leaving",
            MemberStatus::Left => "left",
            MemberStatus::Failed => "failed",
        }
    }

    /// Serf's numeric status code (used by its RPC and conflict messages).
    pub fn code(self) -> i64 {
        match self {
            MemberStatus::Alive => 1,
            MemberStatus::Leaving => 2,
            MemberStatus::Left => 3,
            MemberStatus::Failed => 4,
        }
    }
}

impl std::fmt::Display for MemberStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Protocol versions a member speaks: memberlist min/max/current, then Serf min/max/current.
pub type Versions = [u8; 6];

/// One member of the cluster, as seen by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Unique node name.
    pub name: Arc<str>,
    /// Gossip address (IP and port).
    pub addr: SocketAddr,
    /// Tags from the member's metadata.
    pub tags: Arc<Tags>,
    /// Serf status.
    pub status: MemberStatus,
    /// Protocol versions.
    pub versions: Versions,
}

impl Member {
    /// The `role` tag, or the empty string.
    pub fn role(&self) -> &str {
        self.tags.get("role").map_or("", String::as_str)
    }
}

/// The kind of a membership event, named as Serf names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberEventKind {
    /// A member joined (or came back).
    Join,
    /// A member left gracefully.
    Leave,
    /// A member failed.
    Failed,
    /// A member changed its tags or address.
    Update,
    /// A failed or left member was forgotten.
    Reap,
}

impl MemberEventKind {
    /// Serf's event name (`member-join`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            MemberEventKind::Join => "member-join",
            MemberEventKind::Leave => "member-leave",
            MemberEventKind::Failed => "member-failed",
            MemberEventKind::Update => "member-update",
            MemberEventKind::Reap => "member-reap",
        }
    }
}

impl std::fmt::Display for MemberEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user event (`serf event` / `shoal event`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEvent {
    /// Lamport time of the event.
    pub ltime: u64,
    /// Event name.
    pub name: String,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// Whether events of the same name may be coalesced.
    pub coalesce: bool,
}

/// Everything needed to answer a query; handed back to [`crate::Gossip::respond`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryReplyTo {
    pub(crate) ltime: u64,
    pub(crate) id: u32,
    pub(crate) addr: SocketAddr,
    pub(crate) node: String,
    pub(crate) relay_factor: u8,
    pub(crate) deadline: Instant,
}

impl QueryReplyTo {
    /// When the asker stops listening.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// A query this node should answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingQuery {
    /// Lamport time of the query.
    pub ltime: u64,
    /// Query name.
    pub name: String,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// The node that asked.
    pub source: String,
    /// Where to send the answer.
    pub reply_to: QueryReplyTo,
}

/// Identifies a query we started, in [`Event::QueryAck`] and friends.
pub type QueryId = u64;
/// Identifies a join we started, in [`Event::JoinFinished`].
pub type JoinId = u64;

/// Something the driver should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Membership changed.
    Member {
        /// What happened.
        kind: MemberEventKind,
        /// The member, after the change.
        member: Member,
    },
    /// A user event arrived (or we fired one).
    User(UserEvent),
    /// A query arrived that handlers should answer.
    Query(IncomingQuery),
    /// A node acknowledged one of our queries.
    QueryAck {
        /// Our query.
        query: QueryId,
        /// The node that acknowledged.
        from: String,
    },
    /// A node answered one of our queries.
    QueryResponse {
        /// Our query.
        query: QueryId,
        /// The node that answered.
        from: String,
        /// Its answer.
        payload: Vec<u8>,
    },
    /// One of our queries timed out; no more acks or responses will come.
    QueryFinished {
        /// Our query.
        query: QueryId,
    },
    /// A join attempt completed.
    JoinFinished {
        /// The join.
        join: JoinId,
        /// How many addresses accepted the state exchange.
        joined: usize,
        /// Why the others did not.
        errors: Vec<String>,
    },
    /// A graceful leave finished: the cluster knows we left, the driver may exit.
    Left,
    /// The keyring changed (through a key-management query); persist it if needed.
    KeyringChanged,
    /// Another node claims our name from a different address.
    NameConflict {
        /// The address the other node advertises.
        other: SocketAddr,
    },
}
