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
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

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
/// One task, in one cache line: times in microseconds since the epoch
/// (0: not yet), the node as an index into `TaskEvents::nodes` (+1; 0:
/// none).
struct Row {
    submitted: u64,
    dispatched: u64,
    ended: u64,
    started: u64,
    run_us: u32,
    pid: u32,
    func: u32,
    attempts: u16,
    node: u16,
    phase: TaskPhase,
    /// Shared: the rows a job's end failed all hold one error.
    error: Option<Arc<TaskError>>,
}

fn some(t: u64) -> Option<u64> {
    (t != 0).then_some(t)
}

/// One job's rows, by sequence number: slot `i` is task `first + i` (a
/// `None` is an id that is no tracked task: a put, or dropped). Tasks are
/// submitted, sent and finished mostly in order, so the store is walked
/// mostly front to back: no hashing, few cache misses.
#[derive(Debug)]
struct Ring {
    job: JobId,
    first: u64,
    slots: VecDeque<Option<Row>>,
}

/// Every tracked row, in at most `cap` slots over all jobs; the oldest
/// job's oldest slots go first.
#[derive(Debug)]
struct Rows {
    cap: usize,
    rings: VecDeque<Ring>,
    /// Slots over all rings.
    slots: usize,
    /// Slots holding a row.
    present: usize,
    /// The ring used last (most events are of one job).
    last: usize,
}

impl Rows {
    fn new(cap: usize) -> Self {
        Rows { cap, rings: VecDeque::new(), slots: 0, present: 0, last: 0 }
    }

    fn ring(&mut self, job: JobId) -> Option<usize> {
        if self.rings.get(self.last).is_some_and(|r| r.job == job) {
            return Some(self.last);
        }
        let i = self.rings.iter().position(|r| r.job == job)?;
        self.last = i;
        Some(i)
    }

    /// Stores `row` for `id`; returns how many rows were dropped to make
    /// room (or 1 if `id` itself cannot be kept).
    fn insert(&mut self, id: ObjectId, row: Row) -> u64 {
        if self.cap == 0 {
            return 1;
        }
        let (job, seq) = (id.job(), id.seq());
        let i = match self.ring(job) {
            Some(i) => i,
            None => {
                self.rings.push_back(Ring { job, first: seq, slots: VecDeque::new() });
                self.rings.len() - 1
            }
        };
        let mut dropped = 0;
        let Some(r) = self.rings.get_mut(i) else { return 1 };
        if seq < r.first {
            return 1; // older than what this job's ring still covers
        }
        // A jump past the whole capacity: start the ring again there.
        if seq - r.first >= (self.cap + r.slots.len()) as u64 {
            let kept = r.slots.iter().filter(|s| s.is_some()).count();
            dropped += kept as u64;
            self.present -= kept;
            self.slots -= r.slots.len();
            r.slots.clear();
            r.first = seq;
        }
        let idx = (seq - r.first) as usize;
        while r.slots.len() <= idx {
            r.slots.push_back(None);
            self.slots += 1;
        }
        if let Some(slot) = r.slots.get_mut(idx) {
            if slot.is_none() {
                self.present += 1;
            }
            *slot = Some(row);
        }
        while self.slots > self.cap {
            let Some(oldest) = self.rings.front_mut() else { break };
            match oldest.slots.pop_front() {
                Some(slot) => {
                    oldest.first += 1;
                    self.slots -= 1;
                    if slot.is_some() {
                        self.present -= 1;
                        dropped += 1;
                    }
                }
                None => {
                    self.rings.pop_front();
                    self.last = 0;
                }
            }
        }
        if self.rings.len() > 1 && self.rings.front().is_some_and(|r| r.slots.is_empty()) {
            self.rings.pop_front();
            self.last = 0;
        }
        dropped
    }

    fn get_mut(&mut self, id: ObjectId) -> Option<&mut Row> {
        let i = self.ring(id.job())?;
        let r = self.rings.get_mut(i)?;
        let idx = id.seq().checked_sub(r.first)?;
        r.slots.get_mut(usize::try_from(idx).ok()?)?.as_mut()
    }

    fn get(&self, id: ObjectId) -> Option<&Row> {
        let r = self.rings.iter().find(|r| r.job == id.job())?;
        let idx = id.seq().checked_sub(r.first)?;
        r.slots.get(usize::try_from(idx).ok()?)?.as_ref()
    }

    /// Newest first: the newest job's last task first.
    fn newest_first(&self) -> impl Iterator<Item = (ObjectId, &Row)> {
        self.rings
            .iter()
            .rev()
            .flat_map(|r| r.slots.iter().enumerate().rev().filter_map(move |(i, s)| s.as_ref().map(|row| (ObjectId::new(r.job, r.first + i as u64), row))))
    }

    fn of_job_mut(&mut self, job: JobId) -> impl Iterator<Item = &mut Row> {
        self.rings.iter_mut().filter(move |r| r.job == job).flat_map(|r| r.slots.iter_mut().flatten())
    }

    fn len(&self) -> usize {
        self.present
    }
}

/// Run times in buckets a factor of 2^(1/4) apart, from 1 us to ~2 days.
const BUCKETS: usize = 150;

/// Upper bounds (seconds) of the dispatch-latency buckets: 50 us doubling.
pub const LATENCY_BOUNDS: [f64; 20] = [
    5e-05, 0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048, 0.4096, 0.8192, 1.6384, 3.2768, 6.5536, 13.1072,
    26.2144,
];

/// A histogram of dispatch latencies, in [`LATENCY_BOUNDS`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latencies {
    /// Per bucket, and one past the last.
    pub counts: [u64; 21],
    /// Sum in seconds.
    pub sum: f64,
    /// Observations.
    pub count: u64,
}

impl Latencies {
    fn observe(&mut self, us: u64) {
        // Bucket i holds up to 50 us * 2^i: from the bits of us / 50.
        let i = match us.saturating_sub(1) / 50 {
            0 => 0,
            q => (64 - q.leading_zeros() as usize).min(LATENCY_BOUNDS.len()),
        };
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += us as f64 / 1e6;
        self.count += 1;
    }
}

#[derive(Debug)]
struct FunctionStats {
    name: Box<str>,
    tasks: PhaseCounts,
    ran: u64,
    run_sum_us: u128,
    buckets: Box<[u32; BUCKETS]>,
}

impl FunctionStats {
    /// floor(4 * log2(us)), near enough, from the bits: the octave and
    /// the two bits after the leading one.
    fn bucket(us: u64) -> usize {
        let us = us.max(1);
        let octave = 63 - us.leading_zeros() as usize;
        let quarter = if octave >= 2 { ((us >> (octave - 2)) & 3) as usize } else { ((us << (2 - octave)) & 3) as usize };
        (octave * 4 + quarter).min(BUCKETS - 1)
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
    rows: Rows,
    jobs: BTreeMap<JobId, JobStats>,
    /// Keyed by job << 32 | function index.
    functions: BTreeMap<u64, FunctionStats>,
    /// Run times reported for results the core is about to apply, in
    /// the order it applies them (mostly).
    run_times: Vec<(ObjectId, RunTime)>,
    /// Where in `run_times` the next result's likely is.
    run_cursor: usize,
    totals: Totals,
    /// Dispatch latencies (submitted -> first dispatch), bucketed.
    latencies: Latencies,
    /// What each job's tasks printed, and how many lines were dropped.
    output: BTreeMap<JobId, (VecDeque<LogLine>, u64)>,
    /// Nodes rows name, by index (a row holds 2 bytes, not 16).
    nodes: Vec<NodeId>,
    last_node: usize,
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
            rows: Rows::new(capacity),
            jobs: BTreeMap::new(),
            functions: BTreeMap::new(),
            run_times: Vec::new(),
            run_cursor: 0,
            totals: Totals::default(),
            latencies: Latencies::default(),
            output: BTreeMap::new(),
            nodes: Vec::new(),
            last_node: 0,
        }
    }

    /// `node`'s index + 1 (0 past 65,534 nodes: the row names none).
    fn node_index(&mut self, node: NodeId) -> u16 {
        if self.nodes.get(self.last_node) == Some(&node) {
            return self.last_node as u16 + 1;
        }
        let i = match self.nodes.iter().position(|n| *n == node) {
            Some(i) => i,
            None if self.nodes.len() < u16::MAX as usize - 1 => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
            None => return 0,
        };
        self.last_node = i;
        i as u16 + 1
    }

    fn node_of(&self, r: &Row) -> Option<NodeId> {
        r.node.checked_sub(1).and_then(|i| self.nodes.get(i as usize)).copied()
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
        // One error for all of them: a job of a million queued tasks
        // leaves up to `capacity` rows here, 13 MB as an error each.
        let error = Arc::new(TaskError { kind: "job ended".into(), message: "its job ended before it finished".into(), location: String::new() });
        for row in self.rows.of_job_mut(job) {
            if !row.phase.is_done() {
                row.phase = TaskPhase::Failed;
                row.ended = now;
                row.error = Some(error.clone());
            }
        }
    }

    /// A worker's measured run time for `task`, whose result the core
    /// applies next (taken by its `Finished`/`Failed`).
    pub fn run_time(&mut self, task: TaskId, ran: RunTime) {
        self.run_times.push((task, ran));
    }

    /// The run time reported for `task` in this batch, if any.
    fn take_run_time(&mut self, task: TaskId) -> Option<RunTime> {
        if let Some((id, r)) = self.run_times.get(self.run_cursor)
            && *id == task
        {
            self.run_cursor += 1;
            return Some(*r);
        }
        let at = self.run_times.iter().position(|(id, _)| *id == task)?;
        self.run_cursor = at + 1;
        self.run_times.get(at).map(|(_, r)| *r)
    }

    /// Drops run times no transition took (results the core ignored).
    pub fn end_of_batch(&mut self) {
        if !self.run_times.is_empty() {
            self.run_times.clear();
        }
        self.run_cursor = 0;
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
                let row = Row {
                    submitted: now,
                    dispatched: 0,
                    ended: 0,
                    started: 0,
                    run_us: 0,
                    pid: 0,
                    func,
                    attempts: 0,
                    node: 0,
                    phase: TaskPhase::Pending,
                    error: None,
                };
                self.totals.dropped += self.rows.insert(task, row);
            }
            TaskEvent::Dispatched { node } => {
                self.totals.dispatched += 1;
                self.count(job, func, Some(TaskPhase::Pending), TaskPhase::Running, None);
                let node = self.node_index(node);
                let Some(row) = self.rows.get_mut(task) else { return };
                if row.attempts == 0 {
                    self.latencies.observe(now.saturating_sub(row.submitted));
                }
                row.attempts = row.attempts.saturating_add(1);
                row.node = node;
                row.dispatched = now;
                row.phase = TaskPhase::Running;
            }
            TaskEvent::Requeued => {
                self.totals.requeued += 1;
                self.count(job, func, Some(TaskPhase::Running), TaskPhase::Pending, None);
                if let Some(row) = self.rows.get_mut(task) {
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
        let ran = self.take_run_time(task);
        if let (Some(r), Some(f)) = (ran, self.functions.get_mut(&fkey(task.job(), func))) {
            f.record(r.run_us);
        }
        self.count(task.job(), func, Some(from), to, None);
        if let Some(row) = self.rows.get_mut(task) {
            row.phase = to;
            row.ended = now;
            if let Some(r) = ran {
                row.started = r.started_at_us;
                row.run_us = r.run_us.min(u32::MAX as u64) as u32;
                row.pid = r.pid;
            }
            row.error = error.map(Arc::new);
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

    /// Dispatch latencies since the head started.
    pub fn latencies(&self) -> Latencies {
        self.latencies.clone()
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
            node: self.node_of(r),
            attempts: r.attempts as u32,
            submitted_at_us: r.submitted,
            dispatched_at_us: some(r.dispatched),
            started_at_us: some(r.started),
            run_us: some(r.started).map(|_| r.run_us as u64),
            ended_at_us: some(r.ended),
            executor_pid: some(r.started).map(|_| r.pid),
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
        for (id, r) in self.rows.newest_first() {
            let ok = filter.job.is_none_or(|j| j == id.job())
                && filter.phase.is_none_or(|p| p == r.phase)
                && filter.function.as_deref().is_none_or(|f| func(id, r) == Some(f))
                && node.as_deref().is_none_or(|n| self.node_of(r).is_some_and(|x| format!("{x:#}").starts_with(n)));
            if ok {
                matched += 1;
                if tasks.len() < limit {
                    tasks.push(self.row(id, r));
                }
            }
        }
        TaskList { tasks, matched, tracked: self.rows.len() as u64, capacity: self.capacity as u64, dropped: self.totals.dropped }
    }

    /// One task, if tracked.
    pub fn get(&self, id: ObjectId) -> Option<TaskRow> {
        self.rows.get(id).map(|r| self.row(id, r))
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
    use std::collections::HashMap;

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
        let l = ev.latencies();
        assert_eq!((l.count, l.counts[0]), (1, 1), "50 us falls in the first bucket");
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
            // Three jobs, ids with gaps (puts take ids too).
            for j in 1..=3 {
                ev.job_started(j, "p", None);
            }
            let mut truth: HashMap<ObjectId, TaskPhase> = HashMap::new();
            let mut next = [0u64; 4];
            for _ in 0..300 {
                let f = Failure::new(FailureKind::Panicked, "x");
                match rng.random_range(0..5) {
                    0 => {
                        let j = rng.random_range(1..=3usize);
                        next[j] += if rng.random_bool(0.2) { rng.random_range(1..40) } else { 1 };
                        let id = ObjectId::new(j as JobId, next[j]);
                        ev.task_event(id, 0, TaskEvent::Submitted { function: "f" });
                        truth.insert(id, TaskPhase::Pending);
                    }
                    k => {
                        let mut live: Vec<ObjectId> = truth.iter().filter(|(_, p)| !p.is_done()).map(|(s, _)| *s).collect();
                        live.sort();
                        let Some(&id) = live.get(rng.random_range(0..live.len().max(1))) else { continue };
                        let p = truth[&id];
                        let (ev_, to) = match (k, p) {
                            (1, TaskPhase::Pending) => (TaskEvent::Dispatched { node: NodeId::random() }, TaskPhase::Running),
                            (2, TaskPhase::Running) => (TaskEvent::Requeued, TaskPhase::Pending),
                            (3, TaskPhase::Running) => (TaskEvent::Finished, TaskPhase::Finished),
                            (_, p) => (TaskEvent::Failed { failure: &f, was_running: p == TaskPhase::Running }, TaskPhase::Failed),
                        };
                        ev.task_event(id, 0, ev_);
                        truth.insert(id, to);
                    }
                }
                assert!(ev.tracked() <= cap, "seed {seed}: {} rows over {cap}", ev.tracked());
                for job in ev.jobs() {
                    let mut want = PhaseCounts::default();
                    for (_, p) in truth.iter().filter(|(id, _)| id.job() == job.id) {
                        *want.get_mut(*p) += 1;
                    }
                    assert_eq!(job.tasks, want, "seed {seed} job {}", job.id);
                    let summed = ev.summary(Some(job.id)).first().map(|s| s.tasks).unwrap_or_default();
                    assert_eq!(summed, want, "seed {seed} job {}", job.id);
                }
                let listed = ev.list(&TaskFilter { limit: 1000, ..Default::default() });
                assert_eq!(listed.tasks.len(), ev.tracked(), "seed {seed}: every kept row is listed once");
                for r in listed.tasks {
                    assert_eq!(r.phase, truth[&r.id], "seed {seed}: a kept row shows its phase");
                }
            }
        }
    }

    #[test]
    fn dispatch_latencies_fall_in_their_buckets() {
        let mut l = Latencies::default();
        for (us, bucket) in [(1, 0), (50, 0), (51, 1), (100, 1), (101, 2), (200, 2), (201, 3), (50 << 19, 19), ((50 << 19) + 1, 20), (u64::MAX / 2, 20)] {
            let before = l.counts;
            l.observe(us);
            let i = l.counts.iter().zip(before).position(|(a, b)| *a != b).unwrap();
            assert_eq!(i, bucket, "{us} us");
            assert!(i == 20 || us as f64 / 1e6 <= LATENCY_BOUNDS[i] * 1.000_001, "{us} us is within its bound");
        }
    }

    #[test]
    fn run_time_buckets_are_quarter_octaves() {
        for us in [1u64, 2, 3, 5, 7, 100, 1_000, 12_345, 1 << 30] {
            let exact = ((us as f64).log2() * 4.0).floor() as usize;
            let b = FunctionStats::bucket(us);
            assert!(b.abs_diff(exact) <= 1, "{us} us: bucket {b}, log2 says {exact}");
        }
    }
}
