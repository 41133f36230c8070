//! The forwarders: one per configured core, each a thread with its own io_uring and its own
//! SO_REUSEPORT socket per listener, sharing nothing on the data path but the pools' load
//! counters. What starts them, with the pools, the health monitor and the overflow tier around
//! them, is [`crate::engine`].

mod bufring;
mod conn;
mod footprint;
mod forwarder;
pub mod gate;
mod greeting;
mod intake;
mod listener;
mod moved;
mod parking;
mod sockopt;
mod token;
pub mod uring;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crate::balance::MAX_CANDIDATES;
use crate::config::{EngineConfig, SchedPolicy};
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
/// is applied to the forwarder threads from outside, so forwarders never look at it.
#[derive(Debug)]
pub struct Tunables {
    connect_timeout_ms: AtomicU64,
    connect_retries: AtomicU32,
    idle_timeout_ms: AtomicU64,
    /// Kernel thread ids of the running forwarders, 0 for one not (or no longer) running;
    /// touched at a forwarder's start and end and by `levee ctl` only.
    forwarder_tids: Mutex<Vec<libc::pid_t>>,
}

impl Tunables {
    pub fn new(e: &EngineConfig) -> Self {
        let t = Self {
            connect_timeout_ms: AtomicU64::new(0),
            connect_retries: AtomicU32::new(0),
            idle_timeout_ms: AtomicU64::new(0),
            forwarder_tids: Mutex::new(Vec::new()),
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

    /// Gives every forwarder thread `policy`, or says which one refused.
    pub fn set_sched_policy(&self, policy: SchedPolicy) -> io::Result<()> {
        let tids = self
            .forwarder_tids
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (index, &tid) in tids.iter().enumerate() {
            // 0 would name the calling thread: skip forwarders that are not running.
            if tid == 0 {
                continue;
            }
            set_sched_policy(tid, policy)
                .map_err(|e| io::Error::new(e.kind(), format!("forwarder {index}: {e}")))?;
        }
        Ok(())
    }

    /// Records the calling thread as forwarder `index`, for [`Self::set_sched_policy`], until
    /// the returned guard is dropped: a thread id that ended may be given to another thread.
    pub(crate) fn register_forwarder(&self, index: usize) -> Registered<'_> {
        // SAFETY: gettid(2) has no preconditions.
        self.set_forwarder_tid(index, unsafe { libc::gettid() });
        Registered {
            tunables: self,
            index,
        }
    }

    fn set_forwarder_tid(&self, index: usize, tid: libc::pid_t) {
        let mut tids = self
            .forwarder_tids
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if tids.len() <= index {
            tids.resize(index + 1, 0);
        }
        tids[index] = tid;
    }
}

/// A forwarder thread's entry in [`Tunables`], cleared on drop.
pub(crate) struct Registered<'a> {
    tunables: &'a Tunables,
    index: usize,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.tunables.set_forwarder_tid(self.index, 0);
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

/// Gives thread `tid` (0: the calling thread) `policy`. A forwarder gathers every completion that
/// is ready in one turn of its loop, so under `batch` a wakeup waits for the task running on its
/// CPU (often the backend it relays to) to sleep or use up its slice, and one turn then handles
/// what arrived meanwhile; under `normal` each wakeup may preempt that task, and both pay for the
/// extra context switches.
pub(crate) fn set_sched_policy(tid: libc::pid_t, policy: SchedPolicy) -> io::Result<()> {
    let raw = match policy {
        SchedPolicy::Batch => libc::SCHED_BATCH,
        SchedPolicy::Normal => libc::SCHED_OTHER,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain system call on a thread id; `param` outlives the call.
    if unsafe { libc::sched_setscheduler(tid, raw, &param) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
