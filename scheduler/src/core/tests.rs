//! Unit tests of the scheduling core: no sockets, no clock, a recording
//! outbox. Each test ends by checking nothing unexpected was sent.

use super::*;

#[derive(Default)]
struct Rec {
    dispatched: Vec<(NodeId, Dispatch)>,
    results: Vec<(JobId, TaskId, Result<Payload, Failure>)>,
    freed: Vec<(NodeId, ObjectId)>,
    cancels: Vec<(NodeId, TaskId)>,
    job_infos: Vec<(NodeId, JobId, u32, usize)>,
    finished_jobs: Vec<(NodeId, JobId)>,
    disconnected: Vec<NodeId>,
    drained: Vec<NodeId>,
    items: Vec<(JobId, TaskId, u64, ObjectId)>,
    owned_items: usize,
    acks: Vec<(JobId, TaskId, u64)>,
    kept: Vec<(NodeId, ObjectId)>,
}

impl Outbox for Rec {
    fn job_info(&mut self, node: NodeId, job: JobId, _binary: &str, first: u32, functions: &[FunctionDef]) {
        self.job_infos.push((node, job, first, functions.len()));
    }
    fn dispatch(&mut self, node: NodeId, task: Dispatch) {
        self.dispatched.push((node, task));
    }
    fn cancel(&mut self, node: NodeId, task: TaskId) {
        self.cancels.push((node, task));
    }
    fn job_finished(&mut self, node: NodeId, job: JobId) {
        self.finished_jobs.push((node, job));
    }
    fn result(&mut self, job: JobId, task: TaskId, outcome: Result<Payload, Failure>) {
        self.results.push((job, task, outcome));
    }
    fn free_object(&mut self, node: NodeId, id: ObjectId) {
        self.freed.push((node, id));
    }
    fn disconnect(&mut self, node: NodeId, _epoch: u64) {
        self.disconnected.push(node);
    }
    fn drain(&mut self, node: NodeId) {
        self.drained.push(node);
    }
    fn generator_item(&mut self, job: JobId, task: TaskId, index: u64, object: ObjectId, _value: Result<Payload, Failure>, owned: bool) {
        self.items.push((job, task, index, object));
        self.owned_items += owned as usize;
    }
    fn generator_ack(&mut self, job: JobId, task: TaskId, consumed: u64) {
        self.acks.push((job, task, consumed));
    }
    fn keep_object(&mut self, node: NodeId, id: ObjectId) {
        self.kept.push((node, id));
    }
}

impl Rec {
    fn take_dispatched(&mut self) -> Vec<(NodeId, Dispatch)> {
        std::mem::take(&mut self.dispatched)
    }
    fn assert_quiet(&self) {
        assert!(self.dispatched.is_empty(), "unexpected dispatches: {:?}", self.dispatched);
        assert!(self.results.is_empty(), "unexpected results: {:?}", self.results);
        assert!(self.cancels.is_empty(), "unexpected cancels: {:?}", self.cancels);
    }
}

fn t0() -> Instant {
    Instant::now()
}

fn node(core: &mut Core, res: ResourceSet, now: Instant, out: &mut Rec) -> (NodeId, u64) {
    core.node_registered(NodeRegistration { resources: res, address: "10.0.0.1".into(), ..Default::default() }, now, out)
}

fn job_with(core: &mut Core, funcs: &[(&str, ResourceSet, u32)]) -> JobId {
    let job = core.job_connected("ab".repeat(32), "test".into()).unwrap();
    let defs = funcs.iter().map(|(n, r, m)| FunctionDef { name: n.to_string(), resources: r.clone(), max_retries: *m, retry_exceptions: false }).collect();
    core.define_functions(job, 0, defs);
    job
}

fn task(job: JobId, seq: u64, func: u32, args: Vec<NewArg>) -> NewTask {
    NewTask {
        id: ObjectId::new(job, seq),
        func,
        args,
        max_retries: None,
        resources: None,
        retry_exceptions: None,
        contains: Vec::new(),
        placement: Placement::Any,
        dedicated: false,
        actor: Default::default(),
    }
}

fn val(x: &'static [u8]) -> NewArg {
    NewArg::Value(Bytes::from_static(x))
}

fn ok(b: &'static [u8]) -> Result<Value, Failure> {
    Ok(Value::Inline(Bytes::from_static(b)))
}

fn inline(b: &'static [u8]) -> Payload {
    Payload::Inline(Bytes::from_static(b))
}

#[test]
fn heartbeat_timeout_marks_dead_and_reregistration_revives() {
    let mut core = Core::new(CoreConfig { heartbeat_timeout: Duration::from_secs(3), ..Default::default() });
    let mut out = Rec::default();
    let now = t0();
    let (a, ea) = node(&mut core, ResourceSet::cpus(2.0), now, &mut out);
    let (b, _) = node(&mut core, ResourceSet::cpus(2.0), now, &mut out);
    core.node_heartbeat(a, ea, now + Duration::from_secs(2));
    core.tick(now + Duration::from_secs(4), &mut out);
    let snap = core.snapshot(now + Duration::from_secs(4));
    let alive: Vec<_> = snap.nodes.iter().map(|n| (n.id, n.alive)).collect();
    assert!(alive.contains(&(a, true)));
    assert!(alive.contains(&(b, false)));
    assert_eq!(out.disconnected, vec![b], "the silent node's session is ended so it can re-register");
    let (b2, eb2) = core.node_registered(
        NodeRegistration { node_id: Some(b), resources: ResourceSet::cpus(2.0), ..Default::default() },
        now + Duration::from_secs(5),
        &mut out,
    );
    assert_eq!(b2, b);
    assert_eq!(eb2, 2, "a new session gets a new epoch");
    assert!(core.snapshot(now).nodes.iter().all(|n| n.alive));
    out.assert_quiet();
}

#[test]
fn fifo_dispatch_respects_credits_and_sends_job_info_once() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let (a, ea) = node(&mut core, ResourceSet::cpus(2.0), now, &mut out);
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 0)]);
    core.submit(job, (1..=5).map(|i| task(job, i, 0, vec![val(b"x")])).collect(), &mut out);
    core.schedule(&mut out);
    out.assert_quiet();
    core.node_credits(a, ea, 3, now);
    core.schedule(&mut out);
    let d = out.take_dispatched();
    assert_eq!(d.iter().map(|(_, t)| t.task.seq()).collect::<Vec<_>>(), vec![1, 2, 3], "FIFO order");
    assert_eq!(out.job_infos, vec![(a, job, 0, 1)], "job info sent once, before the first task");
    assert_eq!(core.snapshot(now).tasks, TaskCounts { queued: 2, running: 3, finished: 0, failed: 0 });
    core.tasks_finished(a, ea, vec![(ObjectId::new(job, 1), ok(b"r1"))], now, &mut out);
    assert_eq!(out.results, vec![(job, ObjectId::new(job, 1), Ok(inline(b"r1")))]);
    out.results.clear();
    core.node_credits(a, ea, 10, now);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched().len(), 2);
    out.assert_quiet();
}

#[test]
fn dag_waits_for_inputs_and_resolves_them_on_the_head() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let (a, ea) = node(&mut core, ResourceSet::cpus(1.0), now, &mut out);
    core.node_credits(a, ea, 100, now);
    let job = job_with(&mut core, &[("leaf", ResourceSet::cpus(1.0), 0), ("add", ResourceSet::cpus(1.0), 0)]);
    let (l1, l2) = (ObjectId::new(job, 1), ObjectId::new(job, 2));
    core.submit(job, vec![task(job, 1, 0, vec![]), task(job, 2, 0, vec![]), task(job, 3, 1, vec![NewArg::Object(l1), NewArg::Object(l2)])], &mut out);
    core.schedule(&mut out);
    let d = out.take_dispatched();
    assert_eq!(d.len(), 2, "the add waits for both leaves");
    core.tasks_finished(a, ea, vec![(l1, ok(b"A"))], now, &mut out);
    core.schedule(&mut out);
    assert!(out.take_dispatched().is_empty());
    core.tasks_finished(a, ea, vec![(l2, ok(b"B"))], now, &mut out);
    core.schedule(&mut out);
    let d = out.take_dispatched();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].1.args, vec![inline(b"A"), inline(b"B")]);
    // The driver drops the leaves; they stay until the add finishes.
    core.release(job, &[l1, l2], &mut out);
    assert_eq!(core.object_count(), 2, "the pending add has no entry yet");
    core.tasks_finished(a, ea, vec![(ObjectId::new(job, 3), ok(b"AB"))], now, &mut out);
    assert_eq!(core.object_count(), 1, "inputs freed once nothing needs them");
    core.release(job, &[ObjectId::new(job, 3)], &mut out);
    assert_eq!(core.object_count(), 0);
    assert_eq!(core.task_count(), 0);
}

#[test]
fn failure_propagates_through_the_graph_with_its_cause() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let (a, ea) = node(&mut core, ResourceSet::cpus(1.0), now, &mut out);
    core.node_credits(a, ea, 100, now);
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 0)]);
    let (x, y, z) = (ObjectId::new(job, 1), ObjectId::new(job, 2), ObjectId::new(job, 3));
    core.submit(job, vec![task(job, 1, 0, vec![]), task(job, 2, 0, vec![NewArg::Object(x)]), task(job, 3, 0, vec![NewArg::Object(y)])], &mut out);
    core.schedule(&mut out);
    out.take_dispatched();
    let mut boom = Failure::new(FailureKind::Panicked, "boom");
    boom.location = "src/lib.rs:3:5".into();
    core.tasks_finished(a, ea, vec![(x, Err(boom))], now, &mut out);
    let got: Vec<_> = out.results.iter().map(|(_, id, r)| (*id, r.clone().unwrap_err().message)).collect();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|(_, m)| m == "boom"), "{got:?}");
    assert_eq!(got.iter().map(|(id, _)| *id).collect::<HashSet<_>>(), [x, y, z].into_iter().collect());
    assert_eq!(core.snapshot(now).tasks.failed, 3);
    // A task submitted later on the failed object fails at once.
    out.results.clear();
    core.submit(job, vec![task(job, 4, 0, vec![NewArg::Object(x)])], &mut out);
    assert_eq!(out.results.len(), 1);
    assert_eq!(out.results[0].2.clone().unwrap_err().kind, FailureKind::Panicked);
}

#[test]
fn dead_node_tasks_are_retried_elsewhere_then_fail_past_max_retries() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let (a, ea) = node(&mut core, ResourceSet::cpus(1.0), now, &mut out);
    let (b, eb) = node(&mut core, ResourceSet::cpus(1.0), now, &mut out);
    let job = job_with(&mut core, &[("once", ResourceSet::cpus(1.0), 1)]);
    core.node_credits(a, ea, 1, now);
    core.submit(job, vec![task(job, 1, 0, vec![])], &mut out);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched()[0].0, a);
    core.node_disconnected(a, ea, &mut out);
    core.node_credits(b, eb, 1, now);
    core.schedule(&mut out);
    let d = out.take_dispatched();
    assert_eq!((d[0].0, d[0].1.attempt), (b, 2), "retried on the other node");
    // Results from the dead session are ignored.
    core.tasks_finished(a, ea, vec![(ObjectId::new(job, 1), ok(b"stale"))], now, &mut out);
    assert!(out.results.is_empty());
    core.tasks_finished(b, eb, vec![(ObjectId::new(job, 1), Err(Failure::new(FailureKind::WorkerDied, "executor killed")))], now, &mut out);
    let (_, _, r) = out.results.pop().unwrap();
    let f = r.unwrap_err();
    assert_eq!((f.kind, f.attempts, f.function.as_str()), (FailureKind::WorkerDied, 2, "once"));
    assert!(
        f.message.contains("executor killed") && f.message.contains(&format!("attempt 1 on node {a}: the node died")),
        "the history names each attempt: {}",
        f.message
    );
    out.assert_quiet();
}

#[test]
fn resources_decide_placement_and_impossible_tasks_fail_clearly() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let (plain, ep) = node(&mut core, ResourceSet::cpus(4.0), now, &mut out);
    let (gpu, eg) = node(&mut core, ResourceSet::cpus(1.0).with("gpu", 1.0), now, &mut out);
    core.node_credits(plain, ep, 10, now);
    core.node_credits(gpu, eg, 10, now);
    let job = job_with(&mut core, &[("g", ResourceSet::cpus(1.0).with("gpu", 1.0), 0), ("g9", ResourceSet::cpus(1.0).with("gpu", 9.0), 0)]);
    core.submit(job, (1..=3).map(|i| task(job, i, 0, vec![])).collect(), &mut out);
    core.submit(job, vec![task(job, 4, 1, vec![])], &mut out);
    core.schedule(&mut out);
    let d = out.take_dispatched();
    assert_eq!(d.len(), 3);
    assert!(d.iter().all(|(n, _)| *n == gpu), "gpu tasks only on the gpu node");
    let (_, id, r) = out.results.pop().unwrap();
    assert_eq!(id, ObjectId::new(job, 4));
    let f = r.unwrap_err();
    assert_eq!(f.kind, FailureKind::Unschedulable);
    assert!(f.message.contains("gpu=9"), "{}", f.message);
}

#[test]
fn tasks_wait_when_no_node_is_alive_yet() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 0)]);
    core.submit(job, vec![task(job, 1, 0, vec![])], &mut out);
    core.schedule(&mut out);
    out.assert_quiet();
    let (a, ea) = node(&mut core, ResourceSet::cpus(1.0), now, &mut out);
    core.node_credits(a, ea, 1, now);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched().len(), 1);
}

#[test]
fn cancel_queued_never_runs_and_cancel_running_asks_the_node() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let (a, ea) = node(&mut core, ResourceSet::cpus(1.0), now, &mut out);
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 3)]);
    core.node_credits(a, ea, 1, now);
    core.submit(job, vec![task(job, 1, 0, vec![]), task(job, 2, 0, vec![])], &mut out);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched().len(), 1);
    let (running, queued) = (ObjectId::new(job, 1), ObjectId::new(job, 2));
    core.cancel(job, &[queued, running], &mut out);
    assert_eq!(out.results.len(), 1);
    assert_eq!(out.results[0].2.clone().unwrap_err().kind, FailureKind::Cancelled);
    assert_eq!(out.cancels, vec![(a, running)]);
    out.results.clear();
    out.cancels.clear();
    core.node_credits(a, ea, 5, now);
    core.schedule(&mut out);
    // A node dying while a cancel is pending does not resurrect the task.
    core.node_disconnected(a, ea, &mut out);
    assert_eq!(out.results.pop().unwrap().2.unwrap_err().kind, FailureKind::Cancelled);
    out.assert_quiet();
}

#[test]
fn queued_tasks_that_went_leave_no_ids_in_the_ready_queue() {
    // No node, so no scheduling pass ever runs to skip them: a job of
    // many queued tasks that ended, and a cancelled batch, must not leave
    // their ids (memory the head never gets back) behind.
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 0)]);
    let other = job_with(&mut core, &[("g", ResourceSet::cpus(1.0), 0)]);
    core.submit(other, (1..=10).map(|s| task(other, s, 0, vec![])).collect(), &mut out);
    core.submit(job, (1..=20_000).map(|s| task(job, s, 0, vec![])).collect(), &mut out);
    assert_eq!(core.ready.len(), 20_010);
    core.job_disconnected(job, &mut out);
    assert_eq!(core.ready.iter().copied().collect::<Vec<_>>(), (1..=10).map(|s| ObjectId::new(other, s)).collect::<Vec<_>>());
    assert!(core.ready.capacity() < 20_000, "the queue gave its room back: {}", core.ready.capacity());
    core.submit(other, (11..=10_010).map(|s| task(other, s, 0, vec![])).collect(), &mut out);
    let cancelled: Vec<TaskId> = (11..=9_010).map(|s| ObjectId::new(other, s)).collect();
    core.cancel(other, &cancelled, &mut out);
    assert_eq!(core.ready.len(), 1_010, "the 10 first and the 1,000 not cancelled stay, in order");
    assert!(core.ready.iter().copied().eq((1..=10).chain(9_011..=10_010).map(|s| ObjectId::new(other, s))));
    assert_eq!(core.snapshot(t0()).tasks.queued, 1_010);
    // A few stale ids are left for the pass to skip, not compacted each time.
    core.cancel(other, &[ObjectId::new(other, 1)], &mut out);
    assert_eq!(core.ready.len(), 1_010);
}

#[test]
fn job_disconnect_drops_its_work_and_frees_executors() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let (a, ea) = node(&mut core, ResourceSet::cpus(1.0), now, &mut out);
    core.node_credits(a, ea, 1, now);
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 0)]);
    let other = job_with(&mut core, &[("g", ResourceSet::cpus(1.0), 0)]);
    core.submit(job, vec![task(job, 1, 0, vec![]), task(job, 2, 0, vec![])], &mut out);
    core.submit(other, vec![task(other, 1, 0, vec![])], &mut out);
    core.schedule(&mut out);
    out.take_dispatched();
    core.job_disconnected(job, &mut out);
    assert_eq!(out.cancels, vec![(a, ObjectId::new(job, 1))]);
    assert_eq!(out.finished_jobs, vec![(a, job)]);
    assert_eq!(core.snapshot(now).tasks, TaskCounts { queued: 1, running: 0, finished: 0, failed: 0 });
    assert_eq!(core.task_count(), 1, "the other job's task is untouched");
    assert_eq!(core.object_count(), 0, "the job's objects are gone");
    // The other job proceeds.
    core.node_credits(a, ea, 1, now);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched()[0].1.job, other);
}

#[test]
fn foreign_ids_and_unknown_functions_are_refused_without_panicking() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 0)]);
    // A task with another job's id is ignored.
    core.submit(
        job,
        vec![NewTask {
            id: ObjectId::new(job + 1, 1),
            func: 0,
            args: vec![],
            max_retries: None,
            resources: None,
            retry_exceptions: None,
            contains: Vec::new(),
            placement: Placement::Any,
            dedicated: false,
            actor: Default::default(),
        }],
        &mut out,
    );
    assert_eq!(core.task_count(), 0);
    // An undefined function fails the task.
    core.submit(job, vec![task(job, 1, 7, vec![])], &mut out);
    assert_eq!(out.results.pop().unwrap().2.unwrap_err().kind, FailureKind::FunctionNotFound);
    // A reference to an unknown object fails with ObjectLost.
    core.submit(job, vec![task(job, 2, 0, vec![NewArg::Object(ObjectId::new(job, 99))])], &mut out);
    assert_eq!(out.results.pop().unwrap().2.unwrap_err().kind, FailureKind::ObjectLost);
    // Results for unknown tasks or nodes are ignored.
    core.tasks_finished(NodeId::random(), 1, vec![(ObjectId(42), ok(b""))], Instant::now(), &mut out);
    core.release(job, &[ObjectId(12345)], &mut out);
    core.cancel(job, &[ObjectId(777)], &mut out);
    out.assert_quiet();
}

#[test]
fn put_objects_serve_as_arguments() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let (a, ea) = node(&mut core, ResourceSet::cpus(1.0), now, &mut out);
    core.node_credits(a, ea, 1, now);
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 0)]);
    let p = ObjectId::new(job, 1);
    core.put(job, p, PutValue::Inline(Bytes::from_static(b"big")), &mut out);
    core.submit(job, vec![task(job, 2, 0, vec![NewArg::Object(p)])], &mut out);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched()[0].1.args, vec![inline(b"big")]);
}

#[test]
fn results_nobody_references_are_not_kept() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let (a, ea) = node(&mut core, ResourceSet::cpus(1.0), now, &mut out);
    core.node_credits(a, ea, 10, now);
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 0)]);
    let (x, y) = (ObjectId::new(job, 1), ObjectId::new(job, 2));
    core.submit(job, vec![task(job, 1, 0, vec![]), task(job, 2, 0, vec![])], &mut out);
    core.schedule(&mut out);
    out.take_dispatched();
    // The driver drops x's ref while x runs: its result is not delivered or kept.
    core.release(job, &[x], &mut out);
    core.tasks_finished(a, ea, vec![(x, ok(b"x")), (y, ok(b"y"))], now, &mut out);
    assert_eq!(out.results.iter().map(|(_, id, _)| *id).collect::<Vec<_>>(), vec![y]);
    assert_eq!(core.object_count(), 1, "only y, which the driver holds");
    assert_eq!(core.task_count(), 0);
}

#[test]
fn idle_nodes_get_work_first_then_credits_fill_node_by_node() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let nodes: Vec<(NodeId, u64)> = (0..3).map(|_| node(&mut core, ResourceSet::cpus(1.0), now, &mut out)).collect();
    for (id, e) in &nodes {
        core.node_credits(*id, *e, 10, now);
    }
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 0)]);
    core.submit(job, (1..=30).map(|i| task(job, i, 0, vec![])).collect(), &mut out);
    core.schedule(&mut out);
    let d = out.take_dispatched();
    assert_eq!(d.len(), 30);
    let first: HashSet<NodeId> = d[..3].iter().map(|(n, _)| *n).collect();
    assert_eq!(first.len(), 3, "each idle node gets one of the first tasks");
    // The rest come in runs: one node at a time until its credits are used.
    let runs = d[3..].windows(2).filter(|w| w[0].0 != w[1].0).count() + 1;
    assert_eq!(runs, 3, "batched per node, not scattered: {:?}", d.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>());
    for (id, _) in &nodes {
        assert_eq!(d.iter().filter(|(n, _)| n == id).count(), 10, "credits bound each node");
    }
}

#[test]
fn a_drained_node_gets_no_new_tasks_and_keeps_its_running_ones() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let (a, ea) = node(&mut core, ResourceSet::cpus(1.0), now, &mut out);
    let (b, eb) = node(&mut core, ResourceSet::cpus(1.0), now, &mut out);
    core.node_credits(a, ea, 5, now);
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 0)]);
    core.submit(job, vec![task(job, 1, 0, vec![])], &mut out);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched()[0].0, a);
    core.drain(a, &mut out).unwrap();
    assert_eq!(out.drained, vec![a]);
    assert!(core.snapshot(now).nodes.iter().any(|n| n.id == a && n.alive && n.draining));
    core.node_credits(a, ea, 5, now);
    core.submit(job, (2..=4).map(|i| task(job, i, 0, vec![])).collect(), &mut out);
    core.schedule(&mut out);
    assert!(out.take_dispatched().is_empty(), "nothing new for the drained node, even with credits");
    core.node_credits(b, eb, 5, now);
    core.schedule(&mut out);
    assert!(out.take_dispatched().iter().all(|(n, _)| *n == b));
    // Its running task still completes normally.
    core.tasks_finished(a, ea, vec![(ObjectId::new(job, 1), ok(b"done"))], now, &mut out);
    assert_eq!(out.results.len(), 1);
    assert!(core.drain(NodeId::random(), &mut out).is_err());
}

// ---------------------------------------------------------------- stored objects

fn node_at(core: &mut Core, addr: &str, now: Instant, out: &mut Rec) -> (NodeId, u64) {
    let reg = NodeRegistration { resources: ResourceSet::cpus(1.0), address: addr.into(), object_address: format!("{addr}:7000"), ..Default::default() };
    core.node_registered(reg, now, out)
}

#[test]
fn stored_results_are_passed_by_location_and_tasks_go_where_the_data_is() {
    let now = t0();
    let mut out = Rec::default();
    let mut core = Core::new(CoreConfig::default());
    let (a, ea) = node_at(&mut core, "10.0.0.1", now, &mut out);
    let (b, eb) = node_at(&mut core, "10.0.0.2", now, &mut out);
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 3)]);
    let big = ObjectId::new(job, 1);
    core.put(job, big, PutValue::Stored { size: 1 << 28, node: b }, &mut out);
    // Node a asks first, but b holds the 256 MiB input.
    core.node_credits(a, ea, 4, now);
    core.node_credits(b, eb, 4, now);
    core.submit(job, vec![task(job, 2, 0, vec![NewArg::Object(big)])], &mut out);
    core.schedule(&mut out);
    let d = out.take_dispatched();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].0, b, "placed on the node holding the data");
    assert_eq!(d[0].1.args, vec![Payload::Stored(StoredRef { id: big, size: 1 << 28, holders: vec!["10.0.0.2:7000".into()] })]);
    // Its result is stored on b too; the driver learns where.
    core.tasks_finished(b, eb, vec![(ObjectId::new(job, 2), Ok(Value::Stored { size: 1 << 20 }))], now, &mut out);
    let r = out.results.pop().unwrap();
    assert_eq!(r.2, Ok(Payload::Stored(StoredRef { id: ObjectId::new(job, 2), size: 1 << 20, holders: vec!["10.0.0.2:7000".into()] })));
    out.assert_quiet();
}

#[test]
fn readers_of_an_object_with_several_copies_spread_over_its_holders() {
    let now = t0();
    let mut out = Rec::default();
    let mut core = Core::new(CoreConfig::default());
    let (a, _) = node_at(&mut core, "10.0.0.1", now, &mut out);
    let (b, eb) = node_at(&mut core, "10.0.0.2", now, &mut out);
    let (c, ec) = node_at(&mut core, "10.0.0.3", now, &mut out);
    let readers: Vec<(NodeId, u64)> = (0..6).map(|i| node_at(&mut core, &format!("10.0.1.{i}"), now, &mut out)).collect();
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 3)]);
    let big = ObjectId::new(job, 1);
    core.put(job, big, PutValue::Stored { size: 1 << 28, node: a }, &mut out);
    core.object_copied(b, eb, big, &mut out);
    core.object_copied(c, ec, big, &mut out);
    // Only the six nodes without a copy take work, one task each.
    for (n, e) in &readers {
        core.node_credits(*n, *e, 1, now);
    }
    let tasks = (0..6).map(|i| task(job, 2 + i, 0, vec![NewArg::Object(big)])).collect();
    core.submit(job, tasks, &mut out);
    core.schedule(&mut out);
    let sent = out.take_dispatched();
    assert_eq!(sent.len(), 6);
    let mut first = std::collections::BTreeMap::<String, usize>::new();
    for (node, t) in &sent {
        assert!(readers.iter().any(|(r, _)| r == node));
        let [Payload::Stored(r)] = t.args.as_slice() else { panic!("{:?}", t.args) };
        let mut all = r.holders.clone();
        all.sort();
        assert_eq!(all, ["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"], "every holder, once");
        *first.entry(r.holders[0].clone()).or_default() += 1;
    }
    assert_eq!(first.len(), 3, "each holder serves some readers first: {first:?}");
    assert!(first.values().all(|n| *n == 2), "two each: {first:?}");
    // A driver gets the first copy first.
    let (d, ed) = readers[0];
    let t = sent.iter().find(|(n, _)| *n == d).map(|(_, t)| t.task).unwrap();
    core.tasks_finished(d, ed, vec![(t, Ok(Value::Stored { size: 1 << 20 }))], now, &mut out);
    let r = out.results.pop().unwrap();
    assert_eq!(r.2, Ok(Payload::Stored(StoredRef { id: t, size: 1 << 20, holders: vec!["10.0.1.0:7000".into()] })));
}

/// Eight nodes read one object at once: they do not all pull from the
/// node that made it; some are sent to copies still coming (listed first,
/// the finished copy after them, for when that fails), and a copy that
/// arrives serves the next readers as a finished one.
#[test]
fn readers_at_once_pull_from_each_other_in_a_tree() {
    let now = t0();
    let mut out = Rec::default();
    let mut core = Core::new(CoreConfig::default());
    let (a, _) = node_at(&mut core, "10.0.0.1", now, &mut out);
    let readers: Vec<(NodeId, u64)> = (0..8).map(|i| node_at(&mut core, &format!("10.0.1.{i}"), now, &mut out)).collect();
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 3)]);
    let big = ObjectId::new(job, 1);
    core.put(job, big, PutValue::Stored { size: 1 << 30, node: a }, &mut out);
    for (n, e) in &readers {
        core.node_credits(*n, *e, 1, now);
    }
    core.submit(job, (0..8).map(|i| task(job, 2 + i, 0, vec![NewArg::Object(big)])).collect(), &mut out);
    core.schedule(&mut out);
    let sent = out.take_dispatched();
    assert_eq!(sent.len(), 8);
    let firsts: Vec<String> = sent.iter().map(|(_, t)| if let [Payload::Stored(r)] = t.args.as_slice() { r.holders[0].clone() } else { panic!() }).collect();
    let from_source = firsts.iter().filter(|h| *h == "10.0.0.1:7000").count();
    assert!(from_source <= 4, "the source serves half at most: {firsts:?}");
    for (n, t) in &sent {
        let [Payload::Stored(r)] = t.args.as_slice() else { panic!() };
        assert!(r.holders.iter().any(|h| h == "10.0.0.1:7000"), "the finished copy is always listed: {:?}", r.holders);
        assert!(!r.holders.contains(&core.nodes[n].info.object_address), "a reader is never sent to itself: {:?}", r.holders);
    }
    // The first reader's copy arrives, then its task ends: a new reader
    // elsewhere is sent to it like to the source.
    let (r0, e0) = readers[0];
    core.object_copied(r0, e0, big, &mut out);
    let t0_task = sent.iter().find(|(n, _)| *n == r0).map(|(_, t)| t.task).unwrap();
    core.tasks_finished(r0, e0, vec![(t0_task, Ok(Value::Inline(bytes::Bytes::from_static(b"x"))))], now, &mut out);
    let ObjectState::Stored { holders, .. } = &core.objects[&big].state else { panic!() };
    assert!(holders.contains(&r0));
}

#[test]
fn released_stored_objects_are_freed_on_every_holder() {
    let now = t0();
    let mut out = Rec::default();
    let mut core = Core::new(CoreConfig::default());
    let (a, ea) = node_at(&mut core, "10.0.0.1", now, &mut out);
    let (b, _) = node_at(&mut core, "10.0.0.2", now, &mut out);
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 3)]);
    let big = ObjectId::new(job, 1);
    core.put(job, big, PutValue::Stored { size: 1000, node: b }, &mut out);
    core.object_copied(a, ea, big, &mut out);
    core.release(job, &[big], &mut out);
    out.freed.sort();
    let mut want = vec![(a, big), (b, big)];
    want.sort();
    assert_eq!(out.freed, want);
    assert_eq!(core.object_count(), 0);
    // A copy reported after the object is gone is freed at once.
    out.freed.clear();
    core.object_copied(a, ea, big, &mut out);
    assert_eq!(out.freed, vec![(a, big)]);
}

#[test]
fn unreferenced_stored_result_is_freed_and_a_late_duplicate_too() {
    let now = t0();
    let mut out = Rec::default();
    let mut core = Core::new(CoreConfig::default());
    let (a, ea) = node_at(&mut core, "10.0.0.1", now, &mut out);
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 3)]);
    core.node_credits(a, ea, 4, now);
    let t = ObjectId::new(job, 1);
    core.submit(job, vec![task(job, 1, 0, vec![])], &mut out);
    core.schedule(&mut out);
    out.take_dispatched();
    core.release(job, &[t], &mut out);
    core.tasks_finished(a, ea, vec![(t, Ok(Value::Stored { size: 5 }))], now, &mut out);
    assert_eq!(out.freed, vec![(a, t)], "the driver dropped the ref: nobody needs the stored result");
    out.freed.clear();
    core.tasks_finished(a, ea, vec![(t, Ok(Value::Stored { size: 5 }))], now, &mut out);
    assert_eq!(out.freed, vec![(a, t)], "a duplicate is freed, not recorded");
}

#[test]
fn an_object_whose_only_holder_died_fails_its_consumers_with_object_lost() {
    let now = t0();
    let mut out = Rec::default();
    let mut core = Core::new(CoreConfig::default());
    let (a, ea) = node_at(&mut core, "10.0.0.1", now, &mut out);
    let (b, _) = node_at(&mut core, "10.0.0.2", now, &mut out);
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 3)]);
    let big = ObjectId::new(job, 1);
    core.put(job, big, PutValue::Stored { size: 1000, node: b }, &mut out);
    core.node_disconnected(b, 1, &mut out);
    core.node_credits(a, ea, 4, now);
    core.submit(job, vec![task(job, 2, 0, vec![NewArg::Object(big)])], &mut out);
    core.schedule(&mut out);
    assert!(out.dispatched.is_empty());
    let (_, id, r) = out.results.pop().unwrap();
    assert_eq!(id, ObjectId::new(job, 2));
    let f = r.unwrap_err();
    assert_eq!(f.kind, FailureKind::ObjectLost);
    assert!(f.message.contains(&big.to_string()), "{}", f.message);
    // The driver was told first that its put is gone, and why.
    let (_, id, r) = out.results.pop().unwrap();
    assert_eq!(id, big);
    let f = r.unwrap_err();
    assert_eq!(f.kind, FailureKind::ObjectLost);
    assert!(f.message.contains("cannot be rebuilt") && f.message.contains("put by the driver"), "{}", f.message);
    out.assert_quiet();
}

// ---------------------------------------------------------------- lineage

fn two_nodes(core: &mut Core, out: &mut Rec, now: Instant) -> ((NodeId, u64), (NodeId, u64)) {
    let a = node_at(core, "10.0.0.1", now, out);
    let b = node_at(core, "10.0.0.2", now, out);
    (a, b)
}

/// Runs `t` on `node` (one credit), which stores its 10-byte result.
fn stored_on(core: &mut Core, out: &mut Rec, (node, epoch): (NodeId, u64), t: NewTask, now: Instant) {
    let id = t.id;
    core.node_credits(node, epoch, 1, now);
    core.submit(id.job(), vec![t], out);
    core.schedule(out);
    out.take_dispatched();
    core.tasks_finished(node, epoch, vec![(id, Ok(Value::Stored { size: 10 }))], now, out);
}

/// Task 1 (`produce`) stored its result on node a only; its consumer,
/// task 2 (`consume`), went to b (a had no credits) and pulls from a;
/// then a dies. Returns the core, the outbox, the time, b and the job.
fn consumer_on_b_when_its_input_dies_with_a() -> (Core, Rec, Instant, (NodeId, u64), JobId) {
    let now = t0();
    let mut out = Rec::default();
    let mut core = Core::new(CoreConfig::default());
    let ((a, ea), (b, eb)) = two_nodes(&mut core, &mut out, now);
    let job = job_with(&mut core, &[("produce", ResourceSet::cpus(1.0), 3), ("consume", ResourceSet::cpus(1.0), 3)]);
    let big = ObjectId::new(job, 1);
    stored_on(&mut core, &mut out, (a, ea), task(job, 1, 0, vec![]), now);
    out.results.clear();
    core.node_credits(b, eb, 1, now);
    core.submit(job, vec![task(job, 2, 1, vec![NewArg::Object(big)])], &mut out);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched()[0].0, b);
    core.node_disconnected(a, ea, &mut out);
    (core, out, now, (b, eb), job)
}

#[test]
fn a_lost_intermediate_object_is_rebuilt_and_its_consumer_still_runs() {
    let now = t0();
    let mut out = Rec::default();
    let mut core = Core::new(CoreConfig::default());
    let ((a, ea), (b, eb)) = two_nodes(&mut core, &mut out, now);
    let job = job_with(&mut core, &[("produce", ResourceSet::cpus(1.0), 3), ("consume", ResourceSet::cpus(1.0), 3)]);
    let big = ObjectId::new(job, 1);
    let gate = ObjectId::new(job, 2);
    let fin = ObjectId::new(job, 3);
    core.node_credits(a, ea, 1, now);
    core.submit(job, vec![task(job, 1, 0, vec![val(b"seed")])], &mut out);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched()[0].0, a);
    core.tasks_finished(a, ea, vec![(big, Ok(Value::Stored { size: 1 << 20 }))], now, &mut out);
    out.results.clear();
    // The consumer also waits on a slow gate task.
    core.node_credits(b, eb, 1, now);
    core.submit(job, vec![task(job, 2, 0, vec![]), task(job, 3, 1, vec![NewArg::Object(big), NewArg::Object(gate)])], &mut out);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched().iter().map(|(n, d)| (*n, d.task)).collect::<Vec<_>>(), vec![(b, gate)]);
    // The node holding the only copy of `big` dies.
    core.node_disconnected(a, ea, &mut out);
    assert_eq!(core.snapshot(now).tasks.queued, 2, "the producer is queued again beside the waiting consumer");
    core.node_credits(b, eb, 2, now);
    core.schedule(&mut out);
    let d = out.take_dispatched();
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].0, d[0].1.task, d[0].1.args.clone()), (b, big, vec![inline(b"seed")]), "the producer re-runs from its lineage");
    core.tasks_finished(b, eb, vec![(big, Ok(Value::Stored { size: 1 << 20 }))], now, &mut out);
    let relocated = out.results.pop().unwrap();
    assert_eq!(relocated.2, Ok(Payload::Stored(StoredRef { id: big, size: 1 << 20, holders: vec!["10.0.0.2:7000".into()] })), "the driver learns the new copy");
    core.schedule(&mut out);
    assert!(out.dispatched.is_empty(), "the consumer still waits for the gate");
    core.tasks_finished(b, eb, vec![(gate, ok(b"g"))], now, &mut out);
    out.results.clear();
    core.schedule(&mut out);
    let d = out.take_dispatched();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].1.task, fin);
    assert_eq!(d[0].1.args[0], Payload::Stored(StoredRef { id: big, size: 1 << 20, holders: vec!["10.0.0.2:7000".into()] }));
    core.tasks_finished(b, eb, vec![(fin, ok(b"done"))], now, &mut out);
    assert_eq!(out.results.pop().unwrap().2, Ok(inline(b"done")));
    assert_eq!(core.snapshot(now).tasks.failed, 0);
    out.assert_quiet();
}

#[test]
fn a_running_consumer_whose_input_vanished_waits_for_the_rebuild() {
    let (mut core, mut out, now, (b, eb), job) = consumer_on_b_when_its_input_dies_with_a();
    let (big, fin) = (ObjectId::new(job, 1), ObjectId::new(job, 2));
    // b's pull fails: the consumer must not fail, it waits for the rebuild.
    core.tasks_finished(b, eb, vec![(fin, Err(Failure::new(FailureKind::ObjectLost, "pull failed")))], now, &mut out);
    assert!(out.results.is_empty(), "no failure reaches the driver: {:?}", out.results);
    core.node_credits(b, eb, 1, now);
    core.schedule(&mut out);
    let d = out.take_dispatched();
    assert_eq!(d[0].1.task, big, "rebuild first");
    core.tasks_finished(b, eb, vec![(big, Ok(Value::Stored { size: 10 }))], now, &mut out);
    out.results.clear();
    core.node_credits(b, eb, 1, now);
    core.schedule(&mut out);
    let d = out.take_dispatched();
    assert_eq!(d[0].1.task, fin, "then the consumer, again");
    core.tasks_finished(b, eb, vec![(fin, ok(b"ok"))], now, &mut out);
    assert_eq!(out.results.pop().unwrap().2, Ok(inline(b"ok")));
    out.assert_quiet();
}

#[test]
fn lost_chains_are_rebuilt_from_the_first_lost_link() {
    let now = t0();
    let mut out = Rec::default();
    let mut core = Core::new(CoreConfig::default());
    let ((a, ea), (b, eb)) = two_nodes(&mut core, &mut out, now);
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 3)]);
    let (x, y, z) = (ObjectId::new(job, 1), ObjectId::new(job, 2), ObjectId::new(job, 3));
    core.node_credits(a, ea, 2, now);
    core.submit(job, vec![task(job, 1, 0, vec![])], &mut out);
    core.schedule(&mut out);
    out.take_dispatched();
    core.tasks_finished(a, ea, vec![(x, Ok(Value::Stored { size: 10 }))], now, &mut out);
    core.submit(job, vec![task(job, 2, 0, vec![NewArg::Object(x)])], &mut out);
    core.schedule(&mut out);
    out.take_dispatched();
    core.tasks_finished(a, ea, vec![(y, Ok(Value::Stored { size: 10 }))], now, &mut out);
    out.results.clear();
    // z needs y; a (holding x and y) dies before z is placed.
    core.submit(job, vec![task(job, 3, 0, vec![NewArg::Object(y)])], &mut out);
    core.node_disconnected(a, ea, &mut out);
    core.node_credits(b, eb, 3, now);
    core.schedule(&mut out);
    let order: Vec<TaskId> = out.take_dispatched().iter().map(|(_, d)| d.task).collect();
    assert_eq!(order, vec![x]);
    core.tasks_finished(b, eb, vec![(x, Ok(Value::Stored { size: 10 }))], now, &mut out);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched().iter().map(|(_, d)| d.task).collect::<Vec<_>>(), vec![y]);
    core.tasks_finished(b, eb, vec![(y, Ok(Value::Stored { size: 10 }))], now, &mut out);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched().iter().map(|(_, d)| d.task).collect::<Vec<_>>(), vec![z]);
    assert_eq!(core.snapshot(now).tasks.failed, 0);
}

#[test]
fn a_queued_task_costs_64_bytes_in_the_table() {
    // A million queued tasks must fit the head in ~300 MB (the hash
    // table's buckets are sized by this).
    assert!(std::mem::size_of::<Task>() <= 64, "Task is {} bytes", std::mem::size_of::<Task>());
}

#[test]
fn after_a_restart_objects_on_nodes_that_never_return_are_rebuilt() {
    let now = t0();
    let mut out = Rec::default();
    let mut core = Core::new(CoreConfig::default());
    // The log says: job 1's task 1 ran on a node that is not back.
    core.restore_job(1, "ab".repeat(32), "test".into(), now);
    core.define_functions(1, 0, vec![FunctionDef { name: "f".into(), resources: ResourceSet::cpus(1.0), max_retries: 3, retry_exceptions: false }]);
    let (x, y) = (ObjectId::new(1, 1), ObjectId::new(1, 2));
    core.submit(1, vec![task(1, 1, 0, vec![val(b"in")])], &mut out);
    let gone = NodeId::random();
    core.restore_result(gone, x, Ok(Value::Stored { size: 10 }), &mut out);
    core.submit(1, vec![task(1, 2, 0, vec![NewArg::Object(x)])], &mut out);
    core.recovering(now + Duration::from_secs(4));
    let (b, eb) = node_at(&mut core, "10.0.0.2", now, &mut out);
    core.node_credits(b, eb, 4, now);
    core.schedule(&mut out);
    assert!(out.dispatched.is_empty(), "y waits while x's node may still re-register");
    core.tick(now + Duration::from_secs(5), &mut out);
    core.schedule(&mut out);
    let d = out.take_dispatched();
    assert_eq!(d.iter().map(|(_, d)| d.task).collect::<Vec<_>>(), vec![x], "x is rebuilt from its lineage");
    core.tasks_finished(b, eb, vec![(x, Ok(Value::Stored { size: 10 }))], now, &mut out);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched().iter().map(|(_, d)| d.task).collect::<Vec<_>>(), vec![y]);
    assert_eq!(core.snapshot(now).tasks.failed, 0);
}

#[test]
fn a_job_snapshot_restores_its_graph_objects_and_references() {
    let now = t0();
    let mut out = Rec::default();
    let mut core = Core::new(CoreConfig::default());
    let (a, ea) = node_at(&mut core, "10.0.0.1", now, &mut out);
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 2)]);
    let id = |s| ObjectId::new(job, s);
    core.put(job, id(1), PutValue::Inline(Bytes::from_static(b"p")), &mut out);
    core.node_credits(a, ea, 1, now);
    // 2: finished (stored, with lineage); 3: runs on 2 and the put; 4: waits on 3.
    core.submit(job, vec![task(job, 2, 0, vec![val(b"x")])], &mut out);
    core.schedule(&mut out);
    core.tasks_finished(a, ea, vec![(id(2), Ok(Value::Stored { size: 9 }))], now, &mut out);
    core.submit(job, vec![task(job, 3, 0, vec![NewArg::Object(id(2)), NewArg::Object(id(1))]), task(job, 4, 0, vec![NewArg::Object(id(3))])], &mut out);
    core.release(job, &[id(4)], &mut out);
    let snap = core.job_snapshot(job).unwrap();
    assert_eq!(snap.tasks.iter().map(|t| t.task.id).collect::<Vec<_>>(), vec![id(3), id(4)]);

    // A fresh head restores it: 3 is queued (its inputs known), 4 waits on 3.
    let mut out2 = Rec::default();
    let mut fresh = Core::new(CoreConfig::default());
    fresh.restore_snapshot(job, snap, now, &mut out2);
    assert_eq!(fresh.task_count(), 2);
    assert_eq!(fresh.object_count(), 2, "the put and the stored result");
    assert_eq!(fresh.snapshot(now).tasks.queued, 2);
    let reg = NodeRegistration {
        node_id: Some(a),
        resources: ResourceSet::cpus(1.0),
        object_address: "10.0.0.1:7000".into(),
        objects: vec![id(2)],
        ..Default::default()
    };
    let (a2, ea2) = fresh.node_registered(reg, now, &mut out2);
    fresh.node_credits(a2, ea2, 2, now);
    fresh.schedule(&mut out2);
    let d = out2.take_dispatched();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].1.task, id(3));
    assert_eq!(
        d[0].1.args,
        vec![Payload::Stored(StoredRef { id: id(2), size: 9, holders: vec!["10.0.0.1:7000".into()] }), inline(b"p")],
        "the stored input is read where it was"
    );
    fresh.tasks_finished(a2, ea2, vec![(id(3), ok(b"3"))], now, &mut out2);
    fresh.schedule(&mut out2);
    let d = out2.take_dispatched();
    assert_eq!(d[0].1.task, id(4));
    assert_eq!(d[0].1.args, vec![inline(b"3")]);
    fresh.tasks_finished(a2, ea2, vec![(id(4), ok(b"4"))], now, &mut out2);
    // 4 was released by the driver: its result is not kept; 3 is only
    // referenced by the driver now.
    assert!(out2.results.iter().all(|(_, t, _)| *t != id(4)), "no result for a released task");
    assert_eq!(fresh.snapshot(now).tasks.failed, 0);
}

// ---------------------------------------------------------------- found by the fault schedules

/// The user's program of issue 12: a consumer of a stored result is sent
/// to the node holding it (data locality), and that node dies. The
/// consumer goes back to the queue while its input is being rebuilt: it
/// must wait for the rebuild, not be dispatched with an input that is no
/// object any more (which panicked the head).
#[test]
fn a_consumer_on_the_node_that_died_with_its_input_waits_for_the_rebuild() {
    let now = t0();
    let mut out = Rec::default();
    let mut core = Core::new(CoreConfig::default());
    let ((a, ea), (b, eb)) = two_nodes(&mut core, &mut out, now);
    let job = job_with(&mut core, &[("produce", ResourceSet::cpus(1.0), 3), ("consume", ResourceSet::cpus(1.0), 3)]);
    let big = ObjectId::new(job, 1);
    let fin = ObjectId::new(job, 2);
    core.node_credits(a, ea, 2, now);
    core.submit(job, vec![task(job, 1, 0, vec![val(b"seed")])], &mut out);
    core.schedule(&mut out);
    out.take_dispatched();
    core.tasks_finished(a, ea, vec![(big, Ok(Value::Stored { size: 256 << 10 }))], now, &mut out);
    out.results.clear();
    core.submit(job, vec![task(job, 2, 1, vec![NewArg::Object(big)])], &mut out);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched()[0].0, a, "the consumer goes where its input is");
    core.node_disconnected(a, ea, &mut out);
    core.check_invariants().unwrap();
    core.node_credits(b, eb, 2, now);
    core.schedule(&mut out);
    let d = out.take_dispatched();
    assert_eq!(d.iter().map(|(n, d)| (*n, d.task)).collect::<Vec<_>>(), vec![(b, big)], "the input is rebuilt first; the consumer waits for it");
    core.tasks_finished(b, eb, vec![(big, Ok(Value::Stored { size: 256 << 10 }))], now, &mut out);
    out.results.clear();
    core.schedule(&mut out);
    let d = out.take_dispatched();
    assert_eq!(d.iter().map(|(n, d)| (*n, d.task)).collect::<Vec<_>>(), vec![(b, fin)]);
    core.tasks_finished(b, eb, vec![(fin, ok(b"done"))], now, &mut out);
    assert_eq!(out.results.pop().unwrap().2, Ok(inline(b"done")));
    core.check_invariants().unwrap();
    out.assert_quiet();
}

/// The same with an executor that dies while its input is being rebuilt:
/// the retry waits for the input too.
#[test]
fn a_retried_task_whose_input_is_being_rebuilt_waits_for_it() {
    let (mut core, mut out, now, (b, eb), job) = consumer_on_b_when_its_input_dies_with_a();
    let (big, fin) = (ObjectId::new(job, 1), ObjectId::new(job, 2));
    core.tasks_finished(b, eb, vec![(fin, Err(Failure::new(FailureKind::WorkerDied, "executor killed")))], now, &mut out);
    core.check_invariants().unwrap();
    core.node_credits(b, eb, 2, now);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched().iter().map(|(_, d)| d.task).collect::<Vec<_>>(), vec![big]);
    out.assert_quiet();
}

/// A driver that could not read a stored value asks where it is: it gets
/// the live holders, the failure of an object lost for good, or (being
/// rebuilt) the result once it is made again.
#[test]
fn locate_answers_with_holders_a_verdict_or_the_rebuilt_result() {
    let now = t0();
    let mut out = Rec::default();
    let mut core = Core::new(CoreConfig::default());
    let ((a, ea), (b, eb)) = two_nodes(&mut core, &mut out, now);
    let job = job_with(&mut core, &[("produce", ResourceSet::cpus(1.0), 3)]);
    let made = ObjectId::new(job, 1);
    let put = ObjectId::new(job, 2);
    stored_on(&mut core, &mut out, (a, ea), task(job, 1, 0, vec![]), now);
    core.put(job, put, PutValue::Stored { size: 10, node: a }, &mut out);
    out.results.clear();
    core.locate(job, &[made], &mut out);
    let (_, id, r) = out.results.pop().unwrap();
    assert_eq!((id, r), (made, Ok(Payload::Stored(StoredRef { id: made, size: 10, holders: vec!["10.0.0.1:7000".into()] }))));
    core.node_disconnected(a, ea, &mut out);
    // The put cannot be rebuilt: its driver is told at once, and again if it asks.
    let (_, id, r) = out.results.pop().unwrap();
    assert_eq!(id, put);
    assert_eq!(r.unwrap_err().kind, FailureKind::ObjectLost);
    core.locate(job, &[put, made], &mut out);
    let (_, id, r) = out.results.pop().unwrap();
    assert_eq!(id, put);
    let f = r.unwrap_err();
    assert!(f.message.contains("put by the driver") && f.message.contains(&a.to_string()), "{}", f.message);
    assert!(out.results.is_empty(), "the task's result is being rebuilt: no answer yet");
    core.node_credits(b, eb, 1, now);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched()[0].1.task, made);
    core.tasks_finished(b, eb, vec![(made, Ok(Value::Stored { size: 10 }))], now, &mut out);
    let (_, id, r) = out.results.pop().unwrap();
    assert_eq!((id, r), (made, Ok(Payload::Stored(StoredRef { id: made, size: 10, holders: vec!["10.0.0.2:7000".into()] }))));
    out.assert_quiet();
}

/// After a head restart the log says a node holds an object; the node
/// comes back without it (it crashed meanwhile). Its report is the truth:
/// the object is rebuilt instead of being read from a node that lacks it.
#[test]
fn a_node_that_comes_back_without_a_copy_gets_it_rebuilt() {
    let now = t0();
    let mut out = Rec::default();
    let mut core = Core::new(CoreConfig::default());
    let (a, ea) = node_at(&mut core, "10.0.0.1", now, &mut out);
    let job = job_with(&mut core, &[("produce", ResourceSet::cpus(1.0), 3)]);
    let made = ObjectId::new(job, 1);
    stored_on(&mut core, &mut out, (a, ea), task(job, 1, 0, vec![]), now);
    let snap = core.job_snapshot(job).unwrap();
    let mut core = Core::new(CoreConfig::default());
    core.recovering(now + Duration::from_secs(10));
    core.restore_snapshot(job, snap, now, &mut out);
    core.job_reattached(job).unwrap();
    out.results.clear();
    let reg = NodeRegistration {
        node_id: Some(a),
        resources: ResourceSet::cpus(1.0),
        address: "10.0.0.1".into(),
        object_address: "10.0.0.1:7000".into(),
        ..Default::default()
    };
    let (_, ea) = core.node_registered(reg, now, &mut out);
    core.node_credits(a, ea, 1, now);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched().iter().map(|(_, d)| d.task).collect::<Vec<_>>(), vec![made], "rebuilt, not read from a node without it");
    core.check_invariants().unwrap();
}

/// A node that registers again while the head still thinks its old
/// session is alive: only the old session is ended, not the new one.
#[test]
fn re_registering_while_alive_ends_only_the_old_session() {
    #[derive(Default)]
    struct Epochs(Vec<(NodeId, u64)>);
    impl Outbox for Epochs {
        fn job_info(&mut self, _: NodeId, _: JobId, _: &str, _: u32, _: &[FunctionDef]) {}
        fn dispatch(&mut self, _: NodeId, _: Dispatch) {}
        fn cancel(&mut self, _: NodeId, _: TaskId) {}
        fn job_finished(&mut self, _: NodeId, _: JobId) {}
        fn result(&mut self, _: JobId, _: TaskId, _: Result<Payload, Failure>) {}
        fn free_object(&mut self, _: NodeId, _: ObjectId) {}
        fn disconnect(&mut self, node: NodeId, epoch: u64) {
            self.0.push((node, epoch));
        }
        fn drain(&mut self, _: NodeId) {}
        fn generator_item(&mut self, _: JobId, _: TaskId, _: u64, _: ObjectId, _: Result<Payload, Failure>, _: bool) {}
        fn generator_ack(&mut self, _: JobId, _: TaskId, _: u64) {}
        fn keep_object(&mut self, _: NodeId, _: ObjectId) {}
    }
    let now = t0();
    let mut out = Epochs::default();
    let mut core = Core::new(CoreConfig::default());
    let (a, e1) = core.node_registered(NodeRegistration { resources: ResourceSet::cpus(1.0), ..Default::default() }, now, &mut out);
    let (_, e2) = core.node_registered(NodeRegistration { node_id: Some(a), resources: ResourceSet::cpus(1.0), ..Default::default() }, now, &mut out);
    assert_eq!(out.0, vec![(a, e1)]);
    assert_ne!(e1, e2);
}

#[test]
fn a_call_with_its_own_resources_is_placed_and_accounted_by_them() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let (a, ea) = node(&mut core, ResourceSet::cpus(1.0), now, &mut out);
    let (b, eb) = node(&mut core, ResourceSet::cpus(1.0).with("gpu", 1.0), now, &mut out);
    core.node_credits(a, ea, 4, now);
    core.node_credits(b, eb, 4, now);
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 0)]);
    let mut on_gpu = task(job, 1, 0, vec![]);
    on_gpu.resources = Some(ResourceSet::cpus(1.0).with("gpu", 1.0));
    let mut nowhere = task(job, 2, 0, vec![]);
    nowhere.resources = Some(ResourceSet::cpus(8.0));
    core.submit(job, vec![on_gpu, nowhere], &mut out);
    core.schedule(&mut out);
    let d = out.take_dispatched();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].0, b, "only b offers a GPU");
    assert_eq!(d[0].1.resources, Some(ResourceSet::cpus(1.0).with("gpu", 1.0)), "the worker is told what the call holds");
    let (_, id, r) = out.results.pop().unwrap();
    assert_eq!(id, ObjectId::new(job, 2));
    let f = r.unwrap_err();
    assert_eq!(f.kind, FailureKind::Unschedulable);
    assert!(f.message.contains("cpus=8"), "{}", f.message);
    // While it runs, b's GPU is in use; when it finishes, it is free.
    let gpu_free = |core: &Core| core.snapshot(now).nodes.iter().find(|n| n.id == b).map(|n| n.available.get("gpu"));
    assert_eq!(gpu_free(&core), Some(0.0));
    core.tasks_finished(b, eb, vec![(ObjectId::new(job, 1), ok(b"x"))], now, &mut out);
    assert_eq!(gpu_free(&core), Some(1.0));
    assert_eq!(out.results.len(), 1);
    out.results.clear();
    out.assert_quiet();
}

#[test]
fn a_panic_is_retried_only_with_retry_exceptions_and_within_max_retries() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let (a, ea) = node(&mut core, ResourceSet::cpus(2.0), now, &mut out);
    core.node_credits(a, ea, 100, now);
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 2)]);
    let mut retried = task(job, 1, 0, vec![]);
    retried.retry_exceptions = Some(true);
    core.submit(job, vec![retried, task(job, 2, 0, vec![])], &mut out);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched().len(), 2);
    let boom = || Err(Failure::new(FailureKind::Panicked, "boom"));
    core.tasks_finished(a, ea, vec![(ObjectId::new(job, 1), boom()), (ObjectId::new(job, 2), boom())], now, &mut out);
    let (_, id, r) = out.results.pop().unwrap();
    assert_eq!((id, r.unwrap_err().kind), (ObjectId::new(job, 2), FailureKind::Panicked), "no retry_exceptions: fails at once");
    // Task 1 runs again, twice (max_retries = 2), then its panic is final.
    for attempt in 2..=3 {
        core.schedule(&mut out);
        let d = out.take_dispatched();
        assert_eq!(d.iter().map(|(_, t)| (t.task, t.attempt)).collect::<Vec<_>>(), vec![(ObjectId::new(job, 1), attempt)]);
        assert!(out.results.is_empty());
        core.tasks_finished(a, ea, vec![(ObjectId::new(job, 1), boom())], now, &mut out);
    }
    let (_, id, r) = out.results.pop().unwrap();
    let f = r.unwrap_err();
    assert_eq!((id, f.kind, f.message.as_str(), f.attempts), (ObjectId::new(job, 1), FailureKind::Panicked, "boom", 3));
    core.schedule(&mut out);
    out.assert_quiet();
}

#[test]
fn a_job_started_by_a_task_ends_with_the_job_of_that_task() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let parent = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 0)]);
    let child = core.job_connected_under("ab".repeat(32), "tasks of a task".into(), Some(parent)).unwrap();
    let grandchild = core.job_connected_under("ab".repeat(32), "deeper".into(), Some(child)).unwrap();
    let other = core.job_connected_under("ab".repeat(32), "unknown parent".into(), Some(999)).unwrap();
    core.define_functions(child, 0, vec![FunctionDef { name: "g".into(), resources: ResourceSet::cpus(1.0), max_retries: 0, retry_exceptions: false }]);
    core.submit(child, vec![task(child, 1, 0, vec![])], &mut out);
    assert_eq!(core.snapshot(now).jobs, 4);
    core.job_disconnected(parent, &mut out);
    assert_eq!(core.snapshot(now).jobs, 1, "its child and grandchild ended with it; the job naming no known parent did not");
    assert_eq!(core.snapshot(now).tasks.queued, 0, "the child's queued task is gone");
    assert!(core.job_reattached(grandchild).is_none());
    assert!(core.job_reattached(other).is_some());
    out.assert_quiet();
}

// ---------------------------------------------------------------- refs in values

/// A job with one function on a 4-CPU node that asked for work.
fn refs_world() -> (Core, Rec, NodeId, u64, JobId) {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let (a, ea) = node(&mut core, ResourceSet::cpus(4.0), t0(), &mut out);
    core.node_credits(a, ea, 100, t0());
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 0)]);
    (core, out, a, ea, job)
}

fn stored_ok(size: u64) -> Result<Value, Failure> {
    Ok(Value::Stored { size })
}

#[test]
fn a_ref_inside_a_put_keeps_its_object_until_the_put_is_freed() {
    let (mut core, mut out, a, _, job) = refs_world();
    let (piece, bag) = (ObjectId::new(job, 1), ObjectId::new(job, 2));
    core.put(job, piece, PutValue::Stored { size: 1 << 20, node: a }, &mut out);
    core.put(job, bag, PutValue::Inline(Bytes::from_static(b"[1.1]")), &mut out);
    core.contain(job, bag, &[piece], &mut out);
    core.release(job, &[piece], &mut out);
    assert!(out.freed.is_empty(), "the piece lives while the bag holds a ref to it");
    core.check_invariants().unwrap();
    core.release(job, &[bag], &mut out);
    assert_eq!(out.freed, vec![(a, piece)], "freeing the bag frees the piece");
    assert_eq!(core.object_count(), 0);
    core.check_invariants().unwrap();
}

#[test]
fn a_borrowing_job_is_answered_and_keeps_the_object_until_it_lets_go() {
    let (mut core, mut out, a, _, owner) = refs_world();
    let other = job_with(&mut core, &[("g", ResourceSet::cpus(1.0), 0)]);
    let x = ObjectId::new(owner, 1);
    core.put(owner, x, PutValue::Stored { size: 1 << 20, node: a }, &mut out);
    core.borrow(other, &[(x, true)], &mut out);
    assert!(matches!(out.results.as_slice(), [(j, id, Ok(Payload::Stored(_)))] if *j == other && *id == x), "told where it is: {:?}", out.results);
    out.results.clear();
    core.release(owner, &[x], &mut out);
    assert!(out.freed.is_empty(), "the borrower keeps it");
    // The borrower passes it to a task of its own.
    core.submit(other, vec![task(other, 1, 0, vec![NewArg::Object(x)])], &mut out);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched().len(), 1, "a borrowed object is a valid argument");
    core.borrow(other, &[(x, false)], &mut out);
    assert!(out.freed.is_empty(), "the running task still takes it");
    core.check_invariants().unwrap();
    core.tasks_finished(a, 1, vec![(ObjectId::new(other, 1), ok(b"done"))], t0(), &mut out);
    assert_eq!(out.freed, vec![(a, x)], "freed after its last user");
    core.check_invariants().unwrap();
}

#[test]
fn a_borrowed_future_result_is_sent_to_the_borrower_and_a_gone_one_fails_at_once() {
    let (mut core, mut out, a, ea, owner) = refs_world();
    let other = job_with(&mut core, &[("g", ResourceSet::cpus(1.0), 0)]);
    let t = ObjectId::new(owner, 1);
    core.submit(owner, vec![task(owner, 1, 0, vec![])], &mut out);
    core.borrow(other, &[(t, true)], &mut out);
    core.release(owner, &[t], &mut out);
    core.schedule(&mut out);
    out.take_dispatched();
    core.tasks_finished(a, ea, vec![(t, ok(b"v"))], t0(), &mut out);
    assert_eq!(out.results, vec![(other, t, Ok(inline(b"v")))], "only the borrower holds it, and it is told");
    assert_eq!(core.object_count(), 1, "kept for the borrower");
    out.results.clear();
    let gone = ObjectId::new(owner, 99);
    core.borrow(other, &[(gone, true)], &mut out);
    assert!(matches!(out.results.as_slice(), [(j, id, Err(f))] if *j == other && *id == gone && f.kind == FailureKind::ObjectLost), "{:?}", out.results);
    core.check_invariants().unwrap();
}

/// Issue 14's shape: a task's child job makes pieces and returns refs to
/// them inside its result. The pieces outlive the child's own refs, go
/// when the result goes, and their job ending tells borrowers they are gone.
#[test]
fn refs_in_a_task_result_keep_the_child_objects_alive_until_the_result_goes() {
    let (mut core, mut out, a, ea, parent) = refs_world();
    let t = ObjectId::new(parent, 1);
    core.submit(parent, vec![task(parent, 1, 0, vec![])], &mut out);
    core.schedule(&mut out);
    out.take_dispatched();
    let child = core.job_connected_under("ab".repeat(32), "task".into(), Some(parent)).unwrap();
    let pieces: Vec<ObjectId> = (1..=3).map(|s| ObjectId::new(child, s)).collect();
    for p in &pieces {
        core.put(child, *p, PutValue::Stored { size: 8 << 20, node: a }, &mut out);
    }
    core.contain(child, t, &pieces, &mut out);
    core.release(child, &pieces, &mut out);
    assert!(out.freed.is_empty(), "the running task's result will hold them");
    core.tasks_finished(a, ea, vec![(t, ok(b"[refs]"))], t0(), &mut out);
    assert_eq!(out.results, vec![(parent, t, Ok(inline(b"[refs]")))]);
    out.results.clear();
    // The parent's driver read the result and took the refs.
    core.borrow(parent, &pieces.iter().map(|p| (*p, true)).collect::<Vec<_>>(), &mut out);
    assert_eq!(out.results.len(), 3, "each borrowed piece is answered");
    out.results.clear();
    core.release(parent, &[t], &mut out);
    assert!(out.freed.is_empty(), "the parent's borrows keep the pieces after the result goes");
    core.borrow(parent, &[(pieces[0], false)], &mut out);
    assert_eq!(out.freed, vec![(a, pieces[0])], "the last ref to a piece frees it");
    core.check_invariants().unwrap();
    // The child job ends (its executor went): what the parent still
    // borrows stays (the node keeps its copies), ownerless.
    out.freed.clear();
    core.job_disconnected(child, &mut out);
    assert!(out.results.iter().all(|(_, _, r)| r.is_ok()), "nobody is told anything is lost: {:?}", out.results);
    let mut kept = out.kept.clone();
    kept.sort();
    assert_eq!(kept, vec![(a, pieces[1]), (a, pieces[2])], "the node keeps the borrowed copies");
    assert_eq!(core.object_count(), 2);
    core.check_invariants().unwrap();
    core.borrow(parent, &[(pieces[1], true)], &mut out);
    assert!(matches!(out.results.last(), Some((j, id, Ok(_))) if *j == parent && *id == pieces[1]), "an orphan still reads");
    core.borrow(parent, &[(pieces[1], false), (pieces[2], false)], &mut out);
    let mut freed = out.freed.clone();
    freed.sort();
    assert_eq!(freed, vec![(a, pieces[1]), (a, pieces[2])], "freed after the last ref");
    assert_eq!(core.object_count(), 0);
    core.check_invariants().unwrap();
    // A root job that ends frees everything, borrowed or not.
    let other = job_with(&mut core, &[("g", ResourceSet::cpus(1.0), 0)]);
    let x = ObjectId::new(parent, 50);
    core.put(parent, x, PutValue::Stored { size: 10, node: a }, &mut out);
    core.borrow(other, &[(x, true)], &mut out);
    out.results.clear();
    core.job_disconnected(parent, &mut out);
    assert!(matches!(out.results.as_slice(), [(j, id, Err(f))] if *j == other && *id == x && f.kind == FailureKind::ObjectLost), "{:?}", out.results);
    assert_eq!(core.object_count(), 0);
    core.check_invariants().unwrap();
}

#[test]
fn refs_inside_arguments_live_while_the_task_does() {
    let (mut core, mut out, a, ea, job) = refs_world();
    let x = ObjectId::new(job, 1);
    core.put(job, x, PutValue::Stored { size: 1 << 20, node: a }, &mut out);
    let mut t = task(job, 2, 0, vec![val(b"struct{ref 1.1}")]);
    t.contains = vec![x];
    core.submit(job, vec![t], &mut out);
    core.release(job, &[x], &mut out);
    assert!(out.freed.is_empty(), "the task's argument holds a ref to it");
    core.schedule(&mut out);
    out.take_dispatched();
    core.check_invariants().unwrap();
    core.tasks_finished(a, ea, vec![(ObjectId::new(job, 2), stored_ok(10))], t0(), &mut out);
    assert!(out.freed.contains(&(a, x)), "freed when the task ended: {:?}", out.freed);
    core.check_invariants().unwrap();
}

// ---------------------------------------------------------------- generators

/// A generator task's items go to its caller as they come, each borrowed
/// by the caller (freed when it lets go); acks reach the producer; a
/// retried run's repeats are dropped and it learns how far the caller got.
#[test]
fn generator_items_reach_the_caller_in_order_and_a_retry_does_not_repeat_them() {
    let (mut core, mut out, a, ea, caller) = refs_world();
    let g = ObjectId::new(caller, 1);
    let mut t = task(caller, 1, 0, vec![]);
    t.max_retries = Some(1);
    core.submit(caller, vec![t], &mut out);
    core.schedule(&mut out);
    out.take_dispatched();
    let run1 = core.job_connected_under("ab".repeat(32), "task".into(), Some(caller)).unwrap();
    for i in 0..3u64 {
        let x = ObjectId::new(run1, i + 1);
        core.put(run1, x, PutValue::Stored { size: 100, node: a }, &mut out);
        core.generator_item(run1, g, i, x, &mut out);
    }
    assert_eq!(out.items, (0..3).map(|i| (caller, g, i, ObjectId::new(run1, i + 1))).collect::<Vec<_>>());
    core.generator_consumed(caller, g, 2, &mut out);
    assert_eq!(out.acks, vec![(run1, g, 2)], "the producer hears how far the caller got");
    core.check_invariants().unwrap();
    // The caller drops item 0: only it held it.
    core.borrow(caller, &[(ObjectId::new(run1, 1), false)], &mut out);
    assert_eq!(out.freed, vec![(a, ObjectId::new(run1, 1))]);
    // The node dies; the retry runs in a new session and yields 0..4.
    core.node_disconnected(a, ea, &mut out);
    let (b, eb) = node(&mut core, ResourceSet::cpus(4.0), t0(), &mut out);
    core.node_credits(b, eb, 10, t0());
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched().len(), 1, "the generator runs again");
    let run2 = core.job_connected_under("ab".repeat(32), "task".into(), Some(caller)).unwrap();
    out.items.clear();
    out.acks.clear();
    for i in 0..4u64 {
        let x = ObjectId::new(run2, i + 1);
        core.put(run2, x, PutValue::Inline(Bytes::from_static(b"i")), &mut out);
        core.generator_item(run2, g, i, x, &mut out);
    }
    assert_eq!(out.acks, vec![(run2, g, 2)], "the new producer learns the caller consumed 2");
    assert_eq!(out.items, vec![(caller, g, 3, ObjectId::new(run2, 4))], "only the new item is delivered");
    assert_eq!(core.object_count(), 3, "items 1 and 2 of the first run stay (borrowed), repeats are freed");
    core.tasks_finished(b, eb, vec![(g, ok(b"4"))], t0(), &mut out);
    assert!(out.results.iter().any(|(j, id, r)| *j == caller && *id == g && r.is_ok()), "the end of the stream follows its items");
    core.check_invariants().unwrap();
}

/// Small items holding no refs are passed on without an object: the head
/// keeps nothing for them (nor has anything to free) unless the caller
/// sends one on, adopting it first; then it is an item like any other,
/// borrowed by the caller, and a task can take it. Only the producer's
/// parent session may adopt, and never over a known id.
#[test]
fn owned_generator_items_leave_no_object_until_the_caller_sends_one_on() {
    let (mut core, mut out, a, ea, caller) = refs_world();
    let g = ObjectId::new(caller, 1);
    core.submit(caller, vec![task(caller, 1, 0, vec![])], &mut out);
    core.schedule(&mut out);
    out.take_dispatched();
    let run = core.job_connected_under("ab".repeat(32), "task".into(), Some(caller)).unwrap();
    let before = core.object_count();
    for i in 0..3u64 {
        core.generator_item_owned(run, g, i, ObjectId::new(run, i + 1), Bytes::from(vec![i as u8]), &mut out);
    }
    // A repeat of an index already delivered is dropped.
    core.generator_item_owned(run, g, 1, ObjectId::new(run, 9), Bytes::from_static(b"x"), &mut out);
    assert_eq!(out.items, (0..3).map(|i| (caller, g, i, ObjectId::new(run, i + 1))).collect::<Vec<_>>());
    assert_eq!(out.owned_items, 3);
    assert_eq!(core.object_count(), before, "nothing kept for owned items");
    core.check_invariants().unwrap();
    // Another job may not adopt them, nor the producer itself.
    let other = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 0)]);
    core.adopt(other, ObjectId::new(run, 2), Bytes::from_static(b"forged"));
    core.adopt(run, ObjectId::new(run, 2), Bytes::from_static(b"forged"));
    assert_eq!(core.object_count(), before, "adoption refused");
    // The caller sends item 1 on, as an argument of a task.
    let item = ObjectId::new(run, 2);
    core.adopt(caller, item, Bytes::from_static(b"\x01"));
    core.adopt(caller, item, Bytes::from_static(b"again"));
    assert_eq!(core.object_count(), before + 1);
    core.submit(caller, vec![task(caller, 2, 0, vec![NewArg::Object(item)])], &mut out);
    core.schedule(&mut out);
    let d = out.take_dispatched();
    let taker = d.iter().find(|(_, t)| t.task == ObjectId::new(caller, 2)).expect("the task taking the item runs");
    assert!(matches!(&taker.1.args[..], [Payload::Inline(b)] if &b[..] == b"\x01"), "it gets the item's value");
    core.check_invariants().unwrap();
    // The caller's ref and the task both let go: the item is gone.
    core.borrow(caller, &[(item, false)], &mut out);
    assert_eq!(core.object_count(), before + 1, "the running task still takes it");
    core.tasks_finished(a, ea, vec![(ObjectId::new(caller, 2), ok(b"r"))], t0(), &mut out);
    core.release(caller, &[ObjectId::new(caller, 2)], &mut out);
    assert_eq!(core.object_count(), before, "the item went with the last ref to it");
    core.check_invariants().unwrap();
}

/// Tasks a task submits run before what its job queued earlier (depth
/// first), so a recursive program closes branches instead of blocking
/// ever more parents; top-level submissions stay FIFO.
#[test]
fn tasks_submitted_by_a_task_go_ahead_of_earlier_queued_work() {
    let (mut core, mut out, a, ea, job) = refs_world();
    core.submit(job, (1..=3).map(|s| task(job, s, 0, vec![])).collect(), &mut out);
    let child = core.job_connected_under("ab".repeat(32), "task".into(), Some(job)).unwrap();
    core.define_functions(child, 0, vec![FunctionDef { name: "f".into(), resources: ResourceSet::cpus(1.0), max_retries: 0, retry_exceptions: false }]);
    core.submit(child, vec![task(child, 1, 0, vec![]), task(child, 2, 0, vec![])], &mut out);
    core.submit(job, vec![task(job, 4, 0, vec![])], &mut out);
    core.node_credits(a, ea, 0, t0());
    core.schedule(&mut out);
    let order: Vec<ObjectId> = out.take_dispatched().into_iter().map(|(_, d)| d.task).collect();
    let want = [ObjectId::new(child, 1), ObjectId::new(child, 2), ObjectId::new(job, 1), ObjectId::new(job, 2)];
    assert_eq!(&order[..4], &want[..], "the nested calls first, in their order, then FIFO");
    core.check_invariants().unwrap();
}

// ---------------------------------------------------------------- placement

#[test]
fn a_call_pinned_to_a_node_runs_only_there_and_fails_if_the_node_is_gone() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let (a, ea) = node(&mut core, ResourceSet::cpus(4.0), t0(), &mut out);
    let (b, eb) = node(&mut core, ResourceSet::cpus(1.0), t0(), &mut out);
    core.node_credits(a, ea, 100, t0());
    core.node_credits(b, eb, 100, t0());
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 0)]);
    let pinned = |seq, node, soft| {
        let mut t = task(job, seq, 0, vec![]);
        t.placement = Placement::Node { node, soft };
        t
    };
    core.submit(job, vec![pinned(1, b, false), pinned(2, b, false), pinned(3, b, true)], &mut out);
    core.schedule(&mut out);
    let d: Vec<(NodeId, u64)> = out.take_dispatched().into_iter().map(|(n, d)| (n, d.task.seq())).collect();
    assert_eq!(d, vec![(b, 1), (a, 3)], "the second pinned call waits for b's one CPU; the soft one goes elsewhere");
    core.tasks_finished(b, eb, vec![(ObjectId::new(job, 1), ok(b"x"))], t0(), &mut out);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched().into_iter().map(|(n, d)| (n, d.task.seq())).collect::<Vec<_>>(), vec![(b, 2)]);
    // Pinned to a node that dies, or was never there: Unschedulable.
    core.submit(job, vec![pinned(4, b, false)], &mut out);
    core.node_disconnected(b, eb, &mut out);
    let stranger = NodeId::random();
    core.submit(job, vec![pinned(5, stranger, false)], &mut out);
    core.schedule(&mut out);
    let mut failed: Vec<(u64, FailureKind)> =
        out.results.iter().filter_map(|(_, id, r)| r.as_ref().err().map(|f| (id.seq(), f.kind))).filter(|(s, _)| *s >= 4).collect();
    failed.sort_unstable_by_key(|f| f.0);
    assert_eq!(failed, vec![(4, FailureKind::Unschedulable), (5, FailureKind::Unschedulable)], "{:?}", out.results);
    core.check_invariants().unwrap();
}

#[test]
fn a_spread_call_ignores_where_its_inputs_are() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let (a, ea) = node(&mut core, ResourceSet::cpus(8.0), t0(), &mut out);
    let (b, eb) = node(&mut core, ResourceSet::cpus(8.0), t0(), &mut out);
    core.node_credits(a, ea, 100, t0());
    core.node_credits(b, eb, 100, t0());
    let job = job_with(&mut core, &[("f", ResourceSet::cpus(1.0), 0)]);
    let big = ObjectId::new(job, 1);
    core.put(job, big, PutValue::Stored { size: 1 << 30, node: a }, &mut out);
    let calls = |from: u64, placement| {
        (from..from + 4)
            .map(|s| {
                let mut t = task(job, s, 0, vec![NewArg::Object(big)]);
                t.placement = placement;
                t
            })
            .collect::<Vec<_>>()
    };
    core.submit(job, calls(10, Placement::Any), &mut out);
    core.schedule(&mut out);
    assert!(out.take_dispatched().iter().all(|(n, _)| *n == a), "by default every call goes where its 1 GiB input is");
    core.submit(job, calls(20, Placement::Spread), &mut out);
    core.schedule(&mut out);
    let nodes: HashSet<NodeId> = out.take_dispatched().into_iter().map(|(n, _)| n).collect();
    assert_eq!(nodes, HashSet::from([a, b]), "spread calls use both nodes");
    let _ = (eb, b);
}

// ------------------------------------------------------------ actors

fn actor_spec(name: &str) -> Box<shoal_domain::actor::ActorSpec> {
    Box::new(shoal_domain::actor::ActorSpec { class: "t::Counter".into(), name: name.into(), max_concurrency: 1, ..Default::default() })
}

/// A job with a constructor (index 0, no CPU) and a method (index 1).
fn actor_job(core: &mut Core) -> JobId {
    job_with(core, &[("t::Counter::new", ResourceSet::default(), 0), ("t::Counter::incr", ResourceSet::default(), 0)])
}

fn create(job: JobId, seq: u64, name: &str, restarts: u32) -> NewTask {
    NewTask { max_retries: Some(restarts), dedicated: true, actor: ActorRole::Create(actor_spec(name)), ..task(job, seq, 0, vec![]) }
}

fn call(job: JobId, seq: u64, actor: TaskId, args: Vec<NewArg>) -> NewTask {
    NewTask { actor: ActorRole::Call(actor), ..task(job, seq, 1, args) }
}

fn checked(core: &Core) {
    if let Err(e) = core.check_invariants() {
        panic!("invariant broken: {e}");
    }
}

#[test]
fn actor_calls_follow_the_creation_to_its_node_in_order_without_credits() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let (a, ea) = node(&mut core, ResourceSet::cpus(1.0), now, &mut out);
    let job = actor_job(&mut core);
    let aid = ObjectId::new(job, 1);
    core.submit(job, vec![create(job, 1, "", 0)], &mut out);
    core.submit(job, (2..=4).map(|i| call(job, i, aid, vec![val(b"k")])).collect(), &mut out);
    core.schedule(&mut out);
    checked(&core);
    out.assert_quiet();
    // One credit places the actor; its calls need none.
    core.node_credits(a, ea, 1, now);
    core.schedule(&mut out);
    checked(&core);
    let d = out.take_dispatched();
    assert_eq!(d.iter().map(|(_, t)| t.task.seq()).collect::<Vec<_>>(), vec![1, 2, 3, 4], "creation first, then the calls in order");
    assert_eq!(d[0].1.actor, ActorPart::Create { max_concurrency: 1 });
    assert!(d[1..].iter().all(|(n, t)| *n == a && t.actor == ActorPart::Call(aid)));
    core.tasks_finished(a, ea, vec![(ObjectId::new(job, 2), ok(b"1")), (ObjectId::new(job, 3), ok(b"2"))], now, &mut out);
    assert_eq!(out.results.len(), 2);
    out.results.clear();
    // A later call goes straight to the actor's node.
    core.submit(job, vec![call(job, 5, aid, vec![])], &mut out);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched().iter().map(|(n, t)| (*n, t.task.seq())).collect::<Vec<_>>(), vec![(a, 5)]);
    let st = core.snapshot(now);
    assert_eq!(st.actors.len(), 1);
    assert_eq!((st.actors[0].state.clone(), st.actors[0].node), (shoal_domain::actor::ActorState::Alive, Some(a)));
    checked(&core);
    out.assert_quiet();
}

#[test]
fn a_call_waiting_for_an_argument_holds_back_the_calls_behind_it() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let (a, ea) = node(&mut core, ResourceSet::cpus(1.0), now, &mut out);
    let job = job_with(
        &mut core,
        &[("t::Counter::new", ResourceSet::default(), 0), ("t::Counter::incr", ResourceSet::default(), 0), ("slow", ResourceSet::cpus(1.0), 0)],
    );
    let aid = ObjectId::new(job, 1);
    let p = ObjectId::new(job, 2);
    core.submit(job, vec![create(job, 1, "", 0), task(job, 2, 2, vec![]), call(job, 3, aid, vec![NewArg::Object(p)]), call(job, 4, aid, vec![])], &mut out);
    core.node_credits(a, ea, 5, now);
    core.schedule(&mut out);
    checked(&core);
    let seqs: Vec<u64> = out.take_dispatched().iter().map(|(_, t)| t.task.seq()).collect();
    assert_eq!(seqs, vec![1, 2], "call 4 waits behind call 3, which waits for task 2");
    core.tasks_finished(a, ea, vec![(p, ok(b"v"))], now, &mut out);
    core.schedule(&mut out);
    checked(&core);
    let d = out.take_dispatched();
    assert_eq!(d.iter().map(|(_, t)| t.task.seq()).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!(d[0].1.args, vec![inline(b"v")], "the call got its argument's value");
}

#[test]
fn an_actor_whose_node_dies_restarts_within_max_restarts_and_its_calls_fail_without_retries() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let (a, ea) = node(&mut core, ResourceSet::cpus(1.0), now, &mut out);
    let (b, eb) = node(&mut core, ResourceSet::cpus(1.0), now, &mut out);
    let job = actor_job(&mut core);
    let aid = ObjectId::new(job, 1);
    core.node_credits(a, ea, 1, now);
    core.submit(job, vec![create(job, 1, "", 1), call(job, 2, aid, vec![])], &mut out);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched().iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![a, a]);
    core.node_disconnected(a, ea, &mut out);
    checked(&core);
    let (_, t, r) = out.results.pop().expect("the running call failed");
    assert_eq!(t, ObjectId::new(job, 2));
    assert_eq!(r.unwrap_err().kind, FailureKind::ActorDied);
    // Calls made meanwhile wait for the new instance.
    core.submit(job, vec![call(job, 3, aid, vec![])], &mut out);
    core.schedule(&mut out);
    out.assert_quiet();
    assert_eq!(core.snapshot(now).actors[0].state, shoal_domain::actor::ActorState::Pending);
    core.node_credits(b, eb, 1, now);
    core.schedule(&mut out);
    checked(&core);
    let d = out.take_dispatched();
    assert_eq!(d.iter().map(|(n, t)| (*n, t.task.seq(), t.attempt)).collect::<Vec<_>>(), vec![(b, 1, 2), (b, 3, 1)]);
    assert_eq!(core.snapshot(now).actors[0].restarts, 1);
    // Its process dies again: out of restarts, the actor is dead for good.
    core.tasks_finished(
        b,
        eb,
        vec![(aid, Err(Failure::new(FailureKind::WorkerDied, "exec gone"))), (ObjectId::new(job, 3), Err(Failure::new(FailureKind::WorkerDied, "exec gone")))],
        now,
        &mut out,
    );
    checked(&core);
    let (_, _, r) = out.results.pop().unwrap();
    let f = r.unwrap_err();
    assert!(f.kind == FailureKind::ActorDied && f.message.contains("ran out of restarts"), "{f:?}");
    out.results.clear();
    core.submit(job, vec![call(job, 4, aid, vec![])], &mut out);
    let (_, _, r) = out.results.pop().expect("a call on a dead actor fails at once");
    assert_eq!(r.unwrap_err().kind, FailureKind::ActorDied);
    checked(&core);
}

#[test]
fn killing_an_actor_fails_its_queued_calls_and_it_is_not_restarted() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let (a, ea) = node(&mut core, ResourceSet::cpus(1.0), now, &mut out);
    let job = actor_job(&mut core);
    let aid = ObjectId::new(job, 1);
    core.node_credits(a, ea, 1, now);
    core.submit(job, vec![create(job, 1, "k", 5)], &mut out);
    core.schedule(&mut out);
    out.take_dispatched();
    core.submit(job, vec![call(job, 2, aid, vec![])], &mut out);
    // Killed in the same batch as a call: the call is not sent.
    core.kill_actors(&[aid], &mut out);
    core.schedule(&mut out);
    assert_eq!(out.cancels, vec![(a, aid)], "the node is told to end the actor's process");
    assert!(out.take_dispatched().is_empty());
    checked(&core);
    out.cancels.clear();
    core.tasks_finished(a, ea, vec![(aid, Err(Failure::new(FailureKind::Cancelled, "killed")))], now, &mut out);
    checked(&core);
    let (_, _, r) = out.results.iter().find(|(_, t, _)| *t == ObjectId::new(job, 2)).cloned().expect("the queued call failed");
    let f = r.unwrap_err();
    assert!(f.kind == FailureKind::ActorDied && f.message.contains("killed"), "{f:?}");
    out.results.clear();
    core.node_credits(a, ea, 1, now);
    core.schedule(&mut out);
    assert!(out.take_dispatched().is_empty(), "a killed actor is not restarted");
    // Its name is free again.
    core.submit(job, vec![create(job, 3, "k", 0)], &mut out);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched().len(), 1);
    checked(&core);
}

#[test]
fn names_are_unique_among_live_actors() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let job = actor_job(&mut core);
    core.submit(job, vec![create(job, 1, "n", 0), create(job, 2, "n", 0), call(job, 3, ObjectId::new(job, 2), vec![])], &mut out);
    checked(&core);
    let (_, t, r) = out.results.pop().expect("the duplicate's call failed");
    assert_eq!(t, ObjectId::new(job, 3));
    let f = r.unwrap_err();
    assert!(f.kind == FailureKind::ActorDied && f.message.contains("taken"), "{f:?}");
    let st = core.snapshot(t0());
    assert_eq!(
        st.actors.iter().map(|a| a.state.clone()).collect::<Vec<_>>(),
        vec![shoal_domain::actor::ActorState::Pending, shoal_domain::actor::ActorState::Dead]
    );
}

#[test]
fn a_job_that_ends_ends_its_actors_and_other_jobs_calls_on_them_fail() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let (a, ea) = node(&mut core, ResourceSet::cpus(1.0), now, &mut out);
    let owner = actor_job(&mut core);
    let other = actor_job(&mut core);
    let aid = ObjectId::new(owner, 1);
    core.submit(owner, vec![create(owner, 1, "", 0)], &mut out);
    core.node_credits(a, ea, 1, now);
    core.schedule(&mut out);
    out.take_dispatched();
    // The other job's calls: one on the node, one waiting for an input.
    let p = ObjectId::new(other, 1);
    core.submit(other, vec![task(other, 1, 0, vec![]), call(other, 2, aid, vec![]), call(other, 3, aid, vec![NewArg::Object(p)])], &mut out);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched().iter().map(|(_, t)| t.task).collect::<Vec<_>>(), vec![ObjectId::new(other, 2)]);
    core.job_disconnected(owner, &mut out);
    checked(&core);
    assert!(out.cancels.contains(&(a, aid)), "the actor's process is ended");
    let failed: Vec<TaskId> = out.results.iter().filter(|(_, _, r)| matches!(r, Err(f) if f.kind == FailureKind::ActorDied)).map(|(_, t, _)| *t).collect();
    assert_eq!(failed, vec![ObjectId::new(other, 3)], "the queued call fails at once");
    out.results.clear();
    // The one on the node fails when the node says so.
    core.tasks_finished(a, ea, vec![(ObjectId::new(other, 2), Err(Failure::new(FailureKind::WorkerDied, "the actor's process ended")))], now, &mut out);
    let (_, _, r) = out.results.pop().unwrap();
    assert_eq!(r.unwrap_err().kind, FailureKind::ActorDied);
    assert!(core.snapshot(now).actors.is_empty());
    checked(&core);
}

#[test]
fn a_detached_actor_outlives_its_job_which_ends_with_it() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let (a, ea) = node(&mut core, ResourceSet::cpus(2.0), now, &mut out);
    let owner = actor_job(&mut core);
    let aid = ObjectId::new(owner, 1);
    let mut spec = actor_spec("keeper");
    spec.detached = true;
    let plain = ObjectId::new(owner, 2);
    core.submit(
        owner,
        vec![NewTask { actor: ActorRole::Create(spec), ..create(owner, 1, "", 0) }, create(owner, 2, "", 0), task(owner, 3, 1, vec![])],
        &mut out,
    );
    core.node_credits(a, ea, 3, now);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched().len(), 3);
    core.job_disconnected(owner, &mut out);
    checked(&core);
    // Its other actor and its task are cancelled on the node; the
    // detached one is not, and the job is not over on the node.
    assert!(out.cancels.contains(&(a, plain)) && out.cancels.contains(&(a, ObjectId::new(owner, 3))), "{:?}", out.cancels);
    assert!(!out.cancels.contains(&(a, aid)));
    assert!(out.finished_jobs.is_empty(), "the node keeps the job for its detached actor");
    out.cancels.clear();
    core.tasks_finished(
        a,
        ea,
        vec![(plain, Err(Failure::new(FailureKind::Cancelled, "killed"))), (ObjectId::new(owner, 3), Err(Failure::new(FailureKind::Cancelled, "x")))],
        now,
        &mut out,
    );
    checked(&core);
    out.results.clear();
    assert!(core.job_reattached(owner).is_none(), "nobody resumes a job whose driver ended it");
    // Another driver calls it.
    let other = actor_job(&mut core);
    core.submit(other, vec![call(other, 1, aid, vec![])], &mut out);
    core.schedule(&mut out);
    assert_eq!(out.take_dispatched().iter().map(|(_, d)| d.task).collect::<Vec<_>>(), vec![ObjectId::new(other, 1)]);
    let st = core.snapshot(now);
    let live: Vec<_> = st.actors.iter().filter(|x| x.state != shoal_domain::actor::ActorState::Dead).map(|x| x.id).collect();
    assert_eq!(live, vec![aid]);
    // Killed: the job ends at last.
    core.kill_actors(&[aid], &mut out);
    core.tasks_finished(a, ea, vec![(aid, Err(Failure::new(FailureKind::Cancelled, "killed")))], now, &mut out);
    core.schedule(&mut out);
    checked(&core);
    assert_eq!(out.finished_jobs, vec![(a, owner)], "the job ended with its last detached actor");
    assert!(core.snapshot(now).actors.iter().all(|x| x.id.job() != owner));
    // A handle the other driver still holds: its next call learns the
    // actor was killed, not that it never existed.
    out.results.clear();
    core.submit(other, vec![call(other, 2, aid, vec![])], &mut out);
    core.schedule(&mut out);
    checked(&core);
    let (_, _, r) = out.results.pop().expect("the call failed at once");
    let e = r.unwrap_err();
    assert_eq!(e.kind, FailureKind::ActorDied);
    assert!(e.message.contains("killed"), "{}", e.message);
}

#[test]
fn a_live_nodes_id_is_refused_to_another_process_but_not_to_the_same_one_or_after_it_went_silent() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let now = t0();
    let id = NodeId::random();
    let reg =
        |instance| NodeRegistration { node_id: Some(id), instance, resources: ResourceSet::cpus(1.0), pid: 7, hostname: "h".into(), ..Default::default() };
    assert!(core.registration_conflict(&reg(1), now).is_none(), "a new id is free");
    core.node_registered(reg(1), now, &mut out);
    let e = core.registration_conflict(&reg(2), now).expect("another process is refused");
    assert!(e.to_string().contains("pid 7 on h"), "{e}");
    assert!(core.registration_conflict(&reg(1), now).is_none(), "the same process reconnecting is not");
    let later = now + CoreConfig::default().heartbeat_timeout + Duration::from_secs(1);
    assert!(core.registration_conflict(&reg(2), later).is_none(), "nor a new process once the old one went silent");
}

#[test]
fn pending_demand_counts_queued_tasks_by_shape_and_objects_lists_the_largest_first() {
    let mut core = Core::new(CoreConfig::default());
    let mut out = Rec::default();
    let gpu = ResourceSet { cpus: 1.0, custom: vec![("gpu".into(), 1.0)] };
    let job = job_with(&mut core, &[("small", ResourceSet::cpus(1.0), 0), ("big", ResourceSet::cpus(4.0), 0)]);
    // No node: everything waits. 5 small, 3 big, 2 small asking for a GPU per call, interleaved.
    let mut tasks = Vec::new();
    for i in 1..=10u64 {
        let mut t = task(job, i, if i % 3 == 0 { 1 } else { 0 }, vec![]);
        if i == 4 || i == 8 {
            t.resources = Some(gpu.clone());
        }
        tasks.push(t);
    }
    core.submit(job, tasks, &mut out);
    assert_eq!(core.ready_len(), 10);
    let demand = core.pending_demand();
    assert_eq!(demand, vec![(ResourceSet::cpus(1.0), 5), (ResourceSet::cpus(4.0), 3), (gpu, 2)]);

    // Objects: stored ones by size, largest first, then inline ones; the
    // total counts all of them whatever the limit.
    let (n, _) = node(&mut core, ResourceSet::cpus(1.0), t0(), &mut out);
    for (seq, size) in [(100u64, 10u64), (101, 5000), (102, 70), (103, 900), (104, 1)] {
        core.put(job, ObjectId::new(job, seq), PutValue::Stored { size, node: n }, &mut out);
    }
    core.put(job, ObjectId::new(job, 105), PutValue::Inline(Bytes::from_static(b"inline")), &mut out);
    let (rows, total) = core.objects(None, 3);
    assert_eq!(total, 6);
    assert_eq!(rows.iter().map(|r| r.size).collect::<Vec<_>>(), vec![5000, 900, 70]);
    assert!(rows.iter().all(|r| r.stored && r.holders == vec![n]));
    let (rows, _) = core.objects(Some(job), 100);
    assert_eq!(rows.iter().map(|r| r.size).collect::<Vec<_>>(), vec![5000, 900, 70, 10, 1, 6]);
    assert!(!rows.last().unwrap().stored);
    assert_eq!(core.objects(Some(job + 1), 10), (Vec::new(), 0));
    assert_eq!(core.objects(None, 0).0.len(), 0);
}
