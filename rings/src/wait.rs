//! Waiting without spinning at idle: an event count on a shared futex word.
//!
//! Each direction a side may wait in ("data arrived", "space freed") has a line with two 32-bit
//! words: `seq`, the futex word, and `waiters`, how many are parked or about to park on it.
//!
//! Waiter: `waiters += 1`, a heavy barrier, read `seq` into `v`, re-check the ring; if it is still
//! empty (or full), sleep on `seq` while it equals `v`; afterwards `waiters -= 1`.
//!
//! Waker: publish the index (Release store), a light barrier, read `waiters`; if non-zero, bump
//! `seq` and `FUTEX_WAKE` every waiter on it.
//!
//! This is Dekker's pattern: either the waiter's re-check sees the new index, or the waker sees
//! the waiter and bumps `seq`, so the sleep returns at once (value changed) or is woken. No
//! wake-up is lost. The barriers are asymmetric, as in liburcu and folly's
//! `asymmetricHeavyBarrier`: every process registers with
//! `membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED)` when it attaches a handle, the rare
//! waiter issues `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)` (a full barrier on every CPU that
//! runs a registered process), and the hot waker needs only a compiler barrier — no locked
//! instruction per record. A process whose registration fails uses full fences as a waker; a
//! waiter whose membarrier fails falls back to a full fence and to short sleeps
//! ([`FutexWait::is_exact`]).
//!
//! The word is a plain shared futex (never `FUTEX_PRIVATE_FLAG`), so `futex(2)` waiters, io_uring
//! `FutexWait` waiters and wakers in other processes all meet on it.

use crate::primitive::{AtomicU32, Ordering, Shm};

#[cold]
#[inline(never)]
fn wake_slow(seq: &AtomicU32) {
    // Release: a waiter that reads the new value also sees the index published before it.
    seq.fetch_add(1, Ordering::Release);
    crate::sys::futex_wake_all(seq);
}

#[cfg(not(loom))]
mod barrier {
    use std::sync::atomic::{AtomicU8, Ordering, compiler_fence, fence};

    const UNKNOWN: u8 = 0;
    const LIGHT: u8 = 1;
    const FULL: u8 = 2;
    static WAKER: AtomicU8 = AtomicU8::new(UNKNOWN);

    /// Registers this process for the waiters' heavy barrier; called whenever a handle attaches.
    pub(crate) fn register_process() {
        if WAKER.load(Ordering::Relaxed) == UNKNOWN {
            let mode = if crate::sys::membarrier_register() {
                LIGHT
            } else {
                FULL
            };
            WAKER.store(mode, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn light_barrier() {
        if WAKER.load(Ordering::Relaxed) == LIGHT {
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
    }

    pub(crate) fn heavy_barrier() -> bool {
        fence(Ordering::SeqCst);
        crate::sys::membarrier_global()
    }
}

#[cfg(loom)]
mod barrier {
    pub(crate) fn light_barrier() {
        loom::sync::atomic::fence(loom::sync::atomic::Ordering::SeqCst);
    }
    pub(crate) fn heavy_barrier() -> bool {
        loom::sync::atomic::fence(loom::sync::atomic::Ordering::SeqCst);
        true
    }
}

#[cfg(not(loom))]
pub(crate) use barrier::register_process;
use barrier::{heavy_barrier, light_barrier};

/// Where a wait line's two words are.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WaitLine {
    pub(crate) seq: usize,
    pub(crate) waiters: usize,
}

impl WaitLine {
    pub(crate) const fn at(off: usize) -> WaitLine {
        WaitLine {
            seq: off,
            waiters: off + 4,
        }
    }

    fn words(self, shm: &Shm) -> (&AtomicU32, &AtomicU32) {
        // SAFETY: wait lines are fixed offsets inside every layout's control area, 4-aligned,
        // and only ever accessed atomically.
        unsafe { (shm.u32(self.seq), shm.u32(self.waiters)) }
    }

    /// The waker's half: call right after the Release store that published the change.
    #[inline]
    pub(crate) fn wake(self, shm: &Shm) {
        light_barrier();
        let (seq, waiters) = self.words(shm);
        if waiters.load(Ordering::Relaxed) != 0 {
            wake_slow(seq);
        }
    }

    /// The waiter's first half: registers, and returns the value to wait on and whether the
    /// heavy barrier held (see [`FutexWait::is_exact`]). Re-check the ring after this.
    pub(crate) fn register(self, shm: &Shm) -> (u32, bool) {
        let (seq, waiters) = self.words(shm);
        waiters.fetch_add(1, Ordering::SeqCst);
        let exact = heavy_barrier();
        (seq.load(Ordering::Acquire), exact)
    }

    pub(crate) fn unregister(self, shm: &Shm) {
        let (_, waiters) = self.words(shm);
        // Saturating: a hostile peer may have zeroed the count; never wrap it to 4 billion.
        let _ = waiters.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| w.checked_sub(1));
    }
}

#[cfg(not(loom))]
pub use self::mapped::FutexWait;

#[cfg(not(loom))]
mod mapped {
    use super::WaitLine;
    use crate::segment::Mapping;
    use std::sync::Arc;
    use std::time::Duration;

    /// A registered wait on a ring's futex word, ready to sleep on — with `futex(2)` through
    /// [`FutexWait::wait`], or with an io_uring `FutexWait` on [`FutexWait::word`] and
    /// [`FutexWait::value`].
    ///
    /// For io_uring: submit `opcode::FutexWait::new(w.word(), w.value() as u64,
    /// FUTEX_BITSET_MATCH_ANY as u64, FUTEX2_SIZE_U32)` (no `FUTEX2_PRIVATE`), keep this value
    /// alive until the completion arrives (it holds the mapping and the waiter registration),
    /// then drop it and try the ring again. A completion of `-EAGAIN` means the word had already
    /// moved: try again at once.
    ///
    /// Dropping it unregisters the waiter.
    #[must_use = "dropping the registration gives up the wait"]
    pub struct FutexWait {
        map: Arc<Mapping>,
        line: WaitLine,
        value: u32,
        exact: bool,
    }

    /// Longest sleep when the heavy barrier was unavailable (see [`FutexWait::is_exact`]).
    const INEXACT_SLICE: Duration = Duration::from_millis(10);

    impl FutexWait {
        pub(crate) fn new(
            map: Arc<Mapping>,
            line: WaitLine,
            (value, exact): (u32, bool),
        ) -> FutexWait {
            FutexWait {
                map,
                line,
                value,
                exact,
            }
        }

        /// Whether the waiter's `membarrier` held, so that a wake-up cannot be missed. `false`
        /// only where `membarrier(2)` is unavailable to this process (e.g. filtered by seccomp):
        /// then a wake-up may be missed, and a sleep must be bounded — [`FutexWait::wait`]
        /// sleeps at most 10 ms, and an io_uring user should link a timeout to its `FutexWait`.
        pub fn is_exact(&self) -> bool {
            self.exact
        }

        /// The address of the 32-bit futex word, inside the shared mapping.
        pub fn word(&self) -> *const u32 {
            // SAFETY: the wait line is inside the mapping that `self.map` keeps alive.
            unsafe { self.map.shm.u32(self.line.seq) }.as_ptr()
        }

        /// The value to wait on: sleep while the word still holds it.
        pub fn value(&self) -> u32 {
            self.value
        }

        /// Sleeps on the word with `futex(2)` until woken, the word moved, or `timeout` passed.
        pub fn wait(&self, timeout: Option<Duration>) {
            // SAFETY: as in `word`.
            let word = unsafe { self.map.shm.u32(self.line.seq) };
            let timeout = if self.exact {
                timeout
            } else {
                Some(timeout.map_or(INEXACT_SLICE, |t| t.min(INEXACT_SLICE)))
            };
            crate::sys::futex_wait(word, self.value, timeout);
        }
    }

    impl Drop for FutexWait {
        fn drop(&mut self) {
            self.line.unregister(&self.map.shm);
        }
    }

    impl std::fmt::Debug for FutexWait {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("FutexWait")
                .field("word", &self.word())
                .field("value", &self.value)
                .finish()
        }
    }
}

/// How many times a blocking call re-checks the ring before it parks: a message that is about to
/// arrive is cheaper to spin for than to sleep for.
#[cfg(not(loom))]
const SPINS: u32 = 200;

/// Runs `ready` until it succeeds or `timeout` passes (`Ok(false)`): spins briefly, then parks on
/// the futex that `prepare` registers, for at most `slice` at a time. `prepare` returning `None`
/// means "looks ready": try again at once.
#[cfg(not(loom))]
pub(crate) fn block<S>(
    side: &mut S,
    timeout: Option<std::time::Duration>,
    slice: std::time::Duration,
    mut ready: impl FnMut(&mut S) -> crate::Result<bool>,
    mut prepare: impl FnMut(&mut S) -> crate::Result<Option<FutexWait>>,
) -> crate::Result<bool> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    for _ in 0..SPINS {
        if ready(side)? {
            return Ok(true);
        }
        std::hint::spin_loop();
    }
    loop {
        if ready(side)? {
            return Ok(true);
        }
        let sleep = match deadline {
            None => slice,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                left.min(slice)
            }
        };
        match prepare(side)? {
            Some(wait) => wait.wait(Some(sleep)),
            None => std::hint::spin_loop(),
        }
    }
}
