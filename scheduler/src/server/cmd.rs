//! The events gRPC handlers and the durable log send to the event loop.

use crate::core::{ClusterStatus, CoreError, JobId, NodeId, NodeRegistration};
use shoal_proto::pb::{self, HeadToDriver, HeadToWorker};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// The sending half of a session's reply stream.
pub(crate) type Sender<T> = mpsc::UnboundedSender<Result<T, Status>>;

/// An event for the loop.
pub(crate) enum Cmd {
    WorkerRegister {
        reg: NodeRegistration,
        tx: Sender<HeadToWorker>,
        reply: oneshot::Sender<Result<(NodeId, u64), Status>>,
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
        /// The job's secret, with `resume_job`.
        resume_secret: String,
        /// Non-zero: a task of this job submits tasks (see `DriverHello`).
        parent_job: JobId,
        tx: Sender<HeadToDriver>,
        /// The session reads from its driver through this (admission
        /// control).
        gate: std::sync::Arc<super::admission::Gate>,
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
        reply: oneshot::Sender<ClusterStatus>,
    },
    /// A question of the state API (CLI, dashboard, metrics).
    State {
        query: super::state::StateQuery,
        reply: oneshot::Sender<super::state::StateAnswer>,
    },
    Drain {
        node: NodeId,
        reply: oneshot::Sender<Result<(), CoreError>>,
    },
    Stop,
}
