//! Worker configuration, independent of the CLI.

use shoal_proto::resources::ResourceSet;
use std::path::PathBuf;

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Head address, `host:port`.
    pub head: String,
    /// Cluster token (`None` for an `--insecure-no-token` head).
    pub token: Option<String>,
    /// Resources offered: CPUs and custom ones (`gpu=2`).
    pub resources: ResourceSet,
    /// A pinned node id (UUID) to register under; by default the head
    /// assigns one, which the worker keeps across reconnects.
    pub node_id: Option<String>,
    /// Directory for binaries fetched from the head (shared by workers on
    /// one machine; content-addressed, so sharing is safe).
    pub cache_dir: PathBuf,
    /// At most this many executor processes (default: CPUs + 2).
    pub max_executors: Option<usize>,
    /// Machine memory reported to the head.
    pub memory_bytes: u64,
    /// Object store capacity reported to the head.
    pub object_store_bytes: u64,
    /// The head is in this process (embedded cluster): talk to it over
    /// channels instead of gRPC.
    pub local_head: Option<shoal_proto::local::LocalLink>,
}

impl WorkerConfig {
    /// A worker for `head` offering this machine's CPUs.
    pub fn new(head: impl Into<String>, token: Option<String>, cache_dir: PathBuf) -> Self {
        let memory = detect_memory_bytes();
        WorkerConfig {
            head: head.into(),
            token,
            resources: ResourceSet::cpus(detect_cpus() as f64),
            node_id: None,
            cache_dir,
            max_executors: None,
            memory_bytes: memory,
            object_store_bytes: memory * 3 / 10,
            local_head: None,
        }
    }
}

/// CPUs this process may use.
pub fn detect_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Total memory of the machine, from `/proc/meminfo` (0 when unknown).
pub fn detect_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}
