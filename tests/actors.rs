//! Actors on real processes: a head with no local worker, workers as
//! separate `shoal` processes, this test as the driver (a second driver is
//! this binary again, running an ignored helper test).

mod common;

use common::*;
use shoal::{ActorHandle, TaskError};
use std::time::{Duration, Instant};

/// A counter with a few ways to fail.
pub struct Counter {
    n: u64,
}

#[shoal::actor]
impl Counter {
    fn new(start: u64) -> Self {
        if start == 666 {
            panic!("refusing to count from 666");
        }
        Counter { n: start }
    }

    fn incr(&mut self, k: u64) -> u64 {
        self.n += k;
        self.n
    }

    fn value(&self) -> u64 {
        self.n
    }

    fn fail_if(&mut self, bad: bool) -> u64 {
        if bad {
            panic!("asked to fail at {}", self.n);
        }
        self.n
    }

    /// Sleeps (holding the actor) and returns the value.
    fn sleep_ms(&mut self, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        self.n
    }

    /// A large value (it goes through the node's object store).
    fn blob(&self, n: usize) -> shoal::Buffer {
        pattern(n, self.n)
    }

    /// Puts `n` values (the counter's and the next ones) and returns refs
    /// to them: a result holding refs the caller must keep alive.
    fn handouts(&self, n: u64) -> Vec<shoal::ObjectRef<u64>> {
        (0..n).map(|i| shoal::put(self.n + i).unwrap()).collect()
    }

    /// Where the actor runs.
    fn node(&self) -> String {
        shoal::context().map(|c| c.node_id).unwrap_or_default()
    }
}

/// An actor whose async methods overlap.
pub struct Napper;

fn micros_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
}

#[shoal::actor(max_concurrency = 8)]
impl Napper {
    fn new() -> Self {
        Napper
    }

    /// Sleeps without blocking the actor; returns when it started and ended (us since the epoch).
    async fn nap(&self, ms: u64) -> (u64, u64) {
        let start = micros_now();
        tokio::time::sleep(Duration::from_millis(ms)).await;
        (start, micros_now())
    }

    /// A large value made by an async method.
    async fn blob(&self, n: usize) -> shoal::Buffer {
        tokio::task::yield_now().await;
        pattern(n, 7)
    }
}

/// A task handed a handle: it calls the actor itself.
#[shoal::remote]
fn add_through(counter: ActorHandle<Counter>, k: u64) -> u64 {
    counter.incr(k).get().expect("the actor answers the task")
}

/// A task on a value: a direct call's result passed on to it.
#[shoal::remote]
fn twice(x: u64) -> u64 {
    2 * x
}

/// Tasks the head has seen finish.
fn head_finished(c: &Cluster) -> u64 {
    c.status()["tasks"]["finished"].as_u64().unwrap()
}

/// Calls `counter` until this process calls it directly (the first calls
/// go through the head while the caller finds the actor's socket): then a
/// batch of calls leaves the head's count of finished tasks unchanged.
fn until_direct(c: &Cluster, counter: &ActorHandle<Counter>) {
    wait_for(Duration::from_secs(10), "calls to go straight to the actor", || {
        let before = head_finished(c);
        for _ in 0..20 {
            counter.value().get().unwrap();
        }
        (head_finished(c) == before).then_some(())
    });
}

/// A task that makes an actor of its own and uses it.
#[shoal::remote]
fn make_and_use(start: u64) -> u64 {
    let c = Counter::remote(start);
    c.incr(1).get().unwrap();
    c.incr(2).get().unwrap()
}

/// An actor that calls another actor.
pub struct Relay {
    target: ActorHandle<Counter>,
}

#[shoal::actor]
impl Relay {
    fn new(target: ActorHandle<Counter>) -> Self {
        Relay { target }
    }

    fn forward(&mut self, k: u64) -> u64 {
        self.target.incr(k).get().expect("the target actor answers")
    }
}

fn two_workers(a: &[&str], b: &[&str]) -> Cluster {
    Cluster::connected(&[a, b])
}

/// The node an actor runs on, from `shoal status --json`.
fn actor_node(c: &Cluster, id: shoal::ObjectId) -> Option<String> {
    let st = c.status();
    let a = st["actors"].as_array()?.iter().find(|a| a["id"] == id.to_string())?.clone();
    (a["state"] == "alive").then(|| a["node"].as_str().map(str::to_string)).flatten()
}

#[test]
fn calls_from_the_actors_machine_go_straight_to_it_in_order_with_calls_through_the_head() {
    let c = two_workers(&["--num-cpus", "1"], &["--num-cpus", "1"]);
    let counter = Counter::remote(0);
    until_direct(&c, &counter);
    // 1,000 direct calls: none passes through the head.
    let before = head_finished(&c);
    let direct: Vec<_> = (1..=1000).map(|_| counter.incr(1)).collect();
    assert_eq!(shoal::get_all_blocking(&direct).unwrap(), (1..=1000).collect::<Vec<u64>>());
    assert_eq!(head_finished(&c), before, "direct calls do not go through the head");
    // A call whose argument is a ref goes through the head; calls on
    // either side of it still run in the order made.
    let mut expected = 1000;
    let mut refs = Vec::new();
    let mut want = Vec::new();
    for i in 0..60u64 {
        let k = i % 7 + 1;
        expected += k;
        refs.push(if i % 3 == 0 { counter.incr(shoal::put(k).unwrap()) } else { counter.incr(k) });
        want.push(expected);
    }
    assert_eq!(shoal::get_all_blocking(&refs).unwrap(), want, "every call saw exactly the calls made before it");
    assert!(head_finished(&c) >= before + 20, "the calls with ref arguments went through the head");
    // A direct result is an object like any other: a task takes it.
    let r = counter.incr(1);
    assert_eq!(twice::remote(&r).get().unwrap(), 2 * (expected + 1));
    assert_eq!(r.get().unwrap(), expected + 1);
    // Large results go through the actor's node's store; the caller owns them.
    let blob = counter.blob(1 << 20).get().unwrap();
    assert_eq!(digest(&blob), digest(&pattern(1 << 20, expected + 1)));
    wait_for(Duration::from_secs(10), "the large result in the actor's node's store", || (c.stored_objects() >= 1).then_some(()));
    drop(blob);
    // Refs inside a direct result stay alive after the actor lets go (the
    // objects were put by the actor just before it answered: their puts
    // reach the head before the caller's put holding them).
    for round in 0..30 {
        let handed = counter.handouts(3).get().unwrap();
        if round == 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        let values: Vec<u64> = handed.iter().map(|r| r.get().unwrap()).collect();
        assert_eq!(values, vec![expected + 1, expected + 2, expected + 3], "round {round}");
    }
}

#[test]
fn direct_calls_nobody_waits_for_still_reach_the_actor() {
    let c = two_workers(&["--num-cpus", "1"], &["--num-cpus", "1"]);
    let counter = Counter::remote(0);
    until_direct(&c, &counter);
    // Fire and forget: the results are dropped at once.
    for _ in 0..500 {
        drop(counter.incr(1));
    }
    // Another process (a task, calling the actor itself) sees them all.
    wait_for(Duration::from_secs(10), "the 500 calls to reach the actor", || {
        let v = add_through::remote(counter.clone(), 0).get().unwrap();
        (v == 500).then_some(())
    });
}

#[test]
fn ten_thousand_calls_from_one_caller_come_back_in_order() {
    let _c = two_workers(&["--num-cpus", "1"], &["--num-cpus", "1"]);
    let counter = Counter::remote(0);
    let refs: Vec<_> = (0..10_000).map(|_| counter.incr(1)).collect();
    let got = shoal::get_all_blocking(&refs).unwrap();
    assert_eq!(got, (1..=10_000).collect::<Vec<u64>>(), "each call saw every call before it, and none after");
    assert_eq!(counter.value().get().unwrap(), 10_000);
}

/// Run by `two_drivers_share_a_named_actor` as the second driver.
#[test]
#[ignore = "helper: run by two_drivers_share_a_named_actor"]
fn helper_second_driver_uses_the_named_actor() {
    if !connect_as_helper_driver() {
        return;
    }
    let shared = shoal::get_actor::<Counter>("shared").expect("the named actor is found from another driver");
    let mut last = 0;
    for _ in 0..100 {
        let v = shared.incr(1).get().unwrap();
        assert!(v > last, "values only grow: {v} after {last}");
        last = v;
    }
    // Wrong type under that name: a clear error.
    let wrong = shoal::get_actor::<Napper>("shared").unwrap_err();
    assert!(matches!(wrong, shoal::Error::ActorNotFound { .. }), "{wrong}");
    futures::executor::block_on(shoal::shutdown());
}

#[test]
fn two_drivers_share_a_named_actor_and_a_task_calls_it_through_a_handle() {
    let c = two_workers(&["--num-cpus", "1"], &["--num-cpus", "1"]);
    let shared = Counter::options().name("shared").remote(1000);
    assert_eq!(shared.incr(0).get().unwrap(), 1000);
    c.run_helper_driver("helper_second_driver_uses_the_named_actor");
    assert_eq!(shared.value().get().unwrap(), 1100, "the second driver's 100 calls reached the same actor");
    // Tasks get the handle in their arguments and call the actor directly.
    let from_tasks: Vec<_> = (0..8).map(|_| add_through::remote(shared.clone(), 10)).collect();
    shoal::get_all_blocking(&from_tasks).unwrap();
    assert_eq!(shared.value().get().unwrap(), 1180);
    // A second live actor cannot take the name.
    let dup = Counter::options().name("shared").remote(0);
    let err = dup.value().get().unwrap_err();
    assert!(matches!(&err, TaskError::ActorDied { message, .. } if message.contains("taken")), "{err}");
    let st = c.status();
    let names: Vec<&str> = st["actors"].as_array().unwrap().iter().filter(|a| a["state"] == "alive").filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(names, vec!["shared"], "status lists the live named actor");
}

#[test]
fn an_actor_whose_node_dies_restarts_on_the_other_node() {
    let mut c = two_workers(&["--num-cpus", "1"], &["--num-cpus", "1"]);
    let counter = Counter::options().max_restarts(1).max_task_retries(1).remote(7);
    assert_eq!(counter.incr(1).get().unwrap(), 8);
    until_direct(&c, &counter);
    let first = actor_node(&c, counter.id()).expect("the actor is alive on a node");
    assert_eq!(counter.node().get().unwrap(), first, "status and the actor agree on its node");
    // A call running when the node dies runs again on the new instance
    // (max_task_retries = 1), before the calls made after it.
    let interrupted = counter.sleep_ms(1500);
    std::thread::sleep(Duration::from_millis(300));
    let victim = c.workers.iter().position(|w| w.node_id == first).unwrap();
    c.kill_worker(victim);
    assert_eq!(interrupted.get().unwrap(), 7, "retried on the restarted actor, whose constructor ran again");
    // Its constructor runs again on the other node: a fresh 7.
    let second = wait_for(Duration::from_secs(30), "the actor to restart on the other node", || actor_node(&c, counter.id()).filter(|n| *n != first));
    let after = counter.incr(1).get().expect("calls work after the restart");
    assert_eq!(after, 8, "a restart runs the constructor again");
    assert_eq!(counter.node().get().unwrap(), second);
    let st = c.status();
    let a = st["actors"].as_array().unwrap().iter().find(|a| a["id"] == counter.id().to_string()).unwrap().clone();
    assert_eq!(a["restarts"], 1, "{a}");
}

#[test]
fn without_restarts_the_calls_of_an_actor_whose_node_dies_fail_with_actor_died() {
    let mut c = two_workers(&["--num-cpus", "1"], &["--num-cpus", "1"]);
    let counter = Counter::remote(0);
    assert_eq!(counter.incr(1).get().unwrap(), 1);
    until_direct(&c, &counter);
    let node = actor_node(&c, counter.id()).unwrap();
    // One call running, more queued behind it.
    let running = counter.sleep_ms(10_000);
    let queued: Vec<_> = (0..5).map(|_| counter.incr(1)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let victim = c.workers.iter().position(|w| w.node_id == node).unwrap();
    c.kill_worker(victim);
    let t = Instant::now();
    for r in std::iter::once(&running).chain(&queued) {
        let e = r.get().unwrap_err();
        assert!(matches!(e, TaskError::ActorDied { .. }), "pending calls get ActorDied, got {e}");
    }
    assert!(t.elapsed() < Duration::from_secs(9), "they fail when the node dies, not when the sleep would end");
    let later = counter.incr(1).get().unwrap_err();
    assert!(matches!(&later, TaskError::ActorDied { message, .. } if message.contains("no restarts")), "{later}");
}

#[test]
fn killing_an_actor_fails_the_direct_calls_in_flight_with_the_cause() {
    let c = two_workers(&["--num-cpus", "1"], &["--num-cpus", "1"]);
    let counter = Counter::remote(0);
    until_direct(&c, &counter);
    let running = counter.sleep_ms(10_000);
    let queued: Vec<_> = (0..3).map(|_| counter.incr(1)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    shoal::kill(&counter);
    for r in std::iter::once(&running).chain(&queued) {
        let e = r.get().unwrap_err();
        assert!(matches!(&e, TaskError::ActorDied { message, .. } if message.contains("killed")), "{e}");
    }
    assert!(t.elapsed() < Duration::from_secs(8), "they fail when the actor is killed, not when the sleep would end");
}

#[test]
fn a_panicking_method_fails_that_call_and_the_actor_keeps_serving() {
    let _c = two_workers(&["--num-cpus", "1"], &["--num-cpus", "1"]);
    let counter = Counter::remote(5);
    let before = counter.incr(1);
    let bad = counter.fail_if(true);
    let after = counter.incr(1);
    assert_eq!(before.get().unwrap(), 6);
    let e = bad.get().unwrap_err();
    assert!(matches!(&e, TaskError::Panicked { message, .. } if message.contains("asked to fail at 6")), "{e}");
    assert_eq!(after.get().unwrap(), 7, "the actor kept its value and serves on");
}

#[test]
fn a_panicking_constructor_fails_every_call_with_actor_died() {
    let _c = two_workers(&["--num-cpus", "1"], &["--num-cpus", "1"]);
    let doomed = Counter::remote(666);
    let calls: Vec<_> = (0..3).map(|_| doomed.incr(1)).collect();
    for r in &calls {
        let e = r.get().unwrap_err();
        assert!(matches!(&e, TaskError::ActorDied { message, .. } if message.contains("refusing to count from 666")), "{e}");
    }
    // Later calls too, at once.
    let e = doomed.value().get().unwrap_err();
    assert!(matches!(&e, TaskError::ActorDied { message, .. } if message.contains("constructor")), "{e}");
}

#[test]
fn an_actor_asking_for_a_gpu_runs_only_on_the_node_that_has_it() {
    let c = two_workers(&["--num-cpus", "1"], &["--num-cpus", "1", "--resources", "gpu=1"]);
    let gpu_node = c.workers[1].node_id.clone();
    for _ in 0..3 {
        let a = Counter::options().resources(&[("gpu", 1.0)]).remote(0);
        assert_eq!(a.node().get().unwrap(), gpu_node);
        // It holds the GPU while it lives: the next one waits for it.
        shoal::kill(&a);
        let e = a.value().get().unwrap_err();
        assert!(matches!(&e, TaskError::ActorDied { message, .. } if message.contains("killed")), "{e}");
    }
}

#[test]
fn an_async_actor_runs_up_to_max_concurrency_calls_at_once() {
    let _c = two_workers(&["--num-cpus", "1"], &["--num-cpus", "1"]);
    let napper = Napper::remote();
    napper.nap(0).get().unwrap();
    let t = Instant::now();
    let refs: Vec<_> = (0..8).map(|_| napper.nap(100)).collect();
    let spans = shoal::get_all_blocking(&refs).unwrap();
    let elapsed = t.elapsed();
    let last_start = spans.iter().map(|s| s.0).max().unwrap();
    let first_end = spans.iter().map(|s| s.1).min().unwrap();
    assert!(last_start < first_end, "all 8 naps overlapped (the last started before the first ended): {spans:?}");
    println!("8 calls of 100 ms on max_concurrency = 8: {elapsed:?}");
    // Beyond the bound they queue: 16 naps run in two waves.
    let refs: Vec<_> = (0..16).map(|_| napper.nap(100)).collect();
    let mut spans = shoal::get_all_blocking(&refs).unwrap();
    spans.sort();
    let ninth_start = spans[8].0;
    let first_end = spans.iter().map(|s| s.1).min().unwrap();
    assert!(ninth_start >= first_end, "the 9th call waited for a free slot: {spans:?}");
}

#[test]
fn tasks_and_actors_create_and_call_actors() {
    let _c = two_workers(&["--num-cpus", "1"], &["--num-cpus", "1"]);
    assert_eq!(make_and_use::remote(40).get().unwrap(), 43, "a task made an actor and called it");
    let target = Counter::remote(0);
    let relay = Relay::remote(target.clone());
    let sums: Vec<u64> = (1..=5).map(|k| relay.forward(k).get().unwrap()).collect();
    assert_eq!(sums, vec![1, 3, 6, 10, 15], "one actor called another, in order");
    assert_eq!(target.value().get().unwrap(), 15);
}

#[test]
fn a_restarted_head_keeps_its_actors_from_its_log() {
    let mut c = Cluster::head(&["--heartbeat-timeout", "2"]);
    c.add_worker(&["--num-cpus", "1"]);
    c.add_worker(&["--num-cpus", "1"]);
    c.connect();
    let counter = Counter::options().name("survivor").remote(10);
    assert_eq!(counter.incr(1).get().unwrap(), 11);
    c.kill_head();
    c.restart_head(2);
    // The head rebuilt the actor from its log; the workers lost their
    // session with the old head (and the actor's process with it), so the
    // actor runs its constructor again, as after a node death.
    let after = counter.incr(1).get_timeout(Duration::from_secs(60)).expect("calls work after the head restart");
    assert!(after == 11 || after == 12, "the actor is back (fresh from its constructor, or the call replayed): {after}");
    let found = shoal::get_actor::<Counter>("survivor").expect("its name survives the restart");
    assert_eq!(found.id(), counter.id());
    let st = c.status();
    let a = st["actors"].as_array().unwrap().iter().find(|a| a["id"] == counter.id().to_string()).cloned().unwrap();
    assert_eq!(a["state"], "alive", "{a}");
}

#[test]
fn large_results_of_actor_methods_go_through_the_object_store() {
    let c = two_workers(&["--num-cpus", "1"], &["--num-cpus", "1"]);
    let counter = Counter::remote(3);
    let napper = Napper::remote();
    let n = 4 << 20;
    let (a, b) = (counter.blob(n), napper.blob(n));
    let (a, b) = (a.get().unwrap(), b.get().unwrap());
    assert_eq!(digest(&a), digest(&pattern(n, 3)), "from a sync method");
    assert_eq!(digest(&b), digest(&pattern(n, 7)), "from an async method");
    wait_for(Duration::from_secs(10), "both results in the workers' stores", || (c.stored_objects() >= 2).then_some(()));
    // Calls after a large result are served as before.
    assert_eq!(counter.incr(1).get().unwrap(), 4);
}

/// Run by `a_detached_actor_outlives_the_driver_that_made_it`: makes the
/// actor, uses it, and exits.
#[test]
#[ignore = "helper: run by a_detached_actor_outlives_the_driver_that_made_it"]
fn helper_driver_makes_a_detached_actor() {
    if !connect_as_helper_driver() {
        return;
    }
    let kept = Counter::options().name("kept").detached().remote(500);
    let plain = Counter::options().name("plain").remote(0);
    assert_eq!(kept.incr(5).get().unwrap(), 505);
    assert_eq!(plain.incr(1).get().unwrap(), 1);
    futures::executor::block_on(shoal::shutdown());
}

#[test]
fn a_detached_actor_outlives_the_driver_that_made_it() {
    let c = two_workers(&["--num-cpus", "1"], &["--num-cpus", "1"]);
    c.run_helper_driver("helper_driver_makes_a_detached_actor");
    // Its driver is gone; the detached actor, with its value, is not.
    let kept = shoal::get_actor::<Counter>("kept").expect("the detached actor outlived its driver");
    assert_eq!(kept.incr(1).get().unwrap(), 506, "the same actor, its value intact");
    // The actor that was not detached ended with its job.
    wait_for(Duration::from_secs(10), "the plain actor to end with its job", || shoal::get_actor::<Counter>("plain").is_err().then_some(()));
    shoal::kill(&kept);
    let e = kept.value().get().unwrap_err();
    assert!(matches!(&e, TaskError::ActorDied { message, .. } if message.contains("killed")), "{e}");
    // With its last detached actor gone, its job is over.
    let log = c.head_log();
    assert!(log.contains("lingers for its detached actors"), "the first driver's job waited for its detached actor:\n{log}");
    wait_for(Duration::from_secs(10), "the lingering job to end", || {
        c.head_log().lines().any(|l| l.contains("job finished") && l.contains(&format!("job={}", kept.id().job()))).then_some(())
    });
}
