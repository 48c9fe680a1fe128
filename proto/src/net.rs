//! Connections at the edge: what a gRPC server accepts and what a client
//! dials, encrypted when the cluster has a token ([`crate::tls`]).
//!
//! A server's [`incoming`] accepts on its listener, holds each new
//! connection to a handshake deadline, bounds how many handshakes run at
//! once (in total and per peer address), and hands tonic only connections
//! that completed it. A flood of idle or unauthenticated connections
//! therefore costs a bounded number of sockets for a bounded time, and the
//! refusals are logged at most once a second.

use crate::bulk::{BulkHandler, MAGIC, Prefixed, read_prefix};
use crate::rpc_errors::Refusal;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bounds on what a server accepts before a connection is authenticated.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time a new connection has to finish its TLS handshake.
    pub handshake_deadline: Duration,
    /// Handshakes in progress at once, from everyone.
    pub max_handshakes: usize,
    /// Handshakes in progress at once from one IP address.
    pub max_handshakes_per_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { handshake_deadline: Duration::from_secs(10), max_handshakes: 1024, max_handshakes_per_peer: 256 }
    }
}

/// An accepted connection: plain (no token), or TLS. Its first bytes may
/// have been read already (to tell a bulk request from HTTP/2): they are
/// read again first.
pub enum Conn {
    /// Plaintext: a cluster started with `--insecure`.
    Plain(Prefixed<TcpStream>, TcpConnectInfo),
    /// TLS, the peer authenticated by its certificate.
    Tls(Box<Prefixed<tokio_rustls::server::TlsStream<TcpStream>>>, TcpConnectInfo),
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            Conn::Plain(_, i) | Conn::Tls(_, i) => i.clone(),
        }
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

io_enum!(Conn, Conn::Plain(s, _) => s, Conn::Tls(s, _) => s);

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

/// Handshakes in flight, in total and by peer address, oldest first.
///
/// When a bound is reached, the oldest handshake in progress (of that
/// peer, when the peer's own bound is reached) is dropped to make room:
/// a real client finishes its handshake in milliseconds, so a standing
/// flood of connections that never speak is what gets evicted, and a
/// `shoal status` from the same address still gets through.
#[derive(Default)]
struct InFlight {
    next: u64,
    pending: std::collections::BTreeMap<u64, (IpAddr, Option<tokio::task::AbortHandle>)>,
    by_peer: HashMap<IpAddr, std::collections::BTreeSet<u64>>,
}

impl InFlight {
    fn remove(&mut self, id: u64) -> Option<Option<tokio::task::AbortHandle>> {
        let (peer, handle) = self.pending.remove(&id)?;
        if let Some(ids) = self.by_peer.get_mut(&peer) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
        Some(handle)
    }
}

struct Slot {
    table: Arc<Mutex<InFlight>>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).remove(self.id);
    }
}

/// Takes a handshake slot for `peer`, evicting the oldest handshake in the
/// way; returns the slot and how many it evicted.
fn admit(table: &Arc<Mutex<InFlight>>, peer: IpAddr, limits: &Limits) -> (Slot, usize) {
    let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
    let mut evicted = 0;
    loop {
        let mine = t.by_peer.get(&peer).map_or(0, |s| s.len());
        let victim = if mine >= limits.max_handshakes_per_peer.max(1) {
            t.by_peer.get(&peer).and_then(|s| s.first().copied())
        } else if t.pending.len() >= limits.max_handshakes.max(1) {
            t.pending.keys().next().copied()
        } else {
            break;
        };
        let Some(victim) = victim else { break };
        if let Some(Some(h)) = t.remove(victim) {
            h.abort();
        }
        evicted += 1;
    }
    let id = t.next;
    t.next += 1;
    t.pending.insert(id, (peer, None));
    t.by_peer.entry(peer).or_default().insert(id);
    (Slot { table: table.clone(), id }, evicted)
}

fn set_abort(table: &Mutex<InFlight>, id: u64, h: tokio::task::AbortHandle) {
    let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
    match t.pending.get_mut(&id) {
        Some(e) => e.1 = Some(h),
        // Already finished (its slot is gone): nothing to abort later.
        None => drop(t),
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
    tokio::spawn(async move {
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let table = Arc::new(Mutex::new(InFlight::default()));
        let over_log = Arc::new(RateLimitedLog::new(Duration::from_secs(1)));
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
            let info = TcpConnectInfo { local_addr: stream.local_addr().ok(), remote_addr: Some(peer) };
            let Some(acceptor) = &acceptor else {
                let (tx, bulk) = (tx.clone(), bulk.clone());
                let deadline = limits.handshake_deadline;
                tokio::spawn(async move {
                    if let Some(stream) = split_bulk(stream, bulk.as_ref(), deadline).await {
                        let _ = tx.send(Ok(Conn::Plain(stream, info))).await;
                    }
                });
                continue;
            };
            let (slot, evicted) = admit(&table, peer.ip(), &limits);
            for _ in 0..evicted {
                errors.refused(Refusal::Evicted);
            }
            if evicted > 0 {
                over_log.hit(|held| tracing::warn!(%peer, server = what, evicted, held_back = held, "too many TLS handshakes in progress: dropped the oldest"));
            }
            let id = slot.id;
            let (acceptor, tx, fail_log, errors, bulk) = (acceptor.clone(), tx.clone(), fail_log.clone(), errors.clone(), bulk.clone());
            let task = tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let r = tokio::time::timeout(limits.handshake_deadline, acceptor.accept(stream)).await;
                drop(slot);
                match r {
                    Ok(Ok(s)) => {
                        let left = limits.handshake_deadline.saturating_sub(started.elapsed());
                        if let Some(s) = split_bulk(s, bulk.as_ref(), left).await {
                            let _ = tx.send(Ok(Conn::Tls(Box::new(s), info))).await;
                        }
                    }
                    Ok(Err(e)) => {
                        let (why, text) = handshake_reason(&e);
                        errors.refused(why);
                        refused(&fail_log, peer, what, &text)
                    }
                    Err(_) => {
                        errors.refused(Refusal::Timeout);
                        refused(&fail_log, peer, what, "no TLS handshake within the deadline")
                    }
                }
            });
            set_abort(&table, id, task.abort_handle());
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
    fn a_full_table_evicts_the_oldest_handshake_of_the_peer_then_the_oldest_overall() {
        let table = Arc::new(Mutex::new(InFlight::default()));
        let limits = Limits { handshake_deadline: Duration::from_secs(1), max_handshakes: 3, max_handshakes_per_peer: 2 };
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let (a1, e) = admit(&table, a, &limits);
        assert_eq!(e, 0);
        let (a2, _) = admit(&table, a, &limits);
        let (a3, e) = admit(&table, a, &limits);
        assert_eq!(e, 1, "the peer's bound: its oldest goes");
        let live = |t: &Arc<Mutex<InFlight>>| t.lock().unwrap().pending.keys().copied().collect::<Vec<_>>();
        assert_eq!(live(&table), vec![a2.id, a3.id]);
        let (b1, e) = admit(&table, b, &limits);
        assert_eq!(e, 0);
        let (b2, e) = admit(&table, b, &limits);
        assert_eq!(e, 1, "the total bound: the oldest of all goes");
        assert_eq!(live(&table), vec![a3.id, b1.id, b2.id]);
        drop(a1);
        drop(b1);
        assert_eq!(live(&table), vec![a3.id, b2.id], "a finished handshake frees its slot; an evicted one's drop is harmless");
        assert!(table.lock().unwrap().by_peer.values().map(|s| s.len()).sum::<usize>() == 2);
    }

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
