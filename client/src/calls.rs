//! Remote calls: arguments (values or refs), per-call options, and the
//! submit path the `#[remote]` macro calls.

use crate::driver::Out;
use crate::error::TaskError;
use crate::functions::FunctionMeta;
use crate::object_ref::{ObjectRef, RefInner};
use crate::objects::Cluster;
use bytes::Bytes;
use serde::Serialize;
use shoal_proto::pb;
use std::sync::Arc;

/// Options of one call, from `f::options()`: each one set overrides the
/// function's own (from `#[shoal::remote(..)]`) for this call only.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Overrides the function's `max_retries`.
    pub max_retries: Option<u32>,
    /// Overrides the function's `num_cpus`.
    pub num_cpus: Option<f64>,
    /// Replaces the function's custom resources (`gpu = 1`, ...).
    pub resources: Option<Vec<(String, f64)>>,
    /// Overrides the function's `retry_exceptions`.
    pub retry_exceptions: Option<bool>,
    /// Where the call may run (default: near its inputs, else anywhere).
    pub placement: Placement,
    /// Run it in an executor process started for it and ended after it
    /// (what `Process::spawn` does), not in a pooled one.
    pub dedicated: bool,
    /// Set by [`crate::actor`]: the call creates an actor, or calls one.
    pub(crate) actor: ActorCall,
}

/// What a call is to an actor (set by the actor API, never by users).
#[derive(Clone, Debug, Default)]
pub(crate) enum ActorCall {
    /// A plain call.
    #[default]
    None,
    /// It creates an actor.
    Create(pb::ActorCreate),
    /// A method call on this actor.
    Method(u64),
}

/// Where a call may run; see `f::options().on_node(..)`, `.prefer_node(..)`
/// and `.spread()`.
pub use shoal_domain::task::Placement;

impl CallOptions {
    /// The wire fields of a placement.
    fn placement_wire(&self) -> (String, bool, bool) {
        match self.placement {
            Placement::Any => (String::new(), false, false),
            Placement::Node { node, soft } => (format!("{node:#}"), soft, false),
            Placement::Spread => (String::new(), false, true),
        }
    }
}

impl CallOptions {
    /// The resources of a call of `meta` with these options, when they
    /// differ from the function's; an error for a negative or non-finite
    /// amount.
    fn resources(&self, meta: &FunctionMeta) -> Result<Option<pb::Resources>, TaskError> {
        if self.num_cpus.is_none() && self.resources.is_none() {
            return Ok(None);
        }
        let bad = |what: &str, v: f64| TaskError::Unschedulable {
            function: meta.name.to_string(),
            message: format!("{what} = {v} in its call options is not a resource amount (a finite number >= 0)"),
        };
        let num_cpus = self.num_cpus.unwrap_or(meta.num_cpus);
        if !num_cpus.is_finite() || num_cpus < 0.0 {
            return Err(bad("num_cpus", num_cpus));
        }
        let mut r = pb::Resources { num_cpus, ..Default::default() };
        match &self.resources {
            Some(custom) => {
                for (k, v) in custom {
                    if !v.is_finite() || *v < 0.0 {
                        return Err(bad(k, *v));
                    }
                    r.custom.insert(k.clone(), *v);
                }
            }
            None => r.custom.extend(meta.resources.iter().map(|(k, v)| (k.to_string(), *v))),
        }
        Ok(Some(r))
    }
}

/// One argument of a remote call: a serialized value or a reference to an
/// object (which stays alive until the call is submitted). A value may
/// hold refs itself (a `Vec<ObjectRef<T>>`): they live while the task does.
pub struct Arg(ArgInner, Vec<Arc<RefInner>>);

enum ArgInner {
    Value(Bytes),
    Ref(Arc<RefInner>),
    Invalid(TaskError),
}

/// Converts a value or an `ObjectRef<T>` into an argument of type `T`.
/// Implemented for every serializable `T`, for `ObjectRef<T>` and for
/// `&ObjectRef<T>`.
pub trait IntoArg<T> {
    /// Performs the conversion.
    fn into_arg(self) -> Arg;
}

impl<T: Serialize> IntoArg<T> for T {
    fn into_arg(self) -> Arg {
        // A large value is encoded once, straight into a node's store (as
        // `put` does), and passed by reference: not into a buffer of its
        // own first and copied from there.
        let (size, refs) = crate::refs::collecting(|| postcard::experimental::serialized_size(&self));
        if let Ok(size) = size
            && size > shoal_domain::limits::STORE_THRESHOLD_BYTES
            && let Ok(driver) = crate::init::driver_or_init()
        {
            return match crate::init::put_value_sized(&driver, &self, size, refs) {
                Ok((id, slot)) => Arg(ArgInner::Ref(ObjectRef::<T>::new(id, slot, Some(driver)).inner), Vec::new()),
                Err(crate::Error::Task(e)) => Arg(ArgInner::Invalid(e), Vec::new()),
                Err(e) => Arg(ArgInner::Invalid(TaskError::Disconnected { message: e.to_string() }), Vec::new()),
            };
        }
        let (encoded, refs) = crate::refs::collecting(|| postcard::to_allocvec(&self));
        match encoded {
            Ok(v) => Arg(ArgInner::Value(Bytes::from(v)), refs),
            Err(e) => Arg(
                ArgInner::Invalid(TaskError::Serialization {
                    message: format!("an argument of type {} could not be serialized: {e}", std::any::type_name::<T>()),
                }),
                Vec::new(),
            ),
        }
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> Arg {
        Arg(ArgInner::Ref(self.inner), Vec::new())
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> Arg {
        Arg(ArgInner::Ref(self.inner.clone()), Vec::new())
    }
}

/// The arguments' values, when each is a value holding no refs (what a
/// direct actor call can carry); `None` otherwise.
pub(crate) fn inline_values(args: &[Arg]) -> Option<Vec<Bytes>> {
    args.iter()
        .map(|a| match &a.0 {
            ArgInner::Value(b) if a.1.is_empty() => Some(b.clone()),
            _ => None,
        })
        .collect()
}

/// Submits a call (used by the macro).
pub fn submit<R>(meta: &'static FunctionMeta, args: Vec<Arg>) -> ObjectRef<R> {
    submit_with(meta, CallOptions::default(), args)
}

/// Submits a call with options (used by the macro).
pub fn submit_with<R>(meta: &'static FunctionMeta, opts: CallOptions, args: Vec<Arg>) -> ObjectRef<R> {
    submit_inner(meta, opts, args, |_, _| {})
}

/// Submits a call; `before_send` runs with the call's id just before it
/// is queued (a generator registers where its items land).
pub(crate) fn submit_inner<R>(meta: &'static FunctionMeta, opts: CallOptions, args: Vec<Arg>, before_send: impl FnOnce(&Arc<Cluster>, u64)) -> ObjectRef<R> {
    let driver = match crate::init::driver_or_init() {
        Ok(d) => d,
        Err(e) => return ObjectRef::failed(TaskError::from_init(e)),
    };
    let mut wire = Vec::with_capacity(args.len());
    // Refs inside argument values: the task holds them.
    let mut contains = Vec::new();
    for a in &args {
        match crate::refs::ids_on(&driver, &a.1, "an argument") {
            Ok(ids) => contains.extend(ids),
            Err(e) => return ObjectRef::failed(e),
        }
    }
    // (Large values passed directly were put in the object store by
    // `into_arg`, as Ray does, and arrive here as refs.)
    for a in &args {
        wire.push(match &a.0 {
            ArgInner::Value(b) => pb::Arg { kind: Some(pb::arg::Kind::Value(b.clone())) },
            ArgInner::Ref(r) => {
                if r.driver.as_ref().is_some_and(|d| !Arc::ptr_eq(d, &driver)) || r.driver.is_none() {
                    // A ref from an earlier session, or one that failed
                    // locally: the head cannot know it.
                    if let Some(e) = r.local_error() {
                        return ObjectRef::failed(e);
                    }
                    return ObjectRef::failed(TaskError::ObjectLost {
                        message: format!("object {} belongs to another cluster session", crate::ObjectId(r.id)),
                    });
                }
                crate::refs::adopt(&driver, r);
                pb::Arg { kind: Some(pb::arg::Kind::Object(r.id)) }
            }
            ArgInner::Invalid(e) => return ObjectRef::failed(e.clone()),
        });
    }
    let resources = match opts.resources(meta) {
        Ok(r) => r,
        Err(e) => return ObjectRef::failed(e),
    };
    let (node, node_soft, spread) = opts.placement_wire();
    let func = driver.function_index(meta);
    let id = driver.next_id();
    let slot = driver.expect(id);
    before_send(&driver, id);
    driver.send(Out::Submit(pb::TaskSubmit {
        id,
        func,
        args: wire,
        max_retries: opts.max_retries,
        resources,
        retry_exceptions: opts.retry_exceptions,
        contains,
        node,
        node_soft,
        spread,
        dedicated: opts.dedicated,
        actor_create: match &opts.actor {
            ActorCall::Create(c) => Some(c.clone()),
            _ => None,
        },
        actor: match opts.actor {
            ActorCall::Method(a) => a,
            _ => 0,
        },
    }));
    // `args` (holding referenced objects alive) drops only now, after the
    // submission is queued, so a release can never overtake it.
    drop(args);
    ObjectRef::new(id, slot, Some(driver))
}
