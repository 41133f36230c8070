//! Multi-producer, competing-consumer queue of bounded records, in a shared segment, surviving
//! the crash of any producer or consumer.
//!
//! # Algorithm
//!
//! Dmitry Vyukov's bounded MPMC queue ("Bounded MPMC queue", 1024cores.net; crossbeam's
//! `ArrayQueue` is the same algorithm): `capacity` slots, a 64-bit free-running enqueue position
//! and dequeue position, and in each slot a stamp saying which lap of the ring the slot is ready
//! for. A producer at position `pos` may write slot `pos % capacity` only when its stamp says
//! "free for lap `pos / capacity`"; a consumer may take it only when it says "ready for that
//! lap". Positions are hints that any side helps advance; the stamps decide.
//!
//! Two changes make it safe across processes that crash:
//!
//! - **Owned transitions.** A stamp is `lap (54 bits) | state (2 bits) | owner (8 bits)`, with
//!   states FREE → WRITING → READY → CLAIMED → FREE(next lap). Producers and consumers move a
//!   slot with a compare-and-swap on its stamp (not on the position), and the WRITING and CLAIMED
//!   states carry the index of the handle that holds the slot. A record becomes visible only by
//!   the final store of READY, so a producer killed mid-write leaves a WRITING slot naming it.
//! - **Liveness by lock.** Each handle holds an open-file-description lock on its own byte of the
//!   segment file (beyond its end). The kernel drops the lock when the holder dies, however it
//!   dies, and PID reuse cannot fake it. Any handle that takes a dead handle's lock owns its
//!   recovery: WRITING slots of the dead become FREE for the next lap (consumers skip them),
//!   its claims go back to the queue with their attempt count raised, and a record that reached
//!   `max_attempts` goes to the dead-letter ring instead.
//!
//! A consumer copies a claimed record into its own claim buffer (in its handle entry) before
//! freeing the slot, so a slow consumer never holds ring space and producers are never blocked by
//! unacknowledged work. Acknowledging is a store to the consumer's own line. Delivery is
//! at-least-once: a consumer that dies between processing and acknowledging is redelivered to.
//!
//! Stamps compare in modular 56-bit arithmetic; a handle would have to stall for 2^53 laps of
//! the ring for a stale stamp to look current.
//!
//! # Layout
//!
//! Header line, enqueue position, dequeue position, "not empty" and "not full" wait lines,
//! dead-letter enqueue and dequeue positions, a counters line, then `max_handles` handle entries
//! (each 128-aligned: role, pid, start time, claim state, claimed position and record), then the
//! slots (each 16-aligned and packed: stamp, length and attempts, payload), then the dead-letter
//! slots.

use crate::error::{Error, PushError};
use crate::primitive::{AtomicU64, Ordering, Shm};
use crate::wait::WaitLine;

const OFF_ENQ: usize = 128;
const OFF_DEQ: usize = 256;
const NOT_EMPTY: WaitLine = WaitLine::at(384);
const NOT_FULL: WaitLine = WaitLine::at(512);
const OFF_DLQ_ENQ: usize = 640;
const OFF_DLQ_DEQ: usize = 768;
const OFF_COUNTERS: usize = 896;
const OFF_ENTRIES: usize = 1024;

const CTR_REQUEUED: usize = 0;
const CTR_DEAD_LETTERED: usize = 1;
const CTR_ABANDONED: usize = 2;
const CTR_CORRUPT: usize = 3;

const FREE: u64 = 0;
const WRITING: u64 = 1;
const READY: u64 = 2;
const CLAIMED: u64 = 3;

const KEY_BITS: u32 = 56;
const KEY_MASK: u64 = (1 << KEY_BITS) - 1;
const LAP_MASK: u64 = (1 << (KEY_BITS - 2)) - 1;

const SLOT_HEADER: usize = 16;
const ENTRY_HEADER: usize = 48;

// Handle entry fields.
const E_ROLE: usize = 0;
const E_PID: usize = 8;
const E_START: usize = 16;
const E_CLAIM: usize = 24;
const E_CLAIM_POS: usize = 32;
const E_CLAIM_META: usize = 40;

const ROLE_FREE: u64 = 0;
const ROLE_PRODUCER: u64 = 1;
const ROLE_CONSUMER: u64 = 2;
const ROLE_DEAD_LETTERS: u64 = 3;

// Claim buffer state: empty, or holding a record from the main or the dead-letter ring.
const CLAIM_NONE: u64 = 0;
const CLAIM_MAIN: u64 = 1;
const CLAIM_DEAD: u64 = 2;

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
struct RingGeom {
    enq: usize,
    deq: usize,
    slots: usize,
    count: u64,
    shift: u32,
    stride: usize,
    max_record: usize,
}

/// Checked queue geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QueueLayout {
    config: Config,
    entry_stride: usize,
    main: RingGeom,
    dead: RingGeom,
    total: usize,
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

    fn entry(&self, id: u32) -> usize {
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

fn stamp(lap: u64, state: u64, owner: u32) -> u64 {
    ((((lap & LAP_MASK) << 2) | state) << 8) | u64::from(owner & 0xff)
}

fn key_of(stamp: u64) -> u64 {
    stamp >> 8
}

fn state_of(stamp: u64) -> u64 {
    (stamp >> 8) & 3
}

fn owner_of(stamp: u64) -> u32 {
    (stamp & 0xff) as u32
}

/// The stamp that frees a slot for the lap after the one `s` belongs to.
fn next_free(s: u64) -> u64 {
    (((key_of(s) & !3) + 4) & KEY_MASK) << 8
}

#[derive(PartialEq, Eq, Debug)]
enum Cmp {
    Behind,
    Equal,
    Ahead,
}

/// Compares stamp keys modulo 2^56, so the lap counter may wrap.
fn cmp_key(key: u64, want: u64) -> Cmp {
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
    fn slot(&self, pos: u64) -> usize {
        self.slots + (pos & (self.count - 1)) as usize * self.stride
    }

    fn lap(&self, pos: u64) -> u64 {
        pos >> self.shift
    }

    /// The next position to try after finding `pos` taken (its slot's stamp `s` is ahead of
    /// `pos`'s lap). Every position below a hint, or below a taken one, has been taken, so a
    /// handle that fell behind (preempted while the others went round the ring many times, or
    /// sent back by a stale hint) jumps: to the hint when it is further on, or to just past the
    /// lap before the slot's, instead of one step per position. Otherwise the next position,
    /// helping the hint along.
    #[inline]
    fn step_past(&self, hint: &AtomicU64, pos: u64, s: u64) -> u64 {
        let now = hint.load(Ordering::Relaxed);
        if (now.wrapping_sub(pos) as i64) > 0 {
            return now;
        }
        let laps_ahead = ((key_of(s) >> 2).wrapping_sub(self.lap(pos))) & LAP_MASK;
        if laps_ahead > 1 {
            return pos
                .wrapping_add((laps_ahead - 1).wrapping_mul(self.count))
                .wrapping_add(1);
        }
        advance_hint(hint, pos);
        pos.wrapping_add(1)
    }

    /// More steps than any honest contention needs; past it the ring's stamps are inconsistent.
    fn step_limit(&self) -> u64 {
        4 * self.count + 4096
    }
}

/// Moves a position hint from `pos` to the next position, unless someone already moved it. A
/// plain load and store rather than a compare-and-swap (which would fence every push and claim):
/// the stamps, not the hints, decide who owns a slot, and a hint that a slow handle sets back
/// costs only the jumps of [`RingGeom::step_past`].
#[inline]
fn advance_hint(hint: &AtomicU64, pos: u64) {
    if hint.load(Ordering::Relaxed) == pos {
        hint.store(pos.wrapping_add(1), Ordering::Relaxed);
    }
}

fn word(shm: &Shm, off: usize) -> &AtomicU64 {
    // SAFETY: every offset passed here is a fixed control-area offset or computed from a
    // checked layout and an index masked to the ring's size: 8-aligned and inside the mapping,
    // and only ever accessed atomically.
    unsafe { shm.u64(off) }
}

fn bump(shm: &Shm, counter: usize) {
    word(shm, OFF_COUNTERS + 8 * counter).fetch_add(1, Ordering::Relaxed);
}

/// Where a claimed record was found.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Claimed {
    pos: u64,
    stamp: u64,
}

/// The lock-free half of the queue: pushing and claiming over any [`Shm`]. The handle types and
/// the loom models both drive it.
#[derive(Clone)]
pub(crate) struct QueueCore {
    shm: Shm,
    layout: QueueLayout,
}

impl QueueCore {
    pub(crate) fn new(shm: Shm, layout: QueueLayout) -> QueueCore {
        QueueCore { shm, layout }
    }

    fn ring(&self, dead: bool) -> &RingGeom {
        if dead {
            &self.layout.dead
        } else {
            &self.layout.main
        }
    }

    /// Writes `data` into a free slot of the main (or dead-letter) ring as handle `me`.
    pub(crate) fn push(
        &self,
        dead: bool,
        me: u32,
        data: &[u8],
        attempts: u32,
    ) -> Result<(), PushError> {
        let g = *self.ring(dead);
        if data.len() > g.max_record {
            return Err(PushError::TooLarge {
                len: data.len(),
                max: g.max_record,
            });
        }
        let shm = &self.shm;
        let enq = word(shm, g.enq);
        let mut pos = enq.load(Ordering::Relaxed);
        for _ in 0..g.step_limit() {
            let off = g.slot(pos);
            let lap = g.lap(pos);
            let st = word(shm, off);
            let s = st.load(Ordering::Acquire);
            match cmp_key(key_of(s), key_of(stamp(lap, FREE, 0))) {
                Cmp::Equal => {
                    // Acquire: our writes to the slot come after the last reader's reads.
                    if st
                        .compare_exchange_weak(
                            s,
                            stamp(lap, WRITING, me),
                            Ordering::Acquire,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                    {
                        advance_hint(enq, pos);
                        let meta = data.len() as u64 | (u64::from(attempts) << 32);
                        // SAFETY: the slot is ours (WRITING, owner `me`); its header and
                        // `max_record` payload bytes lie inside the slot array.
                        unsafe {
                            shm.write(off + 8, &meta.to_le_bytes());
                            shm.write(off + SLOT_HEADER, data);
                        }
                        // The only store that makes the record visible.
                        st.store(stamp(lap, READY, 0), Ordering::Release);
                        if !dead {
                            NOT_EMPTY.wake(shm);
                        }
                        return Ok(());
                    }
                    pos = enq.load(Ordering::Relaxed);
                }
                Cmp::Ahead => pos = g.step_past(enq, pos, s),
                Cmp::Behind => {
                    // The slot still holds the previous lap: full, unless the hint moved.
                    let now = enq.load(Ordering::Relaxed);
                    if now == pos {
                        return Err(PushError::Full);
                    }
                    pos = now;
                }
            }
            crate::primitive::spin_hint();
        }
        Err(PushError::Corrupt(Error::corrupt(
            "MPMC stamps let no producer make progress",
        )))
    }

    /// Claims the oldest ready slot of a ring for handle `me`, in place. `None`: nothing ready.
    pub(crate) fn claim_slot(&self, dead: bool, me: u32) -> Result<Option<Claimed>, Error> {
        let g = *self.ring(dead);
        let shm = &self.shm;
        let deq = word(shm, g.deq);
        let mut pos = deq.load(Ordering::Relaxed);
        for _ in 0..g.step_limit() {
            let lap = g.lap(pos);
            let st = word(shm, g.slot(pos));
            let mine = stamp(lap, CLAIMED, me);
            // Claim first, look after: a ready slot is taken in one exclusive fetch of its line,
            // where a load then a compare-and-swap would fetch it shared and then upgrade it,
            // two transfers between cores (the round trip drops by a tenth). A failed attempt
            // returns the stamp to look at.
            let s = match st.compare_exchange(
                stamp(lap, READY, 0),
                mine,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    advance_hint(deq, pos);
                    return Ok(Some(Claimed { pos, stamp: mine }));
                }
                Err(s) => s,
            };
            match cmp_key(key_of(s), key_of(stamp(lap, READY, 0))) {
                Cmp::Equal => {
                    if st
                        .compare_exchange_weak(s, mine, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        advance_hint(deq, pos);
                        return Ok(Some(Claimed { pos, stamp: mine }));
                    }
                    pos = deq.load(Ordering::Relaxed);
                }
                Cmp::Ahead => pos = g.step_past(deq, pos, s),
                Cmp::Behind => {
                    // Free for this lap or still being written: nothing ready here yet.
                    let now = deq.load(Ordering::Relaxed);
                    if now == pos {
                        return Ok(None);
                    }
                    pos = now;
                }
            }
            crate::primitive::spin_hint();
        }
        Err(Error::corrupt("MPMC stamps let no consumer make progress"))
    }

    /// Reads a claimed (or otherwise owned) slot's record: (payload offset, length, attempts).
    fn read_meta(&self, dead: bool, pos: u64) -> Result<(usize, usize, u32), Error> {
        let g = self.ring(dead);
        let off = g.slot(pos);
        let mut raw = [0u8; 8];
        // SAFETY: the slot header lies inside the slot array; the slot is owned by the caller.
        unsafe { self.shm.read(off + 8, &mut raw) };
        let meta = u64::from_le_bytes(raw);
        let len = (meta & 0xffff_ffff) as usize;
        if len > g.max_record {
            return Err(Error::corrupt(format!(
                "MPMC record of {len} bytes in a queue of at most {}",
                g.max_record
            )));
        }
        Ok((off + SLOT_HEADER, len, (meta >> 32) as u32))
    }

    /// Frees a slot claimed as `claimed` for the next lap, and wakes producers waiting for room.
    fn free_slot(&self, dead: bool, claimed: Claimed) {
        let g = self.ring(dead);
        let st = word(&self.shm, g.slot(claimed.pos));
        // Only the owner moves a CLAIMED slot, so a plain store will do. Release: the next
        // producer's writes come after our reads.
        st.store(next_free(claimed.stamp), Ordering::Release);
        if !dead {
            NOT_FULL.wake(&self.shm);
        }
    }

    /// Claims a record and copies it out: `(bytes, attempts)`. For the loom models; the handles
    /// copy into their claim buffer instead.
    #[cfg(loom)]
    pub(crate) fn pop(&self, me: u32, out: &mut Vec<u8>) -> Result<Option<u32>, Error> {
        let Some(c) = self.claim_slot(false, me)? else {
            return Ok(None);
        };
        let meta = self.read_meta(false, c.pos);
        let result = meta.map(|(off, len, attempts)| {
            out.clear();
            out.resize(len, 0);
            // SAFETY: `read_meta` checked the payload fits the slot; we own the slot.
            unsafe { self.shm.read(off, out) };
            Some(attempts)
        });
        self.free_slot(false, c);
        result
    }

    fn counter(&self, i: usize) -> u64 {
        word(&self.shm, OFF_COUNTERS + 8 * i).load(Ordering::Relaxed)
    }

    fn depth(&self, dead: bool) -> usize {
        let g = self.ring(dead);
        let enq = word(&self.shm, g.enq).load(Ordering::Relaxed);
        let deq = word(&self.shm, g.deq).load(Ordering::Relaxed);
        enq.wrapping_sub(deq).min(g.count) as usize
    }

    /// Whether a stamp at the dequeue position says "ready": the waiter's re-check.
    fn looks_ready(&self) -> bool {
        let g = &self.layout.main;
        let pos = word(&self.shm, g.deq).load(Ordering::Acquire);
        let s = word(&self.shm, g.slot(pos)).load(Ordering::Acquire);
        cmp_key(key_of(s), key_of(stamp(g.lap(pos), READY, 0))) != Cmp::Behind
    }

    /// Whether a stamp at the enqueue position says "free": the waiter's re-check.
    fn looks_free(&self) -> bool {
        let g = &self.layout.main;
        let pos = word(&self.shm, g.enq).load(Ordering::Acquire);
        let s = word(&self.shm, g.slot(pos)).load(Ordering::Acquire);
        cmp_key(key_of(s), key_of(stamp(g.lap(pos), FREE, 0))) != Cmp::Behind
    }

    /// Recovers what dead handle `dead_id` held, acting as handle `me` for the pushes it needs.
    /// The caller must hold `dead_id`'s lock. `Ok(false)`: a ring was full, try again later
    /// (everything done so far stays done).
    pub(crate) fn recover(&self, me: u32, dead_id: u32) -> Result<bool, Error> {
        let entry = self.layout.entry(dead_id);
        let claim = word(&self.shm, entry + E_CLAIM);
        let claim_pos = word(&self.shm, entry + E_CLAIM_POS).load(Ordering::Acquire);
        for dead in [false, true] {
            let g = *self.ring(dead);
            for idx in 0..g.count {
                let st = word(&self.shm, g.slot(idx));
                let s = st.load(Ordering::Acquire);
                let state = state_of(s);
                if owner_of(s) != dead_id || (state != WRITING && state != CLAIMED) {
                    continue;
                }
                if state == WRITING {
                    if st
                        .compare_exchange(s, next_free(s), Ordering::SeqCst, Ordering::Relaxed)
                        .is_ok()
                    {
                        bump(&self.shm, CTR_ABANDONED);
                    }
                    continue;
                }
                // A claim the dead handle had not finished moving into its claim buffer.
                // Finish the move, then free the slot: recovery never needs a free slot while
                // it holds one, so a full ring cannot wedge it.
                let held = claim.load(Ordering::Acquire);
                let same = held != CLAIM_NONE
                    && (held == CLAIM_DEAD) == dead
                    && claim_pos & (g.count - 1) == idx
                    && stamp(g.lap(claim_pos), CLAIMED, dead_id) == s;
                let pos_in_lap = Claimed { pos: idx, stamp: s };
                if !same {
                    match self.read_meta(dead, idx) {
                        Ok((off, len, attempts)) if held == CLAIM_NONE => {
                            let meta = len as u64 | (u64::from(attempts) << 32);
                            let mut buf = vec![0u8; len];
                            // SAFETY: `read_meta` checked the payload fits a slot, and the claim
                            // buffer holds `max_record` bytes; we hold the dead handle's lock,
                            // so its entry is ours.
                            unsafe {
                                self.shm.read(off, &mut buf);
                                self.shm.write(entry + ENTRY_HEADER, &buf);
                                self.shm.write(entry + E_CLAIM_META, &meta.to_le_bytes());
                            }
                            // The position, rebuilt from the stamp's lap and the slot index.
                            let pos = ((key_of(s) >> 2) << g.shift) | idx;
                            word(&self.shm, entry + E_CLAIM_POS).store(pos, Ordering::Relaxed);
                            let from = if dead { CLAIM_DEAD } else { CLAIM_MAIN };
                            claim.store(from, Ordering::Release);
                        }
                        Ok((off, len, attempts)) => {
                            // Two records held at once: no honest handle does that. Push this
                            // one out directly.
                            bump(&self.shm, CTR_CORRUPT);
                            let mut buf = vec![0u8; len];
                            // SAFETY: checked by `read_meta`; the dead owner no longer writes.
                            unsafe { self.shm.read(off, &mut buf) };
                            if !self.requeue(me, dead, &buf, attempts)? {
                                return Ok(false);
                            }
                        }
                        Err(_) => bump(&self.shm, CTR_CORRUPT),
                    }
                }
                self.free_slot(dead, pos_in_lap);
            }
        }
        let held = claim.load(Ordering::Acquire);
        if held != CLAIM_NONE {
            let mut raw = [0u8; 8];
            // SAFETY: the entry's fields lie inside the entry array.
            unsafe { self.shm.read(entry + E_CLAIM_META, &mut raw) };
            let meta = u64::from_le_bytes(raw);
            let len = (meta & 0xffff_ffff) as usize;
            if len <= self.layout.config.max_record {
                let mut buf = vec![0u8; len];
                // SAFETY: the claim buffer holds `max_record` bytes after the entry header.
                unsafe { self.shm.read(entry + ENTRY_HEADER, &mut buf) };
                if !self.requeue(me, held == CLAIM_DEAD, &buf, (meta >> 32) as u32)? {
                    return Ok(false);
                }
            } else {
                bump(&self.shm, CTR_CORRUPT);
            }
            claim.store(CLAIM_NONE, Ordering::Release);
        }
        Ok(true)
    }

    /// Puts a record whose delivery failed back: into the main ring with one more attempt, or
    /// into the dead-letter ring once it has had `max_attempts`. Dead letters go back to the
    /// dead-letter ring as they were. `Ok(false)`: the target ring is full.
    fn requeue(&self, me: u32, from_dead: bool, data: &[u8], attempts: u32) -> Result<bool, Error> {
        let (to_dead, attempts, counter) = if from_dead {
            (true, attempts, None)
        } else {
            let next = attempts.saturating_add(1);
            if next >= self.layout.config.max_attempts {
                (true, next, Some(CTR_DEAD_LETTERED))
            } else {
                (false, next, Some(CTR_REQUEUED))
            }
        };
        match self.push(to_dead, me, data, attempts) {
            Ok(()) => {
                if let Some(c) = counter {
                    bump(&self.shm, c);
                }
                Ok(true)
            }
            Err(PushError::Full) => Ok(false),
            Err(PushError::TooLarge { .. }) => {
                bump(&self.shm, CTR_CORRUPT);
                Ok(true)
            }
            Err(PushError::Corrupt(e)) => Err(e),
        }
    }
}

/// Heap-backed queue for the loom models.
#[cfg(loom)]
pub(crate) fn model_queue(capacity: usize, max_record: usize) -> QueueCore {
    let layout = QueueLayout::new(&Config {
        capacity,
        max_record,
        dead_letter_capacity: 2,
        max_attempts: 2,
        max_handles: 4,
    })
    .expect("model config");
    QueueCore::new(Shm::zeroed(layout.total), layout)
}

#[cfg(loom)]
impl QueueCore {
    /// Marks handle `id` as the owner of a slot it began writing, without finishing it — what a
    /// producer killed mid-write leaves.
    pub(crate) fn model_abandon_write(&self, id: u32) -> bool {
        let g = self.layout.main;
        let pos = word(&self.shm, g.enq).load(Ordering::Relaxed);
        let st = word(&self.shm, g.slot(pos));
        let free = stamp(g.lap(pos), FREE, 0);
        if st
            .compare_exchange(
                free,
                stamp(g.lap(pos), WRITING, id),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return false;
        }
        let _ = word(&self.shm, g.enq).compare_exchange(
            pos,
            pos + 1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        true
    }
}

#[cfg(not(loom))]
pub use self::handles::{Claim, Consumer, DeadLetters, Producer, Queue, Stats};

#[cfg(not(loom))]
mod handles {
    use super::*;
    use crate::error::Result;
    use crate::segment::{self, Mapping};
    use crate::sys::{self, ProcessId};
    use crate::wait::{FutexWait, block};
    use std::cell::Cell;
    use std::fs::File;
    use std::marker::PhantomData;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Longest single sleep of a blocking call. A parked consumer wakes this often to look for
    /// dead handles whose claims it should recover: a few system calls, ≈ 0 CPU.
    const PARK_SLICE: Duration = Duration::from_millis(250);
    /// Least time between two looks for dead handles from a consumer's claim path.
    const REAP_EVERY: Duration = Duration::from_millis(50);
    const POLLS_PER_CLOCK: u32 = 64;

    /// A queue segment, mapped. Hands out [`Producer`], [`Consumer`] and [`DeadLetters`]
    /// handles; `Send` and `Sync`.
    #[derive(Clone)]
    pub struct Queue {
        map: Arc<Mapping>,
        core: QueueCore,
    }

    /// Counters and depths of a queue, read without locking (so only roughly consistent).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Stats {
        /// Records in the ring (ready, or claimed and not yet copied out).
        pub depth: usize,
        /// Records in the dead-letter ring.
        pub dead_letters: usize,
        /// Records put back after their consumer died.
        pub requeued: u64,
        /// Records moved to the dead-letter ring after `max_attempts` deliveries.
        pub dead_lettered: u64,
        /// Slots a producer died while writing; their records were never visible.
        pub abandoned_writes: u64,
        /// Records dropped because their contents broke the queue's bounds.
        pub corrupt: u64,
        /// Handles whose entries are in use (live, or dead and not yet recovered).
        pub handles: u32,
    }

    impl Queue {
        /// Creates a queue segment at `path`, sized by `config`.
        pub fn create(path: impl AsRef<Path>, config: &Config) -> Result<Queue> {
            let layout = QueueLayout::new(config)?;
            let map = Arc::new(segment::create(path.as_ref(), &layout)?);
            let core = QueueCore::new(map.shm, layout);
            Ok(Queue { map, core })
        }

        /// Opens the queue segment at `path`.
        pub fn open(path: impl AsRef<Path>) -> Result<Queue> {
            Queue::open_with(path, Duration::ZERO)
        }

        /// Opens the queue segment at `path`, waiting up to `wait` for it to appear and be
        /// published.
        pub fn open_with(path: impl AsRef<Path>, wait: Duration) -> Result<Queue> {
            let (map, layout) = segment::open::<QueueLayout>(path.as_ref(), wait)?;
            let map = Arc::new(map);
            let core = QueueCore::new(map.shm, layout);
            Ok(Queue { map, core })
        }

        /// The configuration the queue was created with.
        pub fn config(&self) -> Config {
            self.core.layout.config
        }

        /// Who created the segment.
        pub fn creator(&self) -> ProcessId {
            self.map.creator()
        }

        /// Attaches a producer.
        pub fn producer(&self) -> Result<Producer> {
            Ok(Producer {
                handle: Handle::attach(self, ROLE_PRODUCER)?,
            })
        }

        /// Attaches a consumer, competing with the others for records.
        pub fn consumer(&self) -> Result<Consumer> {
            Ok(Consumer {
                reader: Reader::attach(self, ROLE_CONSUMER)?,
            })
        }

        /// Attaches a reader of the dead-letter ring, for an operator to inspect (and remove)
        /// records that failed `max_attempts` times.
        pub fn dead_letters(&self) -> Result<DeadLetters> {
            Ok(DeadLetters {
                reader: Reader::attach(self, ROLE_DEAD_LETTERS)?,
            })
        }

        /// Records in the ring, as [`Stats::depth`] counts them, from two position loads (no
        /// scan of the handles). Approximate under concurrency: the positions are read one
        /// after the other and are hints that producers and consumers move as they go.
        pub fn depth(&self) -> usize {
            self.core.depth(false)
        }

        /// Counters and depths.
        pub fn stats(&self) -> Stats {
            let core = &self.core;
            let handles = (0..core.layout.config.max_handles)
                .filter(|&i| {
                    word(&core.shm, core.layout.entry(i) + E_ROLE).load(Ordering::Relaxed)
                        != ROLE_FREE
                })
                .count() as u32;
            Stats {
                depth: core.depth(false),
                dead_letters: core.depth(true),
                requeued: core.counter(CTR_REQUEUED),
                dead_lettered: core.counter(CTR_DEAD_LETTERED),
                abandoned_writes: core.counter(CTR_ABANDONED),
                corrupt: core.counter(CTR_CORRUPT),
                handles,
            }
        }

        /// Flushes the segment to its file's storage (msync).
        pub fn sync(&self) -> Result<()> {
            self.map.sync()
        }
    }

    /// An attached handle: its entry, and the lock that says it lives.
    struct Handle {
        map: Arc<Mapping>,
        core: QueueCore,
        lock: File,
        id: u32,
        last_reap: Cell<Option<Instant>>,
        /// Empty claims since the clock was last read: a polling consumer reads it only every
        /// `POLLS_PER_CLOCK` empty claims.
        empty_polls: Cell<u32>,
        _not_sync: PhantomData<Cell<()>>,
    }

    impl Handle {
        fn attach(queue: &Queue, role: u64) -> Result<Handle> {
            crate::wait::register_process();
            let map = &queue.map;
            let core = queue.core.clone();
            let lock = map.reopen()?;
            let me = ProcessId::current().map_err(|e| Error::io("identity", map.path(), e))?;
            let max = core.layout.config.max_handles;
            for id in 0..max {
                if !sys::try_lock(&lock, id).map_err(|e| Error::io("lock", map.path(), e))? {
                    continue;
                }
                let entry = core.layout.entry(id);
                let role_word = word(&core.shm, entry + E_ROLE);
                // A used entry whose lock we could take belonged to a dead handle.
                if role_word.load(Ordering::Acquire) != ROLE_FREE {
                    if !core.recover(id, id)? {
                        let _ = sys::unlock(&lock, id);
                        continue;
                    }
                    role_word.store(ROLE_FREE, Ordering::Release);
                }
                word(&core.shm, entry + E_PID).store(u64::from(me.pid), Ordering::Relaxed);
                word(&core.shm, entry + E_START).store(me.start_ticks, Ordering::Relaxed);
                word(&core.shm, entry + E_CLAIM).store(CLAIM_NONE, Ordering::Relaxed);
                role_word.store(role, Ordering::Release);
                let handle = Handle {
                    map: map.clone(),
                    core,
                    lock,
                    id,
                    last_reap: Cell::new(None),
                    empty_polls: Cell::new(0),
                    _not_sync: PhantomData,
                };
                handle.reap()?;
                return Ok(handle);
            }
            Err(Error::TooManyHandles {
                path: map.path().to_owned(),
                max,
            })
        }

        fn entry(&self) -> usize {
            self.core.layout.entry(self.id)
        }

        /// Recovers every dead handle's slots and claims. Returns how many were recovered.
        fn reap(&self) -> Result<usize> {
            self.last_reap.set(Some(Instant::now()));
            let mut recovered = 0;
            for id in 0..self.core.layout.config.max_handles {
                if id == self.id {
                    continue;
                }
                let role = word(&self.core.shm, self.core.layout.entry(id) + E_ROLE);
                if role.load(Ordering::Acquire) == ROLE_FREE {
                    continue;
                }
                let path = self.map.path();
                if !sys::try_lock(&self.lock, id).map_err(|e| Error::io("lock", path, e))? {
                    continue; // alive
                }
                let done = if role.load(Ordering::Acquire) == ROLE_FREE {
                    Ok(false) // detached cleanly just now
                } else {
                    self.core.recover(self.id, id)
                };
                if let Ok(true) = done {
                    role.store(ROLE_FREE, Ordering::Release);
                    recovered += 1;
                }
                sys::unlock(&self.lock, id).map_err(|e| Error::io("unlock", path, e))?;
                done?;
            }
            Ok(recovered)
        }

        /// After an empty claim: reaps at most every `REAP_EVERY`, reading the clock only every
        /// `POLLS_PER_CLOCK` calls so a polling consumer's empty path stays cheap.
        fn reap_if_due_after_poll(&self) -> Result<()> {
            let n = self.empty_polls.get().wrapping_add(1);
            self.empty_polls.set(n);
            if n % POLLS_PER_CLOCK == 1 {
                self.reap_if_due()
            } else {
                Ok(())
            }
        }

        fn reap_if_due(&self) -> Result<()> {
            match self.last_reap.get() {
                Some(t) if t.elapsed() < REAP_EVERY => Ok(()),
                _ => self.reap().map(|_| ()),
            }
        }
    }

    impl Drop for Handle {
        fn drop(&mut self) {
            let entry = self.entry();
            let claim = word(&self.core.shm, entry + E_CLAIM);
            // A record still held goes back as if we had died; if that fails, leave the entry
            // in use: once our lock is gone, the next reaper recovers it.
            if claim.load(Ordering::Acquire) != CLAIM_NONE
                && !matches!(self.core.recover(self.id, self.id), Ok(true))
            {
                return;
            }
            word(&self.core.shm, entry + E_ROLE).store(ROLE_FREE, Ordering::Release);
        }
    }

    /// Writes records into a queue. `Send`, not `Sync`; any number per queue (up to
    /// `max_handles` handles in all).
    pub struct Producer {
        handle: Handle,
    }

    impl Producer {
        /// Copies `record` into a free slot and publishes it. [`PushError::Full`] at once when
        /// the ring has no free slot; never blocks.
        pub fn push(&mut self, record: &[u8]) -> Result<(), PushError> {
            self.handle.core.push(false, self.handle.id, record, 0)
        }

        /// The largest record the queue accepts.
        pub fn max_record(&self) -> usize {
            self.handle.core.layout.config.max_record
        }

        /// Records in the ring, as [`Queue::depth`] counts them: two position loads, so cheap
        /// enough for every push, and approximate under concurrency.
        pub fn depth(&self) -> usize {
            self.handle.core.depth(false)
        }

        /// Blocks until a slot looks free, or `timeout` passes (`Ok(false)`). Another producer
        /// may still take it first.
        pub fn wait_for_space(&mut self, timeout: Option<Duration>) -> Result<bool> {
            block(
                self,
                timeout,
                PARK_SLICE,
                |p| Ok(p.handle.core.looks_free()),
                Producer::prepare_space_wait,
            )
        }

        /// Registers to wait for a free slot. `None`: one looks free now. `Some`: sleep on the
        /// returned futex (directly, or with an io_uring `FutexWait`), then push again.
        pub fn prepare_space_wait(&mut self) -> Result<Option<FutexWait>> {
            self.handle.map.check_len()?;
            let shm = &self.handle.map.shm;
            let registered = NOT_FULL.register(shm);
            if self.handle.core.looks_free() {
                NOT_FULL.unregister(shm);
                return Ok(None);
            }
            Ok(Some(FutexWait::new(
                self.handle.map.clone(),
                NOT_FULL,
                registered,
            )))
        }

        /// Recovers the records and slots of handles that died. Consumers do this on their own;
        /// a producer may call it when the ring stays full.
        pub fn reap(&mut self) -> Result<usize> {
            self.handle.reap()
        }

        /// Takes a slot and writes `record` into it but never publishes it: what a producer
        /// killed mid-write leaves behind. Exists so crash tests can stop a process at exactly
        /// that point; `Ok(false)` when the ring is full.
        #[doc(hidden)]
        pub fn stall_mid_push_for_crash_test(&mut self, record: &[u8]) -> Result<bool> {
            let core = &self.handle.core;
            let g = core.layout.main;
            let pos = word(&core.shm, g.enq).load(Ordering::Relaxed);
            let st = word(&core.shm, g.slot(pos));
            let free = stamp(g.lap(pos), FREE, 0);
            if st
                .compare_exchange(
                    free,
                    stamp(g.lap(pos), WRITING, self.handle.id),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                return Ok(false);
            }
            let _ = word(&core.shm, g.enq).compare_exchange(
                pos,
                pos.wrapping_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            let len = record.len().min(g.max_record);
            // SAFETY: the slot is ours (WRITING); the payload lies inside it.
            unsafe { core.shm.write(g.slot(pos) + SLOT_HEADER, &record[..len]) };
            Ok(true)
        }
    }

    /// What consumers and dead-letter readers share: claiming into the entry's claim buffer.
    struct Reader {
        handle: Handle,
        dead: bool,
    }

    impl Reader {
        fn attach(queue: &Queue, role: u64) -> Result<Reader> {
            Ok(Reader {
                handle: Handle::attach(queue, role)?,
                dead: role == ROLE_DEAD_LETTERS,
            })
        }

        fn claim(&mut self) -> Result<Option<Claim<'_>>> {
            Ok(if self.fill()? {
                Some(Claim { reader: self })
            } else {
                None
            })
        }

        /// Puts the next record into the claim buffer. `false`: nothing is ready.
        fn fill(&mut self) -> Result<bool> {
            let core = self.handle.core.clone();
            let entry = self.handle.entry();
            let claim = word(&core.shm, entry + E_CLAIM);
            if claim.load(Ordering::Relaxed) != CLAIM_NONE {
                // Dropped without ack: deliver it again, one attempt later, or move it on.
                if !self.redeliver()? {
                    return Ok(true);
                }
            }
            let Some(c) = core.claim_slot(self.dead, self.handle.id)? else {
                if !self.dead {
                    self.handle.reap_if_due_after_poll()?;
                }
                return Ok(false);
            };
            let meta = core.read_meta(self.dead, c.pos);
            if let Ok((off, len, _)) = meta {
                let mut buf = [0u8; 8];
                // SAFETY: `read_meta` checked `len <= max_record`; the claim buffer holds
                // `max_record` bytes after the entry header; slot and entry are ours.
                unsafe {
                    let dst = core.shm.slice_mut(entry + ENTRY_HEADER, len);
                    core.shm.read(off, dst);
                    core.shm.read(off - SLOT_HEADER + 8, &mut buf);
                    core.shm.write(entry + E_CLAIM_META, &buf);
                }
                word(&core.shm, entry + E_CLAIM_POS).store(c.pos, Ordering::Relaxed);
                claim.store(
                    if self.dead { CLAIM_DEAD } else { CLAIM_MAIN },
                    Ordering::Release,
                );
            } else {
                bump(&core.shm, CTR_CORRUPT);
            }
            core.free_slot(self.dead, c);
            meta?;
            Ok(true)
        }

        /// Handles a record left in the claim buffer. `Ok(false)`: deliver it again now;
        /// `Ok(true)`: it went back to a ring and the buffer is free.
        fn redeliver(&mut self) -> Result<bool> {
            let core = &self.handle.core;
            let entry = self.handle.entry();
            let mut raw = [0u8; 8];
            // SAFETY: the entry's fields lie inside the entry array; the entry is ours.
            unsafe { core.shm.read(entry + E_CLAIM_META, &mut raw) };
            let meta = u64::from_le_bytes(raw);
            let attempts = ((meta >> 32) as u32).saturating_add(1);
            if self.dead || attempts < core.layout.config.max_attempts {
                let meta = (meta & 0xffff_ffff) | (u64::from(attempts) << 32);
                // SAFETY: as above.
                unsafe { core.shm.write(entry + E_CLAIM_META, &meta.to_le_bytes()) };
                return Ok(false);
            }
            // Out of attempts: to the dead-letter ring (recovery does exactly that).
            core.recover(self.handle.id, self.handle.id)
        }

        fn prepare_wait(&mut self) -> Result<Option<FutexWait>> {
            self.handle.map.check_len()?;
            let shm = &self.handle.map.shm;
            let registered = NOT_EMPTY.register(shm);
            if self.handle.core.looks_ready() {
                NOT_EMPTY.unregister(shm);
                return Ok(None);
            }
            Ok(Some(FutexWait::new(
                self.handle.map.clone(),
                NOT_EMPTY,
                registered,
            )))
        }
    }

    /// Claims records from a queue, competing with other consumers: each record goes to one
    /// of them. `Send`, not `Sync`.
    ///
    /// A claimed record is copied into this consumer's own buffer in the segment, so it
    /// survives this process: if the process dies before [`Claim::ack`], the record goes back
    /// to the queue (or to the dead-letter ring after `max_attempts` deliveries).
    pub struct Consumer {
        reader: Reader,
    }

    impl Consumer {
        /// Claims the next record; `None` when none is ready. One claim at a time: ack it (or
        /// drop it, and it is delivered again on the next call) before claiming another.
        pub fn claim(&mut self) -> Result<Option<Claim<'_>>> {
            self.reader.claim()
        }

        /// The record claimed earlier and not yet acknowledged (a [`Claim`] dropped without
        /// [`Claim::ack`]), as it is: unlike [`Consumer::claim`], which delivers it again with
        /// one more attempt, this counts no new delivery. `None` when nothing is held. For a
        /// caller that keeps a claim across turns of an event loop.
        pub fn pending(&mut self) -> Option<Claim<'_>> {
            let h = &self.reader.handle;
            let held = word(&h.core.shm, h.entry() + E_CLAIM).load(Ordering::Acquire);
            (held != CLAIM_NONE).then_some(Claim {
                reader: &mut self.reader,
            })
        }

        /// Claims the next record, blocking until one is ready or `timeout` passes. Spins
        /// briefly, then sleeps on the queue's futex: an idle consumer costs no CPU.
        pub fn claim_wait(&mut self, timeout: Option<Duration>) -> Result<Option<Claim<'_>>> {
            let filled = block(&mut self.reader, timeout, PARK_SLICE, Reader::fill, |r| {
                r.handle.reap_if_due()?;
                r.prepare_wait()
            })?;
            Ok(filled.then_some(Claim {
                reader: &mut self.reader,
            }))
        }

        /// Registers to wait for a record. `None`: one looks ready now. `Some`: sleep on the
        /// returned futex (directly, or with an io_uring `FutexWait`), then claim again.
        pub fn prepare_data_wait(&mut self) -> Result<Option<FutexWait>> {
            self.reader.prepare_wait()
        }

        /// Recovers the records and slots of handles that died; returns how many handles.
        /// Claiming does this on its own every so often.
        pub fn reap(&mut self) -> Result<usize> {
            self.reader.handle.reap()
        }

        /// Claims a slot in place but never copies it out or frees it: what a consumer killed
        /// mid-claim leaves behind. Exists so crash tests can stop a process at exactly that
        /// point; `Ok(false)` when nothing is ready.
        #[doc(hidden)]
        pub fn stall_mid_claim_for_crash_test(&mut self) -> Result<bool> {
            let h = &self.reader.handle;
            Ok(h.core.claim_slot(false, h.id)?.is_some())
        }
    }

    /// Reads the dead-letter ring: records that failed `max_attempts` deliveries.
    pub struct DeadLetters {
        reader: Reader,
    }

    impl DeadLetters {
        /// Claims the oldest dead letter; ack it to remove it for good.
        pub fn claim(&mut self) -> Result<Option<Claim<'_>>> {
            self.reader.claim()
        }
    }

    /// A claimed record, held in the claimer's buffer in shared memory until acknowledged.
    pub struct Claim<'a> {
        reader: &'a mut Reader,
    }

    impl Claim<'_> {
        fn meta(&self) -> u64 {
            let mut raw = [0u8; 8];
            let h = &self.reader.handle;
            // SAFETY: the entry's fields lie inside the entry array; the entry is ours.
            unsafe { h.core.shm.read(h.entry() + E_CLAIM_META, &mut raw) };
            u64::from_le_bytes(raw)
        }

        /// Deliveries of this record before this one that were not acknowledged.
        pub fn attempts(&self) -> u32 {
            (self.meta() >> 32) as u32
        }

        /// Done with it: the record is gone for good.
        pub fn ack(self) {
            let h = &self.reader.handle;
            word(&h.core.shm, h.entry() + E_CLAIM).store(CLAIM_NONE, Ordering::Release);
        }

        /// Gives the record back, to the tail of the ring it came from, without counting a
        /// delivery: for a consumer that stops before it could deal with it (a record dropped
        /// or left behind by a dying handle counts one). `Ok(false)`: that ring is full; the
        /// claim is kept.
        pub fn release(self) -> Result<bool> {
            let h = &self.reader.handle;
            let attempts = self.attempts();
            let data = self.to_vec();
            match h.core.push(self.reader.dead, h.id, &data, attempts) {
                Ok(()) => {
                    word(&h.core.shm, h.entry() + E_CLAIM).store(CLAIM_NONE, Ordering::Release);
                    Ok(true)
                }
                Err(PushError::Full) => Ok(false),
                Err(PushError::TooLarge { .. }) => {
                    // Cannot happen for a record that came out of this queue; drop it as corrupt.
                    bump(&h.core.shm, CTR_CORRUPT);
                    word(&h.core.shm, h.entry() + E_CLAIM).store(CLAIM_NONE, Ordering::Release);
                    Ok(true)
                }
                Err(PushError::Corrupt(e)) => Err(e),
            }
        }
    }

    impl std::ops::Deref for Claim<'_> {
        type Target = [u8];
        fn deref(&self) -> &[u8] {
            let h = &self.reader.handle;
            // The length was checked against max_record when the record was claimed; check it
            // again, as the buffer is in shared memory.
            let len = ((self.meta() & 0xffff_ffff) as usize).min(h.core.layout.config.max_record);
            // SAFETY: the claim buffer holds `max_record` bytes after the entry header, and only
            // this handle writes its entry while it lives.
            unsafe { h.core.shm.slice(h.entry() + ENTRY_HEADER, len) }
        }
    }
}
