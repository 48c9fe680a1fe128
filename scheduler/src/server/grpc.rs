//! The head's gRPC service. Handlers only unpack, forward to the loop and
//! stream replies back.

use super::cmd::Cmd;
use super::sessions::{head_gone, open_driver_session, open_worker_session};
use crate::core::NodeId;
use shoal_proto::local::BoxStream;
use shoal_proto::pb::head_server::Head;
use shoal_proto::pb::{self, HeadToDriver, HeadToWorker};
use shoal_store::binaries::{BinaryStore, valid_hash};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

pub(super) struct HeadService {
    pub(super) events: mpsc::UnboundedSender<Cmd>,
    pub(super) store: BinaryStore,
    pub(super) uploads: super::uploads::Uploads,
    pub(super) dashboard: Option<(std::net::SocketAddr, std::sync::Arc<super::dashboard::auth::DashboardAuth>)>,
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

    /// "No" goes to one asker at a time per binary: the others wait for
    /// its upload (see `uploads`), so concurrent drivers upload once.
    async fn has_binary(&self, request: Request<pb::BinaryId>) -> Result<Response<pb::HasBinaryReply>, Status> {
        use super::uploads::Absent;
        let hash = request.into_inner().hash;
        loop {
            if self.store.contains(&hash) {
                return Ok(Response::new(pb::HasBinaryReply { present: true }));
            }
            if !valid_hash(&hash) {
                return Ok(Response::new(pb::HasBinaryReply { present: false }));
            }
            match self.uploads.absent(&hash) {
                Absent::Upload => return Ok(Response::new(pb::HasBinaryReply { present: false })),
                Absent::Wait(ended) => super::uploads::wait(ended).await,
            }
        }
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
        let _uploading = loop {
            if self.store.contains(&hash) {
                return Ok(Response::new(pb::UploadBinaryReply { hash, size: first.total_size }));
            }
            match self.uploads.begin(&hash) {
                Ok(guard) => break guard,
                Err(ended) => super::uploads::wait(ended).await,
            }
        };
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

    async fn state(&self, request: Request<pb::StateRequest>) -> Result<Response<pb::StateReply>, Status> {
        use super::state::{StateAnswer, StateQuery};
        use pb::state_request::Kind;
        use shoal_domain::state::{TaskFilter, TaskPhase};
        let r = request.into_inner();
        let job = (r.job != 0).then_some(r.job);
        let query = match r.kind() {
            Kind::Tasks => {
                let phase = match r.state.trim() {
                    "" => None,
                    s => Some(
                        TaskPhase::parse(s).ok_or_else(|| Status::invalid_argument(format!("unknown state {s:?}: pending, running, finished or failed")))?,
                    ),
                };
                let nonempty = |s: String| Some(s.trim().to_string()).filter(|s| !s.is_empty());
                StateQuery::Tasks(TaskFilter { job, function: nonempty(r.function), phase, node: nonempty(r.node), limit: r.limit })
            }
            Kind::Task => StateQuery::Task(
                shoal_domain::ObjectId::parse(r.id.trim())
                    .ok_or_else(|| Status::invalid_argument(format!("{:?} is not a task id (job.seq, e.g. 3.17)", r.id)))?,
            ),
            Kind::Jobs => StateQuery::Jobs,
            Kind::Summary => StateQuery::Summary(job),
            Kind::Objects => StateQuery::Objects { job, limit: r.limit as usize },
            Kind::Overview => StateQuery::Overview,
            Kind::Logs => StateQuery::Logs(r.job),
        };
        let (tx, rx) = oneshot::channel();
        self.events.send(Cmd::State { query, reply: tx }).map_err(|_| head_gone())?;
        let answer = rx.await.map_err(|_| head_gone())?;
        if let StateAnswer::Task(None) = answer {
            return Err(Status::not_found(format!("task {} is not tracked (unknown, or dropped from the bounded task store)", r.id.trim())));
        }
        Ok(Response::new(pb::StateReply { json: answer.to_json().into() }))
    }

    async fn dashboard_login(&self, _request: Request<pb::DashboardLoginRequest>) -> Result<Response<pb::DashboardLoginReply>, Status> {
        let (addr, auth) =
            self.dashboard.as_ref().ok_or_else(|| Status::unavailable("this head serves no dashboard (started with --no-dashboard, or its port was taken)"))?;
        let code = if auth.open() { String::new() } else { auth.login_code(std::time::Instant::now()) };
        Ok(Response::new(pb::DashboardLoginReply { bind: addr.ip().to_string(), port: addr.port() as u32, code }))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::ClusterStatus>, Status> {
        let (tx, rx) = oneshot::channel();
        self.events.send(Cmd::Status { reply: tx }).map_err(|_| head_gone())?;
        let snap = rx.await.map_err(|_| head_gone())?;
        Ok(Response::new(pb::ClusterStatus::from(snap)))
    }
}
