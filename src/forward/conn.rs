//! Per-connection state of a forwarder: the two relay directions and the lifecycle of every
//! io_uring operation a connection owns.
//!
//! Ownership rule: a connection slot is reused only after every operation it submitted has
//! completed (`inflight == 0`), so a completion always finds the connection it belongs to and no
//! buffer or address the kernel may still touch is ever reused early.

use std::os::fd::RawFd;

use io_uring::types::Timespec;

use super::token::Dir;
use crate::balance::MAX_CANDIDATES;
use crate::stats::CloseReason;

/// No buffer: the end of a queue.
pub const NO_BUF: u16 = u16::MAX;

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
    pub inflight: u16,
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
            inflight: 0,
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

    pub fn flow(&self, dir: Dir) -> &Flow {
        match dir {
            Dir::Up => &self.up,
            Dir::Down => &self.down,
        }
    }

    pub fn flow_mut(&mut self, dir: Dir) -> &mut Flow {
        match dir {
            Dir::Up => &mut self.up,
            Dir::Down => &mut self.down,
        }
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
