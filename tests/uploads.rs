//! One upload per program binary: drivers of one program starting at the
//! same moment upload it to the head once; the others wait for that upload.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[shoal::remote]
fn double(x: u64) -> u64 {
    2 * x
}

#[test]
#[ignore = "helper: run by concurrent_drivers_of_one_program_upload_it_once"]
fn helper_driver_runs_one_task() {
    let t = Instant::now();
    if !connect_as_helper_driver() {
        return;
    }
    println!("init took {}", t.elapsed().as_micros());
    assert_eq!(double::remote(21).get().unwrap(), 42);
}

/// Starts `n` helper drivers at once; returns each one's `init` time,
/// sorted, after checking the program was uploaded once.
fn drivers_at_once(n: usize) -> Vec<Duration> {
    let mut c = Cluster::head(&[]);
    c.add_worker(&["--num-cpus", "1"]);
    // All started before any is waited for.
    let name = "helper_driver_runs_one_task";
    let drivers: Vec<_> = (0..n).map(|_| c.spawn_helper_driver(name)).collect();
    let mut inits: Vec<Duration> = drivers
        .into_iter()
        .map(|d| {
            let text = helper_passed(name, d);
            let line = text.lines().find_map(|l| l.strip_prefix("init took ")).expect("the helper prints its init time").to_string();
            let us: f64 = line.trim().parse().expect("microseconds");
            Duration::from_secs_f64(us / 1e6)
        })
        .collect();
    inits.sort();
    let stored = c.head_log().matches("program binary stored").count();
    assert_eq!(stored, 1, "{n} drivers of one program uploaded it {stored} times");
    inits
}

#[test]
fn concurrent_drivers_of_one_program_upload_it_once() {
    let inits = drivers_at_once(8);
    println!("init of 8 drivers at once: median {:?}, max {:?}", inits[4], inits[7]);
}

/// Figures, not a timed test: `SHOAL_DRIVERS=200 cargo nextest run --release
/// -p shoal-cli --test uploads many --run-ignored only --no-capture`.
#[test]
#[ignore = "figures: starts SHOAL_DRIVERS (200) driver processes"]
fn many_drivers_starting_at_once() {
    let n: usize = std::env::var("SHOAL_DRIVERS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let t = Instant::now();
    let inits = drivers_at_once(n);
    println!("{n} drivers at once: init median {:?}, p90 {:?}, max {:?}; all done in {:?}", inits[n / 2], inits[n * 9 / 10], inits[n - 1], t.elapsed());
}
