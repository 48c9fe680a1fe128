//! Where a result lands when it arrives: a [`Slot`] per object the
//! session waits for (wakers for `.await`, a condvar for blocking gets,
//! completion queues for `wait` and `as_completed`).

use crate::error::TaskError;
use crate::values::Val;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// Completion order across all objects of this process, so `wait` and
/// `as_completed` can report results in the order they arrived.
static COMPLETIONS: AtomicU64 = AtomicU64::new(1);

pub(crate) enum SlotState {
    Pending {
        wakers: Vec<Waker>,
        queues: Vec<(Arc<CompletionQueue>, usize)>,
    },
    /// `version` counts the times a stored value was replaced by a newer
    /// answer of the head (rebuilt, relocated, lost for good).
    Done {
        value: Result<Val, TaskError>,
        seq: u64,
        version: u32,
    },
}

/// Where a result lands when it arrives.
pub(crate) struct Slot {
    pub(crate) state: Mutex<SlotState>,
    cv: Condvar,
}

impl Slot {
    pub(crate) fn pending() -> Arc<Slot> {
        Arc::new(Slot { state: Mutex::new(SlotState::Pending { wakers: Vec::new(), queues: Vec::new() }), cv: Condvar::new() })
    }

    pub(crate) fn done(value: Result<Val, TaskError>) -> Arc<Slot> {
        let seq = COMPLETIONS.fetch_add(1, Ordering::Relaxed);
        Arc::new(Slot { state: Mutex::new(SlotState::Done { value, seq, version: 0 }), cv: Condvar::new() })
    }

    /// Records the value (the first one wins) and wakes every waiter. A
    /// stored value may be replaced by a later answer: the head sends one
    /// when it rebuilt the object after every copy was lost, when a driver
    /// asked where it is now, or when it is lost for good.
    pub(crate) fn complete(&self, value: Result<Val, TaskError>) {
        let mut st = self.state.lock().expect("slot lock");
        if let SlotState::Done { value: old, version, .. } = &mut *st {
            if matches!(old, Ok(Val::Stored { .. })) {
                *old = value;
                *version += 1;
            }
            return;
        }
        let seq = COMPLETIONS.fetch_add(1, Ordering::Relaxed);
        let old = std::mem::replace(&mut *st, SlotState::Done { value, seq, version: 0 });
        drop(st);
        self.cv.notify_all();
        if let SlotState::Pending { wakers, queues } = old {
            for w in wakers {
                w.wake();
            }
            for (q, i) in queues {
                q.push(i);
            }
        }
    }

    /// Keeps the bytes of a stored value pulled from another node, so
    /// later reads do not pull it again.
    pub(crate) fn cache(&self, bytes: Bytes) {
        if let SlotState::Done { value: v @ Ok(Val::Stored { .. }), .. } = &mut *self.state.lock().expect("slot lock") {
            *v = Ok(Val::Inline(bytes));
        }
    }

    /// The current answer and its version, once there is one.
    pub(crate) fn answer(&self) -> Option<(Result<Val, TaskError>, u32)> {
        match &*self.state.lock().expect("slot lock") {
            SlotState::Done { value, version, .. } => Some((value.clone(), *version)),
            SlotState::Pending { .. } => None,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(*self.state.lock().expect("slot lock"), SlotState::Done { .. })
    }

    pub(crate) fn poll_value(&self, cx: &mut Context<'_>) -> Poll<Result<Val, TaskError>> {
        let mut st = self.state.lock().expect("slot lock");
        match &mut *st {
            SlotState::Done { value, .. } => Poll::Ready(value.clone()),
            SlotState::Pending { wakers, .. } => {
                if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    pub(crate) fn wait_value(&self, deadline: Option<Instant>) -> Option<Result<Val, TaskError>> {
        if let SlotState::Done { value, .. } = &*self.state.lock().expect("slot lock") {
            return Some(value.clone());
        }
        // Inside a task, waiting lends the task's CPU to the tasks it waits
        // for (said without the lock held: it writes to the worker).
        let _blocked = crate::executor::Blocked::enter();
        let mut st = self.state.lock().expect("slot lock");
        loop {
            if let SlotState::Done { value, .. } = &*st {
                return Some(value.clone());
            }
            match deadline {
                None => st = self.cv.wait(st).expect("slot lock"),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    st = self.cv.wait_timeout(st, d - now).expect("slot lock").0;
                }
            }
        }
    }

    /// Registers `q` to hear about completion as index `i`. Returns the
    /// completion sequence number if already done.
    pub(crate) fn subscribe(&self, q: &Arc<CompletionQueue>, i: usize) -> Option<u64> {
        let mut st = self.state.lock().expect("slot lock");
        match &mut *st {
            SlotState::Done { seq, .. } => Some(*seq),
            SlotState::Pending { queues, .. } => {
                queues.push((q.clone(), i));
                None
            }
        }
    }
}

/// Indices of objects in completion order.
pub(crate) struct CompletionQueue {
    inner: Mutex<(VecDeque<usize>, Option<Waker>)>,
    cv: Condvar,
}

impl CompletionQueue {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(CompletionQueue { inner: Mutex::new((VecDeque::new(), None)), cv: Condvar::new() })
    }

    pub(crate) fn push(&self, i: usize) {
        let mut g = self.inner.lock().expect("queue lock");
        g.0.push_back(i);
        let w = g.1.take();
        drop(g);
        self.cv.notify_all();
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Subscribes to every slot; those already done are queued first, in
    /// the order they completed.
    pub(crate) fn subscribe_all<'a>(self: &Arc<Self>, slots: impl Iterator<Item = &'a Arc<Slot>>) {
        let mut done: Vec<(u64, usize)> = Vec::new();
        for (i, s) in slots.enumerate() {
            if let Some(seq) = s.subscribe(self, i) {
                done.push((seq, i));
            }
        }
        done.sort_unstable();
        let mut g = self.inner.lock().expect("queue lock");
        for (_, i) in done.into_iter().rev() {
            g.0.push_front(i);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.lock().expect("queue lock").0.len()
    }

    pub(crate) fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<usize> {
        let mut g = self.inner.lock().expect("queue lock");
        match g.0.pop_front() {
            Some(i) => Poll::Ready(i),
            None => {
                g.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    pub(crate) fn pop_blocking(&self) -> usize {
        if let Some(i) = self.inner.lock().expect("queue lock").0.pop_front() {
            return i;
        }
        let _blocked = crate::executor::Blocked::enter();
        let mut g = self.inner.lock().expect("queue lock");
        loop {
            if let Some(i) = g.0.pop_front() {
                return i;
            }
            g = self.cv.wait(g).expect("queue lock");
        }
    }

    pub(crate) fn wait_len(&self, n: usize, deadline: Option<Instant>) {
        if self.len() >= n {
            return;
        }
        let _blocked = crate::executor::Blocked::enter();
        let mut g = self.inner.lock().expect("queue lock");
        while g.0.len() < n {
            match deadline {
                None => g = self.cv.wait(g).expect("queue lock"),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return;
                    }
                    g = self.cv.wait_timeout(g, d - now).expect("queue lock").0;
                }
            }
        }
    }

    /// Ready once `n` indices are queued.
    pub(crate) fn poll_len(&self, n: usize, cx: &mut Context<'_>) -> Poll<()> {
        let mut g = self.inner.lock().expect("queue lock");
        if g.0.len() >= n {
            return Poll::Ready(());
        }
        g.1 = Some(cx.waker().clone());
        Poll::Pending
    }

    pub(crate) fn drain(&self) -> Vec<usize> {
        self.inner.lock().expect("queue lock").0.drain(..).collect()
    }
}
