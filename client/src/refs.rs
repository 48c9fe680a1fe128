//! References inside values. An `ObjectRef<T>` serializes as its object
//! id, so a `Vec<ObjectRef<T>>` or a struct holding refs can be an
//! argument, a `put` or a task's result. Both ends keep the head's counts
//! right:
//!
//! - **Sending.** While a value is encoded for a put, a call's arguments
//!   or a task's result, the refs it holds are collected; the head is told
//!   the container holds them (`contains` on the put or submission, a
//!   `Containment` before a result), and they live while it does. The
//!   collected refs stay alive here until that message is queued, so a
//!   drop can never overtake it.
//! - **Receiving.** Decoding a ref makes a *borrowed* ref in this process
//!   (one per id, shared by every copy decoded here): the head is told it
//!   was taken, answers it like a result, and is told again when the last
//!   copy here drops.
//! - **Owned items.** A small generator item holding no refs reaches its
//!   caller as a value the head did not keep ([`adopt`]): dropping it
//!   tells the head nothing; sending it on hands the head its value first.
//! - **Ordering.** A task's result travels through its worker while its
//!   session's messages go straight to the head, so an executor waits for
//!   the head to acknowledge the refs it took or sent before the result
//!   leaves ([`crate::driver::Driver::sync_refs`]).
//!
//! An object lives while its owner, a borrower, a task taking it or a live
//! container holds a ref; when the job that made it ends it is gone, and
//! borrowers reading it get `ObjectLost` (as Ray's refs fail when their
//! owner dies).

use crate::error::TaskError;
use crate::object_ref::{ObjectRef, RefInner};
use crate::objects::Cluster;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use std::sync::Arc;

thread_local! {
    /// Refs met while encoding a value, when someone collects them.
    static COLLECTED: RefCell<Option<Vec<Arc<RefInner>>>> = const { RefCell::new(None) };
}

/// Runs `f` (which encodes a value) and returns the refs the value holds,
/// each once.
pub(crate) fn collecting<R>(f: impl FnOnce() -> R) -> (R, Vec<Arc<RefInner>>) {
    let outer = COLLECTED.with(|c| c.borrow_mut().replace(Vec::new()));
    let r = f();
    let mut got = COLLECTED.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer)).unwrap_or_default();
    got.sort_unstable_by_key(|i| i.id);
    got.dedup_by_key(|i| i.id);
    (r, got)
}

/// The ids of collected refs.
pub(crate) fn ids(refs: &[Arc<RefInner>]) -> Vec<u64> {
    refs.iter().map(|r| r.id).collect()
}

/// The ids of refs collected from a value (`what`: "an argument", "the
/// value") sent on `cluster`'s session: each must be of that session, the
/// only one whose head can count it.
pub(crate) fn ids_on(cluster: &Arc<Cluster>, refs: &[Arc<RefInner>], what: &str) -> Result<Vec<u64>, TaskError> {
    match refs.iter().find(|r| !r.driver.as_ref().is_some_and(|d| Arc::ptr_eq(d, cluster))) {
        Some(r) => Err(TaskError::ObjectLost { message: format!("object {} inside {what} belongs to another cluster session", crate::ObjectId(r.id)) }),
        None => {
            for r in refs {
                adopt(cluster, r);
            }
            Ok(ids(refs))
        }
    }
}

/// Before ref `r` leaves this process (an argument, inside a value): if
/// it is an owned generator item, which the head passed on without
/// keeping, the head is given its value to keep, borrowed by this
/// session, from here on as any item. Queued before the message that
/// names it, on the same session, so the head has it first.
pub(crate) fn adopt(cluster: &Arc<Cluster>, r: &Arc<RefInner>) {
    if r.direct.is_some() {
        return crate::direct::escape(cluster, r);
    }
    let Some(adopted) = &r.owned else { return };
    let mut adopted = adopted.lock().unwrap_or_else(|p| p.into_inner());
    if *adopted {
        return;
    }
    let Some((Ok(crate::values::Val::Inline(value)), _)) = r.slot.answer() else { return };
    *adopted = true;
    cluster.borrows.insert(r.id, Arc::downgrade(r));
    cluster.register(r.id, r.slot.clone());
    cluster.mark_unsynced();
    cluster.send(crate::driver::Out::Adopt(shoal_proto::pb::PutObject { id: r.id, value, ..Default::default() }));
}

impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.inner.driver.is_none() {
            let why = self.inner.local_error().map_or_else(|| "it belongs to no cluster session".to_string(), |e| e.to_string());
            return Err(serde::ser::Error::custom(format!("object ref {} cannot be sent inside a value: {why}", self.id())));
        }
        COLLECTED.with(|c| {
            if let Some(v) = c.borrow_mut().as_mut() {
                v.push(self.inner.clone());
            }
        });
        s.serialize_u64(self.inner.id)
    }
}

impl<'de, T> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let id = u64::deserialize(d)?;
        Ok(match crate::init::driver_or_init() {
            Ok(cluster) => ObjectRef::from_inner(borrow(&cluster, id)),
            Err(e) => ObjectRef::failed(TaskError::from_init(e)),
        })
    }
}

/// The borrowed ref to `id` in this process: the live one if there is
/// one, else a new one (and the head is told it was taken).
fn borrow(cluster: &Arc<Cluster>, id: u64) -> Arc<RefInner> {
    // Under the entry's lock: a ref dropping meanwhile (see `unborrow`)
    // either is still live here or finds the new one in its place.
    let mut entry = cluster.borrows.entry(id).or_default();
    if let Some(live) = entry.upgrade() {
        return live;
    }
    let inner = ObjectRef::<()>::borrowed_inner(id, cluster.slot_for(id), cluster.clone());
    *entry = Arc::downgrade(&inner);
    cluster.borrow(id, true);
    inner
}

/// The last copy of the borrowed ref to `id` here dropped. If a new one
/// was taken meanwhile (decoded while this one was dropping), it carries
/// the borrow on and nothing is sent.
pub(crate) fn unborrow(cluster: &Cluster, id: u64) {
    if cluster.borrows.remove_if(&id, |_, w| w.strong_count() == 0).is_some() {
        cluster.forget_slot(id);
        cluster.borrow(id, false);
    }
}
