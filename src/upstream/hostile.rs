//! Test support: decides what hostile upstream input the parser property tests are fed,
//! random bytes spliced with fragments that steer them into the parsers' deeper paths.

/// A deterministic xorshift64 generator, so a failing case can be replayed from its seed.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Self {
        // xorshift never leaves zero, so zero is not a seed.
        Self(seed.max(1))
    }

    pub fn word(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `bound` (which must not be zero).
    pub fn below(&mut self, bound: usize) -> usize {
        (self.word() % bound as u64) as usize
    }

    /// Up to `pieces` pieces, each a random byte or one of `fragments`.
    pub fn input(&mut self, pieces: usize, fragments: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..self.below(pieces + 1) {
            match self.below(3) {
                0 => out.push(self.word() as u8),
                _ => out.extend_from_slice(fragments[self.below(fragments.len())].as_bytes()),
            }
        }
        out
    }
}
