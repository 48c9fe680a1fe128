//! What must hold between any two events, checked by the fault-schedule
//! tests after every step (and available to fuzz targets). Each check
//! names what it saw, so a failing seed explains itself.

use super::*;

impl Core {
    /// Checks the core's invariants; `Err` says which one broke and where.
    ///
    /// - every queued-as-ready task is in the ready queue and its inputs
    ///   are all there (finished, not failed, readable from an alive node);
    /// - a waiting task waits on exactly its unfinished inputs, and each of
    ///   them lists it as a dependent as often as it is an argument;
    /// - a dispatched task is assigned to exactly the alive node its state
    ///   names, and nodes hold only such tasks, their resources and credits;
    /// - no id is both a task and an object; every task and object belongs
    ///   to a live job; every object is referenced;
    /// - reference counts equal the unfinished tasks' arguments;
    /// - stored objects have holders, all alive (outside the recovery
    ///   window after a restart);
    /// - task counters (also per job) match the tables.
    pub fn check_invariants(&self) -> Result<(), String> {
        let d = |id: ObjectId| id.to_string();
        let mut per_job: IdMap<JobId, u64> = IdMap::default();
        for t in self.tasks.values() {
            *per_job.entry(t.job).or_default() += 1;
        }
        if per_job != self.live {
            return Err(format!("unfinished tasks per job are counted as {:?} but the table holds {:?}", self.live, per_job));
        }
        let in_queue: IdSet<TaskId> = self.ready.iter().copied().collect();
        let mut refs: IdMap<ObjectId, u32> = IdMap::default();
        let (mut queued, mut running) = (0u64, 0u64);
        for (id, t) in &self.tasks {
            if self.objects.contains_key(id) {
                return Err(format!("{} is both a task and an object", d(*id)));
            }
            let Some(job) = self.jobs.get(&t.job) else { return Err(format!("task {} belongs to gone job {}", d(*id), t.job)) };
            if t.func as usize >= job.functions.len() {
                return Err(format!("task {} names undefined function {}", d(*id), t.func));
            }
            let mut unfinished = 0u32;
            for a in t.args.iter() {
                let ArgSlot::Object(x) = a else { continue };
                *refs.entry(*x).or_default() += 1;
                if let Some(p) = self.tasks.get(x) {
                    unfinished += 1;
                    if t.state == TaskState::Waiting {
                        let listed = p.dependents.as_deref().map_or(0, |v| v.iter().filter(|w| **w == *id).count());
                        let needed = t.args.iter().filter(|b| matches!(b, ArgSlot::Object(y) if y == x)).count();
                        if listed != needed {
                            return Err(format!("waiting task {} takes {} {needed} times but is its dependent {listed} times", d(*id), d(*x)));
                        }
                    }
                } else if !self.objects.contains_key(x) && (!matches!(t.state, TaskState::Dispatched(_)) || self.jobs.contains_key(&x.job())) {
                    // (A running task may have read an input of another
                    // job that ended since.)
                    return Err(format!("input {} of task {} is neither a task nor an object", d(*x), d(*id)));
                }
            }
            match t.state {
                TaskState::Waiting => {
                    queued += 1;
                    if t.missing == 0 || t.missing != unfinished {
                        return Err(format!("waiting task {} has missing = {} but {unfinished} unfinished inputs", d(*id), t.missing));
                    }
                }
                TaskState::Ready => {
                    queued += 1;
                    // An actor's calls wait in the actor's queue instead.
                    let call = t.actor_of().is_some();
                    if !call && !in_queue.contains(id) {
                        return Err(format!("ready task {} is not in the ready queue", d(*id)));
                    }
                    if t.missing != 0 {
                        return Err(format!("ready task {} has missing = {}", d(*id), t.missing));
                    }
                    for a in t.args.iter() {
                        let ArgSlot::Object(x) = a else { continue };
                        match self.objects.get(x).map(|o| &o.state) {
                            Some(ObjectState::Ready(_)) => {}
                            Some(ObjectState::Stored { holders, .. }) => {
                                let alive = holders.iter().any(|h| self.nodes.get(h).is_some_and(|n| n.alive));
                                if !alive && self.recovering_until.is_none() {
                                    return Err(format!("ready task {} has input {} with no alive holder", d(*id), d(*x)));
                                }
                            }
                            Some(ObjectState::Failed(_)) => return Err(format!("ready task {} has failed input {}", d(*id), d(*x))),
                            None => return Err(format!("ready task {} has input {} that is not finished", d(*id), d(*x))),
                        }
                    }
                }
                TaskState::Dispatched(slot) => {
                    running += 1;
                    let node = self.slots.get(slot as usize).and_then(|n| self.nodes.get(n));
                    match node {
                        Some(n) if n.alive && n.assigned.contains(id) => {}
                        Some(n) => return Err(format!("dispatched task {} is not assigned to its node {} (alive: {})", d(*id), n.slot, n.alive)),
                        None => return Err(format!("dispatched task {} names unknown slot {slot}", d(*id))),
                    }
                }
            }
        }
        self.check_actors()?;
        let mut credits = 0u64;
        for (nid, n) in &self.nodes {
            credits += n.credits as u64;
            if (!n.alive || n.draining) && n.credits > 0 {
                return Err(format!("node {nid} (alive: {}, draining: {}) holds {} credits", n.alive, n.draining, n.credits));
            }
            if !n.alive && !n.assigned.is_empty() {
                return Err(format!("dead node {nid} still has {} tasks assigned", n.assigned.len()));
            }
            let mut cpus = 0.0;
            for t in &n.assigned {
                match self.tasks.get(t) {
                    Some(task) if task.state == TaskState::Dispatched(n.slot) => {
                        cpus += self.jobs.get(&task.job).and_then(|j| j.functions.get(task.func as usize)).map_or(0.0, |f| needs(task, f).cpus);
                    }
                    _ => return Err(format!("node {nid} has task {} assigned that is not dispatched to it", d(*t))),
                }
            }
            if (cpus - n.in_use.cpus).abs() > 1e-6 {
                return Err(format!("node {nid} has {} CPUs in use, its tasks need {cpus}", n.in_use.cpus));
            }
        }
        if credits != self.total_credits {
            return Err(format!("total credits {} but nodes hold {credits}", self.total_credits));
        }
        if queued != self.counts.queued || running != self.counts.running {
            return Err(format!("counts say {} queued, {} running; the table has {queued}, {running}", self.counts.queued, self.counts.running));
        }
        for (id, t) in &self.tasks {
            let want = refs.get(id).copied().unwrap_or(0);
            if t.result_refs != want {
                return Err(format!("task {} has result_refs {} but {want} unfinished tasks take it", d(*id), t.result_refs));
            }
        }
        for (id, o) in &self.objects {
            // A gone task session's object others still reference stays,
            // ownerless and with no way to rebuild it.
            if !self.jobs.contains_key(&id.job()) && (o.driver_ref || o.lineage.is_some()) {
                return Err(format!("object {} belongs to a gone job yet has an owner or lineage", d(*id)));
            }
            let want = refs.get(id).copied().unwrap_or(0);
            if o.task_refs != want {
                return Err(format!("object {} has task_refs {} but {want} unfinished tasks take it", d(*id), o.task_refs));
            }
            if !o.referenced() {
                return Err(format!("object {} is referenced by nobody but kept", d(*id)));
            }
            if let ObjectState::Stored { holders, .. } = &o.state
                && self.recovering_until.is_none()
            {
                if holders.is_empty() {
                    return Err(format!("stored object {} has no holder and is neither rebuilt nor failed", d(*id)));
                }
                if let Some(h) = holders.iter().find(|h| !self.nodes.get(h).is_some_and(|n| n.alive)) {
                    return Err(format!("stored object {} lists dead holder {h}", d(*id)));
                }
            }
        }
        self.check_value_refs()
    }

    /// Refs in values: every id's `contained_in` equals the containers
    /// listing it, and borrowers are live jobs.
    fn check_value_refs(&self) -> Result<(), String> {
        let mut listed: IdMap<ObjectId, u32> = IdMap::default();
        let mut have: IdMap<ObjectId, u32> = IdMap::default();
        let check_borrowers = |id: ObjectId, r: &Refs| -> Result<(), String> {
            if let Some(b) = r.borrowers.iter().find(|b| !self.jobs.contains_key(b)) {
                return Err(format!("{id} is borrowed by gone job {b}"));
            }
            Ok(())
        };
        for (id, o) in &self.objects {
            if let Some(r) = &o.refs {
                check_borrowers(*id, r)?;
                have.insert(*id, r.contained_in);
                for c in &r.contains {
                    *listed.entry(*c).or_default() += 1;
                }
            }
        }
        for (id, t) in &self.tasks {
            if let Some(e) = &t.extra {
                check_borrowers(*id, &e.refs)?;
                have.insert(*id, e.refs.contained_in);
                for c in e.refs.contains.iter().chain(&e.arg_refs) {
                    *listed.entry(*c).or_default() += 1;
                }
            }
        }
        for (id, n) in &listed {
            let known = self.objects.contains_key(id) || self.tasks.contains_key(id);
            let got = have.get(id).copied().unwrap_or(0);
            if known && got != *n {
                return Err(format!("{id} is held by {n} containers but counts {got}"));
            }
        }
        for (id, n) in &have {
            if *n > 0 && listed.get(id).copied().unwrap_or(0) != *n {
                return Err(format!("{id} counts {n} containers but {} list it", listed.get(id).copied().unwrap_or(0)));
            }
        }
        Ok(())
    }

    /// The unfinished tasks, one line each, for a failing schedule's report.
    pub fn describe_tasks(&self) -> Vec<String> {
        let mut v: Vec<(TaskId, String)> = self
            .tasks
            .iter()
            .map(|(id, t)| {
                let args: Vec<String> = t
                    .args
                    .iter()
                    .map(|a| match a {
                        ArgSlot::Value(_) => "value".to_string(),
                        ArgSlot::Object(x) if self.tasks.contains_key(x) => format!("task {}", *x),
                        ArgSlot::Object(x) => format!("object {}", *x),
                    })
                    .collect();
                let queued = self.ready.contains(id);
                (*id, format!("{} {:?} missing={} in_queue={queued} args={args:?}", *id, t.state, t.missing))
            })
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, s)| s).collect()
    }

    /// Whether nothing is queued or running: every submitted task ended.
    pub fn is_idle(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Actors: a live one is its creation task (queued while pending, on
    /// the node its life names while alive); a dead one has none; every
    /// call not on a node is in its actor's queue, exactly once, and no
    /// dead actor's queue holds calls; names point at live actors.
    fn check_actors(&self) -> Result<(), String> {
        use super::actors::Life;
        let d = |id: ObjectId| id.to_string();
        let mut queued_calls: IdMap<TaskId, TaskId> = IdMap::default();
        for (aid, a) in &self.actors.by_id {
            if !self.jobs.contains_key(&a.job) {
                return Err(format!("actor {} belongs to gone job {}", d(*aid), a.job));
            }
            let creation = self.tasks.get(aid).map(|t| t.state);
            match (&a.life, creation) {
                (Life::Pending, Some(TaskState::Ready | TaskState::Waiting)) => {}
                (Life::Alive(slot), Some(TaskState::Dispatched(s))) if *slot == s => {}
                (Life::Dead(_), None) => {
                    if !a.queue.is_empty() {
                        return Err(format!("dead actor {} still queues {} calls", d(*aid), a.queue.len()));
                    }
                }
                (life, state) => {
                    let life = match life {
                        Life::Pending => "pending".to_string(),
                        Life::Alive(s) => format!("alive in slot {s}"),
                        Life::Dead(_) => "dead".to_string(),
                    };
                    return Err(format!("actor {} is {life} but its creation task is {state:?}", d(*aid)));
                }
            }
            for t in &a.queue {
                // Entries of calls that finished or were cancelled since
                // are skipped when the queue is pumped.
                if self.tasks.get(t).is_some_and(|t| !matches!(t.state, TaskState::Dispatched(_))) && queued_calls.insert(*t, *aid).is_some() {
                    return Err(format!("call {} is queued twice", d(*t)));
                }
            }
        }
        for (id, t) in &self.tasks {
            let Some(actor) = t.actor_of() else { continue };
            if matches!(t.state, TaskState::Dispatched(_)) {
                continue;
            }
            if queued_calls.get(id) != Some(&actor) {
                return Err(format!("call {} on actor {} is {:?} but not in the actor's queue", d(*id), d(actor), t.state));
            }
        }
        for (key, aid) in &self.actors.names {
            if !self.actors.by_id.get(aid).is_some_and(|a| !matches!(a.life, Life::Dead(_))) {
                return Err(format!("name {key:?} points at actor {}, which is not live", d(*aid)));
            }
        }
        Ok(())
    }
}
