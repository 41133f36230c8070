//! Backend selection: one [`Selector`] trait, one file per algorithm family.
//!
//! A selector ranks a pool's backends for one new connection: best first, then the fallbacks a
//! forwarder tries when a connect fails. It skips backends that [`PoolLoad::has_room`] rejects
//! (down, draining, weight 0, at `max_conns`, or above the bounded-load capacity), so "every
//! candidate full" shows up as an empty ranking.

pub mod pool;

pub use pool::{BackendState, PoolLoad};

/// Most candidates a ranking returns: the first choice plus the connect retries.
pub const MAX_CANDIDATES: usize = 8;

/// Picks backends for new connections. Each forwarder owns its own selector (so round-robin
/// counters and random state need no synchronisation); the pool's load is shared.
pub trait Selector: Send {
    /// Writes up to `out.len()` distinct backend indices into `out` in preference order for the
    /// flow whose hash is `flow`, skipping backends without room, and returns how many it wrote.
    /// Must not allocate: it runs on the forwarding hot path.
    fn rank(&mut self, flow: u64, load: &PoolLoad, out: &mut [u16]) -> usize;
}

mod interim;
pub use interim::{Balancer, flow_hash};
