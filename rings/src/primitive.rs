//! The atomics and the shared-memory window the ring protocols run on.
//!
//! Normally [`Shm`] is a raw window onto a file mapping and the atomics are `std`'s. Under
//! `cfg(loom)` the atomics are loom's and [`Shm`] is a heap array of loom atomics, so the loom
//! models run the very same index protocol code. Record bytes are then copied word by word with
//! relaxed atomics: a publication that forgot its Release/Acquire pair shows up in a model as
//! stale payload, not only as a stale index.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Marks where a protocol relies on the single total order of its `SeqCst` accesses: an
/// increment of one word, then loads of others (Dekker's pattern, as in the table's counts).
///
/// In a normal build it is nothing: `SeqCst` read-modify-writes and loads already lie in one
/// total order that each load respects. Loom models `SeqCst` loads and stores only as
/// acquire/release (a documented limitation) but keeps the total order for `SeqCst` fences, so
/// under loom this is a `SeqCst` fence. For the "increment, then load" pattern the two give the
/// same guarantee: of two such threads, the one whose increment (or fence) comes later in the
/// order loads a value at least as new as the other's increment.
#[inline]
pub(crate) fn seq_cst_point() {
    #[cfg(loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
}

/// Tells the CPU (or the loom scheduler) that this thread is waiting on another.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

#[cfg(not(loom))]
pub(crate) use self::mapped::Shm;
#[cfg(loom)]
pub(crate) use self::modelled::Shm;

#[cfg(not(loom))]
mod mapped {
    use super::{AtomicU32, AtomicU64};
    use std::ptr::NonNull;

    /// A window of shared memory: `len` bytes at `base`, 128-byte aligned.
    ///
    /// `Shm` does not own the memory; whoever builds one keeps the mapping alive at least as long
    /// as the `Shm` and everything borrowed from it.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Shm {
        base: NonNull<u8>,
        len: usize,
    }

    // SAFETY: `Shm` is a pointer into memory that is shared between processes by design; every
    // access through it is either atomic or ordered by the ring protocols' atomics.
    unsafe impl Send for Shm {}
    // SAFETY: as for `Send`.
    unsafe impl Sync for Shm {}

    impl Shm {
        /// # Safety
        ///
        /// `base..base + len` must be valid for reads and writes, 128-byte aligned, and stay
        /// mapped for as long as this `Shm` or anything obtained from it is used.
        pub(crate) unsafe fn new(base: NonNull<u8>, len: usize) -> Shm {
            debug_assert_eq!(base.as_ptr() as usize % 128, 0);
            Shm { base, len }
        }

        pub(crate) fn len(&self) -> usize {
            self.len
        }

        /// The 64-bit atomic at `off`.
        ///
        /// # Safety
        ///
        /// `off` must be 8-aligned and `off + 8 <= len`; the word must only ever be accessed
        /// atomically (by every process sharing it).
        #[inline]
        pub(crate) unsafe fn u64(&self, off: usize) -> &AtomicU64 {
            debug_assert!(
                off % 8 == 0 && off + 8 <= self.len,
                "u64 at {off} of {}",
                self.len
            );
            // SAFETY: in bounds and aligned per the caller; AtomicU64 has u64's layout.
            unsafe { &*self.base.as_ptr().add(off).cast::<AtomicU64>() }
        }

        /// The 32-bit atomic at `off`.
        ///
        /// # Safety
        ///
        /// As for [`Shm::u64`], with 4-byte alignment.
        #[inline]
        pub(crate) unsafe fn u32(&self, off: usize) -> &AtomicU32 {
            debug_assert!(
                off % 4 == 0 && off + 4 <= self.len,
                "u32 at {off} of {}",
                self.len
            );
            // SAFETY: in bounds and aligned per the caller; AtomicU32 has u32's layout.
            unsafe { &*self.base.as_ptr().add(off).cast::<AtomicU32>() }
        }

        /// Copies `src` into the window at `off`.
        ///
        /// # Safety
        ///
        /// `off + src.len() <= len`, and the protocol must give this side exclusive ownership of
        /// those bytes until it publishes them.
        #[inline]
        pub(crate) unsafe fn write(&self, off: usize, src: &[u8]) {
            debug_assert!(off + src.len() <= self.len);
            // SAFETY: in bounds per the caller; `src` is local memory, so no overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), self.base.as_ptr().add(off), src.len())
            }
        }

        /// Copies bytes at `off` out into `dst`.
        ///
        /// # Safety
        ///
        /// `off + dst.len() <= len`, and the protocol must have published those bytes to this side.
        #[inline]
        pub(crate) unsafe fn read(&self, off: usize, dst: &mut [u8]) {
            debug_assert!(off + dst.len() <= self.len);
            // SAFETY: in bounds per the caller; `dst` is local memory, so no overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.base.as_ptr().add(off),
                    dst.as_mut_ptr(),
                    dst.len(),
                )
            }
        }

        /// Hints the CPU to start loading the cache line holding byte `off`, so a read that
        /// follows overlaps with others instead of waiting its turn. Reads nothing the program
        /// sees and never faults.
        #[inline]
        pub(crate) fn prefetch(&self, off: usize) {
            #[cfg(target_arch = "x86_64")]
            if off < self.len {
                // SAFETY: `off` is inside the mapping, and a prefetch neither faults nor changes
                // memory.
                unsafe {
                    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                    _mm_prefetch::<_MM_HINT_T0>(self.base.as_ptr().add(off).cast::<i8>());
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = off;
        }

        /// A shared view of `len` published bytes at `off`.
        ///
        /// # Safety
        ///
        /// `off + len <= self.len`, and no one may write those bytes while the slice lives.
        #[inline]
        pub(crate) unsafe fn slice<'a>(&self, off: usize, len: usize) -> &'a [u8] {
            debug_assert!(off + len <= self.len);
            // SAFETY: in bounds per the caller, who also rules out concurrent writers.
            unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(off), len) }
        }

        /// An exclusive view of `len` bytes at `off`.
        ///
        /// # Safety
        ///
        /// `off + len <= self.len`, and no one else may read or write those bytes while the
        /// slice lives.
        #[inline]
        #[allow(clippy::mut_from_ref)] // the protocol, not the borrow checker, grants exclusivity
        pub(crate) unsafe fn slice_mut<'a>(&self, off: usize, len: usize) -> &'a mut [u8] {
            debug_assert!(off + len <= self.len);
            // SAFETY: in bounds per the caller, who also guarantees exclusive access.
            unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(off), len) }
        }
    }
}

#[cfg(loom)]
mod modelled {
    use super::{AtomicU32, AtomicU64, Ordering};
    use std::sync::Arc;

    /// Under loom: "shared memory" made of loom atomics. 64-bit words back the u64 fields and
    /// the record bytes; the 32-bit futex words live in a parallel array (the layouts never view
    /// one offset at two widths).
    #[derive(Clone)]
    pub(crate) struct Shm {
        words: Arc<Vec<AtomicU64>>,
        halves: Arc<Vec<AtomicU32>>,
        len: usize,
    }

    impl Shm {
        pub(crate) fn prefetch(&self, _off: usize) {}

        pub(crate) fn zeroed(len: usize) -> Shm {
            let len = len.next_multiple_of(8);
            Shm {
                words: Arc::new((0..len / 8).map(|_| AtomicU64::new(0)).collect()),
                halves: Arc::new((0..len / 4).map(|_| AtomicU32::new(0)).collect()),
                len,
            }
        }

        pub(crate) fn len(&self) -> usize {
            self.len
        }

        /// # Safety
        ///
        /// Mirrors the mapped version; bounds are checked here anyway.
        pub(crate) unsafe fn u64(&self, off: usize) -> &AtomicU64 {
            assert!(off % 8 == 0);
            &self.words[off / 8]
        }

        /// # Safety
        ///
        /// Mirrors the mapped version; bounds are checked here anyway.
        pub(crate) unsafe fn u32(&self, off: usize) -> &AtomicU32 {
            assert!(off % 4 == 0);
            &self.halves[off / 4]
        }

        /// # Safety
        ///
        /// Mirrors the mapped version; `off` must be 8-aligned.
        pub(crate) unsafe fn write(&self, off: usize, src: &[u8]) {
            assert!(off % 8 == 0);
            for (i, chunk) in src.chunks(8).enumerate() {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                self.words[off / 8 + i].store(u64::from_le_bytes(word), Ordering::Relaxed);
            }
        }

        /// # Safety
        ///
        /// Mirrors the mapped version; `off` must be 8-aligned.
        pub(crate) unsafe fn read(&self, off: usize, dst: &mut [u8]) {
            assert!(off % 8 == 0);
            for (i, chunk) in dst.chunks_mut(8).enumerate() {
                let word = self.words[off / 8 + i]
                    .load(Ordering::Relaxed)
                    .to_le_bytes();
                chunk.copy_from_slice(&word[..chunk.len()]);
            }
        }
    }
}
