//! The session's side of generator tasks: where a caller's items land
//! ([`ItemQueue`], filled by the session loop in order, before the task's
//! final result), and where a producer waits for its caller to catch up
//! ([`AckGate`]). The typed stream users see is
//! [`ObjectRefGenerator`](crate::ObjectRefGenerator).

use crate::error::TaskError;
use crate::values::Val;
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::task::Waker;

/// How many items a generator task may have yielded that its caller has
/// not consumed yet; past that it pauses (backpressure).
pub const GENERATOR_WINDOW: u64 = 256;

/// Items of one generator task, as they arrive at its caller.
#[derive(Default)]
pub(crate) struct ItemQueue {
    state: Mutex<QueueState>,
    cv: Condvar,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<(u64, Result<Val, TaskError>)>,
    wakers: Vec<Waker>,
}

/// What the caller finds: an item, or nothing yet.
pub(crate) enum Next {
    Item(u64, Result<Val, TaskError>),
    /// The task's final result is in and every item was taken.
    End,
    Pending,
}

impl ItemQueue {
    /// Item `object` arrived (called by the session loop, in order).
    pub(crate) fn push(&self, object: u64, value: Result<Val, TaskError>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.items.push_back((object, value));
        for w in st.wakers.drain(..) {
            w.wake();
        }
        drop(st);
        self.cv.notify_all();
    }

    /// Something else changed (the task's final result arrived).
    pub(crate) fn notify(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for w in st.wakers.drain(..) {
            w.wake();
        }
        drop(st);
        self.cv.notify_all();
    }

    /// The next item, [`Next::End`] once `ended()` says the final result
    /// is in and no item is left; else `Pending` with `waker` registered.
    pub(crate) fn poll(&self, ended: impl Fn() -> bool, waker: Option<&Waker>) -> Next {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((id, v)) = st.items.pop_front() {
            return Next::Item(id, v);
        }
        if ended() {
            return Next::End;
        }
        if let Some(w) = waker {
            st.wakers.push(w.clone());
        }
        Next::Pending
    }

    /// Blocks until an item or the end.
    pub(crate) fn next_blocking(&self, ended: impl Fn() -> bool) -> Option<(u64, Result<Val, TaskError>)> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(x) = st.items.pop_front() {
                return Some(x);
            }
            if ended() {
                return None;
            }
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Takes every item left (the caller is going away).
    pub(crate) fn drain(&self) -> Vec<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.items.drain(..).map(|(id, _)| id).collect()
    }
}

/// A producer's view of how far its caller consumed.
#[derive(Default)]
pub(crate) struct AckGate {
    consumed: Mutex<u64>,
    cv: Condvar,
}

impl AckGate {
    /// The caller consumed `n` items (acks may arrive out of order).
    pub(crate) fn advance(&self, n: u64) {
        let mut c = self.consumed.lock().unwrap_or_else(|p| p.into_inner());
        if n > *c {
            *c = n;
            drop(c);
            self.cv.notify_all();
        }
    }

    /// Blocks while `produced` items leave `window` or more unconsumed.
    pub(crate) fn wait_below(&self, produced: u64, window: u64) {
        let mut c = self.consumed.lock().unwrap_or_else(|p| p.into_inner());
        while produced.saturating_sub(*c) >= window {
            c = self.cv.wait(c).unwrap_or_else(|p| p.into_inner());
        }
    }
}
