//! Admission control: a driver that has too many unfinished tasks (or a
//! head that has too many in all) stops being read until the queue drains,
//! so submission waits at the driver (HTTP/2 flow control pushes back)
//! instead of the head growing without limit.
//!
//! Only root drivers are gated. A task's own session (nested tasks) is
//! never held: its parent is running and may be waiting for exactly those
//! children, so holding it could deadlock a recursive program. A message
//! the head has already read is always applied whole; the bound is checked
//! after each burst of messages, so a job may pass it by one burst.

use crate::core::{Core, JobId};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// The bounds. Reading resumes below 90% of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Unfinished tasks one job may have before its driver is held.
    pub per_job: u64,
    /// Unfinished tasks of all jobs before every driver is held.
    pub total: u64,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        Self { per_job: 1_000_000, total: 4_000_000 }
    }
}

/// What a root driver's session reads through: how many more tasks it
/// may forward before it waits. The loop sets it after every burst; the
/// session takes from it as it forwards, so the head passes a bound by at
/// most the one message read when the credit ran out.
#[derive(Debug)]
pub struct Gate {
    credit: AtomicI64,
    wake: tokio::sync::Notify,
}

impl Default for Gate {
    fn default() -> Self {
        Self { credit: AtomicI64::new(i64::MAX / 2), wake: tokio::sync::Notify::new() }
    }
}

impl Gate {
    /// Waits until the session may read again.
    pub(super) async fn open(&self) {
        loop {
            let woken = self.wake.notified();
            if self.credit.load(Ordering::Acquire) > 0 {
                return;
            }
            woken.await;
        }
    }

    /// The session forwarded `tasks` submissions.
    pub(super) fn took(&self, tasks: usize) {
        self.credit.fetch_sub(tasks as i64, Ordering::AcqRel);
    }

    fn set(&self, credit: i64) {
        self.credit.store(credit, Ordering::Release);
        if credit > 0 {
            self.wake.notify_one();
        }
    }

    fn is_shut(&self) -> bool {
        self.credit.load(Ordering::Acquire) <= 0
    }
}

/// The gates of the root drivers' sessions.
#[derive(Default)]
pub(super) struct Admission {
    limits: AdmissionLimits,
    gates: HashMap<JobId, Arc<Gate>>,
    /// Jobs known to be held (for the log).
    held: std::collections::HashSet<JobId>,
}

impl Admission {
    pub(super) fn new(limits: AdmissionLimits) -> Self {
        Self { limits, ..Default::default() }
    }

    /// `job`'s (new or resumed) session reads through `gate`.
    pub(super) fn attach(&mut self, job: JobId, gate: Arc<Gate>) {
        self.gates.insert(job, gate);
    }

    pub(super) fn detach(&mut self, job: JobId) {
        self.gates.remove(&job);
        self.held.remove(&job);
    }

    /// After a burst: gives each driver the room its job and the head have
    /// left. A held driver gets room again only once its queue is under
    /// 90% of the bound, so it is not woken for a handful of tasks at a
    /// time. Costs the connected root drivers.
    pub(super) fn review(&mut self, core: &Core) {
        let (per_job, total) = (self.limits.per_job as i64, self.limits.total as i64);
        let all = core.unfinished_total() as i64;
        for (&job, gate) in &self.gates {
            let n = core.unfinished_tasks(job) as i64;
            let shut = gate.is_shut();
            let slack = if shut { (per_job / 10, total / 10) } else { (0, 0) };
            let room = (per_job - slack.0 - n).min(total - slack.1 - all);
            if room > 0 || !shut {
                gate.set(room);
            }
            match (gate.is_shut(), self.held.contains(&job)) {
                (true, false) => {
                    tracing::info!(job, unfinished = n, all, per_job, total, "holding a driver's submissions until its queue drains (admission control)");
                    self.held.insert(job);
                }
                (false, true) => {
                    tracing::info!(job, unfinished = n, "reading a held driver again");
                    self.held.remove(&job);
                }
                _ => {}
            }
        }
    }

    #[cfg(test)]
    pub(super) fn is_shut(&self, job: JobId) -> bool {
        self.gates.get(&job).is_some_and(|g| g.is_shut())
    }
}
