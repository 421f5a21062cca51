//! Malformed or unauthenticated RPC input gets an error reply and a closed connection;
//! the agent carries on serving everyone else.

use std::net::SocketAddr;
use std::time::Duration;

use shoal_agent::{Agent, AgentConfig};
use shoal_gossip::mp::Wire;
use shoal_rpc::protocol::{RequestHeader, errors};
use shoal_rpc::{RpcClient, RpcError, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn agent_with_rpc(auth: Option<&str>) -> (Agent, SocketAddr) {
    let cfg = AgentConfig {
        node: Some("rpc-test".into()),
        bind: "127.0.0.1:0".parse().unwrap(),
        ..AgentConfig::default()
    };
    let agent = Agent::start(cfg).await.unwrap();
    let server = ServerConfig { auth: auth.map(str::to_string), ..ServerConfig::default() };
    let (addr, _task) =
        shoal_rpc::start("127.0.0.1:0".parse().unwrap(), agent.handle(), server).await.unwrap();
    (agent, addr)
}

/// Reads until the server closes; returns everything it sent.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .unwrap();
    out
}

fn header(command: &str, seq: u64) -> Vec<u8> {
    let mut b = Vec::new();
    RequestHeader { command: command.into(), seq }.put(&mut b);
    b
}

async fn still_serves(addr: SocketAddr) {
    let mut c =
        RpcClient::connect(&addr.to_string(), None).await.expect("a well-behaved client still gets in");
    assert_eq!(c.members().await.unwrap().len(), 1);
}

#[tokio::test]
async fn garbage_gets_an_error_and_a_closed_connection() {
    let (_agent, addr) = agent_with_rpc(None).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0xc1, 0xff, 0x00, 0x13]).await.unwrap();
    let reply = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("malformed request"), "{text}");
    still_serves(addr).await;
}

#[tokio::test]
async fn commands_before_the_handshake_are_refused() {
    let (_agent, addr) = agent_with_rpc(None).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&header("members", 1)).await.unwrap();
    let reply = read_to_close(&mut s).await;
    assert!(String::from_utf8_lossy(&reply).contains(errors::HANDSHAKE_REQUIRED));
    still_serves(addr).await;
}

#[tokio::test]
async fn unknown_commands_are_refused() {
    let (_agent, addr) = agent_with_rpc(None).await;
    let mut c = RpcClient::connect(&addr.to_string(), None).await.unwrap();
    c.send_raw(&header("self-destruct", 9)).await.unwrap();
    let h = c.read_header().await.unwrap();
    assert_eq!(h.error, errors::UNSUPPORTED_COMMAND);
    assert!(matches!(c.read_header().await, Err(RpcError::Closed)));
    still_serves(addr).await;
}

#[tokio::test]
async fn authentication_is_enforced() {
    let (_agent, addr) = agent_with_rpc(Some("s3cret")).await;
    // No token: the first real command is refused and the connection closed.
    let mut c = RpcClient::connect(&addr.to_string(), None).await.unwrap();
    match c.members().await {
        Err(RpcError::Remote(e)) => assert_eq!(e, errors::AUTH_REQUIRED),
        other => panic!("expected auth error, got {other:?}"),
    }
    // Wrong token.
    match RpcClient::connect(&addr.to_string(), Some("guess")).await {
        Err(RpcError::Remote(e)) => assert_eq!(e, errors::INVALID_AUTH_TOKEN),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("a wrong token must not be accepted"),
    }
    // Right token.
    let mut c = RpcClient::connect(&addr.to_string(), Some("s3cret")).await.unwrap();
    assert_eq!(c.members().await.unwrap().len(), 1);
}

#[tokio::test]
async fn truncated_bodies_and_bad_filters_are_handled() {
    let (_agent, addr) = agent_with_rpc(None).await;
    let mut c = RpcClient::connect(&addr.to_string(), None).await.unwrap();
    // A bad regular expression is an error reply, not a dropped connection.
    match c.members_filtered(Default::default(), "(", "").await {
        Err(RpcError::Remote(e)) => assert!(e.contains("regex"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(c.stream("member-explode").await, Err(RpcError::Remote(e)) if e == errors::INVALID_FILTER)
    );
    // A header announcing a body that never comes, then the client hangs up: no harm done.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hs = header("handshake", 1);
    shoal_rpc::protocol::HandshakeRequest { version: 1 }.put(&mut hs);
    s.write_all(&hs).await.unwrap();
    s.write_all(&header("event", 2)).await.unwrap();
    s.write_all(&[0x83]).await.unwrap();
    drop(s);
    still_serves(addr).await;
}
