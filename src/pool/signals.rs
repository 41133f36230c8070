//! What the forwarders tell the health monitor about each backend, without locks: streaks of
//! connect failures and of resets, each a single atomic the forwarder bumps or clears. A streak
//! that reaches the length the monitor watches for also wakes the monitor, through an eventfd,
//! so that the monitor need not wake on a short tick to look.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::eventfd::EventFd;

/// One backend's streaks, on a cache line of its own so forwarders reporting on neighbouring
/// backends do not contend.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Streaks {
    /// Connect failures since the last successful connect.
    connect_failures: AtomicU32,
    /// Resets (or socket errors) from the backend since the last connection that ended cleanly.
    resets: AtomicU32,
}

/// The streaks of every backend of one pool.
#[derive(Debug)]
pub struct Signals {
    backends: Box<[Streaks]>,
    /// Streak length at which a forwarder wakes the monitor (0: never), set by the monitor.
    watch_at: AtomicU32,
    /// Signalled when a streak reaches `watch_at`, or an operator changes a backend. `None`
    /// where no eventfd could be made: the monitor then looks on a short tick.
    wake: Option<EventFd>,
}

impl Signals {
    pub fn new(backends: usize) -> Self {
        Self {
            backends: (0..backends).map(|_| Streaks::default()).collect(),
            watch_at: AtomicU32::new(0),
            wake: EventFd::new().ok(),
        }
    }

    pub fn connect_failed(&self, i: usize) {
        let n = self.backends[i]
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
        self.reached(n.wrapping_add(1));
    }

    /// Wakes the monitor when a streak has just reached the length it watches for: once per
    /// streak, not once per failure.
    #[inline]
    fn reached(&self, streak: u32) {
        if streak == self.watch_at.load(Ordering::Relaxed) {
            self.wake();
        }
    }

    /// Wakes the monitor, if it sleeps on this pool's eventfd.
    pub fn wake(&self) {
        if let Some(w) = &self.wake {
            w.signal();
        }
    }

    /// The monitor's side: wake me when a streak reaches `at` (0: never).
    pub fn watch(&self, at: u32) {
        self.watch_at.store(at, Ordering::Relaxed);
    }

    /// The eventfd the monitor polls, and clears with [`Signals::woken`]; `None`: poll on a
    /// short tick instead.
    pub fn wake_fd(&self) -> Option<RawFd> {
        self.wake.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Clears the eventfd after the monitor woke on it.
    pub fn woken(&self) {
        if let Some(w) = &self.wake {
            w.clear();
        }
    }

    pub fn connected(&self, i: usize) {
        clear(&self.backends[i].connect_failures);
    }

    pub fn reset(&self, i: usize) {
        let n = self.backends[i].resets.fetch_add(1, Ordering::Relaxed);
        self.reached(n.wrapping_add(1));
    }

    pub fn finished_cleanly(&self, i: usize) {
        clear(&self.backends[i].resets);
    }

    /// The longer of the two streaks and what it counts, or `None` while both are below `at`.
    pub fn over(&self, i: usize, at: u32) -> Option<(u32, &'static str)> {
        let b = &self.backends[i];
        let failures = b.connect_failures.load(Ordering::Relaxed);
        let resets = b.resets.load(Ordering::Relaxed);
        if failures >= at && failures >= resets {
            Some((failures, "connect failures"))
        } else if resets >= at {
            Some((resets, "resets"))
        } else {
            None
        }
    }

    /// Starts both streaks afresh (after an ejection has acted on them).
    pub fn clear(&self, i: usize) {
        clear(&self.backends[i].connect_failures);
        clear(&self.backends[i].resets);
    }
}

/// Stores 0 only when needed: most connections succeed, and a load is cheaper than a store that
/// bounces the cache line between cores.
fn clear(counter: &AtomicU32) {
    if counter.load(Ordering::Relaxed) != 0 {
        counter.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the monitor's eventfd reads as signalled, without waiting.
    fn signalled(s: &Signals) -> bool {
        let mut fd = libc::pollfd {
            fd: s.wake_fd().expect("an eventfd"),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a zero timeout.
        let n = unsafe { libc::poll(&mut fd, 1, 0) };
        assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
        n == 1
    }

    #[test]
    fn a_streak_wakes_the_monitor_once_when_it_reaches_the_watched_length() {
        let s = Signals::new(2);
        s.connect_failed(0);
        assert!(!signalled(&s), "nothing is watched yet");
        s.connected(0);
        s.watch(3);
        s.connect_failed(0);
        s.connect_failed(0);
        assert!(!signalled(&s), "a streak of 2 of 3");
        s.connect_failed(0);
        assert!(signalled(&s), "a streak of 3 of 3");
        s.woken();
        assert!(!signalled(&s), "cleared");
        s.connect_failed(0);
        assert!(!signalled(&s), "a streak past the length wakes no more");
        for _ in 0..3 {
            s.reset(1);
        }
        assert!(signalled(&s), "resets count their own streak");
        s.woken();
        s.watch(0);
        for _ in 0..5 {
            s.reset(0);
        }
        assert!(!signalled(&s), "watching nothing wakes nothing");
    }

    #[test]
    fn streaks_count_until_a_success_clears_them() {
        let s = Signals::new(2);
        for _ in 0..4 {
            s.connect_failed(0);
        }
        assert_eq!(s.over(0, 5), None);
        s.connect_failed(0);
        assert_eq!(s.over(0, 5), Some((5, "connect failures")));
        s.connected(0);
        assert_eq!(s.over(0, 1), None);
        s.reset(1);
        s.reset(1);
        assert_eq!(s.over(1, 2), Some((2, "resets")));
        s.finished_cleanly(1);
        assert_eq!(s.over(1, 1), None);
        s.reset(1);
        s.clear(1);
        assert_eq!(s.over(1, 1), None);
    }
}
