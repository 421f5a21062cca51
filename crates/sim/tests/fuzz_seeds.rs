//! Writes real traffic from a simulated cluster as seed inputs for the fuzzers.
//!
//! `cargo test -p shoal-sim --test fuzz_seeds -- --ignored` refreshes `fuzz/seeds/`.

use std::time::{Duration, Instant};

use shoal_gossip::{Config, Gossip, Output, Profile, QueryParams, Tags};

#[test]
#[ignore = "writes fuzz seeds into the source tree; run by hand"]
fn write_fuzz_seeds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    let now = Instant::now();
    let addr = |i: u8| format!("10.0.0.{i}:7946").parse().unwrap();
    let mut a = Gossip::new(Config::new("a", addr(1), Profile::Lan), now, 1).unwrap();
    let mut cfg = Config::new("b", addr(2), Profile::Lan);
    cfg.tags = Tags::from([("role".into(), "backend".into())]);
    let mut b = Gossip::new(cfg, now, 2).unwrap();
    b.join(now, &[addr(1)], false);
    let (mut packets, mut streams) = (Vec::new(), Vec::new());
    let mut t = now;
    for step in 0..40 {
        t += Duration::from_millis(250);
        if step == 10 {
            b.user_event(t, "deploy", b"v1", true).unwrap();
            a.query(t, QueryParams { name: "q".into(), request_ack: true, ..Default::default() }).unwrap();
        }
        for (from, to) in [(0, 1), (1, 0)] {
            let (src, dst) = if from == 0 { (&mut a, &mut b) } else { (&mut b, &mut a) };
            src.handle_timeout(t);
            let mut outs = Vec::new();
            while let Some(o) = src.poll_output() {
                outs.push(o);
            }
            for o in outs {
                match o {
                    Output::Packet { data, .. } => {
                        dst.handle_packet(t, addr(from + 1), &data);
                        packets.push(data);
                    }
                    Output::Stream(req) => {
                        let reply = dst.handle_stream(t, addr(from + 1), &req.data);
                        streams.push(req.data.clone());
                        if let Some(r) = &reply {
                            streams.push(r.clone());
                        }
                        src.handle_stream_reply(t, req.id, reply.ok_or_else(|| "none".to_string()));
                    }
                    Output::Event(_) => {}
                }
            }
            let _ = to;
        }
    }
    packets.push(shoal_gossip::envelope::compress(&packets[0]));
    for (dir, items) in [("gossip_packet", &packets), ("gossip_stream", &streams)] {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        for (i, p) in items.iter().enumerate().take(64) {
            // The packet target reads its first byte as a mode (0: plaintext, no label).
            let mut bytes = if dir == "gossip_packet" { vec![0u8] } else { vec![] };
            bytes.extend_from_slice(p);
            std::fs::write(d.join(format!("seed-{i:03}")), bytes).unwrap();
        }
    }
}
