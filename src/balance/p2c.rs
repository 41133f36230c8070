//! Power of two random choices (Mitzenmacher, "The Power of Two Choices in Randomized Load
//! Balancing", IEEE TPDS 2001): draw two distinct backends at random, take the less loaded by
//! `(active + 1) / weight`. Its maximum load is exponentially better than one random choice,
//! and it needs no global scan, unlike least connections.
//!
//! The other of the two is the first fallback; further fallbacks are the backends with room
//! from a random index on. Randomness is a SplitMix64 generator per selector (Steele, Lea and
//! Flood, OOPSLA 2014), seeded from the forwarder number: no allocation, no shared state.

use super::least_conn::cmp_load;
use super::{Selector, Take, fill_cyclic, rankable};
use crate::pool::PoolLoad;

/// Power-of-two-choices selector with its own random state.
#[derive(Debug, Clone)]
pub struct PowerOfTwoChoices {
    state: u64,
}

impl PowerOfTwoChoices {
    /// Seeds the generator; forwarders get distinct seeds so their draws are independent.
    pub fn new(seed: u64) -> Self {
        // One SplitMix64 step spreads small seeds (0, 1, 2, …) over the whole state.
        let mut s = Self { state: seed };
        s.state = s.next_u64();
        s
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-48 for any pool size).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

impl Selector for PowerOfTwoChoices {
    fn rank(&mut self, _flow: u64, load: &PoolLoad, out: &mut [u16]) -> usize {
        let len = rankable(load);
        if len == 0 || out.is_empty() {
            return 0;
        }
        let mut n = 0;
        if len >= 2 {
            let a = self.below(len);
            let b = (a + 1 + self.below(len - 1)) % len;
            let (first, second) = if cmp_load(load, b, a).is_lt() {
                (b, a)
            } else {
                (a, b)
            };
            for i in [first, second] {
                if n < out.len() && load.has_room(i) {
                    out[n] = i as u16;
                    n += 1;
                }
            }
        }
        let start = self.below(len);
        fill_cyclic(load, start, out, n, Take::Room { admit: None })
    }
}
