//! The worker's connection to the head: connect, register, forward every
//! message to the daemon loop, and on loss reconnect with exponential
//! backoff, re-registering under the same node id. A refused token or a
//! protocol mismatch is fatal (retrying cannot help); anything else is
//! retried.

use crate::daemon::Ev;
use shoal_proto::pb::{self, WorkerToHead};
use shoal_proto::{PROTOCOL_VERSION, client};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// What the daemon tells the session when (re)connecting.
pub(crate) struct Registration {
    pub resources: pb::Resources,
    pub hostname: String,
    pub memory_bytes: u64,
    pub object_store_bytes: u64,
}

pub(crate) async fn run(head: String, token: Option<String>, mut node_id: Option<String>, reg: Registration, events: mpsc::UnboundedSender<Ev>) {
    let mut backoff = Duration::from_millis(50);
    let mut session: u64 = 0;
    let mut logged_unreachable = false;
    loop {
        session += 1;
        match client::connect(&head, token.as_deref(), Duration::from_secs(3)).await {
            Ok(mut client) => {
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
                    }),
                    ..Default::default()
                });
                match client.worker_session(UnboundedReceiverStream::new(rx)).await {
                    Ok(resp) => {
                        let mut inbound = resp.into_inner();
                        match inbound.message().await {
                            Ok(Some(first)) if first.registered.is_some() => {
                                let r = first.registered.expect("checked");
                                node_id = Some(r.node_id.clone());
                                logged_unreachable = false;
                                backoff = Duration::from_millis(50);
                                let heartbeat = Duration::from_millis(r.heartbeat_interval_ms.max(50) as u64);
                                if events.send(Ev::Connected { session, tx, node_id: r.node_id, heartbeat }).is_err() {
                                    return;
                                }
                                loop {
                                    match inbound.message().await {
                                        Ok(Some(msg)) => {
                                            if events.send(Ev::Head { session, msg }).is_err() {
                                                return;
                                            }
                                        }
                                        Ok(None) => {
                                            tracing::warn!("head closed the session");
                                            break;
                                        }
                                        Err(e) => {
                                            tracing::warn!(error = %e, "lost the head");
                                            break;
                                        }
                                    }
                                }
                                let _ = events.send(Ev::Lost { session });
                            }
                            Ok(_) => tracing::warn!("head answered registration without `registered`"),
                            Err(e) => tracing::warn!(error = %e, "registration failed"),
                        }
                    }
                    Err(status) => match status.code() {
                        tonic::Code::Unauthenticated | tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => {
                            let _ = events.send(Ev::Fatal(format!("the head at {head} refused this worker: {}", status.message())));
                            return;
                        }
                        _ => tracing::warn!(error = %status, "cannot open a session with the head"),
                    },
                }
            }
            Err(e) => {
                if !logged_unreachable {
                    tracing::warn!(error = %e, "head unreachable; retrying with backoff");
                    logged_unreachable = true;
                }
            }
        }
        if events.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
