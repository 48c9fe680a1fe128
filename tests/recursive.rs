//! Recursive programs on a head and two 1-CPU workers: a quicksort that
//! splits itself and a fan-out tree 10 deep (2,047 tasks), each task
//! waiting for its children. Only possible without deadlock because a
//! task blocked in `get` lends its CPU.

mod common;

use common::*;
use std::time::Duration;

/// Sorts `v`, splitting halves into child tasks above `cutoff` elements.
#[shoal::remote]
fn quicksort(v: Vec<u64>, cutoff: usize) -> Vec<u64> {
    if v.len() <= cutoff {
        let mut v = v;
        v.sort_unstable();
        return v;
    }
    let pivot = v[v.len() / 2];
    let (mut lo, mut mid, mut hi) = (Vec::new(), Vec::new(), Vec::new());
    for x in v {
        match x.cmp(&pivot) {
            std::cmp::Ordering::Less => lo.push(x),
            std::cmp::Ordering::Equal => mid.push(x),
            std::cmp::Ordering::Greater => hi.push(x),
        }
    }
    let (l, h) = (quicksort::remote(lo, cutoff), quicksort::remote(hi, cutoff));
    let mut out = l.get().expect("left half");
    out.extend(mid);
    out.extend(h.get().expect("right half"));
    out
}

/// A full binary tree of tasks `depth` deep: returns how many tasks ran.
#[shoal::remote]
fn tree(depth: u32) -> u64 {
    if depth == 0 {
        return 1;
    }
    let (a, b) = (tree::remote(depth - 1), tree::remote(depth - 1));
    1 + a.get().expect("left subtree") + b.get().expect("right subtree")
}

fn cluster() -> Cluster {
    Cluster::connected(&[&["--num-cpus", "1"], &["--num-cpus", "1"]])
}

#[test]
fn a_recursive_quicksort_of_a_million_numbers_sorts_them() {
    let c = cluster();
    // A fixed pseudo-random sequence (xorshift).
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let v: Vec<u64> = (0..1_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % 10_000_000
        })
        .collect();
    let mut want = v.clone();
    want.sort_unstable();
    let got = quicksort::remote(v, 50_000).get_timeout(Duration::from_secs(300)).expect("sorted");
    assert!(got == want, "the result is the sorted input");
    assert_eq!(c.status()["tasks"]["failed"], 0);
}

#[test]
fn a_fan_out_tree_ten_deep_runs_all_2047_tasks() {
    let c = cluster();
    assert_eq!(tree::remote(10).get_timeout(Duration::from_secs(300)).expect("the tree finishes"), 2047);
    let st = c.status();
    assert_eq!(st["tasks"]["failed"], 0);
}
