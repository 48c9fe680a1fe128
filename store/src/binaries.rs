//! Content-addressed store of program binaries (`<dir>/<blake3 hex>`).
//! Drivers upload their own executable once; workers fetch it to start
//! executors. Writes go to a temporary name and are renamed into place, so
//! a reader never sees a half-written binary, and concurrent writers of the
//! same content are harmless.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Is `hash` a well-formed binary id (64 lowercase hex digits)? Anything
/// else is refused before it can become a path.
pub fn valid_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Hashes a file's content.
pub fn hash_file(path: &Path) -> io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// The store.
#[derive(Clone, Debug)]
pub struct BinaryStore {
    dir: PathBuf,
}

impl BinaryStore {
    /// A store in `dir` (created if missing).
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// Where a binary lives (whether or not it is present).
    pub fn path(&self, hash: &str) -> Option<PathBuf> {
        valid_hash(hash).then(|| self.dir.join(hash))
    }

    /// Is this binary stored?
    pub fn contains(&self, hash: &str) -> bool {
        self.path(hash).is_some_and(|p| p.is_file())
    }

    /// Starts writing a binary that should hash to `hash`.
    pub fn writer(&self, hash: &str) -> io::Result<BinaryWriter> {
        let final_path = self.path(hash).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("invalid binary id {hash:?}")))?;
        let tmp = self.dir.join(format!(".{hash}.{}.{}.tmp", std::process::id(), rand_suffix()));
        let file = std::fs::File::create(&tmp)?;
        Ok(BinaryWriter { file, tmp, final_path, hasher: blake3::Hasher::new(), expected: hash.to_string(), written: 0 })
    }

    /// Copies a local file in under a hash the caller has just computed
    /// (no second hashing pass).
    pub fn copy_in(&self, hash: &str, src: &Path) -> io::Result<PathBuf> {
        let final_path = self.path(hash).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("invalid binary id {hash:?}")))?;
        if final_path.is_file() {
            return Ok(final_path);
        }
        let tmp = self.dir.join(format!(".{hash}.{}.{}.tmp", std::process::id(), rand_suffix()));
        std::fs::copy(src, &tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        }
        std::fs::rename(&tmp, &final_path)?;
        Ok(final_path)
    }

    /// Adds a local file by hard link (or copy across file systems),
    /// verifying its hash.
    pub fn insert_file(&self, hash: &str, src: &Path) -> io::Result<PathBuf> {
        if self.contains(hash) {
            return Ok(self.dir.join(hash));
        }
        let mut w = self.writer(hash)?;
        let mut f = std::fs::File::open(src)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n])?;
        }
        w.finish()
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos() as u64).unwrap_or(0)
}

/// A binary being written; see [`BinaryStore::writer`].
pub struct BinaryWriter {
    file: std::fs::File,
    tmp: PathBuf,
    final_path: PathBuf,
    hasher: blake3::Hasher,
    expected: String,
    written: u64,
}

impl BinaryWriter {
    /// Appends bytes.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.hasher.update(data);
        self.written += data.len() as u64;
        self.file.write_all(data)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks the hash, makes the file executable and moves it into place.
    pub fn finish(self) -> io::Result<PathBuf> {
        let got = self.hasher.finalize().to_hex().to_string();
        if got != self.expected {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("binary content hashes to {got}, not {}", self.expected)));
        }
        self.file.sync_all()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.tmp, std::fs::Permissions::from_mode(0o755))?;
        }
        std::fs::rename(&self.tmp, &self.final_path)?;
        Ok(self.final_path.clone())
    }
}

impl Drop for BinaryWriter {
    fn drop(&mut self) {
        // After `finish` the temp name is gone; otherwise clean up.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_hashes_and_refuses_bad_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = BinaryStore::open(dir.path()).unwrap();
        let data = b"\x7fELF pretend";
        let hash = blake3::hash(data).to_hex().to_string();
        let mut w = store.writer(&hash).unwrap();
        w.write(data).unwrap();
        let p = w.finish().unwrap();
        assert_eq!(std::fs::read(p).unwrap(), data);
        assert!(store.contains(&hash));
        let mut w = store.writer(&"0".repeat(64)).unwrap();
        w.write(b"other").unwrap();
        assert_eq!(w.finish().unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(!store.contains(&"0".repeat(64)));
        assert!(store.writer("../../etc/passwd").is_err());
        assert!(!valid_hash(&"A".repeat(64)));
    }
}
