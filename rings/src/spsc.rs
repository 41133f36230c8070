//! Single-producer single-consumer ring of variable-length records, in a shared segment.
//!
//! The algorithm is the classic Lamport ring with free-running indices (as in the Linux
//! io_uring submission and completion rings and in rtrb): the producer owns `tail`, the consumer
//! owns `head`, each index is a byte count that only grows (`wrapping_add`), the position in the
//! data area is `index & (capacity - 1)`. The producer keeps a cached copy of `head` and re-reads
//! it only when the ring looks full.
//!
//! Records are length-prefixed and 8-aligned: an 8-byte header (`len: u32`, `kind: u32`) then
//! the payload, padded to 8. A record never wraps: when it would not fit before the end of the
//! data area, a padding record fills the rest and the record starts at offset 0. So a record of
//! at most `capacity / 2 - 8` bytes always fits in an empty ring.
//!
//! The consumer learns of new records from their headers rather than from `tail`, as in the
//! FastForward queue (Giacomoni et al., PPoPP 2008): the eight bytes after the last published
//! record always hold an end marker (zero), and a publication writes the records, then the marker
//! after them, then `tail`, and last the first new header with Release. A waiting consumer polls
//! the header word at `head`, so a record reaches it in one cache-line transfer (header and the
//! start of the payload together) instead of two (`tail`, then the record). `tail` still says
//! how far the producer has published, for waiters, for `pending_bytes` and for a producer that
//! takes over after a crash. Because `tail` is stored before the header, `head <= tail` holds
//! at every moment.
//!
//! Segment layout (each line 128 bytes): header, `tail` line, `head` line, the "data" wait line,
//! the "space" wait line, then `capacity` bytes of data. See [`crate::wait`] for the waiting
//! protocol.
//!
//! The consumer trusts nothing it reads: `tail` must stay within `capacity` bytes ahead of
//! `head`, and every header must describe a record that fits inside both the published bytes and
//! the data area. Anything else is [`Error::Corrupt`], never an out-of-bounds access or an
//! endless loop. The producer likewise checks the `head` it reads.
//!
//! Record bytes move between the ring and the handles' own buffers by atomic word copies: a
//! [`Record`] dereferences to a copy taken by [`Consumer::peek`], and a [`Reservation`] is
//! written in the producer's buffer and copied into the ring at commit, so no reference into
//! memory the other process can write is ever handed out.

use crate::error::{Error, PushError};
use crate::primitive::{AtomicU64, Ordering, Shm};
use crate::wait::WaitLine;

const OFF_TAIL: usize = 128;
const OFF_HEAD: usize = 256;
const DATA_WAIT: WaitLine = WaitLine::at(384);
const SPACE_WAIT: WaitLine = WaitLine::at(512);
pub(crate) const OFF_DATA: usize = 640;

const REC_HEADER: u64 = 8;
const KIND_DATA: u32 = 0x5245_4301; // "REC", 1
const KIND_PAD: u32 = 0x5245_4302; // "REC", 2

/// The smallest data area a ring may have, in bytes.
pub const MIN_CAPACITY: usize = 64;
/// The largest data area a ring may have, in bytes (1 TiB).
pub const MAX_CAPACITY: usize = 1 << 40;

/// Checked SPSC geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RingLayout {
    capacity: u64,
}

impl RingLayout {
    pub(crate) fn new(capacity: usize) -> Result<RingLayout, Error> {
        Self::check(capacity as u64).map_err(|reason| Error::InvalidConfig { reason })
    }

    fn check(capacity: u64) -> Result<RingLayout, String> {
        if !capacity.is_power_of_two()
            || capacity < MIN_CAPACITY as u64
            || capacity > MAX_CAPACITY as u64
        {
            return Err(format!(
                "capacity {capacity} must be a power of two in {MIN_CAPACITY}..={MAX_CAPACITY}"
            ));
        }
        Ok(RingLayout { capacity })
    }

    pub(crate) fn from_params(params: [u64; 6]) -> Result<RingLayout, String> {
        if params[1..].iter().any(|&p| p != 0) {
            return Err("unused SPSC parameters are not zero".into());
        }
        Self::check(params[0])
    }

    pub(crate) fn total_len(&self) -> usize {
        OFF_DATA + self.capacity as usize
    }
}

#[cfg(not(loom))]
impl crate::segment::Layout for RingLayout {
    const KIND: crate::segment::RingKind = crate::segment::RingKind::Spsc;
    fn params(&self) -> [u64; 6] {
        [self.capacity, 0, 0, 0, 0, 0]
    }
    fn from_params(params: [u64; 6]) -> Result<Self, String> {
        RingLayout::from_params(params)
    }
    fn total_len(&self) -> usize {
        RingLayout::total_len(self)
    }
    /// The producer's and the consumer's.
    fn lock_count(&self) -> u32 {
        2
    }
}

#[inline]
fn tail_word(shm: &Shm) -> &AtomicU64 {
    // SAFETY: fixed, 8-aligned offset in the control area of every SPSC mapping; atomic only.
    unsafe { shm.u64(OFF_TAIL) }
}

#[inline]
fn head_word(shm: &Shm) -> &AtomicU64 {
    // SAFETY: as for `tail_word`.
    unsafe { shm.u64(OFF_HEAD) }
}

#[inline]
fn record_len(len: u64) -> u64 {
    REC_HEADER + len.next_multiple_of(8)
}

// The messages for corrupt rings are built out of line, so the hot paths that can report them
// stay small enough to inline into their callers.

#[cold]
#[inline(never)]
fn corrupt_indices(head: u64, tail: u64, capacity: u64) -> Error {
    Error::corrupt(format!(
        "SPSC indices out of range: head {head}, tail {tail}, capacity {capacity}"
    ))
}

#[cold]
#[inline(never)]
fn corrupt_head(head: u64, capacity: u64, published: u64) -> Error {
    Error::corrupt(format!(
        "SPSC head {head} is not within capacity {capacity} behind tail {published}"
    ))
}

#[cold]
#[inline(never)]
fn corrupt_overrun(len: u64, pos: u64, room: u64) -> Error {
    Error::corrupt(format!(
        "SPSC record of {len} bytes at {pos} overruns the ring ({room} bytes left before the end \
         of the data area or of the published bytes)"
    ))
}

#[cold]
#[inline(never)]
fn corrupt_header(header: u64, pos: u64) -> Error {
    Error::corrupt(format!(
        "SPSC record header {header:#018x} at {pos} is neither data nor padding that ends the \
         data area"
    ))
}

/// Checks a pair of indices read from shared memory.
#[inline]
fn check_indices(head: u64, tail: u64, capacity: u64) -> Result<(), Error> {
    let used = tail.wrapping_sub(head);
    if used > capacity || head % 8 != 0 || tail % 8 != 0 {
        return Err(corrupt_indices(head, tail, capacity));
    }
    Ok(())
}

/// The header word of the record at index `at`.
#[inline]
fn header_word(shm: &Shm, capacity: u64, at: u64) -> &AtomicU64 {
    // SAFETY: `at & (capacity - 1)` is below capacity and 8-aligned (indices are multiples of
    // 8), so the word lies inside the data area; header words are only accessed atomically.
    unsafe { shm.u64(OFF_DATA + (at & (capacity - 1)) as usize) }
}

/// The end marker: the header word after the last published record.
const END: u64 = 0;

/// The producer's side of the protocol, over any [`Shm`].
pub(crate) struct ProducerCore {
    shm: Shm,
    capacity: u64,
    /// Next write position, including records committed but not yet published.
    /// Invariant: `published <= tail`, and `tail + 8 <= cached_head + capacity` (wrapping): the
    /// end marker after the last staged record lies in free space.
    tail: u64,
    published: u64,
    cached_head: u64,
    /// The header of the first staged record, held back until [`Self::publish`]: until it is
    /// stored, the end marker in its place hides every record staged after it.
    held: u64,
}

impl ProducerCore {
    pub(crate) fn attach(shm: Shm, capacity: u64) -> Result<ProducerCore, Error> {
        let tail = tail_word(&shm).load(Ordering::Acquire);
        let head = head_word(&shm).load(Ordering::Acquire);
        check_indices(head, tail, capacity)?;
        let end = published_end(&shm, capacity, head, tail)?;
        if end != tail {
            // The last producer died between storing `tail` and the header that made the
            // records visible: they were never published, and their space is taken back.
            tail_word(&shm).store(end, Ordering::Release);
        }
        Ok(ProducerCore {
            shm,
            capacity,
            tail: end,
            published: end,
            cached_head: head,
            held: END,
        })
    }

    pub(crate) fn max_record(&self) -> usize {
        (self.capacity / 2 - REC_HEADER) as usize
    }

    /// Bytes free for records, after the end marker's eight.
    #[inline]
    fn free(&self) -> u64 {
        (self.capacity - self.tail.wrapping_sub(self.cached_head)).saturating_sub(REC_HEADER)
    }

    #[inline]
    fn refresh_head(&mut self, order: Ordering) -> Result<(), Error> {
        let head = head_word(&self.shm).load(order);
        // The consumer can only have released what was published, and never moves back: so
        // everything staged since still fits behind it.
        let behind = self.published.wrapping_sub(head);
        if behind > self.capacity || self.tail.wrapping_sub(head) > self.capacity || head % 8 != 0 {
            return Err(corrupt_head(head, self.capacity, self.published));
        }
        self.cached_head = head;
        Ok(())
    }

    /// Bytes a record of `len` takes from the ring at the current position, padding included.
    #[inline]
    fn needed(&self, len: usize) -> (u64, u64) {
        let need = record_len(len as u64);
        let off = self.tail & (self.capacity - 1);
        let contiguous = self.capacity - off;
        let pad = if contiguous < need { contiguous } else { 0 };
        (pad, need)
    }

    /// Whether a record of `len` fits now (reading `head` with `order` when the cache says no).
    #[inline]
    fn fits(&mut self, len: usize, order: Ordering) -> Result<bool, Error> {
        let (pad, need) = self.needed(len);
        if pad + need <= self.free() {
            return Ok(true);
        }
        self.refresh_head(order)?;
        Ok(pad + need <= self.free())
    }

    /// Reserves room for a record of `len` bytes; returns the payload offset in the mapping.
    #[inline]
    pub(crate) fn reserve(&mut self, len: usize) -> Result<usize, PushError> {
        if len > self.max_record() {
            return Err(PushError::TooLarge {
                len,
                max: self.max_record(),
            });
        }
        if !self.fits(len, Ordering::Acquire)? {
            // The consumer may be waiting for what we staged; let it have it.
            self.publish();
            return Err(PushError::Full);
        }
        let (pad, _) = self.needed(len);
        if pad > 0 {
            self.stage(pad, (pad - REC_HEADER) | (u64::from(KIND_PAD) << 32));
        }
        Ok(OFF_DATA + (self.tail & (self.capacity - 1)) as usize + REC_HEADER as usize)
    }

    /// Stages the record of `total` bytes at `tail` whose payload is written: the end marker
    /// goes after it, then its header, unless it is the first staged record, whose header waits
    /// for [`Self::publish`].
    #[inline]
    fn stage(&mut self, total: u64, header: u64) {
        let next = self.tail.wrapping_add(total);
        debug_assert!(
            next.wrapping_add(REC_HEADER).wrapping_sub(self.cached_head) <= self.capacity
        );
        // Relaxed is enough for both: the consumer reaches these words only through the
        // Release store of the first staged header, which comes after them.
        header_word(&self.shm, self.capacity, next).store(END, Ordering::Relaxed);
        if self.tail == self.published {
            self.held = header;
        } else {
            header_word(&self.shm, self.capacity, self.tail).store(header, Ordering::Relaxed);
        }
        self.tail = next;
    }

    /// Stages the record reserved at the current position; visible after [`Self::publish`].
    #[inline]
    pub(crate) fn commit(&mut self, len: usize) {
        let header = len as u64 | (u64::from(KIND_DATA) << 32);
        self.stage(record_len(len as u64), header);
    }

    /// Makes every staged record visible to the consumer and wakes it if it sleeps.
    #[inline]
    pub(crate) fn publish(&mut self) {
        if self.tail != self.published {
            // `tail` first, so that `head <= tail` holds whenever the consumer looks.
            tail_word(&self.shm).store(self.tail, Ordering::Release);
            header_word(&self.shm, self.capacity, self.published)
                .store(self.held, Ordering::Release);
            self.published = self.tail;
            self.held = END;
            DATA_WAIT.wake(&self.shm);
        }
    }

    /// Writes `data` as the payload of the record just reserved at `off` and stages it.
    #[inline]
    pub(crate) fn commit_copy(&mut self, off: usize, data: &[u8]) {
        debug_assert_eq!(
            off,
            OFF_DATA + (self.tail & (self.capacity - 1)) as usize + REC_HEADER as usize
        );
        // SAFETY: `reserve` returned room at `off` (8-aligned) for a record of `data.len()`
        // payload bytes padded to 8, which this side owns until it publishes them.
        unsafe { self.shm.write(off, data) };
        self.commit(data.len());
    }

    /// Copies `data` into the ring as a staged record.
    #[inline]
    pub(crate) fn stage_copy(&mut self, data: &[u8]) -> Result<(), PushError> {
        let off = self.reserve(data.len())?;
        self.commit_copy(off, data);
        Ok(())
    }

    #[inline]
    pub(crate) fn push(&mut self, data: &[u8]) -> Result<(), PushError> {
        self.stage_copy(data)?;
        self.publish();
        Ok(())
    }

    /// Bytes free for records now (re-reading the consumer's index).
    pub(crate) fn free_bytes(&mut self) -> Result<usize, Error> {
        self.refresh_head(Ordering::Acquire)?;
        Ok(self.free() as usize)
    }
}

/// One record found by [`ConsumerCore::peek`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Found {
    pub(crate) off: usize,
    pub(crate) len: usize,
    total: u64,
}

/// What the header at `at` says, checked against the data area.
///
/// Plain data, corrupt headers included, rather than a `Result` with [`Error`]: a result that
/// carries an owned error is moved through memory, and reading the found record back from the
/// two stores that wrote it stalled store-to-load forwarding (a third of a pop's time on an AMD
/// EPYC). The error is built only on the cold path, by [`Header::into_result`].
#[derive(Clone, Copy)]
enum Header {
    /// The end marker: nothing published here yet.
    End,
    /// A data record: payload offset in the mapping, payload length, and bytes taken in all.
    Data(Found),
    /// Padding: skip this many bytes, to the end of the data area.
    Pad(u64),
    /// A record of `len` bytes at `pos` with only `room` bytes left for it.
    Overrun { len: u64, pos: u64, room: u64 },
    /// A header that is neither data nor padding that ends the data area.
    Bad { header: u64, pos: u64 },
}

impl Header {
    /// A corrupt header as the error it is; anything else as itself.
    #[inline]
    fn into_result(self) -> Result<Header, Error> {
        match self {
            Header::Overrun { len, pos, room } => Err(corrupt_overrun(len, pos, room)),
            Header::Bad { header, pos } => Err(corrupt_header(header, pos)),
            h => Ok(h),
        }
    }
}

/// Reads and checks the header of the record at index `at` (Acquire: a record's bytes are
/// visible once its header is). Never trusts it: a record must fit in what remains of the data
/// area, padding must run exactly to its end.
#[inline]
fn read_header(shm: &Shm, capacity: u64, at: u64) -> Header {
    let header = header_word(shm, capacity, at).load(Ordering::Acquire);
    if header == END {
        return Header::End;
    }
    let pos = at & (capacity - 1);
    let contiguous = capacity - pos;
    let (len, kind) = (header & 0xffff_ffff, (header >> 32) as u32);
    match kind {
        KIND_DATA => {
            let total = record_len(len);
            if total > contiguous || len > capacity / 2 {
                return Header::Overrun {
                    len,
                    pos,
                    room: contiguous,
                };
            }
            let off = OFF_DATA + pos as usize;
            // A record of more than 56 bytes spans two cache lines: start the second one's
            // transfer now, while the header's line is in hand, rather than on the first read
            // that touches it.
            let line = off & !63;
            if off + total as usize > line + 64 {
                shm.prefetch(line + 64);
            }
            Header::Data(Found {
                off: off + REC_HEADER as usize,
                len: len as usize,
                total,
            })
        }
        KIND_PAD if REC_HEADER + len == contiguous => Header::Pad(contiguous),
        _ => Header::Bad { header, pos },
    }
}

/// Where the published records end, walking their headers from `head` (the consumer's published
/// index) towards `tail`: at `tail`, unless a producer died after storing `tail` but before the
/// header that published the records behind it, in which case the walk stops at the end marker
/// that still hides them. Bounded by `tail - head <= capacity` bytes.
fn published_end(shm: &Shm, capacity: u64, head: u64, tail: u64) -> Result<u64, Error> {
    let mut at = head;
    while at != tail {
        let step = match read_header(shm, capacity, at) {
            Header::End => return Ok(at),
            Header::Data(found) => found.total,
            Header::Pad(skip) => skip,
            corrupt @ (Header::Overrun { .. } | Header::Bad { .. }) => {
                return corrupt.into_result().map(|_| at);
            }
        };
        if step > tail.wrapping_sub(at) {
            return Err(corrupt_overrun(
                step,
                at & (capacity - 1),
                tail.wrapping_sub(at),
            ));
        }
        at = at.wrapping_add(step);
    }
    Ok(at)
}

/// The consumer's side of the protocol, over any [`Shm`].
pub(crate) struct ConsumerCore {
    shm: Shm,
    capacity: u64,
    /// Next read position, including records released but not yet published.
    /// Invariant: `published <= head`, and the header at `head` is a record or the end marker.
    head: u64,
    published: u64,
}

impl ConsumerCore {
    pub(crate) fn attach(shm: Shm, capacity: u64) -> Result<ConsumerCore, Error> {
        let head = head_word(&shm).load(Ordering::Acquire);
        let tail = tail_word(&shm).load(Ordering::Acquire);
        check_indices(head, tail, capacity)?;
        Ok(ConsumerCore {
            shm,
            capacity,
            head,
            published: head,
        })
    }

    /// The next record, if one is published. Skips padding. Reads at most two headers.
    #[inline]
    pub(crate) fn peek(&mut self) -> Result<Option<Found>, Error> {
        for _ in 0..2 {
            match read_header(&self.shm, self.capacity, self.head) {
                Header::Data(found) => return Ok(Some(found)),
                Header::Pad(skip) => self.head = self.head.wrapping_add(skip),
                Header::End => {
                    // A polling consumer also keeps asking for the line after the header's, where
                    // a record of more than 56 bytes goes on: when the header appears, that line
                    // is already on its way instead of being asked for only then (it shortens
                    // the round trip of a 64-byte record: `round_trip` in `bench/rings.rs`).
                    let line = (OFF_DATA + (self.head & (self.capacity - 1)) as usize) & !63;
                    self.shm.prefetch(line + 64);
                    // About to report empty: the producer may be waiting for the space we hold.
                    self.publish();
                    return Ok(None);
                }
                corrupt @ (Header::Overrun { .. } | Header::Bad { .. }) => {
                    return corrupt.into_result().map(|_| None);
                }
            }
        }
        Err(Error::corrupt("SPSC padding followed by padding"))
    }

    /// Frees a record returned by `peek`. The space goes back to the producer at the next
    /// publication: when the ring is found empty, when a quarter of it has been released, or on
    /// [`Self::publish`].
    #[inline]
    pub(crate) fn release(&mut self, found: Found) {
        self.head = self.head.wrapping_add(found.total);
        if self.head.wrapping_sub(self.published) >= self.capacity / 4 {
            self.publish();
        }
    }

    #[inline]
    pub(crate) fn publish(&mut self) {
        if self.head != self.published {
            head_word(&self.shm).store(self.head, Ordering::Release);
            self.published = self.head;
            SPACE_WAIT.wake(&self.shm);
        }
    }

    #[inline]
    pub(crate) fn pop(&mut self, out: &mut Vec<u8>) -> Result<bool, Error> {
        match self.peek()? {
            None => Ok(false),
            Some(found) => {
                self.copy_out(found, out);
                self.release(found);
                Ok(true)
            }
        }
    }

    /// Copies the payload of a record returned by `peek` into `out`, replacing its contents.
    #[inline]
    pub(crate) fn copy_out(&self, found: Found, out: &mut Vec<u8>) {
        // Zero-fill only what the vector grows by: every byte is overwritten below, so a reused
        // buffer pays no memset.
        if out.len() < found.len {
            out.resize(found.len, 0);
        } else {
            out.truncate(found.len);
        }
        // SAFETY: `peek` checked that the payload, padded to 8, lies inside the data area (at an
        // 8-aligned offset), in a record published by the header it loaded with Acquire.
        unsafe { self.shm.read(found.off, out) };
    }

    /// Whether a record is published at `head`: the waiter's re-check in the wait protocol.
    fn has_data_seqcst(&mut self) -> Result<bool, Error> {
        Ok(!matches!(
            read_header(&self.shm, self.capacity, self.head).into_result()?,
            Header::End
        ))
    }

    pub(crate) fn pending_bytes(&mut self) -> Result<usize, Error> {
        let tail = tail_word(&self.shm).load(Ordering::Acquire);
        check_indices(self.head, tail, self.capacity)?;
        Ok(tail.wrapping_sub(self.head) as usize)
    }
}

#[cfg(not(loom))]
pub use self::handles::{Consumer, Producer, Record, Reservation, create};

#[cfg(not(loom))]
mod handles {
    use super::*;
    use crate::error::Result;
    use crate::segment::{self, Mapping};
    use crate::wait::{FutexWait, block};
    use std::cell::Cell;
    use std::fs::File;
    use std::marker::PhantomData;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    const PRODUCER_LOCK: u32 = 0;
    const CONSUMER_LOCK: u32 = 1;

    /// Longest single sleep of a blocking call; bounds how late a timeout is noticed.
    const PARK_SLICE: Duration = Duration::from_millis(500);

    fn attach_lock(map: &Mapping, index: u32, role: &'static str) -> Result<File> {
        let file = map.reopen()?;
        match crate::sys::try_lock(&file, index) {
            Ok(true) => Ok(file),
            Ok(false) => Err(Error::Busy {
                path: map.path().to_owned(),
                role,
            }),
            Err(e) => Err(Error::io("lock", map.path(), e)),
        }
    }

    /// Creates a ring segment at `path` with `capacity` bytes of data (a power of two, at least
    /// [`MIN_CAPACITY`]) and attaches both ends, for when both live in this process (or one end
    /// is handed to a child).
    pub fn create(path: impl AsRef<Path>, capacity: usize) -> Result<(Producer, Consumer)> {
        let producer = Producer::create(path.as_ref(), capacity)?;
        let consumer = Consumer::attach(producer.map.clone(), producer.capacity)?;
        Ok((producer, consumer))
    }

    /// The writing end of an SPSC ring. `Send`, not `Sync`; at most one per ring, across all
    /// processes (an OFD lock on the segment enforces it and dies with its holder).
    pub struct Producer {
        core: ProducerCore,
        capacity: u64,
        map: Arc<Mapping>,
        /// Where a [`Reservation`] is written before its commit copies it into the ring.
        staging: Vec<u8>,
        _lock: File,
        _not_sync: PhantomData<Cell<()>>,
    }

    impl Producer {
        /// Creates a ring segment at `path` and attaches as its producer.
        pub fn create(path: impl AsRef<Path>, capacity: usize) -> Result<Producer> {
            let layout = RingLayout::new(capacity)?;
            let map = Arc::new(segment::create(path.as_ref(), &layout)?);
            Producer::attach(map, layout.capacity)
        }

        /// Attaches as the producer of the ring at `path`. Records published by an earlier
        /// producer stay; whatever it reserved but never published is gone.
        pub fn open(path: impl AsRef<Path>) -> Result<Producer> {
            Producer::open_with(path, Duration::ZERO)
        }

        /// As [`Producer::open`], waiting up to `wait` for the segment to appear and be published.
        pub fn open_with(path: impl AsRef<Path>, wait: Duration) -> Result<Producer> {
            let (map, layout) = segment::open::<RingLayout>(path.as_ref(), wait)?;
            Producer::attach(Arc::new(map), layout.capacity)
        }

        fn attach(map: Arc<Mapping>, capacity: u64) -> Result<Producer> {
            crate::wait::register_process();
            let lock = attach_lock(&map, PRODUCER_LOCK, "producer")?;
            let core = ProducerCore::attach(map.shm, capacity)?;
            Ok(Producer {
                core,
                capacity,
                map,
                staging: Vec::new(),
                _lock: lock,
                _not_sync: PhantomData,
            })
        }

        /// The largest record this ring accepts: `capacity / 2 - 8`.
        pub fn max_record(&self) -> usize {
            self.core.max_record()
        }

        /// The data area's size in bytes.
        pub fn capacity(&self) -> usize {
            self.capacity as usize
        }

        /// Reserves room in the ring for a record of `len` bytes, to be written through the
        /// returned [`Reservation`] (which starts zeroed). Says [`PushError::Full`] at once when
        /// there is no room; never blocks.
        #[inline]
        pub fn reserve(&mut self, len: usize) -> Result<Reservation<'_>, PushError> {
            let off = self.core.reserve(len)?;
            self.staging.clear();
            self.staging.resize(len, 0);
            Ok(Reservation {
                producer: self,
                off,
            })
        }

        /// Makes committed records visible to the consumer, and wakes it if it sleeps.
        #[inline]
        pub fn publish(&mut self) {
            self.core.publish();
        }

        /// Copies `record` into the ring and publishes it. [`PushError::Full`] at once when there
        /// is no room.
        #[inline]
        pub fn push(&mut self, record: &[u8]) -> Result<(), PushError> {
            self.core.push(record)
        }

        /// Bytes free now (padding at the wrap may take some of them).
        pub fn free_bytes(&mut self) -> Result<usize> {
            self.core.free_bytes()
        }

        /// Blocks until a record of `len` bytes fits, or `timeout` passes (`Ok(false)`).
        pub fn wait_for_space(&mut self, len: usize, timeout: Option<Duration>) -> Result<bool> {
            if len > self.max_record() {
                return Err(Error::InvalidConfig {
                    reason: format!("record of {len} bytes exceeds {}", self.max_record()),
                });
            }
            block(
                self,
                timeout,
                PARK_SLICE,
                |p| p.core.fits(len, Ordering::Acquire),
                |p| p.prepare_space_wait(len),
            )
        }

        /// Registers to wait until a record of `len` bytes fits. `None`: it fits now. `Some`:
        /// sleep on the returned futex (directly, or with an io_uring `FutexWait`), then try
        /// again. Staged records are published first, so the consumer can make progress.
        pub fn prepare_space_wait(&mut self, len: usize) -> Result<Option<FutexWait>> {
            self.map.check_len()?;
            self.core.publish();
            let registered = SPACE_WAIT.register(&self.map.shm);
            match self.core.fits(len, Ordering::Acquire) {
                Ok(false) => Ok(Some(FutexWait::new(
                    self.map.clone(),
                    SPACE_WAIT,
                    registered,
                ))),
                other => {
                    SPACE_WAIT.unregister(&self.map.shm);
                    other.map(|_| None)
                }
            }
        }

        /// Flushes the segment to its file's storage (msync). For rings on a real filesystem
        /// whose queued records must survive a reboot.
        pub fn sync(&self) -> Result<()> {
            self.map.sync()
        }
    }

    impl Drop for Producer {
        fn drop(&mut self) {
            self.core.publish();
        }
    }

    /// Room for one record. [`Reservation::commit`] stages it; dropping it discards it.
    ///
    /// It dereferences to a buffer of the producer's own, not to the ring: the ring is memory
    /// that the consumer's process can write too, and a `&mut [u8]` into it would be undefined
    /// behaviour should that process break the protocol and write there. The commit copies the
    /// buffer into the reserved room, in atomic word stores.
    pub struct Reservation<'a> {
        producer: &'a mut Producer,
        off: usize,
    }

    impl Reservation<'_> {
        /// Stages the record; the consumer sees it after [`Producer::publish`] (or the next
        /// [`Producer::push`], or when the producer is dropped).
        #[inline]
        pub fn commit(self) {
            let p = self.producer;
            p.core.commit_copy(self.off, &p.staging);
        }

        /// Stages and publishes the record.
        #[inline]
        pub fn commit_and_publish(self) {
            let p = self.producer;
            p.core.commit_copy(self.off, &p.staging);
            p.core.publish();
        }
    }

    impl std::ops::Deref for Reservation<'_> {
        type Target = [u8];
        fn deref(&self) -> &[u8] {
            &self.producer.staging
        }
    }

    impl std::ops::DerefMut for Reservation<'_> {
        fn deref_mut(&mut self) -> &mut [u8] {
            &mut self.producer.staging
        }
    }

    /// The reading end of an SPSC ring. `Send`, not `Sync`; at most one per ring.
    pub struct Consumer {
        core: ConsumerCore,
        map: Arc<Mapping>,
        /// The bytes of the record last peeked, copied out of the ring.
        record: Vec<u8>,
        _lock: File,
        _not_sync: PhantomData<Cell<()>>,
    }

    impl Consumer {
        /// Creates a ring segment at `path` and attaches as its consumer.
        pub fn create(path: impl AsRef<Path>, capacity: usize) -> Result<Consumer> {
            let layout = RingLayout::new(capacity)?;
            let map = Arc::new(segment::create(path.as_ref(), &layout)?);
            Consumer::attach(map, layout.capacity)
        }

        /// Attaches as the consumer of the ring at `path`. Records a crashed consumer peeked but
        /// never released are delivered again.
        pub fn open(path: impl AsRef<Path>) -> Result<Consumer> {
            Consumer::open_with(path, Duration::ZERO)
        }

        /// As [`Consumer::open`], waiting up to `wait` for the segment to appear and be published.
        pub fn open_with(path: impl AsRef<Path>, wait: Duration) -> Result<Consumer> {
            let (map, layout) = segment::open::<RingLayout>(path.as_ref(), wait)?;
            Consumer::attach(Arc::new(map), layout.capacity)
        }

        fn attach(map: Arc<Mapping>, capacity: u64) -> Result<Consumer> {
            crate::wait::register_process();
            let lock = attach_lock(&map, CONSUMER_LOCK, "consumer")?;
            let core = ConsumerCore::attach(map.shm, capacity)?;
            Ok(Consumer {
                core,
                map,
                record: Vec::new(),
                _lock: lock,
                _not_sync: PhantomData,
            })
        }

        /// The next record, copied out of the ring; `None` when the ring is empty. Release it
        /// with [`Record::release`]; dropping it leaves it in the ring, to be read again.
        #[inline]
        pub fn peek(&mut self) -> Result<Option<Record<'_>>> {
            let Some(found) = self.core.peek()? else {
                return Ok(None);
            };
            self.core.copy_out(found, &mut self.record);
            Ok(Some(Record {
                consumer: self,
                found,
            }))
        }

        /// Copies the next record into `out` (replacing its contents) and releases it. `false`
        /// when the ring is empty.
        #[inline]
        pub fn pop(&mut self, out: &mut Vec<u8>) -> Result<bool> {
            self.core.pop(out)
        }

        /// Returns released space to the producer now (it is otherwise returned in batches).
        #[inline]
        pub fn publish(&mut self) {
            self.core.publish();
        }

        /// Bytes published and not yet read.
        pub fn pending_bytes(&mut self) -> Result<usize> {
            self.core.pending_bytes()
        }

        /// Blocks until a record is available or `timeout` passes (`Ok(false)`). Spins briefly,
        /// then sleeps on the ring's futex: an idle consumer costs no CPU.
        pub fn wait_for_data(&mut self, timeout: Option<Duration>) -> Result<bool> {
            block(
                self,
                timeout,
                PARK_SLICE,
                |c| Ok(c.core.peek()?.is_some()),
                Consumer::prepare_data_wait,
            )
        }

        /// Registers to wait for data. `None`: a record is available now. `Some`: sleep on the
        /// returned futex (directly, or with an io_uring `FutexWait`), then try again. Released
        /// space is returned to the producer first.
        pub fn prepare_data_wait(&mut self) -> Result<Option<FutexWait>> {
            self.map.check_len()?;
            self.core.publish();
            let registered = DATA_WAIT.register(&self.map.shm);
            match self.core.has_data_seqcst() {
                Ok(false) => Ok(Some(FutexWait::new(
                    self.map.clone(),
                    DATA_WAIT,
                    registered,
                ))),
                other => {
                    DATA_WAIT.unregister(&self.map.shm);
                    other.map(|_| None)
                }
            }
        }
    }

    impl Drop for Consumer {
        fn drop(&mut self) {
            self.core.publish();
        }
    }

    /// A record peeked from the ring: its space stays taken until [`Record::release`].
    ///
    /// It dereferences to a copy of the record in the consumer's own buffer, taken by
    /// [`Consumer::peek`], not to the ring: the ring is memory that the producer's process can
    /// write too, and a `&[u8]` into it would be undefined behaviour should that process break
    /// the protocol and write there while the slice lives. A producer that does so can at worst
    /// make the copy differ from what it published.
    pub struct Record<'a> {
        consumer: &'a mut Consumer,
        found: Found,
    }

    impl Record<'_> {
        /// Frees the record's space (returned to the producer in batches).
        #[inline]
        pub fn release(self) {
            self.consumer.core.release(self.found);
        }
    }

    impl std::ops::Deref for Record<'_> {
        type Target = [u8];
        fn deref(&self) -> &[u8] {
            &self.consumer.record
        }
    }
}

/// Heap-backed ends for the loom models.
#[cfg(loom)]
pub(crate) fn model_pair(capacity: u64) -> (ProducerCore, ConsumerCore) {
    let shm = Shm::zeroed(OFF_DATA + capacity as usize);
    let p = ProducerCore::attach(shm.clone(), capacity).expect("fresh ring");
    let c = ConsumerCore::attach(shm, capacity).expect("fresh ring");
    (p, c)
}
