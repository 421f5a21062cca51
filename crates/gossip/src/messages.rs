//! The memberlist and Serf messages, field for field as HashiCorp encodes them.
//!
//! Every struct here is a msgpack map with Go's field names (see [`crate::mp`]).
//! memberlist messages travel as `[type byte][map]`; Serf messages ride inside
//! memberlist's `user` message as `[user=8][serf type byte][map]`. Only layouts
//! live here; what the messages mean is in [`crate::gossip`].

use std::collections::BTreeMap;

use crate::wire_struct;

/// memberlist message types (the first byte of every message).
#[allow(missing_docs)]
pub mod kind {
    pub const PING: u8 = 0;
    pub const INDIRECT_PING: u8 = 1;
    pub const ACK: u8 = 2;
    pub const SUSPECT: u8 = 3;
    pub const ALIVE: u8 = 4;
    pub const DEAD: u8 = 5;
    pub const PUSH_PULL: u8 = 6;
    pub const COMPOUND: u8 = 7;
    pub const USER: u8 = 8;
    pub const COMPRESS: u8 = 9;
    pub const ENCRYPT: u8 = 10;
    pub const NACK: u8 = 11;
    pub const HAS_CRC: u8 = 12;
    pub const ERR: u8 = 13;
    /// Prefix of the optional cluster label header (`[244][len][label]`).
    pub const HAS_LABEL: u8 = 244;
}

/// Serf message types (the first byte of a memberlist `user` message).
#[allow(missing_docs)]
pub mod serf_kind {
    pub const LEAVE: u8 = 0;
    pub const JOIN: u8 = 1;
    pub const PUSH_PULL: u8 = 2;
    pub const USER_EVENT: u8 = 3;
    pub const QUERY: u8 = 4;
    pub const QUERY_RESPONSE: u8 = 5;
    pub const CONFLICT_RESPONSE: u8 = 6;
    pub const KEY_REQUEST: u8 = 7;
    pub const KEY_RESPONSE: u8 = 8;
    pub const RELAY: u8 = 9;
}

/// memberlist node states as numbered on the wire (push/pull).
#[allow(missing_docs)]
pub mod node_state {
    pub const ALIVE: u8 = 0;
    pub const SUSPECT: u8 = 1;
    pub const DEAD: u8 = 2;
    pub const LEFT: u8 = 3;
}

wire_struct! {
    /// A direct probe.
    pub struct Ping {
        "SeqNo" => pub seq_no: u32,
        /// The intended recipient, so a restarted node with a new name does not answer.
        "Node" => pub node: String,
        "SourceAddr" [omitempty] => pub source_addr: Vec<u8>,
        "SourcePort" [omitempty] => pub source_port: u16,
        "SourceNode" [omitempty] => pub source_node: String,
    }
}

wire_struct! {
    /// Asks a peer to probe `target` on our behalf.
    pub struct IndirectPing {
        "SeqNo" => pub seq_no: u32,
        "Target" => pub target: Vec<u8>,
        "Port" => pub port: u16,
        "Node" => pub node: String,
        "Nack" => pub nack: bool,
        "SourceAddr" [omitempty] => pub source_addr: Vec<u8>,
        "SourcePort" [omitempty] => pub source_port: u16,
        "SourceNode" [omitempty] => pub source_node: String,
    }
}

wire_struct! {
    /// Answer to a ping.
    pub struct Ack {
        "SeqNo" => pub seq_no: u32,
        "Payload" => pub payload: Vec<u8>,
    }
}

wire_struct! {
    /// An indirect probe that found no answer.
    pub struct Nack {
        "SeqNo" => pub seq_no: u32,
    }
}

wire_struct! {
    /// An error sent back on a stream.
    pub struct ErrResp {
        "Error" => pub error: String,
    }
}

wire_struct! {
    /// `node` is suspected of having failed.
    pub struct Suspect {
        "Incarnation" => pub incarnation: u32,
        "Node" => pub node: String,
        "From" => pub from: String,
    }
}

wire_struct! {
    /// `node` is alive (also how a node announces itself and its metadata).
    pub struct Alive {
        "Incarnation" => pub incarnation: u32,
        "Node" => pub node: String,
        "Addr" => pub addr: Vec<u8>,
        "Port" => pub port: u16,
        "Meta" => pub meta: Vec<u8>,
        /// pmin, pmax, pcur, dmin, dmax, dcur.
        "Vsn" => pub vsn: Vec<u8>,
    }
}

wire_struct! {
    /// `node` is dead; when `from == node` it left on purpose.
    pub struct Dead {
        "Incarnation" => pub incarnation: u32,
        "Node" => pub node: String,
        "From" => pub from: String,
    }
}

wire_struct! {
    /// First part of a push/pull state exchange.
    pub struct PushPullHeader {
        "Nodes" => pub nodes: u32,
        "UserStateLen" => pub user_state_len: u32,
        "Join" => pub join: bool,
    }
}

wire_struct! {
    /// One node in a push/pull exchange.
    pub struct PushNodeState {
        "Name" => pub name: String,
        "Addr" => pub addr: Vec<u8>,
        "Port" => pub port: u16,
        "Meta" => pub meta: Vec<u8>,
        "Incarnation" => pub incarnation: u32,
        "State" => pub state: u8,
        "Vsn" => pub vsn: Vec<u8>,
    }
}

wire_struct! {
    /// Header of a user message sent over a stream.
    pub struct UserMsgHeader {
        "UserMsgLen" => pub user_msg_len: u32,
    }
}

wire_struct! {
    /// A compressed payload (LZW, LSB first, 8-bit literals: Go's `compress/lzw`).
    pub struct Compress {
        "Algo" => pub algo: u8,
        "Buf" => pub buf: Vec<u8>,
    }
}

// ------------------------------------------------------------------ Serf

wire_struct! {
    /// Serf: `node` joined at Lamport time `ltime`.
    pub struct SerfJoin {
        "LTime" => pub ltime: u64,
        "Node" => pub node: String,
    }
}

wire_struct! {
    /// Serf: `node` intends to leave (or is being forced out).
    pub struct SerfLeave {
        "LTime" => pub ltime: u64,
        "Node" => pub node: String,
        "Prune" => pub prune: bool,
    }
}

wire_struct! {
    /// One user event kept in the recent-events buffer.
    pub struct SerfUserEventRecord {
        "Name" => pub name: String,
        "Payload" => pub payload: Vec<u8>,
    }
}

wire_struct! {
    /// The user events seen at one Lamport time.
    pub struct SerfUserEvents {
        "LTime" => pub ltime: u64,
        "Events" => pub events: Vec<SerfUserEventRecord>,
    }
}

wire_struct! {
    /// Serf's part of a push/pull exchange.
    pub struct SerfPushPull {
        "LTime" => pub ltime: u64,
        "StatusLTimes" => pub status_ltimes: BTreeMap<String, u64>,
        "LeftMembers" => pub left_members: Vec<String>,
        "EventLTime" => pub event_ltime: u64,
        "Events" => pub events: Vec<Option<SerfUserEvents>>,
        "QueryLTime" => pub query_ltime: u64,
    }
}

wire_struct! {
    /// A user event.
    pub struct SerfUserEvent {
        "LTime" => pub ltime: u64,
        "Name" => pub name: String,
        "Payload" => pub payload: Vec<u8>,
        /// "Can coalesce".
        "CC" => pub cc: bool,
    }
}

wire_struct! {
    /// A query sent to (a filtered part of) the cluster.
    pub struct SerfQuery {
        "LTime" => pub ltime: u64,
        "ID" => pub id: u32,
        "Addr" => pub addr: Vec<u8>,
        "Port" => pub port: u16,
        "SourceNode" => pub source_node: String,
        "Filters" => pub filters: Vec<Vec<u8>>,
        "Flags" => pub flags: u32,
        "RelayFactor" => pub relay_factor: u8,
        /// Go `time.Duration`: nanoseconds.
        "Timeout" => pub timeout: i64,
        "Name" => pub name: String,
        "Payload" => pub payload: Vec<u8>,
    }
}

/// Query flag: every recipient acknowledges receipt.
pub const QUERY_FLAG_ACK: u32 = 1;
/// Query flag: do not re-broadcast.
pub const QUERY_FLAG_NO_BROADCAST: u32 = 2;

/// Query filter kinds (first byte of each filter).
#[allow(missing_docs)]
pub mod filter_kind {
    pub const NODE: u8 = 0;
    pub const TAG: u8 = 1;
}

wire_struct! {
    /// A tag filter: the member's tag `tag` must match regular expression `expr`.
    pub struct FilterTag {
        "Tag" => pub tag: String,
        "Expr" => pub expr: String,
    }
}

wire_struct! {
    /// An ack or a response to a query.
    pub struct SerfQueryResponse {
        "LTime" => pub ltime: u64,
        "ID" => pub id: u32,
        "From" => pub from: String,
        "Flags" => pub flags: u32,
        "Payload" => pub payload: Vec<u8>,
    }
}

wire_struct! {
    /// Go's `net.UDPAddr`, as found in a relay header.
    pub struct UdpAddr {
        "IP" => pub ip: Vec<u8>,
        "Port" => pub port: i64,
        "Zone" => pub zone: String,
    }
}

wire_struct! {
    /// Header of a relayed query response: where it finally goes.
    pub struct RelayHeader {
        "DestAddr" => pub dest_addr: UdpAddr,
        "DestName" => pub dest_name: String,
    }
}

wire_struct! {
    /// Payload of the `_serf_install-key` / `use-key` / `remove-key` queries.
    pub struct KeyRequest {
        "Key" => pub key: Vec<u8>,
    }
}

wire_struct! {
    /// One node's answer to a key-management query.
    pub struct KeyResponse {
        "Result" => pub result: bool,
        "Message" => pub message: String,
        "Keys" => pub keys: Vec<String>,
        "PrimaryKey" => pub primary_key: String,
    }
}

wire_struct! {
    /// A member as Serf encodes it in a conflict-resolution answer.
    pub struct ConflictMember {
        "Name" => pub name: String,
        "Addr" => pub addr: Vec<u8>,
        "Port" => pub port: u16,
        "Tags" => pub tags: BTreeMap<String, String>,
        "Status" => pub status: i64,
        "ProtocolMin" => pub protocol_min: u8,
        "ProtocolMax" => pub protocol_max: u8,
        "ProtocolCur" => pub protocol_cur: u8,
        "DelegateMin" => pub delegate_min: u8,
        "DelegateMax" => pub delegate_max: u8,
        "DelegateCur" => pub delegate_cur: u8,
    }
}
