//! The RPC server: Serf's IPC protocol in front of a Shoal agent, so the stock
//! `serf` CLI (and anything built on Serf's RPC client) drives a Shoal agent.
//!
//! Each connection gets a reader task (requests, in order) and a writer task
//! (responses and stream records, from any task). Malformed input, a missing
//! handshake, an unknown command or missing authentication gets an error reply
//! and the connection is closed; the agent carries on.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use regex::Regex;
use shoal_agent::{AgentHandle, EventFilter, HandlerSpec, KeyOp, QueryUpdate, SerfEvent, resolve};
use shoal_gossip::{Member, QueryParams, QueryReplyTo};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::codec::{RpcError, ValueReader, WireDyn, encode_pair};
use crate::logtap::{LogTap, parse_level};
use crate::protocol::*;

/// What the server needs besides the agent.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// `--rpc-auth`: clients must `auth` with this token first.
    pub auth: Option<String>,
    /// The agent's handler scripts (reported by `stats`).
    pub event_handlers: Vec<HandlerSpec>,
    /// Where `monitor` gets log lines from.
    pub log_tap: Option<LogTap>,
}

/// Serves Serf's RPC on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, agent: AgentHandle, cfg: ServerConfig) {
    let cfg = Arc::new(cfg);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tracing::debug!(%peer, "RPC client connected");
                tokio::spawn(Connection::run(stream, peer, agent.clone(), cfg.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "RPC accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Binds `addr` and serves in a background task.
pub async fn start(
    addr: SocketAddr,
    agent: AgentHandle,
    cfg: ServerConfig,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() && cfg.auth.is_none() {
        tracing::warn!(%bound, "RPC listens beyond loopback without --rpc-auth: anyone who can reach it controls the agent");
    }
    tracing::info!(%bound, auth = cfg.auth.is_some(), "RPC server listening");
    Ok((bound, tokio::spawn(serve(listener, agent, cfg))))
}

/// Ends the connection after the reply has been written.
struct Close;

/// Encoded messages queued for one client's socket. Streams wait for room (their sources
/// are bounded and drop what a slow client cannot take); a client that sends requests
/// without reading the replies is disconnected once this fills.
const OUTPUT_QUEUE: usize = 256;

struct Connection {
    agent: AgentHandle,
    cfg: Arc<ServerConfig>,
    out: mpsc::Sender<Vec<u8>>,
    /// A reply found the output queue full: the client does not read; close.
    overflow: std::sync::atomic::AtomicBool,
    version: i64,
    authed: bool,
    streams: HashMap<u64, JoinHandle<()>>,
    monitor: Option<(u64, JoinHandle<()>)>,
    queries: Arc<std::sync::Mutex<HashMap<u64, QueryReplyTo>>>,
    next_query: Arc<AtomicU64>,
}

impl Connection {
    async fn run(stream: TcpStream, peer: SocketAddr, agent: AgentHandle, cfg: Arc<ServerConfig>) {
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = stream.into_split();
        let (out, mut out_rx) = mpsc::channel::<Vec<u8>>(OUTPUT_QUEUE);
        let writer = tokio::spawn(async move {
            while let Some(buf) = out_rx.recv().await {
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let mut conn = Connection {
            agent,
            cfg,
            out,
            overflow: std::sync::atomic::AtomicBool::new(false),
            version: 0,
            authed: false,
            streams: HashMap::new(),
            monitor: None,
            queries: Arc::default(),
            next_query: Arc::new(AtomicU64::new(0)),
        };
        let mut reader = ValueReader::new(rd);
        loop {
            let header: RequestHeader = match reader.next().await {
                Ok(h) => h,
                Err(RpcError::Closed) => break,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "malformed RPC request; closing");
                    conn.reply(0, &format!("malformed request: {e}"), None);
                    break;
                }
            };
            match conn.handle(&mut reader, header).await {
                Ok(()) if conn.overflow.load(Ordering::Relaxed) => {
                    tracing::warn!(%peer, "RPC client does not read its replies; closing");
                    break;
                }
                Ok(()) => {}
                Err(Close) => break,
            }
        }
        for (_, task) in conn.streams.drain() {
            task.abort();
        }
        if let Some((_, task)) = conn.monitor.take() {
            task.abort();
        }
        drop(conn.out);
        let _ = writer.await;
        tracing::debug!(%peer, "RPC client disconnected");
    }

    fn reply(&self, seq: u64, error: &str, body: Option<&dyn WireDyn>) {
        let header = ResponseHeader { seq, error: error.to_string() };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.out.try_send(encode_pair(&header, body)) {
            self.overflow.store(true, Ordering::Relaxed);
        }
    }

    /// Reads and decodes the request `header` announces (its body, if the command takes one),
    /// exactly as [`decode_request`](crate::protocol::decode_request) does from bytes.
    async fn request(
        &self,
        reader: &mut ValueReader<tokio::net::tcp::OwnedReadHalf>,
        seq: u64,
        command: &str,
    ) -> Result<Request, Close> {
        let body = if Request::takes_body(command) {
            match reader.next_raw().await {
                Ok(raw) => raw,
                Err(e) => {
                    self.reply(seq, &format!("malformed request body: {e}"), None);
                    return Err(Close);
                }
            }
        } else {
            Vec::new()
        };
        Request::decode(command, &body).map_err(|e| {
            self.reply(seq, &format!("malformed request body: {e}"), None);
            Close
        })
    }

    async fn handle(
        &mut self,
        reader: &mut ValueReader<tokio::net::tcp::OwnedReadHalf>,
        h: RequestHeader,
    ) -> Result<(), Close> {
        let seq = h.seq;
        let command = h.command.as_str();
        if command != cmd::HANDSHAKE && self.version == 0 {
            self.reply(seq, errors::HANDSHAKE_REQUIRED, None);
            return Err(Close);
        }
        if self.cfg.auth.is_some() && !self.authed && command != cmd::AUTH && command != cmd::HANDSHAKE {
            tracing::warn!("RPC command before authentication; closing");
            self.reply(seq, errors::AUTH_REQUIRED, None);
            return Err(Close);
        }
        match self.request(reader, seq, command).await? {
            Request::Handshake(req) => {
                let error = if req.version != IPC_VERSION {
                    errors::UNSUPPORTED_IPC_VERSION
                } else if self.version != 0 {
                    errors::DUPLICATE_HANDSHAKE
                } else {
                    self.version = req.version;
                    ""
                };
                self.reply(seq, error, None);
            }
            Request::Auth(req) => {
                if self.cfg.auth.as_deref() == Some(req.auth_key.as_str()) {
                    self.authed = true;
                    self.reply(seq, "", None);
                } else {
                    tracing::warn!("RPC client sent a wrong auth token; closing");
                    self.reply(seq, errors::INVALID_AUTH_TOKEN, None);
                    return Err(Close);
                }
            }
            Request::Event(req) => {
                let r = self.agent.user_event(&req.name, &req.payload, req.coalesce).await;
                self.reply(seq, &err_string(r), None);
            }
            Request::ForceLeave(req) => {
                let r = self.agent.force_leave(&req.node, req.prune).await;
                self.reply(seq, &err_string(r), None);
            }
            Request::Join(req) => {
                let (num, error) = self.join(&req).await;
                self.reply(seq, &error, Some(&JoinResponse { num }));
            }
            Request::Members => {
                let members = self.agent.members().borrow().members.iter().map(rpc_member).collect();
                self.reply(seq, "", Some(&MembersResponse { members }));
            }
            Request::MembersFiltered(req) => match self.filtered_members(&req) {
                Ok(members) => self.reply(seq, "", Some(&MembersResponse { members })),
                Err(e) => self.reply(seq, &e, Some(&MembersResponse::default())),
            },
            Request::Stream(req) => {
                let error = self.stream(seq, &req.kind);
                self.reply(seq, error, None);
            }
            Request::Monitor(req) => {
                let error = self.monitor(seq, &req.log_level);
                self.reply(seq, &error, None);
            }
            Request::Stop(req) => {
                if let Some(task) = self.streams.remove(&req.stop) {
                    task.abort();
                }
                if self.monitor.as_ref().is_some_and(|(s, _)| *s == req.stop)
                    && let Some((_, task)) = self.monitor.take()
                {
                    task.abort();
                }
                self.reply(seq, "", None);
            }
            Request::Leave => {
                tracing::info!("graceful leave requested over RPC");
                let r = self.agent.leave().await;
                self.reply(seq, &err_string(r), None);
                self.agent.request_shutdown();
            }
            Request::InstallKey(req) => self.key_op(seq, KeyOp::Install, Some(req.key)).await,
            Request::UseKey(req) => self.key_op(seq, KeyOp::Use, Some(req.key)).await,
            Request::RemoveKey(req) => self.key_op(seq, KeyOp::Remove, Some(req.key)).await,
            Request::ListKeys => self.key_op(seq, KeyOp::List, None).await,
            Request::Tags(req) => {
                let r = self.agent.update_tags(req.tags, req.delete_tags).await;
                self.reply(seq, &err_string(r), None);
            }
            Request::Query(req) => self.query(seq, req).await,
            Request::Respond(req) => {
                let to = self.queries.lock().map(|q| q.get(&req.id).cloned()).ok().flatten();
                let error = match to {
                    Some(to) => err_string(self.agent.respond(to, req.payload).await),
                    None => errors::INVALID_QUERY_ID.to_string(),
                };
                self.reply(seq, &error, None);
            }
            Request::Stats => {
                let stats = self.stats().await;
                self.reply(seq, "", Some(&stats));
            }
            Request::GetCoordinate(req) => {
                let coord = self.agent.coordinate(&req.node).await.ok().flatten();
                let resp = CoordinateResponse { ok: coord.is_some(), coord: coord.unwrap_or_default() };
                self.reply(seq, "", Some(&resp));
            }
            Request::Unknown(_) => {
                tracing::warn!(command, "unsupported RPC command; closing");
                self.reply(seq, errors::UNSUPPORTED_COMMAND, None);
                return Err(Close);
            }
        }
        Ok(())
    }

    async fn key_op(&self, seq: u64, op: KeyOp, key: Option<String>) {
        let (resp, error) = match self.agent.key_op(op, key.as_deref()).await {
            Ok(report) => {
                let error = report.verdict().err().unwrap_or_default();
                let resp = KeyResponse {
                    messages: report.messages,
                    keys: report.keys.into_iter().map(|(k, n)| (k, n as i64)).collect(),
                    num_nodes: report.num_nodes as i64,
                    num_err: report.num_err as i64,
                    num_resp: report.num_resp as i64,
                };
                (resp, error)
            }
            Err(e) => (KeyResponse::default(), e.to_string()),
        };
        self.reply(seq, &error, Some(&resp));
    }

    async fn join(&self, req: &JoinRequest) -> (i64, String) {
        let mut targets = Vec::new();
        for spec in &req.existing {
            match shoal_agent::JoinTarget::parse(spec) {
                Ok(t) => targets.push(t),
                Err(e) => return (0, e.to_string()),
            }
        }
        let (addrs, errors) = resolve(&targets).await;
        if addrs.is_empty() {
            return (0, format!("failed to resolve: {}", errors.join("; ")));
        }
        match self.agent.join_addrs(addrs, req.replay).await {
            Ok(n) => (n as i64, String::new()),
            Err(e) => (0, e.to_string()),
        }
    }

    fn filtered_members(&self, req: &MembersFilteredRequest) -> Result<Vec<RpcMember>, String> {
        let anchored = |expr: &str| {
            Regex::new(&format!("^(?:{expr})$")).map_err(|e| format!("Failed to compile regex: {e}"))
        };
        let tags: Vec<(String, Regex)> =
            req.tags.iter().map(|(k, v)| Ok((k.clone(), anchored(v)?))).collect::<Result<_, String>>()?;
        let status = anchored(&req.status)?;
        let name = anchored(&req.name)?;
        let snapshot = self.agent.members().borrow().clone();
        Ok(snapshot
            .members
            .iter()
            .filter(|m| tags.iter().all(|(k, re)| re.is_match(m.tags.get(k).map_or("", String::as_str))))
            .filter(|m| req.status.is_empty() || status.is_match(m.status.as_str()))
            .filter(|m| req.name.is_empty() || name.is_match(&m.name))
            .map(rpc_member)
            .collect())
    }

    fn stream(&mut self, seq: u64, filter: &str) -> &'static str {
        let Ok(filters) = EventFilter::parse_list(filter) else { return errors::INVALID_FILTER };
        if self.streams.contains_key(&seq) {
            return errors::STREAM_EXISTS;
        }
        let mut events = self.agent.subscribe_serf();
        let out = self.out.clone();
        let queries = self.queries.clone();
        let next_query = self.next_query.clone();
        let task = tokio::spawn(async move {
            loop {
                let e = match events.recv().await {
                    Ok(e) => e,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(dropped = n, "RPC event stream is too slow; events dropped");
                        continue;
                    }
                    Err(_) => break,
                };
                if !shoal_agent::events::any_matches(&filters, &e) {
                    continue;
                }
                let header = ResponseHeader { seq, error: String::new() };
                let buf = match e {
                    SerfEvent::Member { kind, members } => encode_pair(
                        &header,
                        Some(&MemberEventRecord {
                            event: kind.as_str().into(),
                            members: members.iter().map(rpc_member).collect(),
                        }),
                    ),
                    SerfEvent::User(u) => encode_pair(
                        &header,
                        Some(&UserEventRecord {
                            event: "user".into(),
                            ltime: u.ltime,
                            name: u.name,
                            payload: u.payload,
                            coalesce: u.coalesce,
                        }),
                    ),
                    SerfEvent::Query(q) => {
                        let id = next_query.fetch_add(1, Ordering::SeqCst) + 1;
                        if let Ok(mut map) = queries.lock() {
                            map.insert(id, q.reply_to.clone());
                        }
                        expire_query(queries.clone(), id, q.reply_to.deadline());
                        encode_pair(
                            &header,
                            Some(&QueryEventRecord {
                                event: "query".into(),
                                id,
                                ltime: q.ltime,
                                name: q.name,
                                payload: q.payload,
                            }),
                        )
                    }
                };
                if out.send(buf).await.is_err() {
                    break;
                }
            }
        });
        self.streams.insert(seq, task);
        ""
    }

    fn monitor(&mut self, seq: u64, level: &str) -> String {
        let Some(min) = parse_level(level) else {
            return format!("Unknown log level: {}", level.to_uppercase());
        };
        if self.monitor.is_some() {
            return errors::MONITOR_EXISTS.into();
        }
        let Some(tap) = &self.cfg.log_tap else { return "log streaming is not available".into() };
        let mut lines = tap.subscribe();
        let out = self.out.clone();
        let task = tokio::spawn(async move {
            loop {
                match lines.recv().await {
                    // tracing orders levels from most to least verbose: ERROR < … < TRACE.
                    Ok(l) if l.level <= min => {
                        let header = ResponseHeader { seq, error: String::new() };
                        if out.send(encode_pair(&header, Some(&LogRecord { log: l.line }))).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
        });
        self.monitor = Some((seq, task));
        String::new()
    }

    async fn query(&self, seq: u64, req: QueryRequest) {
        let params = QueryParams {
            name: req.name,
            payload: req.payload,
            filter_nodes: req.filter_nodes,
            filter_tags: req.filter_tags,
            request_ack: req.request_ack,
            relay_factor: req.relay_factor,
            timeout: (req.timeout > 0).then(|| Duration::from_nanos(req.timeout as u64)),
        };
        match self.agent.query(params).await {
            Err(e) => self.reply(seq, &e.to_string(), None),
            Ok(mut updates) => {
                self.reply(seq, "", None);
                let out = self.out.clone();
                tokio::spawn(async move {
                    let header = ResponseHeader { seq, error: String::new() };
                    while let Some(u) = updates.recv().await {
                        let rec = match u {
                            QueryUpdate::Ack(from) => {
                                QueryRecord { kind: query_record::ACK.into(), from, payload: vec![] }
                            }
                            QueryUpdate::Response { from, payload } => {
                                QueryRecord { kind: query_record::RESPONSE.into(), from, payload }
                            }
                        };
                        if out.send(encode_pair(&header, Some(&rec))).await.is_err() {
                            return;
                        }
                    }
                    let done = QueryRecord { kind: query_record::DONE.into(), ..QueryRecord::default() };
                    let _ = out.send(encode_pair(&header, Some(&done))).await;
                });
            }
        }
    }

    async fn stats(&self) -> StatsResponse {
        let mut out = StatsResponse::new();
        let local = self.agent.members().borrow().local.clone();
        out.insert("agent".into(), BTreeMap::from([("name".into(), local.name.to_string())]));
        out.insert(
            "runtime".into(),
            BTreeMap::from([
                ("os".into(), std::env::consts::OS.into()),
                ("arch".into(), std::env::consts::ARCH.into()),
                ("version".into(), format!("shoal {}", env!("CARGO_PKG_VERSION"))),
                ("cpu_count".into(), std::thread::available_parallelism().map_or(1, |n| n.get()).to_string()),
            ]),
        );
        if let Ok(s) = self.agent.stats().await {
            let [alive, leaving, left, failed] = s.counts;
            out.insert(
                "serf".into(),
                BTreeMap::from([
                    ("members".into(), (alive + leaving + left + failed).to_string()),
                    ("failed".into(), failed.to_string()),
                    ("left".into(), left.to_string()),
                    ("health_score".into(), s.health_score.to_string()),
                    ("member_time".into(), s.clocks.0.to_string()),
                    ("event_time".into(), s.clocks.1.to_string()),
                    ("query_time".into(), s.clocks.2.to_string()),
                    ("intent_queue".into(), s.queues.0.to_string()),
                    ("event_queue".into(), s.queues.1.to_string()),
                    ("query_queue".into(), s.queues.2.to_string()),
                    ("encrypted".into(), s.encrypted.to_string()),
                    ("packets_dropped".into(), s.gossip.dropped_total().to_string()),
                ]),
            );
        }
        out.insert("tags".into(), (*local.tags).clone());
        let handlers = self
            .cfg
            .event_handlers
            .iter()
            .flat_map(|h| {
                h.filters.iter().map(move |f| (format!("{}:{}", f.event, f.name), h.script.clone()))
            })
            .collect();
        out.insert("event_handlers".into(), handlers);
        out
    }
}

/// Forgets a query's reply address once its deadline has passed.
fn expire_query(
    queries: Arc<std::sync::Mutex<HashMap<u64, QueryReplyTo>>>,
    id: u64,
    deadline: std::time::Instant,
) {
    tokio::spawn(async move {
        tokio::time::sleep_until(deadline.into()).await;
        if let Ok(mut map) = queries.lock() {
            map.remove(&id);
        }
    });
}

fn err_string<T, E: std::fmt::Display>(r: Result<T, E>) -> String {
    r.err().map(|e| e.to_string()).unwrap_or_default()
}

/// A member in the RPC's shape.
pub fn rpc_member(m: &Member) -> RpcMember {
    let v = m.versions;
    RpcMember {
        name: m.name.to_string(),
        addr: match m.addr.ip() {
            std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
            std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
        },
        port: m.addr.port(),
        tags: (*m.tags).clone(),
        status: m.status.as_str().into(),
        protocol_min: v[0],
        protocol_max: v[1],
        protocol_cur: v[2],
        delegate_min: v[3],
        delegate_max: v[4],
        delegate_cur: v[5],
    }
}
