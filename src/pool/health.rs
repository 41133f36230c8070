//! Backend health as the monitor decided it and as the operator asked for it: status, the
//! operator's weight and drain, and the history counters. Written by the health monitor
//! (status, counters) and by `levee ctl` (weight, drain); read by everyone. The streaks the
//! forwarders report live beside it in [`Signals`].

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

use super::signals::Signals;
use crate::config::AdminState;

/// Why a backend takes new connections or not, as the monitor last decided: what `ctl` shows,
/// and what the forwarders read from the pool's load table ([`PoolLoad::state`]).
///
/// [`PoolLoad::state`]: super::PoolLoad::state
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Up = 0,
    /// Up, with its weight still ramping (slow start).
    Ramping = 1,
    /// Failed `fall` consecutive active checks.
    Down = 2,
    /// Ejected for a cool-down after failures the forwarders saw.
    Ejected = 3,
    /// The operator drains it.
    Drain = 4,
}

impl Status {
    /// Every status's name, in the order of the values.
    pub const NAMES: [&'static str; 5] = ["up", "ramping", "down", "ejected", "drain"];

    /// The status's code in the pool's load table (`docs/overflow-protocol.md`): 0 up, 1 down,
    /// 2 drain, as before ramping and ejected had codes of their own, then 3 ramping, 4
    /// ejected. A reader that knows only the first three reads the new ones as drain, which
    /// takes no new connections.
    pub(crate) fn to_wire(self) -> u32 {
        match self {
            Self::Up => 0,
            Self::Down => 1,
            Self::Drain => 2,
            Self::Ramping => 3,
            Self::Ejected => 4,
        }
    }

    /// The status of a code in the load table; a code no status has (a peer's corruption)
    /// reads as drain.
    pub(crate) fn from_wire(code: u32) -> Self {
        match code {
            0 => Self::Up,
            1 => Self::Down,
            3 => Self::Ramping,
            4 => Self::Ejected,
            _ => Self::Drain,
        }
    }

    /// Whether it takes new connections: up, or ramping up.
    pub fn takes_new(self) -> bool {
        matches!(self, Self::Up | Self::Ramping)
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Up,
            1 => Self::Ramping,
            2 => Self::Down,
            3 => Self::Ejected,
            _ => Self::Drain,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Ramping => "ramping",
            Self::Down => "down",
            Self::Ejected => "ejected",
            Self::Drain => "drain",
        }
    }
}

/// A backend the operator says is up is up until the monitor decides otherwise.
impl From<AdminState> for Status {
    fn from(state: AdminState) -> Self {
        match state {
            AdminState::Up => Self::Up,
            AdminState::Drain => Self::Drain,
        }
    }
}

/// Counters of one backend's health history.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HealthCounts {
    pub checks_passed: u64,
    pub checks_failed: u64,
    /// Checks not made because levee was out of descriptors or memory: no verdict either way.
    pub checks_skipped: u64,
    /// Times it went down on failed checks.
    pub downs: u64,
    /// Times it came back up (after checks, an ejection, or a drain).
    pub ups: u64,
    pub ejections: u64,
    /// Ejections held back because `eject.max_percent` of the pool was already ejected.
    pub ejections_held_back: u64,
    /// Consecutive failed checks that took it down the last time (its `fall`).
    pub last_down_after: u64,
    /// Consecutive passed checks that brought it up the last time (its `rise`).
    pub last_up_after: u64,
}

/// One backend's entry; the monitor names the counter it bumps through [`PoolHealth::count`].
#[derive(Debug, Default)]
pub(crate) struct BackendHealth {
    /// The operator's drain, settable at runtime.
    pub(crate) drain: AtomicBool,
    /// The operator's weight, settable at runtime: what slow start ramps to.
    pub(crate) weight: AtomicU32,
    pub(crate) status: AtomicU8,
    pub(crate) checks_passed: AtomicU64,
    pub(crate) checks_failed: AtomicU64,
    pub(crate) checks_skipped: AtomicU64,
    pub(crate) downs: AtomicU64,
    pub(crate) ups: AtomicU64,
    pub(crate) ejections: AtomicU64,
    pub(crate) ejections_held_back: AtomicU64,
    pub(crate) last_down_after: AtomicU64,
    pub(crate) last_up_after: AtomicU64,
}

/// The health of one pool's backends, shared by the monitor, the forwarders and observers.
#[derive(Debug)]
pub struct PoolHealth {
    /// What forwarders report.
    pub signals: Signals,
    backends: Box<[BackendHealth]>,
}

impl PoolHealth {
    pub fn new(cfg: &crate::config::PoolConfig) -> Self {
        let backends: Box<[BackendHealth]> = cfg
            .backends
            .iter()
            .map(|b| {
                let h = BackendHealth::default();
                h.weight.store(b.weight, Ordering::Relaxed);
                let drain = b.state == crate::config::AdminState::Drain;
                h.drain.store(drain, Ordering::Relaxed);
                h.status.store(
                    if drain { Status::Drain } else { Status::Up } as u8,
                    Ordering::Relaxed,
                );
                h
            })
            .collect();
        Self {
            signals: Signals::new(cfg.backends.len()),
            backends,
        }
    }

    /// Drains backend `i` (no new connections) or ends its drain; the monitor, woken, applies
    /// it at once.
    pub fn set_drain(&self, i: usize, drain: bool) {
        self.backends[i].drain.store(drain, Ordering::Relaxed);
        self.signals.wake();
    }

    /// Sets backend `i`'s weight; the monitor, woken, applies it at once (ramped, if the
    /// backend is in slow start).
    pub fn set_weight(&self, i: usize, weight: u32) {
        self.backends[i].weight.store(weight, Ordering::Relaxed);
        self.signals.wake();
    }

    pub fn weight(&self, i: usize) -> u32 {
        self.backends[i].weight.load(Ordering::Relaxed)
    }

    pub fn drained(&self, i: usize) -> bool {
        self.backends[i].drain.load(Ordering::Relaxed)
    }

    pub fn status(&self, i: usize) -> Status {
        Status::from_u8(self.backends[i].status.load(Ordering::Relaxed))
    }

    pub fn counts(&self, i: usize) -> HealthCounts {
        let b = &self.backends[i];
        HealthCounts {
            checks_passed: b.checks_passed.load(Ordering::Relaxed),
            checks_failed: b.checks_failed.load(Ordering::Relaxed),
            checks_skipped: b.checks_skipped.load(Ordering::Relaxed),
            downs: b.downs.load(Ordering::Relaxed),
            ups: b.ups.load(Ordering::Relaxed),
            ejections: b.ejections.load(Ordering::Relaxed),
            ejections_held_back: b.ejections_held_back.load(Ordering::Relaxed),
            last_down_after: b.last_down_after.load(Ordering::Relaxed),
            last_up_after: b.last_up_after.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn set_status(&self, i: usize, status: Status) {
        self.backends[i]
            .status
            .store(status as u8, Ordering::Relaxed);
    }

    pub(crate) fn count(&self, i: usize, which: fn(&BackendHealth) -> &AtomicU64) {
        which(&self.backends[i]).fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record(&self, i: usize, which: fn(&BackendHealth) -> &AtomicU64, value: u32) {
        which(&self.backends[i]).store(u64::from(value), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operators_drain_or_weight_wakes_the_monitor() {
        use crate::config::{BackendConfig, PoolConfig};
        let addr = "127.0.0.1:9".parse().expect("an address");
        let cfg = PoolConfig::new("p", vec![BackendConfig::new("a", addr)]);
        let health = PoolHealth::new(&cfg);
        let fd = health.signals.wake_fd().expect("an eventfd");
        let signalled = || {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, a zero timeout.
            unsafe { libc::poll(&mut p, 1, 0) == 1 }
        };
        assert!(!signalled());
        health.set_drain(0, true);
        assert!(signalled() && health.drained(0));
        health.signals.woken();
        assert!(!signalled());
        health.set_weight(0, 7);
        assert!(signalled() && health.weight(0) == 7);
    }

    #[test]
    fn the_status_names_list_every_status_in_order() {
        for (v, name) in Status::NAMES.iter().enumerate() {
            assert_eq!(Status::from_u8(v as u8).name(), *name);
        }
    }
}
