//! Convergence and traffic at scale, next to Serf's published model.
//!
//! * full protocol (100 and 1 000 members): every member is a real
//!   `shoal_gossip::Gossip` in the simulator (0.5 ms ± 0.2 ms latency). After the
//!   cluster has converged, one member fires a user event and we time how long
//!   until 99.99 % of members have delivered it; steady-state traffic is the
//!   bytes all members sent over 20 simulated seconds (or one push/pull period), with
//!   `--loss` applied; `failed` events about running members in that window are false
//!   failures; then one member crashes and we time until every other sees it `failed`.
//! * dissemination model (also 10 000 members, where n² member tables do not fit
//!   in memory): each informed member piggy-backs the news to `gossip_nodes`
//!   random members every gossip interval until it has sent it
//!   `retransmit_mult * ceil(log10(n + 1))` times — memberlist's rule, the same
//!   kind of model as Serf's convergence simulator. It is also run at 100 and
//!   1 000 so it can be checked against the full protocol.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_gossip::broadcast::retransmit_limit;
use shoal_gossip::{Event, MemberEventKind, MemberStatus, Profile};
use shoal_sim::Sim;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cluster sizes for the full-protocol simulation.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    full: Vec<usize>,
    /// Cluster sizes for the dissemination model.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    model: Vec<usize>,
    /// Profile.
    #[arg(long, default_value_t = Profile::Lan)]
    profile: Profile,
    /// Packet loss for both (0.0–1.0).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Model trials per size (median reported).
    #[arg(long, default_value_t = 20)]
    trials: usize,
}

/// How many members 99.99 % of `n` is.
fn target(n: usize) -> usize {
    ((n as f64) * 0.9999).ceil() as usize
}

struct Full {
    converge: Duration,
    /// Everything sent, per member per second, over one push/pull period.
    bytes_per_sec: f64,
    /// Of which UDP (probes, acks, gossip).
    udp_per_sec: f64,
    /// Bytes one push/pull carries per member listed (both directions), for extrapolation.
    push_pull_bytes_per_entry: f64,
    /// `failed` events about running members, all observers together, during the window.
    false_failures: usize,
    /// A crash until every survivor sees the member `failed`.
    detection: Option<Duration>,
}

/// memberlist's push/pull period for `n` members (scaled up beyond 32).
fn push_pull_period(profile: Profile, n: usize) -> Duration {
    let base = profile.timing().push_pull_interval;
    if n <= 32 {
        return base;
    }
    base.mul_f64(((n as f64).log2() - 32f64.log2()).ceil() + 1.0)
}

fn full(n: usize, profile: Profile, loss: f64, seed: u64) -> Option<Full> {
    let mut sim = Sim::new(seed);
    sim.profile = profile;
    for i in 0..n {
        sim.add_node(&format!("node-{i}"));
    }
    for i in 1..n {
        sim.join(i, if i < 5 { 0 } else { i % 5 });
        if i % 100 == 0 {
            sim.run_for(Duration::from_millis(100));
        }
    }
    sim.run_until(Duration::from_secs(1), Duration::from_secs(300), Sim::converged)?;
    // Let join-time broadcasts drain so steady state is steady.
    sim.run_for(Duration::from_secs(60));
    sim.loss = loss;
    for i in 0..n {
        sim.record(i);
    }
    let (bytes0, stream0, pp0) = (sim.total_bytes(), sim.total_stream_bytes(), sim.total_push_pulls());
    // One full push/pull period, so every member's anti-entropy exchange is counted once.
    let window = push_pull_period(profile, n).max(Duration::from_secs(20));
    sim.run_for(window);
    let per = |b: u64| b as f64 / n as f64 / window.as_secs_f64();
    let (bytes, stream, pps) =
        (sim.total_bytes() - bytes0, sim.total_stream_bytes() - stream0, sim.total_push_pulls() - pp0);
    let bytes_per_sec = per(bytes);
    let udp_per_sec = per(bytes - stream);
    let push_pull_bytes_per_entry = if pps == 0 { 0.0 } else { stream as f64 / pps as f64 / n as f64 };

    // Every `failed` event so far is false: nobody has crashed yet.
    let failed_events = |s: &Sim| {
        (0..s.len())
            .map(|i| {
                s.node(i)
                    .events
                    .iter()
                    .filter(|(_, e)| matches!(e, Event::Member { kind: MemberEventKind::Failed, .. }))
                    .count()
            })
            .sum::<usize>()
    };
    let false_failures = failed_events(&sim);
    sim.with(n / 2, |g, now| g.user_event(now, "news", b"x", false)).ok()?;
    let delivered = |s: &Sim| {
        (0..s.len())
            .filter(|&i| {
                s.node(i).events.iter().any(|(_, e)| matches!(e, Event::User(u) if u.name == "news"))
            })
            .count()
    };
    let converge =
        sim.run_until(Duration::from_millis(10), Duration::from_secs(60), |s| delivered(s) >= target(n))?;
    let victim = n / 3;
    let name = format!("node-{victim}");
    sim.crash(victim);
    let detection = sim.run_until(Duration::from_millis(50), Duration::from_secs(120), |s| {
        s.count_seeing(&name, MemberStatus::Failed) >= n - 1
    });
    Some(Full { converge, bytes_per_sec, udp_per_sec, push_pull_bytes_per_entry, false_failures, detection })
}

/// The dissemination model; returns the time until 99.99 % are informed.
fn model(n: usize, profile: Profile, loss: f64, rng: &mut StdRng) -> Option<Duration> {
    let t = profile.timing();
    let interval = t.gossip_interval.as_secs_f64();
    let limit = retransmit_limit(t.retransmit_mult, n);
    let latency = 0.0005;
    // Each member's gossip tick has its own phase, as in memberlist.
    let phase: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * interval).collect();
    let mut informed_at: Vec<Option<f64>> = vec![None; n];
    let mut sends_left = vec![0u32; n];
    informed_at[0] = Some(0.0);
    sends_left[0] = limit;
    let mut count = 1;
    let goal = target(n);
    let mut now = 0.0;
    let step = interval / 20.0;
    while count < goal && now < 120.0 {
        let next = now + step;
        for i in 0..n {
            let Some(since) = informed_at[i] else { continue };
            if sends_left[i] == 0 {
                continue;
            }
            // Ticks of member i in (now, next].
            let first_tick = ((now - phase[i]) / interval).floor() + 1.0;
            let mut tick = phase[i] + first_tick * interval;
            while tick <= next && sends_left[i] > 0 {
                if tick >= since {
                    for _ in 0..t.gossip_nodes {
                        if sends_left[i] == 0 {
                            break;
                        }
                        sends_left[i] -= 1;
                        let j = rng.random_range(0..n);
                        if j == i || rng.random::<f64>() < loss {
                            continue;
                        }
                        if informed_at[j].is_none() {
                            informed_at[j] = Some(tick + latency);
                            sends_left[j] = limit;
                            count += 1;
                        }
                    }
                }
                tick += interval;
            }
        }
        now = next;
    }
    (count >= goal).then(|| {
        let mut times: Vec<f64> = informed_at.iter().flatten().copied().collect();
        times.sort_by(f64::total_cmp);
        Duration::from_secs_f64(times[goal - 1])
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let t = args.profile.timing();
    println!(
        "scale ({} profile: gossip every {} ms to {} members, retransmit ×{}·ceil(log10(n+1)); loss {:.0} %)",
        args.profile,
        t.gossip_interval.as_millis(),
        t.gossip_nodes,
        t.retransmit_mult,
        args.loss * 100.0
    );
    println!(
        "{:>8}  {:>26}  {:>26}  {:>20}",
        "members",
        "full protocol: 99.99 % in",
        "model: 99.99 % in (p50)",
        "sent per member (one push/pull period)"
    );
    let mut rng = StdRng::seed_from_u64(11);
    let sizes: Vec<usize> = {
        let mut s: Vec<usize> = args.full.iter().chain(&args.model).copied().collect();
        s.sort_unstable();
        s.dedup();
        s
    };
    let mut last_full: Option<Full> = None;
    let mut detection = Vec::new();
    for n in sizes {
        let full_result = args.full.contains(&n).then(|| full(n, args.profile, args.loss, 7)).flatten();
        let model_p50 = args.model.contains(&n).then(|| {
            let mut v: Vec<Duration> =
                (0..args.trials).filter_map(|_| model(n, args.profile, args.loss, &mut rng)).collect();
            v.sort();
            v.get(v.len() / 2).copied()
        });
        let traffic = match (&full_result, &last_full) {
            (Some(f), _) => format!(
                "{:.0} B/s ({:.1} kbit/s; UDP {:.0})",
                f.bytes_per_sec,
                f.bytes_per_sec * 8.0 / 1000.0,
                f.udp_per_sec
            ),
            // Beyond what fits in memory: UDP per member does not grow with n; push/pull
            // carries every member once per (scaled) period.
            (None, Some(f)) => {
                let pp =
                    f.push_pull_bytes_per_entry * n as f64 / push_pull_period(args.profile, n).as_secs_f64();
                let total = f.udp_per_sec + pp;
                format!("~{total:.0} B/s ({:.1} kbit/s), extrapolated", total * 8.0 / 1000.0)
            }
            (None, None) => "-".into(),
        };
        println!(
            "{:>8}  {:>26}  {:>26}  {:>20}",
            n,
            full_result.as_ref().map_or("-".into(), |f| format!("{:.2} s", f.converge.as_secs_f64())),
            model_p50.flatten().map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
            traffic,
        );
        if let Some(f) = &full_result {
            let window = push_pull_period(args.profile, n).max(Duration::from_secs(20));
            detection.push(format!(
                "{n:>8}  false failures in {:.0} s at {:.0} % loss: {} (events, all observers)   crash -> failed at every member: {}",
                window.as_secs_f64(),
                args.loss * 100.0,
                f.false_failures,
                f.detection.map_or("not within 120 s".into(), |d| format!("{:.2} s", d.as_secs_f64()))
            ));
        }
        if full_result.is_some() {
            last_full = full_result;
        }
    }
    println!();
    for line in detection {
        println!("{line}");
    }
    println!();
    println!(
        "Serf's published convergence model: about 2.2 s to 99.99 % for 1 000 members at a 200 ms gossip"
    );
    println!(
        "interval with fan-out 3, about 330 kbit/s per member (figures quoted from Serf's documentation)."
    );
    Ok(())
}
