//! The effective configuration of a running levee and the live objects its runtime keys drive.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::config::registry::{self, Lookup};
use crate::config::{AdminState, Config, LogLevel, listing_entries};
use crate::forward::Tunables;
use crate::overflow::Settings;
use crate::overflow::supervisor::{Tier, WorkerTarget};
use crate::pool::{Left, Pool, Refused};
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
}

/// The overflow tier as `ctl` reads and changes it.
pub struct Overflow {
    pub tier: Arc<Tier>,
    /// The supervisor's worker count, when workers are supervised.
    pub workers: Option<Arc<WorkerTarget>>,
}

impl Live {
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
    /// engine shows as the old value. The two keys the engine cannot report back keep the
    /// value last applied: `engine.sched_policy` (a property of the forwarder threads, seen in
    /// /proc) and `log.level` (inside the log filter).
    fn in_effect(&self) -> Config {
        let mut cfg = self.config().clone();
        let t = &self.tunables;
        cfg.engine.connect_timeout = Duration::from_millis(t.connect_timeout_ms());
        cfg.engine.connect_retries = u32::try_from(t.connect_tries() - 1).unwrap_or(u32::MAX);
        cfg.engine.idle_timeout = Duration::from_millis(t.idle_timeout_ms());
        if let Some(o) = &self.overflow {
            let settings = Settings::read(&o.tier.shared.load);
            cfg.overflow.queue_timeout = Duration::from_millis(settings.queue_timeout_ms);
            cfg.overflow.discipline = settings.discipline;
            cfg.overflow.codel_target = Duration::from_nanos(settings.codel_target_ns);
            cfg.overflow.codel_interval = Duration::from_nanos(settings.codel_interval_ns);
            if let Some(target) = &o.workers {
                cfg.overflow.workers = target.get();
            }
        }
        for (pool, live) in cfg.pools.iter_mut().zip(&self.pools) {
            pool.bound = live.load.bound();
            for (i, b) in pool.backends.iter_mut().enumerate() {
                b.weight = live.health.weight(i);
                b.max_conns = live.load.max_conns(i);
                b.state = if live.health.drained(i) {
                    AdminState::Drain
                } else {
                    AdminState::Up
                };
            }
        }
        cfg
    }

    /// Pushes the new value of `key` (already in `cfg`) to what the forwarders and the health
    /// monitor read.
    fn apply(&self, cfg: &Config, key: &str) -> Result<(), String> {
        let Lookup::Found { spec, names } = registry::lookup(key) else {
            return Err(format!("{key}: unknown key"));
        };
        // The indices of `pool.P` and `pool.P.backend.B` in `cfg`, which `set_runtime` found.
        let pool = |name: &str| {
            cfg.pools
                .iter()
                .position(|p| p.name == name)
                .ok_or_else(|| format!("{key}: no pool named `{name}`"))
        };
        let backend = |p: &str, b: &str| {
            let p = pool(p)?;
            let b = cfg.pools[p]
                .backends
                .iter()
                .position(|x| x.name == b)
                .ok_or_else(|| format!("{key}: no backend named `{b}`"))?;
            Ok::<_, String>((p, b, &cfg.pools[p].backends[b]))
        };
        let e = &cfg.engine;
        match (spec.name, names.as_slice()) {
            ("engine.connect_timeout", []) => self.tunables.set_connect_timeout(e.connect_timeout),
            ("engine.connect_retries", []) => self.tunables.set_connect_retries(e.connect_retries),
            ("engine.idle_timeout", []) => self.tunables.set_idle_timeout(e.idle_timeout),
            ("engine.sched_policy", []) => self
                .tunables
                .set_sched_policy(e.sched_policy)
                .map_err(|err| format!("{key}: {err}"))?,
            ("log.level", []) => (self.set_log_level)(cfg.log.level),
            ("overflow.workers", []) if cfg.overflow.workers > cfg.overflow.max_workers => {
                return Err(format!(
                    "{key}: {} workers, but overflow.max_workers allows {}; it changes only \
                     with a restart",
                    cfg.overflow.workers, cfg.overflow.max_workers
                ));
            }
            ("overflow.workers", []) => {
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
            (
                "overflow.queue_timeout"
                | "overflow.discipline"
                | "overflow.codel_target"
                | "overflow.codel_interval",
                [],
            ) => match &self.overflow {
                Some(o) => Settings::store(&o.tier.shared.load, &cfg.overflow),
                None => {
                    return Err(format!(
                        "{key}: no pool queues (every pool's overflow is reject)"
                    ));
                }
            },
            ("pool.NAME.bound", [p]) => {
                let p = pool(p)?;
                self.pools[p].load.set_bound(cfg.pools[p].bound);
            }
            ("pool.NAME.backend.NAME.weight", [p, b]) => {
                let (p, b, cfg) = backend(p, b)?;
                self.pools[p].health.set_weight(b, cfg.weight);
            }
            ("pool.NAME.backend.NAME.max_conns", [p, b]) => {
                let (p, b, cfg) = backend(p, b)?;
                self.pools[p].load.set_max_conns(b, cfg.max_conns);
            }
            ("pool.NAME.backend.NAME.state", [p, b]) => {
                let (p, b, cfg) = backend(p, b)?;
                self.pools[p]
                    .health
                    .set_drain(b, cfg.state == AdminState::Drain);
            }
            // A key marked runtime in the registry without a way to apply it here would be a
            // silent lie; the registry's tests keep this list and the marks in step.
            _ => {
                return Err(format!(
                    "{key}: cannot be applied to the running engine; restart"
                ));
            }
        }
        Ok(())
    }

    /// The live counters as `stats.*` keys.
    pub fn stats(&self) -> Vec<(String, String)> {
        let t = Totals::sum(self.counters.iter().map(|c| &**c));
        let mut out = vec![
            ("stats.accepted".to_string(), t.accepted.to_string()),
            ("stats.active".to_string(), t.active().to_string()),
            (
                "stats.bytes_in".to_string(),
                t.bytes_client_to_backend.to_string(),
            ),
            (
                "stats.bytes_out".to_string(),
                t.bytes_backend_to_client.to_string(),
            ),
            (
                "stats.connect_attempts".to_string(),
                t.connect_attempts.to_string(),
            ),
            (
                "stats.connect_failures".to_string(),
                t.connect_failures.to_string(),
            ),
            (
                "stats.connect_timeouts".to_string(),
                t.connect_timeouts.to_string(),
            ),
            (
                "stats.accept_errors".to_string(),
                t.accept_errors.to_string(),
            ),
            // io_uring submissions the kernel refused (other than a full completion queue);
            // each is retried by its forwarder.
            ("stats.ring_errors".to_string(), t.ring_errors.to_string()),
            // Times a forwarder had every connection slot taken: it pauses accepts, and after
            // a second of it refuses new clients until a slot frees.
            ("stats.full_events".to_string(), t.full_events.to_string()),
            // Forwarders with every slot taken right now (paused, or refusing).
            ("stats.forwarders_full".to_string(), t.full_now.to_string()),
        ];
        for r in CloseReason::ALL {
            out.push((
                format!("stats.closed.{}", r.name()),
                t.closed(r).to_string(),
            ));
        }
        if let Some(o) = &self.overflow {
            out.push((
                "stats.overflow.dir".to_string(),
                o.tier.shared.dir.display().to_string(),
            ));
            // Workers serving now: each counts itself in the settings row.
            let workers = o.tier.shared.load.count(crate::pool::table::SETTINGS_ROW);
            out.push((
                "stats.overflow.workers_attached".to_string(),
                workers.to_string(),
            ));
        }
        for (index, p) in self.pools.iter().enumerate() {
            self.queue_stats(index, p, &mut out);
        }
        for p in &self.pools {
            for (i, name) in p.names.iter().enumerate() {
                let key = |what: &str| format!("stats.pool.{}.backend.{name}.{what}", p.name);
                let h = p.health.counts(i);
                out.push((key("status"), p.health.status(i).name().to_string()));
                out.push((key("active"), p.load.active(i).to_string()));
                out.push((key("effective_weight"), p.load.weight(i).to_string()));
                out.push((key("checks_passed"), h.checks_passed.to_string()));
                out.push((key("checks_failed"), h.checks_failed.to_string()));
                out.push((key("checks_skipped"), h.checks_skipped.to_string()));
                out.push((key("downs"), h.downs.to_string()));
                out.push((key("ups"), h.ups.to_string()));
                out.push((key("ejections"), h.ejections.to_string()));
                out.push((
                    key("ejections_held_back"),
                    h.ejections_held_back.to_string(),
                ));
            }
        }
        out
    }

    /// `stats.pool.P.queue.*`: the pool's queue now and since start.
    fn queue_stats(&self, index: usize, p: &Pool, out: &mut Vec<(String, String)>) {
        let Some(o) = &self.overflow else { return };
        let Some(queue) = o.tier.shared.queues.get(index).and_then(Option::as_ref) else {
            return;
        };
        let key = |what: &str| format!("stats.pool.{}.queue.{what}", p.name);
        let ring = queue.stats();
        let holding = o.tier.shared.load.count(p.load.rows().queue());
        let waiting = ring.depth as u64 + holding;
        let q = &p.queue;
        out.push((key("depth"), waiting.to_string()));
        out.push((key("held_by_workers"), holding.to_string()));
        let oldest = q.oldest().map_or(0, |since| {
            crate::forward::coarse_now_ms().saturating_sub(since)
        });
        out.push((key("oldest_wait_ms"), oldest.to_string()));
        let rate = q.drain_rate();
        out.push((key("drain_rate"), format!("{rate:.1}")));
        let predicted = if rate > 0.0 {
            (waiting as f64 / rate * 1000.0).round() as u64
        } else {
            0
        };
        out.push((key("predicted_wait_ms"), predicted.to_string()));
        out.push((key("queued"), q.queued().to_string()));
        for how in Left::ALL {
            out.push((key(how.name()), q.left(how).to_string()));
        }
        for why in Refused::ALL {
            out.push((
                key(&format!("refused.{}", why.name())),
                q.refused(why).to_string(),
            ));
        }
        out.push((key("requeued"), ring.requeued.to_string()));
        out.push((key("dead_letters"), ring.dead_letters.to_string()));
        let waits = q.waits();
        for (name, quantile) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
            let ms = waits.quantile(quantile) as f64 / 1000.0;
            out.push((key(&format!("wait_{name}_ms")), format!("{ms:.1}")));
        }
        out.push((
            key("wait_max_ms"),
            format!("{:.1}", waits.max() as f64 / 1000.0),
        ));
    }
}
