//! `Pool`: `map`, `starmap`, `apply` and their async forms, and the order
//! in which results arrive (`imap` keeps input order, `imap_unordered`
//! yields as tasks finish).
//!
//!     cargo run --release --example pool_square

use shoal::Pool;
use std::time::Duration;

#[shoal::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[shoal::remote]
fn power(x: u64, e: u32) -> u64 {
    x.pow(e)
}

/// Sleeps longer for smaller inputs, so results finish out of input order.
#[shoal::remote]
fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(40 * (5 - x)));
    x * x
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    shoal::init_blocking()?;
    let pool = Pool::new(4)?;
    println!("map:      {:?}", pool.map(square::func, 0..10u64)?);
    println!("starmap:  {:?}", pool.starmap(power::func, vec![(2, 10), (3, 3), (10, 2)])?);
    println!("apply:    {}", pool.apply(square::func, (12,))?);

    let a = pool.apply_async(square::func, (13,))?;
    let m = pool.map_async(square::func, 0..5u64)?;
    let s = pool.starmap_async(power::func, vec![(2, 5), (5, 2)])?;
    println!("apply_async: {} (ready: {})", a.get()?, a.ready());
    println!("map_async:   {:?}", m.get()?);
    println!("starmap_async: {:?}", s.get()?);

    let ordered: Vec<u64> = pool.imap(slow_square::func, 1..5u64)?.collect::<Result<_, _>>()?;
    println!("imap (input order):                {ordered:?}");
    let pool1 = Pool::new(4)?.chunksize(1);
    let arrived: Vec<u64> = pool1.imap_unordered(slow_square::func, 1..5u64)?.collect::<Result<_, _>>()?;
    println!("imap_unordered (completion order): {arrived:?}");
    pool.close();
    pool.join();
    Ok(())
}
