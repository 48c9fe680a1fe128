//! Keeps stream messages out of HTTP/2's small-frame flood guard.
//!
//! h2 (the HTTP/2 library under tonic) defends against peers that send
//! floods of tiny DATA frames: every frame under 256 bytes that is buffered
//! before the application reads it spends from a small budget, and when it
//! runs out the connection is closed with `ENHANCE_YOUR_CALM`
//! ("too_many_data_frames"). Shoal's own streams legitimately send bursts
//! of small batches (a driver submitting a million calls as fast as it can
//! produce them; a worker reporting results as they finish), and the
//! budget is not configurable through tonic. So every session message
//! smaller than the threshold is padded up to it with a zero-copy slice of
//! a static buffer. The cost is a few hundred bytes on messages that are
//! tiny anyway.

use crate::pb;
use bytes::Bytes;
use prost::Message;

/// Messages below this encoded size are padded up to it (h2's threshold is
/// 256 bytes of DATA payload; gRPC adds a 5-byte prefix, we add margin).
pub const MIN_MESSAGE_BYTES: usize = 320;

static ZEROS: [u8; MIN_MESSAGE_BYTES] = [0; MIN_MESSAGE_BYTES];

/// A session message with a `pad` field.
pub trait Padded: Message {
    /// The filler field.
    fn pad_mut(&mut self) -> &mut Bytes;
}

macro_rules! padded {
    ($($t:ty),*) => {$(
        impl Padded for $t {
            fn pad_mut(&mut self) -> &mut Bytes {
                &mut self.pad
            }
        }
    )*};
}

padded!(pb::WorkerToHead, pb::HeadToWorker, pb::DriverToHead, pb::HeadToDriver);

/// Pads `m` if it is smaller than [`MIN_MESSAGE_BYTES`]; returns it.
pub fn pad<M: Padded>(mut m: M) -> M {
    let len = m.encoded_len();
    if len < MIN_MESSAGE_BYTES {
        // The field's own tag and length prefix only add to the total.
        *m.pad_mut() = Bytes::from_static(&ZEROS[..MIN_MESSAGE_BYTES - len]);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_messages_grow_past_the_threshold_and_large_ones_are_untouched() {
        let m = pad(pb::WorkerToHead { heartbeat: 7, ..Default::default() });
        assert!(m.encoded_len() >= MIN_MESSAGE_BYTES);
        assert_eq!(m.heartbeat, 7);
        let big = pb::DriverToHead { release: (0..1000).collect(), ..Default::default() };
        let len = big.encoded_len();
        let big = pad(big);
        assert!(big.pad.is_empty());
        assert_eq!(big.encoded_len(), len);
    }
}
