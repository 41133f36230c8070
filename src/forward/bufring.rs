//! A provided buffer ring: receive buffers the kernel picks from as data arrives.
//!
//! Multishot receives take a buffer from this ring for each completion; the forwarder sends
//! straight from that buffer and hands it back only when the send has completed, so the relay
//! copies nothing in user space. The ring layout is the kernel's (`io_uring_buf_ring`): an array
//! of `{addr, len, bid}` entries whose first entry's reserved field is the tail index.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;
use io_uring::types::BufRingEntry;
use memmap2::MmapMut;

/// The receive buffers of one forwarder.
pub struct BufRing {
    /// Ring entries, shared with the kernel.
    entries: MmapMut,
    /// The buffers themselves, `count × size` bytes.
    memory: MmapMut,
    count: u16,
    size: u32,
    /// Next tail to publish; the kernel sees buffers up to the last published tail only.
    tail: u16,
    /// Buffers the kernel may still pick (published, not yet taken): for starvation decisions.
    available: u32,
    group: u16,
}

impl BufRing {
    /// Maps `count` buffers of `size` bytes, registers them as buffer group `group` and offers
    /// every buffer to the kernel. `count` must be a power of two no larger than 32768.
    pub fn new(submitter: &Submitter<'_>, group: u16, count: u16, size: u32) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 1 << 15 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("buffer count {count} must be a power of two up to 32768"),
            ));
        }
        let entry_bytes = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        let entries = MmapMut::map_anon(entry_bytes)?;
        let memory = MmapMut::map_anon(usize::from(count) * size as usize)?;
        // SAFETY: `entries` is a page-aligned mapping of exactly `count` entries that lives as long
        // as this `BufRing`; the forwarder drops its ring (which unregisters the group) before
        // dropping this struct.
        unsafe {
            submitter.register_buf_ring_with_flags(entries.as_ptr() as u64, count, group, 0)?;
        }
        let mut ring = Self {
            entries,
            memory,
            count,
            size,
            tail: 0,
            available: 0,
            group,
        };
        for bid in 0..count {
            ring.give_back(bid);
        }
        ring.publish();
        Ok(ring)
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    /// Buffers the kernel can still receive into.
    pub fn available(&self) -> u32 {
        self.available
    }

    /// Notes that the kernel took a buffer (a receive completion carried it).
    pub fn taken(&mut self) {
        self.available = self.available.saturating_sub(1);
    }

    /// Address of byte `offset` of buffer `bid`, for a send. `bid` comes from a completion of
    /// this ring's group and `offset` is below the length that completion reported.
    pub fn ptr(&self, bid: u16, offset: u32) -> *const u8 {
        debug_assert!(bid < self.count && offset < self.size);
        let at = usize::from(bid) * self.size as usize + offset as usize;
        self.memory[at..].as_ptr()
    }

    /// Offers buffer `bid` to the kernel again (visible after the next [`Self::publish`]).
    pub fn give_back(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        let mask = self.count - 1;
        let slot = usize::from(self.tail & mask);
        let addr = self.memory.as_ptr() as u64 + u64::from(bid) * u64::from(self.size);
        let base = self.entries.as_mut_ptr().cast::<BufRingEntry>();
        // SAFETY: `slot < count`, so the entry lies inside the `entries` mapping; the kernel only
        // reads entries between its head and the published tail, and this slot is past the tail.
        let entry = unsafe { &mut *base.add(slot) };
        entry.set_addr(addr);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.available += 1;
    }

    /// Makes every buffer given back so far visible to the kernel: one release store per
    /// loop turn rather than one per buffer.
    pub fn publish(&mut self) {
        let base = self.entries.as_ptr().cast::<BufRingEntry>();
        // SAFETY: the tail field is the reserved field of the first entry, inside the mapping,
        // aligned for u16; the kernel reads it with acquire semantics.
        let tail = unsafe { &*BufRingEntry::tail(base).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}
