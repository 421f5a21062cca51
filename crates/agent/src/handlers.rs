//! Event handler scripts, with Serf's exact contract.
//!
//! `--event-handler [FILTER=]SCRIPT` runs `/bin/sh -c SCRIPT` for matching
//! events, one at a time and in event order, with the agent's environment plus
//! `SERF_EVENT`, `SERF_SELF_NAME`, `SERF_SELF_ROLE`, `SERF_TAG_<NAME>` and, for
//! user events and queries, `SERF_USER_EVENT`/`SERF_USER_LTIME` or
//! `SERF_QUERY_NAME`/`SERF_QUERY_LTIME`. Member events arrive on stdin as
//! `name\taddress\trole\ttags` lines; user events and queries get their payload.
//! A query handler's output (stdout and stderr, exit 0) is its answer.
//!
//! Member names and tag values only ever reach the script through the
//! environment and stdin, never its command line. A failing script is logged;
//! a hanging one is killed after `--handler-timeout` (its whole process group).

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use shoal_gossip::{Member, Tags};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::driver::AgentHandle;
use crate::events::{BadFilter, EventFilter, SerfEvent, any_matches};

/// Output kept from one script run (Serf keeps the last 8 KiB).
const MAX_OUTPUT: usize = 8 * 1024;
/// A script running longer than this gets a warning in the log.
const SLOW: Duration = Duration::from_secs(1);

/// One `--event-handler`: which events, and what to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerSpec {
    /// Events it wants.
    pub filters: Vec<EventFilter>,
    /// Shell command.
    pub script: String,
}

impl HandlerSpec {
    /// Parses Serf's `[FILTER=]SCRIPT` syntax (the filter is everything before the first `=`).
    pub fn parse(spec: &str) -> Result<HandlerSpec, BadFilter> {
        let (filter, script) = match spec.split_once('=') {
            Some((f, s)) => (f, s),
            None => ("", spec),
        };
        Ok(HandlerSpec { filters: EventFilter::parse_list(filter)?, script: script.to_string() })
    }
}

/// Escapes what would break the line format (Serf's `eventClean`).
fn clean(v: &str) -> String {
    v.replace('\t', "\\t").replace('\n', "\\n")
}

/// `SERF_TAG_<NAME>`: upper-cased, anything but `A-Z0-9_` becomes `_`.
pub fn tag_env_name(tag: &str) -> String {
    let upper: String = tag
        .to_uppercase()
        .chars()
        .map(|c| if c.is_ascii_uppercase() || c.is_ascii_digit() { c } else { '_' })
        .collect();
    format!("SERF_TAG_{upper}")
}

/// The stdin lines for a member event.
pub fn member_lines(members: &[Member]) -> Vec<u8> {
    let mut out = String::new();
    for m in members {
        // Serf's exact contract: `k=v,k=v`, then only tab and newline escaped (by `clean`).
        let tags = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        let role = m.tags.get("role").map_or("", String::as_str);
        out.push_str(&format!("{}\t{}\t{}\t{}\n", clean(&m.name), m.addr.ip(), clean(role), clean(&tags)));
    }
    out.into_bytes()
}

/// What a script gets: environment additions and stdin.
pub fn script_input(
    event: &SerfEvent,
    self_name: &str,
    self_tags: &Tags,
) -> (Vec<(String, String)>, Vec<u8>) {
    let mut env = vec![
        ("SERF_EVENT".to_string(), event.type_name().to_string()),
        ("SERF_SELF_NAME".to_string(), self_name.to_string()),
        ("SERF_SELF_ROLE".to_string(), self_tags.get("role").cloned().unwrap_or_default()),
    ];
    for (k, v) in self_tags {
        env.push((tag_env_name(k), v.clone()));
    }
    let payload_stdin = |p: &[u8]| {
        let mut p = p.to_vec();
        if p.last().is_some_and(|&b| b != b'\n') {
            p.push(b'\n');
        }
        p
    };
    let stdin = match event {
        SerfEvent::Member { members, .. } => member_lines(members),
        SerfEvent::User(u) => {
            env.push(("SERF_USER_EVENT".into(), u.name.clone()));
            env.push(("SERF_USER_LTIME".into(), u.ltime.to_string()));
            payload_stdin(&u.payload)
        }
        SerfEvent::Query(q) => {
            env.push(("SERF_QUERY_NAME".into(), q.name.clone()));
            env.push(("SERF_QUERY_LTIME".into(), q.ltime.to_string()));
            payload_stdin(&q.payload)
        }
    };
    (env, stdin)
}

/// How a script run ended.
#[derive(Debug)]
pub struct ScriptResult {
    /// Exit code (None if killed by a signal or the timeout).
    pub code: Option<i32>,
    /// Combined stdout and stderr (the last 8 KiB).
    pub output: Vec<u8>,
    /// Whether the timeout killed it.
    pub timed_out: bool,
}

/// Runs one script to completion (or until `timeout`), stdout and stderr merged like Serf.
pub async fn run_script(
    script: &str,
    env: &[(String, String)],
    stdin: Vec<u8>,
    timeout: Option<Duration>,
) -> std::io::Result<ScriptResult> {
    let (reader, writer) = std::io::pipe()?;
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::from(writer.try_clone()?))
        .stderr(Stdio::from(writer))
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    // `cmd` holds our copies of the pipe's write end: drop them so EOF comes when the script exits.
    drop(cmd);
    let reader = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut r = reader;
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if out.len() > 4 * MAX_OUTPUT {
                out.drain(..out.len() - MAX_OUTPUT);
            }
        }
        out
    });
    if let Some(mut input) = child.stdin.take() {
        tokio::spawn(async move {
            // A script that does not read its stdin is fine.
            let _ = input.write_all(&stdin).await;
        });
    }
    let pgid = child.id();
    let waited = match timeout {
        Some(t) => tokio::time::timeout(t, child.wait()).await.ok(),
        None => Some(child.wait().await),
    };
    let (code, timed_out) = match waited {
        Some(status) => (status?.code(), false),
        None => {
            if let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
            }
            let _ = child.wait().await;
            (None, true)
        }
    };
    let mut output = reader.await.unwrap_or_default();
    if output.len() > MAX_OUTPUT {
        output.drain(..output.len() - MAX_OUTPUT);
    }
    Ok(ScriptResult { code, output, timed_out })
}

/// How handler script runs ended, counted since the agent started.
#[derive(Debug, Default)]
pub struct HandlerRuns {
    /// Exited 0.
    pub ok: std::sync::atomic::AtomicU64,
    /// Exited non-zero, or could not be started.
    pub failed: std::sync::atomic::AtomicU64,
    /// Killed by the handler timeout.
    pub timed_out: std::sync::atomic::AtomicU64,
}

/// Runs handler scripts for each event, in order, until the channel closes.
pub(crate) async fn run_handlers(
    mut events: mpsc::Receiver<SerfEvent>,
    handlers: Vec<HandlerSpec>,
    agent: AgentHandle,
    timeout: Option<Duration>,
) {
    while let Some(event) = events.recv().await {
        let local = agent.members().borrow().local.clone();
        for h in handlers.iter().filter(|h| any_matches(&h.filters, &event)) {
            let (env, stdin) = script_input(&event, &local.name, &local.tags);
            let started = Instant::now();
            let result = run_script(&h.script, &env, stdin, timeout).await;
            let took = started.elapsed();
            let kind = event.type_name();
            let runs = agent.handler_runs();
            let outcome = match &result {
                Ok(r) if r.timed_out => &runs.timed_out,
                Ok(r) if r.code == Some(0) => &runs.ok,
                _ => &runs.failed,
            };
            outcome.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match result {
                Err(e) => tracing::error!(script = %h.script, event = kind, error = %e, "cannot run handler"),
                Ok(r) => {
                    let output = String::from_utf8_lossy(&r.output);
                    let output = output.trim_end();
                    if took > SLOW {
                        tracing::warn!(script = %h.script, event = kind, ?took, "slow handler");
                    }
                    if r.timed_out {
                        tracing::error!(script = %h.script, event = kind, ?timeout, output, "handler timed out and was killed");
                    } else if r.code != Some(0) {
                        tracing::error!(script = %h.script, event = kind, code = ?r.code, output, "handler failed");
                    } else {
                        tracing::info!(target: "shoal::handler", script = %h.script, event = kind, ?took, output, "handler ran");
                        if let SerfEvent::Query(q) = &event
                            && !r.output.is_empty()
                            && let Err(e) = agent.respond(q.reply_to.clone(), r.output).await
                        {
                            tracing::warn!(query = %q.name, error = %e, "cannot answer query");
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn specs_parse_like_serf() {
        let h = HandlerSpec::parse("member-join,member-leave=/bin/handle.sh --flag").unwrap();
        assert_eq!(h.filters.len(), 2);
        assert_eq!(h.script, "/bin/handle.sh --flag");
        let all = HandlerSpec::parse("echo hi").unwrap();
        assert_eq!(all.filters[0].event, "*");
        assert!(HandlerSpec::parse("FOO=1 ./x").is_err());
        assert_eq!(HandlerSpec::parse("user:deploy=./d").unwrap().filters[0].name, "deploy");
    }

    #[test]
    fn stdin_and_env_follow_the_contract() {
        let m = Member {
            name: Arc::from("we\tird\nname"),
            addr: "10.0.0.7:7946".parse().unwrap(),
            tags: Arc::new(Tags::from([("role".into(), "backend".into()), ("port".into(), "3000".into())])),
            status: shoal_gossip::MemberStatus::Alive,
            versions: [1, 5, 2, 2, 5, 5],
        };
        assert_eq!(member_lines(&[m]), b"we\\tird\\nname\t10.0.0.7\tbackend\tport=3000,role=backend\n");
        let tags = Tags::from([("role".into(), "lb".into()), ("dc-name.x".into(), "eu".into())]);
        let ev = SerfEvent::User(shoal_gossip::UserEvent {
            ltime: 7,
            name: "deploy".into(),
            payload: b"v2".to_vec(),
            coalesce: false,
        });
        let (env, stdin) = script_input(&ev, "ha", &tags);
        assert_eq!(stdin, b"v2\n");
        for (k, v) in [
            ("SERF_EVENT", "user"),
            ("SERF_SELF_NAME", "ha"),
            ("SERF_SELF_ROLE", "lb"),
            ("SERF_TAG_DC_NAME_X", "eu"),
            ("SERF_USER_EVENT", "deploy"),
            ("SERF_USER_LTIME", "7"),
        ] {
            assert!(env.contains(&(k.to_string(), v.to_string())), "{k}={v} in {env:?}");
        }
    }

    #[tokio::test]
    async fn scripts_merge_output_and_time_out() {
        let r = run_script(
            "read x; echo \"got $x $FOO\"; echo err >&2",
            &[("FOO".into(), "bar".into())],
            b"in\n".to_vec(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(r.code, Some(0));
        assert_eq!(String::from_utf8_lossy(&r.output), "got in bar\nerr\n");
        let r = run_script("exit 3", &[], vec![], None).await.unwrap();
        assert_eq!(r.code, Some(3));
        let started = Instant::now();
        let r =
            run_script("sleep 30 & sleep 30", &[], vec![], Some(Duration::from_millis(200))).await.unwrap();
        assert!(r.timed_out);
        assert!(started.elapsed() < Duration::from_secs(5), "the whole process group was killed");
    }
}
