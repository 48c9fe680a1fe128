//! The Shoal worker daemon: one per node.
//!
//! It registers with the head, heartbeats, and pulls tasks over one
//! long-lived stream with credits (it asks for a few more tasks than it has
//! free slots, so a slot never idles waiting for a round trip). It runs
//! tasks in executor processes started from the driver's own program binary
//! (fetched from the head once and cached by content hash), one pool per
//! job, and reports results in batches.
//!
//! # Layout
//! - [`config`]: [`WorkerConfig`] and machine detection.
//! - `session`: the connection to the head, with reconnect and backoff.
//! - `binary_cache`: fetching and checking program binaries.
//! - `executors`: starting executor processes and talking to them.
//! - [`core`]: every decision, as a state machine (events in, effects out),
//!   driven by unit tests without sockets or processes.
//! - `pipeline`: pure sizing rules (pipeline depth, credits).
//! - [`transfer`]: the object store's gRPC service and object transfers.
//! - `daemon`: the I/O shell: turns sockets and processes into core
//!   events and the core's effects into messages and processes.

// The daemon never dies of its own state: no panicking shortcut on a path
// that peers, timing or faults can reach.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::indexing_slicing, clippy::todo))]

mod binary_cache;
pub mod config;
pub mod core;
mod daemon;
mod executors;
mod metrics;
mod pipeline;
mod session;
pub mod transfer;

pub use config::WorkerConfig;
pub use daemon::{WorkerError, WorkerHandle, start};
