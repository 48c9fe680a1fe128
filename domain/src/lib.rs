//! Shoal's domain types, shared by the head, the workers and the SDK:
//! what an id is and how it prints, resource sets, why a task failed and
//! whether it runs again, a node's store usage, and the size limits every
//! process agrees on.
//!
//! Nothing here does I/O or knows the wire: `shoal-proto` converts these
//! to and from protobuf messages in one module (`shoal_proto::convert`),
//! and the pure cores (`shoal_scheduler::core`, `shoal_worker::core`)
//! are written against these types only.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::indexing_slicing))]

pub mod actor;
pub mod cluster;
pub mod failure;
pub mod ids;
pub mod limits;
pub mod panic;
pub mod paths;
pub mod resources;
#[doc(hidden)]
pub mod seeded;
pub mod size;
pub mod state;
pub mod store;
pub mod task;

pub use failure::{Failure, FailureKind, Retry, RetryState};
pub use ids::{JobId, NodeId, ObjectId, TaskId};
pub use resources::{ParseResourcesError, ResourceSet};
pub use store::StoreUsage;
