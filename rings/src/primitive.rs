//! The atomics and the shared-memory window the ring protocols run on.
//!
//! Normally [`Shm`] is a raw window onto a file mapping and the atomics are `std`'s. Under
//! `cfg(loom)` the atomics are loom's and [`Shm`] is a heap array of loom atomics, so the loom
//! models run the very same index protocol code.
//!
//! Every access this process makes through a [`Shm`] is atomic, record bytes included: they are
//! copied word by word with relaxed atomic loads and stores of whole, 8-aligned 64-bit words
//! (the futex and count words are 32-bit atomics that nothing accesses at another width). Another
//! process can write the mapping at any moment — an honest peer only where the protocol lets it,
//! a corrupt or hostile one anywhere — and Rust's memory model makes a non-atomic read racing
//! with a write undefined behaviour, so a plain `memcpy` or a `&[u8]` into the mapping would be
//! sound only while every peer keeps to the protocol. With atomic accesses a peer's writes can
//! change the values this process reads (a record copied while a hostile peer writes it may be
//! torn between words), never make the reads themselves undefined. The protocols' Release and
//! Acquire accesses order the relaxed copies as they ordered plain ones; under loom a publication
//! that forgot its Release/Acquire pair shows up as stale payload, not only as a stale index.

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
    use super::{AtomicU32, AtomicU64, Ordering};
    use std::ptr::NonNull;

    /// A window of shared memory: `len` bytes at `base`, 128-byte aligned.
    ///
    /// `Shm` does not own the memory; whoever builds one keeps the mapping alive at least as long
    /// as the `Shm` and everything borrowed from it. It hands out no reference to plain bytes:
    /// only atomics, and copies in and out.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Shm {
        base: NonNull<u8>,
        len: usize,
    }

    // SAFETY: `Shm` is a pointer into memory that is shared between processes by design; every
    // access through it is atomic.
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
        /// `off` must be 8-aligned and `off + 8 <= len`, and this process must access the word
        /// only as a 64-bit atomic (through this method, [`Shm::read`] or [`Shm::write`]).
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
        /// `off` must be 4-aligned and `off + 4 <= len`, and this process must access the word
        /// only as a 32-bit atomic.
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

        /// Copies `src` into the window at `off`, in relaxed atomic stores of whole words: the
        /// last word is filled up with zeros.
        ///
        /// # Safety
        ///
        /// `off` must be 8-aligned and `off + src.len()` rounded up to 8 at most `len`; this side
        /// must own those bytes (the zeros included) under the protocol until it publishes them,
        /// and this process must access them only as whole 8-aligned atomic words.
        #[inline]
        pub(crate) unsafe fn write(&self, off: usize, src: &[u8]) {
            debug_assert!(
                off % 8 == 0 && off + src.len().next_multiple_of(8) <= self.len,
                "write of {} at {off} of {}",
                src.len(),
                self.len
            );
            let mut chunks = src.chunks_exact(8);
            let mut at = off;
            for chunk in &mut chunks {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                // SAFETY: `at` is 8-aligned and the word lies in bounds, per the caller.
                unsafe { self.u64(at) }.store(u64::from_ne_bytes(word), Ordering::Relaxed);
                at += 8;
            }
            let rest = chunks.remainder();
            if !rest.is_empty() {
                let mut word = [0u8; 8];
                word[..rest.len()].copy_from_slice(rest);
                // SAFETY: as above; the caller owns the whole last word.
                unsafe { self.u64(at) }.store(u64::from_ne_bytes(word), Ordering::Relaxed);
            }
        }

        /// Copies bytes at `off` out into `dst`, in relaxed atomic loads of whole words.
        ///
        /// The loads are atomic, so a peer that writes these bytes meanwhile (one that breaks
        /// the protocol) can change what is copied, even tear it between words, but cannot make
        /// the read undefined behaviour.
        ///
        /// # Safety
        ///
        /// `off` must be 8-aligned and `off + dst.len()` rounded up to 8 at most `len`, and this
        /// process must access those bytes only as whole 8-aligned atomic words. For the copy to
        /// mean anything, the protocol must have published them to this side.
        #[inline]
        pub(crate) unsafe fn read(&self, off: usize, dst: &mut [u8]) {
            debug_assert!(
                off % 8 == 0 && off + dst.len().next_multiple_of(8) <= self.len,
                "read of {} at {off} of {}",
                dst.len(),
                self.len
            );
            let mut chunks = dst.chunks_exact_mut(8);
            let mut at = off;
            for chunk in &mut chunks {
                // SAFETY: `at` is 8-aligned and the word lies in bounds, per the caller.
                let word = unsafe { self.u64(at) }.load(Ordering::Relaxed);
                chunk.copy_from_slice(&word.to_ne_bytes());
                at += 8;
            }
            let rest = chunks.into_remainder();
            if !rest.is_empty() {
                // SAFETY: as above; the whole last word lies in bounds.
                let word = unsafe { self.u64(at) }.load(Ordering::Relaxed);
                rest.copy_from_slice(&word.to_ne_bytes()[..rest.len()]);
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
