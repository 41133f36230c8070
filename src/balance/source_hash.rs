//! Source hash: the flow hash modulo the number of backends (nginx's `hash $remote_addr`
//! without `consistent`, HAProxy's `balance source` with `hash-type map-based`). Kept for
//! comparison with Maglev: the same client always reaches the same backend while the pool is
//! unchanged, but adding or removing a backend remaps almost every client.
//!
//! Fallbacks are the next backends with room in index order, so a backend that is down or full
//! sends its clients to its successor and nobody else moves.

use super::{PoolLoad, Selector, fill_cyclic, rankable};

/// Source-hash selector; stateless.
#[derive(Debug, Clone, Default)]
pub struct SourceHash;

impl SourceHash {
    pub fn new() -> Self {
        Self
    }
}

impl Selector for SourceHash {
    fn rank(&mut self, flow: u64, load: &PoolLoad, out: &mut [u16]) -> usize {
        let len = rankable(load);
        if len == 0 {
            return 0;
        }
        fill_cyclic(load, (flow % len as u64) as usize, out, 0)
    }
}
