//! Configuration files rendered from gossip membership, for users who keep
//! HAProxy or nginx: what the reference stack did with handler scripts, a
//! `/nodes` folder, `handlebars-cmd` and a reload script, in one loop that
//! is safe to run in production.
//!
//! On each membership change (after a quiescence wait), every template is
//! rendered ([`template`]) from the data model ([`model`]); an output equal to
//! its destination is left alone; a new one is staged, judged by the check
//! command, swapped in atomically and followed by the reload command
//! ([`output`]). A failed render or check keeps the destination and the
//! running service untouched and is retried on the next change.
//!
//! Membership is remote input: a member's name or tag may hold a newline, which written
//! into a config file would add directives of the member's choosing. An output that would
//! hold any member value with a control character is refused before anything is staged,
//! checked or run ([`Outcome::Refused`], naming the member and the value; see [`Model`]).
//!
//! Membership comes from an agent in the same process ([`Cluster::from_membership`])
//! or from any agent's RPC — Shoal's or real Serf's ([`rpc_source`]).

pub mod config;
pub mod handlebars_cmd;
pub mod model;
pub mod output;
pub mod template;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

pub use config::{ConfigError, RenderConfig, TemplateSpec, Wait};
pub use model::{Cluster, MemberView, Model, Refused, Selection};

/// What happened to one template on one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The output equals the destination: nothing written, nothing run.
    Unchanged,
    /// The destination was replaced (and the command, if any, ran).
    Written {
        /// The command's result, if there is one.
        command: Option<output::CommandOutcome>,
    },
    /// The template did not read or render: the destination is untouched.
    RenderFailed(String),
    /// The output would hold member values with control characters (a name or tag that
    /// would add lines to the file): nothing written or run, the destination is untouched.
    Refused(Refused),
    /// The check refused the staged output: the destination is untouched.
    CheckFailed(output::CommandOutcome),
    /// The file could not be written.
    WriteFailed(String),
}

impl Outcome {
    /// Whether this pass left the template in a good state.
    pub fn is_ok(&self) -> bool {
        match self {
            Outcome::Unchanged => true,
            Outcome::Written { command } => command.as_ref().is_none_or(|c| c.ok),
            _ => false,
        }
    }
}

/// Renders one template for `model` and puts the result in place.
pub async fn apply(spec: &TemplateSpec, model: &Model, strict: bool) -> Outcome {
    let text = match std::fs::read_to_string(&spec.source) {
        Ok(t) => t,
        Err(e) => return Outcome::RenderFailed(format!("cannot read {}: {e}", spec.source.display())),
    };
    let name = spec.source.display().to_string();
    let rendered = match template::render(&name, &text, model.data(), strict) {
        Ok(r) => r,
        Err(e) => return Outcome::RenderFailed(e.0),
    };
    if let Err(refused) = model.check(&rendered) {
        return Outcome::Refused(refused);
    }
    if std::fs::read(&spec.destination).is_ok_and(|current| current == rendered.as_bytes()) {
        return Outcome::Unchanged;
    }
    let staged = match output::Staged::write(&spec.destination, &rendered, spec.perms) {
        Ok(s) => s,
        Err(e) => return Outcome::WriteFailed(format!("cannot stage {}: {e}", spec.destination.display())),
    };
    if let Some(check) = &spec.check {
        let path = staged.path().display().to_string();
        let script = check.replace("{{src}}", &output::shell_quote(&path));
        let result =
            output::run_shell(&script, spec.command_timeout, &[("SHOAL_RENDER_STAGED", &path)]).await;
        if !result.ok {
            return Outcome::CheckFailed(result);
        }
    }
    if let Err(e) = staged.install(spec.backup) {
        return Outcome::WriteFailed(format!("cannot replace {}: {e}", spec.destination.display()));
    }
    let dest = spec.destination.display().to_string();
    let command = match &spec.command {
        Some(cmd) => {
            Some(output::run_shell(cmd, spec.command_timeout, &[("SHOAL_RENDER_DESTINATION", &dest)]).await)
        }
        None => None,
    };
    Outcome::Written { command }
}

/// Renders every template once for `cluster`, logging each outcome.
pub async fn render_all(cfg: &RenderConfig, cluster: &Cluster) -> Vec<Outcome> {
    let model = Model::build(cluster, &cfg.selection());
    let backends = model.data()["addresses"].as_array().map_or(0, Vec::len);
    let mut outcomes = Vec::with_capacity(cfg.templates.len());
    for spec in &cfg.templates {
        let outcome = apply(spec, &model, cfg.strict).await;
        log(spec, &outcome, backends);
        outcomes.push(outcome);
    }
    outcomes
}

fn log(spec: &TemplateSpec, outcome: &Outcome, backends: usize) {
    let dest = spec.destination.display();
    match outcome {
        Outcome::Unchanged => tracing::debug!(%dest, "unchanged: nothing written"),
        Outcome::Written { command: None } => tracing::info!(%dest, backends, "rendered"),
        Outcome::Written { command: Some(c) } if c.ok => {
            tracing::info!(%dest, backends, command = %c.status, output = %c.output, "rendered; command ran")
        }
        Outcome::Written { command: Some(c) } => {
            tracing::error!(%dest, backends, status = %c.status, output = %c.output, "rendered, but the command failed")
        }
        Outcome::RenderFailed(e) => {
            tracing::error!(%dest, error = %e, "template failed: destination kept; retrying on the next change")
        }
        Outcome::Refused(e) => tracing::error!(
            %dest, error = %e,
            "refused: destination and service kept, no check or command run; rendering again on the next change"
        ),
        Outcome::CheckFailed(c) => tracing::error!(
            %dest, status = %c.status, output = %c.output,
            "check refused the new file: destination and service kept; retrying on the next change"
        ),
        Outcome::WriteFailed(e) => {
            tracing::error!(%dest, error = %e, "cannot write: retrying on the next change")
        }
    }
}

/// Renders on every change of `cluster` until it closes: once at start, then after
/// each burst of changes has calmed down for `wait.min` (at most `wait.max` after its first).
/// A pass with failures is retried after a second even without a change.
pub async fn run(cfg: RenderConfig, mut cluster: watch::Receiver<Arc<Cluster>>) {
    let mut last_failed = false;
    loop {
        let snapshot = cluster.borrow_and_update().clone();
        let outcomes = render_all(&cfg, &snapshot).await;
        let failed = outcomes.iter().any(|o| !o.is_ok());
        let changed = if failed && !last_failed {
            // One quick retry (a check may fail on a transient condition), then wait for changes.
            tokio::time::timeout(Duration::from_secs(1), cluster.changed()).await.unwrap_or(Ok(()))
        } else {
            cluster.changed().await
        };
        last_failed = failed;
        if changed.is_err() {
            return;
        }
        quiesce(&mut cluster, cfg.wait).await;
    }
}

/// Waits until `cluster` has not changed for `wait.min`, or `wait.max` has passed.
async fn quiesce(cluster: &mut watch::Receiver<Arc<Cluster>>, wait: Wait) {
    let deadline = Instant::now() + wait.max;
    loop {
        let calm_until = (Instant::now() + wait.min).min(deadline);
        match tokio::time::timeout_at(calm_until, cluster.changed()).await {
            Ok(Ok(())) if Instant::now() < deadline => continue,
            _ => return,
        }
    }
}

/// Follows an in-process agent.
pub fn agent_source(members: watch::Receiver<Arc<shoal_agent::Membership>>) -> watch::Receiver<Arc<Cluster>> {
    let (tx, rx) = watch::channel(Arc::new(Cluster::from_membership(&members.borrow())));
    tokio::spawn(async move {
        let mut members = members;
        while members.changed().await.is_ok() {
            let next = Cluster::from_membership(&members.borrow_and_update());
            tx.send_if_modified(|c| {
                let changed = **c != next;
                if changed {
                    *c = Arc::new(next.clone());
                }
                changed
            });
        }
    });
    rx
}

/// Follows any agent through its RPC (Shoal's or HashiCorp Serf's): a `stream` of member
/// events, and a `members` call after each. Reconnects until the first snapshot arrives and
/// after losing the agent (the last snapshot stays in force meanwhile).
pub async fn rpc_source(addr: String, auth: Option<String>) -> Result<watch::Receiver<Arc<Cluster>>, String> {
    let first = rpc_snapshot(&addr, auth.as_deref()).await?;
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        loop {
            if let Err(e) = follow_rpc(&addr, auth.as_deref(), &tx).await {
                if tx.is_closed() {
                    return;
                }
                tracing::warn!(rpc = %addr, error = %e, "lost the agent's RPC; reconnecting in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    Ok(rx)
}

async fn rpc_snapshot(addr: &str, auth: Option<&str>) -> Result<Cluster, String> {
    let mut client =
        shoal_rpc::RpcClient::connect(addr, auth).await.map_err(|e| format!("RPC {addr}: {e}"))?;
    let members = client.members().await.map_err(|e| format!("RPC {addr}: members: {e}"))?;
    Ok(Cluster::from_rpc(&members))
}

async fn follow_rpc(addr: &str, auth: Option<&str>, tx: &watch::Sender<Arc<Cluster>>) -> Result<(), String> {
    let err = |e: shoal_rpc::RpcError| format!("{e}");
    let mut events = shoal_rpc::RpcClient::connect(addr, auth).await.map_err(err)?;
    let mut query = shoal_rpc::RpcClient::connect(addr, auth).await.map_err(err)?;
    let seq = events
        .stream("member-join,member-leave,member-failed,member-update,member-reap")
        .await
        .map_err(err)?;
    loop {
        let members = query.members().await.map_err(err)?;
        let next = Cluster::from_rpc(&members);
        tx.send_if_modified(|c| {
            let changed = **c != next;
            if changed {
                *c = Arc::new(next.clone());
            }
            changed
        });
        if tx.is_closed() {
            return Ok(());
        }
        events.next_event(seq).await.map_err(err)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn setup(name: &str, template: &str) -> (PathBuf, TemplateSpec) {
        let d = std::env::temp_dir().join(format!("shoal-render-apply-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("t.hbs"), template).unwrap();
        let mut spec = TemplateSpec::parse(&format!("{0}/t.hbs:{0}/out.cfg", d.display())).unwrap();
        spec.command = Some(format!("echo ran >> {}/commands", d.display()));
        (d, spec)
    }

    fn data(hosts: &[&str]) -> Model {
        serde_json::json!({ "addresses": hosts.iter().map(|h| serde_json::json!({"host": h, "ip": "10.0.0.1"})).collect::<Vec<_>>() }).into()
    }

    fn files(d: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_change_is_written_and_commanded_and_no_change_does_nothing() {
        let (d, spec) = setup("change", "{{#each addresses}}server {{host}}\n{{/each}}");
        assert!(
            matches!(apply(&spec, &data(&["a"]), false).await, Outcome::Written { command: Some(c) } if c.ok)
        );
        assert_eq!(std::fs::read_to_string(d.join("out.cfg")).unwrap(), "server a\n");
        assert_eq!(apply(&spec, &data(&["a"]), false).await, Outcome::Unchanged);
        assert_eq!(std::fs::read_to_string(d.join("commands")).unwrap(), "ran\n", "the command ran once");
        assert_eq!(files(&d), ["commands", "out.cfg", "t.hbs"], "no staged file left");
    }

    #[tokio::test]
    async fn a_failed_check_or_render_keeps_the_destination() {
        let (d, mut spec) = setup("check", "{{#each addresses}}server {{host}}\n{{/each}}");
        apply(&spec, &data(&["a"]), false).await;
        // The check sees the staged file and refuses anything that names `bad`.
        spec.check =
            Some("! grep -q bad {{src}} || { echo \"bad server in $SHOAL_RENDER_STAGED\"; exit 1; }".into());
        match apply(&spec, &data(&["a", "bad"]), false).await {
            Outcome::CheckFailed(c) => assert!(c.output.starts_with("bad server in "), "{c:?}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(std::fs::read_to_string(d.join("out.cfg")).unwrap(), "server a\n");
        assert!(matches!(apply(&spec, &data(&["a", "b"]), false).await, Outcome::Written { .. }));
        std::fs::write(d.join("t.hbs"), "{{#each addresses}").unwrap();
        assert!(matches!(apply(&spec, &data(&["c"]), false).await, Outcome::RenderFailed(_)));
        std::fs::write(d.join("t.hbs"), "{{nope}}").unwrap();
        assert!(
            matches!(apply(&spec, &data(&["c"]), true).await, Outcome::RenderFailed(e) if e.contains("nope"))
        );
        assert_eq!(std::fs::read_to_string(d.join("out.cfg")).unwrap(), "server a\nserver b\n");
        assert_eq!(std::fs::read_to_string(d.join("commands")).unwrap(), "ran\nran\n");
        assert_eq!(files(&d), ["commands", "out.cfg", "t.hbs"]);
    }

    fn member(name: &str, tags: &[(&str, &str)]) -> MemberView {
        let mut tags: std::collections::BTreeMap<String, String> =
            tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        tags.insert("role".into(), "backend".into());
        MemberView { name: name.into(), addr: "10.0.0.9:7946".parse().unwrap(), status: "alive".into(), tags }
    }

    fn guarded(members: Vec<MemberView>) -> Model {
        Model::build(&Cluster { local: Some("ha".into()), members }, &Selection::default())
    }

    /// A member whose name or tag holds newlines would add directives to the file: the
    /// render is refused (naming the member), the file keeps its bytes, neither the check nor
    /// the command runs; once the member is gone, the next render goes through.
    #[tokio::test]
    async fn member_values_with_control_characters_are_refused_and_nothing_runs() {
        let template = "global\n{{#each backends}}    server {{name}} {{addr}} # {{tags.zone}}\n{{/each}}";
        let (d, mut spec) = setup("refuse", template);
        spec.check = Some(format!("echo checked >> {}/commands", d.display()));
        let ok = apply(&spec, &guarded(vec![member("web-1", &[("zone", "eu")])]), false).await;
        assert!(matches!(&ok, Outcome::Written { command: Some(c) } if c.ok), "{ok:?}");
        let good = std::fs::read(d.join("out.cfg")).unwrap();
        assert_eq!(good, b"global\n    server web-1 10.0.0.9:3000 # eu\n");

        let evil = "x\nprogram x\n  command /bin/touch /tmp/pwned";
        let name = guarded(vec![member("web-1", &[("zone", "eu")]), member(evil, &[])]);
        let tag =
            guarded(vec![member("web-1", &[("zone", "eu\nglobal\n  stats socket /tmp/s level admin")])]);
        let mut triple = spec.clone();
        std::fs::write(
            d.join("t3.hbs"),
            "{{#each members}}{{{name}}} {{json name}} {{haproxy_name name}}\n{{/each}}",
        )
        .unwrap();
        triple.source = d.join("t3.hbs");
        for (model, template, want) in [
            (&name, &spec, r#"member "x\nprogram x\n  command /bin/touch /tmp/pwned": its name holds"#),
            (&tag, &spec, r#"member "web-1": its tag "zone" holds a control character (U+000A)"#),
            (&name, &triple, r#"member "x\nprogram x\n  command /bin/touch /tmp/pwned": its name holds"#),
        ] {
            match apply(template, model, false).await {
                Outcome::Refused(e) => assert!(e.to_string().starts_with(want), "{e}"),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        assert_eq!(std::fs::read(d.join("out.cfg")).unwrap(), good, "the file keeps its bytes");
        assert_eq!(
            std::fs::read_to_string(d.join("commands")).unwrap(),
            "checked\nran\n",
            "nothing ran since"
        );

        // A value that only steers the template is no harm; the bad member gone, renders resume.
        std::fs::write(
            d.join("t.hbs"),
            "{{#each members}}{{#if (eq name \"web-1\")}}{{addr}}{{/if}}{{/each}}\n",
        )
        .unwrap();
        assert!(matches!(apply(&spec, &name, false).await, Outcome::Written { .. }));
        std::fs::write(d.join("t.hbs"), template).unwrap();
        let after = guarded(vec![member("web-1", &[("zone", "eu")]), member("web-2", &[])]);
        assert!(matches!(apply(&spec, &after, false).await, Outcome::Written { command: Some(c) } if c.ok));
        assert_eq!(
            std::fs::read_to_string(d.join("out.cfg")).unwrap(),
            "global\n    server web-1 10.0.0.9:3000 # eu\n    server web-2 10.0.0.9:3000 # \n"
        );
        assert_eq!(files(&d), ["commands", "out.cfg", "t.hbs", "t3.hbs"], "no staged file left");
    }

    /// Every way a template can put a value into its output is covered, not only `{{x}}`.
    #[tokio::test]
    async fn a_refused_value_is_found_however_the_template_writes_it() {
        let evil = "a\nb";
        let m = Model::build(
            &Cluster {
                local: Some(evil.into()),
                members: vec![member(evil, &[("k\nx", "v"), ("zone", "z\r")])],
            },
            &Selection::default(),
        );
        for text in [
            "{{name}}",
            "{{{host}}}",
            "{{& name}}",
            "{{lookup this \"name\"}}",
            "{{join (pluck @root.members \"name\") \",\"}}",
            "{{#each tags}}{{@key}}{{/each}}",
            "{{tags.zone}}",
            "{{default name \"x\"}}",
            "{{#*inline \"p\"}}{{name}}{{/inline}}{{> p}}",
            "{{nginx_string name}}",
            "{{shell_quote name}}",
            "{{json this}}",
            "{{@root.local.name}}",
        ] {
            let out =
                template::render("t", &format!("{{{{#each backends}}}}{text}{{{{/each}}}}"), m.data(), true)
                    .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(m.check(&out).is_err(), "{text} renders {out:?}, which passes");
        }
        let out =
            template::render("t", "{{#each backends}}{{ip}} {{len tags}}{{/each}}", m.data(), true).unwrap();
        assert_eq!(m.check(&out), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn quiescence_waits_for_calm_but_not_past_max() {
        let (tx, mut rx) = watch::channel(Arc::new(Cluster::default()));
        let wait = Wait { min: Duration::from_millis(100), max: Duration::from_millis(350) };
        // Calm at once: returns after MIN.
        let t0 = Instant::now();
        quiesce(&mut rx, wait).await;
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        // A change every 50 ms never calms down: returns at MAX.
        let ticker = tokio::spawn(async move {
            for i in 0..20u16 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                tx.send_replace(Arc::new(Cluster { local: Some(i.to_string()), members: vec![] }));
            }
        });
        let t1 = Instant::now();
        quiesce(&mut rx, wait).await;
        assert_eq!(t1.elapsed(), Duration::from_millis(350));
        ticker.abort();
    }
}
