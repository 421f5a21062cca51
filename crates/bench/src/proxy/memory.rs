//! Memory of the proxies: resident set idle and with many idle keep-alive client connections
//! open, and the open-file limit those connections need.

use std::time::Duration;

use anyhow::Context;

use super::targets::Instance;
use crate::procs::process_tree;

/// How long the connections stay idle before the measure (Shoal parks a connection idle for a
/// second outside its task; every proxy gets the same wait).
const SETTLE: Duration = Duration::from_secs(3);

/// One proxy's resident memory, in KiB.
#[derive(Debug)]
pub struct Rss {
    /// How tables name it.
    pub label: String,
    /// With no client connection.
    pub idle_kib: u64,
    /// With the idle keep-alive connections open.
    pub loaded_kib: u64,
}

/// Measures each proxy of `instances` (the direct target has no process of its own): RSS idle,
/// then with `conns` keep-alive connections open, each having made one request, [`SETTLE`]
/// after the last answer.
pub fn measure(instances: &[Instance], conns: usize) -> anyhow::Result<Vec<Rss>> {
    let mut out = Vec::new();
    for inst in instances {
        let Some(pid) = inst.pid() else { continue };
        std::thread::sleep(Duration::from_secs(1));
        let idle_kib = rss_kib(pid);
        eprintln!("== {}: opening {conns} keep-alive connections", inst.label);
        let open =
            open_idle(inst.plain, conns).with_context(|| format!("{}: idle connections", inst.label))?;
        std::thread::sleep(SETTLE);
        let loaded_kib = rss_kib(pid);
        drop(open);
        out.push(Rss { label: inst.label.clone(), idle_kib, loaded_kib });
    }
    Ok(out)
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix(field))?;
    value.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Resident memory of `pid` and all its descendants (nginx's master forks its worker).
fn rss_kib(pid: u32) -> u64 {
    process_tree(pid).into_iter().filter_map(|p| status_field(p, "VmRSS:")).sum()
}

/// Opens `n` keep-alive connections to `port`, one request on each, and keeps them open.
fn open_idle(port: u16, n: usize) -> anyhow::Result<Vec<std::net::TcpStream>> {
    use std::io::{Read, Write};
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).context("connect")?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
        conns.push(s);
    }
    let mut buf = [0u8; 512];
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let _ = s.read(&mut buf)?;
    }
    Ok(conns)
}

/// Raises the open-file limit (inherited by every process started here) to fit `conns` idle
/// connections: HAProxy reserves two descriptors per connection. Where the hard limit cannot be
/// raised (no CAP_SYS_RESOURCE), returns how many connections fit instead.
pub fn fit_fd_limit(conns: usize) -> anyhow::Result<usize> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let need = |n: usize| (n as u64) * 2 + 1_000;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if setrlimit(Resource::RLIMIT_NOFILE, need(conns).max(soft), hard.max(need(conns))).is_ok() {
        return Ok(conns);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    let fit = (hard.saturating_sub(1_000) / 2) as usize;
    eprintln!(
        "note: the open-file limit is {hard} and cannot be raised here; measuring {fit} idle connections, not {conns}"
    );
    Ok(fit.min(conns))
}
