//! The overflow tier as `levee run` holds it, and its supervisor thread, which
//!
//! - starts `overflow.workers` worker processes and restarts one that exits, with backoff;
//! - reaps the load-table columns of processes that died, so their backend slots come back;
//! - closes the clients whose tickets went to the dead-letter ring;
//! - measures how fast each pool's queue drains, for admission by predicted wait.
//!
//! It never touches a connection's data path and nothing waits for it.

use std::collections::VecDeque;
use std::io;
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
use crate::pool::{Left, Pool};

/// How often the supervisor looks around.
const TICK: Duration = Duration::from_millis(50);
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
#[derive(Debug, Default)]
pub struct WorkerTarget(AtomicU32);

impl WorkerTarget {
    pub fn set(&self, n: u32) {
        self.0.store(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
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
        let target = Arc::new(WorkerTarget::default());
        target.set(workers);
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
                        sup.turn();
                        turns.fetch_add(1, Ordering::Release);
                        std::thread::sleep(TICK);
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
    fn turn(&mut self) {
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
        self.dead_letters();
        self.measure();
        self.supervise();
    }

    /// Closes the clients whose tickets went to the dead-letter ring.
    fn dead_letters(&mut self) {
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
    }

    /// Measures each pool's drain rate over the recent window while its queue is busy; an idle
    /// queue has no rate (0), so the first connections of the next burst are queued.
    fn measure(&mut self) {
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

    /// Keeps `target` workers running, from the first moment a pool can overflow.
    fn supervise(&mut self) {
        let Some(command) = self.command.as_ref() else {
            return;
        };
        let target = self.target.get() as usize;
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        // With no cap and no bound nothing overflows: no worker is started (one may be, the
        // moment `levee ctl` sets a cap). Workers already running stay.
        if slots.is_empty() && target > 0 {
            drop(slots);
            if !self.could_overflow() {
                return;
            }
            slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        }
        while slots.len() < target {
            slots.push(Slot {
                child: None,
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
                    Ok(None) => continue,
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
                        s.restart_at = Some(Instant::now() + s.backoff);
                        s.backoff = (s.backoff * 2).min(RESTART_MAX);
                    }
                    Err(e) => warn!(worker = i, error = %e, "cannot check on a worker"),
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
    }
}
