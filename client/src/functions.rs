//! The function table: remote functions registered at link time (what
//! executors look names up in), the per-function metadata drivers send,
//! and decoding arguments and encoding results.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
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
    /// Retries when the worker dies (and when it panics, with
    /// `retry_exceptions`).
    pub max_retries: u32,
    /// A panic is retried too, as Ray's `retry_exceptions=True`.
    pub retry_exceptions: bool,
    /// `(driver generation << 32) | index` of the last session that
    /// defined it: the index is interned once per session.
    pub(crate) cached_index: AtomicU64,
}

impl FunctionMeta {
    /// Metadata for one function (used by the macro).
    pub const fn new(name: &'static str, num_cpus: f64, resources: &'static [(&'static str, f64)], max_retries: u32, retry_exceptions: bool) -> Self {
        FunctionMeta { name, num_cpus, resources, max_retries, retry_exceptions, cached_index: AtomicU64::new(0) }
    }
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
