//! The shared memory itself: one anonymous memory file (`memfd`) per
//! node, mapped shared by the worker and inherited by its executors, so a
//! value written once is read by every process on the node without a copy.
//!
//! A memfd is used rather than a file under `/dev/shm` because it needs no
//! name (nothing to clean up after a crash) and is not bounded by the size
//! of `/dev/shm` (64 MiB in a default container).

use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// Environment variable through which an executor learns the inherited
/// file descriptor of its node's arena.
pub const ENV_STORE_FD: &str = "SHOAL_STORE_FD";

/// A mapped arena. Bytes are read and written through raw pointers: the
/// store's bookkeeping guarantees that a range is written by one party
/// before it is sealed and only read afterwards.
pub struct Arena {
    file: File,
    map: MmapRaw,
    len: u64,
}

// SAFETY: the mapping is plain shared memory; who may touch which range is
// governed by the store's allocator and seals, not by the type.
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

impl Arena {
    /// Creates a memfd of `len` bytes and maps it. Pages are not touched:
    /// see [`prefault`](Self::prefault).
    pub fn create(len: u64) -> io::Result<Arena> {
        // SAFETY: the name is a valid C string; flags are constants.
        let fd = unsafe { libc::memfd_create(c"shoal-object-store".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a fresh descriptor we own.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len)?;
        Self::map(file, len)
    }

    /// Maps an arena inherited from the worker (an executor's view).
    ///
    /// # Safety
    /// `fd` must be an open memfd that nothing else in this process owns.
    pub unsafe fn from_inherited_fd(fd: RawFd) -> io::Result<Arena> {
        // SAFETY: the caller passes an fd it owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let len = file.metadata()?.len();
        Self::map(file, len)
    }

    fn map(file: File, len: u64) -> io::Result<Arena> {
        if len == 0 {
            // mmap refuses empty mappings; a zero-sized store maps one page
            // it never hands out.
            let map = MmapOptions::new().len(4096).map_anon()?.into();
            return Ok(Arena { file, map, len });
        }
        let map = MmapOptions::new().len(len as usize).map_raw(&file)?;
        // Huge pages where the kernel offers them for shared memory
        // (`shmem_enabled` = advise or within_size): 512x fewer faults.
        // Elsewhere (`never`, the common default) this does nothing.
        // SAFETY: advice on our own mapping; it never changes contents.
        unsafe { libc::madvise(map.as_mut_ptr().cast(), len as usize, libc::MADV_HUGEPAGE) };
        Ok(Arena { file, map, len })
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the arena has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The descriptor executors inherit.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The memory file's inode number: a process that opens the file some
    /// other way (`/proc/PID/fd/N`) checks it has the same one.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().map(|m| m.ino()).unwrap_or(0)
    }

    /// Maps the store of worker `pid` (descriptor `fd`, inode `ino`) from
    /// another process on the same machine. `None` if it is not reachable
    /// (another machine, another user) or not that file.
    pub fn open_peer(pid: u32, fd: u32, ino: u64) -> Option<Arena> {
        use std::os::unix::fs::MetadataExt;
        let file = std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/{pid}/fd/{fd}")).ok()?;
        let meta = file.metadata().ok()?;
        if meta.ino() != ino || ino == 0 {
            return None;
        }
        Self::map(file, meta.len()).ok()
    }

    /// Pointer to byte `offset`.
    ///
    /// # Panics
    /// If `offset + len` is outside the arena.
    pub fn ptr(&self, offset: u64, len: u64) -> *mut u8 {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len), "range {offset}+{len} outside an arena of {}", self.len);
        // SAFETY: in bounds, checked above.
        unsafe { self.map.as_mut_ptr().add(offset as usize) }
    }

    /// The bytes `[offset, offset + len)`.
    ///
    /// # Safety
    /// Nobody may write the range while the slice lives (it must be sealed).
    pub unsafe fn slice(&self, offset: u64, len: u64) -> &[u8] {
        // SAFETY: in bounds (`ptr` checks); immutability is the caller's promise.
        unsafe { std::slice::from_raw_parts(self.ptr(offset, len), len as usize) }
    }

    /// Copies `data` to `offset`.
    ///
    /// # Safety
    /// The range must be allocated to the caller and not yet sealed.
    pub unsafe fn write(&self, offset: u64, data: &[u8]) {
        let dst = self.ptr(offset, data.len() as u64);
        // SAFETY: in bounds; the range is the caller's alone.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
    }

    /// Backs `[offset, offset + len)` with memory now, so that writes into
    /// it run at memcpy speed instead of taking a page fault per 4 KiB
    /// (25x slower on the machines Shoal is measured on). Uses
    /// `MADV_POPULATE_WRITE` (Linux 5.14), else touches every page.
    pub fn prefault(&self, offset: u64, len: u64) {
        self.prefault_on(offset, len, 1);
    }

    /// As [`prefault`](Self::prefault), on up to `threads` threads at
    /// once (16 MiB or more each): a put that finds its range not yet
    /// backed waits for the faults, and the kernel takes them in parallel.
    pub fn prefault_on(&self, offset: u64, len: u64, threads: usize) {
        const SLICE: u64 = 16 << 20;
        let threads = (threads as u64).min(len / SLICE).max(1);
        if threads == 1 {
            return self.prefault_serial(offset, len);
        }
        let per = len.div_ceil(threads).div_ceil(4096) * 4096;
        std::thread::scope(|s| {
            for i in 1..threads {
                let start = offset + i * per;
                if start < offset + len {
                    let n = per.min(offset + len - start);
                    s.spawn(move || self.prefault_serial(start, n));
                }
            }
            self.prefault_serial(offset, per.min(len));
        });
    }

    fn prefault_serial(&self, offset: u64, len: u64) {
        if len == 0 || self.len == 0 {
            return;
        }
        let len = len.min(self.len - offset.min(self.len));
        let ptr = self.ptr(offset, len);
        const MADV_POPULATE_WRITE: libc::c_int = 23;
        let page = 4096usize;
        let start = (ptr as usize) / page * page;
        let end = ptr as usize + len as usize;
        // SAFETY: the range lies inside our mapping; populate only faults
        // pages in, it does not change their contents.
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, MADV_POPULATE_WRITE) };
        if rc != 0 {
            // Older kernel: a volatile read-modify-write per page faults it
            // in for writing without changing a byte.
            let mut p = start;
            while p < end {
                // SAFETY: inside the mapping; writes back what was read.
                unsafe {
                    let b = std::ptr::read_volatile(p as *const u8);
                    std::ptr::write_volatile(p as *mut u8, b);
                }
                p += page;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_visible_through_a_second_mapping_of_the_same_fd() {
        let a = Arena::create(1 << 20).unwrap();
        a.prefault(0, 1 << 20);
        // SAFETY: the range is ours and unsealed.
        unsafe { a.write(4096, b"hello") };
        // SAFETY: dup gives a second descriptor for the same memfd.
        let fd2 = unsafe { libc::dup(a.fd()) };
        // SAFETY: fd2 is fresh and owned by the new arena.
        let b = unsafe { Arena::from_inherited_fd(fd2) }.unwrap();
        assert_eq!(b.len(), 1 << 20);
        // SAFETY: nobody writes the range any more.
        assert_eq!(unsafe { b.slice(4096, 5) }, b"hello");
    }

    #[test]
    fn faulting_in_on_several_threads_backs_every_page_and_keeps_what_was_written() {
        let len = 70u64 << 20; // not a multiple of the slices
        let a = Arena::create(len + 4096).unwrap();
        let resident = |a: &Arena| {
            let mut vec = vec![0u8; (len / 4096) as usize];
            // SAFETY: mincore on our own page-aligned mapping.
            let rc = unsafe { libc::mincore(a.ptr(0, len).cast(), len as usize, vec.as_mut_ptr()) };
            assert_eq!(rc, 0);
            vec.iter().filter(|b| **b & 1 == 1).count()
        };
        // SAFETY: the ranges are ours and unsealed.
        unsafe {
            a.write(5 << 20, b"before");
            a.write(len - 6, b"ending");
        }
        a.prefault_on(0, len, 4);
        assert_eq!(resident(&a) as u64, len / 4096, "every page of the range is backed");
        // SAFETY: nobody writes the ranges any more.
        unsafe {
            assert_eq!(a.slice(5 << 20, 6), b"before");
            assert_eq!(a.slice(len - 6, 6), b"ending");
        }
    }

    #[test]
    #[should_panic(expected = "outside an arena")]
    fn out_of_bounds_ranges_panic_instead_of_touching_other_memory() {
        let a = Arena::create(4096).unwrap();
        a.ptr(4000, 200);
    }
}
