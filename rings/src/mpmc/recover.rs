//! Crash recovery: what a dead handle held goes back to the queue (or on to the dead-letter
//! ring), done by whichever handle holds the dead one's lock.

use super::core::{Claimed, QueueCore};
use super::layout::*;
use crate::error::{Error, PushError};
use crate::primitive::Ordering;

impl QueueCore {
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
