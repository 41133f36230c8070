//! The queue segment's layout: fixed offsets of the control lines, the handle entries and the
//! slots, the bits of a slot's stamp, and the checked geometry that every offset is computed
//! from. Nothing here moves a slot.
//!
//! Header line, enqueue position, dequeue position, "not empty" and "not full" wait lines,
//! dead-letter enqueue and dequeue positions, a counters line, then `max_handles` handle entries
//! (each 128-aligned: role, pid, start time, claim state, claimed position and record), then the
//! slots (each 16-aligned and packed: stamp, length and attempts, payload), then the dead-letter
//! slots.

use crate::error::Error;
use crate::primitive::{AtomicU64, Ordering, Shm};
use crate::wait::WaitLine;

const OFF_ENQ: usize = 128;
const OFF_DEQ: usize = 256;
pub(super) const NOT_EMPTY: WaitLine = WaitLine::at(384);
pub(super) const NOT_FULL: WaitLine = WaitLine::at(512);
const OFF_DLQ_ENQ: usize = 640;
const OFF_DLQ_DEQ: usize = 768;
pub(super) const OFF_COUNTERS: usize = 896;
const OFF_ENTRIES: usize = 1024;

pub(super) const CTR_REQUEUED: usize = 0;
pub(super) const CTR_DEAD_LETTERED: usize = 1;
pub(super) const CTR_ABANDONED: usize = 2;
pub(super) const CTR_CORRUPT: usize = 3;

pub(super) const FREE: u64 = 0;
pub(super) const WRITING: u64 = 1;
pub(super) const READY: u64 = 2;
pub(super) const CLAIMED: u64 = 3;

const KEY_BITS: u32 = 56;
const KEY_MASK: u64 = (1 << KEY_BITS) - 1;
pub(super) const LAP_MASK: u64 = (1 << (KEY_BITS - 2)) - 1;

pub(super) const SLOT_HEADER: usize = 16;
pub(super) const ENTRY_HEADER: usize = 48;

// Handle entry fields.
pub(super) const E_ROLE: usize = 0;
pub(super) const E_PID: usize = 8;
pub(super) const E_START: usize = 16;
pub(super) const E_CLAIM: usize = 24;
pub(super) const E_CLAIM_POS: usize = 32;
pub(super) const E_CLAIM_META: usize = 40;

pub(super) const ROLE_FREE: u64 = 0;
pub(super) const ROLE_PRODUCER: u64 = 1;
pub(super) const ROLE_CONSUMER: u64 = 2;
pub(super) const ROLE_DEAD_LETTERS: u64 = 3;

// Claim buffer state: empty, or holding a record from the main or the dead-letter ring.
pub(super) const CLAIM_NONE: u64 = 0;
pub(super) const CLAIM_MAIN: u64 = 1;
pub(super) const CLAIM_DEAD: u64 = 2;

/// Largest record a queue may be configured for.
pub const MAX_RECORD_LIMIT: usize = 1 << 20;
/// Most slots a ring of a queue may have.
pub const MAX_SLOTS: usize = 1 << 26;
/// Most handles (producers, consumers, dead-letter readers) a queue may have at once.
pub const MAX_HANDLES_LIMIT: u32 = 256;
/// Largest segment this crate will create or map for a queue (64 GiB).
pub const MAX_SEGMENT: u64 = 64 << 30;

/// How a queue is sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Slots in the ring: a power of two, at least 2.
    pub capacity: usize,
    /// Largest record, in bytes (1 to [`MAX_RECORD_LIMIT`]); each slot holds one.
    pub max_record: usize,
    /// Slots in the dead-letter ring: a power of two, at least 2.
    pub dead_letter_capacity: usize,
    /// Deliveries a record gets before it goes to the dead-letter ring (at least 1).
    pub max_attempts: u32,
    /// Handles that may be attached at once (1 to [`MAX_HANDLES_LIMIT`]).
    pub max_handles: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            capacity: 1024,
            max_record: 256,
            dead_letter_capacity: 256,
            max_attempts: 3,
            max_handles: 64,
        }
    }
}

/// Geometry of one ring in the segment (the main ring or the dead-letter ring).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RingGeom {
    pub(super) enq: usize,
    pub(super) deq: usize,
    pub(super) slots: usize,
    pub(super) count: u64,
    pub(super) shift: u32,
    pub(super) stride: usize,
    pub(super) max_record: usize,
}

/// Checked queue geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QueueLayout {
    pub(super) config: Config,
    pub(super) entry_stride: usize,
    pub(super) main: RingGeom,
    pub(super) dead: RingGeom,
    pub(super) total: usize,
}

impl QueueLayout {
    pub(crate) fn new(config: &Config) -> Result<QueueLayout, Error> {
        Self::check(config).map_err(|reason| Error::InvalidConfig { reason })
    }

    fn check(c: &Config) -> Result<QueueLayout, String> {
        let pow2 = |n: usize, what: &str| {
            if n.is_power_of_two() && (2..=MAX_SLOTS).contains(&n) {
                Ok(())
            } else {
                Err(format!(
                    "{what} {n} must be a power of two in 2..={MAX_SLOTS}"
                ))
            }
        };
        pow2(c.capacity, "capacity")?;
        pow2(c.dead_letter_capacity, "dead_letter_capacity")?;
        if !(1..=MAX_RECORD_LIMIT).contains(&c.max_record) {
            return Err(format!(
                "max_record {} must be in 1..={MAX_RECORD_LIMIT}",
                c.max_record
            ));
        }
        if c.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if !(1..=MAX_HANDLES_LIMIT).contains(&c.max_handles) {
            return Err(format!(
                "max_handles {} must be in 1..={MAX_HANDLES_LIMIT}",
                c.max_handles
            ));
        }
        let entry_stride = (ENTRY_HEADER + c.max_record).next_multiple_of(128);
        // Packed, not rounded to cache lines: a stream of records then moves about
        // `stride / 64` lines per record between the cores instead of whole lines, as in
        // `ArrayQueue`; 16 keeps every stamp 8-aligned.
        let stride = (SLOT_HEADER + c.max_record).next_multiple_of(16);
        let main_slots = OFF_ENTRIES as u64 + u64::from(c.max_handles) * entry_stride as u64;
        let dead_slots = main_slots + c.capacity as u64 * stride as u64;
        let total = dead_slots + c.dead_letter_capacity as u64 * stride as u64;
        if total > MAX_SEGMENT {
            return Err(format!(
                "the queue would need {total} bytes, more than {MAX_SEGMENT}"
            ));
        }
        let geom = |enq, deq, slots: u64, count: usize| RingGeom {
            enq,
            deq,
            slots: slots as usize,
            count: count as u64,
            shift: count.trailing_zeros(),
            stride,
            max_record: c.max_record,
        };
        Ok(QueueLayout {
            config: *c,
            entry_stride,
            main: geom(OFF_ENQ, OFF_DEQ, main_slots, c.capacity),
            dead: geom(OFF_DLQ_ENQ, OFF_DLQ_DEQ, dead_slots, c.dead_letter_capacity),
            total: total as usize,
        })
    }

    pub(crate) fn from_params(p: [u64; 6]) -> Result<QueueLayout, String> {
        if p[5] != 0 {
            return Err("unused MPMC parameter is not zero".into());
        }
        let small = |v: u64, what: &str| {
            usize::try_from(v)
                .ok()
                .filter(|&v| v <= MAX_SLOTS.max(MAX_RECORD_LIMIT))
                .ok_or_else(|| format!("{what} {v} out of range"))
        };
        let config = Config {
            capacity: small(p[0], "capacity")?,
            max_record: small(p[1], "max_record")?,
            dead_letter_capacity: small(p[2], "dead_letter_capacity")?,
            max_attempts: u32::try_from(p[3])
                .map_err(|_| format!("max_attempts {} out of range", p[3]))?,
            max_handles: u32::try_from(p[4])
                .map_err(|_| format!("max_handles {} out of range", p[4]))?,
        };
        Self::check(&config)
    }

    pub(super) fn entry(&self, id: u32) -> usize {
        OFF_ENTRIES + id as usize * self.entry_stride
    }
}

#[cfg(not(loom))]
impl crate::segment::Layout for QueueLayout {
    const KIND: crate::segment::RingKind = crate::segment::RingKind::Mpmc;
    fn params(&self) -> [u64; 6] {
        let c = &self.config;
        [
            c.capacity as u64,
            c.max_record as u64,
            c.dead_letter_capacity as u64,
            u64::from(c.max_attempts),
            u64::from(c.max_handles),
            0,
        ]
    }
    fn from_params(params: [u64; 6]) -> Result<Self, String> {
        QueueLayout::from_params(params)
    }
    fn total_len(&self) -> usize {
        self.total
    }
    /// One per handle entry.
    fn lock_count(&self) -> u32 {
        self.config.max_handles
    }
}

pub(super) fn stamp(lap: u64, state: u64, owner: u32) -> u64 {
    ((((lap & LAP_MASK) << 2) | state) << 8) | u64::from(owner & 0xff)
}

pub(super) fn key_of(stamp: u64) -> u64 {
    stamp >> 8
}

pub(super) fn state_of(stamp: u64) -> u64 {
    (stamp >> 8) & 3
}

pub(super) fn owner_of(stamp: u64) -> u32 {
    (stamp & 0xff) as u32
}

/// The stamp that frees a slot for the lap after the one `s` belongs to.
pub(super) fn next_free(s: u64) -> u64 {
    (((key_of(s) & !3) + 4) & KEY_MASK) << 8
}

#[derive(PartialEq, Eq, Debug)]
pub(super) enum Cmp {
    Behind,
    Equal,
    Ahead,
}

/// Compares stamp keys modulo 2^56, so the lap counter may wrap.
pub(super) fn cmp_key(key: u64, want: u64) -> Cmp {
    let d = key.wrapping_sub(want) & KEY_MASK;
    if d == 0 {
        Cmp::Equal
    } else if d < 1 << (KEY_BITS - 1) {
        Cmp::Ahead
    } else {
        Cmp::Behind
    }
}

impl RingGeom {
    pub(super) fn slot(&self, pos: u64) -> usize {
        self.slots + (pos & (self.count - 1)) as usize * self.stride
    }

    pub(super) fn lap(&self, pos: u64) -> u64 {
        pos >> self.shift
    }

    /// More steps than any honest contention needs; past it the ring's stamps are inconsistent.
    pub(super) fn step_limit(&self) -> u64 {
        4 * self.count + 4096
    }
}

pub(super) fn word(shm: &Shm, off: usize) -> &AtomicU64 {
    // SAFETY: every offset passed here is a fixed control-area offset or computed from a
    // checked layout and an index masked to the ring's size: 8-aligned and inside the mapping,
    // and only ever accessed atomically.
    unsafe { shm.u64(off) }
}

pub(super) fn bump(shm: &Shm, counter: usize) {
    word(shm, OFF_COUNTERS + 8 * counter).fetch_add(1, Ordering::Relaxed);
}
