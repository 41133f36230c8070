//! The public handles: a mapped [`Queue`] and the [`Producer`], [`Consumer`] and [`DeadLetters`]
//! attached to it, each owning an entry in the segment and the lock that says it lives.

use super::core::{QueueCore, stop};
use super::layout::*;
use crate::error::{Error, PushError, Result};
use crate::primitive::Ordering;
use crate::segment::{self, Mapping};
use crate::sys::{self, ProcessId};
use crate::wait::{FutexWait, WaitLine, block};
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
                word(&core.shm, core.layout.entry(i) + E_ROLE).load(Ordering::Relaxed) != ROLE_FREE
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
    /// Registers as a waiter on `line`, then looks again: `None` when `ready` already holds
    /// (nothing to wait for), else the futex to sleep on. Registering first means a waker that
    /// changes the state after the look sees the registration and wakes us.
    fn prepare_wait(
        &self,
        line: WaitLine,
        ready: fn(&QueueCore) -> bool,
    ) -> Result<Option<FutexWait>> {
        self.map.check_len()?;
        let shm = &self.map.shm;
        let registered = line.register(shm);
        if ready(&self.core) {
            line.unregister(shm);
            return Ok(None);
        }
        Ok(Some(FutexWait::new(self.map.clone(), line, registered)))
    }

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
        self.handle.prepare_wait(NOT_FULL, QueueCore::looks_free)
    }

    /// Recovers the records and slots of handles that died. Consumers do this on their own;
    /// a producer may call it when the ring stays full.
    pub fn reap(&mut self) -> Result<usize> {
        self.handle.reap()
    }

    /// Takes a slot and writes `record` into it but never publishes it: what a producer
    /// killed mid-write leaves behind. A [`Producer::push`] stopped before its last store, for
    /// crash tests that kill a process at exactly that point; `Ok(false)` when the ring is full.
    #[cfg(feature = "crash-hooks")]
    pub fn stall_mid_push_for_crash_test(&mut self, record: &[u8]) -> Result<bool> {
        let h = &self.handle;
        match h
            .core
            .push_to::<{ stop::BEFORE_READY }>(false, h.id, record, 0)
        {
            Ok(()) => Ok(true),
            Err(PushError::Full) => Ok(false),
            Err(PushError::TooLarge { len, max }) => Err(Error::InvalidConfig {
                reason: format!("record of {len} bytes exceeds {max}"),
            }),
            Err(PushError::Corrupt(e)) => Err(e),
        }
    }
}

/// What consumers and dead-letter readers share: claiming into the entry's claim buffer.
struct Reader {
    handle: Handle,
    dead: bool,
    /// A copy, in this process's own memory, of the record in the claim buffer: what a
    /// [`Claim`] dereferences to.
    record: Vec<u8>,
    /// The last claim found a record.
    streaming: bool,
}

impl Reader {
    fn attach(queue: &Queue, role: u64) -> Result<Reader> {
        Ok(Reader {
            handle: Handle::attach(queue, role)?,
            dead: role == ROLE_DEAD_LETTERS,
            record: Vec::new(),
            streaming: false,
        })
    }

    fn claim(&mut self) -> Result<Option<Claim<'_>>> {
        Ok(if self.fill()? {
            Some(Claim { reader: self })
        } else {
            None
        })
    }

    /// Puts the next record into the claim buffer, and a copy of it into `record`. `false`:
    /// nothing is ready.
    fn fill(&mut self) -> Result<bool> {
        self.fill_to::<{ stop::NEVER }>()
    }

    /// [`Self::fill`], stopped at `STOP` (one of [`stop`]): with [`stop::AFTER_CLAIM`] it
    /// returns with a slot CLAIMED by this handle and nothing copied out.
    fn fill_to<const STOP: u8>(&mut self) -> Result<bool> {
        // The mapping's address only: borrowing the core (not cloning it, layout and all, on
        // every claim) leaves `record` free to fill.
        let shm = self.handle.core.shm;
        let entry = self.handle.entry();
        let claim = word(&shm, entry + E_CLAIM);
        if claim.load(Ordering::Relaxed) != CLAIM_NONE {
            if STOP == stop::AFTER_CLAIM {
                // The hook must leave a fresh slot claimed, not hand back the held record.
                return Err(Error::InvalidConfig {
                    reason: "stall_mid_claim_for_crash_test with a claim already held".into(),
                });
            }
            // Dropped without ack: deliver it again, one attempt later, or move it on.
            if !self.redeliver()? {
                self.load_held();
                return Ok(true);
            }
        }
        let core = &self.handle.core;
        let Some(c) = core.claim_slot(self.dead, self.handle.id, self.streaming)? else {
            self.streaming = false;
            if !self.dead {
                self.handle.reap_if_due_after_poll()?;
            }
            return Ok(false);
        };
        self.streaming = true;
        if STOP == stop::AFTER_CLAIM {
            return Ok(true);
        }
        let meta = core.read_meta(self.dead, c.pos);
        if let Ok((off, len, _)) = meta {
            let mut buf = [0u8; 8];
            self.record.resize(len, 0);
            // SAFETY: `read_meta` checked `len <= max_record`; a slot's payload and the claim
            // buffer after the entry header each hold `max_record` bytes padded to 8, at
            // 8-aligned offsets; slot and entry are ours.
            unsafe {
                core.shm.read(off, &mut self.record);
                core.shm.write(entry + ENTRY_HEADER, &self.record);
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

    /// Copies the record in the claim buffer into `record`. Its length comes from the
    /// buffer's meta word and is capped at `max_record` again: the buffer is shared memory.
    fn load_held(&mut self) {
        let core = &self.handle.core;
        let entry = self.handle.entry();
        let mut raw = [0u8; 8];
        // SAFETY: the entry's fields lie inside the entry array; the entry is ours.
        unsafe { core.shm.read(entry + E_CLAIM_META, &mut raw) };
        let len =
            ((u64::from_le_bytes(raw) & 0xffff_ffff) as usize).min(core.layout.config.max_record);
        self.record.resize(len, 0);
        // SAFETY: the claim buffer holds `max_record` bytes padded to 8 after the entry header,
        // at an 8-aligned offset; the entry is ours.
        unsafe { core.shm.read(entry + ENTRY_HEADER, &mut self.record) };
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
        self.handle.prepare_wait(NOT_EMPTY, QueueCore::looks_ready)
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
        if held == CLAIM_NONE {
            return None;
        }
        self.reader.load_held();
        Some(Claim {
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
    /// mid-claim leaves behind. A [`Consumer::claim`] stopped after its compare-and-swap, for
    /// crash tests that kill a process at exactly that point; `Ok(false)` when nothing is ready,
    /// an error when this consumer already holds a claim.
    #[cfg(feature = "crash-hooks")]
    pub fn stall_mid_claim_for_crash_test(&mut self) -> Result<bool> {
        self.reader.fill_to::<{ stop::AFTER_CLAIM }>()
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

/// A claimed record, held in the claimer's buffer in shared memory until acknowledged, so
/// that it outlives the claimer's process.
///
/// It dereferences to a copy of that buffer in the claimer's own memory, taken when the claim
/// was made, not to the buffer: the segment is memory that every attached process can write,
/// and a `&[u8]` into it would be undefined behaviour should one of them break the protocol and
/// write there while the slice lives. Such a process can at worst make the copy differ from
/// what was pushed.
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
        match h
            .core
            .push(self.reader.dead, h.id, &self.reader.record, attempts)
        {
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
        &self.reader.record
    }
}
