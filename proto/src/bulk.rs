//! The bulk object stream: large objects between nodes as raw bytes on the
//! object-store port, beside gRPC. A connection whose first 8 bytes are
//! [`MAGIC`] (instead of HTTP/2's preface) asks for one byte range of one
//! object; the holder answers with a short header and then the range,
//! written straight from its shared memory, and the reader reads it
//! straight into its own store. No framing, no per-chunk messages: the
//! stream runs at the speed of the socket (and of TLS, which it goes
//! through as everything else: the same port, the same mTLS handshake).
//!
//! ```text
//! request:  MAGIC[8] | id u64 | offset u64 | len u64        (little endian)
//! reply:    status u8 | size u64 | (status 0) len bytes of the range
//!                                | (else)     message_len u32 | message
//! ```

use crate::client::ConnectError;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a bulk connection starts with.
pub const MAGIC: &[u8; 8] = b"SHOALOB1";

/// A bulk connection's byte stream (plain or TLS).
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for T {}

/// A boxed [`ByteStream`].
pub type BulkStream = Box<dyn ByteStream>;

/// What a server does with a bulk connection (the magic already read).
pub type BulkHandler = Arc<dyn Fn(BulkStream) + Send + Sync>;

/// One range of one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BulkRequest {
    /// The object.
    pub id: u64,
    /// First byte.
    pub offset: u64,
    /// Bytes wanted (0: to the end).
    pub len: u64,
}

/// The reply's status byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BulkStatus {
    /// The range follows.
    Ok = 0,
    /// The holder has no such object.
    NotFound = 1,
    /// The range is outside the object, or the store failed.
    Failed = 2,
}

impl BulkRequest {
    /// Reads a request after the magic.
    pub async fn read(s: &mut (impl AsyncRead + Unpin)) -> std::io::Result<BulkRequest> {
        let mut b = [0u8; 24];
        s.read_exact(&mut b).await?;
        let word = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        Ok(BulkRequest { id: word(0), offset: word(1), len: word(2) })
    }

    fn bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..24].copy_from_slice(&self.offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.len.to_le_bytes());
        b
    }
}

/// Server side: the header of a reply that sends the range.
pub async fn reply_ok(s: &mut (impl AsyncWrite + Unpin), size: u64) -> std::io::Result<()> {
    let mut h = [0u8; 9];
    h[0] = BulkStatus::Ok as u8;
    h[1..].copy_from_slice(&size.to_le_bytes());
    s.write_all(&h).await
}

/// Server side: a refusal with its reason.
pub async fn reply_err(s: &mut (impl AsyncWrite + Unpin), status: BulkStatus, message: &str) -> std::io::Result<()> {
    let m = message.as_bytes();
    let m = m.get(..m.len().min(4096)).unwrap_or_default();
    let mut h = Vec::with_capacity(13 + m.len());
    h.push(status as u8);
    h.extend_from_slice(&0u64.to_le_bytes());
    h.extend_from_slice(&(m.len() as u32).to_le_bytes());
    h.extend_from_slice(m);
    s.write_all(&h).await?;
    s.shutdown().await
}

/// Why a bulk read failed.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// The connection failed or ended early.
    #[error("bulk transfer: {0}")]
    Io(#[from] std::io::Error),
    /// The holder refused.
    #[error("the holder refused ({status:?}): {message}")]
    Refused {
        /// Its status.
        status: BulkStatus,
        /// Its reason.
        message: String,
    },
    /// The object is not the size the reader expected.
    #[error("the holder's object is {got} bytes, not {want}")]
    Size {
        /// What the holder has.
        got: u64,
        /// What the reader expected.
        want: u64,
    },
}

/// Client side: dials a peer's object-store port for bulk reads, with the
/// TLS the cluster uses (the client configuration is built once).
#[derive(Clone)]
pub struct BulkDialer {
    host: String,
    port: u16,
    tls: Option<(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
}

impl BulkDialer {
    /// A dialer for the object store at `address` (`host:port`), TLS when
    /// there is a token.
    pub fn new(address: &str, token: Option<&str>) -> Result<Self, ConnectError> {
        let bad = |reason: String| ConnectError::BadAddress { address: address.to_string(), reason };
        let target = crate::client::parse_address(address)?;
        let (host, port) = (target.host.trim_matches(['[', ']']).to_string(), target.port);
        let tls = match token {
            Some(_) => {
                let cfg = crate::tls::client_config(token, &crate::tls::Peer::Store)
                    .map_err(|problem| ConnectError::Tls { address: address.to_string(), problem })?;
                let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| bad("the host is not a name or IP address".into()))?;
                Some((cfg, name))
            }
            None => None,
        };
        Ok(Self { host, port, tls })
    }

    async fn dial(&self) -> std::io::Result<BulkStream> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((cfg, name)) => Ok(Box::new(tokio_rustls::TlsConnector::from(cfg.clone()).connect(name.clone(), tcp).await?)),
        }
    }

    /// Reads `[offset, offset + dst.len())` of object `id` (`size` bytes
    /// in all) into `dst`, on a connection of its own.
    pub async fn read_range(&self, id: u64, size: u64, offset: u64, dst: &mut [u8]) -> Result<(), BulkError> {
        let mut s = self.dial().await?;
        s.write_all(&BulkRequest { id, offset, len: dst.len() as u64 }.bytes()).await?;
        s.flush().await?;
        let mut h = [0u8; 9];
        s.read_exact(&mut h).await?;
        let got = u64::from_le_bytes(h[1..9].try_into().unwrap_or([0; 8]));
        if h[0] != BulkStatus::Ok as u8 {
            let status = if h[0] == BulkStatus::NotFound as u8 { BulkStatus::NotFound } else { BulkStatus::Failed };
            let mut n = [0u8; 4];
            s.read_exact(&mut n).await?;
            let mut m = vec![0u8; (u32::from_le_bytes(n) as usize).min(4096)];
            s.read_exact(&mut m).await?;
            return Err(BulkError::Refused { status, message: String::from_utf8_lossy(&m).into_owned() });
        }
        if got != size {
            return Err(BulkError::Size { got, want: size });
        }
        s.read_exact(dst).await?;
        Ok(())
    }
}

/// A stream that first yields bytes already read from it (a connection's
/// first bytes, read to tell a bulk request from HTTP/2), then the rest.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner` after `prefix` was read from it.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self { prefix, at: 0, inner }
    }

    /// The stream under it.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(rest) = this.prefix.get(this.at..).filter(|r| !r.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(rest.get(..n).unwrap_or_default());
            this.at += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Reads up to `n` bytes, stopping early at the end of the stream.
pub async fn read_prefix(s: &mut (impl AsyncRead + Unpin), n: usize) -> std::io::Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match s.read(b.get_mut(got..).unwrap_or_default()).await? {
            0 => break,
            k => got += k,
        }
    }
    b.truncate(got);
    Ok(b)
}
