//! The forwarders: one per configured core, each a thread with its own io_uring and its own
//! SO_REUSEPORT socket per listener, sharing nothing on the data path but the pools' load
//! counters. What starts them, with the pools, the health monitor and the overflow tier around
//! them, is [`crate::engine`].

mod bufring;
mod conn;
mod footprint;
mod forwarder;
pub mod gate;
mod gather;
mod greeting;
mod intake;
mod listener;
mod moved;
mod parking;
mod sockopt;
mod splice;
mod token;
pub mod uring;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::balance::MAX_CANDIDATES;
use crate::config::EngineConfig;
pub use footprint::{Bytes, Footprint, host_memory};
pub(crate) use forwarder::coarse_now_ms;
pub(crate) use forwarder::{Forwarder, ListenerSetup, Setup};
pub use intake::{IntakeSetup, Takeover};
pub(crate) use listener::{ensure_free, open as open_listener};
pub(crate) use moved::Inbox;
pub use moved::{Mailbox, QueueSuccessor};
pub use parking::ParkingSetup;

/// Engine settings that may change while levee runs (`levee ctl -w`). Forwarders read them
/// with a relaxed load where they use them: per new connection, per tick. The scheduling policy
/// is applied to the forwarder threads from outside ([`crate::engine::Threads`]), so
/// forwarders never look at it.
#[derive(Debug)]
pub struct Tunables {
    connect_timeout_ms: AtomicU64,
    connect_retries: AtomicU32,
    idle_timeout_ms: AtomicU64,
}

impl Tunables {
    pub fn new(e: &EngineConfig) -> Self {
        let t = Self {
            connect_timeout_ms: AtomicU64::new(0),
            connect_retries: AtomicU32::new(0),
            idle_timeout_ms: AtomicU64::new(0),
        };
        t.set_connect_timeout(e.connect_timeout);
        t.set_connect_retries(e.connect_retries);
        t.set_idle_timeout(e.idle_timeout);
        t
    }

    pub fn set_connect_timeout(&self, d: Duration) {
        self.connect_timeout_ms
            .store(millis(d).max(1), Ordering::Relaxed);
    }

    pub fn set_connect_retries(&self, n: u32) {
        self.connect_retries.store(n, Ordering::Relaxed);
    }

    pub fn set_idle_timeout(&self, d: Duration) {
        self.idle_timeout_ms.store(millis(d), Ordering::Relaxed);
    }

    pub fn connect_timeout_ms(&self) -> u64 {
        self.connect_timeout_ms.load(Ordering::Relaxed)
    }

    /// Backends tried for one connection: the first plus the retries.
    pub fn connect_tries(&self) -> usize {
        (self.connect_retries.load(Ordering::Relaxed) as usize + 1).min(MAX_CANDIDATES)
    }

    pub fn idle_timeout_ms(&self) -> u64 {
        self.idle_timeout_ms.load(Ordering::Relaxed)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How the engine is asked to stop: first gracefully, then, if asked again, at once.
#[derive(Debug, Default)]
pub struct StopFlags {
    /// Stop accepting and drain.
    pub requested: AtomicBool,
    /// Cut the drain short: close what is still open.
    pub hurry: AtomicBool,
    /// The levee that took over from this one, set before the stop: where the clients still
    /// queued here go.
    pub successor: OnceLock<Arc<dyn QueueSuccessor>>,
}
