//! One upload per program binary: drivers of one program starting at the
//! same moment upload it to the head once; the others wait for that upload.

mod common;

use common::*;
use std::time::Instant;

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
    println!("init took {:?}", t.elapsed());
    assert_eq!(double::remote(21).get().unwrap(), 42);
}

#[test]
fn concurrent_drivers_of_one_program_upload_it_once() {
    let mut c = Cluster::head(&[]);
    c.add_worker(&["--num-cpus", "1"]);
    // All started before any is waited for.
    let name = "helper_driver_runs_one_task";
    let drivers: Vec<_> = (0..8).map(|_| c.spawn_helper_driver(name)).collect();
    for d in drivers {
        let text = helper_passed(name, d);
        println!("{}", text.lines().filter(|l| l.starts_with("init took")).collect::<Vec<_>>().join("\n"));
    }
    let stored = c.head_log().matches("program binary stored").count();
    assert_eq!(stored, 1, "8 drivers of one program uploaded it {stored} times");
}
