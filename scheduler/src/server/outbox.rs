//! The core's outbox in production: messages batched per stream, each
//! batch closed at `BATCH_BYTES` so no frame grows without bound.

use crate::core::{Dispatch, Failure, FunctionDef, JobId, NodeId, ObjectId, Outbox, Payload, TaskEvent, TaskId};
use crate::events::TaskEvents;
use shoal_proto::convert;
use shoal_proto::pb::{self, HeadToDriver, HeadToWorker};
use std::collections::HashMap;

/// Bytes after which an outgoing batch is closed and a new one started,
/// so no single frame grows without bound.
pub(super) const BATCH_BYTES: usize = shoal_domain::limits::BATCH_BYTES;

/// Messages for each stream, in batches of about `BATCH_BYTES`, and the
/// session ends and job ends the loop acts on.
pub(super) struct BatchingOutbox {
    /// Per node: its batches, each with its estimated size.
    pub(super) workers: HashMap<NodeId, Vec<(HeadToWorker, usize)>>,
    /// Per job: its driver's batches, each with its estimated size.
    pub(super) drivers: HashMap<JobId, Vec<(HeadToDriver, usize)>>,
    /// Worker sessions to end.
    pub(super) disconnect: Vec<(NodeId, u64)>,
    /// Jobs to forget.
    pub(super) ended: Vec<JobId>,
    /// Jobs whose logs to compact now (they linger for detached actors).
    pub(super) lingering: Vec<JobId>,
    /// Every task's transitions, for the state API and metrics.
    pub(super) events: TaskEvents,
}

impl BatchingOutbox {
    /// An empty outbox whose task-event store keeps `task_events` rows.
    pub(super) fn new(task_events: usize) -> Self {
        BatchingOutbox {
            workers: HashMap::new(),
            drivers: HashMap::new(),
            disconnect: Vec::new(),
            ended: Vec::new(),
            lingering: Vec::new(),
            events: TaskEvents::new(task_events),
        }
    }
}

// The one `expect` of the crate: the vector was made non-empty on the
// line before, in the same function, with nothing between.
#[allow(clippy::expect_used)]
/// The batch to add `add` bytes to: the last one, or a new one if that
/// would grow past `BATCH_BYTES`.
pub(super) fn current<M: Default>(v: &mut Vec<(M, usize)>, add: usize) -> &mut M {
    if v.last().is_none_or(|(_, size)| *size + add > BATCH_BYTES) {
        v.push((M::default(), 0));
    }
    let last = v.last_mut().expect("pushed above when empty");
    last.1 += add;
    &mut last.0
}

impl Outbox for BatchingOutbox {
    fn job_info(&mut self, node: NodeId, job: JobId, binary: &str, first: u32, functions: &[FunctionDef]) {
        let m = current(self.workers.entry(node).or_default(), 64);
        m.jobs.push(pb::JobInfo { job, binary: binary.to_string(), first_function: first, functions: functions.iter().map(pb::FunctionDef::from).collect() });
    }
    fn dispatch(&mut self, node: NodeId, task: Dispatch) {
        let size = 24 + task.args.iter().map(|a| if let Payload::Inline(b) = a { b.len() + 4 } else { 64 }).sum::<usize>();
        current(self.workers.entry(node).or_default(), size).tasks.push(pb::TaskDispatch::from(task));
    }
    fn cancel(&mut self, node: NodeId, task: TaskId) {
        current(self.workers.entry(node).or_default(), 8).cancel.push(task.0);
    }
    fn job_finished(&mut self, node: NodeId, job: JobId) {
        current(self.workers.entry(node).or_default(), 4).jobs_finished.push(job);
    }
    fn result(&mut self, job: JobId, task: TaskId, outcome: Result<Payload, Failure>) {
        let size = 16
            + match &outcome {
                Ok(Payload::Inline(b)) => b.len(),
                _ => 64,
            };
        current(self.drivers.entry(job).or_default(), size).results.push(convert::delivery_to_wire(task, outcome));
    }
    fn disconnect(&mut self, node: NodeId, epoch: u64) {
        self.disconnect.push((node, epoch));
    }
    fn generator_item(&mut self, job: JobId, task: TaskId, index: u64, object: ObjectId, value: Result<Payload, Failure>, owned: bool) {
        let size = 24
            + match &value {
                Ok(Payload::Inline(b)) => b.len(),
                _ => 64,
            };
        let batch = current(self.drivers.entry(job).or_default(), size);
        // An owned item joins the run it follows (one entry, not one each).
        if let (true, Ok(Payload::Inline(b))) = (owned, &value) {
            shoal_proto::items::push_run(&mut batch.items, task.0, index, object.0, b.clone());
            return;
        }
        let value = Some(convert::delivery_to_wire(object, value));
        batch.items.push(pb::GeneratorItem { task: task.0, index, value, ..Default::default() });
    }
    fn generator_ack(&mut self, job: JobId, task: TaskId, consumed: u64) {
        current(self.drivers.entry(job).or_default(), 16).generator_acks.push(pb::GeneratorAck { task: task.0, consumed });
    }
    fn free_object(&mut self, node: NodeId, id: ObjectId) {
        current(self.workers.entry(node).or_default(), 8).free_objects.push(id.0);
    }
    fn keep_object(&mut self, node: NodeId, id: ObjectId) {
        current(self.workers.entry(node).or_default(), 8).keep_objects.push(id.0);
    }
    fn drain(&mut self, node: NodeId) {
        current(self.workers.entry(node).or_default(), 4).drain = true;
    }
    fn job_ended(&mut self, job: JobId) {
        self.ended.push(job);
    }
    fn job_lingering(&mut self, job: JobId) {
        self.lingering.push(job);
    }
    fn task_event(&mut self, task: TaskId, func: u32, event: TaskEvent<'_>) {
        self.events.task_event(task, func, event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Owned items of one generator, one after another, go as one run; a
    /// kept item (or another generator's) starts a new entry, so the
    /// caller reads them in the order they were sent.
    #[test]
    fn owned_items_in_a_row_travel_as_one_run_in_order() {
        let mut out = BatchingOutbox::new(10);
        let (g, h) = (ObjectId::new(1, 1), ObjectId::new(1, 2));
        let owned = |out: &mut BatchingOutbox, task, i: u64| {
            out.generator_item(1, task, i, ObjectId::new(2, 10 + i), Ok(Payload::Inline(Bytes::from(vec![i as u8]))), true)
        };
        for i in 0..3 {
            owned(&mut out, g, i);
        }
        out.generator_item(1, g, 3, ObjectId::new(2, 13), Ok(Payload::Inline(Bytes::from_static(b"kept"))), false);
        owned(&mut out, g, 4);
        owned(&mut out, h, 0);
        owned(&mut out, g, 5);
        let items = &out.drivers[&1][0].0.items;
        let shape: Vec<(u64, u64, usize)> = items.iter().map(|i| (ObjectId(i.task).seq(), i.index, i.run_ids.len())).collect();
        assert_eq!(shape, vec![(1, 0, 3), (1, 3, 0), (1, 4, 1), (2, 0, 1), (1, 5, 1)]);
        assert_eq!(items[0].run_ids, vec![ObjectId::new(2, 10).0, ObjectId::new(2, 11).0, ObjectId::new(2, 12).0]);
        assert_eq!(items[0].run_values[2], Bytes::from_static(&[2]));
    }

    #[test]
    fn batches_close_at_the_size_limit_and_keep_order() {
        let mut out = BatchingOutbox::new(10);
        let node = NodeId::random();
        let mb = Bytes::from(vec![0u8; 1 << 20]);
        for i in 0..10 {
            out.dispatch(
                node,
                Dispatch {
                    task: ObjectId::new(1, i),
                    job: 1,
                    func: 0,
                    args: vec![Payload::Inline(mb.clone())],
                    attempt: 1,
                    resources: None,
                    dedicated: false,
                    actor: Default::default(),
                },
            );
        }
        out.cancel(node, ObjectId::new(1, 99));
        let batches = &out.workers[&node];
        assert!(batches.len() >= 3, "10 MiB in batches of at most {BATCH_BYTES} bytes: {}", batches.len());
        assert!(batches.iter().all(|(_, size)| *size <= BATCH_BYTES));
        let order: Vec<u64> = batches.iter().flat_map(|(m, _)| m.tasks.iter().map(|t| ObjectId(t.task).seq())).collect();
        assert_eq!(order, (0..10).collect::<Vec<_>>());
        assert_eq!(batches.last().map(|(m, _)| m.cancel.clone()), Some(vec![ObjectId::new(1, 99).0]), "small messages join the open batch");
    }

    #[test]
    fn one_value_larger_than_a_batch_travels_alone() {
        let mut out = BatchingOutbox::new(10);
        out.result(3, ObjectId::new(3, 1), Ok(Payload::Inline(Bytes::from(vec![0u8; BATCH_BYTES + 10]))));
        out.result(3, ObjectId::new(3, 2), Ok(Payload::Inline(Bytes::from_static(b"x"))));
        let batches = &out.drivers[&3];
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].0.results.len(), 1);
    }
}
