//! The head's durable log: what it needs to rebuild its state after a
//! crash, in an embedded redb database under its data dir.
//!
//! Per job, in order: the job's start, every batch its driver sent
//! (functions, puts, submissions, cancellations, releases) and every
//! result a node reported. Replaying a job's records through the core
//! rebuilds its task graph and object table; entries of a job are deleted
//! when it ends, so the log holds only live work.
//!
//! Writes are grouped: a background thread commits whatever has queued in
//! one durable transaction, then reports which driver batches are now
//! durable. The head acknowledges a batch to its driver only then; the
//! driver keeps unacknowledged batches and sends them again after a
//! reconnect, so a crash between applying and committing loses nothing
//! (the work runs again; the driver ignores results it already has).

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use shoal_proto::pb;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;

const LOG: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Why the log cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("the head's log at {path}: {message}")]
pub struct LogError {
    path: String,
    message: String,
}

/// Record bytes one write transaction takes at most (past one record).
const TXN_BYTES: usize = 4 << 20;

/// The least time between two commits while batches keep coming: what a
/// batch may wait to be durable (its effects are applied at once; only
/// its acknowledgement waits), against an fsync per batch.
const COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);

impl Entry {
    /// Bytes of record it carries.
    fn len(&self) -> usize {
        match self {
            Entry::Append { record, .. } | Entry::Compact { record, .. } => record.len(),
            Entry::EndJob(_) | Entry::NextJob(_) => 0,
        }
    }
}

/// One write to the log.
enum Entry {
    Append {
        job: u32,
        record: Vec<u8>,
        batch: u64,
    },
    /// Replace every record of `job` with this one (a snapshot).
    Compact {
        job: u32,
        record: Vec<u8>,
        batch: u64,
    },
    EndJob(u32),
    NextJob(u32),
}

/// What was in the log at start.
#[derive(Default)]
pub(crate) struct Replay {
    /// The first job id not yet used.
    pub next_job: u32,
    /// Each job's records, in order.
    pub jobs: BTreeMap<u32, Vec<pb::LogRecord>>,
}

/// The writer side of the log.
pub(crate) struct Log {
    tx: mpsc::Sender<Entry>,
    writer: std::thread::JoinHandle<()>,
}

impl Log {
    /// Opens (or creates) the log in `dir`, reads what it holds, and starts
    /// the writer thread. `durable(job, seq)` is called (on that thread)
    /// for batches once they are committed.
    pub(crate) fn open(dir: &Path, durable: impl Fn(Vec<(u32, u64)>) + Send + 'static) -> Result<(Log, Replay), LogError> {
        Self::open_shrinking_at(dir, durable, SHRINK_FILE_BYTES)
    }

    /// [`Log::open`], the file rewritten when a job ends past `shrink_at` bytes.
    fn open_shrinking_at(dir: &Path, durable: impl Fn(Vec<(u32, u64)>) + Send + 'static, shrink_at: u64) -> Result<(Log, Replay), LogError> {
        let path = dir.join("head.redb");
        let err = |m: String| LogError { path: path.display().to_string(), message: m };
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        // The log is written, and read once at start: a small cache keeps
        // the head's memory for its tasks, not for pages it will not read.
        // A file cut short by a crash mid-write makes redb 3.1 assert (a
        // panic) instead of returning an error: caught, it is the typed
        // error the head reports, with what to do about it.
        let damaged = |what: &str| {
            err(format!("the log file is damaged ({what}); move {} aside to start the head with an empty log, keeping it for inspection", path.display()))
        };
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<(Database, Replay), LogError> {
            let db = redb::Builder::new().set_cache_size(16 << 20).create(&path).map_err(|e| err(e.to_string()))?;
            let replay = read(&db).map_err(err)?;
            Ok((db, replay))
        }));
        let (mut db, replay) = match opened {
            Ok(r) => r?,
            Err(payload) => return Err(damaged(&shoal_domain::panic::message(&*payload))),
        };
        // The log holds task arguments and results: this user's only.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| err(e.to_string()))?;
        }
        let mut next: BTreeMap<u32, u64> = replay.jobs.iter().map(|(j, r)| (*j, r.len() as u64)).collect();
        let (tx, rx) = mpsc::channel::<Entry>();
        let file = path.clone();
        let writer = std::thread::Builder::new()
            .name("shoal-head-log".into())
            .spawn(move || {
                let mut last_commit: Option<std::time::Instant> = None;
                while let Ok(first) = rx.recv() {
                    // Under a steady stream of batches, commits (each an
                    // fsync) come at most every COMMIT_INTERVAL, each
                    // taking what queued meanwhile; an idle log commits
                    // a lone batch at once.
                    if let Some(wait) = last_commit.and_then(|t| COMMIT_INTERVAL.checked_sub(t.elapsed())) {
                        std::thread::sleep(wait);
                    }
                    let mut ends_job = matches!(first, Entry::EndJob(_));
                    // One transaction takes what is waiting, up to
                    // TXN_BYTES: redb holds a transaction's pages in memory
                    // until it commits, so the bound keeps that memory
                    // bounded however much is waiting.
                    let mut bytes = first.len();
                    let mut batch = vec![first];
                    while bytes < TXN_BYTES
                        && let Ok(more) = rx.try_recv()
                    {
                        bytes += more.len();
                        ends_job |= matches!(more, Entry::EndJob(_));
                        batch.push(more);
                    }
                    let wrote = write(&db, &mut next, batch);
                    last_commit = Some(std::time::Instant::now());
                    if ends_job && wrote.is_ok() {
                        shrink_file(&mut db, &file, shrink_at);
                    }
                    match wrote {
                        Ok(acks) if !acks.is_empty() => durable(acks),
                        Ok(_) => {}
                        // Not acknowledging keeps drivers holding their
                        // batches: nothing is lost while the disk is bad.
                        Err(e) => tracing::error!(error = %e, "writing the head's log failed; batches stay unacknowledged"),
                    }
                }
            })
            .map_err(|e| err(e.to_string()))?;
        Ok((Log { tx, writer }, replay))
    }

    /// Closes the log: returns once everything appended is committed and
    /// the database is let go (it can be opened again at once).
    pub(crate) fn close(self) {
        let Log { tx, writer } = self;
        drop(tx);
        let _ = writer.join();
    }

    /// Records `record` for `job`; `batch` is the driver batch sequence it
    /// carries (0 for other records). Returns its size.
    pub(crate) fn append(&self, job: u32, record: &pb::LogRecord, batch: u64) -> usize {
        let record = record.encode_to_vec();
        let n = record.len();
        let _ = self.tx.send(Entry::Append { job, record, batch });
        n
    }

    /// Records a driver batch (without copying it into a `LogRecord`).
    /// Returns its size.
    pub(crate) fn append_batch(&self, job: u32, msg: &pb::DriverToHead) -> usize {
        // A LogRecord whose `batch` field (2) holds `msg`: same bytes as
        // encoding the record, one copy fewer.
        let mut record = Vec::with_capacity(msg.encoded_len() + 8);
        prost::encoding::message::encode(2, msg, &mut record);
        let n = record.len();
        let _ = self.tx.send(Entry::Append { job, record, batch: msg.seq });
        n
    }

    /// Records results node `node` reported for `job` (those of `results`
    /// whose task belongs to it), without copying them into a `LogRecord`.
    /// Returns the record's size.
    pub(crate) fn append_results(&self, job: u32, node: &str, results: &[pb::TaskResult]) -> usize {
        // A LogRecord whose `results` field (3) holds NodeResults { node,
        // results }: the same bytes as encoding those messages.
        let node = node.to_string();
        let mine = || results.iter().filter(|r| shoal_domain::ids::job_of(r.task) == job);
        let body = prost::encoding::string::encoded_len(1, &node) + mine().map(|r| prost::encoding::message::encoded_len(2, r)).sum::<usize>();
        let mut record = Vec::with_capacity(body + 8);
        prost::encoding::encode_key(3, prost::encoding::WireType::LengthDelimited, &mut record);
        prost::encoding::encode_varint(body as u64, &mut record);
        prost::encoding::string::encode(1, &node, &mut record);
        for r in mine() {
            prost::encoding::message::encode(2, r, &mut record);
        }
        let n = record.len();
        let _ = self.tx.send(Entry::Append { job, record, batch: 0 });
        n
    }

    /// Replaces `job`'s records with `snapshot` (its whole state, with
    /// driver batches up to `applied_seq` applied). Returns its size.
    pub(crate) fn compact(&self, job: u32, snapshot: pb::JobSnapshot) -> usize {
        let batch = snapshot.applied_seq;
        let record = pb::LogRecord { kind: Some(pb::log_record::Kind::Snapshot(snapshot)) }.encode_to_vec();
        let n = record.len();
        let _ = self.tx.send(Entry::Compact { job, record, batch });
        n
    }

    /// `job` ended: its records go.
    pub(crate) fn end_job(&self, job: u32) {
        let _ = self.tx.send(Entry::EndJob(job));
    }

    /// Job ids below `next` are used.
    pub(crate) fn next_job(&self, next: u32) {
        let _ = self.tx.send(Entry::NextJob(next));
    }
}

/// A log file at least this big when a job ends, and at least four times
/// what it holds, is rewritten to what it holds: redb reuses freed pages
/// but never gives them back, and a job of millions of tasks leaves a file
/// of gigabytes with nothing live in it.
const SHRINK_FILE_BYTES: u64 = 8 << 20;

/// Rewrites the log file to its live records when a job's end left it
/// mostly free (after a 1M-task job: ~1 GB to a few KiB).
fn shrink_file(db: &mut Database, file: &Path, shrink_at: u64) {
    let before = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    if before < shrink_at {
        return;
    }
    let live = db.begin_write().and_then(|txn| {
        let stats = txn.stats();
        let _ = txn.abort();
        Ok(stats?)
    });
    match live {
        Ok(st) if (st.stored_bytes() + st.metadata_bytes()).saturating_mul(4) > before => return,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "reading the head's log file's use failed");
            return;
        }
    }
    let started = std::time::Instant::now();
    // redb asserts its own invariants while compacting: a panic there is
    // a log that stays as large as it is, not a head that stops logging.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.compact())) {
        Ok(Ok(_)) => {
            let after = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
            tracing::info!(before, after, took_ms = started.elapsed().as_millis() as u64, "the head's log file shrank after a job ended");
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "the head's log file could not be shrunk"),
        Err(payload) => tracing::error!(panic = %shoal_domain::panic::message(&*payload), "shrinking the head's log file failed"),
    }
}

fn read(db: &Database) -> Result<Replay, String> {
    let mut replay = Replay { next_job: 1, ..Default::default() };
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    match txn.open_table(META) {
        Ok(t) => {
            if let Some(v) = t.get("next_job").map_err(|e| e.to_string())? {
                replay.next_job = v.value() as u32;
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.to_string()),
    }
    match txn.open_table(LOG) {
        Ok(t) => {
            for row in t.iter().map_err(|e| e.to_string())? {
                let (k, v) = row.map_err(|e| e.to_string())?;
                let (job, _) = k.value();
                match pb::LogRecord::decode(v.value()) {
                    Ok(r) => replay.jobs.entry(job).or_default().push(r),
                    Err(e) => tracing::warn!(job, error = %e, "skipping an unreadable log record"),
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.to_string()),
    }
    Ok(replay)
}

/// Driver batches of `job` up to `batch` become durable with this commit.
fn note_durable(acks: &mut BTreeMap<u32, u64>, job: u32, batch: u64) {
    if batch > 0 {
        let a = acks.entry(job).or_insert(0);
        *a = (*a).max(batch);
    }
}

fn write(db: &Database, next: &mut BTreeMap<u32, u64>, entries: Vec<Entry>) -> Result<Vec<(u32, u64)>, String> {
    let mut acks: BTreeMap<u32, u64> = BTreeMap::new();
    let mut compacted = Vec::new();
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut log = txn.open_table(LOG).map_err(|e| e.to_string())?;
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        for e in entries {
            match e {
                Entry::Append { job, record, batch } => {
                    let n = next.entry(job).or_insert(0);
                    log.insert((job, *n), record.as_slice()).map_err(|e| e.to_string())?;
                    *n += 1;
                    note_durable(&mut acks, job, batch);
                }
                Entry::Compact { job, record, batch } => {
                    log.retain_in((job, 0)..=(job, u64::MAX), |_, _| false).map_err(|e| e.to_string())?;
                    log.insert((job, 0), record.as_slice()).map_err(|e| e.to_string())?;
                    next.insert(job, 1);
                    note_durable(&mut acks, job, batch);
                    compacted.push(job);
                }
                Entry::EndJob(job) => {
                    log.retain_in((job, 0)..=(job, u64::MAX), |_, _| false).map_err(|e| e.to_string())?;
                    next.remove(&job);
                    acks.remove(&job);
                }
                Entry::NextJob(n) => {
                    meta.insert("next_job", n as u64).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())?;
    // Only now would a restarted head replay from the snapshot (the loop
    // logs "compacted" when it hands the snapshot to this thread).
    for job in compacted {
        tracing::info!(job, "the job's snapshot is durable");
    }
    Ok(acks.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn started(job: u32) -> pb::LogRecord {
        pb::LogRecord { kind: Some(pb::log_record::Kind::Job(pb::JobStarted { job, binary: "b".into(), name: "n".into(), ..Default::default() })) }
    }

    fn batch(seq: u64) -> pb::LogRecord {
        pb::LogRecord { kind: Some(pb::log_record::Kind::Batch(pb::DriverToHead { seq, ..Default::default() })) }
    }

    #[test]
    fn results_appended_directly_are_the_jobs_share_as_a_log_record() {
        let dir = tempfile::tempdir().unwrap();
        let r = |task: u64| pb::TaskResult { task, outcome: Some(pb::task_result::Outcome::Value(bytes::Bytes::from_static(b"v"))), ..Default::default() };
        let all = vec![r(shoal_domain::ids::object_id(1, 1)), r(shoal_domain::ids::object_id(2, 1)), r(shoal_domain::ids::object_id(1, 2))];
        {
            let (log, _) = Log::open(dir.path(), |_| {}).unwrap();
            let n = log.append_results(1, "node-a", &all);
            let want = pb::LogRecord {
                kind: Some(pb::log_record::Kind::Results(pb::NodeResults { node: "node-a".into(), results: vec![all[0].clone(), all[2].clone()] })),
            };
            assert_eq!(n, want.encoded_len());
            log.close();
        }
        let (_log, replay) = Log::open(dir.path(), |_| {}).unwrap();
        match &replay.jobs[&1][0].kind {
            Some(pb::log_record::Kind::Results(nr)) => {
                assert_eq!(nr.node, "node-a");
                assert_eq!(nr.results, vec![all[0].clone(), all[2].clone()]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_torn_or_garbled_log_file_is_an_error_or_a_replay_never_a_panic() {
        // A real log, then copies of its file cut short (a write torn by a
        // crash) or with bytes flipped (a bad disk), each opened as a
        // restarted head would.
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = Log::open(dir.path(), |_| {}).unwrap();
            for job in 1..=3 {
                log.append(job, &started(job), 0);
                for seq in 1..=20 {
                    log.append(job, &batch(seq), seq);
                }
            }
            log.close();
        }
        let whole = std::fs::read(dir.path().join("head.redb")).unwrap();
        let mut r = shoal_domain::seeded::Xorshift::new(0x7043);
        let mut next = move || r.next_u64();
        let (mut opened, mut refused) = (0, 0);
        for i in 0..40 {
            let mut bytes = whole.clone();
            if i % 2 == 0 {
                bytes.truncate((next() as usize) % whole.len());
            } else {
                for _ in 0..1 + next() % 8 {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] ^= (next() as u8) | 1;
                }
            }
            let copy = tempfile::tempdir().unwrap();
            std::fs::write(copy.path().join("head.redb"), &bytes).unwrap();
            let outcome = std::panic::catch_unwind(|| Log::open(copy.path(), |_| {}).map(|(log, replay)| (log.close(), replay.jobs.len())));
            match outcome {
                Ok(Ok(_)) => opened += 1,
                Ok(Err(e)) => {
                    assert!(!e.to_string().is_empty());
                    refused += 1;
                }
                Err(_) => panic!("opening damaged copy {i} panicked"),
            }
        }
        assert_eq!(opened + refused, 40);
        assert!(refused > 0, "copies cut short are refused, not opened as empty logs ({opened} opened)");
    }

    #[test]
    fn a_batch_appended_directly_decodes_as_a_log_record() {
        let msg = pb::DriverToHead { seq: 7, release: vec![1, 2, 3], ..Default::default() };
        let mut direct = Vec::new();
        prost::encoding::message::encode(2, &msg, &mut direct);
        assert_eq!(direct, pb::LogRecord { kind: Some(pb::log_record::Kind::Batch(msg)) }.encode_to_vec());
    }

    #[test]
    fn a_big_file_shrinks_to_what_it_holds_when_a_job_ends() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("head.redb");
        let big = pb::LogRecord { kind: Some(pb::log_record::Kind::Job(pb::JobStarted { job: 1, name: "x".repeat(4096), ..Default::default() })) };
        {
            let (log, _) = Log::open_shrinking_at(dir.path(), |_| {}, 1 << 20).unwrap();
            log.append(2, &started(2), 0);
            log.append(1, &started(1), 0);
            for _ in 0..3000 {
                log.append(1, &big, 0);
            }
            log.close();
        }
        let grown = std::fs::metadata(&file).unwrap().len();
        assert!(grown > 12 << 20, "3,000 records of 4 KiB: {grown} bytes");
        {
            let (log, replay) = Log::open_shrinking_at(dir.path(), |_| {}, 1 << 20).unwrap();
            assert_eq!(replay.jobs[&1].len(), 3001);
            log.end_job(1);
            log.close();
        }
        let shrunk = std::fs::metadata(&file).unwrap().len();
        assert!(shrunk < 1 << 20, "job 1 ended: the file shrank from {grown} to {shrunk} bytes");
        // What is still live survives the rewrite.
        {
            let (log, replay) = Log::open_shrinking_at(dir.path(), |_| {}, 1 << 20).unwrap();
            assert_eq!(replay.jobs.keys().copied().collect::<Vec<_>>(), vec![2]);
            assert!(matches!(replay.jobs[&2][0].kind, Some(pb::log_record::Kind::Job(_))));
            // A file mostly live is left as it is when a small job ends.
            for _ in 0..3000 {
                log.append(3, &big, 0);
            }
            log.end_job(2);
            log.close();
        }
        let full = std::fs::metadata(&file).unwrap().len();
        assert!(full > 12 << 20, "{full}");
        let (_log, replay) = Log::open(dir.path(), |_| {}).unwrap();
        assert_eq!(replay.jobs.keys().copied().collect::<Vec<_>>(), vec![3]);
        assert_eq!(replay.jobs[&3].len(), 3000);
    }

    #[test]
    fn compaction_replaces_a_jobs_history_with_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let acked = Arc::new(Mutex::new(Vec::new()));
        {
            let a = acked.clone();
            let (log, _) = Log::open(dir.path(), move |acks| a.lock().unwrap().extend(acks)).unwrap();
            log.append(1, &started(1), 0);
            for seq in 1..=5 {
                log.append(1, &batch(seq), seq);
            }
            let snap = pb::JobSnapshot {
                job: Some(pb::JobStarted { job: 1, binary: "b".into(), name: "n".into(), ..Default::default() }),
                applied_seq: 5,
                ..Default::default()
            };
            log.compact(1, snap);
            log.append(1, &batch(6), 6);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !acked.lock().unwrap().contains(&(1, 6)) {
                assert!(std::time::Instant::now() < deadline, "never acknowledged");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            log.close();
        }
        let (_log, replay) = Log::open(dir.path(), |_| {}).unwrap();
        let kinds: Vec<&str> = replay.jobs[&1]
            .iter()
            .map(|r| match &r.kind {
                Some(pb::log_record::Kind::Snapshot(_)) => "snapshot",
                Some(pb::log_record::Kind::Batch(_)) => "batch",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, vec!["snapshot", "batch"], "the history before the snapshot is gone");
    }

    #[test]
    fn records_survive_a_reopen_in_order_and_ended_jobs_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let acked = Arc::new(Mutex::new(Vec::new()));
        {
            let a = acked.clone();
            let (log, replay) = Log::open(dir.path(), move |acks| a.lock().unwrap().extend(acks)).unwrap();
            assert!(replay.jobs.is_empty());
            log.next_job(3);
            log.append(1, &started(1), 0);
            log.append(2, &started(2), 0);
            for seq in 1..=3 {
                log.append(1, &batch(seq), seq);
            }
            log.append(2, &batch(1), 1);
            log.end_job(2);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !acked.lock().unwrap().contains(&(1, 3)) {
                assert!(std::time::Instant::now() < deadline, "batches were never acknowledged");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            log.close();
        }
        let (_log, replay) = Log::open(dir.path(), |_| {}).unwrap();
        assert_eq!(replay.next_job, 3);
        assert_eq!(replay.jobs.keys().copied().collect::<Vec<_>>(), vec![1]);
        let seqs: Vec<u64> = replay.jobs[&1]
            .iter()
            .filter_map(|r| match &r.kind {
                Some(pb::log_record::Kind::Batch(b)) => Some(b.seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
    }
}
