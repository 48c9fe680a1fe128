//! Bad input gets a clear, typed error and the daemons keep serving:
//! garbage on the head's port, sessions that break the protocol, a program
//! binary that cannot run on the worker.

mod common;

use common::*;
use futures::StreamExt;
use shoal_proto::pb::{self, DriverToHead, WorkerToHead};
use shoal_proto::{PROTOCOL_VERSION, client};
use std::io::Write;
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn garbage_and_malformed_sessions_are_refused_and_the_head_keeps_serving() {
    let mut c = Cluster::head(&[]);
    c.add_worker(&["--num-cpus", "1"]);
    // Raw garbage on the gRPC port.
    for junk in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0xffu8; 4096][..], &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x10\x04\x00\x00\x00\x00\x00"[..]] {
        let mut s = std::net::TcpStream::connect(&c.address).unwrap();
        let _ = s.write_all(junk);
    }
    let rt = rt();
    rt.block_on(async {
        let mut cl = client::connect(&c.address, Some(&c.token), Duration::from_secs(5)).await.unwrap();
        let session = |msgs: Vec<WorkerToHead>| futures::stream::iter(msgs);
        // A worker session that does not start with `register`.
        let e = cl.worker_session(session(vec![WorkerToHead { heartbeat: 1, ..Default::default() }])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("register"), "{}", e.message());
        // A node id that is not a UUID.
        let reg = |node_id: &str, version| WorkerToHead {
            register: Some(pb::RegisterNode { protocol_version: version, node_id: node_id.into(), ..Default::default() }),
            ..Default::default()
        };
        let e = cl.worker_session(session(vec![reg("not-a-uuid", PROTOCOL_VERSION)])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        // Another protocol version.
        let e = cl.worker_session(session(vec![reg("", PROTOCOL_VERSION + 1)])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("protocol version"), "{}", e.message());
        // A driver naming a binary the head does not have.
        let hello = DriverToHead {
            hello: Some(pb::DriverHello { protocol_version: PROTOCOL_VERSION, binary: "0".repeat(64), ..Default::default() }),
            ..Default::default()
        };
        let e = cl.driver_session(futures::stream::iter(vec![hello])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        // A binary id that would be a path.
        let e = cl.fetch_binary(pb::BinaryId { hash: "../../etc/passwd".into() }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        // An upload that lies about its content.
        let chunk = pb::BinaryChunk { hash: "a".repeat(64), total_size: 3, data: bytes::Bytes::from_static(b"abc") };
        let e = cl.upload_binary(futures::stream::iter(vec![chunk])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        // An oversized message.
        let huge = pb::BinaryChunk { hash: "b".repeat(64), total_size: 1, data: bytes::Bytes::from(vec![0u8; shoal_domain::limits::MAX_MESSAGE_BYTES + 10]) };
        let mut small = client::connect(&c.address, Some(&c.token), Duration::from_secs(5)).await.unwrap();
        assert!(small.upload_binary(futures::stream::iter(vec![huge])).await.is_err());
    });
    // Still serving: status works and the worker is alive.
    let st = c.status();
    assert_eq!(st["nodes"].as_array().unwrap().iter().filter(|n| n["alive"] == true).count(), 1, "{st:#}");
    assert!(c.head.try_wait().unwrap().is_none(), "the head is still running");
}

/// A "program" that is a shell script, not an ELF executable: the worker
/// refuses to run it and the task fails with BinaryIncompatible.
#[test]
fn a_binary_that_cannot_run_fails_tasks_with_binary_incompatible() {
    let mut c = Cluster::head(&[]);
    c.add_worker(&["--num-cpus", "1"]);
    let script = b"#!/bin/sh\necho not a shoal program\n".to_vec();
    let hash = blake3_hex(&script);
    let rt = rt();
    let failure = rt.block_on(async {
        let mut cl = client::connect(&c.address, Some(&c.token), Duration::from_secs(5)).await.unwrap();
        let chunk = pb::BinaryChunk { hash: hash.clone(), total_size: script.len() as u64, data: script.clone().into() };
        cl.upload_binary(futures::stream::iter(vec![chunk])).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(DriverToHead {
            hello: Some(pb::DriverHello { protocol_version: PROTOCOL_VERSION, binary: hash.clone(), name: "script".into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut inbound = cl.driver_session(tokio_stream_wrapper(rx)).await.unwrap().into_inner();
        let welcome = inbound.next().await.unwrap().unwrap().welcome.unwrap();
        let task = shoal_domain::ids::object_id(welcome.job, 1);
        tx.send(DriverToHead {
            first_function: 0,
            functions: vec![pb::FunctionDef {
                name: "f".into(),
                resources: Some(pb::Resources { num_cpus: 1.0, ..Default::default() }),
                max_retries: 0,
                retry_exceptions: false,
            }],
            submit: vec![pb::TaskSubmit { id: task, func: 0, args: vec![], ..Default::default() }],
            ..Default::default()
        })
        .await
        .unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), inbound.next()).await.expect("a result, not a hang").unwrap().unwrap();
            if let Some(r) = msg.results.into_iter().find(|r| r.task == task) {
                match r.outcome {
                    Some(pb::task_result::Outcome::Failure(f)) => return f,
                    other => panic!("expected a failure, got {other:?}"),
                }
            }
        }
    });
    assert_eq!(failure.kind, pb::FailureKind::BinaryIncompatible as i32);
    assert!(failure.message.contains("not an ELF"), "{}", failure.message);
    assert_eq!(c.status()["tasks"]["failed"], 1);
}

fn tokio_stream_wrapper(rx: tokio::sync::mpsc::Receiver<DriverToHead>) -> impl futures::Stream<Item = DriverToHead> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}

fn blake3_hex(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, data).unwrap();
    shoal_store::binaries::hash_file(&p).unwrap()
}

#[test]
fn the_object_store_service_refuses_bad_transfers_and_keeps_serving() {
    let mut c = Cluster::head(&[]);
    let w = c.add_worker(&["--num-cpus", "1", "--object-store-memory", "64MiB"]);
    let node = c.node(&c.workers[w].node_id).unwrap();
    let addr = node["object_address"].as_str().unwrap().to_string();
    let store = |c: &Cluster| {
        let s = c.node(&c.workers[w].node_id).unwrap()["store"].clone();
        (s["objects"].as_u64().unwrap(), s["used"].as_u64().unwrap())
    };
    let rt = rt();
    rt.block_on(async {
        // Without the cluster token, or with a wrong one: refused in the
        // TLS handshake, before any request.
        let anon = client::connect_store(&addr, None, Duration::from_secs(5)).await.expect_err("no token: refused");
        assert!(matches!(anon, client::ConnectError::Tls { problem: shoal_proto::tls::TlsProblem::NeedsToken, .. }), "{anon}");
        let wrong = client::connect_store(&addr, Some("not-the-token"), Duration::from_secs(5)).await.expect_err("a wrong token: refused");
        assert!(matches!(wrong, client::ConnectError::Tls { problem: shoal_proto::tls::TlsProblem::WrongToken, .. }), "{wrong}");
        let mut cl = client::connect_store(&addr, Some(&c.token), Duration::from_secs(5)).await.unwrap();
        // Objects that do not exist.
        let e = cl.pull(pb::PullRequest { id: 12345, offset: 0, len: 0 }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
        let e = cl.pin(pb::PinRequest { id: 12345 }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
        let chunk = |id, size, offset, data: &'static [u8]| pb::ObjectChunk { id, size, offset, data: bytes::Bytes::from_static(data) };
        // An object larger than the store, or than anything.
        for size in [128 << 20, u64::MAX] {
            let e = cl.push(futures::stream::iter(vec![chunk(7, size, 0, b"x")])).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
            assert!(e.message().contains("object store full"), "{}", e.message());
        }
        // Chunks out of order, a chunk past the end, a push that stops short.
        let e = cl.push(futures::stream::iter(vec![chunk(8, 6, 0, b"abc"), chunk(8, 6, 5, b"f")])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        let e = cl.push(futures::stream::iter(vec![chunk(9, 2, 0, b"abcdef")])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        let e = cl.push(futures::stream::iter(vec![chunk(10, 6, 0, b"abc")])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("ended after 3 of 6"), "{}", e.message());
        // A write that reserves and then goes away without sealing.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(pb::WriteStep { id: 11, size: 1 << 20, seal: false }).await.unwrap();
        let mut replies = cl.write(tokio_stream_wrapper_steps(rx)).await.unwrap().into_inner();
        assert!(replies.message().await.unwrap().is_some(), "space reserved");
        drop(tx);
        drop(replies);
        // A pull of a range past the end of a real object.
        cl.push(futures::stream::iter(vec![chunk(13, 3, 0, b"abc")])).await.unwrap();
        let e = cl.pull(pb::PullRequest { id: 13, offset: 10, len: 1 }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    });
    // Nothing was left behind but the one object pushed whole, and the
    // worker still runs tasks.
    wait_for(Duration::from_secs(5), "abandoned objects to be reclaimed", || {
        let (objects, used) = store(&c);
        (objects == 1 && used < 4096).then_some(())
    });
    c.connect();
    assert_eq!(echo::remote(41).get().unwrap(), 41);
}

#[shoal::remote]
fn echo(x: u64) -> u64 {
    x
}

fn tokio_stream_wrapper_steps(rx: tokio::sync::mpsc::Receiver<pb::WriteStep>) -> impl futures::Stream<Item = pb::WriteStep> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}

/// The soft and hard open-file limits of process `pid`.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let v: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (v[0], v[1])
}

#[test]
fn a_head_started_under_a_low_open_file_limit_raises_it_and_keeps_answering_with_2000_idle_connections() {
    // This test opens 2,000 sockets itself.
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let hard = lim.rlim_max;
    assert!(hard >= 4096, "this machine's hard open-file limit ({hard}) is too low for the test");
    let home = tempfile::tempdir().unwrap();
    let cmd = format!("ulimit -Sn 1024 && exec {SHOAL} start --head --block --port 0 --bind 127.0.0.1 --num-cpus 0");
    let log = std::fs::File::create(home.path().join("head.log")).unwrap();
    let mut head =
        std::process::Command::new("sh").args(["-c", &cmd]).env("SHOAL_HOME", home.path()).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
    let address = wait_for(Duration::from_secs(20), "the head to start", || {
        let s: serde_json::Value = serde_json::from_slice(&std::fs::read(home.path().join("head.json")).ok()?).ok()?;
        (s["pid"].as_u64()? == head.id() as u64).then(|| s["address"].as_str().map(str::to_string)).flatten()
    });
    assert_eq!(open_file_limits(head.id()), (hard, hard), "the head raised its soft limit from 1,024 to the hard limit");
    // 2,000 connections that never speak.
    let idle: Vec<std::net::TcpStream> = (0..2000).map(|_| std::net::TcpStream::connect(&address).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let t = std::time::Instant::now();
    let out = shoal(home.path(), &["status", "--json"]);
    assert!(out.status.success(), "status answers with 2,000 idle connections open: {}", String::from_utf8_lossy(&out.stderr));
    println!("status with 2,000 idle connections: {:?}", t.elapsed());
    drop(idle);
    let _ = head.kill();
    let _ = head.wait();
}
