//! Remote functions: the link-time registry executors look names up in,
//! the per-function metadata drivers send, argument conversion, and the
//! submit path the `#[remote]` macro calls.

use crate::driver::Out;
use crate::error::TaskError;
use crate::object_ref::{ObjectRef, RefInner};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_proto::pb;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// A function an executor can run, registered at link time by
/// `#[shoal::remote]` (a `linkme` distributed slice: complete before
/// `main`, even in the executor entry that runs before `main`).
pub struct RemoteFunction {
    /// Registered name.
    pub name: &'static str,
    /// Decodes arguments, calls the function, returns its result ready
    /// to encode.
    pub invoke: fn(&[Bytes]) -> Result<Encoded, InvokeError>,
}

/// Every remote function linked into this program.
#[linkme::distributed_slice]
pub static REMOTE_FUNCTIONS: [RemoteFunction];

/// Why an invocation failed before or after the function body ran.
#[derive(Debug)]
pub enum InvokeError {
    /// Wrong number of arguments.
    Arity {
        /// Parameters of the function.
        expected: usize,
        /// Arguments received.
        got: usize,
    },
    /// Argument `index` did not decode.
    ArgDecode {
        /// Zero-based argument index.
        index: usize,
        /// Decoder message.
        message: String,
    },
    /// The result did not encode.
    ResultEncode(String),
}

/// What the driver tells the head about a function.
pub struct FunctionMeta {
    /// Registered name.
    pub name: &'static str,
    /// CPUs per call.
    pub num_cpus: f64,
    /// Custom resources per call.
    pub resources: &'static [(&'static str, f64)],
    /// Retries when the worker dies.
    pub max_retries: u32,
    /// `(driver generation << 32) | index` of the last session that
    /// defined it: the index is interned once per session.
    pub(crate) cached_index: AtomicU64,
}

impl FunctionMeta {
    /// Metadata for one function (used by the macro).
    pub const fn new(name: &'static str, num_cpus: f64, resources: &'static [(&'static str, f64)], max_retries: u32) -> Self {
        FunctionMeta { name, num_cpus, resources, max_retries, cached_index: AtomicU64::new(0) }
    }
}

/// Options of one call, from `f::options()`.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Overrides the function's `max_retries`.
    pub max_retries: Option<u32>,
}

/// One argument of a remote call: a serialized value or a reference to an
/// object (which stays alive until the call is submitted).
pub struct Arg(ArgInner);

enum ArgInner {
    Value(Bytes),
    Ref(Arc<RefInner>),
    Invalid(TaskError),
}

/// Converts a value or an `ObjectRef<T>` into an argument of type `T`.
/// Implemented for every serializable `T`, for `ObjectRef<T>` and for
/// `&ObjectRef<T>`.
pub trait IntoArg<T> {
    /// Performs the conversion.
    fn into_arg(self) -> Arg;
}

impl<T: Serialize> IntoArg<T> for T {
    fn into_arg(self) -> Arg {
        match postcard::to_allocvec(&self) {
            Ok(v) => Arg(ArgInner::Value(Bytes::from(v))),
            Err(e) => Arg(ArgInner::Invalid(TaskError::Serialization {
                message: format!("an argument of type {} could not be serialized: {e}", std::any::type_name::<T>()),
            })),
        }
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> Arg {
        Arg(ArgInner::Ref(self.inner))
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> Arg {
        Arg(ArgInner::Ref(self.inner.clone()))
    }
}

/// Submits a call (used by the macro).
pub fn submit<R>(meta: &'static FunctionMeta, args: Vec<Arg>) -> ObjectRef<R> {
    submit_with(meta, CallOptions::default(), args)
}

/// Submits a call with options (used by the macro).
pub fn submit_with<R>(meta: &'static FunctionMeta, opts: CallOptions, args: Vec<Arg>) -> ObjectRef<R> {
    let driver = match crate::runtime::driver_or_init() {
        Ok(d) => d,
        Err(e) => return ObjectRef::failed(TaskError::Disconnected { message: format!("no cluster: {e}") }),
    };
    let mut wire = Vec::with_capacity(args.len());
    // Large values passed directly are put in the object store first (as
    // Ray does), so they travel worker to worker, not through the head.
    let mut auto_put = Vec::new();
    for a in &args {
        wire.push(match &a.0 {
            ArgInner::Value(b) if b.len() > shoal_domain::limits::STORE_THRESHOLD_BYTES => {
                let id = driver.next_id();
                let val = match crate::objects::put_large(&driver, id, b.len() as u64, |buf| {
                    buf.copy_from_slice(b);
                    Ok(())
                }) {
                    Ok(v) => v,
                    Err(crate::Error::Task(e)) => return ObjectRef::failed(e),
                    Err(e) => return ObjectRef::failed(TaskError::Disconnected { message: e.to_string() }),
                };
                let slot = crate::object_ref::Slot::done(Ok(val));
                driver.register(id, slot.clone());
                auto_put.push(ObjectRef::<()>::new(id, slot, Some(driver.clone())));
                pb::Arg { kind: Some(pb::arg::Kind::Object(id)) }
            }
            ArgInner::Value(b) => pb::Arg { kind: Some(pb::arg::Kind::Value(b.clone())) },
            ArgInner::Ref(r) => {
                if r.driver.as_ref().is_some_and(|d| !Arc::ptr_eq(d, &driver)) || r.driver.is_none() {
                    // A ref from an earlier session, or one that failed
                    // locally: the head cannot know it.
                    if let Some(e) = r.local_error() {
                        return ObjectRef::failed(e);
                    }
                    return ObjectRef::failed(TaskError::ObjectLost {
                        message: format!("object {} belongs to another cluster session", crate::ObjectId(r.id)),
                    });
                }
                pb::Arg { kind: Some(pb::arg::Kind::Object(r.id)) }
            }
            ArgInner::Invalid(e) => return ObjectRef::failed(e.clone()),
        });
    }
    let func = driver.function_index(meta);
    let id = driver.next_id();
    let slot = driver.expect(id);
    driver.send(Out::Submit(pb::TaskSubmit { id, func, args: wire, max_retries: opts.max_retries }));
    // `args` (holding referenced objects alive) drops only now, after the
    // submission is queued, so a release can never overtake it.
    drop(args);
    drop(auto_put);
    ObjectRef::new(id, slot, Some(driver))
}

/// Fails unless exactly `n` arguments were sent.
pub fn check_arity(args: &[Bytes], n: usize) -> Result<(), InvokeError> {
    if args.len() != n {
        return Err(InvokeError::Arity { expected: n, got: args.len() });
    }
    Ok(())
}

/// Decodes argument `i`.
pub fn decode_arg<T: DeserializeOwned>(args: &[Bytes], i: usize) -> Result<T, InvokeError> {
    crate::buffer::decode(&args[i]).map_err(|e| InvokeError::ArgDecode { index: i, message: format!("as {}: {e}", std::any::type_name::<T>()) })
}

/// A function's result, not yet encoded: its size is known before any
/// byte is written, so a large one is encoded straight into the node's
/// object store (no intermediate buffer, whose fresh pages alone would
/// cost more than the copy).
pub struct Encoded(Box<dyn EncodeOut>);

trait EncodeOut {
    fn size(&self) -> Result<usize, String>;
    fn write(&self, buf: &mut [u8]) -> Result<(), String>;
}

struct Held<T>(T);

impl<T: Serialize> EncodeOut for Held<T> {
    fn size(&self) -> Result<usize, String> {
        postcard::experimental::serialized_size(&self.0).map_err(|e| format!("{} could not be serialized: {e}", std::any::type_name::<T>()))
    }
    fn write(&self, buf: &mut [u8]) -> Result<(), String> {
        postcard::to_slice(&self.0, buf).map(|_| ()).map_err(|e| format!("{} could not be serialized: {e}", std::any::type_name::<T>()))
    }
}

impl Encoded {
    /// Encoded size in bytes.
    pub(crate) fn size(&self) -> Result<usize, String> {
        self.0.size()
    }

    /// Encodes into `buf`, exactly [`size`](Self::size) bytes long.
    pub(crate) fn write(&self, buf: &mut [u8]) -> Result<(), String> {
        self.0.write(buf)
    }

    /// Encodes into a new vector of `size` bytes.
    pub(crate) fn to_vec(&self, size: usize) -> Result<Vec<u8>, String> {
        let mut v = vec![0u8; size];
        self.0.write(&mut v)?;
        Ok(v)
    }
}

/// Wraps a result for encoding (used by the macro).
pub fn encode_result<T: Serialize + 'static>(v: T) -> Result<Encoded, InvokeError> {
    Ok(Encoded(Box::new(Held(v))))
}
