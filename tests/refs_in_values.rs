//! References inside values, on real processes (a head and two 1-CPU
//! workers): a task returns refs to pieces its children make; refs travel
//! inside arguments and puts; and when the last ref anywhere is dropped,
//! every store is empty.

mod common;

use common::*;
use shoal::ObjectRef;
use std::time::Duration;

const PIECE: usize = 8 << 20;

#[shoal::remote]
fn piece(i: u8) -> Vec<u8> {
    vec![i; PIECE]
}

/// Makes `n` pieces through child tasks and returns refs to them; with
/// `wait`, once they are all made (so only the result keeps them alive
/// when the task's own refs drop), else at once.
#[shoal::remote]
fn make_pieces(n: u8, wait: bool) -> Vec<ObjectRef<Vec<u8>>> {
    let refs: Vec<_> = (0..n).map(piece::remote).collect();
    if wait {
        let (ready, _) = shoal::wait_blocking(&refs, refs.len(), None);
        assert_eq!(ready.len(), refs.len());
    }
    refs
}

/// Reads every piece a value holds refs to: (count, sum of first bytes,
/// total length).
#[shoal::remote]
fn read_pieces(bag: Bag) -> (usize, u64, usize) {
    let mut first = 0u64;
    let mut total = 0;
    for r in &bag.pieces {
        let v = r.get().unwrap();
        first += v[0] as u64;
        total += v.len();
    }
    (bag.pieces.len(), first, total)
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Bag {
    pub label: String,
    pub pieces: Vec<ObjectRef<Vec<u8>>>,
}

fn cluster() -> Cluster {
    Cluster::connected(&[&["--num-cpus", "1"], &["--num-cpus", "1"]])
}

#[test]
fn a_task_returns_refs_to_pieces_its_children_made_and_dropping_them_empties_every_store() {
    let c = cluster();
    // Refs to pieces still being made, and to pieces already made.
    let unfinished = make_pieces::remote(2, false).get_timeout(Duration::from_secs(60)).expect("the refs come back");
    let refs = make_pieces::remote(6, true).get_timeout(Duration::from_secs(60)).expect("the refs come back");
    for (i, r) in unfinished.iter().enumerate() {
        assert_eq!(r.get_timeout(Duration::from_secs(60)).unwrap()[0], i as u8);
    }
    drop(unfinished);
    assert_eq!(refs.len(), 6);
    for (i, r) in refs.iter().enumerate() {
        let v = r.get_timeout(Duration::from_secs(60)).unwrap_or_else(|e| panic!("piece {i}: {e}"));
        assert_eq!((v.len(), v[0], v[PIECE - 1]), (PIECE, i as u8, i as u8), "piece {i} is the bytes its child made");
    }
    wait_for(Duration::from_secs(10), "the pieces to be reported stored", || (c.stored_objects() >= 6).then_some(()));
    // The pieces also work as arguments of the driver's own calls, and
    // inside a value passed to a task.
    let bag = Bag { label: "six".into(), pieces: refs.clone() };
    assert_eq!(read_pieces::remote(bag).get_timeout(Duration::from_secs(60)).unwrap(), (6, 15, 6 * PIECE));
    drop(refs);
    c.wait_stores_empty();
    assert_eq!(c.status()["tasks"]["failed"], 0);
}

#[test]
fn a_put_holding_refs_keeps_them_alive_after_the_driver_drops_its_own() {
    let c = cluster();
    let pieces: Vec<ObjectRef<Vec<u8>>> = (0..3).map(piece::remote).collect();
    let bag = shoal::put(Bag { label: "three".into(), pieces: pieces.clone() }).unwrap();
    drop(pieces);
    // Only the put holds the pieces now; a task reading it still gets them.
    assert_eq!(read_pieces::remote(&bag).get_timeout(Duration::from_secs(60)).unwrap(), (3, 3, 3 * PIECE));
    // The driver reads the bag back: its refs work here too.
    let back = bag.get().unwrap();
    assert_eq!(back.label, "three");
    assert_eq!(back.pieces[2].get().unwrap()[0], 2);
    drop(back);
    drop(bag);
    c.wait_stores_empty();
}

/// A driver that exits frees everything its tasks made, refs or not.
#[test]
fn a_driver_that_exits_frees_what_its_tasks_made() {
    let c = cluster();
    let refs = make_pieces::remote(4, true).get_timeout(Duration::from_secs(60)).unwrap();
    let kept: Vec<ObjectRef<Vec<u8>>> = (0..2).map(piece::remote).collect();
    shoal::wait_blocking(&kept, 2, None);
    wait_for(Duration::from_secs(10), "the pieces to be reported stored", || (c.stored_objects() >= 6).then_some(()));
    tokio::runtime::Runtime::new().unwrap().block_on(shoal::shutdown());
    c.wait_stores_empty();
    wait_for(Duration::from_secs(10), "every job to end", || (c.status()["jobs"] == 0).then_some(()));
    drop((refs, kept));
}

/// Puts a piece, returns a ref to it, and its executor exits soon after.
#[shoal::remote(max_retries = 0)]
fn piece_then_exit() -> ObjectRef<Vec<u8>> {
    let r = shoal::put(vec![7u8; PIECE]).unwrap();
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(300));
        std::process::exit(0);
    });
    r
}

/// An object whose maker (a task's session) is gone while someone still
/// holds a ref to it stays readable, and is freed with its last ref.
#[test]
fn an_object_outlives_the_executor_that_made_it_while_it_is_referenced() {
    let c = cluster();
    let r = piece_then_exit::remote().get_timeout(Duration::from_secs(60)).unwrap();
    wait_for(Duration::from_secs(10), "the maker's session to end", || c.head_log().contains("the session of a task was lost").then_some(()));
    let v = r.get_timeout(Duration::from_secs(30)).expect("still readable");
    assert_eq!((v.len(), v[0]), (PIECE, 7));
    drop(r);
    c.wait_stores_empty();
}
