//! Distributions, per pool: how long connects to a backend take, how long connections last, how
//! many bytes each carries either way, and how long queued connections wait.
//!
//! Each is an HdrHistogram (G. Tene's High Dynamic Range Histogram, through the `hdrhistogram`
//! crate) with fixed bounds and two significant digits, so a quantile read from it is within 1%
//! of the value recorded; a value past the upper bound counts as the bound. Each also keeps the
//! exact sum of what it recorded, for the `_sum` of a Prometheus histogram.
//!
//! Hand-over between the forwarders that record and the readers (`levee ctl`, `/metrics`):
//!
//! - A forwarder records into its own [`Recorder`], one per pool, allocated at start: the hot
//!   path takes no lock and allocates nothing.
//! - At each of its ticks (at most a second apart) it merges what it recorded into the pool's
//!   [`PoolHistograms`] if `try_lock` gets them, and clears its own. When a reader or another
//!   forwarder holds them, it keeps its records for its next tick: a forwarder never waits.
//! - A reader locks the pool's histograms and copies them. What it reads is at most one tick
//!   old.
//!
//! Memory is fixed: per pool, one set per forwarder and one shared set
//! ([`ConnHistograms::BYTES`] each).

use std::sync::{Mutex, PoisonError, TryLockError};

use hdrhistogram::Histogram;

/// Significant decimal digits every histogram keeps.
const SIGFIG: u8 = 2;

/// What a histogram measures: its unit, its bounds, and the boundaries of its Prometheus
/// buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Microseconds from the moment a forwarder queues a connect to a backend to the moment it
    /// handles its successful completion; failed connects are not recorded.
    ConnectTime,
    /// Milliseconds from accept (or, in a worker, adoption) to close.
    Duration,
    /// Bytes relayed from the client to the backend over one connection.
    BytesIn,
    /// Bytes relayed from the backend to the client over one connection.
    BytesOut,
    /// Microseconds a queued connection waited before a worker took it over.
    QueueWait,
}

impl Measure {
    /// The measures of a connection, in the order `ctl` lists them.
    pub const CONNECTION: [Measure; 4] = [
        Self::ConnectTime,
        Self::Duration,
        Self::BytesIn,
        Self::BytesOut,
    ];

    /// Its part of the `stats.pool.NAME.*` keys, with the unit it is read in.
    pub fn key(self) -> &'static str {
        match self {
            Self::ConnectTime => "connect_time_us",
            Self::Duration => "duration_ms",
            Self::BytesIn => "bytes_in",
            Self::BytesOut => "bytes_out",
            Self::QueueWait => "queue.wait_us",
        }
    }

    /// The largest value told apart; larger ones count as this.
    pub fn highest(self) -> u64 {
        match self {
            // engine.connect_timeout is at most five minutes.
            Self::ConnectTime => 300 * 1_000_000,
            // Thirty days.
            Self::Duration => 30 * 24 * 3600 * 1000,
            // One TiB.
            Self::BytesIn | Self::BytesOut => 1 << 40,
            // One hour.
            Self::QueueWait => 3600 * 1_000_000,
        }
    }

    /// Recorded units in one base unit, the unit Prometheus names (seconds, bytes): a
    /// recorded value divided by this is in the base unit.
    pub fn per_base_unit(self) -> f64 {
        match self {
            Self::ConnectTime | Self::QueueWait => 1e6,
            Self::Duration => 1e3,
            Self::BytesIn | Self::BytesOut => 1.0,
        }
    }

    /// Upper bounds of the Prometheus buckets, in the recorded unit (`+Inf` follows).
    pub fn buckets(self) -> &'static [u64] {
        match self {
            // 100 µs to 10 s.
            Self::ConnectTime => &[
                100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
                500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
            ],
            // 10 ms to an hour.
            Self::Duration => &[
                10, 50, 100, 500, 1_000, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000,
            ],
            // 64 B to 1 GiB, powers of four.
            Self::BytesIn | Self::BytesOut => &[
                64,
                256,
                1 << 10,
                4 << 10,
                16 << 10,
                64 << 10,
                256 << 10,
                1 << 20,
                4 << 20,
                16 << 20,
                64 << 20,
                256 << 20,
                1 << 30,
            ],
            // 1 ms to a minute.
            Self::QueueWait => &[
                1_000, 5_000, 10_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
                5_000_000, 10_000_000, 30_000_000, 60_000_000,
            ],
        }
    }
}

/// A histogram of one [`Measure`] and the exact sum of what it recorded.
#[derive(Debug, Clone)]
pub struct Distribution {
    measure: Measure,
    histogram: Histogram<u64>,
    sum: u64,
}

impl Distribution {
    /// An empty one, allocated once: recording never allocates.
    pub fn new(measure: Measure) -> Self {
        let histogram =
            Histogram::new_with_bounds(1, measure.highest(), SIGFIG).unwrap_or_else(|_| {
                // Every measure's bounds are accepted (see the tests); this arm is never taken.
                Histogram::new(SIGFIG).unwrap_or_else(|_| unreachable!("2 digits are valid"))
            });
        Self {
            measure,
            histogram,
            sum: 0,
        }
    }

    pub fn measure(&self) -> Measure {
        self.measure
    }

    /// Records one value; past the upper bound it counts as the bound (the sum stays exact).
    #[inline]
    pub fn record(&mut self, value: u64) {
        self.histogram.saturating_record(value);
        self.sum = self.sum.saturating_add(value);
    }

    /// Adds everything `other` recorded, which must measure the same thing.
    pub fn merge(&mut self, other: &Self) {
        debug_assert_eq!(self.measure, other.measure);
        // Same bounds, so every value of `other` fits: `add` cannot fail.
        let _ = self.histogram.add(&other.histogram);
        self.sum = self.sum.saturating_add(other.sum);
    }

    /// Forgets everything recorded (the memory stays).
    pub fn clear(&mut self) {
        if !self.histogram.is_empty() {
            self.histogram.reset();
        }
        self.sum = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.histogram.is_empty()
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The exact sum of the values recorded.
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// The value at quantile `q` (0.0 to 1.0), 0 when nothing is recorded.
    pub fn quantile(&self, q: f64) -> u64 {
        self.histogram.value_at_quantile(q)
    }

    /// The largest value recorded (to the histogram's precision), 0 when nothing is.
    pub fn max(&self) -> u64 {
        self.histogram.max()
    }

    /// How many values were at most `bound`, to the histogram's precision: a value a little
    /// above `bound` (under 1% above) may count as below it.
    pub fn count_at_most(&self, bound: u64) -> u64 {
        if self.histogram.is_empty() {
            return 0;
        }
        self.histogram.count_between(0, bound)
    }

    /// Bytes of the counts one histogram of `measure` holds.
    pub fn bytes(measure: Measure) -> u64 {
        let h = Self::new(measure);
        (h.histogram.distinct_values() * std::mem::size_of::<u64>()) as u64
    }
}

/// One pool's connection histograms, one per [`Measure::CONNECTION`].
#[derive(Debug, Clone)]
pub struct ConnHistograms {
    pub connect_time: Distribution,
    pub duration: Distribution,
    pub bytes_in: Distribution,
    pub bytes_out: Distribution,
}

impl ConnHistograms {
    pub fn new() -> Self {
        Self {
            connect_time: Distribution::new(Measure::ConnectTime),
            duration: Distribution::new(Measure::Duration),
            bytes_in: Distribution::new(Measure::BytesIn),
            bytes_out: Distribution::new(Measure::BytesOut),
        }
    }

    /// Bytes one set holds.
    pub fn bytes() -> u64 {
        Measure::CONNECTION
            .into_iter()
            .map(Distribution::bytes)
            .sum()
    }

    /// Each histogram, in the order of [`Measure::CONNECTION`].
    pub fn all(&self) -> [&Distribution; 4] {
        [
            &self.connect_time,
            &self.duration,
            &self.bytes_in,
            &self.bytes_out,
        ]
    }

    /// Each histogram, in the order of [`Measure::CONNECTION`], by value.
    pub fn into_all(self) -> [Distribution; 4] {
        [
            self.connect_time,
            self.duration,
            self.bytes_in,
            self.bytes_out,
        ]
    }

    fn all_mut(&mut self) -> [&mut Distribution; 4] {
        [
            &mut self.connect_time,
            &mut self.duration,
            &mut self.bytes_in,
            &mut self.bytes_out,
        ]
    }

    fn merge(&mut self, other: &Self) {
        for (to, from) in self.all_mut().into_iter().zip(other.all()) {
            to.merge(from);
        }
    }

    fn clear(&mut self) {
        for d in self.all_mut() {
            d.clear();
        }
    }

    fn is_empty(&self) -> bool {
        self.all().iter().all(|d| d.is_empty())
    }
}

impl Default for ConnHistograms {
    fn default() -> Self {
        Self::new()
    }
}

/// A pool's connection histograms as readers see them: what every forwarder has handed over.
/// Forwarders write them only through [`Recorder::publish`], which never waits.
#[derive(Debug, Default)]
pub struct PoolHistograms {
    merged: Mutex<ConnHistograms>,
}

impl PoolHistograms {
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy, for readers. Waits only for a forwarder's merge in progress (a few
    /// microseconds), never the other way round.
    pub fn snapshot(&self) -> ConnHistograms {
        self.merged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One forwarder's histograms of one pool: written on its hot path, handed over at its tick.
#[derive(Debug, Default)]
pub struct Recorder {
    own: ConnHistograms,
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A connect to a backend succeeded after `us` microseconds.
    #[inline]
    pub fn connected(&mut self, us: u64) {
        self.own.connect_time.record(us);
    }

    /// A connection closed after `ms` milliseconds, having relayed `bytes_in` from the client
    /// and `bytes_out` from the backend.
    #[inline]
    pub fn closed(&mut self, ms: u64, bytes_in: u64, bytes_out: u64) {
        self.own.duration.record(ms);
        self.own.bytes_in.record(bytes_in);
        self.own.bytes_out.record(bytes_out);
    }

    /// Hands what was recorded since the last hand-over to `to`, unless someone holds it:
    /// then it is kept for the next try. Returns whether nothing is left to hand over.
    pub fn publish(&mut self, to: &PoolHistograms) -> bool {
        if self.own.is_empty() {
            return true;
        }
        let mut merged = match to.merged.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        merged.merge(&self.own);
        drop(merged);
        self.own.clear();
        true
    }

    /// Like [`Self::publish`], but waits for the lock: for a forwarder's last hand-over as it
    /// stops, off the data path.
    pub fn publish_now(&mut self, to: &PoolHistograms) {
        if self.own.is_empty() {
            return;
        }
        to.merged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .merge(&self.own);
        self.own.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Measure; 5] = [
        Measure::ConnectTime,
        Measure::Duration,
        Measure::BytesIn,
        Measure::BytesOut,
        Measure::QueueWait,
    ];

    #[test]
    fn every_measure_gets_its_fixed_bounds() {
        for m in ALL {
            let d = Distribution::new(m);
            assert_eq!(d.histogram.low(), 1, "{m:?}");
            assert!(d.histogram.high() >= m.highest(), "{m:?}");
            assert!(
                !d.histogram.is_auto_resize(),
                "{m:?}: recording must not allocate"
            );
            let buckets = m.buckets();
            assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{m:?}");
            assert!(buckets.iter().all(|&b| b < m.highest()), "{m:?}");
        }
        // A set is a few tens of KiB: the footprint says so per forwarder and pool.
        assert!(ConnHistograms::bytes() < 256 * 1024);
    }

    #[test]
    fn quantiles_sums_and_buckets_follow_what_was_recorded() {
        let mut d = Distribution::new(Measure::ConnectTime);
        assert_eq!((d.count(), d.quantile(0.5), d.max(), d.sum()), (0, 0, 0, 0));
        for v in 1..=1000 {
            d.record(v);
        }
        assert_eq!(d.count(), 1000);
        assert_eq!(d.sum(), 500_500);
        let p50 = d.quantile(0.5);
        assert!((495..=505).contains(&p50), "{p50}");
        let p99 = d.quantile(0.99);
        assert!((985..=995).contains(&p99), "{p99}");
        assert!((995..=1005).contains(&d.max()));
        assert_eq!(d.count_at_most(100), 100);
        assert_eq!(d.count_at_most(10_000), 1000);
        let at_500 = d.count_at_most(500);
        assert!((500..=505).contains(&at_500), "{at_500}");
    }

    #[test]
    fn a_value_past_the_bound_counts_as_the_bound_and_the_sum_stays_exact() {
        let mut d = Distribution::new(Measure::BytesIn);
        d.record(u64::MAX / 2);
        d.record(0);
        assert_eq!(d.count(), 2);
        assert!(d.max() >= Measure::BytesIn.highest());
        assert_eq!(d.sum(), u64::MAX / 2);
        d.record(u64::MAX);
        assert_eq!(d.sum(), u64::MAX, "saturates");
    }

    #[test]
    fn publishing_hands_everything_over_once() {
        let pool = PoolHistograms::new();
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        a.connected(40);
        a.closed(5, 100, 2000);
        b.closed(7, 1, 1);
        assert!(a.publish(&pool));
        assert!(b.publish(&pool));
        // Nothing new: nothing merged twice.
        assert!(a.publish(&pool));
        let s = pool.snapshot();
        assert_eq!(s.connect_time.count(), 1);
        assert_eq!(s.duration.count(), 2);
        assert_eq!(s.bytes_in.sum(), 101);
        assert_eq!(s.bytes_out.sum(), 2001);
    }

    #[test]
    fn a_held_lock_keeps_records_for_the_next_tick_without_waiting() {
        let pool = PoolHistograms::new();
        let mut r = Recorder::new();
        r.closed(1, 2, 3);
        {
            let _reader = pool.merged.lock().expect("not poisoned");
            assert!(!r.publish(&pool), "a forwarder does not wait for a reader");
            r.closed(4, 5, 6);
        }
        assert!(r.publish(&pool));
        let s = pool.snapshot();
        assert_eq!(s.duration.count(), 2);
        assert_eq!(s.bytes_out.sum(), 9);
        assert!(r.own.is_empty());
    }

    #[test]
    fn the_last_hand_over_merges_what_is_left() {
        let pool = PoolHistograms::new();
        let mut r = Recorder::new();
        r.connected(3);
        r.publish_now(&pool);
        assert!(r.own.is_empty());
        assert_eq!(pool.snapshot().connect_time.count(), 1);
    }
}
