//! Fuzzes the balancer's TOML configuration: parsing and validation of any text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_balancer::BalancerConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cfg) = BalancerConfig::from_toml(text) {
        // What parsed and validated once stays valid.
        cfg.validate().expect("a configuration from_toml accepted validates again");
    }
});
