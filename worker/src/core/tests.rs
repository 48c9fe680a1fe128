//! Behaviour of the worker core, driven without sockets or processes: a
//! map stands in for the object store and a recorder for the effects.

use super::fakes::*;
use super::*;
use bytes::Bytes;
use shoal_domain::actor::ActorPart;

fn ok(b: &'static [u8]) -> Result<Value, Failure> {
    Ok(Value::Inline(Bytes::from_static(b)))
}

/// A core on a node with `cpus` CPUs, connected, with job 1 known (one
/// function `f` of one CPU, `io` of none) and its binary ready.
struct World {
    core: WorkerCore<FakeStore>,
    fx: Rec,
    now: Instant,
}

impl World {
    fn new(cpus: f64) -> World {
        Self::with(ResourceSet::cpus(cpus), None)
    }

    fn with(resources: ResourceSet, max_executors: Option<usize>) -> World {
        let mut w = World { core: WorkerCore::new(CoreConfig::new(resources, max_executors), FakeStore::default()), fx: Rec::default(), now: Instant::now() };
        w.core.connected("node-a".into());
        w.head(HeadMessage { jobs: vec![job_info(JOB, vec![func("f", 1.0), func("io", 0.0)])], ..Default::default() });
        w.core.binary_ready(JOB, Ok("/bin/prog".into()));
        w
    }

    fn head(&mut self, msg: HeadMessage) {
        self.core.head_message(msg, &mut self.fx);
        self.step();
    }

    fn tasks(&mut self, ds: Vec<Dispatch>) {
        self.head(HeadMessage { tasks: ds, ..Default::default() });
    }

    /// What the shell does after every burst of events.
    fn step(&mut self) {
        self.core.pump(self.now, &mut self.fx);
        self.core.flush(&mut self.fx);
        if let Err(e) = self.core.check_invariants() {
            panic!("invariant broken: {e}");
        }
        assert_eq!(self.core.pins_held(), self.pins_in_store(), "pins the core holds and pins in the store differ");
    }

    fn pins_in_store(&self) -> HashMap<ObjectId, usize> {
        self.core.store().objects.borrow().iter().filter(|(_, o)| o.pins > 0).map(|(id, o)| (*id, o.pins)).collect()
    }

    fn hello(&mut self, exec: ExecId) -> bool {
        let ok = self.core.executor_hello(exec, exec_protocol(), exec_protocol(), self.now, &mut self.fx);
        self.step();
        ok
    }

    fn finish(&mut self, exec: ExecId, results: Vec<(TaskId, Result<Value, Failure>)>) {
        self.now += Duration::from_micros(100);
        self.core.executor_results(exec, results, self.now);
        self.step();
    }

    fn exited(&mut self, exec: ExecId, status: &str) {
        self.core.executor_exited(exec, status, "", &mut self.fx);
        self.step();
    }
}

fn exec_protocol() -> u32 {
    7
}

const E1: ExecId = ExecId(1);
const E2: ExecId = ExecId(2);

#[test]
fn a_task_starts_an_executor_and_is_sent_after_its_hello_with_the_function_names() {
    let mut w = World::new(2.0);
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    assert_eq!(w.fx.spawned, vec![(E1, JOB)]);
    assert!(w.fx.sent.is_empty(), "nothing is sent before hello");
    assert!(w.hello(E1));
    assert_eq!(w.fx.sent.len(), 1);
    let (exec, first, names, tasks) = &w.fx.sent[0];
    assert_eq!((*exec, *first, names.clone()), (E1, 0, vec!["f".to_string(), "io".to_string()]));
    assert_eq!(tasks.iter().map(|t| t.task).collect::<Vec<_>>(), vec![t(1)]);
    w.finish(E1, vec![(t(1), ok(b"r"))]);
    assert_eq!(w.fx.results(), vec![(t(1), ok(b"r"))]);
}

#[test]
fn function_names_are_sent_once_and_new_ones_incrementally() {
    let mut w = World::new(1.0);
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    w.hello(E1);
    w.finish(E1, vec![(t(1), ok(b""))]);
    w.head(HeadMessage { jobs: vec![JobInfo { job: JOB, binary: "bin1".into(), first_function: 2, functions: vec![func("g", 1.0)] }], ..Default::default() });
    w.tasks(vec![dispatch(t(2), 2, vec![])]);
    let last = w.fx.sent.last().unwrap();
    assert_eq!((last.1, last.2.clone()), (2, vec!["g".to_string()]), "only the new function");
    assert_eq!(w.fx.fetches, vec![(JOB, "bin1".to_string())], "a job's binary is fetched once");
}

#[test]
fn an_idle_executor_of_the_job_is_reused() {
    let mut w = World::new(1.0);
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    w.hello(E1);
    w.finish(E1, vec![(t(1), ok(b""))]);
    w.tasks(vec![dispatch(t(2), 0, vec![])]);
    assert_eq!(w.fx.spawned.len(), 1);
    assert_eq!(w.fx.sent_to(E1), vec![t(1), t(2)]);
}

#[test]
fn cpu_slots_bound_what_runs_and_a_finished_task_frees_its_slot_fifo() {
    let mut w = World::new(2.0);
    w.tasks((1..=4).map(|i| dispatch(t(i), 0, vec![])).collect());
    assert_eq!(w.fx.spawned.len(), 2, "two CPUs, two executors");
    w.hello(E1);
    w.hello(E2);
    assert_eq!(w.core.queued(), 2);
    let first: Vec<TaskId> = w.fx.sent.iter().flat_map(|s| s.3.iter().map(|t| t.task)).collect();
    assert_eq!(first, vec![t(1), t(2)], "FIFO");
    w.finish(E2, vec![(t(2), ok(b""))]);
    assert_eq!(w.fx.sent_to(E2), vec![t(2), t(3)], "the next in line goes to the freed slot");
}

#[test]
fn credits_fill_the_pipeline_then_top_up_in_batches() {
    let mut w = World::new(2.0);
    let first = w.fx.credits();
    assert_eq!(first as usize, pipeline::wanted(2, 1), "a fresh node asks for every slot and spares");
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    assert_eq!(w.fx.credits(), first, "one used credit is not worth a message");
    w.tasks((2..=first as u64).map(|i| dispatch(t(i), 0, vec![])).collect());
    assert_eq!(w.fx.credits(), first, "every credit used, every task held: nothing more yet");
    w.hello(E1);
    w.finish(E1, vec![(t(1), ok(b""))]);
    assert_eq!(w.fx.credits(), first + 1, "the head owes nothing: a finished task is replaced at once");
}

#[test]
fn a_reconnect_forgets_outstanding_credits() {
    let mut w = World::new(1.0);
    let before = w.fx.credits();
    w.core.session_lost(&mut w.fx);
    w.core.connected("node-a".into());
    w.head(HeadMessage { jobs: vec![job_info(JOB, vec![func("f", 1.0)])], ..Default::default() });
    assert_eq!(w.fx.credits(), before * 2, "the new session is asked for work afresh");
}

#[test]
fn a_drained_node_asks_for_nothing_and_is_done_when_its_tasks_are() {
    let mut w = World::new(1.0);
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    w.hello(E1);
    let credits = w.fx.credits();
    w.head(HeadMessage { drain: true, ..Default::default() });
    assert!(!w.core.drained(), "a task is still running");
    w.finish(E1, vec![(t(1), ok(b"x"))]);
    assert_eq!(w.fx.credits(), credits, "no credits while draining");
    assert!(w.core.drained());
    assert_eq!(w.fx.results().len(), 1, "the held task's result is still reported");
}

#[test]
fn failures_name_this_node() {
    let mut w = World::new(1.0);
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    w.hello(E1);
    w.finish(E1, vec![(t(1), Err(Failure::new(FailureKind::Panicked, "boom")))]);
    let f = w.fx.failure_of(t(1)).unwrap();
    assert_eq!((f.kind, f.node.as_str()), (FailureKind::Panicked, "node-a"));
}

#[test]
fn an_executor_death_fails_the_running_task_and_requeues_the_ones_behind_it() {
    let mut w = World::new(1.0);
    // Short tasks are pipelined: learn that f is short first.
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    w.hello(E1);
    for i in 2..40 {
        w.finish(E1, vec![(t(i - 1), ok(b""))]);
        w.tasks(vec![dispatch(t(i), 0, vec![])]);
    }
    w.tasks(vec![dispatch(t(40), 0, vec![]), dispatch(t(41), 0, vec![])]);
    let on_e1 = w.core.executors()[0].3;
    assert!(on_e1 >= 2, "pipelined: {on_e1} tasks on the executor");
    w.exited(E1, "signal 9");
    let f = w.fx.failure_of(t(39)).unwrap();
    assert_eq!(f.kind, FailureKind::WorkerDied);
    assert!(f.message.contains("pid 1001") && f.message.contains("signal 9"), "{}", f.message);
    assert_eq!(w.fx.spawned.len(), 2, "a replacement executor starts");
    w.hello(E2);
    assert_eq!(w.fx.sent_to(E2).first(), Some(&t(40)), "the tasks behind it run, in order");
    assert!(w.fx.failure_of(t(40)).is_none());
}

impl World {
    /// One CPU; task 1 running on executor 1 with a stored argument pinned.
    fn running_on_a_pinned_argument() -> (World, ObjectId) {
        let mut w = World::new(1.0);
        let arg = ObjectId::new(JOB, 100);
        w.core.store().sealed(arg);
        w.tasks(vec![dispatch(t(1), 0, vec![stored(arg)])]);
        w.hello(E1);
        assert_eq!(w.core.store().pins(arg), 1);
        (w, arg)
    }
}

#[test]
fn a_dead_executor_releases_its_pins_and_its_half_written_results() {
    let (mut w, arg) = World::running_on_a_pinned_argument();
    w.core.store().created(t(1), E1);
    w.exited(E1, "exit status 101");
    assert_eq!(w.core.store().pins(arg), 0, "the argument's pin went with it");
    assert!(!w.core.store().has(t(1)), "its unsealed result space was reclaimed");
}

#[test]
fn an_executor_that_exits_before_hello_breaks_its_job_with_its_stderr() {
    let mut w = World::new(1.0);
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    w.core.executor_exited(E1, "exit status 1", "error while loading shared libraries", &mut w.fx);
    w.step();
    let f = w.fx.failure_of(t(1)).unwrap();
    assert_eq!(f.kind, FailureKind::BinaryIncompatible);
    assert!(f.message.contains("exited before connecting") && f.message.contains("shared libraries"), "{}", f.message);
    w.tasks(vec![dispatch(t(2), 0, vec![])]);
    assert_eq!(w.fx.failure_of(t(2)).unwrap().kind, FailureKind::BinaryIncompatible, "later tasks of the job fail the same way");
    assert_eq!(w.fx.spawned.len(), 1, "no executor is started again for a broken binary");
}

#[test]
fn an_executor_silent_past_the_hello_timeout_breaks_its_job() {
    let mut w = World::new(1.0);
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    w.core.tick(w.now + Duration::from_secs(1), &mut w.fx);
    assert!(w.fx.killed.is_empty(), "still within the timeout");
    w.core.tick(w.now + HELLO_TIMEOUT + Duration::from_secs(1), &mut w.fx);
    w.step();
    assert_eq!(w.fx.killed, vec![E1]);
    let f = w.fx.failure_of(t(1)).unwrap();
    assert!(f.message.contains("did not connect"), "{}", f.message);
}

#[test]
fn an_executor_speaking_another_protocol_is_refused_and_breaks_its_job() {
    let mut w = World::new(1.0);
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    assert!(!w.core.executor_hello(E1, 1, 2, w.now, &mut w.fx));
    w.step();
    assert_eq!(w.fx.killed, vec![E1]);
    let f = w.fx.failure_of(t(1)).unwrap();
    assert!(f.message.contains("protocol 1") && f.message.contains("speaks 2"), "{}", f.message);
    assert!(!w.core.executor_hello(ExecId(99), 2, 2, w.now, &mut w.fx), "an unknown executor is refused");
}

#[test]
fn a_binary_that_cannot_start_breaks_its_job() {
    let mut w = World::new(1.0);
    w.fx.spawn_error = Some("permission denied".into());
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    let f = w.fx.failure_of(t(1)).unwrap();
    assert_eq!(f.kind, FailureKind::BinaryIncompatible);
    assert!(f.message.contains("cannot start the program binary /bin/prog") && f.message.contains("permission denied"), "{}", f.message);
}

#[test]
fn tasks_wait_for_their_binary_and_fail_if_it_cannot_run_here() {
    let mut w = World::new(1.0);
    w.head(HeadMessage { jobs: vec![job_info(2, vec![func("f", 1.0)])], ..Default::default() });
    w.tasks(vec![dispatch(ObjectId::new(2, 1), 0, vec![])]);
    assert!(w.fx.spawned.is_empty(), "the binary is still being fetched");
    assert_eq!(w.core.queued(), 1);
    w.core.binary_ready(2, Err("not an ELF executable".into()));
    w.step();
    let f = w.fx.failure_of(ObjectId::new(2, 1)).unwrap();
    assert_eq!((f.kind, f.message.as_str()), (FailureKind::BinaryIncompatible, "not an ELF executable"));
}

#[test]
fn unknown_jobs_and_functions_fail_with_function_not_found() {
    let mut w = World::new(1.0);
    w.tasks(vec![dispatch(ObjectId::new(9, 1), 0, vec![]), dispatch(t(2), 7, vec![])]);
    let a = w.fx.failure_of(ObjectId::new(9, 1)).unwrap();
    assert_eq!(a.kind, FailureKind::FunctionNotFound);
    assert!(a.message.contains("job 9 is unknown"), "{}", a.message);
    let b = w.fx.failure_of(t(2)).unwrap();
    assert!(b.message.contains("function index 7"), "{}", b.message);
}

#[test]
fn a_missing_argument_is_pulled_once_and_its_tasks_run_when_it_arrives() {
    let mut w = World::new(2.0);
    let arg = ObjectId::new(JOB, 100);
    w.tasks(vec![dispatch(t(1), 0, vec![stored(arg)]), dispatch(t(2), 0, vec![stored(arg)]), dispatch(t(3), 0, vec![])]);
    assert_eq!(w.fx.pulls.iter().map(|p| p.id).collect::<Vec<_>>(), vec![arg], "one pull for two tasks");
    assert_eq!(w.fx.spawned.len(), 1, "the task without the argument does not wait");
    w.core.store().sealed(arg);
    w.core.pulled(arg, Ok(()));
    w.step();
    assert_eq!(w.fx.reports.last().unwrap().copied, vec![arg], "the head learns of the copy");
    assert_eq!(w.fx.spawned.len(), 2);
}

#[test]
fn a_failed_pull_fails_the_tasks_waiting_for_it_with_object_lost() {
    let mut w = World::new(1.0);
    let arg = ObjectId::new(JOB, 100);
    w.tasks(vec![dispatch(t(1), 0, vec![stored(arg)])]);
    w.core.pulled(arg, Err("peer:1: its object store does not answer".into()));
    w.step();
    let f = w.fx.failure_of(t(1)).unwrap();
    assert_eq!(f.kind, FailureKind::ObjectLost);
    assert!(f.message.contains("argument object 1.100") && f.message.contains("does not answer"), "{}", f.message);
}

#[test]
fn a_spilled_argument_is_restored_before_its_task_runs_and_read_from_its_file() {
    let mut w = World::new(1.0);
    let arg = ObjectId::new(JOB, 100);
    w.core.store().spilled(arg);
    w.tasks(vec![dispatch(t(1), 0, vec![stored(arg)])]);
    assert_eq!(w.fx.restores, vec![arg]);
    assert!(w.fx.spawned.is_empty(), "it waits for the restore");
    w.core.restored(arg);
    w.step();
    w.hello(E1);
    let task = &w.fx.sent[0].3[0];
    assert!(matches!(&task.args[0], ExecArg::File { object, .. } if *object == arg), "{:?}", task.args);
}

#[test]
fn an_argument_gone_from_the_store_at_dispatch_fails_the_task_and_frees_the_slot() {
    let mut w = World::new(1.0);
    let (a, b) = (ObjectId::new(JOB, 100), ObjectId::new(JOB, 101));
    w.core.store().sealed(a);
    w.core.store().sealed(b);
    // Both are here when the task arrives; b is freed before it runs.
    w.core.head_message(HeadMessage { tasks: vec![dispatch(t(1), 0, vec![stored(a), stored(b)])], ..Default::default() }, &mut w.fx);
    w.core.store().objects.borrow_mut().remove(&b);
    w.step();
    let f = w.fx.failure_of(t(1)).unwrap();
    assert_eq!(f.kind, FailureKind::ObjectLost);
    assert_eq!(w.core.store().pins(a), 0, "the pin taken for the first argument is dropped");
    w.tasks(vec![dispatch(t(2), 0, vec![])]);
    w.hello(E1);
    assert_eq!(w.fx.sent_to(E1), vec![t(2)], "the slot was given back");
}

#[test]
fn pins_are_released_as_the_executor_reports_them_and_only_once() {
    let mut w = World::new(1.0);
    let arg = ObjectId::new(JOB, 100);
    w.core.store().sealed(arg);
    w.tasks(vec![dispatch(t(1), 0, vec![stored(arg), stored(arg)])]);
    w.hello(E1);
    assert_eq!(w.core.store().pins(arg), 2, "one pin per argument");
    w.core.executor_released(E1, &[arg]);
    w.step();
    assert_eq!(w.core.store().pins(arg), 1);
    w.core.executor_released(E1, &[arg, arg, arg]);
    w.step();
    assert_eq!(w.core.store().pins(arg), 0, "extra releases are ignored");
}

#[test]
fn a_stored_result_is_sealed_and_one_that_cannot_be_is_object_store_full() {
    let mut w = World::new(1.0);
    w.tasks(vec![dispatch(t(1), 0, vec![]), dispatch(t(2), 0, vec![])]);
    w.hello(E1);
    w.core.store().created(t(1), E1);
    w.finish(E1, vec![(t(1), Ok(Value::Stored { size: 10 }))]);
    assert!(w.core.store().is_sealed(t(1)));
    assert_eq!(w.fx.results()[0], (t(1), Ok(Value::Stored { size: 10 })));
    w.core.store().created(t(2), E1);
    w.core.store().seal_fails.borrow_mut().insert(t(2));
    w.finish(E1, vec![(t(2), Ok(Value::Stored { size: 10 }))]);
    assert_eq!(w.fx.failure_of(t(2)).unwrap().kind, FailureKind::ObjectStoreFull);
}

#[test]
fn a_failed_task_gives_back_the_space_it_was_writing_into() {
    let mut w = World::new(1.0);
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    w.hello(E1);
    w.core.store().created(t(1), E1);
    w.finish(E1, vec![(t(1), Err(Failure::new(FailureKind::ResultEncode, "bad")))]);
    assert!(!w.core.store().has(t(1)));
}

#[test]
fn cancelling_a_queued_task_needs_no_executor() {
    let mut w = World::new(1.0);
    w.tasks(vec![dispatch(t(1), 0, vec![]), dispatch(t(2), 0, vec![])]);
    w.head(HeadMessage { cancel: vec![t(2)], ..Default::default() });
    assert_eq!(w.fx.failure_of(t(2)).unwrap().message, "cancelled before it started");
    assert!(w.fx.killed.is_empty());
}

#[test]
fn cancelling_a_running_task_ends_its_executor_and_the_tasks_behind_it_run_elsewhere() {
    let mut w = World::new(1.0);
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    w.hello(E1);
    w.tasks(vec![dispatch(t(2), 0, vec![])]);
    w.head(HeadMessage { cancel: vec![t(1)], ..Default::default() });
    assert_eq!(w.fx.killed, vec![E1]);
    let f = w.fx.failure_of(t(1)).unwrap();
    assert_eq!(f.kind, FailureKind::Cancelled);
    assert!(f.message.contains("executor was stopped"));
    w.hello(E2);
    assert_eq!(w.fx.sent_to(E2), vec![t(2)]);
    w.head(HeadMessage { cancel: vec![t(77)], ..Default::default() });
    assert_eq!(w.fx.killed, vec![E1], "cancelling an unknown task does nothing");
}

#[test]
fn late_results_of_a_killed_executor_are_dropped_with_their_bytes() {
    let mut w = World::new(1.0);
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    w.hello(E1);
    w.head(HeadMessage { cancel: vec![t(1)], ..Default::default() });
    let reported = w.fx.results().len();
    w.core.store().created(t(1), E1);
    w.finish(E1, vec![(t(1), Ok(Value::Stored { size: 3 }))]);
    assert_eq!(w.fx.results().len(), reported, "nothing more is reported");
    assert!(!w.core.store().has(t(1)));
}

#[test]
fn a_finished_job_ends_its_executors_drops_its_tasks_and_frees_its_objects() {
    let mut w = World::new(1.0);
    let obj = ObjectId::new(JOB, 50);
    w.core.store().sealed(obj);
    w.tasks(vec![dispatch(t(1), 0, vec![]), dispatch(t(2), 0, vec![])]);
    w.hello(E1);
    w.head(HeadMessage { jobs_finished: vec![JOB], ..Default::default() });
    assert_eq!(w.fx.killed, vec![E1]);
    assert_eq!(w.core.queued(), 0);
    assert!(w.core.executors().is_empty());
    assert!(!w.core.store().has(obj));
    assert!(w.fx.results().is_empty(), "a finished job's tasks are not reported");
}

#[test]
fn the_store_frees_what_the_head_says_nobody_references() {
    let mut w = World::new(1.0);
    let obj = ObjectId::new(JOB, 50);
    w.core.store().sealed(obj);
    w.head(HeadMessage { free_objects: vec![obj], ..Default::default() });
    assert!(!w.core.store().has(obj));
}

#[test]
fn a_lost_session_drops_everything_held_and_reports_nothing_until_reconnected() {
    let mut w = World::new(2.0);
    let arg = ObjectId::new(JOB, 100);
    w.core.store().sealed(arg);
    w.tasks(vec![dispatch(t(1), 0, vec![stored(arg)]), dispatch(t(2), 0, vec![]), dispatch(t(3), 0, vec![])]);
    w.hello(E1);
    w.core.session_lost(&mut w.fx);
    w.step();
    assert_eq!(w.fx.killed.len(), 2);
    assert_eq!(w.core.queued(), 0);
    assert_eq!(w.core.store().pins(arg), 0);
    assert!(w.core.store().has(arg), "stored objects stay for the next registration");
    let reports = w.fx.reports.len();
    w.core.executor_results(E1, vec![(t(1), ok(b""))], w.now);
    w.step();
    assert_eq!(w.fx.reports.len(), reports, "nothing is sent without a session");
}

#[test]
fn tasks_that_hold_nothing_do_not_wait_for_cpus_nor_use_up_credits() {
    let mut w = World::new(1.0);
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    w.hello(E1);
    // The CPU is busy; I/O tasks still start, beyond the executor cap.
    w.tasks((2..=6).map(|i| dispatch(t(i), 1, vec![])).collect());
    assert_eq!(w.fx.spawned.len(), 6, "every I/O task gets an executor");
    for e in 2..=6 {
        w.hello(ExecId(e));
    }
    let credits = w.fx.credits();
    w.finish(E1, vec![(t(1), ok(b""))]);
    assert!(w.fx.credits() > credits, "the node keeps asking for work while I/O tasks wait");
}

#[test]
fn at_the_executor_cap_an_idle_executor_of_another_job_is_replaced() {
    let mut w = World::with(ResourceSet::cpus(1.0), Some(1));
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    w.hello(E1);
    w.finish(E1, vec![(t(1), ok(b""))]);
    w.head(HeadMessage { jobs: vec![job_info(2, vec![func("f", 1.0)])], ..Default::default() });
    w.core.binary_ready(2, Ok("/bin/other".into()));
    w.tasks(vec![dispatch(ObjectId::new(2, 1), 0, vec![])]);
    assert_eq!(w.fx.killed, vec![E1], "the idle executor of job 1 made room");
    assert_eq!(w.fx.spawned.last(), Some(&(E2, 2)));
}

#[test]
fn custom_resources_gate_placement() {
    let mut w = World::with(ResourceSet::cpus(2.0).with("gpu", 1.0), None);
    let gpu = FunctionDef { name: "train".into(), resources: ResourceSet::cpus(1.0).with("gpu", 1.0), max_retries: 0, retry_exceptions: false };
    w.head(HeadMessage { jobs: vec![JobInfo { job: JOB, binary: "bin1".into(), first_function: 2, functions: vec![gpu] }], ..Default::default() });
    w.tasks(vec![dispatch(t(1), 2, vec![]), dispatch(t(2), 2, vec![])]);
    assert_eq!(w.fx.spawned.len(), 1, "one GPU: one at a time");
    w.hello(E1);
    w.finish(E1, vec![(t(1), ok(b""))]);
    assert_eq!(w.fx.sent_to(E1), vec![t(1), t(2)]);
}

#[test]
fn short_tasks_are_pipelined_into_a_busy_executor_long_ones_are_not() {
    let mut w = World::new(1.0);
    w.tasks(vec![dispatch(t(1), 0, vec![]), dispatch(t(2), 0, vec![])]);
    w.hello(E1);
    assert_eq!(w.fx.sent_to(E1), vec![t(1)], "unknown length: one at a time");
    // Tasks measured at ~0.1 ms each (see `finish`) are short against the
    // 2 ms target: several may be queued in one executor.
    for i in 2..30 {
        w.finish(E1, vec![(t(i - 1), ok(b""))]);
        w.tasks(vec![dispatch(t(i + 1), 0, vec![])]);
    }
    assert!(w.core.executors()[0].3 >= 2, "pipelined: {:?}", w.core.executors());
    assert_eq!(w.fx.spawned.len(), 1);
}

#[test]
fn shutdown_ends_every_executor() {
    let mut w = World::new(2.0);
    w.tasks(vec![dispatch(t(1), 0, vec![]), dispatch(t(2), 0, vec![])]);
    w.core.shutdown(&mut w.fx);
    w.fx.killed.sort();
    assert_eq!(w.fx.killed, vec![E1, E2]);
    assert!(w.core.executors().is_empty());
}

#[test]
fn results_for_tasks_not_on_the_executor_are_ignored() {
    let mut w = World::new(1.0);
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    w.hello(E1);
    w.finish(E1, vec![(t(9), ok(b"?"))]);
    assert!(w.fx.results().is_empty());
    assert_eq!(w.core.executors()[0].3, 1, "its real task is still running");
}

#[test]
fn an_executor_receives_its_tasks_in_the_order_it_holds_them_across_its_hello() {
    let mut w = World::new(1.0);
    // f is known to be short: several tasks may queue in one executor.
    let s = w.core.service_by_fn.entry((JOB, 0)).or_default();
    for _ in 0..40 {
        s.observe(Duration::from_micros(20));
    }
    w.tasks(vec![dispatch(t(1), 0, vec![]), dispatch(t(2), 0, vec![])]);
    assert_eq!(w.core.executors(), vec![(E1, JOB, false, 2)], "both assigned before hello");
    // Its hello and a new task arrive in one burst.
    assert!(w.core.executor_hello(E1, 7, 7, w.now, &mut w.fx));
    w.core.head_message(HeadMessage { tasks: vec![dispatch(t(3), 0, vec![])], ..Default::default() }, &mut w.fx);
    w.step();
    assert_eq!(w.fx.sent_to(E1), vec![t(1), t(2), t(3)]);
    // Its death fails the first (the one it was running), not another.
    w.exited(E1, "signal 9");
    assert_eq!(w.fx.results().iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![t(1)]);
}

#[test]
fn a_call_with_its_own_resources_holds_those_not_its_functions() {
    let mut w = World::new(2.0);
    // f holds one CPU; this call of it holds both.
    let mut big = dispatch(t(1), 0, vec![]);
    big.resources = Some(ResourceSet::cpus(2.0));
    w.tasks(vec![big, dispatch(t(2), 0, vec![])]);
    assert_eq!(w.fx.spawned.len(), 1, "the two-CPU call leaves no room for another");
    w.hello(E1);
    w.finish(E1, vec![(t(1), ok(b""))]);
    assert_eq!(w.fx.sent_to(E1), vec![t(1), t(2)], "its CPUs are back once it finished");
}

#[test]
fn a_task_blocked_on_other_tasks_lends_its_cpu_to_them() {
    let mut w = World::new(1.0);
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    w.hello(E1);
    // t1 submits t2 and waits for it; t2 reaches this node.
    w.core.executor_blocked(E1);
    w.step();
    w.tasks(vec![dispatch(t(2), 0, vec![])]);
    assert_eq!(w.fx.spawned.len(), 2, "the waiting task's CPU runs its child");
    w.hello(E2);
    assert_eq!(w.fx.sent_to(E2), vec![t(2)]);
    // t1 is unblocked while t2 still runs: it runs over the node's size
    // (as Ray does) and nothing is given back twice.
    w.core.executor_unblocked(E1);
    w.step();
    w.finish(E2, vec![(t(2), ok(b"child"))]);
    w.finish(E1, vec![(t(1), ok(b"parent"))]);
    // One CPU again: two new tasks run one at a time.
    w.tasks(vec![dispatch(t(3), 0, vec![]), dispatch(t(4), 0, vec![])]);
    assert_eq!(w.core.queued(), 1, "back to one slot");
}

#[test]
fn a_blocked_task_gets_nothing_pipelined_behind_it_nor_does_its_function_later() {
    let mut w = World::new(1.0);
    let s = w.core.service_by_fn.entry((JOB, 0)).or_default();
    for _ in 0..40 {
        s.observe(Duration::from_micros(20));
    }
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    w.hello(E1);
    w.core.executor_blocked(E1);
    w.step();
    w.tasks(vec![dispatch(t(2), 0, vec![]), dispatch(t(3), 0, vec![])]);
    assert!(w.fx.sent_to(E1) == vec![t(1)], "nothing queued behind the blocked task");
    w.hello(E2);
    assert_eq!(w.fx.sent_to(E2), vec![t(2)], "f blocked once: its tasks are no longer pipelined");
}

#[test]
fn blocked_executors_are_bounded() {
    let mut w = World::with(ResourceSet::cpus(1.0), Some(1));
    let hard = 1 + BLOCKED_EXECUTORS_FACTOR;
    for i in 1..=20u64 {
        w.tasks(vec![dispatch(t(i), 0, vec![])]);
        if let Some((exec, ..)) = w.core.executors().last().copied() {
            w.hello(exec);
            w.core.executor_blocked(exec);
            w.step();
        }
    }
    assert_eq!(w.core.executors().len(), hard, "at most max_executors x (1 + {BLOCKED_EXECUTORS_FACTOR}) executors");
    assert_eq!(w.core.queued(), 20 - hard);
}

/// A head that lost track of a finished run (it restarted mid-rebuild)
/// sends the task again: its result is already sealed here, so it is
/// reported at once, nothing runs, and the copy is not touched.
#[test]
fn a_task_whose_result_is_already_stored_here_is_reported_without_running() {
    let mut w = World::new(1.0);
    w.core.store().sealed(t(7));
    w.tasks(vec![dispatch(t(7), 0, vec![])]);
    assert!(w.fx.spawned.is_empty(), "no executor started for it");
    let got = w.fx.results();
    assert!(matches!(got.as_slice(), [(id, Ok(Value::Stored { size: 10 }))] if *id == t(7)), "reported as stored: {got:?}");
    assert!(w.core.store().is_sealed(t(7)), "the stored copy stays");
    // The next task still runs as usual.
    w.tasks(vec![dispatch(t(8), 0, vec![])]);
    assert_eq!(w.fx.spawned.len(), 1, "the next task starts an executor");
}

/// A dedicated task (a `Process`) gets an executor process of its own:
/// never an idle pooled one, nothing pipelined behind it, and the process
/// ends once the task is done; the next one starts another.
#[test]
fn a_dedicated_task_runs_in_a_process_of_its_own_that_ends_with_it() {
    let mut w = World::new(2.0);
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    w.hello(E1);
    w.finish(E1, vec![(t(1), ok(b""))]);
    let mut d = dispatch(t(2), 0, vec![]);
    d.dedicated = true;
    w.tasks(vec![d]);
    assert_eq!(w.fx.spawned.len(), 2, "not the idle pooled executor");
    let e = w.fx.spawned[1].0;
    w.hello(e);
    w.tasks(vec![dispatch(t(3), 0, vec![])]);
    assert_eq!(w.fx.sent_to(e), vec![t(2)], "nothing else goes to a dedicated executor");
    assert_eq!(w.fx.sent_to(E1), vec![t(1), t(3)]);
    w.finish(e, vec![(t(2), ok(b"p"))]);
    assert!(w.fx.killed.contains(&e), "its process ends with it");
    let mut d = dispatch(t(4), 0, vec![]);
    d.dedicated = true;
    w.tasks(vec![d]);
    assert_eq!(w.fx.spawned.len(), 3, "the next dedicated task starts another process");
}

// ------------------------------------------------------------ actors

fn creation(task: TaskId) -> Dispatch {
    Dispatch { dedicated: true, actor: ActorPart::Create { max_concurrency: 1 }, ..dispatch(task, 1, vec![]) }
}

fn method_call(task: TaskId, actor: TaskId) -> Dispatch {
    Dispatch { actor: ActorPart::Call(actor), ..dispatch(task, 1, vec![]) }
}

#[test]
fn an_actor_gets_a_process_of_its_own_and_its_calls_go_to_it_in_order() {
    let mut w = World::new(1.0);
    let actor = t(1);
    w.tasks(vec![creation(actor), method_call(t(2), actor), method_call(t(3), actor)]);
    assert_eq!(w.fx.spawned, vec![(E1, JOB)]);
    assert!(w.fx.sent.is_empty(), "nothing before hello");
    w.hello(E1);
    assert_eq!(w.fx.sent_to(E1), vec![actor, t(2), t(3)], "constructor first, then the calls in order");
    let kinds: Vec<ExecActor> = w.fx.sent.iter().flat_map(|s| s.3.iter().map(|t| t.actor.clone())).collect();
    assert_eq!(kinds[0], ExecActor::Create { max_concurrency: 1 });
    assert_eq!(kinds[1], ExecActor::Call { method: "io".into() }, "a call names its method");
    // Calls answered; the actor stays, and ordinary tasks never go to it.
    w.finish(E1, vec![(t(2), ok(b"1")), (t(3), ok(b"2"))]);
    w.tasks(vec![dispatch(t(4), 0, vec![]), method_call(t(5), actor)]);
    assert_eq!(w.fx.spawned.len(), 2, "a plain task gets another executor");
    assert_eq!(w.fx.sent_to(E1), vec![actor, t(2), t(3), t(5)]);
    assert!(w.fx.killed.is_empty());
}

#[test]
fn calls_use_no_credits() {
    let mut w = World::new(1.0);
    let before = w.fx.credits();
    w.tasks(vec![creation(t(1))]);
    w.hello(E1);
    let granted = w.fx.credits();
    w.tasks((2..50).map(|i| method_call(t(i), t(1))).collect());
    w.finish(E1, (2..50).map(|i| (t(i), ok(b""))).collect());
    // Had the calls used credits, the worker would ask the head for 48 more.
    assert_eq!(w.fx.credits(), granted, "calls neither used nor withheld credits ({before} -> {granted} -> {})", w.fx.credits());
}

#[test]
fn an_actor_process_that_dies_fails_its_creation_and_every_call_it_held() {
    let mut w = World::new(1.0);
    let actor = t(1);
    w.tasks(vec![creation(actor), method_call(t(2), actor), method_call(t(3), actor)]);
    w.hello(E1);
    w.exited(E1, "signal 9");
    for task in [actor, t(2), t(3)] {
        assert_eq!(w.fx.failure_of(task).map(|f| f.kind), Some(FailureKind::WorkerDied), "{task}");
    }
    // A call arriving later finds no process here.
    w.tasks(vec![method_call(t(4), actor)]);
    assert_eq!(w.fx.failure_of(t(4)).map(|f| f.kind), Some(FailureKind::WorkerDied));
    assert_eq!(w.fx.spawned.len(), 1, "no process is started for a call");
}

#[test]
fn cancelling_a_call_leaves_the_actor_running_and_cancelling_the_creation_kills_it() {
    let mut w = World::new(1.0);
    let actor = t(1);
    w.tasks(vec![creation(actor), method_call(t(2), actor)]);
    w.hello(E1);
    w.head(HeadMessage { cancel: vec![t(2)], ..Default::default() });
    assert!(w.fx.killed.is_empty(), "a running call is not interrupted");
    w.head(HeadMessage { cancel: vec![actor], ..Default::default() });
    assert_eq!(w.fx.killed, vec![E1]);
    assert_eq!(w.fx.failure_of(actor).map(|f| f.kind), Some(FailureKind::Cancelled));
    assert_eq!(w.fx.failure_of(t(2)).map(|f| f.kind), Some(FailureKind::WorkerDied));
}

#[test]
fn calls_wait_behind_a_call_whose_argument_is_being_pulled() {
    let mut w = World::new(1.0);
    let actor = t(1);
    w.tasks(vec![creation(actor)]);
    w.hello(E1);
    let x = ObjectId::new(JOB, 100);
    w.tasks(vec![Dispatch { actor: ActorPart::Call(actor), ..dispatch(t(2), 1, vec![stored(x)]) }, method_call(t(3), actor)]);
    assert_eq!(w.fx.sent_to(E1), vec![actor], "call 3 waits behind call 2");
    w.core.store().sealed(x);
    w.core.pulled(x, Ok(()));
    w.step();
    assert_eq!(w.fx.sent_to(E1), vec![actor, t(2), t(3)]);
}

#[test]
fn cancelling_a_running_task_releases_the_pins_of_its_arguments() {
    let (mut w, arg) = World::running_on_a_pinned_argument();
    w.head(HeadMessage { cancel: vec![t(1)], ..Default::default() });
    assert_eq!(w.fx.failure_of(t(1)).unwrap().kind, FailureKind::Cancelled);
    assert_eq!(w.core.store().pins(arg), 0, "a cancel releases what the task had pinned");
    assert!(w.core.store().has(arg), "the object itself stays (the head decides when it goes)");
}

#[test]
fn a_task_the_head_retries_after_a_panic_runs_again_and_reports_each_attempt() {
    let mut w = World::new(1.0);
    w.tasks(vec![dispatch(t(1), 0, vec![])]);
    w.hello(E1);
    w.finish(E1, vec![(t(1), Err(Failure::new(FailureKind::Panicked, "boom")))]);
    assert_eq!(w.fx.failure_of(t(1)).unwrap().kind, FailureKind::Panicked);
    // The head's retry policy sends it again: a new attempt, the same id.
    let mut again = dispatch(t(1), 0, vec![]);
    again.attempt = 2;
    w.tasks(vec![again]);
    assert_eq!(w.fx.spawned.len(), 1, "the executor survived the panic and takes the retry");
    assert_eq!(w.fx.sent_to(E1), vec![t(1), t(1)]);
    w.finish(E1, vec![(t(1), ok(b"fine"))]);
    let mine: Vec<_> = w.fx.results().into_iter().filter(|(id, _)| *id == t(1)).collect();
    assert_eq!(mine.len(), 2, "one report per attempt");
    assert!(mine[1].1.is_ok(), "the second attempt's value is the last word");
}

#[test]
fn a_finished_job_releases_the_pins_and_pulls_of_its_waiting_tasks() {
    let mut w = World::new(1.0);
    let (here, away) = (ObjectId::new(JOB, 100), ObjectId::new(JOB, 101));
    w.core.store().sealed(here);
    // One task runs; the next waits for the CPU holding a local argument;
    // a third waits for an argument being pulled.
    w.tasks(vec![dispatch(t(1), 0, vec![]), dispatch(t(2), 0, vec![stored(here)]), dispatch(t(3), 0, vec![stored(away)])]);
    w.hello(E1);
    assert_eq!(w.fx.pulls.len(), 1);
    w.head(HeadMessage { jobs_finished: vec![JOB], ..Default::default() });
    assert_eq!(w.core.queued(), 0);
    assert!(w.pins_in_store().values().all(|n| *n == 0), "no pin outlives its job: {:?}", w.pins_in_store());
    // The pull lands after the job ended: nothing runs, nothing is reported.
    w.core.store().sealed(away);
    w.core.pulled(away, Ok(()));
    w.step();
    assert_eq!(w.fx.spawned.len(), 1, "no executor starts for a finished job");
    assert!(w.fx.results().iter().all(|(id, _)| ![t(2), t(3)].contains(id)), "its waiting tasks are not reported");
}
