//! The worker's I/O shell. One task owns the [`WorkerCore`]; the head
//! session, executor connections, process exits, pulls and binary fetches
//! report to it as events, which become core calls. After each burst of
//! events the core places queued tasks (`pump`) and reports to the head
//! (`flush`); its effects (processes, messages, pulls) are carried out by
//! [`Io`]. Every decision is in `crate::core`, unit-tested there.

use crate::binary_cache;
use crate::config::{self, WorkerConfig};
use crate::core::{CoreConfig, Effects, ExecId, HeadMessage, LocalStore, Report, WorkerCore};
use crate::executors::{self, StderrTail};
use crate::session;
use shoal_domain::limits::BATCH_BYTES;
use shoal_domain::task::{Dispatch, ExecTask, JobInfo, StoredRef, Value};
use shoal_domain::{JobId, ObjectId};
use shoal_proto::convert;
use shoal_proto::pad::pad;
use shoal_proto::pb::{self, WorkerToExecutor, WorkerToHead};
use shoal_store::{Claim, Location, Store};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
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
    Pulled { id: ObjectId, result: Result<(), String> },
    Restored { id: ObjectId },
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
    if let Some(parent) = config.spill_dir.parent() {
        remove_stale_spill_dirs(parent);
    }
    let store = Store::open(config.object_store_bytes, config.object_store_prefault, config.spill_dir.clone())?;
    let object_listener = tokio::net::TcpListener::bind(config.object_listen).await?;
    let object_port = object_listener.local_addr()?.port();
    let metrics = Arc::new(crate::metrics::WorkerMetrics::new());
    let object_server = crate::transfer::serve(store.clone(), object_listener, config.token.as_deref(), config.connections, metrics.rpc_errors.clone())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("object store TLS: {e}")))?;
    let accept = tokio::spawn(executors::accept_loop(listener, events.clone()));
    let mut metrics_port = 0;
    if let Some(at) = config.metrics_listen {
        match tokio::net::TcpListener::bind(at).await {
            Ok(l) => {
                metrics_port = l.local_addr()?.port() as u32;
                crate::metrics::serve(l, metrics.clone(), store.clone(), config.token.clone());
            }
            // The worker runs without it rather than not at all.
            Err(e) => tracing::warn!(%at, error = %e, "could not bind the metrics endpoint (--metrics-port picks another); running without it"),
        }
    }
    let reg = session::Registration {
        resources: (&config.resources).into(),
        hostname: config::hostname(),
        memory_bytes: config.memory_bytes,
        object_store_bytes: store.capacity(),
        object_port: object_port as u32,
        object_host: config.object_host.clone().unwrap_or_default(),
        store_fd: store.arena().fd() as u32,
        store_ino: store.arena().inode(),
        instance: shoal_domain::NodeId::random().0.as_u64_pair().0 | 1,
        metrics_port,
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
    let core = WorkerCore::new(CoreConfig::new(config.resources.clone(), config.max_executors), store.clone());
    let peers = Arc::new(crate::transfer::Peers::new(config.token.clone(), config.map_peer_stores));
    let daemon = Daemon {
        core,
        io: Io {
            config,
            socket: socket.clone(),
            events: events.clone(),
            store: store.clone(),
            conns: HashMap::new(),
            tails: HashMap::new(),
            session: None,
            run_times: std::collections::VecDeque::new(),
            peers,
            metrics,
        },
        node_tx,
        heartbeat_seq: 0,
    };
    let spill_dir = daemon.io.config.spill_dir.clone();
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

/// Removes the spill dirs under `parent` whose worker is gone
/// (it was SIGKILLed and could not clean up): their files are nobody's.
fn remove_stale_spill_dirs(parent: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        // `shoal-spill-<pid>` (the default, in the temp dir) or `<pid>`
        // in a dir of spill dirs only (`$SHOAL_HOME/spill/<pid>`).
        let bare_ok = parent.file_name().is_some_and(|n| n == "spill");
        let pid = name.to_str().and_then(|n| n.strip_prefix("shoal-spill-").or(if bare_ok { Some(n) } else { None }));
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match std::fs::remove_dir_all(e.path()) {
            Ok(()) => tracing::info!(dir = %e.path().display(), "removed the spill files of a worker that is gone"),
            Err(err) => tracing::debug!(dir = %e.path().display(), error = %err, "could not remove a stale spill dir"),
        }
    }
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

/// The node's store as the core sees it.
impl LocalStore for Arc<Store> {
    fn contains(&self, id: ObjectId) -> bool {
        Store::contains(self, id.0)
    }
    fn is_spilled(&self, id: ObjectId) -> bool {
        Store::is_spilled(self, id.0)
    }
    fn sealed_size(&self, id: ObjectId) -> Option<u64> {
        Store::sealed_size(self, id.0)
    }
    fn pin(&self, id: ObjectId) -> Result<Location, String> {
        Store::pin(self, id.0).map_err(|e| e.to_string())
    }
    fn unpin(&self, id: ObjectId) {
        Store::unpin(self, id.0)
    }
    fn seal(&self, id: ObjectId) -> Result<(), String> {
        Store::seal(self, id.0).map_err(|e| e.to_string())
    }
    fn abort(&self, id: ObjectId) {
        Store::abort(self, id.0)
    }
    fn free(&self, id: ObjectId) {
        Store::free(self, id.0)
    }
    fn free_job(&self, job: JobId, keep: &std::collections::HashSet<ObjectId>) {
        self.free_where(|id| shoal_domain::ids::job_of(id) == job && !keep.contains(&ObjectId(id)))
    }
    fn reclaim_owner(&self, exec: ExecId) -> usize {
        Store::reclaim_owner(self, exec.0)
    }
}

/// The I/O half of the worker: processes, sockets, the head's session.
/// The core's effects land here.
struct Io {
    config: WorkerConfig,
    socket: PathBuf,
    events: mpsc::UnboundedSender<Ev>,
    store: Arc<Store>,
    /// Connected executors' message senders.
    conns: HashMap<ExecId, mpsc::UnboundedSender<WorkerToExecutor>>,
    /// The last lines each executor wrote to stderr.
    tails: HashMap<ExecId, StderrTail>,
    session: Option<(u64, mpsc::UnboundedSender<WorkerToHead>, String)>,
    /// What executors measured of the tasks whose results the core holds
    /// until its next report: start, run time, pid (for the head's task
    /// events). Bounded: results the core drops (a finished job's) would
    /// otherwise stay.
    /// In arrival order, which is mostly the order the core reports
    /// results in: the front is checked first.
    run_times: std::collections::VecDeque<(ObjectId, (u64, u64, u32))>,
    /// Channels to peers' stores and the mapped stores of same-machine peers.
    peers: Arc<crate::transfer::Peers>,
    metrics: Arc<crate::metrics::WorkerMetrics>,
}

/// Most run times kept waiting for a report.
const MAX_RUN_TIMES: usize = 100_000;

impl Effects for Io {
    fn spawn_executor(&mut self, exec: ExecId, job: JobId, binary: &Path) -> Result<u32, String> {
        let node = self.session.as_ref().map(|s| s.2.as_str()).unwrap_or_default();
        let head = executors::HeadContact { address: &self.config.head, token: self.config.token.as_deref() };
        let (pid, tail) =
            executors::spawn(exec.0, binary, &self.socket, node, job, self.store.arena().fd(), head, self.events.clone()).map_err(|e| e.to_string())?;
        self.tails.insert(exec, tail);
        self.metrics.executors_started.inc();
        Ok(pid)
    }

    fn kill_executor(&mut self, exec: ExecId, pid: u32) {
        executors::kill(pid);
        self.conns.remove(&exec);
        self.tails.remove(&exec);
    }

    fn send_tasks(&mut self, exec: ExecId, first_function: u32, functions: Vec<String>, tasks: Vec<ExecTask>) {
        if let Some(tx) = self.conns.get(&exec) {
            let tasks = tasks.into_iter().map(pb::ExecTask::from).collect();
            let _ = tx.send(WorkerToExecutor { first_function, functions, tasks, ..Default::default() });
        }
    }

    fn report(&mut self, report: Report) {
        let Some((_, tx, _)) = &self.session else { return };
        // One message per BATCH_BYTES of results: large results never add
        // up to a message over the limit.
        let mut batch = Vec::new();
        let mut size = 0;
        for (task, outcome) in report.results {
            if outcome.is_ok() {
                self.metrics.tasks_finished.inc();
            } else {
                self.metrics.tasks_failed.inc();
            }
            let len = match &outcome {
                Ok(Value::Inline(v)) => v.len(),
                _ => 64,
            };
            if !batch.is_empty() && size + len > BATCH_BYTES {
                let _ = tx.send(pad(WorkerToHead { results: std::mem::take(&mut batch), ..Default::default() }));
                size = 0;
            }
            size += len;
            let mut r = convert::result_to_wire(task, outcome);
            let at =
                if self.run_times.front().is_some_and(|(t, _)| *t == task) { Some(0) } else { self.run_times.iter().take(64).position(|(t, _)| *t == task) };
            // What lies before it was never reported (a finished job's).
            if let Some(i) = at {
                self.run_times.drain(..i);
            }
            if let Some((_, (started, run, pid))) = at.and_then(|_| self.run_times.pop_front()) {
                (r.started_at_us, r.run_us, r.pid) = (started, run, pid);
            }
            batch.push(r);
        }
        let copied = report.copied.into_iter().map(|id| id.0).collect();
        let _ = tx.send(pad(WorkerToHead { credits: report.credits, results: batch, copied, ..Default::default() }));
    }

    fn pull(&mut self, obj: StoredRef) {
        let (store, peers, events, metrics) = (self.store.clone(), self.peers.clone(), self.events.clone(), self.metrics.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let result = crate::transfer::pull_into(&store, &peers, obj.id.0, obj.size, &obj.holders).await.map_err(|e| e.to_string());
            metrics.transferred(obj.size, started.elapsed().as_secs_f64(), result.as_ref().ok().copied());
            if let Ok(path) = &result {
                tracing::debug!(object = %obj.id, size = obj.size, secs = started.elapsed().as_secs_f64(), path = path.label(), "pulled object from a peer");
            }
            let _ = events.send(Ev::Pulled { id: obj.id, result: result.map(|_| ()) });
        });
    }

    fn restore(&mut self, id: ObjectId) {
        let (store, events) = (self.store.clone(), self.events.clone());
        tokio::task::spawn_blocking(move || {
            // Pinning restores it if there is room; the executor's own pin
            // keeps it then. If there is none it is read from its file.
            if Store::pin(&store, id.0).is_ok() {
                Store::unpin(&store, id.0);
            }
            let _ = events.send(Ev::Restored { id });
        });
    }

    fn fetch_binary(&mut self, job: JobId, hash: &str) {
        let events = self.events.clone();
        let (cache, head, token, hash) = (self.config.cache_dir.clone(), self.config.head.clone(), self.config.token.clone(), hash.to_string());
        tokio::spawn(async move {
            let result = binary_cache::ensure(&cache, &hash, &head, token.as_deref()).await;
            let _ = events.send(Ev::BinaryReady { job, result });
        });
    }
}

impl Io {
    /// Lines tasks printed go to the head at once (before their results,
    /// which the core batches), for their drivers.
    fn forward_output(&self, output: Vec<pb::TaskOutput>) {
        let Some((_, tx, _)) = &self.session else { return };
        let _ = tx.send(pad(WorkerToHead { output, ..Default::default() }));
    }

    /// An executor needs arena space for a large result. Making room may
    /// spill objects to disk, so it runs off the event loop; the answer
    /// goes straight to the executor.
    fn alloc(&self, exec: ExecId, req: pb::AllocRequest) {
        let Some(tx) = self.conns.get(&exec).cloned() else { return };
        let store = self.store.clone();
        if req.seal_direct {
            // A direct actor call's result, written into space this
            // executor was given: sealed here, owned by the caller, who
            // tells the head.
            let error = store.seal(ObjectId(req.task)).err().map(|e| e.to_string()).unwrap_or_default();
            if !error.is_empty() {
                tracing::warn!(object = %shoal_domain::ObjectId(req.task), %error, "a direct call's result could not be sealed");
            }
            let _ = tx.send(WorkerToExecutor { allocated: Some(pb::AllocReply { task: req.task, error, ..Default::default() }), ..Default::default() });
            return;
        }
        tokio::task::spawn_blocking(move || {
            // A first run of the same task still writing its result here
            // gets this long to seal or drop it.
            const PATIENCE: Duration = Duration::from_secs(60);
            let allocated = match store.claim(req.task, req.size, exec.0, PATIENCE) {
                Ok(Claim::Write(offset)) => pb::AllocReply { task: req.task, offset, ..Default::default() },
                Ok(Claim::Sealed(size)) => {
                    tracing::info!(task = %shoal_domain::ObjectId(req.task), size, "an earlier run of the task stored its result here already; that copy is the result");
                    pb::AllocReply { task: req.task, existing: size, ..Default::default() }
                }
                Err(e) => pb::AllocReply { task: req.task, offset: 0, error: e.to_string(), ..Default::default() },
            };
            let _ = tx.send(WorkerToExecutor { allocated: Some(allocated), ..Default::default() });
        });
    }

    fn heartbeat(&mut self, seq: u64) {
        if let Some((_, tx, _)) = &self.session {
            self.metrics.heartbeats.inc();
            let store = pb::StoreUsage::from(self.store.stats());
            let _ = tx.send(pad(WorkerToHead { heartbeat: seq, store: Some(store), ..Default::default() }));
        }
    }
}

/// The worker's event loop: events in, the core decides, effects out.
struct Daemon {
    core: WorkerCore<Arc<Store>>,
    io: Io,
    node_tx: watch::Sender<Option<String>>,
    heartbeat_seq: u64,
}

fn head_message(msg: pb::HeadToWorker) -> HeadMessage {
    let ids = |v: Vec<u64>| v.into_iter().map(ObjectId).collect();
    HeadMessage {
        drain: msg.drain,
        jobs: msg.jobs.into_iter().map(JobInfo::from).collect(),
        free_objects: ids(msg.free_objects),
        tasks: msg.tasks.into_iter().map(Dispatch::from).collect(),
        cancel: ids(msg.cancel),
        jobs_finished: msg.jobs_finished,
        keep_objects: ids(msg.keep_objects),
    }
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
                _ = heartbeat.tick() => {
                    self.heartbeat_seq += 1;
                    self.io.heartbeat(self.heartbeat_seq);
                    self.core.tick(Instant::now(), &mut self.io);
                }
            }
            self.core.pump(Instant::now(), &mut self.io);
            self.core.flush(&mut self.io);
            if self.core.drained() {
                tracing::info!(node = %self.core.node_id(), "drained: every held task finished; exiting");
                break;
            }
        }
        self.core.shutdown(&mut self.io);
        tracing::info!(node = %self.core.node_id(), "worker stopped");
        outcome
    }

    fn handle(&mut self, ev: Ev) {
        let io = &mut self.io;
        match ev {
            Ev::Connected { session, tx, node_id, .. } => {
                tracing::info!(node = %node_id, head = %io.config.head, "registered with the head");
                io.metrics.head_sessions.inc();
                io.session = Some((session, tx, node_id.clone()));
                self.core.connected(node_id.clone());
                let _ = self.node_tx.send(Some(node_id));
            }
            Ev::Head { session, msg } => {
                if io.session.as_ref().is_some_and(|(s, ..)| *s == session) {
                    io.metrics.tasks_received.inc_by(msg.tasks.len() as u64);
                    self.core.head_message(head_message(msg), io);
                }
            }
            Ev::Lost { session } => {
                if io.session.as_ref().is_some_and(|(s, ..)| *s == session) {
                    tracing::warn!("session with the head lost; dropping held tasks (the head requeues them) and reconnecting");
                    io.session = None;
                    self.core.session_lost(io);
                }
            }
            Ev::ExecHello { hello, stream } => {
                let exec = ExecId(hello.executor);
                if self.core.executor_hello(exec, hello.protocol_version, shoal_proto::PROTOCOL_VERSION, Instant::now(), io) {
                    let tx = executors::start_io(exec.0, stream, io.events.clone());
                    io.conns.insert(exec, tx);
                }
            }
            Ev::ExecMsg { exec, mut msg } => {
                let exec = ExecId(exec);
                if !msg.released.is_empty() {
                    let released: Vec<ObjectId> = msg.released.into_iter().map(ObjectId).collect();
                    self.core.executor_released(exec, &released);
                }
                if msg.blocked {
                    self.core.executor_blocked(exec);
                }
                if msg.unblocked {
                    self.core.executor_unblocked(exec);
                }
                if let Some(req) = msg.alloc {
                    io.alloc(exec, req);
                }
                if !msg.output.is_empty() {
                    io.forward_output(std::mem::take(&mut msg.output));
                }
                if !msg.results.is_empty() {
                    if io.run_times.len() + msg.results.len() > MAX_RUN_TIMES {
                        io.run_times.clear();
                    }
                    for r in msg.results.iter().filter(|r| r.run_us > 0) {
                        io.run_times.push_back((ObjectId(r.task), (r.started_at_us, r.run_us, r.pid)));
                    }
                    let results = msg.results.into_iter().map(convert::result_from_wire).collect();
                    self.core.executor_results(exec, results, Instant::now());
                }
            }
            Ev::Pulled { id, result } => self.core.pulled(id, result),
            Ev::Restored { id } => self.core.restored(id),
            Ev::ExecExited { exec, status } => {
                io.metrics.executors_exited.inc();
                let exec = ExecId(exec);
                io.conns.remove(&exec);
                let tail = io.tails.remove(&exec).and_then(|t| t.lock().ok().map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))).unwrap_or_default();
                self.core.executor_exited(exec, &status, &tail, io);
            }
            Ev::BinaryReady { job, result } => self.core.binary_ready(job, result),
            // Handled by the loop before it gets here.
            Ev::Fatal(_) | Ev::Shutdown => {}
        }
    }
}
