//! A finished value as this process holds it: inline bytes, or where
//! in the cluster's object stores it lives.

use bytes::Bytes;
use shoal_proto::pb;

/// A finished value as a driver holds it.
#[derive(Clone, Debug)]
pub(crate) enum Val {
    /// Small: the bytes.
    Inline(Bytes),
    /// Large: in the object store of the nodes at `holders` (empty: this
    /// process's own store).
    Stored { id: u64, size: u64, holders: Vec<String> },
}

impl Val {
    pub(crate) fn from_pb(s: pb::StoredObject) -> Val {
        Val::Stored { id: s.id, size: s.size, holders: s.holders }
    }
}
