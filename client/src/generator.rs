//! Streaming generators: a remote function returning an iterator (or an
//! async one returning a stream) yields its items to the caller while it
//! runs, as Ray's generator tasks do.
//!
//! ```no_run
//! #[shoal::remote]
//! fn evens(n: u64) -> impl Iterator<Item = u64> {
//!     (0..n).map(|i| i * 2)
//! }
//!
//! # fn demo() -> Result<(), shoal::TaskError> {
//! for item in evens::remote(1_000) {
//!     let r = item?;               // an ObjectRef<u64>, usable on its own
//!     let _v: u64 = r.get()?;
//! }
//! # Ok(()) }
//! ```
//!
//! Each item is an object of the running task's own session, put as it is
//! yielded and sent to the caller through the head with its value (no
//! round trip to read a small one). A small item holding no refs is only
//! passed on by the head, which keeps nothing for it: the caller holds it
//! alone and hands it to the head only if it sends the ref on (an
//! argument, inside a value), so reading an item where it arrives costs
//! the head no more than forwarding it. At most [`GENERATOR_WINDOW`]
//! items, or [`GENERATOR_WINDOW_BYTES`] of them, wait unconsumed: past
//! that the producer pauses until the caller takes more. A failure (a
//! panic at item 500) ends the stream after the items yielded before it,
//! with the error. Dropping the generator before its end cancels the task.

use crate::calls::{Arg, CallOptions};
use crate::driver::Out;
use crate::error::TaskError;
use crate::functions::{Encoded, FunctionMeta, InvokeError};
use crate::object_ref::ObjectRef;
use crate::objects::Cluster;
use crate::slot::Slot;
use crate::stream::{AckCounter, AckGate, InFlight, ItemQueue, Next};
use serde::Serialize;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

pub use crate::stream::{GENERATOR_WINDOW, GENERATOR_WINDOW_BYTES};

/// The items of a generator task, in the order it yielded them: an
/// `Iterator` (blocking) and a `Stream` (async) of
/// `Result<ObjectRef<T>, TaskError>`. The last item is the task's error
/// if it failed.
pub struct ObjectRefGenerator<T> {
    cluster: Option<Arc<Cluster>>,
    task: u64,
    /// The task's own result (the item count, or its failure).
    end: ObjectRef<u64>,
    queue: Arc<ItemQueue>,
    /// Items taken from `queue` and not yet handed out.
    taken: std::collections::VecDeque<crate::stream::Arrived>,
    acks: AckCounter,
    finished: bool,
    /// Dropping it before its end cancels the task (not for a `Process`).
    cancel_on_drop: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T> ObjectRefGenerator<T> {
    /// The generator task's id.
    pub fn id(&self) -> crate::ObjectId {
        self.end.id()
    }

    /// How many items were taken so far.
    pub fn consumed(&self) -> u64 {
        self.acks.consumed()
    }

    /// Whether the generator task has ended (its items may still wait to
    /// be taken).
    pub fn is_finished(&self) -> bool {
        self.end.is_ready()
    }

    /// Dropping it no longer cancels the task.
    pub(crate) fn keep_running_when_dropped(&mut self) {
        self.cancel_on_drop = false;
    }

    /// Cancels the generator task (its executor process ends if it runs).
    pub fn cancel(&self) {
        self.end.cancel();
    }

    fn item(&mut self, (id, value, owned): crate::stream::Arrived) -> Result<ObjectRef<T>, TaskError> {
        let ack = self.acks.took(crate::stream::item_size(&value));
        let Some(c) = &self.cluster else { return Err(TaskError::Disconnected { message: "no cluster".into() }) };
        if let Some(n) = ack {
            c.send(Out::GeneratorAck(self.task, n));
        }
        let slot = Slot::done(value);
        if owned {
            // Only here: the head hears of it only if it is sent on.
            return Ok(ObjectRef::from_inner(ObjectRef::<()>::owned_inner(id, slot, c.clone())));
        }
        // The head registered this process as the item's borrower.
        c.register(id, slot.clone());
        let inner = ObjectRef::<()>::borrowed_inner(id, slot, c.clone());
        c.borrows.insert(id, Arc::downgrade(&inner));
        Ok(ObjectRef::from_inner(inner))
    }

    fn end(&mut self) -> Option<Result<ObjectRef<T>, TaskError>> {
        if self.finished {
            return None;
        }
        self.finished = true;
        match self.end.inner.slot.answer() {
            Some((Err(e), _)) => Some(Err(e)),
            _ => None,
        }
    }
}

impl<T> Iterator for ObjectRefGenerator<T> {
    type Item = Result<ObjectRef<T>, TaskError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let end = self.end.inner.slot.clone();
        let queue = self.queue.clone();
        match queue.next_blocking(&mut self.taken, || end.is_done()) {
            Some(item) => Some(self.item(item)),
            None => self.end(),
        }
    }
}

impl<T> futures::Stream for ObjectRefGenerator<T> {
    type Item = Result<ObjectRef<T>, TaskError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let end = self.end.inner.slot.clone();
        // The end's slot wakes us too: the session loop notifies the queue
        // after completing it.
        let queue = self.queue.clone();
        match queue.poll(&mut self.taken, || end.is_done(), Some(cx.waker())) {
            Next::Item(item) => Poll::Ready(Some(self.item(item))),
            Next::End => Poll::Ready(self.end()),
            Next::Pending => Poll::Pending,
        }
    }
}

impl<T> Drop for ObjectRefGenerator<T> {
    fn drop(&mut self) {
        let Some(c) = &self.cluster else { return };
        c.generators.remove(&self.task);
        // Items that arrived but were never taken: their borrows go (an
        // owned item has none).
        for (id, _, owned) in self.taken.drain(..).chain(self.queue.drain()) {
            if !owned {
                c.borrow(id, false);
            }
        }
        if self.cancel_on_drop && !self.end.is_ready() {
            c.cancel(self.task);
        }
    }
}

/// Submits a call of a generator function (used by the macro).
pub fn submit_generator<T>(meta: &'static FunctionMeta, opts: CallOptions, args: Vec<Arg>) -> ObjectRefGenerator<T> {
    let queue = Arc::new(ItemQueue::default());
    let mut cluster = None;
    let end: ObjectRef<u64> = crate::calls::submit_inner(meta, opts, args, |c, id| {
        c.generators.insert(id, queue.clone());
        cluster = Some(c.clone());
    });
    let task = end.inner.id;
    ObjectRefGenerator {
        cluster,
        task,
        end,
        queue,
        taken: Default::default(),
        acks: AckCounter::default(),
        finished: false,
        cancel_on_drop: true,
        _t: PhantomData,
    }
}

/// Runs a generator function's iterator inside its task (used by the
/// macro): each item is put and sent to the caller; past
/// [`GENERATOR_WINDOW`] unconsumed items (or [`GENERATOR_WINDOW_BYTES`])
/// it waits. The task's result is the item count.
pub fn run_generator<T: Serialize>(items: impl IntoIterator<Item = T>) -> Result<Encoded, InvokeError> {
    let task = crate::executor::current_task();
    let cluster = crate::init::driver_or_init().map_err(|e| InvokeError::ResultEncode(format!("a generator needs its task's session: {e}")))?;
    let gate = cluster.producing.entry(task).or_insert_with(|| Arc::new(AckGate::default())).clone();
    struct Unregister<'a>(&'a Cluster, u64);
    impl Drop for Unregister<'_> {
        fn drop(&mut self) {
            self.0.producing.remove(&self.1);
        }
    }
    let _unregister = Unregister(&cluster, task);
    let mut n = 0u64;
    let mut unconsumed = InFlight::default();
    for item in items {
        let p = crate::init::prepare_put(&cluster, &item).map_err(|e| InvokeError::ResultEncode(format!("item {n}: {e}")))?;
        // Counted as the caller counts it (`stream::item_size`).
        let size = p.msg.stored.as_ref().map_or(p.msg.value.len() as u64, |s| s.size);
        cluster.send(Out::Item(task, n, p.msg));
        cluster.mark_unsynced();
        drop(p.refs);
        unconsumed.yielded(n, size);
        n += 1;
        gate.wait_below(&mut unconsumed);
    }
    crate::functions::encode_result(n)
}

/// [`run_generator`] for an async generator function's stream.
pub fn run_stream<T: Serialize>(items: impl futures::Stream<Item = T>) -> Result<Encoded, InvokeError> {
    let mut items = Box::pin(items);
    run_generator(std::iter::from_fn(move || crate::executor::block_on(futures::StreamExt::next(&mut items))))
}
