//! `Pool`, `Process` and `Parallel` on the embedded cluster (real head,
//! worker and executor processes, started by `shoal::init`).

use shoal::{Pool, PoolError, Process, TaskError};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[shoal::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[shoal::remote]
fn power(x: u64, e: u32) -> u64 {
    x.pow(e)
}

#[shoal::remote]
fn noop(_x: u64) {}

#[shoal::remote]
fn sleepy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[shoal::remote]
fn picky(x: u64) -> u64 {
    if x == 37 {
        panic!("item 37 is not allowed");
    }
    x
}

#[shoal::remote]
fn whoami(x: u64) -> (u64, u32) {
    (x, shoal::context().unwrap().pid)
}

fn init() {
    shoal::init_blocking_with(shoal::InitConfig::default().local().num_cpus(4.0)).unwrap();
}

#[test]
fn every_method_matches_a_sequential_loop() {
    init();
    let pool = Pool::new(4).unwrap();
    let xs: Vec<u64> = (0..500).collect();
    let expect: Vec<u64> = xs.iter().map(|x| x * x).collect();
    assert_eq!(pool.map(square::func, xs.clone()).unwrap(), expect);
    assert_eq!(pool.imap(square::func, xs.clone()).unwrap().collect::<Result<Vec<_>, _>>().unwrap(), expect);
    let mut unordered: Vec<u64> = pool.imap_unordered(square::func, xs.clone()).unwrap().collect::<Result<_, _>>().unwrap();
    unordered.sort();
    assert_eq!(unordered, expect);
    let pairs: Vec<(u64, u32)> = (0..50).map(|x| (x, (x % 4) as u32)).collect();
    let seq: Vec<u64> = pairs.iter().map(|(x, e)| x.pow(*e)).collect();
    assert_eq!(pool.starmap(power::func, pairs.clone()).unwrap(), seq);
    assert_eq!(pool.apply(power::func, (3, 4)).unwrap(), 81);
    let a = pool.apply_async(square::func, (9,)).unwrap();
    let m = pool.map_async(square::func, xs.clone()).unwrap();
    let s = pool.starmap_async(power::func, pairs).unwrap();
    assert_eq!(a.get().unwrap(), 81);
    assert_eq!(a.successful(), Some(true));
    assert_eq!(m.get().unwrap(), expect);
    assert_eq!(s.get().unwrap(), seq);
    let fixed = Pool::new(2).unwrap().chunksize(7);
    assert_eq!(fixed.map(square::func, xs.clone()).unwrap(), expect);
    let calls = xs.iter().map(|x| square::func.call(*x));
    assert_eq!(shoal::parallel(calls).unwrap(), expect);
    assert_eq!(shoal::Parallel::new().n_jobs(3).batch_size(10).run(xs.iter().map(|x| square::func.call(*x))).unwrap(), expect);
    pool.close();
    assert_eq!(pool.map(square::func, 0..3u64).unwrap_err(), PoolError::Closed);
    pool.join();
}

#[test]
fn imap_unordered_yields_in_completion_order() {
    init();
    // Warm four executors first so start-up does not reorder completions.
    let pool = Pool::new(4).unwrap().chunksize(1);
    pool.map(sleepy::func, vec![30u64; 8]).unwrap();
    let order: Vec<u64> = pool.imap_unordered(sleepy::func, vec![700u64, 100, 400, 250]).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(order, vec![100, 250, 400, 700]);
    let ordered: Vec<u64> = pool.imap(sleepy::func, vec![300u64, 50, 150]).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(ordered, vec![300, 50, 150], "imap keeps input order");
}

#[test]
fn a_million_items_with_bounded_memory() {
    init();
    let pool = Pool::new(4).unwrap();
    let pulled = Arc::new(AtomicUsize::new(0));
    let p2 = pulled.clone();
    let input = (0..1_000_000u64).inspect(move |_| {
        p2.fetch_add(1, Ordering::Relaxed);
    });
    let mut it = pool.imap(noop::func, input).unwrap();
    let stats = it.stats();
    // At most `window` (2 x processes) chunks in flight, plus the finished
    // chunk being handed out.
    let bound = (2 * 4 + 1) * shoal::MAX_AUTO_CHUNK;
    // Early on, the input is consumed only as far as the window allows.
    for _ in 0..1000 {
        it.next().unwrap().unwrap();
    }
    assert!(pulled.load(Ordering::Relaxed) <= 1000 + bound, "pulled {} items ahead", pulled.load(Ordering::Relaxed));
    let rest = it.by_ref().count();
    assert_eq!(rest + 1000, 1_000_000);
    assert!(stats.max_items_in_flight() <= bound, "in flight {} > {bound}", stats.max_items_in_flight());
    assert!(stats.chunks() < 1_000_000 / 10, "items were batched: {} chunks", stats.chunks());
}

#[test]
fn a_panic_inside_map_names_the_item_and_the_pool_stays_usable() {
    init();
    let pool = Pool::new(2).unwrap();
    match pool.map(picky::func, 0..100u64) {
        Err(PoolError::Item { index, error: TaskError::Panicked { message, .. } }) => {
            assert_eq!(index, 37);
            assert_eq!(message, "item 37 is not allowed");
        }
        other => panic!("expected item 37 to fail, got {other:?}"),
    }
    let err = pool.map(picky::func, 0..100u64).unwrap_err();
    assert!(err.to_string().starts_with("item 37 failed"), "{err}");
    assert_eq!(pool.map(picky::func, 0..10u64).unwrap(), (0..10).collect::<Vec<_>>());
}

#[test]
fn process_join_returns_the_result_from_another_process() {
    init();
    let p = Process::spawn(whoami::func, (5,));
    let (x, pid) = p.join().unwrap();
    assert_eq!(x, 5);
    assert_ne!(pid, std::process::id());
    assert_eq!(p.pid(), Some(pid));
    assert!(!p.is_alive());
    assert_eq!(p.exit_code(), Some(0));
    assert!(p.node().is_some_and(|n| n.len() == 36));
    let long = Process::spawn(sleepy::func, (30_000,));
    std::thread::sleep(Duration::from_millis(100));
    assert!(long.is_alive());
    long.kill();
    assert!(matches!(long.join(), Err(TaskError::Cancelled { .. })));
    assert_eq!(long.exit_code(), Some(-9), "killed, as multiprocessing reports SIGKILL");
}

#[shoal::remote]
fn napper(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

#[shoal::remote]
fn crashes() -> u32 {
    panic!("this process fails")
}

/// Like `multiprocessing.Process`: each runs in a process of its own whose
/// pid is known while it runs, distinct from every other live one (also
/// from earlier ones: no pooled executor is reused), with the real exit
/// code.
#[test]
fn processes_have_their_own_pids_known_while_running() {
    init();
    let procs: Vec<_> = (0..4).map(|_| Process::spawn(napper::func, (1_500,))).collect();
    let pids: Vec<u32> = procs.iter().map(|p| p.pid().expect("started")).collect();
    assert!(procs.iter().all(|p| p.is_alive()), "the pids were known while they ran");
    let distinct: std::collections::HashSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 4, "distinct pids: {pids:?}");
    for (p, pid) in procs.iter().zip(&pids) {
        assert_eq!(p.join().unwrap(), *pid, "the pid is the process that ran it");
        assert_eq!(p.exit_code(), Some(0));
    }
    let next = Process::spawn(napper::func, (0,));
    assert!(!pids.contains(&next.join().unwrap()), "a new process, not a reused one");
    let bad = Process::spawn(crashes::func, ());
    assert!(matches!(bad.join(), Err(TaskError::Panicked { .. })));
    assert_eq!(bad.exit_code(), Some(1));
}

#[test]
fn terminate_cancels_outstanding_work() {
    init();
    let pool = Pool::new(2).unwrap().chunksize(1);
    let m = pool.map_async(sleepy::func, vec![20_000u64; 4]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = std::time::Instant::now();
    pool.terminate();
    assert_eq!(m.get().unwrap_err(), PoolError::Terminated);
    assert!(t.elapsed() < Duration::from_secs(5));
    pool.join();
    assert_eq!(pool.map(square::func, 0..2u64).unwrap_err(), PoolError::Terminated);
}

/// Waits on a timer without holding a CPU; reports when it ran
/// (milliseconds since the epoch).
#[shoal::remote(num_cpus = 0)]
async fn wait_io(ms: u64) -> (u128, u128) {
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let start = now();
    tokio::time::sleep(Duration::from_millis(ms)).await;
    (start, now())
}

#[test]
fn io_bound_tasks_do_not_queue_behind_cpu_slots() {
    init();
    // 4 CPUs: CPU-bound work would run 4 at a time. Ten waits that hold
    // no CPU all wait at once.
    let refs: Vec<_> = (0..10).map(|_| wait_io::remote(1500)).collect();
    let spans = shoal::get_all_blocking(&refs).unwrap();
    let most_at_once = spans.iter().map(|(s, _)| spans.iter().filter(|(s2, e2)| s2 <= s && s < e2).count()).max().unwrap();
    assert_eq!(most_at_once, 10, "every wait overlapped the others: {spans:?}");
    // CPU-bound tasks still get their CPUs while waits are outstanding.
    let waits: Vec<_> = (0..10).map(|_| wait_io::remote(1500)).collect();
    assert_eq!(Pool::new(4).unwrap().map(square::func, 0..8u64).unwrap()[7], 49);
    assert!(waits.iter().all(|w| !w.is_ready()), "the CPU work did not wait for the I/O tasks");
    shoal::get_all_blocking(&waits).unwrap();
}
