//! Fuzzes the gossip packet decoder: any datagram, with and without encryption and labels.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use shoal_gossip::{Config, Gossip, Profile};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let (mode, data) = data.split_first().map_or((0, data), |(m, d)| (*m, d));
    let mut cfg = Config::new("fuzz", "10.0.0.1:7946".parse().unwrap(), Profile::Lan);
    if mode & 1 == 1 {
        cfg.keys = vec![vec![7u8; 16]];
    }
    if mode & 2 == 2 {
        cfg.label = Some("lab".into());
    }
    let mut g = Gossip::new(cfg, now, 1).unwrap();
    g.handle_packet(now, "10.0.0.2:7946".parse().unwrap(), data);
    g.handle_timeout(now + Duration::from_secs(5));
    while g.poll_output().is_some() {}
});
