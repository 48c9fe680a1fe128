//! Conversions between generated protobuf types and core types, so the
//! core never sees `pb::*`.

use crate::core::{
    ClusterSnapshot, Dispatch, Failure, FailureKind, FunctionDef, JobSnapshot, NewArg, NewTask, NodeId, Payload, PutValue, SnapshotObject, SnapshotTask,
    SnapshotValue, StoreUsage, StoredRef, TaskId, Value,
};
use bytes::Bytes;
use shoal_proto::pb;
use shoal_proto::resources::ResourceSet;

pub(crate) fn kind_from_pb(k: i32) -> FailureKind {
    use pb::FailureKind as P;
    match P::try_from(k).unwrap_or(P::Panicked) {
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
    }
}

pub(crate) fn kind_to_pb(k: FailureKind) -> pb::FailureKind {
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
    }
}

pub(crate) fn failure_from_pb(f: pb::TaskFailure) -> Failure {
    Failure { kind: kind_from_pb(f.kind), message: f.message, location: f.location, node: f.node, function: f.function, attempts: f.attempts }
}

pub(crate) fn failure_to_pb(f: Failure) -> pb::TaskFailure {
    pb::TaskFailure { kind: kind_to_pb(f.kind) as i32, message: f.message, location: f.location, node: f.node, function: f.function, attempts: f.attempts }
}

pub(crate) fn result_from_pb(r: pb::TaskResult) -> (TaskId, Result<Value, Failure>) {
    let outcome = match r.outcome {
        Some(pb::task_result::Outcome::Value(v)) => Ok(Value::Inline(v)),
        Some(pb::task_result::Outcome::Stored(s)) => Ok(Value::Stored { size: s.size }),
        Some(pb::task_result::Outcome::Failure(f)) => Err(failure_from_pb(f)),
        None => Err(Failure::new(FailureKind::WorkerDied, "worker sent a result without an outcome")),
    };
    (r.task, outcome)
}

fn stored_to_pb(r: StoredRef) -> pb::StoredObject {
    pb::StoredObject { id: r.id, size: r.size, holders: r.holders }
}

pub(crate) fn result_to_pb(task: TaskId, outcome: Result<Payload, Failure>) -> pb::TaskResult {
    pb::TaskResult {
        task,
        outcome: Some(match outcome {
            Ok(Payload::Inline(v)) => pb::task_result::Outcome::Value(v),
            Ok(Payload::Stored(r)) => pb::task_result::Outcome::Stored(stored_to_pb(r)),
            Err(f) => pb::task_result::Outcome::Failure(failure_to_pb(f)),
        }),
    }
}

pub(crate) fn function_from_pb(f: pb::FunctionDef) -> FunctionDef {
    let resources = f.resources.as_ref().map(ResourceSet::from).unwrap_or_else(|| ResourceSet::cpus(1.0));
    FunctionDef { name: f.name, resources, max_retries: f.max_retries }
}

pub(crate) fn function_to_pb(f: &FunctionDef) -> pb::FunctionDef {
    pb::FunctionDef { name: f.name.clone(), resources: Some((&f.resources).into()), max_retries: f.max_retries }
}

pub(crate) fn task_from_pb(t: pb::TaskSubmit) -> NewTask {
    let args = t
        .args
        .into_iter()
        .map(|a| match a.kind {
            Some(pb::arg::Kind::Object(o)) => NewArg::Object(o),
            Some(pb::arg::Kind::Value(v)) => NewArg::Value(v),
            None => NewArg::Value(Bytes::new()),
        })
        .collect();
    NewTask { id: t.id, func: t.func, args, max_retries: t.max_retries }
}

pub(crate) fn task_to_pb(t: NewTask) -> pb::TaskSubmit {
    let args = t
        .args
        .into_iter()
        .map(|a| pb::Arg {
            kind: Some(match a {
                NewArg::Object(o) => pb::arg::Kind::Object(o),
                NewArg::Value(v) => pb::arg::Kind::Value(v),
            }),
        })
        .collect();
    pb::TaskSubmit { id: t.id, func: t.func, args, max_retries: t.max_retries }
}

/// A job snapshot as the head's log stores it.
pub(crate) fn job_snapshot_to_pb(job: u32, s: JobSnapshot, applied_seq: u64) -> pb::JobSnapshot {
    use pb::snapshot_object::Value as V;
    pb::JobSnapshot {
        job: Some(pb::JobStarted { job, binary: s.binary, name: s.name }),
        functions: s.functions.iter().map(function_to_pb).collect(),
        objects: s
            .objects
            .into_iter()
            .map(|o| pb::SnapshotObject {
                id: o.id,
                value: Some(match o.value {
                    SnapshotValue::Inline(b) => V::Inline(b),
                    SnapshotValue::Stored { size, holders } => {
                        V::Stored(pb::StoredObject { id: o.id, size, holders: holders.iter().map(|h| h.0.to_string()).collect() })
                    }
                    SnapshotValue::Failed(f) => V::Failed(failure_to_pb(f)),
                }),
                driver_ref: o.driver_ref,
                lineage: o.lineage.map(task_to_pb),
            })
            .collect(),
        tasks: s.tasks.into_iter().map(|t| pb::SnapshotTask { task: Some(task_to_pb(t.task)), driver_ref: t.driver_ref }).collect(),
        applied_seq,
    }
}

/// A job snapshot from the head's log: `(job, snapshot, applied_seq)`.
pub(crate) fn job_snapshot_from_pb(s: pb::JobSnapshot) -> Option<(u32, JobSnapshot, u64)> {
    use pb::snapshot_object::Value as V;
    let j = s.job?;
    let objects = s
        .objects
        .into_iter()
        .filter_map(|o| {
            let value = match o.value? {
                V::Inline(b) => SnapshotValue::Inline(b),
                V::Stored(st) => SnapshotValue::Stored { size: st.size, holders: st.holders.iter().filter_map(|h| h.parse().ok().map(NodeId)).collect() },
                V::Failed(f) => SnapshotValue::Failed(failure_from_pb(f)),
            };
            Some(SnapshotObject { id: o.id, value, driver_ref: o.driver_ref, lineage: o.lineage.map(task_from_pb) })
        })
        .collect();
    let tasks = s.tasks.into_iter().filter_map(|t| Some(SnapshotTask { task: task_from_pb(t.task?), driver_ref: t.driver_ref })).collect();
    let snap = JobSnapshot { binary: j.binary, name: j.name, functions: s.functions.into_iter().map(function_from_pb).collect(), objects, tasks };
    Some((j.job, snap, s.applied_seq))
}

pub(crate) fn dispatch_to_pb(d: Dispatch) -> pb::TaskDispatch {
    let args = d
        .args
        .into_iter()
        .map(|a| pb::TaskArg {
            kind: Some(match a {
                Payload::Inline(b) => pb::task_arg::Kind::Value(b),
                Payload::Stored(r) => pb::task_arg::Kind::Stored(stored_to_pb(r)),
            }),
        })
        .collect();
    pb::TaskDispatch { task: d.task, job: d.job, func: d.func, args, attempt: d.attempt }
}

/// A driver's put: inline bytes, or a stored object on a named node.
pub(crate) fn put_from_pb(p: &pb::PutObject) -> Result<PutValue, String> {
    match &p.stored {
        None => Ok(PutValue::Inline(p.value.clone())),
        Some(s) => {
            let node = p.node.parse().map_err(|_| format!("put of a stored object names node {:?}, not a UUID", p.node))?;
            Ok(PutValue::Stored { size: s.size, node: NodeId(node) })
        }
    }
}

pub(crate) fn usage_from_pb(u: pb::StoreUsage) -> StoreUsage {
    StoreUsage {
        capacity: u.capacity,
        used: u.used,
        objects: u.objects,
        spilled_bytes: u.spilled_bytes,
        spilled_objects: u.spilled_objects,
        pinned_bytes: u.pinned_bytes,
    }
}

fn usage_to_pb(u: StoreUsage) -> pb::StoreUsage {
    pb::StoreUsage {
        capacity: u.capacity,
        used: u.used,
        objects: u.objects,
        spilled_bytes: u.spilled_bytes,
        spilled_objects: u.spilled_objects,
        pinned_bytes: u.pinned_bytes,
    }
}

/// Where peers reach a worker's object store: the host it names, else the
/// IP the head sees its session come from (else loopback, for a worker in
/// the head's own process).
pub(crate) fn object_address(host: &str, port: u32, peer: &str) -> String {
    if port == 0 {
        return String::new();
    }
    let host = if !host.is_empty() {
        if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() }
    } else {
        let ip = peer.parse::<std::net::SocketAddr>().map(|a| a.ip()).or_else(|_| peer.parse::<std::net::IpAddr>());
        match ip {
            Ok(ip) if ip.is_ipv6() => format!("[{ip}]"),
            Ok(ip) => ip.to_string(),
            Err(_) => "127.0.0.1".to_string(),
        }
    };
    format!("{host}:{port}")
}

pub(crate) fn snapshot_to_pb(s: ClusterSnapshot) -> pb::ClusterStatus {
    pb::ClusterStatus {
        nodes: s
            .nodes
            .into_iter()
            .map(|n| pb::NodeStatus {
                id: n.id.0.to_string(),
                address: n.address,
                alive: n.alive,
                total: Some((&n.total).into()),
                available: Some((&n.available).into()),
                last_heartbeat_age_s: n.last_heartbeat_age_s,
                hostname: n.hostname,
                pid: n.pid,
                tasks_running: n.tasks_running,
                memory_bytes: n.memory_bytes,
                object_store_bytes: n.object_store_bytes,
                draining: n.draining,
                object_address: n.object_address,
                store: Some(usage_to_pb(n.store)),
                store_fd: n.store_file.0,
                store_ino: n.store_file.1,
            })
            .collect(),
        tasks: Some(pb::TaskCounts { queued: s.tasks.queued, running: s.tasks.running, finished: s.tasks.finished, failed: s.tasks.failed }),
        jobs: s.jobs,
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::object_address;

    #[test]
    fn object_addresses_use_the_named_host_else_the_peer_ip() {
        assert_eq!(object_address("", 7000, "10.1.2.3"), "10.1.2.3:7000");
        assert_eq!(object_address("", 7000, "10.1.2.3:5555"), "10.1.2.3:7000");
        assert_eq!(object_address("", 7000, "::1"), "[::1]:7000");
        assert_eq!(object_address("node7.example", 7000, "10.1.2.3"), "node7.example:7000");
        assert_eq!(object_address("fe80::1", 7000, ""), "[fe80::1]:7000");
        assert_eq!(object_address("", 7000, ""), "127.0.0.1:7000", "a worker in the head's process");
        assert_eq!(object_address("", 0, "10.1.2.3"), "", "no store service");
    }
}
