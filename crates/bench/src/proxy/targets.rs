//! What the proxy benchmark measures: the nginx backend (with the Shoal agent that announces it
//! to the balancers) and each proxy — Shoal, HAProxy, nginx, Caddy — started with its own
//! configuration, written here side by side: a plain HTTP port and a TLS port (ALPN h2 and
//! http/1.1) in front of the same backend, upstream keep-alive, the same
//! `X-Forwarded-For/-Proto/-Port` headers, one thread or worker, the access log on or off and
//! written to stdout, which is a file in the run's directory.

use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};

use crate::procs::{Proc, cpu_seconds, spawn_to, wait_http, write};

/// The nginx backend every target forwards to (`return 200`, one worker).
pub const BACKEND: u16 = 18_080;
/// The backend's Shoal agent (gossip; RPC on the next port).
const BACKEND_AGENT: u16 = 18_090;

/// A target of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The nginx backend itself, no proxy (plain-HTTP rows only: the backend has no TLS).
    Direct,
    /// Shoal's balancer, one worker thread (`--threads 1`).
    Shoal,
    /// HAProxy, `nbthread 1`.
    Haproxy,
    /// nginx, one worker process.
    Nginx,
    /// Caddy 2, `GOMAXPROCS=1`.
    Caddy,
}

impl Target {
    /// Every target, in the order the tables show them.
    pub const ALL: [Target; 5] =
        [Target::Direct, Target::Shoal, Target::Haproxy, Target::Nginx, Target::Caddy];

    /// The first port of this target's block: plain HTTP, then TLS, stats, gossip, RPC. Blocks
    /// differ with the access log, so no port is reused between phases.
    fn ports(self, logging: bool) -> u16 {
        let index = match self {
            Target::Direct => return BACKEND,
            Target::Shoal => 0,
            Target::Haproxy => 1,
            Target::Nginx => 2,
            Target::Caddy => 3,
        };
        18_100 + if logging { 40 } else { 0 } + 10 * index
    }
}

/// The Shoal balancers of the thread-count section: their own port blocks.
pub fn threads_ports(threads: usize) -> u16 {
    if threads == 1 { 18_180 } else { 18_190 }
}

/// The loopback address on `port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// What every target is started with.
#[derive(Debug)]
pub struct Env {
    /// The run's directory: configurations, certificate, logs; removed at the end.
    pub dir: PathBuf,
    /// The `shoal` binary.
    pub shoal: String,
    /// Whether the proxies are pinned to core 1 and the backend to core 0.
    pub pin: bool,
    /// HAProxy's `maxconn` (it must fit the idle connections of the memory test).
    pub maxconn: usize,
    cert: PathBuf,
    key: PathBuf,
    /// Certificate and key in one file, as HAProxy's `crt` takes them.
    combined: PathBuf,
    versions: Versions,
}

/// The peers' versions, for the labels.
#[derive(Debug)]
struct Versions {
    haproxy: String,
    nginx: String,
    caddy: String,
}

impl Env {
    /// Makes the run's certificate (ECDSA P-256, for 127.0.0.1 and localhost) and reads the
    /// peers' versions.
    pub fn new(dir: PathBuf, shoal: String, pin: bool, maxconn: usize) -> anyhow::Result<Env> {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-days", "2", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .context("cannot run openssl")?;
        ensure!(out.status.success(), "openssl req failed: {}", String::from_utf8_lossy(&out.stderr));
        let combined = write(
            &dir,
            "combined.pem",
            &(std::fs::read_to_string(&cert)? + &std::fs::read_to_string(&key)?),
        )?;
        let versions = Versions {
            haproxy: version(Command::new("haproxy").arg("-v"))?,
            nginx: version(Command::new("nginx").arg("-v"))?,
            caddy: version(Command::new("caddy").arg("version"))?,
        };
        Ok(Env { dir, shoal, pin, maxconn, cert, key, combined, versions })
    }

    /// The core proxies run on, when pinned.
    pub fn proxy_cpu(&self) -> Option<u8> {
        self.pin.then_some(1)
    }

    /// The core the load generators and the backend run on, when pinned.
    pub fn load_cpu(&self) -> Option<u8> {
        self.pin.then_some(0)
    }

    /// The peers' versions, one line.
    pub fn versions(&self) -> String {
        let v = &self.versions;
        format!("HAProxy {}, nginx {}, Caddy {}", v.haproxy, v.nginx, v.caddy)
    }

    /// Starts `program args…` pinned to `cpu`, stdout to `NAME.out` (appended, so that emptying it
    /// between runs works while the process writes) and stderr to `NAME.err` in the run's
    /// directory.
    fn launch(&self, name: &str, cpu: Option<u8>, cmd: Command) -> anyhow::Result<(Proc, PathBuf)> {
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut t = Command::new("taskset");
                t.args(["-c", &cpu.to_string()]).arg(cmd.get_program()).args(cmd.get_args());
                t.envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))));
                t
            }
            None => cmd,
        };
        let out = self.dir.join(format!("{name}.out"));
        let stdout = File::options().create(true).append(true).open(&out)?;
        let stderr = File::create(self.dir.join(format!("{name}.err")))?;
        let proc = spawn_to(name, &mut cmd, Stdio::from(stdout), Stdio::from(stderr))?;
        Ok((proc, out))
    }

    /// Starts a proxy on the port block `base` (plain HTTP, then TLS), pinned to `cpu` (None:
    /// unpinned), and waits until it answers.
    fn proxy(
        &self,
        target: Target,
        name: &str,
        label: String,
        base: u16,
        cpu: Option<u8>,
        cmd: Command,
    ) -> anyhow::Result<Instance> {
        let (proc, out) = self.launch(name, cpu, cmd)?;
        self.ready(name, base)?;
        Ok(Instance { target, label, plain: base, tls: Some(base + 1), out: Some(out), proc: Some(proc) })
    }

    /// Waits until `port` answers 200; otherwise the error shows the end of `name`'s stderr.
    fn ready(&self, name: &str, port: u16) -> anyhow::Result<()> {
        wait_http(local(port)).with_context(|| {
            let err = std::fs::read_to_string(self.dir.join(format!("{name}.err"))).unwrap_or_default();
            let tail: Vec<&str> = err.lines().rev().take(15).collect();
            format!(
                "{name} did not come up; its stderr ends with:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
    }
}

/// The first version-like word (`2.6.12` of `HAProxy version 2.6.12-1+deb12u4`, `1.22.1` of
/// `nginx version: nginx/1.22.1`) that `cmd` prints.
fn version(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    text.split(|c: char| c.is_whitespace() || c == '/')
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()) && w.contains('.'))
        .map(|w| w.split(['-', '+']).next().unwrap_or(w).to_string())
        .with_context(|| format!("no version in {:?}'s output: {text}", cmd.get_program()))
}

/// The nginx backend and the agent that announces it: started first, stopped last.
#[derive(Debug)]
pub struct Backend {
    _nginx: Proc,
    _agent: Proc,
}

/// The nginx configuration shared by the backend and the nginx proxy.
fn nginx_conf(dir: &Path, name: &str, access_log: &str, body: &str) -> String {
    format!(
        "worker_processes 1;\ndaemon off;\npid {d}/{name}.pid;\nerror_log {d}/{name}.err warn;\n\
         events {{ worker_connections 20000; }}\nhttp {{\n  access_log {access_log};\n  \
         keepalive_requests 10000000;\n  keepalive_timeout 120s;\n{body}\n}}\n",
        d = dir.display()
    )
}

/// Starts the backend (pinned with the load generators) and its agent.
pub fn start_backend(env: &Env) -> anyhow::Result<Backend> {
    let conf = write(
        &env.dir,
        "backend.conf",
        &nginx_conf(
            &env.dir,
            "backend",
            "off",
            &format!(
                "  server {{ listen 127.0.0.1:{BACKEND};\n    location / {{ return 200 \"ok\\n\"; }}\n    \
                 location /headers {{ return 200 \"$http_x_forwarded_for|$http_x_forwarded_proto|$http_x_forwarded_port\"; }}\n  }}"
            ),
        ),
    )?;
    let mut nginx = Command::new("nginx");
    nginx.arg("-c").arg(&conf);
    let (nginx, _) = env.launch("backend", env.load_cpu(), nginx)?;
    env.ready("backend", BACKEND)?;
    // The backend announces itself through gossip, as in production; the balancers join it.
    let mut agent = Command::new(&env.shoal);
    agent
        .args(["agent", "--node", "nginx-backend", "--bind", &local(BACKEND_AGENT).to_string()])
        .args(["--rpc-addr", &local(BACKEND_AGENT + 1).to_string()])
        .args(["--tag", "role=backend", "--tag", &format!("port={BACKEND}")])
        .args(["--profile", "fast", "--log-level", "warn"]);
    let (agent, _) = env.launch("backend-agent", env.load_cpu(), agent)?;
    Ok(Backend { _nginx: nginx, _agent: agent })
}

/// A running target.
#[derive(Debug)]
pub struct Instance {
    /// Which target.
    pub target: Target,
    /// How tables name it.
    pub label: String,
    /// Its plain HTTP port.
    pub plain: u16,
    /// Its TLS port (ALPN h2, http/1.1), if it has one.
    pub tls: Option<u16>,
    /// Its stdout, where its access log goes.
    out: Option<PathBuf>,
    proc: Option<Proc>,
}

impl Instance {
    /// The direct target: the backend, no process of its own.
    pub fn direct() -> Instance {
        let label = "direct to the nginx backend".into();
        Instance { target: Target::Direct, label, plain: BACKEND, tls: None, out: None, proc: None }
    }

    /// The URL of `path` on its TLS port (`tls`) or its plain one; None if it has no TLS port.
    pub fn url(&self, tls: bool, path: &str) -> Option<String> {
        if tls {
            self.tls.map(|p| format!("https://127.0.0.1:{p}{path}"))
        } else {
            Some(format!("http://127.0.0.1:{}{path}", self.plain))
        }
    }

    /// Its main process (for RSS).
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// CPU seconds its processes have used so far; None for the direct target.
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.pid().map(cpu_seconds)
    }

    /// Lines it has written to stdout (its access log) since the last call, after waiting for
    /// the file to stop growing (Shoal writes its log from a thread of its own, which may still be
    /// catching up); the file is emptied for the next run. None for the direct target.
    pub fn take_log_lines(&self) -> anyhow::Result<Option<u64>> {
        let Some(path) = &self.out else { return Ok(None) };
        let size = || std::fs::metadata(path).map(|m| m.len()).with_context(|| format!("{}", path.display()));
        let mut last = size()?;
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(50));
            let now = size()?;
            if now == last {
                break;
            }
            last = now;
        }
        let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let (mut buf, mut lines) = (vec![0u8; 1 << 20], 0u64);
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        }
        File::options().write(true).open(path)?.set_len(0)?;
        Ok(Some(lines))
    }

    /// Checks what the backend receives through it — `X-Forwarded-For`, `-Proto` and `-Port` on
    /// both ports — and that its TLS port speaks HTTP/2 (curl, ALPN).
    pub fn check(&self) -> anyhow::Result<()> {
        for tls in [false, true] {
            let (Some(url), Some(port)) =
                (self.url(tls, "/headers"), if tls { self.tls } else { Some(self.plain) })
            else {
                continue;
            };
            let out = Command::new("curl")
                .args(["-sk", "--max-time", "5", if tls { "--http2" } else { "--http1.1" }])
                .args(["-w", "\n%{http_version}", &url])
                .output()
                .context("cannot run curl")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let (seen, version) = text.rsplit_once('\n').unwrap_or((&text, ""));
            let expected = match self.target {
                Target::Direct => "||".to_string(),
                _ => format!("127.0.0.1|{}|{port}", if tls { "https" } else { "http" }),
            };
            ensure!(
                seen == expected,
                "{}: the backend saw X-Forwarded-For|-Proto|-Port {seen:?} through {url}, expected {expected:?}",
                self.label
            );
            ensure!(!tls || version == "2", "{}: {url} answered over HTTP/{version}, not HTTP/2", self.label);
        }
        Ok(())
    }
}

/// Starts `target` with the access log on or off, pinned to the proxies' core when pinning.
pub fn start(env: &Env, target: Target, logging: bool) -> anyhow::Result<Instance> {
    let base = target.ports(logging);
    match target {
        Target::Direct => Ok(Instance::direct()),
        Target::Shoal => start_shoal(env, 1, logging, base, env.proxy_cpu()),
        Target::Haproxy => start_haproxy(env, logging, base),
        Target::Nginx => start_nginx(env, logging, base),
        Target::Caddy => start_caddy(env, logging, base),
    }
}

/// Starts a Shoal balancer with `threads` worker threads on the port block `base`, from a
/// configuration file with a plain and a TLS frontend; it joins the backend's agent.
pub fn start_shoal(
    env: &Env,
    threads: usize,
    logging: bool,
    base: u16,
    cpu: Option<u8>,
) -> anyhow::Result<Instance> {
    let name = format!("shoal-{base}");
    let conf = write(
        &env.dir,
        &format!("{name}.toml"),
        &format!(
            "stats = \"127.0.0.1:{stats}\"\naccess_log = \"{log}\"\n\n\
             [[frontends]]\nname = \"http\"\nlisten = [\"127.0.0.1:{base}\"]\ndefault_pool = \"backend\"\n\n\
             [[frontends]]\nname = \"https\"\nlisten = [\"127.0.0.1:{tls}\"]\ndefault_pool = \"backend\"\n\
             tls = {{ cert = \"{cert}\", key = \"{key}\" }}\n\n\
             [[pools]]\nname = \"backend\"\nrole = \"backend\"\nport = {BACKEND}\nhealth = {{ enabled = false }}\n",
            stats = base + 2,
            log = if logging { "httplog" } else { "off" },
            tls = base + 1,
            cert = env.cert.display(),
            key = env.key.display(),
        ),
    )?;
    let mut cmd = Command::new(&env.shoal);
    cmd.args(["balancer", "--config"])
        .arg(&conf)
        .args(["--threads", &threads.to_string(), "--node", &name])
        .args(["--bind", &local(base + 3).to_string(), "--rpc-addr", &local(base + 4).to_string()])
        .args(["--join", &local(BACKEND_AGENT).to_string(), "--admin-socket", "none"])
        .args(["--profile", "fast", "--log-level", "warn"]);
    let threads =
        if threads == 1 { "1 worker thread".to_string() } else { format!("{threads} worker threads") };
    let unpinned = if cpu.is_none() && env.pin { " (unpinned)" } else { "" };
    env.proxy(Target::Shoal, &name, format!("Shoal, {threads}{unpinned}"), base, cpu, cmd)
}

fn start_haproxy(env: &Env, logging: bool, base: u16) -> anyhow::Result<Instance> {
    let name = format!("haproxy-{base}");
    let (global_log, defaults_log) = if logging {
        ("  log stdout format raw local0\n", "  log global\n  option httplog\n")
    } else {
        ("", "")
    };
    let conf = write(
        &env.dir,
        &format!("{name}.cfg"),
        &format!(
            "global\n  nbthread 1\n  maxconn {maxconn}\n{global_log}\
             defaults\n  mode http\n{defaults_log}  timeout connect 5s\n  timeout client 50s\n  \
             timeout server 50s\n  timeout http-keep-alive 120s\n\
             frontend fe\n  bind 127.0.0.1:{base}\n  bind 127.0.0.1:{tls} ssl crt {pem} alpn h2,http/1.1\n  \
             default_backend be\n\
             backend be\n  option forwardfor\n  http-request set-header X-Forwarded-Port %[dst_port]\n  \
             http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}\n  \
             http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}\n  \
             http-reuse always\n  server s1 127.0.0.1:{BACKEND}\n",
            maxconn = env.maxconn,
            tls = base + 1,
            pem = env.combined.display(),
        ),
    )?;
    let mut cmd = Command::new("haproxy");
    cmd.arg("-f").arg(&conf);
    env.proxy(
        Target::Haproxy,
        &name,
        format!("HAProxy {}, nbthread 1", env.versions.haproxy),
        base,
        env.proxy_cpu(),
        cmd,
    )
}

fn start_nginx(env: &Env, logging: bool, base: u16) -> anyhow::Result<Instance> {
    let name = format!("nginx-{base}");
    let tls = base + 1;
    let conf = write(
        &env.dir,
        &format!("{name}.conf"),
        &nginx_conf(
            &env.dir,
            &name,
            // `/dev/stdout`: the combined format, on the process's stdout like the others.
            if logging { "/dev/stdout" } else { "off" },
            // TLS 1.3 as the other proxies offer it (nginx's default from 1.23.4); Debian's 1.22
            // would negotiate TLS 1.2, a cheaper handshake than the others make.
            &format!(
                "  upstream be {{ server 127.0.0.1:{BACKEND}; keepalive 256; }}\n  server {{\n    \
                 listen 127.0.0.1:{base};\n    listen 127.0.0.1:{tls} ssl http2;\n    \
                 ssl_certificate {cert};\n    ssl_certificate_key {key};\n    \
                 ssl_protocols TLSv1.2 TLSv1.3;\n    \
                 location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; \
                 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme; \
                 proxy_set_header X-Forwarded-Port $server_port; }}\n  }}",
                cert = env.cert.display(),
                key = env.key.display(),
            ),
        ),
    )?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-c").arg(&conf);
    env.proxy(
        Target::Nginx,
        &name,
        format!("nginx {}, 1 worker", env.versions.nginx),
        base,
        env.proxy_cpu(),
        cmd,
    )
}

fn start_caddy(env: &Env, logging: bool, base: u16) -> anyhow::Result<Instance> {
    let name = format!("caddy-{base}");
    let tls = base + 1;
    // Caddy adds X-Forwarded-For and -Proto itself; -Port is set, and -Host (which it adds too)
    // removed, so that the backend receives what it receives from the others. Upstream idle
    // connections: 256, like nginx's `keepalive 256` (Caddy's default keeps 32).
    let conf = write(
        &env.dir,
        &format!("{name}.caddyfile"),
        &format!(
            "{{\n\tadmin off\n\tauto_https off\n\tservers {{\n\t\tprotocols h1 h2\n\t}}\n}}\n\
             (proxy) {{\n{log}\treverse_proxy 127.0.0.1:{BACKEND} {{\n\
             \t\theader_up X-Forwarded-Port {{http.request.port}}\n\t\theader_up -X-Forwarded-Host\n\
             \t\ttransport http {{\n\t\t\tkeepalive 120s\n\t\t\tkeepalive_idle_conns 256\n\
             \t\t\tkeepalive_idle_conns_per_host 256\n\t\t}}\n\t}}\n}}\n\
             http://:{base} {{\n\tbind 127.0.0.1\n\timport proxy\n}}\n\
             https://:{tls} {{\n\tbind 127.0.0.1\n\ttls {cert} {key}\n\timport proxy\n}}\n",
            log = if logging { "\tlog {\n\t\toutput stdout\n\t}\n" } else { "" },
            cert = env.cert.display(),
            key = env.key.display(),
        ),
    )?;
    let home = env.dir.join(&name);
    let mut cmd = Command::new("caddy");
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&conf)
        .env("GOMAXPROCS", "1")
        // Caddy's storage (certificates, autosave) stays in the run's directory.
        .env("HOME", &home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"));
    env.proxy(
        Target::Caddy,
        &name,
        format!("Caddy {}, GOMAXPROCS=1", env.versions.caddy),
        base,
        env.proxy_cpu(),
        cmd,
    )
}
