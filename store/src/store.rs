//! The object table of one node's store: which object lives where in the
//! arena (or on disk, spilled), whether it is sealed, and who pins it.
//!
//! Life of an object: [`Store::create`] reserves space for a writer (a
//! driver, an executor, a pull from a peer); the writer fills it and the
//! object is [`Store::seal`]ed, after which it is immutable and visible.
//! Readers [`Store::pin`] it (a pinned object is never moved or freed under
//! them) and unpin when done. [`Store::free`] drops it once no reader pins
//! it. When space runs out, sealed objects nobody pins are spilled to files
//! under the spill directory, least recently used first, and brought back
//! on the next pin.

use crate::alloc::{Allocator, footprint, payload_skew, rounded};
use crate::arena::Arena;
use bytes::Bytes;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// No room, even after spilling everything that may be spilled.
    #[error("object store full: an object of {size} bytes does not fit ({detail})")]
    Full {
        /// Bytes requested.
        size: u64,
        /// What stood in the way.
        detail: String,
    },
    /// No sealed object with that id here.
    #[error("object {} is not in this node's store", shoal_domain::ObjectId(*.0))]
    NotFound(u64),
    /// An object with that id exists already.
    #[error("object {} already exists in this node's store", shoal_domain::ObjectId(*.0))]
    Exists(u64),
    /// A write outside the object, or into a sealed one.
    #[error("invalid write to object {}: {detail}", shoal_domain::ObjectId(*.id))]
    BadWrite {
        /// The object.
        id: u64,
        /// What was wrong.
        detail: String,
    },
}

/// What [`Store::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Write it at this arena offset, then seal it.
    Write(u64),
    /// An earlier writer's sealed copy of this many bytes is the object.
    Sealed(u64),
}

/// Where a pinned object's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// In the arena at `offset`, `len` bytes.
    Arena {
        /// Byte offset in the arena.
        offset: u64,
        /// Object size.
        len: u64,
    },
    /// Spilled, and there was no room to bring it back: read the file.
    File {
        /// The spill file.
        path: PathBuf,
        /// Object size.
        len: u64,
    },
}

/// Usage figures, as shown by `shoal status`.
pub type StoreStats = shoal_domain::StoreUsage;

enum Place {
    Arena(u64),
    Disk(PathBuf),
}

struct Entry {
    size: u64,
    place: Place,
    sealed: bool,
    /// Who is writing it (an executor id; 0 = the worker or a driver).
    owner: u64,
    pins: u32,
    /// Freed while pinned: dropped at the last unpin.
    freed: bool,
    last_use: u64,
    /// Being written to a spill file (outside the lock; it holds a pin).
    spilling: bool,
}

struct Inner {
    alloc: Allocator,
    objects: HashMap<u64, Entry>,
    clock: u64,
    spilled_bytes: u64,
    spilled_objects: u64,
}

/// One node's object store. Shared (`Arc`) by the worker's tasks and, on
/// an embedded cluster, the driver.
pub struct Store {
    arena: Arc<Arena>,
    spill_dir: PathBuf,
    inner: Mutex<Inner>,
    /// Signalled when a spill ends (space may have been freed).
    spilled: Condvar,
    /// `[0, faulted)` is backed with memory (the background thread and
    /// writers past it extend it).
    faulted: AtomicU64,
    /// How far the background thread is asked to fault in.
    ahead: Arc<Ahead>,
}

/// What the background fault thread is asked to do: fault `[0, want)` in.
struct Ahead {
    want: Mutex<u64>,
    more: Condvar,
}

impl Ahead {
    /// Asks for `[0, want)` (a no-op if as much was asked already).
    fn ask(&self, want: u64) {
        let mut w = self.want.lock().unwrap_or_else(|p| p.into_inner());
        if want > *w {
            *w = want;
            self.more.notify_one();
        }
    }
}

/// How far ahead of the newest write the background thread faults the
/// arena in: the size of that write (at least 64 MiB, at most 1 GiB), so
/// the next one of the same size, landing past the prefix because the
/// space of the last one is not free yet, finds it backed.
fn fault_ahead(size: u64) -> u64 {
    size.clamp(64 << 20, 1 << 30)
}

/// Writes this large or larger have the space after them faulted ahead.
const FAULT_AHEAD_FROM: u64 = 1 << 20;

/// Environment variable that turns the fault-ahead off (`0`), for A/B
/// measurements.
pub const ENV_FAULT_AHEAD: &str = "SHOAL_STORE_FAULT_AHEAD";

fn fault_ahead_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var(ENV_FAULT_AHEAD).map_or(true, |v| v != "0"))
}

/// Threads that fault a new object's range in at once: the CPUs, up to 4.
fn fault_threads() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(4))
}

impl Store {
    /// A store of `capacity` bytes spilling under `spill_dir`. The first
    /// `prefault` bytes are backed with memory by a background thread, so
    /// the first writes already run at memcpy speed.
    pub fn open(capacity: u64, prefault: u64, spill_dir: PathBuf) -> io::Result<Arc<Store>> {
        let capacity = capacity / crate::alloc::ALIGN * crate::alloc::ALIGN;
        let arena = Arena::create(capacity)?;
        let inner = Inner { alloc: Allocator::new(capacity), objects: HashMap::new(), clock: 0, spilled_bytes: 0, spilled_objects: 0 };
        let store = Arc::new(Store {
            arena: Arc::new(arena),
            spill_dir,
            inner: Mutex::new(inner),
            spilled: Condvar::new(),
            faulted: AtomicU64::new(0),
            ahead: Arc::new(Ahead { want: Mutex::new(0), more: Condvar::new() }),
        });
        let target = prefault.min(capacity);
        store.ahead.ask(target);
        let (weak, ahead) = (Arc::downgrade(&store), store.ahead.clone());
        std::thread::Builder::new().name("shoal-prefault".into()).spawn(move || {
            // Faulting shared memory in costs ~2 s of CPU per GiB on the
            // machines Shoal is measured on: run it only on CPU time nobody
            // else wants (SCHED_IDLE: the scheduler counts a CPU running
            // only this as idle, so a waking task takes it at once rather
            // than queueing behind a busy one), else at the lowest nice.
            // SAFETY: plain syscalls on this thread's own id.
            unsafe {
                let param = libc::sched_param { sched_priority: 0 };
                if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
                    let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                    libc::setpriority(libc::PRIO_PROCESS, tid, 19);
                }
            }
            const STEP: u64 = 64 << 20;
            loop {
                let want = {
                    let mut want = ahead.want.lock().unwrap_or_else(|p| p.into_inner());
                    loop {
                        let Some(s) = weak.upgrade() else { return };
                        if s.faulted.load(Ordering::Acquire) < *want {
                            break *want;
                        }
                        drop(s);
                        // Woken for more, or now and then to see whether
                        // the store is gone.
                        want = ahead.more.wait_timeout(want, std::time::Duration::from_secs(1)).unwrap_or_else(|p| p.into_inner()).0;
                    }
                };
                let Some(s) = weak.upgrade() else { return };
                let start = s.faulted.load(Ordering::Acquire);
                let end = want.min(start + STEP).min(s.arena.len());
                if end > start {
                    s.arena.prefault(start, end - start);
                    s.faulted.fetch_max(end, Ordering::AcqRel);
                } else {
                    // Asked past the arena: nothing more to do.
                    *ahead.want.lock().unwrap_or_else(|p| p.into_inner()) = start;
                }
            }
        })?;
        Ok(store)
    }

    /// The arena (for executors' descriptor and pointer arithmetic).
    pub fn arena(&self) -> &Arena {
        &self.arena
    }

    /// Arena size in bytes.
    pub fn capacity(&self) -> u64 {
        self.arena.len()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every
        // mutation is a few plain assignments), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a sealed copy of `id` is here.
    pub fn contains(&self, id: u64) -> bool {
        self.lock().objects.get(&id).is_some_and(|e| e.sealed && !e.freed)
    }

    /// Whether `id` is being written here (reserved, not sealed yet).
    pub fn is_writing(&self, id: u64) -> bool {
        self.lock().objects.get(&id).is_some_and(|e| !e.sealed && !e.freed)
    }

    /// The size of the sealed copy of `id`, if one is here.
    pub fn sealed_size(&self, id: u64) -> Option<u64> {
        self.lock().objects.get(&id).filter(|e| e.sealed && !e.freed).map(|e| e.size)
    }

    /// Reserves `size` bytes for object `id`, written by `owner` (an
    /// executor id, or 0). Spills unpinned objects if needed. Returns the
    /// arena offset to write at.
    pub fn create(&self, id: u64, size: u64, owner: u64) -> Result<u64, StoreError> {
        let offset = {
            let g = self.lock();
            if g.objects.contains_key(&id) {
                return Err(StoreError::Exists(id));
            }
            let (mut g, offset) = self.make_room(g, size, None);
            let offset = offset?;
            // The lock may have been let go while spilling: check again.
            if g.objects.contains_key(&id) {
                Self::release(&mut g, offset, size);
                return Err(StoreError::Exists(id));
            }
            let clock = g.clock;
            g.objects.insert(id, Entry { size, place: Place::Arena(offset), sealed: false, owner, pins: 0, freed: false, last_use: clock, spilling: false });
            offset
        };
        // Past the pre-faulted prefix: fault the rest of the range in now,
        // in one call, rather than page by page during the write. The
        // allocator is first-fit, so the prefix grows and is reused.
        let begin = offset - payload_skew(size);
        let end = begin + rounded(footprint(size));
        let faulted = self.faulted.load(Ordering::Acquire);
        if end > faulted {
            let start = begin.max(faulted);
            self.arena.prefault_on(start, end - start, fault_threads());
            if start == faulted {
                self.faulted.fetch_max(end, Ordering::AcqRel);
            }
        }
        // The next large write of this size may land right after this one
        // (its space not freed yet): if that is past the faulted prefix,
        // fault it in meanwhile, in the background.
        let want = end.saturating_add(fault_ahead(size)).min(self.arena.len());
        if size >= FAULT_AHEAD_FROM && fault_ahead_on() && want > self.faulted.load(Ordering::Acquire) {
            self.ahead.ask(want);
        }
        Ok(offset)
    }

    /// Room to write object `id`, or the sealed copy already here: for a
    /// task's result and for a copy pulled from a peer alike.
    ///
    /// A second writer of the same id (a task run again after the head
    /// restarted or lost track of the first run; a pull while a task
    /// rebuilds the object here, another pull or a driver's push) finds
    /// the first one's work: sealed, it is the object and nothing is
    /// written again; still being written, this waits until it is sealed
    /// (then it is the object) or dropped (then this writer writes it),
    /// for at most `patience`; freed while a reader had it pinned, it is
    /// taken back (the same bytes).
    pub fn claim(&self, id: u64, size: u64, owner: u64, patience: std::time::Duration) -> Result<Claim, StoreError> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match self.create(id, size, owner) {
                Ok(offset) => return Ok(Claim::Write(offset)),
                Err(StoreError::Exists(_)) => {
                    if let Some(size) = self.sealed_or_revived(id) {
                        return Ok(Claim::Sealed(size));
                    }
                    if std::time::Instant::now() >= deadline {
                        return Err(StoreError::Exists(id));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The size of the sealed copy of `id` here, taking back a copy that
    /// was freed while readers still had it pinned (the head had forgotten
    /// it, e.g. across a restart, and now wants the same result again: the
    /// bytes are that result, and it would block the id until its last
    /// reader let go).
    pub fn sealed_or_revived(&self, id: u64) -> Option<u64> {
        let mut g = self.lock();
        let e = g.objects.get_mut(&id).filter(|e| e.sealed)?;
        e.freed = false;
        Some(e.size)
    }

    /// Places an object of `size` bytes, spilling least recently used
    /// unpinned objects (other than `keep`) until it fits. Returns the
    /// object's offset (its range starts `payload_skew(size)` bytes into
    /// an aligned allocation), and the lock, which is let go while a spill
    /// writes its file: other store calls (pins, reads, stats) never wait
    /// for the disk.
    fn make_room<'a>(&'a self, mut g: MutexGuard<'a, Inner>, size: u64, keep: Option<u64>) -> (MutexGuard<'a, Inner>, Result<u64, StoreError>) {
        // (Compared before rounding: a size near u64::MAX must not overflow.)
        let need = footprint(size);
        if need > g.alloc.capacity() || rounded(need) > g.alloc.capacity() {
            let e = StoreError::Full { size, detail: format!("the store holds {} bytes in all", g.alloc.capacity()) };
            return (g, Err(e));
        }
        loop {
            if let Some(base) = g.alloc.alloc(need) {
                return (g, Ok(base + payload_skew(size)));
            }
            let victim = g
                .objects
                .iter()
                .filter(|(id, e)| e.sealed && e.pins == 0 && !e.spilling && matches!(e.place, Place::Arena(_)) && Some(**id) != keep)
                .min_by_key(|(_, e)| e.last_use)
                .map(|(id, _)| *id);
            let Some(victim) = victim else {
                if g.objects.values().any(|e| e.spilling) {
                    // Another caller is spilling: its space comes soon.
                    g = self.spilled.wait(g).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                let pinned: u64 = g.objects.values().filter(|e| e.pins > 0 || !e.sealed).map(|e| e.size).sum();
                let e = StoreError::Full {
                    size,
                    detail: format!(
                        "capacity {} bytes, {} bytes in use by objects being written or read, largest free range {} bytes",
                        g.alloc.capacity(),
                        pinned,
                        g.alloc.largest_free()
                    ),
                };
                return (g, Err(e));
            };
            let (g2, spilled) = self.spill(g, victim);
            g = g2;
            if let Err(e) = spilled {
                let e = StoreError::Full { size, detail: format!("spilling to {} failed: {e}", self.spill_dir.display()) };
                return (g, Err(e));
            }
        }
    }

    fn spill_path(&self, id: u64) -> PathBuf {
        self.spill_dir.join(format!("{id:016x}"))
    }

    /// Writes sealed, unpinned object `id` to its spill file and frees its
    /// arena range. The write happens without the lock: the object is
    /// marked spilling and pinned meanwhile, so nobody frees or reuses its
    /// range; if someone pins it during the write it stays in the arena.
    fn spill<'a>(&'a self, mut g: MutexGuard<'a, Inner>, id: u64) -> (MutexGuard<'a, Inner>, io::Result<()>) {
        let e = g.objects.get_mut(&id).expect("victim exists");
        let Place::Arena(offset) = e.place else { return (g, Ok(())) };
        let size = e.size;
        e.spilling = true;
        e.pins += 1;
        drop(g);
        let path = self.spill_path(id);
        // SAFETY: the object is sealed (immutable) and pinned by us.
        let bytes = unsafe { self.arena.slice(offset, size) };
        // The file is laid out as the arena is (see `spill_offset`), so a
        // mapping of it keeps byte strings aligned.
        // Spilled values are this user's only: the dir 0700, files 0600.
        let written = private_dir(&self.spill_dir).and_then(|()| private_file(&path)).and_then(|mut f| {
            use std::io::Write;
            f.write_all(&[0u8; crate::alloc::ALIGN as usize][..spill_offset(size) as usize])?;
            f.write_all(bytes)
        });
        let mut g = self.lock();
        let e = g.objects.get_mut(&id).expect("a spilling object stays (it is pinned)");
        e.spilling = false;
        e.pins -= 1;
        let (pins, freed) = (e.pins, e.freed);
        let result = match written {
            Err(err) => {
                let _ = std::fs::remove_file(&path);
                if freed && pins == 0 {
                    Self::remove(&mut g, id);
                }
                Err(err)
            }
            Ok(()) if freed && pins == 0 => {
                // Freed meanwhile: nothing to keep.
                let _ = std::fs::remove_file(&path);
                Self::remove(&mut g, id);
                Ok(())
            }
            Ok(()) if pins > 0 => {
                // Read meanwhile: it stays where its reader sees it.
                let _ = std::fs::remove_file(&path);
                Ok(())
            }
            Ok(()) => {
                tracing::debug!(object = %shoal_domain::ObjectId(id), size, path = %path.display(), "spilled object to disk");
                Self::release(&mut g, offset, size);
                g.spilled_bytes += size;
                g.spilled_objects += 1;
                g.objects.get_mut(&id).expect("exists").place = Place::Disk(path);
                Ok(())
            }
        };
        self.spilled.notify_all();
        (g, result)
    }

    /// Copies `data` into unsealed object `id` at byte `at`.
    pub fn write_at(&self, id: u64, at: u64, data: &[u8]) -> Result<(), StoreError> {
        let offset = {
            let g = self.lock();
            let e = g.objects.get(&id).ok_or(StoreError::NotFound(id))?;
            if e.sealed || at.checked_add(data.len() as u64).is_none_or(|end| end > e.size) {
                return Err(StoreError::BadWrite {
                    id,
                    detail: format!("{} bytes at {at} into an object of {} bytes (sealed: {})", data.len(), e.size, e.sealed),
                });
            }
            let Place::Arena(offset) = e.place else { unreachable!("unsealed objects are never spilled") };
            offset
        };
        // SAFETY: the range is inside the unsealed object, which only its
        // writer touches until it is sealed.
        unsafe { self.arena.write(offset + at, data) };
        Ok(())
    }

    /// Creates object `id` of `size` bytes, lets `fill` write all of it,
    /// and seals it. If `fill` fails the space is given back.
    pub fn put_with<E>(&self, id: u64, size: u64, fill: impl FnOnce(&mut [u8]) -> Result<(), E>) -> Result<Result<(), E>, StoreError> {
        let offset = self.create(id, size, 0)?;
        // SAFETY: the range was just reserved for us and is unsealed.
        let buf = unsafe { std::slice::from_raw_parts_mut(self.arena.ptr(offset, size), size as usize) };
        match fill(buf) {
            Ok(()) => {
                self.seal(id)?;
                Ok(Ok(()))
            }
            Err(e) => {
                self.abort(id);
                Ok(Err(e))
            }
        }
    }

    /// Marks `id` complete and immutable.
    pub fn seal(&self, id: u64) -> Result<(), StoreError> {
        let mut g = self.lock();
        let e = g.objects.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        e.sealed = true;
        e.owner = 0;
        Ok(())
    }

    /// Drops an unsealed object (its writer gave up or died).
    pub fn abort(&self, id: u64) {
        let mut g = self.lock();
        if g.objects.get(&id).is_some_and(|e| !e.sealed) {
            Self::remove(&mut g, id);
        }
    }

    /// Drops every unsealed object being written by `owner` (an executor
    /// that died mid-write). Returns how many were reclaimed.
    pub fn reclaim_owner(&self, owner: u64) -> usize {
        let mut g = self.lock();
        let ids: Vec<u64> = g.objects.iter().filter(|(_, e)| !e.sealed && e.owner == owner).map(|(id, _)| *id).collect();
        for id in &ids {
            Self::remove(&mut g, *id);
        }
        ids.len()
    }

    /// Pins sealed object `id` for reading and says where it is. A spilled
    /// object is brought back into the arena if there is room.
    pub fn pin(&self, id: u64) -> Result<Location, StoreError> {
        let mut g = self.lock();
        g.clock += 1;
        let clock = g.clock;
        let e = g.objects.get(&id).filter(|e| e.sealed && !e.freed).ok_or(StoreError::NotFound(id))?;
        let size = e.size;
        if let Place::Disk(path) = &e.place {
            let path = path.clone();
            let (g2, room) = self.make_room(g, size, Some(id));
            g = g2;
            // The lock may have been let go while spilling: is it still
            // there, and still on disk?
            let still = matches!(g.objects.get(&id), Some(e) if e.sealed && !e.freed && matches!(&e.place, Place::Disk(p) if *p == path));
            if !still {
                if let Ok(offset) = room {
                    Self::release(&mut g, offset, size);
                }
                if !g.objects.get(&id).is_some_and(|e| e.sealed && !e.freed) {
                    return Err(StoreError::NotFound(id));
                }
            } else if let Ok(offset) = room {
                match self.restore(&path, offset, size) {
                    Ok(()) => {
                        let _ = std::fs::remove_file(&path);
                        g.spilled_bytes -= size;
                        g.spilled_objects -= 1;
                        g.objects.get_mut(&id).expect("exists").place = Place::Arena(offset);
                        tracing::debug!(object = %shoal_domain::ObjectId(id), size, "restored spilled object");
                    }
                    Err(err) => {
                        tracing::warn!(object = %shoal_domain::ObjectId(id), error = %err, "could not restore a spilled object; reading it from disk");
                        Self::release(&mut g, offset, size);
                    }
                }
            }
        }
        let e = g.objects.get_mut(&id).expect("exists");
        e.pins += 1;
        e.last_use = clock;
        Ok(match &e.place {
            Place::Arena(offset) => Location::Arena { offset: *offset, len: size },
            Place::Disk(path) => Location::File { path: path.clone(), len: size },
        })
    }

    fn restore(&self, path: &Path, offset: u64, size: u64) -> io::Result<()> {
        use std::io::{Read, Seek};
        let mut f = std::fs::File::open(path)?;
        f.seek(std::io::SeekFrom::Start(spill_offset(size)))?;
        // SAFETY: the range was just allocated under the lock we hold.
        let buf = unsafe { std::slice::from_raw_parts_mut(self.arena.ptr(offset, size), size as usize) };
        f.read_exact(buf)
    }

    /// Ends one pin of `id`.
    pub fn unpin(&self, id: u64) {
        let mut g = self.lock();
        let Some(e) = g.objects.get_mut(&id) else { return };
        e.pins = e.pins.saturating_sub(1);
        if e.pins == 0 && e.freed {
            Self::remove(&mut g, id);
        }
    }

    /// Nobody needs `id` any more: drop it now, or at its last unpin.
    pub fn free(&self, id: u64) {
        let mut g = self.lock();
        let Some(e) = g.objects.get_mut(&id) else { return };
        if e.pins > 0 {
            e.freed = true;
        } else {
            Self::remove(&mut g, id);
        }
    }

    /// Frees every object whose id satisfies `pred` (e.g. all of a job).
    pub fn free_where(&self, pred: impl Fn(u64) -> bool) {
        let ids: Vec<u64> = self.lock().objects.keys().copied().filter(|id| pred(*id)).collect();
        for id in ids {
            self.free(id);
        }
    }

    /// Gives back the allocation of an object at `offset` of `size` bytes.
    fn release(g: &mut Inner, offset: u64, size: u64) {
        g.alloc.free(offset - payload_skew(size), footprint(size));
    }

    fn remove(g: &mut Inner, id: u64) {
        let Some(e) = g.objects.remove(&id) else { return };
        match e.place {
            Place::Arena(offset) => Self::release(g, offset, e.size),
            Place::Disk(path) => {
                let _ = std::fs::remove_file(path);
                g.spilled_bytes -= e.size;
                g.spilled_objects -= 1;
            }
        }
    }

    /// Whether sealed object `id` is spilled to disk (reading it first
    /// brings it back: do that off any latency-sensitive thread).
    pub fn is_spilled(&self, id: u64) -> bool {
        self.lock().objects.get(&id).is_some_and(|e| e.sealed && matches!(e.place, Place::Disk(_)))
    }

    /// Ids of the sealed objects held (told to the head on registering).
    pub fn ids(&self) -> Vec<u64> {
        self.lock().objects.iter().filter(|(_, e)| e.sealed && !e.freed).map(|(id, _)| *id).collect()
    }

    /// Usage figures.
    pub fn stats(&self) -> StoreStats {
        let g = self.lock();
        let mut s = StoreStats {
            capacity: g.alloc.capacity(),
            used: g.alloc.used(),
            spilled_bytes: g.spilled_bytes,
            spilled_objects: g.spilled_objects,
            ..Default::default()
        };
        for e in g.objects.values() {
            if matches!(e.place, Place::Arena(_)) {
                s.objects += 1;
            }
            if e.pins > 0 {
                s.pinned_bytes += e.size;
            }
        }
        s
    }

    /// The sealed object's bytes, without a copy: the returned `Bytes`
    /// borrows the shared memory (or a mapping of the spill file) and
    /// keeps the object pinned until it and all its slices are dropped.
    pub fn read(self: &Arc<Self>, id: u64) -> Result<Bytes, StoreError> {
        let loc = self.pin(id)?;
        let pin = PinGuard { store: self.clone(), id };
        match loc {
            // SAFETY: a sealed object, pinned by `pin` for as long as the bytes live.
            Location::Arena { offset, len } => Ok(unsafe { crate::view::arena_bytes(self.arena.clone(), offset, len, pin) }),
            // A failure drops `pin`, which unpins.
            Location::File { path, len } => crate::view::spilled_bytes(&path, len, pin).map_err(|_| StoreError::NotFound(id)),
        }
    }
}

/// Where an object of `size` bytes starts in its spill file: after the
/// same skew as in the arena, so mapping the file keeps a byte string's
/// payload aligned (see [`payload_skew`]).
pub fn spill_offset(size: u64) -> u64 {
    payload_skew(size)
}

/// Unpins its object when dropped.
struct PinGuard {
    store: Arc<Store>,
    id: u64,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.store.unpin(self.id);
    }
}

/// Creates `dir` if missing, private to this user (0700).
fn private_dir(dir: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Creates (or truncates) `path` readable by this user only (0600).
fn private_file(path: &std::path::Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::{footprint, rounded};

    fn store(cap: u64) -> (Arc<Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (Store::open(cap, cap, dir.path().join("spill")).unwrap(), dir)
    }

    #[test]
    fn a_write_past_the_faulted_prefix_has_the_space_after_it_faulted_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing pre-faulted at open.
        let s = Store::open(512 << 20, 0, dir.path().join("spill")).unwrap();
        assert_eq!(s.faulted.load(Ordering::Acquire), 0);
        let size = 96u64 << 20;
        let offset = s.create(1, size, 0).unwrap();
        let end = offset - payload_skew(size) + rounded(footprint(size));
        assert!(s.faulted.load(Ordering::Acquire) >= end, "the write's own range is faulted in before it is handed out");
        // The next write of the same size finds its space backed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while s.faulted.load(Ordering::Acquire) < end + size {
            assert!(std::time::Instant::now() < deadline, "faulted only to {} of {}", s.faulted.load(Ordering::Acquire), end + size);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Never past the arena.
        s.create(2, 300 << 20, 0).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(s.faulted.load(Ordering::Acquire) <= s.capacity());
    }

    fn put(s: &Store, id: u64, byte: u8, size: usize) -> Result<(), StoreError> {
        s.put_with(id, size as u64, |b| {
            b.fill(byte);
            Ok::<(), ()>(())
        })
        .map(|r| r.unwrap())
    }

    #[test]
    fn read_sees_sealed_bytes_and_pins_until_dropped() {
        let (s, _d) = store(1 << 20);
        put(&s, 1, 7, 1000).unwrap();
        let b = s.read(1).unwrap();
        assert_eq!(b.len(), 1000);
        assert!(b.iter().all(|x| *x == 7));
        s.free(1);
        assert!(!s.contains(1), "freed objects are invisible at once");
        assert_eq!(s.stats().used, rounded(footprint(1000)), "but their memory stays while a reader pins it");
        let slice = b.slice(10..20);
        drop(b);
        assert_eq!(s.stats().used, rounded(footprint(1000)), "a slice keeps the pin");
        drop(slice);
        assert_eq!(s.stats().used, 0);
    }

    #[test]
    fn unsealed_objects_are_invisible_and_reclaimed_with_their_writer() {
        let (s, _d) = store(1 << 20);
        s.create(5, 100, 42).unwrap();
        assert!(!s.contains(5));
        assert_eq!(s.pin(5), Err(StoreError::NotFound(5)));
        assert_eq!(s.reclaim_owner(42), 1);
        assert_eq!(s.stats().used, 0);
    }

    #[test]
    fn full_store_spills_least_recently_used_and_restores_on_pin() {
        let (s, _d) = store(4096);
        put(&s, 1, 1, 1900).unwrap();
        put(&s, 2, 2, 1900).unwrap();
        s.unpin(match s.pin(1).unwrap() {
            Location::Arena { .. } => 1,
            l => panic!("{l:?}"),
        });
        // 1 was used more recently than 2: 2 goes to disk.
        put(&s, 3, 3, 1900).unwrap();
        let st = s.stats();
        assert_eq!((st.spilled_objects, st.spilled_bytes), (1, 1900));
        // Reading 2 brings it back (spilling another one).
        let b = s.read(2).unwrap();
        assert!(b.iter().all(|x| *x == 2));
        assert_eq!(s.stats().spilled_objects, 1);
        drop(b);
        for (id, byte) in [(1, 1), (2, 2), (3, 3)] {
            let b = s.read(id).unwrap();
            assert_eq!(b.len(), 1900);
            assert!(b.iter().all(|x| *x == byte), "object {id}");
        }
    }

    #[test]
    fn pinned_objects_are_not_spilled_and_a_full_store_says_so() {
        let (s, _d) = store(4096);
        put(&s, 1, 1, 4000).unwrap();
        let held = s.read(1).unwrap();
        let err = put(&s, 2, 2, 100).unwrap_err();
        assert!(matches!(err, StoreError::Full { size: 100, .. }), "{err}");
        assert!(err.to_string().contains("object store full"));
        assert!(held.iter().all(|x| *x == 1), "nothing already stored is lost");
        let too_big = put(&s, 3, 3, 5000).unwrap_err();
        assert!(too_big.to_string().contains("4096 bytes in all"), "{too_big}");
    }

    #[test]
    fn spilled_object_is_read_from_disk_when_the_arena_stays_full() {
        let (s, _d) = store(4096);
        put(&s, 1, 1, 4000).unwrap();
        put(&s, 2, 2, 4000).unwrap(); // spills 1
        let two = s.read(2).unwrap(); // pins 2: 1 cannot come back
        let one = s.read(1).unwrap();
        assert!(one.iter().all(|x| *x == 1));
        assert_eq!(s.stats().spilled_objects, 1);
        drop((one, two));
        s.free(1);
        assert_eq!(s.stats().spilled_bytes, 0, "freeing a spilled object deletes its file");
    }

    #[test]
    fn absurd_sizes_are_refused_not_overflowed() {
        let (s, _d) = store(1 << 16);
        assert!(matches!(s.create(1, u64::MAX, 0), Err(StoreError::Full { .. })));
        assert!(matches!(s.create(2, u64::MAX - 10, 0), Err(StoreError::Full { .. })));
        s.create(3, 10, 0).unwrap();
        assert!(s.write_at(3, u64::MAX - 2, b"abc").is_err(), "a write past the end is refused");
        assert_eq!(s.stats().used, rounded(footprint(10)));
    }

    #[test]
    fn concurrent_writers_and_readers_with_spilling_see_their_own_bytes() {
        let (s, _d) = store(96 << 10);
        let spilled = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|sc| {
            for t in 0..6u64 {
                let (s, spilled) = (&s, &spilled);
                sc.spawn(move || {
                    let mut mine: Vec<(u64, usize)> = Vec::new();
                    for i in 0..150u64 {
                        let id = t << 32 | i;
                        let n = 1000 + ((id * 7919) % 15_000) as usize;
                        let byte = (id % 251) as u8;
                        match put(s, id, byte, n) {
                            Ok(()) => mine.push((id, n)),
                            // Everything else pinned by other readers: fine.
                            Err(StoreError::Full { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                        if let Some(&(old, len)) = mine.get((i as usize * 31) % mine.len().max(1)) {
                            let b = s.read(old).unwrap();
                            assert_eq!(b.len(), len);
                            assert!(b.iter().all(|x| *x == (old % 251) as u8), "object {old:#x} corrupted");
                        }
                        if s.stats().spilled_objects > 0 {
                            spilled.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        if i % 3 == 0 && !mine.is_empty() {
                            let (gone, _) = mine.remove(0);
                            s.free(gone);
                        }
                    }
                    for (id, _) in mine {
                        s.free(id);
                    }
                });
            }
        });
        assert!(spilled.into_inner(), "the store was small enough to spill");
        let st = s.stats();
        assert_eq!((st.used, st.objects, st.spilled_bytes, st.spilled_objects), (0, 0, 0, 0), "everything freed: {st:?}");
    }

    #[test]
    fn chunked_writes_then_seal() {
        let (s, _d) = store(1 << 16);
        s.create(9, 10, 0).unwrap();
        s.write_at(9, 0, b"hello").unwrap();
        s.write_at(9, 5, b"world").unwrap();
        assert!(s.write_at(9, 8, b"xyz").is_err(), "past the end");
        s.seal(9).unwrap();
        assert!(s.write_at(9, 0, b"h").is_err(), "sealed objects are immutable");
        assert_eq!(&s.read(9).unwrap()[..], b"helloworld");
        assert_eq!(s.create(9, 1, 0), Err(StoreError::Exists(9)));
    }

    #[test]
    fn a_second_run_of_a_task_finds_the_first_runs_result() {
        use std::time::Duration;
        let (s, _d) = store(1 << 20);
        let s = Arc::new(s);
        // Sealed already: that copy is the result, nothing is written.
        s.create(1, 10, 7).unwrap();
        s.seal(1).unwrap();
        assert_eq!(s.claim(1, 12, 8, Duration::ZERO), Ok(Claim::Sealed(10)));
        // Being written by the first run: wait for its seal.
        s.create(2, 10, 7).unwrap();
        let first = {
            let s = s.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                s.seal(2).unwrap();
            })
        };
        assert_eq!(s.claim(2, 10, 8, Duration::from_secs(10)), Ok(Claim::Sealed(10)));
        first.join().unwrap();
        // The first run gave up: this run writes it.
        s.create(3, 10, 7).unwrap();
        let first = {
            let s = s.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                s.abort(3);
            })
        };
        assert!(matches!(s.claim(3, 10, 8, Duration::from_secs(10)), Ok(Claim::Write(_))));
        first.join().unwrap();
        // Freed while a reader still had it pinned: the same result again
        // takes that copy back instead of waiting for the reader.
        s.create(6, 10, 7).unwrap();
        s.seal(6).unwrap();
        s.pin(6).unwrap();
        s.free(6);
        assert!(!s.contains(6));
        assert_eq!(s.claim(6, 10, 8, Duration::ZERO), Ok(Claim::Sealed(10)));
        assert!(s.contains(6), "visible again");
        s.unpin(6);
        assert!(s.contains(6), "and kept after its reader let go");
        // A first run that never ends: a typed error once patience runs out.
        s.create(4, 10, 7).unwrap();
        assert_eq!(s.claim(4, 10, 8, Duration::from_millis(20)), Err(StoreError::Exists(4)));
        // A new result simply gets room.
        assert!(matches!(s.claim(5, 10, 8, Duration::ZERO), Ok(Claim::Write(_))));
    }
}
