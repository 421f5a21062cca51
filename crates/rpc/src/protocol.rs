//! Serf's RPC protocol, message for message (IPC version 1).
//!
//! A client opens a TCP connection and sends a stream of msgpack values:
//! a [`RequestHeader`] `{Command, Seq}`, followed by a body for commands that
//! take one. The server answers each request with a [`ResponseHeader`]
//! `{Seq, Error}`, followed by a body for commands that return one. Streaming
//! commands (`stream`, `monitor`, `query`) keep sending records under the same
//! `Seq` until `stop` (or, for queries, a `done` record).

use std::collections::BTreeMap;

use shoal_gossip::mp::{self, Wire};
use shoal_gossip::wire_struct;

/// The only IPC version Serf (and Shoal) speak.
pub const IPC_VERSION: i64 = 1;

/// Command names.
#[allow(missing_docs)]
pub mod cmd {
    pub const HANDSHAKE: &str = "handshake";
    pub const AUTH: &str = "auth";
    pub const EVENT: &str = "event";
    pub const FORCE_LEAVE: &str = "force-leave";
    pub const JOIN: &str = "join";
    pub const MEMBERS: &str = "members";
    pub const MEMBERS_FILTERED: &str = "members-filtered";
    pub const STREAM: &str = "stream";
    pub const STOP: &str = "stop";
    pub const MONITOR: &str = "monitor";
    pub const LEAVE: &str = "leave";
    pub const INSTALL_KEY: &str = "install-key";
    pub const USE_KEY: &str = "use-key";
    pub const REMOVE_KEY: &str = "remove-key";
    pub const LIST_KEYS: &str = "list-keys";
    pub const TAGS: &str = "tags";
    pub const QUERY: &str = "query";
    pub const RESPOND: &str = "respond";
    pub const STATS: &str = "stats";
    pub const GET_COORDINATE: &str = "get-coordinate";

    /// Every command the server serves.
    pub const ALL: [&str; 20] = [
        HANDSHAKE,
        AUTH,
        EVENT,
        FORCE_LEAVE,
        JOIN,
        MEMBERS,
        MEMBERS_FILTERED,
        STREAM,
        STOP,
        MONITOR,
        LEAVE,
        INSTALL_KEY,
        USE_KEY,
        REMOVE_KEY,
        LIST_KEYS,
        TAGS,
        QUERY,
        RESPOND,
        STATS,
        GET_COORDINATE,
    ];
}

/// Error strings clients compare against.
#[allow(missing_docs)]
pub mod errors {
    pub const UNSUPPORTED_COMMAND: &str = "Unsupported command";
    pub const UNSUPPORTED_IPC_VERSION: &str = "Unsupported IPC version";
    pub const DUPLICATE_HANDSHAKE: &str = "Handshake already performed";
    pub const HANDSHAKE_REQUIRED: &str = "Handshake required";
    pub const MONITOR_EXISTS: &str = "Monitor already exists";
    pub const INVALID_FILTER: &str = "Invalid event filter";
    pub const STREAM_EXISTS: &str = "Stream with given sequence exists";
    pub const INVALID_QUERY_ID: &str = "No pending queries matching ID";
    pub const AUTH_REQUIRED: &str = "Authentication required";
    pub const INVALID_AUTH_TOKEN: &str = "Invalid authentication token";
}

/// Query record types.
#[allow(missing_docs)]
pub mod query_record {
    pub const ACK: &str = "ack";
    pub const RESPONSE: &str = "response";
    pub const DONE: &str = "done";
}

wire_struct! {
    /// Precedes every request.
    pub struct RequestHeader {
        "Command" => pub command: String,
        "Seq" => pub seq: u64,
    }
}

wire_struct! {
    /// Precedes every response and stream record.
    pub struct ResponseHeader {
        "Seq" => pub seq: u64,
        "Error" => pub error: String,
    }
}

wire_struct! {
    /// `handshake`.
    pub struct HandshakeRequest {
        "Version" => pub version: i64,
    }
}

wire_struct! {
    /// `auth`.
    pub struct AuthRequest {
        "AuthKey" => pub auth_key: String,
    }
}

wire_struct! {
    /// `event`.
    pub struct EventRequest {
        "Name" => pub name: String,
        "Payload" => pub payload: Vec<u8>,
        "Coalesce" => pub coalesce: bool,
    }
}

wire_struct! {
    /// `force-leave`.
    pub struct ForceLeaveRequest {
        "Node" => pub node: String,
        "Prune" => pub prune: bool,
    }
}

wire_struct! {
    /// `join`.
    pub struct JoinRequest {
        "Existing" => pub existing: Vec<String>,
        "Replay" => pub replay: bool,
    }
}

wire_struct! {
    /// Answer to `join`.
    pub struct JoinResponse {
        "Num" => pub num: i64,
    }
}

wire_struct! {
    /// `members-filtered`: anchored regular expressions on tags, status and name.
    pub struct MembersFilteredRequest {
        "Tags" => pub tags: BTreeMap<String, String>,
        "Status" => pub status: String,
        "Name" => pub name: String,
    }
}

wire_struct! {
    /// A member as the RPC reports it.
    pub struct RpcMember {
        "Name" => pub name: String,
        "Addr" => pub addr: Vec<u8>,
        "Port" => pub port: u16,
        "Tags" => pub tags: BTreeMap<String, String>,
        "Status" => pub status: String,
        "ProtocolMin" => pub protocol_min: u8,
        "ProtocolMax" => pub protocol_max: u8,
        "ProtocolCur" => pub protocol_cur: u8,
        "DelegateMin" => pub delegate_min: u8,
        "DelegateMax" => pub delegate_max: u8,
        "DelegateCur" => pub delegate_cur: u8,
    }
}

wire_struct! {
    /// Answer to `members` and `members-filtered`.
    pub struct MembersResponse {
        "Members" => pub members: Vec<RpcMember>,
    }
}

wire_struct! {
    /// `install-key`, `use-key`, `remove-key` (base64 key).
    pub struct KeyRequest {
        "Key" => pub key: String,
    }
}

wire_struct! {
    /// Answer to the key commands.
    pub struct KeyResponse {
        "Messages" => pub messages: BTreeMap<String, String>,
        "Keys" => pub keys: BTreeMap<String, i64>,
        "NumNodes" => pub num_nodes: i64,
        "NumErr" => pub num_err: i64,
        "NumResp" => pub num_resp: i64,
    }
}

wire_struct! {
    /// `monitor`.
    pub struct MonitorRequest {
        "LogLevel" => pub log_level: String,
    }
}

wire_struct! {
    /// `stream`: an event filter (`member-join,user:deploy`, `*`…).
    pub struct StreamRequest {
        "Type" => pub kind: String,
    }
}

wire_struct! {
    /// `stop`: ends the stream or monitor started with that sequence number.
    pub struct StopRequest {
        "Stop" => pub stop: u64,
    }
}

wire_struct! {
    /// `tags`.
    pub struct TagsRequest {
        "Tags" => pub tags: BTreeMap<String, String>,
        "DeleteTags" => pub delete_tags: Vec<String>,
    }
}

wire_struct! {
    /// `query`.
    pub struct QueryRequest {
        "FilterNodes" => pub filter_nodes: Vec<String>,
        "FilterTags" => pub filter_tags: BTreeMap<String, String>,
        "RequestAck" => pub request_ack: bool,
        "RelayFactor" => pub relay_factor: u8,
        /// Go `time.Duration` in nanoseconds; 0 means the default.
        "Timeout" => pub timeout: i64,
        "Name" => pub name: String,
        "Payload" => pub payload: Vec<u8>,
    }
}

wire_struct! {
    /// `respond`: answers a query received on an event stream.
    pub struct RespondRequest {
        "ID" => pub id: u64,
        "Payload" => pub payload: Vec<u8>,
    }
}

wire_struct! {
    /// One ack, response or the end of a query.
    pub struct QueryRecord {
        "Type" => pub kind: String,
        "From" => pub from: String,
        "Payload" => pub payload: Vec<u8>,
    }
}

wire_struct! {
    /// One log line of a monitor.
    pub struct LogRecord {
        "Log" => pub log: String,
    }
}

wire_struct! {
    /// A user event on a stream.
    pub struct UserEventRecord {
        "Event" => pub event: String,
        "LTime" => pub ltime: u64,
        "Name" => pub name: String,
        "Payload" => pub payload: Vec<u8>,
        "Coalesce" => pub coalesce: bool,
    }
}

wire_struct! {
    /// A query on a stream (answer it with `respond` and this `ID`).
    pub struct QueryEventRecord {
        "Event" => pub event: String,
        "ID" => pub id: u64,
        "LTime" => pub ltime: u64,
        "Name" => pub name: String,
        "Payload" => pub payload: Vec<u8>,
    }
}

wire_struct! {
    /// A member event on a stream.
    pub struct MemberEventRecord {
        "Event" => pub event: String,
        "Members" => pub members: Vec<RpcMember>,
    }
}

wire_struct! {
    /// A record on an event stream, before we know its kind (`Event` decides).
    pub struct AnyEventRecord {
        "Event" => pub event: String,
    }
}

wire_struct! {
    /// `get-coordinate`.
    pub struct CoordinateRequest {
        "Node" => pub node: String,
    }
}

/// A Vivaldi network coordinate, as the gossip core keeps it.
pub use shoal_gossip::Coordinate;

/// Answer to `get-coordinate`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoordinateResponse {
    /// Go field `Coord`.
    pub coord: Coordinate,
    /// Go field `Ok`: whether a coordinate is known.
    pub ok: bool,
}

impl Wire for CoordinateResponse {
    fn put(&self, buf: &mut Vec<u8>) {
        mp::put_map_len(buf, 2);
        mp::put_str(buf, "Coord");
        self.coord.put(buf);
        mp::put_str(buf, "Ok");
        self.ok.put(buf);
    }
    fn take(r: &mut mp::Reader<'_>) -> Result<Self, mp::DecodeError> {
        let mut c = CoordinateResponse::default();
        for _ in 0..r.read_map_len()? {
            match r.read_raw()? {
                b"Coord" => c.coord = Wire::take(r)?,
                b"Ok" => c.ok = Wire::take(r)?,
                _ => r.skip()?,
            }
        }
        Ok(c)
    }
}

/// Answer to `stats`: sections of key/value pairs.
pub type StatsResponse = BTreeMap<String, BTreeMap<String, String>>;

/// Whether a command is followed by a request body.
pub fn has_body(command: &str) -> bool {
    !matches!(command, cmd::MEMBERS | cmd::LEAVE | cmd::LIST_KEYS | cmd::STATS)
}

/// A client's request as the server reads it: the command with its decoded body.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Request {
    Handshake(HandshakeRequest),
    Auth(AuthRequest),
    Event(EventRequest),
    ForceLeave(ForceLeaveRequest),
    Join(JoinRequest),
    Members,
    MembersFiltered(MembersFilteredRequest),
    Stream(StreamRequest),
    Monitor(MonitorRequest),
    Stop(StopRequest),
    Leave,
    InstallKey(KeyRequest),
    UseKey(KeyRequest),
    RemoveKey(KeyRequest),
    ListKeys,
    Tags(TagsRequest),
    Query(QueryRequest),
    Respond(RespondRequest),
    Stats,
    GetCoordinate(CoordinateRequest),
    /// A command the server does not serve (no body is read for it).
    Unknown(String),
}

impl Request {
    /// Whether a body value follows a `command` header (never for an unknown command: the
    /// server refuses it without reading further).
    pub fn takes_body(command: &str) -> bool {
        has_body(command) && cmd::ALL.contains(&command)
    }

    /// The request for `command`, its body decoded from `body` (one msgpack value; ignored
    /// for commands that take none, see [`Request::takes_body`]).
    pub fn decode(command: &str, body: &[u8]) -> Result<Request, mp::DecodeError> {
        let b = body;
        Ok(match command {
            cmd::HANDSHAKE => Request::Handshake(mp::decode(b)?),
            cmd::AUTH => Request::Auth(mp::decode(b)?),
            cmd::EVENT => Request::Event(mp::decode(b)?),
            cmd::FORCE_LEAVE => Request::ForceLeave(mp::decode(b)?),
            cmd::JOIN => Request::Join(mp::decode(b)?),
            cmd::MEMBERS => Request::Members,
            cmd::MEMBERS_FILTERED => Request::MembersFiltered(mp::decode(b)?),
            cmd::STREAM => Request::Stream(mp::decode(b)?),
            cmd::MONITOR => Request::Monitor(mp::decode(b)?),
            cmd::STOP => Request::Stop(mp::decode(b)?),
            cmd::LEAVE => Request::Leave,
            cmd::INSTALL_KEY => Request::InstallKey(mp::decode(b)?),
            cmd::USE_KEY => Request::UseKey(mp::decode(b)?),
            cmd::REMOVE_KEY => Request::RemoveKey(mp::decode(b)?),
            cmd::LIST_KEYS => Request::ListKeys,
            cmd::TAGS => Request::Tags(mp::decode(b)?),
            cmd::QUERY => Request::Query(mp::decode(b)?),
            cmd::RESPOND => Request::Respond(mp::decode(b)?),
            cmd::STATS => Request::Stats,
            cmd::GET_COORDINATE => Request::GetCoordinate(mp::decode(b)?),
            other => Request::Unknown(other.to_string()),
        })
    }
}

/// Decodes one whole request from the front of `buf` without a socket, with the functions
/// the server applies to a client's bytes: [`frame`](crate::codec::frame) cuts the header
/// value, [`RequestHeader`] decodes it, [`Request::takes_body`] says whether a body value
/// follows and [`Request::decode`] decodes it. Returns the header, the request and how many
/// bytes they took, or `Ok(None)` while `buf` ends before the request does.
pub fn decode_request(buf: &[u8]) -> Result<Option<(RequestHeader, Request, usize)>, crate::RpcError> {
    let Some(n) = crate::codec::frame(buf)? else { return Ok(None) };
    let header: RequestHeader = mp::decode(&buf[..n])?;
    if !Request::takes_body(&header.command) {
        let req = Request::decode(&header.command, &[])?;
        return Ok(Some((header, req, n)));
    }
    let Some(m) = crate::codec::frame(&buf[n..])? else { return Ok(None) };
    let req = Request::decode(&header.command, &buf[n..n + m])?;
    Ok(Some((header, req, n + m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(command: &str, body: Option<&dyn crate::codec::WireDyn>) -> Vec<u8> {
        crate::codec::encode_pair(&RequestHeader { command: command.into(), seq: 7 }, body)
    }

    #[test]
    fn requests_decode_from_bytes_like_the_server_reads_them() {
        let mut buf = frames(cmd::HANDSHAKE, Some(&HandshakeRequest { version: 1 }));
        buf.extend(frames(cmd::MEMBERS, None));
        let event = EventRequest { name: "deploy".into(), payload: b"v1".to_vec(), coalesce: true };
        buf.extend(frames(cmd::EVENT, Some(&event)));
        buf.extend(frames("self-destruct", None));
        let mut got = Vec::new();
        let mut rest = &buf[..];
        while let Some((h, req, n)) = decode_request(rest).unwrap() {
            assert_eq!(h.seq, 7);
            got.push(req);
            rest = &rest[n..];
        }
        assert!(rest.is_empty());
        assert_eq!(
            got,
            [
                Request::Handshake(HandshakeRequest { version: 1 }),
                Request::Members,
                Request::Event(event),
                Request::Unknown("self-destruct".into()),
            ]
        );
        // A header whose body has not arrived yet is incomplete, not an error.
        assert_eq!(decode_request(&frames(cmd::EVENT, None)).unwrap(), None);
        assert!(decode_request(&[0xc1]).is_err());
        let mut bad_body = frames(cmd::STOP, None);
        bad_body.push(0x01);
        assert!(decode_request(&bad_body).is_err(), "a body that is not a map");
    }
}
