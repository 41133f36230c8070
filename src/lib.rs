//! levee: an L4 TCP load balancer with thread-per-core io_uring forwarders.

pub mod balance;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod engine;
mod eventfd;
pub mod forward;
pub mod handover;
pub mod health;
pub mod metrics;
pub mod notify;
pub mod overflow;
mod poller;
pub mod pool;
pub mod proxy_protocol;
pub mod stats;
pub mod top;
