//! `show servers state [<backend>]` (HAProxy's format version 1, all 25 columns),
//! `show servers conn [<backend>]` and `show backend`: one line per server or pool, fields
//! separated by spaces, so names are escaped with [`escape::field`] (spaces included).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use shoal_gossip::escape;

use crate::pool::Pool;
use crate::report::check_health;
use crate::server::{Admin, CheckStatus, Health, Server};
use crate::state::State;

/// The header of `show servers state`.
const STATE_HEADER: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight \
     srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state \
     srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port \
     srv_check_addr srv_agent_addr srv_agent_port\n";

/// The header of `show servers conn` (HAProxy prints one idle column per thread; Shoal's idle
/// connections are per server, one column).
const CONN_HEADER: &str = "# bkname/svname bkid/svid addr port - purge_delay used_cur used_max need_est unsafe_nb \
     safe_nb idle_lim idle_cur idle_per_thr[1]\n";

/// The pools `show servers …` covers: one by name, or all; HAProxy's message when it is unknown.
fn pools_of(b: &State, only: Option<&str>) -> Result<Vec<Arc<Pool>>, String> {
    let pools = b.pools();
    match only {
        Some(name) => pools.get(name).map(|p| vec![p.clone()]).ok_or_else(|| "Can't find backend.\n".into()),
        None => Ok(pools.values().cloned().collect()),
    }
}

/// `show servers state [<backend>]`.
pub fn state(b: &State, only: Option<&str>) -> String {
    let pools = match pools_of(b, only) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let now = Instant::now();
    let mut out = String::from(STATE_HEADER);
    for pool in &pools {
        for s in pool.servers() {
            state_line(&mut out, pool, &s, now);
        }
    }
    out
}

fn state_line(out: &mut String, pool: &Pool, s: &Server, now: Instant) {
    let checked = pool.cfg.health.enabled;
    // A drained server still runs (SRV_ST_RUNNING); one in maintenance is stopped.
    let running = s.eligible(now) || (s.admin() == Admin::Drain && s.health() == Health::Up);
    // SRV_ADMF_FMAINT and SRV_ADMF_FDRAIN: forced by an operator.
    let admin_bits = match s.admin() {
        Admin::Ready => 0,
        Admin::Drain => 0x08,
        Admin::Maint => 0x01,
    };
    // HCHK_STATUS_* and CHK_RES_*; CHK_ST_CONFIGURED | CHK_ST_ENABLED when checked.
    let (status, result, check_state) = match (checked, s.health()) {
        (false, _) => (0, 0, 0),
        (true, Health::Up) => (check_status_number(s), 3, 6),
        (true, Health::Down) => (check_status_number(s), 2, 6),
        (true, Health::Unknown) => (check_status_number(s), 1, 6),
    };
    let health = if checked { check_health(pool, s) } else { 0 };
    let _ = writeln!(
        out,
        "{} {} {} {} {} {} {admin_bits} {} {} {} {status} {result} {health} {check_state} 0 0 0 - {} - 0 0 - - 0",
        pool.id,
        escape::field(&pool.cfg.name),
        s.id,
        escape::field(&s.name),
        s.addr.ip(),
        if running { 2 } else { 0 },
        s.weight.load(Ordering::Relaxed),
        s.initial_weight.load(Ordering::Relaxed),
        s.since_last_change(now).as_secs(),
        s.addr.port(),
    );
}

/// HAProxy's check status numbers (`HCHK_STATUS_*`).
fn check_status_number(s: &Server) -> u8 {
    let last = s.last_check.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|c| c.status);
    match last {
        None => 1,                            // INI
        Some(CheckStatus::Passed) => 15,      // L7OKD
        Some(CheckStatus::WrongStatus) => 17, // L7STS
        Some(CheckStatus::Refused) => 8,      // L4CON
        Some(CheckStatus::Timeout) => 12,     // L7TOUT
        Some(CheckStatus::BadResponse) => 13, // L7RSP
    }
}

/// `show servers conn [<backend>]`: connections in use and idle, per server.
pub fn conn(b: &State, only: Option<&str>) -> String {
    let pools = match pools_of(b, only) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut out = String::from(CONN_HEADER);
    for pool in &pools {
        for s in pool.servers() {
            let used = s.active.load(Ordering::Relaxed);
            let used_max = s.stats.max_active.load(Ordering::Relaxed);
            let idle = s.conns.len();
            let _ = writeln!(
                out,
                "{}/{} {}/{} {} {} - 0 {used} {used_max} {used} 0 {idle} -1 {idle} {idle}",
                escape::field(&pool.cfg.name),
                escape::field(&s.name),
                pool.id,
                s.id,
                s.addr.ip(),
                s.addr.port(),
            );
        }
    }
    out
}

/// `show backend`: the pools' names.
pub fn backends(b: &State) -> String {
    let mut out = String::from("# name\n");
    for name in b.pools().keys() {
        let _ = writeln!(out, "{}", escape::field(name));
    }
    out
}
