//! Copies of stored objects on their way to nodes, so that many readers of
//! one object form a tree instead of all pulling from the node that made
//! it: a node still pulling an object is listed as a place to read it from
//! (its store serves the object once it is sealed there), and each new
//! reader is sent to the copy, finished or coming, that should give it the
//! object soonest. Pure bookkeeping, unit-tested without sockets.
//!
//! The estimate counts in "rounds" of one whole transfer: a finished copy
//! is ready at round 0, a coming one at the round its own pull should end;
//! a copy already serving `k` readers serves the next one `k + 1` rounds
//! after it is ready (its bandwidth is shared). Eight readers of one
//! object dispatched at once so end within four rounds, not eight.

use shoal_domain::{NodeId, ObjectId, TaskId};
use std::collections::HashMap;

/// One node pulling one object.
#[derive(Debug, Clone, PartialEq)]
struct Fetch {
    /// The node pulling.
    node: NodeId,
    /// The copy it was sent to first.
    from: NodeId,
    /// The round its copy should be complete.
    ready: u32,
    /// The task whose argument it is (its end ends the pull either way).
    task: TaskId,
}

/// Pulls in progress, by object.
#[derive(Debug, Default)]
pub(crate) struct Fetches {
    by_object: HashMap<ObjectId, Vec<Fetch>>,
}

impl Fetches {
    /// Nothing is being pulled.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_object.is_empty()
    }

    /// The node `reader` should pull object `id` from first, for `task`,
    /// given the alive nodes holding a finished copy (`holders`, in the
    /// order the reader would try them); records the pull. `None`: the
    /// reader holds a copy, or there is none anywhere.
    pub(crate) fn plan(&mut self, id: ObjectId, reader: NodeId, task: TaskId, holders: &[NodeId]) -> Option<NodeId> {
        if holders.contains(&reader) {
            return None;
        }
        let pulls = self.by_object.entry(id).or_default();
        // Already pulling it (for another task): the worker pulls once.
        if let Some(f) = pulls.iter().find(|f| f.node == reader) {
            return Some(f.from);
        }
        // Linear in the pulls of this object (a broadcast to a thousand
        // nodes plans a thousand times over at most a thousand pulls).
        let mut load: HashMap<NodeId, u32> = HashMap::with_capacity(pulls.len());
        let mut source: HashMap<NodeId, NodeId> = HashMap::with_capacity(pulls.len());
        for f in pulls.iter() {
            *load.entry(f.from).or_default() += 1;
            source.insert(f.node, f.from);
        }
        let load_of = |c: &NodeId| load.get(c).copied().unwrap_or(0);
        // Finished copies first, then coming ones in the order they were
        // planned (the earliest sit highest in the tree); the first with
        // the soonest end wins.
        let mut best: Option<(u32, NodeId)> = None;
        let mut consider = |end: u32, c: NodeId| {
            if best.is_none_or(|(b, _)| end < b) {
                best = Some((end, c));
            }
        };
        for h in holders {
            consider(load_of(h) + 1, *h);
        }
        for f in pulls.iter() {
            // Never a copy that (through its own source) waits on the reader.
            if !Self::waits_on(&source, f.node, reader) {
                consider(f.ready.saturating_add(load_of(&f.node)).saturating_add(1), f.node);
            }
        }
        let Some((ready, from)) = best else {
            if pulls.is_empty() {
                self.by_object.remove(&id);
            }
            return None;
        };
        pulls.push(Fetch { node: reader, from, ready, task });
        Some(from)
    }

    /// Whether `node`'s copy comes, directly or through other coming
    /// copies (`source`: each pulling node's source), from `reader`.
    fn waits_on(source: &HashMap<NodeId, NodeId>, mut node: NodeId, reader: NodeId) -> bool {
        for _ in 0..=source.len() {
            if node == reader {
                return true;
            }
            match source.get(&node) {
                Some(from) => node = *from,
                None => return false,
            }
        }
        // A loop not through the reader (cannot be built): keep out of it.
        true
    }

    /// `node` now has all of `id` (it reported the copy), or gave up.
    pub(crate) fn done(&mut self, id: ObjectId, node: NodeId) {
        self.forget(id, |f| f.node == node);
    }

    /// `task` ended: whatever pull of `id` it started is over.
    pub(crate) fn task_ended(&mut self, id: ObjectId, task: TaskId) {
        self.forget(id, |f| f.task == task);
    }

    /// Drops the pulls of `id` that `over` says are over.
    fn forget(&mut self, id: ObjectId, over: impl Fn(&Fetch) -> bool) {
        if let Some(pulls) = self.by_object.get_mut(&id) {
            pulls.retain(|f| !over(f));
            if pulls.is_empty() {
                self.by_object.remove(&id);
            }
        }
    }

    /// `node` died: its pulls are over, and nobody is sent to it any more.
    pub(crate) fn node_gone(&mut self, node: NodeId) {
        self.by_object.retain(|_, pulls| {
            pulls.retain(|f| f.node != node);
            !pulls.is_empty()
        });
    }

    /// `id` was freed.
    pub(crate) fn object_gone(&mut self, id: ObjectId) {
        self.by_object.remove(&id);
    }

    /// Pulls of `id` in progress.
    #[cfg(test)]
    fn pulling(&self, id: ObjectId) -> usize {
        self.by_object.get(&id).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = (0..n).map(|_| NodeId::random()).collect();
        v.sort();
        v
    }

    const X: ObjectId = ObjectId(7);

    fn t(i: u64) -> TaskId {
        ObjectId::new(1, i)
    }

    #[test]
    fn readers_at_once_form_a_tree_not_a_star() {
        let n = nodes(9);
        let (source, readers) = (n[0], &n[1..]);
        let mut f = Fetches::default();
        let from: Vec<NodeId> = readers.iter().enumerate().map(|(i, r)| f.plan(X, *r, t(i as u64), &[source]).unwrap()).collect();
        let direct = from.iter().filter(|s| **s == source).count();
        assert!(direct <= 4, "the source serves half the readers at most, not all eight: {direct}");
        assert!(from.iter().any(|s| readers.contains(s)), "readers pull from readers");
        // Every chain ends at the source, within four rounds.
        let ready = |r: NodeId| f.by_object[&X].iter().find(|p| p.node == r).unwrap().ready;
        assert!(readers.iter().all(|r| ready(*r) <= 4), "{:?}", readers.iter().map(|r| ready(*r)).collect::<Vec<_>>());
        for r in readers {
            let mut at = *r;
            for _ in 0..10 {
                if at == source {
                    break;
                }
                at = f.by_object[&X].iter().find(|p| p.node == at).unwrap().from;
            }
            assert_eq!(at, source, "reader {r} reaches the source");
        }
    }

    #[test]
    fn a_thousand_readers_end_within_a_few_rounds_and_plan_fast() {
        let n = nodes(1001);
        let mut f = Fetches::default();
        let t0 = std::time::Instant::now();
        for (i, r) in n[1..].iter().enumerate() {
            f.plan(X, *r, t(i as u64), &[n[0]]);
        }
        let planning = t0.elapsed();
        let rounds = f.by_object[&X].iter().map(|p| p.ready).max().unwrap();
        assert!(rounds <= 20, "a tree, rounds grow like log2(1000): {rounds}");
        let direct = f.by_object[&X].iter().filter(|p| p.from == n[0]).count();
        assert!(direct <= 20, "the source serves a few: {direct}");
        eprintln!("1,000 readers: {rounds} rounds, {direct} from the source, planned in {planning:?}");
        assert!(planning < std::time::Duration::from_secs(30), "planning 1,000 readers took {planning:?}");
    }

    #[test]
    fn a_finished_copy_serves_like_the_source_and_a_holder_pulls_nothing() {
        let n = nodes(4);
        let mut f = Fetches::default();
        assert_eq!(f.plan(X, n[0], t(1), &[n[0]]), None, "the holder reads its own copy");
        assert_eq!(f.plan(X, n[1], t(1), &[n[0]]), Some(n[0]));
        f.done(X, n[1]);
        assert_eq!(f.pulling(X), 0);
        // Two finished copies: the next two readers spread over them.
        let a = f.plan(X, n[2], t(2), &[n[0], n[1]]).unwrap();
        let b = f.plan(X, n[3], t(3), &[n[0], n[1]]).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_second_task_on_a_pulling_node_shares_its_pull() {
        let n = nodes(2);
        let mut f = Fetches::default();
        assert_eq!(f.plan(X, n[1], t(1), &[n[0]]), Some(n[0]));
        assert_eq!(f.plan(X, n[1], t(2), &[n[0]]), Some(n[0]));
        assert_eq!(f.pulling(X), 1);
        f.task_ended(X, t(1));
        assert_eq!(f.pulling(X), 0, "the task that started it ended: so did the pull");
    }

    #[test]
    fn nobody_is_sent_to_a_dead_node_or_to_a_copy_that_waits_on_them() {
        let n = nodes(4);
        let mut f = Fetches::default();
        f.plan(X, n[1], t(1), &[n[0]]);
        f.plan(X, n[2], t(2), &[n[0]]);
        let third = f.plan(X, n[3], t(3), &[n[0]]).unwrap();
        f.node_gone(n[1]);
        f.node_gone(n[2]);
        assert!(f.by_object[&X].iter().all(|p| p.node == n[3]), "the dead nodes' pulls are gone");
        // n[1] comes back and reads again: never from n[3] if n[3] waits on n[1].
        let again = f.plan(X, n[1], t(4), &[n[0]]).unwrap();
        assert!(!(third == n[1] && again == n[3]), "no cycle");
        // With no copy anywhere there is nowhere to pull from.
        let mut g = Fetches::default();
        assert_eq!(g.plan(X, n[1], t(1), &[]), None);
        assert!(g.is_empty());
        g.plan(X, n[1], t(1), &[n[0]]);
        g.object_gone(X);
        assert!(g.is_empty());
    }
}
