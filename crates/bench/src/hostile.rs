//! A hostile peer against a real agent process — HashiCorp Serf and Shoal side by side, rounds
//! interleaved: how long the agent takes to acknowledge a probe while the peer floods it with
//! queries whose tag filters are built to be costly, and how much CPU the agent spends while
//! the peer trickles a giant stream message one byte at a time or sends a huge one in small
//! writes.
//!
//! The probe is memberlist's own `ping` over UDP, sent by this harness to the agent's gossip
//! port, so the figure is exactly what a peer's failure detector sees.

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shoal_gossip::messages::{self as msg, filter_kind, kind, serf_kind};
use shoal_gossip::mp::{self, Wire};

use crate::procs::Proc;
use crate::stats::percentiles;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rounds per implementation (interleaved: serf, shoal, serf, shoal…).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of probing with the query flood on, per round.
    #[arg(long, default_value_t = 5)]
    flood_seconds: u64,
    /// Hostile queries per second during the flood.
    #[arg(long, default_value_t = 2000)]
    queries_per_second: u64,
    /// Seconds of trickling one byte per 10 ms, per round.
    #[arg(long, default_value_t = 10)]
    trickle_seconds: u64,
    /// The shoal binary.
    #[arg(long, default_value = "target/release/shoal")]
    shoal: String,
    /// The serf binary.
    #[arg(long, default_value = "serf")]
    serf: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    Serf,
    Shoal,
}

impl Impl {
    fn label(self) -> &'static str {
        match self {
            Impl::Serf => "serf (Debian)",
            Impl::Shoal => "shoal",
        }
    }
}

const NODE: &str = "target";

fn free_port() -> anyhow::Result<u16> {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 12_000 + (std::process::id() % 8_000) as u16;
    for _ in 0..1000 {
        let p = base + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 8_000;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() && UdpSocket::bind(("127.0.0.1", p)).is_ok()
        {
            return Ok(p);
        }
    }
    bail!("no free port")
}

fn start(args: &Args, which: Impl) -> anyhow::Result<(Proc, SocketAddr)> {
    let (port, rpc) = (free_port()?, free_port()?);
    let gossip = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = match which {
        Impl::Serf => {
            let mut c = Command::new(&args.serf);
            c.args(["agent", &format!("-node={NODE}"), &format!("-bind={gossip}")]);
            c.args([format!("-rpc-addr=127.0.0.1:{rpc}"), "-tag=role=backend".into()]);
            c
        }
        Impl::Shoal => {
            let mut c = Command::new(&args.shoal);
            c.args(["agent", "--node", NODE, "--bind", &gossip.to_string()]);
            c.args(["--rpc-addr", &format!("127.0.0.1:{rpc}"), "--tag", "role=backend"]);
            c.env("SHOAL_LOG_LEVEL", "warn");
            c
        }
    };
    let proc = crate::procs::spawn(which.label(), &mut cmd)?;
    // Up when it answers a probe.
    let probe = Prober::new(gossip)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe.ping(Duration::from_millis(100)).is_none() {
        if Instant::now() > deadline {
            bail!("{} does not answer pings on {gossip}", which.label());
        }
    }
    Ok((proc, gossip))
}

/// Sends memberlist pings and times the acks.
struct Prober {
    sock: UdpSocket,
    to: SocketAddr,
    seq: std::cell::Cell<u32>,
}

impl Prober {
    fn new(to: SocketAddr) -> anyhow::Result<Prober> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        Ok(Prober { sock, to, seq: std::cell::Cell::new(1) })
    }

    /// One ping; the time to its ack, or None after `timeout`.
    fn ping(&self, timeout: Duration) -> Option<Duration> {
        let seq = self.seq.get();
        self.seq.set(seq + 1);
        let ping = mp::encode_with_type(
            kind::PING,
            &msg::Ping { seq_no: seq, node: NODE.into(), ..Default::default() },
        );
        let sent = Instant::now();
        self.sock.send_to(&ping, self.to).ok()?;
        let mut buf = [0u8; 65_536];
        loop {
            let left = timeout.checked_sub(sent.elapsed())?;
            self.sock.set_read_timeout(Some(left.max(Duration::from_micros(100)))).ok()?;
            let n = self.sock.recv(&mut buf).ok()?;
            if acks(&buf[..n]).contains(&seq) {
                return Some(sent.elapsed());
            }
        }
    }
}

/// Sequence numbers of the acks in a packet (plain, CRC-wrapped or compound).
fn acks(p: &[u8]) -> Vec<u32> {
    match p.split_first() {
        Some((&kind::ACK, body)) => mp::decode::<msg::Ack>(body).map(|a| vec![a.seq_no]).unwrap_or_default(),
        Some((&kind::HAS_CRC, rest)) if rest.len() > 4 => acks(&rest[4..]),
        Some((&kind::COMPRESS, body)) => {
            shoal_gossip::envelope::decompress_message(body, 1 << 20).map(|m| acks(&m)).unwrap_or_default()
        }
        Some((&kind::COMPOUND, rest)) => {
            let Some((&n, rest)) = rest.split_first() else { return vec![] };
            let n = usize::from(n);
            let Some(lens) = rest.get(..2 * n) else { return vec![] };
            let mut body = &rest[2 * n..];
            let mut out = Vec::new();
            for l in lens.chunks(2) {
                let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
                let Some(part) = body.get(..len) else { break };
                out.extend(acks(part));
                body = &body[len..];
            }
            out
        }
        _ => vec![],
    }
}

/// A query whose tag filters are as costly as a peer can make them: `variant` alternates
/// between the classic stall (100 copies of a Unicode-class repetition) and 16 distinct
/// filters near the size limits (distinct so that no cache helps).
fn hostile_query(ltime: u64, variant: u64, reply_port: u16) -> Vec<u8> {
    let filter = |expr: String| {
        let mut f = vec![filter_kind::TAG];
        msg::FilterTag { tag: "role".into(), expr }.put(&mut f);
        f
    };
    let filters: Vec<Vec<u8>> = if variant.is_multiple_of(2) {
        (0..100).map(|_| filter(r"\w{0,50}x".into())).collect()
    } else {
        (0..16).map(|i| filter(format!(r"(\w{{0,20}}[a-z]{{0,20}}\d{{0,20}}){{1,3}}q{ltime}x{i}"))).collect()
    };
    let q = msg::SerfQuery {
        ltime,
        id: ltime as u32,
        addr: vec![127, 0, 0, 1],
        port: reply_port,
        source_node: "rogue".into(),
        filters,
        flags: 0,
        relay_factor: 0,
        timeout: 1_000_000_000,
        name: "load".into(),
        payload: vec![],
    };
    let mut p = vec![kind::USER, serf_kind::QUERY];
    q.put(&mut p);
    p
}

/// CPU time (user + system) a process has used so far.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("read /proc/PID/stat")?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // /proc counts in USER_HZ, which is 100 on Linux whatever the kernel's own tick.
    Ok(Duration::from_millis(ticks * 10))
}

struct Round {
    calm: Vec<Duration>,
    flood: Vec<Duration>,
    lost: usize,
    queries: u64,
    flood_cpu: f64,
    trickle_cpu: f64,
    burst_cpu: Duration,
}

fn round(args: &Args, which: Impl) -> anyhow::Result<Round> {
    let (proc, gossip) = start(args, which)?;
    let pid = proc.pid();
    let probe = Prober::new(gossip)?;
    let probe_for = |d: Duration, out: &mut Vec<Duration>, lost: &mut usize| {
        let end = Instant::now() + d;
        while Instant::now() < end {
            match probe.ping(Duration::from_secs(1)) {
                Some(t) => out.push(t),
                None => *lost += 1,
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let (mut calm, mut flood, mut lost) = (Vec::new(), Vec::new(), 0);
    probe_for(Duration::from_secs(2), &mut calm, &mut lost);

    // The flood runs on its own thread at a fixed rate while the probes go on.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        let rate = args.queries_per_second.max(1);
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let sock = UdpSocket::bind("127.0.0.1:0")?;
            let port = sock.local_addr()?.port();
            let start = Instant::now();
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let due = start + Duration::from_nanos(sent * 1_000_000_000 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let _ = sock.send_to(&hostile_query(sent + 2, sent, port), gossip);
                sent += 1;
            }
            Ok(sent)
        })
    };
    let cpu_before = cpu_time(pid)?;
    let flood_start = Instant::now();
    probe_for(Duration::from_secs(args.flood_seconds), &mut flood, &mut lost);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let queries = flooder.join().map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
    let flood_cpu = (cpu_time(pid)? - cpu_before).as_secs_f64() / flood_start.elapsed().as_secs_f64();

    // Trickle: a user message announcing 20 MB, one byte per 10 ms (reconnecting when the
    // agent's stream deadline closes it).
    let cpu_before = cpu_time(pid)?;
    let trickle_start = Instant::now();
    let trickle_end = trickle_start + Duration::from_secs(args.trickle_seconds);
    while Instant::now() < trickle_end {
        let Ok(mut s) = TcpStream::connect(gossip) else { break };
        s.set_nodelay(true)?;
        let mut head = vec![kind::USER];
        msg::UserMsgHeader { user_msg_len: 20_000_000 }.put(&mut head);
        if s.write_all(&head).is_err() {
            continue;
        }
        while Instant::now() < trickle_end && s.write_all(b"x").is_ok() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let trickle_cpu = (cpu_time(pid)? - cpu_before).as_secs_f64() / trickle_start.elapsed().as_secs_f64();

    // Burst: a well-framed 8 MiB ping (an array of 8 Mi one-byte values) in 1 KiB writes.
    let cpu_before = cpu_time(pid)?;
    let mut s = TcpStream::connect(gossip)?;
    s.set_nodelay(true)?;
    let n: u32 = 8 << 20;
    let mut big = vec![kind::PING, 0xdd];
    big.extend_from_slice(&n.to_be_bytes());
    big.resize(big.len() + n as usize, 0x01);
    for chunk in big.chunks(1024) {
        if s.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let _ = std::io::Read::read_to_end(&mut s, &mut Vec::new());
    let burst_cpu = cpu_time(pid)? - cpu_before;
    drop(proc);
    Ok(Round { calm, flood, lost, queries, flood_cpu, trickle_cpu, burst_cpu })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    println!(
        "hostile peer: probe acks with {} hostile queries/s, a 20 MB stream trickled 1 byte/10 ms, an 8 MiB stream in 1 KiB writes",
        args.queries_per_second
    );
    let impls = [Impl::Serf, Impl::Shoal];
    let mut results: Vec<(Impl, Round)> = Vec::new();
    for r in 0..args.rounds {
        for &which in &impls {
            eprintln!("round {}/{}: {}", r + 1, args.rounds, which.label());
            results.push((which, round(&args, which)?));
        }
    }
    println!();
    println!(
        "| agent | probe ack, calm | probe ack, query flood | lost probes | agent CPU, flood | CPU, trickle | CPU, 8 MiB burst |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &which in &impls {
        let rounds: Vec<&Round> = results.iter().filter(|(w, _)| *w == which).map(|(_, r)| r).collect();
        let calm: Vec<Duration> = rounds.iter().flat_map(|r| r.calm.iter().copied()).collect();
        let flood: Vec<Duration> = rounds.iter().flat_map(|r| r.flood.iter().copied()).collect();
        let lost: usize = rounds.iter().map(|r| r.lost).sum();
        let queries: u64 = rounds.iter().map(|r| r.queries).sum();
        let mean = |f: &dyn Fn(&Round) -> f64| rounds.iter().map(|r| f(r)).sum::<f64>() / rounds.len() as f64;
        let burst = rounds.iter().map(|r| r.burst_cpu).sum::<Duration>() / rounds.len() as u32;
        println!(
            "| {} | {} | {} | {lost} | {:.1} % ({queries} queries) | {:.2} % | {:.0} ms |",
            which.label(),
            percentiles(&calm),
            percentiles(&flood),
            100.0 * mean(&|r| r.flood_cpu),
            100.0 * mean(&|r| r.trickle_cpu),
            burst.as_secs_f64() * 1000.0,
        );
    }
    Ok(())
}
