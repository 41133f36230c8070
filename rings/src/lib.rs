//! Lock-free SPSC and MPMC rings, and a table of exact counters, in shared memory, safe across
//! processes.
//!
//! Any Linux program can create a ring at a path (under /dev/shm, or on a real filesystem where
//! queued records must survive a reboot) and any other can attach to it by that path. The crate
//! knows nothing of who uses it.
//!
//! - [`spsc`]: one producer, one consumer, variable-length records in a byte ring. The index
//!   protocol is Lamport's single-producer single-consumer ring
//!   (L. Lamport, "Specifying Concurrent Program Modules", 1983) with free-running indices and
//!   cached opposite indices, as in the Linux io_uring rings and rtrb.
//! - [`mpmc`]: many producers, competing consumers, bounded records in fixed slots. The slot
//!   protocol is Dmitry Vyukov's bounded MPMC queue (1024cores.net, "Bounded MPMC queue";
//!   per-slot sequence stamps; crossbeam's
//!   `ArrayQueue` is the same algorithm), extended so that a slot's stamp also names which handle
//!   is writing or claiming it: a crashed producer's half-written slot and a crashed consumer's
//!   claim are found and recovered, with an attempt count and a dead-letter ring.
//! - [`table`]: rows of capacities, application words and per-holder counts — counting
//!   semaphores that are exact across processes (increment one's own column, then read every
//!   column) and that a crashed holder cannot leak (its column is zeroed by whoever takes over
//!   its lock).
//! - Waiting ([`wait`]): an event count on a shared futex word, usable from `futex(2)` and from
//!   an io_uring `FutexWait`; no wake-up is lost (Dekker's pattern), with asymmetric barriers
//!   (`membarrier(2)` on the sleeping side, as in liburcu) so the per-record path has no locked
//!   instruction.
//! - Liveness of handles: an open-file-description lock per handle, which the kernel releases
//!   when its holder dies — immune to PID reuse.
//! - Segments ([`segment`]): a header with magic, version, geometry, creator identity and a
//!   checksum; atomic creation by `O_TMPFILE` + `linkat`; size checked before mapping.
//!
//! # Against a corrupt or hostile peer
//!
//! Two guarantees hold whatever another process writes into a segment, at any moment:
//!
//! - **Bounds.** Everything read from shared memory is checked before it is used as a length or
//!   an index: a corrupt or hostile peer gets an [`Error::Corrupt`], never an out-of-bounds
//!   access or an endless loop.
//! - **No data race in this process.** Every access this process makes to a segment is atomic:
//!   index words, stamps and counts are atomics, and record bytes are copied in and out with
//!   relaxed atomic loads and stores of whole words. No reference to plain bytes in a segment is
//!   ever handed out: a peeked [`spsc::Record`], an [`mpmc::Claim`] and an [`spsc::Reservation`]
//!   dereference to a copy in the handle's own memory. (A `&[u8]` into memory that another
//!   process may write while it lives would be undefined behaviour in Rust's memory model.)
//!
//! What a hostile peer can still do is change values: a record's bytes, copied while it writes
//! them, may differ from what was published (torn between words), and counts and positions may
//! be wrong. It cannot make this process fault or its reads undefined.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
// The loom build keeps only the protocol cores in use; the file-backed handles are compiled out.
#![cfg_attr(loom, allow(dead_code, unused_imports))]

pub mod error;
pub mod mpmc;
mod primitive;
#[cfg(not(loom))]
pub mod segment;
pub mod spsc;
mod sys;
pub mod table;
pub mod wait;

pub use error::{Error, PushError, Result};
#[cfg(not(loom))]
pub use segment::{LAYOUT_VERSION, RingKind, SegmentInfo, inspect, remove_stale};
pub use sys::ProcessId;
#[cfg(not(loom))]
pub use wait::FutexWait;

/// The lock count and total length of a segment of `kind` with these header parameters, checked
/// by that kind's layout. The crate root declares every ring module, so the list of kinds and
/// their layouts lives here and [`segment`] names none of them.
#[cfg(not(loom))]
pub(crate) fn kind_geometry(
    kind: RingKind,
    params: [u64; 6],
) -> std::result::Result<(u32, usize), String> {
    match kind {
        RingKind::Spsc => segment::geometry::<spsc::RingLayout>(params),
        RingKind::Mpmc => segment::geometry::<mpmc::QueueLayout>(params),
        RingKind::Table => segment::geometry::<table::TableLayout>(params),
    }
}

/// Heap-backed ends for the loom models (`RUSTFLAGS="--cfg loom"`); not part of the API.
#[cfg(loom)]
#[doc(hidden)]
pub mod model {
    use crate::PushError;

    /// The SPSC producer protocol over loom atomics.
    pub struct SpscProducer(crate::spsc::ProducerCore);
    /// The SPSC consumer protocol over loom atomics.
    pub struct SpscConsumer(crate::spsc::ConsumerCore);

    /// A ring of `capacity` bytes and its two ends.
    pub fn spsc(capacity: u64) -> (SpscProducer, SpscConsumer) {
        let (p, c) = crate::spsc::model_pair(capacity);
        (SpscProducer(p), SpscConsumer(c))
    }

    impl SpscProducer {
        /// `false` when full.
        pub fn push(&mut self, data: &[u8]) -> bool {
            match self.0.push(data) {
                Ok(()) => true,
                Err(PushError::Full) => false,
                Err(e) => panic!("{e}"),
            }
        }

        /// Writes a record without publishing it; `false` when full (which publishes).
        pub fn stage(&mut self, data: &[u8]) -> bool {
            match self.0.stage_copy(data) {
                Ok(()) => true,
                Err(PushError::Full) => false,
                Err(e) => panic!("{e}"),
            }
        }

        /// Publishes every staged record.
        pub fn publish(&mut self) {
            self.0.publish();
        }
    }

    impl SpscConsumer {
        /// `false` when empty.
        pub fn pop(&mut self, out: &mut Vec<u8>) -> bool {
            self.0.pop(out).expect("consistent ring")
        }
    }

    /// The MPMC slot protocol over loom atomics; `me` is the handle index.
    #[derive(Clone)]
    pub struct Queue(crate::mpmc::QueueCore);

    /// A queue of `capacity` slots of `max_record` bytes.
    pub fn queue(capacity: usize, max_record: usize) -> Queue {
        Queue(crate::mpmc::model_queue(capacity, max_record))
    }

    impl Queue {
        /// `false` when full.
        pub fn push(&self, me: u32, data: &[u8]) -> bool {
            match self.0.push(false, me, data, 0) {
                Ok(()) => true,
                Err(PushError::Full) => false,
                Err(e) => panic!("{e}"),
            }
        }

        /// Claims, copies out and frees a record; its attempt count, or `None` when empty.
        pub fn pop(&self, me: u32, out: &mut Vec<u8>) -> Option<u32> {
            self.0.pop(me, out).expect("consistent queue")
        }

        /// Leaves a slot WRITING by `id` forever, as a killed producer would.
        pub fn abandon_write(&self, id: u32) -> bool {
            self.0.model_abandon_write(id)
        }

        /// Recovers dead handle `dead`'s slots, acting as `me`.
        pub fn recover(&self, me: u32, dead: u32) -> bool {
            self.0.recover(me, dead).expect("consistent queue")
        }
    }

    /// The table's counting protocol over loom atomics; `me` is the holder index.
    #[derive(Clone)]
    pub struct Table(crate::table::TableCore);

    /// A table of `rows` rows, each capped at `cap`, with `holders` count columns.
    pub fn table(rows: usize, holders: u32, cap: u32) -> Table {
        Table(crate::table::model_table(rows, holders, cap))
    }

    impl Table {
        /// Takes a unit of `row` as holder `me`; `false` when the row is full (or on a race).
        pub fn try_acquire(&self, me: u32, row: usize) -> bool {
            self.0.try_acquire_with(me, row, |_| true)
        }

        /// Gives back a unit of `row` as holder `me`.
        pub fn release(&self, me: u32, row: usize) {
            self.0.sub(me, row, 1)
        }

        /// The row's count.
        pub fn count(&self, row: usize) -> u64 {
            self.0.count(row)
        }

        /// Zeroes holder `dead`'s columns, as a reaper holding its lock does.
        pub fn reap(&self, dead: u32) -> bool {
            self.0.zero_holder(dead)
        }

        /// Registers for a release, re-checks with `still_blocked`, and if still blocked waits
        /// (yielding) until a waker moves the futex word.
        pub fn wait_for_release(&self, still_blocked: impl FnOnce() -> bool) {
            self.0.model_wait_for_release(still_blocked)
        }
    }
}
