//! Direct actor calls: a caller on the actor's machine sends its method
//! calls straight to the actor's executor over a Unix socket of the
//! actor's own, and reads the results from it, instead of through the head
//! and the worker (Ray's direct actor calls). Once connected, the two ends
//! exchange frames through two rings in memory they share ([`crate::ring`]),
//! the socket only waking a peer that sleeps: a round trip between two
//! ends spinning a moment on their own cores makes no system call.
//!
//! - **Where.** An actor whose methods are all sync listens on the abstract
//!   socket [`socket_addr`]`(its node, its id)` once its constructor
//!   succeeded; only processes of the same user connect (the peer's uid is
//!   checked), the trust a same-machine driver mapping the store already
//!   has. A caller looks its actor up in the cluster status once (in the
//!   background; calls meanwhile go through the head) and connects; an
//!   actor on another machine, in another network namespace, or with
//!   async methods is not reachable so, and its calls keep going through
//!   the head.
//! - **Order.** Calls from one caller run in the order made, on either
//!   path: a call goes direct only when none of the caller's calls to that
//!   actor through the head is unfinished, and a call that must go through
//!   the head (its arguments hold refs) first waits for the direct ones in
//!   flight.
//! - **Results** belong to the caller: small values travel back inline and
//!   the head hears of them only if the ref is sent on (an argument, inside
//!   a value: it is `put` under the call's id then); large ones are written
//!   into the actor's node's store and the caller tells the head at once
//!   that it owns them there. A value holding refs is put at once too; the
//!   actor keeps those refs alive until the caller's put is acknowledged.
//! - **Death.** When the actor's process ends under calls in flight, the
//!   caller waits for the head to see it: calls fail with
//!   [`TaskError::ActorDied`] (the head's cause), or, when the actor
//!   restarted and allows `max_task_retries`, are sent again through the
//!   head to the new instance, before later calls.
//! - **Not seen by the head**: direct calls do not appear in task counts
//!   and listings, and cannot be cancelled once sent.

use crate::driver::Out;
use crate::error::TaskError;
use crate::functions::FunctionMeta;
use crate::object_ref::RefInner;
use crate::objects::Cluster;
use crate::ring::Rings;
use crate::slot::Slot;
use crate::values::Val;
use bytes::Bytes;
use prost::Message;
use shoal_domain::actor::ActorState;
use shoal_proto::pb;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// How long a caller waiting for a direct result, and an actor waiting for
/// its next call, spin before they sleep: a round trip's worth, so that a
/// call-get loop never sleeps (`SHOAL_DIRECT_SPIN_US`, default 100).
pub(crate) fn spin() -> Duration {
    static SPIN: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SPIN.get_or_init(|| micros_from_env("SHOAL_DIRECT_SPIN_US", 100))
}

/// The first part of a spin, without yielding the core (on a core of
/// their own, caller and actor answer each other within it;
/// `SHOAL_DIRECT_HOT_US`, default 15).
pub(crate) fn hot_spin() -> Duration {
    static HOT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *HOT.get_or_init(|| micros_from_env("SHOAL_DIRECT_HOT_US", 15))
}

/// Microseconds from environment variable `var`, else `default`.
fn micros_from_env(var: &str, default: u64) -> Duration {
    Duration::from_micros(std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default))
}

/// How long a caller waits on the socket itself after spinning, before
/// it leaves the reading to the connection's thread.
pub(crate) const SOCKET_WAIT: Duration = Duration::from_millis(2);

/// Environment variable that turns direct calls off (`0`) in a process.
pub(crate) const ENV_DIRECT_CALLS: &str = "SHOAL_DIRECT_ACTOR_CALLS";

/// The abstract socket actor `actor` on node `node` (a full node id)
/// listens on: unique per node (random ids) and actor; none once its
/// process ends, so a restart on the same node binds it again.
pub(crate) fn socket_addr(node: &str, actor: u64) -> Option<SocketAddr> {
    let node = shoal_domain::NodeId::parse(node)?;
    SocketAddr::from_abstract_name(format!("shoal-actor-{}-{actor:x}", node.0.simple())).ok()
}

fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var(ENV_DIRECT_CALLS).map_or(true, |v| v != "0"))
}

// ---------------------------------------------------------------- wire

/// Reads what the socket has without waiting; `Ok(false)` at its end.
pub(crate) fn recv_available(fd: RawFd, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    loop {
        buf.reserve(64 << 10);
        let spare = buf.spare_capacity_mut();
        // SAFETY: `spare` is writable memory of this length; recv writes
        // at most that many bytes and we only count what it wrote.
        let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), libc::MSG_DONTWAIT) };
        if n > 0 {
            // SAFETY: recv initialised `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n as usize) };
            continue;
        }
        if n == 0 {
            return Ok(false);
        }
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            std::io::ErrorKind::WouldBlock => Ok(true),
            std::io::ErrorKind::Interrupted => continue,
            _ => Err(e),
        };
    }
}

/// The whole frames at the front of `buf`, taken out of it.
pub(crate) fn take_frames<M: Message + Default>(buf: &mut Vec<u8>) -> std::io::Result<Vec<M>> {
    let mut at = 0;
    let mut out = Vec::new();
    while let Some(header) = buf.get(at..at + 4) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > shoal_proto::frame::MAX_FRAME {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a {len}-byte frame")));
        }
        let Some(body) = buf.get(at + 4..at + 4 + len) else { break };
        out.push(M::decode(body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?);
        at += 4 + len;
    }
    buf.drain(..at);
    Ok(out)
}

/// Waits until `fd` is readable, at most `timeout` (`None`: no limit).
pub(crate) fn wait_readable(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> usize {
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: `fds` is a valid array of pollfd of this length.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    n.max(0) as usize
}

/// The CPU this thread runs on, plus one (0: unknown).
pub(crate) fn cpu() -> u32 {
    // SAFETY: sched_getcpu has no preconditions.
    let c = unsafe { libc::sched_getcpu() };
    if c < 0 { 0 } else { c as u32 + 1 }
}

/// Moves this thread off CPU `cpu` (plus one, as [`cpu`] gives it) to
/// another it may run on, leaving it free to run anywhere again after
/// (where the kernel then keeps it unless load says otherwise). False if
/// there is no other CPU to go to.
pub(crate) fn leave_cpu(cpu: u32) -> bool {
    let Some(cpu) = (cpu as usize).checked_sub(1) else { return false };
    // SAFETY: cpu_set_t is plain bits; zeroed is the empty set.
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: the set is valid for `size` bytes; 0 is this thread.
    if unsafe { libc::sched_getaffinity(0, size, &mut allowed) } != 0 || cpu >= libc::CPU_SETSIZE as usize {
        return false;
    }
    let mut elsewhere = allowed;
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above).
    if unsafe {
        libc::CPU_CLR(cpu, &mut elsewhere);
        libc::CPU_COUNT(&elsewhere)
    } == 0
    {
        return false;
    }
    // SAFETY: as above; excluding the current CPU migrates the thread
    // before the call returns; the second call only widens the set again.
    unsafe {
        if libc::sched_setaffinity(0, size, &elsewhere) != 0 {
            return false;
        }
        libc::sched_setaffinity(0, size, &allowed);
    }
    tracing::debug!(from = cpu, "an actor moved off its direct caller's CPU");
    true
}

/// The process id of the peer of `s` if it runs as this process's user.
pub(crate) fn peer_of_same_user(s: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes one ucred into `cred`, of size `len`.
    let r = unsafe { libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &mut len) };
    // SAFETY: geteuid has no preconditions.
    (r == 0 && cred.uid == unsafe { libc::geteuid() } && cred.pid > 0).then_some(cred.pid as u32)
}

/// Whether the other end of socket `fd` closed it (checked without
/// waiting or reading).
pub(crate) fn peer_gone(fd: RawFd) -> bool {
    let mut fds = [libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 }];
    wait_readable(&mut fds, Some(Duration::ZERO)) > 0 && fds[0].revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0
}

/// How long a caller waits for a new actor connection's answer to its
/// rings (an actor busy in a long method answers late; the calls go
/// through the head meanwhile, and the caller tries again later).
const HANDSHAKE: Duration = Duration::from_secs(2);

/// Offers the actor behind `stream` the rings calls and results will
/// travel through, and waits for its yes.
fn handshake(stream: &UnixStream) -> std::io::Result<Rings> {
    let rings = Rings::create(crate::ring::CAPACITY)?;
    let (fd, inode) = rings.file_id();
    let mut buf = Vec::new();
    let offer = pb::DirectRings { fd: fd as u32, inode, capacity: rings.capacity() };
    shoal_proto::frame::encode(&pb::DirectToActor { rings: Some(offer), cpu: cpu(), ..Default::default() }, &mut buf);
    stream.set_write_timeout(Some(HANDSHAKE))?;
    (&*stream).write_all(&buf)?;
    let until = Instant::now() + HANDSHAKE;
    let mut got = Vec::new();
    loop {
        if let Some(answer) = take_frames::<pb::ActorToDirect>(&mut got)?.into_iter().next() {
            return if answer.rings_ready { Ok(rings) } else { Err(std::io::Error::other("the actor refused the rings")) };
        }
        let left = until.saturating_duration_since(Instant::now());
        let mut fds = [libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        if left.is_zero() || wait_readable(&mut fds, Some(left)) == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the actor did not answer"));
        }
        if !recv_available(stream.as_raw_fd(), &mut got)? {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the actor closed the connection"));
        }
    }
}

// ---------------------------------------------------------------- caller side

/// This process's ways to its actors, by actor id.
#[derive(Default)]
pub(crate) struct Routes {
    map: Mutex<HashMap<u64, Route>>,
}

#[derive(Default)]
struct Route {
    conn: Option<Arc<Conn>>,
    lookup: Lookup,
    /// Calls sent through the head not known finished, oldest first: no
    /// call goes direct until they are (order).
    head_calls: std::collections::VecDeque<Arc<Slot>>,
}

#[derive(Default)]
enum Lookup {
    /// Look it up on the next call after this instant.
    #[default]
    Now,
    After(Instant, Duration),
    Running,
    /// Dead for good: never.
    Never,
}

/// A call in flight on a connection.
struct Pending {
    slot: Arc<Slot>,
    inner: Weak<RefInner>,
    meta: &'static FunctionMeta,
    args: Vec<Bytes>,
}

/// Calls in flight on a connection, by id (in the order made).
#[derive(Default)]
struct InFlight {
    calls: BTreeMap<u64, Pending>,
    /// The connection ended under calls whose fate is not settled yet.
    resolving: bool,
}

impl InFlight {
    fn idle(&self) -> bool {
        self.calls.is_empty() && !self.resolving
    }
}

/// A connection to one actor's executor.
pub(crate) struct Conn {
    actor: u64,
    class: String,
    /// Full id of the actor's node, and its object store's address.
    node: String,
    holder: String,
    /// The actor's restarts and retry budget when we connected.
    restarts: u32,
    max_task_retries: u32,
    /// Wakes the actor when it sleeps (and is woken by it); its end
    /// tells us the actor's process is gone.
    stream: UnixStream,
    /// Calls out, results in.
    rings: Rings,
    cluster: Weak<Cluster>,
    /// Calls not yet written into the ring (see [`Conn::send`]); held
    /// while writing.
    write: Mutex<Vec<u8>>,
    /// Results arrived since calls were last written: queued calls go now.
    flush_wanted: AtomicBool,
    /// Held while reading the results' ring, with the bytes of a frame not
    /// whole yet.
    read: Mutex<Vec<u8>>,
    pending: Mutex<InFlight>,
    drained: Condvar,
    closed: AtomicBool,
    /// Threads reading for themselves in [`Conn::wait_here`]: while there are, the
    /// reader thread stays off the socket (its wake-ups would take a core
    /// from the spinning caller or the actor).
    spinning: AtomicUsize,
    /// The CPU the actor last answered from (plus one; 0: unknown).
    actor_cpu: std::sync::atomic::AtomicU32,
    reader: std::sync::OnceLock<std::thread::Thread>,
}

/// Calls actor `actor`'s method `meta` directly, if it can go so now
/// (`args` all inline values, a connection, no head call unfinished).
pub(crate) fn try_call(cluster: &Arc<Cluster>, actor: u64, meta: &'static FunctionMeta, args: Option<Vec<Bytes>>) -> Option<Arc<RefInner>> {
    if !enabled() {
        return None;
    }
    let conn = {
        let mut map = cluster.routes.map.lock().unwrap_or_else(|p| p.into_inner());
        let route = map.entry(actor).or_default();
        match &route.conn {
            Some(c) if !c.closed.load(Ordering::Acquire) => {
                // The newest head call unfinished: the caller is still on
                // the head path (checked in O(1) per call).
                if route.head_calls.back().is_some_and(|s| !s.is_done()) {
                    return None;
                }
                route.head_calls.retain(|s| !s.is_done());
                if !route.head_calls.is_empty() {
                    return None;
                }
                c.clone()
            }
            _ => {
                route.conn = None;
                let due = match route.lookup {
                    Lookup::Now => true,
                    Lookup::After(t, _) => Instant::now() >= t,
                    Lookup::Running | Lookup::Never => false,
                };
                if due {
                    let backoff = match route.lookup {
                        Lookup::After(_, b) => b,
                        _ => Duration::ZERO,
                    };
                    route.lookup = Lookup::Running;
                    start_lookup(cluster, actor, backoff);
                }
                return None;
            }
        }
    };
    let args = args?;
    Some(conn.call(cluster, meta, args))
}

/// Before a call to `actor` goes through the head: direct calls in flight
/// finish first (order).
pub(crate) fn before_head_call(cluster: &Arc<Cluster>, actor: u64) {
    let conn = cluster.routes.map.lock().unwrap_or_else(|p| p.into_inner()).get(&actor).and_then(|r| r.conn.clone());
    if let Some(c) = conn {
        let mut p = c.pending.lock().unwrap_or_else(|p| p.into_inner());
        while !p.idle() {
            p = c.drained.wait(p).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A call to `actor` went through the head; its result lands in `slot`.
pub(crate) fn after_head_call(cluster: &Arc<Cluster>, actor: u64, slot: Arc<Slot>) {
    if !enabled() {
        return;
    }
    let mut map = cluster.routes.map.lock().unwrap_or_else(|p| p.into_inner());
    let route = map.entry(actor).or_default();
    while route.head_calls.front().is_some_and(|s| s.is_done()) {
        route.head_calls.pop_front();
    }
    route.head_calls.push_back(slot);
}

/// The actor is being killed from here: later calls go through the head
/// (after the kill, so they fail as it says); calls in flight fail as
/// the head says once it ended the actor.
pub(crate) fn forget(cluster: &Arc<Cluster>, actor: u64) {
    let conn = {
        let mut map = cluster.routes.map.lock().unwrap_or_else(|p| p.into_inner());
        let r = map.entry(actor).or_default();
        r.lookup = Lookup::Never;
        r.conn.take()
    };
    if let Some(c) = conn {
        c.close("the actor is being killed".into());
    }
}

fn set_lookup(cluster: &Arc<Cluster>, actor: u64, lookup: Lookup, conn: Option<Arc<Conn>>) {
    let mut map = cluster.routes.map.lock().unwrap_or_else(|p| p.into_inner());
    let route = map.entry(actor).or_default();
    route.lookup = lookup;
    if conn.is_some() {
        route.conn = conn;
    }
}

/// Finds where `actor` runs and connects to it, in the background.
fn start_lookup(cluster: &Arc<Cluster>, actor: u64, backoff: Duration) {
    let cluster = cluster.clone();
    crate::runtime::runtime().spawn(async move {
        let retry = |b: Duration, least: Duration| {
            let b = (b * 2).clamp(least, Duration::from_secs(60));
            Lookup::After(Instant::now() + b, b)
        };
        let st = match crate::status::fetch(&cluster.address, cluster.token.as_deref()).await {
            Ok(st) => st,
            Err(_) => return set_lookup(&cluster, actor, retry(backoff, Duration::from_secs(1)), None),
        };
        let Some(a) = st.actors.iter().find(|a| a.id.0 == actor) else {
            return set_lookup(&cluster, actor, retry(backoff, Duration::from_millis(200)), None);
        };
        let node = match (&a.state, a.node) {
            (ActorState::Dead, _) => return set_lookup(&cluster, actor, Lookup::Never, None),
            (ActorState::Alive, Some(n)) => n,
            // Starting (or restarting): soon again.
            _ => return set_lookup(&cluster, actor, Lookup::After(Instant::now() + Duration::from_millis(20), Duration::from_millis(20)), None),
        };
        let node_full = format!("{node:#}");
        let status = st.nodes.iter().find(|n| n.id == node);
        let holder = status.map(|n| n.object_address.clone()).unwrap_or_default();
        // The head counts an actor alive from when its constructor was
        // sent; on this machine it listens soon after.
        let here = status.is_some_and(|n| n.hostname == shoal_worker::config::hostname());
        let stream = socket_addr(&node_full, actor).and_then(|addr| UnixStream::connect_addr(&addr).ok());
        let Some(stream) = stream else {
            // Not listening yet, another machine, or an actor with async
            // methods: through the head, and ask again now and then (it
            // may restart here).
            // Here, it listens within milliseconds of starting: look again
            // every few (at most 20 ms apart) rather than backing off.
            let next = if here {
                (backoff * 2).clamp(Duration::from_millis(2), Duration::from_millis(20))
            } else {
                (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
            };
            return set_lookup(&cluster, actor, Lookup::After(Instant::now() + next, next), None);
        };
        // The connection's own thread agrees on the rings with the actor
        // (it answers between calls), then reads results when no caller
        // waits for one.
        let (class, restarts, max_task_retries) = (a.class.clone(), a.restarts, a.max_task_retries);
        let weak = Arc::downgrade(&cluster);
        let serve = move || {
            let Some(cluster) = weak.upgrade() else { return };
            let rings = match handshake(&stream) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(actor = %crate::ObjectId(actor), error = %e, "no direct connection to the actor");
                    return set_lookup(&cluster, actor, retry(backoff, Duration::from_millis(100)), None);
                }
            };
            tracing::debug!(actor = %crate::ObjectId(actor), node = %node, "calling the actor directly");
            let conn = Arc::new(Conn {
                actor,
                class,
                node: node_full,
                holder,
                restarts,
                max_task_retries,
                stream,
                rings,
                cluster: Arc::downgrade(&cluster),
                write: Mutex::new(Vec::new()),
                flush_wanted: AtomicBool::new(false),
                read: Mutex::new(Vec::new()),
                pending: Mutex::new(InFlight::default()),
                drained: Condvar::new(),
                closed: AtomicBool::new(false),
                spinning: AtomicUsize::new(0),
                actor_cpu: std::sync::atomic::AtomicU32::new(0),
                reader: std::sync::OnceLock::new(),
            });
            let _ = conn.reader.set(std::thread::current());
            set_lookup(&cluster, actor, Lookup::Now, Some(conn.clone()));
            drop(cluster);
            conn.read_loop();
        };
        if std::thread::Builder::new().name("shoal-direct".into()).spawn(serve).is_err() {
            set_lookup(&cluster, actor, retry(backoff, Duration::from_secs(1)), None);
        }
    });
}

impl Conn {
    fn call(self: &Arc<Self>, cluster: &Arc<Cluster>, meta: &'static FunctionMeta, args: Vec<Bytes>) -> Arc<RefInner> {
        let id = cluster.next_id();
        let slot = Slot::pending();
        let inner = RefInner::direct(id, slot.clone(), cluster.clone(), self.clone());
        let call = pb::ExecTask {
            task: id,
            method: meta.name.to_string(),
            args: args.iter().map(|a| pb::ExecArg { value: a.clone(), ..Default::default() }).collect(),
            ..Default::default()
        };
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).calls.insert(id, Pending { slot, inner: Arc::downgrade(&inner), meta, args });
        if let Err(e) = self.send(&pb::DirectToActor { calls: vec![call], cpu: cpu(), ..Default::default() }, false) {
            self.close(format!("sending a call: {e}"));
        }
        inner
    }

    /// Queues `msg` for the actor and writes what is queued into the
    /// calls' ring (waiting while it is full, ringing the actor awake if
    /// it sleeps), unless (`now` false) other calls are in flight, no
    /// result came since the last write and little is queued: then it goes
    /// with the next write, when the next result arrives or a caller waits
    /// (Nagle's rule: a stream of calls leaves in batches as large as a
    /// round trip allows, which the actor answers with one frame of
    /// results each, while a lone call leaves at once).
    fn send(&self, msg: &pb::DirectToActor, now: bool) -> std::io::Result<()> {
        const BATCH: usize = 64 << 10;
        let r = {
            let mut buf = self.write.lock().unwrap_or_else(|p| p.into_inner());
            shoal_proto::frame::encode(msg, &mut buf);
            // Checked under the write lock: a result delivered after this
            // check finds the queued bytes when it flushes.
            let lone = self.pending.lock().unwrap_or_else(|p| p.into_inner()).calls.len() <= 1;
            if now || lone || buf.len() >= BATCH || self.flush_wanted.swap(false, Ordering::SeqCst) { self.write_out(&mut buf) } else { Ok(()) }
        };
        self.flush_if_wanted();
        r
    }

    /// Writes the queued calls `buf` into the ring.
    fn write_out(&self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        let fd = self.stream.as_raw_fd();
        let r = crate::ring::write_all(&self.rings, fd, buf, || self.closed.load(Ordering::Acquire) || peer_gone(fd));
        buf.clear();
        r
    }

    /// Writes the queued calls, waiting for the write lock.
    fn flush_writes(self: &Arc<Self>) {
        let r = {
            let mut buf = self.write.lock().unwrap_or_else(|p| p.into_inner());
            self.flush_wanted.store(false, Ordering::SeqCst);
            if buf.is_empty() { Ok(()) } else { self.write_out(&mut buf) }
        };
        if let Err(e) = r {
            self.close(format!("sending calls: {e}"));
        }
    }

    /// Writes the queued calls if results arrived since the last write,
    /// without waiting: a thread holding the write lock looks again when
    /// it lets go (every holder does), so none is left behind and a
    /// reader never waits on a writer (which may wait on the actor).
    fn flush_if_wanted(&self) {
        while self.flush_wanted.load(Ordering::SeqCst) {
            let Ok(mut buf) = self.write.try_lock() else { return };
            if self.flush_wanted.swap(false, Ordering::SeqCst)
                && !buf.is_empty()
                && let Err(e) = self.write_out(&mut buf)
            {
                tracing::debug!(error = %e, "writing queued direct calls");
                return;
            }
        }
    }

    /// Reads and delivers the results that have arrived. `wait`: take the
    /// read lock even if another thread holds it; else give up at once.
    fn pump(self: &Arc<Self>, wait: bool) {
        let results = {
            let mut buf = match self.read.try_lock() {
                Ok(b) => b,
                Err(std::sync::TryLockError::WouldBlock) if !wait => return,
                Err(_) => self.read.lock().unwrap_or_else(|p| p.into_inner()),
            };
            if !self.rings.readable() {
                return;
            }
            let read = self.rings.read(&mut buf).map_err(std::io::Error::from);
            match read.and_then(|_| take_frames::<pb::ActorToDirect>(&mut buf)) {
                Ok(f) => f,
                Err(e) => {
                    drop(buf);
                    return self.close(format!("reading results: {e}"));
                }
            }
        };
        if !results.is_empty() {
            self.deliver_all(results);
            // Calls queued while these were in flight go now.
            self.flush_wanted.store(true, Ordering::SeqCst);
            self.flush_if_wanted();
        }
    }

    /// Sleeps on the socket until the actor rings (or `timeout` passes),
    /// unless results are there already; closes the connection when the
    /// actor's end of it is gone.
    fn sleep(self: &Arc<Self>, timeout: Option<Duration>) {
        if self.rings.sleep_unless_readable() {
            let mut fds = [libc::pollfd { fd: self.stream.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
            wait_readable(&mut fds, timeout);
        }
        // Bells mean nothing beyond the wake-up; the end means the end.
        let mut bells = Vec::new();
        match recv_available(self.stream.as_raw_fd(), &mut bells) {
            Ok(true) => {}
            Ok(false) => {
                self.pump(true);
                self.close("the actor's process closed the connection".into());
            }
            Err(e) => self.close(format!("waiting for results: {e}")),
        }
    }

    fn deliver_all(&self, frames: Vec<pb::ActorToDirect>) {
        for f in frames {
            if f.cpu != 0 {
                self.actor_cpu.store(f.cpu, Ordering::Relaxed);
            }
            for r in f.results {
                self.deliver(r);
            }
        }
    }

    /// Waits for `slot` reading the connection itself (no thread hop):
    /// spinning for [`spin`] (without yielding the core for
    /// [`hot_spin`]), then sleeping on the socket for up to
    /// [`SOCKET_WAIT`], never past `deadline`. A slower call is then left
    /// to the reader thread (the caller sleeps on the slot, lending its
    /// CPU if it is a task). On the actor's CPU it does not spin at all:
    /// that would only keep the actor from running.
    pub(crate) fn wait_here(self: &Arc<Self>, slot: &Slot, deadline: Option<Instant>) {
        let start = Instant::now();
        let here = cpu();
        let shared = here != 0 && self.actor_cpu.load(Ordering::Relaxed) == here;
        let hot = start + hot_spin();
        let spin_until = if shared { start } else { start + spin() };
        let sleep_until = deadline.map_or(start + SOCKET_WAIT, |d| d.min(start + SOCKET_WAIT));
        self.flush_writes();
        self.spinning.fetch_add(1, Ordering::AcqRel);
        while !slot.is_done() && !self.closed.load(Ordering::Acquire) {
            self.pump(false);
            let now = Instant::now();
            if now >= sleep_until || slot.is_done() {
                break;
            }
            if now >= spin_until {
                self.sleep(Some((sleep_until - now).max(Duration::from_millis(1))));
            } else if now >= hot {
                // The actor may share this core: let it run.
                std::thread::yield_now();
            }
        }
        self.spinning.fetch_sub(1, Ordering::AcqRel);
        if !slot.is_done()
            && let Some(t) = self.reader.get()
        {
            // A slow call: the reader thread takes over.
            t.unpark();
        }
    }

    fn read_loop(self: Arc<Self>) {
        while !self.closed.load(Ordering::Acquire) {
            if self.spinning.load(Ordering::Acquire) > 0 {
                // A caller reads for itself; look again soon (or when it
                // gives up spinning).
                std::thread::park_timeout(Duration::from_millis(1));
                continue;
            }
            self.pump(true);
            // Not forever: a caller that starts and stops waiting while
            // this sleeps may have taken the bell.
            self.sleep(Some(Duration::from_millis(100)));
            self.pump(true);
        }
    }

    fn deliver(&self, r: pb::DirectResult) {
        let Some(result) = r.result else { return };
        let id = result.task;
        let p = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let p = pending.calls.remove(&id);
            if pending.idle() {
                self.drained.notify_all();
            }
            p
        };
        let Some(p) = p else { return };
        let val = match result.outcome {
            Some(pb::task_result::Outcome::Value(v)) => Ok(Val::Inline(v)),
            Some(pb::task_result::Outcome::Stored(s)) => Ok(Val::Stored { id, size: s.size, holders: vec![self.holder.clone()] }),
            Some(pb::task_result::Outcome::Failure(f)) => Err(crate::driver::failure_to_error(f)),
            None => Err(TaskError::Internal { message: "a direct result without an outcome".into() }),
        };
        let stored = matches!(val, Ok(Val::Stored { .. }));
        if let (Ok(v), Some(cluster)) = (&val, self.cluster.upgrade())
            && (stored || !r.contains.is_empty())
        {
            // The caller owns it: the head keeps it from now on.
            let msg = match v {
                Val::Inline(b) => pb::PutObject { id, value: b.clone(), contains: r.contains.clone(), ..Default::default() },
                Val::Stored { size, .. } => pb::PutObject {
                    id,
                    stored: Some(pb::StoredObject { id, size: *size, holders: Vec::new() }),
                    node: self.node.clone(),
                    contains: r.contains.clone(),
                    ..Default::default()
                },
            };
            own(&cluster, &p.slot, p.inner.upgrade().as_ref(), msg);
            if !r.contains.is_empty() {
                // The actor lets go of the refs once the head has ours.
                crate::runtime::block_on(cluster.sync());
                let _ = self.send(&pb::DirectToActor { acks: vec![id], ..Default::default() }, true);
            }
        }
        p.slot.complete(val);
    }

    /// The connection is over: calls in flight fail or go again through
    /// the head once it knows what became of the actor (found on a thread
    /// of its own; head calls of this caller wait for it, for order).
    fn close(self: &Arc<Self>, why: String) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        let pending = {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            p.resolving = !p.calls.is_empty();
            std::mem::take(&mut p.calls)
        };
        let cluster = self.cluster.upgrade();
        if let Some(cluster) = &cluster {
            let mut map = cluster.routes.map.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(r) = map.get_mut(&self.actor) {
                r.conn = None;
                if !matches!(r.lookup, Lookup::Never) {
                    r.lookup = Lookup::After(Instant::now() + Duration::from_millis(20), Duration::from_millis(20));
                }
            }
        }
        let (Some(cluster), false) = (cluster, pending.is_empty()) else {
            self.drained.notify_all();
            return;
        };
        tracing::debug!(actor = %crate::ObjectId(self.actor), calls = pending.len(), %why, "direct connection to the actor lost with calls in flight");
        let conn = self.clone();
        let settle = move || {
            let fate = conn.fate(&cluster);
            conn.settle(&cluster, pending, fate);
        };
        if let Err(e) = std::thread::Builder::new().name("shoal-direct-fate".into()).spawn(settle) {
            tracing::warn!(error = %e, "no thread to settle direct calls on");
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            p.resolving = false;
            self.drained.notify_all();
        }
    }

    fn settle(&self, cluster: &Arc<Cluster>, pending: BTreeMap<u64, Pending>, fate: Fate) {
        for (id, p) in pending {
            match &fate {
                Fate::Retry => {
                    // Through the head, to the new instance, in order.
                    cluster.register(id, p.slot.clone());
                    let func = cluster.function_index(p.meta);
                    cluster.send(Out::Submit(pb::TaskSubmit {
                        id,
                        func,
                        args: p.args.into_iter().map(|v| pb::Arg { kind: Some(pb::arg::Kind::Value(v)) }).collect(),
                        actor: self.actor,
                        ..Default::default()
                    }));
                    match p.inner.upgrade() {
                        Some(inner) => {
                            inner.claim_adoption();
                        }
                        None => cluster.release(id),
                    }
                    after_head_call(cluster, self.actor, p.slot);
                }
                Fate::Fail(message) => {
                    p.slot.complete(Err(TaskError::ActorDied { class: self.class.clone(), message: message.clone(), node: self.node.clone() }))
                }
            }
        }
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        p.resolving = false;
        self.drained.notify_all();
    }

    /// What the head says became of the actor after our connection ended
    /// (waits until it knows, up to a minute).
    fn fate(&self, cluster: &Arc<Cluster>) -> Fate {
        let until = Instant::now() + Duration::from_secs(60);
        let mut pause = Duration::from_millis(10);
        loop {
            let st = crate::runtime::block_on(crate::status::fetch(&cluster.address, cluster.token.as_deref()));
            if let Ok(st) = &st {
                match st.actors.iter().find(|a| a.id.0 == self.actor) {
                    None => return Fate::Fail(format!("actor {} is gone", crate::ObjectId(self.actor))),
                    Some(a) if a.state == ActorState::Dead => return Fate::Fail(a.death.clone()),
                    Some(a) if self.replaced(a) => {
                        return if self.max_task_retries > 0 {
                            Fate::Retry
                        } else {
                            Fate::Fail(format!("actor {} died while the call ran (it restarted; max_task_retries = 0)", crate::ObjectId(self.actor)))
                        };
                    }
                    Some(_) => {}
                }
            }
            if Instant::now() >= until {
                return Fate::Fail(format!("the connection to actor {}'s process was lost while the call ran", crate::ObjectId(self.actor)));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

impl Conn {
    /// Whether the instance we talked to is gone in the head's eyes: it
    /// is starting again, restarted, or runs elsewhere (or a new process
    /// listens in its place already).
    fn replaced(&self, a: &shoal_domain::actor::ActorStatus) -> bool {
        let here = a.node.is_some_and(|n| format!("{n:#}") == self.node);
        a.restarts > self.restarts
            || a.state == ActorState::Pending
            || (a.state == ActorState::Alive && !here)
            || (a.state == ActorState::Alive && socket_addr(&self.node, self.actor).is_some_and(|addr| UnixStream::connect_addr(&addr).is_ok()))
    }
}

impl Drop for Routes {
    /// The session is over: its connections close (their reader threads
    /// end; calls still in flight are abandoned with the session).
    fn drop(&mut self) {
        let map = self.map.get_mut().unwrap_or_else(|p| p.into_inner());
        for r in map.values() {
            if let Some(c) = &r.conn {
                c.closed.store(true, Ordering::Release);
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

enum Fate {
    Retry,
    Fail(String),
}

/// The head keeps direct result `msg` (this process owns it) from now on;
/// `inner` (if still alive here) then tells it when it drops.
fn own(cluster: &Arc<Cluster>, slot: &Arc<Slot>, inner: Option<&Arc<RefInner>>, msg: pb::PutObject) {
    let id = msg.id;
    if let Some(inner) = inner
        && !inner.claim_adoption()
    {
        return; // the head has it already
    }
    cluster.register(id, slot.clone());
    if !msg.contains.is_empty() {
        cluster.mark_unsynced();
    }
    cluster.send(Out::Put(msg));
    if inner.is_none() {
        cluster.release(id);
    }
}

/// Direct call result `r` leaves this process (an argument, inside a
/// value): the head is given it first, under its id (after it arrived).
pub(crate) fn escape(cluster: &Arc<Cluster>, r: &Arc<RefInner>) {
    let _ = r.slot.wait_value(None);
    if let Some((Ok(Val::Inline(value)), _)) = r.slot.answer() {
        own(cluster, &r.slot, Some(r), pb::PutObject { id: r.id, value, ..Default::default() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(calls: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..calls {
            let msg =
                pb::DirectToActor { calls: vec![pb::ExecTask { task: i, method: "C::m".into(), ..Default::default() }], acks: vec![i], cpu: 1, rings: None };
            shoal_proto::frame::encode(&msg, &mut out);
        }
        out
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_in_order() {
        let bytes = framed(5);
        for cut in 0..bytes.len() {
            let mut buf = bytes[..cut].to_vec();
            let mut got: Vec<pb::DirectToActor> = take_frames(&mut buf).unwrap();
            buf.extend_from_slice(&bytes[cut..]);
            got.extend(take_frames::<pb::DirectToActor>(&mut buf).unwrap());
            assert!(buf.is_empty(), "cut at {cut}: leftover {} bytes", buf.len());
            let ids: Vec<u64> = got.iter().map(|f| f.calls[0].task).collect();
            assert_eq!(ids, vec![0, 1, 2, 3, 4], "cut at {cut}");
        }
    }

    #[test]
    fn an_oversized_or_garbled_frame_is_an_error_not_an_allocation() {
        let mut huge = (u32::MAX).to_le_bytes().to_vec();
        huge.extend_from_slice(b"xx");
        assert!(take_frames::<pb::DirectToActor>(&mut huge).is_err());
        let mut garbled = 3u32.to_le_bytes().to_vec();
        garbled.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(take_frames::<pb::DirectToActor>(&mut garbled).is_err());
    }

    #[test]
    fn the_socket_name_is_per_node_and_actor_and_needs_a_full_node_id() {
        let a = socket_addr("51374f0c-d36c-4c44-8dd7-4e58914b0a79", 0x10000000004).unwrap();
        let b = socket_addr("51374f0c-d36c-4c44-8dd7-4e58914b0a79", 0x10000000005).unwrap();
        assert_ne!(a.as_abstract_name(), b.as_abstract_name());
        assert!(socket_addr("51374f0c", 1).is_none(), "a short node id names no socket");
    }
}
