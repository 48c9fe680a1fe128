//! Generator items on the wire: runs of small items travel as one
//! [`pb::GeneratorItem`] entry (`run_ids`, `run_values`), from the producer
//! to the head and from the head to the caller.

use crate::pb;
use bytes::Bytes;

/// Appends small item `index` of generator task `task` (object `id`,
/// `value`) to `items`: it joins the run it directly follows, else starts
/// one, so the order of `items` stays the order they were yielded.
pub fn push_run(items: &mut Vec<pb::GeneratorItem>, task: u64, index: u64, id: u64, value: Bytes) {
    match items.last_mut() {
        Some(run) if run.task == task && !run.run_ids.is_empty() && run.index + run.run_ids.len() as u64 == index => {
            run.run_ids.push(id);
            run.run_values.push(value);
        }
        _ => items.push(pb::GeneratorItem { task, index, run_ids: vec![id], run_values: vec![value], ..Default::default() }),
    }
}
