//! Gather lists for sends that take several queued buffers at once: sendmsg(2) with one iovec
//! per buffer.
//!
//! While a sink is slower than its source, a direction's queue holds several receive buffers;
//! sending them one at a time costs a send (and a wake-up of the reader) per buffer, and one
//! loop turn each. One send gathers them instead. Each such send needs a message header and an
//! iovec array that stay put until its completion arrives, so a forwarder keeps a fixed pool of
//! them, taken by a send and given back by its completion. When the pool is empty, sends fall
//! back to one buffer each: correct, only slower.

use std::mem::size_of;

/// The pool of one forwarder.
pub struct Gathers {
    /// One message header per slot; slot `v`'s points at `iovs[v * per..][..n]` while in use.
    hdrs: Box<[libc::msghdr]>,
    iovs: Box<[libc::iovec]>,
    /// iovecs per slot: the most buffers one send takes (`engine.send_batch`).
    per: u16,
    /// Free slots.
    free: Vec<u16>,
}

// SAFETY: the raw pointers inside are addresses the kernel reads during a send, never
// dereferenced by this type; the pool belongs to one forwarder thread, as does its ring.
unsafe impl Send for Gathers {}

impl Gathers {
    /// A pool of `slots` gather lists of up to `per` buffers each. `per` 1 makes none: every
    /// send then takes one buffer.
    pub fn new(slots: u16, per: u16) -> Self {
        let slots = if per > 1 { slots } else { 0 };
        // SAFETY: an all-zero msghdr is a valid value: null pointers, zero lengths and flags
        // (zeroed rather than written out, as some targets give it padding fields).
        let hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        let iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Self {
            hdrs: vec![hdr; usize::from(slots)].into_boxed_slice(),
            iovs: vec![iov; usize::from(slots) * usize::from(per)].into_boxed_slice(),
            per,
            free: (0..slots).rev().collect(),
        }
    }

    /// Bytes a pool of `slots` lists of `per` buffers holds.
    pub fn bytes(slots: u16, per: u16) -> u64 {
        if per <= 1 {
            return 0;
        }
        u64::from(slots)
            * (size_of::<libc::msghdr>() + usize::from(per) * size_of::<libc::iovec>()) as u64
    }

    /// The most buffers the next send may take: `per` while a list is free, else 1.
    pub fn max_bufs(&self) -> u16 {
        if self.free.is_empty() { 1 } else { self.per }
    }

    /// Takes a free list and fills it from `parts` (address and length of each piece, at most
    /// `per` of them). Returns its slot and the header to hand to the kernel, which stays
    /// valid until the slot is given back; `None` when no list is free.
    pub fn take(
        &mut self,
        parts: impl Iterator<Item = (*const u8, u32)>,
    ) -> Option<(u16, *const libc::msghdr)> {
        let v = self.free.pop()?;
        let base = usize::from(v) * usize::from(self.per);
        let list = &mut self.iovs[base..base + usize::from(self.per)];
        let mut n = 0;
        for (iov, (ptr, len)) in list.iter_mut().zip(parts) {
            iov.iov_base = ptr.cast_mut().cast();
            iov.iov_len = len as usize;
            n += 1;
        }
        let hdr = &mut self.hdrs[usize::from(v)];
        hdr.msg_iov = list.as_mut_ptr();
        hdr.msg_iovlen = n;
        Some((v, &raw const *hdr))
    }

    /// Gives back slot `v`, whose send has completed.
    pub fn give_back(&mut self, v: u16) {
        debug_assert!(usize::from(v) < self.hdrs.len());
        debug_assert!(self.free.len() < self.hdrs.len());
        // Never grows: allocated for every slot, and each is here at most once.
        self.free.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_points_at_its_pieces_until_given_back() {
        let data = [7u8; 64];
        let mut g = Gathers::new(2, 4);
        assert_eq!(g.max_bufs(), 4);
        let parts = [(data.as_ptr(), 10), (data[20..].as_ptr(), 30)];
        let (a, hdr) = g.take(parts.into_iter()).expect("a free list");
        // SAFETY: the header lives in the pool, which is alive and not touched meanwhile.
        let hdr = unsafe { &*hdr };
        assert_eq!(hdr.msg_iovlen, 2);
        // SAFETY: `msg_iov` points at the slot's iovecs, two of them filled.
        let iovs = unsafe { std::slice::from_raw_parts(hdr.msg_iov, 2) };
        assert_eq!(iovs[0].iov_base.cast_const(), data.as_ptr().cast());
        assert_eq!((iovs[0].iov_len, iovs[1].iov_len), (10, 30));
        assert_eq!(iovs[1].iov_base.cast_const(), data[20..].as_ptr().cast());
        let (b, _) = g.take(parts.into_iter()).expect("the second list");
        assert_ne!(a, b);
        // Both out: the next send takes one buffer, and no list is handed out twice.
        assert_eq!(g.max_bufs(), 1);
        assert!(g.take(parts.into_iter()).is_none());
        g.give_back(a);
        assert_eq!(g.max_bufs(), 4);
        assert_eq!(g.take(parts.into_iter()).map(|(v, _)| v), Some(a));
    }

    #[test]
    fn one_buffer_a_send_keeps_no_lists() {
        let g = Gathers::new(512, 1);
        assert_eq!(g.max_bufs(), 1);
        assert_eq!(Gathers::bytes(512, 1), 0);
        assert!(Gathers::bytes(512, 8) > 0);
    }
}
