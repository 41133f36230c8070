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
//! reload            = reload = requested of levee PID   (see `stats.pid`, `stats.reload.*`)
//! ```
//!
//! A line starting with `! ` is an error, saying what was wrong. Only keys the registry marks
//! runtime-tunable can be set; `stats.*` keys are read-only. A request line holds no control
//! character.
//!
//! One connection may make up to [`MAX_REQUESTS`] requests, each answered before the next is
//! read. The server gives each client 5 s for what it owes: the rest of a request line after its
//! first byte (at most [`MAX_LINE`] bytes), taking a reply, or sending its next request; then it
//! closes the connection. It serves many connections at once, and a new one always gets in.

mod client;
mod live;
mod server;

pub use client::{Action, list, query, reload, run as run_client, unreachable};
pub use live::{Live, Overflow, Reload};
pub use server::{Server, check_socket_path};

/// Longest request line the server reads.
pub const MAX_LINE: usize = 4096;
/// Most requests one connection may make.
pub const MAX_REQUESTS: usize = 10_000;
