//! Connections at the edge: what a gRPC server accepts and what a client
//! dials, encrypted when the cluster has a token ([`crate::tls`]).
//!
//! A server's [`incoming`] accepts on its listener, gives each new
//! connection a place in the server's table of connections
//! ([`crate::conns`]: deadlines, bounds, the idle timeout), and hands
//! tonic only connections that completed their TLS handshake. A flood of
//! idle or unauthenticated connections therefore costs a bounded number of
//! sockets for a bounded time, and the refusals are logged at most once a
//! second.

use crate::bulk::{BulkHandler, MAGIC, Prefixed, read_prefix};
use crate::conns::{ConnInfo, Registry, Ticket};
use crate::rpc_errors::Refusal;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bounds on the connections a server holds (see [`crate::conns`]).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time a new connection has, from its accept, to finish its TLS
    /// handshake and send its first request with the cluster token.
    pub handshake_deadline: Duration,
    /// Connections without an authenticated request yet, from everyone:
    /// past it the oldest is dropped.
    pub max_unauthenticated: usize,
    /// The same, from one IP address.
    pub max_unauthenticated_per_peer: usize,
    /// Authenticated connections held at once: past it a new connection's
    /// first request is refused with `ResourceExhausted`.
    pub max_connections: usize,
    /// The same, from one IP address.
    pub max_connections_per_peer: usize,
    /// An authenticated connection with no request in progress this long
    /// is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_deadline: Duration::from_secs(10),
            max_unauthenticated: 1024,
            max_unauthenticated_per_peer: 256,
            max_connections: 16_384,
            max_connections_per_peer: 4096,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// An accepted connection, handed to tonic once its TLS handshake (if
/// any) is done. Its first bytes may have been read already (to tell a
/// bulk request from HTTP/2): they are read again first. It fails its next
/// read or write once its server's table closes it.
pub struct Conn {
    io: ConnIo,
    info: ConnInfo,
    _ticket: Ticket,
}

enum ConnIo {
    /// Plaintext: a cluster started with `--insecure`.
    Plain(Prefixed<TcpStream>),
    /// TLS, the peer authenticated by its certificate.
    Tls(Box<Prefixed<tokio_rustls::server::TlsStream<TcpStream>>>),
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

fn closed_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "closed by the server (idle, past its deadline, or dropped to make room)")
}

impl AsyncRead for Conn {
    /// The read side is what hears a close: hyper always has a read
    /// pending, so the table's wake-up reaches the connection's task here.
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.info.state.closing(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.info.state.is_closing() {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        if self.info.state.is_closing() {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// `AsyncRead` and `AsyncWrite` for an enum of a plain and a TLS stream,
/// each call passed to the variant's stream (`$plain`/`$tls` are the
/// patterns binding it; the TLS one is boxed).
macro_rules! io_enum {
    ($ty:ident, $plain:pat => $p:ident, $tls:pat => $t:ident) => {
        impl $ty {
            fn io(self: Pin<&mut Self>) -> Pin<&mut (dyn IoStream + '_)> {
                match self.get_mut() {
                    $plain => Pin::new($p),
                    $tls => Pin::new($t.as_mut()),
                }
            }
            fn io_ref(&self) -> &(dyn IoStream + '_) {
                match self {
                    $plain => $p,
                    $tls => $t.as_ref(),
                }
            }
        }

        impl AsyncRead for $ty {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
                self.io().poll_read(cx, buf)
            }
        }

        impl AsyncWrite for $ty {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
                self.io().poll_write(cx, buf)
            }
            fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
                self.io().poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.io_ref().is_write_vectored()
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                self.io().poll_flush(cx)
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                self.io().poll_shutdown(cx)
            }
        }
    };
}

/// A byte stream both connection enums are made of.
trait IoStream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> IoStream for T {}

io_enum!(ConnIo, ConnIo::Plain(s) => s, ConnIo::Tls(s) => s);

/// A log line at most once per interval, counting what it held back.
pub struct RateLimitedLog {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedLog {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self { every, state: Mutex::new((None, 0)) }
    }

    /// Calls `log(suppressed)` if a line is due, where `suppressed` is how
    /// many calls were held back since the last line.
    pub fn hit(&self, log: impl FnOnce(u64)) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if s.0.is_none_or(|last| now.duration_since(last) >= self.every) {
            let held = s.1;
            *s = (Some(now), 0);
            drop(s);
            log(held);
        } else {
            s.1 += 1;
        }
    }
}

/// The connections a server on `listener` serves: TLS with `tls`, plain
/// without. `what` names the server in logs ("head", "object store").
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    what: &'static str,
    errors: Arc<crate::rpc_errors::RpcErrors>,
    bulk: Option<BulkHandler>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let registry = Registry::new(limits, what, errors.clone());
    registry.spawn_sweeper(Duration::from_millis(250));
    tokio::spawn(async move {
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let fail_log = Arc::new(RateLimitedLog::new(Duration::from_secs(1)));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: back off briefly
                    // instead of spinning, and keep serving.
                    tracing::warn!(error = %e, server = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let tcp = TcpConnectInfo { local_addr: stream.local_addr().ok(), remote_addr: Some(peer) };
            let ticket = registry.admit(peer.ip());
            let id = ticket.id();
            let (acceptor, tx, fail_log, errors, bulk) = (acceptor.clone(), tx.clone(), fail_log.clone(), errors.clone(), bulk.clone());
            let task = tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let io = match acceptor {
                    None => match split_bulk(stream, bulk.as_ref(), limits.handshake_deadline).await {
                        Some(s) => ConnIo::Plain(s),
                        None => return,
                    },
                    Some(acceptor) => match tokio::time::timeout(limits.handshake_deadline, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let left = limits.handshake_deadline.saturating_sub(started.elapsed());
                            match split_bulk(s, bulk.as_ref(), left).await {
                                Some(s) => ConnIo::Tls(Box::new(s)),
                                None => return,
                            }
                        }
                        Ok(Err(e)) => {
                            let (why, text) = handshake_reason(&e);
                            errors.refused(why);
                            return refused(&fail_log, peer, what, &text);
                        }
                        Err(_) => {
                            errors.refused(Refusal::Timeout);
                            return refused(&fail_log, peer, what, "no TLS handshake within the deadline");
                        }
                    },
                };
                // Dropped meanwhile (a flood made room): nothing to serve.
                let Some((info, ticket)) = ticket.into_conn(tcp) else { return };
                let _ = tx.send(Ok(Conn { io, info, _ticket: ticket })).await;
            });
            registry.set_handshake(id, task.abort_handle());
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// With a bulk handler: reads the connection's first bytes (within
/// `deadline`) and hands a bulk request to the handler (`None` back);
/// anything else comes back with those bytes to be read again. Without
/// one: the stream as it is.
async fn split_bulk<S>(mut stream: S, bulk: Option<&BulkHandler>, deadline: Duration) -> Option<Prefixed<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(handler) = bulk else { return Some(Prefixed::new(Vec::new(), stream)) };
    let first = match tokio::time::timeout(deadline, read_prefix(&mut stream, MAGIC.len())).await {
        Ok(Ok(b)) => b,
        // Silent or gone before saying anything: nothing to serve.
        _ => return None,
    };
    if first.as_slice() == MAGIC.as_slice() {
        handler(Box::new(stream));
        return None;
    }
    Some(Prefixed::new(first, stream))
}

fn handshake_reason(e: &std::io::Error) -> (Refusal, String) {
    use rustls::AlertDescription as A;
    match crate::tls::rustls_error(e) {
        Some(rustls::Error::InvalidCertificate(_)) | Some(rustls::Error::NoCertificatesPresented) => {
            (Refusal::WrongToken, format!("a client with a wrong cluster token (its certificate is not from this cluster's CA: {e})"))
        }
        Some(rustls::Error::AlertReceived(A::DecryptError | A::BadCertificate | A::UnknownCA)) => {
            (Refusal::WrongToken, format!("a client with a wrong cluster token (it does not trust this cluster's certificate: {e})"))
        }
        Some(r) => (Refusal::Handshake, format!("TLS handshake failed (not a Shoal client, or a wrong cluster token?): {r}")),
        None => (Refusal::Handshake, format!("TLS handshake failed: {e}")),
    }
}

fn refused(log: &RateLimitedLog, peer: SocketAddr, what: &'static str, why: &str) {
    log.hit(|held| tracing::warn!(%peer, server = what, held_back = held, "refused a connection: {why}"));
}

/// The peer a client dials and the TLS it uses.
#[derive(Clone)]
pub(crate) struct Dialer {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: Option<(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
    /// The last handshake failure, for the caller's error.
    pub(crate) failure: Arc<Mutex<Option<std::io::Error>>>,
}

/// The stream a [`Dialer`] returns to tonic.
pub(crate) enum Dialed {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

io_enum!(Dialed, Dialed::Plain(s) => s, Dialed::Tls(s) => s);

impl tower_service::Service<http::Uri> for Dialer {
    type Response = hyper_util::rt::TokioIo<Dialed>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let stream = TcpStream::connect((this.host.trim_matches(['[', ']']), this.port)).await?;
            let _ = stream.set_nodelay(true);
            let Some((cfg, name)) = this.tls else {
                return Ok(hyper_util::rt::TokioIo::new(Dialed::Plain(stream)));
            };
            match tokio_rustls::TlsConnector::from(cfg).connect(name, stream).await {
                Ok(s) => Ok(hyper_util::rt::TokioIo::new(Dialed::Tls(Box::new(s)))),
                Err(e) => {
                    let copy = std::io::Error::new(e.kind(), e.to_string());
                    *this.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    Err(copy)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limited_log_speaks_once_per_interval_and_counts_the_rest() {
        let log = RateLimitedLog::new(Duration::from_secs(3600));
        let mut lines = Vec::new();
        for _ in 0..5 {
            log.hit(|held| lines.push(held));
        }
        assert_eq!(lines, vec![0]);
        let log = RateLimitedLog::new(Duration::ZERO);
        log.hit(|_| {});
        log.hit(|held| lines.push(held));
        assert_eq!(lines, vec![0, 0]);
    }
}
