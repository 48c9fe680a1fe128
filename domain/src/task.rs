//! Tasks and values as they travel: a function's declaration, a task as
//! submitted and as dispatched, a value as a worker reports it, a put, and
//! the job snapshot the head's log keeps.

use crate::actor::{ActorPart, ActorRole};
use crate::failure::Failure;
use crate::ids::{JobId, NodeId, ObjectId, TaskId};
use crate::resources::ResourceSet;
use bytes::Bytes;

/// A remote function as the driver declared it.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionDef {
    /// Stable registered name (`crate::module::fn`).
    pub name: String,
    /// Resources one call needs.
    pub resources: ResourceSet,
    /// How many times a call is retried when its worker dies (and, with
    /// `retry_exceptions`, when it panics).
    pub max_retries: u32,
    /// A panic is retried too, not only a worker death.
    pub retry_exceptions: bool,
}

/// One argument of a submitted task.
#[derive(Clone, Debug)]
pub enum NewArg {
    /// A serialized value.
    Value(Bytes),
    /// A reference to an object (its own job's, or one it borrowed).
    Object(ObjectId),
}

/// Where a call may run, beyond fitting its resources (Ray's scheduling
/// strategies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// Near its stored inputs if it can, else round-robin over nodes
    /// with room.
    #[default]
    Any,
    /// On this node: only there (`soft: false`; it fails if the node is
    /// gone), or there when it has room, else anywhere (`soft: true`).
    Node {
        /// The node.
        node: crate::NodeId,
        /// Fall back to other nodes.
        soft: bool,
    },
    /// Round-robin over nodes with room, ignoring where inputs are.
    Spread,
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
    /// Overrides the function's resources for this call.
    pub resources: Option<ResourceSet>,
    /// Overrides the function's `retry_exceptions` for this call.
    pub retry_exceptions: Option<bool>,
    /// Objects referenced from inside its inline argument values: they
    /// live while the task does.
    pub contains: Vec<ObjectId>,
    /// Where it may run.
    pub placement: Placement,
    /// Runs in an executor process of its own (a `Process`).
    pub dedicated: bool,
    /// It creates an actor, or calls one.
    pub actor: ActorRole,
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
    /// Its driver is gone; it lives on only for its detached actors.
    pub lingering: bool,
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
    /// The resources this call holds, when they are not its function's.
    pub resources: Option<ResourceSet>,
    /// Runs in an executor process of its own, started for it and ended
    /// after it (a `Process`).
    pub dedicated: bool,
    /// It starts an actor, or calls one.
    pub actor: ActorPart,
}

/// What a worker needs to run a job's tasks: its program binary and its
/// functions `first_function..` (sent incrementally as the driver
/// declares them).
#[derive(Clone, Debug, PartialEq)]
pub struct JobInfo {
    /// The job.
    pub job: JobId,
    /// Content hash of its program binary.
    pub binary: String,
    /// Index of the first function in `functions`.
    pub first_function: u32,
    /// Functions `first_function..`.
    pub functions: Vec<FunctionDef>,
}

/// An argument as an executor receives it.
#[derive(Clone, Debug, PartialEq)]
pub enum ExecArg {
    /// The bytes themselves.
    Inline(Bytes),
    /// A sealed object in the node's arena, pinned for the executor until
    /// it reports it released.
    Arena {
        /// The object.
        object: ObjectId,
        /// Offset in the arena.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// A spilled object, read from its file (pinned the same way).
    File {
        /// The object.
        object: ObjectId,
        /// The spill file.
        path: std::path::PathBuf,
        /// Length in bytes.
        len: u64,
    },
}

/// A task as an executor runs it: its arguments ready to read.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecTask {
    /// Task id.
    pub task: TaskId,
    /// Job-local function index.
    pub func: u32,
    /// Arguments.
    pub args: Vec<ExecArg>,
    /// What it is to an actor: a method call names its method (the
    /// caller's function table is not the actor's).
    pub actor: ExecActor,
}

/// What a task an executor runs is to an actor.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ExecActor {
    /// A plain task.
    #[default]
    None,
    /// Construct the actor; this process then serves its calls.
    Create {
        /// Async calls running at once.
        max_concurrency: u32,
    },
    /// Call this method (registered name) of the actor this process serves.
    Call {
        /// The method's registered name.
        method: String,
    },
}
