//! Live state of a pool's backends, shared by every forwarder of this process and by the
//! worker processes of the overflow tier.
//!
//! Selectors read it to rank backends; forwarders and workers reserve a connection slot with
//! [`PoolLoad::try_acquire`] before connecting and give it back with [`PoolLoad::release`]. The
//! per-backend cap is exact across threads and processes, and survives a process that dies
//! holding slots: the counts live in a shared [`Table`](levee_rings::table::Table), one column
//! per process, whose exact acquisition and crash reclamation `levee-rings` documents.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use levee_rings::table::{Holder, Table};

use super::health::Status;
use super::table::{self, B_ADMIN, B_BASE_WEIGHT, P_AVAILABLE_WEIGHT, P_BOUND_MILLI, PoolRows};
use crate::config::PoolConfig;

fn pack_admin(weight: u32, state: Status) -> u64 {
    (u64::from(state.to_wire()) << 32) | u64::from(weight)
}

fn admin_weight(admin: u64) -> u32 {
    admin as u32
}

fn admin_state(admin: u64) -> Status {
    Status::from_wire((admin >> 32) as u32)
}

/// What a backend adds to the pool's available weight: its weight while up, else nothing.
fn admin_contribution(admin: u64) -> u64 {
    if admin_state(admin).takes_new() {
        u64::from(admin_weight(admin))
    } else {
        0
    }
}

/// Bounded-load factor stored as thousandths so it can change at runtime in one atomic.
const BOUND_SCALE: u32 = 1000;

/// `bound × 1000`, 0 for none. Saturating: NaN or a bound at or below 0 means none, a huge one
/// the largest representable.
fn bound_to_milli(bound: Option<f64>) -> u32 {
    bound.map_or(0, |b| (b * f64::from(BOUND_SCALE)).round() as u32)
}

/// A backend's bounded-load capacity, `ceil(num / den)` connections, kept as the fraction.
#[derive(Clone, Copy)]
enum BoundTest {
    Unbounded,
    Below { num: u128, den: u128 },
}

impl BoundTest {
    /// Whether a backend with `active` connections is below its capacity.
    fn allows(self, active: u64) -> bool {
        match self {
            Self::Unbounded => true,
            Self::Below { num, den } => u128::from(active) * den < num,
        }
    }
}

/// The live load of one pool: its rows of the load table, and this process's holder.
pub struct PoolLoad {
    table: Table,
    holder: Arc<Holder>,
    rows: PoolRows,
}

impl std::fmt::Debug for PoolLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolLoad")
            .field("table", &self.table)
            .field("rows", &self.rows)
            .finish()
    }
}

impl PoolLoad {
    /// The load of the pool `cfg` describes, in a table of its own that no other process sees.
    ///
    /// # Panics
    ///
    /// When no shared memory can be made for it at all (a full /dev/shm and temporary
    /// directory): the engine uses [`PoolLoad::attach`], which reports the error instead.
    pub fn new(cfg: &PoolConfig) -> Self {
        let made = table::private(cfg).and_then(|(t, rows)| {
            let holder = t.holder()?;
            Ok((t, rows, holder))
        });
        match made {
            Ok((table, rows, holder)) => {
                let load = Self::attach(table, Arc::new(holder), rows);
                load.init(cfg);
                load
            }
            Err(e) => panic!("cannot make a pool load table: {e}"),
        }
    }

    /// The load of the pool whose rows are `rows` in a shared `table`, counted in `holder`'s
    /// column. Reads what is there: the table's creator wrote it with [`PoolLoad::init`].
    pub fn attach(table: Table, holder: Arc<Holder>, rows: PoolRows) -> Self {
        Self {
            table,
            holder,
            rows,
        }
    }

    /// Writes the configuration's caps, weights, states and bound into the pool's rows: once,
    /// by whoever creates the table.
    pub fn init(&self, cfg: &PoolConfig) {
        let mut available = 0;
        for (i, b) in cfg.backends.iter().enumerate().take(self.len()) {
            let admin = pack_admin(b.weight, Status::from(b.state));
            available += admin_contribution(admin);
            let row = self.rows.backend(i);
            self.table.set_cap(row, b.max_conns);
            self.table
                .word(row, B_ADMIN)
                .store(admin, Ordering::Relaxed);
            self.table
                .word(row, B_BASE_WEIGHT)
                .store(u64::from(b.weight), Ordering::Relaxed);
        }
        self.pool_word(P_AVAILABLE_WEIGHT)
            .store(available, Ordering::Relaxed);
        self.set_bound(cfg.bound);
    }

    /// The table and this process's holder, for the parts of the overflow tier that share them.
    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn holder(&self) -> &Arc<Holder> {
        &self.holder
    }

    pub fn rows(&self) -> PoolRows {
        self.rows
    }

    fn admin(&self, i: usize) -> &AtomicU64 {
        self.table.word(self.rows.backend(i), B_ADMIN)
    }

    fn pool_word(&self, k: usize) -> &AtomicU64 {
        self.table.word(self.rows.pool(), k)
    }

    /// The weight backend `i`'s share in the pool's table stands for.
    pub fn base_weight(&self, i: usize) -> u32 {
        let w = self
            .table
            .word(self.rows.backend(i), B_BASE_WEIGHT)
            .load(Ordering::Relaxed);
        u32::try_from(w).unwrap_or(u32::MAX)
    }

    /// Whether backend `i` takes the flow (or pick) `key` given its slow-start ramp: always at
    /// full weight; below it, the share `weight / base_weight` of keys, chosen by a hash of the
    /// key so one flow keeps its answer while the ramp climbs (a key admitted at one weight is
    /// admitted at every higher one). Selectors whose shares do not follow live weights (maglev's
    /// table, round robin, source hash) rank a backend that does not admit the key last.
    pub fn admits(&self, i: usize, key: u64) -> bool {
        let weight = self.weight(i);
        let base = self.base_weight(i);
        if weight >= base {
            return true;
        }
        let mixed = (key ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .wrapping_mul(0xBF58_476D_1CE4_E5B9);
        (mixed >> 32) % u64::from(base) < u64::from(weight)
    }

    /// Number of backends, whatever their state.
    pub fn len(&self) -> usize {
        self.rows.backends
    }

    pub fn is_empty(&self) -> bool {
        self.rows.backends == 0
    }

    /// Connections open to backend `i` now, from every process.
    pub fn active(&self, i: usize) -> u32 {
        u32::try_from(self.table.count(self.rows.backend(i))).unwrap_or(u32::MAX)
    }

    /// Connections open to the whole pool now, from every process.
    pub fn total_active(&self) -> u32 {
        u32::try_from(self.table.count(self.rows.pool())).unwrap_or(u32::MAX)
    }

    /// Effective weight of backend `i` now (0: takes no new connections).
    pub fn weight(&self, i: usize) -> u32 {
        admin_weight(self.admin(i).load(Ordering::Relaxed))
    }

    pub fn set_weight(&self, i: usize, weight: u32) {
        self.update_admin(i, |a| pack_admin(weight, admin_state(a)));
    }

    /// Cap on connections to backend `i` (0: none).
    pub fn max_conns(&self, i: usize) -> u32 {
        self.table.cap(self.rows.backend(i))
    }

    pub fn set_max_conns(&self, i: usize, max: u32) {
        self.table.set_cap(self.rows.backend(i), max);
    }

    /// Backend `i`'s status as the monitor last published it (its configured state until then).
    pub fn state(&self, i: usize) -> Status {
        admin_state(self.admin(i).load(Ordering::Relaxed))
    }

    pub fn set_state(&self, i: usize, state: Status) {
        self.update_admin(i, |a| pack_admin(admin_weight(a), state));
    }

    /// Applies an admin change to backend `i` and moves the pool's available weight by exactly
    /// what that change moved the backend's contribution.
    fn update_admin(&self, i: usize, change: impl Fn(u64) -> u64) {
        let old = match self
            .admin(i)
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| Some(change(a)))
        {
            Ok(old) | Err(old) => old,
        };
        let delta = admin_contribution(change(old)).wrapping_sub(admin_contribution(old));
        self.pool_word(P_AVAILABLE_WEIGHT)
            .fetch_add(delta, Ordering::Relaxed);
    }

    /// Sum of the weights of the backends that are up: the `W` of the bounded-load capacity.
    pub fn available_weight(&self) -> u64 {
        let w = self.pool_word(P_AVAILABLE_WEIGHT).load(Ordering::Relaxed);
        // Above the largest possible sum it can only be a transient "negative" from two racing
        // changes to one backend (or a corrupt peer): read it as empty until the other delta
        // lands.
        let most = u64::from(u32::MAX).saturating_mul(self.len() as u64);
        if w > most { 0 } else { w }
    }

    /// Bounded-load factor, if one is set.
    pub fn bound(&self) -> Option<f64> {
        match self.pool_word(P_BOUND_MILLI).load(Ordering::Relaxed) {
            0 => None,
            m => Some(m as f64 / f64::from(BOUND_SCALE)),
        }
    }

    /// Sets the bounded-load factor (`None` or 0: only `max_conns` bounds a backend); takes
    /// effect on the next ranking and reservation.
    pub fn set_bound(&self, bound: Option<f64>) {
        self.pool_word(P_BOUND_MILLI)
            .store(u64::from(bound_to_milli(bound)), Ordering::Relaxed);
    }

    /// Whether backend `i` may be offered new connections at all: up and weight above 0.
    pub fn is_available(&self, i: usize) -> bool {
        admin_contribution(self.admin(i).load(Ordering::Relaxed)) > 0
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
        self.under_cap(i) && self.bound_test(i).allows(u64::from(self.active(i)))
    }

    /// Whether backend `i` is below its `max_conns` (0: no cap), whatever its health. A hint,
    /// as for [`Self::has_room`].
    pub fn under_cap(&self, i: usize) -> bool {
        let max = self.max_conns(i);
        max == 0 || self.active(i) < max
    }

    /// The bounded-load test of backend `i` as of now.
    fn bound_test(&self, i: usize) -> BoundTest {
        let milli = self.pool_word(P_BOUND_MILLI).load(Ordering::Relaxed);
        if milli == 0 {
            return BoundTest::Unbounded;
        }
        let total_weight = self.available_weight();
        if total_weight == 0 {
            return BoundTest::Below { num: 0, den: 1 };
        }
        // `active < ceil(num / den)` is `active × den < num`: no division on the hot path.
        // u128: bound, demand and weights are each up to 32 bits (the weight sum up to 48),
        // their products are not 64. The bound word is shared: clamp what a peer wrote.
        let milli = milli.min(u64::from(u32::MAX));
        let demand = u128::from(self.total_active()) + 1;
        BoundTest::Below {
            num: u128::from(milli) * demand * u128::from(self.weight(i)),
            den: u128::from(BOUND_SCALE) * u128::from(total_weight),
        }
    }

    /// Reserves one connection on backend `i` if it is under its `max_conns` (exact, whatever
    /// other threads and processes do) and, when a bound is set, under its bounded-load
    /// capacity. A successful reservation must be given back with [`Self::release`]. Two
    /// reservations racing for a backend's last slot may both fail; neither ever exceeds it.
    pub fn try_acquire(&self, i: usize) -> bool {
        let bound = self.bound_test(i);
        let won = self
            .holder
            .try_acquire_with(self.rows.backend(i), |others| bound.allows(others));
        if won {
            self.holder.add(self.rows.pool(), 1);
        }
        won
    }

    /// Gives back a reservation made by [`Self::try_acquire`] in this process. Saturating, so a
    /// stray release cannot wrap the count and make the backend look full for good.
    pub fn release(&self, i: usize) {
        debug_assert!(
            self.holder.held(self.rows.backend(i)) > 0,
            "release without acquire on backend {i}"
        );
        self.holder.release(self.rows.backend(i));
        self.holder.sub(self.rows.pool(), 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, Balance, HashKey};

    fn pool(weights: &[u32], max_conns: u32, bound: Option<f64>) -> PoolConfig {
        PoolConfig {
            name: "p".into(),
            balance: Balance::Maglev,
            hash_key: HashKey::SourceIp,
            table_size: 65537,
            bound,
            overflow: crate::config::Overflow::Queue,
            proxy_protocol: crate::config::ProxyProtocol::None,
            source: Vec::new(),
            health: crate::config::HealthConfig::default(),
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| BackendConfig {
                    weight,
                    max_conns,
                    ..BackendConfig::new(format!("b{i}"), ([127, 0, 0, 1], 8000 + i as u16).into())
                })
                .collect(),
        }
    }

    #[test]
    fn available_weight_follows_state_and_weight_changes() {
        let load = PoolLoad::new(&pool(&[3, 5, 0], 0, None));
        assert_eq!(load.available_weight(), 8);
        load.set_state(1, Status::Down);
        assert_eq!(load.available_weight(), 3);
        load.set_weight(1, 7); // down: no contribution yet
        assert_eq!(load.available_weight(), 3);
        load.set_state(1, Status::Up);
        assert_eq!(load.available_weight(), 10);
        load.set_weight(2, 4);
        load.set_state(0, Status::Drain);
        assert_eq!(load.available_weight(), 11);
        load.set_state(0, Status::Drain); // no change, no delta
        assert_eq!(load.available_weight(), 11);
        assert_eq!(load.weight(1), 7);
        assert_eq!(load.state(0), Status::Drain);
    }

    #[test]
    fn a_ramping_backend_adds_its_weight_and_an_ejected_one_does_not() {
        let load = PoolLoad::new(&pool(&[3, 5], 0, None));
        assert_eq!(load.available_weight(), 8);
        load.set_state(0, Status::Ramping);
        assert_eq!(load.available_weight(), 8);
        assert!(load.is_available(0));
        load.set_state(1, Status::Ejected);
        assert_eq!(load.available_weight(), 3);
        assert!(!load.is_available(1));
        assert_eq!(load.state(0), Status::Ramping);
        assert_eq!(load.state(1), Status::Ejected);
    }

    #[test]
    fn the_table_keeps_the_codes_older_readers_know() {
        let load = PoolLoad::new(&pool(&[1; 5], 0, None));
        let code = |i: usize| (load.admin(i).load(Ordering::Relaxed) >> 32) as u32;
        for (i, status) in [Status::Up, Status::Down, Status::Drain]
            .into_iter()
            .enumerate()
        {
            load.set_state(i, status);
            assert_eq!(code(i), i as u32, "{status:?}");
        }
        // The newer ones read as drain (no new connections) to a reader that knows only 0-2.
        load.set_state(3, Status::Ramping);
        load.set_state(4, Status::Ejected);
        assert!(code(3) > 2 && code(4) > 2 && code(3) != code(4));
        // And a code no status has, as a corrupt peer might write, reads as drain.
        load.admin(0).store(7 << 32 | 1, Ordering::Relaxed);
        assert_eq!(load.state(0), Status::Drain);
    }

    #[test]
    fn available_weight_is_exact_after_racing_changes() {
        let load = PoolLoad::new(&pool(&[1; 4], 0, None));
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let load = &load;
                s.spawn(move || {
                    for k in 0..2000u32 {
                        let i = ((k + t) % 4) as usize;
                        if k % 3 == 0 {
                            load.set_state(i, Status::Down);
                        } else if k % 3 == 1 {
                            load.set_weight(i, k % 7 + t);
                        } else {
                            load.set_state(i, Status::Up);
                        }
                    }
                });
            }
        });
        let expected: u64 = (0..4)
            .filter(|&i| load.state(i) == Status::Up)
            .map(|i| u64::from(load.weight(i)))
            .sum();
        assert_eq!(load.available_weight(), expected);
    }

    #[test]
    fn bound_capacity_does_not_overflow_with_extreme_values() {
        let load = PoolLoad::new(&pool(&[u32::MAX, 1], 0, Some(4_000_000.0)));
        assert!(load.try_acquire(0));
        assert!(load.has_room(0));
        assert!(load.has_room(1));
    }

    #[test]
    fn bound_capacity_follows_weights() {
        // bound 1.5, weights 1 and 3: after T acquisitions backend 0 may hold
        // ceil(1.5 × (T + 1) / 4) when asked for one more.
        let load = PoolLoad::new(&pool(&[1, 3], 0, Some(1.5)));
        assert!(load.try_acquire(0)); // cap ceil(1.5 × 1 / 4) = 1
        assert!(!load.try_acquire(0)); // cap ceil(1.5 × 2 / 4) = 1
        assert!(load.try_acquire(1));
        assert!(load.try_acquire(0)); // cap ceil(1.5 × 3 / 4) = 2
        assert!(!load.has_room(0));
    }

    #[test]
    fn bound_can_change_at_runtime() {
        let load = PoolLoad::new(&pool(&[1, 1], 0, None));
        assert!(load.try_acquire(0));
        assert!(load.try_acquire(0));
        load.set_bound(Some(1.0)); // 3 × 1 / 2 → cap 2
        assert_eq!(load.bound(), Some(1.0));
        assert!(!load.try_acquire(0));
        load.set_bound(Some(f64::NAN));
        assert_eq!(load.bound(), None);
        assert!(load.try_acquire(0));
    }

    #[test]
    fn bound_refuses_when_no_backend_is_up() {
        let load = PoolLoad::new(&pool(&[2, 2], 0, Some(1.5)));
        load.set_state(0, Status::Down);
        load.set_state(1, Status::Down);
        assert!(!load.try_acquire(0));
        load.set_state(1, Status::Up);
        assert!(load.try_acquire(1));
    }

    /// Backend 0 of `load` holds nothing, counts nothing, and its cap of 1 is whole.
    fn one_free_slot(load: &PoolLoad) {
        assert_eq!((load.active(0), load.total_active()), (0, 0));
        assert!(load.has_room(0));
        assert!(load.try_acquire(0));
        assert!(!load.try_acquire(0), "the cap of 1 holds");
        load.release(0);
        assert_eq!((load.active(0), load.total_active()), (0, 0));
    }

    #[test]
    fn stray_release_does_not_wrap() {
        let load = PoolLoad::new(&pool(&[1], 1, None));
        // What `release` does past its debug assertion, on the backend's and the pool's rows: in
        // every build, not only in those without the assertion.
        load.holder().release(load.rows().backend(0));
        load.holder().sub(load.rows().pool(), 1);
        one_free_slot(&load);
        // `release` itself: stopped by the assertion in a debug build, saturating in a release
        // build; in either the counts stay whole.
        let stray = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load.release(0)));
        assert_eq!(
            stray.is_err(),
            cfg!(debug_assertions),
            "a stray release panics exactly when debug assertions are on"
        );
        one_free_slot(&load);
    }
}
