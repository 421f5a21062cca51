//! Fuzzes TCP stream framing and the stream message handler (push/pull, ping, user messages).
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use shoal_gossip::{Config, Frame, Gossip, Profile, stream_frame_len};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let cfg = Config::new("fuzz", "10.0.0.1:7946".parse().unwrap(), Profile::Lan);
    let mut g = Gossip::new(cfg, now, 1).unwrap();
    if let Ok(Frame::Complete(n)) = stream_frame_len(data, 1 << 20) {
        assert!(n <= data.len());
        let _ = g.handle_stream(now, "10.0.0.2:7946".parse().unwrap(), &data[..n]);
    }
    // Whatever the framing says, the handler must survive the raw bytes too.
    let _ = g.handle_stream(now, "10.0.0.2:7946".parse().unwrap(), data);
    while g.poll_output().is_some() {}
});
