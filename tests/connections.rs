//! The connections a server holds: bounded per peer address (a peer past
//! its bound is told why), closed when they send no request with the
//! token in time or sit idle, while Shoal's own links (open streams, kept
//! channels) outlive the idle timeout.

mod common;

use common::*;
use shoal::Buffer;
use shoal_proto::{client, pb};
use std::io::Read;
use std::time::{Duration, Instant};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Connects to `address` and waits for the server to close the connection
/// without a byte sent; returns how long that took.
fn closed_after(address: &str, what: impl FnOnce(&mut std::net::TcpStream)) -> Duration {
    let mut s = std::net::TcpStream::connect(address.trim_start_matches("https://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let t = Instant::now();
    what(&mut s);
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return t.elapsed(),
            // TLS records (a handshake's server messages): keep reading.
            Ok(_) => continue,
        }
    }
}

#[test]
fn a_peer_past_its_bound_is_told_why_and_silent_and_idle_connections_are_closed() {
    let c = Cluster::head(&["--max-connections-per-peer", "3", "--idle-timeout", "2", "--handshake-timeout", "1"]);
    let rt = rt();
    let connect = || rt.block_on(client::connect(&c.address, Some(&c.token), Duration::from_secs(5))).unwrap();
    let status = |cl: &mut client::Client| rt.block_on(cl.status(pb::StatusRequest::default()));
    let mut held: Vec<_> = (0..3).map(|_| connect()).collect();
    for cl in &mut held {
        status(cl).expect("three connections from one address fit its bound");
    }
    let mut fourth = connect();
    let e = status(&mut fourth).expect_err("a fourth connection from this address is over its bound");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("--max-connections-per-peer") && e.message().contains("127.0.0.1"), "{}", e.message());

    // A connection that never speaks is dropped at the deadline (1 s), not
    // held forever; so is one that finishes its TLS handshake and then
    // sends nothing.
    let silent = closed_after(&c.address, |_| {});
    assert!(silent < Duration::from_secs(5), "a silent connection lived {silent:?}");
    let host = c.address.trim_start_matches("https://").rsplit_once(':').unwrap().0.to_string();
    let handshaken = rt.block_on(async {
        let cfg = shoal_proto::tls::client_config(Some(&c.token), &shoal_proto::tls::Peer::Head { host: host.clone() }).unwrap();
        let tcp = tokio::net::TcpStream::connect(c.address.trim_start_matches("https://")).await.unwrap();
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone()).unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.expect("the cluster's own TLS handshake");
        let t = Instant::now();
        let mut buf = [0u8; 1024];
        loop {
            // The server's HTTP/2 settings come first; then the close.
            match tokio::time::timeout(Duration::from_secs(15), tokio::io::AsyncReadExt::read(&mut tls, &mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return t.elapsed(),
                Ok(Ok(_)) => continue,
                Err(_) => panic!("the server kept a connection with no request for 15 s"),
            }
        }
    });
    assert!(handshaken < Duration::from_secs(5), "a handshaken connection with no request lived {handshaken:?}");

    // The three held ones go idle; after the idle timeout (2 s) the head
    // closes them, which frees the address's slots: the fourth gets in,
    // and a closed client dials anew on its next call by itself.
    wait_for(Duration::from_secs(20), "room once the idle connections are closed", || status(&mut fourth).ok());
    assert!(c.head_log().contains("closed an idle connection"), "{}", c.head_log());
    status(&mut held[0]).expect("a client whose idle connection was closed reconnects on its next call");
    let log = c.head_log();
    assert!(log.contains("already holds 3 connections"), "the refusal is logged:\n{log}");
    assert!(log.contains("sent no authenticated request within the deadline"), "{log}");
}

#[test]
fn an_insecure_head_drops_connections_that_send_no_request() {
    // Without TLS there is no handshake to time out: the deadline is on
    // the first request itself.
    let c = Cluster::head(&["--insecure", "--handshake-timeout", "1"]);
    let lived = closed_after(&c.address, |_| {});
    assert!(lived >= Duration::from_millis(900) && lived < Duration::from_secs(5), "a silent plaintext connection lived {lived:?}");
    assert!(c.head_log().contains("sent no authenticated request within the deadline"), "{}", c.head_log());
    let out = c.cli(&["status", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[shoal::remote(resources(a = 1))]
fn make(n: usize) -> Buffer {
    Buffer::from(vec![7u8; n])
}

#[shoal::remote(resources(b = 1))]
fn total(b: Buffer) -> u64 {
    b.iter().map(|x| *x as u64).sum()
}

#[test]
fn sessions_and_kept_channels_outlive_the_idle_timeout() {
    let mut c = Cluster::head(&["--idle-timeout", "1"]);
    c.add_worker(&["--num-cpus", "1", "--resources", "a=1", "--idle-timeout", "1"]);
    c.add_worker(&["--num-cpus", "1", "--resources", "b=1", "--idle-timeout", "1"]);
    c.connect();
    for round in 0..3 {
        // Worker b pulls from worker a's store each round, on the channel
        // it kept; the driver's and workers' sessions are open streams.
        let r = total::remote(make::remote(1 << 20));
        assert_eq!(r.get_timeout(Duration::from_secs(30)).unwrap(), 7 << 20, "round {round}");
        // The driver puts into, and reads from, this machine's store on
        // the channel it kept too (a large value: through the store).
        let big = shoal::put(Buffer::from(vec![7u8; 4 << 20])).unwrap();
        assert_eq!(total::remote(&big).get_timeout(Duration::from_secs(30)).unwrap(), 7 << 22, "round {round}");
        assert_eq!(big.get().unwrap().len(), 4 << 20, "round {round}");
        std::thread::sleep(Duration::from_millis(2500));
    }
    let log = c.head_log();
    assert!(!log.contains("node marked dead"), "{log}");
    // Worker a's store did close b's kept channel between rounds: the
    // pulls after it came through a fresh connection.
    let a_log = std::fs::read_to_string(c.workers[0].home.path().join("worker.log")).unwrap();
    assert!(a_log.contains("closed an idle connection"), "{a_log}");
}
