//! First-fit allocation of byte ranges inside the arena. Pure bookkeeping:
//! no memory is touched here, so it is unit-tested on its own.
//!
//! Free space is a map from offset to length, kept coalesced (no two free
//! ranges touch), so freeing is `O(log n)` and the largest object that can
//! fit is always one free range.

use std::collections::BTreeMap;

/// Every allocation starts on this boundary (a cache line; also enough for
/// any primitive a task may view the bytes as).
pub const ALIGN: u64 = 64;

/// Rounds `size` up to the allocation granularity (at least one unit).
pub fn rounded(size: u64) -> u64 {
    size.max(1).div_ceil(ALIGN) * ALIGN
}

/// Bytes of an unsigned varint (LEB128, as postcard writes lengths).
fn varint_len(n: u64) -> u64 {
    (u64::from(64 - n.leading_zeros())).div_ceil(7).max(1)
}

/// Bytes placed before an object of `size` bytes so that, if it is the
/// encoding of one byte string (a varint length, then the bytes: how a
/// `Buffer` encodes), the bytes start on an [`ALIGN`] boundary, and typed
/// views (`&[f64]`) of them need no copy. It depends only on the size, so
/// every copy of an object, on any node, is laid out alike.
pub fn payload_skew(size: u64) -> u64 {
    (1..=10u64).find(|l| *l <= size && varint_len(size - l) == *l).map_or(0, |l| (ALIGN - l) % ALIGN)
}

/// Arena bytes an object of `size` bytes takes: skew included.
pub fn footprint(size: u64) -> u64 {
    size.saturating_add(payload_skew(size))
}

/// The free ranges of an arena of `capacity` bytes.
#[derive(Debug)]
pub struct Allocator {
    capacity: u64,
    free: BTreeMap<u64, u64>,
    used: u64,
}

impl Allocator {
    /// An empty arena of `capacity` bytes (rounded down to [`ALIGN`]).
    pub fn new(capacity: u64) -> Self {
        let capacity = capacity / ALIGN * ALIGN;
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        Allocator { capacity, free, used: 0 }
    }

    /// Bytes the arena holds.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes handed out (rounded sizes).
    pub fn used(&self) -> u64 {
        self.used
    }

    /// The largest single allocation that would succeed now.
    pub fn largest_free(&self) -> u64 {
        self.free.values().copied().max().unwrap_or(0)
    }

    /// Reserves `size` bytes; returns the offset, or `None` if no free
    /// range is large enough. The range is `rounded(size)` long.
    pub fn alloc(&mut self, size: u64) -> Option<u64> {
        let need = rounded(size);
        let (&off, &len) = self.free.iter().find(|(_, len)| **len >= need)?;
        self.free.remove(&off);
        if len > need {
            self.free.insert(off + need, len - need);
        }
        self.used += need;
        Some(off)
    }

    /// Returns the range `[offset, offset + rounded(size))` to the free
    /// space, merging it with free neighbours.
    pub fn free(&mut self, offset: u64, size: u64) {
        let mut off = offset;
        let mut len = rounded(size);
        debug_assert!(off + len <= self.capacity, "range outside the arena");
        self.used -= len;
        if let Some((&next_off, &next_len)) = self.free.range(off + len..).next()
            && next_off == off + len
        {
            self.free.remove(&next_off);
            len += next_len;
        }
        if let Some((&prev_off, &prev_len)) = self.free.range(..off).next_back()
            && prev_off + prev_len == off
        {
            self.free.remove(&prev_off);
            off = prev_off;
            len += prev_len;
        }
        self.free.insert(off, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_and_disjoint() {
        let mut a = Allocator::new(1 << 20);
        let x = a.alloc(1).unwrap();
        let y = a.alloc(100).unwrap();
        let z = a.alloc(64).unwrap();
        assert_eq!((x, y, z), (0, 64, 192));
        assert_eq!(a.used(), 64 + 128 + 64);
    }

    #[test]
    fn freeing_coalesces_so_a_full_size_object_fits_again() {
        let mut a = Allocator::new(4096);
        let offs: Vec<u64> = (0..64).map(|_| a.alloc(64).unwrap()).collect();
        assert_eq!(a.alloc(1), None, "full");
        // Free in an order that needs both-side merges.
        for i in (0..64).step_by(2) {
            a.free(offs[i], 64);
        }
        assert_eq!(a.largest_free(), 64);
        for i in (1..64).step_by(2) {
            a.free(offs[i], 64);
        }
        assert_eq!(a.used(), 0);
        assert_eq!(a.largest_free(), 4096);
        assert_eq!(a.alloc(4096), Some(0));
    }

    #[test]
    fn first_fit_reuses_a_hole() {
        let mut a = Allocator::new(1024);
        let x = a.alloc(256).unwrap();
        let _y = a.alloc(256).unwrap();
        a.free(x, 256);
        assert_eq!(a.alloc(200), Some(0));
        assert_eq!(a.alloc(600), None, "only 512 bytes are left at the end");
        assert_eq!(a.alloc(512), Some(512));
    }

    #[test]
    fn a_byte_string_payload_lands_on_an_aligned_boundary() {
        for n in [0u64, 1, 127, 128, 1000, 16383, 16384, 1 << 20, (256 << 20) + 3] {
            let size = varint_len(n) + n;
            assert_eq!((payload_skew(size) + varint_len(n)) % ALIGN, 0, "payload of {n} bytes");
            assert_eq!(footprint(size), size + payload_skew(size));
        }
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(u64::MAX), 10);
        // Sizes no single byte string has: no skew.
        assert_eq!(payload_skew(129), 0);
        assert_eq!(payload_skew(0), 0);
    }

    #[test]
    fn zero_capacity_never_allocates() {
        let mut a = Allocator::new(10);
        assert_eq!(a.capacity(), 0);
        assert_eq!(a.alloc(1), None);
    }
}
