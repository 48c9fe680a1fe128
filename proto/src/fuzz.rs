//! Fuzz bodies: what `fuzz/` (cargo fuzz, nightly) runs on every input,
//! also run on seeded random inputs by this crate's tests. Each takes
//! arbitrary bytes and must return without panicking: decoders answer
//! garbage with errors.

use crate::{convert, frame, pb};
use prost::Message;
use shoal_domain::cluster::ClusterStatus;
use shoal_domain::task::{Dispatch, FunctionDef, JobInfo, NewTask, PutValue};

/// The executor socket's framing: a stream of length-prefixed frames, read
/// as both directions' messages until an error or the end.
pub fn frames(data: &[u8]) {
    let mut r = data;
    while let Ok(Some(_)) = frame::read_blocking::<pb::WorkerToExecutor, _>(&mut r) {}
    let mut r = data;
    while let Ok(Some(_)) = frame::read_blocking::<pb::ExecutorToWorker, _>(&mut r) {}
}

/// Every message a peer sends, decoded, then every conversion to domain
/// types the daemons make of it. The first byte picks the message.
pub fn wire(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else { return };
    match kind % 6 {
        0 => {
            let Ok(m) = pb::DriverToHead::decode(body) else { return };
            let _ = m.functions.into_iter().map(FunctionDef::from).count();
            for p in &m.puts {
                let _ = PutValue::try_from(p);
            }
            let _ = m.submit.into_iter().map(NewTask::from).count();
            for item in m.items {
                if let Some(p) = &item.put {
                    let _ = PutValue::try_from(p);
                }
            }
        }
        1 => {
            let Ok(m) = pb::WorkerToHead::decode(body) else { return };
            let _ = m.results.into_iter().map(convert::result_from_wire).count();
            if let Some(s) = m.store {
                let _ = shoal_domain::StoreUsage::from(s);
            }
        }
        2 => {
            let Ok(m) = pb::HeadToWorker::decode(body) else { return };
            let _ = m.tasks.into_iter().map(Dispatch::from).count();
            let _ = m.jobs.into_iter().map(JobInfo::from).count();
        }
        3 => {
            let Ok(m) = pb::LogRecord::decode(body) else { return };
            match m.kind {
                Some(pb::log_record::Kind::Snapshot(s)) => {
                    let _ = convert::job_snapshot_from_wire(s);
                }
                Some(pb::log_record::Kind::Results(r)) => {
                    let _ = r.results.into_iter().map(convert::result_from_wire).count();
                }
                Some(pb::log_record::Kind::Batch(b)) => {
                    let _ = b.submit.into_iter().map(NewTask::from).count();
                }
                _ => {}
            }
        }
        4 => {
            let Ok(m) = pb::ClusterStatus::decode(body) else { return };
            let _ = ClusterStatus::try_from(m);
        }
        _ => {
            let Ok(m) = pb::HeadToDriver::decode(body) else { return };
            let _ = m.results.into_iter().map(convert::result_from_wire).count();
        }
    }
}

/// What users and operators type: resource lists, sizes, ids.
pub fn parsers(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let _ = shoal_domain::ResourceSet::parse(&s);
    let _ = shoal_domain::size::parse_size(&s, u64::MAX);
    let _ = shoal_domain::size::parse_size(&s, 1 << 30);
    let _ = shoal_domain::ObjectId::parse(&s);
    let _ = shoal_domain::NodeId::parse(&s);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded random inputs, and valid messages with random bytes flipped.
    fn inputs(seed: u64, n: usize) -> Vec<Vec<u8>> {
        let mut r = shoal_domain::seeded::Xorshift::new(seed);
        let mut next = move || r.next_u64();
        let mut valid = Vec::new();
        let mut f = Vec::new();
        frame::encode(&pb::WorkerToExecutor { tasks: vec![pb::ExecTask { task: 9, method: "m".into(), ..Default::default() }], ..Default::default() }, &mut f);
        valid.push(f);
        let submit =
            pb::TaskSubmit { id: 7, actor_create: Some(pb::ActorCreate { class: "C".into(), ..Default::default() }), node: "x".into(), ..Default::default() };
        let mut d = vec![0u8];
        d.extend(pb::DriverToHead { submit: vec![submit], ..Default::default() }.encode_to_vec());
        valid.push(d);
        (0..n)
            .map(|i| {
                let len = (next() % 300) as usize;
                if i % 2 == 0 {
                    (0..len).map(|_| next() as u8).collect()
                } else {
                    let mut v = valid[i % valid.len()].clone();
                    for _ in 0..1 + next() % 4 {
                        let at = (next() as usize) % v.len().max(1);
                        if let Some(b) = v.get_mut(at) {
                            *b ^= next() as u8;
                        }
                    }
                    v
                }
            })
            .collect()
    }

    #[test]
    fn decoders_answer_garbage_without_panicking() {
        for input in inputs(0x5eed, 4000) {
            frames(&input);
            wire(&input);
            parsers(&input);
        }
    }
}
