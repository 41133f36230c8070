//! The effective configuration of a running levee and the live objects its runtime keys drive.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::config::registry::{self, Apply, GateRule, Lookup, OverflowSetting};
use crate::config::{AdminState, BackendConfig, Config, LogLevel, listing_entries};
use crate::engine::Threads;
use crate::forward::Tunables;
use crate::overflow::Settings;
use crate::overflow::supervisor::{Tier, WorkerTarget};
use crate::pool::{Left, Pool, Refused};
use crate::stats::catalog::{self, Family, Reading, Stat};
use crate::stats::histogram::Measure;
use crate::stats::{CloseReason, ForwarderStats, Totals};

/// Whether `key` names a live counter: under `stats.`, and not one of the configuration keys
/// there (`stats.listen`).
fn is_counter(key: &str) -> bool {
    key.starts_with("stats.") && !matches!(registry::lookup(key), Lookup::Found { .. })
}

/// What `levee ctl` reads and changes.
pub struct Live {
    /// The configuration as now in effect: the file, plus every change made since.
    config: Mutex<Config>,
    pools: Vec<Arc<Pool>>,
    tunables: Arc<Tunables>,
    counters: Vec<Arc<ForwarderStats>>,
    set_log_level: Box<dyn Fn(LogLevel) + Send + Sync>,
    overflow: Option<Overflow>,
    reload: Option<Arc<Reload>>,
    gates: Vec<Arc<crate::forward::gate::Gate>>,
    /// The forwarder threads, where this process runs them.
    threads: Option<Arc<Threads>>,
}

/// Reloads as `ctl` asks for them and reports them: `request` asks the process to reload (it
/// sends itself SIGHUP, which the main thread acts on); the main thread records a refusal.
pub struct Reload {
    request: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
    failures: std::sync::atomic::AtomicU64,
    last_error: Mutex<String>,
}

impl Reload {
    pub fn new(request: Box<dyn Fn() -> Result<(), String> + Send + Sync>) -> Self {
        Self {
            request,
            failures: std::sync::atomic::AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
        }
    }

    /// A reload was refused (a bad file, a new levee that failed): the running levee goes on.
    pub fn failed(&self, why: &str) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = why.to_string();
        self.failures
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}

/// The overflow tier as `ctl` reads and changes it.
pub struct Overflow {
    pub tier: Arc<Tier>,
    /// The supervisor's worker count, when workers are supervised.
    pub workers: Option<Arc<WorkerTarget>>,
}

impl Live {
    /// The live objects of a running levee. Without [`Self::with_threads`] (a process that
    /// runs no forwarder threads of its own), setting `engine.sched_policy` is refused.
    pub fn new(
        config: Config,
        pools: Vec<Arc<Pool>>,
        tunables: Arc<Tunables>,
        counters: Vec<Arc<ForwarderStats>>,
        set_log_level: Box<dyn Fn(LogLevel) + Send + Sync>,
        overflow: Option<Overflow>,
    ) -> Self {
        Self {
            config: Mutex::new(config),
            pools,
            tunables,
            counters,
            set_log_level,
            overflow,
            reload: None,
            gates: Vec::new(),
            threads: None,
        }
    }

    /// The forwarder threads, whose scheduling policy `ctl -w` changes.
    pub fn with_threads(mut self, threads: Arc<Threads>) -> Self {
        self.threads = Some(threads);
        self
    }

    /// The listeners' gates, in configuration order, whose rules `ctl -w` changes.
    pub fn with_gates(mut self, gates: Vec<Arc<crate::forward::gate::Gate>>) -> Self {
        self.gates = gates;
        self
    }

    /// Lets `levee ctl --reload` ask for reloads through `reload`.
    pub fn with_reload(mut self, reload: Arc<Reload>) -> Self {
        self.reload = Some(reload);
        self
    }

    /// Asks for a reload; the reply says it was asked, and `stats.pid` and
    /// `stats.reload.failures` say how it ended.
    pub fn reload(&self) -> Result<String, String> {
        match &self.reload {
            Some(r) => (r.request)().map(|()| format!("requested of levee {}", std::process::id())),
            None => {
                Err("this levee cannot reload: it runs the built-in default, or in a test".into())
            }
        }
    }

    fn config(&self) -> std::sync::MutexGuard<'_, Config> {
        // A panic while holding the lock leaves a whole Config behind: still usable.
        self.config.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `KEY = VALUE` for one key, configuration or `stats.*`. A runtime key reads what the
    /// engine holds (see [`Self::in_effect`]), not what was last written to it.
    pub fn get(&self, key: &str) -> Result<String, String> {
        if is_counter(key) {
            return self
                .stats()
                .into_iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .ok_or_else(|| format!("{key}: unknown counter; `levee ctl -a` lists them"));
        }
        self.in_effect().get(key)
    }

    /// Changes a runtime key and applies it to the running engine; returns the value now in
    /// effect, as the engine reads it. A rejected value changes nothing.
    pub fn set(&self, key: &str, value: &str) -> Result<String, String> {
        if is_counter(key) {
            return Err(format!("{key}: counters are read-only"));
        }
        {
            let mut cfg = self.config();
            let mut next = cfg.clone();
            next.set_runtime(key, value)?;
            self.apply(&next, key)?;
            *cfg = next;
        }
        self.get(key)
    }

    /// Like [`Self::set`], but a value equal to the one in effect is accepted whatever the key
    /// (so a whole configuration file can be loaded to apply just its runtime changes).
    pub fn load(&self, key: &str, value: &str) -> Result<String, String> {
        let Lookup::Found { spec, .. } = registry::lookup(key) else {
            return self.set(key, value);
        };
        let canonical = spec
            .check(value.trim())
            .map_err(|e| format!("{key}: {e}"))?;
        let current = self.get(key)?;
        if canonical == current {
            Ok(current)
        } else {
            self.set(key, value)
        }
    }

    /// Every key with its value, then the counters.
    pub fn list(&self) -> Vec<(String, String)> {
        let mut all = listing_entries(&self.in_effect());
        all.extend(self.stats());
        all
    }

    /// The configuration with each runtime key read back from the engine part that applies
    /// it, so that `get` and `list` show what is in effect: a setter that failed to reach the
    /// engine shows as the old value.
    fn in_effect(&self) -> Config {
        let mut cfg = self.config().clone();
        for apply in registry::KEYS.iter().filter_map(|spec| spec.runtime) {
            self.read_back(apply, &mut cfg);
        }
        cfg
    }

    /// Reads the setting `apply` names, for every listener, pool or backend it has, from the
    /// engine part that [`Self::apply`] changes, into `cfg`.
    fn read_back(&self, apply: Apply, cfg: &mut Config) {
        let t = &self.tunables;
        match apply {
            Apply::ConnectTimeout => {
                cfg.engine.connect_timeout = Duration::from_millis(t.connect_timeout_ms());
            }
            Apply::ConnectRetries => {
                cfg.engine.connect_retries =
                    u32::try_from(t.connect_tries() - 1).unwrap_or(u32::MAX);
            }
            Apply::IdleTimeout => {
                cfg.engine.idle_timeout = Duration::from_millis(t.idle_timeout_ms())
            }
            // The two settings the engine cannot report back keep the value last applied: the
            // scheduling policy is a property of the forwarder threads (seen in /proc), and the
            // level is inside the log filter.
            Apply::SchedPolicy | Apply::LogLevel => {}
            Apply::OverflowWorkers => {
                if let Some(target) = self.overflow.as_ref().and_then(|o| o.workers.as_ref()) {
                    cfg.overflow.workers = target.get();
                }
            }
            Apply::OverflowSettings(setting) => {
                let Some(o) = &self.overflow else { return };
                let row = Settings::read(&o.tier.shared.load);
                let c = &mut cfg.overflow;
                match setting {
                    OverflowSetting::QueueTimeout => {
                        c.queue_timeout = Duration::from_millis(row.queue_timeout_ms);
                    }
                    OverflowSetting::Discipline => c.discipline = row.discipline,
                    OverflowSetting::CodelTarget => {
                        c.codel_target = Duration::from_nanos(row.codel_target_ns);
                    }
                    OverflowSetting::CodelInterval => {
                        c.codel_interval = Duration::from_nanos(row.codel_interval_ns);
                    }
                }
            }
            // The rules the forwarders' gates hold.
            Apply::Gate(rule) => {
                for (l, gate) in cfg.listeners.iter_mut().zip(&self.gates) {
                    let rules = gate.rules();
                    match rule {
                        GateRule::ProxyFrom => l.proxy_from.clone_from(&rules.upstream),
                        GateRule::Allow => l.allow.clone_from(&rules.allow),
                        GateRule::Deny => l.deny.clone_from(&rules.deny),
                        GateRule::RatePerSource => l.rate_per_source = rules.rate,
                        GateRule::BurstPerSource => l.burst_per_source = rules.burst,
                        GateRule::MaxConnsPerSource => l.max_conns_per_source = rules.max_conns,
                    }
                }
            }
            Apply::PoolBound => {
                for (pool, live) in cfg.pools.iter_mut().zip(&self.pools) {
                    pool.bound = live.load.bound();
                }
            }
            Apply::BackendWeight => {
                self.each_backend(cfg, |live, i, b| b.weight = live.health.weight(i));
            }
            Apply::BackendMaxConns => {
                self.each_backend(cfg, |live, i, b| b.max_conns = live.load.max_conns(i));
            }
            Apply::BackendState => self.each_backend(cfg, |live, i, b| {
                b.state = if live.health.drained(i) {
                    AdminState::Drain
                } else {
                    AdminState::Up
                };
            }),
        }
    }

    /// Calls `read` with each backend of `cfg`, its pool's live state and its index there.
    fn each_backend(&self, cfg: &mut Config, read: impl Fn(&Pool, usize, &mut BackendConfig)) {
        for (pool, live) in cfg.pools.iter_mut().zip(&self.pools) {
            for (i, b) in pool.backends.iter_mut().enumerate() {
                read(live, i, b);
            }
        }
    }

    /// Pushes the new value of `key` (already in `cfg`) to the engine part its registry entry
    /// names: what the forwarders and the health monitor read.
    fn apply(&self, cfg: &Config, key: &str) -> Result<(), String> {
        let Lookup::Found { spec, names } = registry::lookup(key) else {
            return Err(format!("{key}: unknown key"));
        };
        let Some(apply) = spec.runtime else {
            return Err(format!(
                "{key}: cannot be applied to the running engine; restart"
            ));
        };
        // The `NAME` segments of the key: a listener, a pool, or a pool and a backend.
        let name = |i: usize| {
            names
                .get(i)
                .copied()
                .ok_or_else(|| format!("{key}: registry entry {} is malformed", spec.name))
        };
        // The indices of `pool.P` and `pool.P.backend.B` in `cfg`, which `set_runtime` found.
        let pool = || {
            let name = name(0)?;
            cfg.pools
                .iter()
                .position(|p| p.name == name)
                .ok_or_else(|| format!("{key}: no pool named `{name}`"))
        };
        let backend = || {
            let p = pool()?;
            let b = name(1)?;
            let b = cfg.pools[p]
                .backends
                .iter()
                .position(|x| x.name == b)
                .ok_or_else(|| format!("{key}: no backend named `{b}`"))?;
            Ok::<_, String>((p, b, &cfg.pools[p].backends[b]))
        };
        let e = &cfg.engine;
        match apply {
            Apply::ConnectTimeout => self.tunables.set_connect_timeout(e.connect_timeout),
            Apply::ConnectRetries => self.tunables.set_connect_retries(e.connect_retries),
            Apply::IdleTimeout => self.tunables.set_idle_timeout(e.idle_timeout),
            Apply::SchedPolicy => match &self.threads {
                Some(threads) => threads
                    .set_sched_policy(e.sched_policy)
                    .map_err(|err| format!("{key}: {err}"))?,
                None => return Err(format!("{key}: this process runs no forwarder threads")),
            },
            Apply::LogLevel => (self.set_log_level)(cfg.log.level),
            Apply::OverflowWorkers => {
                if cfg.overflow.workers > cfg.overflow.max_workers {
                    return Err(format!(
                        "{key}: {} workers, but overflow.max_workers allows {}; it changes only \
                         with a restart",
                        cfg.overflow.workers, cfg.overflow.max_workers
                    ));
                }
                match self.overflow.as_ref().and_then(|o| o.workers.as_ref()) {
                    Some(target) => target.set(cfg.overflow.workers),
                    None => {
                        return Err(format!(
                            "{key}: this levee supervises no workers (no pool queues, or its \
                         binary could not be found); start workers with levee worker"
                        ));
                    }
                }
            }
            // The row holds every setting: storing it stores the one that changed.
            Apply::OverflowSettings(_) => match &self.overflow {
                Some(o) => Settings::store(&o.tier.shared.load, &cfg.overflow),
                None => {
                    return Err(format!(
                        "{key}: no pool queues (every pool's overflow is reject)"
                    ));
                }
            },
            // The gate takes its rules whole: setting them sets the one that changed.
            Apply::Gate(_) => {
                let l = name(0)?;
                let i = cfg
                    .listeners
                    .iter()
                    .position(|x| x.name == l)
                    .ok_or_else(|| format!("{key}: no listener named `{l}`"))?;
                let gate = self.gates.get(i).ok_or_else(|| {
                    format!("{key}: this process has no listeners to apply it to")
                })?;
                gate.set(crate::forward::gate::Rules::of(&cfg.listeners[i]));
            }
            Apply::PoolBound => {
                let p = pool()?;
                self.pools[p].load.set_bound(cfg.pools[p].bound);
                // A bound may make the pool able to overflow: the supervisor starts workers.
                self.wake_supervisor();
            }
            Apply::BackendWeight => {
                let (p, b, cfg) = backend()?;
                self.pools[p].health.set_weight(b, cfg.weight);
            }
            Apply::BackendMaxConns => {
                let (p, b, cfg) = backend()?;
                self.pools[p].load.set_max_conns(b, cfg.max_conns);
                self.wake_supervisor();
            }
            Apply::BackendState => {
                let (p, b, cfg) = backend()?;
                self.pools[p]
                    .health
                    .set_drain(b, cfg.state == AdminState::Drain);
            }
        }
        Ok(())
    }

    /// Has the overflow supervisor look at once (it may be asleep for up to a second): a cap or
    /// a bound may have made a pool able to overflow. Through the target's eventfd, which it
    /// polls whether it dozes or not, so a change made while it is between looks is not lost.
    fn wake_supervisor(&self) {
        if let Some(target) = self.overflow.as_ref().and_then(|o| o.workers.as_ref()) {
            target.wake();
        }
    }

    /// The live counters as `stats.*` keys.
    pub fn stats(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for stat in self.stat_list() {
            stat.ctl_entries(&mut out);
        }
        out
    }

    /// Every live statistic, typed: what `ctl` shows as `stats.*` and `/metrics` renders.
    /// Takes no lock a forwarder waits on: counters are atomics, and the histograms' locks are
    /// ones forwarders only `try_lock`.
    pub fn stat_list(&self) -> Vec<Stat> {
        let t = Totals::sum(self.counters.iter().map(|c| &**c));
        let count = |key: &str, n: u64, family: &'static Family| {
            Stat::new(format!("stats.{key}"), Reading::Count(n), family)
        };
        let mut out = vec![
            Stat::ctl_only(
                "stats.pid".to_string(),
                Reading::Count(u64::from(std::process::id())),
            ),
            count("accepted", t.accepted, &catalog::ACCEPTED),
            count("active", t.active(), &catalog::ACTIVE),
            count("bytes_in", t.bytes_client_to_backend, &catalog::BYTES_IN),
            count("bytes_out", t.bytes_backend_to_client, &catalog::BYTES_OUT),
            count(
                "connect_attempts",
                t.connect_attempts,
                &catalog::CONNECT_ATTEMPTS,
            ),
            count(
                "connect_failures",
                t.connect_failures,
                &catalog::CONNECT_FAILURES,
            ),
            count(
                "connect_timeouts",
                t.connect_timeouts,
                &catalog::CONNECT_TIMEOUTS,
            ),
            count("accept_errors", t.accept_errors, &catalog::ACCEPT_ERRORS),
            // io_uring submissions the kernel refused (other than a full completion queue);
            // each is retried by its forwarder.
            count("ring_errors", t.ring_errors, &catalog::RING_ERRORS),
            // Relay directions that switched to splice (engine.splice_after).
            count("splices", t.splices, &catalog::SPLICES),
            // Times a forwarder had every connection slot taken: it pauses accepts, and after
            // a second of it refuses new clients until a slot frees.
            count("full_events", t.full_events, &catalog::FULL_EVENTS),
            // Forwarders with every slot taken right now (paused, or refusing).
            count("forwarders_full", t.full_now, &catalog::FORWARDERS_FULL),
        ];
        for r in CloseReason::ALL {
            out.push(
                count(
                    &format!("closed.{}", r.name()),
                    t.closed(r),
                    &catalog::CLOSED,
                )
                .label("reason", r.name()),
            );
        }
        let listeners: Vec<String> = self
            .config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .listeners
            .iter()
            .map(|l| l.name.clone())
            .collect();
        for (k, name) in listeners.iter().enumerate() {
            let accepted = self
                .counters
                .iter()
                .filter_map(|c| c.listener_accepted.get(k))
                .map(crate::stats::Counter::get)
                .sum();
            out.push(
                count(
                    &format!("listener.{name}.accepted"),
                    accepted,
                    &catalog::LISTENER_ACCEPTED,
                )
                .label("listener", name),
            );
        }
        if let Some(o) = &self.overflow {
            out.push(Stat::ctl_only(
                "stats.overflow.dir".to_string(),
                Reading::Text(o.tier.shared.dir.display().to_string()),
            ));
            // Workers serving now: each counts itself in the settings row.
            let workers = o.tier.shared.load.count(crate::pool::table::SETTINGS_ROW);
            out.push(count(
                "overflow.workers_attached",
                workers,
                &catalog::WORKERS_ATTACHED,
            ));
        }
        for (index, p) in self.pools.iter().enumerate() {
            self.queue_stats(index, p, &mut out);
            let histograms = p.histograms.snapshot().into_all();
            for (measure, d) in Measure::CONNECTION.into_iter().zip(histograms) {
                out.push(
                    Stat::new(
                        format!("stats.pool.{}.{}", p.name, measure.key()),
                        Reading::Distribution(d),
                        catalog::connection_family(measure),
                    )
                    .label("pool", &p.name),
                );
            }
        }
        for p in &self.pools {
            for (i, name) in p.names.iter().enumerate() {
                let stat = |what: &str, reading: Reading, family: &'static Family| {
                    Stat::new(
                        format!("stats.pool.{}.backend.{name}.{what}", p.name),
                        reading,
                        family,
                    )
                    .label("pool", &p.name)
                    .label("backend", name)
                };
                let n = |what: &str, v: u64, family: &'static Family| {
                    stat(what, Reading::Count(v), family)
                };
                let h = p.health.counts(i);
                out.push(stat(
                    "status",
                    Reading::Text(p.health.status(i).name().to_string()),
                    &catalog::BACKEND_STATUS,
                ));
                out.push(n(
                    "active",
                    u64::from(p.load.active(i)),
                    &catalog::BACKEND_ACTIVE,
                ));
                out.push(n(
                    "effective_weight",
                    u64::from(p.load.weight(i)),
                    &catalog::BACKEND_WEIGHT,
                ));
                for (what, v) in [
                    ("passed", h.checks_passed),
                    ("failed", h.checks_failed),
                    ("skipped", h.checks_skipped),
                ] {
                    out.push(
                        n(&format!("checks_{what}"), v, &catalog::BACKEND_CHECKS)
                            .label("result", what),
                    );
                }
                out.push(n("downs", h.downs, &catalog::BACKEND_DOWNS));
                out.push(n("ups", h.ups, &catalog::BACKEND_UPS));
                out.push(n("ejections", h.ejections, &catalog::BACKEND_EJECTIONS));
                out.push(n(
                    "ejections_held_back",
                    h.ejections_held_back,
                    &catalog::BACKEND_EJECTIONS_HELD_BACK,
                ));
            }
        }
        if let Some(r) = &self.reload {
            let failures = r.failures.load(std::sync::atomic::Ordering::Acquire);
            out.push(count(
                "reload.failures",
                failures,
                &catalog::RELOAD_FAILURES,
            ));
            let last = r.last_error.lock().unwrap_or_else(PoisonError::into_inner);
            // One line: the protocol is line-based, and errors come one per line.
            out.push(Stat::ctl_only(
                "stats.reload.last_error".to_string(),
                Reading::Text(last.replace('\n', "; ")),
            ));
        }
        out
    }

    /// `stats.pool.P.queue.*`: the pool's queue now and since start.
    fn queue_stats(&self, index: usize, p: &Pool, out: &mut Vec<Stat>) {
        let Some(o) = &self.overflow else { return };
        let Some(queue) = o.tier.shared.queues.get(index).and_then(Option::as_ref) else {
            return;
        };
        let key = |what: &str| format!("stats.pool.{}.queue.{what}", p.name);
        let stat = |what: &str, reading: Reading, family: &'static Family| {
            Stat::new(key(what), reading, family).label("pool", &p.name)
        };
        let n = |what: &str, v: u64, family: &'static Family| stat(what, Reading::Count(v), family);
        let ring = queue.stats();
        let holding = o.tier.shared.load.count(p.load.rows().queue());
        let waiting = ring.depth as u64 + holding;
        let q = &p.queue;
        out.push(n("depth", waiting, &catalog::QUEUE_DEPTH));
        out.push(n("held_by_workers", holding, &catalog::QUEUE_HELD));
        let oldest = q.oldest().map_or(0, |since| {
            crate::forward::coarse_now_ms().saturating_sub(since)
        });
        out.push(n("oldest_wait_ms", oldest, &catalog::QUEUE_OLDEST_WAIT));
        let rate = q.drain_rate();
        out.push(stat(
            "drain_rate",
            Reading::Decimal(rate),
            &catalog::QUEUE_DRAIN_RATE,
        ));
        let predicted = if rate > 0.0 {
            (waiting as f64 / rate * 1000.0).round() as u64
        } else {
            0
        };
        out.push(n(
            "predicted_wait_ms",
            predicted,
            &catalog::QUEUE_PREDICTED_WAIT,
        ));
        out.push(n("queued", q.queued(), &catalog::QUEUED));
        for how in Left::ALL {
            out.push(n(how.name(), q.left(how), &catalog::QUEUE_LEFT).label("how", how.name()));
        }
        for why in Refused::ALL {
            out.push(
                n(
                    &format!("refused.{}", why.name()),
                    q.refused(why),
                    &catalog::QUEUE_REFUSED,
                )
                .label("why", why.name()),
            );
        }
        out.push(n("requeued", ring.requeued, &catalog::QUEUE_REQUEUED));
        out.push(n(
            "dead_letters",
            ring.dead_letters as u64,
            &catalog::QUEUE_DEAD_LETTERS,
        ));
        // The histogram itself is exported once, below; these are its quantiles in ms.
        let waits = q.waits();
        for (name, quantile) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
            let ms = waits.quantile(quantile) as f64 / 1000.0;
            out.push(Stat::ctl_only(
                key(&format!("wait_{name}_ms")),
                Reading::Decimal(ms),
            ));
        }
        out.push(Stat::ctl_only(
            key("wait_max_ms"),
            Reading::Decimal(waits.max() as f64 / 1000.0),
        ));
        out.push(
            Stat::new(
                format!("stats.pool.{}.{}", p.name, Measure::QueueWait.key()),
                Reading::Distribution(waits),
                &catalog::QUEUE_WAIT,
            )
            .label("pool", &p.name),
        );
    }
}
