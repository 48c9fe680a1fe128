//! Large values on the driver side: where a result or a put lives
//! ([`Val`]), reading it (zero-copy from this node's store on an embedded
//! cluster, pulled from a holder otherwise), and writing puts into a
//! node's store.

use crate::driver::Driver;
use crate::error::{Error, TaskError};
use bytes::Bytes;
use shoal_proto::pb;
use shoal_store::{Store, StoreError};
use std::sync::Arc;

/// A finished value as a driver holds it.
#[derive(Clone, Debug)]
pub(crate) enum Val {
    /// Small: the bytes.
    Inline(Bytes),
    /// Large: in the object store of the nodes at `holders` (empty: this
    /// process's own store).
    Stored { id: u64, size: u64, holders: Vec<String> },
}

impl Val {
    pub(crate) fn from_pb(s: pb::StoredObject) -> Val {
        Val::Stored { id: s.id, size: s.size, holders: s.holders }
    }
}

/// The store of the worker in this process (embedded cluster).
pub(crate) struct LocalStore {
    pub(crate) store: Arc<Store>,
    pub(crate) node: String,
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
pub(crate) fn locate(driver: Option<&Arc<Driver>>, val: Val) -> Result<Source, TaskError> {
    let (id, size, holders) = match val {
        Val::Inline(b) => return Ok(Source::Here(b)),
        Val::Stored { id, size, holders } => (id, size, holders),
    };
    let Some(driver) = driver else { return Err(lost(id, "it belongs to a closed session")) };
    if let Some(local) = &driver.local_store
        && local.store.contains(id)
    {
        return local.store.read(id).map(Source::Here).map_err(|e| lost(id, e));
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

/// Writes a value of `size` bytes (produced by `fill`) into a node's
/// store as object `id` and tells the head. Returns where it lives.
pub(crate) fn put_large(driver: &Arc<Driver>, id: u64, size: u64, fill: impl FnOnce(&mut [u8]) -> Result<(), String>) -> Result<Val, Error> {
    let serialization = |message: String| Error::Task(TaskError::Serialization { message });
    let (node, val) = match &driver.local_store {
        Some(local) => {
            local.store.put_with(id, size, fill).map_err(full)?.map_err(serialization)?;
            (local.node.clone(), Val::Stored { id, size, holders: Vec::new() })
        }
        None => {
            let mut buf = vec![0u8; size as usize];
            fill(&mut buf).map_err(serialization)?;
            let (node, address) = store_target(driver)?;
            let token = driver.token.clone();
            let addr = address.clone();
            crate::runtime::block_on(async move { shoal_worker::transfer::push(&addr, token.as_deref(), id, Bytes::from(buf)).await }).map_err(|s| {
                if s.code() == tonic::Code::ResourceExhausted {
                    Error::Task(TaskError::ObjectStoreFull { message: s.message().to_string() })
                } else {
                    Error::Connect { address: address.clone(), message: format!("writing to the object store: {}", s.message()) }
                }
            })
            .inspect_err(|_| {
                // Ask again next time: the node may have gone.
                *driver.store_target.lock().expect("target lock") = None;
            })?;
            (node, Val::Stored { id, size, holders: vec![address] })
        }
    };
    driver.send(crate::driver::Out::Put(pb::PutObject {
        id,
        value: Bytes::new(),
        stored: Some(pb::StoredObject { id, size, holders: Vec::new() }),
        node,
    }));
    Ok(val)
}

/// The worker a driver off the cluster's nodes puts through: one on this
/// host if there is one, else the first alive node with a store.
fn store_target(driver: &Arc<Driver>) -> Result<(String, String), Error> {
    if let Some(t) = driver.store_target.lock().expect("target lock").clone() {
        return Ok(t);
    }
    let (address, token) = (driver.address.clone(), driver.token.clone());
    let st = crate::runtime::block_on(async move { crate::status::fetch(&address, token.as_deref()).await })?;
    let host = shoal_worker::config::hostname();
    let mut nodes: Vec<_> = st.alive_nodes().filter(|n| !n.object_address.is_empty() && !n.draining).collect();
    nodes.sort_by_key(|n| n.hostname != host);
    let n = nodes.first().ok_or_else(|| Error::Config("no alive node with an object store to put large values into".into()))?;
    let t = (n.id.clone(), n.object_address.clone());
    *driver.store_target.lock().expect("target lock") = Some(t.clone());
    Ok(t)
}
