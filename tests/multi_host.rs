//! Faults on real separate hosts: each worker runs in its own network
//! namespace with its own address; the head and this driver run in the
//! root namespace. Hosts are killed (every process SIGKILLed), cut off
//! (link down) past the heartbeat timeout, or started with a wrong token.
//! Figures for the issue notes are printed with `--nocapture`.

mod common;

use common::hosts::Hosts;
use common::*;
use std::collections::HashMap;
use std::process::Child;
use std::time::{Duration, Instant};

#[shoal::remote]
fn work(i: u64) -> (u64, String) {
    std::thread::sleep(Duration::from_millis(1));
    (i * 3, shoal::context().unwrap().node_id)
}

struct HostWorker {
    child: Child,
    home: tempfile::TempDir,
}

impl HostWorker {
    fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("worker.log")).unwrap_or_default()
    }
}

impl Drop for HostWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port(c: &Cluster) -> String {
    c.address.rsplit(':').next().unwrap().to_string()
}

/// Starts a worker on host `i`; with `token`, that token instead of the
/// cluster's.
fn start_worker(c: &Cluster, hosts: &Hosts, i: usize, token: Option<&str>) -> HostWorker {
    let home = tempfile::tempdir().unwrap();
    let addr = format!("{}:{}", hosts.root_ip(i), port(c));
    let token_file = c.token_file();
    let mut args = vec!["start", "--block", "--address", &addr, "--num-cpus", "2"];
    let tf = token_file.to_string_lossy().into_owned();
    match token {
        Some(t) => args.extend(["--token", t]),
        None => args.extend(["--token-file", &tf]),
    }
    let child = hosts.spawn(i, SHOAL, &args, &[("SHOAL_HOME", home.path())], &home.path().join("worker.log"));
    HostWorker { child, home }
}

/// Waits until the worker on host `i` has registered; returns its node id.
fn registered(w: &mut HostWorker) -> String {
    let ready = w.home.path().join("run").join(format!("worker-{}.ready", w.child.id()));
    wait_for(Duration::from_secs(20), "a worker host to register", || {
        if let Ok(Some(status)) = w.child.try_wait() {
            panic!("worker exited ({status}): {}", w.log());
        }
        std::fs::read_to_string(&ready).ok().filter(|s| !s.is_empty())
    })
}

fn three_hosts(c: &Cluster) -> (Hosts, Vec<HostWorker>, Vec<String>) {
    let hosts = Hosts::create(3);
    let mut workers: Vec<HostWorker> = (1..=3).map(|i| start_worker(c, &hosts, i, None)).collect();
    let ids = workers.iter_mut().map(registered).collect();
    (hosts, workers, ids)
}

/// Blocks until `n` of `refs` have finished: the fault strikes mid-job.
fn wait_for_results<T>(refs: &[shoal::ObjectRef<T>], n: usize) {
    for (done, _) in shoal::as_completed(refs.to_vec()).enumerate() {
        if done + 1 == n {
            return;
        }
    }
}

fn retried_tasks(head_log: &str) -> usize {
    head_log
        .lines()
        .filter(|l| l.contains("node marked dead"))
        .filter_map(|l| l.split("tasks=").nth(1).and_then(|t| t.split_whitespace().next()).and_then(|t| t.parse::<usize>().ok()))
        .sum()
}

#[test]
fn killing_a_worker_host_mid_job_loses_nothing() {
    let c = Cluster::head_on("0.0.0.0", &["--heartbeat-timeout", "2"]);
    let (hosts, _workers, ids) = three_hosts(&c);
    c.connect();
    let n = 10_000u64;
    let refs: Vec<_> = (0..n).map(work::remote).collect();
    wait_for_results(&refs, 2_000);
    let killed = Instant::now();
    hosts.kill(2);
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for (i, r) in refs.iter().enumerate() {
        let (v, node) = r.get_timeout(Duration::from_secs(120)).unwrap_or_else(|e| panic!("task {i}: {e}"));
        assert_eq!(v, i as u64 * 3, "task {i}");
        *per_node.entry(node).or_default() += 1;
    }
    let recovered = killed.elapsed();
    let st = c.status();
    // Each result was accepted exactly once by the head, and none failed.
    assert_eq!(st["tasks"]["finished"], n);
    assert_eq!(st["tasks"]["failed"], 0);
    let dead = st["nodes"].as_array().unwrap().iter().find(|x| x["id"] == ids[1].as_str()).unwrap()["alive"].clone();
    assert_eq!(dead, false, "the killed host is dead");
    let retried = retried_tasks(&c.head_log());
    assert!(retried > 0, "the dead host's tasks were retried elsewhere");
    eprintln!("kill: {n} tasks, {retried} retried after the host died, job done {recovered:?} after the kill; per node {per_node:?}");
}

#[test]
fn a_partitioned_worker_is_replaced_then_rejoins() {
    let c = Cluster::head_on("0.0.0.0", &["--heartbeat-timeout", "2"]);
    let (hosts, _workers, ids) = three_hosts(&c);
    c.connect();
    let n = 4_000u64;
    let refs: Vec<_> = (0..n).map(work::remote).collect();
    wait_for_results(&refs, 500);
    let cut = Instant::now();
    hosts.cut(1);
    wait_for(Duration::from_secs(10), "the cut-off host to be declared dead", || (c.node(&ids[0])?["alive"] == false).then_some(()));
    let detected = cut.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    hosts.heal(1);
    let healed = Instant::now();
    for (i, r) in refs.iter().enumerate() {
        let (v, _) = r.get_timeout(Duration::from_secs(120)).unwrap_or_else(|e| panic!("task {i}: {e}"));
        assert_eq!(v, i as u64 * 3);
    }
    let st = c.status();
    assert_eq!(st["tasks"]["finished"], n, "no result counted twice, stale ones fenced off");
    assert_eq!(st["tasks"]["failed"], 0);
    wait_for(Duration::from_secs(30), "the healed host to rejoin under its id", || (c.node(&ids[0])?["alive"] == true).then_some(()));
    let rejoined = healed.elapsed();
    // And it takes work again.
    let more: Vec<_> = (0..600u64).map(work::remote).collect();
    let nodes: std::collections::HashSet<String> = more.iter().map(|r| r.get().unwrap().1).collect();
    assert!(nodes.contains(&ids[0]), "the rejoined node runs tasks again: {nodes:?}");
    let retried = retried_tasks(&c.head_log());
    eprintln!("partition: {n} tasks, {retried} retried; declared dead {detected:?} after the cut, rejoined {rejoined:?} after healing");
}

#[test]
fn a_worker_host_with_a_wrong_token_is_refused_and_the_cluster_is_unaffected() {
    let c = Cluster::head_on("0.0.0.0", &[]);
    let hosts = Hosts::create(2);
    let mut good = start_worker(&c, &hosts, 1, None);
    let good_id = registered(&mut good);
    let mut bad = start_worker(&c, &hosts, 2, Some("not-the-cluster-token"));
    let status = wait_for(Duration::from_secs(20), "the refused worker to exit", || bad.child.try_wait().ok().flatten());
    assert!(!status.success());
    assert!(bad.log().contains("refused this worker") && bad.log().contains("wrong cluster token"), "{}", bad.log());
    let head_log = c.head_log();
    assert!(
        head_log.lines().any(|l| l.contains("refused a request with a wrong cluster token") && l.contains(&hosts.host_ip(2))),
        "the head logs the refusal with the host's address:\n{head_log}"
    );
    let st = c.status();
    let nodes = st["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["id"], good_id.as_str());
    assert_eq!(nodes[0]["address"], hosts.host_ip(1).as_str(), "the head sees the host's own address");
    c.connect();
    let vals: Vec<u64> = (0..100u64).map(work::remote).map(|r| r.get().unwrap().0).collect();
    assert_eq!(vals, (0..100u64).map(|i| i * 3).collect::<Vec<_>>());
}
