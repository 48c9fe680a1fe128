//! Why a task failed, and the one policy that decides whether it runs
//! again.

use std::fmt;

/// Why a task failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The function panicked.
    Panicked,
    /// No function of that name in the program binary.
    FunctionNotFound,
    /// An argument did not decode as the parameter's type.
    ArgDecode,
    /// The executor process or its node died while running the task.
    WorkerDied,
    /// The task was cancelled.
    Cancelled,
    /// An input object is gone.
    ObjectLost,
    /// A deadline passed.
    Timeout,
    /// The cluster token was refused.
    Unauthenticated,
    /// The program binary cannot run on the worker.
    BinaryIncompatible,
    /// No node can ever satisfy the task's resources.
    Unschedulable,
    /// The result could not be serialized.
    ResultEncode,
    /// The node's object store had no room for the result.
    ObjectStoreFull,
    /// A daemon found its own state inconsistent for this task (a bug):
    /// the task fails, everything else goes on.
    Internal,
    /// The actor a method call was addressed to is dead (killed, its node
    /// died, its constructor panicked, or it ran out of restarts).
    ActorDied,
}

impl FailureKind {
    /// Failures of the cluster rather than of the task's code: a task that
    /// met one may run again (within its budget) and succeed. A head
    /// replaying its log drops such results: the task simply runs again.
    pub fn is_infrastructure(self) -> bool {
        matches!(self, FailureKind::WorkerDied | FailureKind::ObjectLost)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            FailureKind::Panicked => "panicked",
            FailureKind::FunctionNotFound => "function not found",
            FailureKind::ArgDecode => "argument decode error",
            FailureKind::WorkerDied => "worker died",
            FailureKind::Cancelled => "cancelled",
            FailureKind::ObjectLost => "object lost",
            FailureKind::Timeout => "timed out",
            FailureKind::Unauthenticated => "unauthenticated",
            FailureKind::BinaryIncompatible => "binary incompatible",
            FailureKind::Unschedulable => "unschedulable",
            FailureKind::ResultEncode => "result encode error",
            FailureKind::ObjectStoreFull => "object store full",
            FailureKind::Internal => "internal error",
            FailureKind::ActorDied => "actor died",
        };
        f.write_str(s)
    }
}

/// A task failure with the details a user needs to act on it.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// Detail: panic message, error text.
    pub message: String,
    /// Panic location, when known.
    pub location: String,
    /// Node where it happened, when known.
    pub node: String,
    /// Function name, when known.
    pub function: String,
    /// Attempts made.
    pub attempts: u32,
}

impl Failure {
    /// A failure of `kind` with a message.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure { kind, message: message.into(), location: String::new(), node: String::new(), function: String::new(), attempts: 0 }
    }
}

/// How many times a task that could not read an input (while nothing was
/// being rebuilt) is tried again: a holder may have died just before the
/// head heard of it, and by the next try its copies are rebuilt or read
/// from another node.
pub const MAX_UNREADABLE: u32 = 3;

/// What the retry policy knows of a task when an attempt of it failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryState {
    /// Attempts started so far (the failed one included).
    pub attempts: u32,
    /// Retries allowed after a worker death (and after a panic, with
    /// `retry_exceptions`).
    pub max_retries: u32,
    /// Panics are retried too.
    pub retry_exceptions: bool,
    /// Times it already could not read an input.
    pub unreadable: u32,
    /// Its caller asked to cancel it.
    pub cancel_requested: bool,
    /// One of its inputs is lost and being rebuilt right now.
    pub inputs_rebuilding: bool,
}

/// What happens to a task whose attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Run it again; the attempt counts against `max_retries`.
    Again,
    /// Run it again; the attempt counts as unreadable (not against
    /// `max_retries`).
    AgainUnreadable,
    /// Put it back to wait for its inputs, which are being rebuilt.
    WaitForInputs,
    /// Report the failure to its caller.
    Fail,
}

/// The retry policy, the one place that decides it for the head: after a
/// worker's or node's death a task runs again up to `max_retries` times,
/// and so does a task that panicked when it has `retry_exceptions` (as
/// Ray's `retry_exceptions=True`); a task that lost an input waits for it
/// while it is rebuilt, or tries again up to [`MAX_UNREADABLE`] times; a
/// cancelled task and every other failure of the task's own code (a bad
/// argument, a result that does not encode, ...) fail.
pub fn decide(kind: FailureKind, s: RetryState) -> Retry {
    if s.cancel_requested {
        return Retry::Fail;
    }
    match kind {
        FailureKind::ObjectLost if s.inputs_rebuilding => Retry::WaitForInputs,
        FailureKind::ObjectLost if s.unreadable < MAX_UNREADABLE => Retry::AgainUnreadable,
        FailureKind::WorkerDied if s.attempts <= s.max_retries => Retry::Again,
        FailureKind::Panicked if s.retry_exceptions && s.attempts <= s.max_retries => Retry::Again,
        _ => Retry::Fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(attempts: u32, max_retries: u32) -> RetryState {
        RetryState { attempts, max_retries, ..Default::default() }
    }

    #[test]
    fn worker_death_retries_within_budget() {
        assert_eq!(decide(FailureKind::WorkerDied, st(1, 1)), Retry::Again);
        assert_eq!(decide(FailureKind::WorkerDied, st(2, 1)), Retry::Fail);
        assert_eq!(decide(FailureKind::WorkerDied, st(1, 0)), Retry::Fail);
    }

    #[test]
    fn code_failures_never_retry() {
        for k in [FailureKind::Panicked, FailureKind::ArgDecode, FailureKind::ResultEncode, FailureKind::FunctionNotFound] {
            assert_eq!(decide(k, st(1, 5)), Retry::Fail, "{k}");
        }
    }

    #[test]
    fn panics_retry_only_with_retry_exceptions_and_within_budget() {
        let on = RetryState { retry_exceptions: true, ..st(1, 2) };
        assert_eq!(decide(FailureKind::Panicked, on), Retry::Again);
        assert_eq!(decide(FailureKind::Panicked, RetryState { attempts: 3, ..on }), Retry::Fail);
        assert_eq!(decide(FailureKind::Panicked, st(1, 2)), Retry::Fail, "off by default");
        assert_eq!(decide(FailureKind::ArgDecode, on), Retry::Fail, "a bad argument stays bad");
    }

    #[test]
    fn lost_inputs_wait_or_try_again_a_bounded_number_of_times() {
        let rebuilding = RetryState { inputs_rebuilding: true, unreadable: 99, ..st(1, 0) };
        assert_eq!(decide(FailureKind::ObjectLost, rebuilding), Retry::WaitForInputs);
        assert_eq!(decide(FailureKind::ObjectLost, st(1, 0)), Retry::AgainUnreadable);
        let spent = RetryState { unreadable: MAX_UNREADABLE, ..st(1, 0) };
        assert_eq!(decide(FailureKind::ObjectLost, spent), Retry::Fail);
    }

    #[test]
    fn cancellation_wins() {
        let s = RetryState { cancel_requested: true, inputs_rebuilding: true, ..st(1, 9) };
        for k in [FailureKind::WorkerDied, FailureKind::ObjectLost] {
            assert_eq!(decide(k, s), Retry::Fail);
        }
    }

    #[test]
    fn infrastructure_kinds() {
        assert!(FailureKind::WorkerDied.is_infrastructure());
        assert!(FailureKind::ObjectLost.is_infrastructure());
        assert!(!FailureKind::Panicked.is_infrastructure());
    }
}
