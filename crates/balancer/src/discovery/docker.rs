//! Servers from a Docker engine: its running containers that carry the source's labels, kept
//! live by the engine's event stream.
//!
//! Read-only use of the Engine API over its unix socket (hyper's HTTP/1 client on a tokio
//! `UnixStream`): `GET /events` (containers' `start`, `kill`, `die` and `destroy`, filtered by
//! the labels), then `GET /containers/json` (the running ones, filtered by the labels) for the
//! full set, then `GET /containers/{id}/json` for each container that starts. The stream is
//! opened before the list is read, so that nothing happening in between is missed.
//!
//! - `start` adds the container; `die` and `destroy` remove it.
//! - `kill` drains it at once: no new requests, in-flight ones finish. `docker stop` sends
//!   `kill` (SIGTERM, or the image's stop signal) before the container dies, so a stop costs
//!   no request even though no agent announces the leave. Signals that do not stop a process
//!   (HUP, USR1, USR2, WINCH, CONT, CHLD, URG) drain nothing.
//! - An engine that goes away (socket closed, stream ended, an error) leaves the pool as it
//!   was; the source reconnects with back-off (0.5 s doubling to 30 s), lists again and
//!   reconciles. Both transitions are logged once.
//!
//! What the engine sends is bounded and checked like gossip: responses of at most
//! [`MAX_LIST_BYTES`] / [`MAX_INSPECT_BYTES`], event lines of at most [`MAX_EVENT_BYTES`], at
//! most [`MAX_CONTAINERS`] containers, label values of at most [`MAX_LABEL_BYTES`]; ids must be
//! hex; a name that fails the member-name limits becomes `docker-<short id>`; the address must
//! then pass the pool's admission policy like any member's.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::{Backoff, Found, Publisher, valid_name};
use crate::config::DockerSource;

/// Largest container list accepted.
pub const MAX_LIST_BYTES: usize = 4 << 20;
/// Largest container inspection accepted.
pub const MAX_INSPECT_BYTES: usize = 1 << 20;
/// Longest event line accepted (a longer one drops the connection).
pub const MAX_EVENT_BYTES: usize = 64 << 10;
/// Most containers one source follows; the rest are ignored (logged).
pub const MAX_CONTAINERS: usize = 1024;
/// Longest `shoal.port` / `shoal.weight` value read; longer ones are ignored.
pub const MAX_LABEL_BYTES: usize = 256;
/// Longest a request (connect, headers, body) may take; the event stream has no limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that lived this long was a success: the back-off starts over.
const HEALTHY: Duration = Duration::from_secs(10);

/// What the pool needs of each server: the default port and the weight cap.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Port when a container has no `shoal.port` label.
    pub port: u16,
    /// The pool's `max_weight`.
    pub max_weight: u32,
}

/// Why talking to the engine failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The socket could not be connected to.
    #[error("cannot connect to {socket}: {source}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// HTTP failed (handshake, request, body).
    #[error("GET {path}: {source}")]
    Http {
        /// The request's path.
        path: String,
        /// Why.
        source: hyper::Error,
    },
    /// The engine answered with an error.
    #[error("GET {path}: the engine answered {status}: {body}")]
    Status {
        /// The request's path.
        path: String,
        /// The status.
        status: http::StatusCode,
        /// The start of its body.
        body: String,
    },
    /// A response body was larger than allowed, or broke off.
    #[error("GET {path}: {why}")]
    Body {
        /// The request's path.
        path: String,
        /// Why.
        why: String,
    },
    /// A response was not the JSON expected.
    #[error("GET {path}: unexpected JSON: {source}")]
    Json {
        /// The request's path.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The engine took too long.
    #[error("GET {0}: timed out")]
    Timeout(String),
    /// An event line was longer than [`MAX_EVENT_BYTES`].
    #[error("an event line is longer than {MAX_EVENT_BYTES} bytes")]
    EventTooLong,
    /// The event stream ended.
    #[error("the event stream ended")]
    StreamEnded,
}

/// Follows the engine for `pool`, publishing into `out` until the pool is gone.
pub async fn run(src: DockerSource, target: Target, pool: Arc<str>, out: Publisher) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut known: BTreeMap<String, Found> = BTreeMap::new();
    let mut down = false;
    loop {
        let started = Instant::now();
        let mut session =
            Session { src: &src, target, pool: &pool, out: &out, known: &mut known, live: false };
        let err = session.run(&mut down).await;
        let Some(err) = err else { return };
        if session.live && started.elapsed() >= HEALTHY {
            backoff.reset();
        }
        let wait = backoff.next_wait();
        if down {
            tracing::debug!(%pool, error = %err, ?wait, "docker engine still unreachable");
        } else {
            down = true;
            tracing::warn!(%pool, error = %err, ?wait, servers = known.len(), "docker engine unreachable: the pool is kept as it was; reconnecting with back-off");
        }
        tokio::time::sleep(wait).await;
    }
}

/// One connection's worth of following the engine.
struct Session<'a> {
    src: &'a DockerSource,
    target: Target,
    pool: &'a str,
    out: &'a Publisher,
    known: &'a mut BTreeMap<String, Found>,
    /// The list was read and the events are being followed.
    live: bool,
}

impl Session<'_> {
    /// Runs until the engine fails (`Some(why)`) or the pool is gone (`None`).
    async fn run(&mut self, down: &mut bool) -> Option<DockerError> {
        let socket = &self.src.socket;
        let events_path = format!("/events?filters={}", filters(&self.src.labels, true));
        let events = match timeout(&events_path, get(socket, &events_path)).await {
            Ok(r) => r,
            Err(e) => return Some(e),
        };
        let list_path = format!("/containers/json?filters={}", filters(&self.src.labels, false));
        let list: Vec<Summary> = match get_json(socket, &list_path, MAX_LIST_BYTES).await {
            Ok(l) => l,
            Err(e) => return Some(e),
        };
        let fresh = from_list(list, self.src, self.target, self.pool);
        *self.known = fresh;
        if !self.publish() {
            return None;
        }
        self.live = true;
        if std::mem::take(down) {
            tracing::info!(pool = %self.pool, servers = self.known.len(), "docker engine reachable again");
        } else {
            tracing::info!(pool = %self.pool, servers = self.known.len(), "docker engine followed");
        }
        let mut body = events.into_body();
        let mut lines = LineBuf::default();
        loop {
            let frame = match body.frame().await {
                None => return Some(DockerError::StreamEnded),
                Some(Err(source)) => return Some(DockerError::Http { path: events_path, source }),
                Some(Ok(f)) => f,
            };
            let Ok(data) = frame.into_data() else { continue };
            let batch = match lines.push(&data) {
                Ok(b) => b,
                Err(e) => return Some(e),
            };
            let mut changed = false;
            for line in batch {
                match serde_json::from_slice::<Event>(&line) {
                    Ok(ev) => changed |= self.on_event(ev).await,
                    Err(e) => {
                        tracing::debug!(pool = %self.pool, error = %e, "docker event ignored: not the JSON expected")
                    }
                }
            }
            if changed && !self.publish() {
                return None;
            }
        }
    }

    fn publish(&self) -> bool {
        self.out.publish(self.known.values().cloned().collect())
    }

    /// Applies one event; returns whether the set changed.
    async fn on_event(&mut self, ev: Event) -> bool {
        let Some(actor) = ev.actor else { return false };
        if ev.kind.as_deref().is_some_and(|k| k != "container") || !valid_id(&actor.id) {
            return false;
        }
        let action = ev.action.as_deref().unwrap_or("");
        // `exec_start: sh` and the like carry their details after a colon.
        match action.split(':').next().unwrap_or("") {
            "start" => {
                let path = format!("/containers/{}/json", actor.id);
                let inspected = match get_json::<Inspect>(&self.src.socket, &path, MAX_INSPECT_BYTES).await {
                    Ok(i) => i,
                    Err(e) => {
                        tracing::debug!(pool = %self.pool, error = %e, "started container not inspected");
                        return false;
                    }
                };
                let c = inspected.into_container();
                if !self.known.contains_key(&c.id) && self.known.len() >= MAX_CONTAINERS {
                    tracing::warn!(pool = %self.pool, max = MAX_CONTAINERS, "docker: too many containers; a new one is ignored");
                    return false;
                }
                match c.found(self.src, self.target) {
                    Ok(found) => {
                        let changed = self.known.get(&c.id) != Some(&found);
                        self.known.insert(c.id, found);
                        changed
                    }
                    Err(why) => {
                        tracing::info!(pool = %self.pool, container = %short(&c.id), why, "docker: container not routed to");
                        self.known.remove(&c.id).is_some()
                    }
                }
            }
            "kill" => {
                let signal = actor.attributes.as_ref().and_then(|a| a.get("signal")).map(String::as_str);
                match self.known.get_mut(&actor.id) {
                    Some(f) if stops(signal) && !f.draining => {
                        f.draining = true;
                        tracing::info!(pool = %self.pool, server = %shoal_gossip::escape::Esc(&f.name), signal = signal.unwrap_or("?"), "docker: container killed: draining");
                        true
                    }
                    _ => false,
                }
            }
            "die" | "destroy" => self.known.remove(&actor.id).is_some(),
            _ => false,
        }
    }
}

async fn timeout<T>(path: &str, fut: impl Future<Output = Result<T, DockerError>>) -> Result<T, DockerError> {
    tokio::time::timeout(REQUEST_TIMEOUT, fut).await.map_err(|_| DockerError::Timeout(path.into()))?
}

/// `GET path` on the engine; an answer other than 2xx is an error.
async fn get(socket: &Path, path: &str) -> Result<hyper::Response<Incoming>, DockerError> {
    let http = |source| DockerError::Http { path: path.into(), source };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| DockerError::Connect { socket: socket.to_path_buf(), source })?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(http)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get(path)
        .header(http::header::HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| DockerError::Body { path: path.into(), why: e.to_string() })?;
    let resp = send.send_request(req).await.map_err(http)?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body =
            Limited::new(resp.into_body(), 1024).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let body = shoal_gossip::escape::control(&String::from_utf8_lossy(&body)).into_owned();
        return Err(DockerError::Status { path: path.into(), status, body });
    }
    Ok(resp)
}

/// `GET path`, its body (at most `limit` bytes) parsed as `T`.
async fn get_json<T: DeserializeOwned>(socket: &Path, path: &str, limit: usize) -> Result<T, DockerError> {
    timeout(path, async {
        let resp = get(socket, path).await?;
        let body = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|e| DockerError::Body { path: path.into(), why: e.to_string() })?
            .to_bytes();
        parse(path, &body)
    })
    .await
}

fn parse<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, DockerError> {
    serde_json::from_slice(body).map_err(|source| DockerError::Json { path: path.into(), source })
}

/// The `filters` query parameter: the labels (and for events, the container events followed),
/// percent-encoded.
fn filters(labels: &BTreeMap<String, String>, events: bool) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let json = if events {
        serde_json::json!({
            "type": ["container"],
            "event": ["start", "kill", "die", "destroy"],
            "label": labels,
        })
    } else {
        serde_json::json!({ "label": labels, "status": ["running"] })
    };
    let mut out = String::new();
    for b in json.to_string().bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a `kill` event's signal stops the process (`None`, unknown: assume it does).
fn stops(signal: Option<&str>) -> bool {
    const HARMLESS: [&str; 14] = [
        "1", "10", "12", "17", "18", "23", "28", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGCHLD", "SIGCONT",
        "SIGURG", "SIGWINCH",
    ];
    signal.is_none_or(|s| !HARMLESS.contains(&s))
}

/// Whether `id` is a container id: 12 to 64 hex digits.
fn valid_id(id: &str) -> bool {
    (12..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The complete lines of a byte stream, each at most [`MAX_EVENT_BYTES`].
#[derive(Debug, Default)]
pub struct LineBuf {
    buf: Vec<u8>,
}

impl LineBuf {
    /// Adds `chunk`; returns the lines it completed (without their newline, empty ones left
    /// out), or an error once a line grows past the limit.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, DockerError> {
        let mut lines = Vec::new();
        for part in chunk.split_inclusive(|b| *b == b'\n') {
            if self.buf.len() + part.len() > MAX_EVENT_BYTES + 1 {
                self.buf.clear();
                return Err(DockerError::EventTooLong);
            }
            self.buf.extend_from_slice(part);
            if self.buf.ends_with(b"\n") {
                let line = std::mem::take(&mut self.buf);
                let line = line.trim_ascii();
                if !line.is_empty() {
                    lines.push(line.to_vec());
                }
            }
        }
        Ok(lines)
    }
}

/// A container as the engine describes it, in the fields used.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Container {
    /// Its id.
    pub id: String,
    /// Its name (the engine's `/name`).
    pub name: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// Whether it runs.
    pub running: bool,
    /// Its address on each network.
    pub networks: BTreeMap<String, Endpoint>,
}

impl Container {
    /// The server it is for the pool, or why it is none.
    pub fn found(&self, src: &DockerSource, target: Target) -> Result<Found, &'static str> {
        if !valid_id(&self.id) {
            return Err("its id is not a container id");
        }
        if !self.running {
            return Err("not running");
        }
        if !src.labels.iter().all(|(k, v)| self.labels.get(k) == Some(v)) {
            return Err("it does not carry the labels");
        }
        let label = |k: &str| self.labels.get(k).filter(|v| v.len() <= MAX_LABEL_BYTES).map(|v| v.trim());
        let port =
            label("shoal.port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0).unwrap_or(target.port);
        let weight =
            label("shoal.weight").and_then(|w| w.parse::<u32>().ok()).map_or(1, |w| w.min(target.max_weight));
        let endpoint = match &src.network {
            Some(n) => self.networks.get(n).and_then(Endpoint::ip),
            None => self.networks.values().find_map(Endpoint::ip),
        };
        let ip = endpoint.ok_or("no address on the network")?;
        let addr = SocketAddr::new(ip, port);
        let name = self.name.strip_prefix('/').unwrap_or(&self.name);
        let name = valid_name(name).unwrap_or_else(|| Arc::from(format!("docker-{}", short(&self.id))));
        Ok(Found { name, addr, weight, draining: false })
    }
}

/// The running containers of a list, as servers by id (at most [`MAX_CONTAINERS`]).
fn from_list(list: Vec<Summary>, src: &DockerSource, target: Target, pool: &str) -> BTreeMap<String, Found> {
    if list.len() > MAX_CONTAINERS {
        tracing::warn!(%pool, containers = list.len(), max = MAX_CONTAINERS, "docker: too many containers; the rest are ignored");
    }
    let mut known = BTreeMap::new();
    for c in list.into_iter().take(MAX_CONTAINERS).map(Summary::into_container) {
        match c.found(src, target) {
            Ok(f) => {
                known.insert(c.id, f);
            }
            Err(why) => {
                tracing::debug!(%pool, container = %short(&c.id), why, "docker: container not routed to")
            }
        }
    }
    known
}

/// A container's address on one network.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Endpoint {
    #[serde(rename = "IPAddress", default)]
    ip4: Option<String>,
    #[serde(rename = "GlobalIPv6Address", default)]
    ip6: Option<String>,
}

impl Endpoint {
    fn ip(&self) -> Option<IpAddr> {
        [&self.ip4, &self.ip6].into_iter().flatten().find_map(|s| s.parse().ok())
    }
}

#[derive(Debug, Default, Deserialize)]
struct NetworkSettings {
    #[serde(rename = "Networks", default)]
    networks: Option<BTreeMap<String, Endpoint>>,
}

/// An entry of `GET /containers/json`.
#[derive(Debug, Deserialize)]
struct Summary {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Names", default)]
    names: Option<Vec<String>>,
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
    #[serde(rename = "State", default)]
    state: Option<String>,
    #[serde(rename = "NetworkSettings", default)]
    network_settings: Option<NetworkSettings>,
}

impl Summary {
    fn into_container(self) -> Container {
        Container {
            id: self.id,
            name: self.names.and_then(|n| n.into_iter().next()).unwrap_or_default(),
            labels: self.labels.unwrap_or_default(),
            running: self.state.as_deref() == Some("running"),
            networks: self.network_settings.and_then(|n| n.networks).unwrap_or_default(),
        }
    }
}

/// `GET /containers/{id}/json`.
#[derive(Debug, Deserialize)]
struct Inspect {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name", default)]
    name: Option<String>,
    #[serde(rename = "Config", default)]
    config: Option<InspectConfig>,
    #[serde(rename = "State", default)]
    state: Option<InspectState>,
    #[serde(rename = "NetworkSettings", default)]
    network_settings: Option<NetworkSettings>,
}

#[derive(Debug, Deserialize)]
struct InspectConfig {
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
}

#[derive(Debug, Deserialize)]
struct InspectState {
    #[serde(rename = "Running", default)]
    running: bool,
}

impl Inspect {
    fn into_container(self) -> Container {
        Container {
            id: self.id,
            name: self.name.unwrap_or_default(),
            labels: self.config.and_then(|c| c.labels).unwrap_or_default(),
            running: self.state.is_some_and(|s| s.running),
            networks: self.network_settings.and_then(|n| n.networks).unwrap_or_default(),
        }
    }
}

/// A line of `GET /events`.
#[derive(Debug, Deserialize)]
struct Event {
    #[serde(rename = "Type", default)]
    kind: Option<String>,
    #[serde(rename = "Action", default)]
    action: Option<String>,
    #[serde(rename = "Actor", default)]
    actor: Option<Actor>,
}

#[derive(Debug, Deserialize)]
struct Actor {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Attributes", default)]
    attributes: Option<HashMap<String, String>>,
}

#[cfg(test)]
mod tests;
