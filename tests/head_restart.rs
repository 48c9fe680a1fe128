//! A head that crashes and is restarted on the same data dir resumes the
//! work, also after it compacted its log to snapshots (loopback cluster;
//! tests/multi_host.rs does it across hosts).

mod common;

use common::*;
use std::time::Duration;

#[shoal::remote]
fn inc(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(5));
    x + 1
}

#[shoal::remote]
fn blob(n: usize, seed: u8) -> shoal::Buffer {
    shoal::Buffer::from(vec![seed; n])
}

#[shoal::remote]
fn total(b: shoal::Buffer, k: u64) -> u64 {
    b.iter().map(|x| *x as u64).sum::<u64>() + k
}

#[test]
fn a_restarted_head_resumes_from_a_compacted_log() {
    let mut c = Cluster::head(&["--log-compact-bytes", "20000", "--heartbeat-timeout", "2"]);
    c.add_worker(&["--num-cpus", "2"]);
    c.connect();
    // Chains of tasks (a graph), and stored values they depend on.
    let blobs: Vec<_> = (0..3u8).map(|s| blob::remote(200_000, s + 1)).collect();
    let mut heads: Vec<_> = (0..400u64).map(inc::remote).collect();
    for _ in 0..4 {
        heads = heads.iter().map(inc::remote).collect();
    }
    let sums: Vec<_> = blobs.iter().enumerate().map(|(i, b)| total::remote(b, &heads[i])).collect();
    // Killed only once the snapshot is committed: killed between the
    // loop's "compacted" and the log's commit, the head would come back
    // without the job at all (its first batches not yet durable either).
    wait_for(Duration::from_secs(30), "the compacted log to be durable", || c.head_log().contains("the job's snapshot is durable").then_some(()));
    c.kill_head();
    c.restart_head(2);
    for (i, h) in heads.iter().enumerate() {
        assert_eq!(h.get_timeout(Duration::from_secs(60)).unwrap(), i as u64 + 5, "chain {i}");
    }
    for (i, s) in sums.iter().enumerate() {
        let want = 200_000 * (i as u64 + 1) + i as u64 + 5;
        assert_eq!(s.get_timeout(Duration::from_secs(60)).unwrap(), want, "sum {i}");
    }
    let log = std::fs::read_to_string(c.home.path().join("head-2.log")).unwrap_or_default();
    let restored = log.lines().find(|l| l.contains("restored the head's state")).unwrap_or_else(|| panic!("no replay:\n{log}"));
    let queued: usize = restored.split("tasks=").nth(1).and_then(|t| t.split_whitespace().next()).and_then(|t| t.parse().ok()).unwrap();
    assert!(queued > 0, "the head died with work left, and got it back from the log: {restored}");
    assert_eq!(c.status()["tasks"]["failed"], 0);
}

#[shoal::remote]
fn slow(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(300));
    x
}

#[test]
fn a_head_restarted_without_its_log_tells_the_driver_its_job_is_gone() {
    let mut c = Cluster::head(&["--heartbeat-timeout", "2"]);
    c.add_worker(&["--num-cpus", "1"]);
    c.connect();
    let pending: Vec<_> = (0..20u64).map(slow::remote).collect();
    c.kill_head();
    // The log goes (a new machine, a wiped disk); the token stays.
    std::fs::remove_file(c.home.path().join("head-data").join("head.redb")).unwrap();
    c.restart_head(2);
    let started = std::time::Instant::now();
    let err = pending[19].get_timeout(Duration::from_secs(50)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("no longer knows job"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(30), "the driver stops retrying at the head's answer, not at its reconnect deadline");
}
