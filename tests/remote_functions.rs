//! Remote functions end to end on a real cluster: a head and two worker
//! processes started by the CLI, this test binary as the driver (workers
//! run it as their executors).

mod common;

use common::*;
use shoal::{ObjectRef, TaskError};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[shoal::remote]
fn square(x: u64) -> (u64, String) {
    (x * x, shoal::context().unwrap().node_id)
}

#[shoal::remote]
fn leaf(x: u64) -> u64 {
    x
}

#[shoal::remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[shoal::remote]
fn fails_on(x: u64, bad: u64) -> u64 {
    if x == bad {
        panic!("leaf {x} is bad");
    }
    x
}

#[shoal::remote(resources(gpu = 1))]
fn on_gpu() -> String {
    shoal::context().unwrap().node_id
}

#[shoal::remote(resources(gpu = 9))]
fn on_nine_gpus() -> u32 {
    9
}

#[shoal::remote]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Marks that it started by creating `dir/tag`, then sleeps.
#[shoal::remote]
fn touch_then_sleep(dir: String, tag: u64, ms: u64) -> u64 {
    std::fs::write(format!("{dir}/{tag}"), b"started").unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    tag
}

#[shoal::remote(max_retries = 1)]
fn abort_process() -> u32 {
    std::process::abort()
}

static CALLS: AtomicU64 = AtomicU64::new(0);

/// Counts calls in this executor process.
#[shoal::remote]
fn bump() -> u64 {
    CALLS.fetch_add(1, Ordering::SeqCst) + 1
}

#[shoal::remote]
async fn async_double(x: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(1)).await;
    x * 2
}

fn two_worker_cluster(a: &[&str], b: &[&str]) -> Cluster {
    Cluster::connected(&[a, b])
}

#[test]
fn ten_thousand_tasks_return_correct_results_from_both_nodes() {
    let c = two_worker_cluster(&["--num-cpus", "2"], &["--num-cpus", "2"]);
    let refs: Vec<_> = (0..10_000u64).map(square::remote).collect();
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for (i, r) in refs.iter().enumerate() {
        let (v, node) = r.get().unwrap();
        assert_eq!(v, (i as u64) * (i as u64));
        *per_node.entry(node).or_default() += 1;
    }
    let ids: HashSet<String> = c.workers.iter().map(|w| w.node_id.clone()).collect();
    assert_eq!(per_node.keys().cloned().collect::<HashSet<_>>(), ids, "both nodes ran tasks: {per_node:?}");
    let st = c.status();
    assert_eq!(st["tasks"]["finished"], 10_000);
    assert_eq!(st["tasks"]["failed"], 0);
    assert_eq!(st["tasks"]["queued"], 0);
}

#[test]
fn tree_reduction_and_failure_propagation() {
    let _c = two_worker_cluster(&["--num-cpus", "2"], &["--num-cpus", "1"]);
    let mut level: Vec<ObjectRef<u64>> = (0..1024u64).map(leaf::remote).collect();
    while level.len() > 1 {
        level = level.chunks(2).map(|p| add::remote(&p[0], &p[1])).collect();
    }
    assert_eq!(level[0].get().unwrap(), 1023 * 1024 / 2);

    // One bad leaf: every task downstream fails with the leaf's panic.
    let leaves: Vec<ObjectRef<u64>> = (0..8u64).map(|x| fails_on::remote(x, 5)).collect();
    let mut level = leaves;
    while level.len() > 1 {
        level = level.chunks(2).map(|p| add::remote(&p[0], &p[1])).collect();
    }
    match level[0].get() {
        Err(TaskError::Panicked { message, function, .. }) => {
            assert_eq!(message, "leaf 5 is bad");
            assert!(function.ends_with("fails_on"), "{function}");
        }
        other => panic!("expected the leaf's panic, got {other:?}"),
    }
}

#[test]
fn a_panic_is_a_typed_error_and_the_cluster_keeps_serving() {
    let c = two_worker_cluster(&["--num-cpus", "1"], &["--num-cpus", "1"]);
    let err = fails_on::remote(3, 3).get().unwrap_err();
    match &err {
        TaskError::Panicked { message, location, node, .. } => {
            assert_eq!(message, "leaf 3 is bad");
            assert!(location.contains("remote_functions.rs"), "{location}");
            assert!(c.workers.iter().any(|w| &w.node_id == node));
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert!(err.to_string().contains("panicked at") && err.to_string().contains("leaf 3 is bad"), "{err}");
    let vals: Vec<u64> = (0..100u64).map(|x| fails_on::remote(x, 1000)).map(|r| r.get().unwrap()).collect();
    assert_eq!(vals, (0..100).collect::<Vec<_>>());
    // An executor that dies outright is replaced; the task is retried,
    // then reported as WorkerDied.
    match abort_process::remote().get() {
        Err(TaskError::WorkerDied { attempts, message, .. }) => {
            assert_eq!(attempts, 2, "max_retries = 1");
            assert!(message.contains("earlier: attempt 1 on node"), "the error carries the history: {message}");
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert_eq!(leaf::remote(7).get().unwrap(), 7, "still serving after executor deaths");
    assert_eq!(async_double::remote(21).get().unwrap(), 42, "async remote functions run too");
}

#[test]
fn resources_decide_placement() {
    let c = two_worker_cluster(&["--num-cpus", "2"], &["--num-cpus", "2", "--resources", "gpu=1"]);
    let gpu_node = c.workers[1].node_id.clone();
    let refs: Vec<_> = (0..20).map(|_| on_gpu::remote()).collect();
    for r in refs {
        assert_eq!(r.get().unwrap(), gpu_node);
    }
    match on_nine_gpus::remote().get_timeout(Duration::from_secs(10)) {
        Err(TaskError::Unschedulable { message, .. }) => assert!(message.contains("gpu=9"), "{message}"),
        other => panic!("expected Unschedulable, got {other:?}"),
    }
    // Per call: the same function, placed by the call's own resources.
    let refs: Vec<_> = (0..10).map(|_| whose_node::options().resources(&[("gpu", 1.0)]).remote()).collect();
    for r in refs {
        assert_eq!(r.get().unwrap(), gpu_node, "a call asking for a GPU runs where there is one");
    }
    match whose_node::options().num_cpus(16.0).remote().get_timeout(Duration::from_secs(10)) {
        Err(TaskError::Unschedulable { message, .. }) => assert!(message.contains("cpus=16"), "{message}"),
        other => panic!("expected Unschedulable, got {other:?}"),
    }
    match whose_node::options().num_cpus(-1.0).remote().get() {
        Err(TaskError::Unschedulable { message, .. }) => assert!(message.contains("num_cpus = -1"), "{message}"),
        other => panic!("expected a refused option, got {other:?}"),
    }
}

#[shoal::remote]
fn whose_node() -> String {
    shoal::context().unwrap().node_id
}

/// Panics until it has been tried `fail_times` times (counted with files in
/// `dir`, which every executor sees); then returns its attempt number.
#[shoal::remote]
fn flaky(dir: String, fail_times: u32) -> u32 {
    let n = std::fs::read_dir(&dir).unwrap().count() as u32 + 1;
    std::fs::write(std::path::Path::new(&dir).join(n.to_string()), b"").unwrap();
    if n <= fail_times {
        panic!("attempt {n} fails");
    }
    n
}

#[shoal::remote(retry_exceptions = true, max_retries = 2)]
fn flaky_retried(dir: String, fail_times: u32) -> u32 {
    flaky(dir, fail_times)
}

#[test]
fn panics_are_retried_with_retry_exceptions_within_max_retries() {
    let _c = two_worker_cluster(&["--num-cpus", "1"], &["--num-cpus", "1"]);
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let path = |i: usize| dirs[i].path().to_string_lossy().into_owned();
    // Default: a panic is the caller's at once.
    match flaky::remote(path(0), 2).get() {
        Err(TaskError::Panicked { message, .. }) => assert!(message.contains("attempt 1 fails"), "{message}"),
        other => panic!("expected the panic, got {other:?}"),
    }
    // Declared on the function: two panics, then the third attempt works.
    assert_eq!(flaky_retried::remote(path(1), 2).get().unwrap(), 3);
    // Out of retries: the last panic is the caller's.
    match flaky_retried::remote(path(2), 5).get() {
        Err(TaskError::Panicked { message, .. }) => assert!(message.contains("attempt 3 fails"), "{message}"),
        other => panic!("expected the third panic, got {other:?}"),
    }
    // Per call.
    assert_eq!(flaky::options().retry_exceptions(true).max_retries(3).remote(path(3), 1).get().unwrap(), 2);
}

#[test]
fn cancel_queued_tasks_never_run_and_running_ones_stop() {
    let c = two_worker_cluster(&["--num-cpus", "1"], &["--num-cpus", "1"]);
    let marks = tempfile::tempdir().unwrap();
    let dir = marks.path().to_string_lossy().into_owned();
    // Occupy both CPUs, then queue more.
    let busy: Vec<_> = (0..2).map(|i| touch_then_sleep::remote(dir.clone(), 1000 + i, 1500)).collect();
    wait_for(Duration::from_secs(20), "both long tasks to start", || (std::fs::read_dir(marks.path()).ok()?.count() == 2).then_some(()));
    let queued: Vec<_> = (0..6).map(|i| touch_then_sleep::remote(dir.clone(), i, 10)).collect();
    std::thread::sleep(Duration::from_millis(100));
    for q in &queued {
        shoal::cancel(q);
    }
    for q in &queued {
        assert!(matches!(q.get(), Err(TaskError::Cancelled { .. })), "{:?}", q.get());
    }
    for b in &busy {
        b.get().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let started: Vec<String> = std::fs::read_dir(marks.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(started.len(), 2, "cancelled tasks never started: {started:?}");

    // A running task is interrupted: Cancelled within a second.
    let long = touch_then_sleep::remote(dir.clone(), 2000, 60_000);
    wait_for(Duration::from_secs(20), "the long task to start", || marks.path().join("2000").exists().then_some(()));
    let t0 = Instant::now();
    shoal::cancel(&long);
    assert!(matches!(long.get(), Err(TaskError::Cancelled { .. })));
    assert!(t0.elapsed() < Duration::from_secs(1), "cancel took {:?}", t0.elapsed());
    assert_eq!(leaf::remote(1).get().unwrap(), 1, "the node serves after the cancel");
    drop(c);
}

#[test]
fn wait_and_as_completed_follow_completion_order() {
    let _c = two_worker_cluster(&["--num-cpus", "2"], &["--num-cpus", "2"]);
    // Warm executors so start-up time does not reorder completions.
    let warm: Vec<_> = (0..8).map(|_| sleep_ms::remote(50)).collect();
    shoal::get_all_blocking(&warm).unwrap();
    let refs: Vec<_> = [900u64, 100, 500].into_iter().map(sleep_ms::remote).collect();
    let (ready, not_ready) = shoal::wait_blocking(&refs, 1, Some(Duration::from_secs(10)));
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].get().unwrap(), 100);
    assert_eq!(not_ready.iter().map(|r| r.id()).collect::<Vec<_>>(), vec![refs[0].id(), refs[2].id()]);
    let order: Vec<u64> = shoal::as_completed(refs.clone()).map(|r| r.get().unwrap()).collect();
    assert_eq!(order, vec![100, 500, 900]);
    // The async forms agree.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let refs: Vec<_> = [600u64, 50, 300].into_iter().map(sleep_ms::remote).collect();
    let (ready, _) = rt.block_on(shoal::wait(&refs, 3, None));
    assert_eq!(ready.iter().map(|r| r.get().unwrap()).collect::<Vec<_>>(), vec![50, 300, 600]);
    let (none_ready, _) = rt.block_on(shoal::wait(&[sleep_ms::remote(5000)], 1, Some(Duration::from_millis(50))));
    assert!(none_ready.is_empty(), "timeout returns what is ready");
}

/// Run by `two_drivers_at_once` as a second driver process.
#[test]
#[ignore = "helper: run by two_drivers_at_once"]
fn helper_second_driver() {
    let Ok(address) = std::env::var("SHOAL_TEST_ADDRESS") else { return };
    let token = std::env::var("SHOAL_TEST_TOKEN").unwrap();
    shoal::init_blocking_with(shoal::InitConfig::default().address(address).token(token)).unwrap();
    check_driver_isolation();
}

fn check_driver_isolation() {
    let refs: Vec<_> = (0..300).map(|_| bump::remote()).collect();
    let counts = shoal::get_all_blocking(&refs).unwrap();
    // Executors are per driver: counters only ever saw this driver's calls.
    assert!(counts.iter().all(|c| *c <= 300), "saw another driver's calls: max {:?}", counts.iter().max());
    let squares: Vec<u64> = (0..2000u64).map(square::remote).map(|r| r.get().unwrap().0).collect();
    assert_eq!(squares, (0..2000u64).map(|x| x * x).collect::<Vec<_>>());
}

#[test]
fn two_drivers_at_once() {
    let c = two_worker_cluster(&["--num-cpus", "1"], &["--num-cpus", "1"]);
    let other = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_second_driver", "--ignored", "--nocapture"])
        .env("SHOAL_TEST_ADDRESS", &c.address)
        .env("SHOAL_TEST_TOKEN", &c.token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    check_driver_isolation();
    let out = other.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("1 passed"), "second driver failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn draining_a_node_finishes_its_tasks_then_its_worker_exits() {
    let mut c = two_worker_cluster(&["--num-cpus", "1"], &["--num-cpus", "1"]);
    let refs: Vec<_> = (0..8).map(|_| sleep_ms::remote(300)).collect();
    std::thread::sleep(Duration::from_millis(150));
    let a = c.workers[0].node_id.clone();
    let refused = shoal(c.home.path(), &["drain", "zz", "--wait", "0"]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("no alive node's id starts with"), "an unknown prefix is refused");
    // A prefix is enough, as `shoal status` and errors print ids.
    let out = shoal(c.home.path(), &["drain", &a[..6], "--wait", "30"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("has left the cluster"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let exit = c.workers[0].child.wait().unwrap();
    assert!(exit.success(), "the drained worker exits cleanly: {exit}");
    for r in &refs {
        assert_eq!(r.get().unwrap(), 300, "every task finishes, none lost");
    }
    let st = c.status();
    assert_eq!(st["tasks"]["failed"], 0);
    assert_eq!(c.node(&a).unwrap()["alive"], false);
    let b = c.workers[1].node_id.clone();
    let later: Vec<_> = (0..20u64).map(square::remote).collect();
    assert!(later.iter().all(|r| r.get().unwrap().1 == b), "new work goes to the remaining node");
}

/// A call after `init` failed says why (here: the token was refused),
/// typed, and not retryable; nothing hangs.
#[test]
fn a_call_after_a_refused_token_fails_with_unauthenticated() {
    let c = Cluster::head(&[]);
    let bad = shoal::InitConfig::default().address(c.address.clone()).token("not-the-token");
    let e = shoal::init_blocking_with(bad).expect_err("the head refuses the token");
    assert!(matches!(e, shoal::Error::Unauthenticated { .. }), "{e:?}");
    // SAFETY: no other thread of this test process reads the environment.
    unsafe {
        std::env::set_var("SHOAL_ADDRESS", &c.address);
        std::env::set_var("SHOAL_TOKEN", "not-the-token");
    }
    let got = square::remote(3).get_timeout(std::time::Duration::from_secs(30));
    match got {
        Err(e @ TaskError::Unauthenticated { .. }) => assert!(!e.is_retryable(), "a refused token is not retryable"),
        other => panic!("expected Unauthenticated, got {other:?}"),
    }
}

#[test]
fn cluster_status_has_a_blocking_form() {
    let c = two_worker_cluster(&["--num-cpus", "1"], &["--num-cpus", "2"]);
    let st = shoal::cluster_status_blocking().unwrap();
    assert_eq!(st.alive_nodes().count(), 2);
    assert_eq!(st.total_cpus(), 3.0);
    drop(c);
}

/// Placement per call: pinned to a node, preferred (with fallback), and
/// spread, as Ray's scheduling strategies.
#[test]
fn calls_pinned_preferred_and_spread_land_where_asked() {
    let c = two_worker_cluster(&["--num-cpus", "2"], &["--num-cpus", "2"]);
    let b = c.workers[1].node_id.clone();
    let b_id = shoal::NodeId::parse(&b).unwrap();
    let pinned: Vec<_> = (0..20).map(|_| whose_node::options().on_node(b_id).remote()).collect();
    for r in &pinned {
        assert_eq!(r.get().unwrap(), b, "a pinned call runs on its node");
    }
    let preferred = whose_node::options().prefer_node(b_id).remote().get().unwrap();
    assert_eq!(preferred, b, "a preferred node with room is used");
    let spread: HashSet<String> = (0..40).map(|_| whose_node::options().spread().remote()).map(|r| r.get().unwrap()).collect();
    assert_eq!(spread.len(), 2, "spread calls use both nodes: {spread:?}");
    // Pinned to a node that is not in the cluster: a typed error, at once.
    let nowhere = shoal::NodeId::parse("00000000-0000-0000-0000-000000000001").unwrap();
    let t = Instant::now();
    match whose_node::options().on_node(nowhere).remote().get_timeout(Duration::from_secs(30)) {
        Err(e @ TaskError::Unschedulable { .. }) => assert!(e.to_string().contains("not part of the cluster"), "{e}"),
        other => panic!("expected Unschedulable, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(3), "at once, not after a wait");
}
