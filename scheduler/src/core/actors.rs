//! Actors in the head's core: where each actor is in its life, its calls
//! not yet sent, its name.
//!
//! An actor *is* its creation task: a dedicated task that never finishes
//! while the actor lives, holding its resources on its node. Its death
//! under a node or an executor is a failure of that task, and a restart is
//! that task's retry (`max_retries` is the actor's `max_restarts`). Method
//! calls are tasks too (results, arguments, refs and lineage as any
//! task's), but they wait in their actor's queue instead of the ready
//! queue, and go to the actor's node in the order the head received them,
//! without credits or resources (the actor holds those).

use super::{Core, IdMap, Outbox, TaskState};
use shoal_domain::actor::{ActorPart, ActorSpec, ActorState, ActorStatus};
use shoal_domain::task::Dispatch;
use shoal_domain::{Failure, FailureKind, JobId, NodeId, TaskId};
use std::collections::{HashMap, VecDeque};

/// One actor.
pub(super) struct Actor {
    /// The job that made it: it ends with it.
    pub(super) job: JobId,
    pub(super) spec: ActorSpec,
    pub(super) life: Life,
    /// Times it was started again after dying.
    pub(super) restarts: u32,
    /// Calls not yet sent to its node, in the order they arrived.
    pub(super) queue: VecDeque<TaskId>,
    /// `shoal::kill` asked for its end: it is not restarted.
    pub(super) killed: bool,
    /// Its job ended (it was not detached): ended like a kill.
    pub(super) job_ended: bool,
}

/// Where an actor is in its life.
pub(super) enum Life {
    /// Its creation task waits for a node (first start or restart).
    Pending,
    /// Its creation task was sent to the node in this slot.
    Alive(u32),
    /// Gone for good: calls fail with this.
    Dead(Box<Failure>),
}

/// The head's actors.
#[derive(Default)]
pub(super) struct Actors {
    pub(super) by_id: IdMap<TaskId, Actor>,
    /// `namespace/name` of live named actors.
    pub(super) names: HashMap<String, TaskId>,
    /// Actors whose queue may have calls to send.
    pub(super) to_pump: Vec<TaskId>,
    /// Lingering jobs whose last detached actor died: they end now.
    pub(super) jobs_to_end: Vec<JobId>,
    /// Why actors whose job has ended died, kept after their records go
    /// so that a handle still held elsewhere learns the real cause (it
    /// was killed, it panicked) rather than "no such actor". Bounded:
    /// the oldest are forgotten first.
    pub(super) graves: Graves,
}

/// The last [`Graves::KEEP`] dead actors' failures, oldest forgotten first.
#[derive(Default)]
pub(super) struct Graves {
    by_id: IdMap<TaskId, Failure>,
    order: VecDeque<TaskId>,
}

impl Graves {
    /// How many dead actors' causes are kept after their jobs end.
    pub(super) const KEEP: usize = 4096;

    fn bury(&mut self, id: TaskId, why: Failure) {
        if self.by_id.insert(id, why).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > Self::KEEP {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
    }

    fn get(&self, id: &TaskId) -> Option<&Failure> {
        self.by_id.get(id)
    }
}

fn died(message: String) -> Failure {
    Failure::new(FailureKind::ActorDied, message)
}

impl Core {
    /// A creation task was submitted: the actor exists from now on,
    /// waiting for a node. Returns why it cannot be created (its name is
    /// taken by a live actor).
    pub(super) fn actor_created(&mut self, job: JobId, id: TaskId, spec: ActorSpec) -> Result<(), Failure> {
        let key = spec.key();
        if let Some(k) = &key
            && let Some(other) = self.actors.names.get(k)
        {
            // It exists, dead from the start: its calls say why.
            let f = died(format!("actor {id} ({}) was never started: the name {k:?} is taken by live actor {other}", spec.class));
            let life = Life::Dead(Box::new(f.clone()));
            self.actors.by_id.insert(id, Actor { job, spec, life, restarts: 0, queue: VecDeque::new(), killed: false, job_ended: false });
            return Err(f);
        }
        if let Some(k) = key {
            self.actors.names.insert(k, id);
        }
        tracing::info!(actor = %id, class = %spec.class, name = %spec.name, "actor created");
        self.actors.by_id.insert(id, Actor { job, spec, life: Life::Pending, restarts: 0, queue: VecDeque::new(), killed: false, job_ended: false });
        Ok(())
    }

    /// Whether a new call to `actor` can be queued; else why it fails.
    pub(super) fn actor_accepts(&self, actor: TaskId) -> Result<(), Failure> {
        match self.actors.by_id.get(&actor).map(|a| &a.life) {
            None => Err(self.actors.graves.get(&actor).cloned().unwrap_or_else(|| died(format!("no actor {actor} exists (never created, or its job ended)")))),
            Some(Life::Dead(f)) => Err((**f).clone()),
            Some(_) => Ok(()),
        }
    }

    /// Why calls to `actor` fail, if it is dead.
    pub(super) fn actor_death(&self, actor: TaskId) -> Option<Failure> {
        match self.actors.by_id.get(&actor).map(|a| &a.life) {
            Some(Life::Dead(f)) => Some((**f).clone()),
            Some(_) => None,
            None => self.actors.graves.get(&actor).cloned(),
        }
    }

    /// The actor task `tid` calls, if it is a method call.
    pub(super) fn actor_of(&self, tid: TaskId) -> Option<TaskId> {
        self.tasks.get(&tid).and_then(|t| t.actor_of())
    }

    /// Call `tid` of `actor` is ready (or waiting for inputs) and not on a
    /// node: it joins the actor's queue, at the back (new) or the front
    /// (back from a node that died).
    pub(super) fn queue_call(&mut self, actor: TaskId, tid: TaskId, front: bool, out: &mut impl Outbox) {
        if let Some(a) = self.actors.by_id.get_mut(&actor)
            && !matches!(a.life, Life::Dead(_))
        {
            if front {
                a.queue.push_front(tid);
            } else {
                a.queue.push_back(tid);
            }
            self.actors.to_pump.push(actor);
            return;
        }
        let f = self.actor_death(actor).unwrap_or_else(|| died(format!("actor {actor} is gone")));
        self.fail_task(tid, f, out);
    }

    /// A call's inputs are all there now: its actor may send it.
    pub(super) fn call_ready(&mut self, actor: TaskId) {
        self.actors.to_pump.push(actor);
    }

    /// Sends queued calls of the actors that may have some to their
    /// actors' nodes, in order, while the call at the front is ready.
    pub(super) fn pump_actors(&mut self, out: &mut impl Outbox) {
        let mut todo = std::mem::take(&mut self.actors.to_pump);
        todo.sort_unstable();
        todo.dedup();
        for aid in todo {
            while let Some(a) = self.actors.by_id.get_mut(&aid) {
                // A killed actor gets nothing more: its queue fails when
                // its death is reported.
                let (Life::Alive(slot), false) = (&a.life, a.killed) else { break };
                let slot = *slot;
                let Some(&tid) = a.queue.front() else { break };
                match self.tasks.get(&tid).map(|t| t.state) {
                    // Gone meanwhile (cancelled, its job ended).
                    None | Some(TaskState::Dispatched(_)) => {
                        a.queue.pop_front();
                    }
                    Some(TaskState::Waiting) => break,
                    Some(TaskState::Ready) => {
                        a.queue.pop_front();
                        let Some(node) = self.slots.get(slot as usize).copied() else { break };
                        self.dispatch_call(tid, aid, node, out);
                    }
                }
            }
        }
    }

    /// Sends call `tid` to the node running `actor`.
    fn dispatch_call(&mut self, tid: TaskId, actor: TaskId, node_id: NodeId, out: &mut impl Outbox) {
        let Some(args) = self.args_to_send(tid, out) else {
            // Waiting for an input being rebuilt: at the front of its line.
            if self.tasks.contains_key(&tid)
                && let Some(a) = self.actors.by_id.get_mut(&actor)
            {
                a.queue.push_front(tid);
            }
            return;
        };
        let (Some(task), Some(node)) = (self.tasks.get_mut(&tid), self.nodes.get_mut(&node_id)) else { return };
        if !node.alive {
            return;
        }
        let Some(job) = self.jobs.get(&task.job) else { return };
        super::send_job_info(node, node_id, task.job, task.func, job, out);
        node.assigned.insert(tid);
        task.attempts = task.attempts.saturating_add(1);
        task.state = TaskState::Dispatched(node.slot);
        self.counts.queued = self.counts.queued.saturating_sub(1);
        self.counts.running += 1;
        let d = Dispatch {
            task: tid,
            job: task.job,
            func: task.func,
            args,
            attempt: task.attempts as u32,
            resources: None,
            dedicated: false,
            actor: ActorPart::Call(actor),
        };
        out.task_event(tid, task.func, super::TaskEvent::Dispatched { node: node_id });
        out.dispatch(node_id, d);
    }

    /// The creation task of `actor` was sent to the node in `slot`: its
    /// calls may follow it there.
    pub(super) fn actor_placed(&mut self, actor: TaskId, slot: u32) -> Option<ActorPart> {
        let a = self.actors.by_id.get_mut(&actor)?;
        a.life = Life::Alive(slot);
        self.actors.to_pump.push(actor);
        Some(ActorPart::Create { max_concurrency: a.spec.max_concurrency.max(1) })
    }

    /// The creation task of `actor` is queued again (its node or process
    /// died, within its restarts): calls wait for the new instance.
    pub(super) fn actor_restarting(&mut self, actor: TaskId) {
        if let Some(a) = self.actors.by_id.get_mut(&actor) {
            a.restarts += 1;
            a.life = Life::Pending;
            tracing::warn!(actor = %actor, class = %a.spec.class, restarts = a.restarts, "actor restarting");
        }
    }

    /// The creation task of `actor` ended for good with `why`: the actor
    /// is dead, its queued calls fail, later ones fail at once.
    pub(super) fn actor_ended(&mut self, actor: TaskId, why: &Failure, out: &mut impl Outbox) {
        let Some(a) = self.actors.by_id.get_mut(&actor) else { return };
        if matches!(a.life, Life::Dead(_)) {
            return;
        }
        let cause = if a.job_ended {
            "its job ended".to_string()
        } else if a.killed {
            "it was killed".to_string()
        } else {
            match why.kind {
                FailureKind::Panicked => format!("its constructor panicked: {}{}", why.message, at(&why.location)),
                FailureKind::WorkerDied if a.restarts > 0 => format!("it died and ran out of restarts ({} used): {}", a.restarts, why.message),
                FailureKind::WorkerDied => format!("it died (no restarts allowed): {}", why.message),
                FailureKind::Cancelled => "its job ended".to_string(),
                _ => format!("it could not start: {} ({})", why.message, why.kind),
            }
        };
        let mut f = died(format!("actor {actor} ({}) is dead: {cause}", a.spec.class));
        f.node = why.node.clone();
        f.function = a.spec.class.clone();
        tracing::warn!(actor = %actor, class = %a.spec.class, %cause, "actor dead");
        a.life = Life::Dead(Box::new(f.clone()));
        let queued = std::mem::take(&mut a.queue);
        if let Some(k) = a.spec.key()
            && self.actors.names.get(&k) == Some(&actor)
        {
            self.actors.names.remove(&k);
        }
        let job = a.job;
        for tid in queued {
            self.fail_task(tid, f.clone(), out);
        }
        if self.jobs.get(&job).is_some_and(|j| j.lingering) && !self.has_live_detached_actors(job) {
            self.actors.jobs_to_end.push(job);
        }
    }

    /// Whether `job` made detached actors that are not dead.
    pub(super) fn has_live_detached_actors(&self, job: JobId) -> bool {
        self.actors.by_id.values().any(|a| a.job == job && a.spec.detached && !matches!(a.life, Life::Dead(_)))
    }

    /// `job`'s driver is gone but its detached actors are not: everything
    /// else of it ends (tasks cancelled, its objects released, its other
    /// actors ended); the job record, its functions and those actors stay
    /// until the last of them dies. Jobs its tasks started stay too (a
    /// detached actor's own session is one of them).
    pub(super) fn linger(&mut self, job: JobId, out: &mut impl Outbox) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        j.lingering = true;
        j.detached_since = None;
        let keep: Vec<TaskId> =
            self.actors.by_id.iter().filter(|(_, a)| a.job == job && a.spec.detached && !matches!(a.life, Life::Dead(_))).map(|(id, _)| *id).collect();
        tracing::info!(job, detached_actors = keep.len(), "the job's driver is gone; it lingers for its detached actors");
        // Its other actors end with it.
        let others: Vec<TaskId> =
            self.actors.by_id.iter().filter(|(id, a)| a.job == job && !keep.contains(id) && !matches!(a.life, Life::Dead(_))).map(|(id, _)| *id).collect();
        for aid in &others {
            if let Some(a) = self.actors.by_id.get_mut(aid) {
                a.job_ended = true;
            }
        }
        self.kill_actors(&others, out);
        // Nobody holds its results or objects any more.
        let mine: Vec<TaskId> = self.tasks.iter().filter(|(id, t)| t.job == job && !keep.contains(id) && !others.contains(id)).map(|(id, _)| *id).collect();
        for id in &mine {
            if let Some(t) = self.tasks.get_mut(id) {
                t.driver_ref = false;
            }
        }
        for id in mine {
            let Some(state) = self.tasks.get(&id).map(|t| t.state) else { continue };
            if let TaskState::Dispatched(slot) = state
                && let Some(node) = self.slots.get(slot as usize)
            {
                out.cancel(*node, id);
            }
            self.fail_task(id, Failure::new(FailureKind::Cancelled, "its job ended"), out);
        }
        for id in &keep {
            if let Some(t) = self.tasks.get_mut(id) {
                t.driver_ref = false;
            }
        }
        let objects: Vec<TaskId> = self.objects.iter().filter(|(id, o)| id.job() == job && o.driver_ref).map(|(id, _)| *id).collect();
        for id in objects {
            if let Some(o) = self.objects.get_mut(&id) {
                o.driver_ref = false;
            }
            self.maybe_free(id, out);
        }
        out.job_lingering(job);
    }

    /// `shoal::kill`: the actor ends now and is not restarted; its
    /// pending calls fail. Any job holding a handle may kill it.
    pub fn kill_actors(&mut self, ids: &[TaskId], out: &mut impl Outbox) {
        for &aid in ids {
            let Some(a) = self.actors.by_id.get_mut(&aid) else { continue };
            if matches!(a.life, Life::Dead(_)) {
                continue;
            }
            a.killed = true;
            tracing::info!(actor = %aid, class = %a.spec.class, "killing actor");
            match self.tasks.get_mut(&aid).map(|t| (t.state, t)) {
                Some((TaskState::Dispatched(slot), t)) => {
                    t.cancel_requested = true;
                    if let Some(node) = self.slots.get(slot as usize) {
                        out.cancel(*node, aid);
                    }
                }
                Some(_) => self.fail_task(aid, Failure::new(FailureKind::Cancelled, "killed"), out),
                None => self.actor_ended(aid, &Failure::new(FailureKind::Cancelled, "killed"), out),
            }
        }
    }

    /// Job `job` ended: its actors end with it; its calls leave other
    /// actors' queues. (Its tasks are already gone from the task table.)
    pub(super) fn actors_job_ended(&mut self, job: JobId, out: &mut impl Outbox) {
        let mine: Vec<TaskId> = self.actors.by_id.iter().filter(|(_, a)| a.job == job).map(|(id, _)| *id).collect();
        for aid in mine {
            self.actor_ended(aid, &Failure::new(FailureKind::Cancelled, "its job ended"), out);
            if let Some(Actor { life: Life::Dead(f), .. }) = self.actors.by_id.remove(&aid) {
                self.actors.graves.bury(aid, *f);
            }
        }
        for a in self.actors.by_id.values_mut() {
            a.queue.retain(|t| t.job() != job);
        }
    }

    /// Actors as the cluster status shows them.
    pub(super) fn actor_statuses(&self) -> Vec<ActorStatus> {
        let mut v: Vec<ActorStatus> = self
            .actors
            .by_id
            .iter()
            .map(|(id, a)| ActorStatus {
                id: *id,
                class: a.spec.class.clone(),
                name: a.spec.name.clone(),
                namespace: a.spec.namespace.clone(),
                state: match a.life {
                    Life::Pending => ActorState::Pending,
                    Life::Alive(_) => ActorState::Alive,
                    Life::Dead(_) => ActorState::Dead,
                },
                node: match a.life {
                    Life::Alive(slot) => self.slots.get(slot as usize).copied(),
                    _ => None,
                },
                restarts: a.restarts,
                death: match &a.life {
                    Life::Dead(f) => f.message.clone(),
                    _ => String::new(),
                },
                detached: a.spec.detached,
                max_task_retries: a.spec.max_task_retries,
            })
            .collect();
        v.sort_by_key(|a| a.id);
        v
    }

    /// The actor whose creation task is `tid`, if any.
    pub(super) fn is_actor(&self, tid: TaskId) -> bool {
        self.actors.by_id.contains_key(&tid)
    }
}

fn at(location: &str) -> String {
    if location.is_empty() { String::new() } else { format!(" at {location}") }
}
