//! A tiny seeded generator (xorshift64) for the tests that feed decoders
//! and cores pseudo-random input: the same seed gives the same inputs, so a
//! failure names an input that can be found again. Not for anything that
//! needs real randomness.

/// xorshift64: `next` steps it.
#[derive(Clone, Debug)]
pub struct Xorshift(u64);

impl Xorshift {
    /// A generator from `seed` (any value; 0 is mapped to 1).
    pub fn new(seed: u64) -> Self {
        Xorshift(seed | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `len` bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}
