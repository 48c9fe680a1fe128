//! Two byte rings in one memory file shared by a direct caller and its
//! actor (one ring each way): a frame crosses between the two processes
//! as a copy into shared memory and one atomic store, with no system call,
//! so two ends spinning on their own cores answer each other in well
//! under a microsecond.
//!
//! The rings carry the same length-prefixed frames the socket would; the
//! socket beside them stays for what it is good at: the caller's identity
//! (`SO_PEERCRED`), noticing the peer's end, and waking a peer that sleeps
//! (a reader about to sleep raises its `sleeping` flag and sleeps in
//! `poll` on the socket; a writer that finds the flag raised sends one
//! byte, a bell, whose content means nothing).
//!
//! The peer is another process of the same user, so it is trusted no
//! further than that: every index it writes is checked (a ring never
//! claims more than its capacity, and positions are taken modulo it), so
//! a garbled or hostile peer yields [`Corrupt`], never an access outside
//! the mapping.
//!
//! Layout of the file: a 4 KiB header with, per ring, its `head` (bytes
//! written so far, written by the writer), `tail` (bytes read so far,
//! written by the reader) and `sleeping` (raised by the reader), each on
//! its own cache line; then the two rings' data, `cap` bytes each.

use shoal_store::arena::Arena;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

/// Bytes each ring holds (calls or results beyond it stream through as the
/// reader drains it).
pub(crate) const CAPACITY: u64 = 256 << 10;

const HEADER: u64 = 4096;
const LINE: usize = 64;

/// A ring's indexes report more bytes than it can hold: the peer wrote
/// garbage into the shared header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Corrupt;

impl From<Corrupt> for io::Error {
    fn from(_: Corrupt) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, "the peer's ring indexes are garbled")
    }
}

/// Which ring of the file this process writes: the caller writes ring 0
/// (calls) and reads ring 1 (results), the actor the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Caller,
    Actor,
}

/// This process's end of the two rings: a memory file like a node's
/// object store ([`Arena`]: created by the caller, opened by the actor as
/// a same-machine reader opens a store).
pub(crate) struct Rings {
    file: Arena,
    cap: u64,
    out: usize,
    inp: usize,
}

impl Rings {
    /// Creates the file and maps it (the caller's end): its descriptor and
    /// inode go to the actor in the handshake.
    pub(crate) fn create(cap: u64) -> io::Result<Rings> {
        Ok(Self::with(Arena::create(HEADER + 2 * cap)?, cap, Side::Caller))
    }

    /// Maps the file the caller with process id `pid` created (descriptor
    /// `fd`, inode `inode`, `cap` bytes a ring): the actor's end. Refused
    /// unless the file is that one and of that size.
    pub(crate) fn open(pid: u32, fd: u32, inode: u64, cap: u64) -> io::Result<Rings> {
        if cap == 0 || cap > 64 << 20 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("a ring of {cap} bytes")));
        }
        match Arena::open_peer(pid, fd, inode) {
            Some(file) if file.len() == HEADER + 2 * cap => Ok(Self::with(file, cap, Side::Actor)),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "not the caller's ring file")),
        }
    }

    fn with(file: Arena, cap: u64, side: Side) -> Rings {
        let (out, inp) = match side {
            Side::Caller => (0, 1),
            Side::Actor => (1, 0),
        };
        Rings { file, cap, out, inp }
    }

    /// The descriptor and inode the actor opens the file by.
    pub(crate) fn file_id(&self) -> (RawFd, u64) {
        (self.file.fd(), self.file.inode())
    }

    /// Bytes a ring holds.
    pub(crate) fn capacity(&self) -> u64 {
        self.cap
    }

    fn word<T>(&self, ring: usize, field: usize) -> &T {
        let at = (ring * 4 * LINE + field * LINE) as u64;
        // SAFETY: ring < 2 and field < 3 address a 64-byte-aligned line
        // inside the header (`ptr` checks the bounds), which lives as long
        // as `self`; the atomics have no invalid bit patterns.
        unsafe { &*self.file.ptr(at, std::mem::size_of::<T>() as u64).cast::<T>() }
    }

    fn head(&self, ring: usize) -> &AtomicU64 {
        self.word(ring, 0)
    }

    fn tail(&self, ring: usize) -> &AtomicU64 {
        self.word(ring, 1)
    }

    fn sleeping(&self, ring: usize) -> &AtomicU32 {
        self.word(ring, 2)
    }

    fn data(&self, ring: usize) -> *mut u8 {
        self.file.ptr(HEADER + ring as u64 * self.cap, self.cap)
    }

    /// Writes as much of `bytes` as there is room for, in one piece the
    /// reader sees at once; the count written.
    pub(crate) fn write(&self, bytes: &[u8]) -> Result<usize, Corrupt> {
        let head = self.head(self.out).load(Ordering::Relaxed);
        let tail = self.tail(self.out).load(Ordering::Acquire);
        let used = head.wrapping_sub(tail);
        if used > self.cap {
            return Err(Corrupt);
        }
        let n = bytes.len().min((self.cap - used) as usize);
        if n == 0 {
            return Ok(0);
        }
        let at = (head % self.cap) as usize;
        let first = n.min(self.cap as usize - at);
        let data = self.data(self.out);
        // SAFETY: `at + first <= cap` and `n - first < cap`: both copies
        // stay inside this ring's data; the reader does not touch bytes
        // past `head` until the store below publishes them.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), data.add(at), first);
            std::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), data, n - first);
        }
        // SeqCst: ordered before the load of the reader's `sleeping` flag
        // in `wake_needed` (the reader raises it, then looks at `head`).
        self.head(self.out).store(head.wrapping_add(n as u64), Ordering::SeqCst);
        Ok(n)
    }

    /// Whether the reader of our outgoing ring sleeps (and so needs a bell
    /// on the socket); lowers its flag, so one bell serves one sleep.
    pub(crate) fn wake_needed(&self) -> bool {
        let s = self.sleeping(self.out);
        s.load(Ordering::SeqCst) != 0 && s.swap(0, Ordering::SeqCst) != 0
    }

    /// Whether the incoming ring holds bytes not read yet.
    pub(crate) fn readable(&self) -> bool {
        self.head(self.inp).load(Ordering::Acquire) != self.tail(self.inp).load(Ordering::Relaxed)
    }

    /// Appends what the incoming ring holds to `buf`; the count read.
    pub(crate) fn read(&self, buf: &mut Vec<u8>) -> Result<usize, Corrupt> {
        let tail = self.tail(self.inp).load(Ordering::Relaxed);
        let head = self.head(self.inp).load(Ordering::Acquire);
        let n = head.wrapping_sub(tail);
        if n > self.cap {
            return Err(Corrupt);
        }
        if n == 0 {
            return Ok(0);
        }
        let n = n as usize;
        let at = (tail % self.cap) as usize;
        let first = n.min(self.cap as usize - at);
        let data = self.data(self.inp);
        buf.reserve(n);
        // SAFETY: both ranges lie inside the ring's data (as in `write`);
        // the writer does not reuse them before `tail` moves past them.
        unsafe {
            buf.extend_from_slice(std::slice::from_raw_parts(data.add(at), first));
            buf.extend_from_slice(std::slice::from_raw_parts(data, n - first));
        }
        self.tail(self.inp).store(tail.wrapping_add(n as u64), Ordering::Release);
        Ok(n)
    }

    /// About to sleep on the socket: raises our `sleeping` flag and says
    /// whether bytes arrived meanwhile (then do not sleep; the flag is
    /// lowered again). A writer publishing after this sees the flag.
    pub(crate) fn sleep_unless_readable(&self) -> bool {
        self.sleeping(self.inp).store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.head(self.inp).load(Ordering::SeqCst) != self.tail(self.inp).load(Ordering::Relaxed) {
            self.awake();
            return false;
        }
        true
    }

    /// Awake again: writers need not ring.
    pub(crate) fn awake(&self) {
        self.sleeping(self.inp).store(0, Ordering::Relaxed);
    }
}

/// Rings the bell: one byte on `fd` (a full socket buffer means bells are
/// pending already).
pub(crate) fn ring_bell(fd: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: one byte from a valid buffer.
        let n = unsafe { libc::send(fd, c"!".as_ptr().cast(), 1, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(()),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}

/// Writes all of `bytes` into `rings`, ringing the bell on `fd` when the
/// reader sleeps, and waiting while the ring is full (the reader drains
/// it); gives up when `gone()` says the peer is.
pub(crate) fn write_all(rings: &Rings, fd: RawFd, mut bytes: &[u8], mut gone: impl FnMut() -> bool) -> io::Result<()> {
    let mut idle = 0u32;
    loop {
        let n = rings.write(bytes)?;
        if rings.wake_needed() {
            ring_bell(fd)?;
        }
        bytes = &bytes[n..];
        if bytes.is_empty() {
            return Ok(());
        }
        if n > 0 {
            idle = 0;
        }
        idle += 1;
        if idle < 64 {
            std::thread::yield_now();
        } else {
            if gone() {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the peer is gone"));
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::os::fd::AsRawFd;

    /// The actor's end of `caller`'s rings, opened as another process
    /// would (through /proc).
    fn peer(caller: &Rings) -> Rings {
        let (fd, ino) = caller.file_id();
        Rings::open(std::process::id(), fd as u32, ino, caller.capacity()).unwrap()
    }

    #[test]
    fn bytes_cross_both_ways_and_wrap_around() {
        let c = Rings::create(64).unwrap();
        let a = peer(&c);
        let mut got = Vec::new();
        for round in 0..20u8 {
            let msg: Vec<u8> = (0..40).map(|i| i ^ round).collect();
            assert_eq!(c.write(&msg).unwrap(), 40);
            assert!(a.readable());
            got.clear();
            assert_eq!(a.read(&mut got).unwrap(), 40);
            assert_eq!(got, msg, "round {round}");
            assert!(!a.readable());
            assert_eq!(a.write(&msg[..7]).unwrap(), 7);
            got.clear();
            c.read(&mut got).unwrap();
            assert_eq!(got, &msg[..7]);
        }
    }

    #[test]
    fn a_full_ring_takes_only_what_fits() {
        let c = Rings::create(64).unwrap();
        let a = peer(&c);
        assert_eq!(c.write(&[1; 50]).unwrap(), 50);
        assert_eq!(c.write(&[2; 50]).unwrap(), 14);
        assert_eq!(c.write(&[3; 5]).unwrap(), 0);
        let mut got = Vec::new();
        a.read(&mut got).unwrap();
        assert_eq!(got.len(), 64);
        assert_eq!(&got[50..], &[2; 14]);
    }

    #[test]
    fn garbled_indexes_are_an_error_not_a_wild_copy() {
        let c = Rings::create(64).unwrap();
        let a = peer(&c);
        c.head(0).store(1 << 40, Ordering::SeqCst);
        assert_eq!(a.read(&mut Vec::new()), Err(Corrupt));
        c.head(0).store(0, Ordering::SeqCst);
        c.tail(0).store(u64::MAX - 3, Ordering::SeqCst);
        // used = 0 - (MAX - 3) = 4: fine; anything beyond the capacity not.
        assert!(c.write(&[0; 8]).is_ok());
        c.tail(0).store(1 << 50, Ordering::SeqCst);
        assert_eq!(c.write(&[0; 8]), Err(Corrupt));
    }

    #[test]
    fn the_wrong_file_or_size_is_refused() {
        let c = Rings::create(64).unwrap();
        let (fd, ino) = c.file_id();
        assert!(Rings::open(std::process::id(), fd as u32, ino + 1, 64).is_err());
        assert!(Rings::open(std::process::id(), fd as u32, ino, 128).is_err());
        assert!(Rings::open(std::process::id(), fd as u32, ino, 0).is_err());
    }

    #[test]
    fn a_sleeper_is_woken_by_exactly_the_next_write() {
        let c = Rings::create(64).unwrap();
        let a = peer(&c);
        assert!(!c.wake_needed());
        assert!(a.sleep_unless_readable());
        assert!(c.wake_needed(), "the reader sleeps");
        assert!(!c.wake_needed(), "one bell per sleep");
        c.write(&[1]).unwrap();
        assert!(!a.sleep_unless_readable(), "bytes are there: no sleep");
        assert!(!c.wake_needed());
    }

    /// Seeded runs: a writer thread streams frames of random sizes (some
    /// past the capacity) through a small ring to a reader thread that
    /// sleeps now and then; every byte arrives, in order, none twice, and
    /// no sleeper is left without its bell.
    #[test]
    fn random_streams_arrive_whole_in_order() {
        for seed in 0..8u64 {
            let c = Rings::create(256).unwrap();
            let a = peer(&c);
            let (tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let sizes: Vec<usize> = (0..400).map(|_| rng.random_range(1..700)).collect();
            let expect: Vec<u8> = sizes.iter().enumerate().flat_map(|(i, &n)| (0..n).map(move |j| (i * 31 + j) as u8)).collect();
            let sent = expect.clone();
            let writer = std::thread::spawn(move || {
                let mut at = 0;
                for n in sizes {
                    write_all(&c, tx.as_raw_fd(), &sent[at..at + n], || false).unwrap();
                    at += n;
                }
            });
            let mut got = Vec::new();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xff);
            while got.len() < expect.len() {
                if a.read(&mut got).unwrap() == 0 && rng.random_bool(0.3) && a.sleep_unless_readable() {
                    let mut fds = [libc::pollfd { fd: rx.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
                    let woke = crate::direct::wait_readable(&mut fds, Some(std::time::Duration::from_secs(10)));
                    assert_eq!(woke, 1, "seed {seed}: a sleeping reader got no bell");
                    crate::direct::recv_available(rx.as_raw_fd(), &mut Vec::new()).unwrap();
                    a.awake();
                }
            }
            writer.join().unwrap();
            assert_eq!(got, expect, "seed {seed}");
        }
    }
}
