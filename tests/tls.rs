//! TLS: a head started with a certificate serves workers, `shoal status`
//! and drivers over https, and refuses plaintext.

mod common;

use common::*;

#[shoal::remote]
fn inc(x: u64) -> u64 {
    x + 1
}

#[test]
fn a_tls_head_serves_workers_status_and_drivers_and_refuses_plaintext() {
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
    // Plaintext to a TLS head fails.
    let plain = shoal(elsewhere.path(), &["status", "--address", &format!("127.0.0.1:{port}"), "--token", &c.token]);
    assert!(!plain.status.success(), "plaintext must not work against a TLS head");
    // https without the CA fails with a message naming the fix.
    let no_ca = shoal(elsewhere.path(), &["status", "--address", &c.address, "--token", &c.token]);
    assert!(!no_ca.status.success());
    assert!(String::from_utf8_lossy(&no_ca.stderr).contains("SHOAL_TLS_CA"), "{}", String::from_utf8_lossy(&no_ca.stderr));
    // A certificate the client does not trust is refused.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let other_ca = dir.path().join("other.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let untrusted = shoal(elsewhere.path(), &["status", "--address", &c.address, "--token", &c.token, "--tls-ca", other_ca.to_str().unwrap()]);
    assert!(!untrusted.status.success(), "an untrusted certificate must be refused");
    let trusted = shoal(elsewhere.path(), &["status", "--address", &c.address, "--token", &c.token, "--tls-ca", &cert_s]);
    assert!(trusted.status.success(), "{}", String::from_utf8_lossy(&trusted.stderr));

    // A driver runs tasks over TLS.
    // SAFETY: no other thread of this test process reads the environment now.
    unsafe { std::env::set_var("SHOAL_TLS_CA", &cert) };
    c.connect();
    let refs: Vec<_> = (0..100u64).map(inc::remote).collect();
    assert_eq!(shoal::get_all_blocking(&refs).unwrap(), (1..=100).collect::<Vec<u64>>());
}
