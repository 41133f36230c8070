//! Per-connection state of a forwarder: the two relay directions and the lifecycle of every
//! io_uring operation a connection owns.
//!
//! Ownership rule: a connection slot is reused only after every operation it submitted has
//! completed ([`Ops::none`]), so a completion always finds the connection it belongs to and no
//! buffer or address the kernel may still touch is ever reused early. The forwarder counts an
//! operation at one place each: `Forwarder::submit` when it is queued, `Forwarder::dispatch`
//! when its final completion arrives.
//!
//! The decisions of the relay (when to receive, what to send next, when to pause, when the
//! connection is done) are methods here, over plain state, so they are tested without a ring;
//! the forwarder turns them into submissions.

use std::os::fd::{BorrowedFd, RawFd};

use io_uring::types::Timespec;

use super::splice::PipeFlow;
use super::token::Dir;
use crate::balance::MAX_CANDIDATES;
use crate::stats::CloseReason;

/// No buffer: the end of a queue.
pub const NO_BUF: u16 = u16::MAX;

/// No vector slot: a send of one buffer.
pub const NO_VEC: u16 = u16::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Free,
    /// Accepted on a listener that takes the PROXY protocol: waiting for the header, which
    /// names the client (nothing else is read, and no backend chosen, before it).
    Greeting,
    /// Accepted; reaching a backend. Client bytes are already received and queued.
    Connecting,
    /// Both sockets open; bytes flow both ways.
    Relaying,
    /// Closing: cancels are out; the slot is freed when the last operation completes.
    Closing,
}

/// The multishot receive of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// Not submitted.
    Idle,
    Armed,
    /// A cancel is out; the final completion has not arrived yet.
    Cancelling,
}

/// One direction of the relay: bytes received from the source, waiting to be sent on.
///
/// The queue is a list of provided buffers linked through the forwarder's [`BufLinks`]; it holds
/// at most `engine.buffers` entries in all, so it needs no allocation and cannot overflow.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    pub head: u16,
    pub tail: u16,
    /// Bytes queued, counting the head buffer whole.
    pub queued: u32,
    /// Bytes of the head buffer already sent.
    pub offset: u32,
    pub recv: Recv,
    /// A send is in flight (at most one, so bytes stay in order).
    pub sending: bool,
    /// The source sent FIN.
    pub eof: bool,
    /// The source's FIN has been carried across: shutdown(SHUT_WR) on the sink.
    pub shut: bool,
    /// Receive stopped because `queued` passed the high-water mark; resumes at the low one.
    pub paused: bool,
    /// Receive ended for want of buffers; resumes when buffers come back.
    pub starved: bool,
    /// Listed in the forwarder's `due`: pumped once this turn's completions are handled.
    pub pump_due: bool,
    /// The forwarder's vector slot that the send in flight gathers its buffers from
    /// (`NO_VEC`: the send names one buffer itself).
    pub vec: u16,
    /// Whether it moves its bytes through a pipe instead (a bulk transfer), and the pipe's.
    pub pipe: PipeFlow,
}

impl Flow {
    pub const fn new() -> Self {
        Self {
            head: NO_BUF,
            tail: NO_BUF,
            queued: 0,
            offset: 0,
            recv: Recv::Idle,
            sending: false,
            eof: false,
            shut: false,
            paused: false,
            starved: false,
            pump_due: false,
            vec: NO_VEC,
            pipe: PipeFlow::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.head == NO_BUF
    }
}

/// Links between queued buffers and their lengths, indexed by buffer id.
pub struct BufLinks {
    next: Box<[u16]>,
    len: Box<[u32]>,
}

impl BufLinks {
    pub fn new(count: u16) -> Self {
        Self {
            next: vec![NO_BUF; usize::from(count)].into_boxed_slice(),
            len: vec![0; usize::from(count)].into_boxed_slice(),
        }
    }

    /// Appends buffer `bid` holding `len` bytes to `flow`'s queue.
    pub fn push(&mut self, flow: &mut Flow, bid: u16, len: u32) {
        self.next[usize::from(bid)] = NO_BUF;
        self.len[usize::from(bid)] = len;
        if flow.tail == NO_BUF {
            flow.head = bid;
        } else {
            self.next[usize::from(flow.tail)] = bid;
        }
        flow.tail = bid;
        flow.queued += len;
    }

    /// Length of the buffer at the head of `flow`'s queue.
    pub fn head_len(&self, flow: &Flow) -> u32 {
        self.len[usize::from(flow.head)]
    }

    /// Length of queued buffer `bid`.
    pub fn len(&self, bid: u16) -> u32 {
        self.len[usize::from(bid)]
    }

    /// The buffer queued after `bid`, or `NO_BUF`.
    pub fn next(&self, bid: u16) -> u16 {
        self.next[usize::from(bid)]
    }

    /// Removes the head buffer and returns its id.
    pub fn pop(&mut self, flow: &mut Flow) -> Option<u16> {
        let bid = flow.head;
        if bid == NO_BUF {
            return None;
        }
        flow.head = self.next[usize::from(bid)];
        if flow.head == NO_BUF {
            flow.tail = NO_BUF;
        }
        flow.queued -= self.len[usize::from(bid)];
        flow.offset = 0;
        Some(bid)
    }
}

/// The io_uring operations a connection has submitted and not yet seen finally complete (a
/// multishot receive counts once, until the completion without `MORE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ops(u16);

impl Ops {
    pub fn begin(&mut self, n: u16) {
        self.0 += n;
    }

    pub fn end(&mut self) {
        debug_assert!(self.0 > 0, "a completion for an operation never counted");
        self.0 = self.0.saturating_sub(1);
    }

    pub fn none(self) -> bool {
        self.0 == 0
    }
}

/// How a direction receives when it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvMode {
    /// One multishot receive, while the sink keeps up.
    Multi,
    /// One buffer at a time, while bytes wait for the sink.
    One,
}

/// What a direction does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A send is out, the FIN is across, or nothing waits.
    Wait,
    /// Send `len` bytes from `offset` in buffer `bid` on, across `bufs` queued buffers (the
    /// head and those linked after it); `more`: the FIN follows them (MSG_MORE).
    Send {
        bid: u16,
        offset: u32,
        len: u32,
        bufs: u16,
        more: bool,
    },
    /// Everything is sent and the source sent FIN: shut the sink for writing. `done`: the other
    /// way is shut too, so the connection ends cleanly.
    Shut { done: bool },
}

/// One client connection and, once chosen, its backend connection.
pub struct Conn {
    pub state: State,
    pub client: RawFd,
    /// -1 until a connect attempt opens a socket.
    pub backend: RawFd,
    pub pool: u16,
    /// The forwarder's listener it came on.
    pub listener: u16,
    /// When a levee this one took over from queued it (`CLOCK_MONOTONIC` ns), else 0.
    pub queued_ns: u64,
    /// The client's address and the one it connected to, as a PROXY header (or the ticket of a
    /// queued connection) named them; `None`: the socket's own.
    pub origin: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    /// `SO_RCVLOWAT` was raised while its PROXY header was partial.
    pub rcvlowat: bool,
    /// Its slot in its listener's count of connections per source, given back when it ends
    /// (`gate::NO_HOLD`: not counted).
    pub held: u32,
    /// The backend holding this connection's reservation in the pool's load, if any.
    pub acquired: Option<u16>,
    /// Backends in preference order; `next_candidate` is the next to try.
    pub candidates: [u16; MAX_CANDIDATES],
    pub candidate_count: u8,
    pub next_candidate: u8,
    /// A connect to some backend was started: a connection left without a backend then
    /// failed to connect, rather than found every backend full.
    pub attempted: bool,
    /// The backend sent at least one byte: its later reset is not held against it.
    pub backend_answered: bool,
    /// When the connect budget runs out (coarse milliseconds).
    pub connect_deadline: u64,
    /// The linked connect timeout; the kernel reads it when the operation is submitted.
    pub link_timeout: Timespec,
    /// Operations submitted and not yet finally completed.
    pub ops: Ops,
    pub up: Flow,
    pub down: Flow,
    pub last_active: u64,
    /// When the client was accepted, or adopted by a worker (coarse milliseconds).
    pub opened_ms: u64,
    /// When the connect now in flight was queued (`CLOCK_MONOTONIC` nanoseconds).
    pub connect_started_ns: u64,
    /// Bytes relayed so far from the client to the backend, and back.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Set while the slot sits in the forwarder's starved list, per direction, so the list holds
    /// each slot and direction at most once (it survives slot reuse on purpose).
    pub starved_listed: [bool; 2],
}

impl Conn {
    pub fn new() -> Self {
        Self {
            state: State::Free,
            client: -1,
            backend: -1,
            pool: 0,
            listener: 0,
            queued_ns: 0,
            origin: None,
            rcvlowat: false,
            held: super::gate::NO_HOLD,
            acquired: None,
            candidates: [0; MAX_CANDIDATES],
            candidate_count: 0,
            next_candidate: 0,
            attempted: false,
            backend_answered: false,
            connect_deadline: 0,
            link_timeout: Timespec::new(),
            ops: Ops(0),
            up: Flow::new(),
            down: Flow::new(),
            last_active: 0,
            opened_ms: 0,
            connect_started_ns: 0,
            bytes_in: 0,
            bytes_out: 0,
            starved_listed: [false; 2],
        }
    }

    /// Resets the slot for a client accepted at `opened` (coarse ms; earlier than `now` when
    /// it waited for a slot).
    pub fn open(&mut self, client: RawFd, pool: u16, opened: u64, now: u64, connect_deadline: u64) {
        let listed = self.starved_listed;
        *self = Self::new();
        self.starved_listed = listed;
        self.state = State::Connecting;
        self.client = client;
        self.pool = pool;
        self.opened_ms = opened;
        self.last_active = now;
        self.connect_deadline = connect_deadline;
    }

    /// How `dir` should receive now, if it should start a receive: it is open for reading, has
    /// none out, and is not at end, paused or starved. Marks the receive armed.
    pub fn start_recv(&mut self, dir: Dir) -> Option<RecvMode> {
        let ready = match dir {
            Dir::Up => matches!(self.state, State::Connecting | State::Relaying),
            Dir::Down => self.state == State::Relaying,
        };
        let f = self.flow_mut(dir);
        if !ready || f.recv != Recv::Idle || f.eof || f.paused || f.starved {
            return None;
        }
        f.recv = Recv::Armed;
        Some(if f.queued > 0 {
            RecvMode::One
        } else {
            RecvMode::Multi
        })
    }

    /// `len` bytes arrived in buffer `bid` for `dir` at `now`: queued. Returns true when the
    /// queue just reached `high_water` with the receive still armed: it must be cancelled (it
    /// is marked cancelling).
    pub fn received(
        &mut self,
        dir: Dir,
        bid: u16,
        len: u32,
        links: &mut BufLinks,
        high_water: u32,
        now: u64,
    ) -> bool {
        self.last_active = now;
        if dir == Dir::Down {
            self.backend_answered = true;
        }
        let f = self.flow_mut(dir);
        links.push(f, bid, len);
        if f.queued < high_water || f.paused {
            return false;
        }
        f.paused = true;
        if f.recv == Recv::Armed {
            f.recv = Recv::Cancelling;
            return true;
        }
        false
    }

    /// The next step of `dir` while relaying; a send or shutdown it returns is marked begun. A
    /// send gathers up to `max_bufs` (at least 1) queued buffers.
    pub fn next_step(&mut self, dir: Dir, links: &BufLinks, max_bufs: u16) -> Step {
        if self.state != State::Relaying {
            return Step::Wait;
        }
        let f = self.flow_mut(dir);
        // A piped direction's bytes leave through its pipe; its FIN waits for them.
        if f.sending || f.shut || f.pipe.busy() {
            return Step::Wait;
        }
        if f.is_empty() {
            if !f.eof {
                return Step::Wait;
            }
            f.shut = true;
            return Step::Shut {
                done: self.up.shut && self.down.shut,
            };
        }
        f.sending = true;
        let mut len = links.head_len(f) - f.offset;
        let (mut last, mut bufs) = (f.head, 1);
        while bufs < max_bufs && last != f.tail {
            last = links.next(last);
            len += links.len(last);
            bufs += 1;
        }
        Step::Send {
            bid: f.head,
            offset: f.offset,
            len,
            bufs,
            // The last bytes before a FIN are held back until the shutdown that follows their
            // send, so they and the FIN leave in one segment rather than two.
            more: f.eof && last == f.tail,
        }
    }

    /// A send of `sent` bytes (more than 0, at most what it was asked to send) of `dir`
    /// completed at `now`. Every buffer it emptied is handed to `freed`, in queue order.
    /// Returns true when the queue fell to the low-water mark: receive again.
    pub fn sent(
        &mut self,
        dir: Dir,
        sent: u32,
        links: &mut BufLinks,
        low_water: u32,
        now: u64,
        mut freed: impl FnMut(u16),
    ) -> bool {
        match dir {
            Dir::Up => self.bytes_in += u64::from(sent),
            Dir::Down => self.bytes_out += u64::from(sent),
        }
        self.last_active = now;
        let f = self.flow_mut(dir);
        f.sending = false;
        let mut left = sent;
        while left > 0 && !f.is_empty() {
            let rest = links.head_len(f) - f.offset;
            if left < rest {
                f.offset += left;
                break;
            }
            left -= rest;
            if let Some(bid) = links.pop(f) {
                freed(bid);
            }
        }
        let resume = f.paused && f.queued <= low_water;
        if resume {
            f.paused = false;
        }
        resume
    }

    /// Why a connection left without a backend ends: a connect was tried and failed, or every
    /// candidate was full before it tried one.
    pub fn no_backend_reason(&self) -> CloseReason {
        if self.attempted {
            CloseReason::ConnectFailed
        } else {
            CloseReason::NoBackend
        }
    }

    /// Starts closing; false when it is closing or free already (a connection ends once).
    pub fn begin_close(&mut self) -> bool {
        if matches!(self.state, State::Closing | State::Free) {
            return false;
        }
        self.state = State::Closing;
        true
    }

    /// A closing connection whose last operation has completed: its slot may be reused.
    pub fn may_free(&self) -> bool {
        self.state == State::Closing && self.ops.none()
    }

    pub fn flow_mut(&mut self, dir: Dir) -> &mut Flow {
        match dir {
            Dir::Up => &mut self.up,
            Dir::Down => &mut self.down,
        }
    }

    /// The client's socket, for a call outside the ring. Only while the slot is in use.
    pub fn client_fd(&self) -> BorrowedFd<'_> {
        debug_assert!(self.client >= 0);
        // SAFETY: a slot in use owns its client socket from `open` until the forwarder frees
        // the slot and closes it; the borrow cannot outlive this `&self`.
        unsafe { BorrowedFd::borrow_raw(self.client) }
    }

    /// The backend's socket, once a connect attempt opened one.
    pub fn backend_fd(&self) -> Option<BorrowedFd<'_>> {
        // SAFETY: as for `client_fd`: the slot owns it until it is closed, and sets it to -1
        // when it closes it.
        (self.backend >= 0).then(|| unsafe { BorrowedFd::borrow_raw(self.backend) })
    }

    /// The socket a direction sends to, for a call outside the ring. Only while relaying.
    pub fn sink_fd(&self, dir: Dir) -> BorrowedFd<'_> {
        let fd = self.sink(dir);
        debug_assert!(fd >= 0);
        // SAFETY: as for `client_fd`: while relaying, the slot owns both sockets.
        unsafe { BorrowedFd::borrow_raw(fd) }
    }

    /// The socket a direction receives from.
    pub fn source(&self, dir: Dir) -> RawFd {
        match dir {
            Dir::Up => self.client,
            Dir::Down => self.backend,
        }
    }

    /// The socket a direction sends to.
    pub fn sink(&self, dir: Dir) -> RawFd {
        match dir {
            Dir::Up => self.backend,
            Dir::Down => self.client,
        }
    }
}

/// Who is to blame when a direction fails: the side whose socket reported the error.
pub fn source_error(dir: Dir) -> CloseReason {
    match dir {
        Dir::Up => CloseReason::ClientError,
        Dir::Down => CloseReason::BackendError,
    }
}

pub fn sink_error(dir: Dir) -> CloseReason {
    match dir {
        Dir::Up => CloseReason::BackendError,
        Dir::Down => CloseReason::ClientError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection accepted at 0 whose backend connected: relaying, nothing out.
    fn relaying() -> Conn {
        let mut c = Conn::new();
        c.open(10, 0, 0, 0, 1000);
        c.backend = 11;
        c.state = State::Relaying;
        c
    }

    /// Completes a send of `n` bytes; returns the buffers it gave back and whether receiving
    /// resumes.
    fn sent(c: &mut Conn, dir: Dir, n: u32, links: &mut BufLinks, low: u32) -> (Vec<u16>, bool) {
        let mut freed = Vec::new();
        let resume = c.sent(dir, n, links, low, 9, |bid| freed.push(bid));
        (freed, resume)
    }

    #[test]
    fn bytes_go_out_in_order_and_the_last_ones_travel_with_the_fin() {
        let mut links = BufLinks::new(8);
        let mut c = relaying();
        assert_eq!(c.start_recv(Dir::Up), Some(RecvMode::Multi));
        assert!(!c.received(Dir::Up, 3, 100, &mut links, 1000, 5));
        assert!(!c.received(Dir::Up, 4, 50, &mut links, 1000, 6));
        c.up.eof = true;
        let first = c.next_step(Dir::Up, &links, 1);
        assert_eq!(
            first,
            Step::Send {
                bid: 3,
                offset: 0,
                len: 100,
                bufs: 1,
                more: false
            }
        );
        // One send at a time, so bytes stay in order.
        assert_eq!(c.next_step(Dir::Up, &links, 1), Step::Wait);
        // A short send: the rest of the same buffer goes next, and it is not given back yet.
        assert_eq!(sent(&mut c, Dir::Up, 60, &mut links, 0), (vec![], false));
        assert_eq!(
            c.next_step(Dir::Up, &links, 1),
            Step::Send {
                bid: 3,
                offset: 60,
                len: 40,
                bufs: 1,
                more: false
            }
        );
        assert_eq!(sent(&mut c, Dir::Up, 40, &mut links, 0).0, vec![3]);
        // The last buffer before the FIN is held back for it (MSG_MORE).
        assert_eq!(
            c.next_step(Dir::Up, &links, 1),
            Step::Send {
                bid: 4,
                offset: 0,
                len: 50,
                bufs: 1,
                more: true
            }
        );
        assert_eq!(sent(&mut c, Dir::Up, 50, &mut links, 0).0, vec![4]);
        assert_eq!(c.bytes_in, 150);
        assert_eq!(c.last_active, 9);
        // Then the FIN; the other way is still open, so the connection goes on.
        assert_eq!(c.next_step(Dir::Up, &links, 1), Step::Shut { done: false });
        assert_eq!(c.next_step(Dir::Up, &links, 1), Step::Wait);
        c.down.eof = true;
        assert_eq!(c.next_step(Dir::Down, &links, 1), Step::Shut { done: true });
    }

    #[test]
    fn a_send_gathers_queued_buffers_and_a_short_one_frees_only_what_left() {
        let mut links = BufLinks::new(8);
        let mut c = relaying();
        for (bid, len) in [(5, 100), (2, 100), (7, 30), (1, 80)] {
            c.received(Dir::Down, bid, len, &mut links, 10_000, 1);
        }
        // At most three buffers a send: the fourth waits, so no FIN may ride on this one.
        c.down.eof = true;
        assert_eq!(
            c.next_step(Dir::Down, &links, 3),
            Step::Send {
                bid: 5,
                offset: 0,
                len: 230,
                bufs: 3,
                more: false
            }
        );
        // 150 of 230 went: the first buffer whole, half of the second.
        assert_eq!(
            sent(&mut c, Dir::Down, 150, &mut links, 0),
            (vec![5], false)
        );
        assert_eq!(c.down.queued, 210);
        // The rest starts mid-buffer and, reaching the tail, carries MSG_MORE for the FIN.
        assert_eq!(
            c.next_step(Dir::Down, &links, 8),
            Step::Send {
                bid: 2,
                offset: 50,
                len: 160,
                bufs: 3,
                more: true
            }
        );
        assert_eq!(sent(&mut c, Dir::Down, 160, &mut links, 0).0, vec![2, 7, 1]);
        assert!(c.down.is_empty());
        assert_eq!(c.down.queued, 0);
        assert_eq!(c.bytes_out, 310);
        assert_eq!(
            c.next_step(Dir::Down, &links, 8),
            Step::Shut { done: false }
        );
    }

    #[test]
    fn a_full_queue_cancels_the_receive_once_and_resumes_at_low_water() {
        let mut links = BufLinks::new(8);
        let mut c = relaying();
        assert_eq!(c.start_recv(Dir::Down), Some(RecvMode::Multi));
        assert!(!c.received(Dir::Down, 0, 100, &mut links, 250, 1));
        assert!(!c.received(Dir::Down, 1, 100, &mut links, 250, 1));
        assert!(c.backend_answered);
        // The third reaches the high-water mark: cancel the armed receive, once.
        assert!(c.received(Dir::Down, 2, 100, &mut links, 250, 1));
        assert_eq!(c.down.recv, Recv::Cancelling);
        assert!(c.down.paused);
        assert!(!c.received(Dir::Down, 5, 100, &mut links, 250, 1));
        // Its cancel lands; while paused, no new receive starts.
        c.down.recv = Recv::Idle;
        assert_eq!(c.start_recv(Dir::Down), None);
        for (bid, resume) in [(0, false), (1, false), (2, true)] {
            assert!(
                matches!(c.next_step(Dir::Down, &links, 1), Step::Send { bid: b, .. } if b == bid)
            );
            assert_eq!(
                sent(&mut c, Dir::Down, 100, &mut links, 100),
                (vec![bid], resume)
            );
        }
        assert!(!c.down.paused);
        assert_eq!(c.bytes_out, 300);
        // Bytes still wait for the client: one buffer at a time.
        assert_eq!(c.start_recv(Dir::Down), Some(RecvMode::One));
    }

    #[test]
    fn the_backend_is_not_read_before_it_is_connected() {
        let mut c = Conn::new();
        c.open(10, 0, 0, 0, 1000);
        assert_eq!(c.state, State::Connecting);
        assert_eq!(c.start_recv(Dir::Down), None);
        assert_eq!(c.start_recv(Dir::Up), Some(RecvMode::Multi));
        // Armed already: not twice.
        assert_eq!(c.start_recv(Dir::Up), None);
        let mut links = BufLinks::new(2);
        assert!(!c.received(Dir::Up, 0, 10, &mut links, 100, 1));
        // Nothing is sent before the backend is there.
        assert_eq!(c.next_step(Dir::Up, &links, 8), Step::Wait);
        assert!(!c.backend_answered);
    }

    #[test]
    fn a_slot_is_freed_only_once_its_last_operation_completed() {
        let mut c = relaying();
        c.ops.begin(2);
        assert!(c.begin_close());
        // A connection ends once.
        assert!(!c.begin_close());
        assert!(!c.may_free());
        c.ops.end();
        assert!(!c.may_free());
        c.ops.end();
        assert!(c.may_free());
    }

    #[test]
    fn a_connection_that_never_tried_a_backend_found_none_with_room() {
        let mut c = Conn::new();
        c.open(10, 0, 0, 0, 1000);
        assert_eq!(c.no_backend_reason(), CloseReason::NoBackend);
        c.attempted = true;
        assert_eq!(c.no_backend_reason(), CloseReason::ConnectFailed);
        // A new client in the same slot starts over.
        c.open(12, 0, 0, 0, 1000);
        assert_eq!(c.no_backend_reason(), CloseReason::NoBackend);
    }
}
