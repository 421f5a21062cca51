//! `chaos`: the Docker lab under steady load while web containers are stopped,
//! killed, paused, disconnected, added and removed at random (seeded), for a set
//! time. Prints requests sent, failures by method and cause, and the worst time
//! a dead server stayed in the pool. Everything it creates is removed by id.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng, rngs::StdRng};

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
}

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

/// Containers and the network of the run, removed on drop.
struct Lab {
    prefix: String,
    network: String,
    image: String,
    ids: Mutex<Vec<String>>,
    front: SocketAddr,
    stats: SocketAddr,
}

impl Lab {
    fn run(&self, short: &str, extra: &[&str]) -> anyhow::Result<()> {
        let name = format!("{}-{short}", self.prefix);
        let mut args = vec!["run", "-d", "--name", &name, "--hostname", short, "--network", &self.network];
        args.extend(extra);
        args.extend(["-e", "SHOAL_PROFILE=fast", "-e", "SHOAL_ACCESS_LOG=off", &self.image]);
        let id = docker(&args)?;
        self.ids.lock().unwrap_or_else(|e| e.into_inner()).push(id);
        Ok(())
    }

    fn name(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// Servers whose status is UP on the stats CSV.
    fn up(&self) -> Vec<String> {
        let Ok(mut s) = TcpStream::connect(self.stats) else { return Vec::new() };
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let _ = s.write_all(b"GET /;csv HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\n\r\n");
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        raw.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f.len() > 17 && f[0] == "backend" && f[1] != "BACKEND" && f[17] == "UP")
                    .then(|| f[1].to_string())
            })
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for id in self.ids.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
        let _ = Command::new("docker").args(["network", "rm", &self.network]).output();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Method {
    Get,
    Head,
    Post,
}

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    method: Method,
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
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let prefix = format!("shoal-chaos-{}", std::process::id());
    let network = docker(&["network", "create", &format!("{prefix}-net")])?;
    let lab = Lab {
        prefix,
        network,
        image: args.image.clone(),
        ids: Mutex::new(Vec::new()),
        front: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        stats: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
    };
    let (fp, sp) =
        (format!("127.0.0.1:{}:80", lab.front.port()), format!("127.0.0.1:{}:1936", lab.stats.port()));
    lab.run("ha", &["--network-alias", "ha", "-e", "ROLE=balancer", "-p", &fp, "-p", &sp])?;
    let mut next = 1;
    let mut webs: Vec<String> = Vec::new();
    for _ in 0..4 {
        let short = format!("w{next}");
        next += 1;
        lab.run(&short, &[])?;
        webs.push(short);
    }
    let start = Instant::now();
    while lab.up().len() < 4 {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the lab did not come up: {:?}", lab.up());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "== lab up: ha + {} web containers; chaos for {} s (seed {})",
        webs.len(),
        args.duration,
        args.seed
    );

    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..2 {
        let (samples, stop, front) = (samples.clone(), stop.clone(), lab.front);
        clients.push(std::thread::spawn(move || {
            let methods = [Method::Get, Method::Head, Method::Post];
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let method = methods[i % 3];
                i += 1;
                let failure = request(front, method);
                samples.lock().unwrap_or_else(|e| e.into_inner()).push(Sample {
                    at: Instant::now(),
                    method,
                    failure,
                });
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }

    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut actions: Vec<(Instant, Instant, Action, String)> = Vec::new();
    let mut worst_dead_in_pool = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(rng.random_range(1500..4000)));
        let action = match rng.random_range(0..6) {
            0 => Action::Stop,
            1 => Action::Kill,
            2 => Action::Pause,
            3 => Action::Disconnect,
            4 if webs.len() < 6 => Action::ScaleUp,
            5 if webs.len() > 2 => Action::ScaleDown,
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
                // Until it is out of the pool, a dead server is in it.
                while lab.up().contains(&target) && t.elapsed() < Duration::from_secs(30) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                worst_dead_in_pool = worst_dead_in_pool.max(t.elapsed());
            }
            Action::Pause => {
                docker(&["pause", &full])?;
                while lab.up().contains(&target) && t.elapsed() < Duration::from_secs(30) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                worst_dead_in_pool = worst_dead_in_pool.max(t.elapsed());
                std::thread::sleep(Duration::from_secs(2));
                docker(&["unpause", &full])?;
            }
            Action::Disconnect => {
                docker(&["network", "disconnect", &lab.network, &full])?;
                while lab.up().contains(&target) && t.elapsed() < Duration::from_secs(30) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                worst_dead_in_pool = worst_dead_in_pool.max(t.elapsed());
                std::thread::sleep(Duration::from_secs(2));
                docker(&["network", "connect", &lab.network, &full])?;
            }
            Action::ScaleUp => {
                subject = format!("w{next}");
                next += 1;
                lab.run(&subject, &[])?;
                webs.push(subject.clone());
            }
        }
        // Keep at least two web containers: replace what went away.
        while webs.len() < 2 {
            let short = format!("w{next}");
            next += 1;
            lab.run(&short, &[])?;
            webs.push(short);
        }
        eprintln!(
            "  {:>6.1}s {action:?} {subject} ({} web containers)",
            start.elapsed().as_secs_f64(),
            webs.len()
        );
        actions.push((t, Instant::now() + Duration::from_secs(2), action, subject));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }

    let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.failure.is_some()).collect();
    let in_window = |s: &Sample, kinds: &[Action]| {
        actions.iter().any(|(from, to, a, _)| kinds.contains(a) && s.at >= *from && s.at <= *to)
    };
    let mut by_cause: HashMap<String, usize> = HashMap::new();
    for s in &failed {
        let cause = s.failure.clone().unwrap_or_default();
        let cause = cause.split(':').next().unwrap_or("").to_string();
        *by_cause.entry(format!("{:?} {cause}", s.method)).or_default() += 1;
    }
    let graceful_failed = failed.iter().filter(|s| in_window(s, &[Action::Stop, Action::ScaleDown])).count();
    let failed_gets = failed.iter().filter(|s| s.method == Method::Get).count();
    println!();
    println!(
        "chaos: {} s, seed {}, {} actions; 2 clients, GET/HEAD/POST /delay in turn, a new connection each",
        args.duration,
        args.seed,
        actions.len()
    );
    let count = |a: Action| actions.iter().filter(|(_, _, x, _)| *x == a).count();
    println!(
        "actions: stop {}, kill {}, pause {}, disconnect {}, scale up {}, scale down {}",
        count(Action::Stop),
        count(Action::Kill),
        count(Action::Pause),
        count(Action::Disconnect),
        count(Action::ScaleUp),
        count(Action::ScaleDown)
    );
    println!("requests sent                          {}", samples.len());
    println!("failed, any method                     {}", failed.len());
    println!("failed GETs                            {failed_gets}");
    println!("failed during graceful stops/scale-down {graceful_failed}");
    println!("worst time a dead server stayed UP     {} ms", worst_dead_in_pool.as_millis());
    let mut causes: Vec<_> = by_cause.into_iter().collect();
    causes.sort();
    for (cause, n) in causes {
        println!("  {cause:<36} {n}");
    }
    Ok(())
}
