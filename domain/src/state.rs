//! What the head's state API answers: the rows of `shoal list`, `shoal
//! get`, `shoal summary` and the dashboard, which all read the same API.
//! Times are microseconds since the Unix epoch, as the head's clock saw
//! them (a task's `started_at_us` and `run_us` come from its worker).

use crate::ids::{JobId, NodeId, ObjectId};
use serde::{Deserialize, Serialize};

/// Where a task is in its life, as the head tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum TaskPhase {
    /// Waiting for its inputs or for a node with room.
    Pending,
    /// Sent to a node (queued there or running).
    Running,
    /// Done with a value.
    Finished,
    /// Done with a failure (including a cancellation).
    Failed,
}

impl TaskPhase {
    /// Every phase, in life order.
    pub const ALL: [TaskPhase; 4] = [TaskPhase::Pending, TaskPhase::Running, TaskPhase::Finished, TaskPhase::Failed];

    /// The name the CLI and the dashboard use (`pending`, `running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskPhase::Pending => "pending",
            TaskPhase::Running => "running",
            TaskPhase::Finished => "finished",
            TaskPhase::Failed => "failed",
        }
    }

    /// Parses [`TaskPhase::as_str`]'s names.
    pub fn parse(s: &str) -> Option<TaskPhase> {
        TaskPhase::ALL.into_iter().find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// Done, one way or the other.
    pub fn is_done(self) -> bool {
        matches!(self, TaskPhase::Finished | TaskPhase::Failed)
    }
}

/// Tasks counted by phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseCounts {
    /// Waiting for inputs or a node.
    pub pending: u64,
    /// On a node.
    pub running: u64,
    /// Done with a value.
    pub finished: u64,
    /// Done with a failure.
    pub failed: u64,
}

impl PhaseCounts {
    /// The counter of `phase`.
    pub fn get_mut(&mut self, phase: TaskPhase) -> &mut u64 {
        match phase {
            TaskPhase::Pending => &mut self.pending,
            TaskPhase::Running => &mut self.running,
            TaskPhase::Finished => &mut self.finished,
            TaskPhase::Failed => &mut self.failed,
        }
    }

    /// Moves one task from `from` (if any) to `to`.
    pub fn moved(&mut self, from: Option<TaskPhase>, to: TaskPhase) {
        if let Some(f) = from {
            let c = self.get_mut(f);
            *c = c.saturating_sub(1);
        }
        *self.get_mut(to) += 1;
    }

    /// All tasks counted.
    pub fn total(&self) -> u64 {
        self.pending + self.running + self.finished + self.failed
    }
}

/// Why a task failed, as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    /// The failure kind (`panicked`, `worker died`, ...).
    pub kind: String,
    /// Its message (a panic's text).
    pub message: String,
    /// Where it panicked (`src/main.rs:12:5`), when known.
    pub location: String,
}

/// One task as the state API lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRow {
    /// The task's id (also its result object's), `job.seq`.
    pub id: ObjectId,
    /// Its job.
    pub job: JobId,
    /// Its function's registered name.
    pub function: String,
    /// Where it is.
    pub phase: TaskPhase,
    /// The node it was last sent to.
    pub node: Option<NodeId>,
    /// Attempts started (retries count).
    pub attempts: u32,
    /// When the head received it.
    pub submitted_at_us: u64,
    /// When the head last sent it to a node.
    pub dispatched_at_us: Option<u64>,
    /// When its executor started running it (the worker's clock).
    pub started_at_us: Option<u64>,
    /// How long it ran in its executor.
    pub run_us: Option<u64>,
    /// When the head learned it was done.
    pub ended_at_us: Option<u64>,
    /// The executor process that ran it.
    pub executor_pid: Option<u32>,
    /// Why it failed.
    pub error: Option<TaskError>,
}

/// A page of tasks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskList {
    /// The tasks that matched, newest first, at most the limit asked for.
    pub tasks: Vec<TaskRow>,
    /// How many tracked tasks matched the filters (before the limit).
    pub matched: u64,
    /// Tasks the head tracks now.
    pub tracked: u64,
    /// Most tasks it tracks; older ones are dropped first.
    pub capacity: u64,
    /// Tasks dropped from tracking since the head started (their counts
    /// in jobs and summaries stay exact; their rows are gone).
    pub dropped: u64,
}

/// Filters of a task listing; empty ones match everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskFilter {
    /// Only this job's tasks.
    pub job: Option<JobId>,
    /// Only this function's tasks.
    pub function: Option<String>,
    /// Only tasks in this phase.
    pub phase: Option<TaskPhase>,
    /// Only tasks last sent to a node whose id starts with this.
    pub node: Option<String>,
    /// At most this many rows (0: the default, 100).
    pub limit: u32,
}

/// One job (a driver's session) as listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRow {
    /// Its id.
    pub id: JobId,
    /// The driver's name (its program).
    pub name: String,
    /// The job whose task opened it (a task that submits tasks).
    pub parent: Option<JobId>,
    /// When its driver connected.
    pub started_at_us: u64,
    /// When it ended (its driver left and its work was dropped).
    pub ended_at_us: Option<u64>,
    /// Its tasks by phase (exact, whatever the task store dropped).
    pub tasks: PhaseCounts,
}

/// One function of one job, summarised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionSummary {
    /// The job.
    pub job: JobId,
    /// The function's registered name.
    pub function: String,
    /// Its tasks by phase.
    pub tasks: PhaseCounts,
    /// Mean time its finished tasks ran, in microseconds.
    pub mean_run_us: Option<f64>,
    /// 95th percentile of that time (within a factor of 2^(1/4)).
    pub p95_run_us: Option<f64>,
}

/// A stored object as listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectRow {
    /// Its id.
    pub id: ObjectId,
    /// Its size in bytes (0 for a value kept inline at the head).
    pub size: u64,
    /// Nodes holding a copy.
    pub holders: Vec<NodeId>,
    /// Stored in a node's object store (else inline at the head, or failed).
    pub stored: bool,
    /// The driver still holds a reference.
    pub driver_ref: bool,
    /// References from unfinished tasks and from values.
    pub refs: u64,
}

/// Objects and how many exist in all.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectList {
    /// The largest first (stored ones before inline values).
    pub objects: Vec<ObjectRow>,
    /// Objects in the head's table.
    pub total: u64,
}

/// Queued tasks that need the same resources and wait for a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Demand {
    /// What each needs (`cpus=1,gpu=1`).
    pub resources: String,
    /// How many wait.
    pub tasks: u64,
}

/// Everything the dashboard shows at once (and `shoal status` reads).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    /// Nodes, totals, actors.
    pub status: crate::cluster::ClusterStatus,
    /// The head's process id and host name (its node is the one with both).
    pub head_pid: u32,
    /// The head's host name.
    pub head_hostname: String,
    /// Queued tasks waiting for a node, by shape.
    pub demand: Vec<Demand>,
    /// Remembered jobs, newest first.
    pub jobs: Vec<JobRow>,
    /// Per function of every remembered job.
    pub functions: Vec<FunctionSummary>,
    /// The latest failed tasks, newest first.
    pub failed: Vec<TaskRow>,
    /// The latest tasks, newest first (what the timeline draws).
    pub recent: Vec<TaskRow>,
    /// The largest objects.
    pub objects: Vec<ObjectRow>,
    /// Objects in the table.
    pub object_count: u64,
    /// Task rows kept, their bound, and how many were dropped.
    pub tracked: u64,
    /// The bound.
    pub capacity: u64,
    /// Rows dropped since start.
    pub dropped: u64,
    /// Now, by the head's clock (microseconds since the epoch).
    pub now_us: u64,
}

/// One line a task printed, as `shoal logs --job` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// The task that printed it.
    pub task: ObjectId,
    /// Its function.
    pub function: String,
    /// The node it ran on.
    pub node: Option<NodeId>,
    /// The executor process.
    pub pid: u32,
    /// Printed to stderr (else stdout).
    pub stderr: bool,
    /// The line, without its newline.
    pub line: String,
}

/// What a job's tasks printed: the latest lines, and how many older ones
/// were dropped (the head keeps a bounded number per job).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobLogs {
    /// Oldest first.
    pub lines: Vec<LogLine>,
    /// Lines dropped before these.
    pub dropped: u64,
}
