//! An actor: a value living in a process of its own on the cluster,
//! whose methods are called in order through a handle (Ray's
//! `@ray.remote class Counter`).
//!
//!     cargo run --release --example counter_actor

use shoal::ActorHandle;

/// A counter kept on the cluster.
pub struct Counter {
    n: u64,
    calls: u64,
}

#[shoal::actor]
impl Counter {
    /// Runs on the node the actor is placed on.
    fn new(start: u64) -> Self {
        Counter { n: start, calls: 0 }
    }

    /// Adds `k`; returns the new total.
    fn incr(&mut self, k: u64) -> u64 {
        self.n += k;
        self.calls += 1;
        self.n
    }

    /// How many calls changed it.
    fn calls(&self) -> u64 {
        self.calls
    }
}

/// A task that gets a handle in its arguments and calls the actor itself.
#[shoal::remote]
fn add_from_task(counter: ActorHandle<Counter>, k: u64) -> u64 {
    counter.incr(k).get().expect("the counter answers")
}

fn main() -> shoal::Result<()> {
    shoal::init_blocking()?;
    let counter = Counter::remote(100);
    // Calls return at once; they run in the order they were made.
    let refs: Vec<_> = (0..1000).map(|_| counter.incr(1)).collect();
    let last = refs.last().expect("1000 calls").get()?;
    assert_eq!(last, 1100, "the last of 1000 ordered increments");
    // Handles travel into tasks, which call the actor directly.
    let from_tasks: Vec<_> = (0..4).map(|_| add_from_task::remote(counter.clone(), 10)).collect();
    shoal::get_all_blocking(&from_tasks)?;
    let calls = counter.calls().get()?;
    println!("counter actor {}: {} calls, total {}", counter.id(), calls, counter.incr(0).get()?);
    assert_eq!(calls, 1004);
    shoal::kill(&counter);
    Ok(())
}
