//! Source hash: the flow hash modulo the number of backends, a map-based hash like nginx's
//! `hash $remote_addr` without `consistent` or HAProxy's `balance source`. Kept for
//! comparison with Maglev: the same client always reaches the same backend while the pool is
//! unchanged, but adding or removing a backend remaps almost every client.
//!
//! The modulus is the configured number of backends, whatever their state, and fallbacks are
//! the next backends with room in index order: a backend that is down or full sends its clients
//! to its successor and nobody else moves. Weights other than 0 are ignored.

use super::{Selector, Take, fill_cyclic, rankable};
use crate::pool::PoolLoad;

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
        fill_cyclic(
            load,
            (flow % len as u64) as usize,
            out,
            0,
            Take::Room { admit: Some(flow) },
        )
    }
}
