//! A provided buffer ring: receive buffers the kernel picks from as data arrives.
//!
//! Multishot receives take a buffer from this ring for each completion; the forwarder sends
//! straight from that buffer and hands it back only when the send has completed, so the relay
//! copies nothing in user space. The ring layout is the kernel's (`io_uring_buf_ring`): an array
//! of `{addr, len, bid}` entries whose first entry's reserved field is the tail index.
//!
//! The kernel takes buffers from the ring in the order they were offered, so offering every free
//! buffer would cycle receives through the whole pool: all of its memory resident, each receive
//! landing in a cold cache line. Only a few buffers are offered at a time instead; the others wait
//! on a stack, and the most recently returned (still warm) go back to the kernel first.

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
    /// Buffers offered to the kernel and not yet taken by a receive.
    available: u32,
    /// How many buffers the ring is topped up to at each publication.
    target: u32,
    /// Free buffers not offered yet, the most recently returned on top.
    spare: Vec<u16>,
    group: u16,
}

impl BufRing {
    /// Maps `count` buffers of `size` bytes, registers them as buffer group `group` and offers
    /// the first of them to the kernel. `count` must be a power of two no larger than 32768.
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
            // Enough for a burst of receives between two loop turns; an eighth of the pool,
            // at least 64 (or all of a smaller pool).
            target: u32::from(count).min((u32::from(count) / 8).max(64)),
            spare: (0..count).rev().collect(),
            group,
        };
        ring.publish();
        Ok(ring)
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    /// How many buffers the ring holds after a publication, when enough are free.
    pub fn target(&self) -> u32 {
        self.target
    }

    /// Buffers free for receives: offered to the kernel, or waiting to be at the next
    /// publication.
    pub fn free(&self) -> u32 {
        self.available + self.spare.len() as u32
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

    /// Returns buffer `bid`, free again; it goes back to the kernel at a later publication.
    pub fn give_back(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        debug_assert!(self.spare.len() < usize::from(self.count));
        // Never grows: the stack was allocated for every buffer, and each is here at most once.
        self.spare.push(bid);
    }

    /// Tops the ring up to its target from the most recently returned buffers and makes them
    /// visible to the kernel: one release store per loop turn rather than one per buffer.
    pub fn publish(&mut self) {
        if self.available >= self.target || self.spare.is_empty() {
            return;
        }
        let mask = self.count - 1;
        let base = self.entries.as_mut_ptr().cast::<BufRingEntry>();
        while self.available < self.target {
            let Some(bid) = self.spare.pop() else { break };
            let slot = usize::from(self.tail & mask);
            let addr = self.memory.as_ptr() as u64 + u64::from(bid) * u64::from(self.size);
            // SAFETY: `slot < count`, so the entry lies inside the `entries` mapping; the kernel
            // only reads entries between its head and the published tail, and this slot is past
            // the tail (at most `count` buffers are ever offered at once).
            let entry = unsafe { &mut *base.add(slot) };
            entry.set_addr(addr);
            entry.set_len(self.size);
            entry.set_bid(bid);
            self.tail = self.tail.wrapping_add(1);
            self.available += 1;
        }
        // SAFETY: the tail field is the reserved field of the first entry, inside the mapping,
        // aligned for u16; the kernel reads it with acquire semantics.
        let tail = unsafe { &*BufRingEntry::tail(base).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}
