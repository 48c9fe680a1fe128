//! Actors as the head, the workers and the SDK see them: what an actor's
//! creation carries, what a task is to an actor, and an actor as the
//! cluster status shows it.
//!
//! An actor is the long-running *creation task* that built it: its id is
//! that task's id, it holds that task's resources on its node for as long
//! as it lives, and a restart is a retry of that task. A method call is a
//! task addressed to the actor: it runs in the actor's own process, in the
//! order its caller made it.

use crate::ids::TaskId;

/// How an actor was asked to behave, as its creation carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActorSpec {
    /// The actor's type (registered name of the `impl` block).
    pub class: String,
    /// Name under which other drivers find it (empty: unnamed).
    pub name: String,
    /// Namespace of the name (empty: the default namespace).
    pub namespace: String,
    /// Method calls retried after the actor died under them (each call
    /// up to this many times).
    pub max_task_retries: u32,
    /// Async method calls running at once (sync methods run one at a
    /// time whatever this says).
    pub max_concurrency: u32,
    /// Outlives the job that made it, until killed.
    pub detached: bool,
}

impl ActorSpec {
    /// The key its name is registered under (`namespace/name`), if named.
    pub fn key(&self) -> Option<String> {
        (!self.name.is_empty()).then(|| name_key(&self.namespace, &self.name))
    }
}

/// The registry key of actor `name` in `namespace`.
pub fn name_key(namespace: &str, name: &str) -> String {
    format!("{}/{}", if namespace.is_empty() { "default" } else { namespace }, name)
}

/// What a submitted task is to an actor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ActorRole {
    /// A plain task.
    #[default]
    None,
    /// It creates an actor (whose id is this task's id): it runs the
    /// constructor, then serves calls until the actor ends.
    Create(Box<ActorSpec>),
    /// A method call on this actor.
    Call(TaskId),
}

/// What a dispatched task is to an actor, as a worker needs to know it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ActorPart {
    /// A plain task.
    #[default]
    None,
    /// Starts an actor in an executor process of its own, which then
    /// serves the actor's calls.
    Create {
        /// Async calls running at once.
        max_concurrency: u32,
    },
    /// A method call, for the executor serving this actor.
    Call(TaskId),
}

/// Where an actor is in its life.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorState {
    /// Waiting for a node (first start or restart).
    Pending,
    /// Placed on a node: running its constructor or serving calls.
    Alive,
    /// Gone for good; why.
    Dead,
}

impl std::fmt::Display for ActorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ActorState::Pending => "pending",
            ActorState::Alive => "alive",
            ActorState::Dead => "dead",
        })
    }
}

/// One actor, as `shoal status` and `shoal::cluster_status` show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ActorStatus {
    /// Its id (its creation task's id, `job.seq`).
    pub id: crate::ObjectId,
    /// Its type.
    pub class: String,
    /// Its name (empty: unnamed).
    pub name: String,
    /// Its name's namespace.
    pub namespace: String,
    /// Where it is in its life.
    pub state: ActorState,
    /// The node it runs on, when alive.
    pub node: Option<crate::NodeId>,
    /// Times it was started again after dying.
    pub restarts: u32,
    /// Why it died, when dead.
    pub death: String,
    /// Detached from its job's lifetime.
    pub detached: bool,
    /// Times a call interrupted by its death runs again on the next
    /// instance.
    #[serde(default)]
    pub max_task_retries: u32,
}
