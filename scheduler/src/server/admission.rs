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
use tokio::sync::watch;

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

/// The gates of the root drivers' sessions, and which are shut.
#[derive(Default)]
pub(super) struct Admission {
    limits: AdmissionLimits,
    gates: HashMap<JobId, watch::Sender<bool>>,
    /// Jobs that submitted in this burst.
    touched: Vec<JobId>,
    shut: Vec<JobId>,
}

impl Admission {
    pub(super) fn new(limits: AdmissionLimits) -> Self {
        Self { limits, ..Default::default() }
    }

    /// `job`'s (new or resumed) session reads while `gate` is open.
    pub(super) fn attach(&mut self, job: JobId, gate: watch::Sender<bool>) {
        let _ = gate.send(true);
        self.gates.insert(job, gate);
        self.shut.retain(|j| *j != job);
    }

    pub(super) fn detach(&mut self, job: JobId) {
        self.gates.remove(&job);
        self.shut.retain(|j| *j != job);
        self.touched.retain(|j| *j != job);
    }

    /// `job`'s driver sent tasks.
    pub(super) fn submitted(&mut self, job: JobId) {
        if self.gates.contains_key(&job) && !self.touched.contains(&job) {
            self.touched.push(job);
        }
    }

    /// After a burst: shuts the gates of jobs over a bound, opens those back
    /// under 90% of it. Costs the jobs touched plus the jobs held.
    pub(super) fn review(&mut self, core: &Core) {
        let (per_job, total) = (self.limits.per_job, self.limits.total);
        let all = core.unfinished_total();
        for job in std::mem::take(&mut self.touched) {
            let n = core.unfinished_tasks(job);
            if (n > per_job || all > total) && !self.shut.contains(&job) {
                if let Some(g) = self.gates.get(&job) {
                    let _ = g.send(false);
                }
                tracing::info!(job, unfinished = n, all, per_job, total, "holding a driver's submissions until its queue drains (admission control)");
                self.shut.push(job);
            }
        }
        if self.shut.is_empty() {
            return;
        }
        let under = |n: u64, bound: u64| n <= bound / 10 * 9;
        let gates = &self.gates;
        self.shut.retain(|&job| {
            if under(core.unfinished_tasks(job), per_job) && under(all, total) {
                if let Some(g) = gates.get(&job) {
                    let _ = g.send(true);
                }
                tracing::debug!(job, "reading a held driver again");
                false
            } else {
                true
            }
        });
    }

    #[cfg(test)]
    pub(super) fn is_shut(&self, job: JobId) -> bool {
        self.shut.contains(&job)
    }
}

/// Waits while a session's gate is shut (a closed channel counts as open:
/// the loop is gone and the session ends anyway).
pub(super) async fn wait_open(gate: &mut watch::Receiver<bool>) {
    while !*gate.borrow_and_update() {
        if gate.changed().await.is_err() {
            return;
        }
    }
}
