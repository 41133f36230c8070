//! The Prometheus endpoint: `levee run` serves `GET /metrics` over HTTP/1.1 on `stats.listen`,
//! from its own thread, in the text exposition format (version 0.0.4).
//!
//! It shows what `levee ctl -a` shows under `stats.*` (the same list, [`Live::stat_list`]):
//! counters and gauges as Prometheus counters and gauges, with the pool, backend, close reason
//! and so on as labels, and the pools' histograms as Prometheus histograms. Names and units
//! follow Prometheus' conventions: a `levee_` prefix, base units in the name (`_seconds`,
//! `_bytes`), `_total` on counters. The families are declared in [`crate::stats::catalog`].
//!
//! Only what `levee run` relays is shown: worker processes (`levee worker`) keep their
//! histograms in their own memory, out of its reach.
//!
//! [`Live::stat_list`]: crate::ctl::Live::stat_list

pub mod exposition;
pub mod http;
mod server;

pub use server::Endpoint;
