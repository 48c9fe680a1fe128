//! Large values on the driver side: where a result or a put lives
//! ([`Val`]), reading it and writing puts. A driver on a machine with a
//! worker uses that worker's shared memory directly: in process on an
//! embedded cluster, or by mapping the worker daemon's memory file (space
//! reserved, sealed and pinned through its object store service) when the
//! driver runs beside a CLI-started worker. Otherwise values are streamed
//! to and from a worker over gRPC.

use crate::driver::Driver;
use crate::error::{Error, TaskError};
use crate::values::Val;
use bytes::Bytes;
use shoal_proto::pb;
use shoal_store::{Arena, Store, StoreError};
use std::sync::Arc;

/// This program's connection to a cluster: its session with the head,
/// and its way to the cluster's object stores (found once, kept here so
/// the session layer below knows nothing of stores). Derefs to the
/// session.
pub(crate) struct Cluster {
    driver: Arc<Driver>,
    /// The store this driver reads and writes directly: the embedded
    /// worker's (set at connect), else a same-machine worker's (found on
    /// first use), else none.
    local_store: std::sync::OnceLock<Option<Arc<LocalStore>>>,
    /// `(node id, object store address)` large puts go to, when there is
    /// no local store.
    store_target: std::sync::Mutex<Option<(String, String)>>,
    /// Borrowed refs alive in this process, by id (see [`crate::refs`]).
    pub(crate) borrows: dashmap::DashMap<u64, std::sync::Weak<crate::object_ref::RefInner>>,
    /// Direct connections to actors on this machine.
    pub(crate) routes: crate::direct::Routes,
}

impl Cluster {
    /// The connection over `driver`; `local` is the embedded worker's
    /// store, if this process runs one.
    pub(crate) fn new(driver: Arc<Driver>, local: Option<LocalStore>) -> Arc<Cluster> {
        let local_store = match local {
            Some(l) => std::sync::OnceLock::from(Some(Arc::new(l))),
            None => std::sync::OnceLock::new(),
        };
        Arc::new(Cluster { driver, local_store, store_target: std::sync::Mutex::new(None), borrows: dashmap::DashMap::new(), routes: Default::default() })
    }
}

impl std::ops::Deref for Cluster {
    type Target = Driver;
    fn deref(&self) -> &Driver {
        &self.driver
    }
}

/// A store this process reads and writes directly. (One per driver, held
/// in an `Arc`: the size difference of the variants does not matter.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum LocalStore {
    /// The worker in this process (embedded cluster).
    InProcess { store: Arc<Store>, node: String },
    /// A worker daemon on this machine: its arena mapped here.
    Mapped { arena: Arc<Arena>, node: String, address: String, client: shoal_proto::client::StoreClient },
}

/// The store this driver can use directly, found once: the embedded
/// worker's, or that of a worker on this machine whose memory file this
/// process may open.
pub(crate) fn local(driver: &Arc<Cluster>) -> Option<Arc<LocalStore>> {
    driver
        .local_store
        .get_or_init(|| {
            let (address, token) = (driver.address.clone(), driver.token.clone());
            let st = crate::runtime::block_on(async move { crate::status::fetch(&address, token.as_deref()).await }).ok()?;
            let host = shoal_worker::config::hostname();
            st.alive_nodes().filter(|n| n.hostname == host && n.store_fd != 0 && !n.object_address.is_empty()).find_map(|n| {
                let arena = Arena::open_peer(n.pid, n.store_fd, n.store_ino)?;
                let (addr, token) = (n.object_address.clone(), driver.token.clone());
                let client =
                    crate::runtime::block_on(
                        async move { shoal_proto::client::connect_store(&addr, token.as_deref(), std::time::Duration::from_secs(5)).await },
                    )
                    .ok()?;
                tracing::debug!(node = %n.id, "using the object store of this machine's worker directly");
                Some(Arc::new(LocalStore::Mapped { arena: Arc::new(arena), node: format!("{:#}", n.id), address: n.object_address.clone(), client }))
            })
        })
        .clone()
}

fn read_mapped(arena: &Arc<Arena>, client: &shoal_proto::client::StoreClient, id: u64) -> Option<Bytes> {
    let client = client.clone();
    let p = crate::runtime::block_on(async move { shoal_worker::transfer::pin(client, id).await }).ok()?;
    let (offset, len) = (p.reply.offset, p.reply.len);
    if !p.reply.file.is_empty() {
        let path = std::path::PathBuf::from(&p.reply.file);
        return shoal_store::spilled_bytes(&path, len, p).ok();
    }
    if offset.checked_add(len).is_none_or(|end| end > arena.len()) {
        return None;
    }
    // SAFETY: the worker pinned this sealed object for as long as the call
    // `p` lives, and the bytes own it.
    Some(unsafe { shoal_store::arena_bytes(arena.clone(), offset, len, p) })
}

fn full(e: StoreError) -> TaskError {
    TaskError::ObjectStoreFull { message: e.to_string() }
}

/// Where the bytes of a value are, as seen from this process.
pub(crate) enum Source {
    /// Here already (inline, or in this process's store: no copy).
    Here(Bytes),
    /// In another node's store: pull it with [`fetch`].
    Remote { id: u64, size: u64, holders: Vec<String>, token: Option<String> },
}

fn lost(id: u64, why: impl std::fmt::Display) -> TaskError {
    TaskError::ObjectLost { message: format!("object {}: {why}", crate::ObjectId(id)) }
}

/// Where `val`'s bytes are. A stored value in this process's store is not
/// copied: the `Bytes` borrows the shared memory and pins it.
pub(crate) fn locate(driver: Option<&Arc<Cluster>>, val: Val) -> Result<Source, TaskError> {
    let (id, size, holders) = match val {
        Val::Inline(b) => return Ok(Source::Here(b)),
        Val::Stored { id, size, holders } => (id, size, holders),
    };
    let Some(driver) = driver else { return Err(lost(id, "it belongs to a closed session")) };
    match local(driver).as_deref() {
        Some(LocalStore::InProcess { store, .. }) if store.contains(id) => {
            return store.read(id).map(Source::Here).map_err(|e| lost(id, e));
        }
        Some(LocalStore::Mapped { arena, address, client, .. }) if holders.contains(address) => {
            if let Some(b) = read_mapped(arena, client, id) {
                return Ok(Source::Here(b));
            }
        }
        _ => {}
    }
    if holders.is_empty() {
        return Err(lost(id, "no node holds a copy any more"));
    }
    Ok(Source::Remote { id, size, holders, token: driver.token.clone() })
}

/// Pulls a remote value into this process (chunked, parallel ranges).
pub(crate) async fn fetch(id: u64, size: u64, holders: Vec<String>, token: Option<String>) -> Result<Bytes, TaskError> {
    shoal_worker::transfer::fetch(token.as_deref(), id, size, &holders).await.map_err(|e| lost(id, e))
}

/// How long a driver keeps asking while the head keeps naming the same
/// holders and none can send the object (the head has not yet noticed
/// they are gone: it does within its heartbeat timeout, then rebuilds).
/// A head that does not answer is rebuilding the object: that wait has no
/// limit, as waiting for any task has none.
const UNREACHABLE_HOLDERS_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads the bytes of the finished value in `slot` (object `id`). A
/// stored value whose holders cannot send it (a holder died) is not an
/// error yet: the driver asks the head where it is now (`locate`) and
/// waits for its answer, which comes at once (new holders, or why it is
/// gone for good) or once the object is rebuilt from its lineage. Fails
/// with `ObjectLost` only when the head says so, or when it keeps naming
/// holders that cannot send it for [`UNREACHABLE_HOLDERS_WINDOW`].
pub(crate) async fn read(driver: Option<Arc<Cluster>>, slot: Arc<crate::slot::Slot>, id: u64) -> Result<Bytes, TaskError> {
    use std::time::{Duration, Instant};
    // The answer (version, holders) whose holders last failed, and since
    // when the head has kept confirming those same holders.
    let mut failed: Option<(u32, Vec<String>)> = None;
    let mut confirmed_since: Option<Instant> = None;
    loop {
        let Some((answer, version)) = slot.answer() else {
            return Err(lost(id, "read before its value arrived"));
        };
        let answer = answer?;
        let named = match &answer {
            Val::Stored { holders, .. } => holders.clone(),
            Val::Inline(_) => Vec::new(),
        };
        let why = match locate(driver.as_ref(), answer) {
            Ok(Source::Here(b)) => return Ok(b),
            Ok(Source::Remote { id, size, holders, token }) => match fetch(id, size, holders, token).await {
                Ok(b) => {
                    slot.cache(b.clone());
                    return Ok(b);
                }
                Err(e) => e,
            },
            Err(e) => e,
        };
        let Some(d) = driver.as_ref() else { return Err(why) };
        match &failed {
            // A newer answer naming the same holders: the head still
            // believes in them.
            Some((v, h)) if *h == named && *v != version => {
                if confirmed_since.get_or_insert_with(Instant::now).elapsed() > UNREACHABLE_HOLDERS_WINDOW {
                    return Err(why);
                }
            }
            // No newer answer: the head is rebuilding it (or restarting).
            Some((_, h)) if *h == named => {}
            // Holders named anew (a rebuilt or moved copy), or the first failure.
            _ => confirmed_since = None,
        }
        failed = Some((version, named));
        tracing::debug!(object = %crate::ObjectId(id), error = %why, "cannot read a stored value; asking the head where it is now");
        d.locate(id);
        // Wait for a newer answer; ask again now and then (an object being
        // rebuilt is answered only when it is made again).
        let asked = Instant::now();
        let mut pause = Duration::from_millis(5);
        while slot.answer().is_some_and(|(_, v)| v == version) {
            if d.closed_reason().is_some() {
                return Err(why);
            }
            if asked.elapsed() > Duration::from_secs(2) {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}

/// Writes a value of `size` bytes (produced by `fill`) into a node's
/// store as object `id`. Returns where it lives and the message that
/// tells the head (with the refs the value holds, `contains`), for the
/// caller to send (as a put, or as a generator's item).
pub(crate) fn put_large(
    driver: &Arc<Cluster>,
    id: u64,
    size: u64,
    contains: Vec<u64>,
    fill: impl FnOnce(&mut [u8]) -> Result<(), String>,
) -> Result<(Val, pb::PutObject), Error> {
    let serialization = |message: String| Error::Task(TaskError::Serialization { message });
    let exhausted = |s: tonic::Status, address: &str| {
        if s.code() == tonic::Code::ResourceExhausted {
            Error::Task(TaskError::ObjectStoreFull { message: s.message().to_string() })
        } else {
            Error::Connect { address: address.to_string(), message: format!("writing to the object store: {}", s.message()) }
        }
    };
    let (node, val) = match local(driver).as_deref() {
        Some(LocalStore::InProcess { store, node }) => {
            store.put_with(id, size, fill).map_err(full)?.map_err(serialization)?;
            (node.clone(), Val::Stored { id, size, holders: Vec::new() })
        }
        Some(LocalStore::Mapped { arena, node, address, client }) => {
            let client = client.clone();
            let r = crate::runtime::block_on(async move { shoal_worker::transfer::reserve(client, id, size).await }).map_err(|s| exhausted(s, address))?;
            if r.offset.checked_add(size).is_none_or(|end| end > arena.len()) {
                return Err(Error::Connect { address: address.clone(), message: "the worker reserved a range outside its store".into() });
            }
            // SAFETY: the worker reserved this range for us; nobody reads
            // it until we seal it.
            let buf = unsafe { std::slice::from_raw_parts_mut(arena.ptr(r.offset, size), size as usize) };
            fill(buf).map_err(serialization)?;
            crate::runtime::block_on(r.seal()).map_err(|s| exhausted(s, address))?;
            (node.clone(), Val::Stored { id, size, holders: vec![address.clone()] })
        }
        None => {
            let mut buf = vec![0u8; size as usize];
            fill(&mut buf).map_err(serialization)?;
            let (node, address) = store_target(driver)?;
            let token = driver.token.clone();
            let addr = address.clone();
            crate::runtime::block_on(async move { shoal_worker::transfer::push(&addr, token.as_deref(), id, Bytes::from(buf)).await })
                .map_err(|s| exhausted(s, &address))
                .inspect_err(|_| {
                    // Ask again next time: the node may have gone.
                    *driver.store_target.lock().expect("target lock") = None;
                })?;
            (node, Val::Stored { id, size, holders: vec![address] })
        }
    };
    Ok((val, pb::PutObject { id, value: Bytes::new(), stored: Some(pb::StoredObject { id, size, holders: Vec::new() }), node, contains }))
}

/// The worker a driver off the cluster's nodes puts through: one on this
/// host if there is one, else the first alive node with a store.
fn store_target(driver: &Arc<Cluster>) -> Result<(String, String), Error> {
    if let Some(t) = driver.store_target.lock().expect("target lock").clone() {
        return Ok(t);
    }
    let (address, token) = (driver.address.clone(), driver.token.clone());
    let st = crate::runtime::block_on(async move { crate::status::fetch(&address, token.as_deref()).await })?;
    let host = shoal_worker::config::hostname();
    let mut nodes: Vec<_> = st.alive_nodes().filter(|n| !n.object_address.is_empty() && !n.draining).collect();
    nodes.sort_by_key(|n| n.hostname != host);
    let n = nodes.first().ok_or_else(|| Error::Config("no alive node with an object store to put large values into".into()))?;
    let t = (format!("{:#}", n.id), n.object_address.clone());
    *driver.store_target.lock().expect("target lock") = Some(t.clone());
    Ok(t)
}
