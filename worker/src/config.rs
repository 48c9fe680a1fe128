//! Worker configuration, independent of the CLI.

use shoal_domain::ResourceSet;
use std::path::PathBuf;

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Head address, `host:port`.
    pub head: String,
    /// Cluster token (`None` for an `--insecure` head).
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
    /// Size of the node's shared-memory object store.
    pub object_store_bytes: u64,
    /// How much of the store is backed with memory at start (in the
    /// background), so first writes run at memcpy speed.
    pub object_store_prefault: u64,
    /// Where objects are spilled when the store is full.
    pub spill_dir: PathBuf,
    /// Address the object store service listens on (port 0: any free port).
    pub object_listen: std::net::SocketAddr,
    /// Host peers should use to reach the object store, when the address
    /// the head sees is not reachable from them (NAT, several interfaces).
    pub object_host: Option<String>,
    /// The head is in this process (embedded cluster): talk to it over
    /// channels instead of gRPC.
    pub local_head: Option<shoal_proto::local::LocalLink>,
    /// Serve Prometheus `/metrics` here (`None`: no endpoint).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Copy objects that another worker on this machine holds from its
    /// memory (mapping its store) instead of streaming them over its port.
    /// On unless `SHOAL_MAP_PEER_STORES=0` (to measure the network path on
    /// one machine).
    pub map_peer_stores: bool,
    /// Bounds on the connections the object store's port holds, its
    /// handshake deadline and idle timeout.
    pub connections: shoal_proto::net::Limits,
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
            object_store_bytes: default_store_bytes(memory),
            object_store_prefault: default_store_bytes(memory).min(DEFAULT_PREFAULT),
            spill_dir: std::env::temp_dir().join(format!("shoal-spill-{}", std::process::id())),
            object_listen: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            object_host: None,
            local_head: None,
            metrics_listen: None,
            map_peer_stores: std::env::var("SHOAL_MAP_PEER_STORES").map_or(true, |v| v != "0"),
            connections: shoal_proto::net::Limits::default(),
        }
    }
}

/// Pre-faulted part of a daemon's store by default: enough for the large
/// objects of a typical job without holding a third of the machine's
/// memory resident from the start.
pub const DEFAULT_PREFAULT: u64 = 1 << 30;

/// Pre-faulted part of an embedded cluster's store by default (it lives
/// in the user's program, which may be short-lived).
pub const DEFAULT_EMBEDDED_PREFAULT: u64 = 256 << 20;

/// Environment variable overriding how much of the store is pre-faulted
/// (a size: `0`, `512MiB`, `2GiB`).
pub const ENV_PREFAULT: &str = "SHOAL_OBJECT_STORE_PREFAULT";

/// Environment variable setting the store size (`4GiB`, `25%`).
pub const ENV_STORE_MEMORY: &str = "SHOAL_OBJECT_STORE_MEMORY";

/// The default store size: 30% of memory (as Ray), at least 64 MiB.
pub fn default_store_bytes(memory: u64) -> u64 {
    (memory * 3 / 10).max(64 << 20)
}

/// Parses a size (`2GiB`, `1.5GB`, `25%` of `memory`); see
/// [`shoal_domain::size`].
pub use shoal_domain::size::{SizeError, parse_size};

/// CPUs this process may use.
pub fn detect_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Memory this process may use: the machine's (`/proc/meminfo`), or less
/// when its cgroup (a container, a systemd slice, a Slurm allocation)
/// limits it. 0 when unknown.
pub fn detect_memory_bytes() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok())))
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    match cgroup_memory_limit(std::path::Path::new("/sys/fs/cgroup"), &own) {
        Some(limit) if total == 0 || limit < total => limit,
        _ => total,
    }
}

/// The memory limit of the cgroup described by `own` (the text of
/// `/proc/self/cgroup`) under the cgroup mount `root`, the tightest of it
/// and its parents; `None` when unlimited or unknown. Reads cgroup v2
/// (`memory.max`) and v1 (`memory/memory.limit_in_bytes`). Inside a
/// container the process's path may not exist (the container's cgroup is
/// the mount's root), so the root's own limit counts too.
pub fn cgroup_memory_limit(root: &std::path::Path, own: &str) -> Option<u64> {
    let read = |p: std::path::PathBuf| -> Option<u64> {
        let v = std::fs::read_to_string(p).ok()?;
        // v1 says "unlimited" with a huge number, v2 with "max".
        v.trim().parse::<u64>().ok().filter(|n| *n < (1 << 62))
    };
    let mut best: Option<u64> = None;
    let mut consider = |v: Option<u64>| {
        if let Some(v) = v {
            best = Some(best.map_or(v, |b| b.min(v)));
        }
    };
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let rel = path.trim_start_matches('/');
        let (base, file) = if controllers.is_empty() {
            (root.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut dir = base.join(rel);
        loop {
            consider(read(dir.join(file)));
            if dir == base || !dir.pop() {
                break;
            }
        }
        consider(read(base.join(file)));
    }
    best
}

pub use shoal_domain::cluster::hostname;

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &std::path::Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn a_cgroup_v2_limit_counts_and_the_tightest_ancestor_wins() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "memory.max", "max\n");
        write(d.path(), "slice/memory.max", "8589934592\n");
        write(d.path(), "slice/job/memory.max", "max\n");
        assert_eq!(cgroup_memory_limit(d.path(), "0::/slice/job\n"), Some(8 << 30));
        assert_eq!(cgroup_memory_limit(d.path(), "0::/\n"), None, "unlimited");
    }

    #[test]
    fn a_containers_cgroup_v1_limit_counts_even_when_its_path_is_not_visible() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "memory/memory.limit_in_bytes", "2147483648\n");
        let own = "5:devices:/\n4:memory:/docker/abc123\n0::/\n";
        assert_eq!(cgroup_memory_limit(d.path(), own), Some(2 << 30));
        write(d.path(), "memory/memory.limit_in_bytes", "9223372036854771712\n");
        assert_eq!(cgroup_memory_limit(d.path(), own), None, "v1's unlimited");
        assert_eq!(cgroup_memory_limit(d.path(), "garbage"), None);
    }
}
