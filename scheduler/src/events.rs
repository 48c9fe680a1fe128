//! The head's task events: every task's state transitions with their
//! times, in a store of bounded size, and exact per-job and per-function
//! counts beside it. The state API (`shoal list`, `summary`, `timeline`,
//! the dashboard) and `/metrics` read it. Pure: the loop feeds it the
//! core's [`TaskEvent`]s and the workers' run times, and the clock.
//!
//! Memory: at most `capacity` task rows (about 150 bytes each); when full,
//! the oldest row goes first (under FIFO scheduling, the oldest submitted
//! is mostly the oldest finished) and `dropped` counts it. Counts by job
//! and by function never drop anything: they move by the phases the core
//! reports, not by the rows. At most [`MAX_JOBS`] jobs are remembered; the
//! oldest ended job goes first.

use crate::core::{Failure, JobId, NodeId, ObjectId, TaskId};
use shoal_domain::state::{FunctionSummary, JobRow, LogLine, PhaseCounts, TaskError, TaskFilter, TaskList, TaskPhase, TaskRow};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Jobs remembered (running ones always; ended ones up to this many).
pub const MAX_JOBS: usize = 1024;

/// Lines of task output kept per job (the oldest go first).
pub const MAX_LINES_PER_JOB: usize = 10_000;

/// Jobs whose output is kept (the oldest job's goes first).
pub const MAX_LOGGED_JOBS: usize = 64;

/// Rows a listing returns when it does not say.
pub const DEFAULT_LIMIT: usize = 100;

/// Most rows one listing returns.
pub const MAX_LIMIT: usize = 1_000_000;

/// A task's transition, as the core reports it through its outbox.
#[derive(Clone, Copy, Debug)]
pub enum TaskEvent<'a> {
    /// Accepted into the graph (pending).
    Submitted {
        /// Its function's registered name.
        function: &'a str,
    },
    /// Sent to `node` (pending -> running).
    Dispatched {
        /// The node.
        node: NodeId,
    },
    /// Back in line after its node or executor died (running -> pending).
    Requeued,
    /// Done with a value (running -> finished).
    Finished,
    /// Done with a failure, from pending (`was_running` false: cancelled,
    /// an input failed) or from running.
    Failed {
        /// Why.
        failure: &'a Failure,
        /// It was on a node.
        was_running: bool,
    },
}

/// How long a task ran, as its worker measured it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunTime {
    /// When its executor started it, microseconds since the epoch.
    pub started_at_us: u64,
    /// How long it ran.
    pub run_us: u64,
    /// The executor's process id.
    pub pid: u32,
}

#[derive(Debug)]
struct Row {
    func: u32,
    phase: TaskPhase,
    attempts: u32,
    node: Option<NodeId>,
    submitted: u64,
    dispatched: Option<u64>,
    ended: Option<u64>,
    ran: Option<RunTime>,
    error: Option<Box<TaskError>>,
}

/// Run times in buckets a factor of 2^(1/4) apart, from 1 us to ~2 days.
const BUCKETS: usize = 150;

#[derive(Debug)]
struct FunctionStats {
    name: Box<str>,
    tasks: PhaseCounts,
    ran: u64,
    run_sum_us: u128,
    buckets: Box<[u32; BUCKETS]>,
}

impl FunctionStats {
    fn bucket(us: u64) -> usize {
        let us = us.max(1) as f64;
        ((us.log2() * 4.0) as usize).min(BUCKETS - 1)
    }

    fn record(&mut self, us: u64) {
        self.ran += 1;
        self.run_sum_us += us as u128;
        if let Some(b) = self.buckets.get_mut(FunctionStats::bucket(us)) {
            *b = b.saturating_add(1);
        }
    }

    /// The upper edge of the bucket holding the `q` quantile.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().map(|b| *b as u64).sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += *b as u64;
            if seen >= want {
                return Some(2f64.powf((i + 1) as f64 / 4.0));
            }
        }
        None
    }
}

#[derive(Debug)]
struct JobStats {
    name: String,
    parent: Option<JobId>,
    started: u64,
    ended: Option<u64>,
    tasks: PhaseCounts,
}

/// Totals since the head started (for `/metrics`), never dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Tasks accepted.
    pub submitted: u64,
    /// Sends of a task to a node (attempts).
    pub dispatched: u64,
    /// Tasks put back in line after their node or executor died.
    pub requeued: u64,
    /// Tasks done with a value.
    pub finished: u64,
    /// Tasks done with a failure.
    pub failed: u64,
    /// Rows dropped from the bounded store.
    pub dropped: u64,
}

/// The store; see the module doc.
#[derive(Debug)]
pub struct TaskEvents {
    capacity: usize,
    now_us: u64,
    rows: HashMap<ObjectId, Row, std::hash::BuildHasherDefault<crate::core::IdHasher>>,
    /// Row ids in insertion order (exactly the rows' keys).
    order: VecDeque<ObjectId>,
    jobs: BTreeMap<JobId, JobStats>,
    /// Keyed by job << 32 | function index.
    functions: BTreeMap<u64, FunctionStats>,
    /// Run times reported for results the core is about to apply.
    run_times: HashMap<ObjectId, RunTime, std::hash::BuildHasherDefault<crate::core::IdHasher>>,
    totals: Totals,
    /// Dispatch latencies (submitted -> first dispatch) not yet taken by
    /// the metrics, in microseconds.
    latencies: Vec<u64>,
    /// What each job's tasks printed, and how many lines were dropped.
    output: BTreeMap<JobId, (VecDeque<LogLine>, u64)>,
}

fn fkey(job: JobId, func: u32) -> u64 {
    (job as u64) << 32 | func as u64
}

impl TaskEvents {
    /// A store of at most `capacity` task rows (0 keeps none, counts stay).
    pub fn new(capacity: usize) -> Self {
        TaskEvents {
            capacity,
            now_us: 0,
            rows: Default::default(),
            order: VecDeque::new(),
            jobs: BTreeMap::new(),
            functions: BTreeMap::new(),
            run_times: Default::default(),
            totals: Totals::default(),
            latencies: Vec::new(),
            output: BTreeMap::new(),
        }
    }

    /// Keeps a line a task printed (bounded per job and in jobs).
    pub fn output_line(&mut self, line: LogLine) {
        let job = line.task.job();
        let (lines, dropped) = self.output.entry(job).or_default();
        if lines.len() >= MAX_LINES_PER_JOB {
            lines.pop_front();
            *dropped += 1;
        }
        lines.push_back(line);
        while self.output.len() > MAX_LOGGED_JOBS {
            self.output.pop_first();
        }
    }

    /// What job `job`'s tasks printed (the latest lines), and how many
    /// older lines were dropped.
    pub fn logs(&self, job: JobId) -> (Vec<LogLine>, u64) {
        self.output.get(&job).map(|(l, d)| (l.iter().cloned().collect(), *d)).unwrap_or_default()
    }

    /// The clock for the events that follow, microseconds since the epoch.
    pub fn set_now(&mut self, now_us: u64) {
        self.now_us = now_us;
    }

    /// A driver opened job `job`.
    pub fn job_started(&mut self, job: JobId, name: &str, parent: Option<JobId>) {
        let now = self.now_us;
        self.jobs.entry(job).or_insert_with(|| JobStats { name: name.to_string(), parent, started: now, ended: None, tasks: PhaseCounts::default() });
        while self.jobs.len() > MAX_JOBS {
            let Some(oldest) = self.jobs.iter().find(|(_, j)| j.ended.is_some()).map(|(id, _)| *id) else { break };
            self.forget_job(oldest);
        }
    }

    fn forget_job(&mut self, job: JobId) {
        self.jobs.remove(&job);
        let first = fkey(job, 0);
        let last = fkey(job, u32::MAX);
        let keys: Vec<u64> = self.functions.range(first..=last).map(|(k, _)| *k).collect();
        for k in keys {
            self.functions.remove(&k);
        }
    }

    /// Job `job` ended: its tasks that were not done never will be; they
    /// count as failed (dropped with their job).
    pub fn job_ended(&mut self, job: JobId) {
        let now = self.now_us;
        let Some(j) = self.jobs.get_mut(&job) else { return };
        j.ended.get_or_insert(now);
        let unfinished = j.tasks.pending + j.tasks.running;
        if unfinished == 0 {
            return;
        }
        j.tasks.failed += unfinished;
        j.tasks.pending = 0;
        j.tasks.running = 0;
        for (k, f) in self.functions.range_mut(fkey(job, 0)..=fkey(job, u32::MAX)) {
            let _ = k;
            f.tasks.failed += f.tasks.pending + f.tasks.running;
            f.tasks.pending = 0;
            f.tasks.running = 0;
        }
        for (id, row) in self.rows.iter_mut() {
            if id.job() == job && !row.phase.is_done() {
                row.phase = TaskPhase::Failed;
                row.ended = Some(now);
                row.error = Some(Box::new(TaskError { kind: "job ended".into(), message: "its job ended before it finished".into(), location: String::new() }));
            }
        }
    }

    /// A worker's measured run time for `task`, whose result the core
    /// applies next (taken by its `Finished`/`Failed`).
    pub fn run_time(&mut self, task: TaskId, ran: RunTime) {
        self.run_times.insert(task, ran);
    }

    /// Drops run times no transition took (results the core ignored).
    pub fn end_of_batch(&mut self) {
        if !self.run_times.is_empty() {
            self.run_times.clear();
        }
    }

    /// Applies one transition of `task`, a call of its job's function
    /// number `func`.
    pub fn task_event(&mut self, task: TaskId, func: u32, event: TaskEvent<'_>) {
        let now = self.now_us;
        let job = task.job();
        match event {
            TaskEvent::Submitted { function } => {
                self.totals.submitted += 1;
                self.count(job, func, None, TaskPhase::Pending, Some(function));
                if self.capacity == 0 {
                    self.totals.dropped += 1;
                    return;
                }
                let row =
                    Row { func, phase: TaskPhase::Pending, attempts: 0, node: None, submitted: now, dispatched: None, ended: None, ran: None, error: None };
                if self.rows.insert(task, row).is_none() {
                    self.order.push_back(task);
                }
                while self.rows.len() > self.capacity {
                    let Some(old) = self.order.pop_front() else { break };
                    if self.rows.remove(&old).is_some() {
                        self.totals.dropped += 1;
                    }
                }
            }
            TaskEvent::Dispatched { node } => {
                self.totals.dispatched += 1;
                self.count(job, func, Some(TaskPhase::Pending), TaskPhase::Running, None);
                let Some(row) = self.rows.get_mut(&task) else { return };
                if row.attempts == 0 {
                    self.latencies.push(now.saturating_sub(row.submitted));
                }
                row.attempts += 1;
                row.node = Some(node);
                row.dispatched = Some(now);
                row.phase = TaskPhase::Running;
            }
            TaskEvent::Requeued => {
                self.totals.requeued += 1;
                self.count(job, func, Some(TaskPhase::Running), TaskPhase::Pending, None);
                if let Some(row) = self.rows.get_mut(&task) {
                    row.phase = TaskPhase::Pending;
                }
            }
            TaskEvent::Finished => {
                self.totals.finished += 1;
                self.done(task, func, TaskPhase::Running, TaskPhase::Finished, None);
            }
            TaskEvent::Failed { failure, was_running } => {
                self.totals.failed += 1;
                let from = if was_running { TaskPhase::Running } else { TaskPhase::Pending };
                let error = TaskError { kind: failure.kind.to_string(), message: failure.message.clone(), location: failure.location.clone() };
                self.done(task, func, from, TaskPhase::Failed, Some(error));
            }
        }
    }

    fn done(&mut self, task: TaskId, func: u32, from: TaskPhase, to: TaskPhase, error: Option<TaskError>) {
        let now = self.now_us;
        let ran = self.run_times.remove(&task);
        if let (Some(r), Some(f)) = (ran, self.functions.get_mut(&fkey(task.job(), func))) {
            f.record(r.run_us);
        }
        self.count(task.job(), func, Some(from), to, None);
        if let Some(row) = self.rows.get_mut(&task) {
            row.phase = to;
            row.ended = Some(now);
            if ran.is_some() {
                row.ran = ran;
            }
            row.error = error.map(Box::new);
        }
    }

    /// Moves one task of `job`'s function `func` between phases; `name`
    /// creates the function's entry on first sight.
    fn count(&mut self, job: JobId, func: u32, from: Option<TaskPhase>, to: TaskPhase, name: Option<&str>) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.tasks.moved(from, to);
        }
        let entry = match name {
            Some(n) => Some(self.functions.entry(fkey(job, func)).or_insert_with(|| FunctionStats {
                name: n.into(),
                tasks: PhaseCounts::default(),
                ran: 0,
                run_sum_us: 0,
                buckets: Box::new([0; BUCKETS]),
            })),
            None => self.functions.get_mut(&fkey(job, func)),
        };
        if let Some(f) = entry {
            f.tasks.moved(from, to);
        }
    }

    /// Totals since start.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Dispatch latencies since the last call, microseconds.
    pub fn take_latencies(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.latencies)
    }

    /// Tasks by phase over every remembered job.
    pub fn phases(&self) -> PhaseCounts {
        let mut c = PhaseCounts::default();
        for j in self.jobs.values() {
            c.pending += j.tasks.pending;
            c.running += j.tasks.running;
            c.finished += j.tasks.finished;
            c.failed += j.tasks.failed;
        }
        c
    }

    fn row(&self, id: ObjectId, r: &Row) -> TaskRow {
        TaskRow {
            id,
            job: id.job(),
            function: self.functions.get(&fkey(id.job(), r.func)).map(|f| f.name.to_string()).unwrap_or_else(|| format!("#{}", r.func)),
            phase: r.phase,
            node: r.node,
            attempts: r.attempts,
            submitted_at_us: r.submitted,
            dispatched_at_us: r.dispatched,
            started_at_us: r.ran.map(|t| t.started_at_us),
            run_us: r.ran.map(|t| t.run_us),
            ended_at_us: r.ended,
            executor_pid: r.ran.map(|t| t.pid),
            error: r.error.as_deref().cloned(),
        }
    }

    /// Tracked tasks matching `filter`, newest first.
    pub fn list(&self, filter: &TaskFilter) -> TaskList {
        let limit = match filter.limit as usize {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        let func = |id: ObjectId, r: &Row| self.functions.get(&fkey(id.job(), r.func)).map(|f| &*f.name);
        let node = filter.node.as_deref().map(|n| n.to_ascii_lowercase());
        let mut matched = 0u64;
        let mut tasks = Vec::new();
        for id in self.order.iter().rev() {
            let Some(r) = self.rows.get(id) else { continue };
            let ok = filter.job.is_none_or(|j| j == id.job())
                && filter.phase.is_none_or(|p| p == r.phase)
                && filter.function.as_deref().is_none_or(|f| func(*id, r) == Some(f))
                && node.as_deref().is_none_or(|n| r.node.is_some_and(|x| format!("{x:#}").starts_with(n)));
            if ok {
                matched += 1;
                if tasks.len() < limit {
                    tasks.push(self.row(*id, r));
                }
            }
        }
        TaskList { tasks, matched, tracked: self.rows.len() as u64, capacity: self.capacity as u64, dropped: self.totals.dropped }
    }

    /// One task, if tracked.
    pub fn get(&self, id: ObjectId) -> Option<TaskRow> {
        self.rows.get(&id).map(|r| self.row(id, r))
    }

    /// Remembered jobs, newest first.
    pub fn jobs(&self) -> Vec<JobRow> {
        self.jobs
            .iter()
            .rev()
            .map(|(id, j)| JobRow { id: *id, name: j.name.clone(), parent: j.parent, started_at_us: j.started, ended_at_us: j.ended, tasks: j.tasks })
            .collect()
    }

    /// Per function of every remembered job (or of `job`).
    pub fn summary(&self, job: Option<JobId>) -> Vec<FunctionSummary> {
        self.functions
            .iter()
            .filter(|(k, _)| job.is_none_or(|j| (*k >> 32) as JobId == j))
            .map(|(k, f)| FunctionSummary {
                job: (*k >> 32) as JobId,
                function: f.name.to_string(),
                tasks: f.tasks,
                mean_run_us: (f.ran > 0).then(|| f.run_sum_us as f64 / f.ran as f64),
                p95_run_us: f.quantile(0.95),
            })
            .collect()
    }

    /// Rows kept now.
    pub fn tracked(&self) -> usize {
        self.rows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::FailureKind;
    use rand::{Rng, SeedableRng};

    fn t(seq: u64) -> TaskId {
        ObjectId::new(1, seq)
    }

    fn submit(ev: &mut TaskEvents, seq: u64) {
        ev.task_event(t(seq), 0, TaskEvent::Submitted { function: "square" });
    }

    #[test]
    fn a_task_moves_through_its_phases_with_times_and_its_run_time() {
        let mut ev = TaskEvents::new(10);
        ev.set_now(100);
        ev.job_started(1, "quickstart", None);
        submit(&mut ev, 1);
        ev.set_now(150);
        let node = NodeId::random();
        ev.task_event(t(1), 0, TaskEvent::Dispatched { node });
        ev.set_now(400);
        ev.run_time(t(1), RunTime { started_at_us: 200, run_us: 180, pid: 77 });
        ev.task_event(t(1), 0, TaskEvent::Finished);
        let row = ev.get(t(1)).unwrap();
        assert_eq!((row.phase, row.node, row.attempts), (TaskPhase::Finished, Some(node), 1));
        assert_eq!(
            (row.submitted_at_us, row.dispatched_at_us, row.started_at_us, row.run_us, row.ended_at_us),
            (100, Some(150), Some(200), Some(180), Some(400))
        );
        assert_eq!(row.executor_pid, Some(77));
        assert_eq!(ev.take_latencies(), vec![50]);
        let s = &ev.summary(None)[0];
        assert_eq!((s.function.as_str(), s.tasks.finished, s.mean_run_us), ("square", 1, Some(180.0)));
        assert_eq!(ev.jobs()[0].tasks, PhaseCounts { finished: 1, ..Default::default() });
    }

    #[test]
    fn a_failure_keeps_its_kind_message_and_location_and_counts_from_where_it_was() {
        let mut ev = TaskEvents::new(10);
        ev.job_started(1, "p", None);
        submit(&mut ev, 1);
        submit(&mut ev, 2);
        ev.task_event(t(1), 0, TaskEvent::Dispatched { node: NodeId::random() });
        let mut f = Failure::new(FailureKind::Panicked, "boom");
        f.location = "src/main.rs:3:5".into();
        ev.task_event(t(1), 0, TaskEvent::Failed { failure: &f, was_running: true });
        ev.task_event(t(2), 0, TaskEvent::Failed { failure: &f, was_running: false });
        let e = ev.get(t(1)).unwrap().error.unwrap();
        assert_eq!((e.kind.as_str(), e.message.as_str(), e.location.as_str()), ("panicked", "boom", "src/main.rs:3:5"));
        assert_eq!(ev.jobs()[0].tasks, PhaseCounts { failed: 2, ..Default::default() });
        let failed = ev.list(&TaskFilter { phase: Some(TaskPhase::Failed), ..Default::default() });
        assert_eq!(failed.matched, 2);
    }

    #[test]
    fn a_full_store_drops_its_oldest_rows_and_says_so_while_counts_stay_exact() {
        let mut ev = TaskEvents::new(100);
        ev.job_started(1, "p", None);
        for s in 0..1000 {
            submit(&mut ev, s);
        }
        for s in 0..1000 {
            ev.task_event(t(s), 0, TaskEvent::Dispatched { node: NodeId::random() });
            ev.task_event(t(s), 0, TaskEvent::Finished);
        }
        let l = ev.list(&TaskFilter { limit: 1000, ..Default::default() });
        assert_eq!((l.tracked, l.dropped, l.tasks.len()), (100, 900, 100));
        assert_eq!(l.tasks[0].id, t(999), "newest first");
        assert!(l.tasks.iter().all(|r| r.phase == TaskPhase::Finished));
        assert_eq!(ev.jobs()[0].tasks, PhaseCounts { finished: 1000, ..Default::default() });
        assert_eq!(ev.summary(None)[0].tasks.finished, 1000);
    }

    #[test]
    fn filters_select_by_job_function_phase_and_node_prefix_and_the_limit_caps_rows() {
        let mut ev = TaskEvents::new(100);
        let a = NodeId::random();
        for s in 0..10 {
            ev.task_event(ObjectId::new(1, s), (s % 2) as u32, TaskEvent::Submitted { function: if s % 2 == 0 { "even" } else { "odd" } });
        }
        ev.task_event(ObjectId::new(2, 1), 0, TaskEvent::Submitted { function: "other" });
        ev.task_event(ObjectId::new(1, 4), 0, TaskEvent::Dispatched { node: a });
        let prefix = format!("{a:#}")[..4].to_string();
        let by_node = ev.list(&TaskFilter { node: Some(prefix), ..Default::default() });
        assert_eq!(by_node.tasks.iter().map(|r| r.id).collect::<Vec<_>>(), vec![ObjectId::new(1, 4)]);
        assert_eq!(ev.list(&TaskFilter { function: Some("odd".into()), ..Default::default() }).matched, 5);
        assert_eq!(ev.list(&TaskFilter { job: Some(2), ..Default::default() }).matched, 1);
        let capped = ev.list(&TaskFilter { job: Some(1), limit: 3, ..Default::default() });
        assert_eq!((capped.matched, capped.tasks.len()), (10, 3));
    }

    #[test]
    fn an_ended_job_fails_what_it_left_unfinished() {
        let mut ev = TaskEvents::new(10);
        ev.job_started(1, "p", None);
        submit(&mut ev, 1);
        submit(&mut ev, 2);
        ev.task_event(t(2), 0, TaskEvent::Dispatched { node: NodeId::random() });
        ev.job_ended(1);
        let j = &ev.jobs()[0];
        assert!(j.ended_at_us.is_some());
        assert_eq!(j.tasks, PhaseCounts { failed: 2, ..Default::default() });
        assert_eq!(ev.get(t(1)).unwrap().phase, TaskPhase::Failed);
        assert_eq!(ev.summary(Some(1))[0].tasks.failed, 2);
    }

    #[test]
    fn the_p95_falls_in_the_right_bucket() {
        let mut ev = TaskEvents::new(0);
        ev.job_started(1, "p", None);
        for s in 0..100 {
            submit(&mut ev, s);
            ev.task_event(t(s), 0, TaskEvent::Dispatched { node: NodeId::random() });
            ev.run_time(t(s), RunTime { started_at_us: 0, run_us: if s < 95 { 1_000 } else { 1_000_000 }, pid: 1 });
            ev.task_event(t(s), 0, TaskEvent::Finished);
        }
        let s = &ev.summary(None)[0];
        let p95 = s.p95_run_us.unwrap();
        assert!((1_000.0..1_000.0 * 1.19 * 1.19).contains(&p95), "p95 {p95}");
        assert_eq!(ev.tracked(), 0, "capacity 0 keeps no rows");
    }

    #[test]
    fn old_ended_jobs_are_forgotten_past_the_bound_running_ones_never() {
        let mut ev = TaskEvents::new(10);
        ev.job_started(1, "keeps running", None);
        for j in 2..(MAX_JOBS as JobId + 50) {
            ev.job_started(j, "short", None);
            ev.job_ended(j);
        }
        assert!(ev.jobs().len() <= MAX_JOBS);
        assert!(ev.jobs().iter().any(|j| j.id == 1), "a running job stays");
    }

    /// Random event sequences: the rows never exceed the capacity, and the
    /// per-job counts always equal the phases the events imply, whatever
    /// was dropped.
    #[test]
    fn random_sequences_keep_the_bound_and_exact_counts() {
        let schedules: u64 = std::env::var("SHOAL_SCHEDULES").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
        for seed in 0..schedules {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let cap = rng.random_range(0..20);
            let mut ev = TaskEvents::new(cap);
            ev.job_started(1, "p", None);
            let mut truth: HashMap<u64, TaskPhase> = HashMap::new();
            let mut next = 0;
            for _ in 0..300 {
                let f = Failure::new(FailureKind::Panicked, "x");
                match rng.random_range(0..5) {
                    0 => {
                        submit(&mut ev, next);
                        truth.insert(next, TaskPhase::Pending);
                        next += 1;
                    }
                    k => {
                        let live: Vec<u64> = truth.iter().filter(|(_, p)| !p.is_done()).map(|(s, _)| *s).collect();
                        let Some(&s) = live.get(rng.random_range(0..live.len().max(1))) else { continue };
                        let p = truth[&s];
                        let (ev_, to) = match (k, p) {
                            (1, TaskPhase::Pending) => (TaskEvent::Dispatched { node: NodeId::random() }, TaskPhase::Running),
                            (2, TaskPhase::Running) => (TaskEvent::Requeued, TaskPhase::Pending),
                            (3, TaskPhase::Running) => (TaskEvent::Finished, TaskPhase::Finished),
                            (_, p) => (TaskEvent::Failed { failure: &f, was_running: p == TaskPhase::Running }, TaskPhase::Failed),
                        };
                        ev.task_event(t(s), 0, ev_);
                        truth.insert(s, to);
                    }
                }
                assert!(ev.tracked() <= cap, "seed {seed}: {} rows over {cap}", ev.tracked());
                let mut want = PhaseCounts::default();
                for p in truth.values() {
                    *want.get_mut(*p) += 1;
                }
                assert_eq!(ev.jobs()[0].tasks, want, "seed {seed}");
                assert_eq!(ev.summary(None).first().map(|s| s.tasks).unwrap_or_default(), want, "seed {seed}");
                for r in ev.list(&TaskFilter { limit: 1000, ..Default::default() }).tasks {
                    assert_eq!(r.phase, truth[&r.id.seq()], "seed {seed}: a kept row shows its phase");
                }
            }
        }
    }
}
