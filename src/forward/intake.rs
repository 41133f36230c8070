//! A worker's side of the overflow tier: the engine's other source of connections. Where a
//! forwarder accepts from a listener, a worker claims tickets from its pools' queues, takes a
//! backend slot, takes the client's socket over from the forwarder that parked it, and from
//! then on relays it with the same code as any forwarder.
//!
//! Order of a takeover, each step undone if a later one fails:
//!
//! 1. When the pool's queue holds tickets and a backend has room (a futex wait on the queue,
//!    then on the load table's release line), count this worker as holding a ticket (the
//!    pool's queue row) and claim the next one: between the two, forwarders see the queue as not
//!    empty, so no newcomer overtakes it.
//! 2. Drop the ticket if it expired, or if CoDel sheds it (the forwarder closes the client).
//! 3. Reserve a backend slot in the selector's order for the ticket's flow; with none, keep the
//!    ticket and wait for a release.
//! 4. Win the park entry (QUEUED → TAKING by this worker), take the socket (pidfd_getfd, or ask
//!    the forwarder to send it), check its `SO_COOKIE`, and commit the entry (TAKING →
//!    COMMITTED): only then is the connection this worker's to relay.
//! 5. Acknowledge the ticket, tell the forwarder (it closes its copy), and connect.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use io_uring::opcode;
use io_uring::types::{Fd, Timespec};
use levee_rings::table::Table;
use levee_rings::{FutexWait, mpmc, spsc};
use tracing::{debug, info, warn};

use super::forwarder::Forwarder;
use super::parking::FUTEX2_SIZE_U32;
use super::token::{self, Kind};
use crate::balance::MAX_CANDIDATES;
use crate::config::Discipline;
use crate::overflow::Settings;
use crate::overflow::codel::Codel;
use crate::overflow::handoff::{self, ProcessHandle, socket_cookie};
use crate::overflow::notice::{Notice, NoticeKind};
use crate::overflow::park::{self, CloseWhy, Take};
use crate::overflow::shared::{self, Geometry};
use crate::overflow::ticket::Ticket;
use crate::pool::table::{Q_CODEL_FLAGS, Q_CODEL_INTERVAL_END, Q_CODEL_MIN_DELAY};

/// How long a worker waits for a forwarder to send a socket it asked for.
const SCM_WAIT_MS: u64 = 1_000;
/// Retry period when a wait cannot be armed (no futex support, a race to re-check, an entry
/// another live worker is taking).
const RETRY_NS: u32 = 10_000_000;
/// Notices kept for forwarders whose rings are full; past it the oldest are dropped (the
/// forwarder finds committed entries on its own scan).
const UNSENT_MAX: usize = 4096;

/// How this worker takes sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    Pidfd,
    ScmRights,
}

/// What a worker's engine needs to take connections from the queues.
pub struct IntakeSetup {
    /// This worker's holder index in the load table (1 and up).
    pub me: u32,
    pub dir: PathBuf,
    pub geometry: Geometry,
    pub load: Table,
    pub park: Table,
    /// Each pool's queue and this worker's consumer on it; `None` for pools that reject.
    pub queues: Vec<Option<(mpmc::Queue, mpmc::Consumer)>>,
    pub takeover: Takeover,
    pub futex: bool,
}

/// A ticket claimed and not yet served.
#[derive(Debug, Clone, Copy)]
struct Held {
    ticket: Ticket,
}

struct IntakePool {
    queue: Option<mpmc::Queue>,
    consumer: Option<mpmc::Consumer>,
    wait: Option<FutexWait>,
    held: Option<Held>,
}

/// A socket asked for over `SCM_RIGHTS` and not received yet.
#[derive(Debug, Clone, Copy)]
struct Awaiting {
    pool: usize,
    ticket: Ticket,
    backend: u16,
    candidates: [u16; MAX_CANDIDATES],
    count: u8,
    since_ms: u64,
}

pub(super) struct Intake {
    me: u32,
    dir: PathBuf,
    geometry: Geometry,
    load: Table,
    park: Table,
    pools: Vec<IntakePool>,
    slot_wait: Option<FutexWait>,
    retry_armed: bool,
    retry: Timespec,
    notices: Vec<Option<spsc::Producer>>,
    unsent: VecDeque<(usize, Notice)>,
    source: Option<ProcessHandle>,
    takeover: Takeover,
    scm: Option<OwnedFd>,
    scm_polling: bool,
    awaiting: Option<Awaiting>,
    futex: bool,
    /// Something may have changed: serve the queues after this turn's completions.
    pub(super) due: bool,
    draining: bool,
}

impl Intake {
    pub(super) fn new(setup: IntakeSetup) -> std::io::Result<Self> {
        let scm = match setup.takeover {
            Takeover::Pidfd => None,
            Takeover::ScmRights => {
                let path = shared::worker_socket_path(&setup.dir, setup.me);
                let _ = std::fs::remove_file(&path);
                Some(handoff::datagram_socket(Some(&path))?)
            }
        };
        let intake = Self {
            me: setup.me,
            geometry: setup.geometry,
            load: setup.load,
            park: setup.park,
            pools: setup
                .queues
                .into_iter()
                .map(|q| {
                    let (queue, consumer) = q.unzip();
                    IntakePool {
                        queue,
                        consumer,
                        wait: None,
                        held: None,
                    }
                })
                .collect(),
            slot_wait: None,
            retry_armed: false,
            retry: Timespec::new().nsec(RETRY_NS),
            notices: (0..setup.geometry.forwarders).map(|_| None).collect(),
            unsent: VecDeque::new(),
            source: None,
            takeover: setup.takeover,
            scm,
            scm_polling: false,
            awaiting: None,
            futex: setup.futex,
            due: true,
            draining: false,
            dir: setup.dir,
        };
        intake.reclaim();
        Ok(intake)
    }

    /// Counts this worker as serving, in the settings row (given back when it stops, or when
    /// it is reaped after a crash): forwarders queue newcomers behind waiting ones only while
    /// some worker serves.
    pub(super) fn announce(&self, holder: &levee_rings::table::Holder) {
        holder.add(crate::pool::table::SETTINGS_ROW, 1);
    }

    /// Puts back the entries a dead process with this worker's index left half taken, so their
    /// tickets (back on the queue with that process's claims) can be taken again.
    fn reclaim(&self) {
        let rows = self.park.config().rows;
        let me = self.me as u8;
        let reclaimed = (0..rows)
            .filter(|&row| park::reclaim(self.park.word(row, 0), me))
            .count();
        if reclaimed > 0 {
            info!(
                entries = reclaimed,
                "put back the queued connections a worker before this one left half taken"
            );
        }
    }

    fn dead(&self) -> impl Fn(u8) -> bool + '_ {
        |w: u8| !self.load.is_attached(u32::from(w)).unwrap_or(true)
    }

    fn entry(&self, t: &Ticket) -> Option<&AtomicU64> {
        let row = self.geometry.park_row(usize::from(t.forwarder), t.entry)?;
        Some(self.park.word(row, 0))
    }

    /// Queues a notice for forwarder `f` and sends what it can.
    fn notify(&mut self, f: usize, n: Notice) {
        if self.unsent.len() >= UNSENT_MAX {
            self.unsent.pop_front();
        }
        self.unsent.push_back((f, n));
        self.flush_notices();
    }

    fn flush_notices(&mut self) {
        while let Some(&(f, n)) = self.unsent.front() {
            if self.notices.get(f).is_none() {
                self.unsent.pop_front();
                continue;
            }
            if self.notices[f].is_none() {
                match spsc::Producer::open(shared::notice_path(&self.dir, self.me, f)) {
                    Ok(p) => self.notices[f] = Some(p),
                    Err(e) => {
                        warn!(forwarder = f, error = %e, "cannot open the notice ring");
                        self.unsent.pop_front();
                        continue;
                    }
                }
            }
            let Some(producer) = self.notices[f].as_mut() else {
                return;
            };
            match producer.push(&n.encode()) {
                Ok(()) => {
                    self.unsent.pop_front();
                }
                // The forwarder has not read its notices yet: try again later.
                Err(levee_rings::PushError::Full) => return,
                Err(e) => {
                    warn!(forwarder = f, error = %e, "cannot send a notice");
                    self.unsent.pop_front();
                }
            }
        }
    }

    /// The socket a ticket names, taken from its forwarder with pidfd_getfd and checked.
    fn take_socket(&mut self, t: &Ticket) -> std::io::Result<OwnedFd> {
        let cached = self
            .source
            .as_ref()
            .is_some_and(|s| s.pid == t.pid && s.start_ticks == t.start_ticks);
        if !cached {
            self.source = Some(ProcessHandle::open(t.pid, t.start_ticks)?);
        }
        let source = self
            .source
            .as_ref()
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESRCH))?;
        let fd = source.take(t.fd)?;
        check_cookie(&fd, t)?;
        Ok(fd)
    }

    /// Gives up waiting on the futexes (the kernel refuses them): the retry timer polls.
    fn futex_failed(&mut self, res: i32, what: &str) {
        if self.futex && res < 0 && !matches!(-res, libc::EAGAIN | libc::EINTR | libc::ECANCELED) {
            warn!(
                error = %std::io::Error::from_raw_os_error(-res),
                "futex waits on the {what} fail; polling every 10 ms instead"
            );
            self.futex = false;
        }
    }
}

fn check_cookie(fd: &OwnedFd, t: &Ticket) -> std::io::Result<()> {
    let cookie = socket_cookie(fd.as_fd())?;
    if cookie == t.cookie {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "descriptor {} of process {} is another socket than the ticket's",
                t.fd, t.pid
            ),
        ))
    }
}

/// What serving a pool's queue does next.
enum Step {
    /// The held ticket is done with (stale, or its socket could not be taken): acknowledge it
    /// and go on with the next.
    Ack,
    /// Go on with the next ticket.
    Next,
    /// Nothing more to do now: a wait is armed.
    Wait,
}

/// What a claim found.
enum Claimed {
    Ticket(Held),
    /// A ticket that was dropped (expired, shed, corrupt): claim the next.
    Next,
    Wait,
}

impl Forwarder {
    /// Serves the queues once this turn's completions are handled, if anything changed.
    pub(super) fn serve_intake(&mut self) {
        let Some(intake) = self.intake.as_deref_mut() else {
            return;
        };
        // Notices still owed go out even while stopping: a forwarder waits for them.
        intake.flush_notices();
        if !intake.due || intake.draining {
            return;
        }
        intake.due = false;
        for pool in 0..self.pools.len() {
            self.serve_pool(pool);
        }
    }

    fn serve_pool(&mut self, pool: usize) {
        loop {
            let Some(intake) = self.intake.as_deref_mut() else {
                return;
            };
            if intake.awaiting.is_some() || intake.pools[pool].consumer.is_none() {
                return;
            }
            // Out of connection slots: a slot freed sets `due` again.
            if self.free.is_empty() {
                return;
            }
            let held = match intake.pools[pool].held {
                Some(h) => h,
                None => match self.claim(pool) {
                    Claimed::Ticket(h) => h,
                    Claimed::Next => continue,
                    Claimed::Wait => return,
                },
            };
            match self.take_over(pool, held) {
                Step::Ack => self.ack_and_release(pool),
                Step::Next => {}
                Step::Wait => return,
            }
        }
    }

    /// Claims the next ticket of `pool` if there is one and a backend has room.
    fn claim(&mut self, pool: usize) -> Claimed {
        let empty = self
            .intake
            .as_deref()
            .is_none_or(|i| i.pools[pool].queue.as_ref().is_none_or(|q| q.depth() == 0));
        if empty {
            // Nothing queued: sleep on the queue without counting as holding, which would make
            // a forwarder queue a newcomer that could go straight to its backend.
            self.wait_for_tickets(pool);
            return Claimed::Wait;
        }
        if !self.pool_has_room(pool) {
            self.wait_for_slot(pool);
            return Claimed::Wait;
        }
        let queue_row = self.pools[pool].shared.load.rows().queue();
        let holder = self.pools[pool].shared.load.holder().clone();
        // Counted as holding before the claim, so that the ticket is never invisible to
        // forwarders deciding whether anyone waits.
        holder.add(queue_row, 1);
        let Some(intake) = self.intake.as_deref_mut() else {
            holder.sub(queue_row, 1);
            return Claimed::Wait;
        };
        let Some(consumer) = intake.pools[pool].consumer.as_mut() else {
            holder.sub(queue_row, 1);
            return Claimed::Wait;
        };
        let decoded = match consumer.claim() {
            Ok(Some(claim)) => Ticket::decode(&claim),
            Ok(None) => {
                holder.sub(queue_row, 1);
                self.wait_for_tickets(pool);
                return Claimed::Wait;
            }
            Err(e) => {
                holder.sub(queue_row, 1);
                warn!(pool = %self.pools[pool].shared.name, error = %e, "cannot claim a ticket");
                self.retry_later();
                return Claimed::Wait;
            }
        };
        let ticket = match decoded {
            Ok(t) if usize::from(t.pool) == pool => t,
            Ok(t) => {
                warn!(
                    pool,
                    ticket_pool = t.pool,
                    "a ticket on the wrong pool's queue; dropped"
                );
                self.ack_and_release(pool);
                return Claimed::Next;
            }
            Err(e) => {
                warn!(pool = %self.pools[pool].shared.name, error = %e, "a corrupt ticket; dropped");
                self.ack_and_release(pool);
                return Claimed::Next;
            }
        };
        let now_ns = handoff::monotonic_ns();
        let settings = Settings::read(&intake.load);
        // Expiry is checked again here: a ticket past its deadline is not served.
        let why = if now_ns >= ticket.deadline_ns {
            Some(CloseWhy::Expired)
        } else if settings.discipline == Discipline::Codel && {
            let words = |k| intake.load.word(queue_row, k);
            Codel {
                min_delay_ns: words(Q_CODEL_MIN_DELAY),
                interval_end_ns: words(Q_CODEL_INTERVAL_END),
                flags: words(Q_CODEL_FLAGS),
            }
            .shed(
                now_ns,
                now_ns.saturating_sub(ticket.enqueued_ns),
                settings.codel_target_ns,
                settings.codel_interval_ns,
            )
        } {
            Some(CloseWhy::Shed)
        } else {
            None
        };
        if let Some(why) = why {
            self.ask_close(&ticket, why);
            self.ack_and_release(pool);
            return Claimed::Next;
        }
        let held = Held { ticket };
        if let Some(intake) = self.intake.as_deref_mut() {
            intake.pools[pool].held = Some(held);
        }
        Claimed::Ticket(held)
    }

    /// Acknowledges the ticket the pool's consumer holds and stops counting it as held.
    fn ack_and_release(&mut self, pool: usize) {
        let queue_row = self.pools[pool].shared.load.rows().queue();
        if let Some(intake) = self.intake.as_deref_mut() {
            intake.pools[pool].held = None;
            if let Some(claim) = intake.pools[pool]
                .consumer
                .as_mut()
                .and_then(mpmc::Consumer::pending)
            {
                claim.ack();
            }
        }
        self.pools[pool].shared.load.holder().sub(queue_row, 1);
    }

    /// Steps 3 to 5 for a held ticket.
    fn take_over(&mut self, pool: usize, held: Held) -> Step {
        let t = held.ticket;
        let mut candidates = [0u16; MAX_CANDIDATES];
        let tries = self.tunables.connect_tries();
        let p = &mut self.pools[pool];
        let n = p
            .selector
            .rank(t.flow, &p.shared.load, &mut candidates[..tries]);
        let mut backend = None;
        for (k, &b) in candidates[..n].iter().enumerate() {
            if p.shared.load.try_acquire(usize::from(b)) {
                backend = Some((k, b));
                break;
            }
        }
        let Some((k, b)) = backend else {
            self.wait_for_slot(pool);
            return Step::Wait;
        };
        let Some(intake) = self.intake.as_deref_mut() else {
            self.pools[pool].shared.load.release(usize::from(b));
            return Step::Wait;
        };
        let me = intake.me as u8;
        let taken = intake.entry(&t).map_or(Take::Stale, |word| {
            park::take(word, t.generation, me, intake.dead())
        });
        match taken {
            Take::Taken | Take::TakenOver { .. } => {}
            // The forwarder gave up on it (timeout, client gone) or it was reused.
            Take::Stale => {
                self.pools[pool].shared.load.release(usize::from(b));
                return Step::Ack;
            }
            // A live index is taking it: a process that has not reclaimed its predecessor's
            // entries yet. Keep the ticket and look again shortly.
            Take::Busy => {
                self.pools[pool].shared.load.release(usize::from(b));
                self.retry_later();
                return Step::Wait;
            }
        }
        match intake.takeover {
            Takeover::Pidfd => match intake.take_socket(&t) {
                Ok(fd) => {
                    let mut order = [0u16; MAX_CANDIDATES];
                    order[..n].copy_from_slice(&candidates[..n]);
                    order.swap(0, k);
                    self.commit(pool, t, fd, b, &order[..n])
                }
                Err(e) => {
                    debug!(pid = t.pid, fd = t.fd, error = %e, "cannot take a queued socket");
                    self.ask_close(&t, CloseWhy::Expired);
                    self.pools[pool].shared.load.release(usize::from(b));
                    Step::Ack
                }
            },
            Takeover::ScmRights => {
                intake.notify(
                    usize::from(t.forwarder),
                    Notice {
                        kind: NoticeKind::SendSocket,
                        entry: t.entry,
                        generation: t.generation,
                        at_ns: handoff::monotonic_ns(),
                    },
                );
                let mut kept = [0u16; MAX_CANDIDATES];
                kept[..n].copy_from_slice(&candidates[..n]);
                kept.swap(0, k);
                intake.awaiting = Some(Awaiting {
                    pool,
                    ticket: t,
                    backend: b,
                    candidates: kept,
                    count: n as u8,
                    since_ms: self.now,
                });
                self.arm_scm_poll();
                self.retry_later();
                Step::Wait
            }
        }
    }

    /// Asks the forwarder to close a ticket's client: it expired, was shed, or its socket could
    /// not be taken. From QUEUED, or from TAKING by this worker.
    fn ask_close(&mut self, t: &Ticket, why: CloseWhy) {
        let Some(intake) = self.intake.as_deref_mut() else {
            return;
        };
        let me = intake.me as u8;
        let closed = intake
            .entry(t)
            .is_some_and(|word| park::close(word, t.generation, why, Some(me), intake.dead()));
        if closed {
            intake.notify(
                usize::from(t.forwarder),
                Notice {
                    kind: NoticeKind::Close,
                    entry: t.entry,
                    generation: t.generation,
                    at_ns: handoff::monotonic_ns(),
                },
            );
        }
    }

    /// Step 4's end and step 5: the socket is in hand. Commit the entry, acknowledge, tell the
    /// forwarder, connect. `candidates` start with the reserved backend.
    fn commit(
        &mut self,
        pool: usize,
        t: Ticket,
        fd: OwnedFd,
        backend: u16,
        candidates: &[u16],
    ) -> Step {
        let me = self.intake.as_deref().map_or(0, |i| i.me as u8);
        if client_left(&fd) {
            // It left while it waited: no backend sees it. The forwarder counts it.
            drop(fd);
            self.ask_close(&t, CloseWhy::Abandoned);
            self.pools[pool].shared.load.release(usize::from(backend));
            return Step::Ack;
        }
        let committed = self
            .intake
            .as_deref()
            .and_then(|i| i.entry(&t))
            .is_some_and(|word| park::commit(word, t.generation, me));
        if !committed {
            // The forwarder gave up on it first (its deadline passed long ago): not ours.
            drop(fd);
            self.pools[pool].shared.load.release(usize::from(backend));
            return Step::Ack;
        }
        self.ack_and_release(pool);
        if let Some(intake) = self.intake.as_deref_mut() {
            intake.notify(
                usize::from(t.forwarder),
                Notice {
                    kind: NoticeKind::Committed,
                    entry: t.entry,
                    generation: t.generation,
                    at_ns: handoff::monotonic_ns(),
                },
            );
        }
        self.stats.accepted.add(1);
        let Some(slot) = self.free.pop() else {
            // Checked before claiming; cannot happen. The client is closed, counted.
            self.pools[pool].shared.load.release(usize::from(backend));
            self.stats.close(crate::stats::CloseReason::OverCapacity);
            drop(fd);
            return Step::Next;
        };
        self.adopt(
            slot,
            fd.into_raw_fd(),
            pool as u16,
            backend,
            candidates,
            (t.client, t.local),
        );
        Step::Next
    }

    fn pool_has_room(&self, pool: usize) -> bool {
        let load = &self.pools[pool].shared.load;
        (0..load.len()).any(|i| load.has_room(i))
    }

    /// Sleeps on the load table's release line until a backend slot frees.
    fn wait_for_slot(&mut self, pool: usize) {
        let Some(intake) = self.intake.as_deref() else {
            return;
        };
        if intake.slot_wait.is_some() {
            return;
        }
        let load = &self.pools[pool].shared.load;
        // Relaying some of the pool's connections itself, the worker hears of most freed slots
        // from its own completions; a futex wait would mostly be woken by its own releases, each
        // a wake-up and, to sleep again, a membarrier. A short timer covers slots freed by
        // others.
        if !intake.futex || load.holder().held(load.rows().pool()) > 0 {
            self.retry_later();
            return;
        }
        let blocked = || !(0..load.len()).any(|i| load.has_room(i));
        match intake.load.prepare_release_wait(blocked) {
            Ok(Some(w)) => {
                let entry = futex_wait(&w, token::encode(Kind::SlotWait, 0));
                if let Some(intake) = self.intake.as_deref_mut() {
                    intake.slot_wait = Some(w);
                }
                self.push(entry);
            }
            // Room appeared meanwhile (or the wait failed): look again shortly.
            Ok(None) | Err(_) => self.retry_later(),
        }
    }

    fn wait_for_tickets(&mut self, pool: usize) {
        let Some(intake) = self.intake.as_deref_mut() else {
            return;
        };
        let ip = &mut intake.pools[pool];
        if ip.wait.is_some() {
            return;
        }
        if !intake.futex {
            self.retry_later();
            return;
        }
        let Some(consumer) = ip.consumer.as_mut() else {
            return;
        };
        match consumer.prepare_data_wait() {
            Ok(Some(w)) => {
                let entry = futex_wait(&w, token::encode(Kind::QueueWait, pool as u32));
                ip.wait = Some(w);
                self.push(entry);
            }
            Ok(None) | Err(_) => self.retry_later(),
        }
    }

    /// Serves the queues again after a short timer.
    fn retry_later(&mut self) {
        let Some(intake) = self.intake.as_deref_mut() else {
            return;
        };
        if intake.retry_armed {
            return;
        }
        intake.retry_armed = true;
        let entry = opcode::Timeout::new(&intake.retry)
            .build()
            .user_data(token::encode(Kind::OverflowTick, 0));
        self.push(entry);
    }

    pub(super) fn on_intake_retry(&mut self) {
        if let Some(intake) = self.intake.as_deref_mut() {
            intake.retry_armed = false;
            intake.due = true;
        }
        self.check_awaiting();
    }

    pub(super) fn on_queue_wait(&mut self, pool: u32, res: i32) {
        if let Some(intake) = self.intake.as_deref_mut() {
            if let Some(p) = intake.pools.get_mut(pool as usize) {
                p.wait = None;
            }
            intake.futex_failed(res, "queues");
            intake.due = true;
        }
    }

    pub(super) fn on_slot_wait(&mut self, res: i32) {
        if let Some(intake) = self.intake.as_deref_mut() {
            intake.slot_wait = None;
            intake.futex_failed(res, "load table");
            intake.due = true;
        }
    }

    fn arm_scm_poll(&mut self) {
        let Some(intake) = self.intake.as_deref_mut() else {
            return;
        };
        let Some(sock) = intake.scm.as_ref() else {
            return;
        };
        if intake.scm_polling {
            return;
        }
        intake.scm_polling = true;
        let entry = opcode::PollAdd::new(Fd(sock.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(token::encode(Kind::ScmRecv, 0));
        self.push(entry);
    }

    /// A socket arrived on this worker's Unix socket.
    pub(super) fn on_scm_recv(&mut self) {
        let Some(intake) = self.intake.as_deref_mut() else {
            return;
        };
        intake.scm_polling = false;
        loop {
            let Some(intake) = self.intake.as_deref_mut() else {
                return;
            };
            let Some(sock) = intake.scm.as_ref() else {
                return;
            };
            let mut buf = [0u8; 16];
            let (n, fd) = match handoff::recv_fd(sock.as_fd(), &mut buf) {
                Ok(Some(got)) => got,
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "a bad datagram on the handoff socket");
                    break;
                }
            };
            let Some(a) = intake.awaiting else {
                continue; // late: given up already; dropping `fd` closes this copy
            };
            let word = |o: usize| u32::from_le_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
            let mut g = [0u8; 8];
            g.copy_from_slice(&buf[8..16]);
            let t = &a.ticket;
            let ours = n == 16
                && word(0) == u32::from(t.forwarder)
                && word(4) == t.entry
                && u64::from_le_bytes(g) == t.generation;
            // Another handoff's late datagram, or not the ticket's socket: drop this copy and
            // keep waiting for the right one.
            if !ours || check_cookie(&fd, t).is_err() {
                continue;
            }
            intake.awaiting = None;
            let candidates = a.candidates;
            let step = self.commit(
                a.pool,
                a.ticket,
                fd,
                a.backend,
                &candidates[..usize::from(a.count)],
            );
            if matches!(step, Step::Ack) {
                self.ack_and_release(a.pool);
            }
            if let Some(intake) = self.intake.as_deref_mut() {
                intake.due = true;
            }
        }
        if self.intake.as_deref().is_some_and(|i| i.awaiting.is_some()) {
            self.arm_scm_poll();
        }
    }

    /// Gives up on a socket asked for too long ago.
    fn check_awaiting(&mut self) {
        let Some(intake) = self.intake.as_deref_mut() else {
            return;
        };
        let Some(a) = intake.awaiting else {
            return;
        };
        if self.now < a.since_ms + SCM_WAIT_MS {
            self.retry_later();
            return;
        }
        intake.awaiting = None;
        warn!(
            forwarder = a.ticket.forwarder,
            "the forwarder did not send a socket it was asked for; giving up on it"
        );
        self.ask_close(&a.ticket, CloseWhy::Expired);
        self.pools[a.pool]
            .shared
            .load
            .release(usize::from(a.backend));
        self.ack_and_release(a.pool);
    }

    /// The worker's part of the periodic tick: recover claims of workers that died, and stop
    /// when the levee that made the queues is gone.
    pub(super) fn intake_tick(&mut self) {
        let Some(intake) = self.intake.as_deref_mut() else {
            return;
        };
        for p in &mut intake.pools {
            if let Some(c) = p.consumer.as_mut()
                && let Ok(n) = c.reap()
                && n > 0
            {
                info!(
                    handles = n,
                    "recovered the queue claims of a worker that died"
                );
            }
        }
        intake.due = true;
        if !intake.draining && !intake.load.creator().is_alive() {
            info!("the levee whose queues this worker serves has stopped; stopping");
            self.stop.requested.store(true, Ordering::Release);
            self.begin_drain();
        }
    }

    /// Stopping: claim nothing more, and put back at once, without counting a delivery, the
    /// tickets held for a backend or a socket.
    pub(super) fn drain_intake(&mut self) {
        let Some(intake) = self.intake.as_deref_mut() else {
            return;
        };
        if !intake.draining
            && let Some(pool) = self.pools.first()
        {
            // No longer serving: forwarders stop queueing newcomers behind waiting ones for us.
            pool.shared
                .load
                .holder()
                .sub(crate::pool::table::SETTINGS_ROW, 1);
        }
        intake.draining = true;
        if let Some(a) = intake.awaiting.take() {
            let me = intake.me as u8;
            if let Some(word) = intake.entry(&a.ticket) {
                park::give_back(word, a.ticket.generation, me);
            }
            self.pools[a.pool]
                .shared
                .load
                .release(usize::from(a.backend));
        }
        for pool in 0..self.pools.len() {
            let Some(intake) = self.intake.as_deref_mut() else {
                return;
            };
            let ip = &mut intake.pools[pool];
            if ip.held.take().is_some() {
                if let Some(claim) = ip.consumer.as_mut().and_then(mpmc::Consumer::pending) {
                    // If the queue is full (or corrupt) the claim stays, and goes back when the
                    // consumer detaches below, with one delivery counted.
                    let _ = claim.release();
                }
                let row = self.pools[pool].shared.load.rows().queue();
                self.pools[pool].shared.load.holder().sub(row, 1);
            }
            if let Some(intake) = self.intake.as_deref_mut() {
                intake.pools[pool].consumer = None;
            }
        }
    }
}

/// Whether the client behind a socket just taken over has left: it closed (or reset) without a
/// byte waiting. One that half-closed after its request is still there.
fn client_left(fd: &OwnedFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv(2) of at most one byte into a live local; MSG_PEEK leaves the byte in the
    // socket for the relay.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0
        || (n < 0
            && !matches!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN | libc::EINTR)
            ))
}

fn futex_wait(w: &FutexWait, user_data: u64) -> io_uring::squeue::Entry {
    opcode::FutexWait::new(
        w.word(),
        u64::from(w.value()),
        u64::from(u32::MAX),
        FUTEX2_SIZE_U32,
    )
    .build()
    .user_data(user_data)
}
