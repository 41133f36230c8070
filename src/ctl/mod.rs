//! Runtime control: `levee ctl` reads and changes a running levee the way `sysctl` does the
//! kernel, over a Unix socket (`ctl.socket`, mode 0600).
//!
//! The protocol is text, one request per line, each answered by lines ending with a line that
//! holds only `.`:
//!
//! ```text
//! get KEY           = KEY = VALUE
//! set KEY VALUE     = KEY = VALUE          (the value as now in effect)
//! load KEY VALUE    = KEY = VALUE          (like set, but a value already in effect is fine)
//! list              = KEY = VALUE ...      (every key, then the live counters under stats.*)
//! ```
//!
//! A line starting with `! ` is an error, saying what was wrong. Only keys the registry marks
//! runtime-tunable can be set; `stats.*` keys are read-only.

mod client;
mod live;
mod server;

pub use client::{Action, query, run as run_client};
pub use live::{Live, Overflow};
pub use server::Server;

/// Longest request line the server reads.
pub const MAX_LINE: usize = 4096;
/// Most requests one connection may make.
pub const MAX_REQUESTS: usize = 10_000;
