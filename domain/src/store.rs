//! A node's object store usage: what its store measures, its heartbeat
//! reports and `shoal status` shows (one struct for all three).

/// Object store usage of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreUsage {
    /// Arena size.
    pub capacity: u64,
    /// Arena bytes in use.
    pub used: u64,
    /// Objects in the arena.
    pub objects: u64,
    /// Bytes spilled to disk.
    pub spilled_bytes: u64,
    /// Objects spilled to disk.
    pub spilled_objects: u64,
    /// Bytes pinned by readers.
    pub pinned_bytes: u64,
}
