//! The worker's decisions, as a plain state machine: which task runs in
//! which executor, when an executor is started, replaced or killed, how
//! many tasks to ask the head for (credits), which arguments to pin and
//! pull, what a dead executor's tasks become, cancel and drain.
//!
//! Nothing here does I/O or reads a clock. Every input is a method call
//! (`head_message`, `executor_results`, `executor_exited`, `pulled`,
//! `tick`, ...) with the time passed in where it matters; every output goes
//! through [`Effects`] (start or kill a process, send to an executor,
//! report to the head, pull an object, fetch a binary), and the node's
//! object store is reached through [`LocalStore`]. The daemon
//! (`crate::daemon`) is the I/O shell around it: it turns sockets and
//! processes into these calls and these effects into messages; unit tests
//! (`tests.rs`, `schedules.rs`) drive it with a fake store and record the
//! effects, as the head's core is driven.
//!
//! After each burst of events the shell calls [`WorkerCore::pump`]
//! (placement) and [`WorkerCore::flush`] (results and credits to the head).

#[cfg(any(test, feature = "fuzzing"))]
mod fakes;
mod invariants;
#[cfg(any(test, feature = "fuzzing"))]
pub mod schedules;
#[cfg(test)]
mod tests;

use crate::pipeline::{self, ServiceTime};
use shoal_domain::actor::ActorPart;
use shoal_domain::task::{Dispatch, ExecActor, ExecArg, ExecTask, FunctionDef, JobInfo, Payload, StoredRef, Value};
use shoal_domain::{Failure, FailureKind, JobId, ObjectId, ResourceSet, TaskId};
use shoal_store::Location;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An executor process of this worker (ids are never reused).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ExecId(pub u64);

impl fmt::Display for ExecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exec-{}", self.0)
    }
}

/// The node's shared-memory object store, as the core uses it.
/// Production passes `shoal_store::Store`; tests a map.
pub trait LocalStore {
    /// A sealed copy of `id` is here (in the arena or spilled).
    fn contains(&self, id: ObjectId) -> bool;
    /// `id` is here but spilled to disk.
    fn is_spilled(&self, id: ObjectId) -> bool;
    /// The size of the sealed copy of `id` here, if there is one.
    fn sealed_size(&self, id: ObjectId) -> Option<u64>;
    /// Pins `id` for a reader and says where to read it.
    fn pin(&self, id: ObjectId) -> Result<Location, String>;
    /// Drops one pin of `id`.
    fn unpin(&self, id: ObjectId);
    /// Seals a result an executor wrote into space it was given.
    fn seal(&self, id: ObjectId) -> Result<(), String>;
    /// Drops space given for a result that will not be sealed.
    fn abort(&self, id: ObjectId);
    /// Frees the local copy of `id`.
    fn free(&self, id: ObjectId);
    /// Frees every object of `job` but those in `keep`.
    fn free_job(&self, job: JobId, keep: &HashSet<ObjectId>);
    /// Reclaims results `exec` was half-way through writing; returns how
    /// many.
    fn reclaim_owner(&self, exec: ExecId) -> usize;
}

/// Everything the core makes happen. Production does it; tests record it.
pub trait Effects {
    /// Start an executor process for `job` from `binary`; its pid, or why
    /// it could not start. It reports back with a hello (see
    /// [`WorkerCore::executor_hello`]) or its exit.
    fn spawn_executor(&mut self, exec: ExecId, job: JobId, binary: &Path) -> Result<u32, String>;
    /// End an executor process (its exit is not reported any more).
    fn kill_executor(&mut self, exec: ExecId, pid: u32);
    /// Send tasks to a connected executor, with the names of its job's
    /// functions `first_function..` it has not seen yet.
    fn send_tasks(&mut self, exec: ExecId, first_function: u32, functions: Vec<String>, tasks: Vec<ExecTask>);
    /// Tell the head: results, credits for more tasks, objects now copied here.
    fn report(&mut self, report: Report);
    /// Fetch a stored object from one of its holders into the local store;
    /// answer with [`WorkerCore::pulled`].
    fn pull(&mut self, object: StoredRef);
    /// Bring a spilled object back into the arena off the event loop;
    /// answer with [`WorkerCore::restored`].
    fn restore(&mut self, id: ObjectId);
    /// Fetch (or find cached) the program binary `hash` of `job`; answer
    /// with [`WorkerCore::binary_ready`].
    fn fetch_binary(&mut self, job: JobId, hash: &str);
}

/// One message's worth of news for the head.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Finished tasks.
    pub results: Vec<(TaskId, Result<Value, Failure>)>,
    /// More tasks this node asks for.
    pub credits: u32,
    /// Objects pulled here (the head adds this node to their holders).
    pub copied: Vec<ObjectId>,
}

/// What the head sent in one message.
#[derive(Clone, Debug, Default)]
pub struct HeadMessage {
    /// Finish what is held, ask for no more, exit.
    pub drain: bool,
    /// Jobs' binaries and functions.
    pub jobs: Vec<JobInfo>,
    /// Objects nobody references any more.
    pub free_objects: Vec<ObjectId>,
    /// Tasks to run.
    pub tasks: Vec<Dispatch>,
    /// Tasks to cancel.
    pub cancel: Vec<TaskId>,
    /// Jobs that ended.
    pub jobs_finished: Vec<JobId>,
    /// Objects to keep when their job ends (others still reference them).
    pub keep_objects: Vec<ObjectId>,
}

/// Tunables of the worker core.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Resources this node offers.
    pub resources: ResourceSet,
    /// Executors for CPU work at once (beyond them, idle executors of
    /// other jobs are replaced).
    pub max_executors: usize,
    /// How long a new executor may take to connect back.
    pub hello_timeout: Duration,
}

impl CoreConfig {
    /// The defaults for a node offering `resources`: one executor per CPU
    /// slot plus two spares.
    pub fn new(resources: ResourceSet, max_executors: Option<usize>) -> Self {
        let slots = slots_of(&resources);
        CoreConfig { max_executors: max_executors.unwrap_or(slots + 2).max(1), resources, hello_timeout: HELLO_TIMEOUT }
    }
}

fn slots_of(r: &ResourceSet) -> usize {
    r.cpus.ceil().max(1.0) as usize
}

/// Extra executors a node may run for tasks that hold no resources
/// (`num_cpus = 0`, typically async I/O waits).
pub const IO_EXECUTORS: usize = 16;

/// How long a new executor may take to connect back, by default.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// A job's program binary, as far as this node knows.
enum Bin {
    Fetching,
    Ready(PathBuf),
    Broken(String),
}

struct Job {
    functions: Vec<FunctionDef>,
    bin: Bin,
}

/// A task held by this worker.
struct Local {
    d: Dispatch,
    res: ResourceSet,
    /// The message sent to its executor (its stored arguments pinned).
    built: Option<ExecTask>,
}

impl Local {
    fn stored_args(&self) -> impl Iterator<Item = &StoredRef> {
        self.d.args.iter().filter_map(|a| match a {
            Payload::Stored(s) => Some(s),
            Payload::Inline(_) => None,
        })
    }
}

struct Exec {
    job: JobId,
    pid: u32,
    /// Said hello (tasks can be sent).
    connected: bool,
    /// Tasks sent (or to send, before hello), in execution order.
    inflight: VecDeque<Local>,
    /// Tasks at the back of `inflight` not yet sent (no hello yet).
    unsent: usize,
    /// Resources held for its tasks (released when it goes idle).
    held: ResourceSet,
    /// Whether `held` is really taken from the node's free resources: a
    /// task blocked waiting for other tasks lends them back.
    lent: Lent,
    /// Its running task waits for other tasks (`get`, `wait`): it holds no
    /// slot and gets nothing pipelined behind it.
    blocked: bool,
    functions_sent: u32,
    started: Instant,
    last_progress: Instant,
    /// Objects pinned for its tasks' arguments, one entry per pin; released
    /// as it reports them, all at once if it dies.
    pins: Vec<ObjectId>,
    /// Started for one dedicated task (a `Process`): it runs nothing else
    /// and is ended once that task is done.
    dedicated: bool,
    /// It serves this actor (the id of its creation task, which stays at
    /// the front of `inflight` while the actor lives): the actor's calls
    /// go straight to it, in order, holding nothing.
    actor: Option<TaskId>,
}

/// Where an executor's `held` resources are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lent {
    /// Taken from the node's free resources.
    No,
    /// Given back while its task is blocked.
    Blocked,
    /// Its task came back from blocking when they were in use by others:
    /// it runs over the node's size until it finishes (as Ray does), and
    /// they are not given back twice.
    Borrowed,
}

impl Exec {
    fn idle(&self) -> bool {
        self.inflight.is_empty()
    }

    /// Counts toward the node's executor caps (an actor's process is its
    /// own, outside them, as its resources are held for its lifetime).
    fn capped(&self) -> bool {
        self.actor.is_none()
    }

    /// Gives its resources back to `free` (it goes idle, or away).
    fn release(&mut self, free: &mut ResourceSet) {
        let held = std::mem::take(&mut self.held);
        if self.lent == Lent::No {
            free.add(&held);
        }
        self.lent = Lent::No;
        self.blocked = false;
    }
}

/// Executors whose tasks are blocked waiting for other tasks do not count
/// against `max_executors`, up to this many times `max_executors`: a node
/// runs at most `max_executors x (1 + BLOCKED_EXECUTORS_FACTOR)` executors
/// for CPU work (plus [`IO_EXECUTORS`] for tasks that hold nothing). A
/// program whose blocked tasks nest deeper than that on one node waits
/// for some of them to finish.
pub const BLOCKED_EXECUTORS_FACTOR: usize = 16;

/// The worker's state.
pub struct WorkerCore<S: LocalStore> {
    config: CoreConfig,
    store: S,
    /// This node's id, once registered (for failure reports).
    node_id: String,
    /// A session with the head is open.
    connected: bool,
    jobs: HashMap<JobId, Job>,
    queue: VecDeque<Local>,
    executors: HashMap<ExecId, Exec>,
    next_exec: u64,
    free: ResourceSet,
    slots: usize,
    /// Credits granted to the head and not yet used by a dispatch.
    outstanding: usize,
    /// Recent task time across all functions: sizes the credits.
    service: ServiceTime,
    /// Task time per (job, function): sizes how deep tasks of that function
    /// are pipelined into an executor, so short and long functions mixed in
    /// one program are each handled right.
    service_by_fn: HashMap<(JobId, u32), ServiceTime>,
    results: Vec<(TaskId, Result<Value, Failure>)>,
    /// Drained by the head: finish what is held, ask for nothing, exit.
    draining: bool,
    /// Objects being pulled from peers or restored from spill files.
    pulls: HashSet<ObjectId>,
    /// Functions whose tasks were seen blocking on other tasks.
    blocking_fns: HashSet<(JobId, u32)>,
    /// Objects of ended jobs that others still reference (freed one by
    /// one when the head says so).
    kept: HashSet<ObjectId>,
    /// Pulled objects to report to the head as local copies.
    copied: Vec<ObjectId>,
}

fn failure(kind: FailureKind, message: impl Into<String>) -> Failure {
    Failure::new(kind, message)
}

impl<S: LocalStore> WorkerCore<S> {
    /// A worker with nothing held yet.
    pub fn new(config: CoreConfig, store: S) -> Self {
        WorkerCore {
            slots: slots_of(&config.resources),
            free: config.resources.clone(),
            config,
            store,
            node_id: String::new(),
            connected: false,
            jobs: HashMap::new(),
            queue: VecDeque::new(),
            executors: HashMap::new(),
            next_exec: 1,
            outstanding: 0,
            service: ServiceTime::default(),
            service_by_fn: HashMap::new(),
            results: Vec::new(),
            draining: false,
            pulls: HashSet::new(),
            blocking_fns: HashSet::new(),
            kept: HashSet::new(),
            copied: Vec::new(),
        }
    }

    /// This node's id, once registered (empty before).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node's store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The session with the head opened: this node is `node_id`. The head
    /// owes it nothing yet.
    pub fn connected(&mut self, node_id: String) {
        self.node_id = node_id;
        self.connected = true;
        self.outstanding = 0;
    }

    /// The session with the head was lost. The head requeues what this
    /// node held, so it drops it all: queued tasks, unsent results, every
    /// executor. Stored objects stay: registering again tells the head
    /// which ones this node holds (copies pulled but not yet reported are
    /// among them).
    pub fn session_lost(&mut self, fx: &mut impl Effects) {
        self.connected = false;
        self.queue.clear();
        self.results.clear();
        let ids: Vec<ExecId> = self.executors.keys().copied().collect();
        for id in ids {
            self.remove_exec(id, true, fx);
        }
        self.free = self.config.resources.clone();
        self.jobs.clear();
        self.copied.clear();
    }

    /// A message from the head.
    pub fn head_message(&mut self, msg: HeadMessage, fx: &mut impl Effects) {
        if msg.drain && !self.draining {
            tracing::info!(node = %self.node_id, held = self.queue.len(), "draining: no new tasks; finishing the held ones");
            self.draining = true;
        }
        for ji in msg.jobs {
            let job = self.jobs.entry(ji.job).or_insert_with(|| {
                fx.fetch_binary(ji.job, &ji.binary);
                Job { functions: Vec::new(), bin: Bin::Fetching }
            });
            let first = ji.first_function as usize;
            if first <= job.functions.len() {
                job.functions.truncate(first);
                job.functions.extend(ji.functions);
            }
        }
        self.kept.extend(msg.keep_objects);
        for id in msg.free_objects {
            self.kept.remove(&id);
            self.store.free(id);
        }
        for d in msg.tasks {
            // A call on an actor rides on the actor's slot, not a credit.
            if !matches!(d.actor, ActorPart::Call(_)) {
                self.outstanding = self.outstanding.saturating_sub(1);
            }
            // Its result is already sealed here: an earlier run of the
            // same task finished on this node after the head lost track
            // of it (e.g. the head restarted mid-rebuild). That copy is
            // the result; running again could not store a second one.
            if let Some(size) = self.store.sealed_size(d.task) {
                tracing::info!(task = %d.task, size, "the task's result is already stored here; reporting it without running the task again");
                self.result(d.task, Ok(Value::Stored { size }));
                continue;
            }
            // The call's own resources, else its function's; an actor's
            // calls hold none (the actor holds its own).
            let res = match &d.resources {
                _ if matches!(d.actor, ActorPart::Call(_)) => ResourceSet::default(),
                Some(r) => r.clone(),
                None => self.jobs.get(&d.job).and_then(|j| j.functions.get(d.func as usize)).map_or_else(|| ResourceSet::cpus(1.0), |f| f.resources.clone()),
            };
            let l = Local { d, res, built: None };
            let missing: Vec<StoredRef> = l.stored_args().filter(|s| !self.store.contains(s.id)).cloned().collect();
            for obj in missing {
                if self.pulls.insert(obj.id) {
                    fx.pull(obj);
                }
            }
            let spilled: Vec<ObjectId> = l.stored_args().map(|s| s.id).filter(|id| self.store.is_spilled(*id)).collect();
            for id in spilled {
                if self.pulls.insert(id) {
                    fx.restore(id);
                }
            }
            self.queue.push_back(l);
        }
        for t in msg.cancel {
            self.cancel(t, fx);
        }
        for job in msg.jobs_finished {
            self.jobs.remove(&job);
            self.queue.retain(|l| l.d.job != job);
            // Nobody waits for its results or copies any more.
            self.results.retain(|(t, _)| t.job() != job);
            self.copied.retain(|o| o.job() != job);
            self.service_by_fn.retain(|(j, _), _| *j != job);
            self.blocking_fns.retain(|(j, _)| *j != job);
            let ids: Vec<ExecId> = self.executors.iter().filter(|(_, e)| e.job == job).map(|(id, _)| *id).collect();
            for id in ids {
                let Some(e) = self.remove_exec(id, true, fx) else { continue };
                // Its actors' calls from other jobs are still awaited.
                for l in e.inflight.iter().filter(|l| l.d.job != job) {
                    self.result(l.d.task, Err(failure(FailureKind::WorkerDied, "the actor's process ended: the job that made it ended")));
                }
            }
            // Its calls on other jobs' actors: nobody waits for them now.
            // A call the actor already has still runs (it cannot be
            // interrupted); its result is dropped when it comes.
            for e in self.executors.values_mut().filter(|e| e.actor.is_some()) {
                let first_unsent = e.inflight.len().saturating_sub(e.unsent);
                let (mut at, mut unsent_gone) = (0, 0);
                e.inflight.retain(|l| {
                    let keep = l.d.job != job;
                    if !keep && at >= first_unsent {
                        unsent_gone += 1;
                    }
                    at += 1;
                    keep
                });
                e.unsent -= unsent_gone;
                if e.inflight.is_empty() {
                    e.release(&mut self.free);
                }
            }
            self.store.free_job(job, &self.kept);
        }
    }

    /// A job's binary is here (or cannot run here).
    pub fn binary_ready(&mut self, job: JobId, result: Result<PathBuf, String>) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.bin = match result {
                Ok(p) => Bin::Ready(p),
                Err(e) => {
                    tracing::error!(job, error = %e, "program binary cannot run here");
                    Bin::Broken(e)
                }
            };
        }
    }

    /// An executor connected back and said hello, speaking `protocol`.
    /// Returns whether the shell should keep its connection: an executor
    /// that speaks another protocol (or that the core no longer knows) is
    /// refused, and a wrong protocol breaks its job with a clear error.
    pub fn executor_hello(&mut self, exec: ExecId, protocol: u32, expected: u32, now: Instant, fx: &mut impl Effects) -> bool {
        let Some(e) = self.executors.get_mut(&exec) else { return false };
        if protocol != expected {
            let job = e.job;
            if let Some(e) = self.remove_exec(exec, true, fx) {
                let msg = format!(
                    "the program links a shoal library speaking protocol {protocol}, this worker speaks {expected}: rebuild it against the cluster's shoal version"
                );
                self.break_job(job, msg, e.inflight);
            }
            return false;
        }
        e.connected = true;
        e.last_progress = now;
        tracing::debug!(%exec, pid = e.pid, "executor connected");
        true
    }

    /// An executor no longer reads these argument objects (one entry per
    /// argument it received).
    pub fn executor_released(&mut self, exec: ExecId, objects: &[ObjectId]) {
        let Some(e) = self.executors.get_mut(&exec) else { return };
        for obj in objects {
            if let Some(i) = e.pins.iter().position(|p| p == obj) {
                e.pins.swap_remove(i);
                self.store.unpin(*obj);
            }
        }
    }

    /// An executor's running task waits for other tasks (in `get`,
    /// `wait`, ...): its resources go back to the node, so the tasks it
    /// waits for can run here even when it holds the last CPU, and it gets
    /// no task pipelined behind it.
    pub fn executor_blocked(&mut self, exec: ExecId) {
        let Some(e) = self.executors.get_mut(&exec) else { return };
        if e.blocked || e.idle() {
            return;
        }
        e.blocked = true;
        if let Some(l) = e.inflight.front() {
            self.blocking_fns.insert((l.d.job, l.d.func));
        }
        if e.lent == Lent::No {
            self.free.add(&e.held);
            e.lent = Lent::Blocked;
        }
    }

    /// The blocked task of an executor runs again: it takes its resources
    /// back, or runs over the node's size when others use them now.
    pub fn executor_unblocked(&mut self, exec: ExecId) {
        let Some(e) = self.executors.get_mut(&exec) else { return };
        if !e.blocked {
            return;
        }
        e.blocked = false;
        if e.lent == Lent::Blocked {
            if e.held.fits_in(&self.free) {
                self.free.sub(&e.held);
                e.lent = Lent::No;
            } else {
                e.lent = Lent::Borrowed;
            }
        }
    }

    /// An executor finished tasks.
    pub fn executor_results(&mut self, exec: ExecId, results: Vec<(TaskId, Result<Value, Failure>)>, now: Instant) {
        let Some(e) = self.executors.get_mut(&exec) else {
            // Not ours any more (killed meanwhile): drop written bytes.
            for (task, r) in results {
                if matches!(r, Ok(Value::Stored { .. })) {
                    self.store.abort(task);
                }
            }
            return;
        };
        let mut done = Vec::with_capacity(results.len());
        let mut funcs = Vec::with_capacity(results.len());
        for (task, mut r) in results {
            let stored = matches!(r, Ok(Value::Stored { .. }));
            if let Some(l) = e.inflight.iter().position(|l| l.d.task == task).and_then(|i| e.inflight.remove(i)) {
                funcs.push((l.d.job, l.d.func));
                if stored && let Err(err) = self.store.seal(task) {
                    r = Err(failure(FailureKind::ObjectStoreFull, format!("the result could not be sealed: {err}")));
                } else if r.is_err() {
                    // It may have failed while encoding into space it was
                    // given: that space is nobody's now.
                    self.store.abort(task);
                }
                done.push((task, r));
            } else if stored {
                // Not ours any more (cancelled meanwhile): drop the bytes.
                self.store.abort(task);
            }
        }
        if !done.is_empty() && e.actor.is_none() {
            let per = now.saturating_duration_since(e.last_progress) / done.len() as u32;
            for (k, f) in funcs.iter().enumerate() {
                if k < 8 {
                    self.service.observe(per);
                }
                self.service_by_fn.entry(*f).or_default().observe(per);
            }
            e.last_progress = now;
        }
        if e.inflight.is_empty() {
            e.release(&mut self.free);
        }
        for (task, r) in done {
            self.result(task, r);
        }
    }

    /// An executor process exited (on its own: a kill by the core is not
    /// reported). `stderr_tail` is the end of what it wrote to stderr.
    pub fn executor_exited(&mut self, exec: ExecId, status: &str, stderr_tail: &str, fx: &mut impl Effects) {
        let Some(mut e) = self.remove_exec(exec, false, fx) else { return };
        if !e.connected {
            let msg = format!(
                "an executor started from the program binary exited before connecting ({status}){}{}",
                if stderr_tail.is_empty() { "" } else { "; its stderr ended with:\n" },
                stderr_tail
            );
            self.break_job(e.job, msg, e.inflight);
            return;
        }
        if let Some(actor) = e.actor {
            tracing::warn!(pid = e.pid, actor = %actor, %status, "an actor's process died");
            let msg = format!("the actor's process (pid {}) died: {status}", e.pid);
            self.actor_exec_gone(e, failure(FailureKind::WorkerDied, msg));
            return;
        }
        if let Some(first) = e.inflight.pop_front() {
            tracing::warn!(pid = e.pid, task = %first.d.task, %status, "executor died while running a task");
            let msg = format!("the executor process (pid {}) died while running the task: {status}", e.pid);
            self.result(first.d.task, Err(failure(FailureKind::WorkerDied, msg)));
            // What was queued behind it did not start: it runs elsewhere.
            self.requeue_front(e.inflight);
        }
    }

    /// A pull finished.
    pub fn pulled(&mut self, id: ObjectId, result: Result<(), String>) {
        self.pulls.remove(&id);
        match result {
            Ok(()) => self.copied.push(id),
            Err(e) => {
                tracing::warn!(object = %id, error = %e, "could not fetch a task argument");
                let mut failed = Vec::new();
                self.queue.retain(|l| {
                    let needs = l.stored_args().any(|s| s.id == id);
                    if needs {
                        failed.push(l.d.task);
                    }
                    !needs
                });
                for task in failed {
                    let msg = format!("argument object {id} could not be fetched: {e}");
                    self.result(task, Err(failure(FailureKind::ObjectLost, msg)));
                }
            }
        }
    }

    /// A spilled argument is back in the arena (or will be read from its
    /// file).
    pub fn restored(&mut self, id: ObjectId) {
        self.pulls.remove(&id);
    }

    /// Periodic check: executors that never connected break their job.
    pub fn tick(&mut self, now: Instant, fx: &mut impl Effects) {
        let timeout = self.config.hello_timeout;
        let stuck: Vec<ExecId> =
            self.executors.iter().filter(|(_, e)| !e.connected && now.saturating_duration_since(e.started) > timeout).map(|(id, _)| *id).collect();
        for id in stuck {
            let Some(e) = self.remove_exec(id, true, fx) else { continue };
            let msg = format!(
                "an executor started from the program binary did not connect within {}s; is the program linked with the shoal crate?",
                timeout.as_secs()
            );
            self.break_job(e.job, msg, e.inflight);
        }
    }

    /// Drained and nothing left to finish: the worker may exit.
    pub fn drained(&self) -> bool {
        self.draining && self.queue.is_empty() && self.executors.values().all(Exec::idle)
    }

    /// The worker is stopping: end every executor.
    pub fn shutdown(&mut self, fx: &mut impl Effects) {
        let ids: Vec<ExecId> = self.executors.keys().copied().collect();
        for id in ids {
            self.remove_exec(id, true, fx);
        }
    }

    fn result(&mut self, task: TaskId, mut outcome: Result<Value, Failure>) {
        if let Err(f) = &mut outcome
            && f.node.is_empty()
        {
            f.node = self.node_id.clone();
        }
        self.results.push((task, outcome));
    }

    /// An actor's process is gone: its creation task ends with `why`, and
    /// every call it held fails (the head retries those it may, on the
    /// actor's next instance).
    fn actor_exec_gone(&mut self, e: Exec, why: Failure) {
        for l in e.inflight {
            if Some(l.d.task) == e.actor {
                self.result(l.d.task, Err(why.clone()));
            } else {
                let msg = format!("the actor's process ended during the call ({})", why.message);
                self.result(l.d.task, Err(failure(FailureKind::WorkerDied, msg)));
            }
        }
    }

    /// Tasks that were on an executor and did not start go back to the
    /// front of the queue, in order (their pins went with the executor).
    fn requeue_front(&mut self, tasks: VecDeque<Local>) {
        for mut l in tasks.into_iter().rev() {
            l.built = None;
            self.queue.push_front(l);
        }
    }

    fn cancel(&mut self, task: TaskId, fx: &mut impl Effects) {
        if let Some(i) = self.queue.iter().position(|l| l.d.task == task) {
            self.queue.remove(i);
            self.result(task, Err(failure(FailureKind::Cancelled, "cancelled before it started")));
            return;
        }
        let Some(id) = self.executors.iter().find(|(_, e)| e.inflight.iter().any(|l| l.d.task == task)).map(|(id, _)| *id) else { return };
        if let Some(actor) = self.executors.get(&id).and_then(|e| e.actor) {
            // A call an actor already has is not interrupted (that would
            // end the actor): its result is dropped by the head. The
            // creation task itself is the actor: ending it kills it.
            if actor != task {
                return;
            }
            let Some(e) = self.remove_exec(id, true, fx) else { return };
            tracing::info!(actor = %actor, pid = e.pid, "killed an actor by ending its process");
            self.actor_exec_gone(e, failure(FailureKind::Cancelled, "the actor was killed"));
            return;
        }
        // The executor may be running it: end the process (the only way to
        // interrupt arbitrary code) and requeue what was behind it.
        let Some(mut e) = self.remove_exec(id, true, fx) else { return };
        tracing::info!(task = %task, pid = e.pid, "cancelled a running task by ending its executor");
        e.inflight.retain(|l| l.d.task != task);
        self.result(task, Err(failure(FailureKind::Cancelled, "cancelled while running; its executor was stopped")));
        self.requeue_front(e.inflight);
    }

    /// A job's binary cannot run: fail its held tasks with a clear error,
    /// and every later one.
    fn break_job(&mut self, job: JobId, msg: String, held: VecDeque<Local>) {
        tracing::error!(job, "{msg}");
        if let Some(j) = self.jobs.get_mut(&job) {
            j.bin = Bin::Broken(msg.clone());
        }
        for l in held {
            self.result(l.d.task, Err(failure(FailureKind::BinaryIncompatible, msg.clone())));
        }
    }

    /// Forgets an executor: kills it (unless it already exited), returns
    /// its resources, unpins its tasks' arguments and reclaims any result
    /// it was half-way through writing to the store.
    fn remove_exec(&mut self, id: ExecId, kill: bool, fx: &mut impl Effects) -> Option<Exec> {
        let mut e = self.executors.remove(&id)?;
        if kill {
            fx.kill_executor(id, e.pid);
        }
        e.release(&mut self.free);
        for obj in e.pins.drain(..) {
            self.store.unpin(obj);
        }
        let reclaimed = self.store.reclaim_owner(id);
        if reclaimed > 0 {
            tracing::info!(exec = %id, objects = reclaimed, "reclaimed unsealed objects of a dead executor");
        }
        Some(e)
    }

    /// Places queued tasks on executors, FIFO. Prefers an idle executor of
    /// the task's job, then a new one, then replacing an idle executor of
    /// another job; short tasks are also pipelined into busy executors.
    pub fn pump(&mut self, now: Instant, fx: &mut impl Effects) {
        let mut sends: Vec<(ExecId, ExecTask)> = Vec::new();
        // Executors that connected since get what was assigned before
        // hello, first: an executor runs its tasks in the order received,
        // which must be the order of `inflight`.
        let mut ready: Vec<ExecId> = self.executors.iter().filter(|(_, e)| e.connected && e.unsent > 0).map(|(id, _)| *id).collect();
        ready.sort_unstable();
        for id in ready {
            let Some(e) = self.executors.get_mut(&id) else { continue };
            let start = e.inflight.len().saturating_sub(e.unsent);
            e.unsent = 0;
            for t in e.inflight.iter().skip(start).filter_map(|l| l.built.clone()) {
                sends.push((id, t));
            }
        }
        // A dedicated executor whose task is done ends (its process was
        // that task's own).
        let retired: Vec<ExecId> = self.executors.iter().filter(|(_, e)| e.dedicated && e.idle()).map(|(id, _)| *id).collect();
        for id in retired {
            self.remove_exec(id, true, fx);
        }
        // Actors with a call held back in this pass: their later calls
        // wait too (calls run in the order they came).
        let mut held_back: Vec<TaskId> = Vec::new();
        let mut i = 0;
        while let Some(l) = self.queue.get(i) {
            if let ActorPart::Call(actor) = l.d.actor {
                if !self.place_call(i, actor, &mut held_back, &mut sends) {
                    i += 1;
                }
                continue;
            }
            if l.stored_args().any(|s| self.pulls.contains(&s.id)) {
                i += 1;
                continue;
            }
            let (job_id, func, task) = (l.d.job, l.d.func, l.d.task);
            let path = match self.jobs.get(&job_id).map(|j| (&j.bin, j.functions.len())) {
                None => {
                    self.queue.remove(i);
                    self.result(task, Err(failure(FailureKind::FunctionNotFound, format!("job {job_id} is unknown to this worker"))));
                    continue;
                }
                Some((Bin::Fetching, _)) => {
                    i += 1;
                    continue;
                }
                Some((Bin::Broken(msg), _)) => {
                    let msg = msg.clone();
                    self.queue.remove(i);
                    self.result(task, Err(failure(FailureKind::BinaryIncompatible, msg)));
                    continue;
                }
                Some((Bin::Ready(_), n)) if func as usize >= n => {
                    self.queue.remove(i);
                    self.result(task, Err(failure(FailureKind::FunctionNotFound, format!("function index {func} of job {job_id} is not defined"))));
                    continue;
                }
                Some((Bin::Ready(p), _)) => p.clone(),
            };
            let res = l.res.clone();
            let dedicated = l.d.dedicated;
            let mut target = None;
            if res.fits_in(&self.free) {
                // Executors busy with tasks that hold no resources (I/O
                // waits) do not count against the CPU-sized cap, and such
                // tasks may use IO_EXECUTORS more: waiting never blocks
                // CPU work, and CPU slots never block waiting.
                let max = self.config.max_executors;
                // Blocked tasks lend their slots, so their executors do
                // not count either, up to BLOCKED_EXECUTORS_FACTOR times
                // the cap.
                let blocked = self.executors.values().filter(|e| e.blocked && e.capped()).count();
                let io_busy = self.executors.values().filter(|e| e.capped() && !e.blocked && !e.idle() && e.held.is_empty()).count();
                let mut running = self.executors.values().filter(|e| e.capped()).count();
                let cap = if res.is_empty() { max + IO_EXECUTORS } else { max + io_busy + blocked.min(max * BLOCKED_EXECUTORS_FACTOR) };
                // A dedicated task gets a process of its own: never an idle one.
                if !dedicated {
                    target = self.executors.iter().filter(|(_, e)| e.job == job_id && e.idle() && !e.dedicated).map(|(id, _)| *id).min();
                }
                if target.is_none()
                    && running >= cap
                    && let Some(victim) = self.executors.iter().filter(|(_, e)| (e.job != job_id || dedicated) && e.idle()).map(|(id, _)| *id).min()
                {
                    self.remove_exec(victim, true, fx);
                    running -= 1;
                }
                if target.is_none() && running < cap {
                    match self.spawn(job_id, &path, now, fx) {
                        Ok(id) => target = Some(id),
                        Err(msg) => {
                            self.break_job(job_id, msg, VecDeque::new());
                            continue;
                        }
                    }
                }
                if let Some(e) = target.and_then(|id| self.executors.get_mut(&id)) {
                    e.held = res.clone();
                    self.free.sub(&res);
                }
            }
            // A function whose tasks block waiting for others is never
            // pipelined: what waits behind a blocked task could be what it
            // waits for.
            let depth =
                if dedicated || self.blocking_fns.contains(&(job_id, func)) { 1 } else { self.service_by_fn.get(&(job_id, func)).map_or(1, |s| s.depth()) };
            if target.is_none() && depth > 1 {
                target = self
                    .executors
                    .iter()
                    .filter(|(_, e)| {
                        e.job == job_id && !e.idle() && !e.blocked && !e.dedicated && e.lent == Lent::No && e.held == res && e.inflight.len() < depth
                    })
                    .min_by_key(|(id, e)| (e.inflight.len(), **id))
                    .map(|(id, _)| *id);
            }
            let Some(id) = target else {
                i += 1;
                continue;
            };
            let Some(mut l) = self.queue.remove(i) else { break };
            let built = match self.build(id, &l) {
                Ok(t) => t,
                Err(msg) => {
                    if let Some(e) = self.executors.get_mut(&id)
                        && e.inflight.is_empty()
                    {
                        e.release(&mut self.free);
                    }
                    self.result(l.d.task, Err(failure(FailureKind::ObjectLost, msg)));
                    continue;
                }
            };
            let Some(e) = self.executors.get_mut(&id) else { continue };
            if e.inflight.is_empty() {
                e.last_progress = now;
            }
            if e.connected {
                sends.push((id, built.clone()));
            } else {
                e.unsent += 1;
            }
            if matches!(l.d.actor, ActorPart::Create { .. }) {
                e.actor = Some(l.d.task);
            }
            l.built = Some(built);
            e.dedicated |= dedicated;
            e.inflight.push_back(l);
        }
        let mut by_exec: Vec<(ExecId, Vec<ExecTask>)> = Vec::new();
        for (id, t) in sends {
            match by_exec.iter_mut().find(|(e, _)| *e == id) {
                Some((_, v)) => v.push(t),
                None => by_exec.push((id, vec![t])),
            }
        }
        for (id, tasks) in by_exec {
            self.send_to(id, tasks, fx);
        }
    }

    /// Tries to send queued call `i` on `actor` to the executor serving it;
    /// returns whether it left the queue (sent, or failed). A call waits
    /// while its arguments are pulled here, or while the actor's process
    /// is starting; later calls of that actor wait behind it.
    fn place_call(&mut self, i: usize, actor: TaskId, held_back: &mut Vec<TaskId>, sends: &mut Vec<(ExecId, ExecTask)>) -> bool {
        let Some(l) = self.queue.get(i) else { return false };
        let task = l.d.task;
        let exec = self.executors.iter().find(|(_, e)| e.actor == Some(actor)).map(|(id, _)| *id);
        let wait = held_back.contains(&actor) || l.stored_args().any(|s| self.pulls.contains(&s.id));
        let Some(exec) = exec else {
            // Its creation task is still queued here (its binary is being
            // fetched): wait for it.
            if wait || self.queue.iter().any(|q| q.d.task == actor) {
                held_back.push(actor);
                return false;
            }
            self.queue.remove(i);
            self.result(task, Err(failure(FailureKind::WorkerDied, format!("actor {actor} has no process on this node (it died)"))));
            return true;
        };
        if wait {
            held_back.push(actor);
            return false;
        }
        let Some(mut l) = self.queue.remove(i) else { return false };
        let built = match self.build(exec, &l) {
            Ok(t) => t,
            Err(msg) => {
                self.result(task, Err(failure(FailureKind::ObjectLost, msg)));
                return true;
            }
        };
        let Some(e) = self.executors.get_mut(&exec) else { return true };
        if e.connected && e.unsent == 0 {
            sends.push((exec, built.clone()));
        } else {
            e.unsent += 1;
        }
        l.built = Some(built);
        e.inflight.push_back(l);
        true
    }

    /// The message for executor `exec` to run `l`: inline arguments as
    /// they are, stored ones pinned in the arena (or a spill file) until
    /// the executor releases them.
    fn build(&mut self, exec: ExecId, l: &Local) -> Result<ExecTask, String> {
        let mut args = Vec::with_capacity(l.d.args.len());
        let mut pinned = Vec::new();
        for a in &l.d.args {
            let arg = match a {
                Payload::Stored(s) => match self.store.pin(s.id) {
                    Ok(loc) => {
                        pinned.push(s.id);
                        match loc {
                            Location::Arena { offset, len } => ExecArg::Arena { object: s.id, offset, len },
                            Location::File { path, len } => ExecArg::File { object: s.id, path, len },
                        }
                    }
                    Err(e) => {
                        for p in pinned {
                            self.store.unpin(p);
                        }
                        return Err(format!("argument object {} is not on this node: {e}", s.id));
                    }
                },
                Payload::Inline(v) => ExecArg::Inline(v.clone()),
            };
            args.push(arg);
        }
        match self.executors.get_mut(&exec) {
            Some(e) => e.pins.extend(pinned),
            None => {
                for p in pinned {
                    self.store.unpin(p);
                }
                return Err(format!("executor {exec} went away"));
            }
        }
        let actor = match &l.d.actor {
            ActorPart::None => ExecActor::None,
            ActorPart::Create { max_concurrency } => ExecActor::Create { max_concurrency: *max_concurrency },
            ActorPart::Call(_) => {
                ExecActor::Call { method: self.jobs.get(&l.d.job).and_then(|j| j.functions.get(l.d.func as usize)).map(|f| f.name.clone()).unwrap_or_default() }
            }
        };
        Ok(ExecTask { task: l.d.task, func: l.d.func, args, actor })
    }

    fn send_to(&mut self, id: ExecId, tasks: Vec<ExecTask>, fx: &mut impl Effects) {
        let Some(e) = self.executors.get_mut(&id) else { return };
        let functions = self.jobs.get(&e.job).map(|j| j.functions.as_slice()).unwrap_or_default();
        let first = e.functions_sent;
        let names: Vec<String> = functions.get(first as usize..).unwrap_or_default().iter().map(|f| f.name.clone()).collect();
        e.functions_sent = first.max(functions.len() as u32);
        fx.send_tasks(id, first, names, tasks);
    }

    fn spawn(&mut self, job: JobId, path: &Path, now: Instant, fx: &mut impl Effects) -> Result<ExecId, String> {
        let id = ExecId(self.next_exec);
        self.next_exec += 1;
        let pid = fx.spawn_executor(id, job, path).map_err(|e| format!("cannot start the program binary {} on this node: {e}", path.display()))?;
        tracing::debug!(exec = %id, pid, job, "executor started");
        self.executors.insert(
            id,
            Exec {
                job,
                pid,
                connected: false,
                inflight: VecDeque::new(),
                unsent: 0,
                held: ResourceSet::default(),
                lent: Lent::No,
                blocked: false,
                functions_sent: 0,
                started: now,
                last_progress: now,
                pins: Vec::new(),
                dedicated: false,
                actor: None,
            },
        );
        Ok(id)
    }

    /// Sends results and credits to the head (nothing while no session is
    /// open: the head requeues what this node held).
    pub fn flush(&mut self, fx: &mut impl Effects) {
        if !self.connected {
            self.results.clear();
            return;
        }
        // Running tasks that hold nothing (I/O waits) do not use up credits:
        // the node keeps asking for work while they wait.
        // An actor holds one task's worth (its creation), whatever calls it has.
        let running: usize = self
            .executors
            .values()
            .filter(|e| !e.blocked && (e.idle() || !e.held.is_empty()))
            .map(|e| if e.actor.is_some() { 1 } else { e.inflight.len() })
            .sum();
        let queued = self.queue.iter().filter(|l| !matches!(l.d.actor, ActorPart::Call(_))).count();
        let held = queued + running + self.outstanding;
        let wanted = pipeline::wanted(self.slots, self.service.depth());
        let credits = if self.draining { 0 } else { pipeline::grant(wanted, held, self.outstanding) };
        self.outstanding += credits as usize;
        if credits == 0 && self.results.is_empty() && self.copied.is_empty() {
            return;
        }
        fx.report(Report { results: std::mem::take(&mut self.results), credits, copied: std::mem::take(&mut self.copied) });
    }
}
