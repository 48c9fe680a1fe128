//! Opening worker and driver sessions, over gRPC or in-process: check and
//! unpack the first message, register with the loop, forward the rest.

use super::cmd::Cmd;
use crate::core::{NodeId, NodeRegistration};
use futures::StreamExt;
use shoal_domain::{ObjectId, ResourceSet};
use shoal_proto::PROTOCOL_VERSION;
use shoal_proto::local::{BoxStream, LocalHead, SessionFuture};
use shoal_proto::pb::{self, HeadToDriver, HeadToWorker};
use shoal_store::binaries::BinaryStore;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Status;

pub(super) fn head_gone() -> Status {
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
pub(super) async fn open_worker_session(
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
        metrics_address: crate::address::object_address(&reg.object_host, reg.metrics_port, &peer),
        objects: reg.objects.iter().map(|r| ObjectId(*r)).collect(),
        store_file: (reg.store_fd, reg.store_ino),
        instance: reg.instance,
        address: peer,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let (reply_tx, reply_rx) = oneshot::channel();
    events.send(Cmd::WorkerRegister { reg: registration, tx, reply: reply_tx }).map_err(|_| head_gone())?;
    let (node, epoch) = reply_rx.await.map_err(|_| head_gone())??;
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
pub(super) async fn open_driver_session(
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
    let gate = std::sync::Arc::new(super::admission::Gate::default());
    events
        .send(Cmd::DriverHello {
            binary: hello.binary,
            name,
            resume_job: hello.resume_job,
            resume_secret: hello.resume_secret,
            parent_job: hello.parent_job,
            tx,
            gate: gate.clone(),
            reply: reply_tx,
        })
        .map_err(|_| head_gone())?;
    let job = reply_rx.await.map_err(|_| head_gone())??;
    tokio::spawn(async move {
        let _ = events.send(Cmd::DriverMsg { job, msg: first });
        let clean = loop {
            match inbound.next().await {
                Some(Ok(msg)) => {
                    // Only a message that adds tasks waits for room (the
                    // ones after it wait behind it, in order); releases,
                    // acks and the end of the stream still get through.
                    if !msg.submit.is_empty() {
                        tokio::select! {
                            _ = gate.open() => {}
                            // The driver went away while held.
                            _ = session_tx.closed() => break false,
                        }
                        gate.took(msg.submit.len());
                    }
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

/// The head as seen from its own process: sessions over channels.
pub(super) struct InProcessHead {
    pub(super) events: mpsc::UnboundedSender<Cmd>,
    pub(super) store: BinaryStore,
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
