//! The foundation, end to end with real processes: a head and workers
//! started by the `shoal` CLI, membership and heartbeats as `shoal status`
//! shows them, and the cluster token.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn status_shows_workers_their_resources_death_and_return() {
    let mut c = Cluster::head(&["--heartbeat-timeout", "1.5"]);
    let pinned = "6a1f3c1e-2b7d-4c59-9a34-0d9e8f7a6b5c";
    let a = c.add_worker(&["--num-cpus", "2"]);
    let b = c.add_worker(&["--num-cpus", "1", "--resources", "gpu=1", "--node-id", pinned]);
    assert_eq!(c.workers[b].node_id, pinned);

    let st = c.status();
    let nodes = st["nodes"].as_array().unwrap();
    assert_eq!(nodes.iter().filter(|n| n["alive"] == true).count(), 2, "{st:#}");
    let na = c.node(&c.workers[a].node_id).unwrap();
    assert_eq!(na["resources"]["cpus"], 2.0);
    assert!(na["resources"].get("gpu").is_none());
    let nb = c.node(pinned).unwrap();
    assert_eq!((nb["resources"]["cpus"].as_f64(), nb["resources"]["gpu"].as_f64()), (Some(1.0), Some(1.0)));
    assert_eq!(nb["address"], "127.0.0.1");
    assert_eq!(st["tasks"], serde_json::json!({"queued": 0, "running": 0, "finished": 0, "failed": 0}));

    // A frozen worker misses heartbeats: dead within the timeout...
    let pid_a = c.workers[a].child.id();
    signal(pid_a, libc::SIGSTOP);
    let id_a = c.workers[a].node_id.clone();
    wait_for(Duration::from_secs(6), "the frozen worker to be declared dead", || (c.node(&id_a)?["alive"] == false).then_some(()));
    // ...and when it thaws, it re-registers under the same id on its own.
    signal(pid_a, libc::SIGCONT);
    wait_for(Duration::from_secs(10), "the thawed worker to come back", || (c.node(&id_a)?["alive"] == true).then_some(()));

    // A killed worker is dead; restarted with its node id it is alive again.
    c.kill_worker(b);
    wait_for(Duration::from_secs(6), "the killed worker to be declared dead", || (c.node(pinned)?["alive"] == false).then_some(()));
    assert!(c.head_log().contains("node marked dead"), "the head logs deaths");
    let again = c.add_worker(&["--num-cpus", "1", "--resources", "gpu=1", "--node-id", pinned]);
    assert_eq!(c.workers[again].node_id, pinned);
    let nb = c.node(pinned).unwrap();
    assert_eq!(nb["alive"], true);
    assert_eq!(c.status()["nodes"].as_array().unwrap().len(), 2, "the same node, not a new one");
}

#[test]
fn wrong_or_missing_token_is_refused_and_the_head_keeps_serving() {
    let mut c = Cluster::head(&[]);
    let elsewhere = tempfile::tempdir().unwrap();

    let wrong = shoal(elsewhere.path(), &["status", "--address", &c.address, "--token", "not-the-token"]);
    assert!(!wrong.status.success());
    let msg = String::from_utf8_lossy(&wrong.stderr);
    assert!(msg.contains("refused the cluster token") && msg.contains("wrong"), "{msg}");

    let missing = shoal(elsewhere.path(), &["status", "--address", &c.address]);
    assert!(!missing.status.success());
    let msg = String::from_utf8_lossy(&missing.stderr);
    assert!(msg.contains("refused the cluster token") && msg.contains("missing"), "{msg}");

    // A worker with a wrong token is refused and exits with a clear error.
    let w = shoal(elsewhere.path(), &["start", "--block", "--address", &c.address, "--token", "not-the-token", "--num-cpus", "1"]);
    assert!(!w.status.success());
    let msg = String::from_utf8_lossy(&w.stderr);
    assert!(msg.contains("refused this worker") && msg.contains("wrong cluster token"), "{msg}");

    // The right token from the environment works, and the head still serves.
    let ok = std::process::Command::new(SHOAL)
        .args(["status", "--json", "--address", &c.address])
        .env("SHOAL_HOME", elsewhere.path())
        .env("SHOAL_TOKEN", &c.token)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    c.add_worker(&["--num-cpus", "1"]);
    assert_eq!(c.status()["nodes"].as_array().unwrap().len(), 1, "the refused worker never joined");
}

#[test]
fn token_file_is_private_and_insecure_mode_warns() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::head(&[]);
    let mode = std::fs::metadata(c.token_file()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "token file mode is {mode:o}");
    assert_eq!(c.token.len(), 64);

    let insecure = Cluster::head(&["--insecure"]);
    assert!(insecure.head_log().contains("WITHOUT a cluster token"));
    let elsewhere = tempfile::tempdir().unwrap();
    let out = shoal(elsewhere.path(), &["status", "--address", &insecure.address]);
    assert!(out.status.success(), "an insecure head serves anyone");
}

#[test]
fn daemon_mode_start_status_stop() {
    let home = tempfile::tempdir().unwrap();
    let out = shoal(home.path(), &["start", "--head", "--port", "0", "--num-cpus", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("shoal start --address") && text.contains("--token-file"), "prints the join command: {text}");
    // No flags needed on the head's machine: address and token come from the session dir.
    let st = shoal(home.path(), &["status", "--json"]);
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["nodes"].as_array().unwrap().len(), 1, "the head runs a local worker: {st:#}");
    let pid: u32 = serde_json::from_slice::<serde_json::Value>(&std::fs::read(home.path().join("head.json")).unwrap()).unwrap()["pid"].as_u64().unwrap() as u32;
    let logs = shoal(home.path(), &["logs", "--role", "head", "-n", "500"]);
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.status.success() && text.contains("head listening") && text.contains("node registered"), "{text}");
    let stop = shoal(home.path(), &["stop"]);
    assert!(String::from_utf8_lossy(&stop.stdout).contains(&format!("Stopped head (pid {pid})")));
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists() || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap().contains(") Z"));
    let st = shoal(home.path(), &["status"]);
    assert!(!st.status.success(), "no head after stop");
}

#[test]
fn submit_runs_a_program_against_the_cluster() {
    let mut c = Cluster::head(&[]);
    c.add_worker(&["--num-cpus", "2"]);
    // The environment it gets.
    let env = shoal(c.home.path(), &["submit", "--", "sh", "-c", "echo $SHOAL_ADDRESS $SHOAL_TOKEN"]);
    assert!(env.status.success());
    assert_eq!(String::from_utf8_lossy(&env.stdout).trim(), format!("{} {}", c.address, c.token));
    // A real program: the quickstart example, run on this cluster.
    let exe = std::env::current_exe().unwrap();
    let quickstart = exe.parent().unwrap().parent().unwrap().join("examples").join("quickstart");
    let out = shoal(c.home.path(), &["submit", "--", quickstart.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("sum of squares (tree reduce on the cluster): 385"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let st = c.status();
    assert!(st["tasks"]["finished"].as_u64().unwrap() > 10_000, "the tasks ran on this cluster");
    // A program that returned from main left cleanly: its job ended at
    // once, not after the grace period the head gives a lost driver.
    assert_eq!(st["jobs"], 0, "the finished program's job is gone: {st}");
    // The program's exit code comes back.
    let fail = shoal(c.home.path(), &["submit", "--", "sh", "-c", "exit 7"]);
    assert_eq!(fail.status.code(), Some(7));
}
