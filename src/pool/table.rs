//! The load table: every pool's live load in one shared-memory segment (a `levee-rings`
//! [`Table`]), so that forwarders and worker processes count connections to a backend against
//! one cap, and so that a process that dies holding connections does not leak them.
//!
//! Rows, in order:
//!
//! | row | count column | words (written by) |
//! |---|---|---|
//! | 0: settings | workers attached: each worker adds one as it starts serving | queue timeout ms, discipline, CoDel target ns, CoDel interval ns (`levee ctl`) |
//! | per pool, one per backend | connections open to it; cap = `max_conns` (`levee ctl`) | admin word: weight and state (health monitor); the weight its table was built for (start) |
//! | per pool, the pool row | connections open to the pool | bound × 1000 (`levee ctl`); available weight (health monitor) |
//! | per pool, the queue row | tickets a worker holds while it waits for a backend | CoDel's three words (workers) |
//!
//! Each process attaches one [`Holder`] (one count column in every row), which all its threads
//! share; `levee run` is holder 0 and creates the table, workers attach after it.

use std::path::Path;

use levee_rings::table::{Config, Table};

use crate::config::PoolConfig;

/// Application words per row: the most any row kind uses.
pub const WORDS: usize = 4;

/// The row of engine-wide overflow settings that workers read too.
pub const SETTINGS_ROW: usize = 0;
pub const S_QUEUE_TIMEOUT_MS: usize = 0;
pub const S_DISCIPLINE: usize = 1;
pub const S_CODEL_TARGET_NS: usize = 2;
pub const S_CODEL_INTERVAL_NS: usize = 3;

/// Words of a backend row.
pub const B_ADMIN: usize = 0;
pub const B_BASE_WEIGHT: usize = 1;
/// Words of a pool row.
pub const P_BOUND_MILLI: usize = 0;
pub const P_AVAILABLE_WEIGHT: usize = 1;
/// Words of a queue row.
pub const Q_CODEL_MIN_DELAY: usize = 0;
pub const Q_CODEL_INTERVAL_END: usize = 1;
pub const Q_CODEL_FLAGS: usize = 2;

/// Where one pool's rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolRows {
    /// The first backend's row; backend `i` is `base + i`.
    pub base: usize,
    pub backends: usize,
}

impl PoolRows {
    pub fn backend(&self, i: usize) -> usize {
        debug_assert!(i < self.backends);
        self.base + i
    }

    pub fn pool(&self) -> usize {
        self.base + self.backends
    }

    pub fn queue(&self) -> usize {
        self.base + self.backends + 1
    }
}

/// The rows of every pool, in configuration order, after the settings row.
pub fn layout(pools: &[PoolConfig]) -> (Vec<PoolRows>, usize) {
    let mut next = SETTINGS_ROW + 1;
    let rows = pools
        .iter()
        .map(|p| {
            let rows = PoolRows {
                base: next,
                backends: p.backends.len(),
            };
            next += p.backends.len() + 2;
            rows
        })
        .collect();
    (rows, next)
}

/// The table's geometry for these pools and this many holders.
pub fn config(pools: &[PoolConfig], holders: u32) -> Config {
    Config {
        rows: layout(pools).1,
        holders,
        words: WORDS,
        padded: true,
    }
}

/// A table of one pool for this process alone: for a [`PoolLoad`](super::PoolLoad) without an
/// overflow tier, and for tests.
pub fn private(pool: &PoolConfig) -> levee_rings::Result<(Table, PoolRows)> {
    let table = Table::create_anonymous(private_dir(), &config(std::slice::from_ref(pool), 1))?;
    Ok((table, layout(std::slice::from_ref(pool)).0[0]))
}

/// Where private tables are made: /dev/shm when it exists, else the temporary directory.
fn private_dir() -> std::path::PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}
