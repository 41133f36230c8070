//! systemd's service notifications (`sd_notify(3)`), written by hand: one datagram of
//! `KEY=VALUE` lines to the Unix socket named by `$NOTIFY_SOCKET` (a path, or an abstract name
//! when it starts with `@`). Without the variable, nothing is sent: levee is not run by systemd.
//!
//! levee says `READY=1` once every forwarder listens and the control socket answers;
//! `RELOADING=1` when a reload starts (and `READY=1` again if it is refused); a levee that took
//! over says `MAINPID=` with its own pid, then `READY=1`, so systemd follows the new process
//! (the unit needs `NotifyAccess=all`); `STOPPING=1` when a stop begins.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable systemd sets for a `Type=notify` service.
pub const ENV: &str = "NOTIFY_SOCKET";

/// Sends `state` (newline-separated `KEY=VALUE` lines) to systemd; `Ok(false)` when levee does
/// not run under it.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os(ENV) else {
        return Ok(false);
    };
    let target = target.to_string_lossy().into_owned();
    let addr = match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None if target.starts_with('/') => SocketAddr::from_pathname(&target)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{ENV}={target:?} is neither a path nor an abstract socket name"),
            ));
        }
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// `MONOTONIC_USEC=` for `RELOADING=1`: CLOCK_MONOTONIC now, in microseconds.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}
