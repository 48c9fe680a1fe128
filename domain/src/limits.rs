//! Sizes every Shoal process agrees on.

/// Largest gRPC message a Shoal process accepts. Bigger payloads are an
/// error on the wire (and the sender should have chunked them).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Largest value that travels inline (an argument, a result, a put):
/// the message limit less room for the envelope. Larger values need the
/// shared-memory object store.
pub const MAX_INLINE_VALUE_BYTES: usize = MAX_MESSAGE_BYTES - (1 << 20);

/// Values larger than this (results, puts, arguments) go to the node's
/// shared-memory object store instead of travelling inline, as Ray's 100
/// KiB direct-call limit: below it, a copy in a message is cheaper than a
/// store round trip.
pub const STORE_THRESHOLD_BYTES: usize = 100 << 10;

/// Chunk size of object transfers between workers and to drivers.
pub const OBJECT_CHUNK_BYTES: usize = 4 << 20;

/// Batches of results are closed at this size and a new one started, so
/// many large results never add up to one oversized message.
pub const BATCH_BYTES: usize = 4 << 20;

/// Chunk size used to stream program binaries.
pub const BINARY_CHUNK_BYTES: usize = 1 << 20;
