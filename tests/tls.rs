//! Encryption: a cluster started with defaults is TLS on every port (the
//! head's and each worker's object store), with nothing to provision: a
//! packet capture of its loopback traffic holds neither the token nor the
//! data. A head may serve its own certificate instead; every way that can
//! go wrong says what it is.

mod common;

use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[shoal::remote]
fn inc(x: u64) -> u64 {
    x + 1
}

#[shoal::remote]
fn echo(s: String) -> String {
    format!("{s}{s}")
}

/// An object made of a marker, repeated.
#[shoal::remote]
fn marked(marker: String, copies: usize) -> shoal::Buffer {
    shoal::Buffer::from(marker.repeat(copies).into_bytes())
}

#[shoal::remote]
fn count(b: shoal::Buffer) -> usize {
    b.len()
}

/// Every frame on the loopback interface while it runs (AF_PACKET: what
/// tcpdump sees).
struct Capture {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u8>>,
}

impl Capture {
    fn start() -> Capture {
        // SAFETY: plain socket syscalls on values we own; the fd is closed
        // by the capture thread.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as i32) };
        assert!(fd >= 0, "a packet capture needs CAP_NET_RAW (run the tests as root): {}", std::io::Error::last_os_error());
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        assert!(lo > 0, "no loopback interface");
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = lo as i32;
        let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
        unsafe {
            assert_eq!(libc::bind(fd, &addr as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as u32), 0);
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv as *const _ as *const libc::c_void, std::mem::size_of::<libc::timeval>() as u32);
            // A large buffer: a 4 MiB transfer must not be dropped unseen.
            let size: libc::c_int = 64 << 20;
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &size as *const _ as *const libc::c_void, 4);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = vec![0u8; 1 << 17];
            while !flag.load(Ordering::Relaxed) {
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
                if n > 0 {
                    all.extend_from_slice(&buf[..n as usize]);
                }
            }
            unsafe { libc::close(fd) };
            all
        });
        Capture { stop, thread }
    }

    fn stop(self) -> Vec<u8> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// A plain (unencrypted) HTTP/2 gRPC call to `addr` gets no answer.
fn plaintext_is_refused(rt: &tokio::runtime::Runtime, addr: &str) {
    rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_timeout(Duration::from_secs(3)).connect().await;
        if let Ok(ch) = ch {
            let mut head = shoal_proto::pb::head_client::HeadClient::new(ch.clone());
            let e = head.status(shoal_proto::pb::StatusRequest::default()).await.expect_err("plaintext must not be served");
            assert!(!matches!(e.code(), tonic::Code::Unauthenticated | tonic::Code::Ok), "a plaintext request reached the service: {e:?}");
            let mut store = shoal_proto::pb::object_store_client::ObjectStoreClient::new(ch);
            let e = store.pin(shoal_proto::pb::PinRequest { id: 1 }).await.expect_err("plaintext must not be served");
            assert!(!matches!(e.code(), tonic::Code::Unauthenticated | tonic::Code::NotFound), "a plaintext request reached the service: {e:?}");
        }
    });
}

#[test]
fn a_default_cluster_encrypts_every_port_and_a_capture_holds_neither_token_nor_data() {
    let mut c = Cluster::head(&[]);
    assert!(!c.address.contains("://"), "a plain host:port is the join address: {}", c.address);
    // Both stream objects over their ports, as between hosts (on one
    // machine they would copy from each other's memory instead).
    let no_mapping = [("SHOAL_MAP_PEER_STORES", std::path::Path::new("0"))];
    c.add_worker_env(&["--num-cpus", "1", "--resources", "a=1"], &no_mapping);
    c.add_worker_env(&["--num-cpus", "1", "--resources", "b=1"], &no_mapping);
    let capture = Capture::start();
    c.connect();
    let marker = "PLAINTEXT-MARKER-7f3c1e0b";
    assert_eq!(echo::remote(marker.to_string()).get().unwrap(), format!("{marker}{marker}"));
    // 4 MiB made on `a` and read on `b`: a pull between the two workers'
    // object stores, over the network even on one machine.
    let obj = marked::options().resources(&[("a", 1.0)]).remote(marker.to_string(), (4 << 20) / marker.len());
    assert_eq!(count::options().resources(&[("b", 1.0)]).remote(&obj).get().unwrap(), (4 << 20) / marker.len() * marker.len());
    let refs: Vec<_> = (0..200u64).map(inc::remote).collect();
    assert_eq!(shoal::get_all_blocking(&refs).unwrap(), (1..=200).collect::<Vec<u64>>());
    // The positive control: plaintext sent over loopback now is captured.
    let control = "CAPTURE-CONTROL-5d21";
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    // Several times: other tests' traffic on loopback can make the capture
    // drop a packet while it is busy.
    for _ in 0..10 {
        std::io::Write::write_all(&mut s, control.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let seen = capture.stop();
    assert!(contains(&seen, control.as_bytes()), "the capture works ({} bytes captured)", seen.len());
    assert!(seen.len() > 4 << 20, "the workload's traffic was captured: {} bytes", seen.len());
    assert!(!contains(&seen, c.token.as_bytes()), "the token crossed loopback in the clear");
    assert!(!contains(&seen, marker.as_bytes()), "task data crossed loopback in the clear");
    assert!(!contains(&seen, b"authorization"), "an HTTP/2 header crossed loopback in the clear");

    // Plaintext HTTP/2 gets nothing from the head or from either store.
    let rt = tokio::runtime::Runtime::new().unwrap();
    plaintext_is_refused(&rt, &c.address);
    for n in c.status()["nodes"].as_array().unwrap() {
        plaintext_is_refused(&rt, n["object_address"].as_str().unwrap());
    }
}

/// A CA, and a certificate for `names` it signed, valid until `until`
/// (years from now, negative: already expired).
fn ca_and_leaf(names: &[&str], expired: bool) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    if expired {
        leaf.not_before = rcgen::date_time_ymd(2020, 1, 1);
        leaf.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

/// `shoal status` against a head serving `cert`, trusting `ca`: its stderr
/// on failure, `None` on success.
fn status_with(cert: &str, key: &str, ca: &str) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = (write(dir.path(), "cert.pem", cert), write(dir.path(), "key.pem", key), write(dir.path(), "ca.pem", ca));
    let c = Cluster::head(&["--tls-cert", &cert, "--tls-key", &key]);
    let elsewhere = tempfile::tempdir().unwrap();
    let out = shoal(elsewhere.path(), &["status", "--address", &c.address, "--token", &c.token, "--tls-ca", &ca]);
    (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_wrong_ca_a_name_mismatch_and_an_expired_certificate_each_say_so() {
    let (ca, cert, key) = ca_and_leaf(&["localhost"], false);
    assert_eq!(status_with(&cert, &key, &ca), None, "a certificate from the given CA, for the name connected to");
    let (other_ca, _, _) = ca_and_leaf(&["localhost"], false);
    let e = status_with(&cert, &key, &other_ca).expect("another CA is refused");
    assert!(e.contains("untrusted CA"), "{e}");
    let (ca2, misnamed, key2) = ca_and_leaf(&["elsewhere.example"], false);
    let e = status_with(&misnamed, &key2, &ca2).expect("another name is refused");
    assert!(e.contains("name mismatch") && e.contains("elsewhere.example"), "{e}");
    let (ca3, old, key3) = ca_and_leaf(&["localhost"], true);
    let e = status_with(&old, &key3, &ca3).expect("an expired certificate is refused");
    assert!(e.contains("expired"), "{e}");
}

#[test]
fn an_ordinary_self_signed_certificate_works_as_its_own_ca() {
    // As `openssl req -x509 -subj /CN=myhead` makes it: a CA certificate,
    // no subject alternative name.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, "myhead");
    let cert = p.self_signed(&key).unwrap();
    assert_eq!(status_with(&cert.pem(), &key.serialize_pem(), &cert.pem()), None);
}

#[test]
fn a_head_with_its_own_certificate_serves_workers_status_and_drivers_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let cert_s = cert.to_string_lossy().into_owned();
    let mut c = Cluster::head(&["--tls-cert", &cert_s, "--tls-key", key.to_str().unwrap()]);
    assert!(c.address.starts_with("https://localhost:"), "{}", c.address);
    let port = c.address.rsplit(':').next().unwrap().to_string();

    // A worker joins over TLS, and status works from the head's session dir.
    c.add_worker(&["--num-cpus", "1", "--tls-ca", &cert_s]);
    assert_eq!(c.status()["nodes"].as_array().unwrap().iter().filter(|n| n["alive"] == true).count(), 1);

    let elsewhere = tempfile::tempdir().unwrap();
    // Without the head's CA, the token's cluster CA does not vouch for the
    // head's own certificate: the message names the fix.
    let no_ca = shoal(elsewhere.path(), &["status", "--address", &c.address, "--token", &c.token]);
    assert!(!no_ca.status.success());
    assert!(String::from_utf8_lossy(&no_ca.stderr).contains("SHOAL_TLS_CA"), "{}", String::from_utf8_lossy(&no_ca.stderr));
    let trusted = shoal(elsewhere.path(), &["status", "--address", &format!("127.0.0.1:{port}"), "--token", &c.token, "--tls-ca", &cert_s]);
    assert!(trusted.status.success(), "the pinned certificate is accepted at any address: {}", String::from_utf8_lossy(&trusted.stderr));
    let rt = tokio::runtime::Runtime::new().unwrap();
    plaintext_is_refused(&rt, &format!("127.0.0.1:{port}"));

    // A driver runs tasks over TLS.
    // SAFETY: no other thread of this test process reads the environment now.
    unsafe { std::env::set_var("SHOAL_TLS_CA", &cert) };
    c.connect();
    let refs: Vec<_> = (0..100u64).map(inc::remote).collect();
    assert_eq!(shoal::get_all_blocking(&refs).unwrap(), (1..=100).collect::<Vec<u64>>());
}
