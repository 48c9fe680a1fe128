//! Length-prefixed protobuf frames (`u32` little-endian length, then the
//! message) for the worker <-> executor Unix socket. The worker side is
//! async (tokio); the executor side is blocking (it runs one task at a time).

use prost::Message;
use std::io::{self, Read, Write};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted; anything larger is a protocol error, not an
/// allocation.
pub const MAX_FRAME: usize = shoal_domain::limits::MAX_MESSAGE_BYTES;

/// The length a frame header announces, refused past [`MAX_FRAME`].
fn frame_len(header: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit")));
    }
    Ok(len)
}

/// Encodes `msg` as one frame appended to `out`.
pub fn encode<M: Message>(msg: &M, out: &mut Vec<u8>) {
    let len = msg.encoded_len();
    out.reserve(4 + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    msg.encode(out).expect("Vec<u8> grows as needed");
}

/// Reads one frame; `Ok(None)` on a clean end of stream.
pub async fn read_async<M: Message + Default, R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<Option<M>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = frame_len(len)?;
    // Grown as bytes arrive: a header announcing a large frame costs
    // memory only once its bytes are really sent.
    buf.clear();
    let got = r.take(len as u64).read_to_end(buf).await?;
    if got < len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("the stream ended {got} bytes into a {len}-byte frame")));
    }
    M::decode(bytes::Bytes::copy_from_slice(buf)).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes one frame.
pub async fn write_async<M: Message, W: AsyncWrite + Unpin>(w: &mut W, msg: &M) -> io::Result<()> {
    let mut out = Vec::new();
    encode(msg, &mut out);
    w.write_all(&out).await
}

/// Blocking read of one frame; `Ok(None)` on a clean end of stream.
pub fn read_blocking<M: Message + Default, R: Read>(r: &mut R) -> io::Result<Option<M>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = frame_len(len)?;
    // Grown as bytes arrive (see `read_async`).
    let mut buf = Vec::with_capacity(len.min(1 << 20));
    let got = r.take(len as u64).read_to_end(&mut buf)?;
    if got < len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("the stream ended {got} bytes into a {len}-byte frame")));
    }
    M::decode(bytes::Bytes::from(buf)).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Blocking write of one frame.
pub fn write_blocking<M: Message, W: Write>(w: &mut W, msg: &M) -> io::Result<()> {
    let mut out = Vec::new();
    encode(msg, &mut out);
    w.write_all(&out)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{ExecArg, ExecTask, WorkerToExecutor};

    #[test]
    fn blocking_round_trip_and_eof() {
        let msg = WorkerToExecutor {
            first_function: 3,
            functions: vec!["a::b".into()],
            tasks: vec![ExecTask {
                task: 9,
                func: 3,
                args: vec![ExecArg { value: bytes::Bytes::from_static(b"xy"), ..Default::default() }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut wire = Vec::new();
        write_blocking(&mut wire, &msg).unwrap();
        let mut r = &wire[..];
        let back: WorkerToExecutor = read_blocking(&mut r).unwrap().unwrap();
        assert_eq!(back, msg);
        assert!(read_blocking::<WorkerToExecutor, _>(&mut r).unwrap().is_none());
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors_not_panics() {
        let mut wire = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        wire.extend_from_slice(&[0; 8]);
        assert_eq!(read_blocking::<WorkerToExecutor, _>(&mut &wire[..]).unwrap_err().kind(), io::ErrorKind::InvalidData);
        let garbage = [5u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(read_blocking::<WorkerToExecutor, _>(&mut &garbage[..]).is_err());
    }
}
