//! Every conversion between wire (`pb::*`) and domain (`shoal_domain`)
//! types, in one place, as Ballista keeps its `from_proto`/`to_proto`:
//! the pure cores never see a generated type, and a new field is mapped
//! here once.
//!
//! Conversions that cannot fail are `From`; those that can are `TryFrom`
//! with a [`WireError`]. Wire integers become id newtypes here.

use crate::pb;
use bytes::Bytes;
use shoal_domain::actor::{ActorPart, ActorRole, ActorSpec, ActorState, ActorStatus};
use shoal_domain::cluster::{ClusterStatus, NodeStatus, TaskCounts};
use shoal_domain::task::{
    Dispatch, ExecActor, ExecArg, ExecTask, FunctionDef, JobInfo, JobSnapshot, NewArg, NewTask, Payload, Placement, PutValue, SnapshotObject, SnapshotTask,
    SnapshotValue, StoredRef, Value,
};
use shoal_domain::{Failure, FailureKind, JobId, NodeId, ObjectId, ResourceSet, StoreUsage, TaskId};

/// A wire message that does not make sense as a domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A field that must hold a node id (a UUID) holds something else.
    #[error("{field} names node {value:?}, not a UUID")]
    BadNodeId {
        /// Which field.
        field: &'static str,
        /// What it held.
        value: String,
    },
    /// A required field is absent.
    #[error("{0} is missing")]
    Missing(&'static str),
}

// ---- resources ----

impl From<&pb::Resources> for ResourceSet {
    fn from(r: &pb::Resources) -> Self {
        let mut set = ResourceSet::cpus(if r.num_cpus.is_finite() { r.num_cpus.max(0.0) } else { 0.0 });
        for (n, a) in &r.custom {
            if a.is_finite() && *a > 0.0 {
                set.set(n, *a);
            }
        }
        set
    }
}

impl From<&ResourceSet> for pb::Resources {
    fn from(r: &ResourceSet) -> Self {
        pb::Resources { num_cpus: r.cpus, custom: r.custom.iter().cloned().collect() }
    }
}

// ---- failures ----

impl From<pb::FailureKind> for FailureKind {
    fn from(k: pb::FailureKind) -> Self {
        use pb::FailureKind as P;
        match k {
            P::Panicked => FailureKind::Panicked,
            P::FunctionNotFound => FailureKind::FunctionNotFound,
            P::ArgDecode => FailureKind::ArgDecode,
            P::WorkerDied => FailureKind::WorkerDied,
            P::Cancelled => FailureKind::Cancelled,
            P::ObjectLost => FailureKind::ObjectLost,
            P::Timeout => FailureKind::Timeout,
            P::Unauthenticated => FailureKind::Unauthenticated,
            P::BinaryIncompatible => FailureKind::BinaryIncompatible,
            P::Unschedulable => FailureKind::Unschedulable,
            P::ResultEncode => FailureKind::ResultEncode,
            P::ObjectStoreFull => FailureKind::ObjectStoreFull,
            P::Internal => FailureKind::Internal,
            P::ActorDied => FailureKind::ActorDied,
        }
    }
}

impl From<FailureKind> for pb::FailureKind {
    fn from(k: FailureKind) -> Self {
        use pb::FailureKind as P;
        match k {
            FailureKind::Panicked => P::Panicked,
            FailureKind::FunctionNotFound => P::FunctionNotFound,
            FailureKind::ArgDecode => P::ArgDecode,
            FailureKind::WorkerDied => P::WorkerDied,
            FailureKind::Cancelled => P::Cancelled,
            FailureKind::ObjectLost => P::ObjectLost,
            FailureKind::Timeout => P::Timeout,
            FailureKind::Unauthenticated => P::Unauthenticated,
            FailureKind::BinaryIncompatible => P::BinaryIncompatible,
            FailureKind::Unschedulable => P::Unschedulable,
            FailureKind::ResultEncode => P::ResultEncode,
            FailureKind::ObjectStoreFull => P::ObjectStoreFull,
            FailureKind::Internal => P::Internal,
            FailureKind::ActorDied => P::ActorDied,
        }
    }
}

/// A wire failure kind; an unknown number (a newer peer) reads as a panic,
/// the most general failure of the task's own code.
pub fn kind_from_wire(k: i32) -> FailureKind {
    pb::FailureKind::try_from(k).unwrap_or(pb::FailureKind::Panicked).into()
}

impl From<pb::TaskFailure> for Failure {
    fn from(f: pb::TaskFailure) -> Self {
        Failure { kind: kind_from_wire(f.kind), message: f.message, location: f.location, node: f.node, function: f.function, attempts: f.attempts }
    }
}

impl From<Failure> for pb::TaskFailure {
    fn from(f: Failure) -> Self {
        pb::TaskFailure {
            kind: pb::FailureKind::from(f.kind) as i32,
            message: f.message,
            location: f.location,
            node: f.node,
            function: f.function,
            attempts: f.attempts,
        }
    }
}

// ---- store usage ----

impl From<pb::StoreUsage> for StoreUsage {
    fn from(u: pb::StoreUsage) -> Self {
        StoreUsage {
            capacity: u.capacity,
            used: u.used,
            objects: u.objects,
            spilled_bytes: u.spilled_bytes,
            spilled_objects: u.spilled_objects,
            pinned_bytes: u.pinned_bytes,
        }
    }
}

impl From<StoreUsage> for pb::StoreUsage {
    fn from(u: StoreUsage) -> Self {
        pb::StoreUsage {
            capacity: u.capacity,
            used: u.used,
            objects: u.objects,
            spilled_bytes: u.spilled_bytes,
            spilled_objects: u.spilled_objects,
            pinned_bytes: u.pinned_bytes,
        }
    }
}

// ---- results ----

/// A result as a worker reports it. One without an outcome (a broken
/// peer) reads as the worker having died while running it.
pub fn result_from_wire(r: pb::TaskResult) -> (TaskId, Result<Value, Failure>) {
    let outcome = match r.outcome {
        Some(pb::task_result::Outcome::Value(v)) => Ok(Value::Inline(v)),
        Some(pb::task_result::Outcome::Stored(s)) => Ok(Value::Stored { size: s.size }),
        Some(pb::task_result::Outcome::Failure(f)) => Err(f.into()),
        None => Err(Failure::new(FailureKind::WorkerDied, "worker sent a result without an outcome")),
    };
    (ObjectId(r.task), outcome)
}

/// A result as a worker sends it: a value inline, sealed in its store, or
/// a failure.
pub fn result_to_wire(task: TaskId, outcome: Result<Value, Failure>) -> pb::TaskResult {
    let outcome = match outcome {
        Ok(Value::Inline(v)) => pb::task_result::Outcome::Value(v),
        Ok(Value::Stored { size }) => pb::task_result::Outcome::Stored(pb::StoredObject { id: task.0, size, holders: Vec::new() }),
        Err(f) => pb::task_result::Outcome::Failure(f.into()),
    };
    pb::TaskResult { task: task.0, outcome: Some(outcome), ..Default::default() }
}

impl From<StoredRef> for pb::StoredObject {
    fn from(r: StoredRef) -> Self {
        pb::StoredObject { id: r.id.0, size: r.size, holders: r.holders }
    }
}

impl From<pb::StoredObject> for StoredRef {
    fn from(s: pb::StoredObject) -> Self {
        StoredRef { id: ObjectId(s.id), size: s.size, holders: s.holders }
    }
}

/// A result as the head delivers it to a driver.
pub fn delivery_to_wire(task: TaskId, outcome: Result<Payload, Failure>) -> pb::TaskResult {
    pb::TaskResult {
        task: task.0,
        outcome: Some(match outcome {
            Ok(Payload::Inline(v)) => pb::task_result::Outcome::Value(v),
            Ok(Payload::Stored(r)) => pb::task_result::Outcome::Stored(r.into()),
            Err(f) => pb::task_result::Outcome::Failure(f.into()),
        }),
        ..Default::default()
    }
}

// ---- functions and tasks ----

impl From<pb::FunctionDef> for FunctionDef {
    fn from(f: pb::FunctionDef) -> Self {
        let resources = f.resources.as_ref().map(ResourceSet::from).unwrap_or_else(|| ResourceSet::cpus(1.0));
        FunctionDef { name: f.name, resources, max_retries: f.max_retries, retry_exceptions: f.retry_exceptions }
    }
}

impl From<&FunctionDef> for pb::FunctionDef {
    fn from(f: &FunctionDef) -> Self {
        pb::FunctionDef { name: f.name.clone(), resources: Some((&f.resources).into()), max_retries: f.max_retries, retry_exceptions: f.retry_exceptions }
    }
}

impl From<pb::TaskSubmit> for NewTask {
    fn from(t: pb::TaskSubmit) -> Self {
        let args = t
            .args
            .into_iter()
            .map(|a| match a.kind {
                Some(pb::arg::Kind::Object(o)) => NewArg::Object(ObjectId(o)),
                Some(pb::arg::Kind::Value(v)) => NewArg::Value(v),
                None => NewArg::Value(Bytes::new()),
            })
            .collect();
        NewTask {
            id: ObjectId(t.id),
            func: t.func,
            args,
            max_retries: t.max_retries,
            resources: t.resources.as_ref().map(ResourceSet::from),
            retry_exceptions: t.retry_exceptions,
            contains: t.contains.into_iter().map(ObjectId).collect(),
            placement: match (NodeId::parse(&t.node), t.spread) {
                (Some(node), _) => Placement::Node { node, soft: t.node_soft },
                (None, true) => Placement::Spread,
                (None, false) => Placement::Any,
            },
            dedicated: t.dedicated,
            actor: match (t.actor_create, t.actor) {
                (Some(c), _) => ActorRole::Create(Box::new(ActorSpec {
                    class: c.class,
                    name: c.name,
                    namespace: c.namespace,
                    max_task_retries: c.max_task_retries,
                    max_concurrency: c.max_concurrency,
                    detached: c.detached,
                })),
                (None, 0) => ActorRole::None,
                (None, a) => ActorRole::Call(ObjectId(a)),
            },
        }
    }
}

impl From<NewTask> for pb::TaskSubmit {
    fn from(t: NewTask) -> Self {
        let args = t
            .args
            .into_iter()
            .map(|a| pb::Arg {
                kind: Some(match a {
                    NewArg::Object(o) => pb::arg::Kind::Object(o.0),
                    NewArg::Value(v) => pb::arg::Kind::Value(v),
                }),
            })
            .collect();
        pb::TaskSubmit {
            id: t.id.0,
            func: t.func,
            args,
            max_retries: t.max_retries,
            resources: t.resources.as_ref().map(pb::Resources::from),
            retry_exceptions: t.retry_exceptions,
            contains: t.contains.into_iter().map(|o| o.0).collect(),
            node: match t.placement {
                Placement::Node { node, .. } => node.0.to_string(),
                _ => String::new(),
            },
            node_soft: matches!(t.placement, Placement::Node { soft: true, .. }),
            spread: t.placement == Placement::Spread,
            dedicated: t.dedicated,
            actor_create: match &t.actor {
                ActorRole::Create(c) => Some(pb::ActorCreate {
                    class: c.class.clone(),
                    name: c.name.clone(),
                    namespace: c.namespace.clone(),
                    max_task_retries: c.max_task_retries,
                    max_concurrency: c.max_concurrency,
                    detached: c.detached,
                }),
                _ => None,
            },
            actor: match t.actor {
                ActorRole::Call(a) => a.0,
                _ => 0,
            },
        }
    }
}

impl From<Dispatch> for pb::TaskDispatch {
    fn from(d: Dispatch) -> Self {
        let args = d
            .args
            .into_iter()
            .map(|a| pb::TaskArg {
                kind: Some(match a {
                    Payload::Inline(b) => pb::task_arg::Kind::Value(b),
                    Payload::Stored(r) => pb::task_arg::Kind::Stored(r.into()),
                }),
            })
            .collect();
        pb::TaskDispatch {
            task: d.task.0,
            job: d.job,
            func: d.func,
            args,
            attempt: d.attempt,
            resources: d.resources.as_ref().map(pb::Resources::from),
            dedicated: d.dedicated,
            actor_create: matches!(d.actor, ActorPart::Create { .. }),
            max_concurrency: match d.actor {
                ActorPart::Create { max_concurrency } => max_concurrency,
                _ => 0,
            },
            actor: match d.actor {
                ActorPart::Call(a) => a.0,
                _ => 0,
            },
        }
    }
}

impl From<pb::TaskDispatch> for Dispatch {
    fn from(d: pb::TaskDispatch) -> Self {
        let args = d
            .args
            .into_iter()
            .map(|a| match a.kind {
                Some(pb::task_arg::Kind::Stored(s)) => Payload::Stored(s.into()),
                Some(pb::task_arg::Kind::Value(v)) => Payload::Inline(v),
                None => Payload::Inline(Bytes::new()),
            })
            .collect();
        Dispatch {
            task: ObjectId(d.task),
            job: d.job,
            func: d.func,
            args,
            attempt: d.attempt,
            resources: d.resources.as_ref().map(ResourceSet::from),
            dedicated: d.dedicated,
            actor: match (d.actor_create, d.actor) {
                (true, _) => ActorPart::Create { max_concurrency: d.max_concurrency },
                (false, 0) => ActorPart::None,
                (false, a) => ActorPart::Call(ObjectId(a)),
            },
        }
    }
}

impl TryFrom<&pb::PutObject> for PutValue {
    type Error = WireError;

    /// A driver's put: inline bytes, or a stored object on a named node.
    fn try_from(p: &pb::PutObject) -> Result<Self, WireError> {
        match &p.stored {
            None => Ok(PutValue::Inline(p.value.clone())),
            Some(s) => {
                let node = NodeId::parse(&p.node).ok_or_else(|| WireError::BadNodeId { field: "a put of a stored object", value: p.node.clone() })?;
                Ok(PutValue::Stored { size: s.size, node })
            }
        }
    }
}

impl From<pb::JobInfo> for JobInfo {
    fn from(j: pb::JobInfo) -> Self {
        JobInfo { job: j.job, binary: j.binary, first_function: j.first_function, functions: j.functions.into_iter().map(FunctionDef::from).collect() }
    }
}

impl From<ExecTask> for pb::ExecTask {
    fn from(t: ExecTask) -> Self {
        let args = t
            .args
            .into_iter()
            .map(|a| match a {
                ExecArg::Inline(value) => pb::ExecArg { value, ..Default::default() },
                ExecArg::Arena { object, offset, len } => pb::ExecArg { object: object.0, offset, len, ..Default::default() },
                ExecArg::File { object, path, len } => pb::ExecArg { object: object.0, len, file: path.to_string_lossy().into_owned(), ..Default::default() },
            })
            .collect();
        let (actor_create, max_concurrency, method) = match t.actor {
            ExecActor::None => (false, 0, String::new()),
            ExecActor::Create { max_concurrency } => (true, max_concurrency, String::new()),
            ExecActor::Call { method } => (false, 0, method),
        };
        pb::ExecTask { task: t.task.0, func: t.func, args, actor_create, max_concurrency, method }
    }
}

// ---- the head's log ----

/// A job snapshot as the head's log stores it.
pub fn job_snapshot_to_wire(job: JobId, s: JobSnapshot, applied_seq: u64) -> pb::JobSnapshot {
    use pb::snapshot_object::Value as V;
    pb::JobSnapshot {
        job: Some(pb::JobStarted { job, binary: s.binary, name: s.name, ..Default::default() }),
        functions: s.functions.iter().map(pb::FunctionDef::from).collect(),
        objects: s
            .objects
            .into_iter()
            .map(|o| pb::SnapshotObject {
                id: o.id.0,
                value: Some(match o.value {
                    SnapshotValue::Inline(b) => V::Inline(b),
                    SnapshotValue::Stored { size, holders } => {
                        V::Stored(pb::StoredObject { id: o.id.0, size, holders: holders.iter().map(|h| h.0.to_string()).collect() })
                    }
                    SnapshotValue::Failed(f) => V::Failed(f.into()),
                }),
                driver_ref: o.driver_ref,
                lineage: o.lineage.map(pb::TaskSubmit::from),
            })
            .collect(),
        tasks: s.tasks.into_iter().map(|t| pb::SnapshotTask { task: Some(t.task.into()), driver_ref: t.driver_ref }).collect(),
        applied_seq,
        lingering: s.lingering,
    }
}

/// A job snapshot from the head's log: `(job, snapshot, applied_seq)`.
pub fn job_snapshot_from_wire(s: pb::JobSnapshot) -> Result<(JobId, JobSnapshot, u64), WireError> {
    use pb::snapshot_object::Value as V;
    let j = s.job.ok_or(WireError::Missing("the job of a snapshot"))?;
    let objects = s
        .objects
        .into_iter()
        .filter_map(|o| {
            let value = match o.value? {
                V::Inline(b) => SnapshotValue::Inline(b),
                V::Stored(st) => SnapshotValue::Stored { size: st.size, holders: st.holders.iter().filter_map(|h| NodeId::parse(h)).collect() },
                V::Failed(f) => SnapshotValue::Failed(f.into()),
            };
            Some(SnapshotObject { id: ObjectId(o.id), value, driver_ref: o.driver_ref, lineage: o.lineage.map(NewTask::from) })
        })
        .collect();
    let tasks = s.tasks.into_iter().filter_map(|t| Some(SnapshotTask { task: t.task?.into(), driver_ref: t.driver_ref })).collect();
    let snap = JobSnapshot {
        binary: j.binary,
        name: j.name,
        functions: s.functions.into_iter().map(FunctionDef::from).collect(),
        objects,
        tasks,
        lingering: s.lingering,
    };
    Ok((j.job, snap, s.applied_seq))
}

// ---- status ----

impl From<ClusterStatus> for pb::ClusterStatus {
    fn from(s: ClusterStatus) -> Self {
        pb::ClusterStatus {
            nodes: s
                .nodes
                .into_iter()
                .map(|n| pb::NodeStatus {
                    id: n.id.0.to_string(),
                    address: n.address,
                    alive: n.alive,
                    total: Some((&n.resources).into()),
                    available: Some((&n.available).into()),
                    last_heartbeat_age_s: n.last_heartbeat_age_s,
                    hostname: n.hostname,
                    pid: n.pid,
                    tasks_running: n.tasks_running,
                    memory_bytes: n.memory_bytes,
                    object_store_bytes: n.object_store_bytes,
                    draining: n.draining,
                    object_address: n.object_address,
                    store: Some(n.store.into()),
                    store_fd: n.store_fd,
                    store_ino: n.store_ino,
                    metrics_address: n.metrics_address,
                })
                .collect(),
            tasks: Some(pb::TaskCounts { queued: s.tasks.queued, running: s.tasks.running, finished: s.tasks.finished, failed: s.tasks.failed }),
            jobs: s.jobs,
            version: s.version,
            actors: s
                .actors
                .into_iter()
                .map(|a| pb::ActorStatus {
                    id: a.id.0,
                    class: a.class,
                    name: a.name,
                    namespace: a.namespace,
                    state: a.state.to_string(),
                    node: a.node.map(|n| n.0.to_string()).unwrap_or_default(),
                    restarts: a.restarts,
                    death: a.death,
                    detached: a.detached,
                    max_task_retries: a.max_task_retries,
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::ClusterStatus> for ClusterStatus {
    type Error = WireError;

    /// The cluster as a head reports it; a node whose id is not a UUID
    /// (a broken head) is an error, not a guess.
    fn try_from(s: pb::ClusterStatus) -> Result<Self, WireError> {
        let t = s.tasks.unwrap_or_default();
        let nodes = s
            .nodes
            .into_iter()
            .map(|n| {
                Ok(NodeStatus {
                    id: NodeId::parse(&n.id).ok_or_else(|| WireError::BadNodeId { field: "a node of the cluster status", value: n.id.clone() })?,
                    address: n.address,
                    alive: n.alive,
                    resources: n.total.as_ref().map(ResourceSet::from).unwrap_or_default(),
                    available: n.available.as_ref().map(ResourceSet::from).unwrap_or_default(),
                    last_heartbeat_age_s: n.last_heartbeat_age_s,
                    hostname: n.hostname,
                    pid: n.pid,
                    tasks_running: n.tasks_running,
                    memory_bytes: n.memory_bytes,
                    object_store_bytes: n.object_store_bytes,
                    draining: n.draining,
                    object_address: n.object_address,
                    store: n.store.map(StoreUsage::from).unwrap_or_default(),
                    store_fd: n.store_fd,
                    store_ino: n.store_ino,
                    metrics_address: n.metrics_address,
                })
            })
            .collect::<Result<_, WireError>>()?;
        Ok(ClusterStatus {
            nodes,
            tasks: TaskCounts { queued: t.queued, running: t.running, finished: t.finished, failed: t.failed },
            jobs: s.jobs,
            version: s.version,
            actors: s
                .actors
                .into_iter()
                .map(|a| ActorStatus {
                    id: ObjectId(a.id),
                    class: a.class,
                    name: a.name,
                    namespace: a.namespace,
                    state: match a.state.as_str() {
                        "alive" => ActorState::Alive,
                        "dead" => ActorState::Dead,
                        _ => ActorState::Pending,
                    },
                    node: NodeId::parse(&a.node),
                    restarts: a.restarts,
                    death: a.death,
                    detached: a.detached,
                    max_task_retries: a.max_task_retries,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_round_trip_and_drop_nonsense() {
        let total = ResourceSet::cpus(2.0).with("gpu", 1.0);
        let back: ResourceSet = (&pb::Resources::from(&total)).into();
        assert_eq!(back, total);
        let bad = pb::Resources { num_cpus: f64::NAN, custom: [("x".to_string(), -1.0), ("y".to_string(), f64::INFINITY)].into_iter().collect() };
        assert_eq!(ResourceSet::from(&bad), ResourceSet::default());
    }

    #[test]
    fn every_failure_kind_round_trips_and_unknown_reads_as_panic() {
        for k in 0..=12 {
            let p = pb::FailureKind::try_from(k).unwrap();
            assert_eq!(pb::FailureKind::from(FailureKind::from(p)), p);
        }
        assert_eq!(kind_from_wire(999), FailureKind::Panicked);
    }

    #[test]
    fn dispatch_and_submit_round_trip() {
        let d = Dispatch {
            task: ObjectId::new(3, 9),
            job: 3,
            func: 1,
            args: vec![Payload::Inline(Bytes::from_static(b"x")), Payload::Stored(StoredRef { id: ObjectId::new(3, 2), size: 5, holders: vec!["h:1".into()] })],
            attempt: 2,
            resources: Some(ResourceSet::cpus(0.5).with("gpu", 1.0)),
            dedicated: true,
            actor: ActorPart::Create { max_concurrency: 4 },
        };
        assert_eq!(Dispatch::from(pb::TaskDispatch::from(d.clone())), d);
        for actor in [ActorPart::None, ActorPart::Call(ObjectId::new(3, 1))] {
            let d = Dispatch { actor, ..d.clone() };
            assert_eq!(Dispatch::from(pb::TaskDispatch::from(d.clone())), d);
        }
        let t = NewTask {
            id: ObjectId::new(1, 4),
            func: 0,
            args: vec![NewArg::Object(ObjectId::new(1, 1))],
            max_retries: Some(2),
            resources: Some(ResourceSet::cpus(2.0)),
            retry_exceptions: Some(true),
            contains: vec![ObjectId::new(2, 7)],
            placement: Placement::Node { node: NodeId::parse("00000000-0000-0000-0000-000000000007").unwrap(), soft: true },
            dedicated: true,
            actor: ActorRole::Create(Box::new(ActorSpec {
                class: "m::Counter".into(),
                name: "c".into(),
                namespace: "ns".into(),
                max_task_retries: 2,
                max_concurrency: 3,
                detached: false,
            })),
        };
        let back = NewTask::from(pb::TaskSubmit::from(t.clone()));
        assert_eq!(back.actor, t.actor);
        let call = NewTask { actor: ActorRole::Call(ObjectId::new(1, 2)), ..t.clone() };
        assert_eq!(NewTask::from(pb::TaskSubmit::from(call)).actor, ActorRole::Call(ObjectId::new(1, 2)));
        assert_eq!(back.contains, t.contains);
        assert_eq!((back.placement, back.dedicated), (t.placement, t.dedicated));
        assert_eq!((back.id, back.func, back.max_retries, back.retry_exceptions), (t.id, t.func, t.max_retries, t.retry_exceptions));
        assert_eq!(back.resources, t.resources);
        assert!(matches!(back.args.as_slice(), [NewArg::Object(o)] if *o == ObjectId::new(1, 1)));
    }

    #[test]
    fn a_put_naming_no_uuid_is_a_typed_error() {
        let p = pb::PutObject { stored: Some(pb::StoredObject::default()), node: "nope".into(), ..Default::default() };
        assert!(matches!(PutValue::try_from(&p), Err(WireError::BadNodeId { .. })));
    }

    #[test]
    fn a_result_without_outcome_reads_as_worker_death() {
        let (id, r) = result_from_wire(pb::TaskResult { task: 7, outcome: None, ..Default::default() });
        assert_eq!(id, ObjectId(7));
        assert_eq!(r.unwrap_err().kind, FailureKind::WorkerDied);
    }
}
