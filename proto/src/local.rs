//! In-process sessions. A worker or driver living in the same process as
//! the head (the embedded local cluster of `shoal::init()`) opens its
//! session through channels instead of loopback gRPC: the same session code
//! on the head's side, the same messages, minus HTTP/2 framing, protobuf
//! encoding and two socket hops each way.

use crate::pb::{DriverToHead, HeadToDriver, HeadToWorker, WorkerToHead};
use futures::Stream;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A stream of session messages (a tonic `Streaming`, or a channel).
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// Opening a session: the stream of replies, or why it was refused.
pub type SessionFuture<T> = Pin<Box<dyn Future<Output = Result<BoxStream<T>, tonic::Status>> + Send + 'static>>;

/// A head reachable in-process.
pub trait LocalHead: Send + Sync + 'static {
    /// Opens a worker session fed by `up`.
    fn worker_session(&self, up: BoxStream<WorkerToHead>) -> SessionFuture<HeadToWorker>;
    /// Opens a driver session fed by `up`.
    fn driver_session(&self, up: BoxStream<DriverToHead>) -> SessionFuture<HeadToDriver>;
}

/// A handle to an in-process head, to put in worker and driver configs.
#[derive(Clone)]
pub struct LocalLink(pub Arc<dyn LocalHead>);

impl fmt::Debug for LocalLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocalLink(in-process head)")
    }
}
