//! Object and task ids are cheap integers: `(job << 40) | sequence`. The
//! driver allocates them without a round trip, so a remote call returns its
//! `ObjectRef` at once; the head only checks that the job part is the
//! submitting driver's own.

/// Bits of an object id that hold the per-job sequence number.
pub const SEQ_BITS: u32 = 40;

/// Largest job id that fits in an object id.
pub const MAX_JOB: u32 = (1 << (64 - SEQ_BITS)) - 1;

/// Builds an object id from a job id and a sequence number.
pub fn object_id(job: u32, seq: u64) -> u64 {
    ((job as u64) << SEQ_BITS) | (seq & ((1 << SEQ_BITS) - 1))
}

/// The job that owns an object id.
pub fn job_of(id: u64) -> u32 {
    (id >> SEQ_BITS) as u32
}

/// The sequence part of an object id.
pub fn seq_of(id: u64) -> u64 {
    id & ((1 << SEQ_BITS) - 1)
}

/// Short human form `job.seq` for logs and errors.
pub fn display(id: u64) -> String {
    format!("{}.{}", job_of(id), seq_of(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_and_unpacks() {
        let id = object_id(7, 123_456);
        assert_eq!(job_of(id), 7);
        assert_eq!(seq_of(id), 123_456);
        assert_eq!(display(id), "7.123456");
        assert_eq!(job_of(object_id(MAX_JOB, 1)), MAX_JOB);
    }
}
