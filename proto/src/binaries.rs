//! Program binaries on the wire: a file read as the stream of chunks an
//! upload and a fetch send. (The content-addressed store itself is
//! `shoal_store::binaries`.)

use std::io::{self, Read};
use std::path::Path;

/// Reads `path` in [`BINARY_CHUNK_BYTES`](shoal_domain::limits::BINARY_CHUNK_BYTES)
/// chunks, the first one carrying `hash` and the total size, as both an
/// upload and a fetch send them. `send` returns false to stop early.
pub fn read_chunks(path: &Path, hash: &str, mut send: impl FnMut(crate::pb::BinaryChunk) -> bool) -> io::Result<()> {
    let mut f = std::fs::File::open(path)?;
    let total = f.metadata()?.len();
    let mut first = true;
    loop {
        let mut buf = vec![0u8; shoal_domain::limits::BINARY_CHUNK_BYTES];
        let n = f.read(&mut buf)?;
        if n == 0 && !first {
            return Ok(());
        }
        buf.truncate(n);
        let chunk =
            crate::pb::BinaryChunk { hash: if first { hash.to_string() } else { String::new() }, total_size: if first { total } else { 0 }, data: buf.into() };
        first = false;
        if !send(chunk) || n == 0 {
            return Ok(());
        }
    }
}
