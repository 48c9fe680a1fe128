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
fn produce(n: usize, seed: u64) -> shoal::Buffer {
    pattern(n, seed)
}

#[shoal::remote(resources(a = 1))]
fn produce_on_a(n: usize, seed: u64) -> shoal::Buffer {
    pattern(n, seed)
}

#[shoal::remote(resources(b = 1))]
fn digest_on_b(data: shoal::Buffer) -> (String, String) {
    (digest(&data), shoal::context().unwrap().node_id)
}

#[shoal::remote]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[shoal::remote]
fn digest_after(data: shoal::Buffer, _gate: u64) -> (String, String) {
    (digest(&data), shoal::context().unwrap().node_id)
}

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
    start_worker_with(c, hosts, i, token, &[])
}

fn start_worker_with(c: &Cluster, hosts: &Hosts, i: usize, token: Option<&str>, extra: &[&str]) -> HostWorker {
    let home = tempfile::tempdir().unwrap();
    let addr = format!("{}:{}", hosts.root_ip(i), port(c));
    let token_file = c.token_file();
    let mut args = vec!["start", "--block", "--address", &addr, "--num-cpus", "2"];
    let tf = token_file.to_string_lossy().into_owned();
    match token {
        Some(t) => args.extend(["--token", t]),
        None => args.extend(["--token-file", &tf]),
    }
    args.extend(extra);
    let env = [("SHOAL_HOME", home.path()), ("SHOAL_OBJECT_STORE_PREFAULT", std::path::Path::new("0"))];
    let child = hosts.spawn(i, SHOAL, &args, &env, &home.path().join("worker.log"));
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
        head_log.lines().any(|l| l.contains("wrong cluster token") && l.contains(&hosts.host_ip(2))),
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

#[test]
fn large_objects_move_directly_between_worker_hosts() {
    let c = Cluster::head_on("0.0.0.0", &[]);
    let hosts = Hosts::create(2);
    let mut wa = start_worker_with(&c, &hosts, 1, None, &["--resources", "a=1"]);
    let mut wb = start_worker_with(&c, &hosts, 2, None, &["--resources", "b=1"]);
    let (ida, idb) = (registered(&mut wa), registered(&mut wb));
    let node = |id: &str| c.node(id).unwrap();
    assert_eq!(node(&ida)["object_address"].as_str().unwrap().rsplit_once(':').unwrap().0, hosts.host_ip(1), "peers reach a's store at its own address");
    c.connect();
    let n = 64 << 20;
    let made = produce_on_a::remote(n, 5);
    let t = Instant::now();
    let (d, on) = digest_on_b::remote(&made).get_timeout(Duration::from_secs(60)).unwrap();
    let moved = t.elapsed();
    assert_eq!(d, digest(&pattern(n, 5)), "host b read the bytes host a made");
    assert_eq!(on, idb);
    // b pulled its own copy from a (not through the head), and the
    // driver (in the root namespace) reads it too.
    let used_b = serde_json::from_value::<shoal::status::StoreUsage>(node(&idb)["store"].clone()).unwrap().used;
    wait_for(Duration::from_secs(5), "b's store to report the pulled copy", || {
        (serde_json::from_value::<shoal::status::StoreUsage>(node(&idb)["store"].clone()).unwrap().used >= n as u64).then_some(())
    });
    assert_eq!(digest(&made.get().unwrap()), digest(&pattern(n, 5)));
    eprintln!("transfer: 64 MiB made on host a, task on host b done in {moved:?} (b's store held {used_b} bytes at first look)");
}

#[test]
fn killing_the_host_with_the_only_copy_of_an_intermediate_object_rebuilds_it() {
    let c = Cluster::head_on("0.0.0.0", &["--heartbeat-timeout", "2"]);
    let hosts = Hosts::create(3);
    let mut first = start_worker(&c, &hosts, 1, None);
    let first_id = registered(&mut first);
    c.connect();
    let n = 32 << 20;
    // The intermediate is made while host 1 is the only node: its only
    // copy is there.
    let inter: Vec<_> = (0..4u64).map(|s| produce::remote(n, s)).collect();
    let (ready, _) = shoal::wait_blocking(&inter, inter.len(), Some(Duration::from_secs(60)));
    assert_eq!(ready.len(), inter.len());
    let mut others: Vec<HostWorker> = (2..=3).map(|i| start_worker(&c, &hosts, i, None)).collect();
    for w in &mut others {
        registered(w);
    }
    // Consumers wait on a gate, so none has read its input yet when the
    // host holding every input dies.
    let gate = sleep_ms::remote(1500);
    let finals: Vec<_> = inter.iter().map(|r| digest_after::remote(r, &gate)).collect();
    let killed = Instant::now();
    hosts.kill(1);
    for (s, f) in finals.iter().enumerate() {
        let (d, node) = f.get_timeout(Duration::from_secs(120)).unwrap_or_else(|e| panic!("consumer {s}: {e}"));
        assert_eq!(d, digest(&pattern(n, s as u64)), "consumer {s} saw the rebuilt bytes");
        assert_ne!(node, first_id);
    }
    let recovered = killed.elapsed();
    // The driver's own refs follow the rebuilt copies.
    assert_eq!(digest(&inter[0].get().unwrap()), digest(&pattern(n, 0)));
    let log = c.head_log();
    let rebuilt = log.lines().filter(|l| l.contains("rebuilding a lost object")).count();
    assert!(rebuilt >= inter.len(), "every lost intermediate was rebuilt from lineage:\n{log}");
    assert_eq!(c.status()["tasks"]["failed"], 0);
    eprintln!("lineage: {} consumers, {rebuilt} objects rebuilt after the host died, job done {recovered:?} after the kill", finals.len());
}

#[test]
fn killing_the_head_mid_job_and_restarting_it_loses_nothing() {
    let mut c = Cluster::head_on("0.0.0.0", &["--heartbeat-timeout", "2"]);
    let (_hosts, _workers, _ids) = three_hosts(&c);
    c.connect();
    let n = 10_000u64;
    // Large intermediates live in the workers' stores, not in the head.
    let inter: Vec<_> = (0..3u64).map(|s| produce::remote(8 << 20, s)).collect();
    let refs: Vec<_> = (0..n).map(work::remote).collect();
    wait_for_results(&refs, 2_000);
    let killed = Instant::now();
    c.kill_head();
    // Work submitted while the head is down waits in the driver.
    let during: Vec<_> = (0..100u64).map(|i| work::remote(n + i)).collect();
    std::thread::sleep(Duration::from_millis(500));
    c.restart_head(2);
    let back = killed.elapsed();
    let consumers: Vec<_> = inter.iter().map(|r| digest_after::remote(r, 0u64)).collect();
    for (i, r) in refs.iter().chain(&during).enumerate() {
        let (v, _) = r.get_timeout(Duration::from_secs(120)).unwrap_or_else(|e| panic!("task {i}: {e}"));
        assert_eq!(v, i as u64 * 3, "task {i}");
    }
    let done = killed.elapsed();
    for (s, r) in consumers.iter().enumerate() {
        let (d, _) = r.get_timeout(Duration::from_secs(60)).unwrap_or_else(|e| panic!("consumer {s}: {e}"));
        assert_eq!(d, digest(&pattern(8 << 20, s as u64)), "stored object {s} survived the head's restart");
    }
    let st = c.status();
    assert_eq!(st["tasks"]["failed"], 0);
    let log = std::fs::read_to_string(c.home.path().join("head-2.log")).unwrap_or_default();
    let restored = log.lines().find(|l| l.contains("restored the head's state")).unwrap_or("").to_string();
    assert!(!restored.is_empty(), "the restarted head replayed its log:\n{log}");
    eprintln!("head restart: {} tasks, head back {back:?} after the kill, every result in {done:?}; {restored}", n + 100);
}

#[shoal::remote]
fn ones_gib(mib: usize) -> shoal::Buffer {
    shoal::Buffer::from(vec![1u8; mib << 20])
}

#[shoal::remote]
fn length_here(data: shoal::Buffer) -> (usize, String) {
    (data.len(), shoal::context().unwrap().node_id)
}

/// One 32 MiB object read at once by a task on each of six other hosts:
/// the readers do not all pull it from the host that made it; some pull
/// from readers whose copy was still arriving (the head sends them there,
/// a tree instead of a star), and every read gets the right bytes.
#[test]
fn a_broadcast_to_many_hosts_pulls_from_copies_as_they_arrive() {
    let readers = 6;
    let c = Cluster::head_on("0.0.0.0", &[]);
    let hosts = Hosts::create(readers + 1);
    let mut workers: Vec<HostWorker> =
        (1..=readers + 1).map(|i| start_worker_with(&c, &hosts, i, None, &["--resources", &format!("h{i}=1"), "--object-store-memory", "256MiB"])).collect();
    let ids: Vec<String> = workers.iter_mut().map(registered).collect();
    c.connect();
    let mib = 32;
    let made = ones_gib::options().resources(&[("h1", 1.0)]).remote(mib);
    let _ = shoal::wait_blocking(std::slice::from_ref(&made), 1, Some(Duration::from_secs(60)));
    let names: Vec<String> = (2..=readers + 1).map(|i| format!("h{i}")).collect();
    let reads: Vec<_> = names.iter().map(|h| length_here::options().resources(&[(h.as_str(), 1.0)]).remote(&made)).collect();
    let got = shoal::get_all_blocking(&reads).unwrap();
    for (i, (n, on)) in got.iter().enumerate() {
        assert_eq!(*n, mib << 20, "read {i} got the whole object");
        assert_eq!(*on, ids[i + 1], "read {i} ran on its host");
    }
    // Where each reader's copy came from, as its worker logged it.
    let source = format!("{}:", hosts.host_ip(1));
    let from: Vec<String> = workers[1..]
        .iter()
        .map(|w| {
            let log = w.log();
            let line = log.lines().find(|l| l.contains("pulled object")).unwrap_or_else(|| panic!("a reader logged its pull:\n{log}")).to_string();
            line.split_whitespace().find_map(|f| f.strip_prefix("from=")).unwrap_or_default().to_string()
        })
        .collect();
    let relayed = from.iter().filter(|f| !f.starts_with(&source)).count();
    eprintln!("broadcast to {readers} hosts: the source at {source} served {}, other readers {relayed}: {from:?}", readers - relayed);
    assert!(relayed >= 1, "some readers pulled from other readers, not all from the source {source}: {from:?}");
    assert!(
        from.iter().all(|f| (1..=readers + 1).any(|i| f.starts_with(&format!("{}:", hosts.host_ip(i))))),
        "every pull came from a host of the cluster: {from:?}"
    );
}

/// CPU seconds (user + system) process `pid` has used.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (11 and 12 after the name).
    (ticks(11) + ticks(12)) / 100.0
}

/// Figures for the notes (not run by default: it moves gigabytes): one
/// object of `SHOAL_BROADCAST_MIB` MiB (1024) made on host 1 and read at
/// once by a task on each of `SHOAL_BROADCAST_HOSTS` (4) other hosts.
/// Prints the time, the aggregate rate and the workers' CPU per GB moved.
///
///     SHOAL_BROADCAST_HOSTS=8 cargo nextest run -p shoal-cli --test multi_host broadcast --run-ignored only --no-capture
#[test]
#[ignore]
fn broadcast_figures() {
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (readers, mib) = (env("SHOAL_BROADCAST_HOSTS", 4), env("SHOAL_BROADCAST_MIB", 1024));
    let c = Cluster::head_on("0.0.0.0", &[]);
    let hosts = Hosts::create(readers + 1);
    // Room for two rounds' objects; past 4 readers one (the machine's
    // memory is shared by every host's store).
    let store = format!("{}MiB", if readers <= 4 { mib * 2 + 256 } else { mib + 256 });
    let mut workers: Vec<HostWorker> =
        (1..=readers + 1).map(|i| start_worker_with(&c, &hosts, i, None, &["--resources", &format!("h{i}=1"), "--object-store-memory", &store])).collect();
    let ids: Vec<String> = workers.iter_mut().map(registered).collect();
    c.connect();
    // SHOAL_BROADCAST_ROUNDS: a fresh object each round (to profile).
    for _ in 0..env("SHOAL_BROADCAST_ROUNDS", 1) {
        let made = ones_gib::options().resources(&[("h1", 1.0)]).remote(mib);
        let _ = shoal::wait_blocking(std::slice::from_ref(&made), 1, Some(Duration::from_secs(120)));
        let cpu0: f64 = workers.iter().map(|w| cpu_s(w.child.id())).sum();
        let t = Instant::now();
        let names: Vec<String> = (2..=readers + 1).map(|i| format!("h{i}")).collect();
        let reads: Vec<_> = names.iter().map(|h| length_here::options().resources(&[(h.as_str(), 1.0)]).remote(&made)).collect();
        let got = shoal::get_all_blocking(&reads).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let cpu = workers.iter().map(|w| cpu_s(w.child.id())).sum::<f64>() - cpu0;
        let mut on: Vec<&String> = got
            .iter()
            .map(|(n, id)| {
                assert_eq!(*n, mib << 20);
                id
            })
            .collect();
        on.sort();
        on.dedup();
        assert_eq!(on.len(), readers, "one read per host");
        assert!(!on.contains(&&ids[0]));
        let gb = (mib as f64 * readers as f64) * 1.048576e6 / 1e9;
        eprintln!(
            "broadcast: {mib} MiB to {readers} namespace hosts in {secs:.2} s ({:.2} GB/s in all), workers' CPU {cpu:.2} s ({:.2} CPU-s per GB)",
            gb / secs,
            cpu / gb
        );
    }
}
