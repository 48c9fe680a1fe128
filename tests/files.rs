//! What a cluster leaves on disk is its user's only: the session dir, the
//! head's records and durable log (task arguments and results), the token,
//! spill files; and a SIGKILLed worker's spill files do not stay forever.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const MIB: usize = 1 << 20;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

/// The spill dirs of workers whose session dir is `home` (one per worker
/// process: `home/spill/<pid>`).
fn spill_dirs(home: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(home.join("spill")).map(|r| r.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

#[test]
fn session_records_log_token_and_spill_files_are_private_and_a_dead_workers_spill_files_go() {
    let mut c = Cluster::head(&[]);
    let home = c.home.path().to_path_buf();
    assert_eq!(mode(&home), 0o700, "the session dir");
    assert_eq!(mode(&home.join("head.json")), 0o600, "head.json");
    assert_eq!(mode(&home.join("token")), 0o600, "the token");
    assert_eq!(mode(&home.join("head-data")), 0o700, "the head's data dir");
    assert_eq!(mode(&home.join("head-data").join("head.redb")), 0o600, "the durable log holds task arguments and results");
    // A worker whose store is small: puts spill to disk.
    let wh = tempfile::tempdir().unwrap();
    c.add_worker_env(&["--num-cpus", "1", "--object-store-memory", "32MiB"], &[("SHOAL_HOME", wh.path())]);
    c.connect();
    let refs: Vec<_> = (0..4).map(|i| shoal::put(pattern(12 * MIB, i)).unwrap()).collect();
    let dir = wait_for(Duration::from_secs(20), "a spill file", || {
        spill_dirs(wh.path()).into_iter().find(|d| std::fs::read_dir(d).map(|mut r| r.next().is_some()).unwrap_or(false))
    });
    assert_eq!(mode(&dir), 0o700, "the spill dir");
    assert_eq!(mode(&wh.path().join("spill")), 0o700, "the dir of spill dirs");
    for f in std::fs::read_dir(&dir).unwrap().flatten() {
        assert_eq!(mode(&f.path()), 0o600, "spill file {}", f.path().display());
    }
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(digest(&r.get().unwrap()), digest(&pattern(12 * MIB, i as u64)), "read back");
    }
    // SIGKILL: the worker cannot clean up; the next worker on the machine does.
    c.kill_worker(0);
    assert!(dir.exists(), "a SIGKILLed worker leaves its spill files");
    c.add_worker_env(&["--num-cpus", "1"], &[("SHOAL_HOME", wh.path())]);
    assert!(!dir.exists(), "the next worker removed the dead worker's spill files");
}
