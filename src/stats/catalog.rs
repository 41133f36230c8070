//! The live statistics as one typed list. Each [`Stat`] has the key and value `levee ctl` shows
//! (`stats.*`) and, for a counter, a gauge or a histogram, the Prometheus family it belongs to
//! and its labels, which `/metrics` renders. Both read the one list, so they cannot drift apart.
//!
//! Every family is declared here, once, with its Prometheus name (prefix `levee_`, base units
//! in the name, `_total` on counters), its type and its help text.

use super::histogram::{Distribution, Measure};

/// A Prometheus metric family: a name, a type and a help text shared by its series.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// The ctl value's units in one base unit (1000 for milliseconds shown as seconds).
    pub per_base_unit: f64,
}

/// What a family's series are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Counter,
    Gauge,
    /// A gauge with one series per state, labelled `label`, 1 for the state now and 0 for the
    /// others: alerts compare it with 1.
    State {
        label: &'static str,
        states: &'static [&'static str],
    },
    Histogram(Measure),
}

/// A value as read.
#[derive(Debug, Clone)]
pub enum Reading {
    /// A whole number, shown as is.
    Count(u64),
    /// A decimal, shown by `ctl` with one decimal.
    Decimal(f64),
    /// Text: a state's name, a path.
    Text(String),
    /// A histogram: `ctl` shows `KEY.p50`, `.p90`, `.p99`, `.p999`, `.max` and `.count`.
    Distribution(Distribution),
}

/// One statistic.
#[derive(Debug, Clone)]
pub struct Stat {
    /// Its `levee ctl` key (for a histogram, the prefix of its keys).
    pub key: String,
    pub reading: Reading,
    /// Its Prometheus family; `None` for what only `ctl` shows (a path, quantiles already
    /// exported as a histogram).
    pub family: Option<&'static Family>,
    /// Its Prometheus labels, beyond the family's name: `pool`, `backend`, `reason` ...
    pub labels: Vec<(&'static str, String)>,
}

impl Stat {
    pub fn new(key: String, reading: Reading, family: &'static Family) -> Self {
        Self {
            key,
            reading,
            family: Some(family),
            labels: Vec::new(),
        }
    }

    /// A statistic `ctl` shows and `/metrics` does not.
    pub fn ctl_only(key: String, reading: Reading) -> Self {
        Self {
            key,
            reading,
            family: None,
            labels: Vec::new(),
        }
    }

    pub fn label(mut self, name: &'static str, value: &str) -> Self {
        self.labels.push((name, value.to_string()));
        self
    }

    /// The `KEY = VALUE` pairs `levee ctl` shows for it.
    pub fn ctl_entries(&self, out: &mut Vec<(String, String)>) {
        match &self.reading {
            Reading::Count(n) => out.push((self.key.clone(), n.to_string())),
            Reading::Decimal(x) => out.push((self.key.clone(), format!("{x:.1}"))),
            Reading::Text(t) => out.push((self.key.clone(), t.clone())),
            Reading::Distribution(d) => {
                for (name, q) in QUANTILES {
                    out.push((format!("{}.{name}", self.key), d.quantile(q).to_string()));
                }
                out.push((format!("{}.max", self.key), d.max().to_string()));
                out.push((format!("{}.count", self.key), d.count().to_string()));
            }
        }
    }
}

/// The quantiles `ctl` shows of a histogram, by key.
pub const QUANTILES: [(&str, f64); 4] =
    [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)];

const fn counter(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: Kind::Counter,
        help,
        per_base_unit: 1.0,
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: Kind::Gauge,
        help,
        per_base_unit: 1.0,
    }
}

/// A gauge `ctl` shows in milliseconds, exported in seconds.
const fn gauge_ms(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: Kind::Gauge,
        help,
        per_base_unit: 1000.0,
    }
}

const fn histogram(name: &'static str, measure: Measure, help: &'static str) -> Family {
    Family {
        name,
        kind: Kind::Histogram(measure),
        help,
        per_base_unit: 1.0,
    }
}

// ---- the whole engine (summed over forwarders) ----------------------------------------------

pub static ACCEPTED: Family = counter(
    "levee_accepted_connections_total",
    "Client connections accepted.",
);
pub static LISTENER_ACCEPTED: Family = counter(
    "levee_listener_accepted_connections_total",
    "Client connections accepted on the listener (also in levee_accepted_connections_total).",
);
pub static ACTIVE: Family = gauge(
    "levee_active_connections",
    "Client connections accepted and not yet closed.",
);
pub static BYTES_IN: Family = counter(
    "levee_client_to_backend_bytes_total",
    "Bytes relayed from clients to backends.",
);
pub static BYTES_OUT: Family = counter(
    "levee_backend_to_client_bytes_total",
    "Bytes relayed from backends to clients.",
);
pub static CONNECT_ATTEMPTS: Family = counter(
    "levee_connect_attempts_total",
    "Connects to backends started.",
);
pub static CONNECT_FAILURES: Family = counter(
    "levee_connect_failures_total",
    "Connects to backends that failed, timed out ones included.",
);
pub static CONNECT_TIMEOUTS: Family = counter(
    "levee_connect_timeouts_total",
    "Connects to backends that ran out of time.",
);
pub static ACCEPT_ERRORS: Family = counter(
    "levee_accept_errors_total",
    "Accepts that failed (out of descriptors, say).",
);
pub static SPLICES: Family = counter(
    "levee_splices_total",
    "Relay directions switched from buffers to splice through a pipe (bulk transfers).",
);
pub static RING_ERRORS: Family = counter(
    "levee_ring_errors_total",
    "io_uring submissions the kernel refused, other than for a full completion queue; each was retried.",
);
pub static FULL_EVENTS: Family = counter(
    "levee_full_events_total",
    "Times a forwarder had every connection slot taken.",
);
pub static FORWARDERS_FULL: Family = gauge(
    "levee_forwarders_full",
    "Forwarders with every connection slot taken now.",
);
pub static CLOSED: Family = counter(
    "levee_closed_connections_total",
    "Accepted connections closed, by the reason levee closed them.",
);

// ---- the overflow tier ----------------------------------------------------------------------

pub static RELOAD_FAILURES: Family = counter(
    "levee_reload_failures_total",
    "Reloads refused (a bad file, a new levee that failed); the running levee went on.",
);
pub static WORKERS_ATTACHED: Family = gauge(
    "levee_overflow_workers_attached",
    "Worker processes serving the queues now.",
);

// ---- per pool -------------------------------------------------------------------------------

pub static QUEUE_DEPTH: Family = gauge(
    "levee_pool_queue_depth",
    "Connections waiting in the pool's queue, those a worker holds included.",
);
pub static QUEUE_HELD: Family = gauge(
    "levee_pool_queue_held_by_workers",
    "Queued connections a worker has claimed and not yet taken over.",
);
pub static QUEUE_OLDEST_WAIT: Family = gauge_ms(
    "levee_pool_queue_oldest_wait_seconds",
    "How long the oldest connection still queued has waited.",
);
pub static QUEUE_DRAIN_RATE: Family = gauge(
    "levee_pool_queue_drain_rate",
    "Connections served from the queue per second, over the last two seconds it was busy.",
);
pub static QUEUE_PREDICTED_WAIT: Family = gauge_ms(
    "levee_pool_queue_predicted_wait_seconds",
    "The wait a connection queued now is predicted (depth over drain rate).",
);
pub static QUEUED: Family = counter(
    "levee_pool_queued_connections_total",
    "Connections put on the pool's queue.",
);
pub static QUEUE_LEFT: Family = counter(
    "levee_pool_queue_left_total",
    "Queued connections that left the queue, by how they left.",
);
pub static QUEUE_REFUSED: Family = counter(
    "levee_pool_queue_refused_total",
    "Connections that found no backend with room and were not queued, by why.",
);
pub static QUEUE_REQUEUED: Family = counter(
    "levee_pool_queue_requeued_total",
    "Queued connections put back after the worker that claimed them died.",
);
pub static QUEUE_DEAD_LETTERS: Family = gauge(
    "levee_pool_queue_dead_letters",
    "Queued connections in the dead-letter ring now.",
);
pub static QUEUE_WAIT: Family = histogram(
    "levee_pool_queue_wait_seconds",
    Measure::QueueWait,
    "How long queued connections waited before a worker took them over.",
);
pub static CONNECT_TIME: Family = histogram(
    "levee_pool_connect_time_seconds",
    Measure::ConnectTime,
    "Time from queueing a connect to a backend to its success, per connect that succeeded.",
);
pub static DURATION: Family = histogram(
    "levee_pool_connection_duration_seconds",
    Measure::Duration,
    "Time from accept to close of connections levee run's forwarders relayed.",
);
pub static CONN_BYTES_IN: Family = histogram(
    "levee_pool_connection_client_to_backend_bytes",
    Measure::BytesIn,
    "Bytes one connection relayed from its client to its backend.",
);
pub static CONN_BYTES_OUT: Family = histogram(
    "levee_pool_connection_backend_to_client_bytes",
    Measure::BytesOut,
    "Bytes one connection relayed from its backend to its client.",
);

/// The family of a pool's connection histogram of `measure`.
pub fn connection_family(measure: Measure) -> &'static Family {
    match measure {
        Measure::ConnectTime => &CONNECT_TIME,
        Measure::Duration => &DURATION,
        Measure::BytesIn => &CONN_BYTES_IN,
        Measure::BytesOut => &CONN_BYTES_OUT,
        Measure::QueueWait => &QUEUE_WAIT,
    }
}

// ---- per backend ----------------------------------------------------------------------------

pub static BACKEND_STATUS: Family = Family {
    name: "levee_backend_status",
    kind: Kind::State {
        label: "status",
        states: &crate::pool::Status::NAMES,
    },
    help: "The backend's status: 1 for the one it is in, 0 for the others.",
    per_base_unit: 1.0,
};
pub static BACKEND_ACTIVE: Family = gauge(
    "levee_backend_active_connections",
    "Connections open to the backend from this host, every process counted.",
);
pub static BACKEND_WEIGHT: Family = gauge(
    "levee_backend_effective_weight",
    "The weight selectors use now: the operator's, ramped by slow start, 0 while out.",
);
pub static BACKEND_CHECKS: Family = counter(
    "levee_backend_checks_total",
    "Active health checks, by result (skipped: levee lacked descriptors or memory to make one).",
);
pub static BACKEND_DOWNS: Family = counter(
    "levee_backend_downs_total",
    "Times the backend went down on failed checks.",
);
pub static BACKEND_UPS: Family =
    counter("levee_backend_ups_total", "Times the backend came back up.");
pub static BACKEND_EJECTIONS: Family = counter(
    "levee_backend_ejections_total",
    "Times the backend was ejected for failures the forwarders saw.",
);
pub static BACKEND_EJECTIONS_HELD_BACK: Family = counter(
    "levee_backend_ejections_held_back_total",
    "Ejections held back because eject.max_percent of the pool was out already.",
);

/// Every family, for the tests that check their names.
pub static FAMILIES: [&Family; 38] = [
    &ACCEPTED,
    &LISTENER_ACCEPTED,
    &ACTIVE,
    &BYTES_IN,
    &BYTES_OUT,
    &CONNECT_ATTEMPTS,
    &CONNECT_FAILURES,
    &CONNECT_TIMEOUTS,
    &ACCEPT_ERRORS,
    &RING_ERRORS,
    &SPLICES,
    &FULL_EVENTS,
    &FORWARDERS_FULL,
    &CLOSED,
    &WORKERS_ATTACHED,
    &QUEUE_DEPTH,
    &QUEUE_HELD,
    &QUEUE_OLDEST_WAIT,
    &QUEUE_DRAIN_RATE,
    &QUEUE_PREDICTED_WAIT,
    &QUEUED,
    &QUEUE_LEFT,
    &QUEUE_REFUSED,
    &QUEUE_REQUEUED,
    &QUEUE_DEAD_LETTERS,
    &QUEUE_WAIT,
    &CONNECT_TIME,
    &DURATION,
    &CONN_BYTES_IN,
    &CONN_BYTES_OUT,
    &BACKEND_STATUS,
    &BACKEND_ACTIVE,
    &BACKEND_WEIGHT,
    &BACKEND_CHECKS,
    &BACKEND_DOWNS,
    &BACKEND_UPS,
    &BACKEND_EJECTIONS,
    &BACKEND_EJECTIONS_HELD_BACK,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_follows_the_conventions_and_no_series_name_is_taken_twice() {
        let mut series = std::collections::HashSet::new();
        for f in FAMILIES {
            assert!(f.name.starts_with("levee_"), "{}", f.name);
            assert!(
                f.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                f.name
            );
            assert_eq!(
                f.name.ends_with("_total"),
                f.kind == Kind::Counter,
                "{}",
                f.name
            );
            // A family shown in milliseconds by ctl is exported in seconds, and says so.
            if f.per_base_unit != 1.0 {
                assert!(f.name.ends_with("_seconds"), "{}", f.name);
            }
            if let Kind::Histogram(m) = f.kind {
                assert!(
                    f.name.ends_with("_seconds") || f.name.ends_with("_bytes"),
                    "{}",
                    f.name
                );
                assert_eq!(f.name.ends_with("_seconds"), m.per_base_unit() != 1.0);
            }
            assert!(
                f.help.ends_with('.') && !f.help.contains('\n'),
                "{}",
                f.name
            );
            let names: Vec<String> = match f.kind {
                Kind::Histogram(_) => ["_bucket", "_sum", "_count"]
                    .iter()
                    .map(|s| format!("{}{s}", f.name))
                    .collect(),
                _ => vec![f.name.to_string()],
            };
            for n in names {
                assert!(series.insert(n.clone()), "{n} twice");
            }
        }
    }

    #[test]
    fn a_histogram_shows_in_ctl_as_its_quantiles_max_and_count() {
        let mut d = Distribution::new(Measure::ConnectTime);
        d.record(10);
        d.record(20);
        let stat = Stat::new(
            "stats.pool.web.connect_time_us".into(),
            Reading::Distribution(d),
            &CONNECT_TIME,
        );
        let mut out = Vec::new();
        stat.ctl_entries(&mut out);
        let keys: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "stats.pool.web.connect_time_us.p50",
                "stats.pool.web.connect_time_us.p90",
                "stats.pool.web.connect_time_us.p99",
                "stats.pool.web.connect_time_us.p999",
                "stats.pool.web.connect_time_us.max",
                "stats.pool.web.connect_time_us.count",
            ]
        );
        assert_eq!(out[0].1, "10");
        assert_eq!(out[4].1, "20");
        assert_eq!(out[5].1, "2");
    }

    #[test]
    fn decimals_show_one_digit_and_counts_none() {
        let mut out = Vec::new();
        Stat::ctl_only("a".into(), Reading::Decimal(2.26)).ctl_entries(&mut out);
        Stat::ctl_only("b".into(), Reading::Count(7)).ctl_entries(&mut out);
        assert_eq!(out, [("a".into(), "2.3".into()), ("b".into(), "7".into())]);
    }
}
