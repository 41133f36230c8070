//! The forwarder's side of the overflow tier: parking connections that no backend has room
//! for, and letting go of them when a worker takes them over or they leave the queue.
//!
//! A parked connection holds no connection slot and no buffer: only its socket (not read from
//! since it was accepted), a park entry, and one poll that completes if the client leaves. Its
//! ticket is on the pool's queue. It leaves the queue exactly one way (see
//! [`park`](crate::overflow::park)), and is counted once: served (handed off), expired,
//! abandoned, shed, dead-lettered, or closed at shutdown.
//!
//! The poll holds a reference to the socket, so a socket is closed only once its poll has
//! completed: letting go of an entry cancels the poll and finishes at its completion.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use io_uring::opcode;
use io_uring::types::{CancelBuilder, Fd, Timespec};
use levee_rings::table::Table;
use levee_rings::{FutexWait, mpmc, spsc};
use tracing::{debug, warn};

use super::forwarder::Forwarder;
use super::sockopt::{peer_addr, set_linger_zero};
use super::token::{self, Kind};
use crate::overflow::Settings;
use crate::overflow::handoff::{self, socket_cookie};
use crate::overflow::notice::{Notice, NoticeKind};
use crate::overflow::park::{self, Cancel, Park};
use crate::overflow::shared::{self, Geometry};
use crate::overflow::ticket::Ticket;
use crate::pool::queue::new_wait_histogram;
use crate::pool::{Left, Refused};
use crate::stats::CloseReason;
use crate::stats::histogram::Distribution;

/// How often a forwarder with parked connections looks at deadlines and notices.
const TICK_MS: u64 = 10;
/// How often it scans its entries for ones a worker or the supervisor moved on their own.
const SCAN_MS: u64 = 50;
/// A parked client is polled for its leaving once it has waited this long. Most are taken over
/// sooner, and a poll armed on each would cost a submission, a cancellation and a wake-up on the
/// client's FIN (through the worker's copy of the socket) per handoff; a worker that takes a
/// client over checks that it is still there before it connects anywhere.
const POLL_AFTER_MS: u64 = 50;
/// A worker still taking a connection this long after its deadline is not waited for: a
/// takeover takes microseconds (pidfd) or at most a second (SCM_RIGHTS), so it is frozen.
const FORCE_AFTER_MS: u64 = 5_000;
/// Notices read from one ring in one go, so a worker that never stops writing cannot hold the
/// forwarder.
const NOTICES_PER_TURN: usize = 1024;
/// In a listener's refuse payload, replaced by the predicted wait in whole seconds.
pub const RETRY_AFTER: &[u8] = b"${retry_after}";
/// `futex2` flag for a 32-bit futex word; never `FUTEX2_PRIVATE`, since the word is shared.
pub(super) const FUTEX2_SIZE_U32: u32 = 0x02;

/// What the engine hands a forwarder for its part of the overflow tier.
pub struct ParkingSetup {
    pub dir: PathBuf,
    pub geometry: Geometry,
    pub load: Table,
    pub park: Table,
    /// This forwarder's producer on each pool's queue; `None` for pools that reject.
    pub producers: Vec<Option<mpmc::Producer>>,
    /// This forwarder's end of each worker's notice ring, workers 1, 2, ... in order.
    pub notices: Vec<spsc::Consumer>,
    /// Whether io_uring can wait on a futex (Linux 6.7); without it, the tick polls.
    pub futex: bool,
}

/// How a parked connection's socket is closed once its entry is let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// A worker holds the socket: close only this process's copy, touching nothing else.
    HandOver,
    /// The client left: close.
    Close,
    /// Refuse: the listener's payload and FIN, or RST without one.
    Refuse,
    /// Send it to the levee that took over from this one, which queues it (`moved.rs`); counted
    /// once sent.
    Move,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    Free,
    Parked,
    /// Let go; waiting for its poll's completion to close the socket as `finish` says.
    Leaving(Finish),
}

#[derive(Debug, Clone, Copy)]
struct Parked {
    state: EntryState,
    fd: RawFd,
    pool: u16,
    listener: u16,
    generation: u64,
    /// Coarse monotonic milliseconds.
    since_ms: u64,
    /// `CLOCK_MONOTONIC` ns, as in the ticket.
    since_ns: u64,
    /// The addresses its PROXY header named, if any: they go with it to another levee.
    origin: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    /// Its place in its source's count of connections held, given back when it leaves.
    held: u32,
    /// When the worker that took it over committed (its notice says), 0 until then.
    served_at_ns: u64,
    /// Its poll is in flight.
    polling: bool,
    /// The client half-closed after sending its request: only a reset or error means it left.
    half_closed: bool,
    /// A handoff over `SCM_RIGHTS` waits in `unsent`.
    send_pending: bool,
}

impl Parked {
    const FREE: Parked = Parked {
        state: EntryState::Free,
        fd: -1,
        pool: 0,
        listener: 0,
        generation: 0,
        since_ms: 0,
        since_ns: 0,
        origin: None,
        held: super::gate::NO_HOLD,
        served_at_ns: 0,
        polling: false,
        half_closed: false,
        send_pending: false,
    };
}

struct NoticeRing {
    ring: spsc::Consumer,
    /// The futex wait in flight on this ring, kept alive until its completion.
    wait: Option<FutexWait>,
}

pub(super) struct Parking {
    dir: PathBuf,
    geometry: Geometry,
    load: Table,
    park: Table,
    producers: Vec<Option<mpmc::Producer>>,
    notices: Vec<NoticeRing>,
    entries: Box<[Parked]>,
    free: Vec<u32>,
    /// Entries in arrival order, with the generation they were parked in; stale pairs (the
    /// entry left and was reused) are dropped as they come up, or in a sweep when they pile up.
    order: VecDeque<(u32, u64)>,
    next_generation: u64,
    parked: u32,
    tick_armed: bool,
    tick: Timespec,
    last_scan_ms: u64,
    pid: u32,
    start_ticks: u64,
    /// Unbound datagram socket for `SCM_RIGHTS` handoffs, made on first use.
    scm: Option<OwnedFd>,
    /// Handoffs asked for but not sent yet (the worker's socket was full): worker, entry. At
    /// most one per entry (`Parked::send_pending`).
    unsent: Vec<(u32, u32)>,
    futex: bool,
    /// A worker asked for a socket over `SCM_RIGHTS`: such requests need an answer at once, so
    /// the forwarder sleeps on the notice rings from then on. Commits alone can wait for the
    /// end of the forwarder's next loop turn or tick.
    prompt_notices: bool,
    /// Per pool: waits recorded while `ctl` held the pool's histogram.
    pending_waits: Vec<Distribution>,
    /// Entries let go to move to the levee that took over, in arrival order: each is sent once
    /// the kernel is done with its poll and every one ahead of it is sent.
    moving: VecDeque<u32>,
    /// The drain deadline passed: what is still in `moving` is refused, not sent.
    moving_deadline: bool,
}

impl Parking {
    pub(super) fn new(setup: ParkingSetup) -> std::io::Result<Self> {
        let me = levee_rings::ProcessId::current()?;
        let pools = setup.producers.len();
        let entries = setup.geometry.park_entries;
        Ok(Self {
            dir: setup.dir,
            geometry: setup.geometry,
            load: setup.load,
            park: setup.park,
            producers: setup.producers,
            notices: setup
                .notices
                .into_iter()
                .map(|ring| NoticeRing { ring, wait: None })
                .collect(),
            entries: vec![Parked::FREE; entries].into_boxed_slice(),
            free: (0..entries as u32).rev().collect(),
            order: VecDeque::with_capacity(entries),
            next_generation: 1,
            parked: 0,
            tick_armed: false,
            tick: Timespec::new().nsec((TICK_MS * 1_000_000) as u32),
            last_scan_ms: 0,
            pid: me.pid,
            start_ticks: me.start_ticks,
            scm: None,
            unsent: Vec::new(),
            futex: setup.futex,
            prompt_notices: false,
            pending_waits: (0..pools).map(|_| new_wait_histogram()).collect(),
            moving: VecDeque::new(),
            moving_deadline: false,
        })
    }

    /// Connections parked now (including ones leaving whose socket is not closed yet).
    pub(super) fn busy(&self) -> bool {
        self.free.len() < self.entries.len()
    }

    fn dead(&self) -> impl Fn(u8) -> bool + '_ {
        |w: u8| !self.load.is_attached(u32::from(w)).unwrap_or(true)
    }
}

/// A client to queue, as `route` knows it.
pub(super) struct Waiter {
    pub(super) client: RawFd,
    pub(super) pool: u16,
    pub(super) listener: u16,
    /// What the pool's selector ranks by.
    pub(super) flow: u64,
    /// The client's address when the caller has read it already.
    pub(super) peer: Option<std::net::SocketAddr>,
    /// When not 0, when it joined the queue of the levee this one took over from: its wait and
    /// deadline count from then.
    pub(super) queued_ns: u64,
    /// The addresses its PROXY header named, if any.
    pub(super) origin: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    /// Its place in its source's count of connections held (`NO_HOLD`: not counted).
    pub(super) held: u32,
}

impl Forwarder {
    fn park_word(&self, entry: u32) -> Option<&AtomicU64> {
        let p = self.parking.as_deref()?;
        let row = p.geometry.park_row(self.index, entry)?;
        Some(p.park.word(row, 0))
    }

    /// Whether connections already wait in `pool`'s queue (ready tickets, or tickets a worker
    /// holds while it waits for a backend) with a worker attached to serve them: a newcomer
    /// then queues behind them. With no worker attached, nobody drains the queue, and a
    /// newcomer that finds room goes straight to its backend.
    pub(super) fn queue_waiting(&self, pool: u16) -> bool {
        let Some(p) = self.parking.as_deref() else {
            return false;
        };
        let depth = p.producers[usize::from(pool)]
            .as_ref()
            .map_or(0, mpmc::Producer::depth);
        let rows = self.pools[usize::from(pool)].shared.load.rows();
        (depth > 0 || p.load.count(rows.queue()) > 0) && Settings::read(&p.load).workers > 0
    }

    /// Queues a client no backend of its pool has room for, or refuses it when the queue is
    /// full or its wait would outlast the queue timeout (its source's hold then ends).
    pub(super) fn park(&mut self, w: Waiter) {
        let (listener, held) = (w.listener, w.held);
        if !self.try_park(w) {
            self.release_source(listener, held);
        }
    }

    fn try_park(&mut self, w: Waiter) -> bool {
        let Waiter {
            client,
            pool,
            listener,
            flow,
            peer,
            queued_ns,
            origin,
            held,
        } = w;
        let pool_index = usize::from(pool);
        let Some(p) = self.parking.as_deref_mut() else {
            self.refuse_fd(client, listener, pool, CloseReason::Rejected);
            return false;
        };
        let settings = Settings::read(&p.load);
        let shared = &self.pools[pool_index].shared;
        let Some(producer) = p.producers[pool_index].as_mut() else {
            shared.queue.count_refused(Refused::Rejected);
            self.refuse_fd(client, listener, pool, CloseReason::Rejected);
            return false;
        };
        let waiting = producer.depth() as u64 + p.load.count(shared.load.rows().queue());
        if waiting >= p.geometry.park_entries as u64 || p.free.is_empty() {
            shared.queue.count_refused(Refused::Full);
            self.refuse_fd(client, listener, pool, CloseReason::QueueFull);
            return false;
        }
        // Refuse now rather than queue a client that would only time out: the wait it can
        // expect is the queue ahead of it over the rate the queue has been draining at. With no
        // rate measured yet (the first of a burst), it is queued.
        let rate = shared.queue.drain_rate();
        if rate > 0.0 && (waiting + 1) as f64 / rate * 1000.0 > settings.queue_timeout_ms as f64 {
            shared.queue.count_refused(Refused::Predicted);
            self.refuse_fd(client, listener, pool, CloseReason::QueueFull);
            return false;
        }
        // SAFETY: `client` is a socket this forwarder accepted and still owns.
        let fd = unsafe { BorrowedFd::borrow_raw(client) };
        let bound = self
            .listeners
            .get(usize::from(listener))
            .and_then(|l| l.local);
        // A PROXY header's addresses stand for the socket's.
        let local = origin.map(|o| o.1).or(bound).or_else(|| local_addr(fd));
        let (cookie, local) = match (socket_cookie(fd), local) {
            (Ok(c), Some(l)) => (c, l),
            (Err(e), _) => {
                warn!(error = %e, "cannot read a queued client's socket cookie");
                self.refuse_fd(client, listener, pool, CloseReason::LocalError);
                return false;
            }
            (_, None) => {
                self.refuse_fd(client, listener, pool, CloseReason::LocalError);
                return false;
            }
        };
        let Some(peer) = origin.map(|o| o.0).or(peer).or_else(|| peer_addr(fd)) else {
            // The client is already gone.
            self.stats.close(CloseReason::Abandoned);
            self.close_fd(client);
            return false;
        };
        let (Some(entry), Some(producer)) = (p.free.pop(), p.producers[pool_index].as_mut()) else {
            self.refuse_fd(client, listener, pool, CloseReason::LocalError);
            return false;
        };
        let generation = p.next_generation & park::GENERATION_MASK;
        p.next_generation += 1;
        let now_ns = handoff::monotonic_ns();
        // CLOCK_MONOTONIC is one clock for every process of the host; a time from the future
        // (a confused peer) counts as now.
        let since_ns = if queued_ns == 0 {
            now_ns
        } else {
            queued_ns.min(now_ns)
        };
        let ticket = Ticket {
            pool,
            forwarder: self.index as u16,
            entry,
            generation,
            pid: p.pid,
            fd: client,
            start_ticks: p.start_ticks,
            cookie,
            flow,
            enqueued_ns: since_ns,
            deadline_ns: since_ns.saturating_add(settings.queue_timeout_ms * 1_000_000),
            client: peer,
            local,
        };
        let Some(word) = p
            .geometry
            .park_row(self.index, entry)
            .map(|r| p.park.word(r, 0))
        else {
            p.free.push(entry);
            self.refuse_fd(client, listener, pool, CloseReason::LocalError);
            return false;
        };
        // Queued in the word before the ticket is visible, so a worker never finds it free.
        word.store(park::encode(Park::Queued { generation }), Ordering::Release);
        if let Err(e) = producer.push(&ticket.encode()) {
            word.store(0, Ordering::Release);
            p.free.push(entry);
            let reason = match e {
                levee_rings::PushError::Full => {
                    self.pools[pool_index]
                        .shared
                        .queue
                        .count_refused(Refused::Full);
                    CloseReason::QueueFull
                }
                other => {
                    warn!(error = %other, "cannot queue a connection");
                    CloseReason::LocalError
                }
            };
            self.refuse_fd(client, listener, pool, reason);
            return false;
        }
        p.entries[entry as usize] = Parked {
            state: EntryState::Parked,
            fd: client,
            pool,
            listener,
            generation,
            // Coarse ms of the same clock. A moved client joins the arrival list at its tail
            // although it arrived earlier: `expire` may then see its deadline late, by at most
            // the wait of the clients ahead of it; a worker checks the ticket's own deadline.
            since_ms: self.now.saturating_sub((now_ns - since_ns) / 1_000_000),
            since_ns,
            origin,
            held,
            served_at_ns: 0,
            polling: false,
            half_closed: false,
            send_pending: false,
        };
        p.order.push_back((entry, generation));
        p.parked += 1;
        self.pools[pool_index].shared.queue.count_queued();
        self.arm_overflow_tick();
        self.arm_notice_waits();
        true
    }

    /// Polls a parked client for its leaving: its FIN (RDHUP), a reset or error; once it has
    /// half-closed with a request waiting, only the latter.
    fn arm_park_poll(&mut self, entry: u32) {
        let Some(p) = self.parking.as_deref_mut() else {
            return;
        };
        let e = &mut p.entries[entry as usize];
        if e.polling || e.state != EntryState::Parked {
            return;
        }
        e.polling = true;
        let mask = if e.half_closed {
            libc::POLLHUP | libc::POLLERR
        } else {
            libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR
        };
        let poll = opcode::PollAdd::new(Fd(e.fd), mask as u32)
            .build()
            .user_data(token::encode(Kind::ParkPoll, entry));
        self.push(poll);
    }

    fn arm_overflow_tick(&mut self) {
        let Some(p) = self.parking.as_deref_mut() else {
            return;
        };
        if p.tick_armed {
            return;
        }
        p.tick_armed = true;
        let entry = opcode::Timeout::new(&p.tick)
            .build()
            .user_data(token::encode(Kind::OverflowTick, 0));
        self.push(entry);
    }

    /// Waits on every worker's notice ring that has nothing to read now, so a commit or a
    /// request for a socket wakes this forwarder at once.
    fn arm_notice_waits(&mut self) {
        let Some(p) = self.parking.as_deref_mut() else {
            return;
        };
        if !p.futex || !p.prompt_notices {
            return;
        }
        let mut waits = Vec::new();
        for (i, n) in p.notices.iter_mut().enumerate() {
            if n.wait.is_some() {
                continue;
            }
            match n.ring.prepare_data_wait() {
                Ok(Some(w)) => {
                    waits.push(
                        opcode::FutexWait::new(
                            w.word(),
                            u64::from(w.value()),
                            u64::from(u32::MAX),
                            FUTEX2_SIZE_U32,
                        )
                        .build()
                        .user_data(token::encode(Kind::Notice, i as u32)),
                    );
                    n.wait = Some(w);
                }
                // Something to read already: the tick reads it.
                Ok(None) => {}
                Err(e) => debug!(error = %e, "notice ring wait failed"),
            }
        }
        for w in waits {
            self.push(w);
        }
    }

    pub(super) fn on_notice_wait(&mut self, worker: u32, res: i32) {
        let Some(p) = self.parking.as_deref_mut() else {
            return;
        };
        if let Some(n) = p.notices.get_mut(worker as usize) {
            n.wait = None;
        }
        if res < 0 && !matches!(-res, libc::EAGAIN | libc::EINTR | libc::ECANCELED) {
            // A wait the kernel refuses would be re-armed and refused again at once: poll with
            // the tick instead.
            warn!(
                error = %std::io::Error::from_raw_os_error(-res),
                "futex waits on the notice rings fail; polling them every 10 ms instead"
            );
            p.futex = false;
        }
        self.read_notices();
        if self.parking.as_deref().is_some_and(Parking::busy) {
            self.arm_notice_waits();
        }
    }

    /// At the end of each loop turn, while connections are parked: reads what the workers said,
    /// so commits are handled while the forwarder is busy anyway, without a wake-up each.
    pub(super) fn read_notices_if_parked(&mut self) {
        if self.parking.as_deref().is_some_and(|p| p.parked > 0) {
            self.read_notices();
        }
    }

    /// Reads the notices waiting on every worker's ring.
    fn read_notices(&mut self) {
        let Some(p) = self.parking.as_deref_mut() else {
            return;
        };
        let mut got = Vec::new();
        for (i, n) in p.notices.iter_mut().enumerate() {
            for _ in 0..NOTICES_PER_TURN {
                match n.ring.peek() {
                    Ok(Some(record)) => {
                        got.push((i as u32 + 1, Notice::decode(&record)));
                        record.release();
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(worker = i + 1, error = %e, "a worker's notice ring is corrupt");
                        break;
                    }
                }
            }
        }
        for (worker, notice) in got {
            match notice {
                Some(n) => self.on_notice(worker, n),
                None => warn!(worker, "a worker sent a notice levee does not know"),
            }
        }
        self.send_unsent();
    }

    fn on_notice(&mut self, worker: u32, n: Notice) {
        let entry = n.entry;
        let Some(p) = self.parking.as_deref() else {
            return;
        };
        let Some(e) = p.entries.get(entry as usize).copied() else {
            warn!(
                worker,
                entry, "a notice names a park entry that does not exist"
            );
            return;
        };
        if e.state != EntryState::Parked || e.generation != n.generation & park::GENERATION_MASK {
            return; // about a connection that left already
        }
        let Some(word) = self.park_word(entry) else {
            return;
        };
        match n.kind {
            NoticeKind::Committed => {
                if park::release_committed(word, e.generation, worker as u8) {
                    if let Some(p) = self.parking.as_deref_mut() {
                        p.entries[entry as usize].served_at_ns = n.at_ns;
                    }
                    self.leave(
                        entry,
                        Left::Served,
                        CloseReason::HandedOff,
                        Finish::HandOver,
                    );
                }
            }
            NoticeKind::SendSocket => {
                if let Some(p) = self.parking.as_deref_mut()
                    && !p.prompt_notices
                {
                    p.prompt_notices = true;
                    self.arm_notice_waits();
                }
                self.send_socket(worker, entry);
            }
            NoticeKind::Close => self.settle(entry),
        }
    }

    /// Sends parked entry `entry`'s socket to `worker` over its Unix socket, if that worker is
    /// the one taking it.
    fn send_socket(&mut self, worker: u32, entry: u32) {
        let Some(word) = self.park_word(entry).map(|w| w.load(Ordering::Acquire)) else {
            return;
        };
        let Some(p) = self.parking.as_deref_mut() else {
            return;
        };
        let e = p.entries[entry as usize];
        let taking = park::decode(word)
            == (Park::Taking {
                generation: e.generation,
                worker: worker as u8,
            });
        if e.state != EntryState::Parked || !taking {
            return;
        }
        if p.scm.is_none() {
            match handoff::datagram_socket(None) {
                Ok(s) => p.scm = Some(s),
                Err(err) => {
                    warn!(error = %err, "cannot open a socket for SCM_RIGHTS handoffs");
                    return;
                }
            }
        }
        let to = shared::worker_socket_path(&p.dir, worker);
        let mut payload = [0u8; 16];
        payload[..4].copy_from_slice(&(self.index as u32).to_le_bytes());
        payload[4..8].copy_from_slice(&entry.to_le_bytes());
        payload[8..].copy_from_slice(&e.generation.to_le_bytes());
        let Some(sock) = p.scm.as_ref() else { return };
        if let Err(err) = handoff::send_fd(sock.as_fd(), &to, &payload, e.fd) {
            if err.kind() != std::io::ErrorKind::WouldBlock {
                debug!(worker, error = %err, "cannot hand a socket to a worker");
            }
            if !p.entries[entry as usize].send_pending {
                p.entries[entry as usize].send_pending = true;
                p.unsent.push((worker, entry));
            }
        }
    }

    fn send_unsent(&mut self) {
        let Some(p) = self.parking.as_deref_mut() else {
            return;
        };
        if p.unsent.is_empty() {
            return;
        }
        let unsent = std::mem::take(&mut p.unsent);
        for &(_, entry) in &unsent {
            p.entries[entry as usize].send_pending = false;
        }
        for (worker, entry) in unsent {
            self.send_socket(worker, entry);
        }
    }

    /// The poll on a parked client ended: it left (or the poll was cancelled).
    pub(super) fn on_park_poll(&mut self, entry: u32, res: i32) {
        let Some(p) = self.parking.as_deref_mut() else {
            return;
        };
        let Some(e) = p.entries.get_mut(entry as usize) else {
            return;
        };
        e.polling = false;
        let (state, fd) = (e.state, e.fd);
        match state {
            EntryState::Leaving(finish) => self.finish(entry, finish),
            EntryState::Parked if res > 0 => {
                let events = res as i16;
                let gone = events & (libc::POLLHUP | libc::POLLERR) != 0;
                if !gone && has_pending_bytes(fd) {
                    // Half-closed after sending: it waits for its answer. Only a reset or an
                    // error now means it left.
                    if let Some(p) = self.parking.as_deref_mut() {
                        p.entries[entry as usize].half_closed = true;
                    }
                    self.arm_park_poll(entry);
                    return;
                }
                self.let_go(entry, false, (Left::Abandoned, CloseReason::Abandoned));
            }
            _ => {}
        }
    }

    /// Gives up on parked entry `entry` unless a live worker is taking it (or, with `force`,
    /// even then), leaving as `otherwise` says if nobody else decided how. Returns whether the
    /// entry is let go.
    fn let_go(&mut self, entry: u32, force: bool, otherwise: (Left, CloseReason)) -> bool {
        let Some(word) = self.park_word(entry) else {
            return false;
        };
        let Some(p) = self.parking.as_deref() else {
            return false;
        };
        let e = p.entries[entry as usize];
        if e.state != EntryState::Parked {
            return false;
        }
        let finish = match otherwise.0 {
            Left::Abandoned => Finish::Close,
            Left::Moved => Finish::Move,
            _ => Finish::Refuse,
        };
        match park::cancel(word, e.generation, p.dead(), force) {
            Cancel::Cancelled | Cancel::Lost | Cancel::TakerGone(_) => {
                self.leave(entry, otherwise.0, otherwise.1, finish);
            }
            Cancel::Closing(why) => {
                let (how, reason) = closing_reason(why);
                // Decided already (shed, expired, dead-lettered): that stands, also when the
                // queue was about to move. Nobody to refuse when the client is gone.
                let finish = if how == Left::Abandoned {
                    Finish::Close
                } else {
                    Finish::Refuse
                };
                self.leave(entry, how, reason, finish);
            }
            // The notice is on its way (or was lost): a worker relays it.
            Cancel::Committed(_) => {
                self.leave(
                    entry,
                    Left::Served,
                    CloseReason::HandedOff,
                    Finish::HandOver,
                );
            }
            Cancel::Taking(_) => return false,
        }
        true
    }

    /// Lets go of parked entry `entry`: counts how it left, then closes the socket as `finish`
    /// says once its poll has completed.
    fn leave(&mut self, entry: u32, how: Left, reason: CloseReason, finish: Finish) {
        let Some(p) = self.parking.as_deref_mut() else {
            return;
        };
        let e = &mut p.entries[entry as usize];
        if e.state != EntryState::Parked {
            return;
        }
        e.state = EntryState::Leaving(finish);
        p.parked -= 1;
        let (pool, since, polling) = (usize::from(e.pool), e.since_ms, e.polling);
        let queue = &self.pools[pool].shared.queue;
        if finish == Finish::Move {
            // Counted once sent, which keeps the order of arrival (`send_moving`).
            p.moving.push_back(entry);
            self.stop_poll_or_finish(entry, polling, finish);
            return;
        }
        queue.count_left(how);
        if how == Left::Served {
            // From the worker's commit time when its notice said, else from now.
            let wait_us = if e.served_at_ns > e.since_ns {
                (e.served_at_ns - e.since_ns) / 1000
            } else {
                self.now.saturating_sub(since) * 1000
            };
            queue.record_wait(&mut p.pending_waits[pool], wait_us);
        }
        self.stats.close(reason);
        self.stop_poll_or_finish(entry, polling, finish);
    }

    /// Finishes a left entry now, or once its poll's completion says the kernel is done with it.
    fn stop_poll_or_finish(&mut self, entry: u32, polling: bool, finish: Finish) {
        if polling {
            let target = token::encode(Kind::ParkPoll, entry);
            self.push(
                opcode::AsyncCancel2::new(CancelBuilder::user_data(target))
                    .build()
                    .user_data(token::encode(Kind::Ignore, 0)),
            );
        } else {
            self.finish(entry, finish);
        }
    }

    /// Closes a left entry's socket and frees the entry.
    fn finish(&mut self, entry: u32, finish: Finish) {
        let Some(p) = self.parking.as_deref_mut() else {
            return;
        };
        if finish == Finish::Move {
            // It leaves in its turn: the poll is done (or never was), nothing more.
            p.entries[entry as usize].polling = false;
            self.send_moving();
            return;
        }
        let e = std::mem::replace(&mut p.entries[entry as usize], Parked::FREE);
        p.free.push(entry);
        self.release_source(e.listener, e.held);
        match finish {
            Finish::HandOver | Finish::Close => self.close_fd(e.fd),
            Finish::Refuse => self.refuse_parked(e.fd, e.listener, e.pool),
            Finish::Move => {}
        }
    }

    /// Sends the entries let go to move, in their order, up to the first whose poll the kernel
    /// still holds, or until the channel to the new levee is full (the overflow tick sends the
    /// rest). Past the drain deadline, or when the new levee cannot take them, they are refused.
    fn send_moving(&mut self) {
        let mut refused: Option<(u32, std::io::Error)> = None;
        while let Some(p) = self.parking.as_deref_mut() {
            let Some(&entry) = p.moving.front() else {
                break;
            };
            let e = p.entries[entry as usize];
            if e.polling {
                break;
            }
            let deadline = p.moving_deadline;
            let sent = if deadline {
                Err(std::io::Error::other("the drain deadline passed"))
            } else {
                self.send_to_successor(&e)
            };
            let reason = match sent {
                Ok(()) => None,
                // The new levee has not read what it was sent yet: later, in order.
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(err) => {
                    let n = refused.as_ref().map_or(0, |r| r.0);
                    refused = Some((n + 1, err));
                    Some(if deadline {
                        CloseReason::DrainTimeout
                    } else {
                        CloseReason::LocalError
                    })
                }
            };
            if let Some(p) = self.parking.as_deref_mut() {
                p.moving.pop_front();
                p.entries[entry as usize] = Parked::FREE;
                p.free.push(entry);
            }
            self.release_source(e.listener, e.held);
            let queue = &self.pools[usize::from(e.pool)].shared.queue;
            match reason {
                None => {
                    queue.count_left(Left::Moved);
                    self.stats.close(CloseReason::Moved);
                    // The new levee has its own copy now.
                    self.close_fd(e.fd);
                }
                Some(reason) => {
                    queue.count_left(Left::Stopped);
                    self.refuse_fd(e.fd, e.listener, e.pool, reason);
                }
            }
        }
        if let Some((n, err)) = refused {
            warn!(clients = n, error = %err, "cannot move queued clients to the new levee; refused");
        }
    }

    /// Sends a parked client that was let go to the levee that took over.
    fn send_to_successor(&self, e: &Parked) -> std::io::Result<()> {
        let name = self.listeners.get(usize::from(e.listener)).map(|l| &l.name);
        // SAFETY: `e.fd` is the parked client's socket, which this forwarder still owns.
        let client = unsafe { BorrowedFd::borrow_raw(e.fd) };
        match (name, self.stop.successor.get()) {
            (Some(name), Some(s)) => s.send(name, e.since_ns, self.index, e.origin, client),
            _ => Err(std::io::Error::other("no levee to send it to")),
        }
    }

    /// After a handover, while draining: lets go of every queued client the new levee queues
    /// too, oldest first, and sends it there. A client a live worker is taking stays; the
    /// worker serves it.
    pub(super) fn move_parked(&mut self) {
        let (Some(successor), Some(p)) = (self.stop.successor.get(), self.parking.as_deref())
        else {
            return;
        };
        let movable: Vec<u32> = p
            .order
            .iter()
            .filter(|&&(entry, generation)| {
                let e = p.entries[entry as usize];
                e.state == EntryState::Parked
                    && e.generation == generation
                    && self
                        .listeners
                        .get(usize::from(e.listener))
                        .is_some_and(|l| successor.takes(&l.name))
            })
            .map(|&(entry, _)| entry)
            .collect();
        for entry in movable {
            self.let_go(entry, false, (Left::Moved, CloseReason::Moved));
        }
    }

    /// Refuses a client levee owns and has not counted yet: counts `reason`, then closes.
    pub(super) fn refuse_fd(&mut self, fd: RawFd, listener: u16, pool: u16, reason: CloseReason) {
        self.stats.close(reason);
        self.refuse_parked(fd, listener, pool);
    }

    /// Writes the listener's refuse payload and FIN, or resets the client when it has none.
    fn refuse_parked(&mut self, fd: RawFd, listener: u16, pool: u16) {
        let payload = self
            .listeners
            .get(usize::from(listener))
            .map(|l| l.refuse_payload.clone())
            .unwrap_or_else(|| Arc::from(&[][..]));
        // SAFETY: the caller owns `fd` and gives it up to the close at the end.
        let socket = unsafe { BorrowedFd::borrow_raw(fd) };
        if payload.is_empty() {
            set_linger_zero(socket);
        } else {
            let payload = self.with_retry_after(&payload, pool);
            // The socket's send buffer is empty (nothing was ever sent on it), so a payload of
            // a few KiB goes in whole; what does not is cut, never waited for.
            // SAFETY: plain send(2) on a socket this forwarder owns, from a live buffer.
            unsafe {
                libc::send(
                    fd,
                    payload.as_ptr().cast(),
                    payload.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                );
            }
            let _ = super::sockopt::shutdown_write(socket);
        }
        self.close_fd(fd);
    }

    /// The payload with [`RETRY_AFTER`] replaced by the seconds the pool's queue predicts a
    /// newcomer would wait (its depth over its drain rate, or the queue timeout when it has no
    /// rate), at least 1: an HTTP 503 can then carry a `Retry-After` worth heeding.
    fn with_retry_after<'a>(&self, payload: &'a [u8], pool: u16) -> std::borrow::Cow<'a, [u8]> {
        let Some(at) = payload
            .windows(RETRY_AFTER.len())
            .position(|w| w == RETRY_AFTER)
        else {
            return std::borrow::Cow::Borrowed(payload);
        };
        let seconds = match (self.parking.as_deref(), self.pools.get(usize::from(pool))) {
            (Some(p), Some(lp)) => {
                let rows = lp.shared.load.rows();
                let depth = p.producers[usize::from(pool)]
                    .as_ref()
                    .map_or(0, mpmc::Producer::depth) as u64
                    + p.load.count(rows.queue());
                let rate = lp.shared.queue.drain_rate();
                if rate > 0.0 {
                    (depth as f64 / rate).ceil() as u64
                } else {
                    Settings::read(&p.load).queue_timeout_ms.div_ceil(1000)
                }
            }
            _ => 1,
        };
        let mut out = Vec::with_capacity(payload.len() + 8);
        out.extend_from_slice(&payload[..at]);
        out.extend_from_slice(seconds.max(1).to_string().as_bytes());
        out.extend_from_slice(&payload[at + RETRY_AFTER.len()..]);
        std::borrow::Cow::Owned(out)
    }

    /// An entry whose word a worker or the supervisor moved on its own (CLOSING, or COMMITTED
    /// with its notice lost): settle it now.
    fn settle(&mut self, entry: u32) {
        let Some(word) = self.park_word(entry) else {
            return;
        };
        let Some(p) = self.parking.as_deref() else {
            return;
        };
        let e = p.entries[entry as usize];
        if e.state != EntryState::Parked {
            return;
        }
        let moved = match park::decode(word.load(Ordering::Acquire)) {
            Park::Closing { generation, .. } | Park::Committed { generation, .. } => {
                generation == e.generation
            }
            _ => false,
        };
        if moved {
            self.let_go(entry, false, (Left::Expired, CloseReason::QueueTimeout));
        }
    }

    /// The overflow tick: notices, deadlines, entries moved by others; re-armed while anything
    /// is parked.
    pub(super) fn on_overflow_tick(&mut self) {
        let Some(p) = self.parking.as_deref_mut() else {
            return;
        };
        p.tick_armed = false;
        self.read_notices();
        if self.drain_until.is_some() {
            self.move_parked();
            self.send_moving();
        }
        self.expire();
        self.poll_waiting();
        let scan = self
            .parking
            .as_deref()
            .is_some_and(|p| self.now >= p.last_scan_ms + SCAN_MS);
        if scan {
            self.scan_moved();
            self.publish_oldest();
        }
        if self.parking.as_deref().is_some_and(Parking::busy) {
            self.arm_overflow_tick();
            self.arm_notice_waits();
        }
    }

    /// Closes queued clients whose deadline passed and that no live worker is taking (nor one
    /// that has been taking it for [`FORCE_AFTER_MS`] past the deadline).
    fn expire(&mut self) {
        let timeout = match self.parking.as_deref() {
            Some(p) => Settings::read(&p.load).queue_timeout_ms,
            None => return,
        };
        let mut i = 0;
        loop {
            let Some(p) = self.parking.as_deref_mut() else {
                return;
            };
            let Some(&(entry, generation)) = p.order.get(i) else {
                break;
            };
            let e = p.entries[entry as usize];
            if e.state != EntryState::Parked || e.generation != generation {
                // Left already: forget it (from the middle too, once it piles up below).
                if i == 0 {
                    p.order.pop_front();
                } else {
                    i += 1;
                }
                continue;
            }
            let deadline = e.since_ms.saturating_add(timeout);
            if self.now < deadline {
                // The rest arrived later (the timeout is the same for all, or was shorter).
                break;
            }
            let force = self.now >= deadline.saturating_add(FORCE_AFTER_MS);
            if !self.let_go(entry, force, (Left::Expired, CloseReason::QueueTimeout)) {
                // A live worker is taking it this very moment: look again next tick, and at
                // the ones behind it now.
                i += 1;
            }
        }
        // Keep the arrival list bounded by what is parked.
        if let Some(p) = self.parking.as_deref_mut()
            && p.order.len() > 2 * p.parked as usize + 64
        {
            let entries = &p.entries;
            p.order.retain(|&(entry, generation)| {
                let e = entries[entry as usize];
                e.state == EntryState::Parked && e.generation == generation
            });
        }
    }

    /// Arms the leaving poll of the clients that have waited [`POLL_AFTER_MS`], oldest first.
    fn poll_waiting(&mut self) {
        let Some(p) = self.parking.as_deref() else {
            return;
        };
        let due: Vec<u32> = p
            .order
            .iter()
            .filter(|&&(entry, generation)| {
                let e = p.entries[entry as usize];
                e.state == EntryState::Parked && e.generation == generation && !e.polling
            })
            .take_while(|&&(entry, _)| {
                self.now >= p.entries[entry as usize].since_ms + POLL_AFTER_MS
            })
            .map(|&(entry, _)| entry)
            .collect();
        for entry in due {
            self.arm_park_poll(entry);
        }
    }

    /// Looks for entries a worker or the supervisor moved without a notice reaching us.
    fn scan_moved(&mut self) {
        let Some(p) = self.parking.as_deref_mut() else {
            return;
        };
        p.last_scan_ms = self.now;
        let moved: Vec<u32> = p
            .entries
            .iter()
            .enumerate()
            .filter(|(i, e)| {
                e.state == EntryState::Parked
                    && p.geometry.park_row(self.index, *i as u32).is_some_and(|row| {
                        matches!(
                            park::decode(p.park.word(row, 0).load(Ordering::Acquire)),
                            Park::Closing { generation, .. } | Park::Committed { generation, .. }
                                if generation == e.generation
                        )
                    })
            })
            .map(|(i, _)| i as u32)
            .collect();
        for entry in moved {
            self.settle(entry);
        }
    }

    /// Tells `ctl` when this forwarder's oldest queued connection of each pool arrived.
    fn publish_oldest(&mut self) {
        let Some(p) = self.parking.as_deref() else {
            return;
        };
        let mut oldest = vec![0u64; self.pools.len()];
        let mut missing = self.pools.len();
        for &(entry, generation) in &p.order {
            if missing == 0 {
                break;
            }
            let e = p.entries[entry as usize];
            if e.state == EntryState::Parked
                && e.generation == generation
                && oldest[usize::from(e.pool)] == 0
            {
                oldest[usize::from(e.pool)] = e.since_ms.max(1);
                missing -= 1;
            }
        }
        for (pool, since) in oldest.into_iter().enumerate() {
            self.pools[pool].shared.queue.set_oldest(self.index, since);
        }
    }

    /// At the drain deadline: every parked client no worker has committed is closed, even one
    /// a worker is taking (which then cannot commit).
    pub(super) fn close_parked(&mut self) {
        let Some(p) = self.parking.as_deref_mut() else {
            return;
        };
        p.moving_deadline = true;
        self.send_moving();
        let Some(p) = self.parking.as_deref() else {
            return;
        };
        let parked: Vec<u32> = p
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.state == EntryState::Parked)
            .map(|(i, _)| i as u32)
            .collect();
        for entry in parked {
            self.let_go(entry, true, (Left::Stopped, CloseReason::DrainTimeout));
        }
    }

    /// Whether the forwarder still holds parked sockets.
    pub(super) fn parking_busy(&self) -> bool {
        self.parking.as_deref().is_some_and(Parking::busy)
    }
}

fn closing_reason(why: park::CloseWhy) -> (Left, CloseReason) {
    match why {
        park::CloseWhy::DeadLettered => (Left::DeadLettered, CloseReason::DeadLettered),
        park::CloseWhy::Shed => (Left::Shed, CloseReason::Shed),
        park::CloseWhy::Expired => (Left::Expired, CloseReason::QueueTimeout),
        park::CloseWhy::Abandoned => (Left::Abandoned, CloseReason::Abandoned),
    }
}

fn local_addr(fd: BorrowedFd<'_>) -> Option<std::net::SocketAddr> {
    socket2::SockRef::from(&fd).local_addr().ok()?.as_socket()
}

/// Whether the client's socket holds bytes not read yet (its request, sent before a FIN).
fn has_pending_bytes(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv(2) of at most one byte into a live local, on a socket this forwarder owns;
    // MSG_PEEK leaves it in the socket for whoever serves the client.
    let n = unsafe {
        libc::recv(
            fd,
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}
