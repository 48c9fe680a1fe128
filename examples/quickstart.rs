//! Quickstart: a few remote calls, a small task graph, and an error caught
//! and printed. Runs on an embedded local cluster (nothing to start), or on
//! a cluster started with the CLI when `SHOAL_ADDRESS` is set.
//!
//!     cargo run --release --example quickstart

use std::time::Instant;

/// Squares a number on some node of the cluster.
#[shoal::remote]
fn square(x: u64) -> u64 {
    x * x
}

/// Adds two numbers; given `ObjectRef`s, it runs once both exist.
#[shoal::remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Fails on purpose, to show how a remote panic reaches the caller.
#[shoal::remote]
fn checked_div(a: u64, b: u64) -> u64 {
    if b == 0 {
        panic!("division of {a} by zero");
    }
    a / b
}

#[shoal::main]
async fn main() -> shoal::Result<()> {
    let t0 = Instant::now();
    shoal::init().await?;
    let status = shoal::cluster_status().await?;
    println!("cluster: {} node(s), {} CPUs (ready in {:.0?})", status.alive_nodes().count(), status.total_cpus(), t0.elapsed());

    // Remote calls return at once; the values arrive later.
    let refs: Vec<_> = (1..=10).map(square::remote).collect();
    let squares = shoal::get_all(&refs).await?;
    println!("squares of 1..=10: {squares:?}");

    // A task graph: pairwise sums of the squares, reduced to one value on
    // the cluster. Only the final value comes back here.
    let mut level = refs;
    while level.len() > 1 {
        level = level.chunks(2).map(|p| if p.len() == 2 { add::remote(&p[0], &p[1]) } else { p[0].clone() }).collect();
    }
    println!("sum of squares (tree reduce on the cluster): {}", level[0].get()?);

    // A remote panic comes back as a typed error.
    match checked_div::remote(1, 0).await {
        Ok(v) => println!("unexpected value {v}"),
        Err(e) => println!("caught remote error: {e}"),
    }

    let t1 = Instant::now();
    let many: Vec<_> = (0..10_000u64).map(square::remote).collect();
    let total: u64 = shoal::get_all(&many).await?.into_iter().sum();
    println!("10,000 tasks: sum {total} in {:.0?}", t1.elapsed());
    Ok(())
}
