//! The worker's event loop. One task owns all state; the head session,
//! executor connections, process exits and binary fetches report to it as
//! events. After each burst of events it places queued tasks on executors
//! (`pump`) and sends results and credits to the head in one message
//! (`flush`).

use crate::binary_cache;
use crate::config::{self, WorkerConfig};
use crate::executors::{self, StderrTail};
use crate::pipeline::{self, ServiceTime};
use crate::session;
use shoal_domain::ResourceSet;
use shoal_proto::pad::pad;
use shoal_proto::pb::{self, FailureKind, WorkerToExecutor, WorkerToHead};
use shoal_store::{Location, Store};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

/// Events into the loop.
pub(crate) enum Ev {
    Connected { session: u64, tx: mpsc::UnboundedSender<WorkerToHead>, node_id: String, heartbeat: Duration },
    Head { session: u64, msg: pb::HeadToWorker },
    Lost { session: u64 },
    Fatal(String),
    ExecHello { hello: pb::ExecutorHello, stream: UnixStream },
    ExecMsg { exec: u64, msg: pb::ExecutorToWorker },
    Pulled { id: u64, result: Result<(), String> },
    Restored { id: u64 },
    ExecExited { exec: u64, status: String },
    BinaryReady { job: u32, result: Result<PathBuf, String> },
    Shutdown,
}

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The head refused this worker (wrong token, protocol mismatch).
    /// Retrying with the same settings cannot help.
    #[error("{0}")]
    Refused(String),
    /// Local I/O failed (socket directory, listener).
    #[error("worker I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A running worker.
pub struct WorkerHandle {
    events: mpsc::UnboundedSender<Ev>,
    store: Arc<Store>,
    node: watch::Receiver<Option<String>>,
    join: tokio::task::JoinHandle<Result<(), WorkerError>>,
}

impl WorkerHandle {
    /// Waits until the worker has registered; returns its node id. Fails
    /// if the worker stopped first (e.g. its token was refused).
    pub async fn registered(&mut self) -> Result<String, WorkerError> {
        loop {
            if let Some(id) = self.node.borrow_and_update().clone() {
                return Ok(id);
            }
            if self.node.changed().await.is_err() {
                return match (&mut self.join).await {
                    Ok(Err(e)) => Err(e),
                    _ => Err(WorkerError::Refused("worker stopped before registering".into())),
                };
            }
        }
    }

    /// The node id, once registered.
    pub fn node_id(&self) -> Option<String> {
        self.node.borrow().clone()
    }

    /// The node's shared-memory object store (an embedded cluster's
    /// driver reads and writes it directly).
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// Stops the worker: executors are killed and the session closed.
    pub async fn shutdown(self) -> Result<(), WorkerError> {
        let _ = self.events.send(Ev::Shutdown);
        if self.join.is_finished() {
            return Ok(());
        }
        self.join.await.unwrap_or(Ok(()))
    }

    /// Waits until the worker stops on its own (fatal error) or is shut down.
    pub async fn wait(self) -> Result<(), WorkerError> {
        self.join.await.unwrap_or(Ok(()))
    }

    /// Like [`wait`](Self::wait) without giving up the handle (so the
    /// caller can still [`shutdown`](Self::shutdown) on a signal).
    pub async fn wait_ref(&mut self) -> Result<(), WorkerError> {
        (&mut self.join).await.unwrap_or(Ok(()))
    }
}

/// Starts a worker on the current tokio runtime.
pub async fn start(config: WorkerConfig) -> Result<WorkerHandle, WorkerError> {
    let socket = socket_path()?;
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    let (events, rx) = mpsc::unbounded_channel();
    let store = Store::open(config.object_store_bytes, config.object_store_prefault, config.spill_dir.clone())?;
    let object_listener = tokio::net::TcpListener::bind(config.object_listen).await?;
    let object_port = object_listener.local_addr()?.port();
    let object_server = crate::transfer::serve(store.clone(), object_listener, config.token.as_deref());
    let accept = tokio::spawn(executors::accept_loop(listener, events.clone()));
    let reg = session::Registration {
        resources: (&config.resources).into(),
        hostname: config::hostname(),
        memory_bytes: config.memory_bytes,
        object_store_bytes: store.capacity(),
        object_port: object_port as u32,
        object_host: config.object_host.clone().unwrap_or_default(),
        store_fd: store.arena().fd() as u32,
        store_ino: store.arena().inode(),
    };
    let sess = tokio::spawn(session::run(
        config.head.clone(),
        config.token.clone(),
        config.local_head.clone(),
        config.node_id.clone(),
        reg,
        store.clone(),
        events.clone(),
    ));
    let (node_tx, node_rx) = watch::channel(None);
    let slots = config.resources.cpus.ceil().max(1.0) as usize;
    let daemon = Daemon {
        max_executors: config.max_executors.unwrap_or(slots + 2).max(1),
        slots,
        free: config.resources.clone(),
        config,
        socket: socket.clone(),
        events: events.clone(),
        node_tx,
        node_id: String::new(),
        session: None,
        jobs: HashMap::new(),
        queue: VecDeque::new(),
        executors: HashMap::new(),
        next_exec: 1,
        outstanding: 0,
        service: ServiceTime::default(),
        service_by_fn: HashMap::new(),
        results: Vec::new(),
        heartbeat_seq: 0,
        draining: false,
        store: store.clone(),
        pulls: HashSet::new(),
        copied: Vec::new(),
    };
    let spill_dir = daemon.config.spill_dir.clone();
    let join = tokio::spawn(async move {
        let r = daemon.run(rx).await;
        sess.abort();
        accept.abort();
        object_server.abort();
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_dir_all(&spill_dir);
        r
    });
    Ok(WorkerHandle { events, store, node: node_rx, join })
}

/// A short, private path for the executor socket (Unix socket paths are
/// limited to ~108 bytes, so not under a possibly deep session dir).
fn socket_path() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let dir = std::env::temp_dir().join(format!("shoal-{uid}"));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
    // Only this user may connect to executor sockets.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir.join(format!("w{}-{}.sock", std::process::id(), N.fetch_add(1, Ordering::Relaxed))))
}

enum Bin {
    Fetching,
    Ready(PathBuf),
    Broken(String),
}

struct Job {
    functions: Vec<pb::FunctionDef>,
    bin: Bin,
}

/// A task held by this worker.
struct Local {
    d: pb::TaskDispatch,
    res: ResourceSet,
    /// The message sent to its executor (its stored arguments pinned).
    built: Option<pb::ExecTask>,
}

impl Local {
    fn stored_args(&self) -> impl Iterator<Item = &pb::StoredObject> {
        self.d.args.iter().filter_map(|a| match &a.kind {
            Some(pb::task_arg::Kind::Stored(s)) => Some(s),
            _ => None,
        })
    }
}

struct Exec {
    job: u32,
    pid: u32,
    /// Set once the executor said hello.
    conn: Option<mpsc::UnboundedSender<WorkerToExecutor>>,
    /// Tasks sent (or to send, before hello), in execution order.
    inflight: VecDeque<Local>,
    /// Tasks not yet written because the executor has not connected.
    unsent: usize,
    held: ResourceSet,
    functions_sent: u32,
    started: Instant,
    last_progress: Instant,
    tail: StderrTail,
    /// Objects pinned for its tasks' arguments, one entry per pin; released
    /// as it reports them, all at once if it dies.
    pins: Vec<u64>,
}

impl Exec {
    fn idle(&self) -> bool {
        self.inflight.is_empty()
    }
}

struct Daemon {
    config: WorkerConfig,
    socket: PathBuf,
    events: mpsc::UnboundedSender<Ev>,
    node_tx: watch::Sender<Option<String>>,
    node_id: String,
    session: Option<(u64, mpsc::UnboundedSender<WorkerToHead>)>,
    jobs: HashMap<u32, Job>,
    queue: VecDeque<Local>,
    executors: HashMap<u64, Exec>,
    next_exec: u64,
    free: ResourceSet,
    slots: usize,
    max_executors: usize,
    /// Credits granted to the head and not yet used by a dispatch.
    outstanding: usize,
    /// Recent task time across all functions: sizes the credits.
    service: ServiceTime,
    /// Task time per (job, function): sizes how deep tasks of that function
    /// are pipelined into an executor, so short and long functions mixed in
    /// one program are each handled right.
    service_by_fn: HashMap<(u32, u32), ServiceTime>,
    results: Vec<pb::TaskResult>,
    heartbeat_seq: u64,
    /// Drained by the head: finish what is held, ask for nothing, exit.
    draining: bool,
    /// This node's shared-memory object store.
    store: Arc<Store>,
    /// Objects being pulled from peers or restored from spill files.
    pulls: HashSet<u64>,
    /// Pulled objects to report to the head as local copies.
    copied: Vec<u64>,
}

/// Extra executors a node may run for tasks that hold no resources
/// (`num_cpus = 0`, typically async I/O waits).
const IO_EXECUTORS: usize = 16;

fn holds_nothing(r: &ResourceSet) -> bool {
    r.cpus <= 0.0 && r.custom.is_empty()
}

/// How long a new executor may take to connect back.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

fn failure(kind: FailureKind, message: impl Into<String>) -> pb::TaskFailure {
    pb::TaskFailure { kind: kind as i32, message: message.into(), ..Default::default() }
}

impl Daemon {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Ev>) -> Result<(), WorkerError> {
        let mut heartbeat = tokio::time::interval(Duration::from_millis(500));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut outcome = Ok(());
        'outer: loop {
            tokio::select! {
                ev = rx.recv() => {
                    let Some(mut ev) = ev else { break };
                    for _ in 0..65_536 {
                        match ev {
                            Ev::Shutdown => break 'outer,
                            Ev::Fatal(msg) => {
                                tracing::error!("{msg}");
                                outcome = Err(WorkerError::Refused(msg));
                                break 'outer;
                            }
                            Ev::Connected { heartbeat: period, .. } if period != heartbeat.period() => {
                                heartbeat = tokio::time::interval(period);
                                heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                                self.handle(ev);
                            }
                            ev => self.handle(ev),
                        }
                        match rx.try_recv() {
                            Ok(e) => ev = e,
                            Err(_) => break,
                        }
                    }
                }
                _ = heartbeat.tick() => self.on_tick(),
            }
            self.pump();
            self.flush();
            if self.draining && self.queue.is_empty() && self.executors.values().all(|e| e.inflight.is_empty()) {
                tracing::info!(node = %self.node_id, "drained: every held task finished; exiting");
                break;
            }
        }
        for e in self.executors.values() {
            executors::kill(e.pid);
        }
        tracing::info!(node = %self.node_id, "worker stopped");
        outcome
    }

    fn on_tick(&mut self) {
        if let Some((_, tx)) = &self.session {
            self.heartbeat_seq += 1;
            let store = pb::StoreUsage::from(self.store.stats());
            let _ = tx.send(pad(WorkerToHead { heartbeat: self.heartbeat_seq, store: Some(store), ..Default::default() }));
        }
        let now = Instant::now();
        let stuck: Vec<u64> = self.executors.iter().filter(|(_, e)| e.conn.is_none() && now - e.started > HELLO_TIMEOUT).map(|(id, _)| *id).collect();
        for id in stuck {
            let e = self.remove_exec(id, true).expect("listed");
            let msg = format!(
                "an executor started from the program binary did not connect within {}s; is the program linked with the shoal crate?",
                HELLO_TIMEOUT.as_secs()
            );
            self.break_job(e.job, msg, e.inflight);
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Connected { session, tx, node_id, .. } => {
                tracing::info!(node = %node_id, head = %self.config.head, "registered with the head");
                self.node_id = node_id.clone();
                self.session = Some((session, tx));
                self.outstanding = 0;
                let _ = self.node_tx.send(Some(node_id));
            }
            Ev::Head { session, msg } => {
                if self.session.as_ref().is_some_and(|(s, _)| *s == session) {
                    self.on_head(msg);
                }
            }
            Ev::Lost { session } => {
                if self.session.as_ref().is_some_and(|(s, _)| *s == session) {
                    tracing::warn!("session with the head lost; dropping held tasks (the head requeues them) and reconnecting");
                    self.session = None;
                    self.queue.clear();
                    self.results.clear();
                    let ids: Vec<u64> = self.executors.keys().copied().collect();
                    for id in ids {
                        self.remove_exec(id, true);
                    }
                    self.free = self.config.resources.clone();
                    self.jobs.clear();
                    // Stored objects stay: re-registering tells the head
                    // which ones this node still holds (it frees those it
                    // no longer knows). Copies pulled but not yet reported
                    // are among them.
                    self.copied.clear();
                }
            }
            Ev::ExecHello { hello, stream } => self.on_hello(hello, stream),
            Ev::ExecMsg { exec, msg } => {
                for obj in msg.released {
                    self.release_pin(exec, obj);
                }
                if let Some(req) = msg.alloc {
                    self.on_alloc(exec, req);
                }
                if !msg.results.is_empty() {
                    self.on_results(exec, msg.results);
                }
            }
            Ev::Pulled { id, result } => self.on_pulled(id, result),
            Ev::Restored { id } => {
                self.pulls.remove(&id);
            }
            Ev::ExecExited { exec, status } => self.on_exit(exec, status),
            Ev::BinaryReady { job, result } => {
                if let Some(j) = self.jobs.get_mut(&job) {
                    j.bin = match result {
                        Ok(p) => Bin::Ready(p),
                        Err(e) => {
                            tracing::error!(job, error = %e, "program binary cannot run here");
                            Bin::Broken(e)
                        }
                    };
                }
            }
            Ev::Fatal(_) | Ev::Shutdown => unreachable!("handled by the loop"),
        }
    }

    fn on_head(&mut self, msg: pb::HeadToWorker) {
        if msg.drain && !self.draining {
            tracing::info!(node = %self.node_id, held = self.queue.len(), "draining: no new tasks; finishing the held ones");
            self.draining = true;
        }
        for ji in msg.jobs {
            let job = self.jobs.entry(ji.job).or_insert_with(|| {
                let events = self.events.clone();
                let (cache, head, token, hash, id) =
                    (self.config.cache_dir.clone(), self.config.head.clone(), self.config.token.clone(), ji.binary.clone(), ji.job);
                tokio::spawn(async move {
                    let result = binary_cache::ensure(&cache, &hash, &head, token.as_deref()).await;
                    let _ = events.send(Ev::BinaryReady { job: id, result });
                });
                Job { functions: Vec::new(), bin: Bin::Fetching }
            });
            let first = ji.first_function as usize;
            if first <= job.functions.len() {
                job.functions.truncate(first);
                job.functions.extend(ji.functions);
            }
        }
        for id in msg.free_objects {
            self.store.free(id);
        }
        for d in msg.tasks {
            self.outstanding = self.outstanding.saturating_sub(1);
            let res = self
                .jobs
                .get(&d.job)
                .and_then(|j| j.functions.get(d.func as usize))
                .and_then(|f| f.resources.as_ref())
                .map(ResourceSet::from)
                .unwrap_or_else(|| ResourceSet::cpus(1.0));
            let l = Local { d, res, built: None };
            let missing: Vec<pb::StoredObject> = l.stored_args().filter(|s| !self.store.contains(s.id)).cloned().collect();
            for obj in missing {
                self.start_pull(obj);
            }
            let spilled: Vec<u64> = l.stored_args().map(|s| s.id).filter(|id| self.store.is_spilled(*id)).collect();
            for id in spilled {
                self.start_restore(id);
            }
            self.queue.push_back(l);
        }
        for t in msg.cancel {
            self.cancel(t);
        }
        for job in msg.jobs_finished {
            self.jobs.remove(&job);
            self.queue.retain(|l| l.d.job != job);
            self.service_by_fn.retain(|(j, _), _| *j != job);
            let ids: Vec<u64> = self.executors.iter().filter(|(_, e)| e.job == job).map(|(id, _)| *id).collect();
            for id in ids {
                self.remove_exec(id, true);
            }
            self.store.free_where(|id| shoal_domain::ids::job_of(id) == job);
        }
    }

    fn result(&mut self, task: u64, outcome: Result<bytes::Bytes, pb::TaskFailure>) {
        let outcome = match outcome {
            Ok(v) => pb::task_result::Outcome::Value(v),
            Err(mut f) => {
                if f.node.is_empty() {
                    f.node = self.node_id.clone();
                }
                pb::task_result::Outcome::Failure(f)
            }
        };
        self.results.push(pb::TaskResult { task, outcome: Some(outcome) });
    }

    fn cancel(&mut self, task: u64) {
        if let Some(i) = self.queue.iter().position(|l| l.d.task == task) {
            self.queue.remove(i);
            self.result(task, Err(failure(FailureKind::Cancelled, "cancelled before it started")));
            return;
        }
        let Some(id) = self.executors.iter().find(|(_, e)| e.inflight.iter().any(|l| l.d.task == task)).map(|(id, _)| *id) else { return };
        // The executor may be running it: end the process (the only way to
        // interrupt arbitrary code) and requeue what was behind it.
        let e = self.remove_exec(id, true).expect("found");
        tracing::info!(task, pid = e.pid, "cancelled a running task by ending its executor");
        for mut l in e.inflight.into_iter().rev() {
            l.built = None;
            if l.d.task == task {
                self.result(task, Err(failure(FailureKind::Cancelled, "cancelled while running; its executor was stopped")));
            } else {
                self.queue.push_front(l);
            }
        }
    }

    /// A job's binary cannot run: fail its tasks with a clear error.
    fn break_job(&mut self, job: u32, msg: String, held: VecDeque<Local>) {
        tracing::error!(job, "{msg}");
        if let Some(j) = self.jobs.get_mut(&job) {
            j.bin = Bin::Broken(msg.clone());
        }
        for l in held {
            self.result(l.d.task, Err(failure(FailureKind::BinaryIncompatible, msg.clone())));
        }
    }

    fn on_hello(&mut self, hello: pb::ExecutorHello, stream: UnixStream) {
        let Some(e) = self.executors.get_mut(&hello.executor) else { return };
        if hello.protocol_version != shoal_proto::PROTOCOL_VERSION {
            let e = self.remove_exec(hello.executor, true).expect("present");
            let msg = format!(
                "the program links a shoal library speaking protocol {}, this worker speaks {}: rebuild it against the cluster's shoal version",
                hello.protocol_version,
                shoal_proto::PROTOCOL_VERSION
            );
            self.break_job(e.job, msg, e.inflight);
            return;
        }
        let tx = executors::start_io(hello.executor, stream, self.events.clone());
        e.conn = Some(tx);
        e.last_progress = Instant::now();
        tracing::debug!(exec = hello.executor, pid = hello.pid, "executor connected");
    }

    /// Fetches a stored argument from a peer, once however many tasks
    /// need it.
    fn start_pull(&mut self, obj: pb::StoredObject) {
        if !self.pulls.insert(obj.id) {
            return;
        }
        let (store, token, events) = (self.store.clone(), self.config.token.clone(), self.events.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let result = crate::transfer::pull_into(&store, token.as_deref(), obj.id, obj.size, &obj.holders).await;
            if result.is_ok() {
                tracing::debug!(object = format_args!("{:#x}", obj.id), size = obj.size, secs = started.elapsed().as_secs_f64(), "pulled object from a peer");
            }
            let _ = events.send(Ev::Pulled { id: obj.id, result });
        });
    }

    /// Brings a spilled argument back into the arena off the event loop
    /// (reading its file), before its task is handed to an executor.
    fn start_restore(&mut self, id: u64) {
        if !self.pulls.insert(id) {
            return;
        }
        let (store, events) = (self.store.clone(), self.events.clone());
        tokio::task::spawn_blocking(move || {
            // Pinning restores it if there is room; the executor's own pin
            // keeps it then. If there is none it is read from its file.
            if store.pin(id).is_ok() {
                store.unpin(id);
            }
            let _ = events.send(Ev::Restored { id });
        });
    }

    fn on_pulled(&mut self, id: u64, result: Result<(), String>) {
        self.pulls.remove(&id);
        match result {
            Ok(()) => self.copied.push(id),
            Err(e) => {
                tracing::warn!(object = format_args!("{id:#x}"), error = %e, "could not fetch a task argument");
                let mut i = 0;
                while i < self.queue.len() {
                    if self.queue[i].stored_args().any(|s| s.id == id) {
                        let l = self.queue.remove(i).expect("index valid");
                        let msg = format!("argument object {} could not be fetched: {e}", shoal_domain::ids::display(id));
                        self.result(l.d.task, Err(failure(FailureKind::ObjectLost, msg)));
                    } else {
                        i += 1;
                    }
                }
            }
        }
    }

    fn release_pin(&mut self, exec: u64, obj: u64) {
        let Some(e) = self.executors.get_mut(&exec) else { return };
        if let Some(i) = e.pins.iter().position(|p| *p == obj) {
            e.pins.swap_remove(i);
            self.store.unpin(obj);
        }
    }

    /// An executor needs arena space for a large result. Making room may
    /// spill objects to disk, so it runs off the event loop; the answer
    /// goes straight to the executor.
    fn on_alloc(&mut self, exec: u64, req: pb::AllocRequest) {
        let Some(tx) = self.executors.get(&exec).and_then(|e| e.conn.clone()) else { return };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let allocated = match store.create(req.task, req.size, exec) {
                Ok(offset) => pb::AllocReply { task: req.task, offset, error: String::new() },
                Err(e) => pb::AllocReply { task: req.task, offset: 0, error: e.to_string() },
            };
            let _ = tx.send(WorkerToExecutor { allocated: Some(allocated), ..Default::default() });
        });
    }

    fn on_results(&mut self, exec: u64, results: Vec<pb::TaskResult>) {
        let now = Instant::now();
        let Some(e) = self.executors.get_mut(&exec) else { return };
        let mut done = Vec::with_capacity(results.len());
        let mut funcs = Vec::with_capacity(results.len());
        for mut r in results {
            let stored = matches!(r.outcome, Some(pb::task_result::Outcome::Stored(_)));
            if let Some(i) = e.inflight.iter().position(|l| l.d.task == r.task) {
                let l = e.inflight.remove(i).expect("index valid");
                funcs.push((l.d.job, l.d.func));
                if stored && let Err(err) = self.store.seal(r.task) {
                    r.outcome =
                        Some(pb::task_result::Outcome::Failure(failure(FailureKind::ObjectStoreFull, format!("the result could not be sealed: {err}"))));
                } else if matches!(r.outcome, Some(pb::task_result::Outcome::Failure(_))) {
                    // It may have failed while encoding into space it was
                    // given: that space is nobody's now.
                    self.store.abort(r.task);
                }
                done.push(r);
            } else if stored {
                // Not ours any more (cancelled meanwhile): drop the bytes.
                self.store.abort(r.task);
            }
        }
        if !done.is_empty() {
            let per = now.saturating_duration_since(e.last_progress) / done.len() as u32;
            for (k, f) in funcs.iter().enumerate() {
                if k < 8 {
                    self.service.observe(per);
                }
                self.service_by_fn.entry(*f).or_default().observe(per);
            }
            e.last_progress = now;
        }
        if e.inflight.is_empty() {
            let held = std::mem::take(&mut e.held);
            self.free.add(&held);
        }
        for mut r in done {
            if let Some(pb::task_result::Outcome::Failure(f)) = &mut r.outcome
                && f.node.is_empty()
            {
                f.node = self.node_id.clone();
            }
            self.results.push(r);
        }
    }

    fn on_exit(&mut self, exec: u64, status: String) {
        let Some(mut e) = self.remove_exec(exec, false) else { return };
        if e.conn.is_none() {
            let tail = e.tail.lock().map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n")).unwrap_or_default();
            let msg = format!(
                "an executor started from the program binary exited before connecting ({status}){}{}",
                if tail.is_empty() { "" } else { "; its stderr ended with:\n" },
                tail
            );
            self.break_job(e.job, msg, e.inflight);
            return;
        }
        if let Some(first) = e.inflight.pop_front() {
            tracing::warn!(pid = e.pid, task = first.d.task, %status, "executor died while running a task");
            let msg = format!("the executor process (pid {}) died while running the task: {status}", e.pid);
            self.result(first.d.task, Err(failure(FailureKind::WorkerDied, msg)));
            for mut l in e.inflight.into_iter().rev() {
                l.built = None;
                self.queue.push_front(l);
            }
        }
    }

    /// Forgets an executor: kills it (unless it already exited), returns
    /// its resources, unpins its tasks' arguments and reclaims any result
    /// it was half-way through writing to the store.
    fn remove_exec(&mut self, id: u64, kill: bool) -> Option<Exec> {
        let mut e = self.executors.remove(&id)?;
        if kill {
            executors::kill(e.pid);
        }
        self.free.add(&std::mem::take(&mut e.held));
        for obj in e.pins.drain(..) {
            self.store.unpin(obj);
        }
        let reclaimed = self.store.reclaim_owner(id);
        if reclaimed > 0 {
            tracing::info!(exec = id, objects = reclaimed, "reclaimed unsealed objects of a dead executor");
        }
        Some(e)
    }

    /// Places queued tasks on executors, FIFO. Prefers an idle executor of
    /// the task's job, then a new one, then replacing an idle executor of
    /// another job; short tasks are also pipelined into busy executors.
    fn pump(&mut self) {
        let mut sends: HashMap<u64, Vec<pb::ExecTask>> = HashMap::new();
        let mut i = 0;
        while i < self.queue.len() {
            if self.queue[i].stored_args().any(|s| self.pulls.contains(&s.id)) {
                i += 1;
                continue;
            }
            let (job_id, func) = (self.queue[i].d.job, self.queue[i].d.func);
            let path = match self.jobs.get(&job_id).map(|j| (&j.bin, j.functions.len())) {
                None => {
                    let l = self.queue.remove(i).expect("index valid");
                    self.result(l.d.task, Err(failure(FailureKind::FunctionNotFound, format!("job {job_id} is unknown to this worker"))));
                    continue;
                }
                Some((Bin::Fetching, _)) => {
                    i += 1;
                    continue;
                }
                Some((Bin::Broken(msg), _)) => {
                    let msg = msg.clone();
                    let l = self.queue.remove(i).expect("index valid");
                    self.result(l.d.task, Err(failure(FailureKind::BinaryIncompatible, msg)));
                    continue;
                }
                Some((Bin::Ready(_), n)) if func as usize >= n => {
                    let l = self.queue.remove(i).expect("index valid");
                    self.result(l.d.task, Err(failure(FailureKind::FunctionNotFound, format!("function index {func} of job {job_id} is not defined"))));
                    continue;
                }
                Some((Bin::Ready(p), _)) => p.clone(),
            };
            let res = self.queue[i].res.clone();
            let fits = res.fits_in(&self.free);
            let mut target = None;
            if fits {
                // Executors busy with tasks that hold no resources (I/O
                // waits) do not count against the CPU-sized cap, and such
                // tasks may use IO_EXECUTORS more: waiting never blocks
                // CPU work, and CPU slots never block waiting.
                let cap = if holds_nothing(&res) {
                    self.max_executors + IO_EXECUTORS
                } else {
                    self.max_executors + self.executors.values().filter(|e| !e.idle() && holds_nothing(&e.held)).count()
                };
                target = self.executors.iter().find(|(_, e)| e.job == job_id && e.idle()).map(|(id, _)| *id);
                if target.is_none()
                    && self.executors.len() >= cap
                    && let Some(victim) = self.executors.iter().find(|(_, e)| e.job != job_id && e.idle()).map(|(id, _)| *id)
                {
                    self.remove_exec(victim, true);
                }
                if target.is_none() && self.executors.len() < cap {
                    match self.spawn(job_id, &path) {
                        Ok(id) => target = Some(id),
                        Err(msg) => {
                            self.break_job(job_id, msg, VecDeque::new());
                            continue;
                        }
                    }
                }
                if let Some(id) = target {
                    let e = self.executors.get_mut(&id).expect("exists");
                    e.held = res.clone();
                    self.free.sub(&res);
                }
            }
            let depth = self.service_by_fn.get(&(job_id, func)).map_or(1, |s| s.depth());
            if target.is_none() && depth > 1 {
                target = self
                    .executors
                    .iter()
                    .filter(|(_, e)| e.job == job_id && !e.idle() && e.held == res && e.inflight.len() < depth)
                    .min_by_key(|(_, e)| e.inflight.len())
                    .map(|(id, _)| *id);
            }
            let Some(id) = target else {
                i += 1;
                continue;
            };
            let mut l = self.queue.remove(i).expect("index valid");
            let built = match self.build(id, &l) {
                Ok(t) => t,
                Err(msg) => {
                    let e = self.executors.get_mut(&id).expect("exists");
                    if e.inflight.is_empty() {
                        let held = std::mem::take(&mut e.held);
                        self.free.add(&held);
                    }
                    self.result(l.d.task, Err(failure(FailureKind::ObjectLost, msg)));
                    continue;
                }
            };
            let e = self.executors.get_mut(&id).expect("exists");
            if e.inflight.is_empty() {
                e.last_progress = Instant::now();
            }
            sends.entry(id).or_default().push(built.clone());
            l.built = Some(built);
            e.inflight.push_back(l);
        }
        for (id, tasks) in sends {
            let e = self.executors.get_mut(&id).expect("exists");
            if e.conn.is_none() {
                e.unsent += tasks.len();
                continue;
            }
            self.send_to(id, tasks);
        }
        // Executors that just connected get what was assigned before hello.
        let ready: Vec<u64> = self.executors.iter().filter(|(_, e)| e.conn.is_some() && e.unsent > 0).map(|(id, _)| *id).collect();
        for id in ready {
            let e = self.executors.get_mut(&id).expect("exists");
            let n = e.unsent;
            e.unsent = 0;
            let start = e.inflight.len() - n;
            let tasks = e.inflight.iter().skip(start).filter_map(|l| l.built.clone()).collect();
            self.send_to(id, tasks);
        }
    }

    /// The message for executor `exec` to run `l`: inline arguments as
    /// they are, stored ones pinned in the arena (or a spill file) until
    /// the executor releases them.
    fn build(&mut self, exec: u64, l: &Local) -> Result<pb::ExecTask, String> {
        let mut args = Vec::with_capacity(l.d.args.len());
        let mut pinned = Vec::new();
        for a in &l.d.args {
            let arg = match &a.kind {
                Some(pb::task_arg::Kind::Stored(s)) => match self.store.pin(s.id) {
                    Ok(loc) => {
                        pinned.push(s.id);
                        match loc {
                            Location::Arena { offset, len } => pb::ExecArg { object: s.id, offset, len, ..Default::default() },
                            Location::File { path, len } => pb::ExecArg { object: s.id, len, file: path.to_string_lossy().into_owned(), ..Default::default() },
                        }
                    }
                    Err(e) => {
                        for p in pinned {
                            self.store.unpin(p);
                        }
                        return Err(format!("argument object {} is not on this node: {e}", shoal_domain::ids::display(s.id)));
                    }
                },
                Some(pb::task_arg::Kind::Value(v)) => pb::ExecArg { value: v.clone(), ..Default::default() },
                None => pb::ExecArg::default(),
            };
            args.push(arg);
        }
        self.executors.get_mut(&exec).expect("exists").pins.extend(pinned);
        Ok(pb::ExecTask { task: l.d.task, func: l.d.func, args })
    }

    fn send_to(&mut self, id: u64, tasks: Vec<pb::ExecTask>) {
        let e = self.executors.get_mut(&id).expect("exists");
        let job = &self.jobs[&e.job];
        let mut msg = WorkerToExecutor { tasks, ..Default::default() };
        if (e.functions_sent as usize) < job.functions.len() {
            msg.first_function = e.functions_sent;
            msg.functions = job.functions[e.functions_sent as usize..].iter().map(|f| f.name.clone()).collect();
            e.functions_sent = job.functions.len() as u32;
        }
        if let Some(tx) = &e.conn {
            let _ = tx.send(msg);
        }
    }

    fn spawn(&mut self, job: u32, path: &std::path::Path) -> Result<u64, String> {
        let id = self.next_exec;
        self.next_exec += 1;
        let (pid, tail) = executors::spawn(id, path, &self.socket, &self.node_id, job, self.store.arena().fd(), self.events.clone())
            .map_err(|e| format!("cannot start the program binary {} on this node: {e}", path.display()))?;
        tracing::debug!(exec = id, pid, job, "executor started");
        let now = Instant::now();
        self.executors.insert(
            id,
            Exec {
                job,
                pid,
                conn: None,
                inflight: VecDeque::new(),
                unsent: 0,
                held: ResourceSet::default(),
                functions_sent: 0,
                started: now,
                last_progress: now,
                tail,
                pins: Vec::new(),
            },
        );
        Ok(id)
    }

    /// Sends results and credits to the head in one message.
    fn flush(&mut self) {
        let Some((_, tx)) = &self.session else {
            self.results.clear();
            return;
        };
        // Running tasks that hold nothing (I/O waits) do not use up credits:
        // the node keeps asking for work while they wait.
        let running: usize = self.executors.values().filter(|e| e.idle() || !holds_nothing(&e.held)).map(|e| e.inflight.len()).sum();
        let held = self.queue.len() + running + self.outstanding;
        let wanted = pipeline::wanted(self.slots, self.service.depth());
        let credits = if self.draining { 0 } else { pipeline::grant(wanted, held, self.outstanding) };
        self.outstanding += credits as usize;
        if credits == 0 && self.results.is_empty() && self.copied.is_empty() {
            return;
        }
        // One message per BATCH_BYTES of results: large results never add
        // up to a message over the limit.
        let mut batch = Vec::new();
        let mut size = 0;
        for r in std::mem::take(&mut self.results) {
            let len = match &r.outcome {
                Some(pb::task_result::Outcome::Value(v)) => v.len(),
                _ => 64,
            };
            if !batch.is_empty() && size + len > shoal_domain::limits::BATCH_BYTES {
                let _ = tx.send(pad(WorkerToHead { results: std::mem::take(&mut batch), ..Default::default() }));
                size = 0;
            }
            size += len;
            batch.push(r);
        }
        let copied = std::mem::take(&mut self.copied);
        let _ = tx.send(pad(WorkerToHead { credits, results: batch, copied, ..Default::default() }));
    }
}
