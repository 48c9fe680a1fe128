//! The Shoal head node.
//!
//! # Layout
//! - [`core`]: the scheduling state machine (membership, task graph, object
//!   table, FIFO queue, placement). No I/O; unit-tested directly.
//! - [`server`]: the gRPC services and the event loop that owns the core.
//! - `convert`: protobuf <-> core type conversions.
//!
//! The head never dies of its own state: outside tests, nothing in this
//! crate may unwrap, index, or declare a path unreachable. Everything a
//! peer, a timing or a fault can reach is handled; an inconsistency fails
//! the affected task with `FailureKind::Internal` and is logged.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::todo, clippy::unimplemented, clippy::indexing_slicing)
)]

mod address;
pub mod core;
mod durable;
pub mod server;

pub use server::{HeadConfig, HeadHandle, TlsIdentity, start};
