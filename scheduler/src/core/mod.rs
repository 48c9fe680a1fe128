//! The head's scheduling core: cluster membership, the task graph, the
//! object table and the FIFO ready queue, as a plain state machine.
//!
//! Nothing here does I/O or reads a clock: every input is a method call
//! (`submit`, `tasks_finished`, `node_disconnected`, `tick`, ...) with the
//! time passed in, and every output goes through an [`Outbox`]. The server
//! (`crate::server`) owns one `Core` in one task, feeds it from the gRPC
//! streams and flushes the outbox in batches; unit tests drive it directly
//! and record the outbox.
//!
//! Handlers only change state; [`Core::schedule`] does the placement, once
//! per batch of events.

mod actors;
mod copies;
#[doc(hidden)]
pub mod fuzz;
mod invariants;
#[cfg(test)]
mod schedules;
#[cfg(test)]
mod tests;
mod types;

pub use types::*;

use bytes::Bytes;
use shoal_domain::actor::{ActorPart, ActorRole};
use shoal_domain::failure::{self, Retry, RetryState};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Everything the core sends out. Production batches these per stream;
/// tests record them.
pub trait Outbox {
    /// Tell `node` how to run `job`: its binary and functions `first..`.
    fn job_info(&mut self, node: NodeId, job: JobId, binary: &str, first: u32, functions: &[FunctionDef]);
    /// Run a task on `node`.
    fn dispatch(&mut self, node: NodeId, task: Dispatch);
    /// Stop a task running (or queued) on `node`.
    fn cancel(&mut self, node: NodeId, task: TaskId);
    /// `job` is gone: `node` may drop its executors.
    fn job_finished(&mut self, node: NodeId, job: JobId);
    /// A task of `job` finished: deliver its result to the driver.
    fn result(&mut self, job: JobId, task: TaskId, outcome: Result<Payload, Failure>);
    /// Nobody references stored object `id` any more: `node` frees its copy.
    fn free_object(&mut self, node: NodeId, id: ObjectId);
    /// `node` was declared dead: end its session `epoch` (and only that
    /// one: it may have registered again already), so that if it is in
    /// fact alive (a partition, a frozen process) it reconnects and
    /// registers again under a new epoch.
    fn disconnect(&mut self, node: NodeId, epoch: u64);
    /// `node` should finish what it holds, ask for no more, and exit.
    fn drain(&mut self, node: NodeId);
    /// `job` ended (its driver left, or never came back): nothing of it
    /// needs to be remembered any more.
    fn job_ended(&mut self, _job: JobId) {}
    /// Item `index` of generator task `task`, object `object`, for `job`
    /// (the caller), with its value as a result would carry it; `owned`:
    /// the head keeps no object for it (the caller alone holds it).
    fn generator_item(&mut self, job: JobId, task: TaskId, index: u64, object: ObjectId, value: Result<Payload, Failure>, owned: bool);
    /// Tell the session `job` running generator task `task` how many of
    /// its items the caller consumed.
    fn generator_ack(&mut self, job: JobId, task: TaskId, consumed: u64);
    /// `node` keeps its copy of `id` when the job that made it ends
    /// (others still reference it); it is freed later like any object.
    fn keep_object(&mut self, node: NodeId, id: ObjectId);
    /// Job `job`'s driver is gone but its detached actors live on: what
    /// it logged may shrink to them (a snapshot now).
    fn job_lingering(&mut self, _job: JobId) {}
    /// Task `task` (a call of its job's function number `func`) changed
    /// phase. For the task-event store and metrics: no decision of the
    /// core rests on it.
    fn task_event(&mut self, _task: TaskId, _func: u32, _event: TaskEvent<'_>) {}
}

/// Tunables of the core.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// A node silent for longer than this is declared dead.
    pub heartbeat_timeout: Duration,
    /// When no alive node could ever fit a task: wait for one (`true`) or
    /// fail the task with `Unschedulable` (`false`, the default).
    pub wait_for_feasible_nodes: bool,
    /// How long a job whose driver lost its connection (or that was
    /// restored after a head restart) waits for the driver to come back
    /// before its work is dropped.
    pub driver_grace: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig { heartbeat_timeout: Duration::from_secs(5), wait_for_feasible_nodes: false, driver_grace: Duration::from_secs(30) }
    }
}

/// Refusals of a registration or a driver hello.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoreError {
    /// Too many jobs were started on this head.
    #[error("the head has run out of job ids")]
    JobIdsExhausted,
    /// No alive node has that id.
    #[error("no alive node {0}")]
    NoSuchNode(String),
    /// Another worker process registered under this node id and is alive.
    #[error(
        "node id {node:#} is in use by a live worker (pid {pid} on {hostname}); a second worker cannot take it over: give it another --node-id, or stop that one"
    )]
    NodeIdInUse {
        /// The id.
        node: NodeId,
        /// The live worker's pid.
        pid: u32,
        /// Its host.
        hostname: String,
    },
}

struct Node {
    /// Bumped at every (re-)registration; messages from older sessions are
    /// ignored, so a healed partition cannot deliver stale results twice.
    epoch: u64,
    alive: bool,
    info: NodeRegistration,
    /// Sum of resources of tasks dispatched here and not finished.
    in_use: ResourceSet,
    /// How many more tasks the worker asked for.
    credits: u32,
    /// Tasks dispatched here and not finished: requeued if the node dies.
    assigned: IdSet<TaskId>,
    last_heartbeat: Instant,
    /// Per job, how many of its functions this node has been told about.
    functions_sent: HashMap<JobId, u32>,
    /// Drained: alive, but placement skips it.
    draining: bool,
    /// Its index in `Core::slots` (kept across re-registrations).
    slot: u32,
    /// Object store usage from the last heartbeat.
    store: StoreUsage,
}

struct Job {
    binary: String,
    name: String,
    functions: Vec<FunctionDef>,
    /// The driver's connection is gone since then; it may come back.
    detached_since: Option<Instant>,
    /// The job whose task submitted this job's tasks (a nested driver):
    /// this job ends with it.
    parent: Option<JobId>,
    /// Its driver is gone; it lives on only for its detached actors, and
    /// ends when the last of them does.
    lingering: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum TaskState {
    /// Waiting for `missing` inputs.
    Waiting,
    /// In the ready queue.
    Ready,
    /// Sent to a node.
    /// Sent to the node in slot `n` (see `Core::slots`): 4 bytes instead
    /// of a 16-byte node id, in every one of a million queued tasks.
    Dispatched(u32),
}

/// An unfinished task. Its result object gets an entry in the object
/// table only when it completes (and only if still referenced): until then
/// the task itself tracks who wants the result, so a million queued tasks
/// cost one table entry each, not two.
struct Task {
    job: JobId,
    func: u32,
    args: Box<[ArgSlot]>,
    missing: u32,
    state: TaskState,
    attempts: u16,
    /// Its attempts' history and its own resources: what few tasks have,
    /// boxed so that every other task stays small.
    extra: Option<Box<Extra>>,
    /// Retries allowed when its worker dies (or it panics, with
    /// `retry_exceptions`).
    max_retries: u16,
    /// Panics are retried too.
    retry_exceptions: bool,
    /// Times it could not read an input from holders the head believed
    /// alive (one that just died, before the head heard of it).
    unreadable: u8,
    cancel_requested: bool,
    /// The driver still holds a reference to the result.
    driver_ref: bool,
    /// Unfinished tasks that take the result as an argument.
    result_refs: u32,
    /// Tasks waiting for the result. Boxed on purpose: most tasks have
    /// none, and 8 bytes instead of 24 per queued task matters at 1M tasks.
    #[allow(clippy::box_collection)]
    dependents: Option<Box<Vec<TaskId>>>,
}

impl Task {
    /// What the retry policy needs to know of it.
    fn retry_state(&self, inputs_rebuilding: bool) -> RetryState {
        RetryState {
            attempts: self.attempts as u32,
            max_retries: self.max_retries as u32,
            retry_exceptions: self.retry_exceptions,
            unreadable: self.unreadable as u32,
            cancel_requested: self.cancel_requested,
            inputs_rebuilding,
        }
    }
}

/// Why a ready task cannot be dispatched after all.
enum Unready {
    /// It must fail with this.
    Fail(Failure),
    /// An input is unfinished again or failed: check its inputs anew.
    Recheck,
}

#[derive(Clone)]
enum ArgSlot {
    Value(Bytes),
    Object(ObjectId),
}

/// How a stored result was made: enough to make it again if every copy
/// is lost with its nodes (lineage reconstruction).
struct Lineage {
    func: u32,
    args: Box<[ArgSlot]>,
    max_retries: u16,
    retry_exceptions: bool,
    resources: Option<Box<ResourceSet>>,
}

/// What few tasks have.
#[derive(Default)]
struct Extra {
    /// Why earlier attempts died ("attempt 1 on node ab12cd34: ..."),
    /// reported with `WorkerDied` when retries run out.
    history: Vec<String>,
    /// The call's own resources, when they are not its function's.
    resources: Option<ResourceSet>,
    /// Who else keeps its future result alive, and the refs that result
    /// will hold (told by the process running it).
    refs: Refs,
    /// Objects referenced from inside its inline argument values.
    arg_refs: Vec<ObjectId>,
    /// For a generator task: its items so far.
    generator: Option<Generator>,
    /// Where the call may run, when not anywhere.
    placement: Placement,
    /// It runs in an executor process of its own (a `Process`).
    dedicated: bool,
    /// A method call on this actor.
    actor_of: Option<TaskId>,
}

/// A running generator task's stream.
#[derive(Debug, Clone, Copy)]
struct Generator {
    /// The session running it (the job its items belong to).
    producer: JobId,
    /// Items delivered so far (a retried run's repeats are skipped).
    next: u64,
    /// Items the caller consumed (told to a new producer).
    consumed: u64,
}

/// References that keep an object (or a task's future result) alive
/// besides its own driver's and its consumers': jobs that borrowed a ref
/// to it (one reached them inside a value) and live containers whose value
/// holds a ref to it; and the refs its own value holds, dropped when it is
/// freed. Most objects have none (the table keeps a `None`).
#[derive(Default, Debug)]
struct Refs {
    /// Jobs holding a ref that reached them inside a value (the owning
    /// job too, for such a ref after its own first refs were dropped).
    borrowers: Vec<JobId>,
    /// Live objects, tasks and task results whose values hold a ref to it.
    contained_in: u32,
    /// The refs its value holds.
    contains: Vec<ObjectId>,
}

impl Refs {
    fn keeps(&self) -> bool {
        !self.borrowers.is_empty() || self.contained_in > 0
    }
}

impl Task {
    /// Notes why an attempt ended.
    fn note(&mut self, line: String) {
        self.extra.get_or_insert_default().history.push(line);
    }

    /// Why earlier attempts ended, if any did.
    fn history(&self) -> Option<&Vec<String>> {
        self.extra.as_ref().map(|e| &e.history).filter(|h| !h.is_empty())
    }

    /// The actor it calls, if it is a method call.
    fn actor_of(&self) -> Option<TaskId> {
        self.extra.as_ref().and_then(|e| e.actor_of)
    }

    /// The call's own resources, when they are not its function's.
    fn own_resources(&self) -> Option<&ResourceSet> {
        self.extra.as_ref().and_then(|e| e.resources.as_ref())
    }
}

/// Tells `node` about `job` (its binary and functions) up to function
/// `func`, before a task of it is sent there, if it was not told yet.
fn send_job_info(node: &mut Node, node_id: NodeId, job_id: JobId, func: u32, job: &Job, out: &mut impl Outbox) {
    let sent = node.functions_sent.entry(job_id).or_insert(0);
    if func >= *sent {
        out.job_info(node_id, job_id, &job.binary, *sent, job.functions.get(*sent as usize..).unwrap_or_default());
        *sent = job.functions.len() as u32;
    }
}

/// The resources `task` holds on its node: its own, else its function's.
fn needs<'a>(task: &'a Task, def: &'a FunctionDef) -> &'a ResourceSet {
    // An actor's call holds nothing: the actor holds its resources.
    static NOTHING: ResourceSet = ResourceSet { cpus: 0.0, custom: Vec::new() };
    if task.actor_of().is_some() {
        return &NOTHING;
    }
    task.own_resources().unwrap_or(&def.resources)
}

#[derive(Clone)]
enum ObjectState {
    Ready(Bytes),
    /// In the object stores of these nodes (empty: every copy was lost).
    Stored {
        size: u64,
        holders: Vec<NodeId>,
    },
    /// Boxed: failures are rare, and the table holds one entry per object.
    Failed(Box<Failure>),
}

/// Hasher for the core's integer ids. Ids are sequential, so SipHash's
/// DoS resistance buys nothing while costing time on every lookup; a
/// multiplicative hash spreads them over the table's control bytes.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ *b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64);
    }
}

type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;
type IdSet<K> = HashSet<K, std::hash::BuildHasherDefault<IdHasher>>;

/// An entry of the object table: a finished result or a put.
struct Object {
    state: ObjectState,
    /// The owning driver still holds an `ObjectRef` to it.
    driver_ref: bool,
    /// Unfinished tasks that take it as an argument.
    task_refs: u32,
    /// For a task's stored result: the task, to re-run if it is lost.
    /// Boxed: inline results and puts (most objects) never need it.
    lineage: Option<Box<Lineage>>,
    /// Refs to it from values and other jobs, and refs in its value.
    refs: Option<Box<Refs>>,
}

impl Object {
    fn referenced(&self) -> bool {
        self.driver_ref || self.task_refs > 0 || self.refs.as_ref().is_some_and(|r| r.keeps())
    }
}

/// The scheduler state. See the module docs.
pub struct Core {
    config: CoreConfig,
    nodes: BTreeMap<NodeId, Node>,
    /// Round-robin start for placing tasks without data to be near.
    rr: usize,
    jobs: IdMap<JobId, Job>,
    next_job: JobId,
    /// Boxed: the table's buckets stay 16 bytes, so its doubling (a new
    /// table beside the old one while entries move) costs the head 36 MB
    /// at 1M queued tasks, not 150 MB, and its empty buckets cost 16
    /// bytes each, not 72.
    tasks: IdMap<TaskId, Box<Task>>,
    objects: IdMap<ObjectId, Object>,
    ready: VecDeque<TaskId>,
    /// About how many ids in `ready` are of tasks gone (cancelled, failed,
    /// their job ended) that no pass has skipped yet: with no free CPU no
    /// pass runs, and a job of a million queued tasks that ended left its
    /// million ids there. When they are most of the queue it is compacted.
    ready_stale: usize,
    counts: TaskCounts,
    total_credits: u64,
    /// Alive nodes in id order, rebuilt only when membership changes.
    alive: Vec<NodeId>,
    alive_dirty: bool,
    /// After a restart, until this time, nodes that held objects may still
    /// be re-registering: tasks whose inputs only they hold wait for them.
    recovering_until: Option<Instant>,
    /// Every node ever registered, by slot (`TaskState::Dispatched`).
    slots: Vec<NodeId>,
    /// Actors, their queued calls and names.
    actors: actors::Actors,
    /// Unfinished tasks per job (admission control reads it).
    live: IdMap<JobId, u64>,
    /// Tables gave room back (see [`Core::take_shrunk`]).
    shrunk: bool,
    /// Copies of stored objects being pulled (readers form a tree).
    fetches: copies::Fetches,
}

impl Core {
    /// Tasks of `job` not finished yet (queued, waiting or running).
    pub fn unfinished_tasks(&self, job: JobId) -> u64 {
        self.live.get(&job).copied().unwrap_or(0)
    }

    /// Tasks of every job not finished yet.
    pub fn unfinished_total(&self) -> u64 {
        self.tasks.len() as u64
    }

    /// A queued task left the table; if it was ready, its id in the ready
    /// queue is now stale.
    fn left_queue(&mut self, was_ready: bool) {
        self.counts.queued = self.counts.queued.saturating_sub(1);
        self.ready_stale += usize::from(was_ready);
    }

    /// Drops the ids of tasks gone from the ready queue once they are
    /// most of it (more than 4,096): linear in the queue, so at most once
    /// per as many removals as the queue then holds.
    fn compact_ready(&mut self) {
        if self.ready_stale > 4096 && self.ready_stale * 2 > self.ready.len() {
            let tasks = &self.tasks;
            self.ready.retain(|id| tasks.get(id).is_some_and(|t| t.state == TaskState::Ready));
            self.ready_stale = 0;
        }
    }

    /// Gives back the room of tables that shrank to a quarter of it (a
    /// big job ended): a head is long-lived and must not keep the peak of
    /// every job it ever ran. Returns whether it freed any.
    fn shrink_tables(&mut self) -> bool {
        fn shrink<K: std::hash::Hash + Eq, V>(m: &mut IdMap<K, V>) -> bool {
            let big = m.capacity() > 4 * m.len().max(4096);
            if big {
                m.shrink_to_fit();
            }
            big
        }
        let (t, o) = (shrink(&mut self.tasks), shrink(&mut self.objects));
        let r = self.ready.capacity() > 4 * self.ready.len().max(4096);
        if r {
            self.ready.shrink_to_fit();
        }
        let shrunk = t || o || r;
        self.shrunk |= shrunk;
        shrunk
    }

    /// Whether tables gave room back since the last call (the server then
    /// returns the memory to the system).
    pub fn take_shrunk(&mut self) -> bool {
        std::mem::take(&mut self.shrunk)
    }

    fn task_added(&mut self, job: JobId) {
        *self.live.entry(job).or_insert(0) += 1;
    }

    fn task_gone(&mut self, job: JobId) {
        if let Some(n) = self.live.get_mut(&job) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.live.remove(&job);
            }
        }
    }

    /// An empty cluster.
    pub fn new(config: CoreConfig) -> Self {
        Core {
            config,
            nodes: BTreeMap::new(),
            rr: 0,
            jobs: IdMap::default(),
            next_job: 1,
            tasks: IdMap::default(),
            objects: IdMap::default(),
            ready: VecDeque::new(),
            ready_stale: 0,
            counts: TaskCounts::default(),
            total_credits: 0,
            alive: Vec::new(),
            live: IdMap::default(),
            shrunk: false,
            fetches: copies::Fetches::default(),
            alive_dirty: true,
            recovering_until: None,
            slots: Vec::new(),
            actors: actors::Actors::default(),
        }
    }

    // ------------------------------------------------------------ membership

    /// A worker (re-)registers. Returns its id and the session epoch that
    /// must accompany its later messages. A node re-registering while the
    /// head still thinks its old session is alive is treated as that old
    /// session dying first (its tasks are requeued).
    pub fn node_registered(&mut self, mut reg: NodeRegistration, now: Instant, out: &mut impl Outbox) -> (NodeId, u64) {
        let id = reg.node_id.unwrap_or_else(NodeId::random);
        // Copies it still holds (it reconnected, or the head restarted).
        let held = std::mem::take(&mut reg.objects);
        let slot = match self.nodes.get(&id) {
            Some(old) => old.slot,
            None => {
                self.slots.push(id);
                (self.slots.len() - 1) as u32
            }
        };
        let epoch = match self.nodes.get(&id) {
            Some(old) => {
                let epoch = old.epoch;
                if old.alive {
                    // What it still holds is not lost.
                    let keep: IdSet<ObjectId> = held.iter().copied().collect();
                    self.node_dead_keeping(id, "re-registered on a new connection", &keep, out);
                }
                epoch + 1
            }
            None => 1,
        };
        tracing::info!(node = %id, address = %reg.address, resources = %reg.resources, epoch, "node registered");
        self.alive_dirty = true;
        self.nodes.insert(
            id,
            Node {
                epoch,
                alive: true,
                info: NodeRegistration { node_id: Some(id), ..reg },
                in_use: ResourceSet::default(),
                credits: 0,
                assigned: IdSet::default(),
                last_heartbeat: now,
                functions_sent: HashMap::new(),
                draining: false,
                slot,
                store: StoreUsage::default(),
            },
        );
        // What it reports is the truth about its store: copies the head
        // believed it had (from the log, after a restart) and it does not
        // are gone; objects left with no copy are rebuilt.
        let reported: IdSet<ObjectId> = held.iter().copied().collect();
        let lost = self.drop_holder(id, &reported);
        // What it still holds is readable again from it, or nobody's. A
        // driver that could not be told where an object was (no holder
        // was back yet after a restart) is told now.
        let mut readable_again = Vec::new();
        for oid in held {
            let Some(o) = self.objects.get_mut(&oid) else {
                out.free_object(id, oid);
                continue;
            };
            match &mut o.state {
                ObjectState::Stored { holders, .. } => {
                    let was_readable = holders.iter().any(|h| *h != id && self.nodes.get(h).is_some_and(|n| n.alive));
                    if !holders.contains(&id) {
                        holders.push(id);
                    }
                    if !was_readable && o.driver_ref {
                        readable_again.push(oid);
                    }
                }
                _ => out.free_object(id, oid),
            }
        }
        for oid in readable_again {
            let attached = self.jobs.get(&oid.job()).is_some_and(|j| j.detached_since.is_none());
            if attached && let Some(r) = self.objects.get(&oid).and_then(|o| self.answer(oid, &o.state)) {
                out.result(oid.job(), oid, r);
            }
        }
        if !lost.is_empty() {
            tracing::warn!(node = %id, objects = lost.len(), "the node came back without objects only it held");
            self.reconstruct(&lost, &format!("node {id} came back without its copy"), out);
        }
        (id, epoch)
    }

    /// Why `reg` may not register: its node id is held by another worker
    /// process that is alive (heartbeating). The same process coming back
    /// on a new connection, or a worker restarted after the old one went
    /// silent, may.
    pub fn registration_conflict(&self, reg: &NodeRegistration, now: Instant) -> Option<CoreError> {
        let id = reg.node_id?;
        let n = self.nodes.get(&id).filter(|n| n.alive)?;
        let other_process = reg.instance != 0 && n.info.instance != 0 && reg.instance != n.info.instance;
        let heard_lately = now.saturating_duration_since(n.last_heartbeat) <= self.config.heartbeat_timeout;
        (other_process && heard_lately).then(|| CoreError::NodeIdInUse { node: id, pid: n.info.pid, hostname: n.info.hostname.clone() })
    }

    fn live_node(&mut self, id: NodeId, epoch: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&id).filter(|n| n.alive && n.epoch == epoch)
    }

    /// A heartbeat from a node's current session.
    pub fn node_heartbeat(&mut self, id: NodeId, epoch: u64, now: Instant) {
        if let Some(n) = self.live_node(id, epoch) {
            n.last_heartbeat = now;
        }
    }

    /// A node reports its object store usage.
    pub fn node_store_usage(&mut self, id: NodeId, epoch: u64, usage: StoreUsage) {
        if let Some(n) = self.live_node(id, epoch) {
            n.store = usage;
        }
    }

    /// A node pulled a copy of stored object `id` from a peer: it is a
    /// second place to read it from. If the object is gone meanwhile, the
    /// copy is freed.
    pub fn object_copied(&mut self, node: NodeId, epoch: u64, id: ObjectId, out: &mut impl Outbox) {
        if self.live_node(node, epoch).is_none() {
            return;
        }
        self.fetches.done(id, node);
        match self.objects.get_mut(&id).map(|o| &mut o.state) {
            Some(ObjectState::Stored { holders, .. }) => {
                if !holders.contains(&node) {
                    holders.push(node);
                }
            }
            _ => out.free_object(node, id),
        }
    }

    /// A node asks for `n` more tasks.
    pub fn node_credits(&mut self, id: NodeId, epoch: u64, n: u32, now: Instant) {
        if let Some(node) = self.live_node(id, epoch) {
            node.last_heartbeat = now;
            if !node.draining {
                node.credits = node.credits.saturating_add(n);
                self.total_credits += n as u64;
            }
        }
    }

    /// A node's session ended (stream closed or broken).
    pub fn node_disconnected(&mut self, id: NodeId, epoch: u64, out: &mut impl Outbox) {
        if self.live_node(id, epoch).is_some() {
            self.node_dead(id, "connection closed", out);
        }
    }

    /// Periodic check: nodes silent past the heartbeat timeout are dead;
    /// jobs whose driver stayed away past the grace period end.
    pub fn tick(&mut self, now: Instant, out: &mut impl Outbox) {
        if self.recovering_until.is_some_and(|t| now >= t) {
            self.recovering_until = None;
            // Holders that did not come back after the restart: what only
            // they held is lost, and rebuilt if it can be.
            let mut lost = Vec::new();
            for (oid, o) in self.objects.iter_mut() {
                if let ObjectState::Stored { holders, .. } = &mut o.state
                    && !holders.is_empty()
                {
                    holders.retain(|h| self.nodes.get(h).is_some_and(|n| n.alive));
                    if holders.is_empty() {
                        lost.push(*oid);
                    }
                }
            }
            if !lost.is_empty() {
                tracing::warn!(objects = lost.len(), "objects whose nodes did not re-register after the restart are lost");
                lost.sort_unstable();
                self.reconstruct(&lost, "the nodes holding it did not come back after the head restarted", out);
            }
        }
        let grace = self.config.driver_grace;
        let gone: Vec<JobId> =
            self.jobs.iter().filter(|(_, j)| j.detached_since.is_some_and(|t| now.saturating_duration_since(t) > grace)).map(|(id, _)| *id).collect();
        for job in gone {
            tracing::warn!(job, grace_s = grace.as_secs_f64(), "the driver did not come back; ending its job");
            self.job_disconnected(job, out);
        }
        let timeout = self.config.heartbeat_timeout;
        let late: Vec<NodeId> =
            self.nodes.iter().filter(|(_, n)| n.alive && now.saturating_duration_since(n.last_heartbeat) > timeout).map(|(id, _)| *id).collect();
        for id in late {
            self.node_dead(id, &format!("missed heartbeats for {:.1}s", timeout.as_secs_f64()), out);
        }
    }

    fn node_dead(&mut self, id: NodeId, reason: &str, out: &mut impl Outbox) {
        self.node_dead_keeping(id, reason, &IdSet::default(), out);
    }

    /// Marks a node dead; its copies of objects in `keep` stay recorded
    /// (it re-registered and still holds them).
    fn node_dead_keeping(&mut self, id: NodeId, reason: &str, keep: &IdSet<ObjectId>, out: &mut impl Outbox) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        node.alive = false;
        self.alive_dirty = true;
        self.total_credits = self.total_credits.saturating_sub(node.credits as u64);
        node.credits = 0;
        node.in_use = ResourceSet::default();
        node.functions_sent.clear();
        let lost: Vec<TaskId> = node.assigned.drain().collect();
        self.fetches.node_gone(id);
        tracing::warn!(node = %id, reason, tasks = lost.len(), "node marked dead");
        out.disconnect(id, node.epoch);
        // Its store is gone: objects whose only copy it held are lost.
        let lost_objects = self.drop_holder(id, keep);
        if !lost_objects.is_empty() {
            tracing::warn!(node = %id, objects = lost_objects.len(), "objects lost with the node (their only copy was there)");
            self.reconstruct(&lost_objects, &format!("its only copy was on node {id}, which died"), out);
        }
        let mut requeue = Vec::new();
        for t in lost {
            let Some(task) = self.tasks.get_mut(&t) else { continue };
            task.note(format!("attempt {} on node {id}: the node died ({reason})", task.attempts));
            // The node died under it: the policy decides as for an
            // executor death (the task's inputs are requeued as needed).
            let decision = failure::decide(FailureKind::WorkerDied, task.retry_state(false));
            if task.cancel_requested {
                self.fail_task(t, Failure::new(FailureKind::Cancelled, "cancelled"), out);
            } else if decision == Retry::Again {
                requeue.push(t);
            } else {
                let history = task.history().map(|h| h.join("; ")).unwrap_or_default();
                let call = task.actor_of().is_some();
                let mut f = Failure::new(FailureKind::WorkerDied, format!("node {id} died ({reason}) while running the task; history: {history}"));
                if call {
                    f = Failure::new(FailureKind::ActorDied, format!("node {id}, running the actor, died ({reason}) during the call; history: {history}"));
                }
                f.node = id.0.to_string();
                f.attempts = task.attempts as u32;
                self.fail_task(t, f, out);
            }
        }
        // Retried tasks go to the front: they were submitted before
        // anything still queued. Their inputs may have been lost with the
        // node too (and are being rebuilt): `requeue` makes them wait.
        requeue.sort_unstable();
        for t in requeue.into_iter().rev() {
            self.requeue(t, out);
        }
    }

    /// Puts a task that is no longer on a node (its node died, its
    /// executor died, or it could not read an input) back in line, at the
    /// front: it waits for inputs that are unfinished again (lost and being
    /// rebuilt), fails if an input failed for good, and is ready otherwise.
    /// Nothing in the ready queue holds an input that is not there.
    fn requeue(&mut self, tid: TaskId, out: &mut impl Outbox) {
        let Some(task) = self.tasks.get_mut(&tid) else { return };
        if matches!(task.state, TaskState::Dispatched(_)) {
            self.counts.running = self.counts.running.saturating_sub(1);
            self.counts.queued += 1;
            out.task_event(tid, task.func, TaskEvent::Requeued);
        }
        task.state = TaskState::Ready;
        if self.is_actor(tid) {
            self.actor_restarting(tid);
        }
        let ready = self.wait_for_inputs(tid, out);
        match self.actor_of(tid) {
            Some(actor) => self.queue_call(actor, tid, true, out),
            None if ready => self.ready.push_front(tid),
            None => {}
        }
    }

    /// Checks the inputs of task `tid` (queued, not waiting on anything
    /// yet): one that failed fails the task; unfinished ones (being
    /// rebuilt) make it wait for them. Returns whether it is ready.
    fn wait_for_inputs(&mut self, tid: TaskId, out: &mut impl Outbox) -> bool {
        let Some(task) = self.tasks.get(&tid) else { return false };
        let mut deps = Vec::new();
        let mut failed = None;
        for a in task.args.iter() {
            let ArgSlot::Object(x) = a else { continue };
            if self.tasks.contains_key(x) {
                deps.push(*x);
                continue;
            }
            match self.objects.get(x).map(|o| &o.state) {
                Some(ObjectState::Failed(f)) => {
                    failed.get_or_insert_with(|| (**f).clone());
                }
                Some(_) => {}
                None => {
                    tracing::error!(task = %tid, input = %*x, "a queued task's input is neither an object nor a task");
                    failed.get_or_insert_with(|| Failure::new(FailureKind::Internal, format!("the head lost track of input {} of this task", *x)));
                }
            }
        }
        if let Some(f) = failed {
            self.fail_task(tid, f, out);
            return false;
        }
        for d in &deps {
            if let Some(p) = self.tasks.get_mut(d) {
                p.dependents.get_or_insert_default().push(tid);
            }
        }
        let Some(task) = self.tasks.get_mut(&tid) else { return false };
        task.missing = deps.len() as u32;
        task.state = if deps.is_empty() { TaskState::Ready } else { TaskState::Waiting };
        deps.is_empty()
    }

    /// Node `id` no longer holds any stored object except those in `keep`.
    /// Returns the objects left with no copy, in id order (producers
    /// before consumers, for rebuilding).
    fn drop_holder(&mut self, id: NodeId, keep: &IdSet<ObjectId>) -> Vec<ObjectId> {
        let mut lost = Vec::new();
        for (oid, o) in self.objects.iter_mut() {
            if let ObjectState::Stored { holders, .. } = &mut o.state
                && !keep.contains(oid)
                && let Some(i) = holders.iter().position(|h| *h == id)
            {
                holders.swap_remove(i);
                if holders.is_empty() {
                    lost.push(*oid);
                }
            }
        }
        lost.sort_unstable();
        lost
    }

    /// Drains a node: no new tasks go to it; it finishes what it holds and
    /// exits (rolling restarts). Its unused credits are withdrawn.
    pub fn drain(&mut self, id: NodeId, out: &mut impl Outbox) -> Result<(), CoreError> {
        let node = self.nodes.get_mut(&id).filter(|n| n.alive).ok_or_else(|| CoreError::NoSuchNode(id.0.to_string()))?;
        if !node.draining {
            node.draining = true;
            self.total_credits = self.total_credits.saturating_sub(node.credits as u64);
            node.credits = 0;
            self.alive_dirty = true;
            tracing::info!(node = %id, running = node.assigned.len(), "draining node");
            out.drain(id);
        }
        Ok(())
    }

    // ------------------------------------------------------------ jobs

    /// A driver connected. Returns its job id.
    pub fn job_connected(&mut self, binary: String, name: String) -> Result<JobId, CoreError> {
        self.job_connected_under(binary, name, None)
    }

    /// A driver connected from a task of job `parent` (a task submitting
    /// tasks): its job ends when `parent` does.
    pub fn job_connected_under(&mut self, binary: String, name: String, parent: Option<JobId>) -> Result<JobId, CoreError> {
        if self.next_job > ids::MAX_JOB {
            return Err(CoreError::JobIdsExhausted);
        }
        let job = self.next_job;
        self.next_job += 1;
        tracing::info!(job, name = %name, binary = %&binary[..binary.len().min(12)], "job started");
        let parent = parent.filter(|p| self.jobs.contains_key(p));
        self.jobs.insert(job, Job { binary, name, functions: Vec::new(), detached_since: None, parent, lingering: false });
        Ok(job)
    }

    /// The next job id `job_connected` hands out (persisted by the head so
    /// ids are never reused across restarts).
    pub fn next_job(&self) -> JobId {
        self.next_job
    }

    /// Job ids below `next` were used before a restart: never hand them out.
    pub fn reserve_jobs_below(&mut self, next: JobId) {
        self.next_job = self.next_job.max(next);
    }

    /// Recreates job `job` from the head's log after a restart. It waits
    /// (detached) for its driver to reconnect.
    pub fn restore_job(&mut self, job: JobId, binary: String, name: String, now: Instant) {
        self.next_job = self.next_job.max(job + 1);
        self.jobs.insert(job, Job { binary, name, functions: Vec::new(), detached_since: Some(now), parent: None, lingering: false });
    }

    /// The whole state of `job`, to log instead of its history.
    pub fn job_snapshot(&self, job: JobId) -> Option<JobSnapshot> {
        let j = self.jobs.get(&job)?;
        let args = |slots: &[ArgSlot]| -> Vec<NewArg> {
            slots
                .iter()
                .map(|a| match a {
                    ArgSlot::Value(b) => NewArg::Value(b.clone()),
                    ArgSlot::Object(o) => NewArg::Object(*o),
                })
                .collect()
        };
        let objects = self
            .objects
            .iter()
            .filter(|(id, _)| id.job() == job)
            .map(|(id, o)| SnapshotObject {
                id: *id,
                value: match &o.state {
                    ObjectState::Ready(b) => SnapshotValue::Inline(b.clone()),
                    ObjectState::Stored { size, holders } => SnapshotValue::Stored { size: *size, holders: holders.clone() },
                    ObjectState::Failed(f) => SnapshotValue::Failed((**f).clone()),
                },
                driver_ref: o.driver_ref,
                lineage: o.lineage.as_ref().map(|l| NewTask {
                    id: *id,
                    func: l.func,
                    args: args(&l.args),
                    max_retries: Some(l.max_retries as u32),
                    resources: l.resources.as_deref().cloned(),
                    retry_exceptions: Some(l.retry_exceptions),
                    contains: Vec::new(),
                    placement: Placement::Any,
                    dedicated: false,
                    actor: ActorRole::None,
                }),
            })
            .collect();
        let mut tasks: Vec<SnapshotTask> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.job == job)
            .map(|(id, t)| SnapshotTask {
                task: NewTask {
                    id: *id,
                    func: t.func,
                    args: args(&t.args),
                    max_retries: Some(t.max_retries as u32),
                    resources: t.own_resources().cloned(),
                    retry_exceptions: Some(t.retry_exceptions),
                    contains: t.extra.as_ref().map(|e| e.arg_refs.clone()).unwrap_or_default(),
                    placement: t.extra.as_ref().map(|e| e.placement).unwrap_or_default(),
                    dedicated: t.extra.as_ref().is_some_and(|e| e.dedicated),
                    actor: match (self.actors.by_id.get(id), t.actor_of()) {
                        (Some(a), _) => ActorRole::Create(Box::new(a.spec.clone())),
                        (None, Some(actor)) => ActorRole::Call(actor),
                        (None, None) => ActorRole::None,
                    },
                },
                driver_ref: t.driver_ref,
            })
            .collect();
        tasks.sort_unstable_by_key(|t| t.task.id);
        Some(JobSnapshot { binary: j.binary.clone(), name: j.name.clone(), functions: j.functions.clone(), objects, tasks, lingering: j.lingering })
    }

    /// Rebuilds `job` from a snapshot (after a restart). Unfinished tasks
    /// are queued again; the job waits for its driver like a restored one.
    pub fn restore_snapshot(&mut self, job: JobId, snap: JobSnapshot, now: Instant, out: &mut impl Outbox) {
        self.restore_job(job, snap.binary, snap.name, now);
        self.define_functions(job, 0, snap.functions);
        let slots = |args: Vec<NewArg>| -> Box<[ArgSlot]> {
            args.into_iter()
                .map(|a| match a {
                    NewArg::Value(b) => ArgSlot::Value(b),
                    NewArg::Object(o) => ArgSlot::Object(o),
                })
                .collect()
        };
        let mut unreferenced = Vec::new();
        for o in snap.objects {
            if o.id.job() != job {
                continue;
            }
            let state = match o.value {
                SnapshotValue::Inline(b) => ObjectState::Ready(b),
                SnapshotValue::Stored { size, holders } => ObjectState::Stored { size, holders },
                SnapshotValue::Failed(f) => ObjectState::Failed(Box::new(f)),
            };
            let lineage = o.lineage.map(|t| {
                Box::new(Lineage {
                    func: t.func,
                    args: slots(t.args),
                    max_retries: t.max_retries.unwrap_or(0).min(u16::MAX as u32) as u16,
                    retry_exceptions: t.retry_exceptions.unwrap_or(false),
                    resources: t.resources.map(Box::new),
                })
            });
            if !o.driver_ref {
                unreferenced.push(o.id);
            }
            self.objects.insert(o.id, Object { state, driver_ref: o.driver_ref, task_refs: 0, lineage, refs: None });
        }
        let released: Vec<TaskId> = snap.tasks.iter().filter(|t| !t.driver_ref).map(|t| t.task.id).collect();
        self.submit(job, snap.tasks.into_iter().map(|t| t.task).collect(), out);
        self.release(job, &released, out);
        for id in unreferenced {
            self.maybe_free(id, out);
        }
        // Its driver is gone for good: no grace to wait out.
        if snap.lingering
            && let Some(j) = self.jobs.get_mut(&job)
        {
            j.lingering = true;
            j.detached_since = None;
        }
    }

    /// After a restart: for `grace`, tasks whose inputs are held only by
    /// nodes that have not re-registered yet wait for those nodes.
    pub fn recovering(&mut self, until: Instant) {
        self.recovering_until = Some(until);
    }

    /// No node is coming back after a restart after all (nothing was
    /// restored): decide as a fresh head does.
    pub fn end_recovery(&mut self) {
        self.recovering_until = None;
    }

    /// Whether `job` is the session of a task (a task submitting tasks).
    pub fn job_is_nested(&self, job: JobId) -> bool {
        self.jobs.get(&job).is_some_and(|j| j.parent.is_some())
    }

    /// The driver of `job` lost its connection: keep its work for the
    /// grace period in case it reconnects.
    pub fn job_detached(&mut self, job: JobId, now: Instant) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.detached_since = Some(now);
        }
    }

    /// The driver of `job` reconnected. Returns every result it may have
    /// missed (finished objects it still references), to send again; it
    /// ignores those it has. `None` if the job is unknown.
    pub fn job_reattached(&mut self, job: JobId) -> Option<Vec<(TaskId, Result<Payload, Failure>)>> {
        // A lingering job's driver ended it; nobody resumes it.
        self.jobs.get_mut(&job).filter(|j| !j.lingering)?.detached_since = None;
        let mut out = Vec::new();
        // A stored object whose holders have not re-registered yet (a
        // restart) is left out: the driver is told when one does, or asks
        // (`locate`) when it reads it.
        for (id, o) in self.objects.iter().filter(|(id, o)| id.job() == job && o.driver_ref) {
            if let Some(r) = self.answer(*id, &o.state) {
                out.push((*id, r));
            }
        }
        Some(out)
    }

    /// Replays a result from the head's log: task `tid` finished on `node`
    /// before the restart. Retryable failures are dropped (the task runs
    /// again).
    pub fn restore_result(&mut self, node: NodeId, tid: TaskId, outcome: Result<Value, Failure>, out: &mut impl Outbox) {
        if !self.tasks.get(&tid).is_some_and(|t| matches!(t.state, TaskState::Ready | TaskState::Waiting)) {
            return;
        }
        match outcome {
            Ok(value) => {
                self.counts.queued = self.counts.queued.saturating_sub(1);
                self.finished(tid, node, value, out);
            }
            Err(f) if f.kind.is_infrastructure() => {}
            Err(f) => self.fail_task(tid, f, out),
        }
    }

    /// A driver declares functions `first..` (indices are per job).
    pub fn define_functions(&mut self, job: JobId, first: u32, defs: Vec<FunctionDef>) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        for (i, def) in defs.into_iter().enumerate() {
            let idx = first as usize + i;
            if idx == j.functions.len() {
                j.functions.push(def);
            } else if idx > j.functions.len() {
                tracing::warn!(job, idx, "function index out of order; ignored");
            }
        }
    }

    /// A driver disconnected: its queued tasks are dropped, running ones
    /// cancelled, its objects freed, and its executors released.
    pub fn job_disconnected(&mut self, job: JobId, out: &mut impl Outbox) {
        // Detached actors outlive their driver: the job lingers for them.
        if self.has_live_detached_actors(job) {
            if self.jobs.get(&job).is_some_and(|j| !j.lingering) {
                self.linger(job, out);
            }
            return;
        }
        let Some(j) = self.jobs.remove(&job) else { return };
        let mine: Vec<TaskId> = self.tasks.iter().filter(|(_, t)| t.job == job).map(|(id, _)| *id).collect();
        let mut removed = Vec::with_capacity(mine.len());
        for id in &mine {
            let Some(task) = self.tasks.remove(id) else { continue };
            self.task_gone(task.job);
            match task.state {
                TaskState::Waiting | TaskState::Ready => self.left_queue(task.state == TaskState::Ready),
                TaskState::Dispatched(slot) => {
                    self.counts.running = self.counts.running.saturating_sub(1);
                    if let Some(n) = self.slots.get(slot as usize).copied()
                        && let Some(node) = self.nodes.get_mut(&n)
                    {
                        node.assigned.remove(id);
                        if let Some(def) = j.functions.get(task.func as usize) {
                            node.in_use.sub(needs(&task, def));
                        }
                        out.cancel(n, *id);
                    }
                }
            }
            removed.push((*id, task));
        }
        self.actors_job_ended(job, out);
        // What its tasks held: inputs (maybe other jobs' objects), refs in
        // their arguments and in their future results; jobs that borrowed
        // a future result are told it will not come.
        let mut told: Vec<(JobId, ObjectId)> = Vec::new();
        for (id, mut task) in removed {
            self.release_args(id, &task, out);
            if let Some(e) = task.extra.as_mut() {
                let r = std::mem::take(&mut e.refs);
                told.extend(r.borrowers.iter().filter(|b| **b != job).map(|b| (*b, id)));
                for c in r.contains {
                    self.uncontain(c, out);
                }
            }
        }
        // Its objects go, and with them the refs their values held; other
        // jobs that borrowed one are told it is gone; refs it borrowed are
        // dropped. A task's session (its executor went) leaves behind what
        // other jobs still reference: the head keeps those (nobody can
        // rebuild them any more) until their last ref drops.
        let nested = j.parent.is_some();
        let mut orphans: Vec<ObjectId> = Vec::new();
        let mut dropped: Vec<ObjectId> = Vec::new();
        let mut unborrowed: Vec<ObjectId> = Vec::new();
        self.objects.retain(|id, o| {
            if id.job() != job {
                if let Some(r) = o.refs.as_mut()
                    && let Some(i) = r.borrowers.iter().position(|b| *b == job)
                {
                    r.borrowers.swap_remove(i);
                    unborrowed.push(*id);
                }
                return true;
            }
            if nested && o.refs.as_ref().is_some_and(|r| r.contained_in > 0 || r.borrowers.iter().any(|b| *b != job)) {
                o.driver_ref = false;
                o.lineage = None;
                if let Some(r) = o.refs.as_mut() {
                    r.borrowers.retain(|b| *b != job);
                }
                if let ObjectState::Stored { holders, .. } = &o.state {
                    for h in holders {
                        out.keep_object(*h, *id);
                    }
                }
                orphans.push(*id);
                return true;
            }
            if let ObjectState::Stored { holders, .. } = &o.state {
                for h in holders {
                    out.free_object(*h, *id);
                }
            }
            if let Some(r) = o.refs.take() {
                told.extend(r.borrowers.iter().filter(|b| **b != job).map(|b| (*b, *id)));
                dropped.extend(r.contains);
            }
            false
        });
        for t in self.tasks.values_mut() {
            if let Some(e) = t.extra.as_mut() {
                e.refs.borrowers.retain(|b| *b != job);
            }
        }
        for (b, id) in told {
            let f = Failure::new(FailureKind::ObjectLost, format!("object {id} is gone: job {job}, which made it, ended"));
            out.result(b, id, Err(f));
        }
        for id in dropped {
            self.uncontain(id, out);
        }
        for id in unborrowed.into_iter().chain(orphans) {
            self.maybe_free(id, out);
        }
        // Other jobs' queued tasks that take one of its objects or results
        // (refs they borrowed) cannot run.
        let gone = |x: &ObjectId| x.job() == job && !self.objects.contains_key(x);
        let orphans: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| matches!(t.state, TaskState::Waiting | TaskState::Ready))
            .filter(|(_, t)| t.args.iter().any(|a| matches!(a, ArgSlot::Object(x) if gone(x))))
            .map(|(id, _)| *id)
            .collect();
        for t in orphans {
            let f = Failure::new(FailureKind::ObjectLost, format!("an input of the task is gone: job {job}, which made it, ended"));
            self.fail_task(t, f, out);
        }
        for (id, node) in self.nodes.iter_mut() {
            if node.functions_sent.remove(&job).is_some() && node.alive {
                out.job_finished(*id, job);
            }
        }
        tracing::info!(job, name = %j.name, dropped_tasks = mine.len(), "job finished");
        self.compact_ready();
        self.shrink_tables();
        out.job_ended(job);
        // Jobs its tasks started end with it (their executors are gone).
        let children: Vec<JobId> = self.jobs.iter().filter(|(_, c)| c.parent == Some(job)).map(|(id, _)| *id).collect();
        for child in children {
            self.job_disconnected(child, out);
        }
    }

    // ------------------------------------------------------------ objects and tasks

    /// A driver stores a value (a `put`) under `id`.
    pub fn put(&mut self, job: JobId, id: ObjectId, value: PutValue, out: &mut impl Outbox) {
        if id.job() != job || self.objects.contains_key(&id) || self.tasks.contains_key(&id) || !self.jobs.contains_key(&job) {
            tracing::warn!(job, object = %id, "put refused: foreign or duplicate id");
            if let PutValue::Stored { node, .. } = value {
                out.free_object(node, id);
            }
            return;
        }
        let mut dead = None;
        let state = match value {
            PutValue::Inline(b) => ObjectState::Ready(b),
            PutValue::Stored { size, node } => {
                // A put to a node that died meanwhile is lost at once. One
                // this head does not know yet may still re-register if the
                // head is recovering from a restart (a replayed put).
                let gone = match self.nodes.get(&node) {
                    Some(n) => !n.alive,
                    None => self.recovering_until.is_none(),
                };
                if gone {
                    dead = Some(node);
                }
                ObjectState::Stored { size, holders: vec![node] }
            }
        };
        self.objects.insert(id, Object { state, driver_ref: true, task_refs: 0, lineage: None, refs: None });
        if let Some(node) = dead {
            let f = Failure::new(FailureKind::ObjectLost, format!("object {} was put into the store of node {node}, which died", id));
            self.object_failed(id, f, out);
        }
    }

    /// Object `id` is gone for good (lost, and it cannot be rebuilt): it
    /// becomes that failure, which its driver is told of and its
    /// consumers fail with.
    fn object_failed(&mut self, id: ObjectId, f: Failure, out: &mut impl Outbox) {
        let Some(o) = self.objects.get_mut(&id) else { return };
        Self::free_copies(id, &o.state, out);
        o.state = ObjectState::Failed(Box::new(f.clone()));
        o.lineage = None;
        if o.driver_ref {
            out.result(id.job(), id, Err(f.clone()));
        }
        for b in o.refs.iter().flat_map(|r| r.borrowers.iter()) {
            out.result(*b, id, Err(f.clone()));
        }
        // Queued consumers fail now; running ones fail when they cannot
        // read it.
        let consumers: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| matches!(t.state, TaskState::Waiting | TaskState::Ready))
            .filter(|(_, t)| t.args.iter().any(|a| matches!(a, ArgSlot::Object(x) if *x == id)))
            .map(|(tid, _)| *tid)
            .collect();
        for c in consumers {
            self.fail_task(c, f.clone(), out);
        }
    }

    /// The driver of `job` could not read these objects from the holders
    /// it was told of. Each gets its answer: where it is now, or why it is
    /// gone; one that is being rebuilt (or not finished) gets it when it
    /// finishes, like any result.
    pub fn locate(&mut self, job: JobId, ids_: &[ObjectId], out: &mut impl Outbox) {
        for &id in ids_ {
            if self.tasks.contains_key(&id) {
                continue;
            }
            let outcome = match self.objects.get(&id) {
                Some(o) => match self.answer(id, &o.state) {
                    Some(r) => r,
                    // Its holders may still re-register after a restart.
                    None if self.recovering_until.is_some() => continue,
                    None => Err(Failure::new(FailureKind::ObjectLost, format!("object {}: no node holds a copy any more", id))),
                },
                None => Err(Failure::new(FailureKind::ObjectLost, format!("object {} is not known to the head (released, or its job ended)", id))),
            };
            out.result(job, id, outcome);
        }
    }

    /// A driver submits tasks. Ids must be the job's own and fresh.
    pub fn submit(&mut self, job: JobId, tasks: Vec<NewTask>, out: &mut impl Outbox) {
        let Some(j) = self.jobs.get(&job) else { return };
        // Tasks a task submits run before what was queued earlier (depth
        // first): their caller is waiting for them, holding an executor,
        // so a recursive program finishes branches instead of opening them
        // all (a fan-out tree ten deep would otherwise block ~1,000 tasks
        // at once, far past what a node may run).
        let nested = j.parent.is_some();
        let mut front = Vec::new();
        let defaults: Vec<(u32, bool)> = j.functions.iter().map(|f| (f.max_retries, f.retry_exceptions)).collect();
        // For the task events (one copy per batch, not per task).
        let names: Vec<String> = j.functions.iter().map(|f| f.name.clone()).collect();
        let nfuncs = defaults.len();
        for t in tasks {
            if t.id.job() != job || self.objects.contains_key(&t.id) || self.tasks.contains_key(&t.id) {
                tracing::warn!(job, task = %t.id, "submission refused: foreign or duplicate id");
                continue;
            }
            let mut slots = Vec::with_capacity(t.args.len());
            let mut missing = 0;
            let mut early: Option<Failure> = None;
            for a in t.args {
                let NewArg::Object(oid) = a else {
                    if let NewArg::Value(b) = a {
                        slots.push(ArgSlot::Value(b));
                    }
                    continue;
                };
                // Its own job's objects, or one it borrowed (a ref that
                // reached it inside a value).
                if let Some(o) = self.objects.get_mut(&oid) {
                    o.task_refs += 1;
                    if let ObjectState::Failed(f) = &o.state {
                        early.get_or_insert_with(|| (**f).clone());
                    }
                    slots.push(ArgSlot::Object(oid));
                } else if let Some(producer) = self.tasks.get_mut(&oid) {
                    producer.result_refs += 1;
                    producer.dependents.get_or_insert_default().push(t.id);
                    missing += 1;
                    slots.push(ArgSlot::Object(oid));
                } else {
                    early.get_or_insert_with(|| {
                        Failure::new(FailureKind::ObjectLost, format!("argument object {} does not exist (released or never created)", oid))
                    });
                }
            }
            if t.func as usize >= nfuncs {
                early = Some(Failure::new(FailureKind::FunctionNotFound, format!("function index {} was never defined by job {job}", t.func)));
            }
            let actor_of = match &t.actor {
                ActorRole::Call(actor) => {
                    if let Err(f) = self.actor_accepts(*actor) {
                        early.get_or_insert(f);
                    }
                    Some(*actor)
                }
                ActorRole::Create(spec) if early.is_none() => {
                    if let Err(f) = self.actor_created(job, t.id, (**spec).clone()) {
                        early = Some(f);
                    }
                    None
                }
                _ => None,
            };
            // Pinned to a node that cannot run it now or later: say so at once.
            if let Placement::Node { node, soft: false } = t.placement
                && self.recovering_until.is_none()
                && !self.nodes.get(&node).is_some_and(|n| n.alive)
            {
                let why = if self.nodes.contains_key(&node) { "which is dead" } else { "which is not part of the cluster" };
                early.get_or_insert_with(|| Failure::new(FailureKind::Unschedulable, format!("the call is pinned to node {node}, {why}")));
            }
            let state = if missing == 0 { TaskState::Ready } else { TaskState::Waiting };
            let (def_retries, def_exceptions) = defaults.get(t.func as usize).copied().unwrap_or((0, false));
            let mut max_retries = t.max_retries.unwrap_or(def_retries).min(u16::MAX as u32) as u16;
            let mut retry_exceptions = t.retry_exceptions.unwrap_or(def_exceptions);
            // A method call is retried (after the actor died under it) as
            // its actor says, and never after a panic.
            if let Some(a) = actor_of.and_then(|a| self.actors.by_id.get(&a)) {
                max_retries = a.spec.max_task_retries.min(u16::MAX as u32) as u16;
                retry_exceptions = false;
            }
            self.tasks.insert(
                t.id,
                Box::new(Task {
                    job,
                    func: t.func,
                    args: slots.into_boxed_slice(),
                    missing,
                    state,
                    attempts: 0,
                    max_retries,
                    retry_exceptions,
                    unreadable: 0,
                    cancel_requested: false,
                    extra: t.resources.map(|r| Box::new(Extra { resources: Some(r), ..Default::default() })),
                    driver_ref: true,
                    result_refs: 0,
                    dependents: None,
                }),
            );
            self.task_added(job);
            self.counts.queued += 1;
            let name = names.get(t.func as usize).map_or("?", |n| n.as_str());
            out.task_event(t.id, t.func, TaskEvent::Submitted { function: name });
            if (t.placement != Placement::Any || t.dedicated || actor_of.is_some())
                && let Some(task) = self.tasks.get_mut(&t.id)
            {
                let e = task.extra.get_or_insert_default();
                e.placement = t.placement;
                e.dedicated = t.dedicated;
                e.actor_of = actor_of;
            }
            if !t.contains.is_empty() {
                let kept: Vec<ObjectId> = t.contains.into_iter().filter(|c| self.add_contained(*c)).collect();
                if let Some(task) = self.tasks.get_mut(&t.id) {
                    task.extra.get_or_insert_default().arg_refs = kept;
                }
            }
            if let Some(f) = early {
                self.fail_task(t.id, f, out);
            } else if let Some(actor) = actor_of {
                self.queue_call(actor, t.id, false, out);
            } else if missing == 0 && nested {
                front.push(t.id);
            } else if missing == 0 {
                self.ready.push_back(t.id);
            }
        }
        // In submission order, ahead of everything else.
        for id in front.into_iter().rev() {
            self.ready.push_front(id);
        }
    }

    /// The driver dropped its last reference to these objects.
    pub fn release(&mut self, job: JobId, ids_: &[ObjectId], out: &mut impl Outbox) {
        for id in ids_ {
            if id.job() != job {
                continue;
            }
            if let Some(o) = self.objects.get_mut(id) {
                o.driver_ref = false;
                self.maybe_free(*id, out);
            } else if let Some(t) = self.tasks.get_mut(id) {
                t.driver_ref = false;
            }
        }
    }

    /// Cancel tasks: queued ones fail with `Cancelled` and never run;
    /// dispatched ones are stopped by their worker, which reports back.
    pub fn cancel(&mut self, job: JobId, ids_: &[TaskId], out: &mut impl Outbox) {
        for id in ids_ {
            let Some(task) = self.tasks.get_mut(id) else { continue };
            if task.job != job {
                continue;
            }
            match task.state {
                TaskState::Waiting | TaskState::Ready => self.fail_task(*id, Failure::new(FailureKind::Cancelled, "cancelled before it started"), out),
                TaskState::Dispatched(slot) => {
                    task.cancel_requested = true;
                    if let Some(node) = self.slots.get(slot as usize) {
                        out.cancel(*node, *id);
                    }
                }
            }
        }
        self.compact_ready();
        self.shrink_tables();
    }

    /// A node reports finished tasks.
    pub fn tasks_finished(&mut self, node_id: NodeId, epoch: u64, results: Vec<(TaskId, Result<Value, Failure>)>, now: Instant, out: &mut impl Outbox) {
        let Some(node) = self.live_node(node_id, epoch) else {
            tracing::debug!(node = %node_id, epoch, n = results.len(), "results from a stale session ignored");
            return;
        };
        node.last_heartbeat = now;
        let slot = node.slot;
        for (tid, outcome) in results {
            let current = self.tasks.get(&tid).is_some_and(|t| t.state == TaskState::Dispatched(slot));
            if !current {
                // A late duplicate (the task was retried or cancelled):
                // its stored copy is nobody's.
                if let Ok(Value::Stored { .. }) = outcome {
                    out.free_object(node_id, tid);
                }
                continue;
            }
            let rebuilding = matches!(&outcome, Err(f) if f.kind == FailureKind::ObjectLost) && self.inputs_being_rebuilt(tid);
            let decision = match &outcome {
                Ok(_) => Retry::Fail,
                Err(f) => self.tasks.get(&tid).map_or(Retry::Fail, |t| failure::decide(f.kind, t.retry_state(rebuilding))),
            };
            // A call on an actor that is dead fails as the actor died.
            let death = if outcome.is_err() { self.actor_of(tid).and_then(|a| self.actor_death(a)) } else { None };
            let Some(task) = self.tasks.get_mut(&tid) else { continue };
            let def = self.jobs.get(&task.job).and_then(|j| j.functions.get(task.func as usize));
            if let Some(node) = self.nodes.get_mut(&node_id) {
                node.assigned.remove(&tid);
                if let Some(def) = def {
                    node.in_use.sub(needs(task, def));
                }
            }
            let name = def.map(|d| d.name.clone()).unwrap_or_default();
            match outcome {
                Ok(value) => {
                    self.counts.running = self.counts.running.saturating_sub(1);
                    self.finished(tid, node_id, value, out);
                }
                // The task could not read an input from any holder, and an
                // input is being rebuilt: it waits for it.
                Err(_) if decision == Retry::WaitForInputs => {
                    tracing::info!(task = %tid, "an input was lost while the task waited for it; it runs again once the input is rebuilt");
                    self.requeue(tid, out);
                }
                // No input is being rebuilt: a holder may have died just
                // before its death reached the head. Try again (bounded):
                // by then its copies are rebuilt or read from another node.
                Err(f) if decision == Retry::AgainUnreadable => {
                    task.unreadable += 1;
                    tracing::info!(task = %tid, error = %f.message, "the task could not read an input; trying again");
                    task.note(format!("attempt {} on node {node_id}: {}", task.attempts, f.message));
                    self.requeue(tid, out);
                }
                Err(f) if decision == Retry::Again => {
                    tracing::info!(task = %tid, attempt = task.attempts, kind = %f.kind, "retrying the task");
                    task.note(format!("attempt {} on node {node_id}: {}", task.attempts, f.message));
                    self.requeue(tid, out);
                }
                Err(mut f) => {
                    f.attempts = task.attempts as u32;
                    if f.function.is_empty() {
                        f.function = name;
                    }
                    if f.kind == FailureKind::WorkerDied && task.actor_of().is_some() {
                        f = death.unwrap_or_else(|| Failure {
                            kind: FailureKind::ActorDied,
                            message: format!("the actor died during the call: {}", f.message),
                            ..f
                        });
                    }
                    if f.kind == FailureKind::WorkerDied
                        && let Some(h) = task.history()
                    {
                        f.message = format!("{} (attempt {}); earlier: {}", f.message, task.attempts, h.join("; "));
                    }
                    self.fail_task(tid, f, out);
                }
            }
        }
    }

    /// Task `tid` produced `value` on `node`: record it and wake what waits.
    fn finished(&mut self, tid: TaskId, node: NodeId, value: Value, out: &mut impl Outbox) {
        if self.is_actor(tid) {
            // An actor's process ended its creation task on its own.
            self.actor_ended(tid, &Failure::new(FailureKind::WorkerDied, "the actor's process ended"), out);
        }
        let Some(task) = self.tasks.remove(&tid) else { return };
        self.task_gone(task.job);
        self.counts.finished += 1;
        out.task_event(tid, task.func, TaskEvent::Finished);
        self.release_args(tid, &task, out);
        let state = match value {
            Value::Inline(b) => ObjectState::Ready(b),
            Value::Stored { size } => ObjectState::Stored { size, holders: vec![node] },
        };
        self.settle(tid, *task, state, out);
    }

    fn release_args(&mut self, tid: TaskId, task: &Task, out: &mut impl Outbox) {
        for c in task.extra.as_ref().map(|e| e.arg_refs.as_slice()).unwrap_or_default() {
            self.uncontain(*c, out);
        }
        for a in task.args.iter() {
            if let ArgSlot::Object(oid) = a {
                if !self.fetches.is_empty() {
                    self.fetches.task_ended(*oid, tid);
                }
                if let Some(o) = self.objects.get_mut(oid) {
                    o.task_refs = o.task_refs.saturating_sub(1);
                    self.maybe_free(*oid, out);
                } else if let Some(producer) = self.tasks.get_mut(oid) {
                    producer.result_refs = producer.result_refs.saturating_sub(1);
                }
            }
        }
    }

    /// Frees `id` if nothing references it any more, and then what only
    /// its value kept alive.
    fn maybe_free(&mut self, id: ObjectId, out: &mut impl Outbox) {
        let mut work = vec![id];
        while let Some(id) = work.pop() {
            if self.objects.get(&id).is_none_or(|o| o.referenced()) {
                continue;
            }
            let Some(o) = self.objects.remove(&id) else { continue };
            self.fetches.object_gone(id);
            Self::free_copies(id, &o.state, out);
            for c in o.refs.map(|r| r.contains).unwrap_or_default() {
                if self.drop_containment(c) {
                    work.push(c);
                }
            }
        }
    }

    // ------------------------------------------------------------ generators

    /// The session `producer`, running generator task `task`, yielded item
    /// `index`: object `object`, which it just put. The caller (the task's
    /// job) borrows it and is sent it; the producer's own ref to it is
    /// dropped (it never holds one). A retried run's items already
    /// delivered are dropped.
    pub fn generator_item(&mut self, producer: JobId, task: TaskId, index: u64, object: ObjectId, out: &mut impl Outbox) {
        let caller = match self.objects.contains_key(&object) {
            true => self.generator_progress(producer, task, index, object, out),
            false => None,
        };
        let Some(caller) = caller else {
            self.release(producer, &[object], out);
            return;
        };
        if let Some(o) = self.objects.get_mut(&object) {
            o.driver_ref = false;
            let r = o.refs.get_or_insert_default();
            if !r.borrowers.contains(&caller) {
                r.borrowers.push(caller);
            }
        }
        if let Some(value) = self.objects.get(&object).and_then(|o| self.answer(object, &o.state)) {
            out.generator_item(caller, task, index, object, value, false);
        }
    }

    /// Item `index` of generator task `task`, as [`Self::generator_item`],
    /// for a small value holding no refs: it is passed on to the caller
    /// and not kept here. The caller alone holds it; if it sends the ref
    /// on, it [adopts](Self::adopt) it first. Most items are read where
    /// they arrive and dropped, and then the head did no more than pass
    /// them on.
    pub fn generator_item_owned(&mut self, producer: JobId, task: TaskId, index: u64, object: ObjectId, value: Bytes, out: &mut impl Outbox) {
        // Known already: adopted by its caller, whose batch a restarted
        // head replayed first. The stream advances; nothing is sent again.
        let known = self.objects.contains_key(&object) || self.tasks.contains_key(&object);
        if let Some(caller) = self.generator_progress(producer, task, index, object, out)
            && !known
        {
            out.generator_item(caller, task, index, object, Ok(Payload::Inline(value)), true);
        }
    }

    /// Whether item `index` (object `object`) of generator task `task`,
    /// from session `producer`, is to be delivered: to whom (the task's
    /// job). Advances the stream; a new producer (a retried run) learns
    /// how far the caller got.
    fn generator_progress(&mut self, producer: JobId, task: TaskId, index: u64, object: ObjectId, out: &mut impl Outbox) -> Option<JobId> {
        let t = self.tasks.get_mut(&task).filter(|t| matches!(t.state, TaskState::Dispatched(_)));
        let Some(t) = t.filter(|_| object.job() == producer) else {
            tracing::debug!(task = %task, object = %object, "an item of a generator that is not running here is dropped");
            return None;
        };
        let caller = t.job;
        let stream = t.extra.get_or_insert_default().generator.get_or_insert(Generator { producer, next: 0, consumed: 0 });
        let new_producer = stream.producer != producer;
        stream.producer = producer;
        if new_producer {
            // A retried run: it learns how far the caller got.
            out.generator_ack(producer, task, stream.consumed);
        }
        if index < stream.next {
            return None;
        }
        stream.next = index + 1;
        Some(caller)
    }

    /// Job `job` sends on an owned generator item it was given
    /// ([`Self::generator_item_owned`]): from now on the head keeps it, as
    /// it keeps any item: an object of the producer's session, borrowed
    /// by `job`, never rebuilt. Only the session that called the generator
    /// (the producer's parent) may adopt its items while that session is
    /// live; a known id is never replaced.
    pub fn adopt(&mut self, job: JobId, id: ObjectId, value: Bytes) {
        let producer = id.job();
        let allowed = self.jobs.contains_key(&job)
            && producer != job
            && producer < self.next_job
            && !self.objects.contains_key(&id)
            && !self.tasks.contains_key(&id)
            && self.jobs.get(&producer).is_none_or(|p| p.parent == Some(job));
        if !allowed {
            tracing::warn!(job, object = %id, "adoption refused: not an item this job was given");
            return;
        }
        let refs = Refs { borrowers: vec![job], ..Default::default() };
        self.objects.insert(id, Object { state: ObjectState::Ready(value), driver_ref: false, task_refs: 0, lineage: None, refs: Some(Box::new(refs)) });
    }

    /// The caller of generator task `task` consumed `consumed` items.
    pub fn generator_consumed(&mut self, caller: JobId, task: TaskId, consumed: u64, out: &mut impl Outbox) {
        let Some(stream) = self.tasks.get_mut(&task).filter(|t| t.job == caller).and_then(|t| t.extra.as_mut()).and_then(|e| e.generator.as_mut()) else {
            return;
        };
        if consumed > stream.consumed {
            stream.consumed = consumed;
            out.generator_ack(stream.producer, task, consumed);
        }
    }

    // ------------------------------------------------------------ references in values

    /// One more live container holds a ref to `id`; false if `id` is
    /// neither an object nor a task (nothing to keep).
    fn add_contained(&mut self, id: ObjectId) -> bool {
        if let Some(o) = self.objects.get_mut(&id) {
            o.refs.get_or_insert_default().contained_in += 1;
            true
        } else if let Some(t) = self.tasks.get_mut(&id) {
            t.extra.get_or_insert_default().refs.contained_in += 1;
            true
        } else {
            false
        }
    }

    /// One container of `id` is gone; whether `id` is an object that may
    /// now be free.
    fn drop_containment(&mut self, id: ObjectId) -> bool {
        if let Some(o) = self.objects.get_mut(&id) {
            if let Some(r) = o.refs.as_mut() {
                r.contained_in = r.contained_in.saturating_sub(1);
            }
            true
        } else {
            if let Some(e) = self.tasks.get_mut(&id).and_then(|t| t.extra.as_mut()) {
                e.refs.contained_in = e.refs.contained_in.saturating_sub(1);
            }
            false
        }
    }

    fn uncontain(&mut self, id: ObjectId, out: &mut impl Outbox) {
        if self.drop_containment(id) {
            self.maybe_free(id, out);
        }
    }

    /// The refs (to objects or future results) of `id`, an object or a task.
    fn refs_mut(&mut self, id: ObjectId) -> Option<&mut Refs> {
        if self.objects.contains_key(&id) {
            return self.objects.get_mut(&id).map(|o| &mut **o.refs.get_or_insert_default());
        }
        self.tasks.get_mut(&id).map(|t| &mut t.extra.get_or_insert_default().refs)
    }

    /// Refs that reached `job` inside values were taken (`true`) or their
    /// last copy there dropped (`false`), in order. A taken one is
    /// answered like a result: at once if its value is known, when it is
    /// otherwise; one that no longer exists is answered with `ObjectLost`.
    pub fn borrow(&mut self, job: JobId, ops: &[(ObjectId, bool)], out: &mut impl Outbox) {
        if !self.jobs.contains_key(&job) {
            return;
        }
        for &(id, hold) in ops {
            if hold {
                let Some(r) = self.refs_mut(id) else {
                    let f = Failure::new(
                        FailureKind::ObjectLost,
                        format!("object {id} no longer exists: every reference to it was dropped, or the job that made it ended"),
                    );
                    out.result(job, id, Err(f));
                    continue;
                };
                if !r.borrowers.contains(&job) {
                    r.borrowers.push(job);
                }
                if let Some(answer) = self.objects.get(&id).and_then(|o| self.answer(id, &o.state)) {
                    out.result(job, id, answer);
                }
            } else {
                // (Not `refs_mut`: dropping a borrow never makes a table.)
                let refs = match self.objects.get_mut(&id) {
                    Some(o) => o.refs.as_deref_mut(),
                    None => self.tasks.get_mut(&id).and_then(|t| t.extra.as_deref_mut()).map(|e| &mut e.refs),
                };
                if let Some(r) = refs {
                    r.borrowers.retain(|b| *b != job);
                }
                self.maybe_free(id, out);
            }
        }
    }

    /// The value of `container` holds refs to `ids`: they live while it
    /// does. `container` is a put of `job`, or a running task (told by the
    /// process running it, before its result). Told again, the new list
    /// replaces the old (a retried task).
    pub fn contain(&mut self, job: JobId, container: ObjectId, ids: &[ObjectId], out: &mut impl Outbox) {
        let known = self.objects.contains_key(&container) && container.job() == job
            || self.tasks.get(&container).is_some_and(|t| matches!(t.state, TaskState::Dispatched(_)));
        if !known {
            tracing::warn!(job, container = %container, "refs held by an unknown or finished container ignored");
            return;
        }
        let kept: Vec<ObjectId> = ids.iter().copied().filter(|id| *id != container && self.add_contained(*id)).collect();
        let old = match self.refs_mut(container) {
            Some(r) => std::mem::replace(&mut r.contains, kept),
            None => kept,
        };
        for id in old {
            self.uncontain(id, out);
        }
    }

    fn free_copies(id: ObjectId, state: &ObjectState, out: &mut impl Outbox) {
        if let ObjectState::Stored { holders, .. } = state {
            for h in holders {
                out.free_object(*h, id);
            }
        }
    }

    /// What a driver is told of a finished object: its value, the alive
    /// nodes it can be read from, or its failure. `None` for a stored
    /// object that no alive node holds.
    fn answer(&self, id: ObjectId, state: &ObjectState) -> Option<Result<Payload, Failure>> {
        match state {
            ObjectState::Ready(b) => Some(Ok(Payload::Inline(b.clone()))),
            ObjectState::Stored { size, holders } => {
                let r = self.stored_ref(id, *size, holders, 0);
                (!r.holders.is_empty()).then_some(Ok(Payload::Stored(r)))
            }
            ObjectState::Failed(f) => Some(Err((**f).clone())),
        }
    }

    /// Where object `id` can be read from, for `reader`: its alive
    /// holders, tried in the order given. A driver (`reader` 0) gets the
    /// first copy first; tasks get the list rotated by their id, so the
    /// readers of a popular object spread over every node that has a copy
    /// (a copy is listed once its node has it all) instead of all pulling
    /// from the one that made it.
    fn stored_ref(&self, id: ObjectId, size: u64, holders: &[NodeId], reader: u64) -> StoredRef {
        let mut holders: Vec<String> = holders.iter().filter_map(|h| self.nodes.get(h)).filter(|n| n.alive).map(|n| n.info.object_address.clone()).collect();
        if holders.len() > 1 && reader != 0 {
            let spread = (reader.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % holders.len();
            holders.rotate_left(spread);
        }
        StoredRef { id, size, holders }
    }

    /// Puts first in `r`'s holders the copy `reader` should pull from (a
    /// node still pulling it, when that copy should come sooner than the
    /// finished ones: see [`copies`]); the finished copies stay listed
    /// after it, for when it fails.
    fn route_pull(&mut self, task: TaskId, reader: NodeId, r: &mut StoredRef) {
        let Some(ObjectState::Stored { holders, .. }) = self.objects.get(&r.id).map(|o| &o.state) else { return };
        let alive: Vec<NodeId> = holders.iter().filter(|h| self.nodes.get(h).is_some_and(|n| n.alive)).copied().collect();
        let Some(from) = self.fetches.plan(r.id, reader, task, &alive) else { return };
        let Some(address) = self.nodes.get(&from).map(|n| n.info.object_address.clone()) else { return };
        r.holders.retain(|h| *h != address);
        r.holders.insert(0, address);
    }

    /// Fails a task and, transitively, everything waiting on its result.
    /// The original failure travels unchanged so the caller sees the cause.
    fn fail_task(&mut self, id: TaskId, failure: Failure, out: &mut impl Outbox) {
        let mut work = vec![(id, failure)];
        while let Some((tid, f)) = work.pop() {
            let Some(task) = self.tasks.remove(&tid) else { continue };
            self.task_gone(task.job);
            out.task_event(tid, task.func, TaskEvent::Failed { failure: &f, was_running: matches!(task.state, TaskState::Dispatched(_)) });
            match task.state {
                TaskState::Waiting | TaskState::Ready => self.left_queue(task.state == TaskState::Ready),
                TaskState::Dispatched(slot) => {
                    self.counts.running = self.counts.running.saturating_sub(1);
                    if let Some(node) = self.slots.get(slot as usize).and_then(|n| self.nodes.get_mut(n))
                        && node.assigned.remove(&tid)
                        && let Some(def) = self.jobs.get(&task.job).and_then(|j| j.functions.get(task.func as usize))
                    {
                        node.in_use.sub(needs(&task, def));
                    }
                }
            }
            self.counts.failed += 1;
            self.release_args(tid, &task, out);
            for dep in self.settle(tid, *task, ObjectState::Failed(Box::new(f.clone())), out) {
                work.push((dep, f.clone()));
            }
            // After its own object is settled: the calls failing with it
            // may take that object as an argument.
            if self.is_actor(tid) {
                self.actor_ended(tid, &f, out);
            }
        }
    }

    /// Records an object's final state, tells its driver, and wakes or
    /// dooms its dependents. Returns the dependents that must now fail.
    fn settle(&mut self, id: ObjectId, mut task: Task, state: ObjectState, out: &mut impl Outbox) -> Vec<TaskId> {
        let refs = task.extra.as_mut().map(|e| std::mem::take(&mut e.refs)).filter(|r| r.keeps() || !r.contains.is_empty());
        if let Some(outcome) = self.answer(id, &state) {
            if task.driver_ref {
                out.result(id.job(), id, outcome.clone());
            }
            for b in refs.iter().flat_map(|r| r.borrowers.iter()) {
                out.result(*b, id, outcome.clone());
            }
        }
        // Keep the object only while someone can still ask for it.
        if task.driver_ref || task.result_refs > 0 || refs.as_ref().is_some_and(|r| r.keeps()) {
            // An actor call's result is not rebuilt: the actor's state has
            // moved on since (as Ray's actor tasks are not reconstructed);
            // nor is an actor's creation (the actor itself).
            let rebuildable = matches!(state, ObjectState::Stored { .. }) && task.actor_of().is_none() && !self.actors.by_id.contains_key(&id);
            let lineage = rebuildable.then(|| {
                Box::new(Lineage {
                    func: task.func,
                    args: task.args.clone(),
                    max_retries: task.max_retries,
                    retry_exceptions: task.retry_exceptions,
                    resources: task.own_resources().cloned().map(Box::new),
                })
            });
            self.objects
                .insert(id, Object { state: state.clone(), driver_ref: task.driver_ref, task_refs: task.result_refs, lineage, refs: refs.map(Box::new) });
        } else {
            Self::free_copies(id, &state, out);
            for c in refs.map(|r| r.contains).unwrap_or_default() {
                self.uncontain(c, out);
            }
        }
        let mut doomed = Vec::new();
        for d in task.dependents.map(|b| *b).unwrap_or_default() {
            let Some(t) = self.tasks.get_mut(&d) else { continue };
            match &state {
                ObjectState::Ready(_) | ObjectState::Stored { .. } => {
                    t.missing = t.missing.saturating_sub(1);
                    if t.missing == 0 && t.state == TaskState::Waiting {
                        t.state = TaskState::Ready;
                        match t.actor_of() {
                            Some(actor) => self.call_ready(actor),
                            None => self.ready.push_back(d),
                        }
                    }
                }
                _ => doomed.push(d),
            }
        }
        doomed
    }

    // ------------------------------------------------------------ placement

    /// Places ready tasks, in FIFO order, on nodes that asked for work and
    /// whose resources fit. Among fitting nodes: the one holding the most
    /// bytes of the task's inputs, then one with the resources free now,
    /// then round-robin.
    pub fn schedule(&mut self, out: &mut impl Outbox) {
        for job in std::mem::take(&mut self.actors.jobs_to_end) {
            self.job_disconnected(job, out);
        }
        // Actors' calls first (they need no credits), then ready tasks;
        // actors placed by this pass get their queued calls right behind
        // their creation.
        if !self.actors.to_pump.is_empty() {
            self.pump_actors(out);
        }
        self.schedule_ready(out);
        if !self.actors.to_pump.is_empty() {
            self.pump_actors(out);
        }
    }

    fn schedule_ready(&mut self, out: &mut impl Outbox) {
        if self.ready.is_empty() || self.total_credits == 0 {
            return;
        }
        if self.alive_dirty {
            self.alive = self.nodes.iter().filter(|(_, n)| n.alive && !n.draining).map(|(id, _)| *id).collect();
            self.alive_dirty = false;
        }
        let alive = std::mem::take(&mut self.alive);
        let n = alive.len();
        // Once no node has room for a default-shaped task, none will within
        // this pass (dispatching only takes room): stop looking for room and
        // fill credits node by node, so the cost per task does not grow
        // with the cluster and each node gets its tasks in one batch.
        let mut saturated = false;
        let mut deferred = Vec::new();
        let mut budget = self.ready.len();
        while budget > 0 && self.total_credits > 0 {
            budget -= 1;
            let Some(tid) = self.ready.pop_front() else { break };
            let Some(task) = self.tasks.get(&tid).filter(|t| t.state == TaskState::Ready) else {
                self.ready_stale = self.ready_stale.saturating_sub(1);
                continue;
            };
            if self.recovering_until.is_some() && self.inputs_on_absent_nodes(task) {
                deferred.push(tid);
                continue;
            }
            let Some(def) = self.jobs.get(&task.job).and_then(|j| j.functions.get(task.func as usize)) else {
                tracing::error!(task = %tid, job = task.job, func = task.func, "a ready task's job or function is unknown");
                self.fail_task(tid, Failure::new(FailureKind::Internal, "the head lost track of this task's job or function"), out);
                continue;
            };
            let req = needs(task, def);
            let placement = task.extra.as_ref().map_or(Placement::Any, |e| e.placement);
            if let Placement::Node { node, soft: false } = placement {
                // Pinned: there or nowhere.
                let why = match self.nodes.get(&node) {
                    Some(nd) if nd.alive && !req.fits_in(&nd.info.resources) => Some(format!("node {node} offers {}, not {req}", nd.info.resources)),
                    Some(nd) if nd.alive && nd.draining => None,
                    Some(nd) if nd.alive => {
                        let mut used = nd.in_use.clone();
                        used.add(req);
                        if nd.credits > 0 && used.fits_in(&nd.info.resources) {
                            self.dispatch(tid, node, out);
                        } else {
                            deferred.push(tid);
                        }
                        continue;
                    }
                    // It may still register again after a restart.
                    _ if self.recovering_until.is_some() => None,
                    Some(_) => Some(format!("the call is pinned to node {node}, which is dead")),
                    None => Some(format!("the call is pinned to node {node}, which is not part of the cluster")),
                };
                match why {
                    Some(why) => self.fail_task(tid, Failure::new(FailureKind::Unschedulable, format!("{why} (needed by {})", def.name)), out),
                    None => deferred.push(tid),
                }
                continue;
            }
            let default_shape = req.is_default_task();
            let look_for_room = !(default_shape && saturated);
            let mut feasible = false;
            let mut best: Option<(bool, usize)> = None;
            // Data locality first (the node holding most bytes of the
            // task's stored inputs), or the node a call prefers, if it fits
            // and has room now; never for a spread call.
            let preferred = match placement {
                Placement::Node { node, .. } => Some(node),
                Placement::Spread => None,
                Placement::Any => self.preferred_node(task),
            };
            if let Some(pref) = preferred
                && let Ok(idx) = alive.binary_search(&pref)
                && let Some(node) = self.nodes.get(&pref)
            {
                let mut used = node.in_use.clone();
                used.add(req);
                if node.credits > 0 && req.fits_in(&node.info.resources) && used.fits_in(&node.info.resources) {
                    feasible = true;
                    best = Some((true, idx));
                }
            }
            for k in 0..if best.is_some() { 0 } else { n } {
                let idx = (self.rr + k) % n;
                let Some(node) = alive.get(idx).and_then(|id| self.nodes.get(id)) else { continue };
                if !req.fits_in(&node.info.resources) {
                    continue;
                }
                feasible = true;
                if node.credits == 0 {
                    continue;
                }
                if !look_for_room {
                    best = Some((false, idx));
                    break;
                }
                let mut used = node.in_use.clone();
                used.add(req);
                if used.fits_in(&node.info.resources) {
                    best = Some((true, idx));
                    break;
                }
                if best.is_none() {
                    best = Some((false, idx));
                }
            }
            match best.and_then(|(room, idx)| Some((room, idx, *alive.get(idx)?))) {
                Some((room, idx, node)) => {
                    if !room && default_shape {
                        saturated = true;
                    }
                    // Spread over nodes with room; otherwise stay on this
                    // node until its credits run out.
                    self.rr = if room { idx + 1 } else { idx };
                    self.dispatch(tid, node, out);
                }
                None if !feasible && n > 0 && !self.config.wait_for_feasible_nodes => {
                    let f = Failure::new(FailureKind::Unschedulable, format!("no node of the cluster offers {req} (needed by {})", def.name));
                    self.fail_task(tid, f, out);
                }
                None => deferred.push(tid),
            }
        }
        for t in deferred.into_iter().rev() {
            self.ready.push_front(t);
        }
        self.alive = alive;
    }

    /// Re-runs the tasks that made `lost` objects (every copy gone), so the
    /// tasks and drivers that still need them get them: the object becomes
    /// a task again, with the same id, and what waits on it waits again.
    /// Inputs that were lost too are rebuilt first (recursively). An
    /// object that cannot be rebuilt (a `put`, or its inputs were already
    /// released) stays lost: its consumers fail with `ObjectLost`.
    fn reconstruct(&mut self, lost: &[ObjectId], why: &str, out: &mut impl Outbox) {
        let mut rebuilt: Vec<ObjectId> = Vec::new();
        // Failed only once everything rebuilt is wired, so the failure
        // reaches every consumer through the usual path.
        let mut unrebuildable: Vec<(ObjectId, Failure)> = Vec::new();
        let mut work: Vec<ObjectId> = lost.to_vec();
        while let Some(oid) = work.pop() {
            let Some(o) = self.objects.get(&oid) else { continue };
            if !matches!(&o.state, ObjectState::Stored { holders, .. } if holders.is_empty()) {
                continue;
            }
            if !o.referenced() {
                if let Some(o) = self.objects.remove(&oid) {
                    Self::free_copies(oid, &o.state, out);
                    for c in o.refs.map(|r| r.contains).unwrap_or_default() {
                        self.uncontain(c, out);
                    }
                }
                continue;
            }
            let cannot = match &o.lineage {
                None if !self.jobs.contains_key(&oid.job()) => Some("the job that made it ended"),
                None => Some("it was put by the driver, so there is no task to run again"),
                Some(lin) => {
                    let inputs_known = lin.args.iter().all(|a| match a {
                        ArgSlot::Value(_) => true,
                        ArgSlot::Object(a) => self.tasks.contains_key(a) || self.objects.contains_key(a),
                    });
                    (!inputs_known).then_some("the inputs of the task that made it were already released")
                }
            };
            if let Some(cannot) = cannot {
                tracing::warn!(object = %oid, why, "a lost object cannot be rebuilt: {cannot}");
                let f = Failure::new(FailureKind::ObjectLost, format!("object {} is lost ({why}) and cannot be rebuilt: {cannot}", oid));
                unrebuildable.push((oid, f));
                continue;
            }
            let Some(o) = self.objects.remove(&oid) else { continue };
            let Some(lin) = o.lineage else { continue };
            // Unfinished again: it holds references to its inputs again.
            for a in lin.args.iter() {
                let ArgSlot::Object(a) = a else { continue };
                if let Some(input) = self.objects.get_mut(a) {
                    input.task_refs += 1;
                    if matches!(&input.state, ObjectState::Stored { holders, .. } if holders.is_empty()) {
                        work.push(*a);
                    }
                } else if let Some(producer) = self.tasks.get_mut(a) {
                    producer.result_refs += 1;
                }
            }
            self.tasks.insert(
                oid,
                Box::new(Task {
                    job: oid.job(),
                    func: lin.func,
                    args: lin.args,
                    missing: 0,
                    state: TaskState::Waiting,
                    attempts: 0,
                    extra: Some(Box::new(Extra {
                        history: vec![format!("rebuilt: {why}")],
                        resources: lin.resources.map(|r| *r),
                        // Who holds it, and what its value holds, stay.
                        refs: o.refs.map(|r| *r).unwrap_or_default(),
                        arg_refs: Vec::new(),
                        generator: None,
                        placement: Placement::Any,
                        dedicated: false,
                        actor_of: None,
                    })),
                    max_retries: lin.max_retries,
                    retry_exceptions: lin.retry_exceptions,
                    unreadable: 0,
                    cancel_requested: false,
                    driver_ref: o.driver_ref,
                    result_refs: o.task_refs,
                    dependents: None,
                }),
            );
            self.task_added(oid.job());
            self.counts.queued += 1;
            let name = self.jobs.get(&oid.job()).and_then(|j| j.functions.get(lin.func as usize)).map_or("?", |d| d.name.as_str());
            out.task_event(oid, lin.func, TaskEvent::Submitted { function: name });
            rebuilt.push(oid);
            tracing::info!(object = %oid, "rebuilding a lost object by re-running the task that made it");
        }
        if !rebuilt.is_empty() {
            self.wire_rebuilt(&rebuilt, out);
        }
        // An object may have been reached from several rebuilt tasks.
        unrebuildable.sort_unstable_by_key(|(id, _)| *id);
        unrebuildable.dedup_by_key(|(id, _)| *id);
        for (oid, f) in unrebuildable {
            self.object_failed(oid, f, out);
        }
    }

    /// Wires the `rebuilt` tasks, and every queued task that needs them,
    /// to wait for their inputs (one pass over the tasks).
    fn wire_rebuilt(&mut self, rebuilt: &[ObjectId], out: &mut impl Outbox) {
        let rebuilding: IdSet<ObjectId> = rebuilt.iter().copied().collect();
        let mut affected: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(id, t)| !rebuilding.contains(id) && matches!(t.state, TaskState::Waiting | TaskState::Ready))
            .filter(|(_, t)| t.args.iter().any(|a| matches!(a, ArgSlot::Object(x) if rebuilding.contains(x))))
            .map(|(id, _)| *id)
            .collect();
        affected.extend(rebuilt.iter().copied());
        for tid in affected {
            let Some(t) = self.tasks.get(&tid) else { continue };
            // A rebuilt task, or a consumer that was ready, waits on
            // nothing yet: its inputs are checked from scratch.
            if rebuilding.contains(&tid) || t.state == TaskState::Ready {
                if self.wait_for_inputs(tid, out) {
                    self.ready.push_front(tid);
                }
                continue;
            }
            // A waiting consumer already waits on its other producers:
            // only its rebuilt inputs are new waits.
            let deps: Vec<ObjectId> = t
                .args
                .iter()
                .filter_map(|a| match a {
                    ArgSlot::Object(x) if rebuilding.contains(x) && self.tasks.contains_key(x) => Some(*x),
                    _ => None,
                })
                .collect();
            for d in &deps {
                if let Some(p) = self.tasks.get_mut(d) {
                    p.dependents.get_or_insert_default().push(tid);
                }
            }
            if let Some(t) = self.tasks.get_mut(&tid) {
                t.missing += deps.len() as u32;
            }
        }
    }

    /// Whether some input of task `tid` is being rebuilt (an unfinished
    /// task again).
    fn inputs_being_rebuilt(&self, tid: TaskId) -> bool {
        self.tasks.get(&tid).is_some_and(|task| task.args.iter().any(|a| matches!(a, ArgSlot::Object(x) if self.tasks.contains_key(x))))
    }

    /// Whether some stored input of `task` has holders, none of them alive
    /// (they may still re-register after a head restart).
    fn inputs_on_absent_nodes(&self, task: &Task) -> bool {
        task.args.iter().any(|a| match a {
            ArgSlot::Object(oid) => matches!(
                self.objects.get(oid).map(|o| &o.state),
                Some(ObjectState::Stored { holders, .. }) if !holders.is_empty() && !holders.iter().any(|h| self.nodes.get(h).is_some_and(|n| n.alive))
            ),
            ArgSlot::Value(_) => false,
        })
    }

    /// The alive node holding the most bytes of `task`'s stored inputs.
    fn preferred_node(&self, task: &Task) -> Option<NodeId> {
        let mut bytes: Vec<(NodeId, u64)> = Vec::new();
        for a in task.args.iter() {
            let ArgSlot::Object(oid) = a else { continue };
            let Some(ObjectState::Stored { size, holders }) = self.objects.get(oid).map(|o| &o.state) else { continue };
            for h in holders {
                match bytes.iter_mut().find(|(n, _)| n == h) {
                    Some((_, b)) => *b += size,
                    None => bytes.push((*h, *size)),
                }
            }
        }
        bytes.into_iter().max_by_key(|(_, b)| *b).map(|(n, _)| n)
    }

    /// The values of a ready task's arguments, or why it cannot run now.
    fn resolve_args(&self, tid: TaskId, task: &Task) -> Result<Vec<Payload>, Unready> {
        let mut args = Vec::with_capacity(task.args.len());
        for a in task.args.iter() {
            match a {
                ArgSlot::Value(b) => args.push(Payload::Inline(b.clone())),
                ArgSlot::Object(oid) => match self.objects.get(oid).map(|o| &o.state) {
                    Some(ObjectState::Ready(b)) => args.push(Payload::Inline(b.clone())),
                    Some(ObjectState::Stored { size, holders }) => {
                        let r = self.stored_ref(*oid, *size, holders, tid.0);
                        if r.holders.is_empty() {
                            return Err(Unready::Fail(Failure::new(
                                FailureKind::ObjectLost,
                                format!("argument object {} was lost: every node holding a copy died", *oid),
                            )));
                        }
                        args.push(Payload::Stored(r));
                    }
                    // Lost and being rebuilt, or failed for good:
                    // `wait_for_inputs` sorts it out.
                    Some(ObjectState::Failed(_)) | None => return Err(Unready::Recheck),
                },
            }
        }
        Ok(args)
    }

    /// The argument values of ready task `tid`, to send it; `None` when it
    /// failed (an input failed for good) or waits again (an input is being
    /// rebuilt).
    fn args_to_send(&mut self, tid: TaskId, out: &mut impl Outbox) -> Option<Vec<Payload>> {
        let task = self.tasks.get(&tid)?;
        match self.resolve_args(tid, task) {
            Ok(args) => Some(args),
            Err(Unready::Fail(f)) => {
                self.fail_task(tid, f, out);
                None
            }
            Err(Unready::Recheck) => {
                // Not ready after all: waits for what is being rebuilt (or
                // fails with its input's error).
                if self.wait_for_inputs(tid, out) {
                    tracing::error!(task = %tid, "a ready task's inputs could not be resolved");
                    self.fail_task(tid, Failure::new(FailureKind::Internal, "the head could not resolve this task's inputs"), out);
                }
                None
            }
        }
    }

    fn dispatch(&mut self, tid: TaskId, node_id: NodeId, out: &mut impl Outbox) {
        let Some(mut args) = self.args_to_send(tid, out) else { return };
        for a in args.iter_mut() {
            if let Payload::Stored(r) = a {
                self.route_pull(tid, node_id, r);
            }
        }
        let (Some(task), Some(node)) = (self.tasks.get_mut(&tid), self.nodes.get_mut(&node_id)) else { return };
        let Some(job) = self.jobs.get(&task.job) else { return };
        let Some(def) = job.functions.get(task.func as usize) else { return };
        send_job_info(node, node_id, task.job, task.func, job, out);
        node.credits = node.credits.saturating_sub(1);
        self.total_credits = self.total_credits.saturating_sub(1);
        node.assigned.insert(tid);
        node.in_use.add(needs(task, def));
        task.attempts = task.attempts.saturating_add(1);
        task.state = TaskState::Dispatched(node.slot);
        self.counts.queued = self.counts.queued.saturating_sub(1);
        self.counts.running += 1;
        let resources = task.own_resources().cloned();
        let dedicated = task.extra.as_ref().is_some_and(|e| e.dedicated);
        out.task_event(tid, task.func, TaskEvent::Dispatched { node: node_id });
        let mut d = Dispatch { task: tid, job: task.job, func: task.func, args, attempt: task.attempts as u32, resources, dedicated, actor: ActorPart::None };
        let slot = node.slot;
        if let Some(part) = self.actor_placed(tid, slot) {
            d.actor = part;
        }
        out.dispatch(node_id, d);
    }

    // ------------------------------------------------------------ queries

    /// Nodes, resources and task counts.
    pub fn snapshot(&self, now: Instant) -> ClusterStatus {
        let nodes = self
            .nodes
            .iter()
            .map(|(id, n)| NodeStatus {
                id: *id,
                address: n.info.address.clone(),
                alive: n.alive,
                resources: n.info.resources.clone(),
                available: n.info.resources.available_after(&n.in_use),
                last_heartbeat_age_s: now.saturating_duration_since(n.last_heartbeat).as_secs_f64(),
                hostname: n.info.hostname.clone(),
                pid: n.info.pid,
                tasks_running: n.assigned.len() as u64,
                memory_bytes: n.info.memory_bytes,
                object_store_bytes: n.info.object_store_bytes,
                draining: n.draining,
                object_address: n.info.object_address.clone(),
                store: n.store,
                store_fd: n.info.store_file.0,
                store_ino: n.info.store_file.1,
                metrics_address: n.info.metrics_address.clone(),
            })
            .collect();
        // Jobs with a driver (a lingering one has none).
        let jobs = self.jobs.values().filter(|j| !j.lingering).count() as u32;
        ClusterStatus { nodes, tasks: self.counts, jobs, version: env!("CARGO_PKG_VERSION").to_string(), actors: self.actor_statuses() }
    }

    /// Finished objects, stored ones first and largest first, at most
    /// `limit` (for the state API), and how many there are in all.
    pub fn objects(&self, job: Option<JobId>, limit: usize) -> (Vec<shoal_domain::state::ObjectRow>, u64) {
        // Rank by key first (no clones), then build rows for the top only:
        // a table of millions of objects costs one pass and a partial sort.
        let rank = |o: &Object| match &o.state {
            ObjectState::Stored { size, .. } => (true, *size),
            ObjectState::Ready(b) => (false, b.len() as u64),
            ObjectState::Failed(_) => (false, 0),
        };
        let mut keys: Vec<(bool, u64, ObjectId)> = self
            .objects
            .iter()
            .filter(|(id, _)| job.is_none_or(|j| id.job() == j))
            .map(|(id, o)| {
                let (stored, size) = rank(o);
                (stored, size, *id)
            })
            .collect();
        let total = keys.len() as u64;
        let order = |a: &(bool, u64, ObjectId), b: &(bool, u64, ObjectId)| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2));
        if limit < keys.len() {
            if limit > 0 {
                keys.select_nth_unstable_by(limit - 1, order);
            }
            keys.truncate(limit);
        }
        keys.sort_unstable_by(order);
        let rows = keys
            .into_iter()
            .filter_map(|(stored, size, id)| {
                let o = self.objects.get(&id)?;
                let holders = match &o.state {
                    ObjectState::Stored { holders, .. } => holders.clone(),
                    _ => Vec::new(),
                };
                let refs = o.task_refs as u64 + o.refs.as_ref().map_or(0, |r| r.borrowers.len() as u64 + r.contained_in as u64);
                Some(shoal_domain::state::ObjectRow { id, size, holders, stored, driver_ref: o.driver_ref, refs })
            })
            .collect();
        (rows, total)
    }

    /// Tasks in the ready queue (waiting for a node with room).
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Queued tasks that wait for a node, by the resources they need
    /// (why tasks wait: `shoal status`), most common first. One pass over
    /// the ready queue: callers that ask often cache it (the server keeps
    /// it for a second).
    pub fn pending_demand(&self) -> Vec<(ResourceSet, u64)> {
        let mut by_shape: Vec<(&ResourceSet, u64)> = Vec::new();
        // Neighbours in the queue mostly share a shape: try the last one first.
        let mut last = 0usize;
        for tid in self.ready.iter() {
            let Some(t) = self.tasks.get(tid) else { continue };
            let Some(def) = self.jobs.get(&t.job).and_then(|j| j.functions.get(t.func as usize)) else { continue };
            let need = needs(t, def);
            if let Some((r, n)) = by_shape.get_mut(last)
                && (std::ptr::eq(*r, need) || **r == *need)
            {
                *n += 1;
                continue;
            }
            if let Some(i) = by_shape.iter().position(|(r, _)| std::ptr::eq(*r, need) || **r == *need) {
                if let Some((_, n)) = by_shape.get_mut(i) {
                    *n += 1;
                }
                last = i;
            } else if by_shape.len() < 64 {
                last = by_shape.len();
                by_shape.push((need, 1));
            }
        }
        by_shape.sort_by_key(|s| std::cmp::Reverse(s.1));
        by_shape.into_iter().map(|(r, n)| (r.clone(), n)).collect()
    }

    /// Who printed a line tagged with `task`, as a user reads it: a
    /// task's function (`square`), an actor method call's type and method
    /// (`Counter.incr`), or an actor itself (`Counter`, for what it prints
    /// outside a call: its constructor after the fact, async methods,
    /// its threads). `None` for a task the head no longer knows.
    pub fn output_source(&self, task: TaskId) -> Option<String> {
        let last = |name: &str, n: usize| name.rsplit("::").take(n).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(".");
        if let Some(a) = self.actors.by_id.get(&task) {
            return Some(last(&a.spec.class, 1));
        }
        if let Some(t) = self.tasks.get(&task) {
            let name = self.jobs.get(&t.job)?.functions.get(t.func as usize)?.name.as_str();
            let call = t.extra.as_ref().is_some_and(|e| e.actor_of.is_some());
            return Some(last(name, if call { 2 } else { 1 }));
        }
        None
    }

    /// Number of entries in the object table (for tests and metrics).
    pub fn object_count(&self) -> usize {
        self.objects.len()
    }

    /// Number of unfinished tasks (for tests and metrics).
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }
}
