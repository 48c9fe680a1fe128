//! Self-checks of the worker core, for tests: what must hold after every
//! event, whatever the order of events.

use super::*;
use shoal_domain::actor::ActorPart;

impl<S: LocalStore> WorkerCore<S> {
    /// Checks the core's own consistency; the first broken rule, if any.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = HashSet::new();
        for l in &self.queue {
            if !seen.insert(l.d.task) {
                return Err(format!("task {} is held twice", l.d.task));
            }
            if l.built.is_some() {
                return Err(format!("queued task {} still carries a built message (pins of an executor)", l.d.task));
            }
        }
        let mut held = ResourceSet::default();
        for (id, e) in &self.executors {
            for l in &e.inflight {
                if !seen.insert(l.d.task) {
                    return Err(format!("task {} is held twice (seen again on {id})", l.d.task));
                }
                if l.built.is_none() {
                    return Err(format!("task {} on {id} was never built", l.d.task));
                }
                // An actor serves calls from any job; nothing else crosses jobs.
                match l.d.actor {
                    ActorPart::Call(a) if e.actor != Some(a) => {
                        return Err(format!("call {} on actor {a} is on {id}, which serves {:?}", l.d.task, e.actor));
                    }
                    ActorPart::Call(_) => {}
                    _ if l.d.job != e.job => return Err(format!("task {} of job {} runs on {id} of job {}", l.d.task, l.d.job, e.job)),
                    _ => {}
                }
                if e.actor.is_some() && !matches!(l.d.actor, ActorPart::Call(_)) && Some(l.d.task) != e.actor {
                    return Err(format!("task {} runs on {id}, an actor's process", l.d.task));
                }
            }
            if e.idle() && !e.held.is_empty() {
                return Err(format!("idle {id} still holds {}", e.held));
            }
            if e.unsent > e.inflight.len() {
                return Err(format!("{id} has {} unsent of {} tasks", e.unsent, e.inflight.len()));
            }
            if !e.connected && e.unsent != e.inflight.len() {
                return Err(format!("{id} has not said hello but {} of its {} tasks were sent", e.inflight.len() - e.unsent, e.inflight.len()));
            }
            if e.lent == Lent::No {
                held.add(&e.held);
            }
            if e.blocked && e.lent == Lent::No {
                return Err(format!("blocked {id} still holds {}", e.held));
            }
        }
        let mut total = self.free.clone();
        total.add(&held);
        let want = &self.config.resources;
        if (total.cpus - want.cpus).abs() > 1e-6 || !total.fits_in(want) || !want.fits_in(&total) {
            return Err(format!("free {} + held {held} != offered {want}", self.free));
        }
        if self.free.cpus < -1e-9 {
            return Err(format!("negative free resources {}", self.free));
        }
        Ok(())
    }

    /// Every task this worker holds or has a result for, not yet reported.
    pub fn held_tasks(&self) -> Vec<TaskId> {
        let mut v: Vec<TaskId> = self.queue.iter().map(|l| l.d.task).collect();
        v.extend(self.executors.values().flat_map(|e| e.inflight.iter().map(|l| l.d.task)));
        v.extend(self.results.iter().map(|(t, _)| *t));
        v
    }

    /// Pins the core believes it holds in the store, per object.
    pub fn pins_held(&self) -> HashMap<ObjectId, usize> {
        let mut m = HashMap::new();
        for e in self.executors.values() {
            for p in &e.pins {
                *m.entry(*p).or_default() += 1;
            }
        }
        m
    }

    /// Executors alive, for tests: `(id, job, connected, tasks held)`.
    pub fn executors(&self) -> Vec<(ExecId, JobId, bool, usize)> {
        let mut v: Vec<_> = self.executors.iter().map(|(id, e)| (*id, e.job, e.connected, e.inflight.len())).collect();
        v.sort_unstable_by_key(|x| x.0);
        v
    }

    /// Tasks held by executor `id` and sent to it (not those waiting for
    /// its hello or the next placement pass), in the order it runs them.
    pub fn executor_tasks_sent(&self, id: ExecId) -> Vec<TaskId> {
        self.executors.get(&id).map(|e| e.inflight.iter().take(e.inflight.len() - e.unsent).map(|l| l.d.task).collect()).unwrap_or_default()
    }

    /// Whether executor `id` serves an actor.
    pub fn is_actor_exec(&self, id: ExecId) -> bool {
        self.executors.get(&id).is_some_and(|e| e.actor.is_some())
    }

    /// Tasks waiting in the local queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}
