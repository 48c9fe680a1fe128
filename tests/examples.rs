//! Every example runs, against the embedded cluster, and says what it should.

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("examples").join(name)
}

fn run(name: &str, args: &[&str]) -> String {
    let path = example(name);
    assert!(path.exists(), "{} is not built (cargo builds examples with the tests)", path.display());
    let out = Command::new(&path).args(args).env_remove("SHOAL_ADDRESS").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{name} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn quickstart() {
    let out = run("quickstart", &[]);
    assert!(out.contains("sum of squares (tree reduce on the cluster): 385"), "{out}");
    assert!(out.contains("caught remote error") && out.contains("division of 1 by zero"), "{out}");
}

#[test]
fn process_join() {
    let out = run("process_join", &[]);
    assert_eq!(out.lines().filter(|l| l.starts_with("process ")).count(), 4, "{out}");
}

#[test]
fn pool_square() {
    let out = run("pool_square", &[]);
    assert!(out.contains("map:      [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]"), "{out}");
    assert!(out.contains("imap (input order):                [1, 4, 9, 16]"), "{out}");
}

#[test]
fn monte_carlo_pi() {
    assert!(run("monte_carlo_pi", &[]).contains("pi ~ 3.14"));
}

#[test]
fn recursive_sort() {
    let out = run("recursive_sort", &[]);
    assert!(out.contains("sorted 200000 numbers: 8 runs made by nested tasks, merged and streamed in 20 chunks"), "{out}");
}

#[test]
fn word_count() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("texts");
    let out = run("word_count", &[data.to_str().unwrap()]);
    assert!(out.contains("16 files"), "{out}");
    assert!(out.contains("fast     8002"), "{out}");
}

#[test]
fn parallel_progress() {
    let out = run("parallel_progress", &[]);
    assert!(out.contains("100000 items") && out.contains("77031 (350 steps)"), "{out}");
}
