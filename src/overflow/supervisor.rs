//! The overflow tier as `levee run` holds it, and its supervisor thread, which
//!
//! - starts `overflow.workers` worker processes and restarts one that exits, with backoff;
//! - reaps the load-table columns of processes that died, so their backend slots come back;
//! - closes the clients whose tickets went to the dead-letter ring;
//! - measures how fast each pool's queue drains, for admission by predicted wait.
//!
//! It never touches a connection's data path and nothing waits for it.
//!
//! It looks every [`TICK`] while a queue is busy or a worker waits to be restarted. Otherwise it
//! sleeps up to [`IDLE_TICK`] and is woken early by what needs it: the first connection queued
//! (through the pool's [`crate::pool::QueueStats`]), an operator's cap, bound or worker count,
//! a supervised worker's exit (its pidfd), and its own stop.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use levee_rings::mpmc;
use levee_rings::table::Holder;
use tracing::{info, warn};

use super::park::{self, CloseWhy, Park};
use super::shared::Shared;
use super::ticket::Ticket;
use crate::eventfd::EventFd;
use crate::pool::{Left, Pool};

/// How often the supervisor looks around while a queue is busy.
const TICK: Duration = Duration::from_millis(50);
/// How long it sleeps at most while nothing is queued: what bounds noticing what sends no
/// wake-up (a worker it did not start dying, say).
const IDLE_TICK: Duration = Duration::from_secs(1);
/// The drain rate is measured over this window of recent ticks...
const RATE_WINDOW_TICKS: usize = 40;
/// ...and published once the queue has been busy this long (so the first ticks of a burst,
/// before anything is served, do not read as "drains at nothing").
const RATE_MIN_BUSY: Duration = Duration::from_millis(500);
/// First delay before restarting a worker that exited, doubled on each quick exit.
const RESTART_FIRST: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(5);
/// A worker that ran this long before exiting did not crash at start: it is restarted after the
/// first delay again.
const RESTART_RESET: Duration = Duration::from_secs(3);

/// The overflow tier of a running `levee run`: its segments and its holder in the load table.
pub struct Tier {
    pub shared: Shared,
    /// Holder 0: this process's column in the load table, shared by its forwarders.
    pub holder: Arc<Holder>,
}

/// Asks the supervisor to change the number of workers (`levee ctl -w overflow.workers=N`).
#[derive(Debug)]
pub struct WorkerTarget {
    count: AtomicU32,
    /// Wakes the supervisor: a new count, or its stop. `None`: it never sleeps long.
    wake: Option<EventFd>,
}

impl WorkerTarget {
    fn new(n: u32) -> Self {
        Self {
            count: AtomicU32::new(n),
            wake: EventFd::new().ok(),
        }
    }

    pub fn set(&self, n: u32) {
        self.count.store(n, Ordering::Relaxed);
        self.wake();
    }

    pub fn get(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    /// Has the supervisor look at once, asleep or not.
    pub fn wake(&self) {
        if let Some(w) = &self.wake {
            w.signal();
        }
    }
}

/// What to start a worker with.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The levee binary.
    pub exe: PathBuf,
    /// CPUs to pin workers to, one each in turn; empty: leave them unpinned.
    pub cpus: Vec<usize>,
    /// The uid and gid workers run as (`engine.user`), where levee gives up its own.
    pub run_as: Option<(u32, u32)>,
}

pub struct Supervisor {
    /// Whether it starts workers (it knows the binary), or only looks after the queues.
    supervises: bool,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    workers: Arc<Mutex<Vec<Slot>>>,
    pub target: Arc<WorkerTarget>,
    /// Turns of its loop so far: what a test waits on to know it has looked.
    turns: Arc<AtomicU64>,
}

struct Slot {
    child: Option<Child>,
    /// The child's pidfd, readable once it exits: what wakes a sleeping supervisor for it.
    pidfd: Option<OwnedFd>,
    /// Its pidfd polled readable: the child exited, and the next look should reap it.
    exited: bool,
    started: Instant,
    backoff: Duration,
    restart_at: Option<Instant>,
}

impl Supervisor {
    pub fn start(
        tier: Arc<Tier>,
        pools: Vec<Arc<Pool>>,
        workers: u32,
        command: Option<WorkerCommand>,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let target = Arc::new(WorkerTarget::new(workers));
        let slots = Arc::new(Mutex::new(Vec::new()));
        let dead_letters = tier
            .shared
            .queues
            .iter()
            .map(|q| q.as_ref().map(mpmc::Queue::dead_letters).transpose())
            .collect::<Result<Vec<_>, _>>()
            .map_err(io::Error::other)?;
        // A handle per queue only to recover what dead workers claimed: consumers do it when
        // they claim, but there may be no live worker at all.
        let reapers = tier
            .shared
            .queues
            .iter()
            .map(|q| q.as_ref().map(mpmc::Queue::producer).transpose())
            .collect::<Result<Vec<_>, _>>()
            .map_err(io::Error::other)?;
        let supervises = command.is_some();
        let turns = Arc::new(AtomicU64::new(0));
        let thread = {
            let stop = stop.clone();
            let turns = turns.clone();
            let target = target.clone();
            let slots = slots.clone();
            std::thread::Builder::new()
                .name("levee-overflow".into())
                .spawn(move || {
                    let mut sup = Loop {
                        tier,
                        rates: pools.iter().map(|_| Rate::default()).collect(),
                        pools,
                        dead_letters,
                        reapers,
                        command,
                        target,
                        slots,
                    };
                    while !stop.load(Ordering::Acquire) {
                        // Read before the turn looks at the queues: `doze` compares.
                        let seen: Vec<u64> = sup.pools.iter().map(|p| p.queue.queued()).collect();
                        let busy = sup.turn();
                        turns.fetch_add(1, Ordering::Release);
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        sup.sleep(!busy && sup.doze(&seen));
                    }
                })?
        };
        Ok(Self {
            supervises,
            stop,
            thread: Some(thread),
            workers: slots,
            target,
            turns,
        })
    }

    /// Stops the thread, then the workers: SIGTERM, and SIGKILL for any still running after
    /// `grace`.
    pub fn stop(mut self, grace: Duration) {
        self.halt();
        let mut slots = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        for s in slots.iter_mut() {
            if let Some(c) = s.child.as_ref() {
                signal(c, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        for s in slots.iter_mut() {
            if let Some(mut c) = s.child.take() {
                loop {
                    match c.try_wait() {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) if Instant::now() >= deadline => {
                            let _ = c.kill();
                            let _ = c.wait();
                            break;
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }
        }
    }

    /// Turns of its loop so far.
    pub fn turns(&self) -> u64 {
        self.turns.load(Ordering::Acquire)
    }

    /// Whether it starts and restarts workers.
    pub fn supervises(&self) -> bool {
        self.supervises
    }

    /// Process ids of the running supervised workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|s| s.child.as_ref().map(Child::id))
            .collect()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.target.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Supervisor {
    /// Dropped without [`Supervisor::stop`] (an engine dropped without being joined): its
    /// workers are asked to stop rather than left running.
    fn drop(&mut self) {
        self.halt();
        let slots = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        for s in slots.iter() {
            if let Some(c) = s.child.as_ref() {
                signal(c, libc::SIGTERM);
            }
        }
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid; it has not been reaped, so the pid is its.
        unsafe { libc::kill(pid, sig) };
    }
}

/// A pool's recent drain.
#[derive(Default)]
struct Rate {
    last_served: u64,
    /// Served per tick, the most recent last.
    window: VecDeque<u64>,
    busy_since: Option<Instant>,
}

struct Loop {
    tier: Arc<Tier>,
    pools: Vec<Arc<Pool>>,
    rates: Vec<Rate>,
    dead_letters: Vec<Option<mpmc::DeadLetters>>,
    reapers: Vec<Option<mpmc::Producer>>,
    command: Option<WorkerCommand>,
    target: Arc<WorkerTarget>,
    slots: Arc<Mutex<Vec<Slot>>>,
}

impl Loop {
    /// One look around. `true`: something wants the next look soon (a busy queue, a dead
    /// letter to look at again, a worker to restart).
    fn turn(&mut self) -> bool {
        match self.tier.holder.reap() {
            Ok(0) => {}
            Ok(n) => info!(
                processes = n,
                "reclaimed the backend slots held by worker processes that died"
            ),
            Err(e) => warn!(error = %e, "cannot reap the load table"),
        }
        for (pool, reaper) in self.reapers.iter_mut().enumerate() {
            match reaper.as_mut().map(mpmc::Producer::reap) {
                Some(Ok(n)) if n > 0 => info!(
                    pool = %self.pools[pool].name,
                    workers = n,
                    "recovered the queue handles of dead workers (what they had claimed goes back)"
                ),
                Some(Err(e)) => warn!(pool, error = %e, "cannot recover a queue's dead claims"),
                _ => {}
            }
        }
        let deferred = self.dead_letters();
        let busy = self.measure();
        let restarting = self.supervise();
        deferred || busy || restarting
    }

    /// Whether it may sleep until woken (or [`IDLE_TICK`]): every pool agrees to wake it for
    /// the next connection queued, none having had one queued since it read `seen`.
    fn doze(&self, seen: &[u64]) -> bool {
        // Without its own eventfd a stop could not wake it: it keeps the tick.
        if self.target.wake.is_none() {
            return false;
        }
        for (i, (pool, &n)) in self.pools.iter().zip(seen).enumerate() {
            if !pool.queue.doze(n) {
                for p in &self.pools[..i] {
                    p.queue.woken();
                }
                return false;
            }
        }
        true
    }

    /// Sleeps [`TICK`], or while `dozing` until woken or [`IDLE_TICK`]; a stop, a new worker
    /// count or a supervised worker's exit ends either early.
    fn sleep(&mut self, dozing: bool) {
        let watch = |fd: RawFd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut fds: Vec<libc::pollfd> = Vec::new();
        if let Some(w) = &self.target.wake {
            fds.push(watch(w.as_raw_fd()));
        }
        if dozing {
            for p in &self.pools {
                if let Some(fd) = p.queue.wake_fd() {
                    fds.push(watch(fd));
                }
            }
        }
        let first_pidfd = fds.len();
        let mut polled = Vec::new();
        {
            let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            for (i, s) in slots.iter().enumerate() {
                if let Some(fd) = s.pidfd.as_ref() {
                    fds.push(watch(fd.as_raw_fd()));
                    polled.push(i);
                }
            }
        }
        let timeout = if dozing { IDLE_TICK } else { TICK };
        // SAFETY: `fds` holds `fds.len()` initialised pollfds for the duration of the call; the
        // descriptors stay open (only this thread closes a pidfd, and the eventfds live as long
        // as the pools and the target this loop holds).
        let ready = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                timeout.as_millis() as libc::c_int,
            )
        };
        if ready < 0 {
            // Interrupted or out of memory: a plain sleep keeps the loop from spinning.
            std::thread::sleep(TICK);
        } else if ready > 0 {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            for (fd, &i) in fds[first_pidfd..].iter().zip(&polled) {
                if fd.revents != 0
                    && let Some(s) = slots.get_mut(i)
                {
                    s.exited = true;
                }
            }
        }
        if let Some(w) = &self.target.wake {
            w.clear();
        }
        if dozing {
            for p in &self.pools {
                p.queue.woken();
            }
        }
    }

    /// Closes the clients whose tickets went to the dead-letter ring. `true`: one is left to
    /// look at again next turn.
    fn dead_letters(&mut self) -> bool {
        let mut deferred = false;
        let load = &self.tier.shared.load;
        let dead = |w: u8| !load.is_attached(u32::from(w)).unwrap_or(true);
        for (pool, reader) in self.dead_letters.iter_mut().enumerate() {
            let Some(reader) = reader.as_mut() else {
                continue;
            };
            loop {
                let claim = match reader.claim() {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        warn!(pool, error = %e, "cannot read the dead-letter ring");
                        break;
                    }
                };
                match Ticket::decode(&claim) {
                    Ok(t) => {
                        let row = self
                            .tier
                            .shared
                            .geometry
                            .park_row(usize::from(t.forwarder), t.entry);
                        let Some(word) = row.map(|r| self.tier.shared.park.word(r, 0)) else {
                            claim.ack();
                            continue;
                        };
                        let generation = t.generation & park::GENERATION_MASK;
                        // A live index still shows TAKING while a new process in it has not yet
                        // reclaimed its predecessor's entries: look again next turn.
                        if let Park::Taking {
                            generation: g,
                            worker,
                        } = park::decode(word.load(Ordering::Acquire))
                            && g == generation
                            && !dead(worker)
                        {
                            deferred = true;
                            break;
                        }
                        let closed =
                            park::close(word, t.generation, CloseWhy::DeadLettered, None, dead);
                        warn!(
                            pool = %self.pools[pool].name,
                            client = %t.client,
                            attempts = claim.attempts(),
                            closing = closed,
                            "workers died holding a queued connection too many times; closing it"
                        );
                    }
                    Err(e) => warn!(pool, error = %e, "a corrupt dead letter; dropped"),
                }
                claim.ack();
            }
        }
        deferred
    }

    /// Measures each pool's drain rate over the recent window while its queue is busy; an idle
    /// queue has no rate (0), so the first connections of the next burst are queued. `true`:
    /// some queue is busy.
    fn measure(&mut self) -> bool {
        let mut busy = false;
        for (i, (pool, rate)) in self.pools.iter().zip(self.rates.iter_mut()).enumerate() {
            let served = pool.queue.left(Left::Served);
            let delta = served.saturating_sub(rate.last_served);
            rate.last_served = served;
            let depth = self
                .tier
                .shared
                .queues
                .get(i)
                .and_then(Option::as_ref)
                .map_or(0, mpmc::Queue::depth) as u64;
            let waiting = depth + self.tier.shared.load.count(pool.load.rows().queue());
            if waiting == 0 && delta == 0 {
                rate.busy_since = None;
                rate.window.clear();
                pool.queue.set_drain_rate(0.0);
                continue;
            }
            busy = true;
            let since = *rate.busy_since.get_or_insert_with(Instant::now);
            rate.window.push_back(delta);
            if rate.window.len() > RATE_WINDOW_TICKS {
                rate.window.pop_front();
            }
            if since.elapsed() >= RATE_MIN_BUSY {
                let total: u64 = rate.window.iter().sum();
                let seconds = rate.window.len() as f64 * TICK.as_secs_f64();
                pool.queue.set_drain_rate(total as f64 / seconds);
            }
        }
        busy
    }

    /// Whether any queueing pool can overflow at all: a backend with a cap, or a bound.
    fn could_overflow(&self) -> bool {
        self.pools
            .iter()
            .enumerate()
            .filter(|(i, _)| self.tier.shared.queues.get(*i).is_some_and(Option::is_some))
            .any(|(_, p)| {
                p.load.bound().is_some() || (0..p.load.len()).any(|b| p.load.max_conns(b) > 0)
            })
    }

    /// Keeps `target` workers running, from the first moment a pool can overflow. `true`: a
    /// worker waits to be restarted.
    fn supervise(&mut self) -> bool {
        let Some(command) = self.command.as_ref() else {
            return false;
        };
        let target = self.target.get() as usize;
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        // With no cap and no bound nothing overflows: no worker is started (one may be, the
        // moment `levee ctl` sets a cap). Workers already running stay.
        if slots.is_empty() && target > 0 {
            drop(slots);
            if !self.could_overflow() {
                return false;
            }
            slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        }
        while slots.len() < target {
            slots.push(Slot {
                child: None,
                pidfd: None,
                exited: false,
                started: Instant::now(),
                backoff: RESTART_FIRST,
                restart_at: Some(Instant::now()),
            });
        }
        // Fewer wanted: the last ones are asked to finish what they relay and exit.
        while slots.len() > target {
            if let Some(mut s) = slots.pop()
                && let Some(c) = s.child.take()
            {
                signal(&c, libc::SIGTERM);
                info!(
                    pid = c.id(),
                    "stopping a worker: overflow.workers was lowered"
                );
                // Reaped in the background so a draining worker never holds this loop up.
                std::thread::spawn(move || {
                    let mut c = c;
                    let _ = c.wait();
                });
            }
        }
        for (i, s) in slots.iter_mut().enumerate() {
            if let Some(c) = s.child.as_mut() {
                match c.try_wait() {
                    Ok(None) => {
                        // Readable yet not reapable (a debugger traces it, say): polling the
                        // pidfd again would return at once forever, so it is left to the tick.
                        if std::mem::take(&mut s.exited) {
                            s.pidfd = None;
                        }
                        continue;
                    }
                    Ok(Some(status)) => {
                        let ran = s.started.elapsed();
                        if ran >= RESTART_RESET {
                            s.backoff = RESTART_FIRST;
                        }
                        warn!(
                            worker = i,
                            pid = c.id(),
                            %status,
                            restart_in_ms = s.backoff.as_millis() as u64,
                            "a worker exited; restarting it"
                        );
                        s.child = None;
                        s.pidfd = None;
                        s.exited = false;
                        s.restart_at = Some(Instant::now() + s.backoff);
                        s.backoff = (s.backoff * 2).min(RESTART_MAX);
                    }
                    Err(e) => {
                        warn!(worker = i, error = %e, "cannot check on a worker");
                        // Its pidfd may stay readable: looked at every tick instead.
                        s.pidfd = None;
                        s.exited = false;
                    }
                }
            }
            if s.child.is_none() && s.restart_at.is_some_and(|t| Instant::now() >= t) {
                let mut cmd = Command::new(&command.exe);
                cmd.arg("worker").arg("--dir").arg(&self.tier.shared.dir);
                // A group of its own: Ctrl-C in levee's terminal reaches levee alone, which
                // drains its queue before it stops the workers that serve it.
                cmd.process_group(0);
                if let Some((uid, gid)) = command.run_as {
                    cmd.uid(uid).gid(gid);
                }
                if !command.cpus.is_empty() {
                    cmd.arg("--cpu")
                        .arg(command.cpus[i % command.cpus.len()].to_string());
                }
                match cmd.spawn() {
                    Ok(child) => {
                        info!(worker = i, pid = child.id(), "started a worker");
                        s.pidfd = pidfd_of(&child);
                        s.child = Some(child);
                        s.started = Instant::now();
                        s.restart_at = None;
                    }
                    Err(e) => {
                        warn!(worker = i, error = %e, exe = %command.exe.display(), "cannot start a worker");
                        s.restart_at = Some(Instant::now() + s.backoff);
                        s.backoff = (s.backoff * 2).min(RESTART_MAX);
                    }
                }
            }
        }
        // A worker waiting to restart, or one whose exit no pidfd would report: looked at every
        // tick.
        slots
            .iter()
            .any(|s| s.restart_at.is_some() || (s.child.is_some() && s.pidfd.is_none()))
    }
}

/// A pidfd for a child not yet reaped (so its pid is still its own). `None` where the kernel
/// has none: the supervisor then keeps its 50 ms tick while the child runs.
fn pidfd_of(child: &Child) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(child.id()).ok()?;
    super::handoff::pidfd_open(pid).ok()
}
