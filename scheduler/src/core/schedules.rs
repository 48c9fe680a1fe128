//! Seeded random fault schedules over the core.
//!
//! A small model of the world around the head (worker nodes with stores
//! and running tasks, drivers holding references) drives [`Core`] through
//! random interleavings of submits, puts, completions, failures, node
//! crashes, partitions and returns, driver disconnects and returns,
//! cancels, releases, locates and head restarts (snapshot and restore into
//! a fresh core). After every step the core's invariants are checked, and
//! so is what each driver saw: a result for something it made, never a
//! final answer changed. Each schedule then heals the world, runs what is
//! left to the end and checks that every task the driver holds ended with
//! a result whose stored copy really exists, and that releasing every
//! reference frees every copy on every node.
//!
//! `SHOAL_SCHEDULES` sets how many schedules run (default 2000),
//! `SHOAL_SCHEDULE_SEED` runs one seed (a failure prints its seed).

use super::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;

/// What the head sent, before the model delivers it.
#[derive(Default)]
struct Sent {
    dispatched: Vec<(NodeId, Dispatch)>,
    cancels: Vec<(NodeId, TaskId)>,
    results: Vec<(JobId, TaskId, Result<Payload, Failure>)>,
    freed: Vec<(NodeId, ObjectId)>,
    disconnected: Vec<(NodeId, u64)>,
    ended: Vec<JobId>,
    /// Task transitions, as the task-event store would get them.
    events: Vec<(TaskId, Transition)>,
}

/// A [`TaskEvent`] without its borrowed parts.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Transition {
    Submitted,
    Dispatched,
    Requeued,
    Finished,
    Failed { was_running: bool },
}

/// Where the events put a task (the task-event store's view).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Seen {
    Pending,
    Running,
    Done,
}

impl Outbox for Sent {
    fn job_info(&mut self, _: NodeId, _: JobId, _: &str, _: u32, _: &[FunctionDef]) {}
    fn dispatch(&mut self, node: NodeId, task: Dispatch) {
        self.dispatched.push((node, task));
    }
    fn cancel(&mut self, node: NodeId, task: TaskId) {
        self.cancels.push((node, task));
    }
    fn job_finished(&mut self, _: NodeId, _: JobId) {}
    fn result(&mut self, job: JobId, task: TaskId, outcome: Result<Payload, Failure>) {
        self.results.push((job, task, outcome));
    }
    fn free_object(&mut self, node: NodeId, id: ObjectId) {
        self.freed.push((node, id));
    }
    fn disconnect(&mut self, node: NodeId, epoch: u64) {
        self.disconnected.push((node, epoch));
    }
    fn drain(&mut self, _: NodeId) {}
    fn generator_item(&mut self, _: JobId, _: TaskId, _: u64, _: ObjectId, _: Result<Payload, Failure>, _: bool) {}
    fn generator_ack(&mut self, _: JobId, _: TaskId, _: u64) {}
    fn keep_object(&mut self, _: NodeId, _: ObjectId) {}
    fn job_ended(&mut self, job: JobId) {
        self.ended.push(job);
    }
    fn task_event(&mut self, task: TaskId, _: u32, event: TaskEvent<'_>) {
        let t = match event {
            TaskEvent::Submitted { .. } => Transition::Submitted,
            TaskEvent::Dispatched { .. } => Transition::Dispatched,
            TaskEvent::Requeued => Transition::Requeued,
            TaskEvent::Finished => Transition::Finished,
            TaskEvent::Failed { was_running, .. } => Transition::Failed { was_running },
        };
        self.events.push((task, t));
    }
}

struct SimNode {
    id: NodeId,
    address: String,
    epoch: u64,
    /// The worker process runs (a crash stops it and empties its store).
    up: bool,
    /// Its session with the head is open.
    connected: bool,
    /// Cut off: nothing it sends arrives, nothing sent to it arrives.
    partitioned: bool,
    store: HashSet<ObjectId>,
    /// Tasks handed to it in its current session, and whether cancelled.
    running: Vec<(Dispatch, bool)>,
}

impl SimNode {
    fn reachable(&self) -> bool {
        self.up && self.connected && !self.partitioned
    }
}

struct SimJob {
    id: JobId,
    attached: bool,
    ended: bool,
    next_seq: u64,
    /// References the driver holds.
    held: Vec<ObjectId>,
    /// Refs to other jobs' objects that reached it inside values.
    borrowed: Vec<ObjectId>,
    /// Every id it ever borrowed (answers for them are expected).
    ever_borrowed: HashSet<ObjectId>,
    /// Tasks it submitted (puts are not here).
    tasks: HashSet<ObjectId>,
    made: HashSet<ObjectId>,
    /// The latest answer it got per object.
    answers: HashMap<ObjectId, Result<Payload, Failure>>,
    /// Actors it created (their creation tasks' ids).
    actors: Vec<TaskId>,
}

struct World {
    rng: SmallRng,
    core: Core,
    config: CoreConfig,
    now: Instant,
    nodes: Vec<SimNode>,
    jobs: Vec<SimJob>,
    trace: Vec<String>,
    /// Per task submitted since the last head restart: where its events
    /// put it. Checked against the core after every step.
    seen: HashMap<TaskId, Seen>,
}

const FUNCS: usize = 3;

/// The value task `id` returns (inline): deterministic, so a re-run
/// after a restart gives the same answer.
fn value_of(id: TaskId) -> Bytes {
    Bytes::copy_from_slice(&id.0.to_le_bytes())
}

impl World {
    fn new(seed: u64) -> World {
        let config = CoreConfig { heartbeat_timeout: Duration::from_secs(2), wait_for_feasible_nodes: true, driver_grace: Duration::from_secs(1000) };
        let mut w = World {
            rng: SmallRng::seed_from_u64(seed),
            core: Core::new(config.clone()),
            config,
            now: Instant::now(),
            nodes: Vec::new(),
            jobs: Vec::new(),
            trace: Vec::new(),
            seen: HashMap::new(),
        };
        let n = w.rng.random_range(1..=4);
        for i in 0..n {
            let id = NodeId(uuid::Uuid::from_u128(i as u128 + 1));
            w.nodes.push(SimNode {
                id,
                address: format!("10.0.0.{}", i + 1),
                epoch: 0,
                up: true,
                connected: false,
                partitioned: false,
                store: HashSet::new(),
                running: Vec::new(),
            });
            w.register(i);
        }
        for _ in 0..w.rng.random_range(1..=2) {
            w.new_job();
        }
        w
    }

    fn new_job(&mut self) {
        // Some jobs are task sessions (a task submitting tasks) of another.
        let parent = self.pick_job().filter(|_| self.rng.random_bool(0.3)).map(|j| self.jobs[j].id);
        let Ok(job) = self.core.job_connected_under("ab".repeat(32), "schedule".into(), parent) else { return };
        let defs = (0..FUNCS)
            .map(|i| FunctionDef { name: format!("f{i}"), resources: ResourceSet::cpus([1.0, 0.5, 2.0][i]), max_retries: i as u32, retry_exceptions: i == 1 })
            .collect();
        self.core.define_functions(job, 0, defs);
        self.jobs.push(SimJob {
            id: job,
            attached: true,
            ended: false,
            next_seq: 1,
            held: Vec::new(),
            borrowed: Vec::new(),
            ever_borrowed: HashSet::new(),
            tasks: HashSet::new(),
            made: HashSet::new(),
            answers: HashMap::new(),
            actors: Vec::new(),
        });
    }

    fn register(&mut self, i: usize) {
        let mut out = Sent::default();
        let n = &self.nodes[i];
        let mut objects: Vec<ObjectId> = n.store.iter().copied().collect();
        objects.sort_unstable();
        let reg = NodeRegistration {
            node_id: Some(n.id),
            resources: ResourceSet::cpus(2.0),
            address: n.address.clone(),
            object_address: n.address.clone(),
            objects,
            ..Default::default()
        };
        let (_, epoch) = self.core.node_registered(reg, self.now, &mut out);
        let n = &mut self.nodes[i];
        n.epoch = epoch;
        n.connected = true;
        n.partitioned = false;
        // Tasks of the old session are the old session's: their results
        // would carry the old epoch.
        n.running.clear();
        self.deliver(out);
    }

    /// Applies task transitions; an impossible one (finished without
    /// running, sent twice) fails the schedule.
    fn follow(&mut self, events: &[(TaskId, Transition)]) {
        for &(task, t) in events {
            let now = self.seen.get(&task).copied();
            let next = match (t, now) {
                (Transition::Submitted, None | Some(Seen::Done)) => Seen::Pending,
                // Restored after a head restart: not followed.
                (_, None) => continue,
                (Transition::Dispatched, Some(Seen::Pending)) => Seen::Running,
                (Transition::Requeued, Some(Seen::Running)) => Seen::Pending,
                (Transition::Finished, Some(Seen::Running)) => Seen::Done,
                (Transition::Failed { was_running: true }, Some(Seen::Running)) => Seen::Done,
                (Transition::Failed { was_running: false }, Some(Seen::Pending)) => Seen::Done,
                (t, Some(s)) => self.fail(format!("task {task}: event {t:?} while the events had it {s:?}")),
            };
            self.seen.insert(task, next);
        }
    }

    /// The events' view of each followed task matches the core's state.
    fn check_events(&self) -> Result<(), String> {
        for (id, s) in &self.seen {
            let core = self.core.tasks.get(id).map(|t| matches!(t.state, TaskState::Dispatched(_)));
            let ok = match (s, core) {
                (Seen::Done, None) | (Seen::Pending, Some(false)) | (Seen::Running, Some(true)) => true,
                // A task of an ended job leaves without an event (the
                // store ends it with its job).
                (Seen::Pending | Seen::Running, None) => self.jobs.iter().any(|j| j.id == id.job() && j.ended),
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "task {id}: the events say {s:?}, the core {}",
                    match core {
                        None => "has no such task",
                        Some(true) => "has it on a node",
                        Some(false) => "has it waiting",
                    }
                ));
            }
        }
        Ok(())
    }

    /// Hands what the head sent to the nodes and drivers it reaches.
    fn deliver(&mut self, out: Sent) {
        self.follow(&out.events);
        for (node, d) in out.dispatched {
            if let Some(n) = self.nodes.iter_mut().find(|n| n.id == node && n.reachable()) {
                n.running.push((d, false));
            }
        }
        for (node, t) in out.cancels {
            if let Some(n) = self.nodes.iter_mut().find(|n| n.id == node && n.reachable()) {
                for (d, c) in n.running.iter_mut() {
                    if d.task == t {
                        *c = true;
                    }
                }
            }
        }
        for (node, id) in out.freed {
            if let Some(n) = self.nodes.iter_mut().find(|n| n.id == node && n.reachable()) {
                n.store.remove(&id);
            }
        }
        for (node, epoch) in out.disconnected {
            if let Some(n) = self.nodes.iter_mut().find(|n| n.id == node && n.epoch == epoch) {
                n.connected = false;
                n.running.clear();
            }
        }
        for job in out.ended {
            if let Some(j) = self.jobs.iter_mut().find(|j| j.id == job) {
                j.ended = true;
                j.attached = false;
                j.held.clear();
                j.borrowed.clear();
            }
        }
        for (job, id, r) in out.results {
            if let Some(problem) = self.hear(job, id, r) {
                self.fail(problem);
            }
        }
    }

    /// Driver `job` hears a result. Returns what is wrong with it, if
    /// anything.
    fn hear(&mut self, job: JobId, id: ObjectId, r: Result<Payload, Failure>) -> Option<String> {
        let Some(j) = self.jobs.iter_mut().find(|j| j.id == job) else {
            return Some(format!("a result for {} went to unknown job {job}", id));
        };
        if !j.attached {
            return None;
        }
        if !j.made.contains(&id) {
            if j.ever_borrowed.contains(&id) {
                // Its owner may end: then it is gone, whatever it was.
                return None;
            }
            return Some(format!("job {job} got a result for {}, which it never made", id));
        }
        if let Some(prev) = j.answers.get(&id) {
            let changed = match (prev, &r) {
                // A stored value may move (rebuilt, relocated) or be lost
                // for good.
                (Ok(Payload::Stored(_)), _) => false,
                (Ok(Payload::Inline(a)), Ok(Payload::Inline(b))) => a != b,
                (Err(a), Err(b)) => a.kind != b.kind,
                _ => true,
            };
            if changed {
                return Some(format!("job {job}: the answer for {} changed from {prev:?} to {r:?}", id));
            }
        }
        if let Ok(Payload::Inline(b)) = &r
            && j.tasks.contains(&id)
            && *b != value_of(id)
        {
            return Some(format!("job {job}: task {} returned {b:?}, not its value", id));
        }
        j.answers.insert(id, r);
        None
    }

    fn fail(&self, what: String) -> ! {
        // SHOAL_SCHEDULE_TRACE=all prints every step, not only the last 40.
        let keep = if std::env::var("SHOAL_SCHEDULE_TRACE").is_ok_and(|v| v == "all") { usize::MAX } else { 40 };
        let tail: Vec<&String> = self.trace.iter().rev().take(keep).collect::<Vec<_>>().into_iter().rev().collect();
        panic!("{what}\nlast steps:\n  {}", tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "));
    }

    fn pick_job(&mut self) -> Option<usize> {
        let live: Vec<usize> = (0..self.jobs.len()).filter(|&i| self.jobs[i].attached && !self.jobs[i].ended).collect();
        (!live.is_empty()).then(|| live[self.rng.random_range(0..live.len())])
    }

    fn pick_held(&mut self, j: usize) -> Option<ObjectId> {
        let held = &self.jobs[j].held;
        (!held.is_empty()).then(|| held[self.rng.random_range(0..held.len())])
    }

    fn pick_node(&mut self, f: impl Fn(&SimNode) -> bool) -> Option<usize> {
        let ok: Vec<usize> = (0..self.nodes.len()).filter(|&i| f(&self.nodes[i])).collect();
        (!ok.is_empty()).then(|| ok[self.rng.random_range(0..ok.len())])
    }

    /// One random event. Returns what it was, for the trace.
    fn step(&mut self) -> String {
        let mut out = Sent::default();
        let what = match self.rng.random_range(0..108) {
            0..=17 => self.submit(&mut out),
            18..=23 => self.put(&mut out),
            24..=29 => {
                let Some(j) = self.pick_job() else { return "no job".into() };
                let Some(id) = self.pick_held(j) else { return "nothing held".into() };
                self.jobs[j].held.retain(|h| *h != id);
                let job = self.jobs[j].id;
                self.core.release(job, &[id], &mut out);
                format!("job {job} releases {}", id)
            }
            // A ref reaches a job inside a value (another job's, or its
            // own after it let go), or its last copy there drops.
            100..=101 => {
                let Some(j) = self.pick_job() else { return "no job".into() };
                let Some(k) = self.pick_job() else { return "no job".into() };
                let Some(id) = self.pick_held(k) else { return "nothing held".into() };
                let job = self.jobs[j].id;
                self.jobs[j].borrowed.push(id);
                self.jobs[j].ever_borrowed.insert(id);
                self.core.borrow(job, &[(id, true)], &mut out);
                format!("job {job} borrows {id}")
            }
            102..=103 => {
                let Some(j) = self.pick_job() else { return "no job".into() };
                let n = self.jobs[j].borrowed.len();
                if n == 0 {
                    return "nothing borrowed".into();
                }
                let id = self.jobs[j].borrowed.swap_remove(self.rng.random_range(0..n));
                let job = self.jobs[j].id;
                self.core.borrow(job, &[(id, false)], &mut out);
                format!("job {job} drops its borrowed {id}")
            }
            30..=32 => {
                let Some(j) = self.pick_job() else { return "no job".into() };
                let Some(id) = self.pick_held(j) else { return "nothing held".into() };
                let job = self.jobs[j].id;
                self.core.cancel(job, &[id], &mut out);
                format!("job {job} cancels {}", id)
            }
            33..=35 => {
                let Some(j) = self.pick_job() else { return "no job".into() };
                let Some(id) = self.pick_held(j) else { return "nothing held".into() };
                let job = self.jobs[j].id;
                self.core.locate(job, &[id], &mut out);
                format!("job {job} locates {}", id)
            }
            36..=47 => {
                let Some(i) = self.pick_node(|n| n.reachable()) else { return "no reachable node".into() };
                let k = self.rng.random_range(1..=4);
                let n = &self.nodes[i];
                self.core.node_credits(n.id, n.epoch, k, self.now);
                format!("node {i} asks for {k} tasks")
            }
            48..=71 => self.complete(&mut out),
            72..=74 => {
                let Some(i) = self.pick_node(|n| n.up) else { return "no node up".into() };
                let n = &mut self.nodes[i];
                n.up = false;
                n.connected = false;
                n.store.clear();
                n.running.clear();
                let (id, epoch) = (n.id, n.epoch);
                self.core.node_disconnected(id, epoch, &mut out);
                format!("node {i} crashes")
            }
            75..=76 => {
                let Some(i) = self.pick_node(|n| n.reachable()) else { return "no reachable node".into() };
                self.nodes[i].partitioned = true;
                format!("node {i} is cut off")
            }
            77..=80 => {
                // A node comes back: restarted after a crash, healed after a
                // partition, or reconnecting after its session was ended.
                let Some(i) = self.pick_node(|n| !n.up || n.partitioned || !n.connected) else { return "every node is fine".into() };
                let n = &mut self.nodes[i];
                if !n.up {
                    n.up = true;
                    n.store.clear();
                }
                n.partitioned = false;
                self.register(i);
                format!("node {i} (re-)registers")
            }
            81..=82 => {
                let Some(i) = self.pick_node(|n| n.reachable()) else { return "no reachable node".into() };
                self.register(i);
                format!("node {i} re-registers on a new connection while alive")
            }
            83..=88 => {
                let dt = Duration::from_millis(self.rng.random_range(100..1500));
                self.now += dt;
                for n in self.nodes.iter().filter(|n| n.reachable()) {
                    self.core.node_heartbeat(n.id, n.epoch, self.now);
                }
                self.core.tick(self.now, &mut out);
                format!("{dt:?} pass; reachable nodes heartbeat")
            }
            89..=91 => {
                let Some(j) = self.pick_job() else { return "no job".into() };
                let job = self.jobs[j].id;
                self.jobs[j].attached = false;
                self.core.job_detached(job, self.now);
                format!("job {job}'s driver loses its connection")
            }
            92..=94 => {
                let detached: Vec<usize> = (0..self.jobs.len()).filter(|&i| !self.jobs[i].attached && !self.jobs[i].ended).collect();
                let Some(&j) = detached.get(self.rng.random_range(0..detached.len().max(1))) else { return "no detached job".into() };
                self.reattach(j, &mut out)
            }
            95 => {
                let Some(j) = self.pick_job() else { return "no job".into() };
                let job = self.jobs[j].id;
                self.core.job_disconnected(job, &mut out);
                // Its driver is gone (the job may linger for detached
                // actors; nobody resumes it).
                self.jobs[j].attached = false;
                format!("job {job}'s driver exits")
            }
            96 => {
                self.new_job();
                "a new driver connects".into()
            }
            104..=105 => {
                // Any job may kill any actor it has a handle to.
                let Some(j) = self.pick_job() else { return "no job".into() };
                let all: Vec<TaskId> = self.jobs.iter().filter(|j| !j.ended).flat_map(|j| j.actors.iter().copied()).collect();
                let Some(&a) = all.get(self.rng.random_range(0..all.len().max(1))) else { return "no actor".into() };
                self.core.kill_actors(&[a], &mut out);
                format!("job {} kills actor {a}", self.jobs[j].id)
            }
            106..=107 => {
                // A job adopts an item of another job's session (allowed
                // only if that job is gone, or is its child).
                let Some(j) = self.pick_job() else { return "no job".into() };
                let k = self.rng.random_range(0..self.jobs.len());
                let (job, producer) = (self.jobs[j].id, self.jobs[k].id);
                let id = ObjectId::new(producer, self.jobs[k].next_seq);
                self.jobs[k].next_seq += 1;
                let before = self.core.object_count();
                self.core.adopt(job, id, Bytes::from_static(b"item"));
                if self.core.object_count() > before {
                    self.jobs[j].borrowed.push(id);
                    self.jobs[j].ever_borrowed.insert(id);
                    return format!("job {job} adopts item {id}");
                }
                format!("job {job} may not adopt item {id}")
            }
            _ => self.restart_head(&mut out),
        };
        self.core.schedule(&mut out);
        self.deliver(out);
        what
    }

    fn reattach(&mut self, j: usize, out: &mut Sent) -> String {
        let job = self.jobs[j].id;
        match self.core.job_reattached(job) {
            Some(results) => {
                self.jobs[j].attached = true;
                for (t, r) in results {
                    out.result(job, t, r);
                }
                format!("job {job}'s driver reconnects")
            }
            None => {
                self.jobs[j].ended = true;
                self.jobs[j].held.clear();
                self.jobs[j].borrowed.clear();
                format!("job {job}'s driver finds its job gone")
            }
        }
    }

    fn submit(&mut self, out: &mut Sent) -> String {
        let Some(j) = self.pick_job() else { return "no job".into() };
        let job = self.jobs[j].id;
        let mut tasks = Vec::new();
        for _ in 0..self.rng.random_range(1..=4) {
            let id = ObjectId::new(job, self.jobs[j].next_seq);
            self.jobs[j].next_seq += 1;
            let mut args = Vec::new();
            for _ in 0..self.rng.random_range(0..=3) {
                let r = self.rng.random_range(0..20);
                if r < 12
                    && let Some(x) = self.pick_held(j)
                {
                    args.push(NewArg::Object(x));
                } else if r == 19 {
                    // A reference the driver never had.
                    args.push(NewArg::Object(ObjectId::new(job, 1 << 30)));
                } else {
                    args.push(NewArg::Value(Bytes::from_static(b"v")));
                }
            }
            let func = self.rng.random_range(0..FUNCS as u32);
            let max_retries = self.rng.random_bool(0.3).then(|| self.rng.random_range(0..3));
            self.jobs[j].held.push(id);
            self.jobs[j].tasks.insert(id);
            self.jobs[j].made.insert(id);
            // Some calls bring their own resources or retry policy.
            let resources = self.rng.random_bool(0.15).then(|| ResourceSet::cpus([0.0, 1.0, 1.5][self.rng.random_range(0..3)]));
            let retry_exceptions = self.rng.random_bool(0.15).then(|| self.rng.random_bool(0.5));
            // Some calls are pinned to a node (hard or soft) or spread.
            let placement = match self.rng.random_range(0..20) {
                0 | 1 if !self.nodes.is_empty() => {
                    let node = self.nodes[self.rng.random_range(0..self.nodes.len())].id;
                    Placement::Node { node, soft: self.rng.random_bool(0.5) }
                }
                2 => Placement::Spread,
                _ => Placement::Any,
            };
            // Some tasks create actors (some named, so names clash); some
            // call an actor of this job or another.
            let all_actors: Vec<TaskId> = self.jobs.iter().filter(|j| !j.ended).flat_map(|j| j.actors.iter().copied()).collect();
            let actor = match self.rng.random_range(0..10) {
                0 => {
                    self.jobs[j].actors.push(id);
                    let name = ["", "", "a", "b"][self.rng.random_range(0..4)].to_string();
                    ActorRole::Create(Box::new(shoal_domain::actor::ActorSpec {
                        class: "C".into(),
                        name,
                        max_task_retries: self.rng.random_range(0..2),
                        max_concurrency: 1,
                        detached: self.rng.random_bool(0.3),
                        ..Default::default()
                    }))
                }
                1..=3 if !all_actors.is_empty() => ActorRole::Call(all_actors[self.rng.random_range(0..all_actors.len())]),
                _ => ActorRole::None,
            };
            let dedicated = matches!(actor, ActorRole::Create(_));
            tasks.push(NewTask { id, func, args, max_retries, resources, retry_exceptions, contains: Vec::new(), placement, dedicated, actor });
        }
        let n = tasks.len();
        let role = |t: &NewTask| match &t.actor {
            ActorRole::None => String::new(),
            ActorRole::Create(spec) => format!(" creates actor {:?}", spec.name),
            ActorRole::Call(a) => format!(" calls actor {a}"),
        };
        let desc = format!(
            "job {job} submits {n} tasks: {:?}",
            tasks.iter().map(|t| format!("{} f{} {} args{}", t.id, t.func, t.args.len(), role(t))).collect::<Vec<_>>()
        );
        self.core.submit(job, tasks, out);
        desc
    }

    fn put(&mut self, out: &mut Sent) -> String {
        let Some(j) = self.pick_job() else { return "no job".into() };
        let job = self.jobs[j].id;
        let id = ObjectId::new(job, self.jobs[j].next_seq);
        self.jobs[j].next_seq += 1;
        let value = match self.pick_node(|n| n.up && !n.partitioned).filter(|_| self.rng.random_bool(0.6)) {
            Some(i) => {
                self.nodes[i].store.insert(id);
                PutValue::Stored { size: 1000, node: self.nodes[i].id }
            }
            None => PutValue::Inline(Bytes::from_static(b"put")),
        };
        // Some values hold refs to what the job (or another) holds.
        let mut contains = Vec::new();
        if self.rng.random_bool(0.3) {
            for _ in 0..self.rng.random_range(1..=2) {
                let k = self.pick_job().unwrap_or(j);
                if let Some(x) = self.pick_held(k) {
                    contains.push(x);
                }
            }
        }
        self.jobs[j].held.push(id);
        self.jobs[j].made.insert(id);
        let desc = format!("job {job} puts {} ({value:?}) holding refs {contains:?}", id);
        self.core.put(job, id, value, out);
        if !contains.is_empty() {
            self.core.contain(job, id, &contains, out);
        }
        desc
    }

    /// Whether a node running a task could read a stored argument: some
    /// holder it was told of is up, reachable and has the copy.
    fn readable(&self, r: &StoredRef) -> bool {
        self.nodes.iter().any(|n| n.up && !n.partitioned && n.store.contains(&r.id) && r.holders.contains(&n.address))
    }

    /// Whether the node running `d` could read every stored argument.
    fn inputs_readable(&self, d: &Dispatch) -> bool {
        d.args.iter().all(|a| match a {
            Payload::Inline(_) => true,
            Payload::Stored(r) => self.readable(r),
        })
    }

    fn complete(&mut self, out: &mut Sent) -> String {
        let Some(i) = self.pick_node(|n| n.reachable() && !n.running.is_empty()) else { return "nothing running".into() };
        let k = self.rng.random_range(0..self.nodes[i].running.len());
        let (d, cancelled) = self.nodes[i].running.swap_remove(k);
        let inputs_ok = self.inputs_readable(&d);
        let outcome = if cancelled {
            Err(Failure::new(FailureKind::Cancelled, "cancelled while running"))
        } else if !inputs_ok {
            Err(Failure::new(FailureKind::ObjectLost, "no holder could send an input"))
        } else {
            match self.rng.random_range(0..20) {
                0..=9 => Ok(Value::Inline(value_of(d.task))),
                10..=15 => {
                    self.nodes[i].store.insert(d.task);
                    Ok(Value::Stored { size: 1000 })
                }
                16 => Err(Failure::new(FailureKind::Panicked, "boom")),
                17 | 18 => Err(Failure::new(FailureKind::WorkerDied, "executor died")),
                _ => Err(Failure::new(FailureKind::ObjectLost, "a pull failed")),
            }
        };
        let desc = format!(
            "node {i} reports {} -> {}",
            d.task,
            match &outcome {
                Ok(Value::Inline(_)) => "inline".to_string(),
                Ok(Value::Stored { .. }) => "stored".to_string(),
                Err(f) => format!("{:?}", f.kind),
            }
        );
        let n = &self.nodes[i];
        self.core.tasks_finished(n.id, n.epoch, vec![(d.task, outcome)], self.now, out);
        desc
    }

    fn restart_head(&mut self, out: &mut Sent) -> String {
        let snaps: Vec<(JobId, JobSnapshot)> = self.jobs.iter().filter(|j| !j.ended).filter_map(|j| Some((j.id, self.core.job_snapshot(j.id)?))).collect();
        let next = self.core.next_job();
        self.core = Core::new(self.config.clone());
        // The task-event store is not durable: a restarted head starts it
        // afresh.
        self.seen.clear();
        self.core.recovering(self.now + self.config.heartbeat_timeout * 2);
        self.core.reserve_jobs_below(next);
        let restored = snaps.len();
        for (job, snap) in snaps {
            self.core.restore_snapshot(job, snap, self.now, out);
        }
        // Every session died with the old head.
        for n in &mut self.nodes {
            n.connected = false;
            n.running.clear();
        }
        for j in &mut self.jobs {
            j.attached = false;
        }
        format!("the head restarts ({restored} jobs restored)")
    }

    /// Heals everything, runs all work to its end, and checks what every
    /// driver ends up with; then releases everything and checks that every
    /// copy on every node was freed.
    fn settle(&mut self) {
        self.trace.push("--- heal and settle ---".into());
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up || !self.nodes[i].connected || self.nodes[i].partitioned {
                if !self.nodes[i].up {
                    self.nodes[i].up = true;
                    self.nodes[i].store.clear();
                }
                self.register(i);
            }
        }
        // Past any recovery window, so holders that are not back count as gone.
        self.now += self.config.heartbeat_timeout * 3;
        for i in 0..self.jobs.len() {
            if !self.jobs[i].attached && !self.jobs[i].ended {
                let mut out = Sent::default();
                self.reattach(i, &mut out);
                self.deliver(out);
            }
        }
        for round in 0..500 {
            let mut out = Sent::default();
            for n in self.nodes.iter() {
                self.core.node_heartbeat(n.id, n.epoch, self.now);
                self.core.node_credits(n.id, n.epoch, 8, self.now);
            }
            self.core.tick(self.now, &mut out);
            for i in 0..self.nodes.len() {
                while let Some((d, cancelled)) = self.nodes[i].running.pop() {
                    let inputs_ok = self.inputs_readable(&d);
                    let outcome = if cancelled {
                        Err(Failure::new(FailureKind::Cancelled, "cancelled"))
                    } else if !inputs_ok {
                        Err(Failure::new(FailureKind::ObjectLost, "no holder could send an input"))
                    } else if d.task.0 % 2 == 0 {
                        self.nodes[i].store.insert(d.task);
                        Ok(Value::Stored { size: 1000 })
                    } else {
                        Ok(Value::Inline(value_of(d.task)))
                    };
                    let n = &self.nodes[i];
                    self.core.tasks_finished(n.id, n.epoch, vec![(d.task, outcome)], self.now, &mut out);
                }
            }
            self.core.schedule(&mut out);
            self.deliver(out);
            if let Err(e) = self.core.check_invariants() {
                self.fail(format!("while settling (round {round}): {e}"));
            }
            if self.core.is_idle() {
                break;
            }
            self.now += Duration::from_millis(100);
        }
        // A driver reading a stored value it cannot reach asks the head
        // where it is now (as `get` does), and gets an answer.
        let mut out = Sent::default();
        for j in &self.jobs {
            if j.ended {
                continue;
            }
            let stale: Vec<ObjectId> =
                j.held.iter().filter(|id| matches!(j.answers.get(id), Some(Ok(Payload::Stored(r))) if !self.readable(r))).copied().collect();
            self.core.locate(j.id, &stale, &mut out);
        }
        self.deliver(out);
        if !self.core.is_idle() {
            self.fail(format!(
                "{} tasks never ended though every node is up and asks for work:\n  {}",
                self.core.task_count(),
                self.core.describe_tasks().join("\n  ")
            ));
        }
        for j in &self.jobs {
            if j.ended {
                continue;
            }
            for id in &j.held {
                match j.answers.get(id) {
                    None if j.tasks.contains(id) => self.fail(format!("job {}: task {} ended without the driver hearing of it", j.id, *id)),
                    Some(Ok(Payload::Stored(r))) if !self.readable(r) => {
                        self.fail(format!("job {}: the driver was told {} is at {:?}, but no such copy exists", j.id, *id, r.holders))
                    }
                    _ => {}
                }
            }
        }
        // Release everything; every copy must be freed.
        let mut out = Sent::default();
        for j in &mut self.jobs {
            if !j.ended {
                let held = std::mem::take(&mut j.held);
                self.core.release(j.id, &held, &mut out);
                let ops: Vec<(ObjectId, bool)> = std::mem::take(&mut j.borrowed).into_iter().map(|id| (id, false)).collect();
                self.core.borrow(j.id, &ops, &mut out);
            }
        }
        self.deliver(out);
        if let Err(e) = self.core.check_invariants().and_then(|()| self.check_events()) {
            self.fail(format!("after releasing everything: {e}"));
        }
        if self.core.object_count() != 0 {
            self.fail(format!("{} objects are kept after every reference was released", self.core.object_count()));
        }
        // Copies a node kept while cut off are reported when it registers
        // again, and freed then.
        for i in 0..self.nodes.len() {
            self.register(i);
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.store.is_empty() {
                let mut left: Vec<String> = n.store.iter().map(|o| o.to_string()).collect();
                left.sort();
                self.fail(format!("node {i} still stores {left:?} after every reference was released"));
            }
        }
    }
}

fn run(seed: u64, steps: usize) {
    let mut w = World::new(seed);
    for k in 0..steps {
        let what = w.step();
        w.trace.push(format!("{k}: {what}"));
        if let Err(e) = w.core.check_invariants().and_then(|()| w.check_events()) {
            w.fail(format!("after step {k} ({what}): {e}"));
        }
    }
    w.settle();
}

#[test]
fn random_fault_schedules_keep_the_core_consistent() {
    let one = std::env::var("SHOAL_SCHEDULE_SEED").ok().and_then(|s| s.parse::<u64>().ok());
    let count: u64 = std::env::var("SHOAL_SCHEDULES").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let seeds: Vec<u64> = match one {
        Some(s) => vec![s],
        None => (0..count).collect(),
    };
    for seed in seeds {
        let steps = 50 + (seed % 7) as usize * 40;
        if let Err(e) = std::panic::catch_unwind(|| run(seed, steps)) {
            let msg = shoal_domain::panic::message(&*e);
            panic!("fault schedule failed: rerun with SHOAL_SCHEDULE_SEED={seed}\n{msg}");
        }
    }
}
