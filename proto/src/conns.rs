//! The connections a server holds, from accept to close.
//!
//! A connection is *unproven* from its accept until its first request that
//! carries the cluster token (its TLS handshake included), then
//! *established*:
//! - Unproven connections are bounded in total and per peer address, and
//!   the oldest is dropped to make room: a real client proves itself within
//!   milliseconds, so what gets dropped is a flood that never speaks. Each
//!   has [`Limits::handshake_deadline`] from its accept to send that first
//!   request.
//! - Established connections are bounded in total and per peer address
//!   too, but never dropped for a newcomer: a request on a connection past
//!   a bound is answered `ResourceExhausted`, naming the bound, and the
//!   connection stays unproven (the deadline closes it unless room opens).
//! - An established connection with no request in progress for
//!   [`Limits::idle_timeout`] is closed. (Shoal's own long-lived links are
//!   open streams, and its clients redial a kept channel they have not used
//!   for [`CLIENT_REUSE`], well within the timeout.)
//!
//! The table is plain state ([`Table`]) that unit tests drive with made-up
//! clocks; [`Guard`] is the tower service in front of a server's gRPC
//! services that checks the token and moves connections through it.

use crate::net::{Limits, RateLimitedLog};
use crate::rpc_errors::{Refusal, RpcErrors};
use futures::task::AtomicWaker;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::transport::server::TcpConnectInfo;

/// How long Shoal's clients reuse a kept channel that sat unused: past it
/// they dial anew, so a server's idle timeout never closes a channel just
/// as a client sends on it.
pub const CLIENT_REUSE: Duration = Duration::from_secs(60);

/// What a connection is while tonic serves it: shared by its byte stream,
/// the requests on it and the server's table.
pub struct ConnState {
    id: u64,
    peer: IpAddr,
    /// It made an authenticated request (and holds an established slot).
    established: AtomicBool,
    /// Requests in progress (a stream counts until its response ends).
    open: AtomicUsize,
    /// When (ms since the registry's epoch) the last request ended.
    idle_since_ms: AtomicU64,
    closing: AtomicBool,
    waker: AtomicWaker,
}

impl ConnState {
    fn new(id: u64, peer: IpAddr, now_ms: u64) -> Self {
        Self {
            id,
            peer,
            established: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(now_ms),
            closing: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    /// Asks the connection to close: its next read or write fails.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether it was asked to close.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Whether it was asked to close; registers `cx` to hear when it is.
    pub(crate) fn closing(&self, cx: &mut Context<'_>) -> bool {
        if self.is_closing() {
            return true;
        }
        self.waker.register(cx.waker());
        self.is_closing()
    }
}

/// What holds an unproven connection: its handshake task, or (handshake
/// done, or plaintext) the connection itself.
enum Holder {
    Handshake(Option<tokio::task::AbortHandle>),
    Conn(Arc<ConnState>),
}

impl Holder {
    fn drop_it(self) {
        match self {
            Holder::Handshake(Some(h)) => h.abort(),
            Holder::Handshake(None) => {}
            Holder::Conn(c) => c.close(),
        }
    }
}

struct Unproven {
    peer: IpAddr,
    since_ms: u64,
    holder: Holder,
}

/// Why an established slot was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Over {
    /// The peer address holds this many already.
    Peer(usize),
    /// The server holds this many already.
    Total(usize),
}

/// Why a sweep closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Swept {
    /// No authenticated request within the deadline.
    NoRequest,
    /// No request in progress for the idle timeout.
    Idle,
}

/// Every connection of one server, unproven and established.
#[derive(Default)]
pub(crate) struct Table {
    next: u64,
    unproven: BTreeMap<u64, Unproven>,
    unproven_by_peer: HashMap<IpAddr, BTreeSet<u64>>,
    established: BTreeMap<u64, Arc<ConnState>>,
    established_by_peer: HashMap<IpAddr, usize>,
}

impl Table {
    /// Takes an unproven slot for a new connection from `peer`; returns its
    /// id and the unproven connections dropped to make room (the peer's
    /// oldest when the peer is at its bound, else the oldest of all).
    fn admit(&mut self, peer: IpAddr, now_ms: u64, limits: &Limits) -> (u64, Vec<Holder>) {
        let mut evicted = Vec::new();
        loop {
            let mine = self.unproven_by_peer.get(&peer).map_or(0, |s| s.len());
            let victim = if mine >= limits.max_unauthenticated_per_peer.max(1) {
                self.unproven_by_peer.get(&peer).and_then(|s| s.first().copied())
            } else if self.unproven.len() >= limits.max_unauthenticated.max(1) {
                self.unproven.keys().next().copied()
            } else {
                break;
            };
            match victim.and_then(|v| self.take_unproven(v)) {
                Some(u) => evicted.push(u.holder),
                None => break,
            }
        }
        let id = self.next;
        self.next += 1;
        self.unproven.insert(id, Unproven { peer, since_ms: now_ms, holder: Holder::Handshake(None) });
        self.unproven_by_peer.entry(peer).or_default().insert(id);
        (id, evicted)
    }

    fn take_unproven(&mut self, id: u64) -> Option<Unproven> {
        let u = self.unproven.remove(&id)?;
        if let Some(ids) = self.unproven_by_peer.get_mut(&u.peer) {
            ids.remove(&id);
            if ids.is_empty() {
                self.unproven_by_peer.remove(&u.peer);
            }
        }
        Some(u)
    }

    /// Records the handshake task of unproven connection `id`; false if
    /// the connection was dropped meanwhile (the task must go too). A
    /// connection its task already handed on keeps that holder.
    fn hold_handshake(&mut self, id: u64, h: &tokio::task::AbortHandle) -> bool {
        match self.unproven.get_mut(&id) {
            Some(Unproven { holder: holder @ Holder::Handshake(_), .. }) => {
                *holder = Holder::Handshake(Some(h.clone()));
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Records that unproven connection `id` is now served as `conn`; false
    /// if it was dropped meanwhile.
    fn hold_conn(&mut self, id: u64, conn: &Arc<ConnState>) -> bool {
        match self.unproven.get_mut(&id) {
            Some(u) => {
                u.holder = Holder::Conn(conn.clone());
                true
            }
            None => false,
        }
    }

    /// Moves `conn` from unproven to established, unless a bound on
    /// established connections is reached: it then stays unproven, so the
    /// deadline closes it unless a later request finds room.
    fn establish(&mut self, conn: &Arc<ConnState>, limits: &Limits) -> Result<(), Over> {
        if self.established.contains_key(&conn.id) {
            return Ok(());
        }
        let mine = self.established_by_peer.get(&conn.peer).copied().unwrap_or(0);
        if mine >= limits.max_connections_per_peer {
            return Err(Over::Peer(mine));
        }
        if self.established.len() >= limits.max_connections {
            return Err(Over::Total(self.established.len()));
        }
        self.take_unproven(conn.id);
        self.established.insert(conn.id, conn.clone());
        *self.established_by_peer.entry(conn.peer).or_default() += 1;
        Ok(())
    }

    /// Forgets connection `id` (it closed).
    fn remove(&mut self, id: u64) {
        self.take_unproven(id);
        if let Some(c) = self.established.remove(&id)
            && let Some(n) = self.established_by_peer.get_mut(&c.peer)
        {
            *n -= 1;
            if *n == 0 {
                self.established_by_peer.remove(&c.peer);
            }
        }
    }

    /// Takes out the connections due to close at `now_ms`: unproven ones
    /// past the deadline (their handshake task times out on its own) and
    /// established ones idle for the idle timeout.
    fn sweep(&mut self, now_ms: u64, limits: &Limits) -> Vec<(Arc<ConnState>, Swept)> {
        let deadline = limits.handshake_deadline.as_millis() as u64;
        let idle = limits.idle_timeout.as_millis() as u64;
        let late: Vec<u64> = self
            .unproven
            .iter()
            .take_while(|(_, u)| now_ms.saturating_sub(u.since_ms) >= deadline)
            .filter(|(_, u)| matches!(u.holder, Holder::Conn(_)))
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::new();
        for id in late {
            if let Some(Unproven { holder: Holder::Conn(c), .. }) = self.take_unproven(id) {
                out.push((c, Swept::NoRequest));
            }
        }
        let idle_ids: Vec<u64> = self
            .established
            .values()
            .filter(|c| c.open.load(Ordering::Acquire) == 0 && now_ms.saturating_sub(c.idle_since_ms.load(Ordering::Acquire)) >= idle)
            .map(|c| c.id)
            .collect();
        for id in idle_ids {
            if let Some(c) = self.established.get(&id).cloned() {
                self.remove(id);
                out.push((c, Swept::Idle));
            }
        }
        out
    }

    /// (unproven, established) connections held.
    fn counts(&self) -> (usize, usize) {
        (self.unproven.len(), self.established.len())
    }
}

/// One server's connections and the bounds they are held to.
pub struct Registry {
    limits: Limits,
    epoch: Instant,
    table: Mutex<Table>,
    errors: Arc<RpcErrors>,
    what: &'static str,
    over_log: RateLimitedLog,
    silent_log: RateLimitedLog,
    idle_log: RateLimitedLog,
}

impl Registry {
    /// The table of the server named `what` in logs, counting into `errors`.
    pub(crate) fn new(limits: Limits, what: &'static str, errors: Arc<RpcErrors>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            epoch: Instant::now(),
            table: Mutex::new(Table::default()),
            errors,
            what,
            over_log: RateLimitedLog::new(Duration::from_secs(1)),
            silent_log: RateLimitedLog::new(Duration::from_secs(1)),
            idle_log: RateLimitedLog::new(Duration::from_secs(1)),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes an unproven slot for a connection from `peer`, dropping the
    /// oldest unproven ones in the way.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Ticket {
        let (id, evicted) = self.table().admit(peer, self.now_ms(), &self.limits);
        let n = evicted.len();
        for h in evicted {
            self.errors.refused(Refusal::Evicted);
            h.drop_it();
        }
        if n > 0 {
            let what = self.what;
            self.over_log.hit(|held| {
                tracing::warn!(%peer, server = what, evicted = n, held_back = held, "too many connections without an authenticated request: dropped the oldest")
            });
        }
        Ticket { registry: self.clone(), id, peer }
    }

    /// Records the task doing connection `id`'s handshake, so that an
    /// eviction aborts it (at once, if it is already gone).
    pub(crate) fn set_handshake(&self, id: u64, h: tokio::task::AbortHandle) {
        if !self.table().hold_handshake(id, &h) {
            h.abort();
        }
    }

    /// Closes the connections due, counts and logs them.
    fn sweep(&self) {
        let (due, (unproven, established)) = {
            let mut t = self.table();
            (t.sweep(self.now_ms(), &self.limits), t.counts())
        };
        for (c, why) in due {
            c.close();
            let what = self.what;
            match why {
                Swept::NoRequest => {
                    self.errors.refused(Refusal::NoRequest);
                    self.silent_log.hit(|held| {
                        tracing::warn!(peer = %c.peer, server = what, held_back = held, "closed a connection that sent no authenticated request within the deadline")
                    });
                }
                Swept::Idle => {
                    self.errors.closed_idle();
                    self.idle_log.hit(|held| tracing::info!(peer = %c.peer, server = what, held_back = held, "closed an idle connection"));
                }
            }
        }
        self.errors.set_connections(unproven, established);
    }

    /// Sweeps every `every` while anyone holds the registry.
    pub(crate) fn spawn_sweeper(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(r) => r.sweep(),
                    None => return,
                }
            }
        });
    }
}

/// A connection's place in its server's table, from accept to close.
pub(crate) struct Ticket {
    registry: Arc<Registry>,
    id: u64,
    peer: IpAddr,
}

impl Ticket {
    /// The connection's id in its table.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The connection's state once it is handed to tonic; `None` if it was
    /// dropped meanwhile.
    pub(crate) fn into_conn(self, tcp: TcpConnectInfo) -> Option<(ConnInfo, Ticket)> {
        let state = Arc::new(ConnState::new(self.id, self.peer, self.registry.now_ms()));
        if !self.registry.table().hold_conn(self.id, &state) {
            return None;
        }
        Some((ConnInfo { tcp, state, registry: self.registry.clone() }, self))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.registry.table().remove(self.id);
    }
}

/// What tonic hands every request of a connection: its addresses, and its
/// place in the server's table.
#[derive(Clone)]
pub struct ConnInfo {
    tcp: TcpConnectInfo,
    pub(crate) state: Arc<ConnState>,
    registry: Arc<Registry>,
}

impl ConnInfo {
    /// Makes this connection established on its first authenticated
    /// request; the status to answer with when a bound is reached.
    fn establish(&self) -> Result<(), tonic::Status> {
        if self.state.established.load(Ordering::Acquire) {
            return Ok(());
        }
        let r = self.registry.table().establish(&self.state, &self.registry.limits);
        match r {
            Ok(()) => {
                self.state.established.store(true, Ordering::Release);
                Ok(())
            }
            Err(over) => {
                self.registry.errors.refused(Refusal::TooMany);
                let (peer, what) = (self.state.peer, self.registry.what);
                let text = match over {
                    Over::Peer(n) => format!("{peer} already holds {n} connections to this {what} (its --max-connections-per-peer)"),
                    Over::Total(n) => format!("this {what} already holds {n} connections (its --max-connections)"),
                };
                self.registry.over_log.hit(|held| tracing::warn!(%peer, server = what, held_back = held, "refused a connection: {text}"));
                Err(tonic::Status::resource_exhausted(format!("too many connections: {text}; close some, or raise the bound")))
            }
        }
    }

    /// Counts a request in progress until the returned guard drops.
    fn open_request(&self) -> OpenRequest {
        self.state.open.fetch_add(1, Ordering::AcqRel);
        OpenRequest { state: self.state.clone(), registry: self.registry.clone() }
    }
}

/// A request in progress on a connection.
struct OpenRequest {
    state: Arc<ConnState>,
    registry: Arc<Registry>,
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.state.idle_since_ms.store(self.registry.now_ms(), Ordering::Release);
        self.state.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in progress.
struct Tracked {
    inner: tonic::body::Body,
    _open: OpenRequest,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The tower service in front of a server's gRPC services: checks the
/// cluster token on every request (in constant time), makes a connection
/// established on its first authenticated request (or refuses it past a
/// bound), and counts its requests in progress for the idle timeout.
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    token: crate::auth::CheckToken,
    refused_log: Arc<RateLimitedLog>,
}

impl<S> Guard<S> {
    /// `inner` behind the token `token` (`None`: insecure, no token).
    pub fn new(inner: S, token: Option<&str>) -> Self {
        Self { inner, token: crate::auth::CheckToken::new(token), refused_log: Arc::new(RateLimitedLog::new(Duration::from_secs(1))) }
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for Guard<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let info = req.extensions().get::<ConnInfo>().cloned();
        if let Some(i) = &info {
            // What tonic's `Request::remote_addr` reads.
            req.extensions_mut().insert(i.tcp.clone());
        }
        let header = req.headers().get(crate::auth::HEADER).map(|v| v.as_bytes());
        if let Err(e) = self.token.check(header) {
            let peer = info.as_ref().and_then(|i| i.tcp.remote_addr()).map_or_else(|| "unknown".to_string(), |a| a.to_string());
            self.refused_log.hit(|held| tracing::warn!(%peer, held_back = held, "refused a request: {}", e.message()));
            return Box::pin(std::future::ready(Ok(e.into_http())));
        }
        let open = match &info {
            Some(i) => match i.establish() {
                Ok(()) => Some(i.open_request()),
                Err(e) => return Box::pin(std::future::ready(Ok(e.into_http()))),
            },
            None => None,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await?;
            Ok(match open {
                Some(open) => r.map(|inner| tonic::body::Body::new(Tracked { inner, _open: open })),
                None => r,
            })
        })
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Guard<S> {
    const NAME: &'static str = S::NAME;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            handshake_deadline: Duration::from_millis(100),
            max_unauthenticated: 3,
            max_unauthenticated_per_peer: 2,
            max_connections: 3,
            max_connections_per_peer: 2,
            idle_timeout: Duration::from_millis(1000),
        }
    }

    fn conn(t: &mut Table, peer: IpAddr, now: u64) -> Arc<ConnState> {
        let (id, evicted) = t.admit(peer, now, &limits());
        evicted.into_iter().for_each(Holder::drop_it);
        let c = Arc::new(ConnState::new(id, peer, now));
        assert!(t.hold_conn(id, &c));
        c
    }

    fn closed(c: &ConnState) -> bool {
        c.closing.load(Ordering::Acquire)
    }

    #[test]
    fn unproven_connections_make_room_oldest_first_by_peer_then_overall() {
        let mut t = Table::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = conn(&mut t, a, 0);
        let a2 = conn(&mut t, a, 1);
        let (_, ev) = t.admit(a, 2, &limits());
        assert_eq!(ev.len(), 1, "the peer's bound: its oldest goes");
        ev.into_iter().for_each(Holder::drop_it);
        assert!(closed(&a1) && !closed(&a2));
        let b1 = conn(&mut t, b, 3);
        let (_, ev) = t.admit(b, 4, &limits());
        assert_eq!(ev.len(), 1, "the total bound: the oldest of all goes");
        ev.into_iter().for_each(Holder::drop_it);
        assert!(closed(&a2) && !closed(&b1));
        assert_eq!(t.counts(), (3, 0));
        t.remove(b1.id);
        assert_eq!(t.counts(), (2, 0));
    }

    #[test]
    fn established_connections_are_bounded_by_peer_and_in_total_and_never_evicted() {
        let mut t = Table::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let l = limits();
        let a1 = conn(&mut t, a, 0);
        let a2 = conn(&mut t, a, 0);
        assert_eq!(t.establish(&a1, &l), Ok(()));
        assert_eq!(t.establish(&a2, &l), Ok(()));
        let a3 = conn(&mut t, a, 0);
        assert_eq!(t.establish(&a3, &l), Err(Over::Peer(2)));
        let b1 = conn(&mut t, b, 0);
        assert_eq!(t.establish(&b1, &l), Ok(()));
        let b2 = conn(&mut t, b, 0);
        assert_eq!(t.establish(&b2, &l), Err(Over::Total(3)));
        // A flood of unproven ones does not touch the established.
        for i in 0..10 {
            let (_, ev) = t.admit(b, i, &l);
            ev.into_iter().for_each(Holder::drop_it);
        }
        assert!(!closed(&a1) && !closed(&a2) && !closed(&b1));
        assert_eq!(t.counts().1, 3);
        t.remove(a1.id);
        let a4 = conn(&mut t, a, 0);
        assert_eq!(t.establish(&a4, &l), Ok(()), "a closed one frees its slot");
    }

    #[test]
    fn a_sweep_closes_the_silent_after_the_deadline_and_the_idle_after_the_timeout() {
        let mut t = Table::default();
        let l = limits();
        let p: IpAddr = "10.0.0.1".parse().unwrap();
        let silent = conn(&mut t, p, 0);
        let (handshaking, _) = t.admit("10.0.0.9".parse().unwrap(), 0, &l);
        let busy = conn(&mut t, p, 0);
        assert_eq!(t.establish(&busy, &l), Ok(()));
        busy.open.store(1, Ordering::Release);
        let idle = conn(&mut t, "10.0.0.2".parse().unwrap(), 0);
        assert_eq!(t.establish(&idle, &l), Ok(()));
        idle.idle_since_ms.store(50, Ordering::Release);
        assert!(t.sweep(99, &l).is_empty());
        let due = t.sweep(100, &l);
        assert_eq!(due.iter().map(|(c, w)| (c.id, *w)).collect::<Vec<_>>(), vec![(silent.id, Swept::NoRequest)]);
        assert_eq!(t.counts(), (1, 2), "the handshake times out in its own task");
        assert!(t.sweep(1049, &l).is_empty());
        let due = t.sweep(1050, &l);
        assert_eq!(due.iter().map(|(c, w)| (c.id, *w)).collect::<Vec<_>>(), vec![(idle.id, Swept::Idle)]);
        assert!(t.sweep(100_000, &l).is_empty(), "a request in progress keeps a connection however long");
        t.remove(handshaking);
        t.remove(idle.id);
        assert_eq!(t.counts(), (0, 1));
    }

    #[test]
    fn random_event_sequences_keep_the_table_consistent_and_within_its_bounds() {
        let l = limits();
        for seed in 1..200u64 {
            let mut rng = shoal_domain::seeded::Xorshift::new(seed);
            let mut t = Table::default();
            let mut live: Vec<Arc<ConnState>> = Vec::new();
            for step in 0..300u64 {
                let peer: IpAddr = format!("10.0.0.{}", rng.below(3)).parse().unwrap();
                match rng.below(5) {
                    0 | 1 => live.push(conn(&mut t, peer, step)),
                    2 if !live.is_empty() => {
                        let c = live[rng.below(live.len() as u64) as usize].clone();
                        let _ = t.establish(&c, &l);
                    }
                    3 if !live.is_empty() => {
                        let c = live.swap_remove(rng.below(live.len() as u64) as usize);
                        t.remove(c.id);
                    }
                    _ => {
                        for (c, _) in t.sweep(step, &l) {
                            c.close();
                        }
                    }
                }
                live.retain(|c| !closed(c) || t.established.contains_key(&c.id) || t.unproven.contains_key(&c.id));
                let (u, e) = t.counts();
                assert!(u <= l.max_unauthenticated && e <= l.max_connections, "seed {seed}: bounds ({u}, {e})");
                assert_eq!(t.unproven_by_peer.values().map(|s| s.len()).sum::<usize>(), u, "seed {seed}");
                assert_eq!(t.established_by_peer.values().sum::<usize>(), e, "seed {seed}");
                assert!(t.established_by_peer.values().all(|n| *n <= l.max_connections_per_peer && *n > 0), "seed {seed}");
                assert!(t.established.keys().all(|id| !t.unproven.contains_key(id)), "seed {seed}: in both states");
            }
        }
    }
}
