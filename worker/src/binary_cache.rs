//! Program binaries on the worker: fetched from the head once per content
//! hash into a shared cache directory, then checked to be runnable here
//! (an ELF executable for this machine's architecture) so an incompatible
//! binary fails with a clear error instead of a confusing exec failure.

use shoal_proto::{client, pb};
use shoal_store::binaries::BinaryStore;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Makes binary `hash` available locally; returns its path or why it
/// cannot run here.
pub(crate) async fn ensure(cache: &Path, hash: &str, head: &str, token: Option<&str>) -> Result<PathBuf, String> {
    let store = BinaryStore::open(cache).map_err(|e| format!("cannot open binary cache {}: {e}", cache.display()))?;
    let path = store.path(hash).ok_or_else(|| format!("invalid binary id {hash:?}"))?;
    // Jobs of one program (a program and its tasks' sessions) share a
    // binary: one fetch per binary at a time, the others wait for it.
    static FETCHING: std::sync::LazyLock<dashmap::DashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>> = std::sync::LazyLock::new(dashmap::DashMap::new);
    let gate = FETCHING.entry(hash.to_string()).or_default().clone();
    let _one_at_a_time = gate.lock().await;
    if !path.is_file() {
        let mut client = client::connect(head, token, Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
        let mut stream = client
            .fetch_binary(pb::BinaryId { hash: hash.to_string() })
            .await
            .map_err(|e| format!("fetching binary {hash} from the head: {}", e.message()))?
            .into_inner();
        let mut w = store.writer(hash).map_err(|e| e.to_string())?;
        while let Some(chunk) = stream.message().await.map_err(|e| format!("fetching binary: {}", e.message()))? {
            w.write(&chunk.data).map_err(|e| e.to_string())?;
        }
        let size = w.written();
        w.finish().map_err(|e| format!("fetched binary is corrupt: {e}"))?;
        tracing::info!(binary = %&hash[..12], size, "program binary fetched");
    }
    check_runnable(&path)?;
    Ok(path)
}

/// ELF machine number of this build's architecture.
fn expected_machine() -> u16 {
    if cfg!(target_arch = "x86_64") {
        62
    } else if cfg!(target_arch = "aarch64") {
        183
    } else if cfg!(target_arch = "riscv64") {
        243
    } else {
        0
    }
}

fn machine_name(m: u16) -> String {
    match m {
        62 => "x86_64".into(),
        183 => "aarch64".into(),
        243 => "riscv64".into(),
        3 => "x86 (32-bit)".into(),
        40 => "arm (32-bit)".into(),
        other => format!("ELF machine {other}"),
    }
}

/// Checks that `path` is an ELF executable for this architecture.
pub(crate) fn check_runnable(path: &Path) -> Result<(), String> {
    use std::io::Read;
    let mut head = [0u8; 20];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if &head[..4] != b"\x7fELF" {
        return Err("the program is not an ELF executable; Shoal workers run Linux ELF binaries".into());
    }
    let machine = u16::from_le_bytes([head[18], head[19]]);
    let want = expected_machine();
    if want != 0 && machine != want {
        return Err(format!(
            "the program was built for {}, but this node is {}: build the driver for the workers' target (e.g. --target {}-unknown-linux-gnu)",
            machine_name(machine),
            machine_name(want),
            machine_name(want)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_elf_and_foreign_arch() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, b"#!/bin/sh\necho hi\n...............").unwrap();
        assert!(check_runnable(&script).unwrap_err().contains("not an ELF"));
        let mut elf = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        elf.truncate(64);
        let ours = dir.path().join("ours");
        std::fs::write(&ours, &elf).unwrap();
        assert!(check_runnable(&ours).is_ok());
        let foreign_machine: u16 = if expected_machine() == 183 { 62 } else { 183 };
        elf[18..20].copy_from_slice(&foreign_machine.to_le_bytes());
        let foreign = dir.path().join("foreign");
        std::fs::write(&foreign, &elf).unwrap();
        let err = check_runnable(&foreign).unwrap_err();
        assert!(err.contains("built for"), "{err}");
    }
}
