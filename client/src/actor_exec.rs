//! The actor's side of an executor process: once a worker sends it an
//! actor's creation task, the process holds that actor's value and serves
//! its method calls until the worker ends it.
//!
//! Calls arrive in the order their callers made them (the head and the
//! worker keep it) and start in that order: a `&mut self` method takes the
//! value exclusively and runs alone; an `async fn(&self)` shares it and
//! may run concurrently with others, up to `max_concurrency`. Everything
//! runs on one thread (a tokio `LocalSet`), so the value needs neither
//! `Send` nor `Sync`. A panic in a method fails that call only; a panic in
//! the constructor fails the creation (the head marks the actor dead) and
//! every call after it.

use crate::executor::{
    self, Alloc, arg_bytes, encode_outcome, fail, guarded, invoke_failure, panicked, read_until_allocated, request_alloc, send, settle_refs, take_released,
};
use crate::functions::{Encoded, InvokeError};
use bytes::Bytes;
use futures::FutureExt;
use shoal_proto::frame;
use shoal_proto::pb::{self, ExecutorToWorker, FailureKind, WorkerToExecutor};
use shoal_store::Arena;
use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock, Semaphore, mpsc};

/// An actor's value, type-erased.
pub type State = Box<dyn Any>;

/// A method call in progress.
pub type MethodFuture = Pin<Box<dyn std::future::Future<Output = Result<Encoded, InvokeError>>>>;

/// An actor type's constructor, registered at link time by `#[shoal::actor]`.
pub struct ActorClass {
    /// Registered name of the constructor (the function the creation
    /// task names).
    pub name: &'static str,
    /// Decodes the arguments and builds the value.
    pub construct: fn(&[Bytes]) -> Result<State, InvokeError>,
    /// Some method is an `async fn` (the actor then serves calls on an
    /// async loop; without, on a plain one, one thread hop shorter).
    pub has_async: bool,
}

/// A method of an actor type, registered at link time by `#[shoal::actor]`.
pub struct ActorMethod {
    /// Registered name (`Type::method`).
    pub name: &'static str,
    /// Takes `&mut self`: runs alone.
    pub exclusive: bool,
    /// An `async fn`: may wait without holding up later shared calls.
    pub is_async: bool,
    /// Decodes the arguments and runs the method on the guarded value.
    pub call: fn(ActorGuard, Vec<Bytes>) -> MethodFuture,
}

/// Every actor type linked into this program.
#[linkme::distributed_slice]
pub static ACTOR_CLASSES: [ActorClass];

/// Every actor method linked into this program.
#[linkme::distributed_slice]
pub static ACTOR_METHODS: [ActorMethod];

/// Access to the actor's value for one call: shared or exclusive.
pub enum ActorGuard {
    /// `&self` methods.
    Shared(OwnedRwLockReadGuard<State>),
    /// `&mut self` methods.
    Exclusive(OwnedRwLockWriteGuard<State>),
}

impl ActorGuard {
    /// The value, as `T`.
    pub fn get<T: 'static>(&self) -> Result<&T, InvokeError> {
        let v: &State = match self {
            ActorGuard::Shared(g) => g,
            ActorGuard::Exclusive(g) => g,
        };
        v.downcast_ref::<T>().ok_or_else(|| wrong_type::<T>())
    }

    /// The value, as `T`, mutably (only for exclusive calls).
    pub fn get_mut<T: 'static>(&mut self) -> Result<&mut T, InvokeError> {
        match self {
            ActorGuard::Exclusive(g) => g.downcast_mut::<T>().ok_or_else(|| wrong_type::<T>()),
            ActorGuard::Shared(_) => Err(InvokeError::ArgDecode { index: 0, message: "a &mut self method was given shared access".into() }),
        }
    }
}

fn wrong_type<T>() -> InvokeError {
    InvokeError::ArgDecode { index: 0, message: format!("this actor's value is not a {}", std::any::type_name::<T>()) }
}

/// Boxes a constructed value (used by the macro).
pub fn boxed_state<T: 'static>(v: T) -> State {
    Box::new(v)
}

/// A finished async call: its task, method name and outcome (or panic).
type Done = (u64, &'static str, std::thread::Result<Result<Encoded, InvokeError>>);

/// Serves the actor that `create` constructs until the worker goes.
/// `names` are the job's function names (the constructor is among them);
/// `pending` holds tasks that arrived with it (its first calls).
pub(crate) fn serve(
    create: pb::ExecTask,
    reader: BufReader<UnixStream>,
    pending: VecDeque<pb::ExecTask>,
    names: &[String],
    arena: Option<Arc<Arena>>,
) -> std::io::Result<()> {
    let class_name = names.get(create.func as usize).cloned().unwrap_or_default();
    let methods: HashMap<&'static str, &'static ActorMethod> = ACTOR_METHODS.iter().map(|m| (m.name, m)).collect();
    executor::CURRENT_TASK.with(|c| c.set(create.task));
    let class = ACTOR_CLASSES.iter().find(|c| c.name == class_name);
    // What the process prints from now on is the actor's (`(Counter
    // task=.. node=.. pid=..)` at the caller); a sync call's lines are
    // that call's.
    let actor = create.task;
    crate::output::task_started(actor);
    let built = construct(class, &class_name, create.args, arena.as_ref());
    crate::output::task_ended_then(actor);
    let (state, dead) = match built {
        // Owned guards need an `Arc`; the value never leaves this thread.
        #[allow(clippy::arc_with_non_send_sync)]
        Ok(v) => (Some(Arc::new(RwLock::new(v))), None),
        Err(failure) => {
            // The creation fails (the head marks the actor dead); every
            // call that still reaches this process fails the same way.
            let msg = match &failure {
                pb::task_result::Outcome::Failure(f) => format!("the actor's constructor failed: {}{}", f.message, at(&f.location)),
                _ => "the actor's constructor failed".to_string(),
            };
            send(&ExecutorToWorker {
                results: vec![pb::TaskResult { task: create.task, outcome: Some(failure), ..Default::default() }],
                output: crate::output::take(),
                ..Default::default()
            })?;
            (None, Some(msg))
        }
    };
    // Calls may block on other tasks from here on (a nested `get`): the
    // worker lends the actor's resources meanwhile.
    executor::RUNNING.store(state.is_some(), std::sync::atomic::Ordering::Release);
    if class.is_some_and(|c| !c.has_async) {
        // Only sync methods: one thread reads the socket and runs each
        // call as it comes, as the task loop does.
        // Callers on this machine may call it directly (see
        // `crate::direct`), once it is constructed.
        let direct = if state.is_some() { listen(actor) } else { None };
        let queue = pending.into_iter().map(|t| (Src::Worker, t)).collect();
        let server = Server {
            state,
            dead,
            methods,
            arena,
            replies: Replies::Socket(reader, queue),
            out: ExecutorToWorker::default(),
            class: class_name,
            actor,
            direct,
            current: Src::Worker,
        };
        return server.run_sync();
    }
    let (tasks_tx, tasks_rx) = mpsc::unbounded_channel::<Vec<pb::ExecTask>>();
    let (alloc_tx, alloc_rx) = std::sync::mpsc::channel::<pb::AllocReply>();
    if !pending.is_empty() {
        let _ = tasks_tx.send(pending.into_iter().collect());
    }
    std::thread::Builder::new().name("shoal-actor-reader".into()).spawn(move || read_frames(reader, tasks_tx, alloc_tx))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let server = Server {
        state,
        dead,
        methods,
        arena,
        replies: Replies::Thread(alloc_rx),
        out: ExecutorToWorker::default(),
        class: class_name,
        actor,
        direct: None,
        current: Src::Worker,
    };
    local.block_on(&rt, server.run(tasks_rx, create.max_concurrency.max(1) as usize))
}

/// Reads the worker's frames on a thread of its own: tasks go to the
/// serving loop, allocation answers to whoever waits for one.
fn read_frames(mut reader: BufReader<UnixStream>, tasks: mpsc::UnboundedSender<Vec<pb::ExecTask>>, allocs: std::sync::mpsc::Sender<pb::AllocReply>) {
    while let Ok(Some(msg)) = frame::read_blocking::<WorkerToExecutor, _>(&mut reader) {
        if let Some(a) = msg.allocated
            && allocs.send(a).is_err()
        {
            return;
        }
        if !msg.tasks.is_empty() && tasks.send(msg.tasks).is_err() {
            return;
        }
    }
}

fn at(location: &str) -> String {
    if location.is_empty() { String::new() } else { format!(" at {location}") }
}

/// Runs `class`'s constructor (registered as `name`) on `args`.
fn construct(class: Option<&ActorClass>, name: &str, args: Vec<pb::ExecArg>, arena: Option<&Arc<Arena>>) -> Result<State, pb::task_result::Outcome> {
    let Some(class) = class else {
        return Err(fail(
            FailureKind::FunctionNotFound,
            name,
            format!("no actor type with the constructor {name:?} is linked into this program binary (built from different source than the driver?)"),
            String::new(),
        ));
    };
    let args: Vec<Bytes> =
        args.into_iter().map(|a| arg_bytes(arena, a)).collect::<Result<_, _>>().map_err(|e| fail(FailureKind::ObjectLost, name, e, String::new()))?;
    guarded(name, || (class.construct)(&args))?.map_err(|e| invoke_failure(name, e))
}

struct Server {
    state: Option<Arc<RwLock<State>>>,
    /// Set when the constructor failed: why every call fails.
    dead: Option<String>,
    methods: HashMap<&'static str, &'static ActorMethod>,
    arena: Option<Arc<Arena>>,
    /// Where frames from the worker come from.
    replies: Replies,
    /// Results not yet sent.
    out: ExecutorToWorker,
    class: String,
    /// The actor's id (its creation task): owner of what it prints
    /// outside a sync call.
    actor: u64,
    /// Callers connected directly, when it listens for them.
    direct: Option<Listening>,
    /// Where the call being run came from (its result goes back there).
    current: Src,
}

/// Where a call came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    /// Through the head and the worker.
    Worker,
    /// Directly, from the caller connected as this number.
    Direct(u64),
}

/// Queues the calls a frame from the worker carries.
fn from_worker(queue: &mut VecDeque<(Src, pb::ExecTask)>, msg: WorkerToExecutor) {
    queue.extend(msg.tasks.into_iter().map(|t| (Src::Worker, t)));
}

/// The actor's own socket and the callers connected to it.
struct Listening {
    listener: std::os::unix::net::UnixListener,
    callers: HashMap<u64, Caller>,
    next: u64,
    /// Calls in a row that found a direct caller on this CPU, and when
    /// this process last moved off its CPU for that.
    shared_streak: u32,
    moved: Option<std::time::Instant>,
}

/// A caller connected directly.
struct Caller {
    /// Carries the rings' offer and our answer, then only wake-ups.
    stream: UnixStream,
    /// Its process id (the socket's peer), to open its rings by.
    pid: u32,
    /// Calls in, results out, once it offered them and we mapped them.
    rings: Option<crate::ring::Rings>,
    /// Bytes read, not yet whole frames.
    buf: Vec<u8>,
    /// Results not yet sent.
    out: pb::ActorToDirect,
    /// The CPU it last sent from (plus one; 0: unknown).
    cpu: u32,
    /// Refs results sent to it hold, kept until it acknowledges them.
    held: HashMap<u64, Vec<Arc<crate::object_ref::RefInner>>>,
}

impl Caller {
    /// Reads the calls in this caller's ring (it is caller `id`) into
    /// `queue`; false if the ring is garbled.
    fn read_ring(&mut self, id: u64, queue: &mut VecDeque<(Src, pb::ExecTask)>) -> bool {
        let Some(rings) = &self.rings else { return true };
        if rings.read(&mut self.buf).is_err() {
            return false;
        }
        let Ok(frames) = crate::direct::take_frames::<pb::DirectToActor>(&mut self.buf) else { return false };
        for f in frames {
            if f.cpu != 0 {
                self.cpu = f.cpu;
            }
            for a in f.acks {
                self.held.remove(&a);
            }
            queue.extend(f.calls.into_iter().map(|t| (Src::Direct(id), t)));
        }
        true
    }
}

/// Listens on the actor's direct socket; `None` (calls then all come
/// through the worker) if it cannot.
fn listen(actor: u64) -> Option<Listening> {
    let node = std::env::var(shoal_proto::ENV_NODE_ID).ok()?;
    let addr = crate::direct::socket_addr(&node, actor)?;
    let listener = match std::os::unix::net::UnixListener::bind_addr(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("shoal actor {}: no direct calls (binding its socket: {e})", shoal_domain::ObjectId(actor));
            return None;
        }
    };
    listener.set_nonblocking(true).ok()?;
    Some(Listening { listener, callers: HashMap::new(), next: 1, shared_streak: 0, moved: None })
}

impl Listening {
    /// Whether a direct caller has shared this CPU (`here`) long enough
    /// that the actor should move off it: neither then spins, and as each
    /// wakes the other the kernel keeps them together, so a call-get loop
    /// pays two wake-ups a call while another core may idle. Not more
    /// than five times a second (the kernel may have its reasons).
    fn crowded(&mut self, here: u32) -> bool {
        const STREAK: u32 = 16;
        const EVERY: std::time::Duration = std::time::Duration::from_millis(200);
        if here == 0 || !self.callers.values().any(|c| c.cpu == here) {
            self.shared_streak = 0;
            return false;
        }
        self.shared_streak += 1;
        if self.shared_streak < STREAK || self.moved.is_some_and(|t| t.elapsed() < EVERY) {
            return false;
        }
        self.shared_streak = 0;
        self.moved = Some(std::time::Instant::now());
        true
    }

    /// Takes the callers waiting to connect (of this user only).
    fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            let Some(pid) = crate::direct::peer_of_same_user(&stream) else { continue };
            if stream.set_nonblocking(false).is_err() {
                continue;
            }
            let id = self.next;
            self.next += 1;
            let out = pb::ActorToDirect::default();
            self.callers.insert(id, Caller { stream, pid, rings: None, buf: Vec::new(), out, cpu: 0, held: HashMap::new() });
        }
    }

    /// Caller `id`'s socket is readable: its offer of rings (mapped and
    /// answered), or wake-ups, or its end. False if it left or offered
    /// nothing usable.
    fn read_socket(&mut self, id: u64) -> bool {
        let Some(c) = self.callers.get_mut(&id) else { return false };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&c.stream);
        if c.rings.is_some() {
            // Wake-ups: their bytes mean nothing.
            return crate::direct::recv_available(fd, &mut Vec::new()).unwrap_or(false);
        }
        let open = crate::direct::recv_available(fd, &mut c.buf).unwrap_or(false);
        let Ok(mut frames) = crate::direct::take_frames::<pb::DirectToActor>(&mut c.buf) else { return false };
        let Some(first) = frames.pop() else { return open };
        let Some(offer) = first.rings.filter(|_| frames.is_empty() && c.buf.is_empty()) else { return false };
        match crate::ring::Rings::open(c.pid, offer.fd, offer.inode, offer.capacity) {
            Ok(r) => c.rings = Some(r),
            Err(e) => {
                eprintln!("shoal actor: a direct caller's rings could not be mapped ({e}); its calls go through the head");
                return false;
            }
        }
        c.cpu = first.cpu;
        let mut answer = Vec::new();
        shoal_proto::frame::encode(&pb::ActorToDirect { rings_ready: true, cpu: crate::direct::cpu(), ..Default::default() }, &mut answer);
        open && std::io::Write::write_all(&mut &c.stream, &answer).is_ok()
    }

    /// Reads caller `id`'s calls from its ring into `queue`; false if its
    /// ring is garbled.
    fn read_ring(&mut self, id: u64, queue: &mut VecDeque<(Src, pb::ExecTask)>) -> bool {
        self.callers.get_mut(&id).is_some_and(|c| c.read_ring(id, queue))
    }

    /// Reads every caller whose ring holds calls into `queue` (dropping
    /// callers whose ring is garbled); no system call.
    fn read_rings(&mut self, queue: &mut VecDeque<(Src, pb::ExecTask)>) {
        let mut garbled = None;
        for (id, c) in &mut self.callers {
            if c.rings.as_ref().is_some_and(|r| r.readable()) && !c.read_ring(*id, queue) {
                garbled = Some(*id);
            }
        }
        if let Some(id) = garbled {
            self.callers.remove(&id);
        }
    }

    /// Sends caller `id` its results; false if it is gone.
    fn flush(&mut self, id: u64) -> bool {
        let Some(c) = self.callers.get_mut(&id) else { return false };
        let Some(rings) = &c.rings else { return false };
        if c.out.results.is_empty() {
            return true;
        }
        let mut buf = Vec::new();
        c.out.cpu = crate::direct::cpu();
        shoal_proto::frame::encode(&c.out, &mut buf);
        c.out.results.clear();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&c.stream);
        crate::ring::write_all(rings, fd, &buf, || crate::direct::peer_gone(fd)).is_ok()
    }
}

/// A call ready to start: its method, the actor's value, its arguments.
type Prepared = (&'static ActorMethod, Arc<RwLock<State>>, Vec<Bytes>);

/// How the serving loop gets the worker's frames.
enum Replies {
    /// A reader thread forwards tasks to the async loop and allocation
    /// answers here.
    Thread(std::sync::mpsc::Receiver<pb::AllocReply>),
    /// The loop reads the socket itself; tasks not yet run wait here.
    Socket(BufReader<UnixStream>, VecDeque<(Src, pb::ExecTask)>),
}

impl Server {
    /// Serves an actor with only sync methods: read, run in order, reply.
    fn run_sync(mut self) -> std::io::Result<()> {
        loop {
            let next = match &mut self.replies {
                Replies::Socket(_, queue) => queue.pop_front(),
                Replies::Thread(_) => return Err(std::io::Error::other("the sync loop needs the socket")),
            };
            if let Some((src, t)) = next {
                self.current = src;
                let r = self.start_sync(t);
                self.current = Src::Worker;
                r?;
                continue;
            }
            // Nothing left to run: what is done leaves before we wait
            // (each call's lines were taken as it ended).
            self.flush_lines(false)?;
            if !self.wait_for_calls()? {
                return Ok(()); // the worker is gone
            }
        }
    }

    /// Waits until calls arrive, from the worker or a direct caller
    /// (spinning a moment first while direct callers are connected: the
    /// next call of a call-get loop comes within microseconds). False
    /// once the worker is gone.
    fn wait_for_calls(&mut self) -> std::io::Result<bool> {
        let Replies::Socket(reader, queue) = &mut self.replies else { return Ok(false) };
        let start = std::time::Instant::now();
        // No spinning while a caller runs on this CPU (it would only keep
        // that caller from sending).
        let mut here = crate::direct::cpu();
        if let Some(d) = &mut self.direct
            && d.crowded(here)
            && crate::direct::leave_cpu(here)
        {
            here = crate::direct::cpu();
        }
        let spin_until =
            self.direct.as_ref().filter(|d| !d.callers.is_empty() && d.callers.values().all(|c| c.cpu != here)).map(|_| start + crate::direct::spin());
        let hot_until = start + crate::direct::hot_spin();
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut ids: Vec<u64> = Vec::new();
        // While spinning, the sockets (the worker's, new callers, ends)
        // are looked at this often; the rings all the time.
        const LOOK: std::time::Duration = std::time::Duration::from_micros(50);
        let mut looked = start - LOOK;
        let mut settled = false;
        loop {
            if !reader.buffer().is_empty() {
                let Some(msg) = frame::read_blocking::<WorkerToExecutor, _>(reader)? else { return Ok(false) };
                from_worker(queue, msg);
                return Ok(true);
            }
            if let Some(d) = &mut self.direct {
                d.read_rings(queue);
                if !queue.is_empty() {
                    return Ok(true);
                }
            }
            let now = std::time::Instant::now();
            let spinning = spin_until.is_some_and(|t| now < t);
            if spinning && now < looked + LOOK {
                if now >= hot_until {
                    // The caller may share this core: let it run.
                    std::thread::yield_now();
                }
                continue;
            }
            looked = now;
            if !spinning && !settled {
                // About to sleep: lines printed since (direct calls',
                // other threads') leave first.
                settled = true;
                crate::output::settle();
                let output = crate::output::take();
                if !output.is_empty() {
                    send(&ExecutorToWorker { output, ..Default::default() })?;
                }
            }
            if !spinning && let Some(d) = &self.direct {
                // About to sleep: callers writing from now on ring us.
                let mut arrived = false;
                for c in d.callers.values() {
                    if let Some(r) = &c.rings {
                        arrived |= !r.sleep_unless_readable();
                    }
                }
                if arrived {
                    continue;
                }
            }
            fds.clear();
            ids.clear();
            let event = |fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            fds.push(event(std::os::fd::AsRawFd::as_raw_fd(reader.get_ref())));
            if let Some(d) = &self.direct {
                fds.push(event(std::os::fd::AsRawFd::as_raw_fd(&d.listener)));
                for (id, c) in &d.callers {
                    fds.push(event(std::os::fd::AsRawFd::as_raw_fd(&c.stream)));
                    ids.push(*id);
                }
            }
            if crate::direct::wait_readable(&mut fds, spinning.then_some(std::time::Duration::ZERO)) == 0 {
                continue;
            }
            if fds[0].revents != 0 {
                let Some(msg) = frame::read_blocking::<WorkerToExecutor, _>(reader)? else { return Ok(false) };
                from_worker(queue, msg);
            }
            if let Some(d) = &mut self.direct {
                if fds.get(1).is_some_and(|f| f.revents != 0) {
                    d.accept();
                }
                for (i, id) in ids.iter().enumerate() {
                    if fds.get(i + 2).is_some_and(|f| f.revents != 0) && !d.read_socket(*id) {
                        // It left. The calls it sent still run (as a call
                        // through the head would), their results dropped.
                        d.read_ring(*id, queue);
                        d.callers.remove(id);
                    }
                }
                d.read_rings(queue);
            }
            if !queue.is_empty() {
                return Ok(true);
            }
        }
    }

    /// Looks up call `t`'s method and decodes its arguments; a call that
    /// cannot run gets its failure here (`None`).
    fn prepare(&mut self, t: pb::ExecTask) -> std::io::Result<Option<Prepared>> {
        let Some(m) = self.methods.get(t.method.as_str()).copied() else {
            let name = if t.method.is_empty() { "?" } else { t.method.as_str() };
            let msg = format!("actor type {} has no method {name:?} in this program binary (built from different source than the caller?)", self.class);
            self.push(t.task, fail(FailureKind::FunctionNotFound, name, msg, String::new()), Vec::new())?;
            return Ok(None);
        };
        let (Some(state), None) = (&self.state, &self.dead) else {
            let msg = self.dead.clone().unwrap_or_default();
            self.push(t.task, fail(FailureKind::ActorDied, &self.class.clone(), msg, String::new()), Vec::new())?;
            return Ok(None);
        };
        let state = state.clone();
        let args: Result<Vec<Bytes>, String> = t.args.into_iter().map(|a| arg_bytes(self.arena.as_ref(), a)).collect();
        match args {
            Ok(a) => Ok(Some((m, state, a))),
            Err(e) => {
                self.push(t.task, fail(FailureKind::ObjectLost, m.name, e, String::new()), Vec::new())?;
                Ok(None)
            }
        }
    }

    /// Runs call `t` to its end on this thread (nothing else holds the
    /// value: calls run one after another).
    fn start_sync(&mut self, t: pb::ExecTask) -> std::io::Result<()> {
        let task = t.task;
        let Some((m, state, args)) = self.prepare(t)? else { return Ok(()) };
        let guard = if m.exclusive { state.try_write_owned().map(ActorGuard::Exclusive).ok() } else { state.try_read_owned().map(ActorGuard::Shared).ok() };
        let Some(guard) = guard else {
            return self.push(task, fail(FailureKind::Internal, m.name, "the actor's value is in use by another call".into(), String::new()), Vec::new());
        };
        // A direct call's lines are the actor's (the head knows no such
        // task): they stay so, and are sent before the actor sleeps
        // (`wait_for_calls`); a call through the worker's are its own,
        // sent with (before) its result.
        let own_lines = self.current == Src::Worker;
        if own_lines {
            crate::output::task_started(task);
        }
        let r = guarded(m.name, || {
            let fut = (m.call)(guard, args);
            // A sync method's future completes at its first poll; an
            // async one (not expected here) is driven to its end.
            match fut.now_or_never() {
                Some(r) => r,
                None => Err(InvokeError::ResultEncode("an async method reached an actor served without an async loop".into())),
            }
        });
        if own_lines {
            crate::output::task_ended_then(self.actor);
        }
        match r {
            Ok(r) => self.finish_ok(task, m.name, r),
            Err(failed) => self.push(task, failed, Vec::new()),
        }
    }

    async fn run(mut self, mut tasks: mpsc::UnboundedReceiver<Vec<pb::ExecTask>>, max_concurrency: usize) -> std::io::Result<()> {
        let permits = Arc::new(Semaphore::new(max_concurrency));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        loop {
            tokio::select! {
                batch = tasks.recv() => {
                    let Some(batch) = batch else { return Ok(()) }; // the worker is gone
                    for t in batch {
                        self.start(t, &permits, &done_tx).await?;
                    }
                }
                Some(done) = done_rx.recv() => {
                    self.finish(done.0, done.1, done.2)?;
                    while let Ok(done) = done_rx.try_recv() {
                        self.finish(done.0, done.1, done.2)?;
                    }
                }
            }
            self.flush()?;
        }
    }

    /// Starts call `t` (in order): a sync one runs to its end here; an
    /// async one is spawned once it has a permit and its access.
    async fn start(&mut self, t: pb::ExecTask, permits: &Arc<Semaphore>, done: &mpsc::UnboundedSender<Done>) -> std::io::Result<()> {
        let task = t.task;
        let Some((m, state, args)) = self.prepare(t)? else { return Ok(()) };
        if m.is_async {
            let permit = permits.clone().acquire_owned().await.map_err(std::io::Error::other)?;
            let guard = if m.exclusive { ActorGuard::Exclusive(state.write_owned().await) } else { ActorGuard::Shared(state.read_owned().await) };
            let done = done.clone();
            tokio::task::spawn_local(async move {
                executor::clear_panic();
                let r = AssertUnwindSafe((m.call)(guard, args)).catch_unwind().await;
                drop(permit);
                let _ = done.send((task, m.name, r));
            });
            return Ok(());
        }
        let guard = if m.exclusive { ActorGuard::Exclusive(state.write_owned().await) } else { ActorGuard::Shared(state.read_owned().await) };
        // A sync method's future completes at its first poll; it runs
        // alone on this thread, so its lines are its own.
        crate::output::task_started(task);
        let r = match guarded(m.name, || (m.call)(guard, args).now_or_never()) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Ok(Err(InvokeError::ResultEncode("a sync actor method did not complete".into()))),
            Err(failed) => Err(failed),
        };
        crate::output::task_ended_then(self.actor);
        match r {
            Ok(r) => self.finish_ok(task, m.name, r),
            Err(failed) => self.push(task, failed, Vec::new()),
        }
    }

    fn finish(&mut self, task: u64, name: &'static str, r: std::thread::Result<Result<Encoded, InvokeError>>) -> std::io::Result<()> {
        match r {
            Ok(r) => self.finish_ok(task, name, r),
            Err(payload) => {
                let failed = panicked(name, payload);
                self.push(task, failed, Vec::new())
            }
        }
    }

    fn finish_ok(&mut self, task: u64, name: &'static str, r: Result<Encoded, InvokeError>) -> std::io::Result<()> {
        let result = r.map_err(|e| invoke_failure(name, e));
        let arena = self.arena.clone();
        let mut alloc = ServerAlloc { out: &mut self.out, replies: &mut self.replies };
        let (mut outcome, refs) = encode_outcome(name, task, result, arena.as_ref(), &mut alloc)?;
        if let (Src::Direct(caller), pb::task_result::Outcome::Stored(_)) = (self.current, &outcome) {
            // Written into the store for a direct caller: sealed now (the
            // caller reads it at once), unless the caller left (then the
            // space goes when this process does).
            if self.direct.as_ref().is_some_and(|d| d.callers.contains_key(&caller)) {
                let sealed = alloc.seal(task)?;
                if !sealed.error.is_empty() {
                    outcome = fail(FailureKind::ObjectStoreFull, name, format!("the result could not be sealed: {}", sealed.error), String::new());
                }
            }
        }
        self.push(task, outcome, refs)
    }

    fn push(&mut self, task: u64, outcome: pb::task_result::Outcome, refs: Vec<Arc<crate::object_ref::RefInner>>) -> std::io::Result<()> {
        let Src::Direct(caller) = self.current else {
            settle_refs(task, &outcome, refs);
            self.out.results.push(pb::TaskResult { task, outcome: Some(outcome), ..Default::default() });
            if self.out.results.len() >= 1024 {
                self.flush()?;
            }
            return Ok(());
        };
        let Some(d) = &mut self.direct else { return Ok(()) };
        let Some(c) = d.callers.get_mut(&caller) else { return Ok(()) };
        let mut contains = Vec::new();
        if !refs.is_empty() && !matches!(outcome, pb::task_result::Outcome::Failure(_)) {
            // The caller puts the value holding them; until the head has
            // that, they live here. Everything this process sent before
            // (the puts that made them) reaches the head first, so the
            // caller's put holding them finds them there.
            if let Some(session) = crate::init::current() {
                for r in &refs {
                    crate::refs::adopt(&session, r);
                }
                crate::runtime::block_on(session.sync());
            }
            contains = crate::refs::ids(&refs);
            c.held.insert(task, refs);
        }
        c.out.results.push(pb::DirectResult { result: Some(pb::TaskResult { task, outcome: Some(outcome), ..Default::default() }), contains });
        if c.out.results.len() >= 256 && !d.flush(caller) {
            d.callers.remove(&caller);
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.flush_lines(true)
    }

    /// Sends the results so far, to direct callers and the worker, with
    /// the lines printed so far (`settle`: once the pipes are read to
    /// their end, a system call).
    fn flush_lines(&mut self, settle: bool) -> std::io::Result<()> {
        if let Some(d) = &mut self.direct {
            let ids: Vec<u64> = d.callers.iter().filter(|(_, c)| !c.out.results.is_empty()).map(|(id, _)| *id).collect();
            for id in ids {
                if !d.flush(id) {
                    d.callers.remove(&id);
                }
            }
        }
        self.out.released = take_released();
        // Lines async calls printed go with (or before) their results.
        if settle {
            crate::output::settle();
        }
        self.out.output = crate::output::take();
        if !self.out.results.is_empty() || !self.out.released.is_empty() || !self.out.output.is_empty() {
            send(&self.out)?;
            self.out.results.clear();
            self.out.output.clear();
        }
        Ok(())
    }
}

/// Space for a large result: results so far go with the request; the
/// reader thread hands over the answer.
struct ServerAlloc<'a> {
    out: &'a mut ExecutorToWorker,
    replies: &'a mut Replies,
}

impl Alloc for ServerAlloc<'_> {
    fn alloc(&mut self, task: u64, size: u64) -> std::io::Result<pb::AllocReply> {
        request_alloc(self.out, pb::AllocRequest { task, size, seal_direct: false })?;
        match self.replies {
            Replies::Thread(rx) => loop {
                match rx.recv() {
                    Ok(a) if a.task == task => return Ok(a),
                    Ok(_) => continue,
                    Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the worker is gone")),
                }
            },
            Replies::Socket(reader, queue) => read_until_allocated(reader, task, |msg| from_worker(queue, msg)),
        }
    }
}

impl ServerAlloc<'_> {
    /// Has the worker seal object `task`, written for a direct call.
    fn seal(&mut self, task: u64) -> std::io::Result<pb::AllocReply> {
        let Replies::Socket(reader, queue) = self.replies else {
            return Err(std::io::Error::other("direct calls are served on the sync loop only"));
        };
        request_alloc(self.out, pb::AllocRequest { task, size: 0, seal_direct: true })?;
        read_until_allocated(reader, task, |msg| from_worker(queue, msg))
    }
}
