//! The cluster as a node registers and as `shoal status` shows it.

use crate::ids::{NodeId, ObjectId};
use crate::resources::ResourceSet;
use crate::store::StoreUsage;

/// What a worker reported when registering.
#[derive(Clone, Debug, Default)]
pub struct NodeRegistration {
    /// Id to re-register under, if any.
    pub node_id: Option<NodeId>,
    /// Resources offered.
    pub resources: ResourceSet,
    /// Address the head sees the worker at.
    pub address: String,
    /// Host name.
    pub hostname: String,
    /// Worker daemon pid.
    pub pid: u32,
    /// Memory of the machine.
    pub memory_bytes: u64,
    /// Object store capacity.
    pub object_store_bytes: u64,
    /// Where peers reach its object store (`host:port`; empty: none).
    pub object_address: String,
    /// Objects sealed in its store when it registered.
    pub objects: Vec<ObjectId>,
    /// The store's memory file: descriptor number in the worker process
    /// and inode, for drivers on the same machine to map it.
    pub store_file: (u32, u64),
}

/// A node as shown by `shoal status`.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSnapshot {
    /// Node id.
    pub id: NodeId,
    /// Address seen by the head.
    pub address: String,
    /// Alive (heartbeating) or dead.
    pub alive: bool,
    /// Resources offered.
    pub total: ResourceSet,
    /// Resources not held by dispatched tasks.
    pub available: ResourceSet,
    /// Seconds since the last heartbeat.
    pub last_heartbeat_age_s: f64,
    /// Host name.
    pub hostname: String,
    /// Worker pid.
    pub pid: u32,
    /// Tasks dispatched to it and not finished.
    pub tasks_running: u64,
    /// Machine memory.
    pub memory_bytes: u64,
    /// Object store capacity.
    pub object_store_bytes: u64,
    /// Taking no new tasks (drained).
    pub draining: bool,
    /// Where peers reach its object store.
    pub object_address: String,
    /// Object store usage, from its last heartbeat.
    pub store: StoreUsage,
    /// The store's memory file (descriptor number in the worker, inode).
    pub store_file: (u32, u64),
}

/// Task counts as shown by `shoal status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskCounts {
    /// Waiting for inputs or for a node.
    pub queued: u64,
    /// Dispatched to a worker.
    pub running: u64,
    /// Finished with a value.
    pub finished: u64,
    /// Finished with a failure.
    pub failed: u64,
}

/// The whole cluster as shown by `shoal status`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSnapshot {
    /// Every node ever registered.
    pub nodes: Vec<NodeSnapshot>,
    /// Task counts.
    pub tasks: TaskCounts,
    /// Connected drivers.
    pub jobs: u32,
}
