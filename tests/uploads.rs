//! One upload per program binary: drivers of one program starting at the
//! same moment upload it to the head once; the others wait for that upload.

mod common;

use common::*;
use std::process::Command;
use std::time::Instant;

#[shoal::remote]
fn double(x: u64) -> u64 {
    2 * x
}

#[test]
#[ignore = "helper: run by concurrent_drivers_of_one_program_upload_it_once"]
fn helper_driver_runs_one_task() {
    let Ok(address) = std::env::var("SHOAL_TEST_ADDRESS") else { return };
    let token = std::env::var("SHOAL_TEST_TOKEN").unwrap();
    let t = Instant::now();
    shoal::init_blocking_with(shoal::InitConfig::default().address(address).token(token)).unwrap();
    println!("init took {:?}", t.elapsed());
    assert_eq!(double::remote(21).get().unwrap(), 42);
}

#[test]
fn concurrent_drivers_of_one_program_upload_it_once() {
    let mut c = Cluster::head(&[]);
    c.add_worker(&["--num-cpus", "1"]);
    // All started before any is waited for.
    let drivers: Vec<_> = (0..8)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "helper_driver_runs_one_task", "--ignored", "--nocapture"])
                .env("SHOAL_TEST_ADDRESS", &c.address)
                .env("SHOAL_TEST_TOKEN", &c.token)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for d in drivers {
        let out = d.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("1 passed"), "a driver failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
        print!("{}", text.lines().filter(|l| l.starts_with("init took")).collect::<Vec<_>>().join("\n") + "\n");
    }
    let stored = c.head_log().matches("program binary stored").count();
    assert_eq!(stored, 1, "8 drivers of one program uploaded it {stored} times");
}
