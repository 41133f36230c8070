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
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, Fd};
use io_uring::{IoUring, opcode, squeue};
use memmap2::MmapMut;

/// `IORING_UNREGISTER_PBUF_RING` and `IORING_REGISTER_SYNC_CANCEL` with their arguments,
/// `struct io_uring_buf_reg` and `struct io_uring_sync_cancel_reg`, and the cancel flag that
/// matches every request (include/uapi/linux/io_uring.h).
const IORING_UNREGISTER_PBUF_RING: libc::c_uint = 23;
const IORING_REGISTER_SYNC_CANCEL: libc::c_uint = 24;
const IORING_ASYNC_CANCEL_ANY: u32 = 1 << 2;

#[repr(C)]
struct SyncCancelReg {
    addr: u64,
    fd: i32,
    flags: u32,
    timeout: [i64; 2],
    opcode: u8,
    pad: [u8; 7],
    pad2: [u64; 3],
}

#[repr(C)]
struct BufReg {
    ring_addr: u64,
    ring_entries: u32,
    bgid: u16,
    flags: u16,
    resv: [u64; 3],
}

/// The receive buffers of one forwarder.
///
/// It does not rely on the order in which the forwarder drops it and its ring: it keeps the
/// io_uring instance alive (a descriptor of its own) and, when released, first cancels every
/// request still in flight on that instance (a send may point into its buffers) and
/// unregisters its group, and only then unmaps; if either step fails, it leaves the memory
/// mapped.
pub struct BufRing {
    /// Ring entries, shared with the kernel. Unmapped only once the group is unregistered.
    entries: ManuallyDrop<MmapMut>,
    /// The buffers themselves, `count × size` bytes; the same.
    memory: ManuallyDrop<MmapMut>,
    /// A descriptor of the io_uring instance the group is registered with.
    ring: OwnedFd,
    /// The mappings are gone (see [`Self::release`]).
    released: bool,
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
    /// The buffer offered at each ring position (indexed by position & mask), and the position
    /// each buffer was last offered at: a bundle receive takes consecutive positions, and its
    /// completion names only the first buffer.
    offered: Box<[u16]>,
    position: Box<[u16]>,
    group: u16,
}

impl BufRing {
    /// Maps `count` buffers of `size` bytes, registers them as buffer group `group` and offers
    /// the first of them to the kernel. `count` must be a power of two no larger than 32768.
    pub fn new(ring: &IoUring, group: u16, count: u16, size: u32) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 1 << 15 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("buffer count {count} must be a power of two up to 32768"),
            ));
        }
        let entry_bytes = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        let entries = MmapMut::map_anon(entry_bytes)?;
        let memory = MmapMut::map_anon(usize::from(count) * size as usize)?;
        // SAFETY: `ring` is a live io_uring instance, borrowed for the call.
        let own = unsafe { BorrowedFd::borrow_raw(ring.as_raw_fd()) }.try_clone_to_owned()?;
        // SAFETY: `entries` is a page-aligned mapping of exactly `count` entries; it stays
        // mapped until `Drop` has unregistered the group (or forever, if that fails).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                count,
                group,
                0,
            )?;
        }
        let mut ring = Self {
            entries: ManuallyDrop::new(entries),
            memory: ManuallyDrop::new(memory),
            ring: own,
            released: false,
            count,
            size,
            tail: 0,
            available: 0,
            // Enough for a burst of receives between two loop turns; an eighth of the pool,
            // at least 64 (or all of a smaller pool).
            target: u32::from(count).min((u32::from(count) / 8).max(64)),
            spare: (0..count).rev().collect(),
            offered: vec![0; usize::from(count)].into_boxed_slice(),
            position: vec![0; usize::from(count)].into_boxed_slice(),
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

    /// Notes that the kernel took `n` buffers (a receive completion carried them).
    pub fn taken(&mut self, n: u32) {
        self.available = self.available.saturating_sub(n);
    }

    /// The buffer offered right after `bid`: the next one of a bundle that began with `bid`.
    pub fn after(&self, bid: u16) -> u16 {
        let mask = self.count - 1;
        let next = self.position[usize::from(bid)].wrapping_add(1) & mask;
        self.offered[usize::from(next)]
    }

    /// The buffers of a receive completion that named `first` and carried `res` bytes.
    pub fn bundle(&self, first: u16, res: i32) -> Bundle {
        let left = res.max(0) as u32;
        Bundle {
            next: first,
            bufs: left.div_ceil(self.size).max(1),
            left,
        }
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
            self.offered[slot] = bid;
            self.position[usize::from(bid)] = self.tail;
            self.tail = self.tail.wrapping_add(1);
            self.available += 1;
        }
        // SAFETY: the tail field is the reserved field of the first entry, inside the mapping,
        // aligned for u16; the kernel reads it with acquire semantics.
        let tail = unsafe { &*BufRingEntry::tail(base).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}

/// The buffers one receive completion carried, first to last: a bundle fills whole buffers
/// offered in a row, the last one partly; any other receive (or an empty one) takes one.
pub struct Bundle {
    next: u16,
    bufs: u32,
    left: u32,
}

impl Bundle {
    /// How many buffers the completion took from the ring.
    pub fn count(&self) -> u32 {
        self.bufs
    }

    /// The next buffer and the bytes it holds; `ring` is the one the completion came from.
    pub fn pop(&mut self, ring: &BufRing) -> Option<(u16, u32)> {
        if self.bufs == 0 {
            return None;
        }
        let (bid, len) = (self.next, self.left.min(ring.size));
        self.bufs -= 1;
        self.left -= len;
        if self.bufs > 0 {
            self.next = ring.after(bid);
        }
        Some((bid, len))
    }
}

/// A multishot receive from group `group` whose completions may each fill several buffers
/// offered in a row (a bundle, `IORING_RECVSEND_BUNDLE`, Linux 6.10). The completion names the
/// first buffer, [`BufRing::after`] the others, and its length how many there are.
///
/// `max_bytes` asks for at most that much per completion, but the kernel takes it as a hint
/// (seen on 6.18: after a receive that filled three buffers, the next one, asking for two,
/// filled three again), so callers count buffers from each completion's length
/// ([`BufRing::bundle`]), never from the cap.
pub fn bundle_recv(fd: Fd, group: u16, max_bytes: u32) -> squeue::Entry {
    const IORING_RECVSEND_BUNDLE: u16 = 1 << 4;
    let mut entry = opcode::RecvMulti::new(fd, group).len(max_bytes).build();
    // SAFETY: `Entry` is `repr(C)` around the kernel's `io_uring_sqe`, whose `ioprio` is the
    // u16 at byte offset 2 (include/uapi/linux/io_uring.h); the crate has no setter for it.
    unsafe {
        let ioprio = (&raw mut entry).cast::<u8>().add(2).cast::<u16>();
        ioprio.write_unaligned(ioprio.read_unaligned() | IORING_RECVSEND_BUNDLE);
    }
    entry
}

impl BufRing {
    /// Ends the kernel's use of the buffers, then unmaps them. Until then the kernel may read
    /// `entries` and receive into `memory`, and a send in flight reads from it; the instance
    /// lives on while this descriptor of it is open, even after the forwarder has dropped its
    /// `IoUring`. So: cancel every request on the instance and wait for them (synchronously,
    /// up to a second), unregister the group, and only then unmap. On an error the mappings
    /// stay (released later by no one): freed memory the kernel may still touch would be far
    /// worse than a leak at a forwarder's exit.
    fn release(&mut self) -> io::Result<()> {
        if self.released {
            return Ok(());
        }
        let cancel = SyncCancelReg {
            addr: 0,
            fd: -1,
            flags: IORING_ASYNC_CANCEL_ANY,
            timeout: [1, 0],
            opcode: 0,
            pad: [0; 7],
            pad2: [0; 3],
        };
        self.register(IORING_REGISTER_SYNC_CANCEL, (&raw const cancel).cast())?;
        let reg = BufReg {
            ring_addr: 0,
            ring_entries: 0,
            bgid: self.group,
            flags: 0,
            resv: [0; 3],
        };
        self.register(IORING_UNREGISTER_PBUF_RING, (&raw const reg).cast())?;
        self.released = true;
        // SAFETY: no request is in flight and the group is unregistered: the kernel no longer
        // uses either mapping, and `released` keeps them from being touched again.
        unsafe {
            ManuallyDrop::drop(&mut self.entries);
            ManuallyDrop::drop(&mut self.memory);
        }
        Ok(())
    }

    /// io_uring_register(2) on the instance, with one argument at `arg`.
    fn register(&self, op: libc::c_uint, arg: *const libc::c_void) -> io::Result<()> {
        // SAFETY: an instance this struct holds a descriptor of; `arg` points at the argument
        // `op` takes, alive for the call.
        let res = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                self.ring.as_raw_fd(),
                op,
                arg,
                1u32,
            )
        };
        if res < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if let Err(error) = self.release() {
            tracing::warn!(
                group = self.group,
                %error,
                "cannot end the kernel's use of the receive buffers; leaving them mapped"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn bundles_fill_the_buffers_offered_in_a_row_and_after_names_them() {
        let mut ring = IoUring::new(8).expect("io_uring is needed for this test");
        let bundles = ring.params().is_feature_recvsend_bundle();
        assert!(
            bundles,
            "this kernel has no receive bundles (Linux 6.10): the test cannot run"
        );
        let mut bufs = BufRing::new(&ring, 3, 16, 4096).expect("register a buffer ring");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
        let to = listener.local_addr().expect("its address");
        let mut tx = TcpStream::connect(to).expect("connect");
        let (rx, _) = listener.accept().expect("accept");
        const LEN: usize = 300_000;
        let sent: Vec<u8> = (0..LEN as u32).map(|i| (i * 7 % 251) as u8).collect();
        let writer = std::thread::spawn(move || tx.write_all(&sent).map(|()| sent));
        let recv = bundle_recv(Fd(rx.as_raw_fd()), bufs.group(), 2 * 4096).user_data(1);
        let (mut got, mut several, mut out_of_order) = (Vec::new(), 0, 0);
        let (mut armed, mut eof) = (false, false);
        // The writer closes its end when done: read to that end.
        while !eof {
            if !armed {
                // SAFETY: the socket and the buffers outlive the receive: the ring is dropped
                // (and the buffers released, which cancels it) at the end of the test.
                unsafe { ring.submission().push(&recv).expect("room for one entry") };
                armed = true;
            }
            bufs.publish();
            ring.submit_and_wait(1).expect("a completion");
            let done: Vec<_> = ring.completion().map(|c| (c.result(), c.flags())).collect();
            for (res, flags) in done {
                armed &= io_uring::cqueue::more(flags);
                if res == -libc::ENOBUFS {
                    continue;
                }
                if res == 0 {
                    eof = true;
                    continue;
                }
                assert!(res > 0, "the bundle receive failed: {res}");
                let first = io_uring::cqueue::buffer_select(flags).expect("a buffer");
                let (mut bundle, mut ids) = (bufs.bundle(first, res), Vec::new());
                bufs.taken(bundle.count());
                while let Some((bid, len)) = bundle.pop(&bufs) {
                    // SAFETY: the kernel filled `len` bytes of buffer `bid`, and nothing
                    // writes it until it is given back below.
                    let part =
                        unsafe { std::slice::from_raw_parts(bufs.ptr(bid, 0), len as usize) };
                    got.extend_from_slice(part);
                    ids.push(bid);
                }
                several += usize::from(ids.len() > 1);
                out_of_order += usize::from(ids.windows(2).any(|w| w[1] != w[0] + 1));
                // Given back in order, they are offered again last first (the spare buffers
                // are a stack): later bundles take ids out of order, which `after` must follow.
                for &bid in &ids {
                    bufs.give_back(bid);
                }
            }
        }
        let sent = writer.join().expect("the writer").expect("write");
        assert!(
            got == sent,
            "bytes read through the bundles differ from those sent"
        );
        assert!(
            several > 0,
            "no completion took more than one buffer: nothing was checked"
        );
        assert!(
            out_of_order > 0,
            "every bundle took consecutive ids: `after` was not checked"
        );
    }

    #[test]
    fn dropping_the_buffers_first_unregisters_their_group() {
        let ring = match IoUring::new(8) {
            Ok(ring) => ring,
            Err(e) => panic!("io_uring is needed for this test and is not available here: {e}"),
        };
        let bufs = BufRing::new(&ring, 7, 16, 4096).expect("register a buffer ring");
        // While registered, the group cannot be registered again.
        assert!(BufRing::new(&ring, 7, 16, 4096).is_err());
        drop(bufs);
        // Dropped before the ring, it gave its group back: the kernel no longer points at it.
        let mut again = BufRing::new(&ring, 7, 16, 4096).expect("the group is free again");
        // Released after the ring is dropped, it still reaches the instance it keeps open.
        drop(ring);
        again.release().expect("release after the ring");
        assert!(again.released);
    }
}
