//! [`Process`]: one call in an executor process of its own, like
//! `multiprocessing.Process`. The worker starts a process for it (never a
//! pooled one, nothing else runs in it) and ends it with the call; the
//! call reports its pid as it starts (the first item of a two-item
//! stream: started, then done).

use crate::calls::{CallOptions, IntoArg};
use crate::error::TaskError;
use crate::functions::{Encoded, InvokeError};
use crate::generator::ObjectRefGenerator;
use crate::object_ref::ObjectRef;
use crate::pool::{ItemPanic, RemoteFn};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::{Mutex, OnceLock};

/// What a process task streams: that it started, then how it ended.
#[doc(hidden)]
#[derive(Serialize, Deserialize)]
pub enum ProcessEvent<R> {
    /// It runs, in process `pid` on node `node`.
    Started {
        /// The executor process's id.
        pid: u32,
        /// The node (full id).
        node: String,
    },
    /// The function returned, or panicked.
    Done(Result<R, ItemPanic>),
}

/// Runs a `Process`'s call inside its executor (used by the macro).
#[doc(hidden)]
pub fn run_process<A: DeserializeOwned, R: Serialize + 'static, F: FnOnce(A) -> R>(args: &[bytes::Bytes], f: F) -> Result<Encoded, InvokeError> {
    crate::functions::check_arity(args, 1)?;
    let a: A = crate::functions::decode_arg(args, 0)?;
    let node = crate::executor::context().map(|c| c.node_id).unwrap_or_default();
    let mut call = Some((f, a));
    let mut started = false;
    crate::generator::run_generator(std::iter::from_fn(move || {
        if !started {
            started = true;
            return Some(ProcessEvent::Started { pid: std::process::id(), node: node.clone() });
        }
        let (f, a) = call.take()?;
        crate::executor::clear_panic();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(a))).map_err(|_| {
            let (message, location) = crate::executor::take_panic().unwrap_or_else(|| ("panic".into(), String::new()));
            ItemPanic { message, location }
        });
        Some(ProcessEvent::Done(r))
    }))
}

/// A call in an executor process of its own, like `multiprocessing.Process`:
/// its pid is known once it runs and differs from every other live
/// process's; [`exit_code`](Process::exit_code) is 0 after a return, 1
/// after a panic, and the signal's negative number if the process was
/// killed.
///
/// ```no_run
/// #[shoal::remote]
/// fn work(n: u64) -> u64 { (0..n).sum() }
///
/// let p = shoal::Process::spawn(work::func, (1_000_000,));
/// println!("running as pid {:?}", p.pid());
/// let total = p.join().unwrap();
/// assert_eq!(p.exit_code(), Some(0));
/// ```
pub struct Process<F: RemoteFn> {
    f: F,
    events: Mutex<ObjectRefGenerator<ProcessEvent<F::Output>>>,
    started: OnceLock<Option<(u32, String)>>,
    done: OnceLock<Result<ObjectRef<ProcessEvent<F::Output>>, TaskError>>,
}

impl<F: RemoteFn> Process<F> {
    /// Starts `f(args)` in a process of its own on the cluster; returns at
    /// once.
    pub fn spawn(f: F, args: F::Args) -> Process<F> {
        let opts = CallOptions { dedicated: true, ..Default::default() };
        let mut events = crate::generator::submit_generator(f.process_meta(), opts, vec![IntoArg::<F::Args>::into_arg(args)]);
        // Like a `multiprocessing.Process`, it runs on if dropped.
        events.keep_running_when_dropped();
        Process { f, events: Mutex::new(events), started: OnceLock::new(), done: OnceLock::new() }
    }

    /// Reads the stream up to its start (`until_done`: to its end).
    fn advance(&self, until_done: bool) {
        if self.done.get().is_some() || (!until_done && self.started.get().is_some()) {
            return;
        }
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        while self.done.get().is_none() && (until_done || self.started.get().is_none()) {
            match events.next() {
                Some(Ok(r)) => match r.get() {
                    Ok(ProcessEvent::Started { pid, node }) => {
                        let _ = self.started.set(Some((pid, node)));
                    }
                    Ok(ProcessEvent::Done(_)) => {
                        let _ = self.done.set(Ok(r));
                    }
                    Err(e) => {
                        let _ = self.done.set(Err(e));
                    }
                },
                Some(Err(e)) => {
                    let _ = self.done.set(Err(e));
                }
                None => {
                    let _ = self.done.set(Err(TaskError::Internal { message: "the process ended without a result".into() }));
                }
            }
        }
        // It ended before it started (it could not run at all).
        let _ = self.started.set(None);
    }

    /// Its process id: waits until it has started (`None` if it could
    /// not start).
    pub fn pid(&self) -> Option<u32> {
        self.advance(false);
        self.started.get().and_then(|s| s.as_ref().map(|(pid, _)| *pid))
    }

    /// The node it runs on (full id), once started.
    pub fn node(&self) -> Option<String> {
        self.advance(false);
        self.started.get().and_then(|s| s.as_ref().map(|(_, n)| n.clone()))
    }

    /// Waits for it to finish; returns what the function returned.
    pub fn join(&self) -> Result<F::Output, TaskError> {
        self.advance(true);
        match self.done.get() {
            Some(Ok(r)) => match r.get()? {
                ProcessEvent::Done(Ok(v)) => Ok(v),
                ProcessEvent::Done(Err(p)) => Err(TaskError::Panicked {
                    function: self.f.name().to_string(),
                    message: p.message,
                    location: p.location,
                    node: self.node().unwrap_or_default(),
                }),
                ProcessEvent::Started { .. } => Err(TaskError::Internal { message: "a process reported its start twice".into() }),
            },
            Some(Err(e)) => Err(e.clone()),
            None => Err(TaskError::Internal { message: "the process has no result".into() }),
        }
    }

    /// Still running (or not started yet)?
    pub fn is_alive(&self) -> bool {
        if self.done.get().is_some() {
            return false;
        }
        // Without blocking: its end has arrived when the stream's task is done.
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        !events.is_finished()
    }

    /// `None` while it runs; then 0 after a return, 1 after a panic, `-N`
    /// when its process died of signal `N` (e.g. -9 after [`kill`](Self::kill)).
    pub fn exit_code(&self) -> Option<i32> {
        if self.is_alive() {
            return None;
        }
        Some(match self.join() {
            Ok(_) => 0,
            Err(TaskError::Cancelled { .. }) => -9,
            Err(TaskError::WorkerDied { message, .. }) => signal_of(&message).map_or(1, |s| -s),
            Err(_) => 1,
        })
    }

    /// Ends it: its process is killed if it runs (like `Process.kill()`).
    pub fn kill(&self) {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.cancel();
    }
}

/// The signal number in a worker's "killed by signal N" message.
fn signal_of(message: &str) -> Option<i32> {
    let at = message.find("signal")?;
    message[at + 6..].trim_start_matches([' ', ':']).split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}
