//! The executor: what a program binary becomes when a worker starts it
//! with `SHOAL_EXECUTOR_SOCKET` set.
//!
//! Rust cannot ship closures, so the driver's own executable is the code:
//! a worker runs it again as an executor. Entering the task loop must not
//! depend on the program's `main` (a `cargo test` binary's `main` is the
//! test harness), so the entry is an ELF constructor (`.init_array`) that
//! runs before `main` in every binary linking this crate, returns at once
//! in normal runs, and in executors never returns. Remote functions are in
//! a `linkme` slice, complete at link time, so they are all there already.

use crate::functions::{Encoded, InvokeError, REMOTE_FUNCTIONS, RemoteFunction};
use bytes::Bytes;
use shoal_proto::frame;
use shoal_proto::pb::{self, ExecutorToWorker, FailureKind, WorkerToExecutor};
use shoal_store::Arena;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[used]
#[unsafe(link_section = ".init_array")]
static EXECUTOR_ENTRY: extern "C" fn() = executor_entry;

extern "C" fn executor_entry() {
    if let Some(socket) = std::env::var_os(shoal_proto::ENV_EXECUTOR_SOCKET) {
        let code = match run(&socket) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("shoal executor: {e}");
                3
            }
        };
        std::process::exit(code);
    }
}

/// Is this process an executor?
pub(crate) fn is_executor() -> bool {
    std::env::var_os(shoal_proto::ENV_EXECUTOR_SOCKET).is_some()
}

thread_local! {
    pub(crate) static CURRENT_TASK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = shoal_domain::panic::message(info.payload());
        let location = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())).unwrap_or_default();
        // Inside a task the failure carries it to the caller, which
        // prints it once; outside one, nobody else would.
        if CURRENT_TASK.with(|c| c.get()) == 0 {
            eprintln!("shoal executor panicked at {location}: {message}");
        }
        LAST_PANIC.with(|p| *p.borrow_mut() = Some((message, location)));
    }));
}

/// How long results may wait to be batched with later ones.
const FLUSH_AFTER: Duration = Duration::from_millis(1);

/// Objects whose argument bytes were dropped since the last message to
/// the worker (it unpins them).
static RELEASED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// The executor's end of its worker socket, shared by the task loop and
/// tasks that report they block (frames must not interleave).
static WRITER: std::sync::OnceLock<Mutex<UnixStream>> = std::sync::OnceLock::new();

/// A task is running (its calls may block on other tasks).
pub(crate) static RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Threads of the running task now blocked waiting for other tasks.
static BLOCKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub(crate) fn send(msg: &ExecutorToWorker) -> std::io::Result<()> {
    let Some(w) = WRITER.get() else { return Err(std::io::Error::other("the executor is not connected")) };
    let mut w = w.lock().map_err(|_| std::io::Error::other("the executor's socket lock is poisoned"))?;
    frame::write_blocking(&mut *w, msg)
}

/// While it lives, the running task counts as blocked waiting for other
/// tasks: its worker lends the task's CPU to them (so a task that waits
/// for its own children cannot starve them of a slot). Outside a task, or
/// outside an executor, it does nothing.
pub(crate) struct Blocked(bool);

impl Blocked {
    pub(crate) fn enter() -> Blocked {
        use std::sync::atomic::Ordering;
        if !RUNNING.load(Ordering::Acquire) || WRITER.get().is_none() {
            return Blocked(false);
        }
        if BLOCKED.fetch_add(1, Ordering::AcqRel) == 0 {
            let _ = send(&ExecutorToWorker { blocked: true, ..Default::default() });
        }
        Blocked(true)
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        if self.0 && BLOCKED.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _ = send(&ExecutorToWorker { unblocked: true, ..Default::default() });
        }
    }
}

pub(crate) fn take_released() -> Vec<u64> {
    std::mem::take(&mut *RELEASED.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Held by an argument's bytes (in the arena, or a mapped spill file):
/// when the last reference goes, the worker is told it may unpin the object.
struct Release(u64);

impl Drop for Release {
    fn drop(&mut self) {
        RELEASED.lock().unwrap_or_else(|p| p.into_inner()).push(self.0);
    }
}

/// The node's arena, inherited from the worker as a file descriptor.
fn map_arena() -> Option<Arc<Arena>> {
    let fd: i32 = std::env::var(shoal_store::ENV_STORE_FD).ok()?.parse().ok()?;
    // SAFETY: the worker left exactly this descriptor open for us; nothing
    // else in this process uses it.
    match unsafe { Arena::from_inherited_fd(fd) } {
        Ok(a) => Some(Arc::new(a)),
        Err(e) => {
            eprintln!("shoal executor: cannot map the object store: {e}");
            None
        }
    }
}

/// The `Bytes` of one argument.
pub(crate) fn arg_bytes(arena: Option<&Arc<Arena>>, a: pb::ExecArg) -> Result<Bytes, String> {
    if a.object == 0 {
        return Ok(a.value);
    }
    if !a.file.is_empty() {
        // The worker deletes the file only after our release.
        return shoal_store::spilled_bytes(std::path::Path::new(&a.file), a.len, Release(a.object)).map_err(|e| format!("spilled object {}: {e}", a.file));
    }
    let arena = arena.ok_or("the object store is not mapped in this executor")?;
    if a.offset.checked_add(a.len).is_none_or(|end| end > arena.len()) {
        return Err(format!("object range {}+{} outside the store", a.offset, a.len));
    }
    // SAFETY: the worker pinned this sealed (immutable) object for us and
    // keeps it until we report it released, when the bytes are dropped.
    Ok(unsafe { shoal_store::arena_bytes(arena.clone(), a.offset, a.len, Release(a.object)) })
}

/// Reads frames until the answer to `task`'s allocation request arrives;
/// tasks and function names arriving meanwhile are kept.
fn await_allocation(
    reader: &mut BufReader<UnixStream>,
    task: u64,
    pending: &mut VecDeque<pb::ExecTask>,
    names: &mut Vec<String>,
    functions: &mut Vec<Option<&'static RemoteFunction>>,
    registry: &HashMap<&'static str, &'static RemoteFunction>,
) -> std::io::Result<pb::AllocReply> {
    read_until_allocated(reader, task, |msg| {
        absorb(msg.first_function, msg.functions, names, functions, registry);
        pending.extend(msg.tasks);
    })
}

/// Sends what `out` holds (and the released arguments) with request `req`
/// (arena space for a result, or a direct result's seal); `out` starts
/// afresh.
pub(crate) fn request_alloc(out: &mut ExecutorToWorker, req: pb::AllocRequest) -> std::io::Result<()> {
    out.alloc = Some(req);
    out.released = take_released();
    send(out)?;
    *out = ExecutorToWorker::default();
    Ok(())
}

/// Reads the worker's frames until the answer to `task`'s allocation
/// request; everything else they carry goes to `keep`, in order.
pub(crate) fn read_until_allocated(reader: &mut BufReader<UnixStream>, task: u64, mut keep: impl FnMut(WorkerToExecutor)) -> std::io::Result<pb::AllocReply> {
    loop {
        let Some(mut msg) = frame::read_blocking::<WorkerToExecutor, _>(reader)? else {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the worker is gone"));
        };
        let allocated = msg.allocated.take();
        keep(msg);
        if let Some(a) = allocated
            && a.task == task
        {
            return Ok(a);
        }
    }
}

fn absorb(
    first: u32,
    new: Vec<String>,
    names: &mut Vec<String>,
    functions: &mut Vec<Option<&'static RemoteFunction>>,
    registry: &HashMap<&'static str, &'static RemoteFunction>,
) {
    if !new.is_empty() {
        names.truncate(first as usize);
        names.extend(new);
        *functions = names.iter().map(|n| registry.get(n.as_str()).copied()).collect();
    }
}

fn run(socket: &std::ffi::OsStr) -> std::io::Result<()> {
    let exec_id: u64 = std::env::var(shoal_proto::ENV_EXECUTOR_ID).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let arena = map_arena();
    let stream = UnixStream::connect(socket)?;
    if WRITER.set(Mutex::new(stream.try_clone()?)).is_err() {
        return Err(std::io::Error::other("the executor loop started twice"));
    }
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let hello = ExecutorToWorker {
        hello: Some(pb::ExecutorHello { protocol_version: shoal_proto::PROTOCOL_VERSION, executor: exec_id, pid: std::process::id() }),
        ..Default::default()
    };
    send(&hello)?;
    crate::output::capture();
    install_panic_hook();
    let registry: HashMap<&'static str, &'static RemoteFunction> = REMOTE_FUNCTIONS.iter().map(|f| (f.name, f)).collect();
    let mut names: Vec<String> = Vec::new();
    let mut functions: Vec<Option<&'static RemoteFunction>> = Vec::new();
    let mut pending: VecDeque<pb::ExecTask> = VecDeque::new();
    loop {
        if pending.is_empty() {
            let Some(msg) = frame::read_blocking::<WorkerToExecutor, _>(&mut reader)? else {
                return Ok(()); // the worker is gone
            };
            absorb(msg.first_function, msg.functions, &mut names, &mut functions, &registry);
            pending.extend(msg.tasks);
        }
        let mut out = ExecutorToWorker::default();
        let mut out_bytes = 0usize;
        let mut last_flush = Instant::now();
        while let Some(t) = pending.pop_front() {
            if t.actor_create {
                // This process is an actor's own from now on: it serves
                // the actor's calls until the worker ends it.
                out.released = take_released();
                out.output = crate::output::take();
                if !out.results.is_empty() || !out.released.is_empty() || !out.output.is_empty() {
                    send(&out)?;
                }
                return crate::actor_exec::serve(t, reader, pending, &names, arena);
            }
            let name = names.get(t.func as usize).cloned().unwrap_or_else(|| "?".into());
            let args: Result<Vec<Bytes>, String> = t.args.into_iter().map(|a| arg_bytes(arena.as_ref(), a)).collect();
            CURRENT_TASK.with(|c| c.set(t.task));
            RUNNING.store(true, std::sync::atomic::Ordering::Release);
            crate::output::task_started(t.task);
            let started_at_us = unix_micros();
            let clock = Instant::now();
            let result = match args {
                Ok(args) => run_one(functions.get(t.func as usize).copied().flatten(), &name, &args),
                Err(e) => Err(fail(FailureKind::ObjectLost, &name, e, String::new())),
            };
            let run_us = clock.elapsed().as_micros().max(1) as u64;
            crate::output::task_ended();
            RUNNING.store(false, std::sync::atomic::Ordering::Release);
            CURRENT_TASK.with(|c| c.set(0));
            let mut alloc = LoopAlloc {
                out: &mut out,
                out_bytes: &mut out_bytes,
                reader: &mut reader,
                pending: &mut pending,
                names: &mut names,
                functions: &mut functions,
                registry: &registry,
            };
            let (outcome, refs) = encode_outcome(&name, t.task, result, arena.as_ref(), &mut alloc)?;
            settle_refs(t.task, &outcome, refs);
            if let pb::task_result::Outcome::Value(v) = &outcome {
                out_bytes += v.len();
            }
            out.results.push(pb::TaskResult { task: t.task, outcome: Some(outcome), started_at_us, run_us, pid: std::process::id() });
            if last_flush.elapsed() >= FLUSH_AFTER || out_bytes >= shoal_domain::limits::BATCH_BYTES {
                out_bytes = 0;
                out.released = take_released();
                out.output = crate::output::take();
                send(&out)?;
                // A later allocation request sends `out` again: nothing
                // already sent may go twice.
                out.results.clear();
                out.output.clear();
                last_flush = Instant::now();
            }
        }
        out.released = take_released();
        out.output = crate::output::take();
        if !out.results.is_empty() || !out.released.is_empty() || !out.output.is_empty() {
            send(&out)?;
        }
    }
}

/// Now, in microseconds since the Unix epoch (0 if the clock is before it).
fn unix_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Where the space for a large result comes from: the worker, asked
/// over the executor's socket.
pub(crate) trait Alloc {
    /// Asks for `size` bytes of arena space for task `task`'s result.
    fn alloc(&mut self, task: u64, size: u64) -> std::io::Result<pb::AllocReply>;
}

/// The task loop's way: send what is ready with the request, then read
/// frames until the answer comes (keeping tasks that arrive meanwhile).
struct LoopAlloc<'a> {
    out: &'a mut ExecutorToWorker,
    out_bytes: &'a mut usize,
    reader: &'a mut BufReader<UnixStream>,
    pending: &'a mut VecDeque<pb::ExecTask>,
    names: &'a mut Vec<String>,
    functions: &'a mut Vec<Option<&'static RemoteFunction>>,
    registry: &'a HashMap<&'static str, &'static RemoteFunction>,
}

impl Alloc for LoopAlloc<'_> {
    fn alloc(&mut self, task: u64, size: u64) -> std::io::Result<pb::AllocReply> {
        request_alloc(self.out, pb::AllocRequest { task, size, seal_direct: false })?;
        *self.out_bytes = 0;
        await_allocation(self.reader, task, self.pending, self.names, self.functions, self.registry)
    }
}

/// A task's outcome as it leaves: its result encoded inline, or straight
/// into the node's arena when large (space from `alloc`), or why there is
/// none; with the refs the value holds.
pub(crate) fn encode_outcome(
    name: &str,
    task: u64,
    result: Result<Encoded, pb::task_result::Outcome>,
    arena: Option<&Arc<Arena>>,
    alloc: &mut dyn Alloc,
) -> std::io::Result<(pb::task_result::Outcome, Vec<Arc<crate::object_ref::RefInner>>)> {
    // Encoding runs user code (Serialize impls): guarded like the call.
    // Sizing encodes the whole value once: the refs it holds are met then.
    let (sized, refs) = crate::refs::collecting(|| {
        result.and_then(|enc| match guarded(name, || enc.size())? {
            Ok(size) => Ok((enc, size)),
            Err(m) => Err(fail(FailureKind::ResultEncode, name, m, String::new())),
        })
    });
    let outcome = match sized {
        Err(failed) => failed,
        Ok((enc, size)) if size > shoal_domain::limits::STORE_THRESHOLD_BYTES && arena.is_some() => {
            let Some(arena) = arena else { return Err(std::io::Error::other("no arena")) };
            let size = size as u64;
            // Ask for room, then encode the value straight into shared memory.
            let a = alloc.alloc(task, size)?;
            if a.existing > 0 {
                // An earlier run of this task stored its result on this
                // node already: that copy is the result.
                pb::task_result::Outcome::Stored(pb::StoredObject { id: task, size: a.existing, holders: Vec::new() })
            } else if a.error.is_empty() && a.offset.checked_add(size).is_some_and(|end| end <= arena.len()) {
                // SAFETY: the worker reserved this range for this task's
                // result; nobody reads it before we report it.
                let buf = unsafe { std::slice::from_raw_parts_mut(arena.ptr(a.offset, size), size as usize) };
                match guarded(name, || enc.write(buf)) {
                    Ok(Ok(())) => pb::task_result::Outcome::Stored(pb::StoredObject { id: task, size, holders: Vec::new() }),
                    // The worker drops the unsealed space when it sees the failure.
                    Ok(Err(m)) => fail(FailureKind::ResultEncode, name, m, String::new()),
                    Err(failed) => failed,
                }
            } else {
                fail(FailureKind::ObjectStoreFull, name, format!("no room for the {size}-byte result: {}", a.error), String::new())
            }
        }
        Ok((_, size)) if size > shoal_domain::limits::MAX_INLINE_VALUE_BYTES => fail(
            FailureKind::ResultEncode,
            name,
            format!(
                "the result is {size} bytes, over the {} MiB limit of values sent inline, and this node has no object store",
                shoal_domain::limits::MAX_INLINE_VALUE_BYTES >> 20
            ),
            String::new(),
        ),
        Ok((enc, size)) => match guarded(name, || enc.to_vec(size)) {
            Ok(Ok(v)) => pb::task_result::Outcome::Value(v.into()),
            Ok(Err(m)) => fail(FailureKind::ResultEncode, name, m, String::new()),
            Err(failed) => failed,
        },
    };
    Ok((outcome, refs))
}

/// Forgets the last panic's details (before running an item).
pub(crate) fn clear_panic() {
    LAST_PANIC.with(|p| p.borrow_mut().take());
}

/// The last panic's message and location, if one happened since `clear_panic`.
pub(crate) fn take_panic() -> Option<(String, String)> {
    LAST_PANIC.with(|p| p.borrow_mut().take())
}

pub(crate) fn fail(kind: FailureKind, function: &str, message: String, location: String) -> pb::task_result::Outcome {
    pb::task_result::Outcome::Failure(pb::TaskFailure { kind: kind as i32, message, location, function: function.to_string(), ..Default::default() })
}

/// Runs `f` under `catch_unwind`; a panic becomes a `Panicked` failure.
pub(crate) fn guarded<T>(name: &str, f: impl FnOnce() -> T) -> Result<T, pb::task_result::Outcome> {
    LAST_PANIC.with(|p| p.borrow_mut().take());
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| panicked(name, payload))
}

/// The failure of a call that panicked with `payload` (its message and
/// location, as the panic hook saw them).
pub(crate) fn panicked(name: &str, payload: Box<dyn std::any::Any + Send>) -> pb::task_result::Outcome {
    let (message, location) = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| (shoal_domain::panic::message(&*payload), String::new()));
    fail(FailureKind::Panicked, name, message, location)
}

/// The failure of an invocation that went wrong around the function body.
pub(crate) fn invoke_failure(name: &str, e: InvokeError) -> pb::task_result::Outcome {
    match e {
        InvokeError::Arity { expected, got } => fail(FailureKind::ArgDecode, name, format!("expected {expected} arguments, got {got}"), String::new()),
        InvokeError::ArgDecode { index, message } => fail(FailureKind::ArgDecode, name, format!("argument {index}: {message}"), String::new()),
        InvokeError::ResultEncode(m) => fail(FailureKind::ResultEncode, name, m, String::new()),
    }
}

/// Runs one task: its result, not yet encoded, or why there is none.
fn run_one(f: Option<&'static RemoteFunction>, name: &str, args: &[Bytes]) -> Result<Encoded, pb::task_result::Outcome> {
    let Some(f) = f else {
        return Err(fail(
            FailureKind::FunctionNotFound,
            name,
            format!("no remote function named {name:?} is linked into this program binary (built from different source than the driver?)"),
            String::new(),
        ));
    };
    guarded(name, || (f.invoke)(args))?.map_err(|e| invoke_failure(name, e))
}

thread_local! {
    static BLOCK_ON_RT: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

/// The task this thread is running (0 outside a task).
pub(crate) fn current_task() -> u64 {
    CURRENT_TASK.with(|c| c.get())
}

/// Runs an async remote function to completion on the executor's own
/// single-threaded runtime (created on first use).
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    BLOCK_ON_RT.with(|rt| {
        let mut rt = rt.borrow_mut();
        let rt = rt.get_or_insert_with(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("executor runtime"));
        rt.block_on(fut)
    })
}

/// Where a task is running: see [`context`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskContext {
    /// The running task's id (also its result object's id).
    pub task_id: crate::ObjectId,
    /// The node it runs on.
    pub node_id: String,
    /// The executor process's id.
    pub pid: u32,
    /// The parent of the executor process: the worker daemon (or, on an
    /// embedded cluster, the driver program itself).
    pub parent_pid: u32,
    /// The job (driver session) it belongs to.
    pub job_id: u32,
}

/// Inside a remote function: which task, node and process this is (the
/// distributed `os.getpid()`). `None` outside a task (in the driver).
pub fn context() -> Option<TaskContext> {
    if !is_executor() {
        return None;
    }
    let task = CURRENT_TASK.with(|c| c.get());
    if task == 0 {
        return None;
    }
    Some(TaskContext {
        task_id: crate::ObjectId(task),
        node_id: std::env::var(shoal_proto::ENV_NODE_ID).unwrap_or_default(),
        pid: std::process::id(),
        // SAFETY: getppid has no preconditions.
        parent_pid: unsafe { libc::getppid() } as u32,
        job_id: shoal_domain::ids::job_of(task),
    })
}

/// Before task `task`'s result leaves (through the worker): the head is
/// told which refs the result holds, and has applied every ref this
/// process took or sent meanwhile, so none can be freed in between (see
/// [`crate::refs`]). Free when the task touched no refs.
pub(crate) fn settle_refs(task: u64, outcome: &pb::task_result::Outcome, refs: Vec<std::sync::Arc<crate::object_ref::RefInner>>) {
    let Some(session) = crate::init::current() else { return };
    if !refs.is_empty() && !matches!(outcome, pb::task_result::Outcome::Failure(_)) {
        for r in &refs {
            crate::refs::adopt(&session, r);
        }
        session.contain(task, crate::refs::ids(&refs));
    }
    crate::runtime::block_on(session.sync_refs());
    drop(refs);
}
