//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, §3.4), weighted, with bounded load.
//!
//! **Table.** Each backend walks its own permutation of the `M` table slots (`M` prime): it
//! starts at `offset` and steps by `skip`, and in its turn takes the first slot of its
//! permutation still free, until every slot is taken. `offset` and `skip` come from XXH64 of the
//! backend's **name** with fixed seeds ([`OFFSET_SEED`], [`SKIP_SEED`]), never from its index,
//! address or anything process-local: the same names, weights and `M` give the same table in
//! every process on every host, so several levee hosts behind one ECMP group send a flow to the
//! same backend. Turns within a round also go by name (byte order), not by position in the
//! config: list the backends in another order and each keeps its slots. Rename a backend and it
//! moves.
//!
//! **Weights.** Turns are handed out in proportion to weight, in the manner of Envoy's weighted
//! Maglev: a backend of the largest weight `w_max` takes a turn every round, one of weight `w`
//! takes its `k`-th turn (counting from 0) in round `ceil(k × w_max / w)`. A backend of weight
//! `w` so ends with `≈ w / W` of the table and one of weight 0 with none. With equal weights this
//! is the paper's round-robin population, and every backend gets `⌊M/N⌋` or `⌈M/N⌉` slots.
//! The table keeps the weights it was built with: a runtime weight of 0 drains a backend (it
//! has no room); a runtime weight below the built one (slow start) makes the backend come first
//! for only that fraction of its flows ([`PoolLoad::admits`]) and rank last for the others.
//!
//! **Disruption.** Removing a backend frees its slots; the rebuild also moves a small share of
//! other backends' slots, because the population order changes after the first freed slot (the
//! paper trades this for balance). Skipping a backend that is down, draining or full moves only
//! that backend's flows: the preference order below is fixed by the table.
//!
//! **Preference order** for a flow with hash `h`: the backend at slot `h mod M`, then the next
//! distinct backends found walking the following slots (wrapping), skipping those without room
//! ([`PoolLoad::has_room`], which also applies the bounded-load cap of Mirrokni, Thorup and
//! Zadimoghaddam, 2016). The walk stops when `out` is full or every backend in the table has
//! been looked at. It is bounded by [`WALK_SLOTS_PER_BACKEND`] × N slots: a backend whose `skip`
//! is small (or near a fraction of `M`) owns slots bunched in one region, so seeing every
//! backend by walking can take most of the table (≈ 40 000 of 65 537 slots for 1000 backends).
//! Past the bound, the backends not yet looked at follow in name order from a flow-dependent
//! start. A normal ranking ends within a few slots; a pool where every backend is full (the
//! overflow path, exactly when load is highest) costs O(N), not O(M).
//!
//! Every step depends only on the table and the flow, so two hosts rank a flow alike.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use super::hash::xxh64;
use super::{BuildError, MAX_CANDIDATES, Selector};
use crate::config::BackendConfig;
use crate::pool::PoolLoad;

/// Seed of the hash of a backend's name that gives its permutation's first slot.
pub const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
/// Seed of the hash of a backend's name that gives its permutation's step.
pub const SKIP_SEED: u64 = 0x6d61_676c_6576_736b; // "maglevsk"

/// The paper's table size for small pools: a prime. Equal backends get ⌊M/N⌋ or ⌈M/N⌉ slots,
/// which keeps the largest share within 1 % of the mean for every N up to 696 and within 1.5 %
/// up to 1000; larger pools want a larger prime (the paper: M > 100 N).
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
/// Largest table accepted: 2 bytes a slot, so 32 MiB per pool at most.
pub const MAX_TABLE_SIZE: u32 = 1 << 24;
/// Most backends a pool may have: indices are `u16`, and one value marks an empty slot.
pub const MAX_BACKENDS: usize = EMPTY_SLOT as usize;
/// Slot value of a table with no backend of weight above 0.
pub const EMPTY_SLOT: u16 = u16::MAX;
/// A ranking walks at most this many table slots per backend in the table before it takes the
/// rest in name order.
pub const WALK_SLOTS_PER_BACKEND: usize = 2;

/// Whether `n` is prime: the check the configuration applies to `table_size`, so the two can
/// never disagree.
pub use crate::config::is_prime;

/// A Maglev lookup table: slot → backend index. Built once per pool and backend set, then shared
/// read-only (in an [`Arc`]) by every forwarder's [`Maglev`] selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevTable {
    slots: Box<[u16]>,
    /// Backends in the set the table was built from, whatever their weight.
    backends: usize,
    /// Backends that own at least one slot, in name order: where a ranking goes once its walk
    /// over the slots reaches its bound.
    by_name: Box<[u16]>,
}

/// One backend's state while the table is populated.
struct Permutation {
    /// Next slot of its permutation to try.
    next: u32,
    skip: u32,
    weight: u64,
    taken: u64,
}

impl MaglevTable {
    /// Populates a table of `size` slots for `backends` (index `i` in the table is
    /// `backends[i]`), by name and weight as the module documentation describes.
    ///
    /// `size` must be a prime of at least the number of backends and at most
    /// [`MAX_TABLE_SIZE`]; a pool may have at most [`MAX_BACKENDS`] backends.
    pub fn new(backends: &[BackendConfig], size: u32) -> Result<Self, BuildError> {
        if backends.len() > MAX_BACKENDS {
            return Err(BuildError::TooManyBackends {
                count: backends.len(),
                max: MAX_BACKENDS,
            });
        }
        if !is_prime(size) {
            return Err(BuildError::TableSizeNotPrime(size));
        }
        if (size as usize) < backends.len() || size > MAX_TABLE_SIZE {
            return Err(BuildError::TableSizeOutOfRange {
                size,
                min: backends.len(),
                max: MAX_TABLE_SIZE,
            });
        }
        let m = u64::from(size);
        let mut perms: Vec<Permutation> = backends
            .iter()
            .map(|b| Permutation {
                next: (xxh64(b.name.as_bytes(), OFFSET_SEED) % m) as u32,
                skip: (xxh64(b.name.as_bytes(), SKIP_SEED) % (m - 1) + 1) as u32,
                weight: u64::from(b.weight),
                taken: 0,
            })
            .collect();
        let w_max = perms.iter().map(|p| p.weight).max().unwrap_or(0);

        // Position of each backend in the order of turns within a round: by name, so the
        // table does not depend on the order of the config.
        let mut by_name: Vec<usize> = (0..backends.len()).collect();
        by_name.sort_by(|&a, &b| backends[a].name.cmp(&backends[b].name).then(a.cmp(&b)));

        let mut slots = vec![EMPTY_SLOT; size as usize].into_boxed_slice();
        if w_max > 0 {
            // Turns in order of (round, name); a heap gives each backend's next turn directly,
            // so skewed weights cost O(M log N) rather than a pass over every backend per round.
            let mut turns: BinaryHeap<Reverse<(u64, usize)>> = by_name
                .iter()
                .enumerate()
                .filter(|&(_, &i)| perms[i].weight > 0)
                .map(|(pos, _)| Reverse((0, pos)))
                .collect();
            let mut filled = 0;
            while let Some(Reverse((_, pos))) = turns.pop() {
                let i = by_name[pos];
                let p = &mut perms[i];
                // M is prime and 1 ≤ skip < M, so the permutation visits every slot within M
                // steps, and a free slot remains until the table is full: this loop ends.
                let slot = loop {
                    let c = p.next as usize;
                    p.next += p.skip;
                    if p.next >= size {
                        p.next -= size;
                    }
                    if slots[c] == EMPTY_SLOT {
                        break c;
                    }
                };
                slots[slot] = i as u16;
                filled += 1;
                if filled == slots.len() {
                    break;
                }
                p.taken += 1;
                turns.push(Reverse(((p.taken * w_max).div_ceil(p.weight), pos)));
            }
        }
        let by_name = by_name
            .into_iter()
            .filter(|&i| perms[i].weight > 0)
            .map(|i| i as u16)
            .collect();
        Ok(Self {
            slots,
            backends: backends.len(),
            by_name,
        })
    }

    /// Number of slots, `M`.
    pub fn size(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Number of backends in the set the table was built from.
    pub fn backends(&self) -> usize {
        self.backends
    }

    /// The slots: a backend index, or [`EMPTY_SLOT`] everywhere when no backend has weight.
    pub fn slots(&self) -> &[u16] {
        &self.slots
    }

    /// The first choice for a flow, ignoring load: the backend at slot `flow mod M`.
    pub fn lookup(&self, flow: u64) -> Option<u16> {
        let b = self.slots[self.slot_of(flow)];
        (b != EMPTY_SLOT).then_some(b)
    }

    /// Slots owned by each backend, by index.
    pub fn entries_per_backend(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.backends];
        for &b in self.slots.iter().filter(|&&b| b != EMPTY_SLOT) {
            counts[usize::from(b)] += 1;
        }
        counts
    }

    /// XXH64 (seed 0) of the slots as little-endian `u16`s: compares tables across processes
    /// and hosts.
    pub fn digest(&self) -> u64 {
        let bytes: Vec<u8> = self.slots.iter().flat_map(|b| b.to_le_bytes()).collect();
        xxh64(&bytes, 0)
    }

    fn slot_of(&self, flow: u64) -> usize {
        (flow % self.slots.len() as u64) as usize
    }
}

/// One forwarder's Maglev selector over a shared table.
#[derive(Debug)]
pub struct Maglev {
    table: Arc<MaglevTable>,
    /// `seen[b] == epoch` when backend `b` was already looked at in this ranking; a new epoch
    /// per ranking clears it in O(1) without allocating.
    seen: Box<[u32]>,
    epoch: u32,
}

impl Maglev {
    pub fn new(table: Arc<MaglevTable>) -> Self {
        let seen = vec![0; table.backends].into_boxed_slice();
        Self {
            table,
            seen,
            epoch: 0,
        }
    }

    pub fn table(&self) -> &Arc<MaglevTable> {
        &self.table
    }
}

impl Selector for Maglev {
    fn rank(&mut self, flow: u64, load: &PoolLoad, out: &mut [u16]) -> usize {
        let table = &*self.table;
        let distinct = table.by_name.len();
        if out.is_empty() || distinct == 0 {
            return 0;
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.seen.fill(0);
            self.epoch = 1;
        }
        let mut ranking = Ranking {
            seen: &mut self.seen,
            epoch: self.epoch,
            load,
            flow,
            out,
            n: 0,
            looked: 0,
            deferred: [0; MAX_CANDIDATES],
            held: 0,
        };
        let slots = &table.slots;
        let budget = slots.len().min(WALK_SLOTS_PER_BACKEND * distinct);
        let mut s = table.slot_of(flow);
        for _ in 0..budget {
            // Non-empty table: every slot holds a backend index below `table.backends`.
            if ranking.offer(slots[s]) || ranking.looked == distinct {
                return ranking.finish();
            }
            s += 1;
            if s == slots.len() {
                s = 0;
            }
        }
        // Another part of the hash than the slot's, so flows that end up here spread out.
        let mut k = ((flow >> 32) % distinct as u64) as usize;
        for _ in 0..distinct {
            if ranking.offer(table.by_name[k]) || ranking.looked == distinct {
                break;
            }
            k += 1;
            if k == distinct {
                k = 0;
            }
        }
        ranking.finish()
    }
}

/// One ranking in progress.
struct Ranking<'a> {
    seen: &'a mut [u32],
    epoch: u32,
    load: &'a PoolLoad,
    flow: u64,
    out: &'a mut [u16],
    n: usize,
    /// Distinct backends looked at so far.
    looked: usize,
    /// Backends with room that are still ramping up and turned this flow away: ranked last.
    deferred: [u16; MAX_CANDIDATES],
    held: usize,
}

impl Ranking<'_> {
    /// Looks at backend `b` if not yet seen; returns whether `out` is full.
    fn offer(&mut self, b: u16) -> bool {
        let i = usize::from(b);
        if self.seen[i] == self.epoch {
            return false;
        }
        self.seen[i] = self.epoch;
        self.looked += 1;
        // A load of another size than the table's set is a caller's mistake; such indices are
        // skipped rather than trusted.
        if i < self.load.len() && self.load.has_room(i) {
            if self.load.admits(i, self.flow) || self.held == self.deferred.len() {
                self.out[self.n] = b;
                self.n += 1;
            } else {
                self.deferred[self.held] = b;
                self.held += 1;
            }
        }
        self.n + self.held >= self.out.len()
    }

    /// The ranking, with the deferred backends after the others.
    fn finish(self) -> usize {
        let mut n = self.n;
        for &d in &self.deferred[..self.held] {
            if n == self.out.len() {
                break;
            }
            self.out[n] = d;
            n += 1;
        }
        n
    }
}
