//! The driver's session with the head: one bidirectional stream. Calls
//! queue small messages on an unbounded channel; a sender task drains
//! whatever is queued into one `DriverToHead` batch, so a burst of calls
//! travels in a few frames while a lone call leaves at once. A receiver
//! task completes result slots.

use crate::error::{Error, Result, TaskError, status_to_error};
use crate::slot::Slot;
use crate::values::Val;
use dashmap::DashMap;
use futures::StreamExt;
use shoal_domain::ids;
use shoal_proto::PROTOCOL_VERSION;
use shoal_proto::client::{Client, ConnectError};
use shoal_proto::local::{BoxStream, LocalLink};
use shoal_proto::pb::{self, DriverToHead, FailureKind};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// What a driver sends, before batching.
pub(crate) enum Out {
    Define(u32, pb::FunctionDef),
    Submit(pb::TaskSubmit),
    Put(pb::PutObject),
    Cancel(u64),
    Release(u64),
    /// Ask where a stored object is now (its holders could not send it).
    Locate(u64),
    /// A ref that reached this process inside a value was taken (`true`)
    /// or its last copy here dropped.
    Borrow(u64, bool),
    /// The value of a running task's result (its id) holds these refs.
    Contain(u64, Vec<u64>),
    /// Answer once the head has applied everything sent before.
    Sync(tokio::sync::oneshot::Sender<()>),
    /// Item `index` of the generator task this process runs (its id).
    Item(u64, u64, pb::PutObject),
    /// This caller consumed so many items of a generator task.
    GeneratorAck(u64, u64),
    /// An owned generator item this caller sends on: the head keeps it.
    Adopt(pb::PutObject),
    /// End these actors (`shoal::kill`).
    KillActor(u64),
    /// End the session cleanly (the head ends the job at once); answer
    /// once the stream is closed.
    Close(tokio::sync::oneshot::Sender<()>),
}

/// A connected driver (one per process).
pub(crate) struct Driver {
    pub(crate) job: u32,
    /// Distinguishes driver sessions of one process, so cached function
    /// indices of an earlier session are not reused.
    pub(crate) generation: u32,
    pub(crate) address: String,
    pub(crate) token: Option<String>,
    seq: AtomicU64,
    tx: mpsc::UnboundedSender<Out>,
    slots: DashMap<u64, Arc<Slot>>,
    /// Next function index; held while a definition is queued so indices
    /// reach the head in order.
    next_function: Mutex<u32>,
    closed: Mutex<Option<String>>,
    /// Refs were taken or put into values since the last [`Driver::sync`]:
    /// a task must not report its result before the head has them.
    unsynced: std::sync::atomic::AtomicBool,
    /// Items of generator tasks this process called, by task.
    pub(crate) generators: DashMap<u64, Arc<crate::stream::ItemQueue>>,
    /// Generator tasks this process runs: how far their callers got.
    pub(crate) producing: DashMap<u64, Arc<crate::stream::AckGate>>,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

use shoal_proto::tls::TlsProblem;

/// Prints lines this job's tasks printed, each prefixed with where it
/// came from, as `(square task=1.17 node=9e0d5eb5 pid=4242) text`:
/// stdout lines to stdout, stderr lines to stderr. `SHOAL_LOG_TO_DRIVER=0`
/// turns it off (the head still keeps them for `shoal logs --job`).
fn print_task_output(lines: &[pb::TaskOutput]) {
    use std::io::Write;
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*ON.get_or_init(|| std::env::var("SHOAL_LOG_TO_DRIVER").map_or(true, |v| v != "0")) {
        return;
    }
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    for l in lines {
        let function = l.function.rsplit("::").next().unwrap_or(&l.function);
        let prefix = format!("({function} task={} node={} pid={})", shoal_domain::ObjectId(l.task), l.node, l.pid);
        let _ = if l.stderr { writeln!(err, "{prefix} {}", l.line) } else { writeln!(out, "{prefix} {}", l.line) };
    }
    let _ = out.flush();
}

pub(crate) async fn connect_client(address: &str, token: Option<&str>, timeout: Duration) -> Result<Client> {
    shoal_proto::client::connect(address, token, timeout).await.map_err(|e| match e {
        ConnectError::Token(t) => Error::Config(t.to_string()),
        ConnectError::Tls { address, problem: p @ (TlsProblem::WrongToken | TlsProblem::RefusedByServer) } => {
            Error::Unauthenticated { address, message: format!("wrong cluster token: {p}") }
        }
        ConnectError::Tls { address, problem: p @ TlsProblem::NeedsToken } => Error::Unauthenticated { address, message: p.to_string() },
        ConnectError::BadAddress { .. } | ConnectError::Tls { .. } => Error::Config(e.to_string()),
        ConnectError::Unreachable { address, source } => Error::Connect { address, message: source.to_string() },
    })
}

async fn upload_binary(client: &mut Client, address: &str, hash: &str, exe: &Path) -> Result<()> {
    let (tx, rx) = mpsc::channel::<pb::BinaryChunk>(4);
    let (path, h) = (exe.to_path_buf(), hash.to_string());
    let reader = tokio::task::spawn_blocking(move || shoal_proto::binaries::read_chunks(&path, &h, |c| tx.blocking_send(c).is_ok()));
    let res = client.upload_binary(ReceiverStream::new(rx)).await;
    reader.await.map_err(|e| Error::Io(std::io::Error::other(e)))??;
    res.map_err(|s| status_to_error(address, s))?;
    Ok(())
}

/// One open session with the head.
struct Session {
    up: mpsc::Sender<DriverToHead>,
    down: BoxStream<pb::HeadToDriver>,
    job: u32,
    acked: u64,
    /// The job's resume secret (from the welcome of a new job).
    secret: String,
}

/// What reopening a session needs.
#[derive(Clone)]
struct Endpoint {
    address: String,
    token: Option<String>,
    hash: String,
    exe: std::path::PathBuf,
    name: String,
    local: Option<LocalLink>,
    /// Non-zero: this driver is a task of that job.
    parent_job: u32,
}

/// How long a driver keeps trying to reach its head again after losing
/// it (a head restart, a network failure) before failing what it waits for.
const RECONNECT_WINDOW: Duration = Duration::from_secs(60);

impl Endpoint {
    /// Opens a session: a new job, or `resume` an existing one with the
    /// secret the head gave it.
    async fn open(&self, resume: u32, secret: &str) -> Result<Session> {
        let address = self.address.as_str();
        let (up, stream_rx) = mpsc::channel::<DriverToHead>(16);
        let hello = DriverToHead {
            hello: Some(pb::DriverHello {
                protocol_version: PROTOCOL_VERSION,
                binary: self.hash.clone(),
                name: self.name.clone(),
                hostname: shoal_worker::config::hostname(),
                pid: std::process::id(),
                resume_job: resume,
                parent_job: self.parent_job,
                resume_secret: secret.to_string(),
            }),
            ..Default::default()
        };
        up.send(hello).await.map_err(|_| Error::Refused { address: address.to_string(), message: "the session closed before its hello was sent".into() })?;
        // The head answers a resume of a job it does not know with
        // NotFound: a typed error, so the reconnect loop stops at once.
        let refused = |s: tonic::Status| match s.code() {
            tonic::Code::NotFound | tonic::Code::PermissionDenied if resume != 0 => {
                Error::JobUnknown { address: address.to_string(), job: resume, message: s.message().to_string() }
            }
            _ => status_to_error(address, s),
        };
        let mut down: BoxStream<pb::HeadToDriver> = match &self.local {
            // The embedded head shares this process's binary cache.
            Some(link) => link.0.driver_session(Box::pin(ReceiverStream::new(stream_rx).map(Ok))).await.map_err(refused)?,
            None => {
                let mut client = connect_client(address, self.token.as_deref(), Duration::from_secs(5)).await?;
                let present = client.has_binary(pb::BinaryId { hash: self.hash.clone() }).await.map_err(|s| status_to_error(address, s))?.into_inner().present;
                if !present {
                    tracing::info!(binary = %&self.hash[..12], "uploading the program binary to the head");
                    upload_binary(&mut client, address, &self.hash, &self.exe).await?;
                }
                let resp = client.driver_session(ReceiverStream::new(stream_rx)).await.map_err(refused)?;
                Box::pin(resp.into_inner())
            }
        };
        let first = down.next().await.transpose().map_err(refused)?;
        match first {
            Some(pb::HeadToDriver { welcome: Some(w), acked, .. }) => {
                let secret = if resume == 0 { w.resume_secret } else { secret.to_string() };
                Ok(Session { up, down, job: w.job, acked, secret })
            }
            _ => Err(Error::Refused { address: address.to_string(), message: "the head closed the session without a welcome".into() }),
        }
    }
}

impl Driver {
    /// Connects, making sure the head has the program binary `hash`
    /// (uploading `exe` if not), and opens the session: over gRPC, or over
    /// channels when the head is in this process (`local`).
    /// `parent_job` is non-zero for a task submitting tasks: the job that
    /// task belongs to (this session's job ends with it).
    pub(crate) async fn connect(
        address: &str,
        token: Option<String>,
        hash: &str,
        exe: &Path,
        name: &str,
        local: Option<LocalLink>,
        parent_job: u32,
    ) -> Result<Arc<Driver>> {
        let endpoint = Endpoint {
            address: address.to_string(),
            token: token.clone(),
            hash: hash.to_string(),
            exe: exe.to_path_buf(),
            name: name.to_string(),
            local,
            parent_job,
        };
        let session = endpoint.open(0, "").await?;
        let job = session.job;
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = Arc::new(Driver {
            job,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed) as u32,
            address: address.to_string(),
            token,
            seq: AtomicU64::new(1),
            tx,
            slots: DashMap::new(),
            next_function: Mutex::new(0),
            closed: Mutex::new(None),
            unsynced: std::sync::atomic::AtomicBool::new(false),
            generators: DashMap::new(),
            producing: DashMap::new(),
        });
        tokio::spawn(session_loop(Arc::downgrade(&driver), endpoint, session, rx));
        tracing::debug!(job, %address, "driver connected");
        Ok(driver)
    }

    /// Fails every pending result: the session is gone.
    pub(crate) fn close(&self, reason: String) {
        tracing::warn!(job = self.job, %reason, "driver session ended");
        *self.closed.lock().expect("closed lock") = Some(reason.clone());
        for entry in self.slots.iter() {
            entry.value().complete(Err(TaskError::Disconnected { message: reason.clone() }));
        }
    }

    pub(crate) fn closed_reason(&self) -> Option<String> {
        self.closed.lock().expect("closed lock").clone()
    }

    /// A fresh object id of this job.
    pub(crate) fn next_id(&self) -> u64 {
        ids::object_id(self.job, self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// The job-local index of a function, defining it on first use.
    pub(crate) fn function_index(&self, meta: &crate::functions::FunctionMeta) -> u32 {
        let cached = meta.cached_index.load(Ordering::Acquire);
        if (cached >> 32) as u32 == self.generation {
            return cached as u32;
        }
        let mut next = self.next_function.lock().expect("function lock");
        let cached = meta.cached_index.load(Ordering::Acquire);
        if (cached >> 32) as u32 == self.generation {
            return cached as u32;
        }
        let idx = *next;
        *next += 1;
        let mut res = pb::Resources { num_cpus: meta.num_cpus, ..Default::default() };
        for (k, v) in meta.resources {
            res.custom.insert(k.to_string(), *v);
        }
        let _ = self.tx.send(Out::Define(
            idx,
            pb::FunctionDef { name: meta.name.to_string(), resources: Some(res), max_retries: meta.max_retries, retry_exceptions: meta.retry_exceptions },
        ));
        meta.cached_index.store(((self.generation as u64) << 32) | idx as u64, Ordering::Release);
        idx
    }

    /// Registers a pending result slot for `id`.
    pub(crate) fn expect(&self, id: u64) -> Arc<Slot> {
        let slot = Slot::pending();
        self.slots.insert(id, slot.clone());
        self.failed_if_closed(slot)
    }

    /// `slot`, failed at once if the session has ended (nothing would
    /// complete it any more).
    fn failed_if_closed(&self, slot: Arc<Slot>) -> Arc<Slot> {
        if let Some(reason) = self.closed_reason() {
            slot.complete(Err(TaskError::Disconnected { message: reason }));
        }
        slot
    }

    /// Registers an already-complete slot (a `put`).
    pub(crate) fn register(&self, id: u64, slot: Arc<Slot>) {
        self.slots.insert(id, slot);
    }

    pub(crate) fn send(&self, out: Out) {
        let _ = self.tx.send(out);
    }

    /// The last reference to `id` made here (by a call or a put) was
    /// dropped. Its slot stays while a borrowed ref to it shares it (the
    /// caller's own `Arc` of the slot is the second count).
    pub(crate) fn release(&self, id: u64) {
        self.forget_slot(id);
        let _ = self.tx.send(Out::Release(id));
    }

    /// Drops the slot of `id` unless another ref still uses it.
    pub(crate) fn forget_slot(&self, id: u64) {
        self.slots.remove_if(&id, |_, s| Arc::strong_count(s) <= 2);
    }

    /// The slot results for `id` complete (shared by every ref to `id` in
    /// this process), made if there is none.
    pub(crate) fn slot_for(&self, id: u64) -> Arc<Slot> {
        let slot = self.slots.entry(id).or_insert_with(Slot::pending).clone();
        self.failed_if_closed(slot)
    }

    /// Takes (`hold`) or drops a ref that reached this process inside a
    /// value. A taken one is answered like a result.
    pub(crate) fn borrow(&self, id: u64, hold: bool) {
        if hold {
            self.unsynced.store(true, Ordering::Release);
        }
        let _ = self.tx.send(Out::Borrow(id, hold));
    }

    /// The result of running task `task` holds refs to `ids`.
    pub(crate) fn contain(&self, task: u64, ids: Vec<u64>) {
        self.unsynced.store(true, Ordering::Release);
        let _ = self.tx.send(Out::Contain(task, ids));
    }

    /// Marks refs sent inside a value (a put's) as not yet known to the head.
    pub(crate) fn mark_unsynced(&self) {
        self.unsynced.store(true, Ordering::Release);
    }

    /// If refs were taken or put into values since the last call, waits
    /// until the head has applied everything sent so far (a task calls it
    /// before its result leaves, which travels another way). A closed
    /// session returns at once.
    pub(crate) async fn sync_refs(&self) {
        if !self.unsynced.swap(false, Ordering::AcqRel) {
            return;
        }
        self.sync().await;
    }

    /// Waits until the head has applied everything this session sent.
    pub(crate) async fn sync(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Out::Sync(done)).is_ok() {
            let _ = wait.await;
        }
    }

    pub(crate) fn cancel(&self, id: u64) {
        let _ = self.tx.send(Out::Cancel(id));
    }

    /// Asks the head where stored object `id` is now; the answer arrives
    /// as a result for `id`.
    pub(crate) fn locate(&self, id: u64) {
        let _ = self.tx.send(Out::Locate(id));
    }

    /// Ends the session cleanly and waits (at most about a second) until
    /// the head has closed it.
    pub(crate) async fn finish(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Out::Close(done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
        }
    }
}

/// Largest batch a driver sends in one frame.
const BATCH_BYTES: usize = shoal_domain::limits::BATCH_BYTES;

/// Batches queued calls onto the session, completes results as they
/// arrive, and when the connection is lost (not refused) reconnects to the
/// same job and sends again every batch the head has not acknowledged as
/// durable. Embedded sessions (in-process head) have nothing to reconnect.
async fn session_loop(weak: std::sync::Weak<Driver>, endpoint: Endpoint, mut session: Session, mut rx: mpsc::UnboundedReceiver<Out>) {
    let mut seq: u64 = 0;
    let mut unacked: std::collections::VecDeque<(u64, DriverToHead)> = std::collections::VecDeque::new();
    // Syncs waiting for the head to acknowledge a batch: (its seq, answer).
    let mut syncs: Vec<(u64, tokio::sync::oneshot::Sender<()>)> = Vec::new();
    let mut acked: u64 = session.acked;
    let keep = endpoint.local.is_none();
    let reason = 'session: loop {
        let broken = loop {
            tokio::select! {
                o = rx.recv() => {
                    let Some(first) = o else { return };
                    let mut closing = None;
                    let mut msg = DriverToHead::default();
                    let mut waiting = Vec::new();
                    let mut size = match first {
                        Out::Close(done) => {
                            closing = Some(done);
                            0
                        }
                        Out::Sync(done) => {
                            waiting.push(done);
                            0
                        }
                        o => add(&mut msg, o),
                    };
                    while size < BATCH_BYTES && closing.is_none() && waiting.is_empty() {
                        match rx.try_recv() {
                            Ok(Out::Close(done)) => closing = Some(done),
                            // A sync ends the batch: it waits for exactly this one.
                            Ok(Out::Sync(done)) => waiting.push(done),
                            Ok(o) => size += add(&mut msg, o),
                            Err(_) => break,
                        }
                    }
                    if !waiting.is_empty() && closing.is_none() && msg == DriverToHead::default() {
                        // Nothing new to send: wait for what was sent.
                        for done in waiting {
                            if seq <= acked {
                                let _ = done.send(());
                            } else {
                                syncs.push((seq, done));
                            }
                        }
                        continue;
                    }
                    if let Some(done) = closing {
                        if msg != DriverToHead::default() {
                            seq += 1;
                            msg.seq = seq;
                            let _ = session.up.send(shoal_proto::pad::pad(msg)).await;
                        }
                        // The end of our stream reaches the head as a clean
                        // close; it answers by ending its stream. Waiting
                        // for that (not for a fixed time) means the head
                        // has seen the job end.
                        let Session { up, mut down, .. } = session;
                        drop(up);
                        let _ = tokio::time::timeout(Duration::from_secs(1), async { while let Some(Ok(_)) = down.next().await {} }).await;
                        let _ = done.send(());
                        return;
                    }
                    seq += 1;
                    msg.seq = seq;
                    syncs.extend(waiting.into_iter().map(|d| (seq, d)));
                    if keep {
                        unacked.push_back((seq, msg.clone()));
                    }
                    if session.up.send(shoal_proto::pad::pad(msg)).await.is_err() {
                        break "the session's stream closed".to_string();
                    }
                }
                m = session.down.next() => match m.transpose() {
                    Ok(Some(msg)) => {
                        let Some(d) = weak.upgrade() else { return };
                        if !msg.output.is_empty() {
                            print_task_output(&msg.output);
                        }
                        // Items first: a generator's final result follows them.
                        // A run of one generator's items lands in one go.
                        let mut run: Option<(u64, Option<Arc<crate::stream::ItemQueue>>, Vec<crate::stream::Arrived>)> = None;
                        for item in msg.items {
                            if run.as_ref().is_none_or(|(task, _, _)| *task != item.task) {
                                if let Some((_, Some(q), items)) = run.take() {
                                    q.push_all(items);
                                }
                                run = Some((item.task, d.generators.get(&item.task).map(|q| q.clone()), Vec::new()));
                            }
                            if !item.run_ids.is_empty() {
                                // Owned items: nothing to give back if the caller is gone.
                                if let Some((_, Some(_), items)) = run.as_mut() {
                                    items.extend(item.run_ids.into_iter().zip(item.run_values).map(|(id, v)| (id, Ok(Val::Inline(v)), true)));
                                }
                                continue;
                            }
                            let Some(v) = item.value else { continue };
                            let object = v.task;
                            match run.as_mut() {
                                Some((_, Some(_), items)) => items.push((object, result_from_pb(v), false)),
                                // Its caller is gone: so is its borrow.
                                _ => d.borrow(object, false),
                            }
                        }
                        if let Some((_, Some(q), items)) = run {
                            q.push_all(items);
                        }
                        for a in msg.generator_acks {
                            if let Some(g) = d.producing.get(&a.task) {
                                g.advance(a.consumed);
                            }
                        }
                        for r in msg.results {
                            let task = r.task;
                            if let Some(slot) = d.slots.get(&task).map(|s| s.clone()) {
                                slot.complete(result_from_pb(r));
                            }
                            if let Some(q) = d.generators.get(&task).map(|q| q.clone()) {
                                q.notify();
                            }
                        }
                        while unacked.front().is_some_and(|(s, _)| *s <= msg.acked) {
                            unacked.pop_front();
                        }
                        if msg.acked > acked {
                            acked = msg.acked;
                            for (_, done) in syncs.extract_if(.., |(s, _)| *s <= acked) {
                                let _ = done.send(());
                            }
                        }
                        if !msg.error.is_empty() {
                            break 'session msg.error;
                        }
                    }
                    Ok(None) => break "the head closed the session".to_string(),
                    Err(s) => break format!("{}: {}", s.code(), s.message()),
                },
            }
        };
        if !keep {
            break broken;
        }
        // Reconnect to the same job, then replay what is not durable.
        tracing::warn!(job = session.job, reason = %broken, "lost the head; reconnecting");
        let deadline = tokio::time::Instant::now() + RECONNECT_WINDOW;
        let mut backoff = shoal_proto::client::reconnect_delays(Duration::from_millis(100), Duration::from_secs(2));
        let job = session.job;
        session = loop {
            if weak.upgrade().is_none() {
                return;
            }
            match endpoint.open(job, &session.secret).await {
                Ok(s) => break s,
                Err(e @ Error::JobUnknown { .. }) => {
                    break 'session format!("{broken}; {e}");
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    break 'session format!("{broken}; could not reconnect within {}s: {e}", RECONNECT_WINDOW.as_secs());
                }
                Err(_) => {
                    tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(2))).await;
                }
            }
        };
        while unacked.front().is_some_and(|(s, _)| *s <= session.acked) {
            unacked.pop_front();
        }
        acked = acked.max(session.acked);
        for (_, done) in syncs.extract_if(.., |(s, _)| *s <= acked) {
            let _ = done.send(());
        }
        tracing::info!(job, resent = unacked.len(), "reconnected to the head");
        for (_, msg) in &unacked {
            if session.up.send(shoal_proto::pad::pad(msg.clone())).await.is_err() {
                break;
            }
        }
    };
    if let Some(d) = weak.upgrade() {
        d.close(reason);
    }
}

fn add(msg: &mut DriverToHead, o: Out) -> usize {
    match o {
        Out::Define(idx, def) => {
            if msg.functions.is_empty() {
                msg.first_function = idx;
            }
            msg.functions.push(def);
            64
        }
        Out::Submit(t) => {
            let size = 16
                + t.args
                    .iter()
                    .map(|a| match &a.kind {
                        Some(pb::arg::Kind::Value(v)) => v.len() + 4,
                        _ => 10,
                    })
                    .sum::<usize>();
            msg.submit.push(t);
            size
        }
        Out::Put(p) => {
            let size = p.value.len() + 32;
            msg.puts.push(p);
            size
        }
        Out::Cancel(id) => {
            msg.cancel.push(id);
            8
        }
        Out::Release(id) => {
            msg.release.push(id);
            8
        }
        Out::KillActor(id) => {
            msg.kill_actors.push(id);
            8
        }
        Out::Locate(id) => {
            msg.locate.push(id);
            8
        }
        Out::Borrow(id, hold) => {
            msg.borrow.push(pb::RefOp { id, hold });
            10
        }
        Out::Contain(container, ids) => {
            let size = 8 * ids.len() + 8;
            msg.contain.push(pb::Containment { container, ids });
            size
        }
        // Handled by the session loop before batching.
        Out::Sync(_) => 0,
        Out::Item(task, index, put) => {
            let size = put.value.len() + 40;
            if put.stored.is_some() || !put.contains.is_empty() {
                msg.items.push(pb::GeneratorItem { task, index, put: Some(put), ..Default::default() });
                return size;
            }
            // Small and holding no refs: it joins the run it follows.
            shoal_proto::items::push_run(&mut msg.items, task, index, put.id, put.value);
            size - 24
        }
        Out::GeneratorAck(task, consumed) => {
            msg.generator_acks.push(pb::GeneratorAck { task, consumed });
            16
        }
        Out::Adopt(put) => {
            let size = put.value.len() + 16;
            msg.adopt.push(put);
            size
        }
        // Handled by the session loop before batching.
        Out::Close(_) => 0,
    }
}

/// Converts a wire result into what `ObjectRef` yields.
pub(crate) fn result_from_pb(r: pb::TaskResult) -> std::result::Result<Val, TaskError> {
    match r.outcome {
        Some(pb::task_result::Outcome::Value(v)) => Ok(Val::Inline(v)),
        Some(pb::task_result::Outcome::Stored(s)) => Ok(Val::from_pb(s)),
        Some(pb::task_result::Outcome::Failure(f)) => Err(failure_to_error(f)),
        None => Err(TaskError::Disconnected { message: "a result without an outcome".into() }),
    }
}

pub(crate) fn failure_to_error(f: pb::TaskFailure) -> TaskError {
    let kind = FailureKind::try_from(f.kind).unwrap_or(FailureKind::Panicked);
    let pb::TaskFailure { message, location, node, function, attempts, .. } = f;
    match kind {
        FailureKind::Panicked => TaskError::Panicked { function, message, location, node },
        FailureKind::FunctionNotFound => TaskError::FunctionNotFound { function, message },
        FailureKind::ArgDecode => TaskError::ArgDecode { function, message },
        FailureKind::WorkerDied => TaskError::WorkerDied { function, message, node, attempts },
        FailureKind::Cancelled => TaskError::Cancelled { message },
        FailureKind::ObjectLost => TaskError::ObjectLost { message },
        FailureKind::Timeout => TaskError::Timeout { after: Duration::ZERO },
        FailureKind::Unauthenticated => TaskError::Unauthenticated { message },
        FailureKind::BinaryIncompatible => TaskError::BinaryIncompatible { node, message },
        FailureKind::Unschedulable => TaskError::Unschedulable { function, message },
        FailureKind::ResultEncode => TaskError::Serialization { message },
        FailureKind::ObjectStoreFull => TaskError::ObjectStoreFull { message },
        FailureKind::Internal => TaskError::Internal { message },
        FailureKind::ActorDied => TaskError::ActorDied { class: function, message, node },
    }
}
