//! An RPC client for Serf's protocol: what the `shoal` CLI uses, and it works
//! the same against a Shoal agent or a real Serf agent.

use std::collections::BTreeMap;

use shoal_gossip::mp::{self, Wire};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::codec::{RpcError, ValueReader, WireDyn, encode_pair};
use crate::protocol::*;

/// A record from an event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// A member event.
    Member(MemberEventRecord),
    /// A user event.
    User(UserEventRecord),
    /// A query (answer with [`RpcClient::respond`] and its `id`).
    Query(QueryEventRecord),
}

/// One connection to an agent's RPC.
pub struct RpcClient {
    reader: ValueReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    seq: u64,
}

impl RpcClient {
    /// Connects, shakes hands, and authenticates if a token is given.
    pub async fn connect(addr: &str, auth: Option<&str>) -> Result<RpcClient, RpcError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let mut c = RpcClient { reader: ValueReader::new(rd), writer: wr, seq: 0 };
        c.call_empty(cmd::HANDSHAKE, Some(&HandshakeRequest { version: IPC_VERSION })).await?;
        if let Some(token) = auth {
            c.call_empty(cmd::AUTH, Some(&AuthRequest { auth_key: token.to_string() })).await?;
        }
        Ok(c)
    }

    async fn send(&mut self, command: &str, body: Option<&dyn WireDyn>) -> Result<u64, RpcError> {
        self.seq += 1;
        let header = RequestHeader { command: command.to_string(), seq: self.seq };
        self.writer.write_all(&encode_pair(&header, body)).await?;
        Ok(self.seq)
    }

    /// Reads headers until the one for `seq`; records of other streams are skipped.
    async fn header(&mut self, seq: u64) -> Result<ResponseHeader, RpcError> {
        loop {
            let h: ResponseHeader = self.reader.next().await?;
            if h.seq == seq {
                return Ok(h);
            }
            // A stream record for another sequence: skip its body.
            self.reader.next_raw().await?;
        }
    }

    async fn call_empty(&mut self, command: &str, body: Option<&dyn WireDyn>) -> Result<(), RpcError> {
        let seq = self.send(command, body).await?;
        let h = self.header(seq).await?;
        if h.error.is_empty() { Ok(()) } else { Err(RpcError::Remote(h.error)) }
    }

    /// A command with a response body; the body comes even with an error.
    async fn call<R: Wire>(
        &mut self,
        command: &str,
        body: Option<&dyn WireDyn>,
    ) -> Result<(R, String), RpcError> {
        let seq = self.send(command, body).await?;
        let h = self.header(seq).await?;
        if h.error == errors::AUTH_REQUIRED || h.error == errors::HANDSHAKE_REQUIRED {
            return Err(RpcError::Remote(h.error));
        }
        let r: R = self.reader.next().await?;
        Ok((r, h.error))
    }

    async fn call_ok<R: Wire>(&mut self, command: &str, body: Option<&dyn WireDyn>) -> Result<R, RpcError> {
        let (r, error) = self.call(command, body).await?;
        if error.is_empty() { Ok(r) } else { Err(RpcError::Remote(error)) }
    }

    /// Every member the agent knows.
    pub async fn members(&mut self) -> Result<Vec<RpcMember>, RpcError> {
        Ok(self.call_ok::<MembersResponse>(cmd::MEMBERS, None).await?.members)
    }

    /// Members matching anchored regular expressions on tags, status and name.
    pub async fn members_filtered(
        &mut self,
        tags: BTreeMap<String, String>,
        status: &str,
        name: &str,
    ) -> Result<Vec<RpcMember>, RpcError> {
        let req = MembersFilteredRequest { tags, status: status.into(), name: name.into() };
        Ok(self.call_ok::<MembersResponse>(cmd::MEMBERS_FILTERED, Some(&req)).await?.members)
    }

    /// Joins through `addrs`; returns how many answered.
    pub async fn join(&mut self, addrs: &[String], replay: bool) -> Result<i64, RpcError> {
        let req = JoinRequest { existing: addrs.to_vec(), replay };
        Ok(self.call_ok::<JoinResponse>(cmd::JOIN, Some(&req)).await?.num)
    }

    /// Makes the agent leave gracefully and stop.
    pub async fn leave(&mut self) -> Result<(), RpcError> {
        self.call_empty(cmd::LEAVE, None).await
    }

    /// Marks a failed member as left (with `prune`, forgets it).
    pub async fn force_leave(&mut self, node: &str, prune: bool) -> Result<(), RpcError> {
        self.call_empty(cmd::FORCE_LEAVE, Some(&ForceLeaveRequest { node: node.into(), prune })).await
    }

    /// Fires a user event.
    pub async fn user_event(&mut self, name: &str, payload: &[u8], coalesce: bool) -> Result<(), RpcError> {
        let req = EventRequest { name: name.into(), payload: payload.to_vec(), coalesce };
        self.call_empty(cmd::EVENT, Some(&req)).await
    }

    /// Sets and deletes tags.
    pub async fn update_tags(
        &mut self,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
    ) -> Result<(), RpcError> {
        self.call_empty(cmd::TAGS, Some(&TagsRequest { tags: set, delete_tags: delete })).await
    }

    /// Agent statistics (`serf info`).
    pub async fn stats(&mut self) -> Result<StatsResponse, RpcError> {
        self.call_ok(cmd::STATS, None).await
    }

    /// A key command; returns the cluster's answers and the agent's verdict (empty if all succeeded).
    pub async fn key(&mut self, command: &str, key: Option<&str>) -> Result<(KeyResponse, String), RpcError> {
        match key {
            Some(k) => self.call(command, Some(&KeyRequest { key: k.into() })).await,
            None => self.call(command, None).await,
        }
    }

    /// Network coordinate of a node.
    pub async fn get_coordinate(&mut self, node: &str) -> Result<CoordinateResponse, RpcError> {
        self.call_ok(cmd::GET_COORDINATE, Some(&CoordinateRequest { node: node.into() })).await
    }

    /// Starts a query; read its records with [`RpcClient::next_query_record`].
    pub async fn query(&mut self, req: QueryRequest) -> Result<u64, RpcError> {
        let seq = self.send(cmd::QUERY, Some(&req)).await?;
        let h = self.header(seq).await?;
        if h.error.is_empty() { Ok(seq) } else { Err(RpcError::Remote(h.error)) }
    }

    /// The next ack, response or `done` of query `seq`.
    pub async fn next_query_record(&mut self, seq: u64) -> Result<QueryRecord, RpcError> {
        self.header(seq).await?;
        self.reader.next().await
    }

    /// Subscribes to events matching `filter` (Serf's syntax).
    pub async fn stream(&mut self, filter: &str) -> Result<u64, RpcError> {
        let seq = self.send(cmd::STREAM, Some(&StreamRequest { kind: filter.into() })).await?;
        let h = self.header(seq).await?;
        if h.error.is_empty() { Ok(seq) } else { Err(RpcError::Remote(h.error)) }
    }

    /// The next event of stream `seq`.
    pub async fn next_event(&mut self, seq: u64) -> Result<StreamEvent, RpcError> {
        self.header(seq).await?;
        let raw = self.reader.next_raw().await?;
        let kind: AnyEventRecord = mp::decode(&raw)?;
        Ok(match kind.event.as_str() {
            "user" => StreamEvent::User(mp::decode(&raw)?),
            "query" => StreamEvent::Query(mp::decode(&raw)?),
            _ => StreamEvent::Member(mp::decode(&raw)?),
        })
    }

    /// Answers a query received on a stream.
    pub async fn respond(&mut self, id: u64, payload: &[u8]) -> Result<(), RpcError> {
        self.call_empty(cmd::RESPOND, Some(&RespondRequest { id, payload: payload.to_vec() })).await
    }

    /// Streams the agent's log at `level` and above.
    pub async fn monitor(&mut self, level: &str) -> Result<u64, RpcError> {
        let seq = self.send(cmd::MONITOR, Some(&MonitorRequest { log_level: level.into() })).await?;
        let h = self.header(seq).await?;
        if h.error.is_empty() { Ok(seq) } else { Err(RpcError::Remote(h.error)) }
    }

    /// The next log line of monitor `seq`.
    pub async fn next_log(&mut self, seq: u64) -> Result<String, RpcError> {
        self.header(seq).await?;
        Ok(self.reader.next::<LogRecord>().await?.log)
    }

    /// Stops a stream or monitor.
    pub async fn stop(&mut self, seq: u64) -> Result<(), RpcError> {
        self.call_empty(cmd::STOP, Some(&StopRequest { stop: seq })).await
    }

    /// Sends raw bytes (for tests of malformed input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), RpcError> {
        Ok(self.writer.write_all(bytes).await?)
    }

    /// Reads the next response header, whatever its sequence number (for tests).
    pub async fn read_header(&mut self) -> Result<ResponseHeader, RpcError> {
        self.reader.next().await
    }
}
