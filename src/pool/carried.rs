//! Connections a levee this one took over from still relays, counted in this levee's load
//! while that one drains, so that a backend's `max_conns` holds across both processes.
//!
//! The old levee hands over its load tables (their files, over `SCM_RIGHTS`) with the row of
//! each backend. For every backend both levees have (same pool, name and address), this levee
//! adds the old one's count of it to its own process's column in its own table, and follows
//! that count as the old levee's connections end. The old levee stops accepting once the new one
//! is ready and sends its queue over, so its counts only fall from then on, and the copy here,
//! re-read every [`FOLLOW_EVERY`], is never below them: a slot the old levee frees reaches this
//! one that much later, never earlier. In the moments before the old levee stops accepting, both
//! accept, and each sees the other's new connections only at the next re-read.
//!
//! The units are this process's own: given back once no process holds the old table any more
//! (the old levee and its workers have exited), and reaped with this process's column if this
//! one dies. When this levee is replaced in turn before that, it hands the tables it follows on
//! with its own, and gives its units back once the next levee has them.

use std::sync::Arc;
use std::time::Duration;

use levee_rings::table::Table;

use super::Pool;

/// How often the old levee's counts are re-read.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(5);

/// No count this large is real; a table with one (a corrupt peer) is read as this.
const MAX_COUNT: u64 = 1 << 24;

/// One backend of the old levee, as it handed it over.
#[derive(Debug)]
pub struct OldRow {
    pub pool: String,
    pub backend: String,
    pub addr: std::net::SocketAddr,
    /// The table (index into the tables handed over) and the backend's row in it.
    pub table: usize,
    pub row: usize,
}

struct Follow {
    table: usize,
    row: usize,
    pool: Arc<Pool>,
    backend: usize,
    /// Units added to this process's column for it.
    mine: u64,
}

/// The old levee's backend counts, followed in this one's load.
pub struct Carried {
    tables: Vec<Table>,
    follows: Vec<Follow>,
    /// A levee that took over from this one follows them now.
    handed_on: bool,
}

/// A followed backend's row, to hand to the next levee.
pub struct HandedRow {
    pub pool: String,
    pub backend: String,
    pub addr: std::net::SocketAddr,
    pub row: usize,
    pub table: std::os::fd::OwnedFd,
}

impl Carried {
    /// Matches the old levee's backends with `pools` and starts following their counts.
    pub fn new(tables: Vec<Table>, rows: &[OldRow], pools: &[Arc<Pool>]) -> Self {
        let follows = rows
            .iter()
            .filter(|r| tables.get(r.table).is_some_and(|t| r.row < t.config().rows))
            .filter_map(|r| {
                let pool = pools.iter().find(|p| p.name == r.pool)?;
                let backend = pool.names.iter().enumerate().position(|(i, name)| {
                    *name == r.backend && pool.addrs[i].as_socket().is_some_and(|a| a == r.addr)
                })?;
                Some(Follow {
                    table: r.table,
                    row: r.row,
                    pool: pool.clone(),
                    backend,
                    mine: 0,
                })
            })
            .collect();
        let mut carried = Self {
            tables,
            follows,
            handed_on: false,
        };
        carried.follow();
        carried
    }

    /// How many backends are followed.
    pub fn len(&self) -> usize {
        self.follows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.follows.is_empty()
    }

    /// The old levee's connections now, over the backends followed.
    pub fn carried(&self) -> u64 {
        self.follows.iter().map(|f| f.mine).sum()
    }

    /// Brings this levee's copy of each old count up to date.
    pub fn follow(&mut self) {
        if self.handed_on {
            return;
        }
        for f in &mut self.follows {
            let old = self.tables[f.table].count(f.row).min(MAX_COUNT);
            let holder = f.pool.load.holder();
            let row = f.pool.load.rows().backend(f.backend);
            if old > f.mine {
                holder.add(row, (old - f.mine) as u32);
            } else if old < f.mine {
                holder.sub(row, (f.mine - old) as u32);
            }
            f.mine = old;
        }
    }

    /// Whether a live process still holds any of the old tables (the old levee, or a worker of
    /// it still relaying).
    pub fn predecessor_alive(&self) -> bool {
        !self.handed_on
            && self.tables.iter().any(|t| {
                // Unreadable locks count as alive: the cap errs on the safe side.
                t.holders()
                    .map_or(true, |holders| holders.iter().any(|h| h.alive))
            })
    }

    /// The rows followed, each with its own descriptor of its table, for the levee that takes
    /// over from this one.
    pub fn handed_rows(&self) -> Vec<HandedRow> {
        if self.handed_on {
            return Vec::new();
        }
        self.follows
            .iter()
            .filter_map(|f| {
                Some(HandedRow {
                    pool: f.pool.name.clone(),
                    backend: f.pool.names[f.backend].clone(),
                    addr: f.pool.addrs[f.backend].as_socket()?,
                    row: f.row,
                    table: self.tables[f.table].file().try_clone_to_owned().ok()?,
                })
            })
            .collect()
    }

    /// The levee that took over from this one follows the old tables now: give the units back
    /// and stop.
    pub fn hand_on(&mut self) {
        self.release();
        self.handed_on = true;
    }

    /// Gives every unit back.
    pub fn release(&mut self) {
        for f in &mut self.follows {
            let row = f.pool.load.rows().backend(f.backend);
            f.pool.load.holder().sub(row, f.mine as u32);
            f.mine = 0;
        }
    }
}

impl Drop for Carried {
    fn drop(&mut self) {
        self.release();
    }
}
