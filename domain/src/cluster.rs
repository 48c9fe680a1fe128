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
    /// Random per worker process (0: unknown): tells a reconnect of the
    /// same worker from another process claiming its node id.
    pub instance: u64,
    /// Where its Prometheus `/metrics` is (`host:port`; empty: none).
    pub metrics_address: String,
}

/// One node, as `shoal status` and `shoal::cluster_status` show it (the
/// head builds it, the wire carries it, the SDK and the CLI read it).
/// JSON: `id` is the full UUID, `resources` and `available` are maps of
/// name to amount with `cpus` among them.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    /// Node id.
    pub id: NodeId,
    /// Address the head sees it at.
    pub address: String,
    /// Heartbeating (true) or declared dead.
    pub alive: bool,
    /// Resources offered.
    pub resources: ResourceSet,
    /// Resources not held by running tasks.
    pub available: ResourceSet,
    /// Seconds since its last heartbeat.
    pub last_heartbeat_age_s: f64,
    /// Host name.
    pub hostname: String,
    /// Worker daemon pid.
    pub pid: u32,
    /// Tasks dispatched to it and not finished.
    pub tasks_running: u64,
    /// Memory the worker may use.
    pub memory_bytes: u64,
    /// Object store capacity.
    pub object_store_bytes: u64,
    /// Alive but taking no new tasks (`shoal drain`).
    #[serde(default)]
    pub draining: bool,
    /// Where peers and remote drivers reach its object store.
    #[serde(default)]
    pub object_address: String,
    /// Object store usage, from its last heartbeat.
    #[serde(default)]
    pub store: StoreUsage,
    /// The store's memory file in the worker process (descriptor number),
    /// for drivers on the same machine.
    #[serde(default)]
    pub store_fd: u32,
    /// The store's memory file's inode.
    #[serde(default)]
    pub store_ino: u64,
    /// Where its Prometheus `/metrics` is (empty: none).
    #[serde(default)]
    pub metrics_address: String,
}

/// Task counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// The whole cluster.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClusterStatus {
    /// Every node that ever registered, alive or dead.
    pub nodes: Vec<NodeStatus>,
    /// Task counts.
    pub tasks: TaskCounts,
    /// Connected driver programs.
    pub jobs: u32,
    /// Head version.
    pub version: String,
    /// Actors, alive and dead.
    #[serde(default)]
    pub actors: Vec<crate::actor::ActorStatus>,
}

impl ClusterStatus {
    /// Nodes currently alive.
    pub fn alive_nodes(&self) -> impl Iterator<Item = &NodeStatus> {
        self.nodes.iter().filter(|n| n.alive)
    }

    /// CPUs offered by the alive nodes.
    pub fn total_cpus(&self) -> f64 {
        self.alive_nodes().map(|n| n.resources.cpus).sum()
    }
}

/// This machine's host name (what nodes register and `shoal status`
/// shows; same-host checks compare it).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}
