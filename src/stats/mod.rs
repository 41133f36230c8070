//! Counters: one set per forwarder, written only by that forwarder, read by anyone.
//!
//! Each counter is an atomic updated with relaxed loads and stores by its single writer, so the
//! hot path pays a plain add; readers sum the forwarders' sets when asked. Distributions (connect
//! times, durations, bytes per connection, queue waits) are histograms: see [`histogram`].

pub mod catalog;
pub mod histogram;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why levee closed a connection. Every accepted connection ends with exactly one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum CloseReason {
    /// Both sides finished (FIN both ways) and everything was relayed.
    Done = 0,
    /// The client reset the connection or its socket failed.
    ClientError,
    /// The backend reset the connection or its socket failed.
    BackendError,
    /// No bytes either way for `engine.idle_timeout`.
    IdleTimeout,
    /// Every candidate backend was down, draining or at its cap.
    NoBackend,
    /// Connects to every candidate failed or the connect budget ran out.
    ConnectFailed,
    /// The forwarder already held `engine.max_conns` connections.
    OverCapacity,
    /// Still open when `engine.drain_timeout` ran out at shutdown.
    DrainTimeout,
    /// A socket call failed before the relay could start (e.g. out of file descriptors).
    LocalError,
    /// Queued, then taken over by a worker process, which relays it from there.
    HandedOff,
    /// No backend had room and the pool's queue was full, or the predicted wait was past
    /// `overflow.queue_timeout`.
    QueueFull,
    /// Queued for `overflow.queue_timeout` without a worker taking it.
    QueueTimeout,
    /// The client closed while queued.
    Abandoned,
    /// No backend had room and the pool's overflow is `reject`.
    Rejected,
    /// Queued, then shed by CoDel.
    Shed,
    /// Queued, and every worker that claimed it died before taking it over.
    DeadLettered,
    /// Queued, then moved to the levee that took over from this one (a reload or an upgrade),
    /// which serves it from its own queue.
    Moved,
    /// The listener takes the PROXY protocol, and the client's header was malformed, of the
    /// other version, or missing (it closed first).
    BadProxyHeader,
    /// The listener takes the PROXY protocol, and no whole header came within
    /// `listener.NAME.proxy_timeout`.
    ProxyHeaderTimeout,
    /// The listener's `allow` or `deny` list refused the client.
    Denied,
    /// The client's source opened new connections faster than `rate_per_source`.
    SourceRate,
    /// The client's source held `max_conns_per_source` connections already.
    SourceConns,
}

impl CloseReason {
    pub const ALL: [CloseReason; 22] = [
        Self::Done,
        Self::ClientError,
        Self::BackendError,
        Self::IdleTimeout,
        Self::NoBackend,
        Self::ConnectFailed,
        Self::OverCapacity,
        Self::DrainTimeout,
        Self::LocalError,
        Self::HandedOff,
        Self::QueueFull,
        Self::QueueTimeout,
        Self::Abandoned,
        Self::Rejected,
        Self::Shed,
        Self::DeadLettered,
        Self::Moved,
        Self::BadProxyHeader,
        Self::ProxyHeaderTimeout,
        Self::Denied,
        Self::SourceRate,
        Self::SourceConns,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::ClientError => "client_error",
            Self::BackendError => "backend_error",
            Self::IdleTimeout => "idle_timeout",
            Self::NoBackend => "no_backend",
            Self::ConnectFailed => "connect_failed",
            Self::OverCapacity => "over_capacity",
            Self::DrainTimeout => "drain_timeout",
            Self::LocalError => "local_error",
            Self::HandedOff => "handed_off",
            Self::QueueFull => "queue_full",
            Self::QueueTimeout => "queue_timeout",
            Self::Abandoned => "abandoned",
            Self::Rejected => "rejected",
            Self::Shed => "shed",
            Self::DeadLettered => "dead_lettered",
            Self::Moved => "moved",
            Self::BadProxyHeader => "proxy_header_bad",
            Self::ProxyHeaderTimeout => "proxy_header_timeout",
            Self::Denied => "denied",
            Self::SourceRate => "source_rate",
            Self::SourceConns => "source_conns",
        }
    }
}

/// A monotonically increasing count with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning forwarder calls this, so load-then-store loses nothing and
    /// avoids a locked read-modify-write on the hot path.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One forwarder's counters.
#[derive(Debug, Default)]
pub struct ForwarderStats {
    pub accepted: Counter,
    pub accept_errors: Counter,
    pub connect_attempts: Counter,
    pub connect_failures: Counter,
    pub connect_timeouts: Counter,
    pub bytes_client_to_backend: Counter,
    pub bytes_backend_to_client: Counter,
    /// Submissions io_uring refused (other than a full completion queue); retried.
    pub ring_errors: Counter,
    /// Times every connection slot was taken (accepts paused).
    pub full_events: Counter,
    /// Directions switched from buffers to splice (a bulk transfer).
    pub splices: Counter,
    /// When the forwarder last became full (coarse monotonic ms), 0 while it is not.
    full_since_ms: AtomicU64,
    pub closed: [Counter; CloseReason::ALL.len()],
    /// Connections accepted per listener, in configuration order (also counted in `accepted`).
    pub listener_accepted: Box<[Counter]>,
}

impl ForwarderStats {
    /// Counters for a forwarder of an engine with `listeners` listeners.
    pub fn for_listeners(listeners: usize) -> Self {
        Self {
            listener_accepted: (0..listeners).map(|_| Counter::default()).collect(),
            ..Self::default()
        }
    }

    /// One client accepted on listener `listener` (configuration order).
    #[inline]
    pub fn accept(&self, listener: usize) {
        self.accepted.add(1);
        if let Some(c) = self.listener_accepted.get(listener) {
            c.add(1);
        }
    }

    #[inline]
    pub fn close(&self, reason: CloseReason) {
        self.closed[reason as usize].add(1);
    }

    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize].get()
    }

    pub fn set_full_since(&self, ms: u64) {
        self.full_since_ms.store(ms, Ordering::Relaxed);
    }

    /// When the forwarder became full (coarse monotonic ms), or 0 when it is not.
    pub fn full_since(&self) -> u64 {
        self.full_since_ms.load(Ordering::Relaxed)
    }

    /// Connections accepted and not yet closed.
    pub fn active(&self) -> u64 {
        let closed: u64 = self.closed.iter().map(Counter::get).sum();
        self.accepted.get().saturating_sub(closed)
    }
}

/// The sum of several forwarders' counters at one moment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub accepted: u64,
    pub accept_errors: u64,
    pub connect_attempts: u64,
    pub connect_failures: u64,
    pub connect_timeouts: u64,
    pub bytes_client_to_backend: u64,
    pub bytes_backend_to_client: u64,
    pub ring_errors: u64,
    pub full_events: u64,
    pub splices: u64,
    /// Forwarders full now.
    pub full_now: u64,
    pub closed: [u64; CloseReason::ALL.len()],
}

impl Totals {
    pub fn sum<'a>(stats: impl IntoIterator<Item = &'a ForwarderStats>) -> Self {
        let mut t = Self::default();
        for s in stats {
            t.accepted += s.accepted.get();
            t.accept_errors += s.accept_errors.get();
            t.connect_attempts += s.connect_attempts.get();
            t.connect_failures += s.connect_failures.get();
            t.connect_timeouts += s.connect_timeouts.get();
            t.bytes_client_to_backend += s.bytes_client_to_backend.get();
            t.bytes_backend_to_client += s.bytes_backend_to_client.get();
            t.ring_errors += s.ring_errors.get();
            t.full_events += s.full_events.get();
            t.splices += s.splices.get();
            t.full_now += u64::from(s.full_since() != 0);
            for (sum, c) in t.closed.iter_mut().zip(&s.closed) {
                *sum += c.get();
            }
        }
        t
    }

    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize]
    }

    pub fn active(&self) -> u64 {
        self.accepted.saturating_sub(self.closed.iter().sum())
    }
}

impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted={} active={} bytes_in={} bytes_out={} connect_attempts={} \
             connect_failures={} connect_timeouts={} accept_errors={}",
            self.accepted,
            self.active(),
            self.bytes_client_to_backend,
            self.bytes_backend_to_client,
            self.connect_attempts,
            self.connect_failures,
            self.connect_timeouts,
            self.accept_errors,
        )?;
        for r in CloseReason::ALL {
            write!(f, " closed_{}={}", r.name(), self.closed(r))?;
        }
        Ok(())
    }
}
