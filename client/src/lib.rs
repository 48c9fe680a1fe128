//! # Shoal: distributed tasks for Rust
//!
//! Turn a function into a remote function; its call returns an
//! [`ObjectRef`] at once and runs on any node of the cluster. Pass refs to
//! other calls to build a task graph. The same program runs on an embedded
//! local cluster (nothing to set up) or on a cluster started with the
//! `shoal` CLI.
//!
//! ```no_run
//! #[shoal::remote]
//! fn square(x: u64) -> u64 { x * x }
//!
//! #[shoal::remote]
//! fn add(a: u64, b: u64) -> u64 { a + b }
//!
//! #[shoal::main]
//! async fn main() -> shoal::Result<()> {
//!     shoal::init().await?;                       // SHOAL_ADDRESS, or a local cluster
//!     let refs: Vec<_> = (0..100).map(square::remote).collect();
//!     let squares = shoal::get_all(&refs).await?;
//!     let sum = add::remote(&refs[3], &refs[4]);  // waits on the cluster, not here
//!     assert_eq!(sum.get()?, 9 + 16);
//!     # let _ = squares;
//!     Ok(())
//! }
//! ```
//!
//! ## How user code runs
//! Rust cannot ship closures, so the program's own binary is the code:
//! `init` uploads it to the head once (content-addressed), and workers run
//! it as executor processes. Executors enter the task loop before `main`,
//! so this works for examples, binaries and `cargo test` test binaries
//! alike. Workers must be able to run the binary: same architecture, and a
//! compatible glibc (or build static: `RUSTFLAGS="-C
//! target-feature=+crt-static" --target x86_64-unknown-linux-gnu`). An
//! incompatible binary fails its tasks with
//! [`TaskError::BinaryIncompatible`].
//!
//! # Layout
//! - [`remote`] / [`main`]: the attribute macros.
//! - `object_ref`: [`ObjectRef`], [`get_all`], [`wait`], [`as_completed`].
//! - `buffer`: [`Buffer`], bytes read without a copy from the object store.
//! - `objects`: where large values live, reading and writing them (internal).
//! - `init`: [`init`], [`put`], [`cancel`], [`cluster_status`], [`shutdown`].
//! - `calls`: [`Arg`], [`IntoArg`], [`CallOptions`]: what a remote call takes.
//! - `functions`: the link-time table of remote functions (internal).
//! - `slot`, `values`, `runtime`: result slots, held values, Shoal's tokio runtime (internal).
//! - `pool`: [`Pool`], [`Parallel`]; `process`: [`Process`]: the `multiprocessing` / joblib shapes.
//! - [`config`]: where addresses and tokens come from.
//! - [`status`]: the cluster status types.
//! - `error`: [`TaskError`] and [`Error`].
//! - `driver`: the batched session with the head (internal).
//! - `executor`: the task loop of executor processes (internal).

#![warn(missing_docs)]

// Layers, each using only those above it:
//   leaves:   error, buffer, values, runtime (tokio, block_on), functions
//   session:  slot, driver (the batched stream with the head), status
//   objects:  objects (Cluster: the session plus the object stores)
//   refs:     object_ref
//   calls:    init (init, put, cancel, shutdown), calls (submit)
//   shapes:   pool (Pool, Process, Parallel)
// executor (the other role of the same binary) uses only the leaves.
mod actor;
mod actor_exec;
mod buffer;
mod calls;
mod direct;
mod driver;
mod error;
mod executor;
mod functions;
mod generator;
mod init;
mod object_ref;
mod objects;
mod output;
mod pool;
mod process;
mod refs;
mod ring;
mod runtime;
mod slot;
mod stream;
mod values;

pub mod config;
pub mod status;

pub use actor::{Actor, ActorHandle, ActorOptions, ActorState, ActorStatus, RawActor, get_actor, get_actor_in, kill, list_actors};
pub use buffer::{Buffer, Pod};
pub use calls::{Arg, CallOptions, IntoArg, Placement};
pub use error::{Error, Result, TaskError};
pub use executor::{TaskContext, context};
pub use generator::{GENERATOR_WINDOW, GENERATOR_WINDOW_BYTES, ObjectRefGenerator};
pub use init::{
    ENV_DASHBOARD, InitConfig, cancel, cluster_status, cluster_status_blocking, dashboard_url, init, init_blocking, init_blocking_with, init_with, put,
    shutdown,
};
pub use object_ref::{AsCompleted, ObjectId, ObjectRef, as_completed, get_all, get_all_blocking, wait, wait_blocking};
pub use pool::{AsyncResult, Call, MAX_AUTO_CHUNK, MapIter, MapResult, MapStats, Parallel, Pool, PoolError, RemoteFn, UnaryFn, UnaryMapIter, parallel};
pub use process::Process;
pub use shoal_domain::{NodeId, ResourceSet};
pub use status::ClusterStatus;

/// Makes a function remote.
///
/// `#[shoal::remote] fn f(a: A, b: B) -> R` keeps `f` callable locally and
/// adds a module `f` with `f::remote(a, b) -> ObjectRef<R>`, where each
/// argument is a value or an `ObjectRef` of its type. Arguments and results
/// must be `serde` serializable; `async fn` works too.
///
/// Options: `num_cpus = 2`, `resources(gpu = 1)`, `max_retries = 5`
/// (retries when its worker dies; default 3), `retry_exceptions = true`
/// (a panic is retried too, within `max_retries`, as Ray's
/// `retry_exceptions=True`), `name = "stable::name"` (default:
/// `module::path::f`). Per call, each overriding the function's:
/// `f::options().num_cpus(2.0).resources(&[("gpu", 1.0)]).max_retries(0).retry_exceptions(true).remote(..)`.
pub use shoal_macros::remote;

/// Marks `main`. An `async fn main` runs on a multi-threaded tokio
/// runtime. Executor processes never run `main` (they enter the task loop
/// before it), so code in `main` runs only in the driver.
pub use shoal_macros::main;

/// Makes a type an actor: put it on the type's `impl` block.
///
/// ```ignore
/// struct Counter { n: u64 }
///
/// #[shoal::actor]
/// impl Counter {
///     fn new(start: u64) -> Self { Counter { n: start } }
///     fn incr(&mut self, k: u64) -> u64 { self.n += k; self.n }
///     async fn slow(&self, ms: u64) -> u64 { tokio::time::sleep(std::time::Duration::from_millis(ms)).await; ms }
/// }
///
/// let c = Counter::remote(0);            // ActorHandle<Counter>, at once
/// assert_eq!(c.incr(5).get()?, 5);       // each method: ObjectRef<R>
/// ```
///
/// The block must have `fn new(..) -> Self` (the constructor, run on the
/// node the actor is placed on). Every other `fn` taking `&self` or `&mut
/// self` becomes a remote method; `&mut self` ones run one at a time, in
/// the order calls were made; `async fn` ones taking `&self` may run
/// concurrently, up to `max_concurrency`. Associated functions without a
/// receiver stay local.
///
/// Options, each overridable per actor with `Counter::options()`:
/// `num_cpus = N` (held while the actor lives; default 0),
/// `resources(gpu = 1)`, `max_restarts = N` (default 0),
/// `max_task_retries = N` (default 0), `max_concurrency = N` (default 1),
/// `name = "stable::name"` (the registered type name; default
/// `module::path::Type`).
pub use shoal_macros::actor;

#[doc(hidden)]
pub mod __private {
    pub use crate::actor::{ActorDefaults, create as create_actor};
    pub use crate::actor_exec::{ACTOR_CLASSES, ACTOR_METHODS, ActorClass, ActorGuard, ActorMethod, MethodFuture, State as ActorState, boxed_state};
    pub use crate::buffer::fuzz_values;
    pub use crate::calls::{submit, submit_with};
    pub use crate::executor::block_on;
    pub use crate::functions::{Encoded, FunctionMeta, InvokeError, REMOTE_FUNCTIONS, RemoteFunction, check_arity, decode_arg, encode_result};
    pub use crate::generator::{run_generator, run_stream, submit_generator};
    pub use crate::init::{enter_main, run_main};
    pub use crate::pool::run_chunk;
    pub use crate::process::run_process;
    pub use bytes::Bytes;
    pub use linkme;
}
