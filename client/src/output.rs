//! A task's stdout and stderr, line by line, with the task that printed
//! each line (executor only). At start the executor points its fds 1 and
//! 2 at pipes; a reader thread splits what arrives into lines and tags
//! each with the task running at the time. At the end of every task the
//! task loop waits until the reader has taken everything already written
//! ([`task_ended`]: one `poll` when nothing was printed), so no line of a
//! task is tagged with the next one. Lines printed between tasks (a
//! background thread, the executor's own messages) go to the worker's
//! log as before.

use shoal_proto::pb;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Longest line kept; longer ones are cut.
const MAX_LINE: usize = 16 << 10;
/// Lines waiting for the task loop; past it, lines are counted, not kept.
const MAX_PENDING: usize = 10_000;

/// The task whose output arrives now (0: none).
static CURRENT: AtomicU64 = AtomicU64::new(0);

struct Stream {
    read: RawFd,
    /// Where untagged lines go (the original fd: the worker's log).
    original: RawFd,
    stderr: bool,
    partial: Vec<u8>,
}

struct State {
    streams: Vec<Stream>,
    lines: Vec<pb::TaskOutput>,
    dropped: u64,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
static DRAINED: Condvar = Condvar::new();

fn lock() -> std::sync::MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Points fds 1 and 2 at pipes read by a thread of this process. On any
/// failure output stays where it was (untagged).
pub(crate) fn capture() {
    // SHOAL_TASK_OUTPUT=0: output stays in the worker's log, untagged.
    if std::env::var_os("SHOAL_TASK_OUTPUT").is_some_and(|v| v == "0") {
        return;
    }
    let mut streams = Vec::new();
    for (fd, stderr) in [(1, false), (2, true)] {
        let mut p = [0 as RawFd; 2];
        // SAFETY: plain syscalls on fds this process owns; on failure the
        // fd is left as it was.
        unsafe {
            if libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                continue;
            }
            let original = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3);
            if original < 0 || libc::dup2(p[1], fd) < 0 {
                libc::close(p[0]);
                libc::close(p[1]);
                continue;
            }
            libc::close(p[1]);
            streams.push(Stream { read: p[0], original, stderr, partial: Vec::new() });
        }
    }
    if streams.is_empty() {
        return;
    }
    let fds: Vec<RawFd> = streams.iter().map(|s| s.read).collect();
    *lock() = Some(State { streams, lines: Vec::new(), dropped: 0 });
    let spawned = std::thread::Builder::new().name("shoal-output".into()).spawn(move || reader(fds));
    if spawned.is_err() {
        *lock() = None;
    }
}

fn write_all(fd: RawFd, mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: writes from a live slice to an fd we own.
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        if n <= 0 {
            return;
        }
        b = b.get(n as usize..).unwrap_or_default();
    }
}

/// Takes a complete line of stream `s` (without its newline).
fn emit(state: &mut State, i: usize, line: Vec<u8>) {
    let task = CURRENT.load(Ordering::Acquire);
    let Some(s) = state.streams.get(i) else { return };
    if task == 0 {
        let mut l = line;
        l.push(b'\n');
        write_all(s.original, &l);
        return;
    }
    if state.lines.len() >= MAX_PENDING {
        state.dropped += 1;
        return;
    }
    let mut line = line;
    line.truncate(MAX_LINE);
    let stderr = s.stderr;
    state.lines.push(pb::TaskOutput { task, stderr, line: String::from_utf8_lossy(&line).into_owned(), pid: std::process::id(), ..Default::default() });
}

fn reader(fds: Vec<RawFd>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let mut polls: Vec<libc::pollfd> = fds.iter().map(|fd| libc::pollfd { fd: *fd, events: libc::POLLIN, revents: 0 }).collect();
        // SAFETY: the pollfd array lives across the call.
        let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        let mut guard = lock();
        let Some(state) = guard.as_mut() else { return };
        for (i, p) in polls.iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            // SAFETY: reads into our buffer from our pipe's read end.
            let got = unsafe { libc::read(p.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if got <= 0 {
                if got == 0 {
                    return; // every writer is gone
                }
                continue;
            }
            let data = buf.get(..got as usize).unwrap_or_default();
            let mut start = 0;
            for (at, b) in data.iter().enumerate() {
                if *b == b'\n' {
                    let mut line = match state.streams.get_mut(i) {
                        Some(s) => std::mem::take(&mut s.partial),
                        None => Vec::new(),
                    };
                    line.extend_from_slice(data.get(start..at).unwrap_or_default());
                    emit(state, i, line);
                    start = at + 1;
                }
            }
            if let Some(s) = state.streams.get_mut(i) {
                let rest = data.get(start..).unwrap_or_default();
                if s.partial.len() + rest.len() <= MAX_LINE {
                    s.partial.extend_from_slice(rest);
                }
            }
        }
        drop(guard);
        DRAINED.notify_all();
    }
}

/// Output from now on belongs to `task`.
pub(crate) fn task_started(task: u64) {
    CURRENT.store(task, Ordering::Release);
}

/// Nothing is left unread in `fds` (one `poll`, no wait).
fn all_read(fds: &[RawFd]) -> bool {
    let mut polls: Vec<libc::pollfd> = fds.iter().map(|fd| libc::pollfd { fd: *fd, events: libc::POLLIN, revents: 0 }).collect();
    // SAFETY: the pollfd array lives across the call.
    let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 0) };
    n <= 0
}

/// The running task is done: once the reader has everything it wrote
/// (its last unterminated line too), output is nobody's until the next
/// [`task_started`].
pub(crate) fn task_ended() {
    task_ended_then(0);
}

/// As [`task_ended`], but output from then on belongs to `owner` (an
/// actor's process: what it prints between calls is the actor's).
pub(crate) fn task_ended_then(owner: u64) {
    if let Some(mut guard) = wait_read()
        && let Some(state) = guard.as_mut()
    {
        for i in 0..state.streams.len() {
            let partial = state.streams.get_mut(i).map(|s| std::mem::take(&mut s.partial)).unwrap_or_default();
            if !partial.is_empty() {
                emit(state, i, partial);
            }
        }
    }
    CURRENT.store(owner, Ordering::Release);
}

/// Every complete line written so far is taken, under its owner now
/// (an actor's async calls, which share one owner: before their
/// results leave). Lines still unterminated stay for later.
pub(crate) fn settle() {
    drop(wait_read());
}

/// Flushes this process's stdout and waits (bounded) until the reader
/// has everything written to the pipes; `None` when nothing is captured.
fn wait_read() -> Option<std::sync::MutexGuard<'static, Option<State>>> {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let mut guard = lock();
    let fds: Vec<RawFd> = guard.as_ref()?.streams.iter().map(|s| s.read).collect();
    // Bounded: a pipe a grandchild keeps writing to must not hold the loop.
    for _ in 0..200 {
        if all_read(&fds) {
            break;
        }
        guard = match DRAINED.wait_timeout(guard, Duration::from_millis(5)) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        };
    }
    Some(guard)
}

/// The tagged lines so far (and a note of lines dropped past the bound).
pub(crate) fn take() -> Vec<pb::TaskOutput> {
    let mut guard = lock();
    let Some(state) = guard.as_mut() else { return Vec::new() };
    let mut lines = std::mem::take(&mut state.lines);
    if state.dropped > 0 {
        let task = lines.last().map_or(0, |l| l.task);
        lines.push(pb::TaskOutput {
            task,
            stderr: true,
            line: format!("[shoal: {} more lines dropped: the task printed faster than they could be sent]", state.dropped),
            ..Default::default()
        });
        state.dropped = 0;
    }
    lines
}
