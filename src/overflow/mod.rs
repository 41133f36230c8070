//! The overflow tier: connections that no backend has room for wait in a shared-memory queue
//! per pool, and worker processes take them over when a backend has room.

pub mod codel;
pub mod park;
pub mod ticket;
