//! Streaming generators and multiple returns on real processes: a head
//! and two 1-CPU workers (one offering resource `a`, one `b`).

mod common;

use common::*;
use shoal::{Buffer, ObjectRef, TaskError};
use std::time::{Duration, Instant};

#[shoal::remote]
fn count_to(n: u64) -> impl Iterator<Item = u64> {
    0..n
}

#[shoal::remote]
fn fails_at(n: u64, at: u64) -> impl Iterator<Item = u64> {
    (0..n).inspect(move |i| {
        if *i == at {
            panic!("item {i} cannot be made");
        }
    })
}

/// The async form: a stream.
#[shoal::remote]
fn ticks(n: u64) -> impl futures::Stream<Item = String> {
    use futures::StreamExt;
    futures::stream::iter(0..n).then(|i| async move {
        tokio::task::yield_now().await;
        format!("tick {i}")
    })
}

/// Large items (they live in the producer node's store).
#[shoal::remote(resources(a = 1))]
fn blocks(n: u8) -> impl Iterator<Item = Buffer> {
    (0..n).map(|i| Buffer::from(vec![i; 1 << 20]))
}

/// A task consuming a generator (nested), on the other node.
#[shoal::remote(resources(b = 1))]
fn sum_of_blocks(n: u8) -> (u64, u64) {
    let mut first = 0u64;
    let mut bytes = 0u64;
    for item in blocks::remote(n) {
        let b = item.unwrap().get().unwrap();
        first += b[0] as u64;
        bytes += b.len() as u64;
    }
    (first, bytes)
}

#[shoal::remote]
fn slow_count(n: u64, ms: u64) -> impl Iterator<Item = u64> {
    (0..n).inspect(move |_| std::thread::sleep(Duration::from_millis(ms)))
}

#[shoal::remote(num_returns = 3)]
fn stats(v: Vec<u64>) -> (u64, u64, String) {
    (v.iter().sum(), v.iter().copied().max().unwrap_or(0), format!("{} items", v.len()))
}

#[shoal::remote]
fn double(x: u64) -> u64 {
    2 * x
}

/// Reads refs it was handed inside a value.
#[shoal::remote]
fn sum_refs(v: Vec<ObjectRef<u64>>) -> u64 {
    v.iter().map(|r| r.get().unwrap()).sum()
}

/// Consumes a generator and returns every tenth item's ref (refs inside a
/// task's result).
#[shoal::remote]
fn every_tenth(n: u64) -> Vec<ObjectRef<u64>> {
    count_to::remote(n).map(|i| i.unwrap()).step_by(10).collect()
}

#[shoal::remote(max_retries = 2)]
fn panics_once(marker: String) -> u64 {
    // The first attempt leaves a marker and panics; the retry succeeds.
    if std::fs::OpenOptions::new().write(true).create_new(true).open(&marker).is_ok() {
        panic!("first attempt fails");
    }
    7
}

fn cluster() -> Cluster {
    Cluster::connected(&[&["--num-cpus", "1", "--resources", "a=1"], &["--num-cpus", "1", "--resources", "b=1"]])
}

fn running(c: &Cluster) -> u64 {
    c.status()["tasks"]["running"].as_u64().unwrap_or(0)
}

#[test]
fn ten_thousand_items_stream_in_order_while_the_producer_waits_for_the_consumer() {
    let c = cluster();
    let mut g = count_to::remote(10_000);
    // Unconsumed items are bounded: the producer cannot finish while the
    // caller has taken none.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(running(&c), 1, "the producer is paused, not finished");
    let first = g.next().expect("an item").expect("no error");
    assert_eq!(first.get().unwrap(), 0);
    let mut want = 1;
    for item in g.by_ref() {
        assert_eq!(item.expect("no error").get().unwrap(), want, "items arrive in order");
        want += 1;
    }
    assert_eq!(want, 10_000, "every item arrived, then the stream ended");
    assert_eq!(g.consumed(), 10_000);
    assert!(g.next().is_none(), "an ended stream stays ended");
}

#[test]
fn a_generator_that_panics_at_item_500_gives_500_items_then_the_error() {
    let _c = cluster();
    let mut got = Vec::new();
    let mut error = None;
    for item in fails_at::remote(1_000, 500) {
        match item {
            Ok(r) => got.push(r.get().unwrap()),
            Err(e) => error = Some(e),
        }
    }
    assert_eq!(got, (0..500).collect::<Vec<u64>>(), "the items before the failure");
    match error {
        Some(TaskError::Panicked { message, .. }) => assert!(message.contains("item 500 cannot be made"), "{message}"),
        other => panic!("expected the panic as the last item, got {other:?}"),
    }
}

#[test]
fn an_async_stream_and_large_items_across_nodes_and_a_nested_consumer() {
    let c = cluster();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got: Vec<String> = rt.block_on(async {
        use futures::StreamExt;
        let mut s = ticks::remote(50);
        let mut v = Vec::new();
        while let Some(item) = StreamExt::next(&mut s).await {
            v.push(item.unwrap().await.unwrap());
        }
        v
    });
    assert_eq!(got.len(), 50);
    assert_eq!(got[49], "tick 49");
    // The driver reads 1 MiB items the `a` node made.
    let blocks: Vec<ObjectRef<Buffer>> = blocks::remote(4).map(|i| i.unwrap()).collect();
    assert_eq!(blocks.iter().map(|r| r.get().unwrap()[0] as u64).sum::<u64>(), 6);
    // A task on the `b` node consumes a generator running on the `a` node.
    assert_eq!(sum_of_blocks::remote(5).get_timeout(Duration::from_secs(60)).unwrap(), (10, 5 << 20));
    // Items are freed when their refs go, like any object.
    drop(blocks);
    c.wait_stores_empty();
}

/// Objects in the head's table.
fn head_objects(c: &Cluster) -> u64 {
    let out = c.cli(&["list", "objects", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["total"].as_u64().unwrap()
}

/// Small items are passed on by the head without being kept there; one
/// sent on (an argument, inside a value or a task's result), even after
/// its producer ended, works as any ref, and the head keeps it only until
/// the last ref to it drops.
#[test]
fn small_items_sent_on_after_their_producer_ended_work_as_any_ref() {
    let c = cluster();
    let base = head_objects(&c);
    let items: Vec<ObjectRef<u64>> = count_to::remote(1_000).map(|i| i.unwrap()).collect();
    assert_eq!(items.len(), 1_000);
    assert_eq!(head_objects(&c), base, "the head keeps nothing for items read where they arrived");
    assert_eq!(double::remote(&items[7]).get().unwrap(), 14, "an item as an argument");
    assert_eq!(sum_refs::remote(items[10..20].to_vec()).get().unwrap(), (10..20).sum::<u64>(), "items inside an argument");
    let bag = shoal::put(vec![items[500].clone(), items[999].clone()]).unwrap();
    assert_eq!(sum_refs::remote(&bag).get().unwrap(), 1_499, "items inside a put");
    assert!(head_objects(&c) >= base + 13, "the items sent on are kept");
    // A task consumes a generator of its own and returns items' refs.
    let tenth = every_tenth::remote(100).get().unwrap();
    assert_eq!(tenth.iter().map(|r| r.get().unwrap()).collect::<Vec<_>>(), (0..100).step_by(10).collect::<Vec<u64>>());
    assert_eq!(sum_refs::remote(tenth.clone()).get().unwrap(), 450, "refs from a result, sent on again");
    drop((items, bag, tenth));
    wait_for(Duration::from_secs(20), "the head to free every item", || (head_objects(&c) == base).then_some(()));
}

#[test]
fn dropping_a_generator_before_its_end_stops_the_producer() {
    let c = cluster();
    let mut g = slow_count::remote(100_000, 1);
    assert_eq!(g.next().unwrap().unwrap().get().unwrap(), 0);
    drop(g);
    let t = Instant::now();
    wait_for(Duration::from_secs(20), "the producer to stop", || (running(&c) == 0).then_some(()));
    assert!(t.elapsed() < Duration::from_secs(20));
}

#[test]
fn num_returns_gives_one_ref_per_element_and_each_works_on_its_own() {
    let _c = cluster();
    let (sum, max, label) = stats::remote(vec![3, 9, 4]);
    assert_eq!(label.get().unwrap(), "3 items");
    // One element as an argument of another call.
    assert_eq!(double::remote(&max).get().unwrap(), 18);
    assert_eq!(sum.get().unwrap(), 16);
    let (s2, _, _) = stats::options().num_cpus(0.5).remote(vec![1, 1]);
    assert_eq!(s2.get().unwrap(), 2);
}

#[test]
fn retry_on_panic_retries_a_task_that_panics_once() {
    let c = cluster();
    let marker = c.home.path().join("panicked-once");
    let m = marker.to_string_lossy().into_owned();
    // Off by default: the panic is the answer.
    let first = panics_once::remote(m.clone()).get_timeout(Duration::from_secs(60));
    assert!(matches!(first, Err(TaskError::Panicked { .. })), "{first:?}");
    std::fs::remove_file(&marker).unwrap();
    assert_eq!(panics_once::options().retry_on_panic(true).remote(m).get_timeout(Duration::from_secs(60)).unwrap(), 7);
    assert!(marker.exists(), "the first attempt did panic");
}
