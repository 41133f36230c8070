//! The monitor thread: one `poll` loop over every backend's active check. It sleeps until the
//! nearest deadline (a check, a probe's timeout, the end of a cool-down), or until it is woken:
//! by a forwarder whose streak reached `eject.failures`, by an operator's drain or weight, or by
//! its stop. Only a slow-start ramp makes it wake on a short tick.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::probe::{NotStarted, Probe, Step};
use crate::config::{CheckKind, HealthConfig, PoolConfig};
use crate::eventfd::EventFd;
use crate::pool::{Pool, Status};

/// The step of a slow-start ramp; also the longest sleep where a pool has no eventfd to be
/// woken through. Otherwise the loop sleeps until a deadline or a wake-up, however long: each
/// wake-up of an idle thread costs CPU (bench/results/20261130-225000-674324a-idle-threads.txt).
const TICK: Duration = Duration::from_millis(50);

/// The running monitor. Dropping it stops the thread.
pub struct Monitor {
    stop: Arc<AtomicBool>,
    /// Written once when `stop` is set, so that the loop stops at once.
    wake: Option<Arc<EventFd>>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Starts monitoring `pools`, whose configurations are `configs` (same order).
    pub fn start(pools: &[Arc<Pool>], configs: &[PoolConfig]) -> io::Result<Self> {
        let now = Instant::now();
        let mut tracked = Vec::new();
        for (p, cfg) in configs.iter().enumerate() {
            let n = cfg.backends.len().max(1) as u32;
            for (i, b) in cfg.backends.iter().enumerate() {
                let check = (cfg.health.check == CheckKind::Tcp).then(|| Check::of(&cfg.health, b));
                // Spread the first checks over one interval so a large pool is not probed at once.
                let first = check
                    .as_ref()
                    .map_or(now, |c| now + c.interval * i as u32 / n);
                tracked.push(Tracked {
                    pool: p,
                    index: i,
                    label: format!("{}/{} ({})", cfg.name, b.name, b.addr),
                    addr: b.addr,
                    check,
                    probe: None,
                    next_check: first,
                    passes: 0,
                    fails: 0,
                    check_down: false,
                    ejected_until: None,
                    offences: 0,
                    offences_expire: None,
                    ramp_from: None,
                    held_back: false,
                    serving: None,
                });
            }
        }
        let pools: Vec<Arc<Pool>> = pools.to_vec();
        let settings: Vec<HealthConfig> = configs.iter().map(|c| c.health.clone()).collect();
        for (pool, s) in pools.iter().zip(&settings) {
            pool.health.signals.watch(s.eject_failures);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let wake = EventFd::new().ok().map(Arc::new);
        let thread = {
            let stop = stop.clone();
            let wake = wake.clone();
            std::thread::Builder::new()
                .name("levee-health".into())
                .spawn(move || {
                    Loop {
                        pools,
                        settings,
                        tracked,
                        poll_errors: 0,
                        local_errors: 0,
                    }
                    .run(&stop, wake.as_deref());
                })?
        };
        Ok(Self {
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(w) = &self.wake {
            w.signal();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.halt();
    }
}

/// One backend's check settings, the pool's with the backend's overrides.
struct Check {
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
}

impl Check {
    fn of(pool: &HealthConfig, b: &crate::config::BackendConfig) -> Self {
        let or = |own: Duration, pool: Duration| if own.is_zero() { pool } else { own };
        let or_n = |own: u32, pool: u32| if own == 0 { pool } else { own };
        Self {
            interval: or(b.check_interval, pool.interval),
            timeout: or(b.check_timeout, pool.timeout),
            rise: or_n(b.check_rise, pool.rise),
            fall: or_n(b.check_fall, pool.fall),
        }
    }
}

/// What the monitor knows of one backend.
struct Tracked {
    pool: usize,
    index: usize,
    /// `pool/backend (addr)`, for the log.
    label: String,
    addr: SocketAddr,
    check: Option<Check>,
    probe: Option<Probe>,
    next_check: Instant,
    /// Consecutive passed and failed checks.
    passes: u32,
    fails: u32,
    /// Failed `fall` checks and has not passed `rise` since.
    check_down: bool,
    ejected_until: Option<Instant>,
    /// Ejections so far; each doubles the next cool-down. Forgotten after a clean spell.
    offences: u32,
    offences_expire: Option<Instant>,
    ramp_from: Option<Instant>,
    /// An ejection was held back by `eject.max_percent`; logged once per spell.
    held_back: bool,
    /// Whether it took new connections at the last apply; `None` before the first.
    serving: Option<bool>,
}

struct Loop {
    pools: Vec<Arc<Pool>>,
    settings: Vec<HealthConfig>,
    tracked: Vec<Tracked>,
    /// Failed polls so far, for the log.
    poll_errors: u64,
    /// Checks skipped for want of descriptors or memory, for the log.
    local_errors: u64,
}

impl Loop {
    fn run(mut self, stop: &AtomicBool, stop_fd: Option<&EventFd>) {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(self.tracked.len());
        let mut owners: Vec<usize> = Vec::with_capacity(self.tracked.len());
        // Without an eventfd for the stop or for some pool's signals, nothing would wake the
        // loop for them: it looks on the short tick, as it did before it could be woken.
        let wakeable = stop_fd.is_some()
            && self
                .pools
                .iter()
                .all(|p| p.health.signals.wake_fd().is_some());
        let longest = (!wakeable).then_some(TICK);
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            self.passive(now);
            for t in 0..self.tracked.len() {
                self.checks(t, now);
                self.apply(t, now);
            }
            let mut wake: Option<Instant> = longest.map(|t| now + t);
            let mut due = |at: Instant| wake = Some(wake.map_or(at, |w| w.min(at)));
            fds.clear();
            owners.clear();
            for (i, t) in self.tracked.iter().enumerate() {
                if let Some(p) = &t.probe {
                    fds.push(libc::pollfd {
                        fd: p.fd(),
                        events: p.events(),
                        revents: 0,
                    });
                    owners.push(i);
                    due(p.deadline);
                } else if t.check.is_some() {
                    due(t.next_check);
                }
                for at in [t.ejected_until, t.offences_expire].into_iter().flatten() {
                    due(at);
                }
                if t.ramp_from.is_some() {
                    due(now + TICK);
                }
            }
            // The wake-ups go last: their readiness is cleared, never handed to a probe.
            let probes = fds.len();
            let wakes = self
                .pools
                .iter()
                .filter_map(|p| p.health.signals.wake_fd())
                .chain(stop_fd.map(AsRawFd::as_raw_fd));
            for fd in wakes {
                fds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            // Rounded up: poll counts whole milliseconds, and a deadline less than one away
            // rounded down to 0 would spin the loop until it arrives. None: until woken.
            let timeout = wake.map_or(-1, |at| {
                at.saturating_duration_since(now)
                    .as_micros()
                    .div_ceil(1000)
                    .min(i32::MAX as u128) as i32
            });
            // SAFETY: `fds` holds `fds.len()` initialised pollfds for the duration of the call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if ready < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    // A poll that keeps failing (out of memory, say) must not spin the thread:
                    // wait a tick, as if it had timed out, and say so once in a while.
                    self.poll_errors += 1;
                    if self.poll_errors.is_power_of_two() {
                        warn!(error = %e, failures = self.poll_errors, "health checks' poll failed");
                    }
                    std::thread::sleep(TICK);
                }
                continue;
            }
            if ready == 0 {
                continue;
            }
            if fds[probes..].iter().any(|fd| fd.revents != 0) {
                // Cleared before the next look, so a wake-up after it polls readable again.
                for p in &self.pools {
                    p.health.signals.woken();
                }
            }
            for (fd, &t) in fds[..probes].iter().zip(&owners) {
                if fd.revents != 0 {
                    self.on_ready(t, fd.revents);
                }
            }
        }
    }

    /// Acts on the failure streaks the forwarders report: ejects, within `eject.max_percent`.
    fn passive(&mut self, now: Instant) {
        for t in 0..self.tracked.len() {
            let (pool, index) = (self.tracked[t].pool, self.tracked[t].index);
            let s = &self.settings[pool];
            let tr = &mut self.tracked[t];
            if let Some(until) = tr.ejected_until {
                if now >= until {
                    tr.ejected_until = None;
                    tr.offences_expire = Some(now + s.eject_max_time);
                    self.pools[pool].health.signals.clear(index);
                    info!(backend = %tr.label, "returns from ejection");
                }
                continue;
            }
            if tr.offences_expire.is_some_and(|at| now >= at) {
                tr.offences = 0;
                tr.offences_expire = None;
            }
            if s.eject_failures == 0 || tr.check_down || self.pools[pool].health.drained(index) {
                continue;
            }
            let Some((streak, what)) = self.pools[pool]
                .health
                .signals
                .over(index, s.eject_failures)
            else {
                tr.held_back = false;
                continue;
            };
            let size = self.tracked.iter().filter(|o| o.pool == pool).count();
            let ejected = self
                .tracked
                .iter()
                .filter(|o| o.pool == pool && o.ejected_until.is_some())
                .count();
            let allowed = match s.eject_max_percent {
                0 => 0,
                pct => (size * pct as usize / 100).max(1),
            };
            let tr = &mut self.tracked[t];
            let health = &self.pools[pool].health;
            if ejected >= allowed {
                if !tr.held_back {
                    tr.held_back = true;
                    health.count(index, |b| &b.ejections_held_back);
                    warn!(
                        backend = %tr.label,
                        "not ejected after {streak} consecutive {what}: {ejected} of the pool's {size} \
                         backends are ejected already (eject.max_percent = {})",
                        s.eject_max_percent
                    );
                }
                continue;
            }
            tr.held_back = false;
            tr.offences += 1;
            let doubling = 1u32 << (tr.offences - 1).min(20);
            let cooldown = s.eject_time.saturating_mul(doubling).min(s.eject_max_time);
            tr.ejected_until = Some(now + cooldown);
            tr.offences_expire = None;
            health.signals.clear(index);
            health.count(index, |b| &b.ejections);
            warn!(
                backend = %tr.label,
                "ejected for {cooldown:?}: {streak} consecutive {what} seen by the forwarders \
                 (offence {})",
                tr.offences
            );
        }
    }

    /// Starts a due check, or fails one past its deadline.
    fn checks(&mut self, t: usize, now: Instant) {
        let tr = &mut self.tracked[t];
        let Some(check) = &tr.check else { return };
        if let Some(p) = &tr.probe {
            if now >= p.deadline {
                tr.probe = None;
                let timeout = check.timeout;
                self.settle(t, Err(format!("no answer within {timeout:?}")));
            }
            return;
        }
        if now < tr.next_check {
            return;
        }
        // Keep the schedule on its grid, but never try to catch up on missed checks.
        tr.next_check = (tr.next_check + check.interval).max(now);
        match Probe::start(tr.addr, now + check.timeout) {
            Ok(p) => tr.probe = Some(p),
            Err(NotStarted::Failed(e)) => self.settle(t, Err(e)),
            // levee's own shortage is no verdict on the backend: this check is skipped, and
            // the next comes at its time.
            Err(NotStarted::Local(e)) => {
                let (pool, index) = (tr.pool, tr.index);
                self.pools[pool].health.count(index, |b| &b.checks_skipped);
                self.local_errors += 1;
                if self.local_errors.is_power_of_two() {
                    warn!(
                        error = %e,
                        skipped = self.local_errors,
                        "health checks skipped: levee is out of descriptors or memory"
                    );
                }
            }
        }
    }

    fn on_ready(&mut self, t: usize, revents: i16) {
        let s = &self.settings[self.tracked[t].pool];
        let Some(p) = self.tracked[t].probe.as_mut() else {
            return;
        };
        let outcome = match p.step(revents, &s.send, &s.expect) {
            Step::Pending => return,
            Step::Passed => Ok(()),
            Step::Failed(why) => Err(why),
        };
        self.tracked[t].probe = None;
        self.settle(t, outcome);
    }

    /// Counts a finished check and moves the backend up or down on `rise` and `fall`.
    fn settle(&mut self, t: usize, outcome: Result<(), String>) {
        let (pool, index) = (self.tracked[t].pool, self.tracked[t].index);
        let health = &self.pools[pool].health;
        let tr = &mut self.tracked[t];
        let Some(check) = &tr.check else { return };
        match outcome {
            Ok(()) => {
                health.count(index, |b| &b.checks_passed);
                tr.passes += 1;
                tr.fails = 0;
                if tr.check_down && tr.passes >= check.rise {
                    tr.check_down = false;
                    health.record(index, |b| &b.last_up_after, tr.passes);
                    info!(backend = %tr.label, "is up: {} consecutive checks passed", tr.passes);
                }
            }
            Err(why) => {
                health.count(index, |b| &b.checks_failed);
                debug!(backend = %tr.label, reason = %why, "check failed");
                tr.fails += 1;
                tr.passes = 0;
                if !tr.check_down && tr.fails >= check.fall {
                    tr.check_down = true;
                    health.record(index, |b| &b.last_down_after, tr.fails);
                    health.count(index, |b| &b.downs);
                    warn!(
                        backend = %tr.label,
                        "is down: {} consecutive checks failed (last: {why})",
                        tr.fails
                    );
                }
            }
        }
    }

    /// Writes the backend's state and effective weight where the forwarders read them.
    fn apply(&mut self, t: usize, now: Instant) {
        let (pool, index) = (self.tracked[t].pool, self.tracked[t].index);
        let slowstart = self.settings[pool].slowstart;
        let shared = &self.pools[pool];
        let drained = shared.health.drained(index);
        let tr = &mut self.tracked[t];
        let status = if drained {
            Status::Drain
        } else if tr.ejected_until.is_some() {
            Status::Ejected
        } else if tr.check_down {
            Status::Down
        } else {
            Status::Up
        };
        let serving = status == Status::Up;
        match tr.serving {
            Some(false) if serving => {
                shared.health.count(index, |b| &b.ups);
                if !slowstart.is_zero() {
                    tr.ramp_from = Some(now);
                }
                info!(backend = %tr.label, "takes new connections again");
            }
            Some(true) if !serving && drained => {
                info!(backend = %tr.label, "draining: no new connections, established ones continue");
            }
            _ => {}
        }
        tr.serving = Some(serving);
        let mut status = status;
        let full = shared.health.weight(index);
        let mut weight = full;
        if let Some(from) = tr.ramp_from {
            let elapsed = now.saturating_duration_since(from);
            if serving && elapsed < slowstart && full > 0 {
                // At least 1, so a ramping backend is never mistaken for a drained one.
                let share = elapsed.as_secs_f64() / slowstart.as_secs_f64();
                weight = ((f64::from(full) * share) as u32).clamp(1, full);
                status = Status::Ramping;
            } else {
                tr.ramp_from = None;
            }
        }
        if shared.load.state(index) != status {
            shared.load.set_state(index, status);
        }
        if shared.load.weight(index) != weight {
            shared.load.set_weight(index, weight);
        }
        shared.health.set_status(index, status);
    }
}
