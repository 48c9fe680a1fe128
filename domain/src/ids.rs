//! Ids, and the one way each prints.
//!
//! Object and task ids are cheap integers, `(job << 40) | sequence`: the
//! driver allocates them without a round trip, so a remote call returns
//! its `ObjectRef` at once; the head only checks that the job part is the
//! submitting driver's own. A task's id is also the id of the object that
//! holds its result. Every id prints as `job.seq` (`7.123`) in logs,
//! errors and the CLI.
//!
//! A node id is a UUID; it prints as its first 8 hex digits (the full form
//! with `{:#}`).

use std::fmt;

/// Bits of an object id that hold the per-job sequence number.
pub const SEQ_BITS: u32 = 40;

/// Largest job id that fits in an object id.
pub const MAX_JOB: u32 = (1 << (64 - SEQ_BITS)) - 1;

/// A driver session (one program connected to the cluster).
pub type JobId = u32;

/// An object id: `(job << 40) | seq`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ObjectId(pub u64);

/// A task id: the id of the object its result becomes.
pub type TaskId = ObjectId;

impl ObjectId {
    /// The id of object `seq` of `job`.
    pub fn new(job: JobId, seq: u64) -> Self {
        ObjectId(object_id(job, seq))
    }

    /// The job that owns it.
    pub fn job(self) -> JobId {
        job_of(self.0)
    }

    /// Its sequence number inside the job.
    pub fn seq(self) -> u64 {
        seq_of(self.0)
    }
}

impl From<u64> for ObjectId {
    fn from(raw: u64) -> Self {
        ObjectId(raw)
    }
}

impl From<ObjectId> for u64 {
    fn from(id: ObjectId) -> Self {
        id.0
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.job(), self.seq())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl ObjectId {
    /// Parses the printed form `job.seq`.
    pub fn parse(s: &str) -> Option<Self> {
        let (job, seq) = s.split_once('.')?;
        let (job, seq): (JobId, u64) = (job.parse().ok()?, seq.parse().ok()?);
        (seq < (1 << SEQ_BITS)).then(|| ObjectId::new(job, seq))
    }
}

impl serde::Serialize for ObjectId {
    /// `job.seq`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ObjectId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ObjectId::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not an id (job.seq)")))
    }
}

/// Builds a raw object id from a job id and a sequence number.
pub fn object_id(job: JobId, seq: u64) -> u64 {
    ((job as u64) << SEQ_BITS) | (seq & ((1 << SEQ_BITS) - 1))
}

/// The job that owns a raw object id.
pub fn job_of(id: u64) -> JobId {
    (id >> SEQ_BITS) as u32
}

/// The sequence part of a raw object id.
pub fn seq_of(id: u64) -> u64 {
    id & ((1 << SEQ_BITS) - 1)
}

/// `job.seq`, the printed form of a raw id (for code that still holds
/// wire integers).
pub fn display(id: u64) -> String {
    ObjectId(id).to_string()
}

/// A worker node's identity, a UUID assigned by the head at first
/// registration (or pinned with `--node-id`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub uuid::Uuid);

impl NodeId {
    /// A fresh random id.
    pub fn random() -> Self {
        NodeId(uuid::Uuid::new_v4())
    }

    /// Parses the full hyphenated or simple form.
    pub fn parse(s: &str) -> Option<Self> {
        uuid::Uuid::parse_str(s).ok().map(NodeId)
    }
}

impl fmt::Display for NodeId {
    /// Short form (8 hex digits) for logs; `{:#}` prints the full UUID.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            return write!(f, "{}", self.0);
        }
        let mut buf = uuid::Uuid::encode_buffer();
        let simple = self.0.simple().encode_lower(&mut buf);
        f.write_str(simple.get(..8).unwrap_or(simple))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl serde::Serialize for NodeId {
    /// The full UUID.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{self:#}"))
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NodeId::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a node id (a UUID)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_unpacks_and_prints() {
        let id = ObjectId::new(7, 123_456);
        assert_eq!(id.job(), 7);
        assert_eq!(id.seq(), 123_456);
        assert_eq!(id.to_string(), "7.123456");
        assert_eq!(format!("{id:?}"), "7.123456");
        assert_eq!(display(id.0), "7.123456");
        assert_eq!(ObjectId::new(MAX_JOB, 1).job(), MAX_JOB);
        assert_eq!(ObjectId::parse("7.123456"), Some(id));
        assert_eq!(ObjectId::parse("7"), None);
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"7.123456\"");
    }

    #[test]
    fn node_ids_print_short_and_full() {
        let n = NodeId::parse("58e3a1b2-0000-4000-8000-000000000001").unwrap();
        assert_eq!(n.to_string(), "58e3a1b2");
        assert_eq!(format!("{n:#}"), "58e3a1b2-0000-4000-8000-000000000001");
        assert_eq!(NodeId::parse(&format!("{n:#}")), Some(n));
        assert_eq!(NodeId::parse("nope"), None);
    }
}
