//! How the head runs: its configuration, independent of the CLI.

use std::path::PathBuf;
use std::time::Duration;

/// How the head runs. Independent of the CLI; `shoal start --head` builds
/// one from its flags.
#[derive(Clone, Debug)]
pub struct HeadConfig {
    /// Cluster token every RPC must carry; `None` = insecure mode.
    pub token: Option<String>,
    /// Where uploaded program binaries are stored.
    pub binaries_dir: PathBuf,
    /// Period at which workers should heartbeat.
    pub heartbeat_interval: Duration,
    /// Silence after which a worker is declared dead.
    pub heartbeat_timeout: Duration,
    /// Wait for a node that fits instead of failing unschedulable tasks.
    pub wait_for_feasible_nodes: bool,
    /// Serve TLS with this PEM certificate chain and key.
    pub tls: Option<TlsIdentity>,
    /// Keep a durable log here (redb): after a crash, a head restarted
    /// with the same data dir picks up the work where it was. `None`: the
    /// head keeps everything in memory (an embedded cluster).
    pub data_dir: Option<PathBuf>,
    /// How long a job waits for its driver to reconnect after losing it.
    pub driver_grace: Duration,
    /// A job's log is compacted to a snapshot of its state once it holds
    /// this many bytes (and twice its last snapshot): replay time and disk
    /// stay proportional to the live state, not the history.
    pub compact_after_bytes: u64,
    /// Bounds on unfinished tasks before a driver's submissions wait.
    pub admission: super::AdmissionLimits,
    /// Task rows the state API keeps (the oldest go first past it).
    pub task_events: usize,
    /// Serve the dashboard and `/metrics` here (`None`: no dashboard).
    pub dashboard: Option<std::net::SocketAddr>,
    /// Bounds on the connections the head's port holds, its handshake
    /// deadline and idle timeout.
    pub connections: shoal_proto::net::Limits,
}

/// Task rows kept by default (about 15 MB).
pub const DEFAULT_TASK_EVENTS: usize = 100_000;

/// A PEM certificate chain and private key for serving TLS.
#[derive(Clone)]
pub struct TlsIdentity {
    /// Certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Private key, PEM.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.write_str("TlsIdentity(..)")
    }
}

impl HeadConfig {
    /// Defaults with the given token and binary directory.
    pub fn new(token: Option<String>, binaries_dir: PathBuf) -> Self {
        HeadConfig {
            token,
            binaries_dir,
            heartbeat_interval: Duration::from_millis(500),
            heartbeat_timeout: Duration::from_secs(5),
            wait_for_feasible_nodes: false,
            tls: None,
            data_dir: None,
            driver_grace: Duration::from_secs(30),
            compact_after_bytes: 64 << 20,
            admission: super::AdmissionLimits::default(),
            task_events: DEFAULT_TASK_EVENTS,
            dashboard: None,
            connections: shoal_proto::net::Limits::default(),
        }
    }
}
