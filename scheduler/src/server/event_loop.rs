//! The event loop: the one task that owns the core. It drains every
//! queued event, runs one scheduling pass, then flushes the outbox, so
//! dispatches and results leave in batches.

use super::admission::{Admission, AdmissionLimits};
use super::cmd::{Cmd, Sender};
use super::outbox::{BatchingOutbox, current};
use super::persistence::{LoopState, apply_driver_batch};
use super::state::unix_micros;
use crate::core::{Core, JobId, NodeId, ObjectId, Outbox, StoreUsage};
use crate::events::RunTime;
use shoal_domain::state::LogLine;
use shoal_proto::pad::pad;
use shoal_proto::pb::{self, HeadToDriver, HeadToWorker};
use shoal_proto::{PROTOCOL_VERSION, convert};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::Status;

/// The loop's state: the core, what lies beside it (log, dedup, acks), the
/// outbox, and the reply stream of every open session.
pub(super) struct Loop {
    core: Core,
    state: LoopState,
    out: BatchingOutbox,
    /// Per node: its session's epoch and reply stream.
    workers: HashMap<NodeId, (u64, Sender<HeadToWorker>)>,
    /// Per job: its driver's reply stream.
    drivers: HashMap<JobId, Sender<HeadToDriver>>,
    heartbeat_interval: Duration,
    admission: Admission,
    /// Answers the state API reuses between queries.
    state_cache: super::state::StateCache,
    /// When to hand freed memory back again after tables shrank.
    trims: Vec<Instant>,
}

impl Loop {
    pub(super) fn new(core: Core, state: LoopState, heartbeat_interval: Duration, limits: AdmissionLimits, task_events: usize) -> Self {
        Loop {
            core,
            state,
            out: BatchingOutbox::new(task_events),
            workers: HashMap::new(),
            drivers: HashMap::new(),
            heartbeat_interval,
            admission: Admission::new(limits),
            state_cache: Default::default(),
            trims: Vec::new(),
        }
    }

    /// Runs until [`Cmd::Stop`] or until every sender is gone.
    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        'outer: loop {
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(mut cmd) = cmd else { break };
                    // Drain everything already queued: one scheduling pass
                    // and one flush for the whole burst.
                    for _ in 0..65_536 {
                        if matches!(cmd, Cmd::Stop) {
                            break 'outer;
                        }
                        self.handle(cmd, Instant::now());
                        match rx.try_recv() {
                            Ok(c) => cmd = c,
                            Err(_) => break,
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.core.tick(now, &mut self.out);
                    if self.trims.first().is_some_and(|t| *t <= now) {
                        self.trims.retain(|t| *t > now);
                        release_free_memory();
                    }
                }
            }
            self.flush();
        }
        // A clean stop commits what the log has queued before letting go.
        let state = self.state;
        let _ = tokio::task::spawn_blocking(move || state.close_log()).await;
        tracing::info!("head event loop stopped");
    }

    /// One scheduling pass, then everything the outbox holds goes out.
    pub(super) fn flush(&mut self) {
        self.core.schedule(&mut self.out);
        self.admission.review(&self.core);
        for job in self.out.ended.drain(..) {
            self.out.events.job_ended(job);
            self.admission.detach(job);
            self.drivers.remove(&job);
            self.state.job_ended(job);
        }
        if self.core.take_shrunk() {
            release_free_memory();
            // What a big job leaves is freed over the next seconds too (its
            // sessions' buffers, the log's compaction, other threads'
            // arenas): hand it back again then.
            let now = Instant::now();
            self.trims = vec![now + Duration::from_secs(2), now + Duration::from_secs(10)];
        }
        for job in self.out.lingering.drain(..) {
            self.state.compact(&self.core, job);
        }
        for (node, epoch) in self.out.disconnect.drain(..) {
            // Dropping the sender ends the session's response stream; a
            // newer session of the same node (it registered again) stays.
            if self.workers.get(&node).is_some_and(|(e, _)| *e == epoch) {
                self.workers.remove(&node);
            }
        }
        for (node, batches) in self.out.workers.drain() {
            if let Some((_, tx)) = self.workers.get(&node) {
                for (m, _) in batches {
                    let _ = tx.send(Ok(pad(m)));
                }
            }
        }
        for (job, batches) in self.out.drivers.drain() {
            if let Some(tx) = self.drivers.get(&job) {
                for (m, _) in batches {
                    let _ = tx.send(Ok(pad(m)));
                }
            }
        }
    }

    fn ack(&mut self, job: JobId, seq: u64) {
        current(self.out.drivers.entry(job).or_default(), 8).acked = seq;
    }

    /// Applies one event.
    pub(super) fn handle(&mut self, cmd: Cmd, now: Instant) {
        self.out.events.set_now(unix_micros());
        let (core, out) = (&mut self.core, &mut self.out);
        match cmd {
            Cmd::WorkerRegister { reg, tx, reply } => {
                if let Some(e) = core.registration_conflict(&reg, now) {
                    tracing::warn!(error = %e, address = %reg.address, "refused a worker registration");
                    let _ = reply.send(Err(Status::already_exists(e.to_string())));
                    return;
                }
                let (id, epoch) = core.node_registered(reg, now, out);
                let _ = tx.send(Ok(HeadToWorker {
                    registered: Some(pb::Registered {
                        node_id: id.0.to_string(),
                        protocol_version: PROTOCOL_VERSION,
                        heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u32,
                    }),
                    ..Default::default()
                }));
                self.workers.insert(id, (epoch, tx));
                let _ = reply.send(Ok((id, epoch)));
            }
            Cmd::WorkerMsg { node, epoch, mut msg } => {
                if msg.heartbeat != 0 {
                    core.node_heartbeat(node, epoch, now);
                }
                if let Some(u) = msg.store {
                    core.node_store_usage(node, epoch, StoreUsage::from(u));
                }
                for id in msg.copied {
                    core.object_copied(node, epoch, ObjectId(id), out);
                }
                for o in msg.output {
                    let task = ObjectId(o.task);
                    let function = core.output_source(task).unwrap_or_else(|| "?".into());
                    let line = LogLine { task, function: function.clone(), node: Some(node), pid: o.pid, stderr: o.stderr, line: o.line };
                    let size = line.line.len() + line.function.len() + 32;
                    let wire = pb::TaskOutput { function, node: node.to_string(), line: line.line.clone(), ..o };
                    current(out.drivers.entry(task.job()).or_default(), size).output.push(wire);
                    out.events.output_line(line);
                }
                if !msg.results.is_empty() {
                    // Run times go to the task events, not into the log.
                    for r in msg.results.iter_mut().filter(|r| r.run_us > 0) {
                        out.events.run_time(ObjectId(r.task), RunTime { started_at_us: r.started_at_us, run_us: r.run_us, pid: r.pid });
                        (r.started_at_us, r.run_us, r.pid) = (0, 0, 0);
                    }
                    let logged = self.state.log_results(node, &msg.results);
                    let results = msg.results.into_iter().map(convert::result_from_wire).collect();
                    core.tasks_finished(node, epoch, results, now, out);
                    out.events.end_of_batch();
                    for (job, n) in logged {
                        self.state.count(core, job, n);
                    }
                }
                if msg.credits > 0 {
                    core.node_credits(node, epoch, msg.credits, now);
                }
            }
            Cmd::WorkerGone { node, epoch } => {
                core.node_disconnected(node, epoch, out);
                if self.workers.get(&node).is_some_and(|(e, _)| *e == epoch) {
                    self.workers.remove(&node);
                }
            }
            Cmd::DriverHello { binary, name, resume_job: 0, parent_job, tx, gate, reply, .. } => {
                match core.job_connected_under(binary.clone(), name.clone(), (parent_job != 0).then_some(parent_job)) {
                    Ok(job) => {
                        if parent_job == 0 {
                            self.admission.attach(job, gate);
                        }
                        out.events.job_started(job, &name, (parent_job != 0).then_some(parent_job));
                        let resume_secret = self.state.job_started(core, job, binary, name);
                        let welcome = pb::Welcome { job, protocol_version: PROTOCOL_VERSION, resume_secret };
                        let _ = tx.send(Ok(HeadToDriver { welcome: Some(welcome), ..Default::default() }));
                        self.drivers.insert(job, tx);
                        let _ = reply.send(Ok(job));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Status::resource_exhausted(e.to_string())));
                    }
                }
            }
            // Only the driver the job's secret was given to resumes it:
            // job ids are small counters, easy to guess.
            Cmd::DriverHello { resume_job: job, resume_secret, reply, .. } if !self.state.may_resume(job, &resume_secret) => {
                tracing::warn!(job, "refused a driver resuming a job with the wrong secret");
                let _ = reply.send(Err(Status::permission_denied(format!(
                    "job {job} belongs to another driver: the resume secret does not match (a driver resumes only the job it started)"
                ))));
            }
            Cmd::DriverHello { resume_job: job, tx, gate, reply, .. } => match core.job_reattached(job) {
                Some(results) => {
                    if !core.job_is_nested(job) {
                        self.admission.attach(job, gate);
                    }
                    tracing::info!(job, results = results.len(), "driver reconnected");
                    let acked = self.state.acked(job);
                    let welcome = pb::Welcome { job, protocol_version: PROTOCOL_VERSION, ..Default::default() };
                    let _ = tx.send(Ok(HeadToDriver { welcome: Some(welcome), acked, ..Default::default() }));
                    for (task, r) in results {
                        out.result(job, task, r);
                    }
                    self.drivers.insert(job, tx);
                    let _ = reply.send(Ok(job));
                }
                None => {
                    let _ = reply.send(Err(Status::not_found(format!("job {job} is not known to this head (it ended, or the head lost its state)"))));
                }
            },
            Cmd::DriverMsg { job, msg } => {
                if !self.state.admit(job, msg.seq) {
                    // Sent again after a reconnect; applied before.
                    return;
                }
                // A task's session is not resumed after a head restart (the
                // task runs again instead), so its batches are not logged:
                // they are acknowledged once applied.
                let (logged, ack) = if core.job_is_nested(job) { (0, Some(msg.seq)) } else { self.state.record_batch(job, &msg) };
                apply_driver_batch(core, job, msg, out);
                if logged > 0 {
                    self.state.count(core, job, logged);
                }
                if let Some(seq) = ack {
                    self.ack(job, seq);
                }
            }
            Cmd::DriverGone { job, tx, clean } => {
                // Only the current session of the job counts.
                if self.drivers.get(&job).is_some_and(|t| t.same_channel(&tx)) {
                    self.drivers.remove(&job);
                    if clean {
                        core.job_disconnected(job, out);
                    } else if core.job_is_nested(job) {
                        // A task's session: its executor died (it would
                        // not come back as a driver does). What it started
                        // is cancelled now; a retry of the task submits
                        // it again.
                        tracing::info!(job, "the session of a task was lost; ending its job and cancelling what it started");
                        core.job_disconnected(job, out);
                    } else {
                        tracing::info!(job, "driver connection lost; its job waits for it to reconnect");
                        core.job_detached(job, now);
                    }
                }
            }
            Cmd::Durable(acks) => {
                let drivers = &self.drivers;
                for (job, seq) in self.state.committed(acks, |j| drivers.contains_key(&j)) {
                    self.ack(job, seq);
                }
            }
            Cmd::Status { reply } => {
                let _ = reply.send(core.snapshot(now));
            }
            Cmd::State { query, reply } => {
                // After the burst's scheduling pass would be fresher, but
                // the loop is single-threaded: this is the state now.
                let _ = reply.send(super::state::answer(core, &mut out.events, &mut self.state_cache, query, now));
            }
            Cmd::Drain { node, reply } => {
                let _ = reply.send(core.drain(node, out));
            }
            Cmd::Stop => {}
        }
    }
}

/// Hands memory glibc's allocator holds free back to the system (it keeps
/// freed pages in its arenas; after a million-task job, tens of MiB).
/// Called only when the core's tables shrank. The `shoal` binary
/// allocates with jemalloc, which returns pages by itself; this is for
/// heads embedded in programs that use the system allocator.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    //! The loop's own logic (deduplication of resent batches, when a batch
    //! is acknowledged, compaction), driven with real cores and logs but
    //! channels instead of sockets.

    use super::*;
    use crate::core::{CoreConfig, NodeRegistration};
    use crate::durable::Log;
    use shoal_domain::{ObjectId, ResourceSet};
    use tokio::sync::oneshot;

    type Rx<T> = mpsc::UnboundedReceiver<Result<T, Status>>;

    fn new_loop(state: LoopState) -> Loop {
        Loop::new(Core::new(CoreConfig::default()), state, Duration::from_millis(500), AdmissionLimits::default(), 1000)
    }

    fn worker(l: &mut Loop) -> Rx<HeadToWorker> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (reply, mut got) = oneshot::channel();
        let reg = NodeRegistration { resources: ResourceSet::cpus(4.0), ..Default::default() };
        l.handle(Cmd::WorkerRegister { reg, tx, reply }, Instant::now());
        let (node, epoch) = got.try_recv().unwrap().unwrap();
        l.handle(Cmd::WorkerMsg { node, epoch, msg: pb::WorkerToHead { credits: 10_000, ..Default::default() } }, Instant::now());
        rx
    }

    fn driver(l: &mut Loop) -> (JobId, Sender<HeadToDriver>, Rx<HeadToDriver>) {
        let (job, tx, rx, _) = gated_driver(l);
        (job, tx, rx)
    }

    /// A driver, and the gate its session reads through.
    fn gated_driver(l: &mut Loop) -> (JobId, Sender<HeadToDriver>, Rx<HeadToDriver>, std::sync::Arc<super::super::admission::Gate>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (reply, mut got) = oneshot::channel();
        let gate = std::sync::Arc::new(super::super::admission::Gate::default());
        let hello = Cmd::DriverHello {
            binary: "b".into(),
            name: "test".into(),
            resume_job: 0,
            resume_secret: String::new(),
            parent_job: 0,
            tx: tx.clone(),
            gate: gate.clone(),
            reply,
        };
        l.handle(hello, Instant::now());
        let job = got.try_recv().unwrap().unwrap();
        (job, tx, rx, gate)
    }

    /// Driver batch `seq`: submits tasks `seqs` of `job` (and, first,
    /// declares its one function).
    fn batch(job: JobId, seq: u64, seqs: std::ops::Range<u64>) -> pb::DriverToHead {
        let functions =
            if seq == 1 { vec![pb::FunctionDef { name: "f".into(), resources: None, max_retries: 0, retry_exceptions: false }] } else { Vec::new() };
        let submit = seqs.map(|s| pb::TaskSubmit { id: ObjectId::new(job, s).0, func: 0, args: Vec::new(), ..Default::default() }).collect();
        pb::DriverToHead { seq, first_function: 0, functions, submit, ..Default::default() }
    }

    fn dispatched(rx: &mut Rx<HeadToWorker>) -> Vec<u64> {
        let mut v = Vec::new();
        while let Ok(Ok(m)) = rx.try_recv() {
            v.extend(m.tasks.iter().map(|t| t.task));
        }
        v
    }

    fn acks(rx: &mut Rx<HeadToDriver>) -> Vec<u64> {
        let mut v = Vec::new();
        while let Ok(Ok(m)) = rx.try_recv() {
            if m.acked > 0 {
                v.push(m.acked);
            }
        }
        v
    }

    fn log_in(dir: &std::path::Path) -> (Log, crate::durable::Replay, std::sync::mpsc::Receiver<Vec<(JobId, u64)>>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let (log, replay) = Log::open(dir, move |a| {
            let _ = tx.send(a);
        })
        .unwrap();
        (log, replay, rx)
    }

    #[test]
    fn a_driver_over_its_bound_is_held_until_its_queue_drains_below_90_percent() {
        let limits = AdmissionLimits { per_job: 100, total: 1_000 };
        let mut l = Loop::new(Core::new(CoreConfig::default()), LoopState::new(None, u64::MAX), Duration::from_millis(500), limits, 1000);
        let (job, _tx, _rx, gate) = gated_driver(&mut l);
        // What the session does as it forwards a message.
        let send = |l: &mut Loop, seq: u64, tasks: std::ops::Range<u64>| {
            gate.took(tasks.clone().count());
            l.handle(Cmd::DriverMsg { job, msg: batch(job, seq, tasks) }, Instant::now());
        };
        send(&mut l, 1, 1..61);
        l.flush();
        assert!(!l.admission.is_shut(job), "60 of 100: read on");
        send(&mut l, 2, 61..111);
        assert!(l.admission.is_shut(job), "the session holds itself once its credit (40) is spent, before the loop looks");
        l.flush();
        assert!(l.admission.is_shut(job));
        assert_eq!(l.core.unfinished_tasks(job), 110, "a message read is applied whole: past the bound by at most one message");
        // A worker joins and finishes tasks: the gate opens under 90 and not before.
        let mut w = worker(&mut l);
        l.flush();
        let sent = dispatched(&mut w);
        assert_eq!(sent.len(), 110);
        let finish = |l: &mut Loop, ids: &[u64]| {
            let results = ids
                .iter()
                .map(|t| pb::TaskResult { task: *t, outcome: Some(pb::task_result::Outcome::Value(bytes::Bytes::from_static(b"v"))), ..Default::default() })
                .collect();
            let node = *l.workers.keys().next().unwrap();
            let epoch = l.workers[&node].0;
            l.handle(Cmd::WorkerMsg { node, epoch, msg: pb::WorkerToHead { results, ..Default::default() } }, Instant::now());
            l.flush();
        };
        finish(&mut l, &sent[..20]);
        assert_eq!(l.core.unfinished_tasks(job), 90);
        assert!(l.admission.is_shut(job), "90 is not under 90%: still held");
        finish(&mut l, &sent[20..21]);
        assert!(!l.admission.is_shut(job), "89: read again");
    }

    #[test]
    fn a_batch_sent_again_after_a_reconnect_is_applied_once() {
        let mut l = new_loop(LoopState::new(None, u64::MAX));
        let mut w = worker(&mut l);
        let (job, ..) = driver(&mut l);
        l.handle(Cmd::DriverMsg { job, msg: batch(job, 1, 1..3) }, Instant::now());
        l.handle(Cmd::DriverMsg { job, msg: batch(job, 1, 1..3) }, Instant::now());
        l.flush();
        assert_eq!(dispatched(&mut w), vec![ObjectId::new(job, 1).0, ObjectId::new(job, 2).0], "each task once");
        l.handle(Cmd::DriverMsg { job, msg: batch(job, 2, 3..4) }, Instant::now());
        l.handle(Cmd::DriverMsg { job, msg: batch(job, 1, 1..3) }, Instant::now());
        l.flush();
        assert_eq!(dispatched(&mut w), vec![ObjectId::new(job, 3).0], "the next batch applies; an older one does not");
    }

    #[test]
    fn without_a_log_a_batch_is_acknowledged_as_it_is_applied() {
        let mut l = new_loop(LoopState::new(None, u64::MAX));
        let (job, _tx, mut d) = driver(&mut l);
        l.handle(Cmd::DriverMsg { job, msg: batch(job, 1, 1..2) }, Instant::now());
        l.flush();
        assert_eq!(acks(&mut d), vec![1]);
    }

    #[test]
    fn with_a_log_a_batch_is_acknowledged_only_once_committed_and_a_reconnect_learns_it() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, committed) = log_in(dir.path());
        let mut l = new_loop(LoopState::new(Some(log), u64::MAX));
        let (job, tx, mut d) = driver(&mut l);
        let secret = d.try_recv().unwrap().unwrap().welcome.map(|w| w.resume_secret).unwrap_or_default();
        assert_eq!(secret.len(), 64, "a new job gets a secret");
        l.handle(Cmd::DriverMsg { job, msg: batch(job, 1, 1..2) }, Instant::now());
        l.flush();
        assert!(acks(&mut d).is_empty(), "applied but not yet durable: no acknowledgement");
        let done = committed.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(done, vec![(job, 1)]);
        l.handle(Cmd::Durable(done), Instant::now());
        l.flush();
        assert_eq!(acks(&mut d), vec![1]);
        // A commit for a job nobody knows (it ended) sends nothing.
        l.handle(Cmd::Durable(vec![(job + 7, 3)]), Instant::now());
        l.flush();
        assert!(l.out.drivers.is_empty());
        // The connection breaks; the driver comes back and is told what
        // the head has, so it resends only what came after.
        l.handle(Cmd::DriverGone { job, tx, clean: false }, Instant::now());
        // Another driver guessing the job id is refused.
        let (tx3, _d3) = mpsc::unbounded_channel();
        let (reply, mut got) = oneshot::channel();
        let hijack = Cmd::DriverHello {
            binary: "b".into(),
            name: "x".into(),
            resume_job: job,
            resume_secret: "0".repeat(64),
            parent_job: 0,
            tx: tx3,
            gate: Default::default(),
            reply,
        };
        l.handle(hijack, Instant::now());
        assert_eq!(got.try_recv().unwrap().unwrap_err().code(), tonic::Code::PermissionDenied);
        let (tx2, mut d2) = mpsc::unbounded_channel();
        let (reply, mut got) = oneshot::channel();
        l.handle(
            Cmd::DriverHello {
                binary: "b".into(),
                name: "test".into(),
                resume_job: job,
                resume_secret: secret,
                parent_job: 0,
                tx: tx2,
                gate: Default::default(),
                reply,
            },
            Instant::now(),
        );
        assert_eq!(got.try_recv().unwrap().unwrap(), job);
        let welcome = d2.try_recv().unwrap().unwrap();
        assert_eq!((welcome.welcome.map(|w| w.job), welcome.acked), (Some(job), 1));
    }

    /// A caller adopted an item of its generator's session, which ended
    /// since: a restarted head replays the adoption (the producer's id is
    /// of a job the replay has not reached, or never will).
    #[test]
    fn an_adopted_item_is_kept_after_a_restart() {
        let started =
            pb::LogRecord { kind: Some(pb::log_record::Kind::Job(pb::JobStarted { job: 1, binary: "ab".repeat(32), name: "n".into(), ..Default::default() })) };
        let item = ObjectId::new(2, 1);
        let adopt = pb::DriverToHead {
            seq: 1,
            adopt: vec![pb::PutObject { id: item.0, value: bytes::Bytes::from_static(b"\x07"), ..Default::default() }],
            ..Default::default()
        };
        let adopted = pb::LogRecord { kind: Some(pb::log_record::Kind::Batch(adopt)) };
        let replay = crate::durable::Replay { next_job: 3, jobs: [(1, vec![started, adopted])].into_iter().collect() };
        let mut core = Core::new(CoreConfig::default());
        let mut state = LoopState::new(None, u64::MAX);
        super::super::persistence::restore(&mut core, &mut state, replay, Duration::from_secs(1));
        assert_eq!(core.object_count(), 1, "the adopted item is back");
        core.borrow(1, &[(item, false)], &mut crate::server::outbox::BatchingOutbox::new(0));
        assert_eq!(core.object_count(), 0, "borrowed by its adopter, freed when it lets go");
    }

    #[test]
    fn a_jobs_log_is_compacted_once_its_history_outgrows_its_state_and_replays_to_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, committed) = log_in(dir.path());
        let mut l = new_loop(LoopState::new(Some(log), 4 << 10));
        let (job, ..) = driver(&mut l);
        // 200 batches of 5 tasks: about 40 KB of history for 1000 tasks.
        for seq in 1..=200u64 {
            l.handle(Cmd::DriverMsg { job, msg: batch(job, seq, seq * 5..seq * 5 + 5) }, Instant::now());
        }
        l.flush();
        let (history, snapshot) = l.state.log_size(job);
        assert!(snapshot > 0, "the log was compacted");
        assert!(history < 2 * snapshot + (4 << 10), "history since the last snapshot stays bounded: {history} vs snapshot {snapshot}");
        let tasks = l.core.task_count();
        assert_eq!(tasks, 1000);
        // Close the log (everything appended is committed), read it back.
        drop(committed);
        l.state.close_log();
        let (_log, replay, _) = log_in(dir.path());
        let records = replay.jobs.get(&job).map_or(0, |r| r.len());
        assert!(records < 200, "the replay reads a snapshot and a tail, not every batch ({records} records)");
        let mut core = Core::new(CoreConfig::default());
        let mut state = LoopState::new(None, u64::MAX);
        super::super::persistence::restore(&mut core, &mut state, replay, Duration::from_secs(1));
        assert_eq!(core.task_count(), tasks, "the same tasks after a restart");
        assert!(!state.admit(job, 200), "batches in the snapshot count as applied");
        assert!(state.admit(job, 201));
    }
}
