//! The Shoal head node.
//!
//! # Layout
//! - [`core`]: the scheduling state machine (membership, task graph, object
//!   table, FIFO queue, placement). No I/O; unit-tested directly.
//! - [`server`]: the gRPC services and the event loop that owns the core.
//! - `convert`: protobuf <-> core type conversions.

pub mod core;
mod convert;
mod durable;
pub mod server;

pub use server::{HeadConfig, HeadHandle, TlsIdentity, start};
