//! A pool's queue as levee counts it: how many connections were queued and how each left, how
//! long they waited, how fast the queue drains. Forwarders count what happens to the
//! connections they park; `levee run`'s supervisor measures the drain rate; `levee ctl` reads it
//! all. The queue itself (the ring of tickets) is the overflow tier's.
//!
//! While nothing is queued anywhere the supervisor sleeps long; the first connection queued
//! then wakes it through an eventfd (see [`QueueStats::doze`]).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::eventfd::EventFd;
use crate::stats::histogram::{Distribution, Measure};

/// How one queued connection left the queue; each is counted once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Left {
    /// A worker took it over.
    Served,
    /// It waited `overflow.queue_timeout`.
    Expired,
    /// The client closed while it waited.
    Abandoned,
    /// CoDel shed it.
    Shed,
    /// Workers died holding its ticket `overflow.max_attempts` times.
    DeadLettered,
    /// levee stopped before a worker took it.
    Stopped,
    /// levee handed it to the levee that took over from it (a reload or an upgrade).
    Moved,
}

impl Left {
    pub const ALL: [Left; 7] = [
        Self::Served,
        Self::Expired,
        Self::Abandoned,
        Self::Shed,
        Self::DeadLettered,
        Self::Stopped,
        Self::Moved,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Served => "served",
            Self::Expired => "expired",
            Self::Abandoned => "abandoned",
            Self::Shed => "shed",
            Self::DeadLettered => "dead_lettered",
            Self::Stopped => "stopped",
            Self::Moved => "moved",
        }
    }
}

/// Why a connection that found no room was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Refused {
    /// The queue held `overflow.max_queue` connections.
    Full,
    /// Its predicted wait (depth ÷ drain rate) was past `overflow.queue_timeout`.
    Predicted,
    /// The pool's overflow is `reject`.
    Rejected,
}

impl Refused {
    pub const ALL: [Refused; 3] = [Self::Full, Self::Predicted, Self::Rejected];

    pub fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Predicted => "predicted_wait",
            Self::Rejected => "rejected",
        }
    }
}

/// One pool's queue counters.
#[derive(Debug)]
pub struct QueueStats {
    queued: AtomicU64,
    left: [AtomicU64; Left::ALL.len()],
    refused: [AtomicU64; Refused::ALL.len()],
    /// Connections served per second over the last two seconds the queue was busy, × 1000;
    /// 0 while it is idle, or busy for less than half a second.
    drain_rate_milli: AtomicU64,
    /// Per forwarder: when its oldest queued connection of this pool arrived (coarse
    /// monotonic ms), or 0 when it has none.
    oldest_ms: Box<[AtomicU64]>,
    wait_us: Mutex<Distribution>,
    /// The supervisor sleeps long and wants waking by the next connection queued.
    dozing: AtomicBool,
    /// Signalled to wake it. `None` (no eventfd could be made): it never dozes.
    wake: Option<EventFd>,
}

impl QueueStats {
    pub fn new(forwarders: usize) -> Self {
        Self {
            queued: AtomicU64::new(0),
            left: std::array::from_fn(|_| AtomicU64::new(0)),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            drain_rate_milli: AtomicU64::new(0),
            oldest_ms: (0..forwarders).map(|_| AtomicU64::new(0)).collect(),
            wait_us: Mutex::new(new_wait_histogram()),
            dozing: AtomicBool::new(false),
            wake: EventFd::new().ok(),
        }
    }

    pub fn count_queued(&self) {
        // SeqCst, as the load of `dozing` after it and the supervisor's store of `dozing` then
        // load of `queued` in `doze`: of the two, at least one sees the other's write, so a
        // connection queued as the supervisor dozes off either stops it or wakes it.
        self.queued.fetch_add(1, Ordering::SeqCst);
        // One eventfd write per doze, whichever forwarder comes first.
        if self.dozing.load(Ordering::SeqCst)
            && self.dozing.swap(false, Ordering::SeqCst)
            && let Some(w) = &self.wake
        {
            w.signal();
        }
    }

    /// The supervisor's side, before a long sleep: `true` if it may doze, that is no
    /// connection was queued since it read `queued() == seen` (before it last looked at the
    /// queue); from now on the next one wakes it through [`Self::wake_fd`].
    pub fn doze(&self, seen: u64) -> bool {
        if self.wake.is_none() {
            return false;
        }
        self.dozing.store(true, Ordering::SeqCst);
        if self.queued.load(Ordering::SeqCst) == seen {
            return true;
        }
        self.dozing.store(false, Ordering::SeqCst);
        false
    }

    /// The descriptor a dozing supervisor polls.
    pub fn wake_fd(&self) -> Option<RawFd> {
        self.wake.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The supervisor is awake again: no more wake-ups until it dozes anew.
    pub fn woken(&self) {
        self.dozing.store(false, Ordering::SeqCst);
        if let Some(w) = &self.wake {
            w.clear();
        }
    }

    pub fn count_left(&self, how: Left) {
        self.left[how as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_refused(&self, why: Refused) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn queued(&self) -> u64 {
        // SeqCst: the supervisor's `seen` for `doze`.
        self.queued.load(Ordering::SeqCst)
    }

    pub fn left(&self, how: Left) -> u64 {
        self.left[how as usize].load(Ordering::Relaxed)
    }

    pub fn refused(&self, why: Refused) -> u64 {
        self.refused[why as usize].load(Ordering::Relaxed)
    }

    /// Records one served connection's wait. Never blocks: while a reader holds the histogram,
    /// the wait goes into the forwarder's own `pending` one, merged at its next record.
    pub fn record_wait(&self, pending: &mut Distribution, wait_us: u64) {
        match self.wait_us.try_lock() {
            Ok(mut h) => {
                if !pending.is_empty() {
                    h.merge(pending);
                    pending.clear();
                }
                h.record(wait_us.max(1));
            }
            Err(_) => pending.record(wait_us.max(1)),
        }
    }

    /// A copy of the wait histogram, for readers.
    pub fn waits(&self) -> Distribution {
        self.wait_us
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_drain_rate(&self, per_second: f64) {
        let milli = (per_second.max(0.0) * 1000.0).round() as u64;
        self.drain_rate_milli.store(milli, Ordering::Relaxed);
    }

    /// Connections served per second, recently.
    pub fn drain_rate(&self) -> f64 {
        self.drain_rate_milli.load(Ordering::Relaxed) as f64 / 1000.0
    }

    pub fn set_oldest(&self, forwarder: usize, since_ms: u64) {
        if let Some(w) = self.oldest_ms.get(forwarder) {
            w.store(since_ms, Ordering::Relaxed);
        }
    }

    /// When the oldest connection still queued at a forwarder arrived (coarse monotonic ms).
    pub fn oldest(&self) -> Option<u64> {
        self.oldest_ms
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .filter(|&t| t != 0)
            .min()
    }
}

/// An empty histogram of waits in microseconds, 1 µs to an hour, two significant digits.
pub fn new_wait_histogram() -> Distribution {
    Distribution::new(Measure::QueueWait)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the supervisor's wake-up descriptor is readable now.
    fn readable(q: &QueueStats) -> bool {
        let mut fd = libc::pollfd {
            fd: q.wake_fd().expect("an eventfd"),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a zero timeout never blocks.
        unsafe { libc::poll(&raw mut fd, 1, 0) == 1 }
    }

    #[test]
    fn the_first_connection_queued_wakes_a_dozing_supervisor_once() {
        let q = QueueStats::new(1);
        let seen = q.queued();
        q.count_queued();
        assert!(
            !q.doze(seen),
            "one was queued since it looked: it must look again"
        );
        assert!(!readable(&q), "an awake supervisor is not signalled");
        let seen = q.queued();
        assert!(q.doze(seen));
        assert!(!readable(&q));
        q.count_queued();
        assert!(readable(&q), "the first one queued wakes it");
        q.woken();
        assert!(!readable(&q), "cleared once awake");
        q.count_queued();
        assert!(!readable(&q), "no more wake-ups until it dozes again");
        assert!(q.doze(q.queued()));
        q.count_queued();
        assert!(
            readable(&q),
            "dozing again, the next one queued wakes it again"
        );
    }

    #[test]
    fn waits_recorded_while_a_reader_holds_the_histogram_are_not_lost() {
        let q = QueueStats::new(2);
        let mut pending = new_wait_histogram();
        q.record_wait(&mut pending, 1_000);
        {
            let _reader = q.wait_us.lock().expect("not poisoned");
            q.record_wait(&mut pending, 2_000);
            assert_eq!(pending.count(), 1);
        }
        q.record_wait(&mut pending, 3_000);
        assert!(pending.is_empty());
        let h = q.waits();
        assert_eq!(h.count(), 3);
        assert_eq!(h.sum(), 6_000);
        assert!(h.max() >= 2_990);
    }

    #[test]
    fn the_oldest_wait_is_the_minimum_over_forwarders() {
        let q = QueueStats::new(3);
        assert_eq!(q.oldest(), None);
        q.set_oldest(0, 500);
        q.set_oldest(2, 300);
        assert_eq!(q.oldest(), Some(300));
        q.set_oldest(2, 0);
        assert_eq!(q.oldest(), Some(500));
        q.set_oldest(9, 1); // no such forwarder: ignored
        assert_eq!(q.oldest(), Some(500));
    }
}
