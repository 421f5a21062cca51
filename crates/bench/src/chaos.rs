//! `chaos`: the Docker lab — two balancers and a changing set of web containers, all
//! locked down and with encrypted gossip — under steady load while web containers are
//! stopped, killed, paused, disconnected, added and removed at random (seeded), the
//! second balancer is killed and brought back, and the gossip key is rotated. Prints requests
//! sent, failures by method and cause, the worst time a dead server stayed in the
//! pool, how long a restarted balancer took to catch up, and the RSS and descriptor
//! slopes of every long-lived process. Everything it creates is removed by id.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};

use crate::procs::{Method, servers_up};
use crate::soak::Soak;

/// Flags of `shoal-bench chaos`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Path of the shoal binary (the image is built from the same tree).
    #[arg(long)]
    pub shoal: String,
    /// How long to inflict chaos, in seconds.
    #[arg(long, default_value_t = 600)]
    pub duration: u64,
    /// Seed of the random choices (the same seed, the same sequence of actions).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The image to run.
    #[arg(long, default_value = "shoal:dev")]
    pub image: String,
    /// Exit non-zero when a target is missed (CI runs it this way).
    #[arg(long)]
    pub check: bool,
}

/// How the README runs the containers: non-root image, read-only root, no capabilities.
const LOCKED_DOWN: [&str; 9] = [
    "--read-only",
    "--tmpfs",
    "/run/shoal:uid=65534,gid=65534",
    "-v",
    "/var/lib/shoal",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
];

/// The two balancers: container name, and the name the other one joins.
const BALANCERS: [(&str, &str); 2] = [("ha", "ha2"), ("ha2", "ha")];

/// Longest a dead (killed, paused, cut off) server may stay UP before the run fails.
const DEAD_IN_POOL_LIMIT: Duration = Duration::from_secs(5);

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker").args(args).output().context("cannot run docker")?;
    if !out.status.success() {
        bail!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn new_key(rng: &mut StdRng) -> String {
    let mut key = [0u8; 32];
    rng.fill_bytes(&mut key);
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// A balancer's published ports.
#[derive(Debug, Clone, Copy)]
struct Published {
    front: SocketAddr,
    stats: SocketAddr,
}

/// Containers and the network of the run, removed (with their volumes) on drop.
struct Lab {
    prefix: String,
    network: String,
    image: String,
    /// (short name, container id) of everything started; shared with the soak sampler.
    ids: Arc<Mutex<Vec<(String, String)>>>,
    balancers: [Published; 2],
    /// The gossip key new containers are given (the primary after each rotation).
    key: Mutex<String>,
}

impl Lab {
    fn run(&self, short: &str, extra: &[&str]) -> anyhow::Result<()> {
        let name = self.name(short);
        let key = format!("SHOAL_ENCRYPT={}", self.key.lock().unwrap_or_else(|e| e.into_inner()));
        let mut args = vec!["run", "-d", "--name", &name, "--hostname", short, "--network", &self.network];
        args.extend(LOCKED_DOWN);
        args.extend(extra);
        args.extend(["-e", "SHOAL_PROFILE=fast", "-e", "SHOAL_ACCESS_LOG=off", "-e", &key, &self.image]);
        let id = docker(&args)?;
        self.ids.lock().unwrap_or_else(|e| e.into_inner()).push((short.to_string(), id));
        Ok(())
    }

    /// Balancer `i`: joins the other one, keeps its keyring (rotations) in its volume.
    fn start_balancer(&self, i: usize) -> anyhow::Result<()> {
        let (short, other) = BALANCERS[i];
        let p = self.balancers[i];
        let (front, stats) =
            (format!("127.0.0.1:{}:80", p.front.port()), format!("127.0.0.1:{}:1936", p.stats.port()));
        let join = format!("SHOAL_JOIN={other}");
        self.run(
            short,
            &[
                "--network-alias",
                short,
                "-e",
                "ROLE=balancer",
                "-e",
                &join,
                "-e",
                "SHOAL_KEYRING_FILE=/var/lib/shoal/keyring.json",
                "-p",
                &front,
                "-p",
                &stats,
            ],
        )
    }

    fn start_web(&self, short: &str) -> anyhow::Result<()> {
        self.run(short, &["-e", "JOIN=ha,ha2"])
    }

    fn name(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// Web servers balancer `i` shows UP.
    fn up(&self, i: usize) -> Vec<String> {
        servers_up(self.balancers[i].stats, "backend")
    }

    /// Waits until no balancer shows `target` UP (bounded); how long that took.
    fn wait_out_of_pools(&self, target: &str, since: Instant) -> Duration {
        while (0..2).any(|i| self.up(i).iter().any(|s| s == target))
            && since.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        since.elapsed()
    }

    /// `shoal keys ARGS` inside a running balancer, retried while a member does not answer
    /// (one that just died may not be known as failed yet). The attempts it took.
    fn keys(&self, args: &[&str]) -> anyhow::Result<usize> {
        let mut last = String::new();
        for attempt in 1..=10 {
            for (short, _) in BALANCERS {
                let mut cmd = vec!["exec", "-e", "SHOAL_LOG_LEVEL=warn"];
                let name = self.name(short);
                cmd.extend([name.as_str(), "shoal", "keys"]);
                cmd.extend(args);
                match docker(&cmd) {
                    Ok(_) => return Ok(attempt),
                    Err(e) => last = e.to_string(),
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        bail!("shoal keys {}: {last}", args.join(" "))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, id) in self.ids.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
        }
        let _ = Command::new("docker").args(["network", "rm", &self.network]).output();
    }
}

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    method: Method,
    /// Which balancer it went through.
    balancer: usize,
    failure: Option<String>,
}

fn request(front: SocketAddr, method: Method) -> Option<String> {
    let attempt = || -> Result<u16, String> {
        let mut s = TcpStream::connect_timeout(&front, Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(15))).ok();
        let req = match method {
            Method::Get => "GET / HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
            Method::Head => "HEAD / HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
            Method::Post => {
                "POST /delay HTTP/1.1\r\nHost: c\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"delay\":0}"
            }
        };
        s.write_all(req.as_bytes()).map_err(|e| format!("send: {e}"))?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).map_err(|e| format!("read: {e}"))?;
        raw.split(' ').nth(1).and_then(|x| x.parse().ok()).ok_or_else(|| "no answer".to_string())
    };
    match attempt() {
        Ok(status) if status < 500 => None,
        Ok(status) => Some(format!("status {status}")),
        Err(e) => Some(e),
    }
}

/// What was done, for the windows in which failures are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Stop,
    Kill,
    Pause,
    Disconnect,
    ScaleUp,
    ScaleDown,
    /// `docker kill` of a balancer, `docker start` 2 s later.
    KillBalancer(usize),
    /// A new gossip key installed, made primary, the old one removed, under load.
    RotateKey,
}

/// One action and the window in which failures are blamed on it.
struct Done {
    from: Instant,
    to: Instant,
    action: Action,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let prefix = format!("shoal-chaos-{}", std::process::id());
    let network = docker(&["network", "create", &format!("{prefix}-net")])?;
    let published = || -> anyhow::Result<Published> {
        Ok(Published {
            front: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            stats: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        })
    };
    let lab = Lab {
        prefix,
        network,
        image: args.image.clone(),
        ids: Arc::new(Mutex::new(Vec::new())),
        balancers: [published()?, published()?],
        key: Mutex::new(new_key(&mut rng)),
    };
    lab.start_balancer(0)?;
    lab.start_balancer(1)?;
    // The soak's subjects: `ha` and the web container `s0` live through the whole run (chaos
    // kills ha2 and the other web containers), so their processes' RSS and descriptors are
    // one series each from start to end.
    lab.start_web("s0")?;
    let mut next = 1;
    let mut webs: Vec<String> = Vec::new();
    for _ in 0..4 {
        let short = format!("w{next}");
        next += 1;
        lab.start_web(&short)?;
        webs.push(short);
    }
    let start = Instant::now();
    while (0..2).any(|i| lab.up(i).len() < 5) {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the lab did not come up: {:?} / {:?}", lab.up(0), lab.up(1));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "== lab up: ha, ha2, s0 + {} web containers, encrypted gossip; chaos for {} s (seed {})",
        webs.len(),
        args.duration,
        args.seed
    );

    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for c in 0..2 {
        let (samples, stop, front) = (samples.clone(), stop.clone(), lab.balancers[c].front);
        threads.push(std::thread::spawn(move || {
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let method = Method::ALL[i % 3];
                i += 1;
                let failure = request(front, method);
                let sample = Sample { at: Instant::now(), method, balancer: c, failure };
                samples.lock().unwrap_or_else(|e| e.into_inner()).push(sample);
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }
    // The soak sampler: every Shoal process of every container, every 2 s.
    let soak = Arc::new(Mutex::new(Soak::default()));
    {
        let (soak, stop, ids) = (soak.clone(), stop.clone(), lab.ids.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ids = ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for (short, id) in ids {
                    soak.lock().unwrap_or_else(|e| e.into_inner()).sample(&short, &id);
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        }));
    }

    let mut done: Vec<Done> = Vec::new();
    let mut worst_dead_in_pool = Duration::ZERO;
    let mut catch_up: Vec<Duration> = Vec::new();
    let mut rotations: Vec<(Duration, usize)> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(rng.random_range(1500..4000)));
        // Every sixth action kills ha2 (ha stays up: it is the soak's balancer); every sixth,
        // three later, rotates the key; the rest act on web containers at random.
        let n = done.len();
        let action = match (n % 6, rng.random_range(0..6)) {
            (2, _) => Action::KillBalancer(1),
            (5, _) => Action::RotateKey,
            (_, 0) => Action::Stop,
            (_, 1) => Action::Kill,
            (_, 3) => Action::Disconnect,
            (_, 4) if webs.len() < 6 => Action::ScaleUp,
            (_, 5) if webs.len() > 2 => Action::ScaleDown,
            _ => Action::Pause,
        };
        let t = Instant::now();
        let target = webs[rng.random_range(0..webs.len())].clone();
        let full = lab.name(&target);
        let mut subject = target.clone();
        match action {
            Action::Stop | Action::ScaleDown => {
                docker(&["stop", &full])?;
                webs.retain(|w| *w != target);
            }
            Action::Kill => {
                docker(&["kill", &full])?;
                webs.retain(|w| *w != target);
                // Until it is out of the pools, a dead server is in them.
                worst_dead_in_pool = worst_dead_in_pool.max(lab.wait_out_of_pools(&target, t));
            }
            Action::Pause => {
                docker(&["pause", &full])?;
                worst_dead_in_pool = worst_dead_in_pool.max(lab.wait_out_of_pools(&target, t));
                std::thread::sleep(Duration::from_secs(2));
                docker(&["unpause", &full])?;
            }
            Action::Disconnect => {
                docker(&["network", "disconnect", &lab.network, &full])?;
                worst_dead_in_pool = worst_dead_in_pool.max(lab.wait_out_of_pools(&target, t));
                std::thread::sleep(Duration::from_secs(2));
                docker(&["network", "connect", &lab.network, &full])?;
            }
            Action::ScaleUp => {
                subject = format!("w{next}");
                next += 1;
                lab.start_web(&subject)?;
                webs.push(subject.clone());
            }
            Action::KillBalancer(i) => {
                let (short, _) = BALANCERS[i];
                subject = short.to_string();
                docker(&["kill", &lab.name(short)])?;
                std::thread::sleep(Duration::from_secs(2));
                docker(&["start", &lab.name(short)])?;
                // Caught up: it shows the same servers UP as the balancer that stayed.
                let restarted = Instant::now();
                let caught_up = loop {
                    let (mine, theirs) = (lab.up(i), lab.up(1 - i));
                    if !mine.is_empty() && mine == theirs {
                        break Some(restarted.elapsed());
                    }
                    if restarted.elapsed() > Duration::from_secs(60) {
                        break None;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                match caught_up {
                    Some(d) => catch_up.push(d),
                    None => problems.push(format!("{short} did not catch up within 60 s of its restart")),
                }
            }
            Action::RotateKey => {
                let old = lab.key.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let new = new_key(&mut rng);
                subject = "gossip key".into();
                let steps = lab
                    .keys(&["--install", &new])
                    .and_then(|a| Ok(a + lab.keys(&["--use", &new])?))
                    .and_then(|a| Ok(a + lab.keys(&["--remove", &old])?));
                match steps {
                    Ok(attempts) => {
                        *lab.key.lock().unwrap_or_else(|e| e.into_inner()) = new;
                        rotations.push((t.elapsed(), attempts));
                    }
                    Err(e) => problems.push(format!("key rotation failed: {e}")),
                }
            }
        }
        // Keep at least two web containers: replace what went away.
        while webs.len() < 2 {
            let short = format!("w{next}");
            next += 1;
            lab.start_web(&short)?;
            webs.push(short);
        }
        eprintln!(
            "  {:>6.1}s {action:?} {subject} ({} web containers)",
            start.elapsed().as_secs_f64(),
            webs.len()
        );
        done.push(Done { from: t, to: Instant::now() + Duration::from_secs(2), action });
    }
    // Both balancers end up agreeing on the pool.
    let settle = Instant::now();
    let agreed = loop {
        let (a, b) = (lab.up(0), lab.up(1));
        if a == b && a.len() == webs.len() + 1 {
            break true;
        }
        if settle.elapsed() > Duration::from_secs(30) {
            problems.push(format!(
                "the balancers disagree at the end: ha {a:?}, ha2 {b:?}, web containers {webs:?}"
            ));
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }

    let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // A client talking to a killed balancer fails until it is back: that is the balancer's
    // outage, not the cluster's, and is reported apart.
    let through_killed = |s: &Sample| {
        done.iter().any(|d| d.action == Action::KillBalancer(s.balancer) && s.at >= d.from && s.at <= d.to)
    };
    let in_window = |s: &Sample, kinds: &[Action]| {
        done.iter().any(|d| kinds.contains(&d.action) && s.at >= d.from && s.at <= d.to)
    };
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.failure.is_some() && !through_killed(s)).collect();
    let killed_balancer_failures =
        samples.iter().filter(|s| s.failure.is_some() && through_killed(s)).count();
    let mut by_cause: HashMap<String, usize> = HashMap::new();
    for s in &failed {
        let cause = s.failure.clone().unwrap_or_default();
        let cause = cause.split(':').next().unwrap_or("").to_string();
        *by_cause.entry(format!("{:?} {cause}", s.method)).or_default() += 1;
    }
    let graceful_failed = failed.iter().filter(|s| in_window(s, &[Action::Stop, Action::ScaleDown])).count();
    let failed_gets = failed.iter().filter(|s| s.method == Method::Get).count();
    let survivor_failed = samples
        .iter()
        .filter(|s| {
            s.failure.is_some()
                && done.iter().any(|d| {
                    d.action == Action::KillBalancer(1 - s.balancer) && s.at >= d.from && s.at <= d.to
                })
        })
        .count();
    let count = |f: &dyn Fn(Action) -> bool| done.iter().filter(|d| f(d.action)).count();

    println!();
    println!(
        "chaos: {} s, seed {}, {} actions; 2 balancers, 2 clients (one per balancer), GET/HEAD/POST /delay in turn, a new connection each",
        args.duration,
        args.seed,
        done.len()
    );
    println!(
        "actions: stop {}, kill {}, pause {}, disconnect {}, scale up {}, scale down {}, balancer kills {}, key rotations {}",
        count(&|a| a == Action::Stop),
        count(&|a| a == Action::Kill),
        count(&|a| a == Action::Pause),
        count(&|a| a == Action::Disconnect),
        count(&|a| a == Action::ScaleUp),
        count(&|a| a == Action::ScaleDown),
        count(&|a| matches!(a, Action::KillBalancer(_))),
        count(&|a| a == Action::RotateKey),
    );
    println!("requests sent                           {}", samples.len());
    println!("failed, any method                      {}", failed.len());
    println!("failed GETs                             {failed_gets}");
    println!("failed during graceful stops/scale-down {graceful_failed}");
    println!("failed through the surviving balancer   {survivor_failed}");
    println!("through a killed balancer (its outage)  {killed_balancer_failures}");
    println!("worst time a dead server stayed UP      {} ms", worst_dead_in_pool.as_millis());
    let ms = |d: &Duration| format!("{} ms", d.as_millis());
    println!(
        "restarted balancer caught up after      {}",
        catch_up.iter().map(ms).collect::<Vec<_>>().join(", ")
    );
    println!(
        "key rotations (install, use, remove)    {}",
        rotations.iter().map(|(d, a)| format!("{} ({a} calls)", ms(d))).collect::<Vec<_>>().join(", ")
    );
    println!("both balancers agree at the end         {agreed}");
    let mut causes: Vec<_> = by_cause.into_iter().collect();
    causes.sort();
    for (cause, n) in causes {
        println!("  {cause:<37} {n}");
    }

    println!();
    println!(
        "soak: processes that lived at least half the run (RSS and open descriptors, sampled every 2 s;"
    );
    println!("  ha and s0 are never touched, ha serves one of the two clients throughout)");
    println!(
        "  {:<6} {:<9} {:>7} {:>10} {:>10} {:>10} {:>13} {:>6} {:>6} {:>10}",
        "where",
        "process",
        "minutes",
        "RSS first",
        "RSS last",
        "RSS max",
        "RSS slope",
        "fds",
        "fds",
        "fds slope"
    );
    let report = soak.lock().unwrap_or_else(|e| e.into_inner()).report(args.duration as f64 / 2.0);
    for r in &report {
        println!(
            "  {:<6} {:<9} {:>7.1} {:>7.0} KiB {:>6.0} KiB {:>6.0} KiB {:>+8.1} KiB/min {:>6.0} {:>6.0} {:>+7.2}/min",
            r.key.container,
            r.key.role,
            r.minutes,
            r.rss_first,
            r.rss_last,
            r.rss_max,
            r.rss_slope,
            r.fds_first,
            r.fds_last,
            r.fds_slope
        );
    }

    if failed_gets > 0 {
        problems.push(format!("{failed_gets} failed GETs"));
    }
    if graceful_failed > 0 {
        problems.push(format!("{graceful_failed} failed requests around graceful stops"));
    }
    if survivor_failed > 0 {
        problems.push(format!("{survivor_failed} failed requests through the balancer that stayed up"));
    }
    if worst_dead_in_pool > DEAD_IN_POOL_LIMIT {
        problems.push(format!("a dead server stayed UP for {worst_dead_in_pool:?}"));
    }
    if report.is_empty() {
        problems.push("no process could be sampled for the soak figures".into());
    }
    if problems.is_empty() {
        println!("\ntargets met");
    } else {
        println!("\ntargets missed:\n  {}", problems.join("\n  "));
        if args.check {
            bail!("chaos: {} target(s) missed", problems.len());
        }
    }
    Ok(())
}
