//! The deployment files are valid for the tools that read them.

use std::process::Command;

/// `systemd-analyze verify` accepts each unit (with ExecStart pointed at
/// the binary built here, since verify checks that it exists).
#[test]
fn systemd_units_verify() {
    let have = Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(have, "systemd-analyze is needed to check the units (Debian package: systemd)");
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    for unit in ["shoal-head.service", "shoal-worker.service"] {
        let text = std::fs::read_to_string(format!("{root}/deploy/systemd/{unit}")).unwrap();
        assert!(text.contains("/usr/local/bin/shoal start") && text.contains("--block"), "{unit} runs shoal in the foreground");
        let text = text.replace("/usr/local/bin/shoal", env!("CARGO_BIN_EXE_shoal")).replace("EnvironmentFile=/etc/shoal/worker.env", "");
        let path = dir.path().join(unit);
        std::fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // verify also lints units it pulls in from the host; only this unit's lines matter.
        let ours: Vec<&str> = stderr.lines().filter(|l| l.contains(unit)).collect();
        assert!(out.status.success() && ours.is_empty(), "{unit}: {stderr}");
    }
}
