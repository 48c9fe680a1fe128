//! Errors. A remote failure reaches the caller as a [`TaskError`] that says
//! what happened and where; connecting and configuring fail with [`Error`].

use std::time::Duration;

/// A node id as every message prints it (the first 8 hex digits; the
/// field keeps the whole id).
fn short_node(node: &str) -> String {
    shoal_domain::NodeId::parse(node).map_or_else(|| node.to_string(), |n| n.to_string())
}

/// Why a remote call produced no value. Each variant's doc says whether
/// retrying the call can help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    /// The function panicked. Deterministic code will panic again: fix the
    /// code or its input.
    #[error("{function} panicked at {location} on node {}: {message}", short_node(node))]
    Panicked {
        /// Registered function name.
        function: String,
        /// The panic message.
        message: String,
        /// `file:line:col` of the panic.
        location: String,
        /// Node id where it ran.
        node: String,
    },
    /// The executing binary has no function of that name (built from other
    /// source than the driver?). Retrying cannot help.
    #[error("function {function} was not found in the program binary: {message}")]
    FunctionNotFound {
        /// The function name or index.
        function: String,
        /// Detail.
        message: String,
    },
    /// An argument did not decode as the parameter's type. Retrying cannot help.
    #[error("an argument of {function} could not be decoded: {message}")]
    ArgDecode {
        /// Function name.
        function: String,
        /// Decoder message, with the argument index.
        message: String,
    },
    /// The executor process or its node died while running the task, and
    /// the retries (`max_retries`) ran out. Retrying may help if the death
    /// was not caused by the task itself (e.g. an abort or OOM).
    #[error("the worker running {function} died (attempts: {attempts}): {message}")]
    WorkerDied {
        /// Function name.
        function: String,
        /// What died and how.
        message: String,
        /// Node id.
        node: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The task was cancelled with [`cancel`](crate::cancel). Not retried.
    #[error("the task was cancelled: {message}")]
    Cancelled {
        /// Whether it was queued or running.
        message: String,
    },
    /// An object the task needed is gone. Retrying cannot help unless the
    /// object is recreated.
    #[error("object lost: {message}")]
    ObjectLost {
        /// Which object and why.
        message: String,
    },
    /// The value was not ready within the given time. The task keeps
    /// running; calling `get` again may succeed.
    #[error("the result was not ready within {after:?}")]
    Timeout {
        /// The time waited.
        after: Duration,
    },
    /// The cluster refused the token. Fix `SHOAL_TOKEN` / `--token`.
    #[error("the cluster refused the token: {message}")]
    Unauthenticated {
        /// Head's message.
        message: String,
    },
    /// The program binary cannot run on the worker (other architecture,
    /// missing libraries, not a shoal program). Retrying cannot help;
    /// build for the workers' target.
    #[error("the program binary cannot run on node {}: {message}", short_node(node))]
    BinaryIncompatible {
        /// Node id.
        node: String,
        /// What is wrong.
        message: String,
    },
    /// No node of the cluster can ever provide the resources the function
    /// asks for. Retrying helps only after adding such a node.
    #[error("no node can run {function}: {message}")]
    Unschedulable {
        /// Function name.
        function: String,
        /// Which resources are missing.
        message: String,
    },
    /// A value could not be serialized or deserialized (the result type
    /// of the `ObjectRef` does not match what the task returned, or the
    /// value is not representable). Retrying cannot help.
    #[error("serialization failed: {message}")]
    Serialization {
        /// Serializer message.
        message: String,
    },
    /// A node's shared-memory object store had no room for a value (a
    /// `put`, a large argument or a task's result), even after spilling
    /// what could be spilled. Nothing already stored was lost.
    #[error("{message}")]
    ObjectStoreFull {
        /// What did not fit, and why.
        message: String,
    },
    /// The head found its own state inconsistent for this task and failed
    /// it rather than stop serving: a bug in Shoal (please report it with
    /// the message and the head's log). Retrying may help.
    #[error("internal error in the cluster: {message}")]
    Internal {
        /// What the head saw.
        message: String,
    },
    /// The actor the method call was addressed to is dead: killed
    /// ([`kill`](crate::kill)), its node or process died with no restart
    /// left, its constructor panicked, or its job ended. The message says
    /// which. Later calls fail the same way; retrying cannot help.
    #[error("{message}")]
    ActorDied {
        /// The actor's type.
        class: String,
        /// Which actor, and why it died.
        message: String,
        /// Node id where it ran, when known.
        node: String,
    },
    /// The connection to the cluster was lost before the result arrived,
    /// or the head could not be reached. Retrying after reconnecting may
    /// help.
    #[error("lost the connection to the cluster: {message}")]
    Disconnected {
        /// What happened.
        message: String,
    },
    /// The call was never sent: connecting to a cluster failed for a
    /// reason a retry cannot fix (a bad address, no token, an embedded
    /// cluster that could not start). Fix the configuration the message
    /// names.
    #[error("not connected to a cluster: {message}")]
    NotConnected {
        /// Why `init` failed.
        message: String,
    },
}

impl TaskError {
    /// Whether running the same call again could succeed: after a worker
    /// death, a timeout, a lost connection, or an internal error of the
    /// head; not after a panic (retried only with `retry_on_panic`), bad
    /// arguments, a missing function, a refused token, a cancellation, an
    /// unschedulable call or a failed `init`.
    pub fn is_retryable(&self) -> bool {
        matches!(self, TaskError::WorkerDied { .. } | TaskError::Timeout { .. } | TaskError::Disconnected { .. } | TaskError::Internal { .. })
    }

    /// What a call fails with when connecting (`init`) failed with `e`:
    /// the cause, typed (a refused token stays `Unauthenticated`).
    pub(crate) fn from_init(e: Error) -> TaskError {
        match e {
            Error::Task(t) => t,
            Error::Unauthenticated { message, .. } => TaskError::Unauthenticated { message },
            e @ (Error::Connect { .. } | Error::Refused { .. }) => TaskError::Disconnected { message: e.to_string() },
            e => TaskError::NotConnected { message: e.to_string() },
        }
    }
}

/// Errors of connecting to and configuring a cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A remote call failed.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The head could not be reached. Check the address and that it runs.
    #[error("cannot connect to the cluster at {address}: {message}")]
    Connect {
        /// Address tried.
        address: String,
        /// Why.
        message: String,
    },
    /// The head refused the token. Pass the right one (`SHOAL_TOKEN`,
    /// `SHOAL_TOKEN_FILE`, or run on the head's machine).
    #[error("the head at {address} refused the cluster token: {message}")]
    Unauthenticated {
        /// Head address.
        address: String,
        /// Head's message.
        message: String,
    },
    /// The head refused the session for another reason (version mismatch...).
    #[error("the head at {address} refused the session: {message}")]
    Refused {
        /// Head address.
        address: String,
        /// Head's message.
        message: String,
    },
    /// The head does not know the job this driver tried to resume: it
    /// ended (its driver was away past the grace period), or the head was
    /// restarted without its log. Its results are gone; start again.
    #[error("the head at {address} no longer knows job {job}: {message}")]
    JobUnknown {
        /// Head address.
        address: String,
        /// The job.
        job: u32,
        /// Head's message.
        message: String,
    },
    /// No live actor has that name in that namespace
    /// ([`get_actor`](crate::get_actor)), or the one that has it is of
    /// another type.
    #[error("no actor {name:?} in namespace {namespace:?}: {message}")]
    ActorNotFound {
        /// The name looked up.
        name: String,
        /// Its namespace.
        namespace: String,
        /// What was found instead.
        message: String,
    },
    /// Invalid configuration (address, token file, resources).
    #[error("configuration error: {0}")]
    Config(String),
    /// Local I/O failed (reading the program binary, token file).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The embedded local cluster could not start.
    #[error("the embedded cluster failed to start: {0}")]
    Embedded(String),
}

/// `Result` with [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn status_to_error(address: &str, s: tonic::Status) -> Error {
    match s.code() {
        tonic::Code::Unauthenticated => Error::Unauthenticated { address: address.to_string(), message: s.message().to_string() },
        tonic::Code::Unavailable => Error::Connect { address: address.to_string(), message: s.message().to_string() },
        _ => Error::Refused { address: address.to_string(), message: format!("{}: {}", s.code(), s.message()) },
    }
}
