//! Backend selection: one [`Selector`] trait, one file per algorithm family.
//!
//! A selector ranks a pool's backends for one new connection: best first, then the fallbacks a
//! forwarder tries when a connect fails. It skips backends that [`PoolLoad::has_room`] rejects
//! (down, draining, weight 0, at `max_conns`, or above the bounded-load capacity), so "every
//! candidate full" shows up as an empty ranking.
//!
//! A [`Balancer`] is built once per pool (for Maglev it holds the lookup table, shared through an
//! `Arc`) and hands every forwarder its own selector, so ranking needs no synchronisation beyond
//! the atomic reads of [`PoolLoad`].
//!
//! | [`Balance`] | selector | file |
//! |---|---|---|
//! | `Maglev` (default) | [`Maglev`] over a shared [`MaglevTable`] | `maglev.rs` |
//! | `RoundRobin` | [`RoundRobin`] | `round_robin.rs` |
//! | `Weighted` | [`SmoothWeighted`] | `round_robin.rs` |
//! | `LeastConn` | [`LeastConn`] | `least_conn.rs` |
//! | `P2c` | [`PowerOfTwoChoices`] | `p2c.rs` |
//! | `SourceHash` | [`SourceHash`] | `source_hash.rs` |
//!
//! [`flow_hash`] (`hash.rs`) turns a client address into the `flow` that [`Selector::rank`]
//! takes; only the hashing selectors use it.
//!
//! [`Balance`]: crate::config::Balance

use std::fmt;

mod balancer;
pub mod hash;
pub mod least_conn;
pub mod maglev;
pub mod p2c;
pub mod round_robin;
pub mod source_hash;

use crate::pool::{PoolLoad, Status};
pub use balancer::Balancer;
pub use hash::flow_hash;
pub use least_conn::LeastConn;
pub use maglev::{Maglev, MaglevTable};
pub use p2c::PowerOfTwoChoices;
pub use round_robin::{RoundRobin, SmoothWeighted};
pub use source_hash::SourceHash;

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

/// Why a pool's balancer could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    /// Backend indices are `u16`; the pool has more backends than that allows.
    TooManyBackends { count: usize, max: usize },
    /// Maglev needs a prime table size: every backend's permutation must visit every slot.
    TableSizeNotPrime(u32),
    /// The table must have a slot for every backend and fit the memory bound.
    TableSizeOutOfRange { size: u32, min: usize, max: u32 },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyBackends { count, max } => write!(
                f,
                "pool has {count} backends, at most {max} are supported: split it into several pools"
            ),
            Self::TableSizeNotPrime(size) => write!(
                f,
                "maglev table_size {size} is not a prime: use a prime such as 65537 (the default) or 655373"
            ),
            Self::TableSizeOutOfRange { size, min, max } => write!(
                f,
                "maglev table_size {size} is out of range: it must be a prime from {min} (the number of backends) to {max}, ideally above 100 × the number of backends"
            ),
        }
    }
}

impl std::error::Error for BuildError {}

/// Backends a selector may consider: indices are `u16`, so never more than fit.
fn rankable(load: &PoolLoad) -> usize {
    load.len().min(maglev::MAX_BACKENDS)
}

/// Which backends a cyclic fill takes.
#[derive(Debug, Clone, Copy)]
enum Take {
    /// Those with room ([`PoolLoad::has_room`]). With `admit = Some(key)`, a backend still
    /// ramping up that does not admit `key` ([`PoolLoad::admits`]) goes to the end instead of its
    /// turn.
    Room { admit: Option<u64> },
    /// Every backend not drained and below its `max_conns`, up or down: the ranking of a pool
    /// with no backend up whose `all_down` is `try_anyway`.
    IgnoringHealth,
}

impl Take {
    fn takes(self, load: &PoolLoad, i: usize) -> bool {
        match self {
            Take::Room { .. } => load.has_room(i),
            Take::IgnoringHealth => load.state(i) != Status::Drain && load.under_cap(i),
        }
    }
}

/// Appends to `out[n..]` the backends `take` takes in cyclic index order from `start`, leaving
/// out those already in `out[..n]`, and returns the new length. At most one pass over the pool.
fn fill_cyclic(load: &PoolLoad, start: usize, out: &mut [u16], mut n: usize, take: Take) -> usize {
    let len = rankable(load);
    if len == 0 {
        return n;
    }
    let already = n;
    let mut deferred = [0u16; MAX_CANDIDATES];
    let mut held = 0;
    let mut i = start % len;
    for _ in 0..len {
        if n + held >= out.len() {
            break;
        }
        if take.takes(load, i) && !out[..already].contains(&(i as u16)) {
            match take {
                Take::Room { admit: Some(key) }
                    if !load.admits(i, key) && held < deferred.len() =>
                {
                    deferred[held] = i as u16;
                    held += 1;
                }
                _ => {
                    out[n] = i as u16;
                    n += 1;
                }
            }
        }
        i += 1;
        if i == len {
            i = 0;
        }
    }
    for &d in &deferred[..held] {
        if n < out.len() {
            out[n] = d;
            n += 1;
        }
    }
    n
}

/// The ranking when no backend is up and the pool says `all_down = try_anyway`: every backend
/// but drained ones, in cyclic order from the flow's hash, as long as it is under its
/// `max_conns`.
pub fn rank_ignoring_health(load: &PoolLoad, flow: u64, out: &mut [u16]) -> usize {
    let len = rankable(load);
    if len == 0 {
        return 0;
    }
    fill_cyclic(
        load,
        (flow % len as u64) as usize,
        out,
        0,
        Take::IgnoringHealth,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, PoolConfig};

    fn load(caps: &[u32]) -> PoolLoad {
        let backends = caps
            .iter()
            .enumerate()
            .map(|(i, &max_conns)| BackendConfig {
                max_conns,
                ..BackendConfig::new(format!("b{i}"), ([127, 0, 0, 1], 8000 + i as u16).into())
            })
            .collect();
        let cfg = PoolConfig::new("p", backends);
        PoolLoad::new(&cfg)
    }

    #[test]
    fn ignoring_health_takes_down_backends_but_not_drained_or_full_ones() {
        let load = load(&[0, 1, 0, 0]);
        for i in 0..4 {
            load.set_state(i, Status::Down);
        }
        load.set_state(2, Status::Drain);
        assert!(load.try_acquire(1));
        let mut out = [0u16; 4];
        // From the flow's hash (5 % 4 = 1), cyclically: 1 is full and 2 is drained.
        let n = rank_ignoring_health(&load, 5, &mut out);
        assert_eq!(&out[..n], &[3, 0]);
        // The ranking of a selector takes none of them: no backend is up.
        assert_eq!(
            fill_cyclic(&load, 0, &mut out, 0, Take::Room { admit: None }),
            0
        );
    }

    #[test]
    fn ignoring_health_stops_at_the_room_given() {
        let load = load(&[0, 0, 0]);
        let mut out = [0u16; 2];
        assert_eq!(rank_ignoring_health(&load, 2, &mut out), 2);
        assert_eq!(out, [2, 0]);
        assert_eq!(rank_ignoring_health(&load, 0, &mut []), 0);
    }
}
