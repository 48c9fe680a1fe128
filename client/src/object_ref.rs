//! `ObjectRef<T>`: a reference to a value that exists, or will exist, in
//! the cluster. It is a future (`.await` it), has blocking `get`s, is cheap
//! to clone, and can be passed as an argument to another remote call to
//! build a task graph. When the last clone is dropped the cluster may free
//! the value.

use crate::error::TaskError;
use crate::objects::{Cluster, Source};
use crate::slot::{CompletionQueue, Slot, SlotState};
use crate::values::Val;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The id of an object (also of the task that makes it); prints as
/// `job.seq`, as everywhere in Shoal.
pub use shoal_domain::ObjectId;

pub(crate) struct RefInner {
    pub(crate) id: u64,
    pub(crate) slot: Arc<Slot>,
    pub(crate) driver: Option<Arc<Cluster>>,
    /// A pull of the value from another node, while an `.await` waits.
    fetch: Mutex<Option<tokio::task::JoinHandle<Result<Bytes, TaskError>>>>,
    /// It reached this process inside a value (see [`crate::refs`]): the
    /// head is told when its last copy here drops, as a borrow.
    pub(crate) borrowed: bool,
    /// An owned generator item (see [`crate::refs::adopt`]): the head
    /// keeps nothing for it until this process sends it on (`true` once
    /// it did; held while the adoption is queued).
    pub(crate) owned: Option<Mutex<bool>>,
    /// A direct actor call's result (see [`crate::direct`]): the
    /// connection it arrives on, read by a waiting `get` itself.
    pub(crate) direct: Option<Arc<crate::direct::Conn>>,
}

impl RefInner {
    /// A direct actor call's result: owned here (the head keeps nothing
    /// for it until it is sent on, or is stored).
    pub(crate) fn direct(id: u64, slot: Arc<Slot>, driver: Arc<Cluster>, conn: Arc<crate::direct::Conn>) -> Arc<RefInner> {
        Arc::new(RefInner { id, slot, driver: Some(driver), fetch: Mutex::new(None), borrowed: false, owned: Some(Mutex::new(false)), direct: Some(conn) })
    }

    /// Marks an owned ref as handed to the head; false if it was already.
    pub(crate) fn claim_adoption(&self) -> bool {
        let Some(adopted) = &self.owned else { return false };
        let mut adopted = adopted.lock().unwrap_or_else(|p| p.into_inner());
        !std::mem::replace(&mut *adopted, true)
    }

    /// Waits for a direct call's result by reading its connection here,
    /// spinning briefly, before sleeping on the slot.
    fn spin(&self, deadline: Option<Instant>) {
        if let Some(c) = &self.direct {
            c.wait_here(&self.slot, deadline);
        }
    }

    /// The error of a ref that failed locally (never reached the cluster).
    pub(crate) fn local_error(&self) -> Option<TaskError> {
        match &*self.slot.state.lock().expect("slot lock") {
            SlotState::Done { value: Err(e), .. } => Some(e.clone()),
            _ => None,
        }
    }
}

impl Drop for RefInner {
    fn drop(&mut self) {
        // An owned item never sent on: the head has nothing to forget.
        if let Some(adopted) = &self.owned
            && !*adopted.lock().unwrap_or_else(|p| p.into_inner())
        {
            return;
        }
        match &self.driver {
            Some(d) if self.borrowed => crate::refs::unborrow(d, self.id),
            Some(d) => d.release(self.id),
            None => {}
        }
    }
}

/// A reference to the (future) value of a remote call or a `put`.
///
/// ```no_run
/// #[shoal::remote]
/// fn square(x: u64) -> u64 { x * x }
///
/// # async fn demo() -> shoal::Result<()> {
/// let r = square::remote(7);              // returns at once
/// let again = square::remote(&r);          // a task graph: runs after `r`
/// assert_eq!(r.get()?, 49);                // blocking
/// assert_eq!(again.await?, 2401);          // or as a future
/// # Ok(()) }
/// ```
pub struct ObjectRef<T> {
    pub(crate) inner: Arc<RefInner>,
    /// While an `.await` of it inside a task waits, the task lends its CPU
    /// (as a blocking `get` does).
    lend: Option<crate::executor::Blocked>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        ObjectRef { inner: self.inner.clone(), lend: None, _t: PhantomData }
    }
}

impl<T> fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectRef<{}>({})", std::any::type_name::<T>(), self.id())
    }
}

fn decode<T: DeserializeOwned>(inner: &RefInner, r: Result<Val, TaskError>) -> Result<T, TaskError> {
    // The common cases (inline, or in this machine's store) need no
    // runtime; a value on another node is pulled, asking the head again
    // if its holders cannot send it.
    let b = match crate::objects::locate(inner.driver.as_ref(), r?) {
        Ok(Source::Here(b)) => b,
        _ => crate::runtime::block_on(crate::objects::read(inner.driver.clone(), inner.slot.clone(), inner.id))?,
    };
    decode_bytes(&b)
}

fn decode_bytes<T: DeserializeOwned>(b: &Bytes) -> Result<T, TaskError> {
    crate::buffer::decode(b).map_err(|e| TaskError::Serialization { message: format!("the value does not decode as {}: {e}", std::any::type_name::<T>()) })
}

impl<T> ObjectRef<T> {
    pub(crate) fn new(id: u64, slot: Arc<Slot>, driver: Option<Arc<Cluster>>) -> Self {
        ObjectRef {
            inner: Arc::new(RefInner { id, slot, driver, fetch: Mutex::new(None), borrowed: false, owned: None, direct: None }),
            lend: None,
            _t: PhantomData,
        }
    }

    /// A ref that reached this process inside a value.
    pub(crate) fn borrowed_inner(id: u64, slot: Arc<Slot>, driver: Arc<Cluster>) -> Arc<RefInner> {
        Arc::new(RefInner { id, slot, driver: Some(driver), fetch: Mutex::new(None), borrowed: true, owned: None, direct: None })
    }

    /// An owned generator item: its value is here, and only here.
    pub(crate) fn owned_inner(id: u64, slot: Arc<Slot>, driver: Arc<Cluster>) -> Arc<RefInner> {
        Arc::new(RefInner { id, slot, driver: Some(driver), fetch: Mutex::new(None), borrowed: true, owned: Some(Mutex::new(false)), direct: None })
    }

    pub(crate) fn from_inner(inner: Arc<RefInner>) -> Self {
        ObjectRef { inner, lend: None, _t: PhantomData }
    }

    pub(crate) fn failed(e: TaskError) -> Self {
        ObjectRef::new(0, Slot::done(Err(e)), None)
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        ObjectId(self.inner.id)
    }

    /// Whether the value (or its error) has arrived.
    pub fn is_ready(&self) -> bool {
        self.inner.slot.is_done()
    }

    /// Cancels the task that makes this object; see [`cancel`](crate::cancel).
    pub fn cancel(&self) {
        if let Some(d) = &self.inner.driver {
            d.cancel(self.inner.id);
        }
    }
}

impl<T: DeserializeOwned> ObjectRef<T> {
    /// Blocks until the value is ready and returns it.
    pub fn get(&self) -> Result<T, TaskError> {
        self.inner.spin(None);
        decode(&self.inner, self.inner.slot.wait_value(None).expect("no deadline"))
    }

    /// Blocks at most `timeout`; `TaskError::Timeout` if the value is not
    /// ready by then (the task keeps running).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, TaskError> {
        self.inner.spin(Some(Instant::now() + timeout));
        match self.inner.slot.wait_value(Some(Instant::now() + timeout)) {
            Some(v) => decode(&self.inner, v),
            None => Err(TaskError::Timeout { after: timeout }),
        }
    }

    /// The value as a future, without consuming the reference.
    pub fn value(&self) -> ObjectRef<T> {
        self.clone()
    }
}

impl<T: DeserializeOwned> Future for ObjectRef<T> {
    type Output = Result<T, TaskError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let v = match this.inner.slot.poll_value(cx) {
            Poll::Ready(v) => v,
            Poll::Pending => {
                if this.lend.is_none() {
                    this.lend = Some(crate::executor::Blocked::enter());
                }
                return Poll::Pending;
            }
        };
        this.lend = None;
        let inner = &this.inner;
        let mut fetch = inner.fetch.lock().expect("fetch lock");
        if fetch.is_none() {
            match v.map(|v| crate::objects::locate(inner.driver.as_ref(), v)) {
                Err(e) => return Poll::Ready(Err(e)),
                Ok(Ok(Source::Here(b))) => return Poll::Ready(decode_bytes(&b)),
                // Pulled on Shoal's runtime (asking the head again if its
                // holders cannot send it); this task waits without
                // blocking its thread.
                Ok(_) => {
                    *fetch = Some(crate::runtime::runtime().spawn(crate::objects::read(inner.driver.clone(), inner.slot.clone(), inner.id)));
                }
            }
        }
        let handle = fetch.as_mut().expect("set above");
        match Pin::new(handle).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => {
                *fetch = None;
                let b = r.map_err(|e| TaskError::ObjectLost { message: format!("pulling object {}: {e}", ObjectId(inner.id)) })??;
                Poll::Ready(decode_bytes(&b))
            }
        }
    }
}

/// Waits for all values, in order. Fails with the first error (in input
/// order).
pub async fn get_all<T: DeserializeOwned>(refs: &[ObjectRef<T>]) -> Result<Vec<T>, TaskError> {
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        out.push(r.clone().await?);
    }
    Ok(out)
}

/// Blocking form of [`get_all`].
pub fn get_all_blocking<T: DeserializeOwned>(refs: &[ObjectRef<T>]) -> Result<Vec<T>, TaskError> {
    refs.iter().map(|r| r.get()).collect()
}

/// Waits until `num_returns` of `refs` are ready or `timeout` passes (like
/// `ray.wait`). Returns `(ready, not_ready)`; `ready` is in completion
/// order, `not_ready` in input order. `num_returns` is capped at
/// `refs.len()`.
pub async fn wait<T>(refs: &[ObjectRef<T>], num_returns: usize, timeout: Option<Duration>) -> (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>) {
    let n = num_returns.min(refs.len());
    let q = CompletionQueue::new();
    q.subscribe_all(refs.iter().map(|r| &r.inner.slot));
    let wait_n = WaitLen { q: &q, n };
    match timeout {
        Some(t) => {
            let _ = tokio::time::timeout(t, wait_n).await;
        }
        None => wait_n.await,
    }
    split(refs, &q, n)
}

/// Blocking form of [`wait`].
pub fn wait_blocking<T>(refs: &[ObjectRef<T>], num_returns: usize, timeout: Option<Duration>) -> (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>) {
    let n = num_returns.min(refs.len());
    let q = CompletionQueue::new();
    q.subscribe_all(refs.iter().map(|r| &r.inner.slot));
    q.wait_len(n, timeout.map(|t| Instant::now() + t));
    split(refs, &q, n)
}

fn split<T>(refs: &[ObjectRef<T>], q: &CompletionQueue, n: usize) -> (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>) {
    let order = q.drain();
    let mut taken = vec![false; refs.len()];
    let mut ready = Vec::new();
    for i in order.into_iter().take(n) {
        taken[i] = true;
        ready.push(refs[i].clone());
    }
    let not_ready = refs.iter().zip(taken).filter(|(_, t)| !t).map(|(r, _)| r.clone()).collect();
    (ready, not_ready)
}

struct WaitLen<'a> {
    q: &'a Arc<CompletionQueue>,
    n: usize,
}

impl Future for WaitLen<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.q.poll_len(self.n, cx)
    }
}

/// Yields refs as their values arrive, in completion order (like Dask's
/// `as_completed`). It is both a `Stream` (async) and an `Iterator`
/// (blocking).
pub struct AsCompleted<T> {
    refs: Vec<Option<ObjectRef<T>>>,
    q: Arc<CompletionQueue>,
    left: usize,
}

/// Refs in completion order; see [`AsCompleted`].
pub fn as_completed<T>(refs: impl IntoIterator<Item = ObjectRef<T>>) -> AsCompleted<T> {
    let refs: Vec<Option<ObjectRef<T>>> = refs.into_iter().map(Some).collect();
    let q = CompletionQueue::new();
    q.subscribe_all(refs.iter().map(|r| &r.as_ref().expect("all present").inner.slot));
    let left = refs.len();
    AsCompleted { refs, q, left }
}

impl<T> AsCompleted<T> {
    /// How many are ready and not yet yielded.
    pub fn ready_count(&self) -> usize {
        self.q.len()
    }
}

impl<T> futures::Stream for AsCompleted<T> {
    type Item = ObjectRef<T>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ObjectRef<T>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        match self.q.poll_pop(cx) {
            Poll::Ready(i) => {
                self.left -= 1;
                Poll::Ready(self.refs[i].take())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> Iterator for AsCompleted<T> {
    type Item = ObjectRef<T>;
    fn next(&mut self) -> Option<ObjectRef<T>> {
        if self.left == 0 {
            return None;
        }
        let i = self.q.pop_blocking();
        self.left -= 1;
        self.refs[i].take()
    }
}
