//! The driver's session with the head: one bidirectional stream. Calls
//! queue small messages on an unbounded channel; a sender task drains
//! whatever is queued into one `DriverToHead` batch, so a burst of calls
//! travels in a few frames while a lone call leaves at once. A receiver
//! task completes result slots.

use crate::error::{Error, Result, TaskError, status_to_error};
use crate::object_ref::Slot;
use crate::objects::{LocalStore, Val};
use dashmap::DashMap;
use futures::StreamExt;
use shoal_proto::client::{Client, ConnectError};
use shoal_proto::local::{BoxStream, LocalLink};
use tokio_stream::wrappers::ReceiverStream;
use shoal_proto::pb::{self, DriverToHead, FailureKind};
use shoal_proto::{PROTOCOL_VERSION, ids};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// What a driver sends, before batching.
pub(crate) enum Out {
    Define(u32, pb::FunctionDef),
    Submit(pb::TaskSubmit),
    Put(pb::PutObject),
    Cancel(u64),
    Release(u64),
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
    /// The store of the worker in this process (embedded cluster).
    pub(crate) local_store: Option<LocalStore>,
    /// `(node id, object store address)` large puts go to, when there is
    /// no local store.
    pub(crate) store_target: Mutex<Option<(String, String)>>,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

pub(crate) async fn connect_client(address: &str, token: Option<&str>, timeout: Duration) -> Result<Client> {
    shoal_proto::client::connect(address, token, timeout).await.map_err(|e| match e {
        ConnectError::Token(t) => Error::Config(t.to_string()),
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

impl Driver {
    /// Connects, making sure the head has the program binary `hash`
    /// (uploading `exe` if not), and opens the session: over gRPC, or over
    /// channels when the head is in this process (`local`).
    pub(crate) async fn connect(
        address: &str,
        token: Option<String>,
        hash: &str,
        exe: &Path,
        name: &str,
        local: Option<LocalLink>,
        local_store: Option<LocalStore>,
    ) -> Result<Arc<Driver>> {
        let (stream_tx, stream_rx) = mpsc::channel::<DriverToHead>(16);
        let hello = DriverToHead {
            hello: Some(pb::DriverHello {
                protocol_version: PROTOCOL_VERSION,
                binary: hash.to_string(),
                name: name.to_string(),
                hostname: shoal_worker::config::hostname(),
                pid: std::process::id(),
            }),
            ..Default::default()
        };
        stream_tx.send(hello).await.expect("receiver alive");
        let mut inbound: BoxStream<pb::HeadToDriver> = match &local {
            // The embedded head shares this process's binary cache.
            Some(link) => link.0.driver_session(Box::pin(ReceiverStream::new(stream_rx).map(Ok))).await.map_err(|s| status_to_error(address, s))?,
            None => {
                let mut client = connect_client(address, token.as_deref(), Duration::from_secs(5)).await?;
                let present = client
                    .has_binary(pb::BinaryId { hash: hash.to_string() })
                    .await
                    .map_err(|s| status_to_error(address, s))?
                    .into_inner()
                    .present;
                if !present {
                    tracing::info!(binary = %&hash[..12], "uploading the program binary to the head");
                    upload_binary(&mut client, address, hash, exe).await?;
                }
                let resp = client.driver_session(ReceiverStream::new(stream_rx)).await.map_err(|s| status_to_error(address, s))?;
                Box::pin(resp.into_inner())
            }
        };
        let first = inbound.next().await.transpose().map_err(|s| status_to_error(address, s))?;
        let job = match first.and_then(|m| m.welcome) {
            Some(w) => w.job,
            None => return Err(Error::Refused { address: address.to_string(), message: "the head closed the session without a welcome".into() }),
        };
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
            local_store,
            store_target: Mutex::new(None),
        });
        tokio::spawn(send_loop(rx, stream_tx));
        let weak = Arc::downgrade(&driver);
        tokio::spawn(async move {
            let reason = loop {
                match inbound.next().await.transpose() {
                    Ok(Some(msg)) => {
                        let Some(d) = weak.upgrade() else { return };
                        for r in msg.results {
                            if let Some(slot) = d.slots.get(&r.task).map(|s| s.clone()) {
                                slot.complete(result_from_pb(r));
                            }
                        }
                        if !msg.error.is_empty() {
                            break msg.error;
                        }
                    }
                    Ok(None) => break "the head closed the session".to_string(),
                    Err(s) => break format!("{}: {}", s.code(), s.message()),
                }
            };
            if let Some(d) = weak.upgrade() {
                d.close(reason);
            }
        });
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
    pub(crate) fn function_index(&self, meta: &crate::registry::FunctionMeta) -> u32 {
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
        let _ = self.tx.send(Out::Define(idx, pb::FunctionDef { name: meta.name.to_string(), resources: Some(res), max_retries: meta.max_retries }));
        meta.cached_index.store(((self.generation as u64) << 32) | idx as u64, Ordering::Release);
        idx
    }

    /// Registers a pending result slot for `id`.
    pub(crate) fn expect(&self, id: u64) -> Arc<Slot> {
        let slot = Slot::pending();
        self.slots.insert(id, slot.clone());
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

    /// The last reference to `id` was dropped.
    pub(crate) fn release(&self, id: u64) {
        self.slots.remove(&id);
        let _ = self.tx.send(Out::Release(id));
    }

    pub(crate) fn cancel(&self, id: u64) {
        let _ = self.tx.send(Out::Cancel(id));
    }
}

/// Largest batch a driver sends in one frame.
const BATCH_BYTES: usize = shoal_proto::BATCH_BYTES;

async fn send_loop(mut rx: mpsc::UnboundedReceiver<Out>, stream: mpsc::Sender<DriverToHead>) {
    while let Some(first) = rx.recv().await {
        let mut msg = DriverToHead::default();
        let mut size = add(&mut msg, first);
        while size < BATCH_BYTES {
            match rx.try_recv() {
                Ok(o) => size += add(&mut msg, o),
                Err(_) => break,
            }
        }
        if stream.send(shoal_proto::pad::pad(msg)).await.is_err() {
            return;
        }
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
    }
}
