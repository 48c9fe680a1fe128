//! The shared-memory object store, end to end: 256 MiB values put, read
//! back and passed to tasks, on the embedded cluster and across worker
//! processes (pulled worker to worker); freeing, spilling, limits, and
//! concurrent use.

mod common;

use common::Cluster;
use shoal::{Buffer, TaskError};
use std::time::Duration;

const MIB: usize = 1 << 20;

/// `n` bytes of a pattern that depends on `seed` (not all one byte, so a
/// misplaced or stale chunk changes the digest).
fn pattern(n: usize, seed: u64) -> Buffer {
    let mut v = vec![0u8; n];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    Buffer::from(v)
}

fn digest(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

#[shoal::remote]
fn digest_of(data: Buffer) -> (usize, String) {
    (data.len(), digest(&data))
}

#[shoal::remote]
fn make(n: usize, seed: u64) -> Buffer {
    pattern(n, seed)
}

#[shoal::remote(resources(a = 1))]
fn make_on_a(n: usize, seed: u64) -> Buffer {
    pattern(n, seed)
}

#[shoal::remote(resources(b = 1))]
fn digest_on_b(data: Buffer) -> (String, String) {
    (digest(&data), shoal::context().unwrap().node_id)
}

#[shoal::remote(resources(m = 1))]
fn digest_on_m(data: Buffer) -> (String, String) {
    (digest(&data), shoal::context().unwrap().node_id)
}

#[shoal::remote(resources(a = 1))]
fn ramp_on_a(n: usize) -> Buffer {
    Buffer::from_values((0..n).map(|i| i as f64).collect::<Vec<f64>>())
}

#[shoal::remote(resources(b = 1))]
fn sum_on_b(data: Buffer) -> f64 {
    data.values::<f64>().expect("aligned on the pulling node too").iter().sum()
}

#[shoal::remote(resources(a = 1))]
fn digest_on_a(data: Buffer) -> (String, String) {
    (digest(&data), shoal::context().unwrap().node_id)
}

#[shoal::remote]
fn sum_in_place(data: Buffer) -> (f64, bool) {
    // Read as f64 where it lies in shared memory: no copy.
    let xs = data.values::<f64>().expect("stored values are aligned for typed views");
    (xs.iter().sum(), shoal::context().is_some())
}

#[shoal::remote]
fn ramp(n: usize) -> Buffer {
    Buffer::from_values((0..n).map(|i| i as f64).collect::<Vec<f64>>())
}

fn embedded(store_bytes: u64) {
    let home = tempfile::tempdir().unwrap();
    // SAFETY: single-threaded at this point of the test process.
    unsafe { std::env::set_var("SHOAL_HOME", home.keep()) };
    shoal::init_blocking_with(shoal::InitConfig::default().local().object_store_memory(store_bytes)).expect("embedded cluster");
}

fn store_usage() -> shoal::status::StoreUsage {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(shoal::cluster_status()).unwrap().nodes[0].store
}

/// Waits until the store usage (reported with heartbeats) satisfies `f`.
fn wait_usage(what: &str, f: impl Fn(&shoal::status::StoreUsage) -> bool) -> shoal::status::StoreUsage {
    common::wait_for(Duration::from_secs(10), what, || Some(store_usage()).filter(|u| f(u)))
}

#[test]
fn embedded_put_get_and_task_on_256_mib_are_byte_identical_and_dropping_frees_the_memory() {
    embedded(1 << 30);
    let before = wait_usage("the first heartbeat", |u| u.capacity == 1 << 30);
    let data = pattern(256 * MIB, 1);
    let want = digest(&data);
    let r = shoal::put(data).unwrap();
    wait_usage("the put to show in the store", |u| u.used >= (256 * MIB) as u64);
    let a = r.get().unwrap();
    let b = r.get().unwrap();
    assert_eq!(digest(&a), want, "get returns the bytes put");
    assert_eq!(a.as_ptr(), b.as_ptr(), "get is zero-copy: both reads borrow the same shared memory");
    assert_eq!(digest_of::remote(&r).get().unwrap(), (256 * MIB, want.clone()), "a task sees the same bytes");
    // A large value passed directly is stored, not sent inline.
    assert_eq!(digest_of::remote(pattern(3 * MIB, 2)).get().unwrap().1, digest(&pattern(3 * MIB, 2)));
    // A task's large result is stored by the executor and read in place.
    let made = make::remote(64 * MIB, 3);
    assert_eq!(digest(&made.get().unwrap()), digest(&pattern(64 * MIB, 3)));
    assert_eq!(digest_of::remote(&made).get().unwrap().1, digest(&pattern(64 * MIB, 3)), "and passed on to another task");
    // Numeric arrays: viewed as f64 in place by the driver and by tasks,
    // whether put by the driver or made by a task.
    let n = 4 << 20;
    let want: f64 = (0..n).map(|i| i as f64).sum();
    let arr = shoal::put(Buffer::from_values((0..n).map(|i| i as f64).collect::<Vec<f64>>())).unwrap();
    let got = arr.get().unwrap();
    assert_eq!(got.values::<f64>().map(|x| x.iter().sum::<f64>()), Some(want), "the driver views the array in place");
    assert_eq!(sum_in_place::remote(&arr).get().unwrap(), (want, true));
    let made_arr = ramp::remote(n);
    assert_eq!(made_arr.get().unwrap().values::<f64>().map(|x| x.len()), Some(n));
    assert_eq!(sum_in_place::remote(&made_arr).get().unwrap().0, want);
    drop((got, arr, made_arr));
    drop((a, b, r, made));
    let after = wait_usage("the store to return to its earlier level", |u| u.used == before.used);
    assert_eq!(after.objects, before.objects);
}

#[test]
fn a_full_store_spills_reads_everything_back_and_refuses_what_can_never_fit() {
    embedded(64 << 20);
    let refs: Vec<_> = (0..6).map(|i| shoal::put(pattern(16 * MIB, 100 + i)).unwrap()).collect();
    let u = wait_usage("objects spilled to disk", |u| u.spilled_objects > 0);
    assert!(u.spilled_bytes >= (16 * MIB) as u64, "{u:?}");
    assert!(u.used <= 64 << 20);
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(digest(&r.get().unwrap()), digest(&pattern(16 * MIB, 100 + i as u64)), "object {i} read back after spilling");
        assert_eq!(digest_of::remote(r).get().unwrap().1, digest(&pattern(16 * MIB, 100 + i as u64)), "a task reads object {i}");
    }
    // Over the whole store: a clear error, and nothing stored is lost.
    match shoal::put(pattern(80 * MIB, 7)) {
        Err(shoal::Error::Task(TaskError::ObjectStoreFull { message })) => assert!(message.contains("object store full"), "{message}"),
        other => panic!("expected ObjectStoreFull, got {:?}", other.map(|r| r.id())),
    }
    match make::remote(80 * MIB, 8).get() {
        Err(TaskError::ObjectStoreFull { message }) => assert!(message.contains("no room"), "{message}"),
        other => panic!("expected ObjectStoreFull for an oversized result, got {:?}", other.map(|b| b.len())),
    }
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(digest(&r.get().unwrap()), digest(&pattern(16 * MIB, 100 + i as u64)));
    }
    drop(refs);
    wait_usage("spill files removed once the objects are dropped", |u| u.spilled_bytes == 0 && u.used == 0);
}

#[test]
fn concurrent_puts_gets_and_tasks_do_not_corrupt_data() {
    embedded(512 << 20);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || {
                let mut refs = Vec::new();
                for i in 0..6u64 {
                    let seed = t * 1000 + i;
                    let n = (1 + (seed % 4) as usize) * MIB + (seed as usize * 4099) % 8192;
                    let r = shoal::put(pattern(n, seed)).unwrap();
                    refs.push((r.clone(), digest_of::remote(&r), make::remote(n, seed), seed, n));
                }
                for (r, task, made, seed, n) in refs {
                    let want = digest(&pattern(n, seed));
                    assert_eq!(digest(&r.get().unwrap()), want, "put {seed}");
                    assert_eq!(task.get().unwrap(), (n, want.clone()), "task on put {seed}");
                    assert_eq!(digest(&made.get().unwrap()), want, "result {seed}");
                }
            });
        }
    });
}

/// Objects worker `i` pulled from peers by `path` (its own `/metrics`).
fn pulls(c: &Cluster, i: usize, path: &str) -> f64 {
    let node = c.node(&c.workers[i].node_id).expect("the worker is known");
    let url = format!("http://{}/metrics", node["metrics_address"].as_str().expect("the worker serves /metrics"));
    let (status, text) = common::http::http_get(&url, &[("Authorization", &format!("Bearer {}", c.token))]);
    assert_eq!(status, 200, "{text}");
    common::http::sample(&common::http::parse_prometheus(&text), &format!("shoal_worker_transfers_total{{outcome=\"ok\",path=\"{path}\"}}"))
}

#[test]
fn objects_move_worker_to_worker_when_a_task_runs_on_another_node() {
    let mut c = Cluster::head(&[]);
    let a = c.add_worker(&["--num-cpus", "1", "--resources", "a=1"]);
    let b = c.add_worker(&["--num-cpus", "1", "--resources", "b=1"]);
    c.connect();
    // Made on node a, consumed on node b: b copies it from a's memory (the
    // two workers share this machine), no socket in between.
    let made = make_on_a::remote(256 * MIB, 11);
    let want = digest(&pattern(256 * MIB, 11));
    let (got, node) = digest_on_b::remote(&made).get().unwrap();
    assert_eq!(got, want, "the task on the other node sees the same bytes");
    assert_eq!(node, c.workers[b].node_id);
    assert_eq!((pulls(&c, b, "shared_memory"), pulls(&c, b, "network")), (1.0, 0.0), "a same-machine pull maps the holder's store");
    // The driver is off the workers' processes: it pulls the result too,
    // awaited (the pull runs on Shoal's runtime) or blocking.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert_eq!(digest(&rt.block_on(made.value()).unwrap()), want, "the driver awaits it byte-identical");
    assert_eq!(digest(&made.get().unwrap()), want, "and gets it again");
    // A put from a remote driver is streamed to a worker's store, and
    // tasks on either node read it.
    let data = pattern(256 * MIB, 12);
    let want_put = digest(&data);
    let r = shoal::put(data).unwrap();
    let (first, second) = (r.get().unwrap(), r.get().unwrap());
    assert_eq!(digest(&first), want_put);
    // This driver runs on the workers' machine: it maps a worker's store
    // and reads the object in place (no copy, no transfer).
    assert_eq!(first.as_ptr(), second.as_ptr(), "a driver beside a worker gets stored values without a copy");
    drop((first, second));
    assert_eq!(digest_on_a::remote(&r).get().unwrap(), (want_put.clone(), c.workers[a].node_id.clone()));
    assert_eq!(digest_on_b::remote(&r).get().unwrap(), (want_put, c.workers[b].node_id.clone()));
    let store_of = |i: usize| serde_json::from_value::<shoal::status::StoreUsage>(c.node(&c.workers[i].node_id).unwrap()["store"].clone()).unwrap();
    common::wait_for(Duration::from_secs(10), "both nodes to hold copies", || {
        (store_of(a).used >= (512 * MIB) as u64 && store_of(b).used >= (512 * MIB) as u64).then_some(())
    });
    // A numeric array made on a, summed in place on b (pulled copy) and
    // viewed by this driver.
    let n = 1 << 20;
    let arr = ramp_on_a::remote(n);
    assert_eq!(sum_on_b::remote(&arr).get().unwrap(), (0..n).map(|i| i as f64).sum::<f64>());
    assert_eq!(arr.get().unwrap().values::<f64>().map(|x| x[n - 1]), Some((n - 1) as f64));
    drop((made, r, arr));
    common::wait_for(Duration::from_secs(10), "every copy to be freed on both nodes", || (store_of(a).used == 0 && store_of(b).used == 0).then_some(()));
}

#[test]
fn a_same_machine_holder_that_dies_after_the_copy_leaves_the_reader_whole_and_the_network_path_still_works() {
    let mut c = Cluster::head(&["--heartbeat-timeout", "2"]);
    let a = c.add_worker(&["--num-cpus", "1", "--resources", "a=1"]);
    // b streams over the network, as between hosts (SHOAL_MAP_PEER_STORES=0).
    let b = c.add_worker_env(&["--num-cpus", "1", "--resources", "b=1"], &[("SHOAL_MAP_PEER_STORES", std::path::Path::new("0"))]);
    let m = c.add_worker(&["--num-cpus", "1", "--resources", "m=1"]);
    c.connect();
    let made = make_on_a::remote(64 * MIB, 21);
    let want = digest(&pattern(64 * MIB, 21));
    assert_eq!(digest_on_b::remote(&made).get().unwrap(), (want.clone(), c.workers[b].node_id.clone()));
    assert_eq!((pulls(&c, b, "network"), pulls(&c, b, "shared_memory")), (1.0, 0.0), "mapping turned off: streamed");
    assert_eq!(digest_on_m::remote(&made).get().unwrap(), (want.clone(), c.workers[m].node_id.clone()));
    assert_eq!(pulls(&c, m, "shared_memory"), 1.0);
    // The holder dies (SIGKILL). The copies b and m took are theirs: tasks
    // there still read the object, byte-identical, with a gone.
    c.kill_worker(a);
    assert_eq!(digest_on_m::remote(&made).get().unwrap(), (want.clone(), c.workers[m].node_id.clone()));
    assert_eq!(digest_on_b::remote(&made).get().unwrap(), (want, c.workers[b].node_id.clone()));
}

/// A large value whose encoding goes wrong after its size was taken: the
/// executor has been given space in the store by then.
pub struct FailsWhileWriting {
    data: Vec<u8>,
    how: u8,
    calls: std::sync::atomic::AtomicU32,
}

impl serde::Serialize for FailsWhileWriting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
            match self.how {
                0 => panic!("boom while encoding"),
                _ => std::process::abort(),
            }
        }
        s.serialize_bytes(&self.data)
    }
}

impl<'de> serde::Deserialize<'de> for FailsWhileWriting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let b = Buffer::deserialize(d)?;
        Ok(FailsWhileWriting { data: b.to_vec(), how: 0, calls: Default::default() })
    }
}

#[shoal::remote(max_retries = 0)]
fn fails_while_writing(how: u8) -> FailsWhileWriting {
    FailsWhileWriting { data: vec![7; 8 << 20], how, calls: Default::default() }
}

#[test]
fn a_result_that_fails_half_written_leaves_nothing_in_the_store() {
    embedded(256 << 20);
    let before = wait_usage("the first heartbeat", |u| u.capacity > 0);
    // A panic while encoding into the store: a typed error, space back.
    match fails_while_writing::remote(0).get() {
        Err(TaskError::Panicked { message, .. }) => assert!(message.contains("boom while encoding"), "{message}"),
        other => panic!("expected the encoding panic, got {:?}", other.map(|v| v.data.len())),
    }
    std::thread::sleep(Duration::from_millis(1200));
    wait_usage("the space of the failed result to be given back", |u| u.used == before.used && u.objects == before.objects);
    // The executor dies while writing: the unsealed object is reclaimed and
    // nobody ever sees it.
    match fails_while_writing::remote(1).get() {
        Err(TaskError::WorkerDied { .. }) => {}
        other => panic!("expected WorkerDied, got {:?}", other.map(|v| v.data.len())),
    }
    // Usage comes with heartbeats (every 0.5 s): let two pass first.
    std::thread::sleep(Duration::from_millis(1200));
    wait_usage("the half-written objects to be reclaimed", |u| u.used == before.used && u.objects == before.objects);
    assert_eq!(digest_of::remote(pattern(1 << 20, 3)).get().unwrap().0, 1 << 20, "still serving");
}
