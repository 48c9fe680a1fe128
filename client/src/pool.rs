//! The shapes Python users know, on the cluster: [`Pool`] (like
//! `multiprocessing.Pool`), [`Process`] (like `multiprocessing.Process`)
//! and [`Parallel`] / [`parallel`] (like joblib).
//!
//! All are built on remote functions: items travel in *chunks* (one task
//! runs many items, as `chunksize` does in `multiprocessing`), chunk sizes
//! adapt to how long items take (joblib's auto batching: grow while a chunk
//! takes less than ~20 ms), and at most a bounded window of chunks is in
//! flight, so an endless input iterator is consumed only as results are
//! taken.

use crate::calls::{IntoArg, submit};
use crate::error::TaskError;
use crate::functions::FunctionMeta;
use crate::object_ref::{ObjectRef, wait_blocking};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A remote function as a value: `f::func` for `#[shoal::remote] fn f`.
pub trait RemoteFn: Copy + Send + Sync + 'static {
    /// The parameters as a tuple.
    type Args: Serialize + DeserializeOwned + Send + 'static;
    /// The return type.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// Registered name.
    fn name(&self) -> &'static str;
    #[doc(hidden)]
    fn chunk_meta(&self) -> &'static FunctionMeta;
    #[doc(hidden)]
    fn process_meta(&self) -> &'static FunctionMeta;
}

/// A remote function of one parameter (usable with [`Pool::map`]).
pub trait UnaryFn: RemoteFn {
    /// The parameter type.
    type Arg;
    /// Wraps the argument into the parameter tuple.
    fn args(arg: Self::Arg) -> Self::Args;
}

/// A call not yet submitted: `f::func.call(x)` (joblib's `delayed(f)(x)`).
pub struct Call<F: RemoteFn> {
    f: F,
    args: F::Args,
}

impl<F: RemoteFn> Call<F> {
    /// A call of `f` with `args`.
    pub fn new(f: F, args: F::Args) -> Self {
        Call { f, args }
    }
}

/// A panic of one item of a chunk.
#[doc(hidden)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemPanic {
    pub(crate) message: String,
    pub(crate) location: String,
}

/// What a chunk task returns.
#[doc(hidden)]
#[derive(Debug, Serialize, Deserialize)]
pub struct ChunkOutput<R> {
    items: Vec<Result<R, ItemPanic>>,
    elapsed_ns: u64,
    pid: u32,
    node: String,
}

/// Runs a chunk: each item under its own panic guard (used by the macro).
#[doc(hidden)]
pub fn run_chunk<A: DeserializeOwned, R: Serialize + 'static, F: Fn(A) -> R>(
    args: &[bytes::Bytes],
    f: F,
) -> Result<crate::functions::Encoded, crate::functions::InvokeError> {
    crate::functions::check_arity(args, 1)?;
    let items: Vec<A> = crate::functions::decode_arg(args, 0)?;
    let t = Instant::now();
    let out: Vec<Result<R, ItemPanic>> = items
        .into_iter()
        .map(|a| {
            crate::executor::clear_panic();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(a))).map_err(|_| {
                let (message, location) = crate::executor::take_panic().unwrap_or_else(|| ("panic".into(), String::new()));
                ItemPanic { message, location }
            })
        })
        .collect();
    let ctx = crate::executor::context();
    let output =
        ChunkOutput { items: out, elapsed_ns: t.elapsed().as_nanos() as u64, pid: std::process::id(), node: ctx.map(|c| c.node_id).unwrap_or_default() };
    crate::functions::encode_result(output)
}

/// Why a pool operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PoolError {
    /// Item `index` (position in the input) failed.
    #[error("item {index} failed: {error}")]
    Item {
        /// Position of the item in the input.
        index: usize,
        /// What went wrong.
        error: TaskError,
    },
    /// The pool was closed: it takes no new work.
    #[error("the pool is closed")]
    Closed,
    /// The pool was terminated: outstanding work was cancelled.
    #[error("the pool was terminated")]
    Terminated,
}

fn item_error<F: RemoteFn>(f: &F, index: usize, p: ItemPanic, node: &str) -> PoolError {
    PoolError::Item { index, error: TaskError::Panicked { function: f.name().to_string(), message: p.message, location: p.location, node: node.to_string() } }
}

/// Chooses chunk sizes: fixed, or grown while chunks are short.
#[derive(Clone, Copy, Debug)]
struct ChunkSizer {
    fixed: Option<usize>,
    size: usize,
}

/// Aim for chunks of about this much work.
const CHUNK_TARGET: Duration = Duration::from_millis(20);
/// Largest automatic chunk.
pub const MAX_AUTO_CHUNK: usize = 65_536;

impl ChunkSizer {
    fn new(fixed: Option<usize>) -> Self {
        ChunkSizer { fixed: fixed.map(|n| n.max(1)), size: 1 }
    }
    fn next(&self) -> usize {
        self.fixed.unwrap_or(self.size)
    }
    fn observe(&mut self, items: usize, elapsed: Duration) {
        if self.fixed.is_some() || items == 0 || items < self.size / 2 {
            return;
        }
        if elapsed < CHUNK_TARGET / 2 {
            self.size = (self.size * 2).min(MAX_AUTO_CHUNK);
        } else if elapsed > CHUNK_TARGET * 4 && self.size > 1 {
            self.size /= 2;
        }
    }
}

struct Pending<R> {
    start: usize,
    len: usize,
    r: ObjectRef<ChunkOutput<R>>,
}

/// Shared state of a pool: closed/terminated flags, chunks in flight (to
/// cancel on terminate) and outstanding async operations (for join).
struct PoolState {
    closed: AtomicBool,
    terminated: AtomicBool,
    inflight: Mutex<std::collections::HashSet<u64>>,
    outstanding: Mutex<usize>,
    idle: Condvar,
}

/// Counters a map exposes, e.g. to check memory stays bounded.
#[derive(Debug, Default)]
pub struct MapStats {
    max_items_in_flight: AtomicUsize,
    chunks: AtomicUsize,
}

impl MapStats {
    /// The most items submitted and not yet handed back at any moment.
    pub fn max_items_in_flight(&self) -> usize {
        self.max_items_in_flight.load(Ordering::Relaxed)
    }
    /// Chunk tasks submitted.
    pub fn chunks(&self) -> usize {
        self.chunks.load(Ordering::Relaxed)
    }
}

/// The engine behind every map: lazily pulls input, keeps at most
/// `window` chunks in flight, yields results ordered or as completed.
struct Mapper<F: RemoteFn, I: Iterator<Item = F::Args>> {
    f: F,
    input: std::iter::Fuse<I>,
    next_index: usize,
    pending: VecDeque<Pending<F::Output>>,
    ready: VecDeque<Result<F::Output, PoolError>>,
    sizer: ChunkSizer,
    window: usize,
    ordered: bool,
    buffered_items: usize,
    state: Arc<PoolState>,
    stats: Arc<MapStats>,
    progress: Option<indicatif::ProgressBar>,
    done: bool,
}

impl<F: RemoteFn, I: Iterator<Item = F::Args>> Mapper<F, I> {
    fn fill(&mut self) {
        while self.pending.len() < self.window && !self.state.terminated.load(Ordering::Relaxed) {
            let n = self.sizer.next();
            let items: Vec<F::Args> = self.input.by_ref().take(n).collect();
            if items.is_empty() {
                break;
            }
            let len = items.len();
            let r: ObjectRef<ChunkOutput<F::Output>> = submit(self.f.chunk_meta(), vec![IntoArg::<Vec<F::Args>>::into_arg(items)]);
            self.state.inflight.lock().expect("pool lock").insert(r.inner.id);
            // `terminate` may have drained the in-flight set just before.
            if self.state.terminated.load(Ordering::Relaxed) {
                r.cancel();
            }
            self.pending.push_back(Pending { start: self.next_index, len, r });
            self.next_index += len;
            self.stats.chunks.fetch_add(1, Ordering::Relaxed);
        }
        let in_flight = self.pending.iter().map(|p| p.len).sum::<usize>() + self.buffered_items;
        self.stats.max_items_in_flight.fetch_max(in_flight, Ordering::Relaxed);
    }

    /// Takes one finished chunk into `ready`. False when nothing is left.
    fn take_chunk(&mut self) -> bool {
        self.fill();
        if self.pending.is_empty() {
            return false;
        }
        let p = if self.ordered {
            self.pending.pop_front().expect("non-empty")
        } else {
            let refs: Vec<_> = self.pending.iter().map(|p| p.r.clone()).collect();
            let (done, _) = wait_blocking(&refs, 1, None);
            let id = done[0].id();
            let i = self.pending.iter().position(|p| p.r.id() == id).expect("from pending");
            self.pending.remove(i).expect("index valid")
        };
        // Still cancellable by `terminate` while we wait for it.
        let got = p.r.get();
        self.state.inflight.lock().expect("pool lock").remove(&p.r.inner.id);
        match got {
            Ok(out) => {
                self.sizer.observe(p.len, Duration::from_nanos(out.elapsed_ns));
                for (k, item) in out.items.into_iter().enumerate() {
                    self.ready.push_back(item.map_err(|e| item_error(&self.f, p.start + k, e, &out.node)));
                }
            }
            Err(e) => {
                let err = if self.state.terminated.load(Ordering::Relaxed) { PoolError::Terminated } else { PoolError::Item { index: p.start, error: e } };
                self.ready.push_back(Err(err));
            }
        }
        self.buffered_items = self.ready.len();
        if let Some(pb) = &self.progress {
            pb.inc(p.len as u64);
        }
        self.fill();
        true
    }
}

impl<F: RemoteFn, I: Iterator<Item = F::Args>> Iterator for Mapper<F, I> {
    type Item = Result<F::Output, PoolError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            if let Some(r) = self.ready.pop_front() {
                self.buffered_items = self.ready.len();
                return Some(r);
            }
            if !self.take_chunk() {
                self.done = true;
                if let Some(pb) = &self.progress {
                    pb.finish();
                }
                // Terminated before every item was even submitted: the
                // map did not finish (it must not look like an empty one).
                if self.state.terminated.load(Ordering::Relaxed) && self.input.next().is_some() {
                    return Some(Err(PoolError::Terminated));
                }
                return None;
            }
        }
    }
}

impl<F: RemoteFn, I: Iterator<Item = F::Args>> Drop for Mapper<F, I> {
    fn drop(&mut self) {
        let mut inflight = self.state.inflight.lock().expect("pool lock");
        for p in &self.pending {
            inflight.remove(&p.r.inner.id);
        }
    }
}

/// The iterator [`Pool::imap`] and [`Pool::imap_unordered`] return for
/// input `I` of a one-parameter function `F`.
pub type UnaryMapIter<F, I> = MapIter<F, std::iter::Map<I, fn(<F as UnaryFn>::Arg) -> <F as RemoteFn>::Args>>;

/// Results of [`Pool::imap`] (input order) or [`Pool::imap_unordered`]
/// (completion order), computed lazily as you iterate.
pub struct MapIter<F: RemoteFn, I: Iterator<Item = F::Args>> {
    inner: Mapper<F, I>,
}

impl<F: RemoteFn, I: Iterator<Item = F::Args>> MapIter<F, I> {
    /// Counters of this map (in-flight bound, chunks).
    pub fn stats(&self) -> Arc<MapStats> {
        self.inner.stats.clone()
    }
}

impl<F: RemoteFn, I: Iterator<Item = F::Args>> Iterator for MapIter<F, I> {
    type Item = Result<F::Output, PoolError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }
}

/// A pool of cluster capacity with `multiprocessing.Pool`'s methods.
///
/// ```no_run
/// #[shoal::remote]
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = shoal::Pool::new(4).unwrap();
/// let squares = pool.map(square::func, 0..1000u64).unwrap();
/// assert_eq!(squares[10], 100);
/// ```
pub struct Pool {
    processes: usize,
    chunksize: Option<usize>,
    window: Option<usize>,
    progress: bool,
    state: Arc<PoolState>,
}

impl Pool {
    /// A pool running up to `processes` chunks at once (connects to the
    /// cluster first if needed).
    pub fn new(processes: usize) -> crate::Result<Pool> {
        crate::init::driver_or_init()?;
        Ok(Pool {
            processes: processes.max(1),
            chunksize: None,
            window: None,
            progress: false,
            state: Arc::new(PoolState {
                closed: AtomicBool::new(false),
                terminated: AtomicBool::new(false),
                inflight: Mutex::new(Default::default()),
                outstanding: Mutex::new(0),
                idle: Condvar::new(),
            }),
        })
    }

    /// A pool as wide as every CPU in the cluster.
    pub fn all() -> crate::Result<Pool> {
        crate::init::driver_or_init()?;
        let st = crate::runtime::block_on(crate::cluster_status())?;
        Pool::new(st.total_cpus().round().max(1.0) as usize)
    }

    /// Items per task. Default: automatic (grows while tasks are short).
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = Some(n.max(1));
        self
    }

    /// Most chunks in flight at once (default: twice `processes`).
    pub fn window(mut self, chunks: usize) -> Self {
        self.window = Some(chunks.max(1));
        self
    }

    /// Show a progress bar on maps (only when stderr is a terminal).
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// How many chunks may run at once.
    pub fn processes(&self) -> usize {
        self.processes
    }

    fn check(&self) -> Result<(), PoolError> {
        if self.state.terminated.load(Ordering::Relaxed) {
            return Err(PoolError::Terminated);
        }
        if self.state.closed.load(Ordering::Relaxed) {
            return Err(PoolError::Closed);
        }
        Ok(())
    }

    fn mapper<F: RemoteFn, I: Iterator<Item = F::Args>>(&self, f: F, input: I, ordered: bool, total: Option<usize>) -> Mapper<F, I> {
        let progress = (self.progress && std::io::stderr().is_terminal()).then(|| progress_bar(total));
        Mapper {
            f,
            input: input.fuse(),
            next_index: 0,
            pending: VecDeque::new(),
            ready: VecDeque::new(),
            sizer: ChunkSizer::new(self.chunksize),
            window: self.window.unwrap_or(self.processes * 2),
            ordered,
            buffered_items: 0,
            state: self.state.clone(),
            stats: Arc::new(MapStats::default()),
            progress,
            done: false,
        }
    }

    /// Runs `f(args)` once and waits for it.
    pub fn apply<F: RemoteFn>(&self, f: F, args: F::Args) -> Result<F::Output, PoolError> {
        self.apply_async(f, args)?.get()
    }

    /// Submits `f(args)`; returns at once.
    pub fn apply_async<F: RemoteFn>(&self, f: F, args: F::Args) -> Result<AsyncResult<F>, PoolError> {
        self.check()?;
        let r: ObjectRef<ChunkOutput<F::Output>> = submit(f.chunk_meta(), vec![IntoArg::<Vec<F::Args>>::into_arg(vec![args])]);
        Ok(AsyncResult { f, r })
    }

    /// `f(x)` for every item, results in input order.
    pub fn map<F: UnaryFn>(&self, f: F, items: impl IntoIterator<Item = F::Arg>) -> Result<Vec<F::Output>, PoolError> {
        self.imap(f, items)?.collect()
    }

    /// `f(*args)` for every tuple, results in input order.
    pub fn starmap<F: RemoteFn>(&self, f: F, items: impl IntoIterator<Item = F::Args>) -> Result<Vec<F::Output>, PoolError> {
        self.check()?;
        let it = items.into_iter();
        let total = exact_len(&it);
        self.mapper(f, it, true, total).collect()
    }

    /// Lazy ordered map: results in input order as you iterate.
    pub fn imap<F: UnaryFn, T: IntoIterator<Item = F::Arg>>(&self, f: F, items: T) -> Result<UnaryMapIter<F, T::IntoIter>, PoolError> {
        self.check()?;
        let it = items.into_iter();
        let total = exact_len(&it);
        let it = it.map(F::args as fn(F::Arg) -> F::Args);
        Ok(MapIter { inner: self.mapper(f, it, true, total) })
    }

    /// Lazy map yielding results as they complete (not in input order).
    pub fn imap_unordered<F: UnaryFn, T: IntoIterator<Item = F::Arg>>(&self, f: F, items: T) -> Result<UnaryMapIter<F, T::IntoIter>, PoolError> {
        self.check()?;
        let it = items.into_iter();
        let total = exact_len(&it);
        let it = it.map(F::args as fn(F::Arg) -> F::Args);
        Ok(MapIter { inner: self.mapper(f, it, false, total) })
    }

    /// [`map`](Self::map) in the background; returns at once.
    pub fn map_async<F: UnaryFn>(&self, f: F, items: impl IntoIterator<Item = F::Arg>) -> Result<MapResult<F::Output>, PoolError>
    where
        F::Arg: Send + 'static,
    {
        self.check()?;
        let items: Vec<F::Args> = items.into_iter().map(F::args).collect();
        self.spawn_map(f, items)
    }

    /// [`starmap`](Self::starmap) in the background; returns at once.
    pub fn starmap_async<F: RemoteFn>(&self, f: F, items: impl IntoIterator<Item = F::Args>) -> Result<MapResult<F::Output>, PoolError> {
        self.check()?;
        self.spawn_map(f, items.into_iter().collect())
    }

    fn spawn_map<F: RemoteFn>(&self, f: F, items: Vec<F::Args>) -> Result<MapResult<F::Output>, PoolError> {
        let total = Some(items.len());
        let mapper = self.mapper(f, items.into_iter(), true, total);
        let slot = Arc::new((Mutex::new(None), Condvar::new()));
        *self.state.outstanding.lock().expect("pool lock") += 1;
        let (slot2, state) = (slot.clone(), self.state.clone());
        std::thread::spawn(move || {
            let result: Result<Vec<F::Output>, PoolError> = mapper.collect();
            *slot2.0.lock().expect("result lock") = Some(result);
            slot2.1.notify_all();
            let mut n = state.outstanding.lock().expect("pool lock");
            *n -= 1;
            state.idle.notify_all();
        });
        Ok(MapResult { slot })
    }

    /// No new work from now on; work already submitted continues.
    pub fn close(&self) {
        self.state.closed.store(true, Ordering::Relaxed);
    }

    /// Waits for every `map_async`/`starmap_async` of this pool to finish.
    /// Call [`close`](Self::close) (or [`terminate`](Self::terminate)) first.
    pub fn join(&self) {
        let mut n = self.state.outstanding.lock().expect("pool lock");
        while *n > 0 {
            n = self.state.idle.wait(n).expect("pool lock");
        }
    }

    /// Cancels every chunk in flight and refuses new work. Running maps end
    /// with [`PoolError::Terminated`].
    pub fn terminate(&self) {
        self.state.terminated.store(true, Ordering::Relaxed);
        self.state.closed.store(true, Ordering::Relaxed);
        if let Some(d) = crate::init::current() {
            for id in self.state.inflight.lock().expect("pool lock").drain() {
                d.cancel(id);
            }
        }
    }
}

fn exact_len<I: Iterator>(it: &I) -> Option<usize> {
    match it.size_hint() {
        (lo, Some(hi)) if lo == hi => Some(lo),
        _ => None,
    }
}

fn progress_bar(total: Option<usize>) -> indicatif::ProgressBar {
    let pb = match total {
        Some(n) => indicatif::ProgressBar::new(n as u64),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let style = indicatif::ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} items  {per_sec}  ETA {eta}  [{elapsed}]")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    pb.set_style(style);
    pb
}

/// The handle of [`Pool::apply_async`].
pub struct AsyncResult<F: RemoteFn> {
    f: F,
    r: ObjectRef<ChunkOutput<F::Output>>,
}

impl<F: RemoteFn> AsyncResult<F> {
    /// Waits for the result.
    pub fn get(&self) -> Result<F::Output, PoolError> {
        let out = self.r.get().map_err(|error| PoolError::Item { index: 0, error })?;
        let node = out.node.clone();
        out.items.into_iter().next().expect("one item").map_err(|p| item_error(&self.f, 0, p, &node))
    }
    /// Waits at most `timeout` for it to finish; true if it did.
    pub fn wait(&self, timeout: Duration) -> bool {
        wait_blocking(std::slice::from_ref(&self.r), 1, Some(timeout)).0.len() == 1
    }
    /// Finished (successfully or not)?
    pub fn ready(&self) -> bool {
        self.r.is_ready()
    }
    /// `Some(true)` if it finished with a value, `None` while running.
    pub fn successful(&self) -> Option<bool> {
        self.ready().then(|| self.get().is_ok())
    }
}

/// The handle of [`Pool::map_async`] / [`Pool::starmap_async`].
pub struct MapResult<R> {
    #[allow(clippy::type_complexity)]
    slot: Arc<(Mutex<Option<Result<Vec<R>, PoolError>>>, Condvar)>,
}

impl<R> MapResult<R> {
    /// Waits for all results, in input order.
    pub fn get(self) -> Result<Vec<R>, PoolError> {
        let mut g = self.slot.0.lock().expect("result lock");
        loop {
            if let Some(r) = g.take() {
                return r;
            }
            g = self.slot.1.wait(g).expect("result lock");
        }
    }
    /// Waits at most `timeout`; true if finished.
    pub fn wait(&self, timeout: Duration) -> bool {
        let g = self.slot.0.lock().expect("result lock");
        let (g, _) = self.slot.1.wait_timeout_while(g, timeout, |r| r.is_none()).expect("result lock");
        g.is_some()
    }
    /// Finished?
    pub fn ready(&self) -> bool {
        self.slot.0.lock().expect("result lock").is_some()
    }
    /// `Some(true)` if every item succeeded, `None` while running.
    pub fn successful(&self) -> Option<bool> {
        self.slot.0.lock().expect("result lock").as_ref().map(|r| r.is_ok())
    }
}

/// joblib's `Parallel`: run calls on the cluster in automatic batches,
/// results in order.
///
/// ```no_run
/// #[shoal::remote]
/// fn slow_square(x: u64) -> u64 { x * x }
///
/// let out = shoal::Parallel::new().n_jobs(4).progress(true)
///     .run((0..100u64).map(|x| slow_square::func.call(x))).unwrap();
/// ```
#[derive(Clone, Debug, Default)]
pub struct Parallel {
    n_jobs: Option<usize>,
    batch_size: Option<usize>,
    progress: bool,
}

impl Parallel {
    /// Defaults: every CPU of the cluster, automatic batches, no progress bar.
    pub fn new() -> Self {
        Parallel::default()
    }
    /// How many batches run at once.
    pub fn n_jobs(mut self, n: usize) -> Self {
        self.n_jobs = Some(n.max(1));
        self
    }
    /// Calls per batch (default: automatic).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = Some(n.max(1));
        self
    }
    /// Show a progress bar (only when stderr is a terminal).
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }
    /// Runs every call; results in input order.
    pub fn run<F: RemoteFn>(&self, calls: impl IntoIterator<Item = Call<F>>) -> Result<Vec<F::Output>, PoolError> {
        let mut calls = calls.into_iter().peekable();
        let Some(f) = calls.peek().map(|c| c.f) else { return Ok(Vec::new()) };
        let mut pool = match self.n_jobs {
            Some(n) => Pool::new(n),
            None => Pool::all(),
        }
        .map_err(|e| PoolError::Item { index: 0, error: TaskError::from_init(e) })?;
        if let Some(b) = self.batch_size {
            pool = pool.chunksize(b);
        }
        pool = pool.progress(self.progress);
        pool.starmap(f, calls.map(|c| c.args))
    }
}

/// `Parallel::new().run(calls)`.
pub fn parallel<F: RemoteFn>(calls: impl IntoIterator<Item = Call<F>>) -> Result<Vec<F::Output>, PoolError> {
    Parallel::new().run(calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_grow_while_short_and_shrink_when_long() {
        let mut s = ChunkSizer::new(None);
        for _ in 0..30 {
            let n = s.next();
            s.observe(n, Duration::from_micros(10));
        }
        assert_eq!(s.next(), MAX_AUTO_CHUNK);
        let n = s.next();
        s.observe(n, Duration::from_secs(1));
        assert_eq!(s.next(), MAX_AUTO_CHUNK / 2);
        let mut fixed = ChunkSizer::new(Some(7));
        fixed.observe(7, Duration::from_micros(1));
        assert_eq!(fixed.next(), 7);
        // A short final chunk says nothing about item cost.
        let mut s = ChunkSizer::new(None);
        s.size = 64;
        s.observe(3, Duration::from_micros(1));
        assert_eq!(s.next(), 64);
    }
}
