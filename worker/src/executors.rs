//! Executor processes: started from a job's program binary with
//! `SHOAL_EXECUTOR_SOCKET` set, which makes the program's `shoal` runtime
//! enter the executor loop before `main`. Each connects back over the
//! worker's private Unix socket, says hello, then receives task batches and
//! answers with result batches.

use crate::daemon::Ev;
use shoal_proto::frame;
use shoal_proto::pb::{ExecutorToWorker, WorkerToExecutor};
use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// The last lines an executor wrote to stderr, for error messages.
pub(crate) type StderrTail = Arc<Mutex<VecDeque<String>>>;

const TAIL_LINES: usize = 20;

/// Where an executor's tasks reach the cluster when they submit tasks of
/// their own.
pub(crate) struct HeadContact<'a> {
    /// The head's address.
    pub address: &'a str,
    /// The cluster token.
    pub token: Option<&'a str>,
}

/// Starts an executor process. Its exit is reported as `Ev::ExecExited`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn(
    exec: u64,
    binary: &Path,
    socket: &Path,
    node_id: &str,
    job: u32,
    store_fd: std::os::fd::RawFd,
    head: HeadContact<'_>,
    events: mpsc::UnboundedSender<Ev>,
) -> std::io::Result<(u32, StderrTail)> {
    let mut cmd = tokio::process::Command::new(binary);
    // A task that calls `f::remote` connects to the head with these (the
    // binary is the job's, already on the head: its name is its hash).
    cmd.env("SHOAL_ADDRESS", head.address);
    match head.token {
        Some(t) => cmd.env("SHOAL_TOKEN", t),
        None => cmd.env_remove("SHOAL_TOKEN"),
    };
    cmd.env_remove("SHOAL_TOKEN_FILE");
    if let Some(hash) = binary.file_name().and_then(|n| n.to_str()) {
        cmd.env(shoal_proto::ENV_BINARY_HASH, hash);
    }
    cmd.env(shoal_proto::ENV_EXECUTOR_SOCKET, socket)
        .env(shoal_store::ENV_STORE_FD, store_fd.to_string())
        .env(shoal_proto::ENV_EXECUTOR_ID, exec.to_string())
        .env(shoal_proto::ENV_NODE_ID, node_id)
        .env("SHOAL_JOB_ID", job.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill
    // the executor if the worker dies, so no orphan keeps running a task.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The store's memfd is close-on-exec in the worker; in this
            // child only, keep it open so the executor maps the arena.
            libc::fcntl(store_fd, libc::F_SETFD, 0);
            Ok(())
        });
    }
    // ETXTBSY: a binary just written (a job's binary fetched a moment
    // ago) is still open for writing in some process forked meanwhile,
    // until that process execs and closes it. It passes in microseconds to
    // milliseconds: try again a few times before calling it a failure.
    let mut tries = 0;
    let mut child = loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(2 * tries));
            }
            r => break r?,
        }
    };
    let pid = child.id().unwrap_or(0);
    let tail: StderrTail = Arc::new(Mutex::new(VecDeque::new()));
    if let Some(stderr) = child.stderr.take() {
        let tail = tail.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // Executors' stderr (panics, prints) goes to the worker's
                // stderr: the terminal for an embedded cluster, the log
                // file for a daemon.
                eprintln!("{line}");
                if let Ok(mut t) = tail.lock() {
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }
        });
    }
    tokio::spawn(async move {
        let status = match child.wait().await {
            Ok(s) => describe(s),
            Err(e) => format!("wait failed: {e}"),
        };
        let _ = events.send(Ev::ExecExited { exec, status });
    });
    Ok((pid, tail))
}

fn describe(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}{}", if sig == libc::SIGKILL { " (SIGKILL)" } else { "" }),
        _ => "unknown status".into(),
    }
}

/// Kills an executor process at once.
pub(crate) fn kill(pid: u32) {
    if pid > 0 {
        // SAFETY: plain syscall; the pid is our child and not yet reaped
        // (reaping happens in the wait task, which reports the exit).
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
}

/// Accepts executor connections; each must open with a hello frame.
pub(crate) async fn accept_loop(listener: UnixListener, events: mpsc::UnboundedSender<Ev>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "executor socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let events = events.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let mut buf = Vec::new();
            let hello = tokio::time::timeout(Duration::from_secs(10), frame::read_async::<ExecutorToWorker, _>(&mut stream, &mut buf)).await;
            match hello {
                Ok(Ok(Some(ExecutorToWorker { hello: Some(hello), .. }))) => {
                    let _ = events.send(Ev::ExecHello { hello, stream });
                }
                other => tracing::warn!(?other, "executor connection without a valid hello; dropped"),
            }
        });
    }
}

/// Starts the reader and writer of a connected executor; returns the
/// sender for task batches.
pub(crate) fn start_io(exec: u64, stream: UnixStream, events: mpsc::UnboundedSender<Ev>) -> mpsc::UnboundedSender<WorkerToExecutor> {
    let (r, mut w) = stream.into_split();
    tokio::spawn(async move {
        let mut r = BufReader::with_capacity(64 << 10, r);
        let mut buf = Vec::new();
        loop {
            match frame::read_async::<ExecutorToWorker, _>(&mut r, &mut buf).await {
                Ok(Some(msg)) => {
                    if events.send(Ev::ExecMsg { exec, msg }).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(exec, error = %e, "bad frame from executor");
                    return;
                }
            }
        }
    });
    let (tx, mut rx) = mpsc::unbounded_channel::<WorkerToExecutor>();
    tokio::spawn(async move {
        while let Some(mut msg) = rx.recv().await {
            // Merge whatever else is queued into one frame.
            while let Ok(more) = rx.try_recv() {
                merge(&mut msg, more);
            }
            if frame::write_async(&mut w, &msg).await.is_err() {
                return;
            }
        }
    });
    tx
}

fn merge(into: &mut WorkerToExecutor, more: WorkerToExecutor) {
    if !more.functions.is_empty() {
        if into.functions.is_empty() {
            into.first_function = more.first_function;
        }
        into.functions.extend(more.functions);
    }
    into.tasks.extend(more.tasks);
    // An executor waits for one allocation at a time: at most one reply
    // is ever queued.
    if more.allocated.is_some() {
        into.allocated = more.allocated;
    }
}
