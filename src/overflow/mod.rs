//! The overflow tier: connections that no backend has room for wait in a shared-memory queue
//! per pool, and worker processes take them over when a backend has room.

pub mod codel;
pub mod handoff;
pub mod notice;
pub mod park;
pub mod shared;
pub mod supervisor;
pub mod ticket;

use std::sync::atomic::Ordering;

use levee_rings::table::Table;

use crate::config::{Discipline, OverflowConfig};
use crate::pool::table::{
    S_CODEL_INTERVAL_NS, S_CODEL_TARGET_NS, S_DISCIPLINE, S_QUEUE_TIMEOUT_MS, SETTINGS_ROW,
};

/// Largest values the settings row is read as (the registry's bounds): a word a corrupt peer
/// wrote cannot overflow the arithmetic that uses it.
const MAX_QUEUE_TIMEOUT_MS: u64 = 3_600_000;
const MAX_CODEL_NS: u64 = 60_000_000_000;

/// The overflow settings that may change while levee runs, as forwarders and workers read them
/// from the load table's settings row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub queue_timeout_ms: u64,
    pub discipline: Discipline,
    pub codel_target_ns: u64,
    pub codel_interval_ns: u64,
    /// Worker processes serving now: the settings row's count, one unit per worker, which a
    /// worker that dies gives back when it is reaped.
    pub workers: u64,
}

impl Settings {
    /// Reads the settings row; a value no levee writes (a corrupt peer) reads as the nearest
    /// sane one.
    pub fn read(load: &Table) -> Self {
        let w = |k| load.word(SETTINGS_ROW, k).load(Ordering::Relaxed);
        Self {
            queue_timeout_ms: w(S_QUEUE_TIMEOUT_MS).clamp(1, MAX_QUEUE_TIMEOUT_MS),
            discipline: if w(S_DISCIPLINE) == 1 {
                Discipline::Codel
            } else {
                Discipline::Fifo
            },
            codel_target_ns: w(S_CODEL_TARGET_NS).clamp(1, MAX_CODEL_NS),
            codel_interval_ns: w(S_CODEL_INTERVAL_NS).clamp(1, MAX_CODEL_NS),
            workers: load.count(SETTINGS_ROW),
        }
    }

    /// Writes `cfg`'s runtime settings into the settings row: at start and on `levee ctl -w`.
    pub fn store(load: &Table, cfg: &OverflowConfig) {
        let set = |k, v: u64| load.word(SETTINGS_ROW, k).store(v, Ordering::Relaxed);
        let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        set(S_QUEUE_TIMEOUT_MS, ms(cfg.queue_timeout));
        set(
            S_DISCIPLINE,
            match cfg.discipline {
                Discipline::Fifo => 0,
                Discipline::Codel => 1,
            },
        );
        set(S_CODEL_TARGET_NS, ns(cfg.codel_target));
        set(S_CODEL_INTERVAL_NS, ns(cfg.codel_interval));
    }
}
