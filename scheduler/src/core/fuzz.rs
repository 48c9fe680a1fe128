//! A stateful fuzz body for the head's core: the input bytes are read as
//! a sequence of events (nodes joining, asking for work, finishing tasks,
//! dying; drivers submitting, putting, cancelling, releasing, ending; actors
//! made, called and killed; time passing), applied to a `Core`, whose
//! invariants are checked after every event. Run by `fuzz/` (cargo fuzz)
//! and, on seeded random inputs, by this crate's tests.
//!
//! Not daemon code: a broken invariant panics here on purpose (that is
//! what a fuzzer reports), and the test-only indexing stays simple.
#![allow(clippy::panic, clippy::indexing_slicing)]

use super::*;
use shoal_domain::actor::{ActorRole, ActorSpec};

#[derive(Default)]
struct Seen {
    dispatched: Vec<(NodeId, TaskId)>,
}

impl Outbox for Seen {
    fn job_info(&mut self, _: NodeId, _: JobId, _: &str, _: u32, _: &[FunctionDef]) {}
    fn dispatch(&mut self, node: NodeId, task: Dispatch) {
        self.dispatched.push((node, task.task));
    }
    fn cancel(&mut self, _: NodeId, _: TaskId) {}
    fn job_finished(&mut self, _: NodeId, _: JobId) {}
    fn result(&mut self, _: JobId, _: TaskId, _: Result<Payload, Failure>) {}
    fn free_object(&mut self, _: NodeId, _: ObjectId) {}
    fn disconnect(&mut self, _: NodeId, _: u64) {}
    fn drain(&mut self, _: NodeId) {}
    fn generator_item(&mut self, _: JobId, _: TaskId, _: u64, _: ObjectId, _: Result<Payload, Failure>, _: bool) {}
    fn generator_ack(&mut self, _: JobId, _: TaskId, _: u64) {}
    fn keep_object(&mut self, _: NodeId, _: ObjectId) {}
}

/// Reads bytes one at a time; zeros once they run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else { return 0 };
        self.0 = rest;
        b
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        (!from.is_empty()).then(|| from[self.byte() as usize % from.len()])
    }
}

/// Applies the events `data` spells to a fresh core; panics if an
/// invariant breaks (what the fuzzer looks for).
pub fn events(data: &[u8]) {
    let mut inp = Input(data);
    let mut core = Core::new(CoreConfig { heartbeat_timeout: Duration::from_secs(2), wait_for_feasible_nodes: true, driver_grace: Duration::from_secs(30) });
    let mut out = Seen::default();
    let mut now = Instant::now();
    let mut nodes: Vec<(NodeId, u64)> = Vec::new();
    let mut jobs: Vec<JobId> = Vec::new();
    let mut ids: Vec<ObjectId> = Vec::new();
    let mut actors: Vec<TaskId> = Vec::new();
    let mut next_seq: HashMap<JobId, u64> = HashMap::new();
    let mut steps = 0;
    while !inp.0.is_empty() && steps < 2000 {
        steps += 1;
        match inp.byte() % 12 {
            0 => {
                let reuse = inp.byte() % 3 == 0;
                let node_id = if reuse { inp.pick(&nodes).map(|n| n.0) } else { None };
                let reg = NodeRegistration {
                    node_id,
                    resources: ResourceSet::cpus(1.0 + (inp.byte() % 4) as f64),
                    instance: inp.byte() as u64 % 3,
                    objects: ids.iter().copied().filter(|_| reuse).take(2).collect(),
                    ..Default::default()
                };
                if core.registration_conflict(&reg, now).is_none() {
                    let (id, epoch) = core.node_registered(reg, now, &mut out);
                    nodes.retain(|n| n.0 != id);
                    nodes.push((id, epoch));
                }
            }
            1 => {
                if let Some((id, epoch)) = inp.pick(&nodes) {
                    core.node_credits(id, epoch, (inp.byte() % 8) as u32, now);
                }
            }
            2 => {
                let Some(job) = inp.pick(&jobs) else { continue };
                let seq = next_seq.entry(job).or_insert(1);
                let id = ObjectId::new(job, *seq);
                *seq += 1;
                let mut args = Vec::new();
                for _ in 0..inp.byte() % 3 {
                    match inp.pick(&ids) {
                        Some(x) if inp.byte() % 2 == 0 => args.push(NewArg::Object(x)),
                        _ => args.push(NewArg::Value(Bytes::from_static(b"v"))),
                    }
                }
                let actor = match inp.byte() % 8 {
                    0 => {
                        actors.push(id);
                        let name = ["", "a"][inp.byte() as usize % 2].to_string();
                        ActorRole::Create(Box::new(ActorSpec { class: "C".into(), name, detached: inp.byte() % 2 == 0, ..Default::default() }))
                    }
                    1 | 2 => inp.pick(&actors).map_or(ActorRole::None, ActorRole::Call),
                    _ => ActorRole::None,
                };
                let placement = match (inp.byte() % 8, inp.pick(&nodes)) {
                    (0, Some((n, _))) => Placement::Node { node: n, soft: inp.byte() % 2 == 0 },
                    (1, _) => Placement::Spread,
                    _ => Placement::Any,
                };
                let t = NewTask {
                    id,
                    func: (inp.byte() % 3) as u32,
                    args,
                    max_retries: Some((inp.byte() % 3) as u32),
                    resources: None,
                    retry_exceptions: None,
                    contains: inp.pick(&ids).into_iter().filter(|_| inp.byte() % 4 == 0).collect(),
                    placement,
                    dedicated: matches!(actor, ActorRole::Create(_)),
                    actor,
                };
                ids.push(id);
                core.submit(job, vec![t], &mut out);
            }
            3 => {
                if out.dispatched.is_empty() {
                    continue;
                }
                let k = inp.byte() as usize % out.dispatched.len();
                let (node, task) = out.dispatched.swap_remove(k);
                let Some(&(_, epoch)) = nodes.iter().find(|n| n.0 == node) else { continue };
                let outcome = match inp.byte() % 6 {
                    0 => Ok(Value::Stored { size: 100 }),
                    1 => Err(Failure::new(FailureKind::WorkerDied, "died")),
                    2 => Err(Failure::new(FailureKind::Panicked, "boom")),
                    3 => Err(Failure::new(FailureKind::ObjectLost, "lost")),
                    _ => Ok(Value::Inline(Bytes::from_static(b"r"))),
                };
                core.tasks_finished(node, epoch, vec![(task, outcome)], now, &mut out);
            }
            4 => {
                if let Some((id, epoch)) = inp.pick(&nodes) {
                    core.node_disconnected(id, epoch, &mut out);
                }
            }
            5 => {
                if let Some(job) = inp.pick(&jobs) {
                    core.job_disconnected(job, &mut out);
                    jobs.retain(|j| *j != job);
                }
            }
            6 => {
                let parent = inp.pick(&jobs).filter(|_| inp.byte() % 4 == 0);
                if let Ok(job) = core.job_connected_under("ab".repeat(32), "fuzz".into(), parent) {
                    let defs = (0..3)
                        .map(|i| FunctionDef {
                            name: format!("f{i}"),
                            resources: ResourceSet::cpus([1.0, 0.0, 2.0][i]),
                            max_retries: 1,
                            retry_exceptions: i == 2,
                        })
                        .collect();
                    core.define_functions(job, 0, defs);
                    jobs.push(job);
                }
            }
            7 => {
                if let (Some(job), Some(id)) = (inp.pick(&jobs), inp.pick(&ids)) {
                    core.release(job, &[id], &mut out);
                }
            }
            8 => {
                if let (Some(job), Some(id)) = (inp.pick(&jobs), inp.pick(&ids)) {
                    core.cancel(job, &[id], &mut out);
                }
            }
            9 => {
                now += Duration::from_millis(inp.byte() as u64 * 20);
                for (id, epoch) in &nodes {
                    if inp.byte() % 4 != 0 {
                        core.node_heartbeat(*id, *epoch, now);
                    }
                }
                core.tick(now, &mut out);
            }
            10 => {
                if let Some(a) = inp.pick(&actors) {
                    core.kill_actors(&[a], &mut out);
                }
            }
            _ => {
                let Some(job) = inp.pick(&jobs) else { continue };
                let seq = next_seq.entry(job).or_insert(1);
                let id = ObjectId::new(job, *seq);
                *seq += 1;
                let value = match inp.pick(&nodes) {
                    Some((n, _)) if inp.byte() % 2 == 0 => PutValue::Stored { size: 10, node: n },
                    _ => PutValue::Inline(Bytes::from_static(b"p")),
                };
                ids.push(id);
                core.put(job, id, value, &mut out);
            }
        }
        core.schedule(&mut out);
        if let Err(e) = core.check_invariants() {
            panic!("invariant broken after {steps} events: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_event_bytes_keep_the_core_consistent() {
        let mut r = shoal_domain::seeded::Xorshift::new(0x0dd5_eed5);
        for _ in 0..400 {
            let len = 64 + r.below(900) as usize;
            super::events(&r.bytes(len));
        }
    }
}
