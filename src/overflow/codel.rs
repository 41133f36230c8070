//! CoDel for a connection queue, as folly's `Codel` does it for request queues (Nichols and
//! Jacobson, "Controlling Queue Delay", ACM Queue 2012; Maurer, "Fail at Scale", ACM Queue 2015).
//!
//! Each time a queued connection is about to be served, its queueing delay is fed in. Once per
//! `interval` the minimum delay seen over the interval is compared with `target`: above it, the
//! queue is *overloaded*, a standing queue rather than a burst passing through. While
//! overloaded, a connection that waited more than twice `target` is shed instead of served, so
//! the queue drains to fresh work rather than serving clients who have likely given up. Two
//! connections must pass in one interval before anything is shed.
//!
//! The state is three shared words, so every worker process of a pool feeds one CoDel: the
//! minimum delay, the end of the current interval, and two flags (overloaded, reset pending).
//! Updates race as folly's do: the flags' read-modify-writes make one caller start each interval.

use std::sync::atomic::{AtomicU64, Ordering};

const OVERLOADED: u64 = 1;
const RESET: u64 = 2;

/// A pool's CoDel state, in words that may live in shared memory.
pub struct Codel<'a> {
    pub min_delay_ns: &'a AtomicU64,
    pub interval_end_ns: &'a AtomicU64,
    pub flags: &'a AtomicU64,
}

impl Codel<'_> {
    /// Feeds the queueing delay of a connection about to be served at `now_ns`; `true`: shed it.
    pub fn shed(&self, now_ns: u64, delay_ns: u64, target_ns: u64, interval_ns: u64) -> bool {
        let min_delay = self.min_delay_ns.load(Ordering::Acquire);
        if now_ns > self.interval_end_ns.load(Ordering::Acquire)
            && self.flags.load(Ordering::Acquire) & RESET == 0
            && self.flags.fetch_or(RESET, Ordering::AcqRel) & RESET == 0
        {
            self.interval_end_ns
                .store(now_ns.saturating_add(interval_ns), Ordering::Release);
            if min_delay > target_ns {
                self.flags.fetch_or(OVERLOADED, Ordering::AcqRel);
            } else {
                self.flags.fetch_and(!OVERLOADED, Ordering::AcqRel);
            }
        }
        if self.flags.load(Ordering::Acquire) & RESET != 0
            && self.flags.fetch_and(!RESET, Ordering::AcqRel) & RESET != 0
        {
            // A new interval starts from this delay.
            self.min_delay_ns.store(delay_ns, Ordering::Release);
            return false;
        } else if delay_ns < min_delay {
            self.min_delay_ns.store(delay_ns, Ordering::Release);
        }
        self.overloaded() && delay_ns > target_ns.saturating_mul(2)
    }

    /// Whether the last interval ended with a standing queue.
    pub fn overloaded(&self) -> bool {
        self.flags.load(Ordering::Acquire) & OVERLOADED != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const TARGET: u64 = 5 * MS;
    const INTERVAL: u64 = 100 * MS;

    struct Words([AtomicU64; 3]);

    impl Words {
        fn new() -> Self {
            Self([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)])
        }
        fn codel(&self) -> Codel<'_> {
            Codel {
                min_delay_ns: &self.0[0],
                interval_end_ns: &self.0[1],
                flags: &self.0[2],
            }
        }
    }

    #[test]
    fn a_burst_that_passes_sheds_nothing() {
        let w = Words::new();
        let c = w.codel();
        // Long waits, but within each interval at least one connection went through fast.
        for i in 0..50u64 {
            let now = 1_000 * MS + i * 20 * MS;
            let delay = if i % 4 == 0 { MS } else { 40 * MS };
            assert!(!c.shed(now, delay, TARGET, INTERVAL), "step {i}");
        }
        assert!(!c.overloaded());
    }

    #[test]
    fn a_standing_queue_sheds_the_old_and_serves_the_young() {
        let w = Words::new();
        let c = w.codel();
        let mut now = 1_000 * MS;
        // Every connection waits 50 ms for two intervals: the queue stands.
        for _ in 0..20 {
            now += 10 * MS;
            c.shed(now, 50 * MS, TARGET, INTERVAL);
        }
        assert!(c.overloaded());
        now += MS;
        assert!(
            c.shed(now, 50 * MS, TARGET, INTERVAL),
            "older than 2 x target"
        );
        assert!(
            !c.shed(now, 8 * MS, TARGET, INTERVAL),
            "younger than 2 x target"
        );
    }

    #[test]
    fn overload_ends_once_an_interval_sees_a_short_wait() {
        let w = Words::new();
        let c = w.codel();
        let mut now = 1_000 * MS;
        for _ in 0..30 {
            now += 10 * MS;
            c.shed(now, 50 * MS, TARGET, INTERVAL);
        }
        assert!(c.overloaded());
        for _ in 0..30 {
            now += 10 * MS;
            c.shed(now, MS, TARGET, INTERVAL);
        }
        assert!(!c.overloaded());
        assert!(!c.shed(now + MS, 50 * MS, TARGET, INTERVAL));
    }
}
