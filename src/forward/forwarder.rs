//! The per-core forwarder: one thread, one io_uring, one event loop.
//!
//! Each loop turn publishes returned buffers, makes one `io_uring_enter` that submits everything
//! queued and waits for at least one completion, then handles every completion that is ready.
//! Nothing here blocks: sockets are only touched through the ring, except for the few cheap
//! non-blocking calls around a connection's start and end (socket, setsockopt, getpeername,
//! shutdown).

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use io_uring::types::{CancelBuilder, Fd, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};
use tracing::{debug, warn};

use super::bufring::{self, BufRing};
use super::conn::{self, BufLinks, Conn, Flow, NO_VEC, Recv, RecvMode, State, Step};
use super::gate::NO_HOLD;
use super::gather::Gathers;
use super::intake::{Intake, IntakeSetup};
use super::moved::{INBOX_WAKE, Inbox};
use super::parking::{Parking, ParkingSetup, Waiter};
use super::sockopt::{
    backend_socket, peer_addr, reset_and_close, send_proxy_header, set_linger_zero, shutdown_write,
};
use super::splice::{self, Mode, Stalled};
use super::token::{self, Dir, Kind};
use super::uring::{self, Capabilities};
use super::{StopFlags, Tunables, millis};
use crate::balance::{Selector, flow_hash, rank_ignoring_health};
use crate::config::{AllDown, EngineConfig, Overflow};
use crate::overflow::handoff::monotonic_ns;
use crate::pool::{Pool, PoolLoad, Refused};
use crate::stats::histogram::Recorder;
use crate::stats::{CloseReason, ForwarderStats};

/// Completions handled per batch; more wait for the next batch of the same turn.
const CQE_BATCH: usize = 256;

/// Provided buffer group of the receive buffers.
const BUFFER_GROUP: u16 = 0;

/// Gather lists a forwarder keeps for sends of several buffers: two per connection, up to
/// 1024. Bulk transfers are the ones with several buffers queued, and they are few; past the
/// pool, sends take one buffer each.
pub(super) fn gather_slots(max_conns: u32) -> u16 {
    max_conns.saturating_mul(2).min(1024) as u16
}

/// Buffers per send, as `engine.send_batch` says (1 to 64).
pub(super) fn send_batch(configured: u32) -> u16 {
    configured.clamp(1, 64) as u16
}

/// Most bytes one multishot receive completion asks for as a bundle (0: no bundles), from
/// `engine.recv_bundle` buffers of `buffer_size`, where the kernel has bundles. At most half
/// the high-water mark: measured on bulk transfers here (`bench/results/*-ab-bundles.txt`),
/// two 16 KiB buffers a completion paid (1.16× MB/s) where three or four did not (1.00–1.04×),
/// nor four with the mark doubled.
pub(super) fn bundle_bytes(
    caps: Capabilities,
    buffers: u32,
    buffer_size: u32,
    high_water: u32,
) -> u32 {
    if !caps.bundles || buffers <= 1 {
        return 0;
    }
    let bytes = buffers.saturating_mul(buffer_size).min(high_water / 2);
    if bytes <= buffer_size { 0 } else { bytes }
}

/// Most clients held accepted but not yet served when every slot is taken (see `waiting`).
pub(super) const WAITING_MAX: usize = 1024;

/// How long a full forwarder leaves new clients in the kernel's backlog (and its waiting line)
/// for a slot to free. Past it, it accepts them again and refuses each at once while it stays
/// full, so that a forwarder whose slots are all held (by clients that never finish, say) does
/// not look alive to clients it will never serve: they fail fast and are counted.
const FULL_GRACE_MS: u64 = 1_000;

/// After the drain deadline has closed everything, how long to wait for the kernel to finish the
/// last cancelled operations before the thread exits anyway.
const EXIT_GRACE_MS: u64 = 2_000;

/// A client accepted and not yet served: in the waiting line, or on its way to a backend or
/// the queue.
#[derive(Debug)]
pub(super) struct Newcomer {
    pub(super) fd: OwnedFd,
    pub(super) pool: u16,
    pub(super) listener: u16,
    /// Coarse monotonic ms when it was accepted.
    pub(super) accepted: u64,
    /// When it joined a queue already (`CLOCK_MONOTONIC` ns): a client a levee this one took
    /// over from had queued, which keeps its place in time. 0 for everyone else.
    pub(super) queued_ns: u64,
    /// The client's address and the one it connected to, when a PROXY header named them.
    pub(super) origin: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    /// Its PROXY header, if its listener takes one, has been read (or it needs none).
    pub(super) greeted: bool,
    /// Its slot in its source's count of connections held, once its gate let it in.
    pub(super) held: u32,
}

/// A listener socket as one forwarder sees it.
pub(super) struct Listener {
    fd: Option<OwnedFd>,
    /// The configured listener's name, and its place in the configuration.
    pub(super) name: Arc<str>,
    pub(super) index: u16,
    /// The PROXY protocol version its clients send first, and how long they have for it (ms).
    pub(super) proxy: Option<(crate::proxy_protocol::Version, u64)>,
    /// Who it lets in.
    pub(super) gate: super::gate::GateView,
    pub(super) pool: u16,
    /// Written to a client before it is refused.
    pub(super) refuse_payload: Arc<[u8]>,
    /// The address its clients connect to, when it is bound to one (not a wildcard): a queued
    /// client's ticket names it without a getsockname.
    pub(super) local: Option<std::net::SocketAddr>,
    /// The multishot accept is in flight.
    armed: bool,
    /// Accept failed for want of resources (e.g. EMFILE): retried at the next tick rather than
    /// at once, which would spin.
    backoff: bool,
}

/// A pool as one forwarder sees it: the shared state plus this forwarder's own selector and
/// histograms.
pub(super) struct LocalPool {
    pub(super) shared: Arc<Pool>,
    pub(super) selector: Box<dyn Selector>,
    /// Handed over to `shared.histograms` at each tick.
    histograms: Recorder,
    /// The source address the next connection starts looking from (`pool.NAME.source`).
    next_source: usize,
}

impl LocalPool {
    /// The next source address of backend `b`'s family, in turn; `None` without sources.
    fn source_for(&mut self, b: usize) -> Option<&socket2::SockAddr> {
        let sources = &self.shared.sources;
        if sources.is_empty() {
            return None;
        }
        let family = self.shared.addrs[b].domain();
        let n = sources.len();
        let k = (0..n)
            .map(|i| (self.next_source + i) % n)
            .find(|&k| sources[k].domain() == family)?;
        self.next_source = k + 1;
        Some(&sources[k])
    }
}

/// A listener socket handed to a forwarder.
pub struct ListenerSetup {
    pub fd: OwnedFd,
    pub name: Arc<str>,
    /// Its place in the configuration's listeners.
    pub index: usize,
    /// The PROXY protocol version its clients send first, and how long they have for it.
    pub proxy: Option<(crate::proxy_protocol::Version, std::time::Duration)>,
    /// The listener's gate, shared with its other sockets and `ctl`.
    pub gate: Arc<super::gate::Gate>,
    /// Index of its pool.
    pub pool: usize,
    pub refuse_payload: Arc<[u8]>,
    /// The address it is bound to.
    pub addr: std::net::SocketAddr,
}

/// Everything a forwarder needs from the engine.
pub struct Setup {
    pub index: usize,
    pub caps: Capabilities,
    pub engine: EngineConfig,
    /// This forwarder's own SO_REUSEPORT socket for each listener.
    pub listeners: Vec<ListenerSetup>,
    pub pools: Vec<Arc<Pool>>,
    pub stats: Arc<ForwarderStats>,
    pub stop: Arc<StopFlags>,
    /// An eventfd the engine writes to when `stop` is set.
    pub wake: RawFd,
    pub tunables: Arc<Tunables>,
    /// Parks connections no backend has room for on the pools' queues (`levee run`).
    pub parking: Option<ParkingSetup>,
    /// Where clients queued by a levee this one took over from arrive (`levee run`).
    pub inbox: Option<Arc<Inbox>>,
    /// Takes connections from the pools' queues rather than from listeners (a worker).
    pub intake: Option<IntakeSetup>,
}

pub struct Forwarder {
    ring: IoUring,
    bufs: BufRing,
    links: BufLinks,
    /// Gather lists of the sends in flight that take several buffers.
    gathers: Gathers,
    /// Most bytes one multishot receive completion takes as a bundle of buffers; 0: one
    /// buffer each.
    bundle_bytes: u32,
    /// Bytes one way in large reads before a direction is spliced (0: never), the most
    /// pipes open at once for that, the size asked of each, and how many are open.
    splice_after: u32,
    splice_pipes: u32,
    pipe_size: u32,
    pipes: u32,
    /// A pipe came back smaller than asked, and the log said so (once).
    pipe_warned: bool,
    pub(super) conns: Box<[Conn]>,
    /// Free connection slots; a stack, so recently used slots (warm in cache) are reused first.
    pub(super) free: Vec<u32>,
    /// One past the highest slot in use: the tick scans only below it.
    pub(super) high_slot: u32,
    live: u32,
    pub(super) listeners: Vec<Listener>,
    pub(super) pools: Vec<LocalPool>,
    /// Directions whose receive ended for want of buffers.
    starved: Vec<(u32, Dir)>,
    /// Directions that received bytes or a FIN in this turn's completions, to be pumped once
    /// all of them are handled.
    due: Vec<(u32, Dir)>,
    /// Clients accepted while every slot was taken: a multishot accept can deliver several
    /// before the pause reaches it. They wait here, with their pool, for the next free slot,
    /// as they would have in the kernel's backlog.
    pub(super) waiting: VecDeque<Newcomer>,
    pub(super) stats: Arc<ForwarderStats>,
    pub(super) stop: Arc<StopFlags>,
    wake: RawFd,
    /// Coarse monotonic milliseconds, read once per loop turn.
    pub(super) now: u64,
    tick: Timespec,
    accepts_paused: bool,
    /// Full for longer than [`FULL_GRACE_MS`]: accepting, and refusing while no slot is free.
    refusing: bool,
    /// Set once stopping: the drain deadline.
    pub(super) drain_until: Option<u64>,
    pub(super) tunables: Arc<Tunables>,
    drain_timeout_ms: u64,
    /// Queue length of one direction at which its receive is paused, and where it resumes.
    high_water: u32,
    low_water: u32,
    /// Starved receives resume once this many buffers are free again.
    starve_resume: u32,
    /// Bytes in one receive buffer, and how many buffers the forwarder has.
    buffer_size: u32,
    buffer_count: u32,
    /// This forwarder's number in its engine.
    pub(super) index: usize,
    /// The forwarder's side of the overflow tier, when its engine has one.
    pub(super) parking: Option<Box<Parking>>,
    /// A worker's source of connections: the pools' queues.
    pub(super) intake: Option<Box<Intake>>,
    /// Clients moved here from the queue of a levee this one took over from.
    pub(super) inbox: Option<Arc<Inbox>>,
    /// Connections waiting for their PROXY header, and where their first bytes are peeked.
    pub(super) greeting: u32,
    pub(super) header_scratch: Box<[u8]>,
    /// Pause before retrying after io_uring refused a submission; 0 while all is well.
    ring_backoff_ms: u64,
}

impl Forwarder {
    /// Builds the ring and buffers. Runs on the forwarder's own thread (SINGLE_ISSUER).
    pub fn new(setup: Setup) -> io::Result<Self> {
        let e = &setup.engine;
        let ring = uring::build(setup.caps, e.ring_entries)?;
        let count = u16::try_from(e.buffers).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "engine.buffers is above 32768")
        })?;
        let bufs = BufRing::new(&ring, BUFFER_GROUP, count, e.buffer_size)?;
        let max_conns = e.max_conns as usize;
        let conns = (0..max_conns)
            .map(|_| Conn::new())
            .collect::<Vec<_>>()
            .into_boxed_slice();
        let free = (0..e.max_conns).rev().collect();
        let listeners = setup
            .listeners
            .into_iter()
            .map(|l| Listener {
                fd: Some(l.fd),
                name: l.name,
                index: l.index as u16,
                proxy: l.proxy.map(|(v, t)| (v, millis(t).max(1))),
                gate: super::gate::GateView::new(l.gate),
                pool: l.pool as u16,
                refuse_payload: l.refuse_payload,
                local: (!l.addr.ip().is_unspecified()).then_some(l.addr),
                armed: false,
                backoff: false,
            })
            .collect();
        let pools = setup
            .pools
            .into_iter()
            .map(|shared| {
                let selector = shared.balancer.selector(setup.index);
                LocalPool {
                    shared,
                    selector,
                    histograms: Recorder::new(),
                    next_source: 0,
                }
            })
            .collect();
        let high_water = e.buffer_size.saturating_mul(4).max(64 * 1024);
        let parking = setup.parking.map(Parking::new).transpose()?.map(Box::new);
        let intake = setup.intake.map(Intake::new).transpose()?.map(Box::new);
        Ok(Self {
            ring,
            links: BufLinks::new(count),
            gathers: Gathers::new(gather_slots(e.max_conns), send_batch(e.send_batch)),
            bundle_bytes: bundle_bytes(setup.caps, e.recv_bundle, e.buffer_size, high_water),
            splice_after: if setup.caps.splice { e.splice_after } else { 0 },
            splice_pipes: e.splice_pipes,
            pipe_size: e.splice_pipe_size,
            pipes: 0,
            pipe_warned: false,
            // Small: starved directions get buffers back as soon as a few are free, rather than
            // wait for half the ring while readers that stopped hold the rest.
            starve_resume: (bufs.target() / 8).max(4),
            buffer_size: e.buffer_size,
            buffer_count: u32::from(count),
            bufs,
            conns,
            free,
            high_slot: 0,
            live: 0,
            listeners,
            pools,
            starved: Vec::with_capacity(2 * max_conns),
            due: Vec::with_capacity(2 * max_conns),
            waiting: VecDeque::with_capacity(WAITING_MAX),
            stats: setup.stats,
            stop: setup.stop,
            wake: setup.wake,
            now: coarse_now_ms(),
            tick: tick_for(setup.tunables.idle_timeout_ms()),
            accepts_paused: false,
            refusing: false,
            drain_until: None,
            tunables: setup.tunables,
            drain_timeout_ms: millis(e.drain_timeout),
            high_water,
            low_water: high_water / 2,
            index: setup.index,
            parking,
            intake,
            inbox: setup.inbox,
            greeting: 0,
            header_scratch: vec![0u8; super::greeting::HEADER_MAX].into_boxed_slice(),
            ring_backoff_ms: 0,
        })
    }

    /// Runs until stopped and drained.
    pub fn run(mut self) -> io::Result<()> {
        self.push(
            opcode::PollAdd::new(Fd(self.wake), libc::POLLIN as u32)
                .build()
                .user_data(token::encode(Kind::Wake, 0)),
        );
        self.arm_tick();
        self.arm_inbox();
        for i in 0..self.listeners.len() {
            self.arm_accept(i);
        }
        // A stop requested before the first wait still counts.
        if self.stop.requested.load(Ordering::Acquire) {
            self.begin_drain();
        }
        // A worker says it serves, and looks at its queues before its first wait, which only a
        // completion ends.
        if let (Some(intake), Some(pool)) = (self.intake.as_deref(), self.pools.first()) {
            intake.announce(pool.shared.load.holder());
        }
        self.serve_intake();
        let mut cqes: [MaybeUninit<cqueue::Entry>; CQE_BATCH] =
            [const { MaybeUninit::uninit() }; CQE_BATCH];
        let mut batch = [(0u64, 0i32, 0u32); CQE_BATCH];
        loop {
            self.bufs.publish();
            match self.ring.submit_and_wait(1) {
                Ok(_) => self.ring_backoff_ms = 0,
                // Interrupted, or completions must be reaped before more can be submitted.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                    ) => {}
                Err(e) => self.ring_failed(&e),
            }
            self.now = coarse_now_ms();
            loop {
                // Copy the batch out so the completion queue's borrow of the ring ends before
                // the handlers push new submissions.
                let n = {
                    let mut cq = self.ring.completion();
                    let got = cq.fill(&mut cqes);
                    for (to, e) in batch.iter_mut().zip(got.iter()) {
                        *to = (e.user_data(), e.result(), e.flags());
                    }
                    got.len()
                };
                for &(user_data, res, flags) in &batch[..n] {
                    self.dispatch(user_data, res, flags);
                }
                if n < CQE_BATCH {
                    break;
                }
            }
            self.pump_due();
            self.resume_starved();
            self.admit_waiting();
            self.serve_intake();
            self.read_notices_if_parked();
            if self.finished() {
                self.close_inbox();
                // Hand the last closes to the kernel before the ring goes away.
                self.ring.submit()?;
                for p in &mut self.pools {
                    p.histograms.publish_now(&p.shared.histograms);
                }
                return Ok(());
            }
        }
    }

    fn dispatch(&mut self, user_data: u64, res: i32, flags: u32) {
        let Some((kind, index)) = token::decode(user_data) else {
            warn!(user_data, "completion with an unknown token");
            return;
        };
        // The final completion of an operation a connection owns is counted here, once, before
        // its handler runs (which frees a closing connection's slot after its last one).
        match kind {
            Kind::Connect
            | Kind::ConnectTimeout
            | Kind::Send(_)
            | Kind::Header
            | Kind::Readable(_)
            | Kind::Writable(_) => {
                self.conns[index as usize].ops.end();
            }
            Kind::Recv(_) if !cqueue::more(flags) => self.conns[index as usize].ops.end(),
            _ => {}
        }
        match kind {
            Kind::Ignore => {}
            Kind::Accept => self.on_accept(index as usize, res, flags),
            Kind::Wake if index == INBOX_WAKE => self.on_inbox(),
            Kind::Wake => self.on_wake(),
            Kind::Tick => self.on_tick(flags),
            Kind::Connect => self.on_connect(index, res),
            Kind::ConnectTimeout => self.maybe_free(index),
            // A piped direction's splices come back under its receive and send kinds.
            Kind::Recv(dir) if self.piped(index, dir) => self.on_fill(index, dir, res),
            Kind::Send(dir) if self.piped(index, dir) => self.on_drain(index, dir, res),
            Kind::Recv(dir) => self.on_recv(index, dir, res, flags),
            Kind::Send(dir) => self.on_send(index, dir, res),
            Kind::Readable(dir) => self.on_pipe_ready(index, dir, true, res),
            Kind::Writable(dir) => self.on_pipe_ready(index, dir, false, res),
            Kind::ParkPoll => self.on_park_poll(index, res),
            Kind::OverflowTick if self.intake.is_some() => self.on_intake_retry(),
            Kind::OverflowTick => self.on_overflow_tick(),
            Kind::Notice => self.on_notice_wait(index, res),
            Kind::QueueWait => self.on_queue_wait(index, res),
            Kind::SlotWait => self.on_slot_wait(res),
            Kind::ScmRecv => self.on_scm_recv(),
            Kind::Header => self.on_header(index, res),
        }
    }

    // ---- submission -------------------------------------------------------------------------

    /// Queues one submission, handing the queue to the kernel first if it is full.
    ///
    /// Every pointer inside `entry` must stay valid until the operation completes; the callers
    /// point only into `self.conns`, the buffer ring and the pools, which outlive the ring's
    /// operations (slots are reused only once they have no operation out: see `submit`).
    pub(super) fn push(&mut self, entry: squeue::Entry) {
        self.reserve(1);
        // SAFETY: see above; `reserve` made room, so this push cannot fail.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        debug_assert!(pushed.is_ok());
    }

    /// Queues two linked submissions together, so a flush never splits the link.
    fn push_linked(&mut self, first: squeue::Entry, second: squeue::Entry) {
        self.reserve(2);
        // SAFETY: as for `push`; there is room for both.
        let pushed = unsafe { self.ring.submission().push_multiple(&[first, second]) };
        debug_assert!(pushed.is_ok());
    }

    /// Queues an operation that the connection in `slot` owns: counted until its final
    /// completion, which `dispatch` counts. The slot is not reused before.
    pub(super) fn submit(&mut self, slot: u32, entry: squeue::Entry) {
        self.conns[slot as usize].ops.begin(1);
        self.push(entry);
    }

    /// As [`Self::submit`], for two linked operations.
    fn submit_linked(&mut self, slot: u32, first: squeue::Entry, second: squeue::Entry) {
        self.conns[slot as usize].ops.begin(2);
        self.push_linked(first, second);
    }

    fn reserve(&mut self, n: usize) {
        loop {
            let sq = self.ring.submission();
            if sq.capacity() - sq.len() >= n {
                return;
            }
            drop(sq);
            match self.ring.submit() {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) =>
                {
                    std::thread::yield_now();
                }
                Err(e) => self.ring_failed(&e),
            }
        }
    }

    /// A submission the kernel refused for something other than a full completion queue (out
    /// of memory, say): logged, counted, and tried again after a pause that grows to 100 ms,
    /// rather than stopping the forwarder, or the host with it.
    #[cold]
    fn ring_failed(&mut self, e: &io::Error) {
        self.stats.ring_errors.add(1);
        let before = self.ring_backoff_ms;
        self.ring_backoff_ms = (self.ring_backoff_ms * 2).clamp(1, 100);
        // Said when it starts and when the pause reaches its longest, not at every retry.
        if before == 0 || (before < 100 && self.ring_backoff_ms == 100) {
            warn!(
                forwarder = self.index,
                error = %e,
                retry_in_ms = self.ring_backoff_ms,
                "io_uring refused a submission; retrying"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(self.ring_backoff_ms));
    }

    /// One-shot and re-armed from its completion: a multishot timeout would need Linux 6.4, and
    /// one submission per tick costs nothing.
    fn arm_tick(&mut self) {
        let entry = opcode::Timeout::new(&self.tick)
            .build()
            .user_data(token::encode(Kind::Tick, 0));
        self.push(entry);
    }

    fn arm_accept(&mut self, i: usize) {
        let l = &mut self.listeners[i];
        let Some(fd) = l.fd.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        if l.armed || l.backoff || self.accepts_paused || self.drain_until.is_some() {
            return;
        }
        l.armed = true;
        let entry = opcode::AcceptMulti::new(Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(token::encode(Kind::Accept, i as u32));
        self.push(entry);
    }

    /// Stops accepting until the next tick: the forwarder is out of descriptors or memory.
    fn back_off_accepts(&mut self) {
        if !self.backing_off() {
            warn!(
                forwarder = self.index,
                "out of file descriptors for backend connections: accepting again at the next tick"
            );
        }
        for l in &mut self.listeners {
            l.backoff = true;
        }
        self.cancel_accepts();
    }

    /// Whether every listener backs off until the next tick (out of descriptors).
    fn backing_off(&self) -> bool {
        !self.listeners.is_empty() && self.listeners.iter().all(|l| l.backoff)
    }

    /// Stops every armed accept (the forwarder is full or stopping).
    fn cancel_accepts(&mut self) {
        for i in 0..self.listeners.len() {
            if self.listeners[i].armed {
                let target = token::encode(Kind::Accept, i as u32);
                self.push(
                    opcode::AsyncCancel2::new(CancelBuilder::user_data(target))
                        .build()
                        .user_data(token::encode(Kind::Ignore, 0)),
                );
            }
        }
    }

    /// Starts (or restarts) the multishot receive of a direction when it is wanted.
    fn arm_recv(&mut self, slot: u32, dir: Dir) {
        match self.conns[slot as usize].flow_mut(dir).pipe.mode {
            Mode::Buffers => {}
            Mode::Switching => return self.switch_to_pipe(slot, dir),
            Mode::Piped => return,
        }
        let c = &mut self.conns[slot as usize];
        let Some(mode) = c.start_recv(dir) else {
            return;
        };
        let fd = c.source(dir);
        // While the sink keeps up, one multishot receive serves the direction. Once bytes wait
        // for it, a receive takes one buffer at a time: a multishot receive keeps filling
        // buffers until its cancel lands (up to 32 a wake-up), so a reader that stopped reading
        // would hold far more of the forwarder's buffers than its high-water mark.
        let entry = match mode {
            RecvMode::One => opcode::Recv::new(Fd(fd), std::ptr::null_mut(), self.buffer_size)
                .buf_group(self.bufs.group())
                .build()
                .flags(squeue::Flags::BUFFER_SELECT),
            RecvMode::Multi if self.bundle_bytes > 0 => {
                bufring::bundle_recv(Fd(fd), self.bufs.group(), self.bundle_bytes)
            }
            RecvMode::Multi => opcode::RecvMulti::new(Fd(fd), self.bufs.group()).build(),
        }
        .user_data(token::encode(Kind::Recv(dir), slot));
        self.submit(slot, entry);
    }

    /// The queue length at which a direction stops receiving: its high-water mark, or, while
    /// the forwarder is short of buffers (under a quarter free), two buffers' worth, so that
    /// every connection keeps a fair share and readers that stopped reading cannot hold the
    /// pool.
    fn high_water_now(&self) -> u32 {
        if self.bufs.free() * 4 < self.buffer_count {
            self.high_water.min(2 * self.buffer_size)
        } else {
            self.high_water
        }
    }

    /// Pumps `dir` once this turn's completions are all handled. A backend's last bytes and its
    /// FIN arrive as two completions of one receive, usually in one batch; pumping after both
    /// lets the last send know the FIN follows (see [`Self::pump`]).
    fn pump_later(&mut self, slot: u32, dir: Dir) {
        let f = self.conns[slot as usize].flow_mut(dir);
        if !f.pump_due {
            f.pump_due = true;
            self.due.push((slot, dir));
        }
    }

    fn pump_due(&mut self) {
        let mut due = std::mem::take(&mut self.due);
        for &(slot, dir) in &due {
            // The slot may have been closed, or even reused, since: `pump` checks its state.
            self.conns[slot as usize].flow_mut(dir).pump_due = false;
            self.pump(slot, dir);
        }
        // Keep the allocation: the list holds at most two entries per slot.
        due.clear();
        self.due = due;
    }

    /// Sends the head of a direction's queue, or carries its FIN across once the queue is empty.
    fn pump(&mut self, slot: u32, dir: Dir) {
        let c = &mut self.conns[slot as usize];
        let sink = c.sink(dir);
        match c.next_step(dir, &self.links, self.gathers.max_bufs()) {
            Step::Wait => {}
            Step::Shut { done } => {
                // Called here rather than through the ring: io_uring runs every shutdown on an
                // io-wq worker thread, a hop to another thread (and a fight over the socket's
                // lock) per closed connection. shutdown(2) of a TCP socket never blocks.
                // A failed shutdown (the peer already gone) still ends this direction.
                let _ = shutdown_write(self.conns[slot as usize].sink_fd(dir));
                if done {
                    self.close(slot, CloseReason::Done, Reset::None);
                }
            }
            Step::Send {
                bid,
                offset,
                len,
                bufs,
                more,
            } => {
                let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
                let gathered = if bufs > 1 {
                    // The queued buffers from the head on, the head from `offset`.
                    let (links, ring) = (&self.links, &self.bufs);
                    let mut at = (bid, offset);
                    let parts = (0..bufs).map(|_| {
                        let (b, off) = at;
                        at = (links.next(b), 0);
                        (ring.ptr(b, off), links.len(b) - off)
                    });
                    self.gathers.take(parts)
                } else {
                    None
                };
                let entry = match gathered {
                    Some((v, hdr)) => {
                        self.conns[slot as usize].flow_mut(dir).vec = v;
                        opcode::SendMsg::new(Fd(sink), hdr)
                            .flags(flags as u32)
                            .build()
                    }
                    // One buffer, or (never while `max_bufs` says a list is free) no list for
                    // several: either way the head alone goes, and `sent` copes.
                    None => opcode::Send::new(
                        Fd(sink),
                        self.bufs.ptr(bid, offset),
                        len.min(self.links.len(bid) - offset),
                    )
                    .flags(flags)
                    .build(),
                }
                .user_data(token::encode(Kind::Send(dir), slot));
                self.submit(slot, entry);
            }
        }
    }

    // ---- accept and connect -----------------------------------------------------------------

    fn on_accept(&mut self, i: usize, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.listeners[i].armed = false;
        }
        if res >= 0 {
            // SAFETY: the descriptor the kernel just accepted for this forwarder, owned by no one
            // else.
            let client = unsafe { OwnedFd::from_raw_fd(res) };
            self.stats.accept(usize::from(self.listeners[i].index));
            let pool = self.listeners[i].pool;
            match self.free.pop() {
                Some(slot) if self.waiting.is_empty() => {
                    self.open_conn(slot, self.newcomer(client, pool, i));
                }
                // Full for longer than the grace: refused at once, counted.
                None if self.refusing => {
                    reset_and_close(client);
                    self.stats.close(CloseReason::OverCapacity);
                }
                slot => {
                    // Raced with the pause below (accepts already on their way), or others
                    // wait already: wait in line, bounded, for a slot.
                    if let Some(slot) = slot {
                        self.free.push(slot);
                    }
                    if self.waiting.len() < WAITING_MAX {
                        self.waiting.push_back(self.newcomer(client, pool, i));
                    } else {
                        reset_and_close(client);
                        self.stats.close(CloseReason::OverCapacity);
                    }
                }
            }
            if self.free.is_empty() && !self.accepts_paused && !self.refusing {
                // Full: leave further clients in the kernel's backlog rather than accept and
                // drop them, for a while. Resumed when a slot frees; past the grace, refused.
                self.accepts_paused = true;
                self.full_since(true);
                self.cancel_accepts();
            }
        } else if res != -libc::ECANCELED {
            self.stats.accept_errors.add(1);
            let err = io::Error::from_raw_os_error(-res);
            warn!(forwarder_listener = i, error = %err, "accept failed");
            if matches!(
                -res,
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
            ) {
                self.listeners[i].backoff = true;
            }
        }
        if !self.listeners[i].armed {
            if self.drain_until.is_some() {
                // Stopping: the cancelled accept was the last user of this socket.
                self.close_listener(i);
            } else {
                self.arm_accept(i);
            }
        }
    }

    /// A client just accepted on listener `i`.
    fn newcomer(&self, fd: OwnedFd, pool: u16, i: usize) -> Newcomer {
        Newcomer {
            fd,
            pool,
            listener: i as u16,
            accepted: self.now,
            queued_ns: 0,
            origin: None,
            greeted: false,
            held: super::gate::NO_HOLD,
        }
    }

    /// Serves a newcomer from `slot`: on a listener that takes the PROXY protocol, once its
    /// header has come (a client moved from another levee's queue sent it there).
    pub(super) fn open_conn(&mut self, slot: u32, newcomer: Newcomer) {
        let deadline = self.now + self.tunables.connect_timeout_ms();
        let c = &mut self.conns[slot as usize];
        // The slot owns the socket from here until it is freed (closed through the ring).
        c.open(
            newcomer.fd.into_raw_fd(),
            newcomer.pool,
            newcomer.accepted,
            self.now,
            deadline,
        );
        c.listener = newcomer.listener;
        c.queued_ns = newcomer.queued_ns;
        c.origin = newcomer.origin;
        c.held = newcomer.held;
        self.live += 1;
        self.high_slot = self.high_slot.max(slot + 1);
        match self.listeners[usize::from(newcomer.listener)].proxy {
            Some((_, timeout_ms)) if !newcomer.greeted => {
                // Only the balancers may name a client: others are refused before a byte.
                if let Some(rules) = self.listeners[usize::from(newcomer.listener)]
                    .gate
                    .upstream()
                {
                    let from = peer_addr(self.conns[slot as usize].client_fd());
                    if !from.is_some_and(|a| rules.upstream.iter().any(|r| r.contains(a.ip()))) {
                        self.close(slot, CloseReason::Denied, Reset::Client);
                        return;
                    }
                }
                let c = &mut self.conns[slot as usize];
                c.state = State::Greeting;
                // The header's deadline, while it is awaited.
                c.connect_deadline = self.now + timeout_ms;
                self.greeting += 1;
                self.arm_header_wait(slot);
            }
            // Moved from another levee, or back from the waiting line: let in already.
            _ if newcomer.greeted => self.route(slot),
            _ => self.admit(slot),
        }
    }

    /// Lets the client in `slot` through its listener's gate, then routes it.
    pub(super) fn admit(&mut self, slot: u32) {
        let c = &self.conns[slot as usize];
        let (origin, l) = (c.origin, usize::from(c.listener));
        let gate = &mut self.listeners[l].gate;
        if gate.active() {
            // The PROXY header's client, or the socket's.
            let verdict = match origin.map(|o| o.0).or_else(|| peer_addr(c.client_fd())) {
                Some(peer) => gate.admit(peer.ip(), self.now),
                // Gone already.
                None => Err(CloseReason::ClientError),
            };
            match verdict {
                Ok(held) => self.conns[slot as usize].held = held,
                Err(reason) => {
                    self.close(slot, reason, Reset::Client);
                    return;
                }
            }
        }
        self.route(slot);
    }

    /// Chooses a backend for the client in `slot` (or queues or refuses it) and connects.
    pub(super) fn route(&mut self, slot: u32) {
        let c = &self.conns[slot as usize];
        let (pool, listener, queued_ns, origin) = (c.pool, c.listener, c.queued_ns, c.origin);
        let p = &mut self.pools[usize::from(pool)];
        // Only hashing selectors need the client's address (one getpeername, unless a PROXY
        // header named it).
        let peer = p
            .shared
            .hash_key
            .and_then(|_| origin.map(|o| o.0).or_else(|| peer_addr(c.client_fd())));
        let flow = match (p.shared.hash_key, peer) {
            (Some(key), Some(peer)) => flow_hash(&peer, key),
            _ => 0,
        };
        let overflow = p.shared.overflow;
        let queues = overflow == Overflow::Queue && self.parking.is_some();
        // A newcomer never overtakes a connection already waiting (HAProxy's rule): while the
        // queue is not empty, freed slots are the queue's. Unless no backend is up at all:
        // then nothing will be served from the queue, and `all_down` decides as ever.
        if queues
            && self.queue_waiting(pool)
            && !none_up(&self.pools[usize::from(pool)].shared.load)
        {
            self.park_slot(slot, flow, peer);
            return;
        }
        let p = &mut self.pools[usize::from(pool)];
        let c = &mut self.conns[slot as usize];
        let out = &mut c.candidates[..self.tunables.connect_tries()];
        let mut n = p.selector.rank(flow, &p.shared.load, out);
        // Only an empty ranking asks whether any backend is up: a pass over the pool.
        let all_down = n == 0 && none_up(&p.shared.load);
        if all_down && p.shared.all_down == AllDown::TryAnyway {
            n = rank_ignoring_health(&p.shared.load, flow, out);
        }
        c.candidate_count = n as u8;
        // Every candidate that is up is full (or fills up before this connection gets a slot):
        // it overflows. With no backend up at all, it is refused as before; nothing in the
        // queue would be served either.
        let acquired = if n == 0 {
            None
        } else {
            self.acquire_next(slot)
        };
        let Some(b) = acquired else {
            if all_down {
                self.close(slot, CloseReason::NoBackend, Reset::Client);
            } else if queues {
                self.park_slot(slot, flow, peer);
            } else if overflow == Overflow::Reject {
                let (client, held) = self.unopen(slot);
                self.release_source(listener, held);
                self.pools[usize::from(pool)]
                    .shared
                    .queue
                    .count_refused(Refused::Rejected);
                self.refuse_fd(client.into_raw_fd(), listener, pool, CloseReason::Rejected);
            } else {
                self.close(slot, CloseReason::NoBackend, Reset::Client);
            }
            return;
        };
        // The backend's socket first: with no descriptor for it, the client goes back to the
        // head of the waiting line, untouched, rather than be refused.
        let p = &mut self.pools[usize::from(pool)];
        let source = p.source_for(usize::from(b)).cloned();
        let backend = match backend_socket(&p.shared.addrs[usize::from(b)], source.as_ref()) {
            Ok(fd) => fd,
            Err(e) if out_of_descriptors(&e) => {
                self.pools[usize::from(pool)]
                    .shared
                    .load
                    .release(usize::from(b));
                self.conns[slot as usize].acquired = None;
                let accepted = self.conns[slot as usize].opened_ms;
                let (fd, held) = self.unopen(slot);
                self.waiting.push_front(Newcomer {
                    fd,
                    pool,
                    listener,
                    accepted,
                    queued_ns,
                    origin,
                    // Its header, if any, is read: it is not awaited again.
                    greeted: true,
                    held,
                });
                self.back_off_accepts();
                return;
            }
            Err(e) => {
                warn!(error = %e, "cannot open a backend socket");
                self.close(slot, CloseReason::LocalError, Reset::Client);
                return;
            }
        };
        // Receive from the client at once: its first bytes are ready when the backend is.
        self.arm_recv(slot, Dir::Up);
        self.start_connect(slot, b, Some(backend));
    }

    /// A connection a worker took over from the queue, with backend `backend` reserved for it:
    /// from here on it is like any other.
    pub(super) fn adopt(
        &mut self,
        slot: u32,
        client: RawFd,
        pool: u16,
        backend: u16,
        candidates: &[u16],
        origin: (std::net::SocketAddr, std::net::SocketAddr),
    ) {
        let deadline = self.now + self.tunables.connect_timeout_ms();
        let c = &mut self.conns[slot as usize];
        c.open(client, pool, self.now, self.now, deadline);
        // The ticket's addresses: those levee saw, or its client's PROXY header named.
        c.origin = Some(origin);
        let n = candidates.len().min(c.candidates.len());
        c.candidates[..n].copy_from_slice(&candidates[..n]);
        c.candidate_count = n as u8;
        // `candidates[0]` is the backend reserved for it.
        c.next_candidate = 1;
        c.acquired = Some(backend);
        self.live += 1;
        self.high_slot = self.high_slot.max(slot + 1);
        self.arm_recv(slot, Dir::Up);
        self.start_connect(slot, backend, None);
    }

    /// Moves the client in `slot`, not yet connected anywhere, to its pool's queue.
    fn park_slot(&mut self, slot: u32, flow: u64, peer: Option<std::net::SocketAddr>) {
        let c = &self.conns[slot as usize];
        let (pool, listener, queued_ns, origin) = (c.pool, c.listener, c.queued_ns, c.origin);
        let (client, held) = self.unopen(slot);
        self.park(Waiter {
            client: client.into_raw_fd(),
            pool,
            listener,
            flow,
            peer,
            queued_ns,
            origin,
            held,
        });
    }

    /// Gives back a slot that `open_conn` took before anything was submitted for it; returns
    /// the client's socket and its hold on its source's count, which go on with the client.
    fn unopen(&mut self, slot: u32) -> (OwnedFd, u32) {
        let c = &mut self.conns[slot as usize];
        debug_assert!(c.ops.none() && c.acquired.is_none() && c.client >= 0);
        c.state = State::Free;
        // SAFETY: the slot owned the client's socket (since `open_conn`) and lets it go here.
        let client = unsafe { OwnedFd::from_raw_fd(std::mem::replace(&mut c.client, -1)) };
        let held = std::mem::replace(&mut c.held, NO_HOLD);
        self.free.push(slot);
        self.live -= 1;
        (client, held)
    }

    /// Ends a client's hold on its source's count of connections (listener `listener`).
    pub(super) fn release_source(&mut self, listener: u16, held: u32) {
        if held != NO_HOLD
            && let Some(l) = self.listeners.get(usize::from(listener))
        {
            l.gate.gate.release(held);
        }
    }

    /// Reserves the next candidate backend that has room; `None` when none has.
    fn acquire_next(&mut self, slot: u32) -> Option<u16> {
        let c = &mut self.conns[slot as usize];
        let load = &self.pools[usize::from(c.pool)].shared.load;
        while c.next_candidate < c.candidate_count {
            let b = c.candidates[usize::from(c.next_candidate)];
            c.next_candidate += 1;
            if load.try_acquire(usize::from(b)) {
                c.acquired = Some(b);
                return Some(b);
            }
        }
        None
    }

    /// Tries the next candidate backend that has room, within the connect budget.
    fn connect_next(&mut self, slot: u32) {
        match self.acquire_next(slot) {
            Some(b) => self.start_connect(slot, b, None),
            None => {
                let reason = self.conns[slot as usize].no_backend_reason();
                self.close(slot, reason, Reset::Client);
            }
        }
    }

    /// Connects to backend `b`, reserved for this connection, within the connect budget.
    /// `socket` is the backend socket when the caller has made it already.
    fn start_connect(&mut self, slot: u32, b: u16, socket: Option<OwnedFd>) {
        let c = &mut self.conns[slot as usize];
        let left = c.connect_deadline.saturating_sub(self.now);
        if left == 0 {
            // The budget ran out before this attempt; the attempt that used it was counted.
            if let Some(fd) = socket {
                c.backend = fd.into_raw_fd(); // closed with the connection
            }
            self.close(slot, CloseReason::ConnectFailed, Reset::Client);
            return;
        }
        // Each attempt gets an equal share of what is left of the budget, so a backend that
        // never answers (listening, never accepting) costs one share and the next candidate
        // still gets its turn, as with HAProxy's `timeout connect` and `retries`.
        let attempts_left = u64::from(c.candidate_count.saturating_sub(c.next_candidate)) + 1;
        let remaining = (left / attempts_left).max(1);
        let p = &mut self.pools[usize::from(c.pool)];
        let fd = match socket.map_or_else(
            || {
                let source = p.source_for(usize::from(b)).cloned();
                backend_socket(&p.shared.addrs[usize::from(b)], source.as_ref())
            },
            Ok,
        ) {
            Ok(fd) => fd,
            Err(e) => {
                let exhausted = out_of_descriptors(&e);
                self.close(slot, CloseReason::LocalError, Reset::Client);
                if exhausted {
                    // A retry after a failed connect: this client is lost, but the next ones
                    // wait in the kernel's backlog until the next tick.
                    self.back_off_accepts();
                } else {
                    warn!(error = %e, "cannot open a backend socket");
                }
                return;
            }
        };
        // The slot owns the socket from here until it closes it.
        c.backend = fd.into_raw_fd();
        c.attempted = true;
        c.link_timeout = Timespec::new()
            .sec(remaining / 1000)
            .nsec((remaining % 1000) as u32 * 1_000_000);
        let addr = &self.pools[usize::from(c.pool)].shared.addrs[usize::from(b)];
        let connect = opcode::Connect::new(Fd(c.backend), addr.as_ptr().cast(), addr.len())
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(token::encode(Kind::Connect, slot));
        let timeout = opcode::LinkTimeout::new(&c.link_timeout)
            .build()
            .user_data(token::encode(Kind::ConnectTimeout, slot));
        self.stats.connect_attempts.add(1);
        c.connect_started_ns = monotonic_ns();
        self.submit_linked(slot, connect, timeout);
    }

    fn on_connect(&mut self, slot: u32, res: i32) {
        let c = &mut self.conns[slot as usize];
        if c.state == State::Closing {
            self.maybe_free(slot);
            return;
        }
        let pool = usize::from(c.pool);
        if res == 0 {
            // Below the clock's microsecond it counts as one, the histogram's lowest value.
            let us = monotonic_ns().saturating_sub(c.connect_started_ns) / 1000;
            self.pools[pool].histograms.connected(us.max(1));
            if let Some(b) = c.acquired {
                self.pools[pool]
                    .shared
                    .health
                    .signals
                    .connected(usize::from(b));
            }
            // The PROXY header goes first, before any of the client's bytes.
            if let Some(version) = self.pools[pool].shared.proxy_protocol
                && let Some(backend) = c.backend_fd()
                && let Err(e) = send_proxy_header(version, c.client_fd(), c.origin, backend)
            {
                debug!(error = %e, "cannot send the PROXY header");
                self.close(slot, CloseReason::LocalError, Reset::Both);
                return;
            }
            let c = &mut self.conns[slot as usize];
            c.state = State::Relaying;
            c.last_active = self.now;
            self.arm_recv(slot, Dir::Down);
            self.pump(slot, Dir::Up);
            return;
        }
        self.stats.connect_failures.add(1);
        if res == -libc::ECANCELED {
            self.stats.connect_timeouts.add(1);
        }
        if let Some(b) = c.acquired.take() {
            let shared = &self.pools[pool].shared;
            shared.health.signals.connect_failed(usize::from(b));
            shared.load.release(usize::from(b));
            debug!(
                backend = %self.pools[pool].shared.names[usize::from(b)],
                error = %io::Error::from_raw_os_error(-res),
                "connect failed; trying the next backend"
            );
        }
        let fd = std::mem::replace(&mut c.backend, -1);
        self.close_fd(fd);
        self.connect_next(slot);
    }

    // ---- relay --------------------------------------------------------------------------------

    fn on_recv(&mut self, slot: u32, dir: Dir, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        let bundle = bid.map(|first| self.bufs.bundle(first, res));
        if let Some(b) = &bundle {
            self.bufs.taken(b.count());
        }
        let c = &mut self.conns[slot as usize];
        if !more {
            c.flow_mut(dir).recv = Recv::Idle;
        }
        if c.state == State::Closing {
            if let Some(mut b) = bundle {
                while let Some((bid, _)) = b.pop(&self.bufs) {
                    self.bufs.give_back(bid);
                }
            }
            self.maybe_free(slot);
            return;
        }
        if res > 0 {
            let Some(mut bundle) = bundle else {
                // Data without a buffer cannot happen with a buffer-select receive.
                self.close(slot, CloseReason::LocalError, Reset::Both);
                return;
            };
            let high_water = self.high_water_now();
            let c = &mut self.conns[slot as usize];
            let mut cancel = false;
            let mut bulk = false;
            while let Some((bid, len)) = bundle.pop(&self.bufs) {
                cancel |= c.received(dir, bid, len, &mut self.links, high_water, self.now);
                bulk |= c
                    .flow_mut(dir)
                    .pipe
                    .received(len, self.buffer_size, self.splice_after);
            }
            if c.flow_mut(dir.other()).pipe.other_spoke() {
                // The other way waits on a poll with its pipe empty: a new exchange began on
                // a kept-alive connection; its answer starts on buffers (see `unpipe`).
                let target = token::encode(Kind::Readable(dir.other()), slot);
                self.push(
                    opcode::AsyncCancel2::new(CancelBuilder::user_data(target))
                        .build()
                        .user_data(token::encode(Kind::Ignore, 0)),
                );
            }
            let c = &mut self.conns[slot as usize];
            if bulk && self.pipes < self.splice_pipes && c.state == State::Relaying {
                // A bulk transfer: receive no more into buffers; the pipe takes over once the
                // receive has ended and the queue is sent (`switch_to_pipe`).
                let f = c.flow_mut(dir);
                f.pipe.mode = Mode::Switching;
                if f.recv == Recv::Armed {
                    f.recv = Recv::Cancelling;
                    cancel = true;
                }
            }
            if cancel {
                let target = token::encode(Kind::Recv(dir), slot);
                self.push(
                    opcode::AsyncCancel2::new(CancelBuilder::user_data(target))
                        .build()
                        .user_data(token::encode(Kind::Ignore, 0)),
                );
            }
            self.pump_later(slot, dir);
        } else if res == 0 {
            if let Some(bid) = bid {
                self.bufs.give_back(bid);
            }
            c.flow_mut(dir).eof = true;
            self.pump_later(slot, dir);
        } else {
            match -res {
                libc::ENOBUFS => {
                    c.flow_mut(dir).starved = true;
                    let listed = &mut c.starved_listed[dir as usize];
                    if !*listed {
                        *listed = true;
                        self.starved.push((slot, dir));
                    }
                }
                libc::ECANCELED => {}
                _ => {
                    self.close(slot, conn::source_error(dir), Reset::Both);
                    return;
                }
            }
        }
        if !more {
            self.arm_recv(slot, dir);
        }
    }

    fn on_send(&mut self, slot: u32, dir: Dir, res: i32) {
        let c = &mut self.conns[slot as usize];
        let f = c.flow_mut(dir);
        if f.vec != NO_VEC {
            self.gathers
                .give_back(std::mem::replace(&mut f.vec, NO_VEC));
        }
        if c.state == State::Closing {
            c.flow_mut(dir).sending = false;
            self.maybe_free(slot);
            return;
        }
        if res <= 0 {
            c.flow_mut(dir).sending = false;
            // A send of a non-empty buffer that moves nothing is as fatal as an error.
            self.close(slot, conn::sink_error(dir), Reset::Both);
            return;
        }
        let sent = res as u32;
        match dir {
            Dir::Up => self.stats.bytes_client_to_backend.add(u64::from(sent)),
            Dir::Down => self.stats.bytes_backend_to_client.add(u64::from(sent)),
        }
        let bufs = &mut self.bufs;
        let resume = c.sent(
            dir,
            sent,
            &mut self.links,
            self.low_water,
            self.now,
            |bid| {
                bufs.give_back(bid);
            },
        );
        if resume {
            self.arm_recv(slot, dir);
        }
        self.pump(slot, dir);
        if self.conns[slot as usize].flow_mut(dir).pipe.mode == Mode::Switching {
            self.switch_to_pipe(slot, dir);
        }
    }

    // ---- splice -------------------------------------------------------------------------------

    fn piped(&mut self, slot: u32, dir: Dir) -> bool {
        self.conns[slot as usize].flow_mut(dir).pipe.mode == Mode::Piped
    }

    /// Moves a switching direction onto a pipe once its receive has ended and its queue is
    /// sent; before that it waits (this runs again when either happens). A pipe that cannot
    /// be opened leaves the direction on buffers.
    fn switch_to_pipe(&mut self, slot: u32, dir: Dir) {
        let c = &mut self.conns[slot as usize];
        if c.state != State::Relaying {
            return;
        }
        let f = c.flow_mut(dir);
        if f.recv != Recv::Idle || f.sending || !f.is_empty() {
            return;
        }
        if f.eof || self.pipes >= self.splice_pipes {
            // Nothing more to read, or the pipes ran out meanwhile: stay on buffers.
            f.pipe.refused();
            self.arm_recv(slot, dir);
            return;
        }
        let (source, sink) = (c.source(dir), c.sink(dir));
        match splice::open_pipe(self.pipe_size) {
            Ok((r, w, capacity)) => {
                if capacity < self.pipe_size && !self.pipe_warned {
                    self.pipe_warned = true;
                    warn!(
                        asked = self.pipe_size,
                        got = capacity,
                        "splice pipes are smaller than engine.splice_pipe_size: the kernel's \
                         fs.pipe-max-size or this user's fs.pipe-user-pages-soft is lower; \
                         bulk transfers gain less"
                    );
                }
                // splice(2) waits on a socket unless the socket itself is non-blocking; the
                // ring's own receives and sends do not care either way.
                set_nonblocking(source);
                set_nonblocking(sink);
                let f = self.conns[slot as usize].flow_mut(dir);
                f.pipe.piped(r.into_raw_fd(), w.into_raw_fd(), capacity);
                self.pipes += 1;
                self.stats.splices.add(1);
                self.fill_pipe(slot, dir);
            }
            Err(e) => {
                debug!(error = %e, "cannot open a pipe to splice through; staying on buffers");
                self.conns[slot as usize].flow_mut(dir).pipe.refused();
                self.arm_recv(slot, dir);
            }
        }
    }

    /// Splices from the source into the pipe, if there is room and nothing is out.
    fn fill_pipe(&mut self, slot: u32, dir: Dir) {
        self.splice_step(slot, dir, true);
    }

    /// Splices from the pipe to the sink, if the pipe holds bytes and nothing is out.
    fn drain_pipe(&mut self, slot: u32, dir: Dir) {
        self.splice_step(slot, dir, false);
    }

    /// Submits a piped direction's splice into its pipe (`fill`) or out of it, if one is due.
    /// Completions come back as the direction's receive and send, respectively.
    fn splice_step(&mut self, slot: u32, dir: Dir, fill: bool) {
        let c = &mut self.conns[slot as usize];
        let (source, sink) = (c.source(dir), c.sink(dir));
        let p = &mut c.flow_mut(dir).pipe;
        let (len, from, to, kind) = if fill {
            (p.fill(), source, p.w, Kind::Recv(dir))
        } else {
            (p.drain(), p.r, sink, Kind::Send(dir))
        };
        let Some(len) = len else {
            return;
        };
        let entry = opcode::Splice::new(Fd(from), -1, Fd(to), -1, len)
            .flags(libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE)
            .build()
            .user_data(token::encode(kind, slot));
        self.submit(slot, entry);
    }

    fn on_fill(&mut self, slot: u32, dir: Dir, res: i32) {
        let c = &mut self.conns[slot as usize];
        if c.state == State::Closing {
            self.maybe_free(slot);
            return;
        }
        if res == 0 || res == -libc::EAGAIN {
            match c.flow_mut(dir).pipe.stalled(res == 0) {
                Stalled::Drain => {}
                Stalled::Poll => self.poll_source(slot, dir),
                Stalled::Read => self.read_by_hand(slot, dir),
                Stalled::Unpipe => self.unpipe(slot, dir),
            }
            return;
        }
        if res < 0 {
            self.close(slot, conn::source_error(dir), Reset::Both);
            return;
        }
        self.pipe_filled(slot, dir, res as u32);
    }

    fn pipe_filled(&mut self, slot: u32, dir: Dir, n: u32) {
        let c = &mut self.conns[slot as usize];
        c.last_active = self.now;
        if dir == Dir::Down {
            c.backend_answered = true;
        }
        c.flow_mut(dir).pipe.filled(n);
        self.drain_pipe(slot, dir);
        self.fill_pipe(slot, dir);
    }

    /// Waits until a piped direction's source is readable.
    fn poll_source(&mut self, slot: u32, dir: Dir) {
        let entry = opcode::PollAdd::new(
            Fd(self.conns[slot as usize].source(dir)),
            libc::POLLIN as u32,
        )
        .build()
        .user_data(token::encode(Kind::Readable(dir), slot));
        self.submit(slot, entry);
    }

    /// One byte by hand, where splice moved nothing from a source that is readable or ended
    /// ([`Stalled::Read`]): a plain receive steps over an urgent byte as the relay's receives
    /// always do, and tells a real end from a stop at the urgent mark. The byte it reads goes
    /// into the (empty) pipe, in order.
    fn read_by_hand(&mut self, slot: u32, dir: Dir) {
        let c = &mut self.conns[slot as usize];
        let (source, w) = (c.source(dir), c.flow_mut(dir).pipe.w);
        let mut byte = 0u8;
        // SAFETY: recv(2) into one byte of our own, on a socket the slot owns; non-blocking.
        let n = unsafe {
            libc::recv(
                source,
                (&raw mut byte).cast(),
                1,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        match n {
            1 => {
                // SAFETY: write(2) of one byte to the slot's own pipe, which is empty and
                // non-blocking.
                if unsafe { libc::write(w, (&raw const byte).cast(), 1) } != 1 {
                    self.close(slot, CloseReason::LocalError, Reset::Both);
                    return;
                }
                self.pipe_filled(slot, dir, 1);
            }
            0 => {
                c.flow_mut(dir).pipe.ended();
                self.finish_pipe(slot, dir);
            }
            _ if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => {
                c.flow_mut(dir).pipe.poll_again();
                self.poll_source(slot, dir);
            }
            _ => self.close(slot, conn::source_error(dir), Reset::Both),
        }
    }

    fn on_drain(&mut self, slot: u32, dir: Dir, res: i32) {
        let c = &mut self.conns[slot as usize];
        if c.state == State::Closing {
            self.maybe_free(slot);
            return;
        }
        if res == -libc::EAGAIN {
            // The sink is full: wait until it takes more (the drain stays marked out).
            let entry = opcode::PollAdd::new(Fd(c.sink(dir)), libc::POLLOUT as u32)
                .build()
                .user_data(token::encode(Kind::Writable(dir), slot));
            self.submit(slot, entry);
            return;
        }
        if res <= 0 {
            self.close(slot, conn::sink_error(dir), Reset::Both);
            return;
        }
        let sent = res as u32;
        match dir {
            Dir::Up => {
                c.bytes_in += u64::from(sent);
                self.stats.bytes_client_to_backend.add(u64::from(sent));
            }
            Dir::Down => {
                c.bytes_out += u64::from(sent);
                self.stats.bytes_backend_to_client.add(u64::from(sent));
            }
        }
        c.last_active = self.now;
        c.flow_mut(dir).pipe.drained(sent);
        self.drain_pipe(slot, dir);
        self.fill_pipe(slot, dir);
        self.finish_pipe(slot, dir);
    }

    /// A piped direction's poll ended: readable (`fill`) or writable.
    fn on_pipe_ready(&mut self, slot: u32, dir: Dir, fill: bool, res: i32) {
        let c = &mut self.conns[slot as usize];
        if c.state == State::Closing {
            self.maybe_free(slot);
            return;
        }
        let p = &mut c.flow_mut(dir).pipe;
        p.ready(fill);
        if fill && p.unpipe_due() {
            // Cancelled by `on_recv`, or ready anyway: either way the pipe is empty and
            // buffers take over; their receive reports any error of the socket.
            return self.unpipe(slot, dir);
        }
        if res < 0 {
            let reason = if fill {
                conn::source_error(dir)
            } else {
                conn::sink_error(dir)
            };
            self.close(slot, reason, Reset::Both);
            return;
        }
        // Readiness includes an error or a hang-up: the splice that follows reports it.
        if fill {
            self.fill_pipe(slot, dir);
        } else {
            self.drain_pipe(slot, dir);
        }
    }

    /// Takes an idle piped direction back to buffers: its pipe is closed (nothing is out on
    /// it) and its receive armed again, so a small answer on a kept-alive connection costs no
    /// io-wq hop; a large one switches again after `engine.splice_after`.
    fn unpipe(&mut self, slot: u32, dir: Dir) {
        let p = &mut self.conns[slot as usize].flow_mut(dir).pipe;
        let pipe = p.take_pipe();
        p.unpiped();
        self.close_pipe(pipe);
        self.arm_recv(slot, dir);
    }

    /// Closes a pipe a direction gave up (taken with `PipeFlow::take_pipe`), if it had one.
    fn close_pipe(&mut self, pipe: Option<(RawFd, RawFd)>) {
        if let Some((r, w)) = pipe {
            self.pipes -= 1;
            self.close_fd(r);
            self.close_fd(w);
        }
    }

    /// Carries a piped direction's FIN across once the pipe has emptied behind it.
    /// The pipe, with nothing out on it, is closed now rather than with the connection, so a
    /// connection that stays half open does not hold one of `engine.splice_pipes`.
    fn finish_pipe(&mut self, slot: u32, dir: Dir) {
        let f = self.conns[slot as usize].flow_mut(dir);
        if f.pipe.finished() && !f.eof {
            f.eof = true;
            let pipe = f.pipe.take_pipe();
            self.close_pipe(pipe);
            self.pump(slot, dir);
        }
    }

    /// Restarts receives that ran out of buffers, once enough have come back.
    fn resume_starved(&mut self) {
        if self.starved.is_empty() || self.bufs.free() < self.starve_resume {
            return;
        }
        let list = std::mem::take(&mut self.starved);
        for &(slot, dir) in &list {
            let c = &mut self.conns[slot as usize];
            c.starved_listed[dir as usize] = false;
            c.flow_mut(dir).starved = false;
            self.arm_recv(slot, dir);
        }
        // Keep the allocation: the list is bounded by two entries per slot.
        self.starved = list;
        self.starved.clear();
    }

    // ---- teardown -----------------------------------------------------------------------------

    /// Ends a connection for `reason`: counts it once, optionally resets the peers, cancels what
    /// is in flight, and frees the slot when the last operation has completed.
    pub(super) fn close(&mut self, slot: u32, reason: CloseReason, reset: Reset) {
        let c = &mut self.conns[slot as usize];
        let greeting = c.state == State::Greeting;
        if !c.begin_close() {
            return;
        }
        self.stats.close(reason);
        self.pools[usize::from(c.pool)].histograms.closed(
            self.now.saturating_sub(c.opened_ms),
            c.bytes_in,
            c.bytes_out,
        );
        if let Some(b) = c.acquired {
            let signals = &self.pools[usize::from(c.pool)].shared.health.signals;
            match reason {
                CloseReason::Done => signals.finished_cleanly(usize::from(b)),
                // A reset counts against the backend only before it sent anything: a backend
                // that answered and then reset was most likely provoked by the client (junk, a
                // request it refused to read), and a client must not get a backend ejected.
                CloseReason::BackendError if !c.backend_answered => {
                    signals.reset(usize::from(b));
                }
                _ => {}
            }
        }
        if matches!(reset, Reset::Client | Reset::Both) {
            set_linger_zero(c.client_fd());
        }
        if matches!(reset, Reset::Both)
            && let Some(backend) = c.backend_fd()
        {
            set_linger_zero(backend);
        }
        if !c.ops.none() {
            // A splice into a pipe belongs to the pipe's end, not to a socket.
            let (client, backend) = (c.client, c.backend);
            let (up, down) = (c.up.pipe.w, c.down.pipe.w);
            for fd in [client, backend, up, down] {
                if fd >= 0 {
                    self.push(
                        opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all())
                            .build()
                            .user_data(token::encode(Kind::Ignore, 0)),
                    );
                }
            }
        }
        if greeting {
            self.greeting -= 1;
        }
        self.maybe_free(slot);
    }

    pub(super) fn maybe_free(&mut self, slot: u32) {
        let c = &mut self.conns[slot as usize];
        if !c.may_free() {
            return;
        }
        for dir in [Dir::Up, Dir::Down] {
            let f: &mut Flow = c.flow_mut(dir);
            while let Some(bid) = self.links.pop(f) {
                self.bufs.give_back(bid);
            }
        }
        if let Some(b) = c.acquired.take() {
            self.pools[usize::from(c.pool)]
                .shared
                .load
                .release(usize::from(b));
        }
        let (client, backend) = (c.client, c.backend);
        let pipes = [c.up.pipe.take_pipe(), c.down.pipe.take_pipe()];
        let (listener, held) = (c.listener, std::mem::replace(&mut c.held, NO_HOLD));
        c.state = State::Free;
        c.client = -1;
        c.backend = -1;
        self.release_source(listener, held);
        for pipe in pipes {
            self.close_pipe(pipe);
        }
        self.close_fd(client);
        self.close_fd(backend);
        self.free.push(slot);
        self.live -= 1;
        if let Some(intake) = self.intake.as_deref_mut() {
            intake.due = true;
        }
    }

    /// Serves clients waiting for a slot, then resumes accepting once none wait and a slot is
    /// free. Runs after each batch of completions, so a burst of frees admits in one pass.
    fn admit_waiting(&mut self) {
        // Out of descriptors: the waiting line waits for the tick too. Asked on every turn, as
        // `open_conn` may run out and put its client back at the head of the line.
        while !self.waiting.is_empty() && !self.backing_off() {
            let Some(slot) = self.free.pop() else { break };
            if let Some(newcomer) = self.waiting.pop_front() {
                self.open_conn(slot, newcomer);
            }
        }
        if self.refusing && !self.free.is_empty() {
            // A slot freed: back to serving, and to the grace the next time it fills.
            self.refusing = false;
            self.full_since(false);
        }
        if self.accepts_paused
            && self.waiting.is_empty()
            && !self.free.is_empty()
            && self.drain_until.is_none()
        {
            self.accepts_paused = false;
            self.full_since(false);
            for i in 0..self.listeners.len() {
                self.arm_accept(i);
            }
        }
    }

    /// Records whether the forwarder is full (every slot taken), for `levee ctl`.
    fn full_since(&mut self, full: bool) {
        if full {
            self.stats.full_events.add(1);
            self.stats.set_full_since(self.now.max(1));
        } else {
            self.stats.set_full_since(0);
        }
    }

    /// Full for longer than [`FULL_GRACE_MS`]: refuse, rather than leave clients hanging,
    /// those in the waiting line and those to come while no slot frees.
    fn refuse_when_full_too_long(&mut self) {
        let since = self.stats.full_since();
        if since == 0 || self.refusing || self.now < since + FULL_GRACE_MS {
            return;
        }
        self.refusing = true;
        while let Some(Newcomer {
            fd, listener, held, ..
        }) = self.waiting.pop_front()
        {
            reset_and_close(fd);
            self.stats.close(CloseReason::OverCapacity);
            self.release_source(listener, held);
        }
        warn!(
            forwarder = self.index,
            slots = self.conns.len(),
            "every connection slot has been taken for a second: refusing new clients until one \
             frees (raise engine.max_conns, or find who holds them)"
        );
        if self.accepts_paused && self.drain_until.is_none() {
            self.accepts_paused = false;
            for i in 0..self.listeners.len() {
                self.arm_accept(i);
            }
        }
    }

    /// Closes a socket through the ring; success needs no completion.
    pub(super) fn close_fd(&mut self, fd: RawFd) {
        if fd < 0 {
            return;
        }
        self.push(
            opcode::Close::new(Fd(fd))
                .build()
                .flags(squeue::Flags::SKIP_SUCCESS)
                .user_data(token::encode(Kind::Ignore, 0)),
        );
    }

    // ---- time and stopping ------------------------------------------------------------------

    fn on_tick(&mut self, flags: u32) {
        if !cqueue::more(flags) {
            // The idle timeout may have changed at runtime; the tick follows it.
            self.tick = tick_for(self.tunables.idle_timeout_ms());
            self.arm_tick();
        }
        let idle_timeout_ms = self.tunables.idle_timeout_ms();
        if idle_timeout_ms > 0 {
            for slot in 0..self.high_slot {
                let c = &self.conns[slot as usize];
                if c.state == State::Relaying && self.now - c.last_active >= idle_timeout_ms {
                    self.close(slot, CloseReason::IdleTimeout, Reset::None);
                }
            }
        }
        self.expire_greetings();
        if let Some(until) = self.drain_until {
            if self.now >= until || self.stop.hurry.load(Ordering::Acquire) {
                self.close_everything();
            }
        }
        while self.high_slot > 0 && self.conns[self.high_slot as usize - 1].state == State::Free {
            self.high_slot -= 1;
        }
        for i in 0..self.listeners.len() {
            if self.listeners[i].backoff {
                self.listeners[i].backoff = false;
                self.arm_accept(i);
            }
        }
        self.refuse_when_full_too_long();
        self.intake_tick();
        // What was recorded since the last tick goes to the readers, unless one holds the
        // pool's histograms right now: then at the next tick.
        for p in &mut self.pools {
            p.histograms.publish(&p.shared.histograms);
        }
    }

    fn on_wake(&mut self) {
        if self.stop.requested.load(Ordering::Acquire) {
            self.begin_drain();
        } else {
            // Spurious: wait again.
            self.push(
                opcode::PollAdd::new(Fd(self.wake), libc::POLLIN as u32)
                    .build()
                    .user_data(token::encode(Kind::Wake, 0)),
            );
        }
    }

    pub(super) fn begin_drain(&mut self) {
        if self.drain_until.is_some() {
            return;
        }
        self.drain_until = Some(self.now + self.drain_timeout_ms);
        self.drain_intake();
        self.cancel_accepts();
        for i in 0..self.listeners.len() {
            if !self.listeners[i].armed {
                self.close_listener(i);
            }
        }
        // After a handover the queue goes to the new levee (those parked later from the
        // listeners' backlog go at the next overflow tick).
        self.move_parked();
        if self.drain_timeout_ms == 0 {
            self.close_everything();
        }
    }

    /// Closes listener `i`'s socket once its accept is gone, first taking the connections
    /// already in its queue. A levee that took the socket over (a reload) accepts on it too, and
    /// the kernel wakes one waiter per connection: a wake-up that reached this forwarder's accept
    /// as it was being cancelled would otherwise leave its connection in the queue, unseen by
    /// the other levee until another one arrives.
    fn close_listener(&mut self, i: usize) {
        let Some(fd) = self.listeners[i].fd.take() else {
            return;
        };
        let raw = fd.as_raw_fd();
        let pool = self.listeners[i].pool;
        // The socket is blocking (its file is shared with the other levee, so O_NONBLOCK
        // cannot be set for this forwarder alone): a receive timeout bounds an accept that
        // finds the connection gone to 1 ms. io_uring's own accepts never block, so the other
        // levee is not affected.
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 1000,
        };
        // SAFETY: setsockopt with a valid timeval of the size given.
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        // Bounded: what was queued, not what keeps arriving.
        for _ in 0..WAITING_MAX {
            let mut pfd = libc::pollfd {
                fd: raw,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; a zero timeout never blocks.
            if unsafe { libc::poll(&mut pfd, 1, 0) } != 1 {
                break;
            }
            // SAFETY: accept4 on a listening socket this forwarder owns, with no address
            // wanted; the other levee may have taken the connection since poll, and then it
            // returns after the timeout above.
            let client = unsafe {
                libc::accept4(
                    raw,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if client < 0 {
                break;
            }
            // SAFETY: the descriptor accept4 just returned, owned by no one else.
            let client = unsafe { OwnedFd::from_raw_fd(client) };
            self.stats.accept(usize::from(self.listeners[i].index));
            match self.free.pop() {
                Some(slot) if self.waiting.is_empty() => {
                    self.open_conn(slot, self.newcomer(client, pool, i));
                }
                slot => {
                    if let Some(slot) = slot {
                        self.free.push(slot);
                    }
                    if self.waiting.len() < WAITING_MAX {
                        self.waiting.push_back(self.newcomer(client, pool, i));
                    } else {
                        reset_and_close(client);
                        self.stats.close(CloseReason::OverCapacity);
                    }
                }
            }
        }
        drop(fd);
    }

    /// The drain is over: every connection still open, or still waiting for a slot, is reset.
    fn close_everything(&mut self) {
        for slot in 0..self.high_slot {
            self.close(slot, CloseReason::DrainTimeout, Reset::Both);
        }
        while let Some(Newcomer {
            fd, listener, held, ..
        }) = self.waiting.pop_front()
        {
            reset_and_close(fd);
            self.stats.close(CloseReason::DrainTimeout);
            self.release_source(listener, held);
        }
        self.close_parked();
    }

    /// Stopping, and nothing left: every connection freed and every listener closed (or the
    /// grace period after the drain deadline is over).
    fn finished(&self) -> bool {
        let Some(until) = self.drain_until else {
            return false;
        };
        let idle = self.live == 0
            && self.waiting.is_empty()
            && self.listeners.iter().all(|l| l.fd.is_none())
            && !self.parking_busy();
        if !idle && self.now >= until + EXIT_GRACE_MS {
            warn!(
                live = self.live,
                "operations still in flight after the drain deadline; exiting"
            );
            return true;
        }
        idle
    }
}

/// A socket call failed for want of descriptors or memory, which time may bring back.
/// Sets O_NONBLOCK on a socket the forwarder owns; a failure (never seen on a valid socket)
/// would only let a splice wait on an io-wq thread.
fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor the calling slot owns; F_GETFL and F_SETFL take an int.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 && flags & libc::O_NONBLOCK == 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Whether health has taken every backend out (as opposed to every backend being full).
fn none_up(load: &PoolLoad) -> bool {
    (0..load.len()).all(|i| !load.state(i).takes_new())
}

/// Which sockets a close resets (SO_LINGER 0, so the peer sees RST rather than FIN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reset {
    None,
    Client,
    Both,
}

/// The tick period: a quarter of the idle timeout (so an idle connection is closed at most a
/// quarter late), between 10 ms and one second.
fn tick_for(idle_timeout_ms: u64) -> Timespec {
    let ms = if idle_timeout_ms == 0 {
        1000
    } else {
        (idle_timeout_ms / 4).clamp(10, 1000)
    };
    Timespec::new()
        .sec(ms / 1000)
        .nsec((ms % 1000) as u32 * 1_000_000)
}

/// Milliseconds on the coarse monotonic clock: a vDSO read without a syscall, good to a few ms,
/// which is all timeouts need.
pub(crate) fn coarse_now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC_COARSE always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_asks_for_at_most_half_the_high_water_mark_and_only_where_bundles_exist() {
        let caps = |bundles| Capabilities {
            defer_taskrun: true,
            futex: true,
            bundles,
            splice: true,
        };
        let k16 = 16 * 1024;
        assert_eq!(bundle_bytes(caps(true), 2, k16, 4 * k16), 2 * k16);
        // Eight asked for, capped at half the mark.
        assert_eq!(bundle_bytes(caps(true), 8, k16, 4 * k16), 2 * k16);
        assert_eq!(bundle_bytes(caps(true), 2, 4 * k16, 16 * k16), 8 * k16);
        // One buffer a completion, a mark too low for two, or no bundles in the kernel: none.
        assert_eq!(bundle_bytes(caps(true), 1, k16, 4 * k16), 0);
        assert_eq!(bundle_bytes(caps(true), 8, k16, 2 * k16), 0);
        assert_eq!(bundle_bytes(caps(false), 2, k16, 4 * k16), 0);
    }
}
