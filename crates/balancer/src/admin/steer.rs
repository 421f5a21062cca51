//! The commands that change servers, with HAProxy 2.6's arguments and answers:
//! `set server <bk>/<srv> state|weight|addr|health|agent …`, `enable|disable server`,
//! `get weight`, `set weight`, `add server`, `del server` and `clear counters [all]`.
//! A refused command changes nothing and answers with HAProxy's text ([`CliError`]).
//! The pool does the work ([`Pool`]); this module parses and words.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use shoal_gossip::escape;

use crate::config::MAX_WEIGHT;
use crate::pool::{Pool, PoolError, Static};
use crate::server::{Admin, Health, Server};
use crate::state::State;

/// Why a command did nothing, worded as HAProxy words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    /// The target is not `<backend>/<server>`.
    #[error("Require 'backend/server'.")]
    RequireTarget,
    /// No pool of that name.
    #[error("No such backend.")]
    NoSuchBackend,
    /// No server of that name in the pool.
    #[error("No such server.")]
    NoSuchServer,
    /// The pool refused (`add server`, `del server`).
    #[error("{0}")]
    Pool(#[from] PoolError),
    /// Any other refusal, its text exactly as HAProxy prints it (newline or not).
    #[error("{0}")]
    Says(String),
}

impl CliError {
    /// The answer: HAProxy ends the three lookup messages with a newline in the commands
    /// that find a server through `cli_find_server`, and not in `add`/`del server`.
    fn text(&self, lookup_newline: bool) -> String {
        let newline =
            lookup_newline && matches!(self, Self::RequireTarget | Self::NoSuchBackend | Self::NoSuchServer);
        if newline { format!("{self}\n") } else { self.to_string() }
    }
}

fn says(text: impl Into<String>) -> CliError {
    CliError::Says(text.into())
}

/// The answer of a command that finds its server like HAProxy's `cli_find_server`.
pub fn answer(r: Result<String, CliError>) -> String {
    r.unwrap_or_else(|e| e.text(true))
}

/// A pool by name, or by `#<id>`.
fn find_pool(b: &State, name: &str) -> Option<Arc<Pool>> {
    let pools = b.pools();
    match name.strip_prefix('#').map(str::parse::<u32>) {
        Some(Ok(id)) => pools.values().find(|p| p.id == id).cloned(),
        _ => pools.get(name).cloned(),
    }
}

/// A server of `pool` by name, or by `#<id>`.
fn find_server(pool: &Pool, name: &str) -> Option<Arc<Server>> {
    match name.strip_prefix('#').map(str::parse::<u32>) {
        Some(Ok(id)) => pool.servers().into_iter().find(|s| s.id == id),
        _ => pool.server(name),
    }
}

/// Finds `<backend>/<server>`.
fn lookup(b: &State, target: Option<&str>) -> Result<(Arc<Pool>, Arc<Server>), CliError> {
    let (pool_name, server_name) = target
        .and_then(|t| t.split_once('/'))
        .filter(|(p, s)| !p.is_empty() && !s.is_empty())
        .ok_or(CliError::RequireTarget)?;
    let pool = find_pool(b, pool_name).ok_or(CliError::NoSuchBackend)?;
    let server = find_server(&pool, server_name).ok_or(CliError::NoSuchServer)?;
    Ok((pool, server))
}

/// `set server <bk>/<srv> <what> …`.
pub fn set_server(b: &State, args: &[&str]) -> Result<String, CliError> {
    let (pool, s) = lookup(b, args.first().copied())?;
    let arg = |i: usize| args.get(i).copied().unwrap_or("");
    let now = Instant::now();
    match arg(1) {
        "state" => {
            let admin = match arg(2) {
                "ready" => Admin::Ready,
                "drain" => Admin::Drain,
                "maint" => Admin::Maint,
                _ => return Err(says("'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n")),
            };
            pool.set_admin(&s.name, admin, now);
        }
        "weight" => set_weight_of(&pool, &s, arg(2))?,
        "health" => {
            let health = match arg(2) {
                "up" => Health::Up,
                "stopping" | "down" => Health::Down,
                _ => return Err(says("'set server <srv> health' expects 'up', 'stopping', or 'down'.\n")),
            };
            pool.set_health(&s.name, health, now);
        }
        "agent" => {
            // A member's agent is its gossip agent; a server an operator added has none.
            if pool.is_static(&s.name) {
                return Err(says("agent checks are not enabled on this server.\n"));
            }
            let health = match arg(2) {
                "up" => Health::Up,
                "down" => Health::Down,
                _ => return Err(says("'set server <srv> agent' expects 'up' or 'down'.\n")),
            };
            pool.set_health(&s.name, health, now);
        }
        "addr" => return set_addr(&pool, &s, arg(2), (arg(3) == "port").then(|| arg(4))),
        _ => {
            return Err(says(
                "usage: set server <backend>/<server> addr | agent | health | state | weight\n",
            ));
        }
    }
    Ok(String::new())
}

/// HAProxy's weight syntax: `<w>` from 0 to 256, or `<w>%` of the initial weight.
fn parse_weight(initial: u32, text: &str) -> Result<u32, CliError> {
    if text.is_empty() {
        return Err(says("Require <weight> or <weight%>.\n"));
    }
    let digits_end = text
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && (c == '-' || c == '+'))))
        .map_or(text.len(), |(i, _)| i);
    let Ok(w) = text[..digits_end].parse::<i64>() else {
        return Err(says("Empty weight string empty or preceded by garbage"));
    };
    match &text[digits_end..] {
        "%" if w < 0 => Err(says("Relative weight must be positive.\n")),
        "%" => Ok((i64::from(initial) * w.min(25_600) / 100).min(i64::from(MAX_WEIGHT)) as u32),
        _ if !(0..=i64::from(MAX_WEIGHT)).contains(&w) => {
            Err(says("Absolute weight can only be between 0 and 256 inclusive.\n"))
        }
        "" => Ok(w as u32),
        _ => Err(says("Trailing garbage in weight string")),
    }
}

fn set_weight_of(pool: &Pool, s: &Server, text: &str) -> Result<(), CliError> {
    let w = parse_weight(s.initial_weight.load(Ordering::Relaxed), text)?;
    pool.set_weight(&s.name, w, Instant::now());
    Ok(())
}

/// `set server <bk>/<srv> addr <ip> [port <port>]`: HAProxy's report of what changed.
fn set_addr(pool: &Pool, s: &Server, addr: &str, port: Option<&str>) -> Result<String, CliError> {
    if addr.is_empty() {
        return Err(says("set server <b>/<s> addr requires an address and optionally a port.\n"));
    }
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return Err(says(format!("Invalid addr '{}' by 'stats socket command'\n", escape::control(addr))));
    };
    let mut msg = if ip == s.addr.ip() {
        "no need to change the addr".to_string()
    } else {
        format!("IP changed from '{}' to '{ip}'", s.addr.ip())
    };
    let mut new_port = s.addr.port();
    if let Some(p) = port {
        msg.push_str(", ");
        match p.parse::<u16>() {
            Ok(n) if n == new_port => msg.push_str("no need to change the port"),
            Ok(n) => {
                msg.push_str(&format!("port changed from '{new_port}' to '{n}'"));
                new_port = n;
            }
            Err(_) => {
                let msg = format!("{msg}problem converting port '{}' to an int", escape::control(p));
                return Err(says(format!("{msg} by 'stats socket command'\n")));
            }
        }
    }
    let to = SocketAddr::new(ip, new_port);
    if to != s.addr {
        pool.set_addr(&s.name, to, Instant::now());
    }
    Ok(format!("{msg} by 'stats socket command'\n"))
}

/// `enable server` / `disable server <bk>/<srv>`: ready or maintenance.
pub fn set_admin(b: &State, args: &[&str], admin: Admin) -> Result<String, CliError> {
    let (pool, s) = lookup(b, args.first().copied())?;
    pool.set_admin(&s.name, admin, Instant::now());
    Ok(String::new())
}

/// `get weight <bk>/<srv>`: `<current> (initial <initial>)`.
pub fn get_weight(b: &State, args: &[&str]) -> Result<String, CliError> {
    let (_, s) = lookup(b, args.first().copied())?;
    let (w, init) = (s.weight.load(Ordering::Relaxed), s.initial_weight.load(Ordering::Relaxed));
    Ok(format!("{w} (initial {init})\n"))
}

/// `set weight <bk>/<srv> <w>[%]`.
pub fn set_weight(b: &State, args: &[&str]) -> Result<String, CliError> {
    let (pool, s) = lookup(b, args.first().copied())?;
    set_weight_of(&pool, &s, args.get(1).copied().unwrap_or(""))?;
    Ok(String::new())
}

/// HAProxy's `add server` keywords that Shoal does not implement.
const UNSUPPORTED: &[&str] = &[
    "agent-addr",
    "agent-check",
    "agent-inter",
    "agent-port",
    "agent-send",
    "allow-0rtt",
    "alpn",
    "addr",
    "backup",
    "ca-file",
    "check-alpn",
    "check-proto",
    "check-send-proxy",
    "check-sni",
    "check-ssl",
    "check-via-socks4",
    "ciphers",
    "ciphersuites",
    "crl-file",
    "crt",
    "downinter",
    "error-limit",
    "fall",
    "fastinter",
    "id",
    "inter",
    "maxconn",
    "maxqueue",
    "minconn",
    "npn",
    "observe",
    "on-error",
    "on-marked-down",
    "on-marked-up",
    "pool-low-conn",
    "pool-max-conn",
    "pool-purge-delay",
    "port",
    "proto",
    "proxy-v2-options",
    "rise",
    "send-proxy",
    "send-proxy-v2",
    "slowstart",
    "sni",
    "source",
    "ssl",
    "tfo",
    "track",
    "verify",
    "verifyhost",
    "ws",
];

/// `add server <bk>/<srv> <addr>[:<port>] [weight <w>] [check] [enabled|disabled]`: a static
/// server, serving (once its checks pass, when the pool checks) unless `disabled`.
pub fn add_server(b: &State, args: &[&str]) -> String {
    add(b, args).unwrap_or_else(|e| e.text(false))
}

fn add(b: &State, args: &[&str]) -> Result<String, CliError> {
    let (pool_name, name) = args
        .first()
        .and_then(|t| t.split_once('/'))
        .filter(|(_, s)| !s.is_empty())
        .ok_or(CliError::RequireTarget)?;
    let pool = b.pools().get(pool_name).cloned().ok_or(CliError::NoSuchBackend)?;
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.:".contains(*c))) {
        return Err(says(format!(
            "character '{}' is not permitted in server name '{}'.\n",
            escape::control(&c.to_string()),
            escape::control(name)
        )));
    }
    let Some(addr) = args.get(1) else {
        return Err(says("'server' expects <name> and <addr>[:<port>] as arguments.\n"));
    };
    let addr = parse_addr(addr, pool.cfg.port)?;
    let (mut weight, mut admin) = (1, Admin::Ready);
    let mut rest = args[2..].iter();
    while let Some(kw) = rest.next() {
        match *kw {
            "weight" => {
                let w = rest.next().copied().unwrap_or("");
                weight = w.parse::<u32>().ok().filter(|w| *w <= MAX_WEIGHT).ok_or_else(|| {
                    says(format!(
                        "weight of server {} is not within 0 and 256 ({})..\n",
                        escape::control(name),
                        escape::control(w)
                    ))
                })?;
            }
            "check" => {} // the pool's checks apply to every server
            "enabled" => admin = Admin::Ready,
            "disabled" => admin = Admin::Maint,
            k if UNSUPPORTED.contains(&k) => {
                return Err(says(format!(
                    "'{k}' option is not implemented in this version (check build options)\n"
                )));
            }
            k => return Err(says(format!("unknown keyword '{}'.\n", escape::control(k)))),
        }
    }
    pool.add_static(name, Static { addr, weight }, admin, Instant::now())?;
    Ok("New server registered.\n".into())
}

/// `<ip>:<port>`, `[<ipv6>]:<port>`, or an address alone (the pool's port).
fn parse_addr(text: &str, default_port: u16) -> Result<SocketAddr, CliError> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = text.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    if let Some((_, port)) = text.rsplit_once(':')
        && let Some(c) = port.chars().find(|c| !c.is_ascii_digit())
    {
        let c = c.to_string();
        let (c, port, text) = (escape::control(&c), escape::control(port), escape::control(text));
        return Err(says(format!("invalid character '{c}' in port number '{port}' in '{text}'\n\n")));
    }
    Err(says(format!("invalid address: '{}' (Shoal takes IP addresses only)\n", escape::control(text))))
}

/// `del server <bk>/<srv>`: only a server added with `add server`, in maintenance, with no
/// request in flight.
pub fn del_server(b: &State, args: &[&str]) -> String {
    let deleted = lookup(b, args.first().copied())
        .and_then(|(pool, s)| pool.del_static(&s.name, Instant::now()).map_err(CliError::from));
    match deleted {
        Ok(()) => "Server deleted.".into(),
        Err(e) => e.text(false),
    }
}

/// `clear counters [all]`: the maxima, or every counter, of every frontend, pool and server.
pub fn clear_counters(b: &State, all: bool) -> String {
    for (_, fe) in b.frontend_stats() {
        fe.clear(all);
    }
    for pool in b.pools().values() {
        for s in pool.servers() {
            s.stats.clear(all);
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_as_haproxy_parses_them() {
        assert_eq!(parse_weight(4, "3"), Ok(3));
        assert_eq!(parse_weight(4, "50%"), Ok(2));
        assert_eq!(parse_weight(200, "200%"), Ok(256), "relative weights stop at 256");
        let err = |t: &str| parse_weight(1, t).unwrap_err().to_string();
        assert_eq!(err(""), "Require <weight> or <weight%>.\n");
        assert_eq!(err("abc"), "Empty weight string empty or preceded by garbage");
        assert_eq!(err("300"), "Absolute weight can only be between 0 and 256 inclusive.\n");
        assert_eq!(err("2x"), "Trailing garbage in weight string");
        assert_eq!(err("-1%"), "Relative weight must be positive.\n");
    }

    #[test]
    fn addresses_parse_with_the_pools_port_as_default() {
        assert_eq!(parse_addr("10.0.0.1:81", 80), Ok("10.0.0.1:81".parse().unwrap()));
        assert_eq!(parse_addr("10.0.0.1", 80), Ok("10.0.0.1:80".parse().unwrap()));
        assert_eq!(parse_addr("[::1]:81", 80), Ok("[::1]:81".parse().unwrap()));
        assert_eq!(
            parse_addr("127.0.0.1:abc", 80).unwrap_err().to_string(),
            "invalid character 'a' in port number 'abc' in '127.0.0.1:abc'\n\n"
        );
    }
}
