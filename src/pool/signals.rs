//! What the forwarders tell the health monitor about each backend, without locks: streaks of
//! connect failures and of resets, each a single atomic the forwarder bumps or clears.

use std::sync::atomic::{AtomicU32, Ordering};

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
}

impl Signals {
    pub fn new(backends: usize) -> Self {
        Self {
            backends: (0..backends).map(|_| Streaks::default()).collect(),
        }
    }

    pub fn connect_failed(&self, i: usize) {
        self.backends[i]
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn connected(&self, i: usize) {
        clear(&self.backends[i].connect_failures);
    }

    pub fn reset(&self, i: usize) {
        self.backends[i].resets.fetch_add(1, Ordering::Relaxed);
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
