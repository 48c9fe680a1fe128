//! Plain data the core works with: the domain types (ids, failures,
//! tasks, values, cluster snapshots), re-exported so the core and its
//! callers name them in one place. Generated protobuf types stay out of
//! the core; `shoal_proto::convert` maps them.

pub use crate::events::TaskEvent;
pub use shoal_domain::cluster::{ClusterStatus, NodeRegistration, NodeStatus, TaskCounts};
pub use shoal_domain::task::{
    Dispatch, FunctionDef, JobSnapshot, NewArg, NewTask, Payload, Placement, PutValue, SnapshotObject, SnapshotTask, SnapshotValue, StoredRef, Value,
};
pub use shoal_domain::{Failure, FailureKind, JobId, NodeId, ObjectId, ResourceSet, StoreUsage, TaskId, ids};
