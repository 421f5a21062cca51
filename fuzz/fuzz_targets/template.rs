//! Fuzzes Handlebars templates as `shoal render` compiles and renders them, over a fixed,
//! realistic data model (`addresses`, `backends`, `members`, `local`), lenient and strict.
#![no_main]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shoal_render::model::{Cluster, MemberView, Selection, model};
use shoal_render::template::render;

fn data() -> &'static serde_json::Value {
    static DATA: OnceLock<serde_json::Value> = OnceLock::new();
    DATA.get_or_init(|| {
        let member = |name: &str, ip: &str, status: &str, tags: &[(&str, &str)]| MemberView {
            name: name.into(),
            addr: SocketAddr::new(ip.parse().unwrap(), 7946),
            status: status.into(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        };
        let cluster = Cluster {
            local: Some("ha".into()),
            members: vec![
                member("ha", "172.18.0.2", "alive", &[("role", "balancer")]),
                member("web-1", "172.18.0.3", "alive", &[("role", "backend"), ("zone", "eu")]),
                member(
                    "web-2",
                    "172.18.0.4",
                    "alive",
                    &[("role", "backend"), ("port", "8080"), ("weight", "3")],
                ),
                member("web-3", "172.18.0.5", "failed", &[("role", "backend")]),
            ],
        };
        model(&cluster, &Selection::default())
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let lenient = render("fuzz.hbs", text, self::data(), false);
    let strict = render("fuzz.hbs", text, self::data(), true);
    // Strict mode only adds failures: what it renders, lenient mode renders the same.
    if let Ok(out) = strict {
        assert_eq!(lenient, Ok(out), "strict and lenient renders differ");
    }
});
