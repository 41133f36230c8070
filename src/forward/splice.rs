//! Splicing a bulk direction through a pipe.
//!
//! A direction that receives `engine.splice_after` bytes while the other direction receives
//! none, in large reads, is a bulk transfer: it stops receiving into the buffer ring and moves
//! its bytes socket → pipe → socket with `splice(2)`, which hands the kernel's pages over
//! instead of copying them into user space and back. Request/response traffic takes turns and
//! small messages read little at a time, so neither switches: there every splice would cost a
//! hop to an io-wq thread (io_uring runs splice nowhere else) for a few hundred bytes.
//!
//! The switch keeps bytes in order: the direction's receive is cancelled, and the pipe takes
//! over only once that receive has ended and every byte it queued has been sent. Nothing in a
//! splice blocks: the pipe is non-blocking and splices carry `SPLICE_F_NONBLOCK`, and the two
//! sockets are made non-blocking at the switch (a socket's own flag decides whether splice
//! waits on it). A splice that finds nothing to move waits on a poll instead, so no io-wq
//! thread ever sleeps on a quiet connection. A pipe holds `engine.splice_pipe_size` (256 KiB:
//! four times a direction's high-water mark on buffers, because a pipe that holds one splice's
//! worth at a time makes filling and draining take turns instead of overlapping), and a
//! forwarder opens at most `engine.splice_pipes` pipes.
//!
//! [`PipeFlow`] is the state of one direction, over plain fields so its decisions are tested
//! without a ring; the forwarder turns them into submissions.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// How a direction moves its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Received into the buffer ring and sent from it.
    Buffers,
    /// Chosen for a pipe: its receive is being cancelled and its queue drained.
    Switching,
    /// Spliced through its pipe.
    Piped,
}

/// One direction's splicing state.
#[derive(Debug, Clone, Copy)]
pub struct PipeFlow {
    pub mode: Mode,
    /// Bytes received since the other direction last received any, and in how many reads.
    run: u32,
    reads: u32,
    /// Read and write ends of the pipe (-1: none).
    pub r: RawFd,
    pub w: RawFd,
    /// What the pipe holds at most.
    capacity: u32,
    /// Bytes in the pipe.
    pub held: u32,
    /// A splice into the pipe, or the poll that waits to start one, is out.
    filling: bool,
    /// A splice out of the pipe, or the poll that waits to start one, is out.
    draining: bool,
    /// A readiness poll on the source ended since the last fill that moved bytes.
    polled: bool,
    /// A readiness poll on the source is out (it stands for the fill).
    polling: bool,
    /// The other direction received bytes since this one was piped: a new exchange has begun
    /// (a request on a kept-alive connection), and this direction goes back to buffers when
    /// its pipe is next empty and its source dry.
    turned: bool,
    /// The source sent FIN.
    source_done: bool,
}

/// What a fill that moved nothing (`EAGAIN`, or 0) calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stalled {
    /// Bytes wait in the pipe (its slots may be full of partial pages): the drain's completion
    /// starts the next fill.
    Drain,
    /// The pipe is empty and the source dry after the other direction spoke: back to buffers,
    /// whose receive waits for the source as the poll would.
    Unpipe,
    /// The pipe is empty and the source dry: poll it (the poll stands for the fill).
    Poll,
    /// The source said it was readable, or ended, and splice moved nothing: read one byte by
    /// hand. splice stops at TCP's urgent mark, where a plain receive steps over the urgent
    /// byte as every receive of the relay does; without this, a client's `MSG_OOB` byte would
    /// stall the direction (the poll stays readable) or pass for its end.
    Read,
}

impl PipeFlow {
    pub const fn new() -> Self {
        Self {
            mode: Mode::Buffers,
            run: 0,
            reads: 0,
            r: -1,
            w: -1,
            capacity: 0,
            held: 0,
            filling: false,
            draining: false,
            polled: false,
            polling: false,
            turned: false,
            source_done: false,
        }
    }

    /// A receive put `len` bytes into a buffer of `buffer_size`. True when the direction just
    /// became a bulk transfer, and should switch to a pipe: `after` bytes (0: never) since the
    /// other direction last received anything, in reads of a quarter buffer or more on
    /// average. A request and its response take turns, so their runs start again at every
    /// turn; a stream of small messages one way reads little at a time.
    pub fn received(&mut self, len: u32, buffer_size: u32, after: u32) -> bool {
        if self.mode != Mode::Buffers || after == 0 {
            return false;
        }
        self.run = self.run.saturating_add(len);
        self.reads = self.reads.saturating_add(1);
        self.run >= after && self.run / self.reads >= buffer_size / 4
    }

    /// The other direction received bytes: this one's run starts again, and a piped one
    /// goes back to buffers when it next waits for its source. True when it waits now (on a
    /// poll, to be cancelled).
    pub fn other_spoke(&mut self) -> bool {
        self.run = 0;
        self.reads = 0;
        if self.mode != Mode::Piped || self.source_done || self.turned {
            return false;
        }
        self.turned = true;
        self.polling && self.held == 0
    }

    /// Whether a piped direction should go back to buffers now: a new exchange began, and
    /// nothing is in or on its way through its pipe.
    pub fn unpipe_due(&self) -> bool {
        self.idle() && self.turned && !self.source_done
    }

    /// Piped, with nothing in the pipe and no splice or poll out on it.
    fn idle(&self) -> bool {
        self.mode == Mode::Piped && self.held == 0 && !self.filling && !self.draining
    }

    /// Back on buffers (the caller closes the pipe, taken first with [`Self::take_pipe`]).
    pub fn unpiped(&mut self) {
        *self = Self::new();
    }

    /// The pipe is open: splicing starts.
    pub fn piped(&mut self, r: RawFd, w: RawFd, capacity: u32) {
        *self = Self {
            mode: Mode::Piped,
            r,
            w,
            capacity,
            ..Self::new()
        };
    }

    /// How many bytes a splice into the pipe may move now, if one should start (it is marked
    /// out).
    pub fn fill(&mut self) -> Option<u32> {
        if self.mode != Mode::Piped
            || self.filling
            || self.source_done
            || self.held >= self.capacity
        {
            return None;
        }
        self.filling = true;
        Some(self.capacity - self.held)
    }

    /// How many bytes a splice out of the pipe should move now, if one should start (it is
    /// marked out).
    pub fn drain(&mut self) -> Option<u32> {
        if self.mode != Mode::Piped || self.draining || self.held == 0 {
            return None;
        }
        self.draining = true;
        Some(self.held)
    }

    /// `n` bytes (more than 0) went into the pipe.
    pub fn filled(&mut self, n: u32) {
        self.filling = false;
        self.polled = false;
        self.held = self.held.saturating_add(n);
    }

    /// A splice into the pipe moved nothing: `EAGAIN`, or 0 (`end`), which is the source's
    /// FIN only where a plain receive agrees ([`Stalled::Read`]).
    pub fn stalled(&mut self, end: bool) -> Stalled {
        if self.held > 0 {
            self.filling = false;
            return Stalled::Drain;
        }
        if end || self.polled {
            self.filling = false;
            self.polled = false;
            return Stalled::Read;
        }
        if self.turned {
            self.filling = false;
            return Stalled::Unpipe;
        }
        self.polling = true;
        Stalled::Poll
    }

    /// A read by hand found nothing: poll the source again (the poll stands for the fill).
    pub fn poll_again(&mut self) {
        self.filling = true;
        self.polling = true;
    }

    /// The source's FIN, as a plain receive saw it.
    pub fn ended(&mut self) {
        self.filling = false;
        self.source_done = true;
    }

    /// A splice out of the pipe moved `n` bytes.
    pub fn drained(&mut self, n: u32) {
        self.draining = false;
        self.held -= n.min(self.held);
    }

    /// A poll ended: the fill (or drain) it stood for may start again.
    pub fn ready(&mut self, filling: bool) {
        if filling {
            self.filling = false;
            self.polling = false;
            self.polled = true;
        } else {
            self.draining = false;
        }
    }

    /// The pipe could not be opened: stay on buffers, and count a new run before trying again
    /// (descriptors or pipe memory are short; a retry at every buffer would stall the relay).
    pub fn refused(&mut self) {
        self.mode = Mode::Buffers;
        self.other_spoke();
    }

    /// The source's FIN came and everything before it left: the FIN may be carried across.
    pub fn finished(&self) -> bool {
        self.idle() && self.source_done
    }

    /// While piped, whether bytes are still in the pipe or on their way out of it.
    pub fn busy(&self) -> bool {
        self.mode == Mode::Piped && (self.held > 0 || self.draining)
    }

    /// Takes the pipe's descriptors for closing; the direction is done with it.
    pub fn take_pipe(&mut self) -> Option<(RawFd, RawFd)> {
        (self.r >= 0).then(|| {
            let fds = (self.r, self.w);
            self.r = -1;
            self.w = -1;
            fds
        })
    }
}

impl Default for PipeFlow {
    fn default() -> Self {
        Self::new()
    }
}

/// Opens a non-blocking pipe and sizes it to hold `want` bytes (the kernel rounds up to a
/// power of two pages; a refusal leaves the default). Returns both ends and the capacity.
pub fn open_pipe(want: u32) -> io::Result<(OwnedFd, OwnedFd, u32)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which has room for them.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just opened and nothing else owns them.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let want = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
    // SAFETY: fcntl on a pipe this function owns; F_SETPIPE_SZ takes an int.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
    // SAFETY: as above; F_GETPIPE_SZ takes no argument.
    let capacity = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ) };
    let capacity = u32::try_from(capacity).map_err(|_| io::Error::last_os_error())?;
    Ok((r, w, capacity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_large_reads_one_way_switches_and_a_turn_of_the_other_way_restarts_it() {
        let mut p = PipeFlow::new();
        assert!(!p.received(16384, 16384, 0), "0 never switches");
        p.other_spoke();
        assert!(!p.received(16384, 16384, 49152));
        assert!(!p.received(16384, 16384, 49152));
        // A request the other way: a response of 32 KiB was not a bulk transfer.
        p.other_spoke();
        assert!(!p.received(16384, 16384, 49152));
        assert!(!p.received(16384, 16384, 49152));
        // Partial reads (a segment's tail) do not break a run of large ones.
        assert!(!p.received(53, 16384, 49152));
        assert!(p.received(16384, 16384, 49152));
        p.mode = Mode::Switching;
        assert!(!p.received(16384, 16384, 49152), "chosen once");
        // Many small messages one way: the bytes add up, the reads stay small.
        let mut q = PipeFlow::new();
        for _ in 0..10_000 {
            assert!(!q.received(300, 16384, 49152));
        }
    }

    #[test]
    fn fills_and_drains_take_turns_within_the_pipe_and_the_fin_waits_for_the_last_byte() {
        let mut p = PipeFlow::new();
        assert_eq!(p.fill(), None, "no pipe yet");
        p.piped(5, 6, 65536);
        assert_eq!(p.fill(), Some(65536));
        assert_eq!(p.fill(), None, "one fill at a time");
        assert_eq!(p.drain(), None, "nothing to drain");
        p.filled(40000);
        assert_eq!(p.drain(), Some(40000));
        assert_eq!(p.fill(), Some(25536), "only the room left");
        p.filled(25536);
        assert_eq!(p.fill(), None, "full");
        p.drained(30000);
        assert_eq!(p.held, 35536);
        assert_eq!(p.drain(), Some(35536));
        assert_eq!(p.fill(), Some(30000));
        // A splice reads 0 while bytes are still in the pipe: not taken for the FIN yet.
        assert_eq!(p.stalled(true), Stalled::Drain);
        assert!(p.busy());
        p.drained(35536);
        assert!(!p.finished());
        assert_eq!(p.fill(), Some(65536));
        // With the pipe empty it is checked by hand, and the hand read saw the FIN.
        assert_eq!(p.stalled(true), Stalled::Read);
        p.ended();
        assert_eq!(p.fill(), None, "nothing more to read");
        assert!(p.finished());
        assert!(!p.busy());
        assert_eq!(p.take_pipe(), Some((5, 6)));
        assert_eq!(p.take_pipe(), None);
    }

    #[test]
    fn a_dry_source_is_polled_and_a_readable_one_that_splices_nothing_is_read_by_hand() {
        let mut p = PipeFlow::new();
        p.piped(5, 6, 65536);
        assert_eq!(p.fill(), Some(65536));
        assert_eq!(p.stalled(false), Stalled::Poll, "empty pipe, dry socket");
        assert_eq!(p.fill(), None, "the poll stands for the fill");
        p.ready(true);
        assert_eq!(p.fill(), Some(65536));
        // Readable, yet splice moves nothing: an urgent mark; read by hand.
        assert_eq!(p.stalled(false), Stalled::Read);
        assert_eq!(p.fill(), Some(65536), "the hand read is done; fill again");
        assert_eq!(p.stalled(false), Stalled::Poll, "a fresh stall polls first");
        p.poll_again();
        assert_eq!(p.fill(), None);
        p.ready(true);
        assert_eq!(p.fill(), Some(65536));
        p.filled(1000);
        assert_eq!(p.drain(), Some(1000));
        assert_eq!(p.fill(), Some(64536));
        // Slots full of partial pages: no poll (the socket is readable and would spin); the
        // drain's completion starts the next fill.
        assert_eq!(p.stalled(false), Stalled::Drain);
        p.drained(1000);
        assert_eq!(p.fill(), Some(65536));
    }

    #[test]
    fn a_refused_pipe_waits_for_a_new_run() {
        let mut p = PipeFlow::new();
        assert!(!p.received(16384, 16384, 32768));
        assert!(p.received(16384, 16384, 32768));
        p.mode = Mode::Switching;
        p.refused();
        assert_eq!(p.mode, Mode::Buffers);
        assert!(!p.received(16384, 16384, 32768), "the run starts again");
        assert!(p.received(16384, 16384, 32768));
    }

    #[test]
    fn a_piped_direction_goes_back_to_buffers_when_the_other_speaks_and_it_waits() {
        let mut p = PipeFlow::new();
        p.piped(5, 6, 65536);
        assert_eq!(p.fill(), Some(65536));
        p.filled(1000);
        // The other way speaks while bytes are on their way: not yet.
        assert!(!p.other_spoke(), "no poll to cancel");
        assert!(!p.unpipe_due(), "bytes in the pipe");
        assert_eq!(p.drain(), Some(1000));
        p.drained(1000);
        assert_eq!(p.fill(), Some(65536));
        // Its source is dry: back to buffers rather than a poll.
        assert_eq!(p.stalled(false), Stalled::Unpipe);
        assert!(p.unpipe_due());
        p.unpiped();
        assert_eq!(p.mode, Mode::Buffers);
        assert_eq!(p.take_pipe(), None);
        // Waiting on a poll when the other way speaks: the poll is to be cancelled.
        let mut q = PipeFlow::new();
        q.piped(5, 6, 65536);
        assert_eq!(q.fill(), Some(65536));
        assert_eq!(q.stalled(false), Stalled::Poll);
        assert!(q.other_spoke(), "cancel the standing poll");
        assert!(!q.other_spoke(), "once");
        q.ready(true);
        assert!(q.unpipe_due());
    }
}
