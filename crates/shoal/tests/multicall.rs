//! `shoal` as the reference stack's own tools: run under their names (symlinks) or as
//! `shoal <tool>`, with the command lines the reference's scripts use.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A scratch directory holding a `handlebars` symlink to the `shoal` under test.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("shoal-multicall-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for tool in ["handlebars", "with-contenv"] {
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_shoal"), dir.join(tool)).unwrap();
        }
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `program args…` with `stdin` as its input.
fn run(program: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command line it refuses ends it before it reads: the pipe may be closed by then.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

/// The reference's HAProxy template: the static config with the server lines made by a block.
const TEMPLATE: &str = "backend nodes\n    balance roundrobin\n{{#each addresses}}\n    server {{ host }} {{ ip }}:3000 check\n{{/each}}\n";

#[test]
fn handlebars_renders_the_reference_template_as_its_member_join_script_calls_it() {
    let scratch = Scratch::new("ref");
    // As the reference's handler builds it from /nodes: `--addresses "[{"host":…,"ip":…},…]"`.
    let addresses = r#"[{"host":"s1","ip":"172.18.0.3"},{"host":"s2","ip":"172.18.0.4"}]"#;
    let expected = "backend nodes\n    balance roundrobin\n    server s1 172.18.0.3:3000 check\n    server s2 172.18.0.4:3000 check\n";
    let by_symlink = run(&scratch.path("handlebars"), &["--addresses", addresses], TEMPLATE);
    assert!(by_symlink.status.success(), "{}", String::from_utf8_lossy(&by_symlink.stderr));
    assert_eq!(String::from_utf8(by_symlink.stdout).unwrap(), expected);
    let by_subcommand =
        run(Path::new(env!("CARGO_BIN_EXE_shoal")), &["handlebars", "--addresses", addresses], TEMPLATE);
    assert!(by_subcommand.status.success(), "{}", String::from_utf8_lossy(&by_subcommand.stderr));
    assert_eq!(String::from_utf8(by_subcommand.stdout).unwrap(), expected);
}

#[test]
fn handlebars_takes_a_data_file_strings_and_strict_mode() {
    let scratch = Scratch::new("file");
    std::fs::write(scratch.path("data.json"), r#"{"name": "from the file", "n": 1}"#).unwrap();
    let data = scratch.path("data.json");
    let out = run(&scratch.path("handlebars"), &[data.to_str().unwrap(), "--n", "2"], "{{name}} {{n}}");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "from the file 2");
    // A value that is not JSON is a string; a missing one is empty, unless --strict.
    let out = run(&scratch.path("handlebars"), &["--name", "web 1"], "[{{name}}][{{missing}}]");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "[web 1][]");
    let strict = run(&scratch.path("handlebars"), &["--strict"], "{{missing}}");
    assert!(!strict.status.success());
    assert!(strict.stdout.is_empty());
    assert!(String::from_utf8_lossy(&strict.stderr).contains("missing"), "{:?}", strict.stderr);
}

#[test]
fn handlebars_refuses_bad_command_lines_and_templates_with_a_reason_and_no_output() {
    let scratch = Scratch::new("bad");
    for (args, stdin, says) in [
        (&["-x"][..], "{{a}}", "unknown option"),
        (&["a.json", "b.json"][..], "{{a}}", "one JSON data file at most"),
        (&["missing.json"][..], "{{a}}", "cannot read the data file"),
        (&["--a", "1"][..], "{{#each a}}", "stdin"),
    ] {
        let out = run(&scratch.path("handlebars"), args, stdin);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing is written on failure");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("handlebars: ") && err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn with_contenv_runs_a_script_with_the_container_environment_laid_over_its_own() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new("contenv");
    let env_dir = scratch.path("container_environment");
    std::fs::create_dir_all(&env_dir).unwrap();
    std::fs::write(env_dir.join("ROLE"), "backend").unwrap();
    std::fs::write(env_dir.join("GONE"), "").unwrap();
    // A run script as s6-overlay images write them: `#!/usr/bin/with-contenv sh`.
    let script = scratch.path("run");
    std::fs::write(
        &script,
        format!(
            "#!{} /bin/sh\nprintf '%s|%s|%s' \"$ROLE\" \"$GONE\" \"$KEPT\"\n",
            scratch.path("with-contenv").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&script)
        .env("SHOAL_CONTENV_DIR", &env_dir)
        .env("ROLE", "overridden")
        .env("GONE", "unset by its empty file")
        .env("KEPT", "kept")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "backend||kept");
    // `shoal with-contenv`, and no folder at all: the command runs with the environment it has.
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["with-contenv", "sh", "-c", "printf %s \"$KEPT\""])
        .env("SHOAL_CONTENV_DIR", scratch.path("none"))
        .env("KEPT", "kept")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(111), "a named folder that is missing is an error");
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("with-contenv: cannot read"));
    let out = Command::new(scratch.path("with-contenv")).arg("no-such-program-here").output().unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run no-such-program-here"));
    let out = Command::new(scratch.path("with-contenv")).output().unwrap();
    assert_eq!(out.status.code(), Some(100), "no command: usage");
}
