//! Worker configuration, independent of the CLI.

use shoal_domain::ResourceSet;
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

/// Parses a size: `1073741824`, `512MiB`, `2GiB`, `1.5G`, `64M`, `10%`
/// (of `memory`).
pub fn parse_size(s: &str, memory: u64) -> Result<u64, String> {
    let t = s.trim();
    let err = || format!("{s:?} is not a size (examples: 2GiB, 512MiB, 1073741824, 25%)");
    if let Some(p) = t.strip_suffix('%') {
        let p: f64 = p.trim().parse().map_err(|_| err())?;
        if !(0.0..=100.0).contains(&p) {
            return Err(err());
        }
        return Ok((memory as f64 * p / 100.0) as u64);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| err())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(err()),
    };
    Ok((n * mult as f64) as u64)
}

/// CPUs this process may use.
pub fn detect_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Total memory of the machine, from `/proc/meminfo` (0 when unknown).
pub fn detect_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok())))
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_percentages() {
        assert_eq!(parse_size("1024", 0), Ok(1024));
        assert_eq!(parse_size("512MiB", 0), Ok(512 << 20));
        assert_eq!(parse_size("2G", 0), Ok(2 << 30));
        assert_eq!(parse_size("1.5 GiB", 0), Ok(3 << 29));
        assert_eq!(parse_size("25%", 1000), Ok(250));
        assert!(parse_size("lots", 0).is_err());
        assert!(parse_size("5 parsecs", 0).is_err());
        assert!(parse_size("150%", 10).is_err());
    }
}
