//! Moving objects between nodes: the worker's `ObjectStore` gRPC service
//! (peers pull from it, remote drivers push to it) and the client side of
//! both. Transfers are streams of [`OBJECT_CHUNK_BYTES`] chunks; a large
//! object is pulled as several ranges in parallel.

use bytes::Bytes;
use futures::StreamExt;
use shoal_domain::limits::OBJECT_CHUNK_BYTES;
use shoal_proto::pb::object_store_server::{ObjectStore, ObjectStoreServer};
use shoal_proto::pb::{ObjectChunk, PinReply, PinRequest, PullRequest, PushReply, WriteReply, WriteStep};
use shoal_store::{Claim, Store, StoreError};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status, Streaming};

/// Where pulled chunks go: `(offset, bytes)`, into a store or a buffer.
type Sink<'a> = &'a (dyn Fn(u64, &[u8]) -> Result<(), String> + Sync);

/// Objects at least this large are pulled as parallel ranges.
const PARALLEL_FROM: u64 = 32 << 20;
/// How many ranges a large pull is split into.
const PARALLEL_RANGES: u64 = 4;

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Full { .. } => Status::resource_exhausted(e.to_string()),
        StoreError::NotFound(_) => Status::not_found(e.to_string()),
        StoreError::Exists(_) => Status::already_exists(e.to_string()),
        StoreError::BadWrite { .. } => Status::invalid_argument(e.to_string()),
    }
}

/// How long a read waits for an object being written here (a copy still
/// arriving: the head sends readers to such copies, so that many readers of
/// one object form a tree; or a task's result being stored).
const COMING_PATIENCE: Duration = Duration::from_secs(300);
/// How long a read waits for an object not here at all: the pull that
/// brings it may start a moment after a reader sent here asks for it.
const ABSENT_PATIENCE: Duration = Duration::from_secs(3);
/// Pulls of objects this large are logged at `info` (with the holder they
/// came from), smaller ones at `debug`.
const LOGGED_PULL_BYTES: u64 = 16 << 20;

/// Returns once object `id` is sealed here, or when it is neither being
/// written nor arriving within the patience above (the read then answers
/// "not found" and the reader tries its next holder).
async fn until_sealed(store: &Store, id: u64) {
    let start = tokio::time::Instant::now();
    let mut last_seen = start;
    while !store.contains(id) {
        let now = tokio::time::Instant::now();
        if store.is_writing(id) {
            last_seen = now;
        }
        if now - last_seen >= ABSENT_PATIENCE || now - start >= COMING_PATIENCE {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The service a worker serves its store with.
pub struct ObjectService {
    store: Arc<Store>,
    /// Where same-machine readers map this store from (see [`PinReply`]).
    pid: u32,
    store_fd: u32,
    store_ino: u64,
    host_key: String,
}

type ChunkStream = Pin<Box<dyn futures::Stream<Item = Result<ObjectChunk, Status>> + Send>>;

type ReplyStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ObjectStore for ObjectService {
    type PullStream = ChunkStream;
    type WriteStream = ReplyStream<WriteReply>;
    type PinStream = ReplyStream<PinReply>;

    async fn write(&self, req: Request<Streaming<WriteStep>>) -> Result<Response<Self::WriteStream>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound.message().await?.ok_or_else(|| Status::invalid_argument("empty write"))?;
        let (id, size) = (first.id, first.size);
        let store = self.store.clone();
        let offset =
            tokio::task::spawn_blocking(move || store.create(id, size, 0)).await.map_err(|e| Status::internal(e.to_string()))?.map_err(store_status)?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let _ = tx.send(Ok(WriteReply { offset, sealed: false })).await;
        let store = self.store.clone();
        tokio::spawn(async move {
            // The writer fills the range through its own mapping, then asks
            // to seal; if it goes away first, the space is given back.
            match inbound.message().await {
                Ok(Some(step)) if step.seal => match store.seal(id) {
                    Ok(()) => {
                        let _ = tx.send(Ok(WriteReply { offset, sealed: true })).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(store_status(e))).await;
                    }
                },
                _ => store.abort(id),
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn pin(&self, req: Request<PinRequest>) -> Result<Response<Self::PinStream>, Status> {
        let id = req.into_inner().id;
        until_sealed(&self.store, id).await;
        let store = self.store.clone();
        let loc = tokio::task::spawn_blocking(move || store.pin(id)).await.map_err(|e| Status::internal(e.to_string()))?.map_err(store_status)?;
        let reply = match loc {
            shoal_store::Location::Arena { offset, len } => PinReply {
                offset,
                len,
                file: String::new(),
                pid: self.pid,
                store_fd: self.store_fd,
                store_ino: self.store_ino,
                host_key: self.host_key.clone(),
            },
            shoal_store::Location::File { path, len } => PinReply { offset: 0, len, file: path.to_string_lossy().into_owned(), ..Default::default() },
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let _ = tx.send(Ok(reply)).await;
        let store = self.store.clone();
        // The pin lasts as long as the call: when the caller drops it, the
        // response stream (and its receiver) goes, and the object is unpinned.
        tokio::spawn(async move {
            tx.closed().await;
            store.unpin(id);
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn pull(&self, req: Request<PullRequest>) -> Result<Response<ChunkStream>, Status> {
        let r = req.into_inner();
        until_sealed(&self.store, r.id).await;
        let store = self.store.clone();
        // Pinning may bring a spilled object back from disk.
        let bytes = tokio::task::spawn_blocking(move || store.read(r.id)).await.map_err(|e| Status::internal(e.to_string()))?.map_err(store_status)?;
        let size = bytes.len() as u64;
        if r.offset > size {
            return Err(Status::out_of_range(format!("offset {} past the end of object {} ({size} bytes)", r.offset, shoal_domain::ObjectId(r.id))));
        }
        let end = if r.len == 0 { size } else { size.min(r.offset.saturating_add(r.len)) };
        let chunk = OBJECT_CHUNK_BYTES as u64;
        let chunks: Vec<Result<ObjectChunk, Status>> = (r.offset..end)
            .step_by(chunk as usize)
            .map(|o| Ok(ObjectChunk { id: r.id, size, offset: o, data: bytes.slice(o as usize..(o + chunk).min(end) as usize) }))
            .collect();
        // The chunks are slices of the pinned object: no copy until gRPC
        // encodes them, and the pin lasts until the last one is sent.
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn push(&self, req: Request<Streaming<ObjectChunk>>) -> Result<Response<PushReply>, Status> {
        let mut stream = req.into_inner();
        let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("empty push"))?;
        let (id, size) = (first.id, first.size);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.create(id, size, 0)).await.map_err(|e| Status::internal(e.to_string()))?.map_err(store_status)?;
        let result = async {
            let mut received = 0u64;
            let mut next = Some(first);
            while let Some(c) = next {
                if c.id != id || c.offset != received {
                    return Err(Status::invalid_argument(format!(
                        "chunk of object {} at {} out of order (expected {} at {received})",
                        shoal_domain::ObjectId(c.id),
                        c.offset,
                        shoal_domain::ObjectId(id)
                    )));
                }
                self.store.write_at(id, c.offset, &c.data).map_err(store_status)?;
                received += c.data.len() as u64;
                next = stream.message().await?;
            }
            if received != size {
                return Err(Status::invalid_argument(format!("push of object {} ended after {received} of {size} bytes", shoal_domain::ObjectId(id))));
            }
            self.store.seal(id).map_err(store_status)
        }
        .await;
        if result.is_err() {
            self.store.abort(id);
        }
        result.map(|()| Response::new(PushReply {}))
    }
}

/// Serves `store` on `listener` (token-checked, and TLS from the cluster CA
/// when there is a token) until the task is aborted.
pub fn serve(
    store: Arc<Store>,
    listener: tokio::net::TcpListener,
    token: Option<&str>,
    limits: shoal_proto::net::Limits,
    errors: Arc<shoal_proto::rpc_errors::RpcErrors>,
) -> Result<tokio::task::JoinHandle<()>, shoal_proto::tls::TlsProblem> {
    let (store_fd, store_ino) = (store.arena().fd() as u32, store.arena().inode());
    let bulk_store = store.clone();
    let service = ObjectService { store, pid: std::process::id(), store_fd, store_ino, host_key: host_key() };
    let svc = ObjectStoreServer::new(service)
        .max_decoding_message_size(shoal_domain::limits::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(shoal_domain::limits::MAX_MESSAGE_BYTES);
    let svc = shoal_proto::conns::Guard::new(svc, token);
    let svc = shoal_proto::rpc_errors::CountErrors::new(svc, errors.clone());
    let tls = token.map(|t| shoal_proto::tls::server_config(Some(t), None, shoal_proto::tls::STORE_NAME)).transpose()?;
    let incoming = shoal_proto::net::incoming(listener, tls, limits, "object store", errors, Some(bulk_handler(bulk_store)));
    Ok(tokio::spawn(async move {
        let res = tonic::transport::Server::builder()
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(32 << 20)
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "object store service stopped");
        }
    }))
}

/// Serves bulk reads ([`shoal_proto::bulk`]) of `store`'s objects.
fn bulk_handler(store: Arc<Store>) -> shoal_proto::bulk::BulkHandler {
    Arc::new(move |mut s| {
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_bulk(&store, &mut s).await {
                tracing::debug!(error = %e, "a bulk read ended early");
            }
        });
    })
}

/// Sends the range a bulk request asks for, straight from the pinned
/// object's shared memory (the pin lasts until the last byte is written).
async fn serve_bulk(store: &Arc<Store>, s: &mut shoal_proto::bulk::BulkStream) -> std::io::Result<()> {
    use shoal_proto::bulk::{BulkRequest, BulkStatus, reply_err, reply_ok};
    use tokio::io::AsyncWriteExt;
    let r = BulkRequest::read(s).await?;
    until_sealed(store, r.id).await;
    let st = store.clone();
    let bytes = match tokio::task::spawn_blocking(move || st.read(r.id)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e @ StoreError::NotFound(_))) => return reply_err(s, BulkStatus::NotFound, &e.to_string()).await,
        Ok(Err(e)) => return reply_err(s, BulkStatus::Failed, &e.to_string()).await,
        Err(e) => return reply_err(s, BulkStatus::Failed, &e.to_string()).await,
    };
    let size = bytes.len() as u64;
    let end = if r.len == 0 { Some(size) } else { r.offset.checked_add(r.len) };
    let Some(range) = end.filter(|e| *e <= size && r.offset <= *e).and_then(|e| bytes.get(r.offset as usize..e as usize)) else {
        let why = format!("range {}+{} outside object {} of {size} bytes", r.offset, r.len, shoal_domain::ObjectId(r.id));
        return reply_err(s, BulkStatus::Failed, &why).await;
    };
    reply_ok(s, size).await?;
    for piece in range.chunks(1 << 20) {
        s.write_all(piece).await?;
    }
    s.flush().await?;
    s.shutdown().await
}

/// Objects at least this large move over bulk streams; smaller ones over
/// the kept gRPC channel (a bulk stream is a connection of its own).
const BULK_FROM: u64 = 1 << 20;

/// The ranges a pull of `size` bytes is split into.
fn ranges(size: u64) -> Vec<(u64, u64)> {
    let n = if size >= PARALLEL_FROM { PARALLEL_RANGES } else { 1 };
    let step = size.div_ceil(n).div_ceil(OBJECT_CHUNK_BYTES as u64).max(1) * OBJECT_CHUNK_BYTES as u64;
    (0..size).step_by(step as usize).map(|o| (o, step.min(size - o))).collect()
}

/// Streams `[offset, offset+len)` of object `id` from `client`, handing
/// each chunk to `sink(offset, data)`.
async fn pull_range(mut client: shoal_proto::client::StoreClient, id: u64, offset: u64, len: u64, sink: Sink<'_>) -> Result<(), String> {
    let mut s = client.pull(PullRequest { id, offset, len }).await.map_err(|e| e.message().to_string())?.into_inner();
    let mut got = 0;
    while let Some(c) = s.next().await {
        let c = c.map_err(|e| e.message().to_string())?;
        sink(c.offset, &c.data)?;
        got += c.data.len() as u64;
    }
    if got != len {
        return Err(format!("the transfer ended after {got} of {len} bytes"));
    }
    Ok(())
}

/// Pulls all of object `id` (`size` bytes) from the peer `client` talks to.
async fn pull_from(client: &shoal_proto::client::StoreClient, id: u64, size: u64, sink: Sink<'_>) -> Result<(), String> {
    let parts = ranges(size).into_iter().map(|(o, l)| pull_range(client.clone(), id, o, l, sink));
    for r in futures::future::join_all(parts).await {
        r?;
    }
    Ok(())
}

/// What says "the same machine" to a peer: the kernel's boot id (one per
/// running kernel, shared by its containers) and this process's network
/// namespace (a namespace host counts as a host of its own). Empty if
/// either cannot be read: then nothing is mapped.
pub fn host_key() -> String {
    use std::os::unix::fs::MetadataExt;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|b| b.trim().to_string()).unwrap_or_default();
    let net = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).unwrap_or(0);
    if boot.is_empty() || net == 0 { String::new() } else { format!("{boot}:{net}") }
}

/// The node's links to its peers' object stores: one gRPC channel per peer
/// (a TLS handshake per peer, not per pull), and the memory files of peers
/// on the same machine, mapped once, so that an object another worker here
/// holds is copied from its memory instead of streamed over a socket.
pub struct Peers {
    token: Option<String>,
    /// This process's [`host_key`]; empty: never map (turned off, or unknown).
    host_key: String,
    /// Channels by address, with when each was last taken: one unused for
    /// [`shoal_proto::conns::CLIENT_REUSE`] is dialled anew, so the peer's
    /// idle timeout never closes it under a pull.
    clients: std::sync::Mutex<std::collections::HashMap<String, (shoal_proto::client::StoreClient, std::time::Instant)>>,
    /// Bulk dialers by address (their TLS set up once).
    dialers: std::sync::Mutex<std::collections::HashMap<String, shoal_proto::bulk::BulkDialer>>,
    /// Mapped peer stores by (pid, inode): a restarted peer maps anew.
    arenas: std::sync::Mutex<std::collections::HashMap<(u32, u64), MappedPeer>>,
    /// Peer addresses whose stores are on another machine (learnt from
    /// their first pin reply): their pulls skip the pin and stream at once.
    elsewhere: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// A same-machine peer's store mapped here (`None`: it cannot be opened
/// from this process, so its objects are streamed).
type MappedPeer = Option<Arc<shoal_store::Arena>>;

/// Peers whose channels and mappings are kept; past it the oldest go
/// (a cluster that churns through many nodes).
const MAX_PEERS: usize = 256;

/// How a pull was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPath {
    /// Copied from a same-machine holder's mapped memory.
    SharedMemory,
    /// Streamed over the holder's object-store port.
    Network,
    /// Nothing to pull: a copy was sealed here meanwhile.
    AlreadyHere,
}

impl PullPath {
    /// The `path` label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            PullPath::SharedMemory => "shared_memory",
            PullPath::Network => "network",
            PullPath::AlreadyHere => "already_here",
        }
    }
}

impl Peers {
    /// Peers reached with `token`; `map_same_host` false streams every
    /// object over the network (to measure that path on one machine).
    pub fn new(token: Option<String>, map_same_host: bool) -> Self {
        let host_key = if map_same_host { host_key() } else { String::new() };
        Self { token, host_key, clients: Default::default(), dialers: Default::default(), arenas: Default::default(), elsewhere: Default::default() }
    }

    async fn client(&self, address: &str) -> Result<shoal_proto::client::StoreClient, String> {
        if let Some((c, used)) = self.clients.lock().unwrap_or_else(|e| e.into_inner()).get_mut(address)
            && used.elapsed() < shoal_proto::conns::CLIENT_REUSE
        {
            *used = std::time::Instant::now();
            return Ok(c.clone());
        }
        let c = shoal_proto::client::connect_store(address, self.token.as_deref(), Duration::from_secs(5)).await.map_err(|e| match e {
            shoal_proto::client::ConnectError::Unreachable { source, .. } => format!("its object store does not answer ({source})"),
            e => e.to_string(),
        })?;
        let mut m = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_PEERS {
            m.clear();
        }
        m.insert(address.to_string(), (c.clone(), std::time::Instant::now()));
        Ok(c)
    }

    /// Forgets the channel to `address` (it failed: the next pull dials anew).
    fn forget(&self, address: &str) {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).remove(address);
    }

    fn dialer(&self, address: &str) -> Result<shoal_proto::bulk::BulkDialer, String> {
        let mut m = self.dialers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = m.get(address) {
            return Ok(d.clone());
        }
        let d = shoal_proto::bulk::BulkDialer::new(address, self.token.as_deref()).map_err(|e| e.to_string())?;
        if m.len() >= MAX_PEERS {
            m.clear();
        }
        m.insert(address.to_string(), d.clone());
        Ok(d)
    }

    /// Streams object `id` from the holder at `address` straight into its
    /// claimed space in `store` (at arena `offset`), as parallel ranges,
    /// each on a bulk stream of its own.
    async fn pull_bulk(&self, store: &Arc<Store>, address: &str, id: u64, size: u64, offset: u64) -> Result<(), String> {
        let dialer = self.dialer(address)?;
        if offset.checked_add(size).is_none_or(|end| end > store.arena().len()) {
            return Err(format!("object {} at {offset}+{size} is outside this store", shoal_domain::ObjectId(id)));
        }
        // SAFETY: the range is this object's claimed, unsealed space: only
        // this pull writes it, and nobody reads it before it is sealed.
        let dst = unsafe { std::slice::from_raw_parts_mut(store.arena().ptr(offset, size), size as usize) };
        let mut parts = Vec::new();
        let mut rest = dst;
        for (at, len) in ranges(size) {
            let (part, tail) = rest.split_at_mut((len as usize).min(rest.len()));
            rest = tail;
            let dialer = dialer.clone();
            parts.push(async move { dialer.read_range(id, size, at, part).await });
        }
        for r in futures::future::join_all(parts).await {
            r.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The holder's store mapped here, if it is on this machine and lets
    /// this process open its memory file.
    fn arena(&self, r: &PinReply) -> Option<Arc<shoal_store::Arena>> {
        if self.host_key.is_empty() || r.host_key != self.host_key || !r.file.is_empty() || r.store_ino == 0 {
            return None;
        }
        let key = (r.pid, r.store_ino);
        let mut m = self.arenas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = m.get(&key) {
            return a.clone();
        }
        if m.len() >= MAX_PEERS {
            m.clear();
        }
        let a = shoal_store::Arena::open_peer(r.pid, r.store_fd, r.store_ino).map(Arc::new);
        if a.is_none() {
            tracing::debug!(pid = r.pid, "a peer on this machine whose memory file cannot be opened here: pulling over the network");
        }
        m.insert(key, a.clone());
        a
    }

    /// Copies object `id` from a same-machine holder's memory into
    /// `store` (already claimed): pinned at the holder for the copy, which
    /// runs on a few threads. `Ok(false)`: not mapped, pull it instead.
    async fn copy_mapped(&self, store: &Arc<Store>, address: &str, client: &shoal_proto::client::StoreClient, id: u64, size: u64) -> Result<bool, String> {
        if self.host_key.is_empty() || self.elsewhere.lock().unwrap_or_else(|e| e.into_inner()).contains(address) {
            return Ok(false);
        }
        let pinned = pin(client.clone(), id).await.map_err(|e| e.message().to_string())?;
        if pinned.reply.file.is_empty() && pinned.reply.host_key != self.host_key {
            let mut far = self.elsewhere.lock().unwrap_or_else(|e| e.into_inner());
            if far.len() >= MAX_PEERS {
                far.clear();
            }
            far.insert(address.to_string());
            return Ok(false);
        }
        let Some(arena) = self.arena(&pinned.reply) else { return Ok(false) };
        let (offset, len) = (pinned.reply.offset, pinned.reply.len);
        if len != size || offset.checked_add(len).is_none_or(|end| end > arena.len()) {
            return Err(format!("the holder pinned {len} bytes at {offset}, not the object's {size} bytes in its {} byte store", arena.len()));
        }
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            // SAFETY: the holder keeps the sealed object pinned (so neither
            // freed nor rewritten) while `pinned` lives, to the end of this
            // closure; and the mapping outlives the holder process itself.
            let src = unsafe { arena.slice(offset, len) };
            let r = copy_parallel(&store, id, src);
            drop(pinned);
            r
        })
        .await
        .map_err(|e| e.to_string())??;
        Ok(true)
    }
}

/// Copies `src` into unsealed object `id` of `store`, large ones on
/// several threads (one memcpy stream does not fill the memory bus).
fn copy_parallel(store: &Store, id: u64, src: &[u8]) -> Result<(), String> {
    const PER_THREAD: usize = 16 << 20;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4).min(src.len().div_ceil(PER_THREAD).max(1));
    if threads <= 1 {
        return store.write_at(id, 0, src).map_err(|e| e.to_string());
    }
    let step = src.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = src.chunks(step).enumerate().map(|(i, part)| s.spawn(move || store.write_at(id, (i * step) as u64, part))).collect();
        parts.into_iter().try_for_each(|h| h.join().map_err(|_| "a copy thread panicked".to_string())?.map_err(|e| e.to_string()))
    })
}

/// Why an object could not be brought here.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Every holder was tried and none could send it.
    #[error("no holder could send object {id} ({})", if errors.is_empty() { "none known".to_string() } else { errors.join("; ") })]
    NoHolder {
        /// The object.
        id: shoal_domain::ObjectId,
        /// Each holder's error, as `address: why`.
        errors: Vec<String>,
    },
    /// The local store could not take it.
    #[error("the local object store cannot take object {id}: {source}")]
    Store {
        /// The object.
        id: shoal_domain::ObjectId,
        /// Why.
        source: StoreError,
    },
    /// The copy could not be set up (a runtime failure).
    #[error("object {id}: {message}")]
    Local {
        /// The object.
        id: shoal_domain::ObjectId,
        /// What went wrong.
        message: String,
    },
}

fn no_holder(id: u64, errors: Vec<String>) -> TransferError {
    TransferError::NoHolder { id: shoal_domain::ObjectId(id), errors }
}

/// Brings object `id` into the local `store` from the first holder that
/// answers: copied from its memory when it is on this machine, streamed
/// otherwise. The copy is sealed on success and dropped on failure.
pub async fn pull_into(store: &Arc<Store>, peers: &Peers, id: u64, size: u64, holders: &[String]) -> Result<PullPath, TransferError> {
    let oid = shoal_domain::ObjectId(id);
    let mut errors = Vec::new();
    // Holders on this machine (or not known to be elsewhere) first: a
    // mapped copy beats a stream. Otherwise the head's order stands (it
    // spreads readers over the copies).
    let mut holders: Vec<&String> = holders.iter().collect();
    if !peers.host_key.is_empty() {
        let far = peers.elsewhere.lock().unwrap_or_else(|e| e.into_inner());
        holders.sort_by_key(|h| far.contains(h.as_str()));
    }
    for h in holders {
        let Some(offset) = claim(store, id, size).await? else {
            return Ok(PullPath::AlreadyHere);
        };
        let attempt = async {
            let client = peers.client(h).await?;
            if peers.copy_mapped(store, h, &client, id, size).await? {
                return Ok(PullPath::SharedMemory);
            }
            if size >= BULK_FROM {
                return peers.pull_bulk(store, h, id, size, offset).await.map(|()| PullPath::Network);
            }
            let sink = |off: u64, data: &[u8]| store.write_at(id, off, data).map_err(|e| e.to_string());
            pull_from(&client, id, size, &sink).await.map(|()| PullPath::Network)
        };
        match attempt.await {
            Ok(path) => {
                store.seal(id).map_err(|source| TransferError::Store { id: oid, source })?;
                if size >= LOGGED_PULL_BYTES {
                    tracing::info!(object = %oid, size, from = %h, path = path.label(), "pulled object");
                } else {
                    tracing::debug!(object = %oid, size, from = %h, path = path.label(), "pulled object");
                }
                return Ok(path);
            }
            Err(e) => {
                store.abort(id);
                peers.forget(h);
                tracing::warn!(object = %shoal_domain::ObjectId(id), holder = %h, error = %e, "pull failed; trying the next holder");
                errors.push(format!("{h}: {e}"));
            }
        }
    }
    Err(no_holder(id, errors))
}

/// Makes room for a pulled copy of `id`: its offset in the arena. `None`
/// when no pull is needed: a sealed copy is here already, or one being
/// written here (a task rebuilding it on this node, another pull, a
/// driver's push) was sealed while we waited for it.
async fn claim(store: &Arc<Store>, id: u64, size: u64) -> Result<Option<u64>, TransferError> {
    let oid = shoal_domain::ObjectId(id);
    let s = store.clone();
    match tokio::task::spawn_blocking(move || s.claim(id, size, 0, Duration::from_secs(60))).await {
        Ok(Ok(Claim::Write(offset))) => Ok(Some(offset)),
        Ok(Ok(Claim::Sealed(_))) => Ok(None),
        Ok(Err(source)) => Err(TransferError::Store { id: oid, source }),
        Err(e) => Err(TransferError::Local { id: oid, message: e.to_string() }),
    }
}

/// Pulls object `id` into this process's memory (a driver not on a
/// worker node).
pub async fn fetch(token: Option<&str>, id: u64, size: u64, holders: &[String]) -> Result<Bytes, TransferError> {
    let mut errors = Vec::new();
    // Laid out as in a store (see `payload_skew`), so a Buffer's bytes are
    // aligned for typed views here too.
    let align = shoal_store::alloc::ALIGN as usize;
    let skew = shoal_store::alloc::payload_skew(size) as usize;
    let v = vec![0u8; size as usize + align];
    let start = (skew + align - v.as_ptr() as usize % align) % align;
    let buf = std::sync::Mutex::new(v);
    for h in holders {
        let sink = |off: u64, data: &[u8]| {
            let mut b = buf.lock().map_err(|_| "poisoned".to_string())?;
            let end = off as usize + data.len();
            if end > size as usize {
                return Err(format!("a chunk ends at {end}, past the object's {size} bytes"));
            }
            let dst = b.get_mut(start + off as usize..start + end).ok_or_else(|| format!("a chunk at {off} does not fit the buffer"))?;
            dst.copy_from_slice(data);
            Ok(())
        };
        let pulled = match shoal_proto::client::connect_store(h, token, Duration::from_secs(5)).await {
            Ok(client) => pull_from(&client, id, size, &sink).await,
            Err(e) => Err(e.to_string()),
        };
        match pulled {
            Ok(()) => {
                let v = buf.into_inner().map_err(|_| TransferError::Local { id: shoal_domain::ObjectId(id), message: "a writer panicked".into() })?;
                return Ok(Bytes::from(v).slice(start..start + size as usize));
            }
            Err(e) => errors.push(format!("{h}: {e}")),
        }
    }
    Err(no_holder(id, errors))
}

/// A range reserved in a same-machine worker's store: fill it through
/// the mapping, then [`seal`](Reservation::seal). Dropping it unsealed gives
/// the space back.
pub struct Reservation {
    /// Where to write in the arena.
    pub offset: u64,
    steps: tokio::sync::mpsc::Sender<WriteStep>,
    replies: Streaming<WriteReply>,
    _client: shoal_proto::client::StoreClient,
}

impl Reservation {
    /// Makes the object complete and visible.
    pub async fn seal(mut self) -> Result<(), Status> {
        self.steps.send(WriteStep { seal: true, ..Default::default() }).await.map_err(|_| Status::unavailable("the worker went away"))?;
        match self.replies.message().await? {
            Some(r) if r.sealed => Ok(()),
            _ => Err(Status::unavailable("the worker did not confirm the seal")),
        }
    }
}

/// Reserves `size` bytes for object `id` in the store of the worker that
/// `client` talks to (on this machine).
pub async fn reserve(mut client: shoal_proto::client::StoreClient, id: u64, size: u64) -> Result<Reservation, Status> {
    let (steps, rx) = tokio::sync::mpsc::channel(2);
    let _ = steps.send(WriteStep { id, size, seal: false }).await;
    let mut replies = client.write(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let first = replies.message().await?.ok_or_else(|| Status::unavailable("the worker closed the write"))?;
    Ok(Reservation { offset: first.offset, steps, replies, _client: client })
}

/// A sealed object pinned in a same-machine worker's store, while held.
pub struct PinnedObject {
    /// Where it is: in the arena at `offset` (or in `file`, spilled).
    pub reply: PinReply,
    _call: Streaming<PinReply>,
    _client: shoal_proto::client::StoreClient,
}

/// Pins object `id` in the store of the worker that `client` talks to.
pub async fn pin(mut client: shoal_proto::client::StoreClient, id: u64) -> Result<PinnedObject, Status> {
    let mut call = client.pin(PinRequest { id }).await?.into_inner();
    let reply = call.message().await?.ok_or_else(|| Status::unavailable("the worker closed the pin"))?;
    Ok(PinnedObject { reply, _call: call, _client: client })
}

/// Writes `data` as new object `id` into the store of the worker at
/// `address` (a remote driver's put).
pub async fn push(address: &str, token: Option<&str>, id: u64, data: Bytes) -> Result<(), Status> {
    let mut client = shoal_proto::client::connect_store(address, token, Duration::from_secs(5)).await.map_err(|e| Status::unavailable(e.to_string()))?;
    let size = data.len() as u64;
    let chunk = OBJECT_CHUNK_BYTES;
    let mut chunks: Vec<ObjectChunk> =
        (0..data.len()).step_by(chunk).map(|o| ObjectChunk { id, size, offset: o as u64, data: data.slice(o..(o + chunk).min(data.len())) }).collect();
    if chunks.is_empty() {
        chunks.push(ObjectChunk { id, size, offset: 0, data: Bytes::new() });
    }
    client.push(futures::stream::iter(chunks)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pull_of_an_object_being_written_here_waits_for_it_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(1 << 20, 0, dir.path().to_path_buf()).unwrap();
        // A task rebuilding object 9 on this node is writing it.
        store.create(9, 100, 5).unwrap();
        let writer = store.clone();
        let sealer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            writer.seal(9).unwrap();
        });
        assert!(claim(&store, 9, 100).await.unwrap().is_none(), "sealed meanwhile: nothing to pull");
        sealer.await.unwrap();
        // One being written that is then dropped: the pull writes it itself.
        store.create(10, 100, 5).unwrap();
        let writer = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            writer.abort(10);
        });
        assert!(claim(&store, 10, 100).await.unwrap().is_some(), "dropped meanwhile: ours to write");
        assert!(!store.contains(10), "and not sealed until the pull seals it");
        // A copy freed while a reader had it pinned is the object: taken
        // back at once, not waited out.
        store.create(11, 100, 5).unwrap();
        store.seal(11).unwrap();
        store.pin(11).unwrap();
        store.free(11);
        let t = std::time::Instant::now();
        assert!(claim(&store, 11, 100).await.unwrap().is_none(), "revived: nothing to pull");
        assert!(store.contains(11) && t.elapsed() < Duration::from_secs(5));
    }

    /// An empty 64 MiB store (and the directory its spill files go to).
    fn store() -> (Arc<Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (Store::open(64 << 20, 0, dir.path().join("spill")).unwrap(), dir)
    }

    /// A holder's store with object 7 (`size` bytes of a pattern), served
    /// on loopback; returns it, its server and its address.
    async fn holder(size: u64) -> (Arc<Store>, tokio::task::JoinHandle<()>, String, Vec<u8>, tempfile::TempDir) {
        let (store, dir) = store();
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        store.create(7, size, 0).unwrap();
        store.write_at(7, 0, &data).unwrap();
        store.seal(7).unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = l.local_addr().unwrap().to_string();
        let server = serve(store.clone(), l, None, Default::default(), Default::default()).unwrap();
        (store, server, address, data, dir)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_same_machine_pull_copies_from_the_holders_memory_and_survives_the_holder() {
        let size = 20 << 20;
        let (a, server, address, data, _d) = holder(size).await;
        let (b, _bd) = store();
        let peers = Peers::new(None, true);
        assert_eq!(pull_into(&b, &peers, 7, size, std::slice::from_ref(&address)).await.unwrap(), PullPath::SharedMemory);
        assert_eq!(&b.read(7).unwrap()[..], &data[..]);
        // The holder learns the copy is done when the pin's stream closes,
        // which reaches it a moment after the pull returns.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while a.stats().pinned_bytes != 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(a.stats().pinned_bytes, 0, "the holder's pin ends with the copy");
        assert_eq!(pull_into(&b, &peers, 7, size, std::slice::from_ref(&address)).await.unwrap(), PullPath::AlreadyHere);

        // With the object pinned and the holder's store mapped here, the
        // holder goes away entirely (its server, its store, its memory
        // file): the mapping still reads the object whole.
        let client = peers.client(&address).await.unwrap();
        let pinned = pin(client, 7).await.unwrap();
        let arena = peers.arena(&pinned.reply).expect("mapped: same machine");
        server.abort();
        let _ = server.await;
        drop(a);
        // SAFETY: sealed and pinned; nobody writes it.
        let seen = unsafe { arena.slice(pinned.reply.offset, pinned.reply.len) };
        assert_eq!(seen, &data[..]);
        drop(pinned);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_mapping_the_pull_streams_and_a_gone_holder_is_skipped_or_a_typed_error() {
        let size = 40 << 20; // past PARALLEL_FROM: four ranges
        let (_a, server, address, data, _d) = holder(size).await;
        let (b, _bd) = store();
        let peers = Peers::new(None, false);
        assert_eq!(pull_into(&b, &peers, 7, size, std::slice::from_ref(&address)).await.unwrap(), PullPath::Network);
        assert_eq!(&b.read(7).unwrap()[..], &data[..]);
        // A holder that is gone (nothing listens there any more): the next
        // one is tried; with none left, a typed error and nothing kept.
        let gone = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().to_string()
        };
        let (c, _cd) = store();
        let e = pull_into(&c, &peers, 7, size, std::slice::from_ref(&gone)).await.unwrap_err();
        assert!(matches!(e, TransferError::NoHolder { .. }), "{e}");
        assert!(!c.contains(7) && c.stats().used == 0, "a failed pull leaves nothing behind");
        assert_eq!(pull_into(&c, &peers, 7, size, &[gone, address.clone()]).await.unwrap(), PullPath::Network);
        assert_eq!(&c.read(7).unwrap()[..], &data[..]);
        // Mapping on, but the holder says it is on another machine: the
        // pull streams, and later pulls from it skip the pin.
        let far = Peers { host_key: "another-kernel:1".into(), ..Peers::new(None, true) };
        let (d, _dd) = store();
        assert_eq!(pull_into(&d, &far, 7, size, std::slice::from_ref(&address)).await.unwrap(), PullPath::Network);
        assert!(far.elsewhere.lock().unwrap().contains(&address), "remembered as elsewhere");
        assert_eq!(&d.read(7).unwrap()[..], &data[..]);
        server.abort();
    }

    /// A reader sent to a copy still arriving (the head's broadcast tree)
    /// waits for it there and gets it whole, by every path: mapped, bulk
    /// streams, and gRPC chunks for a small object. One asked for an
    /// object it will never have says "not found" soon, and the reader
    /// moves on to its next holder.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copy_still_arriving_serves_its_readers_once_sealed() {
        for (size, mapped) in [(20u64 << 20, true), (20 << 20, false), (64 << 10, false)] {
            let (relay, _rd) = store();
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = l.local_addr().unwrap().to_string();
            let server = serve(relay.clone(), l, None, Default::default(), Default::default()).unwrap();
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
            // The relay's own pull is under way: reserved, not sealed.
            relay.create(7, size, 0).unwrap();
            let (r, d) = (relay.clone(), data.clone());
            let arriving = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(150)).await;
                r.write_at(7, 0, &d).unwrap();
                r.seal(7).unwrap();
            });
            let (b, _bd) = store();
            let peers = Peers::new(None, mapped);
            let path = pull_into(&b, &peers, 7, size, std::slice::from_ref(&address)).await.unwrap();
            assert_eq!(path, if mapped { PullPath::SharedMemory } else { PullPath::Network });
            assert_eq!(&b.read(7).unwrap()[..], &data[..], "{size} bytes, mapped {mapped}");
            arriving.await.unwrap();
            // Never coming: not found within the patience, next holder.
            let (c, _cd) = store();
            let t = std::time::Instant::now();
            let e = pull_into(&c, &peers, 8, size, std::slice::from_ref(&address)).await.unwrap_err();
            assert!(matches!(e, TransferError::NoHolder { .. }), "{e}");
            assert!(t.elapsed() < ABSENT_PATIENCE * 4, "{:?}", t.elapsed());
            server.abort();
        }
    }

    #[test]
    fn ranges_cover_the_object_once_in_chunk_multiples() {
        assert_eq!(ranges(10), vec![(0, 10)]);
        assert_eq!(ranges(0), vec![]);
        let r = ranges(256 << 20);
        assert_eq!(r.len(), 4);
        assert_eq!(r.iter().map(|(_, l)| l).sum::<u64>(), 256 << 20);
        let odd = ranges((100 << 20) + 3);
        let mut next = 0;
        for (o, l) in &odd {
            assert_eq!(*o, next);
            assert_eq!(o % OBJECT_CHUNK_BYTES as u64, 0);
            next = o + l;
        }
        assert_eq!(next, (100 << 20) + 3);
    }
}
