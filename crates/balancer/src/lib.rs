//! Shoal's HTTP load balancer: pools that follow gossip membership live.
//!
//! [`Balancer::start`] binds the frontends, builds a [`pool::Pool`] per pool
//! configuration, and runs a controller that keeps each pool in line with the
//! cluster's [`shoal_agent::Membership`] snapshot: a member that joins is
//! routed to as soon as its first health check passes, a member that announces
//! its leave is drained, a failed one is removed. No restart, no reload, and
//! the request path never takes a lock.
//!
//! [`Balancer::reload`] swaps in a new configuration (SIGHUP) without dropping a
//! connection; [`Balancer::shutdown`] stops accepting and lets in-flight
//! requests finish.
//!
//! Membership is remote input: a pool routes only to addresses its
//! [`admission`] policy accepts, caps the weight a member claims, sticks clients
//! with an opaque per-server cookie ([`sticky`]), and every output that carries
//! member data escapes it ([`escape`]).
//!
//! Backends that run no agent come from DNS answers or a Docker engine's containers
//! (`discovery`): pools configured with a `dns` or `docker` source take their servers from
//! it instead, and treat them as members.

mod access_log;
mod admin;
mod admission;
mod balancer;
mod buffers;
mod cidr;
mod codec;
mod config;
mod conn;
mod discovery;
mod forward;
mod frontend;
mod general;
mod h1;
mod health;
mod idle;
mod limits;
mod metrics;
mod park;
mod pipeline;
mod pool;
mod report;
mod retry;
mod select;
mod server;
mod state;
mod stats;
mod sticky;
mod tls;
mod upstream;

pub use access_log::{AccessLog, Format as AccessLogFormat, Record as AccessRecord};
pub use admin::MAX_LINE as ADMIN_MAX_LINE;
pub use balancer::{Balancer, BalancerError};
pub use config::{
    AdminConfig, Algorithm, BalancerConfig, CertFiles, ConfigError, DnsRecord, DnsSource, DockerSource,
    FrontendConfig, HealthConfig, Limits, MAX_WEIGHT, PassiveConfig, PoolConfig, RetryOn, Route, Timeouts,
    TlsConfig,
};
pub use h1::ClientIo;
pub use health::{CheckError, check_once};
pub use metrics::{FrontendStats, Histogram, LATENCY_BUCKETS, Rate, ServerStats};
pub use pool::{Change, Override, Pool};
pub use select::View;
pub use server::{Admin, CheckResult, CheckStatus, Health, Server};
pub use state::{Pools, State};
pub use sticky::token as sticky_token;
