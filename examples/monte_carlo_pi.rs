//! Estimate pi from many independent random samples, reduced on the
//! driver: the classic embarrassingly parallel job.
//!
//!     cargo run --release --example monte_carlo_pi

/// Counts how many of `n` pseudo-random points of the unit square fall in
/// the quarter circle (xorshift RNG, seeded per task).
#[shoal::remote]
fn hits(seed: u64, n: u64) -> u64 {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .filter(|_| {
            let (x, y) = (next(), next());
            x * x + y * y <= 1.0
        })
        .count() as u64
}

fn main() -> shoal::Result<()> {
    shoal::init_blocking()?;
    let (tasks, per_task) = (64u64, 500_000u64);
    let t = std::time::Instant::now();
    let refs: Vec<_> = (0..tasks).map(|seed| hits::remote(seed, per_task)).collect();
    let inside: u64 = shoal::get_all_blocking(&refs)?.into_iter().sum();
    let pi = 4.0 * inside as f64 / (tasks * per_task) as f64;
    println!("pi ~ {pi:.5} from {} samples in {:.2?}", tasks * per_task, t.elapsed());
    assert!((pi - std::f64::consts::PI).abs() < 0.01);
    Ok(())
}
