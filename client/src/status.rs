//! Cluster status: nodes, their resources and task counts, as `shoal
//! status` prints it and [`cluster_status`](crate::cluster_status) returns it.

use crate::error::{Result, status_to_error};
use serde::{Deserialize, Serialize};
use shoal_proto::pb;
use std::collections::BTreeMap;
use std::time::Duration;

/// The whole cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Every node that ever registered, alive or dead.
    pub nodes: Vec<NodeStatus>,
    /// Task counts.
    pub tasks: TaskCounts,
    /// Connected driver programs.
    pub jobs: u32,
    /// Head version.
    pub version: String,
}

impl ClusterStatus {
    /// Nodes currently alive.
    pub fn alive_nodes(&self) -> impl Iterator<Item = &NodeStatus> {
        self.nodes.iter().filter(|n| n.alive)
    }

    /// CPUs offered by the alive nodes.
    pub fn total_cpus(&self) -> f64 {
        self.alive_nodes().map(|n| n.resources.get("cpus").copied().unwrap_or(0.0)).sum()
    }
}

/// One node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id (UUID).
    pub id: String,
    /// Address the head sees it at.
    pub address: String,
    /// Heartbeating (true) or declared dead.
    pub alive: bool,
    /// Resources offered: `cpus` and custom ones.
    pub resources: BTreeMap<String, f64>,
    /// Resources not held by running tasks.
    pub available: BTreeMap<String, f64>,
    /// Seconds since its last heartbeat.
    pub last_heartbeat_age_s: f64,
    /// Host name.
    pub hostname: String,
    /// Worker daemon pid.
    pub pid: u32,
    /// Tasks dispatched to it and not finished.
    pub tasks_running: u64,
    /// Machine memory.
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
}

/// A node's shared-memory object store usage.
pub use shoal_domain::StoreUsage;

/// Task counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    /// Waiting for inputs or a node.
    pub queued: u64,
    /// On a worker.
    pub running: u64,
    /// Finished with a value.
    pub finished: u64,
    /// Finished with an error.
    pub failed: u64,
}

fn resources_map(r: Option<&pb::Resources>) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    if let Some(r) = r {
        m.insert("cpus".to_string(), r.num_cpus);
        for (k, v) in &r.custom {
            m.insert(k.clone(), *v);
        }
    }
    m
}

impl From<pb::ClusterStatus> for ClusterStatus {
    fn from(s: pb::ClusterStatus) -> Self {
        let t = s.tasks.unwrap_or_default();
        ClusterStatus {
            nodes: s
                .nodes
                .into_iter()
                .map(|n| NodeStatus {
                    resources: resources_map(n.total.as_ref()),
                    available: resources_map(n.available.as_ref()),
                    id: n.id,
                    address: n.address,
                    alive: n.alive,
                    last_heartbeat_age_s: n.last_heartbeat_age_s,
                    hostname: n.hostname,
                    pid: n.pid,
                    tasks_running: n.tasks_running,
                    memory_bytes: n.memory_bytes,
                    object_store_bytes: n.object_store_bytes,
                    draining: n.draining,
                    object_address: n.object_address,
                    store: n.store.map(StoreUsage::from).unwrap_or_default(),
                    store_fd: n.store_fd,
                    store_ino: n.store_ino,
                })
                .collect(),
            tasks: TaskCounts { queued: t.queued, running: t.running, finished: t.finished, failed: t.failed },
            jobs: s.jobs,
            version: s.version,
        }
    }
}

/// Asks the head at `address` for the cluster status.
pub async fn fetch(address: &str, token: Option<&str>) -> Result<ClusterStatus> {
    let mut client = crate::driver::connect_client(address, token, Duration::from_secs(5)).await?;
    let st = client.status(pb::StatusRequest {}).await.map_err(|s| status_to_error(address, s))?;
    Ok(st.into_inner().into())
}

/// Drains node `node_id` of the cluster at `address`: no new tasks go to
/// it; it finishes what it holds, then its worker exits.
pub async fn drain(address: &str, token: Option<&str>, node_id: &str) -> Result<()> {
    let mut client = crate::driver::connect_client(address, token, Duration::from_secs(5)).await?;
    client.drain(pb::DrainRequest { node_id: node_id.to_string() }).await.map_err(|s| status_to_error(address, s))?;
    Ok(())
}
