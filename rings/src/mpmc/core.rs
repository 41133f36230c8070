//! The lock-free core: the slot protocol of pushing and claiming, over any [`Shm`]. The handles
//! and the loom models both drive it; recovery of dead handles is in [`super::recover`].

use super::layout::*;
use crate::error::{Error, PushError};
use crate::primitive::{AtomicU64, Ordering, Shm};

/// Where a push or a claim stops. Normal use runs to the end ([`stop::NEVER`]). The crash hooks
/// (feature `crash-hooks`) and the loom models stop earlier, running the very code of a normal
/// push or claim up to that point, so what they leave behind is what a handle killed there
/// leaves.
pub(crate) mod stop {
    /// Runs to the end.
    pub(crate) const NEVER: u8 = 0;
    /// A push, with its slot WRITING and the record written, before the store of READY.
    pub(crate) const BEFORE_READY: u8 = 1;
    /// A claim, with its slot CLAIMED, before the record is copied out.
    pub(crate) const AFTER_CLAIM: u8 = 2;
}

impl RingGeom {
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

/// Where a claimed record was found.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Claimed {
    pub(super) pos: u64,
    pub(super) stamp: u64,
}

/// The lock-free half of the queue: pushing and claiming over any [`Shm`]. The handle types and
/// the loom models both drive it.
#[derive(Clone)]
pub(crate) struct QueueCore {
    pub(super) shm: Shm,
    pub(super) layout: QueueLayout,
}

impl QueueCore {
    pub(crate) fn new(shm: Shm, layout: QueueLayout) -> QueueCore {
        QueueCore { shm, layout }
    }

    pub(super) fn ring(&self, dead: bool) -> &RingGeom {
        if dead {
            &self.layout.dead
        } else {
            &self.layout.main
        }
    }

    /// Writes `data` into a free slot of the main (or dead-letter) ring as handle `me`.
    #[inline]
    pub(crate) fn push(
        &self,
        dead: bool,
        me: u32,
        data: &[u8],
        attempts: u32,
    ) -> Result<(), PushError> {
        self.push_to::<{ stop::NEVER }>(dead, me, data, attempts)
    }

    /// [`Self::push`], stopped at `STOP` (one of [`stop`]): with [`stop::BEFORE_READY`] it
    /// returns with the slot WRITING by `me` and the record written but never published.
    pub(crate) fn push_to<const STOP: u8>(
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
                        if STOP == stop::BEFORE_READY {
                            return Ok(());
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
    /// `streaming`: the caller's last claim found a record, so this one likely will too.
    pub(crate) fn claim_slot(
        &self,
        dead: bool,
        me: u32,
        streaming: bool,
    ) -> Result<Option<Claimed>, Error> {
        let g = *self.ring(dead);
        let shm = &self.shm;
        let deq = word(shm, g.deq);
        let mut pos = deq.load(Ordering::Relaxed);
        for _ in 0..g.step_limit() {
            let lap = g.lap(pos);
            let off = g.slot(pos);
            if streaming {
                // The payload's last line starts coming now: the compare-and-swap below is a
                // full barrier, and the loads after it would otherwise wait for it in turn. Not
                // while polling an empty ring: that would pull the line from a producer
                // still writing it.
                shm.prefetch(off + g.stride - 8);
            }
            let st = word(shm, off);
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
    pub(super) fn read_meta(&self, dead: bool, pos: u64) -> Result<(usize, usize, u32), Error> {
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
    pub(super) fn free_slot(&self, dead: bool, claimed: Claimed) {
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
        let Some(c) = self.claim_slot(false, me, false)? else {
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

    pub(super) fn counter(&self, i: usize) -> u64 {
        word(&self.shm, OFF_COUNTERS + 8 * i).load(Ordering::Relaxed)
    }

    pub(super) fn depth(&self, dead: bool) -> usize {
        let g = self.ring(dead);
        let enq = word(&self.shm, g.enq).load(Ordering::Relaxed);
        let deq = word(&self.shm, g.deq).load(Ordering::Relaxed);
        enq.wrapping_sub(deq).min(g.count) as usize
    }

    /// Whether a stamp at the dequeue position says "ready": the waiter's re-check.
    pub(super) fn looks_ready(&self) -> bool {
        let g = &self.layout.main;
        let pos = word(&self.shm, g.deq).load(Ordering::Acquire);
        let s = word(&self.shm, g.slot(pos)).load(Ordering::Acquire);
        cmp_key(key_of(s), key_of(stamp(g.lap(pos), READY, 0))) != Cmp::Behind
    }

    /// Whether a stamp at the enqueue position says "free": the waiter's re-check.
    pub(super) fn looks_free(&self) -> bool {
        let g = &self.layout.main;
        let pos = word(&self.shm, g.enq).load(Ordering::Acquire);
        let s = word(&self.shm, g.slot(pos)).load(Ordering::Acquire);
        cmp_key(key_of(s), key_of(stamp(g.lap(pos), FREE, 0))) != Cmp::Behind
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
    /// Leaves a slot WRITING by handle `id`, its record written, as a producer killed there
    /// does: a push run with the same code as every other, stopped before it publishes.
    pub(crate) fn model_abandon_write(&self, id: u32) -> bool {
        self.push_to::<{ stop::BEFORE_READY }>(false, id, &[0xee], 0)
            .is_ok()
    }
}
