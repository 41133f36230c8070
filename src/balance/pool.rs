//! Live state of a pool's backends, shared by every forwarder of this process.
//!
//! Selectors read it to rank backends; forwarders reserve a connection slot with
//! [`PoolLoad::try_acquire`] before connecting and give it back with [`PoolLoad::release`]. The
//! per-backend cap is exact: the reservation is a compare-and-swap against `max_conns`, so no
//! interleaving of forwarders ever opens more than `max_conns` connections to one backend.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::PoolConfig;

/// Health of a backend as the forwarders see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum BackendState {
    /// Takes new connections.
    Up = 0,
    /// Failed its checks or was ejected: takes no new connections.
    Down = 1,
    /// Operator asked to drain: takes no new connections, established ones continue.
    Drain = 2,
}

impl BackendState {
    fn from_u32(v: u32) -> Self {
        match v {
            0 => Self::Up,
            1 => Self::Down,
            _ => Self::Drain,
        }
    }
}

/// One backend's counters. Only atomics and `repr(C)`, so the same layout can later live in a
/// shared mapping; one cache line each so two forwarders updating neighbours do not contend.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct BackendSlot {
    active: AtomicU32,
    max_conns: AtomicU32,
    weight: AtomicU32,
    state: AtomicU32,
}

/// Bounded-load factor stored as thousandths so it can change at runtime in one atomic.
const BOUND_SCALE: u32 = 1000;

/// The live load of one pool.
#[derive(Debug)]
pub struct PoolLoad {
    slots: Box<[BackendSlot]>,
    /// Sum of `active` over all backends; kept beside them so the bounded-load mean costs O(1).
    total_active: AtomicU32,
    /// `bound × 1000`, or 0 when no bound is set.
    bound_milli: AtomicU32,
}

impl PoolLoad {
    pub fn new(cfg: &PoolConfig) -> Self {
        let slots = cfg
            .backends
            .iter()
            .map(|b| BackendSlot {
                active: AtomicU32::new(0),
                max_conns: AtomicU32::new(b.max_conns),
                weight: AtomicU32::new(b.weight),
                state: AtomicU32::new(BackendState::Up as u32),
            })
            .collect();
        let bound_milli = cfg
            .bound
            .map_or(0, |b| (b * f64::from(BOUND_SCALE)).round() as u32);
        Self {
            slots,
            total_active: AtomicU32::new(0),
            bound_milli: AtomicU32::new(bound_milli),
        }
    }

    /// Number of backends, whatever their state.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Connections open to backend `i` now.
    pub fn active(&self, i: usize) -> u32 {
        self.slots[i].active.load(Ordering::Relaxed)
    }

    /// Connections open to the whole pool now.
    pub fn total_active(&self) -> u32 {
        self.total_active.load(Ordering::Relaxed)
    }

    /// Effective weight of backend `i` now (0: takes no new connections).
    pub fn weight(&self, i: usize) -> u32 {
        self.slots[i].weight.load(Ordering::Relaxed)
    }

    pub fn set_weight(&self, i: usize, weight: u32) {
        self.slots[i].weight.store(weight, Ordering::Relaxed);
    }

    /// Cap on connections to backend `i` (0: none).
    pub fn max_conns(&self, i: usize) -> u32 {
        self.slots[i].max_conns.load(Ordering::Relaxed)
    }

    pub fn set_max_conns(&self, i: usize, max: u32) {
        self.slots[i].max_conns.store(max, Ordering::Relaxed);
    }

    pub fn state(&self, i: usize) -> BackendState {
        BackendState::from_u32(self.slots[i].state.load(Ordering::Relaxed))
    }

    pub fn set_state(&self, i: usize, state: BackendState) {
        self.slots[i].state.store(state as u32, Ordering::Relaxed);
    }

    /// Bounded-load factor, if one is set.
    pub fn bound(&self) -> Option<f64> {
        match self.bound_milli.load(Ordering::Relaxed) {
            0 => None,
            m => Some(f64::from(m) / f64::from(BOUND_SCALE)),
        }
    }

    /// Whether backend `i` may be offered new connections at all: up and weight above 0.
    pub fn is_available(&self, i: usize) -> bool {
        self.state(i) == BackendState::Up && self.weight(i) > 0
    }

    /// Whether backend `i` is available and has room for one more connection: below its
    /// `max_conns`, and, when a bound is set, below `ceil(bound × (total + 1) × w_i / W)` where
    /// `W` sums the weights of the available backends (consistent hashing with bounded loads,
    /// Mirrokni, Thorup and Zadimoghaddam 2016, with weights).
    ///
    /// This is a hint for ranking; [`Self::try_acquire`] is the exact check for the cap.
    pub fn has_room(&self, i: usize) -> bool {
        if !self.is_available(i) {
            return false;
        }
        let active = self.active(i);
        let max = self.max_conns(i);
        if max != 0 && active >= max {
            return false;
        }
        active < self.bound_capacity(i)
    }

    /// The bounded-load capacity of backend `i` (u32::MAX when no bound is set).
    fn bound_capacity(&self, i: usize) -> u32 {
        let milli = self.bound_milli.load(Ordering::Relaxed);
        if milli == 0 {
            return u32::MAX;
        }
        let total_weight: u64 = (0..self.len())
            .filter(|&j| self.is_available(j))
            .map(|j| u64::from(self.weight(j)))
            .sum();
        if total_weight == 0 {
            return 0;
        }
        let demand = u64::from(self.total_active()) + 1;
        let num = u64::from(milli) * demand * u64::from(self.weight(i));
        let den = u64::from(BOUND_SCALE) * total_weight;
        u32::try_from(num.div_ceil(den)).unwrap_or(u32::MAX)
    }

    /// Reserves one connection on backend `i` if it is under its `max_conns` (exact, whatever
    /// other threads do) and, when a bound is set, under its bounded-load capacity. A successful
    /// reservation must be given back with [`Self::release`].
    pub fn try_acquire(&self, i: usize) -> bool {
        let slot = &self.slots[i];
        let max = slot.max_conns.load(Ordering::Relaxed);
        let limit = if max == 0 { u32::MAX } else { max };
        let limit = limit.min(self.bound_capacity(i));
        let won = slot
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |a| {
                (a < limit).then_some(a + 1)
            })
            .is_ok();
        if won {
            self.total_active.fetch_add(1, Ordering::Relaxed);
        }
        won
    }

    /// Gives back a reservation made by [`Self::try_acquire`].
    pub fn release(&self, i: usize) {
        let prev = self.slots[i].active.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(prev > 0, "release without acquire on backend {i}");
        self.total_active.fetch_sub(1, Ordering::Relaxed);
    }
}
