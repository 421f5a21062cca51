//! `--snapshot PATH`: Serf's snapshot file, so a restarted agent rejoins the
//! members it knew and does not replay events it already handled.
//!
//! The file is an append-only log in Serf's own format (`alive: NAME ADDR`,
//! `not-alive: NAME`, `clock: N`, `event-clock: N`, `query-clock: N`, `leave`),
//! compacted when it grows past twice its useful size. A Serf agent's snapshot
//! can be read by Shoal and vice versa.
//!
//! The format has no quoting, so a name is only ever written or read back if it meets
//! [`shoal_gossip::limits::check_name`] (no whitespace or control characters): a crafted
//! name can never add a `leave` or `clock:` line of its own.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_gossip::escape::Esc;
use shoal_gossip::limits::check_name;
use shoal_gossip::{Event, MemberEventKind};

const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
const BYTES_PER_NODE: u64 = 128;
const MIN_COMPACT_SIZE: u64 = 128 * 1024;

/// What a previous run left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Previous {
    /// Members alive when we stopped: (name, address).
    pub nodes: Vec<(String, String)>,
    /// Last membership clock.
    pub clock: u64,
    /// Last user-event clock.
    pub event_clock: u64,
    /// Last query clock.
    pub query_clock: u64,
}

/// The open snapshot file.
pub(crate) struct Snapshot {
    path: PathBuf,
    out: BufWriter<File>,
    alive: HashMap<String, String>,
    clock: u64,
    event_clock: u64,
    query_clock: u64,
    offset: u64,
    last_flush: Instant,
}

impl Snapshot {
    /// Opens (or creates) the snapshot and replays it. With `rejoin`, a recorded
    /// leave is ignored (Serf's `-rejoin`); without it, a leave forgets everything.
    pub fn open(path: &Path, rejoin: bool) -> std::io::Result<(Snapshot, Previous)> {
        let mut prev = Previous::default();
        let mut alive: HashMap<String, String> = HashMap::new();
        if let Ok(f) = File::open(path) {
            for line in BufReader::new(f).lines() {
                let line = line?;
                if let Some(info) = line.strip_prefix("alive: ") {
                    match info.rsplit_once(' ') {
                        Some((name, addr)) if check_name(name).is_ok() => {
                            alive.insert(name.to_string(), addr.to_string());
                        }
                        _ => tracing::warn!(line = %Esc(&line), "invalid snapshot line ignored"),
                    }
                } else if let Some(name) = line.strip_prefix("not-alive: ") {
                    alive.remove(name);
                } else if let Some(v) = line.strip_prefix("clock: ") {
                    prev.clock = v.parse().unwrap_or(prev.clock);
                } else if let Some(v) = line.strip_prefix("event-clock: ") {
                    prev.event_clock = v.parse().unwrap_or(prev.event_clock);
                } else if let Some(v) = line.strip_prefix("query-clock: ") {
                    prev.query_clock = v.parse().unwrap_or(prev.query_clock);
                } else if line == "leave" && !rejoin {
                    alive.clear();
                    prev = Previous::default();
                } else if !(line == "leave" || line.starts_with('#') || line.starts_with("coordinate: ")) {
                    tracing::warn!(line = %Esc(&line), "unrecognized snapshot line");
                }
            }
        }
        prev.nodes = alive.iter().map(|(n, a)| (n.clone(), a.clone())).collect();
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let offset = file.metadata()?.len();
        let snap = Snapshot {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            alive,
            clock: prev.clock,
            event_clock: prev.event_clock,
            query_clock: prev.query_clock,
            offset,
            last_flush: Instant::now(),
        };
        Ok((snap, prev))
    }

    /// Records what an event changes.
    pub fn record(&mut self, e: &Event) {
        match e {
            Event::Member { member, .. } if check_name(&member.name).is_err() => {
                tracing::warn!(node = %Esc(&member.name), "not recorded in the snapshot: invalid name");
            }
            Event::Member { kind: MemberEventKind::Join, member } => {
                self.alive.insert(member.name.to_string(), member.addr.to_string());
                self.append(&format!("alive: {} {}\n", member.name, member.addr));
            }
            Event::Member {
                kind: MemberEventKind::Leave | MemberEventKind::Failed | MemberEventKind::Reap,
                member,
            } if self.alive.remove(&*member.name).is_some() => {
                self.append(&format!("not-alive: {}\n", member.name));
            }
            Event::User(u) if u.ltime > self.event_clock => {
                self.event_clock = u.ltime;
                self.append(&format!("event-clock: {}\n", u.ltime));
            }
            Event::Query(q) if q.ltime > self.query_clock => {
                self.query_clock = q.ltime;
                self.append(&format!("query-clock: {}\n", q.ltime));
            }
            _ => {}
        }
    }

    /// Records the membership clock (the last time we have seen, as Serf does).
    pub fn clock(&mut self, clock: u64) {
        let seen = clock.saturating_sub(1);
        if seen > self.clock {
            self.clock = seen;
            self.append(&format!("clock: {seen}\n"));
        }
    }

    /// Records a graceful leave and syncs the file.
    pub fn leave(&mut self) {
        self.alive.clear();
        self.append("leave\n");
        let _ = self.out.flush().and_then(|()| self.out.get_ref().sync_all());
    }

    /// Flushes buffered lines (called now and then by the driver).
    pub fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the snapshot");
        }
        self.last_flush = Instant::now();
    }

    fn append(&mut self, line: &str) {
        if let Err(e) = self.out.write_all(line.as_bytes()) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the snapshot");
            return;
        }
        self.offset += line.len() as u64;
        if self.last_flush.elapsed() > FLUSH_INTERVAL {
            self.flush();
        }
        let max = (self.alive.len() as u64 * BYTES_PER_NODE * 2).max(MIN_COMPACT_SIZE);
        if self.offset > max
            && let Err(e) = self.compact()
        {
            tracing::error!(path = %self.path.display(), error = %e, "snapshot compaction failed");
        }
    }

    /// Rewrites the file with only what still matters.
    fn compact(&mut self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("compact");
        let mut body = String::new();
        for (name, addr) in &self.alive {
            body.push_str(&format!("alive: {name} {addr}\n"));
        }
        body.push_str(&format!(
            "clock: {}\nevent-clock: {}\nquery-clock: {}\n",
            self.clock, self.event_clock, self.query_clock
        ));
        // The agent's own directory, but never follow a link planted at the temporary name.
        let _ = std::fs::remove_file(&tmp);
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(body.as_bytes())?;
        f.sync_all()?;
        self.out.flush()?;
        std::fs::rename(&tmp, &self.path)?;
        self.out = BufWriter::new(OpenOptions::new().append(true).open(&self.path)?);
        self.offset = body.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn member(name: &str, addr: &str) -> shoal_gossip::Member {
        shoal_gossip::Member {
            name: Arc::from(name),
            addr: addr.parse().unwrap(),
            tags: Arc::default(),
            status: shoal_gossip::MemberStatus::Alive,
            versions: [1, 5, 2, 2, 5, 5],
        }
    }

    fn join(name: &str, addr: &str) -> Event {
        Event::Member { kind: MemberEventKind::Join, member: member(name, addr) }
    }

    #[test]
    fn replays_alive_nodes_and_clocks_and_honours_leave() {
        let dir = std::env::temp_dir().join(format!("shoal-snap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("snap");
        let _ = std::fs::remove_file(&path);
        {
            let (mut s, prev) = Snapshot::open(&path, false).unwrap();
            assert_eq!(prev, Previous::default());
            s.record(&join("a", "10.0.0.1:7946"));
            s.record(&join("b", "10.0.0.2:7946"));
            s.record(&Event::Member { kind: MemberEventKind::Failed, member: member("b", "10.0.0.2:7946") });
            s.record(&Event::User(shoal_gossip::UserEvent {
                ltime: 9,
                name: "x".into(),
                payload: vec![],
                coalesce: false,
            }));
            s.clock(12);
            s.flush();
        }
        let (mut s, prev) = Snapshot::open(&path, false).unwrap();
        assert_eq!(prev.nodes, vec![("a".to_string(), "10.0.0.1:7946".to_string())]);
        assert_eq!((prev.clock, prev.event_clock), (11, 9));
        s.leave();
        drop(s);
        assert_eq!(Snapshot::open(&path, false).unwrap().1, Previous::default());
        assert_eq!(Snapshot::open(&path, true).unwrap().1.nodes.len(), 1, "-rejoin ignores the leave");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_crafted_name_cannot_write_lines_of_its_own() {
        let dir = std::env::temp_dir().join(format!("shoal-snap-crafted-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("snap");
        let _ = std::fs::remove_file(&path);
        {
            let (mut s, _) = Snapshot::open(&path, false).unwrap();
            s.record(&join("a", "10.0.0.1:7946"));
            s.record(&join("x 1.2.3.4:1\nleave\nclock: 0", "10.0.0.9:7946"));
            s.record(&join("evil\nleave", "10.0.0.9:7946"));
            s.record(&join("evil\nleave\n", "10.0.0.9:7946"));
            s.clock(40);
            s.flush();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "alive: a 10.0.0.1:7946\nclock: 39\n");
        let (_, prev) = Snapshot::open(&path, false).unwrap();
        assert_eq!(prev.nodes, vec![("a".to_string(), "10.0.0.1:7946".to_string())]);
        assert_eq!(prev.clock, 39);
        // A hand-edited (or older) file with a bad name: that line is skipped, the rest kept.
        std::fs::write(&path, "alive: a 10.0.0.1:7946\nalive: b\u{7}c 10.0.0.2:7946\nclock: 5\n").unwrap();
        let (_, prev) = Snapshot::open(&path, false).unwrap();
        assert_eq!((prev.nodes.len(), prev.clock), (1, 5));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
