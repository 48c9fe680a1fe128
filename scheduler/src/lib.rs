//! The Shoal head node.
//!
//! # Layout
//! - [`core`]: the scheduling state machine (membership, task graph, object
//!   table, FIFO queue, placement). No I/O; unit-tested directly.
//! - [`server`]: the I/O edge, one module per concern: configuration and
//!   start, the event loop that owns the core, the batching outbox, the
//!   durable log beside it (replay, dedup, acknowledgement, compaction),
//!   sessions, and the gRPC service.
//! - `durable`: the redb log itself.
//! - `address`: where peers reach a worker's object store.
//!
//! Wire <-> domain conversions live in `shoal_proto::convert`; the core
//! sees only `shoal_domain` types.
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
pub mod events;
pub mod server;

pub use server::{AdmissionLimits, HeadConfig, HeadHandle, TlsIdentity, start};
