//! joblib-style `Parallel` over 100,000 items, in automatic batches, with a
//! progress bar (drawn only on a terminal).
//!
//!     cargo run --release --example parallel_progress

#[shoal::remote]
fn collatz_steps(mut n: u64) -> u32 {
    let mut steps = 0;
    while n > 1 {
        n = if n.is_multiple_of(2) { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    steps
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    shoal::init_blocking()?;
    let t = std::time::Instant::now();
    let steps = shoal::Parallel::new().progress(true).run((1..=100_000u64).map(|n| collatz_steps::func.call(n)))?;
    let (best, n) = steps.iter().enumerate().map(|(i, s)| (*s, i + 1)).max().unwrap();
    println!("{} items in {:.2?}; longest Collatz chain below 100,000: {n} ({best} steps)", steps.len(), t.elapsed());
    Ok(())
}
