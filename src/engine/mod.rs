//! The engine: assembles a running levee from its configuration. It binds the listeners (or
//! takes them over from the levee it replaces), builds the pools and the overflow tier, starts
//! one pinned forwarder thread per core ([`crate::forward`]), the health monitor and the
//! workers' supervisor, and stops them in order.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use levee_rings::mpmc;
use levee_rings::table::Holder;
use tracing::{info, warn};

use crate::balance::{Balancer, BuildError};
use crate::config::{Config, CoreSet, Handoff};
use crate::eventfd::EventFd;
use crate::forward::{
    Forwarder, Inbox, IntakeSetup, ListenerSetup, Mailbox, ParkingSetup, QueueSuccessor, Setup,
    StopFlags, Takeover, Tunables, gate, uring,
};
use crate::health::Monitor;
use crate::overflow::Settings;
use crate::overflow::handoff::ProcessHandle;
use crate::overflow::shared::{self, Shared, SharedError};
use crate::overflow::supervisor::{Supervisor, Tier, WorkerCommand, WorkerTarget};
use crate::pool::{Pool, PoolLoad};
use crate::stats::{ForwarderStats, Totals};
use listen::Bound;
pub use threads::Threads;

mod listen;
mod threads;

/// Why the engine could not start.
#[derive(Debug)]
pub enum StartError {
    Uring(uring::ProbeError),
    Cores(String),
    Pool {
        pool: String,
        error: BuildError,
    },
    Listen {
        listener: String,
        addr: SocketAddr,
        error: io::Error,
    },
    Forwarder {
        index: usize,
        error: io::Error,
    },
    Overflow(SharedError),
    Ring(levee_rings::Error),
    Io(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uring(e) => e.fmt(f),
            Self::Cores(e) => e.fmt(f),
            Self::Pool { pool, error } => write!(f, "pool.{pool}: {error}"),
            Self::Listen {
                listener,
                addr,
                error,
            } => {
                write!(f, "listener.{listener}: cannot listen on {addr}: {error}")
            }
            Self::Forwarder { index, error } => {
                write!(f, "forwarder {index} failed to start: {error}")
            }
            Self::Overflow(e) => e.fmt(f),
            Self::Ring(e) => write!(f, "overflow tier: {e}"),
            Self::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StartError {}

/// Asks a running engine to stop, from any thread.
#[derive(Clone)]
pub struct Stopper {
    flags: Arc<StopFlags>,
    /// An eventfd every forwarder polls; signalled once to wake them.
    wake: Arc<EventFd>,
}

impl Stopper {
    /// Stop accepting; connections in flight get up to `engine.drain_timeout` to finish.
    pub fn stop(&self) {
        self.flags.requested.store(true, Ordering::Release);
        self.wake.signal();
    }

    /// Stop now: like [`Self::stop`], and close connections still open at the next tick.
    pub fn stop_now(&self) {
        self.flags.hurry.store(true, Ordering::Release);
        self.stop();
    }
}

/// Running forwarders.
pub struct Engine {
    threads: Vec<JoinHandle<io::Result<()>>>,
    stats: Vec<Arc<ForwarderStats>>,
    pools: Vec<Arc<Pool>>,
    stopper: Stopper,
    addrs: Vec<SocketAddr>,
    monitor: Option<Monitor>,
    tunables: Arc<Tunables>,
    /// The forwarder threads' ids, for what `ctl` changes on them (the scheduling policy).
    thread_ids: Arc<Threads>,
    /// The overflow tier's segments; dropped (and its files removed) after the forwarders.
    overflow: Option<Arc<Tier>>,
    supervisor: Option<Supervisor>,
    drain_timeout: Duration,
    /// Every listening socket with its listener's name and configured address, for a levee
    /// that takes over from this one.
    handover: Mutex<Vec<(String, SocketAddr, OwnedFd)>>,
    /// Where clients queued by a levee this one took over from are handed in.
    mailbox: Mailbox,
    /// Each listener's allow/deny lists and per-source rate, in configuration order.
    gates: Vec<Arc<gate::Gate>>,
}

/// How to start an engine beyond its configuration.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The levee binary, to start `overflow.workers` worker processes with; `None` starts none
    /// (workers started on their own may still attach).
    pub worker_exe: Option<PathBuf>,
    /// The uid and gid levee runs as once its sockets are bound (`engine.user`): its workers
    /// start as them, and the overflow directory is theirs.
    pub run_as: Option<(u32, u32)>,
}

/// Gives directory `dir` and everything in it to `uid`:`gid`: the workers that run as them
/// open its segments and bind sockets in it, and levee, run as them too, removes it at exit.
fn give_dir(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let give = |path: &Path| {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    };
    give(dir)?;
    for entry in std::fs::read_dir(dir)? {
        give(&entry?.path())?;
    }
    Ok(())
}

/// One forwarder to start: its CPU, listeners, and part in the overflow tier.
struct ForwarderPlan {
    core: Option<usize>,
    listeners: Vec<ListenerSetup>,
    parking: Option<ParkingSetup>,
    intake: Option<IntakeSetup>,
}

impl Engine {
    /// Probes io_uring, binds every listener and starts the forwarders, with no supervised
    /// workers. Returns once every forwarder is ready to accept.
    pub fn start(cfg: &Config) -> Result<Self, StartError> {
        Self::start_with(cfg, &Options::default())
    }

    /// As [`Engine::start`], and with the overflow tier's supervisor starting workers as
    /// `options` says.
    pub fn start_with(cfg: &Config, options: &Options) -> Result<Self, StartError> {
        Self::start_from(cfg, options, &mut Vec::new())
    }

    /// As [`Engine::start_with`], taking over from `inherited` the listening sockets of each
    /// listener whose name and configured address they carry (those a levee being replaced
    /// handed over, with the connections queued on them); the rest are bound afresh.
    pub fn start_from(
        cfg: &Config,
        options: &Options,
        inherited: &mut Vec<(String, SocketAddr, OwnedFd)>,
    ) -> Result<Self, StartError> {
        let caps = uring::probe().map_err(StartError::Uring)?;
        let cores = cfg.engine.cores.resolve().map_err(StartError::Cores)?;
        let (tier, notices) = if shared::wanted(cfg) {
            let (shared, notices) =
                Shared::create(cfg, cores.len()).map_err(StartError::Overflow)?;
            let holder = Arc::new(shared.load.holder().map_err(StartError::Ring)?);
            Settings::store(&shared.load, &cfg.overflow);
            if let Some((uid, gid)) = options.run_as {
                give_dir(&shared.dir, uid, gid).map_err(StartError::Io)?;
            }
            (Some(Arc::new(Tier { shared, holder })), notices)
        } else {
            (None, Vec::new())
        };
        let pools = build_pools(
            cfg,
            tier.as_deref().map(|t| (&t.shared, &t.holder)),
            cores.len(),
            true,
        )?;

        let Bound {
            addrs,
            sockets,
            handover,
            gates,
        } = listen::bind(cfg, cores.len(), inherited)?;

        let mut parking = Vec::with_capacity(cores.len());
        if let Some(t) = tier.as_deref() {
            for per_worker in notices {
                let producers = t
                    .shared
                    .queues
                    .iter()
                    .map(|q| q.as_ref().map(mpmc::Queue::producer).transpose())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(StartError::Ring)?;
                parking.push(ParkingSetup {
                    dir: t.shared.dir.clone(),
                    geometry: t.shared.geometry,
                    load: t.shared.load.clone(),
                    park: t.shared.park.clone(),
                    producers,
                    notices: per_worker,
                    futex: caps.futex,
                });
            }
        }
        let mut parking = parking.into_iter();
        let plans = cores
            .iter()
            .copied()
            .zip(sockets)
            .map(|(core, listeners)| ForwarderPlan {
                core: Some(core),
                listeners,
                parking: parking.next(),
                intake: None,
            })
            .collect();
        let mut engine = Self::spawn(cfg, caps, pools, plans, tier.clone())?;
        engine.addrs = addrs;
        engine.handover = Mutex::new(handover);
        engine.gates = gates;
        info!(
            forwarders = cores.len(),
            cpus = ?cores,
            defer_taskrun = caps.defer_taskrun,
            sched_policy = cfg.engine.sched_policy.name(),
            "forwarders ready"
        );
        match Monitor::start(&engine.pools, &cfg.pools) {
            Ok(m) => engine.monitor = Some(m),
            Err(e) => {
                engine.stop();
                let _ = engine.join();
                return Err(StartError::Io(e));
            }
        }
        if let Some(t) = tier {
            let command = match &options.worker_exe {
                Some(exe) => {
                    let cpus = match &cfg.overflow.cores {
                        CoreSet::Auto => Vec::new(),
                        set => set.resolve().map_err(|e| {
                            StartError::Cores(e.replace("engine.cores", "overflow.cores"))
                        })?,
                    };
                    Some(WorkerCommand {
                        exe: exe.clone(),
                        cpus,
                        run_as: options.run_as,
                    })
                }
                None => None,
            };
            info!(
                dir = %t.shared.dir.display(),
                workers = cfg.overflow.workers,
                supervised = command.is_some(),
                "overflow queue ready"
            );
            match Supervisor::start(t, engine.pools.clone(), cfg.overflow.workers, command) {
                Ok(s) => engine.supervisor = Some(s),
                Err(e) => {
                    engine.stop();
                    let _ = engine.join();
                    return Err(StartError::Io(e));
                }
            }
        }
        Ok(engine)
    }

    /// Starts a worker: one engine thread, pinned to `cpu` if given, that takes connections from
    /// the queues of the levee whose overflow directory is `dir`, configured as `cfg` (that
    /// levee's `levee.conf`).
    pub fn start_worker(cfg: &Config, dir: &Path, cpu: Option<usize>) -> Result<Self, StartError> {
        let caps = uring::probe().map_err(StartError::Uring)?;
        let shared =
            Shared::open(dir, cfg, Duration::from_secs(10)).map_err(StartError::Overflow)?;
        let holder = shared.load.holder().map_err(StartError::Ring)?;
        let me = holder.index();
        if me == 0 || me > shared.geometry.max_workers {
            return Err(StartError::Io(io::Error::other(format!(
                "overflow.dir {}: no levee is running there, or every worker place is taken \
                 (holder {me}, overflow.max_workers {})",
                dir.display(),
                shared.geometry.max_workers
            ))));
        }
        let holder = Arc::new(holder);
        let takeover = choose_takeover(cfg, &shared)?;
        info!(
            worker = me,
            dir = %dir.display(),
            handoff = match takeover {
                Takeover::Pidfd => "pidfd",
                Takeover::ScmRights => "scm_rights",
            },
            "worker attached"
        );
        let queues = shared
            .queues
            .iter()
            .map(|q| {
                q.as_ref()
                    .map(|q| Ok((q.clone(), q.consumer()?)))
                    .transpose()
            })
            .collect::<Result<Vec<_>, levee_rings::Error>>()
            .map_err(StartError::Ring)?;
        let intake = IntakeSetup {
            me,
            dir: dir.to_owned(),
            geometry: shared.geometry,
            load: shared.load.clone(),
            park: shared.park.clone(),
            queues,
            takeover,
            futex: caps.futex,
        };
        let pools = build_pools(cfg, Some((&shared, &holder)), 1, false)?;
        let tier = Arc::new(Tier { shared, holder });
        let plan = ForwarderPlan {
            core: cpu,
            listeners: Vec::new(),
            parking: None,
            intake: Some(intake),
        };
        Self::spawn(cfg, caps, pools, vec![plan], Some(tier))
    }

    /// Starts one forwarder thread per plan and waits until each is ready.
    fn spawn(
        cfg: &Config,
        caps: uring::Capabilities,
        pools: Vec<Arc<Pool>>,
        plans: Vec<ForwarderPlan>,
        overflow: Option<Arc<Tier>>,
    ) -> Result<Self, StartError> {
        let wake = Arc::new(EventFd::new().map_err(StartError::Io)?);
        let stop = Arc::new(StopFlags::default());
        let tunables = Arc::new(Tunables::new(&cfg.engine));
        let thread_ids = Arc::new(Threads::default());
        let count = plans.len();
        let stats: Vec<_> = (0..count)
            .map(|_| Arc::new(ForwarderStats::for_listeners(cfg.listeners.len())))
            .collect();
        // Forwarders with listeners take clients a levee they replace had queued.
        let inboxes: Vec<Option<Arc<Inbox>>> = plans
            .iter()
            .map(|p| {
                (p.intake.is_none() && p.parking.is_some())
                    .then(|| Inbox::new().map(Arc::new))
                    .transpose()
            })
            .collect::<io::Result<_>>()
            .map_err(StartError::Io)?;
        let mailbox = Mailbox {
            inboxes: inboxes.iter().flatten().cloned().collect(),
            listeners: cfg
                .listeners
                .iter()
                .map(|l| Arc::from(l.name.as_str()))
                .collect(),
        };

        let (ready_tx, ready_rx) = mpsc::channel();
        let mut threads = Vec::with_capacity(count);
        for (index, plan) in plans.into_iter().enumerate() {
            let worker = plan.intake.is_some();
            let core = plan.core;
            let setup = Setup {
                index,
                caps,
                engine: cfg.engine.clone(),
                listeners: plan.listeners,
                pools: pools.clone(),
                stats: stats[index].clone(),
                stop: stop.clone(),
                wake: wake.as_raw_fd(),
                tunables: tunables.clone(),
                parking: plan.parking,
                intake: plan.intake,
                inbox: inboxes[index].clone(),
            };
            let ready = ready_tx.clone();
            let policy = cfg.engine.sched_policy;
            let registry = thread_ids.clone();
            let name = if worker {
                "levee-worker".to_string()
            } else {
                format!("levee-fwd-{index}")
            };
            let spawned = std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    if let Some(core) = core
                        && !core_affinity::set_for_current(core_affinity::CoreId { id: core })
                    {
                        warn!(
                            forwarder = index,
                            cpu = core,
                            "could not pin the forwarder to its CPU"
                        );
                    }
                    // Forgotten when the thread ends, however it ends.
                    let _registered = registry.register(index);
                    if let Err(error) = threads::set_sched_policy(0, policy) {
                        warn!(
                            forwarder = index,
                            policy = policy.name(),
                            %error,
                            "could not set the forwarder's scheduling policy"
                        );
                    }
                    match Forwarder::new(setup) {
                        Ok(fwd) => {
                            let _ = ready.send((index, Ok(())));
                            fwd.run()
                        }
                        Err(e) => {
                            let kind = e.kind();
                            let msg = e.to_string();
                            let _ = ready.send((index, Err(e)));
                            Err(io::Error::new(kind, msg))
                        }
                    }
                })
                .map_err(StartError::Io)?;
            threads.push(spawned);
        }
        drop(ready_tx);

        let engine = Self {
            threads,
            stats,
            pools,
            stopper: Stopper { flags: stop, wake },
            addrs: Vec::new(),
            monitor: None,
            tunables,
            thread_ids,
            overflow,
            supervisor: None,
            drain_timeout: cfg.engine.drain_timeout,
            handover: Mutex::new(Vec::new()),
            mailbox,
            gates: Vec::new(),
        };
        for _ in 0..count {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((index, Err(error))) => {
                    engine.stop();
                    let _ = engine.join();
                    return Err(StartError::Forwarder { index, error });
                }
                Err(_) => {
                    engine.stop();
                    let _ = engine.join();
                    return Err(StartError::Io(io::Error::other(
                        "a forwarder thread died at start",
                    )));
                }
            }
        }
        Ok(engine)
    }

    /// The address each listener is bound to, in configuration order (with the real port when
    /// the configuration asked for port 0).
    pub fn listener_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Every listening socket (its listener's name, configured address and a descriptor of
    /// its own), to hand to a levee that takes over from this one; none once stopping.
    pub fn handover_sockets(&self) -> Vec<(String, SocketAddr, OwnedFd)> {
        let kept = self
            .handover
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        kept.iter()
            .filter_map(|(name, addr, fd)| Some((name.clone(), *addr, fd.try_clone().ok()?)))
            .collect()
    }

    /// The pools as the forwarders see them: live load, backend names.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// Each forwarder's counters, for readers that outlive a borrow of the engine.
    pub fn counters(&self) -> Vec<Arc<ForwarderStats>> {
        self.stats.clone()
    }

    /// The engine settings that may change while it runs.
    pub fn tunables(&self) -> &Arc<Tunables> {
        &self.tunables
    }

    /// The forwarder threads, to change their scheduling policy.
    pub fn threads(&self) -> &Arc<Threads> {
        &self.thread_ids
    }

    /// Counters summed over the forwarders, now.
    pub fn totals(&self) -> Totals {
        Totals::sum(self.stats.iter().map(|s| &**s))
    }

    /// Asks every forwarder to stop accepting and drain. Returns at once.
    pub fn stop(&self) {
        // The second descriptors kept for a handover go first: held, they would keep the
        // listeners open after the forwarders close theirs, and new clients would wait in an
        // accept queue no one serves instead of being refused. (After a handover, the new
        // levee holds its own.)
        self.handover
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        self.stopper.stop();
    }

    /// Sends the clients queued here, once the forwarders stop accepting, to the levee that
    /// took over (for the listeners it queues too). Call before [`Self::stop`]; the first
    /// successor stays.
    pub fn move_queue_to(&self, successor: Arc<dyn QueueSuccessor>) {
        let _ = self.stopper.flags.successor.set(successor);
    }

    /// Each listener's gate (allow/deny, per-source rate), in configuration order, for `ctl`.
    pub fn gates(&self) -> &[Arc<gate::Gate>] {
        &self.gates
    }

    /// Where clients queued by the levee this one took over from are handed in.
    pub fn mailbox(&self) -> Mailbox {
        self.mailbox.clone()
    }

    /// A handle that can stop this engine from another thread.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Waits for every forwarder to finish; returns the final counters, or the first error a
    /// forwarder stopped with.
    pub fn join(mut self) -> io::Result<Totals> {
        if let Some(m) = self.monitor.take() {
            m.stop();
        }
        let mut first_error = None;
        for (i, t) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error
                        .get_or_insert(io::Error::new(e.kind(), format!("forwarder {i}: {e}")));
                }
                Err(_) => {
                    first_error.get_or_insert(io::Error::other(format!("forwarder {i} panicked")));
                }
            }
        }
        // Workers go after the forwarders: until then they may still take parked clients.
        if let Some(s) = self.supervisor.take() {
            // Their own drain, and a little more, before a worker is killed.
            s.stop(self.drain_timeout + Duration::from_secs(2));
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(Totals::sum(self.stats.iter().map(|s| &**s))),
        }
    }

    /// The overflow tier, when the configuration queues.
    pub fn overflow(&self) -> Option<&Arc<Tier>> {
        self.overflow.as_ref()
    }

    /// How many supervised workers to keep running, when this engine starts workers.
    pub fn worker_target(&self) -> Option<Arc<WorkerTarget>> {
        self.supervisor
            .as_ref()
            .filter(|s| s.supervises())
            .map(|s| s.target.clone())
    }

    /// Process ids of the supervised workers running now.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.supervisor
            .as_ref()
            .map_or_else(Vec::new, Supervisor::worker_pids)
    }

    /// Turns the overflow supervisor has taken so far (0 without an overflow tier).
    pub fn supervisor_turns(&self) -> u64 {
        self.supervisor.as_ref().map_or(0, Supervisor::turns)
    }
}

/// Every pool's shared state: loads in the overflow tier's table (`init`ialised from the
/// configuration by the table's creator), or private ones without a tier.
fn build_pools(
    cfg: &Config,
    tier: Option<(&Shared, &Arc<Holder>)>,
    forwarders: usize,
    init: bool,
) -> Result<Vec<Arc<Pool>>, StartError> {
    let rows = crate::pool::table::layout(&cfg.pools).0;
    cfg.pools
        .iter()
        .zip(rows)
        .map(|(p, rows)| {
            let balancer = Balancer::new(p).map_err(|error| StartError::Pool {
                pool: p.name.clone(),
                error,
            })?;
            let load = match tier {
                Some((shared, holder)) => {
                    let load = PoolLoad::attach(shared.load.clone(), holder.clone(), rows);
                    if init {
                        load.init(p);
                    }
                    load
                }
                None => PoolLoad::new(p),
            };
            Ok(Arc::new(Pool::with_load(p, balancer, load, forwarders)))
        })
        .collect()
}

/// How this worker takes sockets: as configured, or for `auto` (and the environment variable
/// `LEVEE_OVERFLOW_HANDOFF`, which overrides the key), pidfd_getfd where the kernel permits it
/// on the levee that made the queues.
fn choose_takeover(cfg: &Config, shared: &Shared) -> Result<Takeover, StartError> {
    let configured = match std::env::var("LEVEE_OVERFLOW_HANDOFF").ok().as_deref() {
        Some(name) => Handoff::from_name(name).ok_or_else(|| {
            StartError::Io(io::Error::other(format!(
                "LEVEE_OVERFLOW_HANDOFF={name}: expected auto, pidfd or scm_rights"
            )))
        })?,
        None => cfg.overflow.handoff,
    };
    match configured {
        Handoff::Pidfd => Ok(Takeover::Pidfd),
        Handoff::ScmRights => Ok(Takeover::ScmRights),
        Handoff::Auto => {
            let creator = shared.load.creator();
            // A descriptor number no process has: EBADF if the kernel lets us take descriptors
            // from that process at all, EPERM if not.
            let probe = ProcessHandle::open(creator.pid, creator.start_ticks)
                .and_then(|h| h.take(i32::MAX).map(drop));
            match probe {
                Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(Takeover::Pidfd),
                Ok(()) => Ok(Takeover::Pidfd),
                Err(e) => {
                    warn!(
                        error = %e,
                        "pidfd_getfd on levee is not permitted (Yama ptrace_scope, seccomp, or \
                         another user?): sockets will be handed over with SCM_RIGHTS"
                    );
                    Ok(Takeover::ScmRights)
                }
            }
        }
    }
}

fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    socket2::SockRef::from(fd)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("listener bound to a non-IP address"))
}
