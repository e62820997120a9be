//! xorshift64: a small, seeded generator for streams that must replay
//! exactly (the hostile command streams of the device, daemon and fuzz
//! tests). Not for anything that needs real randomness.

/// The state; a seed of 0 stays 0 forever, so seed with an odd number.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn u32(&mut self, n: u32) -> u32 {
        self.below(u64::from(n)) as u32
    }

    /// True `percent` times in 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
