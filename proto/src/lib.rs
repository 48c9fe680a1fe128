//! Shoal's wire code: the generated protobuf messages and gRPC services,
//! the protocol version, token authentication, and the length-prefixed
//! framing used between a worker and its executor processes.
//!
//! # Layout
//! - [`pb`]: generated types (`shoal.v1`).
//! - [`auth`]: the cluster token: a client interceptor that attaches it and
//!   a server interceptor that checks it in constant time.
//! - [`frame`]: `u32`-length-prefixed protobuf frames, async and blocking.
//! - [`binaries`]: the content-addressed store of program binaries.
//! - [`ids`]: how object ids pack a job id and a sequence number.

/// Generated protobuf messages and tonic services for `shoal.v1`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("shoal.v1");
}

pub mod auth;
pub mod binaries;
pub mod client;
pub mod frame;
pub mod ids;
pub mod local;
pub mod pad;
pub mod resources;

/// Version of the protocol spoken on every stream. A worker, driver or
/// executor with another version is refused with a clear error at
/// registration instead of failing later in confusing ways.
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest gRPC message a Shoal process accepts. Bigger payloads are an
/// error on the wire (and the sender should have chunked them).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Largest value that travels inline (an argument, a result, a put):
/// the message limit less room for the envelope. Larger values need the
/// shared-memory object store.
pub const MAX_INLINE_VALUE_BYTES: usize = MAX_MESSAGE_BYTES - (1 << 20);

/// Values larger than this (results, puts, arguments) go to the node's
/// shared-memory object store instead of travelling inline, as Ray's 100
/// KiB direct-call limit: below it, a copy in a message is cheaper than a
/// store round trip.
pub const STORE_THRESHOLD_BYTES: usize = 100 << 10;

/// Chunk size of object transfers between workers and to drivers.
pub const OBJECT_CHUNK_BYTES: usize = 4 << 20;

/// Batches of results are closed at this size and a new one started, so
/// many large results never add up to one oversized message.
pub const BATCH_BYTES: usize = 4 << 20;

/// Chunk size used to stream program binaries.
pub const BINARY_CHUNK_BYTES: usize = 1 << 20;

/// The session directory: `$SHOAL_HOME`, else `~/.shoal` (else a temp
/// dir). `shoal start` leaves its records there; clients read them.
pub fn session_home() -> std::path::PathBuf {
    if let Some(h) = std::env::var_os("SHOAL_HOME").filter(|h| !h.is_empty()) {
        return h.into();
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => std::path::PathBuf::from(home).join(".shoal"),
        None => std::env::temp_dir().join("shoal"),
    }
}

/// Environment variable that turns a process started from a user's program
/// binary into an executor: it holds the worker's Unix socket path.
pub const ENV_EXECUTOR_SOCKET: &str = "SHOAL_EXECUTOR_SOCKET";
/// Environment variable with the executor's id, echoed in its hello.
pub const ENV_EXECUTOR_ID: &str = "SHOAL_EXECUTOR_ID";
/// Environment variable with the node id the executor runs on.
pub const ENV_NODE_ID: &str = "SHOAL_NODE_ID";
