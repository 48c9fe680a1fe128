//! The state API: what `shoal list|get|summary|timeline`, the dashboard
//! and `/metrics` ask the loop, and its answers. One query, one answer,
//! computed on the loop from the core and the task events; the gRPC
//! handler and the dashboard serialize the same answer to JSON.

use crate::core::{Core, JobId, ObjectId};
use crate::events::{TaskEvents, Totals};
use shoal_domain::cluster::ClusterStatus;
use shoal_domain::state::{Demand, FunctionSummary, JobLogs, JobRow, ObjectList, Overview, TaskFilter, TaskList, TaskPhase, TaskRow};
use std::time::Instant;

/// Objects a listing returns when it does not say.
const DEFAULT_OBJECTS: usize = 100;

/// A question for the loop.
#[derive(Clone, Debug)]
pub(crate) enum StateQuery {
    /// Tracked tasks matching a filter.
    Tasks(TaskFilter),
    /// One task.
    Task(ObjectId),
    /// Remembered jobs.
    Jobs,
    /// Per function (of one job, or all).
    Summary(Option<JobId>),
    /// The largest objects (of one job, or all), at most `limit`.
    Objects { job: Option<JobId>, limit: usize },
    /// Everything the dashboard shows.
    Overview,
    /// What `/metrics` exports.
    Metrics,
    /// What a job's tasks printed.
    Logs(JobId),
}

/// What `/metrics` is made of, read in one go on the loop.
#[derive(Clone, Debug)]
pub(crate) struct MetricsSnapshot {
    pub(crate) status: ClusterStatus,
    pub(crate) totals: Totals,
    pub(crate) ready_queue: u64,
    pub(crate) objects: u64,
    pub(crate) jobs: Vec<JobRow>,
    pub(crate) tracked: u64,
    /// Dispatch latencies since the head started.
    pub(crate) latencies: crate::events::Latencies,
}

/// The loop's answer.
#[derive(Clone, Debug)]
pub(crate) enum StateAnswer {
    Tasks(TaskList),
    Task(Option<TaskRow>),
    Jobs(Vec<JobRow>),
    Summary(Vec<FunctionSummary>),
    Objects(ObjectList),
    Overview(Box<Overview>),
    Metrics(Box<MetricsSnapshot>),
    Logs(JobLogs),
}

impl StateAnswer {
    /// The answer as the API's JSON (what `shoal ... --json` prints).
    pub(crate) fn to_json(&self) -> Vec<u8> {
        let r = match self {
            StateAnswer::Tasks(v) => serde_json::to_vec(v),
            StateAnswer::Task(v) => serde_json::to_vec(v),
            StateAnswer::Jobs(v) => serde_json::to_vec(v),
            StateAnswer::Summary(v) => serde_json::to_vec(v),
            StateAnswer::Objects(v) => serde_json::to_vec(v),
            StateAnswer::Overview(v) => serde_json::to_vec(v),
            StateAnswer::Metrics(_) => Ok(b"{}".to_vec()),
            StateAnswer::Logs(v) => serde_json::to_vec(v),
        };
        r.unwrap_or_else(|e| format!("{{\"error\":\"encoding the answer: {e}\"}}").into_bytes())
    }
}

/// Microseconds since the Unix epoch.
pub(crate) fn unix_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// How long a computed pending demand is reused: every open dashboard
/// asks once a second, and the demand walks the whole ready queue.
const DEMAND_FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// What the loop keeps between queries so that many dashboards and
/// scrapers cost what one does.
#[derive(Default)]
pub(crate) struct StateCache {
    demand: Option<(Instant, Vec<Demand>)>,
}

impl StateCache {
    fn demand(&mut self, core: &Core, now: Instant) -> Vec<Demand> {
        if let Some((at, d)) = &self.demand
            && now.saturating_duration_since(*at) < DEMAND_FRESH_FOR
        {
            return d.clone();
        }
        let d: Vec<Demand> = core.pending_demand().into_iter().map(|(r, n)| Demand { resources: r.to_string(), tasks: n }).collect();
        self.demand = Some((now, d.clone()));
        d
    }
}

/// Answers `query` from the core and the task events.
pub(crate) fn answer(core: &Core, events: &mut TaskEvents, cache: &mut StateCache, query: StateQuery, now: Instant) -> StateAnswer {
    match query {
        StateQuery::Tasks(f) => StateAnswer::Tasks(events.list(&f)),
        StateQuery::Task(id) => StateAnswer::Task(events.get(id)),
        StateQuery::Jobs => StateAnswer::Jobs(events.jobs()),
        StateQuery::Summary(job) => StateAnswer::Summary(events.summary(job)),
        StateQuery::Objects { job, limit } => {
            let (objects, total) = core.objects(job, if limit == 0 { DEFAULT_OBJECTS } else { limit });
            StateAnswer::Objects(ObjectList { objects, total })
        }
        StateQuery::Overview => {
            let all = events.list(&TaskFilter { limit: 500, ..Default::default() });
            let failed = events.list(&TaskFilter { phase: Some(TaskPhase::Failed), limit: 50, ..Default::default() });
            let (objects, object_count) = core.objects(None, 50);
            StateAnswer::Overview(Box::new(Overview {
                status: core.snapshot(now),
                head_pid: std::process::id(),
                head_hostname: shoal_domain::cluster::hostname(),
                demand: cache.demand(core, now),
                jobs: events.jobs(),
                functions: events.summary(None),
                failed: failed.tasks,
                recent: all.tasks,
                objects,
                object_count,
                tracked: all.tracked,
                capacity: all.capacity,
                dropped: all.dropped,
                now_us: unix_micros(),
            }))
        }
        StateQuery::Logs(job) => {
            let (lines, dropped) = events.logs(job);
            StateAnswer::Logs(JobLogs { lines, dropped })
        }
        StateQuery::Metrics => StateAnswer::Metrics(Box::new(MetricsSnapshot {
            status: core.snapshot(now),
            totals: events.totals(),
            ready_queue: core.ready_len() as u64,
            objects: core.object_count() as u64,
            jobs: events.jobs(),
            tracked: events.tracked() as u64,
            latencies: events.latencies(),
        })),
    }
}
