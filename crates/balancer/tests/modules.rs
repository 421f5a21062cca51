//! The balancer's module graph has no cycles, and no module reaches back to the crate root:
//! each module's `crate::` paths, read from its source, point only at modules below it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The source files of module `name` (a file, or a folder of files).
fn files(src: &Path, name: &str) -> Vec<PathBuf> {
    let file = src.join(format!("{name}.rs"));
    if file.exists() {
        return vec![file];
    }
    let mut all: Vec<PathBuf> = std::fs::read_dir(src.join(name))
        .unwrap_or_else(|e| panic!("module {name}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    all.sort();
    all
}

/// The first segment of every `crate::…` path in `code` (comments skipped).
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in code.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // Top-level items of the group: what a comma separates outside nested braces.
                let (mut depth, mut item) = (0, String::new());
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            out.extend(first_segment(&item));
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    item.push(c);
                }
                out.extend(first_segment(&item));
            } else {
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                out.push(name);
            }
        }
    }
    out
}

/// The first segment of a path such as `server::{Admin, Server}`.
fn first_segment(item: &str) -> Option<String> {
    let first = item.trim().split("::").next().unwrap_or("").trim();
    (!first.is_empty()).then(|| first.to_string())
}

#[test]
fn the_balancer_modules_form_no_cycle_and_never_reach_back_to_the_root() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let modules: Vec<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("mod ").and_then(|m| m.strip_suffix(';')))
        .map(str::to_string)
        .collect();
    assert!(modules.len() > 20, "modules read from lib.rs: {modules:?}");
    let mut graph: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for m in &modules {
        let mut deps: Vec<String> = Vec::new();
        for f in files(&src, m) {
            for dep in crate_paths(&std::fs::read_to_string(&f).unwrap()) {
                assert!(
                    modules.contains(&dep),
                    "{}: `crate::{dep}` is not a module: modules use modules, not the root's re-exports",
                    f.display()
                );
                if dep != *m && !deps.contains(&dep) {
                    deps.push(dep);
                }
            }
        }
        deps.sort();
        graph.insert(m, deps);
    }
    // Depth-first search; a module met again on the current path closes a cycle.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<&'a str, Vec<String>>,
        path: &mut Vec<&'a str>,
        done: &mut Vec<&'a str>,
    ) {
        if done.contains(&m) {
            return;
        }
        if let Some(i) = path.iter().position(|p| *p == m) {
            panic!("a module cycle: {}", [&path[i..], &[m]].concat().join(" -> "));
        }
        path.push(m);
        for dep in &graph[m] {
            visit(dep, graph, path, done);
        }
        path.pop();
        done.push(m);
    }
    let mut done = Vec::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_reader_finds_grouped_and_plain_paths_and_skips_comments() {
    let code =
        "use crate::{pool, server::{Admin, Server}};\n// crate::ignored\nlet x = crate::codec::itoa(1);";
    assert_eq!(crate_paths(code), ["pool", "server", "codec"]);
}
