//! Actors: a value living in a process of its own on the cluster, whose
//! methods are called remotely, in order, through a handle.
//!
//! `#[shoal::actor]` on an `impl` block makes its type an [`Actor`]:
//! `Counter::remote(args..)` starts one (its `new` runs on a node chosen
//! like a task's) and returns an [`ActorHandle`] at once; each method `m`
//! of the block is then `handle.m(args..) -> ObjectRef<R>` (the handle
//! dereferences to the generated `CounterMethods`). See the macro's docs
//! for options, and `docs/from-python.md` for the map from Ray's and
//! Dask's actors.

use crate::calls::{ActorCall, Arg, CallOptions};
use crate::error::{Error, Result, TaskError};
use crate::functions::FunctionMeta;
use crate::object_ref::ObjectRef;
use crate::runtime::block_on;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shoal_proto::pb;
use std::marker::PhantomData;

pub use shoal_domain::actor::{ActorState, ActorStatus};

/// A type whose `impl` block carries `#[shoal::actor]`. Implemented by the
/// macro; not by hand.
pub trait Actor: 'static {
    /// Registered name of the type (stable across builds of one source).
    const CLASS: &'static str;
    /// The generated struct holding the remote forms of the methods; an
    /// [`ActorHandle`] dereferences to it.
    type Methods: From<RawActor> + AsRef<RawActor>;
}

/// An actor, untyped: its id, what the typed handle wraps.
#[derive(Clone, Debug)]
pub struct RawActor {
    id: u64,
    class: &'static str,
    /// Why the actor could not even be asked for (no cluster): every call
    /// fails with it.
    error: Option<TaskError>,
    /// The creation call's ref, in the process that made the actor: it
    /// keeps the creation visible to the head while handles live here.
    _creation: Option<std::sync::Arc<ObjectRef<()>>>,
}

impl RawActor {
    /// The actor's id (its creation task's, `job.seq`).
    pub fn id(&self) -> crate::ObjectId {
        crate::ObjectId(self.id)
    }

    /// The actor's type name.
    pub fn class(&self) -> &'static str {
        self.class
    }

    /// Calls method `meta` with `args` (used by the macro).
    #[doc(hidden)]
    pub fn call<R>(&self, meta: &'static FunctionMeta, args: Vec<Arg>) -> ObjectRef<R> {
        if let Some(e) = &self.error {
            return ObjectRef::failed(e.clone());
        }
        // Straight to the actor's process when it runs on this machine
        // (see `crate::direct`), else through the head.
        if let Ok(cluster) = crate::init::driver_or_init() {
            if let Some(inner) = crate::direct::try_call(&cluster, self.id, meta, crate::calls::inline_values(&args)) {
                return ObjectRef::from_inner(inner);
            }
            crate::direct::before_head_call(&cluster, self.id);
            let opts = CallOptions { actor: ActorCall::Method(self.id), ..Default::default() };
            let r: ObjectRef<R> = crate::calls::submit_with(meta, opts, args);
            crate::direct::after_head_call(&cluster, self.id, r.inner.slot.clone());
            return r;
        }
        let opts = CallOptions { actor: ActorCall::Method(self.id), ..Default::default() };
        crate::calls::submit_with(meta, opts, args)
    }
}

/// A handle to a running actor of type `A`: cheap to clone, serializable
/// (pass it to tasks and to other actors, which call the actor directly),
/// and callable: `handle.method(args..)` returns an `ObjectRef` at once.
/// Calls from one caller run in the order they were made. Dropping every
/// handle does not end the actor: it lives until its job ends or it is
/// [`kill`]ed (or, [`detached`](ActorOptions::detached), until killed).
pub struct ActorHandle<A: Actor> {
    methods: A::Methods,
    _a: PhantomData<fn() -> A>,
}

impl<A: Actor> ActorHandle<A> {
    fn from_raw(raw: RawActor) -> Self {
        ActorHandle { methods: A::Methods::from(raw), _a: PhantomData }
    }

    /// The untyped actor.
    pub fn raw(&self) -> &RawActor {
        self.methods.as_ref()
    }

    /// The actor's id (its creation task's, `job.seq`), as `shoal status`
    /// prints it.
    pub fn id(&self) -> crate::ObjectId {
        self.raw().id()
    }
}

impl<A: Actor> std::ops::Deref for ActorHandle<A> {
    type Target = A::Methods;
    fn deref(&self) -> &A::Methods {
        &self.methods
    }
}

impl<A: Actor> Clone for ActorHandle<A> {
    fn clone(&self) -> Self {
        ActorHandle::from_raw(self.raw().clone())
    }
}

impl<A: Actor> std::fmt::Debug for ActorHandle<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorHandle<{}>({})", A::CLASS, self.id())
    }
}

impl<A: Actor> Serialize for ActorHandle<A> {
    /// The actor's id and type name.
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        (self.raw().id, A::CLASS).serialize(s)
    }
}

impl<'de, A: Actor> Deserialize<'de> for ActorHandle<A> {
    /// A handle to the same actor; refused if it was made for another type.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (id, class): (u64, String) = Deserialize::deserialize(d)?;
        if class != A::CLASS {
            return Err(serde::de::Error::custom(format!("a handle to a {class} actor cannot be read as a handle to {}", A::CLASS)));
        }
        Ok(ActorHandle::from_raw(RawActor { id, class: A::CLASS, error: None, _creation: None }))
    }
}

/// How to start an actor: `Counter::options().name("c").max_restarts(1).remote(..)`.
/// Each option set overrides the one given in `#[shoal::actor(..)]`.
#[derive(Clone, Debug, Default)]
pub struct ActorOptions {
    num_cpus: Option<f64>,
    resources: Option<Vec<(String, f64)>>,
    max_restarts: Option<u32>,
    max_task_retries: Option<u32>,
    max_concurrency: Option<u32>,
    name: String,
    namespace: String,
    placement: crate::Placement,
    detached: bool,
}

impl ActorOptions {
    /// CPUs the actor holds for as long as it lives (default 0, as in Ray:
    /// an actor is placed like a task but does not keep a CPU from tasks).
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.num_cpus = Some(n);
        self
    }

    /// Custom resources the actor holds for as long as it lives, e.g.
    /// `&[("gpu", 1.0)]`: it runs only on a node that has them.
    pub fn resources(mut self, r: &[(&str, f64)]) -> Self {
        self.resources = Some(r.iter().map(|(k, v)| (k.to_string(), *v)).collect());
        self
    }

    /// Times the actor is started again (its `new` runs again, on any node
    /// that fits) after its process or node dies. Default 0.
    pub fn max_restarts(mut self, n: u32) -> Self {
        self.max_restarts = Some(n);
        self
    }

    /// Times a method call that was running or queued on the actor when it
    /// died is run again on its next instance (default 0: such calls fail
    /// with [`TaskError::ActorDied`]).
    pub fn max_task_retries(mut self, n: u32) -> Self {
        self.max_task_retries = Some(n);
        self
    }

    /// Async method calls running at once (default 1). Sync methods
    /// (`&mut self`) always run one at a time, in order.
    pub fn max_concurrency(mut self, n: u32) -> Self {
        self.max_concurrency = Some(n.max(1));
        self
    }

    /// A name other drivers of the cluster find the actor by
    /// ([`get_actor`]); unique among live actors of its namespace.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// The namespace of the name (default: `"default"`).
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_string();
        self
    }

    /// The actor outlives the job that made it (Ray's
    /// `lifetime="detached"`): it lives until [`kill`]ed, found by its
    /// [`name`](Self::name) from later drivers.
    pub fn detached(mut self) -> Self {
        self.detached = true;
        self
    }

    /// Starts the actor on `node` only.
    pub fn on_node(mut self, node: crate::NodeId) -> Self {
        self.placement = crate::Placement::Node { node, soft: false };
        self
    }

    /// Starts the actor on `node` if it has room, else anywhere.
    pub fn prefer_node(mut self, node: crate::NodeId) -> Self {
        self.placement = crate::Placement::Node { node, soft: true };
        self
    }
}

/// The defaults `#[shoal::actor(..)]` gives a type (used by the macro).
#[doc(hidden)]
pub struct ActorDefaults {
    /// Restarts.
    pub max_restarts: u32,
    /// Call retries.
    pub max_task_retries: u32,
    /// Async calls at once.
    pub max_concurrency: u32,
}

/// Starts an actor (used by the macro): `ctor` is the registered
/// constructor, whose resources are the actor's defaults.
#[doc(hidden)]
pub fn create<A: Actor>(ctor: &'static FunctionMeta, defaults: &ActorDefaults, opts: ActorOptions, args: Vec<Arg>) -> ActorHandle<A> {
    let create = pb::ActorCreate {
        class: A::CLASS.to_string(),
        name: opts.name,
        namespace: opts.namespace,
        max_task_retries: opts.max_task_retries.unwrap_or(defaults.max_task_retries),
        max_concurrency: opts.max_concurrency.unwrap_or(defaults.max_concurrency).max(1),
        detached: opts.detached,
    };
    let call = CallOptions {
        max_retries: Some(opts.max_restarts.unwrap_or(defaults.max_restarts)),
        num_cpus: opts.num_cpus,
        resources: opts.resources,
        retry_exceptions: Some(false),
        placement: opts.placement,
        dedicated: true,
        actor: ActorCall::Create(create),
    };
    let creation: ObjectRef<()> = crate::calls::submit_with(ctor, call, args);
    let error = creation.inner.local_error();
    let id = creation.id().0;
    ActorHandle::from_raw(RawActor { id, class: A::CLASS, error, _creation: Some(std::sync::Arc::new(creation)) })
}

/// Ends an actor now, wherever it runs: it is not restarted, calls it has
/// not finished and later ones fail with [`TaskError::ActorDied`]. Any
/// process holding a handle may kill it.
pub fn kill<A: Actor>(handle: &ActorHandle<A>) {
    if handle.raw().error.is_some() {
        return;
    }
    if let Ok(d) = crate::init::driver_or_init() {
        crate::direct::forget(&d, handle.raw().id);
        d.send(crate::driver::Out::KillActor(handle.raw().id));
    }
}

/// The live actor named `name` in the default namespace, from any driver
/// or task of the cluster (Ray's `ray.get_actor`).
pub fn get_actor<A: Actor>(name: &str) -> Result<ActorHandle<A>> {
    get_actor_in::<A>("", name)
}

/// The live actor named `name` in `namespace`.
pub fn get_actor_in<A: Actor>(namespace: &str, name: &str) -> Result<ActorHandle<A>> {
    let d = crate::init::driver_or_init()?;
    let (address, token) = (d.address.clone(), d.token.clone());
    // What this process sent before (a creation) reaches the head first.
    block_on(d.sync());
    let status = block_on(async move { crate::status::fetch(&address, token.as_deref()).await })?;
    let ns = |s: &str| if s.is_empty() { "default".to_string() } else { s.to_string() };
    let found = status.actors.iter().find(|a| a.name == name && ns(&a.namespace) == ns(namespace) && a.state != ActorState::Dead);
    let not_found = |message: String| Error::ActorNotFound { name: name.to_string(), namespace: ns(namespace), message };
    match found {
        None => Err(not_found("no live actor has that name".into())),
        Some(a) if a.class != A::CLASS => Err(not_found(format!("actor {} of that name is a {}, not a {}", a.id, a.class, A::CLASS))),
        Some(a) => Ok(ActorHandle::from_raw(RawActor { id: a.id.0, class: A::CLASS, error: None, _creation: None })),
    }
}

/// Every actor of the cluster, alive and dead, as the head tracks them.
pub fn list_actors() -> Result<Vec<ActorStatus>> {
    Ok(crate::init::cluster_status_blocking()?.actors)
}
