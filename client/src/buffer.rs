//! [`Buffer`]: bytes that are read without a copy when they come from the
//! object store.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use std::fmt;
use std::ops::Deref;

/// An immutable byte buffer for large data (arrays, files, images).
///
/// A `Buffer` serializes as plain bytes. When one is read back from the
/// node's shared-memory object store (an argument of a task, or
/// [`ObjectRef::get`](crate::ObjectRef::get) on a node with a store) it
/// borrows the stored bytes instead of copying them: a task taking a 256
/// MiB `Buffer` starts at once. The shared memory stays pinned while any
/// clone or slice of the `Buffer` is alive. A `Vec<u8>` works too, but is
/// copied (and encoded byte by byte) on every read.
///
/// ```no_run
/// #[shoal::remote]
/// fn checksum(data: shoal::Buffer) -> u64 {
///     data.iter().map(|b| *b as u64).sum()
/// }
///
/// # fn demo() -> shoal::Result<()> {
/// let big = shoal::put(shoal::Buffer::from(vec![1u8; 256 << 20]))?;
/// assert_eq!(checksum::remote(&big).get()?, 256 << 20);
/// # Ok(()) }
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Buffer(Bytes);

impl Buffer {
    /// Wraps `bytes` (no copy).
    pub fn new(bytes: Bytes) -> Self {
        Buffer(bytes)
    }

    /// The bytes as a cheaply clonable [`Bytes`] (no copy).
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// Unwraps the [`Bytes`] (no copy).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// A sub-range, sharing the same memory (no copy).
    pub fn slice(&self, range: impl std::ops::RangeBounds<usize>) -> Buffer {
        Buffer(self.0.slice(range))
    }

    /// A buffer of `values`' bytes (`f64`, `u32`, ...), without a copy.
    ///
    /// ```
    /// let b = shoal::Buffer::from_values(vec![1.5f64, 2.5]);
    /// assert_eq!(b.len(), 16);
    /// assert_eq!(b.values::<f64>(), Some(&[1.5, 2.5][..]));
    /// ```
    pub fn from_values<T: Pod + Send + Sync>(values: Vec<T>) -> Buffer {
        Buffer(Bytes::from_owner(PodVec(values)))
    }

    /// The bytes as a slice of `T`, without a copy: a numeric array read in
    /// place. `None` if the length is not a whole number of `T`s or the
    /// bytes are not aligned for `T`. Values from the object store (every
    /// value over 100 KiB) are laid out so the bytes are 64-byte aligned;
    /// [`to_values`](Self::to_values) works for any.
    pub fn values<T: Pod>(&self) -> Option<&[T]> {
        bytemuck::try_cast_slice(&self.0).ok()
    }

    /// The bytes as a vector of `T` (copied). `None` if the length is not a
    /// whole number of `T`s.
    pub fn to_values<T: Pod>(&self) -> Option<Vec<T>> {
        self.0.len().is_multiple_of(std::mem::size_of::<T>().max(1)).then(|| bytemuck::pod_collect_to_vec(&self.0))
    }
}

/// Plain numeric types a [`Buffer`] can be viewed as (`f64`, `i32`, `u8`,
/// arrays of them, ...): `bytemuck::Pod`.
pub use bytemuck::Pod;

struct PodVec<T>(Vec<T>);

impl<T: Pod> AsRef<[u8]> for PodVec<T> {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

impl Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Buffer({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for Buffer {
    fn from(v: Vec<u8>) -> Self {
        Buffer(Bytes::from(v))
    }
}

impl From<&[u8]> for Buffer {
    fn from(v: &[u8]) -> Self {
        Buffer(Bytes::copy_from_slice(v))
    }
}

impl From<Bytes> for Buffer {
    fn from(b: Bytes) -> Self {
        Buffer(b)
    }
}

impl Serialize for Buffer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

thread_local! {
    /// The `Bytes` being decoded on this thread, so a `Buffer` inside the
    /// value can share it instead of copying out of it.
    static BACKING: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Decodes `T` from `bytes`; `Buffer`s inside it borrow `bytes`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, postcard::Error> {
    let prev = BACKING.with(|b| b.replace(Some(bytes.clone())));
    let r = postcard::from_bytes(bytes);
    BACKING.with(|b| *b.borrow_mut() = prev);
    r
}

struct BufferVisitor;

impl<'de> serde::de::Visitor<'de> for BufferVisitor {
    type Value = Buffer;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Buffer, E> {
        let shared = BACKING.with(|b| {
            b.borrow().as_ref().and_then(|back| {
                let (start, end) = (back.as_ptr() as usize, back.as_ptr() as usize + back.len());
                let p = v.as_ptr() as usize;
                (p >= start && p + v.len() <= end).then(|| back.slice_ref(v))
            })
        });
        Ok(Buffer(shared.unwrap_or_else(|| Bytes::copy_from_slice(v))))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Buffer, E> {
        Ok(Buffer(Bytes::copy_from_slice(v)))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Buffer, E> {
        Ok(Buffer(Bytes::from(v)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Buffer, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(Buffer(Bytes::from(v)))
    }
}

impl<'de> Deserialize<'de> for Buffer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Buffer, D::Error> {
        d.deserialize_bytes(BufferVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_shares_the_backing_bytes() {
        let value = (7u32, Buffer::from(vec![9u8; 1000]));
        let bytes = Bytes::from(postcard::to_allocvec(&value).unwrap());
        let (n, buf): (u32, Buffer) = decode(&bytes).unwrap();
        assert_eq!(n, 7);
        assert_eq!(&buf[..], &[9u8; 1000][..]);
        let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
        assert!(range.contains(&(buf.as_ptr() as usize)), "no copy: the buffer points into the encoded bytes");
    }

    #[test]
    fn typed_views_need_alignment_and_copies_do_not() {
        let b = Buffer::from_values((0..1000u32).collect());
        assert_eq!(b.values::<u32>().unwrap()[999], 999);
        let odd = b.slice(1..);
        assert_eq!(odd.values::<u32>(), None, "misaligned and not whole");
        let shifted = b.slice(4..);
        assert_eq!(shifted.to_values::<u32>().unwrap()[0], 1);
        assert_eq!(Buffer::from(vec![0u8; 7]).to_values::<u32>(), None);
    }

    #[test]
    fn decoding_outside_a_backing_copies() {
        let bytes = postcard::to_allocvec(&Buffer::from(vec![1u8, 2, 3])).unwrap();
        let buf: Buffer = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(&buf[..], &[1, 2, 3]);
    }

    #[test]
    fn a_buffer_reads_what_a_vec_of_bytes_wrote() {
        // Vec<u8> serializes as a sequence; postcard encodes both the same way.
        let bytes = Bytes::from(postcard::to_allocvec(&vec![5u8; 10]).unwrap());
        let buf: Buffer = decode(&bytes).unwrap();
        assert_eq!(&buf[..], &[5u8; 10]);
    }
}

/// A fuzz body (`fuzz/`, cargo fuzz; also run by this module's tests):
/// argument bytes decoded as the types tasks commonly take, and views of
/// a `Buffer` as arrays. Garbage must give errors or `None`, not panics.
#[doc(hidden)]
pub fn fuzz_values(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    let _ = decode::<u64>(&bytes);
    let _ = decode::<String>(&bytes);
    let _ = decode::<Vec<u8>>(&bytes);
    let _ = decode::<(u32, Vec<f64>, Option<String>)>(&bytes);
    let _ = decode::<Buffer>(&bytes);
    let _ = decode::<Vec<Buffer>>(&bytes);
    let b = Buffer::from(data.to_vec());
    let _ = b.values::<f64>();
    let _ = b.values::<u32>();
    let _ = b.to_values::<u64>();
    let _ = b.to_values::<i16>();
}

#[cfg(test)]
mod fuzz_tests {
    #[test]
    fn argument_bytes_and_array_views_answer_garbage_without_panicking() {
        let mut r = shoal_domain::seeded::Xorshift::new(0xb0ff);
        for _ in 0..3000 {
            let len = r.below(200) as usize;
            super::fuzz_values(&r.bytes(len));
        }
    }
}
