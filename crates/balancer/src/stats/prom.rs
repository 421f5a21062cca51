//! `/metrics`: the balancer, its pools and the gossip agent in Prometheus'
//! (OpenMetrics) text format, encoded by `prometheus-client` from a snapshot
//! taken at scrape time.
//!
//! `prometheus-client` escapes `\`, `"` and `\n` in label values, not `\r` or
//! other control characters: member names are passed through
//! [`shoal_gossip::escape::control`] first, so a label value is always one clean line.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use shoal_agent::AgentStats;
use shoal_gossip::{DropReason, MemberStatus};

use crate::metrics::{FrontendStats, Histogram, LATENCY_BUCKETS};
use crate::pool::Pool;
use crate::report::state_name;
use crate::server::Server;
use crate::state::State;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// Everything one scrape reports, taken at one instant.
#[derive(Debug)]
struct Scrape {
    servers: Vec<(Arc<Pool>, Arc<Server>, &'static str)>,
    pools: Vec<Arc<Pool>>,
    frontends: Vec<(String, Arc<FrontendStats>)>,
    members: Arc<shoal_agent::Membership>,
    agent: Option<AgentStats>,
    handler_runs: Option<[u64; 3]>,
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, rows: Vec<(Labels, u64)>) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, rows: Vec<(Labels, i64)>) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: Vec<(Labels, &Histogram)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        let counts: Vec<u64> = h.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let buckets: Vec<(f64, u64)> =
            LATENCY_BUCKETS.iter().copied().chain([f64::INFINITY]).zip(counts.iter().copied()).collect();
        let sum = h.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        family.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
            sum,
            counts.iter().sum(),
            &buckets,
            None,
        )?;
    }
    Ok(())
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A label value from names that may be remote input.
fn label(v: &str) -> String {
    shoal_gossip::escape::control(v).into_owned()
}
const STATES: [&str; 6] = ["UP", "DOWN", "DOWN (checking)", "DRAIN", "MAINT", "NOLB"];

impl Scrape {
    fn server_labels(pool: &Pool, s: &Server) -> Labels {
        vec![("pool", label(&pool.cfg.name)), ("server", label(&s.name))]
    }

    fn per_server(&self, value: impl Fn(&Server) -> u64) -> Vec<(Labels, u64)> {
        self.servers.iter().map(|(p, s, _)| (Self::server_labels(p, s), value(s))).collect()
    }

    fn encode_servers(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            enc,
            "shoal_server_requests",
            "Requests sent to the server.",
            self.per_server(|s| load(&s.stats.requests)),
        )?;
        let by_class = self
            .servers
            .iter()
            .flat_map(|(p, s, _)| {
                CLASSES.iter().enumerate().map(move |(i, class)| {
                    let mut l = Self::server_labels(p, s);
                    l.push(("code", (*class).to_string()));
                    (l, s.stats.responses[i].load(Ordering::Relaxed))
                })
            })
            .collect();
        counter(enc, "shoal_server_responses", "Responses from the server, by status class.", by_class)?;
        counter(
            enc,
            "shoal_server_connect_errors",
            "Failed connection attempts.",
            self.per_server(|s| load(&s.stats.connect_errors)),
        )?;
        counter(
            enc,
            "shoal_server_response_errors",
            "Connections that broke or answered garbage before a response.",
            self.per_server(|s| load(&s.stats.response_errors)),
        )?;
        counter(
            enc,
            "shoal_server_retries",
            "Requests retried after a failure on this server.",
            self.per_server(|s| load(&s.stats.retries)),
        )?;
        counter(
            enc,
            "shoal_server_redispatches",
            "Requests sent elsewhere after this server failed.",
            self.per_server(|s| load(&s.stats.redispatches)),
        )?;
        counter(
            enc,
            "shoal_server_bytes_in",
            "Request bytes sent to the server.",
            self.per_server(|s| load(&s.stats.bytes_in)),
        )?;
        counter(
            enc,
            "shoal_server_bytes_out",
            "Response bytes received from the server.",
            self.per_server(|s| load(&s.stats.bytes_out)),
        )?;
        counter(
            enc,
            "shoal_server_check_failures",
            "Failed health checks.",
            self.per_server(|s| load(&s.stats.check_failures)),
        )?;
        let gauges = |f: fn(&Server) -> i64| -> Vec<(Labels, i64)> {
            self.servers.iter().map(|(p, s, _)| (Self::server_labels(p, s), f(s))).collect()
        };
        gauge(
            enc,
            "shoal_server_active_requests",
            "Requests in flight to the server.",
            gauges(|s| i64::from(s.active.load(Ordering::Relaxed))),
        )?;
        gauge(
            enc,
            "shoal_server_estimated_rtt_microseconds",
            "Round trip to the server estimated from the network coordinates (absent while unknown).",
            self.servers
                .iter()
                .filter_map(|(p, s, _)| {
                    Some((Self::server_labels(p, s), s.estimated_rtt()?.as_micros() as i64))
                })
                .collect(),
        )?;
        gauge(
            enc,
            "shoal_server_weight",
            "Effective weight.",
            gauges(|s| i64::from(s.weight.load(Ordering::Relaxed))),
        )?;
        let states = self
            .servers
            .iter()
            .flat_map(|(p, s, now_state)| {
                STATES.iter().map(move |st| {
                    let mut l = Self::server_labels(p, s);
                    l.push(("state", (*st).to_string()));
                    (l, i64::from(now_state == st))
                })
            })
            .collect();
        gauge(
            enc,
            "shoal_server_state",
            "1 for the server's current state (UP, DOWN, DRAIN, MAINT, NOLB).",
            states,
        )?;
        let hist = |f: fn(&Server) -> &Histogram| -> Vec<(Labels, &Histogram)> {
            self.servers.iter().map(|(p, s, _)| (Self::server_labels(p, s), f(s))).collect()
        };
        histogram(
            enc,
            "shoal_server_response_seconds",
            "Time from sending a request to the response head.",
            hist(|s| &s.stats.response_time),
        )?;
        histogram(
            enc,
            "shoal_server_connect_seconds",
            "Time to open a new connection to the server.",
            hist(|s| &s.stats.connect_time),
        )
    }

    fn encode_frontends(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let per = |f: fn(&FrontendStats) -> u64| -> Vec<(Labels, u64)> {
            self.frontends.iter().map(|(n, s)| (vec![("frontend", n.clone())], f(s))).collect()
        };
        counter(
            enc,
            "shoal_frontend_connections",
            "Client connections accepted.",
            per(|s| s.connections.load(Ordering::Relaxed)),
        )?;
        counter(
            enc,
            "shoal_frontend_requests",
            "Client requests.",
            per(|s| s.requests.load(Ordering::Relaxed)),
        )?;
        counter(
            enc,
            "shoal_frontend_denied",
            "Requests refused as invalid (4xx from the balancer).",
            per(|s| s.denied.load(Ordering::Relaxed)),
        )?;
        counter(
            enc,
            "shoal_frontend_no_server",
            "Requests with no server to go to (503).",
            per(|s| s.no_server.load(Ordering::Relaxed)),
        )?;
        counter(
            enc,
            "shoal_frontend_bytes_in",
            "Request bytes from clients.",
            per(|s| s.bytes_in.load(Ordering::Relaxed)),
        )?;
        counter(
            enc,
            "shoal_frontend_bytes_out",
            "Response bytes to clients.",
            per(|s| s.bytes_out.load(Ordering::Relaxed)),
        )?;
        let by_class = self
            .frontends
            .iter()
            .flat_map(|(n, s)| {
                CLASSES.iter().enumerate().map(move |(i, class)| {
                    (
                        vec![("frontend", n.clone()), ("code", (*class).to_string())],
                        s.responses[i].load(Ordering::Relaxed),
                    )
                })
            })
            .collect();
        counter(enc, "shoal_frontend_responses", "Responses to clients, by status class.", by_class)?;
        let open = self
            .frontends
            .iter()
            .map(|(n, s)| {
                (vec![("frontend", n.clone())], s.current_connections.load(Ordering::Relaxed) as i64)
            })
            .collect();
        gauge(enc, "shoal_frontend_open_connections", "Client connections open now.", open)
    }

    fn encode_gossip(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let by_status =
            [MemberStatus::Alive, MemberStatus::Leaving, MemberStatus::Left, MemberStatus::Failed]
                .iter()
                .map(|st| {
                    let n = self.members.members.iter().filter(|m| m.status == *st).count();
                    (vec![("status", st.as_str().to_string())], n as i64)
                })
                .collect();
        gauge(enc, "shoal_members", "Cluster members known to gossip, by status.", by_status)?;
        let refused = self
            .pools
            .iter()
            .map(|p| (vec![("pool", label(&p.cfg.name))], p.members_refused.load(Ordering::Relaxed)))
            .collect();
        counter(
            enc,
            "shoal_members_refused",
            "Members a pool refused to route to (admission policy), once per member and address.",
            refused,
        )?;
        if let Some(a) = &self.agent {
            let g = &a.gossip;
            counter(
                enc,
                "shoal_gossip_probes",
                "Failure-detector probes started.",
                vec![(vec![], g.probes)],
            )?;
            counter(
                enc,
                "shoal_gossip_probe_failures",
                "Probes that ended with the target suspected.",
                vec![(vec![], g.probe_failures)],
            )?;
            counter(
                enc,
                "shoal_gossip_packets_received",
                "Gossip datagrams received.",
                vec![(vec![], g.packets_received)],
            )?;
            counter(
                enc,
                "shoal_gossip_packets_sent",
                "Gossip datagrams sent.",
                vec![(vec![], g.packets_sent)],
            )?;
            let dropped = DropReason::ALL
                .iter()
                .map(|r| (vec![("reason", r.as_str().to_string())], g.dropped.get(r).copied().unwrap_or(0)))
                .collect();
            counter(enc, "shoal_gossip_dropped", "Inbound gossip dropped, by reason.", dropped)?;
            gauge(
                enc,
                "shoal_gossip_health_score",
                "Lifeguard's local health score (0 is healthy).",
                vec![(vec![], i64::from(a.health_score))],
            )?;
        }
        if let Some([ok, failed, timed_out]) = self.handler_runs {
            let rows = [("ok", ok), ("failed", failed), ("timed_out", timed_out)]
                .into_iter()
                .map(|(r, n)| (vec![("result", r.to_string())], n))
                .collect();
            counter(enc, "shoal_handler_runs", "Event handler script runs, by result.", rows)?;
        }
        Ok(())
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.encode_servers(&mut enc)?;
        self.encode_frontends(&mut enc)?;
        self.encode_gossip(&mut enc)
    }
}

/// The metrics text for one scrape.
pub async fn render(b: &State) -> String {
    let agent = b.agent();
    let stats = match &agent {
        Some(a) => a.stats().await.ok(),
        None => None,
    };
    let now = Instant::now();
    let servers = b
        .pools()
        .values()
        .flat_map(|p| p.servers().into_iter().map(move |s| (p.clone(), s)))
        .map(|(p, s)| {
            let state = state_name(&s, now);
            (p, s, state)
        })
        .collect();
    let handler_runs = agent.as_ref().map(|a| {
        let r = a.handler_runs();
        [r.ok.load(Ordering::Relaxed), r.failed.load(Ordering::Relaxed), r.timed_out.load(Ordering::Relaxed)]
    });
    let pools = b.pools().values().cloned().collect();
    let scrape = Scrape {
        servers,
        pools,
        frontends: b.frontend_stats(),
        members: b.members(),
        agent: stats,
        handler_runs,
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}
