//! Plain data the core works with: ids, failures, function definitions.
//! Generated protobuf types stay out of the core; `crate::convert` maps them.

use bytes::Bytes;
use shoal_proto::resources::ResourceSet;
use std::fmt;

/// A task id; also the id of the object holding its result.
pub type TaskId = u64;
/// An object id: `(job << 40) | seq`, see [`shoal_proto::ids`].
pub type ObjectId = u64;
/// A driver session (one program connected to the cluster).
pub type JobId = u32;

/// A worker node's identity, a UUID assigned by the head at first
/// registration (or pinned with `--node-id`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub uuid::Uuid);

impl NodeId {
    /// A fresh random id.
    pub fn random() -> Self {
        NodeId(uuid::Uuid::new_v4())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short form for logs; the full form is in status output.
        write!(f, "{}", &self.0.simple().to_string()[..8])
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// Why a task failed (mirrors `pb::FailureKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The function panicked.
    Panicked,
    /// No function of that name in the program binary.
    FunctionNotFound,
    /// An argument did not decode as the parameter's type.
    ArgDecode,
    /// The executor process or its node died while running the task.
    WorkerDied,
    /// The task was cancelled.
    Cancelled,
    /// An input object is gone.
    ObjectLost,
    /// A deadline passed.
    Timeout,
    /// The cluster token was refused.
    Unauthenticated,
    /// The program binary cannot run on the worker.
    BinaryIncompatible,
    /// No node can ever satisfy the task's resources.
    Unschedulable,
    /// The result could not be serialized.
    ResultEncode,
    /// The node's object store had no room for the result.
    ObjectStoreFull,
    /// The head found its own state inconsistent for this task (a bug):
    /// the task fails, everything else goes on.
    Internal,
}

/// A task failure with the details a user needs to act on it.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// Detail: panic message, error text.
    pub message: String,
    /// Panic location, when known.
    pub location: String,
    /// Node where it happened, when known.
    pub node: String,
    /// Function name, when known.
    pub function: String,
    /// Attempts made.
    pub attempts: u32,
}

impl Failure {
    /// A failure of `kind` with a message.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure { kind, message: message.into(), location: String::new(), node: String::new(), function: String::new(), attempts: 0 }
    }
}

/// A remote function as the driver declared it.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionDef {
    /// Stable registered name (`crate::module::fn`).
    pub name: String,
    /// Resources one call needs.
    pub resources: ResourceSet,
    /// How many times a call is retried when its worker dies.
    pub max_retries: u32,
}

/// One argument of a submitted task.
#[derive(Clone, Debug)]
pub enum NewArg {
    /// A serialized value.
    Value(Bytes),
    /// A reference to an object of the same job.
    Object(ObjectId),
}

/// A task as submitted by a driver.
#[derive(Clone, Debug)]
pub struct NewTask {
    /// Driver-allocated id (also its result object's id).
    pub id: TaskId,
    /// Job-local function index.
    pub func: u32,
    /// Arguments.
    pub args: Vec<NewArg>,
    /// Overrides the function's retry count for this call.
    pub max_retries: Option<u32>,
}

/// A finished value as a worker reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Small: the bytes themselves.
    Inline(Bytes),
    /// Large: sealed in the reporting node's object store.
    Stored {
        /// Size in bytes.
        size: u64,
    },
}

/// A driver's `put`.
#[derive(Clone, Debug, PartialEq)]
pub enum PutValue {
    /// Small: the bytes themselves.
    Inline(Bytes),
    /// Large: already sealed in `node`'s object store.
    Stored {
        /// Size in bytes.
        size: u64,
        /// The node holding it.
        node: NodeId,
    },
}

/// A finished object as a job snapshot keeps it.
#[derive(Clone, Debug, PartialEq)]
pub enum SnapshotValue {
    /// The bytes.
    Inline(Bytes),
    /// In these nodes' stores.
    Stored {
        /// Size in bytes.
        size: u64,
        /// Nodes holding a copy.
        holders: Vec<NodeId>,
    },
    /// The task failed.
    Failed(Failure),
}

/// A referenced, finished object in a [`JobSnapshot`].
#[derive(Clone, Debug)]
pub struct SnapshotObject {
    /// Object id.
    pub id: ObjectId,
    /// Its value.
    pub value: SnapshotValue,
    /// The driver still references it.
    pub driver_ref: bool,
    /// For a task's stored result: that task, to rebuild it if lost.
    pub lineage: Option<NewTask>,
}

/// An unfinished task in a [`JobSnapshot`].
#[derive(Clone, Debug)]
pub struct SnapshotTask {
    /// The task as submitted.
    pub task: NewTask,
    /// The driver still references its result.
    pub driver_ref: bool,
}

/// A job's whole state: what the head's log keeps instead of the job's
/// history once that grows much larger than the state.
#[derive(Clone, Debug)]
pub struct JobSnapshot {
    /// Program binary.
    pub binary: String,
    /// Display name.
    pub name: String,
    /// Functions, by index.
    pub functions: Vec<FunctionDef>,
    /// Finished objects still referenced.
    pub objects: Vec<SnapshotObject>,
    /// Unfinished tasks, in id order (producers before consumers).
    pub tasks: Vec<SnapshotTask>,
}

/// Where a stored object can be read.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRef {
    /// Object id.
    pub id: ObjectId,
    /// Size in bytes.
    pub size: u64,
    /// Object-store addresses of the alive nodes holding a copy.
    pub holders: Vec<String>,
}

/// A value as it leaves the head: to a driver (a result) or to a worker
/// (an argument).
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    /// The bytes themselves.
    Inline(Bytes),
    /// Read it from one of the holders' stores.
    Stored(StoredRef),
}

/// Object store usage of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreUsage {
    /// Arena size.
    pub capacity: u64,
    /// Arena bytes in use.
    pub used: u64,
    /// Objects in the arena.
    pub objects: u64,
    /// Bytes spilled to disk.
    pub spilled_bytes: u64,
    /// Objects spilled to disk.
    pub spilled_objects: u64,
    /// Bytes pinned by readers.
    pub pinned_bytes: u64,
}

/// A task sent to a worker, arguments resolved to bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Dispatch {
    /// Task id.
    pub task: TaskId,
    /// Owning job.
    pub job: JobId,
    /// Job-local function index.
    pub func: u32,
    /// Resolved argument values.
    pub args: Vec<Payload>,
    /// Attempt number, from 1.
    pub attempt: u32,
}

/// What a worker reported when registering.
#[derive(Clone, Debug, Default)]
pub struct NodeRegistration {
    /// Id to re-register under, if any.
    pub node_id: Option<NodeId>,
    /// Resources offered.
    pub resources: ResourceSet,
    /// Address the head sees the worker at.
    pub address: String,
    /// Host name.
    pub hostname: String,
    /// Worker daemon pid.
    pub pid: u32,
    /// Memory of the machine.
    pub memory_bytes: u64,
    /// Object store capacity.
    pub object_store_bytes: u64,
    /// Where peers reach its object store (`host:port`; empty: none).
    pub object_address: String,
    /// Objects sealed in its store when it registered.
    pub objects: Vec<ObjectId>,
    /// The store's memory file: descriptor number in the worker process
    /// and inode, for drivers on the same machine to map it.
    pub store_file: (u32, u64),
}

/// A node as shown by `shoal status`.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSnapshot {
    /// Node id.
    pub id: NodeId,
    /// Address seen by the head.
    pub address: String,
    /// Alive (heartbeating) or dead.
    pub alive: bool,
    /// Resources offered.
    pub total: ResourceSet,
    /// Resources not held by dispatched tasks.
    pub available: ResourceSet,
    /// Seconds since the last heartbeat.
    pub last_heartbeat_age_s: f64,
    /// Host name.
    pub hostname: String,
    /// Worker pid.
    pub pid: u32,
    /// Tasks dispatched to it and not finished.
    pub tasks_running: u64,
    /// Machine memory.
    pub memory_bytes: u64,
    /// Object store capacity.
    pub object_store_bytes: u64,
    /// Taking no new tasks (drained).
    pub draining: bool,
    /// Where peers reach its object store.
    pub object_address: String,
    /// Object store usage, from its last heartbeat.
    pub store: StoreUsage,
    /// The store's memory file (descriptor number in the worker, inode).
    pub store_file: (u32, u64),
}

/// Task counts as shown by `shoal status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskCounts {
    /// Waiting for inputs or for a node.
    pub queued: u64,
    /// Dispatched to a worker.
    pub running: u64,
    /// Finished with a value.
    pub finished: u64,
    /// Finished with a failure.
    pub failed: u64,
}

/// The whole cluster as shown by `shoal status`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSnapshot {
    /// Every node ever registered.
    pub nodes: Vec<NodeSnapshot>,
    /// Task counts.
    pub tasks: TaskCounts,
    /// Connected drivers.
    pub jobs: u32,
}
