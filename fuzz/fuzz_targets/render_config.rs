//! Fuzzes `shoal render`'s configuration: the TOML file (parsing and validation) and the
//! `SOURCE:DESTINATION` template flags.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_render::{RenderConfig, TemplateSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cfg) = RenderConfig::from_toml(text) {
        cfg.validate().expect("a configuration from_toml accepted validates again");
        let _ = cfg.selection();
    }
    for line in text.lines() {
        if let Ok(spec) = TemplateSpec::parse(line) {
            assert!(!spec.source.as_os_str().is_empty() && !spec.destination.as_os_str().is_empty());
        }
    }
});
