//! A job belongs to its driver and a node id to its worker: another
//! token holder cannot resume someone else's job, and a second worker
//! started with a live node's id is refused instead of evicting it.

mod common;

use common::*;
use shoal_proto::pb::{self, DriverToHead};
use shoal_proto::{PROTOCOL_VERSION, client};
use std::time::Duration;

#[shoal::remote]
fn echo(x: u64) -> u64 {
    x
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn a_job_is_resumed_only_by_the_driver_that_started_it() {
    let c = Cluster::connected(&[&["--num-cpus", "1"]]);
    let r = echo::remote(1);
    assert_eq!(r.get().unwrap(), 1);
    let job = r.id().job();
    // Another program with the token, guessing the job id (a small counter).
    let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let hash = blake3::hash(&exe).to_hex().to_string();
    let refused = rt().block_on(async {
        let mut cl = client::connect(&c.address, Some(&c.token), Duration::from_secs(5)).await.unwrap();
        let hello = DriverToHead {
            hello: Some(pb::DriverHello {
                protocol_version: PROTOCOL_VERSION,
                binary: hash,
                resume_job: job,
                resume_secret: "0".repeat(64),
                ..Default::default()
            }),
            ..Default::default()
        };
        cl.driver_session(futures::stream::iter(vec![hello])).await.err()
    });
    let e = refused.expect("the hijack is refused");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("belongs to another driver"), "{}", e.message());
    // The real driver goes on, its results its own.
    assert_eq!(echo::remote(2).get_timeout(Duration::from_secs(20)).unwrap(), 2);
    assert!(c.head_log().contains("refused a driver resuming a job with the wrong secret"));
}

#[test]
fn a_second_worker_with_a_live_nodes_id_is_refused_and_takes_the_id_once_the_first_is_gone() {
    let mut c = Cluster::head(&["--heartbeat-timeout", "2"]);
    let id = "58e3a1b2-0000-4000-8000-000000000001";
    c.add_worker(&["--num-cpus", "1", "--node-id", id]);
    let first = c.workers[0].child.id();
    let home2 = tempfile::tempdir().unwrap();
    let mut second = c.spawn_worker(home2.path(), &["--num-cpus", "1", "--node-id", id]);
    let log2 = home2.path().join("worker.log");
    wait_for(Duration::from_secs(15), "the second worker to be refused", || {
        std::fs::read_to_string(&log2).unwrap_or_default().contains("is in use by a live worker").then_some(())
    });
    // Longer than the heartbeat timeout: the first is never evicted.
    std::thread::sleep(Duration::from_secs(3));
    let n = c.node(id).expect("the node is known");
    assert_eq!((n["pid"].as_u64(), n["alive"].as_bool()), (Some(first as u64), Some(true)), "{n}");
    assert!(!c.head_log().contains("node marked dead"), "the live worker kept its session:\n{}", c.head_log());
    c.connect();
    assert_eq!(echo::remote(5).get().unwrap(), 5, "and runs tasks");
    // It goes (a service manager restarting the worker): the second gets the id.
    c.kill_worker(0);
    wait_for(Duration::from_secs(20), "the second worker to register under the id", || {
        let n = c.node(id)?;
        (n["pid"].as_u64() == Some(second.id() as u64) && n["alive"] == true).then_some(())
    });
    let _ = second.kill();
    let _ = second.wait();
}
