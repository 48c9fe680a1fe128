//! Sizing rules for keeping executors busy without hoarding work. Pure
//! functions of measured task time, unit-tested.

use std::time::Duration;

/// Work an executor should have queued ahead: enough tasks to cover this
/// much time, so per-message overhead is amortised for tiny tasks while a
/// long task never has others stuck behind it.
const PIPELINE_TARGET: Duration = Duration::from_millis(2);
/// Upper bound on tasks queued in one executor.
pub const MAX_DEPTH: usize = 256;

/// Exponential moving average of task service time.
#[derive(Clone, Copy, Debug)]
pub struct ServiceTime {
    ema_secs: f64,
}

impl Default for ServiceTime {
    fn default() -> Self {
        // Start pessimistic (as if tasks were long): no hoarding until the
        // first measurements say tasks are short.
        ServiceTime { ema_secs: 0.01 }
    }
}

impl ServiceTime {
    /// Adds one measurement.
    pub fn observe(&mut self, d: Duration) {
        self.ema_secs = 0.8 * self.ema_secs + 0.2 * d.as_secs_f64();
    }

    /// Tasks an executor should hold (running + queued).
    pub fn depth(&self) -> usize {
        let d = PIPELINE_TARGET.as_secs_f64() / self.ema_secs.max(1e-7);
        (d as usize).clamp(1, MAX_DEPTH)
    }
}

/// Tasks the worker should hold in total (queued locally, in executors, or
/// promised by credits not yet used): every slot full to its depth, plus
/// one spare per slot so a slot that frees finds work already here.
pub fn wanted(slots: usize, depth: usize) -> usize {
    slots.max(1) * (depth + 1) + 2
}

/// Credits to grant now, or 0 to wait and grant a larger batch later.
pub fn grant(wanted: usize, held: usize, outstanding: usize) -> u32 {
    let short = wanted.saturating_sub(held);
    if short == 0 {
        return 0;
    }
    // Avoid a message per finished task: top up when a quarter is missing,
    // or at once when the head owes us nothing.
    if outstanding == 0 || short * 4 >= wanted { short as u32 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_tracks_task_length() {
        let mut s = ServiceTime::default();
        assert_eq!(s.depth(), 1, "long tasks: one at a time");
        for _ in 0..100 {
            s.observe(Duration::from_micros(5));
        }
        assert_eq!(s.depth(), MAX_DEPTH, "no-op tasks: deep pipeline");
        for _ in 0..100 {
            s.observe(Duration::from_micros(500));
        }
        assert_eq!(s.depth(), 4);
    }

    #[test]
    fn credits_batch_but_never_starve() {
        assert_eq!(wanted(2, 1), 6);
        assert_eq!(grant(6, 0, 0), 6);
        assert_eq!(grant(6, 6, 2), 0);
        assert_eq!(grant(100, 99, 5), 0, "a small shortfall waits while credits are outstanding");
        assert_eq!(grant(100, 99, 0), 1, "but never when nothing is promised");
        assert_eq!(grant(100, 70, 10), 30);
    }
}
