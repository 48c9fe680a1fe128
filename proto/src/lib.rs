//! Shoal's wire code (and nothing else: domain types are `shoal_domain`): the generated protobuf messages and gRPC services,
//! the protocol version, token authentication, and the length-prefixed
//! framing used between a worker and its executor processes.
//!
//! # Layout
//! - [`pb`]: generated types (`shoal.v1`).
//! - [`auth`]: the cluster token: a client interceptor that attaches it and
//!   the constant-time check servers make ([`conns::Guard`]).
//! - [`frame`]: `u32`-length-prefixed protobuf frames, async and blocking.
//! - [`binaries`]: program binaries as a stream of chunks.
//! - [`items`]: runs of generator items.
//! - [`convert`]: every conversion between wire and domain types.
//! - [`client`], [`local`]: connecting to a head over gRPC or in-process.
//! - [`net`], [`conns`]: what a server accepts (TLS, deadlines, bounds on
//!   connections, the idle timeout) and what a client dials.

/// Generated protobuf messages and tonic services for `shoal.v1`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("shoal.v1");
}

pub mod auth;
pub mod binaries;
pub mod bulk;
pub mod client;
pub mod conns;
pub mod convert;
pub mod frame;
#[doc(hidden)]
pub mod fuzz;
pub mod items;
pub mod local;
pub mod net;
pub mod pad;
pub mod rpc_errors;
pub mod tls;

/// Version of the protocol spoken on every stream. A worker, driver or
/// executor with another version is refused with a clear error at
/// registration instead of failing later in confusing ways.
pub const PROTOCOL_VERSION: u32 = 2;

/// Environment variable that turns a process started from a user's program
/// binary into an executor: it holds the worker's Unix socket path.
pub const ENV_EXECUTOR_SOCKET: &str = "SHOAL_EXECUTOR_SOCKET";
/// Environment variable with the executor's id, echoed in its hello.
pub const ENV_EXECUTOR_ID: &str = "SHOAL_EXECUTOR_ID";
/// Environment variable with the content hash of the executor's program
/// binary (the head has it already: a task that submits tasks need not
/// hash or upload it).
pub const ENV_BINARY_HASH: &str = "SHOAL_BINARY_HASH";
/// Environment variable with the node id the executor runs on.
pub const ENV_NODE_ID: &str = "SHOAL_NODE_ID";
