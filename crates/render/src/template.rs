//! Handlebars as the reference's `handlebars-cmd` used it: no HTML escaping
//! (configuration files are not HTML), object keys in their order, an optional
//! strict mode that fails on missing values, and a few helpers for membership:
//!
//! - `(filter LIST role="backend" status="alive" tag="zone=eu")`: items whose fields match;
//! - `(sort LIST "key")`: items ordered by a field (numbers as numbers);
//! - `(pluck LIST "key")`: one field of every item;
//! - `(join LIST ", ")`: items joined into one string;
//! - `(default VALUE "fallback")`: VALUE unless it is missing, null or empty;
//! - `eq`, `ne`, `gt`, `lt`, `and`, `or`, `not`, `len` are Handlebars' own.
//!
//! And helpers that shape a value for the format a template writes:
//!
//! - `{{haproxy_name host}}`: a valid HAProxy server, backend or frontend name: every
//!   character outside `A-Z a-z 0-9 . _ : -` becomes `_` (so `web 1#x` is `web_1_x`; two
//!   names that differ only there collide, and `haproxy -c` refuses the duplicate);
//! - `{{nginx_string x}}`: a double-quoted nginx string: `"` and `\` escaped; `$` (which nginx
//!   would expand as a variable and cannot escape) and control characters become `_`;
//! - `{{json x}}`: x as JSON (a string quoted and escaped, a number, an object…), on one line;
//! - `{{shell_quote x}}`: x as one `/bin/sh` word in single quotes (`'it'\''s'`).
//!
//! Whatever a template does, a member value holding a control character (a name or tag with a
//! newline) never reaches a written file: [`crate::model::Model`] replaces such values by
//! markers and [`crate::apply`] refuses any output that holds one. The helpers above are for
//! values that are valid but not safe as they are in a format: a space in a name, a quote.
//!
//! Handlebars parses and renders recursively and has no limits of its own, so a template is
//! bounded before it runs: at most [`MAX_NESTING`] levels of blocks, and of subexpressions and
//! literals within a tag (far deeper nesting would overflow the stack: a crash, not an error);
//! no partial that includes itself, directly or not, partials that include partials at most
//! [`MAX_PARTIAL_DEPTH`] deep and at most [`MAX_PARTIALS`] partial expansions per pass over the
//! template; at most [`MAX_ITERATIONS`] `each` iterations and
//! [`MAX_OUTPUT`] bytes of output per render (nested loops grow exponentially).

use std::sync::atomic::{AtomicU64, Ordering};

use handlebars::template::{Parameter, Template, TemplateElement};
use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext, RenderError,
    RenderErrorReason, ScopedJson,
};
use serde_json::Value;

/// Deepest nesting of blocks, and of subexpressions and literals within one tag.
pub const MAX_NESTING: usize = 32;
/// Longest chain of partials including partials (each level may nest blocks again).
pub const MAX_PARTIAL_DEPTH: usize = 8;
/// Most partial expansions one pass over a template may cause.
pub const MAX_PARTIALS: u64 = 10_000;
/// Most `each` iterations one render may run.
pub const MAX_ITERATIONS: u64 = 100_000;
/// Largest rendered output, in bytes.
pub const MAX_OUTPUT: usize = 64 << 20;

/// A template that did not compile or render, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// Compiles and renders one template text.
pub fn render(name: &str, text: &str, data: &Value, strict: bool) -> Result<String, TemplateError> {
    check_nesting(text)?;
    let mut template =
        Template::compile_with_name(text, name.to_string()).map_err(|e| TemplateError(e.to_string()))?;
    check_partials(name, &template)?;
    count_loops(&mut template);
    let iterations = AtomicU64::new(0);
    let mut hb = Handlebars::new();
    hb.register_escape_fn(handlebars::no_escape);
    hb.set_strict_mode(strict);
    for (name, f) in [
        ("filter", filter as fn(&Helper) -> _),
        ("sort", sort),
        ("pluck", pluck),
        ("join", join),
        ("default", default),
        ("haproxy_name", haproxy_name),
        ("nginx_string", nginx_string),
        ("json", json),
        ("shell_quote", shell_quote),
    ] {
        hb.register_helper(name, Box::new(ValueHelper(f)));
    }
    hb.register_helper(LOOP_TICK, Box::new(LoopTick(&iterations)));
    hb.register_template(name, template);
    let mut out = BoundedOutput(Vec::new());
    match hb.render_to_write(name, data, &mut out) {
        Ok(()) => String::from_utf8(out.0).map_err(|e| TemplateError(e.to_string())),
        Err(_) if out.0.len() > MAX_OUTPUT => {
            Err(TemplateError(format!("{name}: the output would be larger than {} MiB", MAX_OUTPUT >> 20)))
        }
        Err(e) => Err(TemplateError(e.to_string())),
    }
}

/// A buffer that refuses to grow past [`MAX_OUTPUT`].
struct BoundedOutput(Vec<u8>);

impl std::io::Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        if self.0.len() > MAX_OUTPUT {
            return Err(std::io::Error::other("output too large"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The helper [`count_loops`] puts at the start of every `each` body.
const LOOP_TICK: &str = "__shoal_each_iteration";

/// Counts one `each` iteration against [`MAX_ITERATIONS`]; writes nothing.
struct LoopTick<'a>(&'a AtomicU64);

impl HelperDef for LoopTick<'_> {
    fn call<'reg: 'rc, 'rc>(
        &self,
        _: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        _: &mut dyn Output,
    ) -> HelperResult {
        if self.0.fetch_add(1, Ordering::Relaxed) >= MAX_ITERATIONS {
            return Err(RenderErrorReason::Other(format!(
                "more than {MAX_ITERATIONS} loop iterations (nested each blocks multiply)"
            ))
            .into());
        }
        Ok(())
    }
}

/// Makes every `each` iteration call [`LOOP_TICK`] first (handlebars' own `each` stays in use).
fn count_loops(t: &mut Template) {
    for e in &mut t.elements {
        match e {
            TemplateElement::HelperBlock(h) => {
                for sub in [&mut h.template, &mut h.inverse].into_iter().flatten() {
                    count_loops(sub);
                }
                if h.name.as_name() == Some("each")
                    && let Some(body) = &mut h.template
                    && let Ok(mut tick) = Template::compile(&format!("{{{{{LOOP_TICK}}}}}"))
                    && !tick.elements.is_empty()
                {
                    if body.mapping.len() == body.elements.len() && !tick.mapping.is_empty() {
                        // Errors from the tick point at the start of the body.
                        let at = body.mapping.first().cloned().unwrap_or_else(|| tick.mapping.remove(0));
                        body.mapping.insert(0, at);
                    }
                    body.elements.insert(0, tick.elements.remove(0));
                }
            }
            TemplateElement::DecoratorBlock(d) | TemplateElement::PartialBlock(d) => {
                if let Some(body) = &mut d.template {
                    count_loops(body);
                }
            }
            _ => {}
        }
    }
}

/// Refuses nesting deeper than [`MAX_NESTING`] before handlebars parses the text.
///
/// The scan follows handlebars' grammar where it matters: escaped braces, comments and raw
/// blocks are text; within a tag, strings and path keys (`a.[key]`) are skipped, and `[`/`{`
/// are array/object literals where handlebars would read them so. Where handlebars would refuse
/// the text anyway, the scan stops: nothing beyond that point is parsed.
fn check_nesting(text: &str) -> Result<(), TemplateError> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut blocks = 0usize;
    while let Some(j) = find(b, i, b"{{") {
        // One backslash escapes the braces (`\{{` is text); two or more are text themselves.
        if b[i..j].iter().rev().take_while(|&&c| c == b'\\').count() == 1 {
            i = j + if b[j..].starts_with(b"{{{{") { 4 } else { 2 };
            continue;
        }
        let next = if b[j..].starts_with(b"{{{{") {
            raw_block_end(b, j)?
        } else if b[j..].starts_with(b"{{!") {
            let long = b[j..].starts_with(b"{{!--").then(|| find(b, j + 5, b"--}}").map(|e| e + 4)).flatten();
            long.or_else(|| find(b, j + 3, b"}}").map(|e| e + 2))
        } else {
            let mut k = j + 2;
            k += usize::from(b.get(k) == Some(&b'~'));
            let mut partial = false;
            match b.get(k) {
                Some(b'#') => {
                    blocks += 1;
                    if blocks > MAX_NESTING {
                        return Err(too_deep());
                    }
                    k += 1;
                    partial = b.get(k) == Some(&b'>');
                    k += usize::from(matches!(b.get(k), Some(b'*' | b'>')));
                }
                Some(b'/') => {
                    // An end tag with no block open is an error: handlebars stops there.
                    let Some(open) = blocks.checked_sub(1) else { return Ok(()) };
                    blocks = open;
                    k += 1;
                }
                Some(b'>') => {
                    partial = true;
                    k += 1;
                }
                Some(b'{' | b'&' | b'*' | b'^') => {
                    k += 1;
                    k += usize::from(b.get(k) == Some(&b'~'));
                }
                _ => {}
            }
            tag_end(b, k, partial)?
        };
        match next {
            Some(n) => i = n,
            None => return Ok(()),
        }
    }
    Ok(())
}

fn too_deep() -> TemplateError {
    TemplateError(format!(
        "template nested deeper than {MAX_NESTING} levels (blocks, or subexpressions and literals in a tag)"
    ))
}

fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    b.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

fn skip_ws(b: &[u8], mut k: usize) -> usize {
    while matches!(b.get(k), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        k += 1;
    }
    k
}

/// Where a raw block (`{{{{raw}}}} text {{{{/raw}}}}`) starting at `j` ends.
fn raw_block_end(b: &[u8], j: usize) -> Result<Option<usize>, TemplateError> {
    let Some(mut k) = tag_end(b, j + 4, false)? else { return Ok(None) };
    loop {
        let Some(e) = find(b, k, b"{{{{") else { return Ok(None) };
        if b[k..e].iter().rev().take_while(|&&c| c == b'\\').count() == 1 {
            k = e + 4;
            continue;
        }
        return tag_end(b, e + 4, false);
    }
}

/// Scans one tag's content from `k` to just past its closing braces; `None` where
/// handlebars would refuse it.
fn tag_end(b: &[u8], mut k: usize, partial: bool) -> Result<Option<usize>, TemplateError> {
    let mut parens = 0usize;
    let mut name_pos = true;
    // The last run of plain characters: where it started, and whether it was in name position.
    let mut run = (usize::MAX, false);
    loop {
        k = skip_ws(b, k);
        let Some(&c) = b.get(k) else { return Ok(None) };
        let first = std::mem::replace(&mut name_pos, false);
        match c {
            b'}' | b'~' if parens == 0 => {
                let end = k + b[k..].iter().take_while(|&&c| c == b'}' || c == b'~').count();
                return Ok(find(&b[..end], k, b"}}").map(|_| end));
            }
            b'\'' if first && partial => {
                // A quoted partial name: `\'` is an escaped quote, anything else is itself.
                let mut p = k + 1;
                loop {
                    match b.get(p) {
                        None => return Ok(None),
                        Some(b'\'') if p > k + 1 => break,
                        Some(b'\'') => return Ok(None),
                        Some(b'\\') if b.get(p + 1) == Some(&b'\'') => p += 2,
                        Some(_) => p += 1,
                    }
                }
                k = p + 1;
            }
            b'"' | b'\'' => match string_end(b, k) {
                Some(e) => k = e,
                None => return Ok(None),
            },
            b'(' => {
                parens += 1;
                if parens > MAX_NESTING {
                    return Err(too_deep());
                }
                name_pos = true;
                k += 1;
            }
            b')' if parens > 0 => {
                parens -= 1;
                k += 1;
            }
            b'[' => {
                // `a.[key]` continues a path; but a parameter `1.` is a number, and what follows
                // it a new parameter (`1.[[…]]` is a number, then an array).
                let number = |r: &[u8]| {
                    let digits = r.strip_prefix(b"-").unwrap_or(r).strip_suffix(b".").unwrap_or(b"x");
                    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
                };
                let after_sep = k > 0
                    && matches!(b[k - 1], b'.' | b'/')
                    && !(run.0 < k && !run.1 && number(&b[run.0..k]));
                let literal = if first || after_sep { None } else { literal_end(b, k, parens)? };
                k = match literal {
                    Some(e) => e,
                    // A path key: anything up to the first `]`.
                    None => match find(b, k, b"]") {
                        Some(e) => e + 1,
                        None => return Ok(None),
                    },
                };
            }
            b'{' if !first => match literal_end(b, k, parens)? {
                Some(e) => k = e,
                None => return Ok(None),
            },
            b'{' | b'}' | b')' | b']' | b'~' => return Ok(None),
            _ => {
                // Names, paths, numbers, `=`, `|`, `as`: up to the next character that matters.
                run = (k, first);
                k += b[k..].iter().take_while(|c| !b" \t\r\n\"'()[]{}~".contains(c)).count().max(1);
            }
        }
    }
}

/// The end of the string literal opening at `k` (JSON escapes), or `None` if it is not one.
fn string_end(b: &[u8], k: usize) -> Option<usize> {
    let quote = b[k];
    let mut p = k + 1;
    loop {
        match *b.get(p)? {
            c if c == quote => return Some(p + 1),
            b'\\' => match *b.get(p + 1)? {
                c if c == quote || b"\\/bfnrt".contains(&c) => p += 2,
                b'u' if b.get(p + 2..p + 6)?.iter().all(u8::is_ascii_hexdigit) => p += 6,
                _ => return None,
            },
            _ => p += 1,
        }
    }
}

fn is_symbol_char(c: Option<&u8>) -> bool {
    c.is_some_and(|&c| c.is_ascii_alphanumeric() || b"-_$:".contains(&c) || c >= 0x80)
}

/// The end of the literal (string, number, `null`, `true`, `false`, array, object) at `k`
/// nested `depth` levels deep, or `None` if there is none there.
fn literal_end(b: &[u8], k: usize, depth: usize) -> Result<Option<usize>, TemplateError> {
    let Some(&c) = b.get(k) else { return Ok(None) };
    Ok(match c {
        b'"' | b'\'' => string_end(b, k),
        b'[' | b'{' => {
            if depth + 1 > MAX_NESTING {
                return Err(too_deep());
            }
            let (close, object) = if c == b'[' { (b']', false) } else { (b'}', true) };
            // One element: a literal, or `"key": literal` in an object.
            let element = |p: usize| -> Result<Option<usize>, TemplateError> {
                if !object {
                    return literal_end(b, p, depth + 1);
                }
                let Some(p) =
                    (b.get(p) == Some(&b'"') || b.get(p) == Some(&b'\'')).then(|| string_end(b, p)).flatten()
                else {
                    return Ok(None);
                };
                let p = skip_ws(b, p);
                if b.get(p) != Some(&b':') {
                    return Ok(None);
                }
                literal_end(b, skip_ws(b, p + 1), depth + 1)
            };
            let mut p = skip_ws(b, k + 1);
            if let Some(e) = element(p)? {
                p = skip_ws(b, e);
            }
            while b.get(p) == Some(&b',') {
                match element(skip_ws(b, p + 1))? {
                    Some(e) => p = skip_ws(b, e),
                    None => break,
                }
            }
            (b.get(p) == Some(&close)).then_some(p + 1)
        }
        b'n' | b't' | b'f' => ["null", "true", "false"]
            .iter()
            .find(|w| b[k..].starts_with(w.as_bytes()))
            .map(|w| k + w.len())
            .filter(|&e| !is_symbol_char(b.get(e))),
        b'-' | b'0'..=b'9' => {
            let digits = |p: usize| p + b[p.min(b.len())..].iter().take_while(|c| c.is_ascii_digit()).count();
            let start = k + usize::from(c == b'-');
            let mut p = digits(start);
            if p == start {
                return Ok(None);
            }
            p += usize::from(b.get(p) == Some(&b'.'));
            p = digits(p);
            if b.get(p) == Some(&b'E') {
                let q = p + 1 + usize::from(b.get(p + 1) == Some(&b'-'));
                if digits(q) > q {
                    p = digits(q);
                }
            }
            (!is_symbol_char(b.get(p))).then_some(p)
        }
        _ => None,
    })
}

/// Refuses partials that include themselves (directly or through others: handlebars would
/// recurse until the stack overflows), chains of partials deeper than [`MAX_PARTIAL_DEPTH`],
/// and templates whose partials expand more than [`MAX_PARTIALS`] times.
fn check_partials(name: &str, root: &Template) -> Result<(), TemplateError> {
    // Node 0 is the template itself; every decorator block (`{{#*inline "p"}}`) is one more.
    let mut graph = Partials { names: vec![Some(name.to_string())], calls: vec![Vec::new()] };
    graph.collect(root, 0);
    let mut memo = vec![Visit::New; graph.names.len()];
    let (total, _) = graph.walk(0, &mut memo, 0)?;
    if total > MAX_PARTIALS {
        return Err(TemplateError(format!(
            "{name}: partials would be expanded more than {MAX_PARTIALS} times"
        )));
    }
    Ok(())
}

/// Who includes whom.
struct Partials {
    /// The name each node is defined under (`None`: computed at render time).
    names: Vec<Option<String>>,
    /// Each node's partial references (`None`: a name computed at render time, which may be any).
    calls: Vec<Vec<Option<String>>>,
}

#[derive(Debug, Clone, Copy)]
enum Visit {
    New,
    /// On the current path: reaching it again is a cycle.
    Open,
    /// Expansions its rendering causes, and the longest chain of partials below it.
    Done(u64, usize),
}

impl Partials {
    fn collect(&mut self, t: &Template, node: usize) {
        for e in &t.elements {
            match e {
                TemplateElement::HelperBlock(h)
                | TemplateElement::Expression(h)
                | TemplateElement::HtmlExpression(h) => {
                    for sub in [&h.template, &h.inverse].into_iter().flatten() {
                        self.collect(sub, node);
                    }
                }
                TemplateElement::DecoratorBlock(d) => {
                    let Some(body) = &d.template else { continue };
                    let name = match d.params.first() {
                        Some(Parameter::Literal(Value::String(s))) => Some(s.clone()),
                        _ => None,
                    };
                    self.names.push(name);
                    self.calls.push(Vec::new());
                    let id = self.names.len() - 1;
                    self.collect(body, id);
                }
                TemplateElement::PartialExpression(d) | TemplateElement::PartialBlock(d) => {
                    let target = match &d.name {
                        Parameter::Subexpression(_) => None,
                        Parameter::Literal(v) => {
                            Some(v.as_str().map_or_else(|| v.to_string(), str::to_string))
                        }
                        other => other.as_name().map(str::to_string),
                    };
                    // `@partial-block` renders the caller's block, counted where it is written.
                    if target.as_deref() != Some("@partial-block") {
                        self.calls[node].push(target);
                    }
                    if let Some(body) = &d.template {
                        self.collect(body, node);
                    }
                }
                _ => {}
            }
        }
    }

    /// Expansions rendering `node` causes and the longest chain below it, reached `depth`
    /// partials deep; an error for a cycle or a chain too deep.
    fn walk(&self, node: usize, memo: &mut [Visit], depth: usize) -> Result<(u64, usize), TemplateError> {
        let what = || self.names[node].clone().unwrap_or_else(|| "with a computed name".into());
        let too_deep =
            || TemplateError(format!("partials include partials more than {MAX_PARTIAL_DEPTH} deep"));
        if depth > MAX_PARTIAL_DEPTH {
            return Err(too_deep());
        }
        let (count, height) = match memo[node] {
            Visit::Open => return Err(TemplateError(format!("partial {} includes itself", what()))),
            Visit::Done(count, height) => (count, height),
            Visit::New => {
                memo[node] = Visit::Open;
                let (mut count, mut height) = (1u64, 0usize);
                for call in &self.calls[node] {
                    let (mut most, mut deepest) = (0u64, 0usize);
                    for (t, name) in self.names.iter().enumerate() {
                        if call.is_none() || name.is_none() || call == name {
                            let (c, h) = self.walk(t, memo, depth + 1)?;
                            (most, deepest) = (most.max(c), deepest.max(h + 1));
                        }
                    }
                    (count, height) = (count.saturating_add(most), height.max(deepest));
                }
                memo[node] = Visit::Done(count, height);
                (count, height)
            }
        };
        if depth + height > MAX_PARTIAL_DEPTH {
            return Err(too_deep());
        }
        Ok((count, height))
    }
}

fn param<'a>(h: &'a Helper, i: usize, helper: &'static str) -> Result<&'a Value, RenderError> {
    h.param(i).map(|p| p.value()).ok_or_else(|| RenderErrorReason::ParamNotFoundForIndex(helper, i).into())
}

fn list<'a>(h: &'a Helper, helper: &'static str) -> Result<&'a Vec<Value>, RenderError> {
    param(h, 0, helper)?
        .as_array()
        .ok_or_else(|| RenderErrorReason::InvalidParamType("a list as the first parameter").into())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A helper that computes a value from its parameters (usable as a subexpression).
struct ValueHelper(fn(&Helper) -> Result<Value, RenderError>);

impl HelperDef for ValueHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        (self.0)(h).map(ScopedJson::Derived)
    }
}

fn filter(h: &Helper) -> Result<Value, RenderError> {
    let kept = list(h, "filter")?
        .iter()
        .filter(|item| {
            h.hash().iter().all(|(key, want)| {
                let want = text(want.value());
                match *key {
                    "tag" => match want.split_once('=') {
                        Some((k, v)) => item["tags"].get(k).is_some_and(|t| text(t) == v),
                        None => item["tags"].get(&want).is_some(),
                    },
                    field => text(&item[field]) == want,
                }
            })
        })
        .cloned()
        .collect();
    Ok(Value::Array(kept))
}

fn sort(h: &Helper) -> Result<Value, RenderError> {
    let mut items = list(h, "sort")?.clone();
    let key = h.param(1).map(|p| text(p.value()));
    let field = |v: &Value| key.as_ref().map_or_else(|| v.clone(), |k| v[k.as_str()].clone());
    items.sort_by(|a, b| {
        let (a, b) = (field(a), field(b));
        match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            _ => text(&a).cmp(&text(&b)),
        }
    });
    Ok(Value::Array(items))
}

fn pluck(h: &Helper) -> Result<Value, RenderError> {
    let key = text(param(h, 1, "pluck")?);
    Ok(Value::Array(list(h, "pluck")?.iter().map(|v| v[key.as_str()].clone()).collect()))
}

fn join(h: &Helper) -> Result<Value, RenderError> {
    let sep = h.param(1).map_or_else(|| ",".to_string(), |p| text(p.value()));
    Ok(Value::String(list(h, "join")?.iter().map(text).collect::<Vec<_>>().join(&sep)))
}

fn default(h: &Helper) -> Result<Value, RenderError> {
    let value = h.param(0).map(|p| p.value().clone()).unwrap_or(Value::Null);
    let empty = matches!(&value, Value::Null) || value.as_str() == Some("");
    if empty { param(h, 1, "default").cloned() } else { Ok(value) }
}

/// HAProxy accepts these in a proxy or server name (`invalid_char()` in its sources).
fn haproxy_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

fn haproxy_name(h: &Helper) -> Result<Value, RenderError> {
    let name = text(param(h, 0, "haproxy_name")?);
    Ok(Value::String(name.chars().map(|c| if haproxy_name_char(c) { c } else { '_' }).collect()))
}

fn nginx_string(h: &Helper) -> Result<Value, RenderError> {
    let s = text(param(h, 0, "nginx_string")?);
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '$' => out.push('_'),
            c if crate::model::is_unsafe_char(c) => out.push('_'),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(Value::String(out))
}

fn json(h: &Helper) -> Result<Value, RenderError> {
    let v = h.param(0).map_or(&Value::Null, |p| p.value());
    serde_json::to_string(v).map(Value::String).map_err(|e| RenderErrorReason::Other(e.to_string()).into())
}

fn shell_quote(h: &Helper) -> Result<Value, RenderError> {
    Ok(Value::String(crate::output::shell_quote(&text(param(h, 0, "shell_quote")?))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The reference stack's template, verbatim in its server block.
    const REFERENCE: &str = "backend nodes\n    balance roundrobin\n    option httpchk HEAD /\n    \
        {{#each addresses}}\n    server {{ host }} {{ ip }}:3000 check\n    {{/each}}\n";

    /// Handlebars.js drops "standalone" block lines (`{{#each}}` and `{{/each}}` alone on
    /// their line, indentation included): only the server lines remain, indented as written.
    #[test]
    fn the_reference_template_renders_like_handlebars_js() {
        let data = json!({ "addresses": [ { "host": "s1", "ip": "172.18.0.3" }, { "host": "s2", "ip": "172.18.0.4" } ] });
        let out = render("ref", REFERENCE, &data, false).unwrap();
        assert_eq!(
            out,
            "backend nodes\n    balance roundrobin\n    option httpchk HEAD /\n    \
             server s1 172.18.0.3:3000 check\n    server s2 172.18.0.4:3000 check\n"
        );
        let empty = render("ref", REFERENCE, &json!({ "addresses": [] }), false).unwrap();
        assert_eq!(empty, "backend nodes\n    balance roundrobin\n    option httpchk HEAD /\n");
    }

    #[test]
    fn nothing_is_html_escaped_and_key_order_is_kept() {
        let data: Value = serde_json::from_str(r#"{ "t": { "zeta": "a&b", "alpha": "<x>" } }"#).unwrap();
        let out = render("t", "{{#each t}}{{@key}}={{this}};{{/each}}", &data, false).unwrap();
        assert_eq!(out, "zeta=a&b;alpha=<x>;");
    }

    #[test]
    fn strict_mode_fails_on_missing_values() {
        let data = json!({ "addresses": [] });
        assert_eq!(render("t", "[{{ nope }}]", &data, false).unwrap(), "[]");
        let err = render("t", "[{{ nope }}]", &data, true).unwrap_err();
        assert!(err.0.contains("nope"), "{err}");
        assert!(render("t", "{{#each", &data, false).is_err(), "a broken template is an error");
    }

    fn deep(open: &str, middle: &str, close: &str, n: usize) -> String {
        format!("{}{middle}{}", open.repeat(n), close.repeat(n))
    }

    /// Inputs that overflowed the stack inside handlebars (found by fuzzing `template`): now
    /// clear errors, while the same constructs nested a little render as before.
    #[test]
    fn deep_nesting_is_refused_before_handlebars_recurses() {
        let data = json!({ "a": true, "members": [1, 2] });
        let cases = [
            deep("{{#if local}}", "x", "{{/if}}", 3000),
            format!("{{{{len {}members{}}}}}", "(len ".repeat(3000), ")".repeat(3000)),
            format!("{{{{len {}1{}}}}}", "[".repeat(5000), "]".repeat(5000)),
            format!("{{{{len {}1{}}}}}", "{\"k\":".repeat(5000), "}".repeat(5000)),
            // After the number `1.`, `[` opens an array, not a path key.
            format!("{{{{len 1.{}1{}}}}}", "[".repeat(5000), "]".repeat(5000)),
            // Path keys and strings holding closing brackets do not hide the nesting.
            format!("{{{{x {}members{}}}}}", "(len a.[)] \")\" ".repeat(200), ")".repeat(200)),
            deep("{{#*inline \"p\"}}", "", "{{/inline}}", 100),
            deep("{{#> p}}", "", "{{/p}}", 100),
        ];
        for text in &cases {
            let err = render("t", text, &data, false).unwrap_err();
            assert!(err.0.contains("nested deeper than 32"), "{}: {err}", &text[..40]);
        }
        let ok = deep("{{#if a}}", "x", "{{/if}}", 32);
        assert_eq!(render("t", &ok, &data, false).unwrap(), "x");
        let ok = format!("{{{{len {}members{}}}}}", "(pluck ".repeat(20), " \"k\")".repeat(20));
        assert!(render("t", &ok, &data, false).is_ok());
        // Braces that are text (escaped, in comments, in raw blocks) are not nesting.
        let text = format!(
            "\\{{{{#if}} {{{{!-- {} --}}}} {{{{{{{{raw}}}}}}}} {} {{{{{{{{/raw}}}}}}}}",
            "{{#if a}}".repeat(100),
            "{{#if a}}".repeat(100)
        );
        assert!(render("t", &text, &data, false).is_ok(), "{:?}", render("t", &text, &data, false));
    }

    /// A partial that includes itself recursed until the stack overflowed (found by fuzzing).
    #[test]
    fn recursive_partials_are_refused() {
        let data = json!({ "members": [1, 2] });
        for text in [
            r#"{{#*inline "p"}}x{{> p}}{{/inline}}{{> p}}"#,
            r#"{{#*inline "p"}}{{> q}}{{/inline}}{{#*inline "q"}}{{#if x}}{{> p}}{{/if}}{{/inline}}{{> p}}"#,
            r#"{{#*inline "p"}}{{> (lookup this "name")}}{{/inline}}{{> p}}"#,
            r#"{{#*inline "p"}}{{> t}}{{/inline}}{{> p}}"#,
        ] {
            let err = render("t", text, &data, false).unwrap_err();
            assert!(err.0.contains("includes itself"), "{text}: {err}");
        }
        let ok = r#"{{#*inline "srv"}}[{{this}}]{{/inline}}{{#each members}}{{> srv}}{{/each}}"#;
        assert_eq!(render("t", ok, &data, false).unwrap(), "[1][2]");
        let block = r#"{{#*inline "p"}}<{{> @partial-block}}>{{/inline}}{{#> p}}a{{#> p}}b{{/p}}{{/p}}"#;
        assert_eq!(render("t", block, &data, false).unwrap(), "<a<b>>");
        // A chain of 3 000 partials (each including the one before) overflowed the stack too.
        let chain = |n: usize, calls: usize| {
            let mut t = String::from(r#"{{#*inline "p0"}}x{{/inline}}"#);
            for i in 1..=n {
                let call = format!("{{{{> p{}}}}}", i - 1).repeat(calls);
                t.push_str(&format!(r#"{{{{#*inline "p{i}"}}}}{call}{{{{/inline}}}}"#));
            }
            t + &format!("{{{{> p{n}}}}}")
        };
        let err = render("t", &chain(3000, 1), &data, false).unwrap_err();
        assert!(err.0.contains("more than 8 deep"), "{err}");
        assert_eq!(render("t", &chain(7, 1), &data, false).unwrap(), "x");
        // Fan-out without recursion: 4^7 expansions.
        let err = render("t", &chain(7, 4), &data, false).unwrap_err();
        assert!(err.0.contains("expanded more than"), "{err}");
        assert_eq!(render("t", &chain(5, 4), &data, false).unwrap().len(), 1024);
    }

    /// Nested loops multiply: 4^14 iterations would take hours. They stop with an error, and the
    /// output is bounded too.
    #[test]
    fn runaway_loops_and_output_are_cut_short() {
        let data = json!({ "members": [1, 2, 3, 4], "big": "y".repeat(1 << 20) });
        let text = deep("{{#each @root.members}}", "x", "{{/each}}", 14);
        let err = render("t", &text, &data, false).unwrap_err();
        assert!(err.0.contains("loop iterations"), "{err}");
        let text = deep("{{#each @root.members}}", "{{@root.big}}", "{{/each}}", 4);
        let err = render("t", &text, &data, false).unwrap_err();
        assert!(err.0.contains("larger than 64 MiB"), "{err}");
        let ok = deep("{{#each @root.members}}", "x", "{{/each}}", 3);
        assert_eq!(render("t", &ok, &data, false).unwrap().len(), 64);
    }

    #[test]
    fn helpers_filter_sort_pluck_join_default_and_eq() {
        let data = json!({ "members": [
            { "name": "b", "status": "alive", "port": 10, "tags": { "role": "web", "zone": "eu" } },
            { "name": "a", "status": "failed", "port": 9, "tags": { "role": "web" } },
            { "name": "c", "status": "alive", "port": 2, "tags": { "role": "db" } },
        ]});
        let r = |t: &str| render("t", t, &data, true).unwrap();
        assert_eq!(r(r#"{{join (pluck (filter members status="alive") "name") ","}}"#), "b,c");
        assert_eq!(r(r#"{{join (pluck (filter members tag="role=web") "name") " "}}"#), "b a");
        assert_eq!(r(r#"{{join (pluck (filter members tag="zone") "name")}}"#), "b");
        assert_eq!(r(r#"{{join (pluck (sort members "name") "name") ""}}"#), "abc");
        assert_eq!(r(r#"{{join (pluck (sort members "port") "port") " "}}"#), "2 9 10");
        assert_eq!(r(r#"{{#each members}}{{default tags.zone "none"}} {{/each}}"#), "eu none none ");
        assert_eq!(r(r#"{{#each members}}{{#if (eq status "alive")}}{{name}}{{/if}}{{/each}}"#), "bc");
        assert_eq!(r("{{len members}}"), "3");
    }

    #[test]
    fn haproxy_name_keeps_what_haproxy_accepts_and_replaces_the_rest() {
        let data = json!({ "a": "web-1.eu_2:x", "b": "web 1#x\"$y;é", "n": 3000 });
        let r = |t: &str| render("t", t, &data, true).unwrap();
        assert_eq!(r("{{haproxy_name a}}"), "web-1.eu_2:x");
        assert_eq!(r("{{haproxy_name b}}"), "web_1_x__y__");
        assert_eq!(r("{{haproxy_name n}}"), "3000");
        assert_eq!(
            r("{{#with (haproxy_name b)}}[{{this}}]{{/with}}"),
            "[web_1_x__y__]",
            "a subexpression too"
        );
        assert!(render("t", "{{haproxy_name}}", &data, false).is_err(), "a parameter is required");
    }

    #[test]
    fn nginx_string_quotes_and_leaves_nothing_nginx_would_expand() {
        let data = json!({ "s": "a \"b\" \\ $host; } {", "c": "x\ny\tz\u{7f}" });
        let r = |t: &str| render("t", t, &data, true).unwrap();
        assert_eq!(r("{{nginx_string s}}"), r#""a \"b\" \\ _host; } {""#);
        assert_eq!(r("{{nginx_string c}}"), r#""x_y_z_""#);
        assert_eq!(r(r#"{{nginx_string "plain"}}"#), r#""plain""#);
    }

    #[test]
    fn json_writes_any_value_as_one_line_of_json() {
        let data = json!({ "s": "a\"b\n", "o": { "z": [1, "x"], "a": null }, "n": 3000 });
        let r = |t: &str| render("t", t, &data, false).unwrap();
        assert_eq!(r("{{json s}}"), r#""a\"b\n""#);
        assert_eq!(r("{{json o}}"), r#"{"z":[1,"x"],"a":null}"#, "key order kept");
        assert_eq!(r("{{json n}}"), "3000");
        assert_eq!(r("{{json missing}}"), "null");
        let back: Value = serde_json::from_str(&r("{{json this}}")).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn shell_quote_makes_one_word_that_sh_reads_back_unchanged() {
        let hostile = "it's; touch /tmp/x; $(id) `id` \"q\" \\";
        let data = json!({ "s": hostile, "n": 7 });
        let r = |t: &str| render("t", t, &data, true).unwrap();
        assert_eq!(r("{{shell_quote n}}"), "'7'");
        let script = format!("printf %s {}", r("{{shell_quote s}}"));
        let out = std::process::Command::new("/bin/sh").args(["-c", &script]).output().unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), hostile);
    }
}
