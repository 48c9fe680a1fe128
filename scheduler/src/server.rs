//! The head's I/O edge: gRPC services (tonic) and the event loop that owns
//! the [`Core`]. Handlers are thin: check and unpack a message, send one
//! event to the loop, stream replies back. The loop drains every queued
//! event, runs one scheduling pass, then flushes the outbox, so dispatches
//! and results leave in batches.

use crate::core::{
    ClusterSnapshot, Core, CoreConfig, Dispatch, Failure, FunctionDef, JobId, NewTask, NodeId, NodeRegistration, ObjectId, Outbox, Payload, PutValue,
    StoreUsage, TaskId,
};
use futures::StreamExt;
use shoal_domain::ResourceSet;
use shoal_proto::convert;
use shoal_proto::local::{BoxStream, LocalHead, LocalLink, SessionFuture};
use shoal_proto::pad::pad;
use shoal_proto::pb::head_server::{Head, HeadServer};
use shoal_proto::pb::{self, HeadToDriver, HeadToWorker};
use shoal_proto::{PROTOCOL_VERSION, auth};
use shoal_store::binaries::{BinaryStore, valid_hash};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// How the head runs. Independent of the CLI; `shoal start --head` builds
/// one from its flags.
#[derive(Clone, Debug)]
pub struct HeadConfig {
    /// Cluster token every RPC must carry; `None` = insecure mode.
    pub token: Option<String>,
    /// Where uploaded program binaries are stored.
    pub binaries_dir: PathBuf,
    /// Period at which workers should heartbeat.
    pub heartbeat_interval: Duration,
    /// Silence after which a worker is declared dead.
    pub heartbeat_timeout: Duration,
    /// Wait for a node that fits instead of failing unschedulable tasks.
    pub wait_for_feasible_nodes: bool,
    /// Serve TLS with this PEM certificate chain and key.
    pub tls: Option<TlsIdentity>,
    /// Keep a durable log here (redb): after a crash, a head restarted
    /// with the same data dir picks up the work where it was. `None`: the
    /// head keeps everything in memory (an embedded cluster).
    pub data_dir: Option<PathBuf>,
    /// How long a job waits for its driver to reconnect after losing it.
    pub driver_grace: Duration,
    /// A job's log is compacted to a snapshot of its state once it holds
    /// this many bytes (and twice its last snapshot): replay time and disk
    /// stay proportional to the live state, not the history.
    pub compact_after_bytes: u64,
}

/// A PEM certificate chain and private key for serving TLS.
#[derive(Clone)]
pub struct TlsIdentity {
    /// Certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Private key, PEM.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.write_str("TlsIdentity(..)")
    }
}

impl HeadConfig {
    /// Defaults with the given token and binary directory.
    pub fn new(token: Option<String>, binaries_dir: PathBuf) -> Self {
        HeadConfig {
            token,
            binaries_dir,
            heartbeat_interval: Duration::from_millis(500),
            heartbeat_timeout: Duration::from_secs(5),
            wait_for_feasible_nodes: false,
            tls: None,
            data_dir: None,
            driver_grace: Duration::from_secs(30),
            compact_after_bytes: 64 << 20,
        }
    }
}

/// A running head. Dropping it does not stop it; call [`HeadHandle::shutdown`].
pub struct HeadHandle {
    /// The address the head listens on.
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    events: mpsc::UnboundedSender<Cmd>,
    store: BinaryStore,
    /// Why the event loop ended, once it has.
    loop_ended: tokio::sync::watch::Receiver<Option<String>>,
}

impl HeadHandle {
    /// Resolves if the head's event loop ends while it should be serving
    /// (a bug: the head never stops by itself). The process should then
    /// exit, so that a supervisor restarts it and its durable log resumes
    /// the work, rather than linger answering "shutting down".
    pub async fn loop_ended(&self) -> String {
        let mut rx = self.loop_ended.clone();
        match rx.wait_for(|w| w.is_some()).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => "the event loop is gone".to_string(),
        }
    }

    /// An in-process link to this head, for a worker or driver in the same
    /// process (no sockets, no encoding).
    pub fn local_link(&self) -> LocalLink {
        LocalLink(std::sync::Arc::new(InProcessHead { events: self.events.clone(), store: self.store.clone() }))
    }

    /// Current cluster snapshot (same data as the Status RPC).
    pub async fn snapshot(&self) -> Option<ClusterSnapshot> {
        let (tx, rx) = oneshot::channel();
        self.events.send(Cmd::Status { reply: tx }).ok()?;
        rx.await.ok()
    }

    /// Stops serving: sessions are closed, then the server exits.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = self.events.send(Cmd::Stop);
        // Long-lived streams would hold a graceful shutdown forever; give
        // them a moment to see the end of their response streams.
        if tokio::time::timeout(Duration::from_secs(1), &mut self.server).await.is_err() {
            self.server.abort();
        }
    }

    /// Waits until the server stops (on its own or via another handle).
    pub async fn wait(mut self) {
        let _ = (&mut self.server).await;
    }
}

/// Starts a head serving on `listener`.
pub async fn start(config: HeadConfig, listener: tokio::net::TcpListener) -> std::io::Result<HeadHandle> {
    let addr = listener.local_addr()?;
    let store = BinaryStore::open(&config.binaries_dir)?;
    let (events, rx) = mpsc::unbounded_channel();
    let mut core = Core::new(CoreConfig {
        heartbeat_timeout: config.heartbeat_timeout,
        wait_for_feasible_nodes: config.wait_for_feasible_nodes,
        driver_grace: config.driver_grace,
    });
    let mut state = LoopState { compact_after: config.compact_after_bytes, ..Default::default() };
    if let Some(dir) = &config.data_dir {
        let ev = events.clone();
        let (log, replay) = crate::durable::Log::open(dir, move |acks| {
            let _ = ev.send(Cmd::Durable(acks));
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        restore(&mut core, &mut state, replay, config.heartbeat_timeout);
        state.log = Some(log);
    }
    let event_loop = tokio::spawn(event_loop(core, state, rx, config.heartbeat_interval));
    let (ended_tx, loop_ended) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        let why = match event_loop.await {
            Ok(()) => "the event loop stopped".to_string(),
            Err(e) => match e.try_into_panic() {
                Ok(p) => format!("the event loop panicked: {}", shoal_domain::panic::message(&*p)),
                Err(e) => format!("the event loop was cancelled: {e}"),
            },
        };
        let _ = ended_tx.send(Some(why));
    });
    let service = HeadService { events: events.clone(), store: store.clone() };
    let svc = HeadServer::new(service)
        .max_decoding_message_size(shoal_domain::limits::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(shoal_domain::limits::MAX_MESSAGE_BYTES);
    let svc = tonic::service::interceptor::InterceptedService::new(svc, auth::CheckToken::new(config.token.as_deref()));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    // TCP_NODELAY on every accepted connection: small messages (a result,
    // then an acknowledgement) must not wait for the peer's delayed ACK.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(id) = &config.tls {
        let tls = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(&id.cert_pem, &id.key_pem));
        builder = builder.tls_config(tls).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("TLS setup: {e}")))?;
    }
    let server = tokio::spawn(async move {
        let res = builder
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "head server stopped with an error");
        }
    });
    tracing::info!(%addr, token = config.token.is_some(), tls = config.tls.is_some(), "head listening");
    Ok(HeadHandle { addr, shutdown: Some(stop_tx), server, events, store, loop_ended })
}

type Sender<T> = mpsc::UnboundedSender<Result<T, Status>>;

enum Cmd {
    WorkerRegister {
        reg: NodeRegistration,
        tx: Sender<HeadToWorker>,
        reply: oneshot::Sender<(NodeId, u64)>,
    },
    WorkerMsg {
        node: NodeId,
        epoch: u64,
        msg: pb::WorkerToHead,
    },
    WorkerGone {
        node: NodeId,
        epoch: u64,
    },
    DriverHello {
        binary: String,
        name: String,
        resume_job: JobId,
        tx: Sender<HeadToDriver>,
        reply: oneshot::Sender<Result<JobId, Status>>,
    },
    DriverMsg {
        job: JobId,
        msg: pb::DriverToHead,
    },
    /// `clean`: the driver closed its stream (it is done); otherwise the
    /// connection broke and the driver may come back.
    DriverGone {
        job: JobId,
        tx: Sender<HeadToDriver>,
        clean: bool,
    },
    /// Driver batches up to these sequence numbers are in the log.
    Durable(Vec<(JobId, u64)>),
    Status {
        reply: oneshot::Sender<ClusterSnapshot>,
    },
    Drain {
        node: NodeId,
        reply: oneshot::Sender<Result<(), crate::core::CoreError>>,
    },
    Stop,
}

/// Bytes after which an outgoing batch is closed and a new one started,
/// so no single frame grows without bound.
const BATCH_BYTES: usize = shoal_domain::limits::BATCH_BYTES;

#[derive(Default)]
struct BatchingOutbox {
    workers: HashMap<NodeId, Vec<(HeadToWorker, usize)>>,
    drivers: HashMap<JobId, Vec<(HeadToDriver, usize)>>,
    disconnect: Vec<(NodeId, u64)>,
    ended: Vec<JobId>,
}

// The one `expect` of the crate: the vector was made non-empty on the
// line before, in the same function, with nothing between.
#[allow(clippy::expect_used)]
fn current<M: Default>(v: &mut Vec<(M, usize)>, add: usize) -> &mut M {
    if v.last().is_none_or(|(_, size)| *size + add > BATCH_BYTES) {
        v.push((M::default(), 0));
    }
    let last = v.last_mut().expect("pushed above when empty");
    last.1 += add;
    &mut last.0
}

impl Outbox for BatchingOutbox {
    fn job_info(&mut self, node: NodeId, job: JobId, binary: &str, first: u32, functions: &[FunctionDef]) {
        let m = current(self.workers.entry(node).or_default(), 64);
        m.jobs.push(pb::JobInfo { job, binary: binary.to_string(), first_function: first, functions: functions.iter().map(pb::FunctionDef::from).collect() });
    }
    fn dispatch(&mut self, node: NodeId, task: Dispatch) {
        let size = 24 + task.args.iter().map(|a| if let Payload::Inline(b) = a { b.len() + 4 } else { 64 }).sum::<usize>();
        current(self.workers.entry(node).or_default(), size).tasks.push(pb::TaskDispatch::from(task));
    }
    fn cancel(&mut self, node: NodeId, task: TaskId) {
        current(self.workers.entry(node).or_default(), 8).cancel.push(task.0);
    }
    fn job_finished(&mut self, node: NodeId, job: JobId) {
        current(self.workers.entry(node).or_default(), 4).jobs_finished.push(job);
    }
    fn result(&mut self, job: JobId, task: TaskId, outcome: Result<Payload, Failure>) {
        let size = 16
            + match &outcome {
                Ok(Payload::Inline(b)) => b.len(),
                _ => 64,
            };
        current(self.drivers.entry(job).or_default(), size).results.push(convert::delivery_to_wire(task, outcome));
    }
    fn disconnect(&mut self, node: NodeId, epoch: u64) {
        self.disconnect.push((node, epoch));
    }
    fn free_object(&mut self, node: NodeId, id: ObjectId) {
        current(self.workers.entry(node).or_default(), 8).free_objects.push(id.0);
    }
    fn drain(&mut self, node: NodeId) {
        current(self.workers.entry(node).or_default(), 4).drain = true;
    }
    fn job_ended(&mut self, job: JobId) {
        self.ended.push(job);
    }
}

/// The event loop's state beside the core: the log, and per job the last
/// driver batch applied and the last one durable.
#[derive(Default)]
struct LoopState {
    log: Option<crate::durable::Log>,
    applied: HashMap<JobId, u64>,
    durable: HashMap<JobId, u64>,
    /// Per job: bytes in its log, and in its last snapshot.
    logged: HashMap<JobId, (u64, u64)>,
    /// See [`HeadConfig::compact_after_bytes`].
    compact_after: u64,
}

impl LoopState {
    /// Counts `n` bytes logged for `job`, compacting its log if its history
    /// has outgrown its state.
    fn logged(&mut self, core: &Core, job: JobId, n: usize) {
        let (total, snap) = self.logged.entry(job).or_default();
        *total += n as u64;
        if *total < self.compact_after.max(2 * *snap) {
            return;
        }
        let (Some(log), Some(s)) = (&self.log, core.job_snapshot(job)) else { return };
        let applied = self.applied.get(&job).copied().unwrap_or(0);
        let size = log.compact(job, convert::job_snapshot_to_wire(job, s, applied)) as u64;
        tracing::info!(job, history_bytes = *total, snapshot_bytes = size, "compacted the job's log to a snapshot");
        *total = size;
        *snap = size;
    }
}

/// Rebuilds the core from the log after a restart.
fn restore(core: &mut Core, state: &mut LoopState, replay: crate::durable::Replay, heartbeat_timeout: Duration) {
    let now = Instant::now();
    // Nodes that held objects get two heartbeat timeouts to re-register
    // (set first: replayed puts and results name nodes not yet back).
    core.recovering(now + heartbeat_timeout * 2);
    // Nobody is connected yet: whatever the replay would send is dropped.
    let mut out = BatchingOutbox::default();
    let (mut jobs, mut batches, mut results) = (0, 0, 0);
    for (job, records) in replay.jobs {
        for r in records {
            match r.kind {
                Some(pb::log_record::Kind::Job(j)) => {
                    core.restore_job(j.job, j.binary, j.name, now);
                    jobs += 1;
                }
                Some(pb::log_record::Kind::Batch(msg)) => {
                    state.applied.insert(job, msg.seq);
                    state.durable.insert(job, msg.seq);
                    apply_driver_batch(core, job, msg, &mut out);
                    batches += 1;
                }
                Some(pb::log_record::Kind::Snapshot(s)) => {
                    if let Ok((j, snap, seq)) = convert::job_snapshot_from_wire(s) {
                        core.restore_snapshot(j, snap, now, &mut out);
                        state.applied.insert(job, seq);
                        state.durable.insert(job, seq);
                        jobs += 1;
                    }
                }
                Some(pb::log_record::Kind::Results(r)) => {
                    let Ok(node) = r.node.parse() else { continue };
                    for res in r.results {
                        let (tid, outcome) = convert::result_from_wire(res);
                        core.restore_result(NodeId(node), tid, outcome, &mut out);
                        results += 1;
                    }
                }
                None => {}
            }
        }
    }
    core.reserve_jobs_below(replay.next_job);
    if jobs > 0 {
        tracing::info!(jobs, batches, results, tasks = core.task_count(), objects = core.object_count(), "restored the head's state from its log");
    }
}

/// Wire ids as object ids.
fn ids_of(raw: &[u64]) -> Vec<ObjectId> {
    raw.iter().map(|r| ObjectId(*r)).collect()
}

fn apply_driver_batch(core: &mut Core, job: JobId, msg: pb::DriverToHead, out: &mut BatchingOutbox) {
    if !msg.functions.is_empty() {
        core.define_functions(job, msg.first_function, msg.functions.into_iter().map(FunctionDef::from).collect());
    }
    for p in msg.puts {
        match PutValue::try_from(&p) {
            Ok(v) => core.put(job, ObjectId(p.id), v, out),
            Err(e) => tracing::warn!(job, error = %e, "malformed put ignored"),
        }
    }
    if !msg.submit.is_empty() {
        core.submit(job, msg.submit.into_iter().map(NewTask::from).collect(), out);
    }
    if !msg.cancel.is_empty() {
        core.cancel(job, &ids_of(&msg.cancel), out);
    }
    if !msg.locate.is_empty() {
        core.locate(job, &ids_of(&msg.locate), out);
    }
    if !msg.release.is_empty() {
        core.release(job, &ids_of(&msg.release), out);
    }
}

async fn event_loop(mut core: Core, mut state: LoopState, mut rx: mpsc::UnboundedReceiver<Cmd>, heartbeat_interval: Duration) {
    let mut out = BatchingOutbox::default();
    let mut workers: HashMap<NodeId, (u64, Sender<HeadToWorker>)> = HashMap::new();
    let mut drivers: HashMap<JobId, Sender<HeadToDriver>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'outer: loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(mut cmd) = cmd else { break };
                // Drain everything already queued: one scheduling pass and
                // one flush for the whole burst.
                for _ in 0..65_536 {
                    if matches!(cmd, Cmd::Stop) {
                        break 'outer;
                    }
                    handle(&mut core, &mut state, cmd, &mut out, &mut workers, &mut drivers, heartbeat_interval);
                    match rx.try_recv() {
                        Ok(c) => cmd = c,
                        Err(_) => break,
                    }
                }
            }
            _ = tick.tick() => core.tick(Instant::now(), &mut out),
        }
        core.schedule(&mut out);
        for job in out.ended.drain(..) {
            drivers.remove(&job);
            state.applied.remove(&job);
            state.durable.remove(&job);
            state.logged.remove(&job);
            if let Some(log) = &state.log {
                log.end_job(job);
            }
        }
        for (node, epoch) in out.disconnect.drain(..) {
            // Dropping the sender ends the session's response stream; a
            // newer session of the same node (it registered again) stays.
            if workers.get(&node).is_some_and(|(e, _)| *e == epoch) {
                workers.remove(&node);
            }
        }
        for (node, batches) in out.workers.drain() {
            if let Some((_, tx)) = workers.get(&node) {
                for (m, _) in batches {
                    let _ = tx.send(Ok(pad(m)));
                }
            }
        }
        for (job, batches) in out.drivers.drain() {
            if let Some(tx) = drivers.get(&job) {
                for (m, _) in batches {
                    let _ = tx.send(Ok(pad(m)));
                }
            }
        }
    }
    tracing::info!("head event loop stopped");
}

fn handle(
    core: &mut Core,
    state: &mut LoopState,
    cmd: Cmd,
    out: &mut BatchingOutbox,
    workers: &mut HashMap<NodeId, (u64, Sender<HeadToWorker>)>,
    drivers: &mut HashMap<JobId, Sender<HeadToDriver>>,
    heartbeat_interval: Duration,
) {
    let now = Instant::now();
    match cmd {
        Cmd::WorkerRegister { reg, tx, reply } => {
            let (id, epoch) = core.node_registered(reg, now, out);
            let _ = tx.send(Ok(HeadToWorker {
                registered: Some(pb::Registered {
                    node_id: id.0.to_string(),
                    protocol_version: PROTOCOL_VERSION,
                    heartbeat_interval_ms: heartbeat_interval.as_millis() as u32,
                }),
                ..Default::default()
            }));
            workers.insert(id, (epoch, tx));
            let _ = reply.send((id, epoch));
        }
        Cmd::WorkerMsg { node, epoch, msg } => {
            if msg.heartbeat != 0 {
                core.node_heartbeat(node, epoch, now);
            }
            if let Some(u) = msg.store {
                core.node_store_usage(node, epoch, StoreUsage::from(u));
            }
            for id in msg.copied {
                core.object_copied(node, epoch, ObjectId(id), out);
            }
            if !msg.results.is_empty() {
                let logged = state.log.as_ref().map(|log| log_results(log, node, &msg.results)).unwrap_or_default();
                let results = msg.results.into_iter().map(convert::result_from_wire).collect();
                core.tasks_finished(node, epoch, results, now, out);
                for (job, n) in logged {
                    state.logged(core, job, n);
                }
            }
            if msg.credits > 0 {
                core.node_credits(node, epoch, msg.credits, now);
            }
        }
        Cmd::WorkerGone { node, epoch } => {
            core.node_disconnected(node, epoch, out);
            if workers.get(&node).is_some_and(|(e, _)| *e == epoch) {
                workers.remove(&node);
            }
        }
        Cmd::DriverHello { binary, name, resume_job: 0, tx, reply } => match core.job_connected(binary.clone(), name.clone()) {
            Ok(job) => {
                if let Some(log) = &state.log {
                    log.next_job(core.next_job());
                    log.append(job, &pb::LogRecord { kind: Some(pb::log_record::Kind::Job(pb::JobStarted { job, binary, name })) }, 0);
                }
                let _ = tx.send(Ok(HeadToDriver { welcome: Some(pb::Welcome { job, protocol_version: PROTOCOL_VERSION }), ..Default::default() }));
                drivers.insert(job, tx);
                let _ = reply.send(Ok(job));
            }
            Err(e) => {
                let _ = reply.send(Err(Status::resource_exhausted(e.to_string())));
            }
        },
        Cmd::DriverHello { resume_job: job, tx, reply, .. } => match core.job_reattached(job) {
            Some(results) => {
                tracing::info!(job, results = results.len(), "driver reconnected");
                let acked = state.durable.get(&job).copied().unwrap_or(0);
                let _ = tx.send(Ok(HeadToDriver { welcome: Some(pb::Welcome { job, protocol_version: PROTOCOL_VERSION }), acked, ..Default::default() }));
                for (task, r) in results {
                    out.result(job, task, r);
                }
                drivers.insert(job, tx);
                let _ = reply.send(Ok(job));
            }
            None => {
                let _ = reply.send(Err(Status::not_found(format!("job {job} is not known to this head (it ended, or the head lost its state)"))));
            }
        },
        Cmd::DriverMsg { job, msg } => {
            let seq = msg.seq;
            let last = state.applied.get(&job).copied().unwrap_or(0);
            if seq != 0 && seq <= last {
                // Sent again after a reconnect; applied before.
                return;
            }
            if seq != 0 {
                state.applied.insert(job, seq);
            }
            let logged = match &state.log {
                Some(log) => log.append_batch(job, &msg),
                None if seq != 0 => {
                    state.durable.insert(job, seq);
                    current(out.drivers.entry(job).or_default(), 8).acked = seq;
                    0
                }
                None => 0,
            };
            apply_driver_batch(core, job, msg, out);
            if logged > 0 {
                state.logged(core, job, logged);
            }
        }
        Cmd::DriverGone { job, tx, clean } => {
            // Only the current session of the job counts.
            if drivers.get(&job).is_some_and(|t| t.same_channel(&tx)) {
                drivers.remove(&job);
                if clean {
                    core.job_disconnected(job, out);
                } else {
                    tracing::info!(job, "driver connection lost; its job waits for it to reconnect");
                    core.job_detached(job, now);
                }
            }
        }
        Cmd::Durable(acks) => {
            for (job, seq) in acks {
                if !drivers.contains_key(&job) && !state.applied.contains_key(&job) {
                    continue;
                }
                state.durable.insert(job, seq);
                current(out.drivers.entry(job).or_default(), 8).acked = seq;
            }
        }
        Cmd::Status { reply } => {
            let _ = reply.send(core.snapshot(now));
        }
        Cmd::Drain { node, reply } => {
            let _ = reply.send(core.drain(node, out));
        }
        Cmd::Stop => {}
    }
}

struct HeadService {
    events: mpsc::UnboundedSender<Cmd>,
    store: BinaryStore,
}

fn head_gone() -> Status {
    Status::unavailable("the head is shutting down")
}

fn check_version(v: u32, who: &str) -> Result<(), Status> {
    if v != PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "{who} speaks protocol version {v}, this head speaks {PROTOCOL_VERSION}: run the same shoal version on every node"
        )));
    }
    Ok(())
}

/// Opens a worker session on `inbound` (a tonic stream or a channel).
async fn open_worker_session(
    events: mpsc::UnboundedSender<Cmd>,
    peer: String,
    mut inbound: BoxStream<pb::WorkerToHead>,
) -> Result<BoxStream<HeadToWorker>, Status> {
    let mut first = inbound.next().await.ok_or_else(|| Status::invalid_argument("worker session closed before registering"))??;
    let reg = first.register.take().ok_or_else(|| Status::invalid_argument("the first message of a worker session must carry `register`"))?;
    check_version(reg.protocol_version, "this worker")?;
    let node_id = if reg.node_id.is_empty() {
        None
    } else {
        Some(NodeId(reg.node_id.parse().map_err(|_| Status::invalid_argument(format!("node id {:?} is not a UUID", reg.node_id)))?))
    };
    let registration = NodeRegistration {
        node_id,
        resources: reg.resources.as_ref().map(ResourceSet::from).unwrap_or_default(),
        hostname: reg.hostname,
        pid: reg.pid,
        memory_bytes: reg.memory_bytes,
        object_store_bytes: reg.object_store_bytes,
        object_address: crate::address::object_address(&reg.object_host, reg.object_port, &peer),
        objects: ids_of(&reg.objects),
        store_file: (reg.store_fd, reg.store_ino),
        address: peer,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let (reply_tx, reply_rx) = oneshot::channel();
    events.send(Cmd::WorkerRegister { reg: registration, tx, reply: reply_tx }).map_err(|_| head_gone())?;
    let (node, epoch) = reply_rx.await.map_err(|_| head_gone())?;
    tokio::spawn(async move {
        if first.credits > 0 || !first.results.is_empty() || first.heartbeat != 0 {
            let _ = events.send(Cmd::WorkerMsg { node, epoch, msg: first });
        }
        loop {
            match inbound.next().await {
                Some(Ok(msg)) => {
                    if events.send(Cmd::WorkerMsg { node, epoch, msg }).is_err() {
                        break;
                    }
                }
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(%node, error = %e, "worker session broken");
                    break;
                }
            }
        }
        let _ = events.send(Cmd::WorkerGone { node, epoch });
    });
    Ok(Box::pin(UnboundedReceiverStream::new(rx)))
}

/// Opens a driver session on `inbound` (a tonic stream or a channel).
async fn open_driver_session(
    events: mpsc::UnboundedSender<Cmd>,
    store: &BinaryStore,
    mut inbound: BoxStream<pb::DriverToHead>,
) -> Result<BoxStream<HeadToDriver>, Status> {
    let mut first = inbound.next().await.ok_or_else(|| Status::invalid_argument("driver session closed before hello"))??;
    let hello = first.hello.take().ok_or_else(|| Status::invalid_argument("the first message of a driver session must carry `hello`"))?;
    check_version(hello.protocol_version, "this program's shoal library")?;
    if !store.contains(&hello.binary) {
        return Err(Status::failed_precondition(format!("program binary {} was not uploaded to the head", hello.binary)));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let (reply_tx, reply_rx) = oneshot::channel();
    let name = format!("{} (pid {} on {})", hello.name, hello.pid, hello.hostname);
    let session_tx = tx.clone();
    events.send(Cmd::DriverHello { binary: hello.binary, name, resume_job: hello.resume_job, tx, reply: reply_tx }).map_err(|_| head_gone())?;
    let job = reply_rx.await.map_err(|_| head_gone())??;
    tokio::spawn(async move {
        let _ = events.send(Cmd::DriverMsg { job, msg: first });
        let clean = loop {
            match inbound.next().await {
                Some(Ok(msg)) => {
                    if events.send(Cmd::DriverMsg { job, msg }).is_err() {
                        break true;
                    }
                }
                None => break true,
                Some(Err(e)) => {
                    tracing::info!(job, error = %e, "driver session broken");
                    break false;
                }
            }
        };
        let _ = events.send(Cmd::DriverGone { job, tx: session_tx, clean });
    });
    Ok(Box::pin(UnboundedReceiverStream::new(rx)))
}

/// Logs the results a node reported, one record per job they belong to
/// (encoded from the message, not copied). Returns the bytes per job.
fn log_results(log: &crate::durable::Log, node: NodeId, results: &[pb::TaskResult]) -> Vec<(JobId, usize)> {
    let mut jobs: Vec<JobId> = results.iter().map(|r| shoal_domain::ids::job_of(r.task)).collect();
    jobs.sort_unstable();
    jobs.dedup();
    let node = node.0.to_string();
    jobs.into_iter().map(|job| (job, log.append_results(job, &node, results))).collect()
}

/// The head as seen from its own process: sessions over channels.
struct InProcessHead {
    events: mpsc::UnboundedSender<Cmd>,
    store: BinaryStore,
}

impl LocalHead for InProcessHead {
    fn worker_session(&self, up: BoxStream<pb::WorkerToHead>) -> SessionFuture<HeadToWorker> {
        Box::pin(open_worker_session(self.events.clone(), "local".to_string(), up))
    }
    fn driver_session(&self, up: BoxStream<pb::DriverToHead>) -> SessionFuture<HeadToDriver> {
        let (events, store) = (self.events.clone(), self.store.clone());
        Box::pin(async move { open_driver_session(events, &store, up).await })
    }
}

#[tonic::async_trait]
impl Head for HeadService {
    type WorkerSessionStream = BoxStream<HeadToWorker>;
    type DriverSessionStream = BoxStream<HeadToDriver>;
    type FetchBinaryStream = BoxStream<pb::BinaryChunk>;

    async fn worker_session(&self, request: Request<Streaming<pb::WorkerToHead>>) -> Result<Response<Self::WorkerSessionStream>, Status> {
        let peer = request.remote_addr().map(|a| a.ip().to_string()).unwrap_or_else(|| "unknown".into());
        Ok(Response::new(open_worker_session(self.events.clone(), peer, Box::pin(request.into_inner())).await?))
    }

    async fn driver_session(&self, request: Request<Streaming<pb::DriverToHead>>) -> Result<Response<Self::DriverSessionStream>, Status> {
        Ok(Response::new(open_driver_session(self.events.clone(), &self.store, Box::pin(request.into_inner())).await?))
    }

    async fn has_binary(&self, request: Request<pb::BinaryId>) -> Result<Response<pb::HasBinaryReply>, Status> {
        Ok(Response::new(pb::HasBinaryReply { present: self.store.contains(&request.into_inner().hash) }))
    }

    async fn upload_binary(&self, request: Request<Streaming<pb::BinaryChunk>>) -> Result<Response<pb::UploadBinaryReply>, Status> {
        const MAX_BINARY: u64 = 4 << 30;
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| Status::invalid_argument("empty upload"))?;
        if !valid_hash(&first.hash) {
            return Err(Status::invalid_argument(format!("{:?} is not a binary id (64 hex digits)", first.hash)));
        }
        if first.total_size > MAX_BINARY {
            return Err(Status::invalid_argument(format!("binary of {} bytes exceeds the {MAX_BINARY}-byte limit", first.total_size)));
        }
        let hash = first.hash.clone();
        if self.store.contains(&hash) {
            return Ok(Response::new(pb::UploadBinaryReply { hash, size: first.total_size }));
        }
        let mut w = self.store.writer(&hash).map_err(|e| Status::internal(e.to_string()))?;
        w.write(&first.data).map_err(|e| Status::internal(e.to_string()))?;
        while let Some(chunk) = inbound.message().await? {
            if w.written() + chunk.data.len() as u64 > first.total_size {
                return Err(Status::invalid_argument("upload is larger than its declared size"));
            }
            w.write(&chunk.data).map_err(|e| Status::internal(e.to_string()))?;
        }
        let size = w.written();
        w.finish().map_err(|e| Status::invalid_argument(format!("upload rejected: {e}")))?;
        tracing::info!(binary = %&hash[..12], size, "program binary stored");
        Ok(Response::new(pb::UploadBinaryReply { hash, size }))
    }

    async fn fetch_binary(&self, request: Request<pb::BinaryId>) -> Result<Response<Self::FetchBinaryStream>, Status> {
        let hash = request.into_inner().hash;
        let path = self.store.path(&hash).filter(|p| p.is_file()).ok_or_else(|| Status::not_found(format!("no binary {hash}")))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let sent = shoal_proto::binaries::read_chunks(&path, &hash, |c| tx.blocking_send(Ok(c)).is_ok());
            if let Err(e) = sent {
                let _ = tx.blocking_send(Err(Status::internal(format!("reading binary {hash}: {e}"))));
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn drain(&self, request: Request<pb::DrainRequest>) -> Result<Response<pb::DrainReply>, Status> {
        let id = request.into_inner().node_id;
        let node = NodeId(id.parse().map_err(|_| Status::invalid_argument(format!("node id {id:?} is not a UUID")))?);
        let (tx, rx) = oneshot::channel();
        self.events.send(Cmd::Drain { node, reply: tx }).map_err(|_| head_gone())?;
        rx.await.map_err(|_| head_gone())?.map_err(|e| Status::not_found(e.to_string()))?;
        Ok(Response::new(pb::DrainReply {}))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::ClusterStatus>, Status> {
        let (tx, rx) = oneshot::channel();
        self.events.send(Cmd::Status { reply: tx }).map_err(|_| head_gone())?;
        let snap = rx.await.map_err(|_| head_gone())?;
        Ok(Response::new(pb::ClusterStatus::from(snap)))
    }
}
