//! The worker's connection to the head: connect, register, forward every
//! message to the daemon loop, and on loss reconnect with exponential
//! backoff, re-registering under the same node id. A refused token or a
//! protocol mismatch is fatal (retrying cannot help); anything else is
//! retried. A worker in the head's own process (the embedded cluster)
//! opens its session over channels instead of gRPC.

use crate::daemon::Ev;
use futures::StreamExt;
use shoal_proto::local::{BoxStream, LocalLink};
use shoal_proto::pb::{self, HeadToWorker, WorkerToHead};
use shoal_proto::{PROTOCOL_VERSION, client};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// What the daemon tells the head when (re)connecting.
pub(crate) struct Registration {
    pub resources: pb::Resources,
    pub hostname: String,
    pub memory_bytes: u64,
    pub object_store_bytes: u64,
    pub object_port: u32,
    pub object_host: String,
    pub store_fd: u32,
    pub store_ino: u64,
    /// Random per process (see `RegisterNode.instance`).
    pub instance: u64,
    /// Port of its `/metrics` (0: none).
    pub metrics_port: u32,
}

enum OpenError {
    /// Nothing answered, or the session broke while opening: retry.
    Transient(String),
    /// The head refused this worker: stop.
    Refused(String),
    /// Its node id is held by another live worker: retry until it goes.
    InUse(String),
}

async fn open(
    head: &str,
    token: Option<&str>,
    local: Option<&LocalLink>,
    up: mpsc::UnboundedReceiver<WorkerToHead>,
) -> Result<BoxStream<HeadToWorker>, OpenError> {
    let refused = |s: tonic::Status| match s.code() {
        tonic::Code::Unauthenticated | tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => {
            OpenError::Refused(format!("the head at {head} refused this worker: {}", s.message()))
        }
        // Its node id is another live worker's: wait (that one may be
        // going away, as when a service manager restarts a worker).
        tonic::Code::AlreadyExists => OpenError::InUse(s.message().to_string()),
        _ => OpenError::Transient(s.to_string()),
    };
    match local {
        Some(link) => link.0.worker_session(Box::pin(UnboundedReceiverStream::new(up).map(Ok))).await.map_err(refused),
        None => {
            let mut client = client::connect(head, token, Duration::from_secs(3)).await.map_err(|e| match e {
                // A wrong token (or CA, or name) does not fix itself.
                client::ConnectError::Tls { problem, .. } => OpenError::Refused(format!("the head at {head} refused this worker: {}", tls_words(&problem))),
                other => OpenError::Transient(format!("the head: {other}")),
            })?;
            let resp = client.worker_session(UnboundedReceiverStream::new(up)).await.map_err(refused)?;
            Ok(Box::pin(resp.into_inner()))
        }
    }
}

/// A TLS failure in the words the rest of the worker's errors use.
fn tls_words(p: &shoal_proto::tls::TlsProblem) -> String {
    use shoal_proto::tls::TlsProblem as P;
    match p {
        P::WrongToken | P::RefusedByServer => format!("wrong cluster token ({p})"),
        P::NeedsToken => format!("missing cluster token ({p})"),
        other => other.to_string(),
    }
}

pub(crate) async fn run(
    head: String,
    token: Option<String>,
    local: Option<LocalLink>,
    mut node_id: Option<String>,
    reg: Registration,
    store: std::sync::Arc<shoal_store::Store>,
    events: mpsc::UnboundedSender<Ev>,
) {
    let delays = || client::reconnect_delays(Duration::from_millis(50), Duration::from_secs(2));
    let mut backoff = delays();
    let mut session: u64 = 0;
    let mut logged_unreachable = false;
    let mut in_use_refusals: u64 = 0;
    loop {
        session += 1;
        let (tx, rx) = mpsc::unbounded_channel::<WorkerToHead>();
        let _ = tx.send(WorkerToHead {
            register: Some(pb::RegisterNode {
                protocol_version: PROTOCOL_VERSION,
                node_id: node_id.clone().unwrap_or_default(),
                resources: Some(reg.resources.clone()),
                memory_bytes: reg.memory_bytes,
                object_store_bytes: reg.object_store_bytes,
                hostname: reg.hostname.clone(),
                pid: std::process::id(),
                object_port: reg.object_port,
                object_host: reg.object_host.clone(),
                // What survived a lost connection (or a head restart).
                objects: store.ids(),
                store_fd: reg.store_fd,
                store_ino: reg.store_ino,
                instance: reg.instance,
                metrics_port: reg.metrics_port,
            }),
            ..Default::default()
        });
        match open(&head, token.as_deref(), local.as_ref(), rx).await {
            Ok(mut inbound) => match inbound.next().await {
                Some(Ok(pb::HeadToWorker { registered: Some(r), .. })) => {
                    node_id = Some(r.node_id.clone());
                    logged_unreachable = false;
                    backoff = delays();
                    let heartbeat = Duration::from_millis(r.heartbeat_interval_ms.max(50) as u64);
                    if events.send(Ev::Connected { session, tx, node_id: r.node_id, heartbeat }).is_err() {
                        return;
                    }
                    loop {
                        match inbound.next().await {
                            Some(Ok(msg)) => {
                                if events.send(Ev::Head { session, msg }).is_err() {
                                    return;
                                }
                            }
                            None => {
                                tracing::warn!("head closed the session");
                                break;
                            }
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "lost the head");
                                break;
                            }
                        }
                    }
                    let _ = events.send(Ev::Lost { session });
                }
                Some(Ok(_)) => tracing::warn!("head answered registration without `registered`"),
                Some(Err(e)) => tracing::warn!(error = %e, "registration failed"),
                None => tracing::warn!("head closed the session during registration"),
            },
            Err(OpenError::Refused(msg)) => {
                let _ = events.send(Ev::Fatal(msg));
                return;
            }
            Err(OpenError::InUse(msg)) => {
                // Once, and again every ~30 tries (a minute at the cap).
                if in_use_refusals.is_multiple_of(30) {
                    tracing::warn!(error = %msg, "the head refused the registration; retrying until the node id is free");
                }
                in_use_refusals += 1;
            }
            Err(OpenError::Transient(e)) => {
                if !logged_unreachable {
                    tracing::warn!(error = %e, "head unreachable; retrying with backoff");
                    logged_unreachable = true;
                }
            }
        }
        if events.is_closed() {
            return;
        }
        tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(2))).await;
    }
}
