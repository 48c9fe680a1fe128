//! Tasks that submit tasks, on a real cluster (a head and a worker
//! process): a task calls `f::remote`, `put`, `get`, `wait` and
//! `as_completed`, and a task waiting for its children lends its CPU to
//! them, so a recursive program cannot deadlock a one-CPU node.

mod common;

use common::*;
use std::time::Duration;

#[shoal::remote]
fn fib(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let a = fib::remote(n - 1);
    let b = fib::remote(n - 2);
    a.get().unwrap() + b.get().unwrap()
}

/// The async form: awaiting children lends the CPU too.
#[shoal::remote]
async fn afib(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let (a, b) = (afib::remote(n - 1), afib::remote(n - 2));
    a.await.unwrap() + b.await.unwrap()
}

#[shoal::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[shoal::remote]
fn fan_out(n: u64) -> (u64, u64, Vec<u64>) {
    // put, wait and as_completed inside a task, as in a driver.
    let base = shoal::put(10u64).unwrap();
    let refs: Vec<_> = (0..n).map(square::remote).collect();
    let (ready, rest) = shoal::wait_blocking(&refs, n as usize, Some(Duration::from_secs(60)));
    assert!(rest.is_empty());
    let mut order: Vec<u64> = shoal::as_completed(refs.clone()).map(|r| r.get().unwrap()).collect();
    order.sort_unstable();
    (base.get().unwrap(), ready.len() as u64, order)
}

#[test]
fn a_recursive_program_runs_on_a_one_cpu_node() {
    let mut c = Cluster::head(&[]);
    c.add_worker(&["--num-cpus", "1"]);
    c.connect();
    // 41 tasks, 6 deep, each waiting for its two children, on a node with
    // one CPU: only possible if a waiting task lends its CPU.
    assert_eq!(fib::remote(7).get_timeout(Duration::from_secs(120)).unwrap(), 13);
    assert_eq!(afib::remote(6).get_timeout(Duration::from_secs(120)).unwrap(), 8, "an async task awaiting its children lends its CPU");
    let (base, ready, squares) = fan_out::remote(6).get_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!((base, ready), (10, 6));
    assert_eq!(squares, vec![0, 1, 4, 9, 16, 25]);
    // The node is back to one slot afterwards, and keeps serving.
    assert_eq!(square::remote(12).get().unwrap(), 144);
    let st = c.status();
    assert_eq!(st["tasks"]["failed"], 0);
    assert!(st["jobs"].as_u64().unwrap() > 1, "the tasks that submitted tasks had sessions of their own: {st}");
    // When the program leaves, the jobs its tasks started end with its job
    // at once (not after the grace a lost driver gets).
    tokio::runtime::Runtime::new().unwrap().block_on(shoal::shutdown());
    wait_for(Duration::from_secs(10), "every job to end", || (c.status()["jobs"] == 0).then_some(()));
}

#[shoal::remote]
fn sleepy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Starts long children, then its executor dies.
#[shoal::remote(max_retries = 0)]
fn parent_that_dies(children: u64) -> u64 {
    let refs: Vec<_> = (0..children).map(|_| sleepy::remote(60_000)).collect();
    std::thread::sleep(Duration::from_millis(500));
    drop(refs);
    std::process::abort();
}

/// A parent task that dies: its children are cancelled at once (its
/// session's job ends), not left running or kept for a driver's grace.
#[test]
fn the_children_of_a_parent_task_that_dies_are_cancelled() {
    let mut c = Cluster::head(&[]);
    c.add_worker(&["--num-cpus", "2"]);
    c.connect();
    let r = parent_that_dies::remote(2);
    let e = r.get_timeout(Duration::from_secs(60)).expect_err("the parent died");
    assert!(matches!(e, shoal::TaskError::WorkerDied { .. }), "{e:?}");
    let t = std::time::Instant::now();
    wait_for(Duration::from_secs(15), "the children to be cancelled", || (c.status()["tasks"]["running"] == 0).then_some(()));
    assert!(t.elapsed() < Duration::from_secs(15), "not after the 30 s grace of a lost driver");
    assert!(c.head_log().contains("the session of a task was lost"), "{}", c.head_log());
    assert_eq!(square::remote(3).get().unwrap(), 9, "the node keeps serving");
}
