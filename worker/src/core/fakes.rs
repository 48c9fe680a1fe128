//! Stand-ins for the worker core's edges: a map for the object store and
//! a recorder for the effects. Used by its behaviour tests, its random
//! schedules and the fuzz target.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
// The fuzz build uses only what the schedules need.
#![cfg_attr(not(test), allow(dead_code))]

use super::*;
use std::cell::RefCell;

/// An object in the fake store.
#[derive(Clone, Debug, Default)]
pub(crate) struct FakeObject {
    pub sealed: bool,
    pub spilled: bool,
    pub pins: usize,
    pub owner: Option<ExecId>,
    pub job: JobId,
}

/// A map standing in for the node's object store.
#[derive(Default)]
pub(crate) struct FakeStore {
    pub objects: RefCell<HashMap<ObjectId, FakeObject>>,
    /// Objects a seal fails for (as if the arena lost them).
    pub seal_fails: RefCell<HashSet<ObjectId>>,
}

impl FakeStore {
    pub fn sealed(&self, id: ObjectId) {
        self.objects.borrow_mut().insert(id, FakeObject { sealed: true, job: id.job(), ..Default::default() });
    }
    pub fn spilled(&self, id: ObjectId) {
        self.objects.borrow_mut().insert(id, FakeObject { sealed: true, spilled: true, job: id.job(), ..Default::default() });
    }
    /// Space given to `exec` for result `id` (what an alloc does).
    pub fn created(&self, id: ObjectId, exec: ExecId) {
        self.objects.borrow_mut().insert(id, FakeObject { owner: Some(exec), job: id.job(), ..Default::default() });
    }
    pub fn pins(&self, id: ObjectId) -> usize {
        self.objects.borrow().get(&id).map_or(0, |o| o.pins)
    }
    pub fn has(&self, id: ObjectId) -> bool {
        self.objects.borrow().contains_key(&id)
    }
    pub fn is_sealed(&self, id: ObjectId) -> bool {
        self.objects.borrow().get(&id).is_some_and(|o| o.sealed)
    }
}

impl LocalStore for FakeStore {
    fn contains(&self, id: ObjectId) -> bool {
        self.is_sealed(id)
    }
    fn is_spilled(&self, id: ObjectId) -> bool {
        self.objects.borrow().get(&id).is_some_and(|o| o.sealed && o.spilled)
    }
    fn sealed_size(&self, id: ObjectId) -> Option<u64> {
        self.is_sealed(id).then_some(10)
    }
    fn pin(&self, id: ObjectId) -> Result<Location, String> {
        let mut m = self.objects.borrow_mut();
        match m.get_mut(&id) {
            Some(o) if o.sealed => {
                o.pins += 1;
                Ok(if o.spilled { Location::File { path: format!("/spill/{}", id.0).into(), len: 10 } } else { Location::Arena { offset: id.0 * 64, len: 10 } })
            }
            _ => Err("not found".into()),
        }
    }
    fn unpin(&self, id: ObjectId) {
        if let Some(o) = self.objects.borrow_mut().get_mut(&id) {
            assert!(o.pins > 0, "unpin of {id} without a pin");
            o.pins -= 1;
        }
    }
    fn seal(&self, id: ObjectId) -> Result<(), String> {
        if self.seal_fails.borrow().contains(&id) {
            self.objects.borrow_mut().remove(&id);
            return Err("no room".into());
        }
        match self.objects.borrow_mut().get_mut(&id) {
            Some(o) => {
                o.sealed = true;
                o.owner = None;
                Ok(())
            }
            None => Err(format!("object {id} not found")),
        }
    }
    fn abort(&self, id: ObjectId) {
        let mut m = self.objects.borrow_mut();
        if m.get(&id).is_some_and(|o| !o.sealed) {
            m.remove(&id);
        }
    }
    fn free(&self, id: ObjectId) {
        let mut m = self.objects.borrow_mut();
        if m.get(&id).is_some_and(|o| o.pins == 0) {
            m.remove(&id);
        }
    }
    fn free_job(&self, job: JobId, keep: &HashSet<ObjectId>) {
        self.objects.borrow_mut().retain(|id, o| o.job != job || o.pins > 0 || keep.contains(id));
    }
    fn reclaim_owner(&self, exec: ExecId) -> usize {
        let mut m = self.objects.borrow_mut();
        let before = m.len();
        m.retain(|_, o| o.sealed || o.owner != Some(exec));
        before - m.len()
    }
}

/// Records every effect.
#[derive(Default)]
pub(crate) struct Rec {
    pub spawned: Vec<(ExecId, JobId)>,
    /// The next spawns fail with this.
    pub spawn_error: Option<String>,
    pub killed: Vec<ExecId>,
    pub sent: Vec<(ExecId, u32, Vec<String>, Vec<ExecTask>)>,
    pub reports: Vec<Report>,
    pub pulls: Vec<StoredRef>,
    pub restores: Vec<ObjectId>,
    pub fetches: Vec<(JobId, String)>,
}

impl Effects for Rec {
    fn spawn_executor(&mut self, exec: ExecId, job: JobId, _binary: &Path) -> Result<u32, String> {
        if let Some(e) = &self.spawn_error {
            return Err(e.clone());
        }
        self.spawned.push((exec, job));
        Ok(1000 + exec.0 as u32)
    }
    fn kill_executor(&mut self, exec: ExecId, _pid: u32) {
        self.killed.push(exec);
    }
    fn send_tasks(&mut self, exec: ExecId, first_function: u32, functions: Vec<String>, tasks: Vec<ExecTask>) {
        self.sent.push((exec, first_function, functions, tasks));
    }
    fn report(&mut self, report: Report) {
        self.reports.push(report);
    }
    fn pull(&mut self, object: StoredRef) {
        self.pulls.push(object);
    }
    fn restore(&mut self, id: ObjectId) {
        self.restores.push(id);
    }
    fn fetch_binary(&mut self, job: JobId, hash: &str) {
        self.fetches.push((job, hash.to_string()));
    }
}

impl Rec {
    /// Task ids sent to `exec`, in order.
    pub fn sent_to(&self, exec: ExecId) -> Vec<TaskId> {
        self.sent.iter().filter(|s| s.0 == exec).flat_map(|s| s.3.iter().map(|t| t.task)).collect()
    }
    /// Every result reported so far.
    pub fn results(&self) -> Vec<(TaskId, Result<Value, Failure>)> {
        self.reports.iter().flat_map(|r| r.results.clone()).collect()
    }
    pub fn failure_of(&self, task: TaskId) -> Option<Failure> {
        self.results().into_iter().find(|(t, _)| *t == task).and_then(|(_, r)| r.err())
    }
    pub fn credits(&self) -> u32 {
        self.reports.iter().map(|r| r.credits).sum()
    }
}

pub(crate) const JOB: JobId = 1;

pub(crate) fn t(seq: u64) -> TaskId {
    ObjectId::new(JOB, seq)
}

pub(crate) fn func(name: &str, cpus: f64) -> FunctionDef {
    FunctionDef { name: name.into(), resources: ResourceSet::cpus(cpus), max_retries: 0, retry_exceptions: false }
}

pub(crate) fn job_info(job: JobId, funcs: Vec<FunctionDef>) -> JobInfo {
    JobInfo { job, binary: format!("bin{job}"), first_function: 0, functions: funcs }
}

pub(crate) fn dispatch(task: TaskId, func: u32, args: Vec<Payload>) -> Dispatch {
    Dispatch { task, job: task.job(), func, args, attempt: 1, resources: None, dedicated: false, actor: Default::default() }
}

pub(crate) fn stored(id: ObjectId) -> Payload {
    Payload::Stored(StoredRef { id, size: 10, holders: vec!["peer:1".into()] })
}
