//! A client of a listener with `proxy_protocol = v1 | v2` sends a PROXY header first, naming
//! the real client (an upstream balancer sends it). Until the header has come nothing else is
//! read from the socket and no backend is chosen; then the header's source address drives the
//! hashing, the queue's ticket and the PROXY header levee itself sends on.
//!
//! The wait is a poll for the first bytes. They are peeked (`MSG_PEEK`), never consumed beyond
//! the header: once a whole header is there, exactly its bytes are read off, so the client's
//! own bytes stay in the socket for whoever relays it (this forwarder, or a worker that takes
//! the socket over from the queue). While a header is partial, `SO_RCVLOWAT` is raised above
//! the bytes already there, so the next poll ends only when more arrive (a plain poll would end
//! at once, and a client trickling its header would make the forwarder spin); it is set back to
//! 1 once the header is read. A header that does not
//! parse, a client that closes first, and one that has sent no whole header by the listener's
//! `proxy_timeout` are closed with a reset and counted (`proxy_header_bad`,
//! `proxy_header_timeout`).

use io_uring::opcode;
use io_uring::types::Fd;
use tracing::debug;

use super::conn::State;
use super::forwarder::{Forwarder, Reset};
use super::token::{self, Kind};
use crate::proxy_protocol::{self, Parsed, V2_SIGNATURE, Version};
use crate::stats::CloseReason;

/// Longest header taken: a version 2 header may carry TLVs up to 64 KiB, and levee takes those
/// up to this size; longer is refused as bad.
pub const HEADER_MAX: usize = 4096;

impl Forwarder {
    /// Waits for the client's header: a poll for its bytes (more than `SO_RCVLOWAT`).
    pub(super) fn arm_header_wait(&mut self, slot: u32) {
        let c = &self.conns[slot as usize];
        // RDHUP too: a FIN makes the socket readable whatever SO_RCVLOWAT says, and a client
        // that half-closes inside its header must not be looked at again and again.
        let entry = opcode::PollAdd::new(Fd(c.client), (libc::POLLIN | libc::POLLRDHUP) as u32)
            .build()
            .user_data(token::encode(Kind::Header, slot));
        self.submit(slot, entry);
    }

    /// The poll or the timer completed: look at what the client sent.
    pub(super) fn on_header(&mut self, slot: u32, res: i32) {
        let c = &self.conns[slot as usize];
        if c.state != State::Greeting {
            // Closed meanwhile (its deadline, a stop).
            self.maybe_free(slot);
            return;
        }
        if res < 0 {
            self.greeted(slot, Err(CloseReason::ClientError));
            return;
        }
        let (client, listener) = (c.client, usize::from(c.listener));
        let Some((version, _)) = self.listeners.get(listener).and_then(|l| l.proxy) else {
            self.greeted(slot, Err(CloseReason::LocalError));
            return;
        };
        // SAFETY: recv into the scratch buffer, of its length, on a socket this forwarder owns;
        // MSG_DONTWAIT: it never blocks.
        let n = unsafe {
            libc::recv(
                client,
                self.header_scratch.as_mut_ptr().cast(),
                self.header_scratch.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                self.arm_header_wait(slot);
            } else {
                self.greeted(slot, Err(CloseReason::ClientError));
            }
            return;
        }
        let peeked = &self.header_scratch[..n as usize];
        let parsed = match proxy_protocol::parse(peeked) {
            Ok(Parsed::Header { len, addresses }) if expected(version, peeked) => {
                Ok((len, addresses))
            }
            Ok(Parsed::Header { .. }) => Err("a header of the other version"),
            // A client that closed (n == 0) or filled the scratch without a whole header.
            Ok(Parsed::Incomplete) if n == 0 => Err("the client closed before its header"),
            Ok(Parsed::Incomplete) if peeked.len() == HEADER_MAX => Err("a header too long"),
            // No more bytes will come.
            Ok(Parsed::Incomplete)
                if res & i32::from(libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 =>
            {
                Err("the client closed inside its header")
            }
            Ok(Parsed::Incomplete) => {
                // Wait for more than is there; the deadline is the tick's to enforce.
                if set_rcvlowat(client, n as i32 + 1) {
                    self.conns[slot as usize].rcvlowat = true;
                    self.arm_header_wait(slot);
                } else {
                    self.greeted(slot, Err(CloseReason::LocalError));
                }
                return;
            }
            Err(e) => {
                debug!(error = %e, "a client's PROXY header is bad");
                Err("a bad header")
            }
        };
        let (len, addresses) = match parsed {
            Ok(h) => h,
            Err(why) => {
                debug!(why, "closing a client without a good PROXY header");
                self.greeted(slot, Err(CloseReason::BadProxyHeader));
                return;
            }
        };
        // Exactly the header's bytes: the client's own stay in the socket.
        // SAFETY: as above; `len` is at most the bytes peeked, which are there to read.
        let read = unsafe {
            libc::recv(
                client,
                self.header_scratch.as_mut_ptr().cast(),
                len,
                libc::MSG_DONTWAIT,
            )
        };
        if read != len as isize {
            self.greeted(slot, Err(CloseReason::ClientError));
            return;
        }
        let c = &mut self.conns[slot as usize];
        // The relay's receives end on any byte again.
        if std::mem::take(&mut c.rcvlowat) && !set_rcvlowat(client, 1) {
            self.greeted(slot, Err(CloseReason::LocalError));
            return;
        }
        // LOCAL / UNKNOWN: the connection speaks for itself.
        c.origin = addresses;
        self.greeted(slot, Ok(()));
    }

    /// The header wait of `slot` is over: route it, or close it for `reason`.
    fn greeted(&mut self, slot: u32, outcome: Result<(), CloseReason>) {
        self.greeting = self.greeting.saturating_sub(1);
        match outcome {
            Ok(()) => {
                let c = &mut self.conns[slot as usize];
                c.state = State::Connecting;
                // The header's deadline is over: the connect has its own budget from now.
                c.connect_deadline = self.now + self.tunables.connect_timeout_ms();
                self.admit(slot);
            }
            Err(reason) => {
                // Not yet Connecting: close from the state a route would start in.
                self.conns[slot as usize].state = State::Connecting;
                self.close(slot, reason, Reset::Client);
            }
        }
    }

    /// At the tick: clients that have not sent a whole header by their listener's
    /// `proxy_timeout` are closed.
    pub(super) fn expire_greetings(&mut self) {
        if self.greeting == 0 {
            return;
        }
        for slot in 0..self.high_slot {
            let c = &self.conns[slot as usize];
            if c.state == State::Greeting && self.now >= c.connect_deadline {
                self.greeted(slot, Err(CloseReason::ProxyHeaderTimeout));
            }
        }
    }
}

/// Sets `SO_RCVLOWAT`: a poll for input ends only once `bytes` are there.
fn set_rcvlowat(fd: std::os::fd::RawFd, bytes: i32) -> bool {
    // SAFETY: setsockopt with a valid int of the size given, on a socket this forwarder owns.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const bytes).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        ) == 0
    }
}

/// Whether `bytes` are the version the listener takes.
fn expected(version: Version, bytes: &[u8]) -> bool {
    match version {
        Version::V1 => bytes.starts_with(b"PROXY "),
        Version::V2 => bytes.starts_with(&V2_SIGNATURE),
    }
}
