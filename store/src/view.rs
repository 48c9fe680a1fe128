//! `Bytes` over stored objects without a copy: a range of an arena, or a
//! mapped spill file. Each view owns a `keep` value (the pin that keeps the
//! object where it is) and drops it with the last clone or slice.

use crate::arena::Arena;
use crate::store::spill_offset;
use bytes::Bytes;
use std::io;
use std::path::Path;
use std::sync::Arc;

struct ArenaView<K> {
    _arena: Arc<Arena>,
    ptr: *const u8,
    len: usize,
    _keep: K,
}

// SAFETY: the pointer is into a shared mapping the Arc keeps alive, and
// the range is immutable while `keep` lives (the caller's promise).
unsafe impl<K: Send> Send for ArenaView<K> {}

impl<K> AsRef<[u8]> for ArenaView<K> {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: in bounds (checked at creation), immutable while held.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// The bytes `[offset, offset + len)` of `arena`, held as long as `keep`.
///
/// # Safety
/// The range must be a sealed object that nobody writes, moves or frees
/// while `keep` lives.
///
/// # Panics
/// If the range is outside the arena.
pub unsafe fn arena_bytes<K: Send + 'static>(arena: Arc<Arena>, offset: u64, len: u64, keep: K) -> Bytes {
    let ptr = arena.ptr(offset, len);
    Bytes::from_owner(ArenaView { _arena: arena, ptr, len: len as usize, _keep: keep })
}

struct FileView<K> {
    map: memmap2::Mmap,
    _keep: K,
}

impl<K> AsRef<[u8]> for FileView<K> {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

/// The `len` bytes of a spilled object, mapped from its file (laid out
/// as in the arena, see [`spill_offset`]), held as long as `keep`, which
/// must keep the file from being deleted (a pin).
pub fn spilled_bytes<K: Send + 'static>(path: &Path, len: u64, keep: K) -> io::Result<Bytes> {
    let f = std::fs::File::open(path)?;
    // SAFETY: spill files are written once and deleted (never modified)
    // only after the last unpin; `keep` holds a pin.
    let map = unsafe { memmap2::Mmap::map(&f) }?;
    let start = spill_offset(len) as usize;
    if map.len() as u64 != start as u64 + len {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} has {} bytes, expected {}", path.display(), map.len(), start as u64 + len)));
    }
    Ok(Bytes::from_owner(FileView { map, _keep: keep }).slice(start..))
}
