//! The Shoal agent: a [`shoal_gossip::Gossip`] core driven by tokio.
//!
//! [`Agent::start`] binds the gossip port (UDP and TCP), runs the core, joins
//! the `--join` targets with back-off until one answers, and publishes the
//! cluster as a live [`Membership`] snapshot plus a stream of
//! [`shoal_gossip::Event`]s. Everything else in Shoal (the balancer, the
//! renderer, handler scripts, the RPC server) is a consumer of those two.
//!
//! ```no_run
//! # async fn demo() -> Result<(), shoal_agent::AgentError> {
//! use shoal_agent::{Agent, AgentConfig, JoinTarget};
//!
//! let cfg = AgentConfig {
//!     node: Some("web-1".into()),
//!     bind: "0.0.0.0:7946".parse().unwrap(),
//!     join: vec![JoinTarget::parse("ha").unwrap()],
//!     ..AgentConfig::default()
//! };
//! let agent = Agent::start(cfg).await?;
//! let mut members = agent.handle().members();
//! members.changed().await.ok();
//! println!("{} members", members.borrow().members.len());
//! agent.leave_and_shutdown().await;
//! # Ok(()) }
//! ```

mod config;
mod driver;
pub mod events;
mod fanout;
pub mod handlers;
mod join;
mod keys;
mod snapshot;

pub use config::{
    AgentConfig, ConfigError, DEFAULT_GOSSIP_PORT, JoinTarget, advertise_addr, hostname, load_keys,
    parse_tags, save_keys,
};
pub use driver::{
    Agent, AgentError, AgentHandle, AgentStats, DISTANCE_REFRESH, Distances, Membership, QueryUpdate,
    read_frame, resolve, tags_line,
};
pub use events::{Coalescing, EventFilter, SerfEvent};
pub use fanout::Fanout;
pub use handlers::HandlerSpec;
pub use keys::{KeyOp, KeyReport};
pub use snapshot::Previous;
