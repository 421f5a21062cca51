//! Reading a stream of msgpack values from a socket, one complete value at a time.

use shoal_gossip::mp::{self, DecodeError, Wire};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Errors from the RPC transport and protocol.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The socket failed.
    #[error("RPC connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("RPC connection closed")]
    Closed,
    /// The peer sent something that is not valid for the protocol.
    #[error("malformed RPC message: {0}")]
    Malformed(#[from] DecodeError),
    /// A value larger than the limit.
    #[error("RPC message larger than {0} bytes")]
    TooLarge(usize),
    /// The agent answered with an error.
    #[error("{0}")]
    Remote(String),
}

/// Largest single msgpack value accepted on an RPC connection.
pub const MAX_VALUE: usize = 16 * 1024 * 1024;

/// How many bytes the first complete msgpack value of `buf` spans: `Ok(None)` while more
/// bytes are needed, an error for bytes that can never become a value or for a value still
/// incomplete after [`MAX_VALUE`] bytes. This is how [`ValueReader`] frames a connection.
pub fn frame(buf: &[u8]) -> Result<Option<usize>, RpcError> {
    match mp::value_len(buf)? {
        Some(n) => Ok(Some(n)),
        None if buf.len() > MAX_VALUE => Err(RpcError::TooLarge(MAX_VALUE)),
        None => Ok(None),
    }
}

/// Reads whole msgpack values from an async byte stream.
pub struct ValueReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> ValueReader<R> {
    /// Wraps a reader.
    pub fn new(inner: R) -> Self {
        ValueReader { inner, buf: Vec::with_capacity(4096) }
    }

    /// The bytes of the next complete value.
    pub async fn next_raw(&mut self) -> Result<Vec<u8>, RpcError> {
        loop {
            if let Some(n) = frame(&self.buf)? {
                let rest = self.buf.split_off(n);
                return Ok(std::mem::replace(&mut self.buf, rest));
            }
            self.buf.reserve(4096);
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Err(RpcError::Closed);
            }
        }
    }

    /// Decodes the next value as `T`.
    pub async fn next<T: Wire>(&mut self) -> Result<T, RpcError> {
        let raw = self.next_raw().await?;
        Ok(mp::decode(&raw)?)
    }
}

/// Encodes a header and an optional body into one buffer.
pub fn encode_pair(header: &impl Wire, body: Option<&dyn WireDyn>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(128);
    header.put(&mut buf);
    if let Some(b) = body {
        b.put_dyn(&mut buf);
    }
    buf
}

/// Object-safe encoding, so bodies of different types can be passed around.
pub trait WireDyn: Send + Sync {
    /// Appends the encoding.
    fn put_dyn(&self, buf: &mut Vec<u8>);
}

impl<T: Wire + Send + Sync> WireDyn for T {
    fn put_dyn(&self, buf: &mut Vec<u8>) {
        self.put(buf);
    }
}
