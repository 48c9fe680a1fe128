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

use crate::registry::{InvokeError, REMOTE_FUNCTIONS, RemoteFunction};
use shoal_proto::frame;
use shoal_proto::pb::{self, ExecutorToWorker, FailureKind, WorkerToExecutor};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
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
    static CURRENT_TASK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = if let Some(s) = info.payload().downcast_ref::<&str>() {
            s.to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-string payload".to_string()
        };
        let location = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())).unwrap_or_default();
        eprintln!("shoal task panicked at {location}: {message}");
        LAST_PANIC.with(|p| *p.borrow_mut() = Some((message, location)));
    }));
}

/// How long results may wait to be batched with later ones.
const FLUSH_AFTER: Duration = Duration::from_millis(1);

fn run(socket: &std::ffi::OsStr) -> std::io::Result<()> {
    let exec_id: u64 = std::env::var(shoal_proto::ENV_EXECUTOR_ID).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let stream = UnixStream::connect(socket)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let hello = ExecutorToWorker {
        hello: Some(pb::ExecutorHello { protocol_version: shoal_proto::PROTOCOL_VERSION, executor: exec_id, pid: std::process::id() }),
        ..Default::default()
    };
    frame::write_blocking(&mut writer, &hello)?;
    install_panic_hook();
    let registry: HashMap<&'static str, &'static RemoteFunction> = REMOTE_FUNCTIONS.iter().map(|f| (f.name, f)).collect();
    let mut names: Vec<String> = Vec::new();
    let mut functions: Vec<Option<&'static RemoteFunction>> = Vec::new();
    loop {
        let Some(msg) = frame::read_blocking::<WorkerToExecutor, _>(&mut reader)? else {
            return Ok(()); // the worker is gone
        };
        if !msg.functions.is_empty() {
            let first = msg.first_function as usize;
            names.truncate(first);
            names.extend(msg.functions);
            functions = names.iter().map(|n| registry.get(n.as_str()).copied()).collect();
        }
        let mut out = ExecutorToWorker::default();
        let mut out_bytes = 0usize;
        let mut last_flush = Instant::now();
        for t in msg.tasks {
            let name = names.get(t.func as usize).map(String::as_str).unwrap_or("?");
            CURRENT_TASK.with(|c| c.set(t.task));
            let mut outcome = run_one(functions.get(t.func as usize).copied().flatten(), name, &t.args);
            CURRENT_TASK.with(|c| c.set(0));
            if let pb::task_result::Outcome::Value(v) = &outcome
                && v.len() > shoal_proto::MAX_INLINE_VALUE_BYTES
            {
                outcome = fail(
                    FailureKind::ResultEncode,
                    name,
                    format!(
                        "the result is {} bytes, over the {} MiB limit of values sent inline (the shared-memory object store will lift it)",
                        v.len(),
                        shoal_proto::MAX_INLINE_VALUE_BYTES >> 20
                    ),
                    String::new(),
                );
            }
            if let pb::task_result::Outcome::Value(v) = &outcome {
                out_bytes += v.len();
            }
            out.results.push(pb::TaskResult { task: t.task, outcome: Some(outcome) });
            if last_flush.elapsed() >= FLUSH_AFTER || out_bytes >= shoal_proto::BATCH_BYTES {
                out_bytes = 0;
                frame::write_blocking(&mut writer, &out)?;
                out.results.clear();
                last_flush = Instant::now();
            }
        }
        if !out.results.is_empty() {
            frame::write_blocking(&mut writer, &out)?;
        }
    }
}

/// Forgets the last panic's details (before running an item).
pub(crate) fn clear_panic() {
    LAST_PANIC.with(|p| p.borrow_mut().take());
}

/// The last panic's message and location, if one happened since `clear_panic`.
pub(crate) fn take_panic() -> Option<(String, String)> {
    LAST_PANIC.with(|p| p.borrow_mut().take())
}

fn fail(kind: FailureKind, function: &str, message: String, location: String) -> pb::task_result::Outcome {
    pb::task_result::Outcome::Failure(pb::TaskFailure { kind: kind as i32, message, location, function: function.to_string(), ..Default::default() })
}

fn run_one(f: Option<&'static RemoteFunction>, name: &str, args: &[bytes::Bytes]) -> pb::task_result::Outcome {
    let Some(f) = f else {
        return fail(
            FailureKind::FunctionNotFound,
            name,
            format!("no remote function named {name:?} is linked into this program binary (built from different source than the driver?)"),
            String::new(),
        );
    };
    LAST_PANIC.with(|p| p.borrow_mut().take());
    match catch_unwind(AssertUnwindSafe(|| (f.invoke)(args))) {
        Ok(Ok(v)) => pb::task_result::Outcome::Value(v.into()),
        Ok(Err(InvokeError::Arity { expected, got })) => {
            fail(FailureKind::ArgDecode, name, format!("expected {expected} arguments, got {got}"), String::new())
        }
        Ok(Err(InvokeError::ArgDecode { index, message })) => fail(FailureKind::ArgDecode, name, format!("argument {index}: {message}"), String::new()),
        Ok(Err(InvokeError::ResultEncode(m))) => fail(FailureKind::ResultEncode, name, m, String::new()),
        Err(payload) => {
            let (message, location) = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| {
                let m = payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned());
                (m.unwrap_or_else(|| "panic".into()), String::new())
            });
            fail(FailureKind::Panicked, name, message, location)
        }
    }
}

thread_local! {
    static BLOCK_ON_RT: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
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
        job_id: shoal_proto::ids::job_of(task),
    })
}
