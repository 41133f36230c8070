//! Backend health: active checks, passive ejection, slow start and drain.
//!
//! One monitor thread per engine decides each backend's state, off the forwarding hot path. It
//! runs the active checks (non-blocking sockets under one `poll`), reads the streaks of connect
//! failures and resets that forwarders report through [`Signals`](crate::pool::Signals), and
//! writes its decisions into the pool's [`PoolLoad`](crate::pool::PoolLoad): state and effective
//! weight, plain atomics every forwarder reads when ranking, and into its
//! [`PoolHealth`](crate::pool::PoolHealth). Forwarders never wait for it.

mod monitor;
mod probe;

pub use monitor::Monitor;
