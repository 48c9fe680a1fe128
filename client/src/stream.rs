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
pub const GENERATOR_WINDOW: u64 = 4096;

/// How many bytes of items (their encoded size, inline or in a store) a
/// generator task may have yielded that its caller has not consumed yet;
/// past that it pauses, whatever their count (one item larger than this
/// is let through alone).
pub const GENERATOR_WINDOW_BYTES: u64 = 16 << 20;

/// Items of one generator task, as they arrive at its caller.
#[derive(Default)]
pub(crate) struct ItemQueue {
    state: Mutex<QueueState>,
    cv: Condvar,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Arrived>,
    wakers: Vec<Waker>,
}

/// An item as it arrived: its object id, its value, and whether it is
/// owned (the head keeps nothing for it, see [`crate::refs::adopt`]).
pub(crate) type Arrived = (u64, Result<Val, TaskError>, bool);

/// What the caller finds: an item, or nothing yet.
pub(crate) enum Next {
    Item(Arrived),
    /// The task's final result is in and every item was taken.
    End,
    Pending,
}

impl ItemQueue {
    /// Items arrived (called by the session loop, in order): one lock and
    /// one wake-up for a batch.
    pub(crate) fn push_all(&self, items: Vec<Arrived>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.items.extend(items);
        let wakers = std::mem::take(&mut st.wakers);
        drop(st);
        for w in wakers {
            w.wake();
        }
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
    /// Items that arrived with it move to `taken` (taken under one lock).
    pub(crate) fn poll(&self, taken: &mut VecDeque<Arrived>, ended: impl Fn() -> bool, waker: Option<&Waker>) -> Next {
        if let Some(item) = taken.pop_front() {
            return Next::Item(item);
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(taken, &mut st.items);
        if let Some(item) = taken.pop_front() {
            return Next::Item(item);
        }
        if ended() {
            return Next::End;
        }
        if let Some(w) = waker {
            st.wakers.push(w.clone());
        }
        Next::Pending
    }

    /// Blocks until an item or the end; as [`Self::poll`] for `taken`.
    pub(crate) fn next_blocking(&self, taken: &mut VecDeque<Arrived>, ended: impl Fn() -> bool) -> Option<Arrived> {
        if let Some(item) = taken.pop_front() {
            return Some(item);
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            std::mem::swap(taken, &mut st.items);
            if let Some(x) = taken.pop_front() {
                return Some(x);
            }
            if ended() {
                return None;
            }
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Takes every item left (the caller is going away).
    pub(crate) fn drain(&self) -> VecDeque<Arrived> {
        std::mem::take(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()).items)
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

    /// Blocks while the items `unconsumed` holds past the caller's count
    /// are [`GENERATOR_WINDOW`] or more, or [`GENERATOR_WINDOW_BYTES`] or
    /// more; forgets those consumed.
    pub(crate) fn wait_below(&self, unconsumed: &mut InFlight) {
        let mut c = self.consumed.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            unconsumed.consumed(*c);
            if !unconsumed.full() {
                return;
            }
            c = self.cv.wait(c).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The items a producer yielded that its caller has not consumed (as far
/// as it heard): their indices and sizes.
#[derive(Default)]
pub(crate) struct InFlight {
    items: VecDeque<(u64, u64)>,
    bytes: u64,
}

impl InFlight {
    /// Item `index` of `size` bytes was yielded.
    pub(crate) fn yielded(&mut self, index: u64, size: u64) {
        self.items.push_back((index, size));
        self.bytes += size;
    }

    /// The caller consumed the items below `n`.
    fn consumed(&mut self, n: u64) {
        while let Some(&(i, size)) = self.items.front() {
            if i >= n {
                break;
            }
            self.items.pop_front();
            self.bytes -= size;
        }
    }

    fn full(&self) -> bool {
        self.items.len() as u64 >= GENERATOR_WINDOW || self.bytes >= GENERATOR_WINDOW_BYTES
    }
}

/// A caller's count of what it consumed since it last told the producer:
/// it tells it again every quarter window, in items or in bytes, so a
/// producer paused at a full window always hears before the caller runs
/// dry (both count an item's size the same way: [`item_size`]).
#[derive(Default)]
pub(crate) struct AckCounter {
    consumed: u64,
    acked: u64,
    bytes: u64,
}

impl AckCounter {
    /// One more item taken, of `size` bytes: the count to send, if due.
    pub(crate) fn took(&mut self, size: u64) -> Option<u64> {
        self.consumed += 1;
        self.bytes += size;
        if self.consumed - self.acked >= GENERATOR_WINDOW / 4 || self.bytes >= GENERATOR_WINDOW_BYTES / 4 {
            self.acked = self.consumed;
            self.bytes = 0;
            return Some(self.consumed);
        }
        None
    }

    /// Items taken so far.
    pub(crate) fn consumed(&self) -> u64 {
        self.consumed
    }
}

/// The size an item counts for in the window: its encoded bytes.
pub(crate) fn item_size(value: &Result<Val, TaskError>) -> u64 {
    match value {
        Ok(Val::Inline(b)) => b.len() as u64,
        Ok(Val::Stored { size, .. }) => *size,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the sizes, a producer paused at a full window is released
    /// by the acks its caller sends while taking what is in flight.
    #[test]
    fn a_full_window_always_gets_an_ack_before_the_caller_runs_dry() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let (mut inflight, mut caller) = (InFlight::default(), AckCounter::default());
            let (mut produced, mut heard) = (0u64, 0u64);
            let sizes: Vec<u64> = (0..3000).map(|_| [8, 4096, 1 << 20, 9 << 20, 40 << 20][(next() % 5) as usize]).collect();
            while produced < sizes.len() as u64 {
                // The producer yields until the window is full.
                while produced < sizes.len() as u64 {
                    inflight.yielded(produced, sizes[produced as usize]);
                    produced += 1;
                    inflight.consumed(heard);
                    if inflight.full() {
                        break;
                    }
                }
                // The caller takes everything in flight; the last ack it
                // sent must unblock the producer.
                let before = heard;
                while caller.consumed() < produced {
                    let i = caller.consumed() as usize;
                    if let Some(n) = caller.took(sizes[i]) {
                        heard = n;
                    }
                }
                inflight.consumed(heard);
                assert!(!inflight.full() || produced == sizes.len() as u64, "stuck at {produced} (heard {before} -> {heard})");
            }
        }
    }
}
