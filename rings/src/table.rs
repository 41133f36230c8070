//! A shared table of rows, each with a capacity, application words, and one count per holder:
//! counting semaphores that stay exact across processes and that a crashed holder cannot leak.
//!
//! # Algorithm
//!
//! A row's count is split into columns, one `u32` per holder (a holder is an attached
//! [`Holder`]: one per process, or one shared by several threads of a process). Only holder
//! `h` changes column `h`, always by an atomic read-modify-write (its threads may race), and only
//! whoever takes over a dead holder zeroes it. The row's count is the sum of its columns, as a
//! `u64`. It is a split counter, like Linux's `percpu_counter`, made exact for a bound by
//! Dekker's pattern — write one's own word, then read everyone else's — the same ordering
//! argument as the rings' wait protocol.
//!
//! Acquiring a unit of row `r` as holder `h`:
//!
//! 1. A look first: if the row has a cap and the sum of its columns is already at the cap, fail
//!    without writing (holders knocking on a full row then only read its lines).
//! 2. `column[h].fetch_add(1, SeqCst)`.
//! 3. Load the cap and every column with `SeqCst`, and sum the columns.
//! 4. If `cap != 0 && sum > cap`, or `!admit(sum - 1)`: take the unit back (a saturating
//!    decrement), wake release waiters (our transient unit may have made a waiter's re-check
//!    fail), and fail. Otherwise the unit is ours.
//!
//! Releasing is a saturating decrement of `column[h]` (a stray release never wraps), then a wake.
//!
//! # Why it is exact
//!
//! Take the units held at some moment through successful acquisitions that read the current
//! cap, and call them `S`. All increments and column loads are `SeqCst`, so they lie in one
//! total order that agrees with each thread's program order. Let `k` be the unit of `S` whose
//! increment comes last in it. Every other increment of `S` comes before `k`'s, hence before each
//! of `k`'s loads, and a `SeqCst` load returns the last write before it in that order or a later
//! one in its column's modification order. A column only changes by read-modify-writes: after
//! any prefix of its modification order it holds the increments so far, minus the decrements so
//! far, each of which gives back a unit whose increment came earlier in the same column (a
//! release follows its acquisition, an undo its increment), and minus what a zeroing took: only
//! a dead holder's units, which leave `S` with it. Units of `S` are not given back before the
//! moment we look at. So each column `k` loaded held at least the units of `S` in that column,
//! `k`'s sum was at least `|S|`, and `k` succeeded, so `|S| <= sum <= cap`. Racers' transient
//! units only add to the sums each acquirer sees: they make acquisitions fail spuriously (two
//! holders racing for the last unit may both fail), never succeed wrongly. A cap lowered below
//! the count takes nothing back; it stops new acquisitions until the count falls below it.
//!
//! The loom models check this protocol with a `SeqCst` fence between steps 2 and 3, which gives
//! the same order for this pattern: loom models `SeqCst` loads only as acquire loads (see
//! `primitive::seq_cst_point`). In a normal build the fence is not there.
//!
//! # Crashes
//!
//! Each holder takes an open-file-description lock on its own byte of the segment file, as the
//! rings' handles do; the kernel drops it when the process dies, however it dies. A dead
//! holder's units stay in its column, still counted (so the cap keeps holding), until another
//! holder takes its lock — by attaching at its index or by [`Holder::reap`] — and zeroes the
//! column in every row (the kernel hands the lock over only once no thread of the dead process
//! can write any more). A unit lives in exactly one column from its increment to its decrement
//! or that zeroing: no crash, at any instruction, leaks a unit or frees one twice (a holder
//! killed between its increment and its undo leaves that transient unit counted until it is
//! reaped). As with the rings' handles, a child that forks without exec must not use its
//! parent's holders, and keeps their locks alive while it lives.
//!
//! # Waiting
//!
//! One wait line (see [`crate::wait`]) for "something was released": a count fell, a cap was
//! raised, a dead holder was reaped. Every release, failed attempt, gauge decrement, raised cap
//! and reap wakes it with the rings' waker half (a light barrier and one load of `waiters`);
//! [`Table::prepare_release_wait`] is the waiter half, with the caller's own re-check.
//!
//! # Layout
//!
//! | offset | field |
//! |---|---|
//! | 0 | segment header (kind 3; parameters rows, holders, words, padded) |
//! | 128 | "released" wait line: `seq` (u32) at 128, `waiters` (u32) at 132 |
//! | 256 | `holders` entries of 64 bytes: state (u64, 0 free / 1 used), pid (u64), start ticks (u64) |
//! | after the entries, rounded to 128 | `rows` rows |
//!
//! A row is `cap: u32`, 4 reserved bytes, `words` application words (u64), then `holders`
//! counts (u32). Rows are `round_up(8 + 8 words + 4 holders, 128)` bytes apart when `padded`
//! (rows that different processes write never share a cache line), else rounded to 8.
//!
//! # Hostile peers
//!
//! Every offset comes from the checked layout and a checked row, word or holder index. Counts
//! and caps read from the segment are only summed (in `u64`: at most 256 × (2^32 − 1)), compared
//! and decremented with saturation, so a hostile peer's values give wrong counts, never a fault,
//! an overflow or a panic. An increment that finds its own column at `u32::MAX` (it would wrap)
//! is undone and the acquisition fails.

use crate::error::Error;
use crate::primitive::{AtomicU32, AtomicU64, Ordering, Shm};
use crate::wait::WaitLine;

const RELEASED: WaitLine = WaitLine::at(128);
const OFF_ENTRIES: usize = 256;
const ENTRY_LEN: usize = 64;
const LINE: usize = 128;

// Holder entry fields.
const E_STATE: usize = 0;
const E_PID: usize = 8;
const E_START: usize = 16;

const FREE: u64 = 0;
const USED: u64 = 1;

// Row fields.
const ROW_CAP: usize = 0;
const ROW_WORDS: usize = 8;

/// Most rows a table may have.
pub const MAX_ROWS: usize = 1 << 24;
/// Most holders a table may have.
pub const MAX_HOLDERS: u32 = 256;
/// Most application words a row may have.
pub const MAX_WORDS: usize = 32;

/// How a table is shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Rows (1 to [`MAX_ROWS`]).
    pub rows: usize,
    /// Holders that may be attached at once (0 to [`MAX_HOLDERS`]): one count column each. With
    /// none, the table holds only caps and words.
    pub holders: u32,
    /// Application words per row (0 to [`MAX_WORDS`]).
    pub words: usize,
    /// Whether each row starts on its own 128-byte line, so that rows written by different
    /// processes do not share cache lines.
    pub padded: bool,
}

/// Checked table geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TableLayout {
    config: Config,
    rows_off: usize,
    stride: usize,
    counts: usize,
    total: usize,
}

impl TableLayout {
    pub(crate) fn new(config: &Config) -> Result<TableLayout, Error> {
        Self::check(config).map_err(|reason| Error::InvalidConfig { reason })
    }

    fn check(c: &Config) -> Result<TableLayout, String> {
        if !(1..=MAX_ROWS).contains(&c.rows) {
            return Err(format!("rows {} must be in 1..={MAX_ROWS}", c.rows));
        }
        if c.holders > MAX_HOLDERS {
            return Err(format!(
                "holders {} must be at most {MAX_HOLDERS}",
                c.holders
            ));
        }
        if c.words > MAX_WORDS {
            return Err(format!("words {} must be at most {MAX_WORDS}", c.words));
        }
        let counts = ROW_WORDS + 8 * c.words;
        let row_len = counts + 4 * c.holders as usize;
        let stride = row_len.next_multiple_of(if c.padded { LINE } else { 8 });
        let rows_off = (OFF_ENTRIES + ENTRY_LEN * c.holders as usize).next_multiple_of(LINE);
        let total = rows_off as u64 + c.rows as u64 * stride as u64;
        if total > crate::mpmc::MAX_SEGMENT {
            return Err(format!(
                "the table would need {total} bytes, more than {}",
                crate::mpmc::MAX_SEGMENT
            ));
        }
        Ok(TableLayout {
            config: *c,
            rows_off,
            stride,
            counts,
            total: total as usize,
        })
    }

    pub(crate) fn from_params(p: [u64; 6]) -> Result<TableLayout, String> {
        if p[4] != 0 || p[5] != 0 {
            return Err("unused table parameters are not zero".into());
        }
        let padded = match p[3] {
            0 => false,
            1 => true,
            v => return Err(format!("padded flag {v} is neither 0 nor 1")),
        };
        let config = Config {
            rows: usize::try_from(p[0])
                .ok()
                .filter(|&r| r <= MAX_ROWS)
                .ok_or_else(|| format!("rows {} out of range", p[0]))?,
            holders: u32::try_from(p[1]).map_err(|_| format!("holders {} out of range", p[1]))?,
            words: usize::try_from(p[2])
                .ok()
                .filter(|&w| w <= MAX_WORDS)
                .ok_or_else(|| format!("words {} out of range", p[2]))?,
            padded,
        };
        Self::check(&config)
    }

    fn entry(&self, holder: u32) -> usize {
        OFF_ENTRIES + holder as usize * ENTRY_LEN
    }
}

#[cfg(not(loom))]
impl crate::segment::Layout for TableLayout {
    const KIND: crate::segment::RingKind = crate::segment::RingKind::Table;
    fn params(&self) -> [u64; 6] {
        let c = &self.config;
        [
            c.rows as u64,
            u64::from(c.holders),
            c.words as u64,
            u64::from(c.padded),
            0,
            0,
        ]
    }
    fn from_params(params: [u64; 6]) -> Result<Self, String> {
        TableLayout::from_params(params)
    }
    fn total_len(&self) -> usize {
        self.total
    }
    /// One per holder.
    fn lock_count(&self) -> u32 {
        self.config.holders
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn out_of_range(what: &str, index: usize, len: usize) -> ! {
    panic!("table {what} {index} out of range: the table has {len}")
}

/// Takes up to `n` from `word`, never below zero. Returns whether anything was taken.
fn saturating_sub(word: &AtomicU32, n: u32) -> bool {
    word.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
        (v != 0 && n != 0).then(|| v.saturating_sub(n))
    })
    .is_ok()
}

/// What a cap allows: 0 means no cap.
fn allowance(cap: u32) -> u64 {
    if cap == 0 { u64::MAX } else { u64::from(cap) }
}

/// Gives back a unit taken by an acquisition that then failed — on every path, a panicking
/// `admit` included — unless disarmed by success.
struct Undo<'a> {
    core: &'a TableCore,
    own: &'a AtomicU32,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if saturating_sub(self.own, 1) {
            RELEASED.wake(&self.core.shm);
        }
    }
}

/// The lock-free half of a table: counting, over any [`Shm`]. The handles and the loom models
/// both drive it.
#[derive(Clone)]
pub(crate) struct TableCore {
    shm: Shm,
    layout: TableLayout,
}

impl TableCore {
    pub(crate) fn new(shm: Shm, layout: TableLayout) -> TableCore {
        TableCore { shm, layout }
    }

    /// The offset of row `row`; panics when it is out of range (the caller's own index).
    #[inline]
    #[track_caller]
    fn row(&self, row: usize) -> usize {
        let rows = self.layout.config.rows;
        if row >= rows {
            out_of_range("row", row, rows);
        }
        self.layout.rows_off + row * self.layout.stride
    }

    #[inline]
    fn cap_word(&self, row_off: usize) -> &AtomicU32 {
        // SAFETY: `row_off` is a checked row's offset; the cap is its first, 4-aligned word
        // (rows are 8-aligned), inside the mapping, only ever accessed atomically.
        unsafe { self.shm.u32(row_off + ROW_CAP) }
    }

    /// Holder `holder`'s count in the row at `row_off`.
    #[inline]
    fn column(&self, row_off: usize, holder: u32) -> &AtomicU32 {
        debug_assert!(holder < self.layout.config.holders);
        // SAFETY: `row_off` is a checked row's offset and `holder` a holder index below
        // `holders`, so the count lies inside the row (4-aligned, as the counts start at an
        // 8-aligned offset); only ever accessed atomically.
        unsafe {
            self.shm
                .u32(row_off + self.layout.counts + 4 * holder as usize)
        }
    }

    /// Application word `k` of `row`; panics when either is out of range.
    #[track_caller]
    pub(crate) fn word(&self, row: usize, k: usize) -> &AtomicU64 {
        let off = self.row(row);
        let words = self.layout.config.words;
        if k >= words {
            out_of_range("word", k, words);
        }
        // SAFETY: a checked row and word index: 8-aligned (rows are 8-aligned, words start at
        // 8) and inside the row; application words are only accessed atomically.
        unsafe { self.shm.u64(off + ROW_WORDS + 8 * k) }
    }

    /// The sum of the row's columns, each loaded with `SeqCst` (the exactness argument needs
    /// it; on x86 these are plain loads).
    #[inline]
    fn sum(&self, row_off: usize) -> u64 {
        (0..self.layout.config.holders)
            .map(|h| u64::from(self.column(row_off, h).load(Ordering::SeqCst)))
            .sum()
    }

    #[track_caller]
    pub(crate) fn count(&self, row: usize) -> u64 {
        self.sum(self.row(row))
    }

    #[track_caller]
    pub(crate) fn cap(&self, row: usize) -> u32 {
        self.cap_word(self.row(row)).load(Ordering::SeqCst)
    }

    #[track_caller]
    pub(crate) fn set_cap(&self, row: usize, cap: u32) {
        let old = self.cap_word(self.row(row)).swap(cap, Ordering::SeqCst);
        if allowance(cap) > allowance(old) {
            RELEASED.wake(&self.shm);
        }
    }

    /// The acquisition of the module doc, as holder `me`.
    #[track_caller]
    pub(crate) fn try_acquire_with(
        &self,
        me: u32,
        row: usize,
        admit: impl FnOnce(u64) -> bool,
    ) -> bool {
        let off = self.row(row);
        let cap_word = self.cap_word(off);
        let early = allowance(cap_word.load(Ordering::Relaxed));
        if early != u64::MAX && self.sum(off) >= early {
            return false;
        }
        let own = self.column(off, me);
        if own.fetch_add(1, Ordering::SeqCst) == u32::MAX {
            // Our column was full (only a hostile peer gets it there): the add wrapped it to 0.
            own.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        let undo = Undo { core: self, own };
        crate::primitive::seq_cst_point();
        let cap = allowance(cap_word.load(Ordering::SeqCst));
        let sum = self.sum(off);
        if sum > cap || !admit(sum.saturating_sub(1)) {
            return false; // `undo` gives the unit back and wakes
        }
        std::mem::forget(undo);
        true
    }

    /// Takes up to `n` units from `me`'s column (never below zero) and wakes release waiters.
    #[track_caller]
    pub(crate) fn sub(&self, me: u32, row: usize, n: u32) {
        if saturating_sub(self.column(self.row(row), me), n) {
            RELEASED.wake(&self.shm);
        }
    }

    #[track_caller]
    pub(crate) fn add(&self, me: u32, row: usize, n: u32) {
        self.column(self.row(row), me)
            .fetch_add(n, Ordering::SeqCst);
    }

    #[track_caller]
    pub(crate) fn held(&self, me: u32, row: usize) -> u32 {
        self.column(self.row(row), me).load(Ordering::SeqCst)
    }

    /// Zeroes holder `holder`'s column in every row, waking release waiters if any unit went.
    /// The caller holds `holder`'s lock (or is `holder`, dropping), so no one else writes it.
    pub(crate) fn zero_holder(&self, holder: u32) -> bool {
        let mut freed = false;
        for row in 0..self.layout.config.rows {
            let c = self.column(self.row(row), holder);
            // Load first: most columns are zero, and a load keeps the line shared.
            if c.load(Ordering::SeqCst) != 0 && c.swap(0, Ordering::SeqCst) != 0 {
                freed = true;
            }
        }
        if freed {
            RELEASED.wake(&self.shm);
        }
        freed
    }

    fn entry_word(&self, holder: u32, field: usize) -> &AtomicU64 {
        debug_assert!(holder < self.layout.config.holders);
        // SAFETY: `holder` is below `holders`, so the entry and its 8-aligned fields lie in the
        // entry array of the checked layout; entry fields are only accessed atomically.
        unsafe { self.shm.u64(self.layout.entry(holder) + field) }
    }

    /// Wakes release waiters (after a reap that freed entries).
    pub(crate) fn wake_released(&self) {
        RELEASED.wake(&self.shm);
    }
}

/// Heap-backed table for the loom models: `rows` rows capped at `cap`, `holders` columns.
#[cfg(loom)]
pub(crate) fn model_table(rows: usize, holders: u32, cap: u32) -> TableCore {
    let layout = TableLayout::new(&Config {
        rows,
        holders,
        words: 0,
        padded: false,
    })
    .expect("model config");
    let core = TableCore::new(Shm::zeroed(layout.total), layout);
    for row in 0..rows {
        core.cap_word(core.row(row)).store(cap, Ordering::Relaxed);
    }
    core
}

#[cfg(loom)]
impl TableCore {
    /// The waiter's half of the release wait, sleeping by yielding until `seq` moves: a lost
    /// wake-up leaves the model spinning, which loom reports.
    pub(crate) fn model_wait_for_release(&self, still_blocked: impl FnOnce() -> bool) {
        let (value, _) = RELEASED.register(&self.shm);
        if still_blocked() {
            // SAFETY: the wait line's `seq` word is a fixed, 4-aligned offset, atomic only.
            let seq = unsafe { self.shm.u32(RELEASED.seq) };
            while seq.load(Ordering::Acquire) == value {
                loom::thread::yield_now();
            }
        }
        RELEASED.unregister(&self.shm);
    }
}

#[cfg(not(loom))]
pub use self::handles::{Holder, HolderInfo, Table};

#[cfg(not(loom))]
mod handles {
    use super::*;
    use crate::error::Result;
    use crate::segment::{self, Mapping};
    use crate::sys::{self, ProcessId};
    use crate::wait::FutexWait;
    use std::fs::File;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    /// A table segment, mapped. `Clone`, `Send` and `Sync`; hands out [`Holder`]s, which take
    /// and give back units.
    #[derive(Clone)]
    pub struct Table {
        map: Arc<Mapping>,
        core: TableCore,
    }

    /// A holder entry in use, as [`Table::holders`] sees it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct HolderInfo {
        /// The holder's index: its count column and its lock byte.
        pub index: u32,
        /// The pid that attached it.
        pub pid: u32,
        /// That process's start time, clock ticks after boot.
        pub start_ticks: u64,
        /// Whether a live process holds its lock; `false`: it died, and its units stay counted
        /// until a holder reaps it.
        pub alive: bool,
    }

    impl Table {
        /// Creates a table segment at `path`: every cap 0 (no cap), every word and count 0.
        pub fn create(path: impl AsRef<Path>, config: &Config) -> Result<Table> {
            let layout = TableLayout::new(config)?;
            let map = Arc::new(segment::create(path.as_ref(), &layout)?);
            Ok(Table::from_map(map, layout))
        }

        /// A table no other process can open (`O_TMPFILE` in `dir`, never linked): for use
        /// within one process, and for tests. [`Table::path`] is then `dir`.
        pub fn create_anonymous(dir: impl AsRef<Path>, config: &Config) -> Result<Table> {
            let layout = TableLayout::new(config)?;
            let map = Arc::new(segment::create_anonymous(dir.as_ref(), &layout)?);
            Ok(Table::from_map(map, layout))
        }

        /// Opens the table segment at `path`.
        pub fn open(path: impl AsRef<Path>) -> Result<Table> {
            Table::open_with(path, Duration::ZERO)
        }

        /// Opens the table segment at `path`, waiting up to `wait` for it to appear and be
        /// published.
        pub fn open_with(path: impl AsRef<Path>, wait: Duration) -> Result<Table> {
            let (map, layout) = segment::open::<TableLayout>(path.as_ref(), wait)?;
            Ok(Table::from_map(Arc::new(map), layout))
        }

        fn from_map(map: Arc<Mapping>, layout: TableLayout) -> Table {
            let core = TableCore::new(map.shm, layout);
            Table { map, core }
        }

        /// The configuration the table was created with.
        pub fn config(&self) -> Config {
            self.core.layout.config
        }

        /// Who created the segment.
        pub fn creator(&self) -> ProcessId {
            self.map.creator()
        }

        /// The segment's path (for an anonymous table, the directory it was made in).
        pub fn path(&self) -> &Path {
            self.map.path()
        }

        /// The segment's file: for handing the table to another process over `SCM_RIGHTS`
        /// (also an anonymous one), which opens it as `/proc/self/fd/N`.
        pub fn file(&self) -> std::os::fd::BorrowedFd<'_> {
            self.map.file()
        }

        /// Application word `k` of row `row`, for any process to load, store or compare and
        /// swap. Panics if `row` or `k` is out of range, as slice indexing does.
        #[track_caller]
        pub fn word(&self, row: usize, k: usize) -> &AtomicU64 {
            self.core.word(row, k)
        }

        /// Row `row`'s cap; 0 means no cap. Panics if `row` is out of range.
        #[track_caller]
        pub fn cap(&self, row: usize) -> u32 {
            self.core.cap(row)
        }

        /// Sets row `row`'s cap (0: no cap). A lower cap never takes units back: it stops new
        /// acquisitions until the count falls below it. A raised cap wakes release waiters.
        /// Panics if `row` is out of range.
        #[track_caller]
        pub fn set_cap(&self, row: usize, cap: u32) {
            self.core.set_cap(row, cap)
        }

        /// Row `row`'s count: the sum over every holder column (live holders, and dead ones not
        /// yet reaped). Read without locking, so only a snapshot under concurrency. Panics if
        /// `row` is out of range.
        #[track_caller]
        pub fn count(&self, row: usize) -> u64 {
            self.core.count(row)
        }

        /// Attaches a holder at the lowest free index, taking its lock. An entry in use whose
        /// lock can be taken belonged to a holder that died: its columns are zeroed in every
        /// row first. [`Error::TooManyHandles`] when every index is held by a live holder (always,
        /// for a table of no holders).
        pub fn holder(&self) -> Result<Holder> {
            crate::wait::register_process();
            let path = self.map.path();
            let max = self.core.layout.config.holders;
            if max == 0 {
                return Err(Error::TooManyHandles {
                    path: path.to_owned(),
                    max,
                });
            }
            let lock = self.map.reopen()?;
            let me = ProcessId::current().map_err(|e| Error::io("identity", path, e))?;
            for index in 0..max {
                if !sys::try_lock(&lock, index).map_err(|e| Error::io("lock", path, e))? {
                    continue;
                }
                let state = self.core.entry_word(index, E_STATE);
                if state.load(Ordering::Acquire) != FREE {
                    // Used, yet its lock was free: its holder died.
                    self.core.zero_holder(index);
                }
                self.core
                    .entry_word(index, E_PID)
                    .store(u64::from(me.pid), Ordering::Relaxed);
                self.core
                    .entry_word(index, E_START)
                    .store(me.start_ticks, Ordering::Relaxed);
                state.store(USED, Ordering::Release);
                return Ok(Holder {
                    table: self.clone(),
                    lock,
                    index,
                });
            }
            Err(Error::TooManyHandles {
                path: path.to_owned(),
                max,
            })
        }

        /// Whether a live process holds holder `index`'s lock: for a peer to ask "is holder
        /// `index` alive?". `false` for an index the table does not have.
        pub fn is_attached(&self, index: u32) -> Result<bool> {
            if index >= self.core.layout.config.holders {
                return Ok(false);
            }
            self.map.is_locked(index)
        }

        /// The holder entries in use, with whether each holder lives.
        pub fn holders(&self) -> Result<Vec<HolderInfo>> {
            let mut out = Vec::new();
            for index in 0..self.core.layout.config.holders {
                if self.core.entry_word(index, E_STATE).load(Ordering::Acquire) == FREE {
                    continue;
                }
                let pid = self.core.entry_word(index, E_PID).load(Ordering::Relaxed);
                out.push(HolderInfo {
                    index,
                    // A pid beyond u32 can only come from a hostile peer; show it as 0.
                    pid: u32::try_from(pid).unwrap_or(0),
                    start_ticks: self.core.entry_word(index, E_START).load(Ordering::Relaxed),
                    alive: self.map.is_locked(index)?,
                });
            }
            Ok(out)
        }

        /// Registers to wait for a release: a count falling, a cap raised, a dead holder
        /// reaped. Calls `still_blocked` after registering, to re-check whatever the caller
        /// waits for: `false` unregisters and returns `None` (try again now); `true` returns the
        /// [`FutexWait`] to sleep on — with [`FutexWait::wait`], or an io_uring `FutexWait` on
        /// its `word()` and `value()` — then try again. No wake-up is lost between the re-check
        /// and the sleep.
        pub fn prepare_release_wait(
            &self,
            still_blocked: impl FnOnce() -> bool,
        ) -> Result<Option<FutexWait>> {
            self.map.check_len()?;
            let registered = RELEASED.register(&self.map.shm);
            // Made before the re-check, so that a panicking `still_blocked` unregisters too.
            let wait = FutexWait::new(self.map.clone(), RELEASED, registered);
            Ok(still_blocked().then_some(wait))
        }
    }

    impl std::fmt::Debug for Table {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Table")
                .field("path", &self.path())
                .field("config", &self.config())
                .finish()
        }
    }

    /// An attached holder: one count column in every row, and the lock that says it lives.
    /// `Send` and `Sync`: threads of one process may share it (its count updates are atomic
    /// read-modify-writes). Dropping it gives back everything it holds.
    pub struct Holder {
        table: Table,
        lock: File,
        index: u32,
    }

    impl Holder {
        /// The holder's index: its column in every row.
        pub fn index(&self) -> u32 {
            self.index
        }

        /// The table it holds units of.
        pub fn table(&self) -> &Table {
            &self.table
        }

        /// Takes one unit of row `row` if its count is below its cap (cap 0: always). Exact:
        /// however many holders in however many processes race, the count never exceeds the
        /// cap through acquisitions (a cap lowered under it excepted). May fail spuriously
        /// when another holder races for the last unit. Panics if `row` is out of range.
        #[track_caller]
        pub fn try_acquire(&self, row: usize) -> bool {
            self.table.core.try_acquire_with(self.index, row, |_| true)
        }

        /// As [`Holder::try_acquire`], and only if `admit(others)` is true, where `others` is
        /// the row's count without this acquisition: for a further bound, such as a bounded
        /// load. The unit is given back if `admit` refuses (or panics).
        #[track_caller]
        pub fn try_acquire_with(&self, row: usize, admit: impl FnOnce(u64) -> bool) -> bool {
            self.table.core.try_acquire_with(self.index, row, admit)
        }

        /// Gives back one unit of row `row` (never taking this holder's count below zero) and
        /// wakes release waiters. Release only what this holder acquired: a stray release while
        /// other units are held gives one of them back early. Panics if `row` is out of range.
        #[track_caller]
        pub fn release(&self, row: usize) {
            self.table.core.sub(self.index, row, 1);
        }

        /// Adds `n` to this holder's count in row `row`, with no cap check: the row as an
        /// uncapped gauge. Panics if `row` is out of range.
        #[track_caller]
        pub fn add(&self, row: usize, n: u32) {
            self.table.core.add(self.index, row, n);
        }

        /// Takes `n` from this holder's count in row `row` (saturating at zero) and wakes
        /// release waiters. Panics if `row` is out of range.
        #[track_caller]
        pub fn sub(&self, row: usize, n: u32) {
            self.table.core.sub(self.index, row, n);
        }

        /// This holder's count in row `row`. Panics if `row` is out of range.
        #[track_caller]
        pub fn held(&self, row: usize) -> u32 {
            self.table.core.held(self.index, row)
        }

        /// Reaps every dead holder — an entry in use whose lock this holder can take: zeroes
        /// its columns, frees its entry, and wakes release waiters. Returns how many holders
        /// were reaped. Costs a pass over the rows per dead holder.
        pub fn reap(&self) -> Result<usize> {
            let core = &self.table.core;
            let path = self.table.map.path();
            let mut reaped = 0;
            for index in 0..core.layout.config.holders {
                if index == self.index {
                    continue;
                }
                let state = core.entry_word(index, E_STATE);
                if state.load(Ordering::Acquire) == FREE {
                    continue;
                }
                if !sys::try_lock(&self.lock, index).map_err(|e| Error::io("lock", path, e))? {
                    continue; // alive
                }
                // Still in use once we hold the lock (a holder dropping frees its entry before
                // it unlocks): its holder died.
                if state.load(Ordering::Acquire) != FREE {
                    core.zero_holder(index);
                    state.store(FREE, Ordering::Release);
                    reaped += 1;
                }
                sys::unlock(&self.lock, index).map_err(|e| Error::io("unlock", path, e))?;
            }
            if reaped > 0 {
                core.wake_released();
            }
            Ok(reaped)
        }
    }

    impl Drop for Holder {
        fn drop(&mut self) {
            let core = &self.table.core;
            core.zero_holder(self.index);
            core.entry_word(self.index, E_STATE)
                .store(FREE, Ordering::Release);
            // Closing the file drops the lock too; unlock first in case a child forked without
            // exec still shares this file description.
            let _ = sys::unlock(&self.lock, self.index);
        }
    }

    impl std::fmt::Debug for Holder {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Holder")
                .field("index", &self.index)
                .field("table", &self.table.path())
                .finish()
        }
    }
}
