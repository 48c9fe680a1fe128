//! The durable log beside the core: replaying it at start, which driver
//! batches were applied (to drop duplicates resent after a reconnect) and
//! which are durable (to acknowledge them), and compaction of a job's log
//! to a snapshot once its history outgrows its state.

use super::outbox::BatchingOutbox;
use crate::core::{Core, FunctionDef, JobId, NewTask, NodeId, ObjectId, PutValue};
use crate::durable::{Log, Replay};
use shoal_proto::convert;
use shoal_proto::pb;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The event loop's state beside the core: the log, and per job the last
/// driver batch applied and the last one durable.
#[derive(Default)]
pub(super) struct LoopState {
    log: Option<Log>,
    applied: HashMap<JobId, u64>,
    durable: HashMap<JobId, u64>,
    /// Per job: bytes in its log, and in its last snapshot.
    logged: HashMap<JobId, (u64, u64)>,
    /// See [`HeadConfig::compact_after_bytes`](super::HeadConfig::compact_after_bytes).
    compact_after: u64,
    /// Per job: the secret its driver resumes it with.
    secrets: HashMap<JobId, String>,
}

impl LoopState {
    /// State for a head with (or without) a durable log.
    pub(super) fn new(log: Option<Log>, compact_after: u64) -> Self {
        LoopState { log, compact_after, ..Default::default() }
    }

    /// Driver batch `seq` of `job` arrived. False if it was applied before:
    /// a driver sends its unacknowledged batches again after a reconnect.
    /// Batches without a sequence number (0) are always new.
    pub(super) fn admit(&mut self, job: JobId, seq: u64) -> bool {
        if seq == 0 {
            return true;
        }
        if seq <= self.applied.get(&job).copied().unwrap_or(0) {
            return false;
        }
        self.applied.insert(job, seq);
        true
    }

    /// Records an admitted batch, before the core applies it. Returns the
    /// bytes logged (to [`count`](Self::count) once it is applied, so that
    /// a compaction snapshots a state that includes it) and the sequence
    /// number to acknowledge at once: without a log, applied is as durable
    /// as it gets; with one, the acknowledgement waits for the commit
    /// ([`committed`](Self::committed)).
    pub(super) fn record_batch(&mut self, job: JobId, msg: &pb::DriverToHead) -> (usize, Option<u64>) {
        match &self.log {
            Some(log) => (log.append_batch(job, msg), None),
            None if msg.seq != 0 => {
                self.durable.insert(job, msg.seq);
                (0, Some(msg.seq))
            }
            None => (0, None),
        }
    }

    /// The log committed batches up to these sequence numbers. Returns
    /// those to acknowledge: jobs that ended meanwhile are skipped.
    pub(super) fn committed(&mut self, acks: Vec<(JobId, u64)>, connected: impl Fn(JobId) -> bool) -> Vec<(JobId, u64)> {
        let mut out = Vec::new();
        for (job, seq) in acks {
            if !connected(job) && !self.applied.contains_key(&job) {
                continue;
            }
            self.durable.insert(job, seq);
            out.push((job, seq));
        }
        out
    }

    /// Batch `seq` of `job` was read back from the log: applied and durable.
    fn replayed(&mut self, job: JobId, seq: u64) {
        self.applied.insert(job, seq);
        self.durable.insert(job, seq);
    }

    /// What a reconnecting driver of `job` is told is durable.
    pub(super) fn acked(&self, job: JobId) -> u64 {
        self.durable.get(&job).copied().unwrap_or(0)
    }

    /// A job started: the log remembers it and the next job id.
    /// A job started: its record is logged and its resume secret made
    /// (returned, for the driver's welcome).
    pub(super) fn job_started(&mut self, core: &Core, job: JobId, binary: String, name: String) -> String {
        let secret = shoal_proto::auth::generate_token();
        if let Some(log) = &self.log {
            log.next_job(core.next_job());
            let started = pb::JobStarted { job, binary, name, secret: secret.clone() };
            log.append(job, &pb::LogRecord { kind: Some(pb::log_record::Kind::Job(started)) }, 0);
        }
        self.secrets.insert(job, secret.clone());
        secret
    }

    /// Whether `given` is `job`'s resume secret (a job logged before
    /// secrets existed has none, and any driver of it may resume it).
    pub(super) fn may_resume(&self, job: JobId, given: &str) -> bool {
        match self.secrets.get(&job) {
            Some(s) if !s.is_empty() => shoal_proto::auth::secrets_match(given, s),
            _ => true,
        }
    }

    /// A job ended: nothing of it is kept.
    pub(super) fn job_ended(&mut self, job: JobId) {
        self.secrets.remove(&job);
        self.applied.remove(&job);
        self.durable.remove(&job);
        self.logged.remove(&job);
        if let Some(log) = &self.log {
            log.end_job(job);
        }
    }

    /// Logs the results `node` reported (before the core applies them).
    /// Returns the jobs whose logs grew, to count after the core applied
    /// them (so a compaction snapshots the state with them).
    pub(super) fn log_results(&self, node: NodeId, results: &[pb::TaskResult]) -> Vec<(JobId, usize)> {
        let Some(log) = &self.log else { return Vec::new() };
        let mut jobs: Vec<JobId> = results.iter().map(|r| shoal_domain::ids::job_of(r.task)).collect();
        jobs.sort_unstable();
        jobs.dedup();
        let node = node.0.to_string();
        jobs.into_iter().map(|job| (job, log.append_results(job, &node, results))).collect()
    }

    /// Counts `n` bytes logged for `job`, compacting its log to a snapshot
    /// once its history reaches `compact_after` and twice its last
    /// snapshot: replay time and disk stay proportional to the live state.
    pub(super) fn count(&mut self, core: &Core, job: JobId, n: usize) {
        let (total, snap) = self.logged.entry(job).or_default();
        *total += n as u64;
        if *total < self.compact_after.max(2 * *snap) {
            return;
        }
        self.compact(core, job);
    }

    /// Compacts `job`'s log to a snapshot of its state now (a lingering
    /// job's state is only its detached actors: a restarted head must not
    /// replay the rest of its history).
    pub(super) fn compact(&mut self, core: &Core, job: JobId) {
        let (Some(log), Some(s)) = (&self.log, core.job_snapshot(job)) else { return };
        let applied = self.applied.get(&job).copied().unwrap_or(0);
        let mut wire = convert::job_snapshot_to_wire(job, s, applied);
        if let Some(started) = wire.job.as_mut() {
            started.secret = self.secrets.get(&job).cloned().unwrap_or_default();
        }
        let size = log.compact(job, wire) as u64;
        let (total, snap) = self.logged.entry(job).or_default();
        tracing::info!(job, history_bytes = *total, snapshot_bytes = size, "compacted the job's log to a snapshot");
        *total = size;
        *snap = size;
    }

    /// Closes the log, once everything appended is committed.
    pub(super) fn close_log(self) {
        if let Some(log) = self.log {
            log.close();
        }
    }

    /// Bytes of `job`'s log since it last compacted, and of that snapshot.
    #[cfg(test)]
    pub(super) fn log_size(&self, job: JobId) -> (u64, u64) {
        self.logged.get(&job).copied().unwrap_or_default()
    }
}

/// Rebuilds the core from the log after a restart.
pub(super) fn restore(core: &mut Core, state: &mut LoopState, replay: Replay, heartbeat_timeout: Duration) {
    let now = Instant::now();
    // Nodes that held objects get two heartbeat timeouts to re-register
    // (set first: replayed puts and results name nodes not yet back).
    core.recovering(now + heartbeat_timeout * 2);
    // Nobody is connected yet: whatever the replay would send is dropped.
    let mut out = BatchingOutbox::new(0);
    // Before any record: a replayed batch may name ids of jobs replayed
    // after it (a caller adopting its generator's items).
    core.reserve_jobs_below(replay.next_job);
    let (mut jobs, mut batches, mut results) = (0, 0, 0);
    for (job, records) in replay.jobs {
        for r in records {
            match r.kind {
                Some(pb::log_record::Kind::Job(j)) => {
                    state.secrets.insert(j.job, j.secret);
                    core.restore_job(j.job, j.binary, j.name, now);
                    jobs += 1;
                }
                Some(pb::log_record::Kind::Batch(msg)) => {
                    state.replayed(job, msg.seq);
                    apply_driver_batch(core, job, msg, &mut out);
                    batches += 1;
                }
                Some(pb::log_record::Kind::Snapshot(s)) => {
                    if let Some(started) = &s.job {
                        state.secrets.insert(started.job, started.secret.clone());
                    }
                    if let Ok((j, snap, seq)) = convert::job_snapshot_from_wire(s) {
                        core.restore_snapshot(j, snap, now, &mut out);
                        state.replayed(job, seq);
                        jobs += 1;
                    }
                }
                Some(pb::log_record::Kind::Results(r)) => {
                    let Ok(node) = r.node.parse() else { continue };
                    for res in r.results {
                        let (tid, outcome) = convert::result_from_wire(res);
                        core.restore_result(NodeId(node), tid, outcome, &mut out);
                        results += 1;
                    }
                }
                None => {}
            }
        }
    }
    if jobs == 0 {
        // A fresh log: no node can be coming back with anything.
        core.end_recovery();
    }
    if jobs > 0 {
        tracing::info!(jobs, batches, results, tasks = core.task_count(), objects = core.object_count(), "restored the head's state from its log");
    }
}

/// Wire ids as object ids.
fn ids_of(raw: &[u64]) -> Vec<ObjectId> {
    raw.iter().map(|r| ObjectId(*r)).collect()
}

/// Applies a driver batch to the core (live, or replayed from the log).
pub(super) fn apply_driver_batch(core: &mut Core, job: JobId, msg: pb::DriverToHead, out: &mut BatchingOutbox) {
    if !msg.functions.is_empty() {
        core.define_functions(job, msg.first_function, msg.functions.into_iter().map(FunctionDef::from).collect());
    }
    let mut put_refs = Vec::new();
    for p in msg.puts {
        match PutValue::try_from(&p) {
            Ok(v) => {
                core.put(job, ObjectId(p.id), v, out);
                if !p.contains.is_empty() {
                    put_refs.push((ObjectId(p.id), ids_of(&p.contains)));
                }
            }
            Err(e) => tracing::warn!(job, error = %e, "malformed put ignored"),
        }
    }
    // Before the submissions and containments that may name them.
    for p in msg.adopt {
        core.adopt(job, ObjectId(p.id), p.value);
    }
    if !msg.submit.is_empty() {
        core.submit(job, msg.submit.into_iter().map(NewTask::from).collect(), out);
    }
    // After the submissions: a put may hold refs to calls of the same batch.
    for (id, refs) in put_refs {
        core.contain(job, id, &refs, out);
    }
    for c in msg.contain {
        core.contain(job, ObjectId(c.container), &ids_of(&c.ids), out);
    }
    for item in msg.items {
        // A run of small items holding no refs: passed on, not kept.
        for (k, (id, value)) in item.run_ids.iter().zip(item.run_values).enumerate() {
            core.generator_item_owned(job, ObjectId(item.task), item.index + k as u64, ObjectId(*id), value, out);
        }
        let Some(p) = item.put else { continue };
        match PutValue::try_from(&p) {
            // Small and holding no refs: passed on, not kept.
            Ok(PutValue::Inline(b)) if p.contains.is_empty() => core.generator_item_owned(job, ObjectId(item.task), item.index, ObjectId(p.id), b, out),
            Ok(v) => {
                core.put(job, ObjectId(p.id), v, out);
                if !p.contains.is_empty() {
                    core.contain(job, ObjectId(p.id), &ids_of(&p.contains), out);
                }
                core.generator_item(job, ObjectId(item.task), item.index, ObjectId(p.id), out);
            }
            Err(e) => tracing::warn!(job, error = %e, "malformed generator item ignored"),
        }
    }
    for a in msg.generator_acks {
        core.generator_consumed(job, ObjectId(a.task), a.consumed, out);
    }
    if !msg.cancel.is_empty() {
        core.cancel(job, &ids_of(&msg.cancel), out);
    }
    if !msg.kill_actors.is_empty() {
        core.kill_actors(&ids_of(&msg.kill_actors), out);
    }
    if !msg.locate.is_empty() {
        core.locate(job, &ids_of(&msg.locate), out);
    }
    if !msg.borrow.is_empty() {
        let ops: Vec<(ObjectId, bool)> = msg.borrow.iter().map(|o| (ObjectId(o.id), o.hold)).collect();
        core.borrow(job, &ops, out);
    }
    if !msg.release.is_empty() {
        core.release(job, &ids_of(&msg.release), out);
    }
}
