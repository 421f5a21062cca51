//! HashiCorp Serf's RPC protocol for Shoal.
//!
//! [`server`] serves it in front of a Shoal agent, so the stock `serf` CLI and
//! any Serf RPC client can drive a Shoal agent; [`client`] speaks it to any agent,
//! Shoal or Serf, and backs the `shoal members / join / leave / event / query /
//! monitor / keys / tags / info` commands. [`logtap`] feeds `monitor`.

pub mod client;
pub mod codec;
pub mod logtap;
pub mod protocol;
pub mod server;

pub use client::{RpcClient, StreamEvent};
pub use codec::RpcError;
pub use logtap::LogTap;
pub use server::{ServerConfig, start};
