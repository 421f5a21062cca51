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

use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason, ScopedJson,
};
use serde_json::Value;

/// A template that did not compile or render, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// Compiles and renders one template text.
pub fn render(name: &str, text: &str, data: &Value, strict: bool) -> Result<String, TemplateError> {
    let mut hb = Handlebars::new();
    hb.register_escape_fn(handlebars::no_escape);
    hb.set_strict_mode(strict);
    for (name, f) in [
        ("filter", filter as fn(&Helper) -> _),
        ("sort", sort),
        ("pluck", pluck),
        ("join", join),
        ("default", default),
    ] {
        hb.register_helper(name, Box::new(ValueHelper(f)));
    }
    hb.register_template_string(name, text).map_err(|e| TemplateError(e.to_string()))?;
    hb.render(name, data).map_err(|e| TemplateError(e.to_string()))
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
}
