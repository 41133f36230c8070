//! What the control socket's server and the metrics endpoint share: one thread polling a
//! listener and its clients until the nearest deadline, and a log line that repeats at most
//! once in a while.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Waits, until `wake` at the latest, for the listener (`None`: left out, paused or stopping)
/// and each client with the events it asks for. Returns whether the listener has a connection
/// waiting, and each client's events in the order given.
pub(crate) fn wait<'a>(
    listener: Option<BorrowedFd<'a>>,
    clients: impl Iterator<Item = (BorrowedFd<'a>, PollFlags)>,
    now: Instant,
    wake: Instant,
) -> nix::Result<(bool, Vec<PollFlags>)> {
    let mut fds: Vec<PollFd<'a>> = listener
        .map(|l| PollFd::new(l, PollFlags::POLLIN))
        .into_iter()
        .chain(clients.map(|(fd, events)| PollFd::new(fd, events)))
        .collect();
    // Rounded up, so a deadline a fraction of a millisecond away is not a busy loop.
    let timeout = wake.saturating_duration_since(now);
    let ms = u16::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
    poll(&mut fds, PollTimeout::from(ms))?;
    let mut ready = fds
        .iter()
        .map(|f| f.revents().unwrap_or(PollFlags::empty()));
    let listener_ready =
        listener.is_some() && ready.next().is_some_and(|r| r.contains(PollFlags::POLLIN));
    Ok((listener_ready, ready.collect()))
}

/// Logs a failure that repeats at most once per [`Throttle::EVERY`].
#[derive(Default)]
pub(crate) struct Throttle(Option<Instant>);

impl Throttle {
    const EVERY: Duration = Duration::from_secs(10);

    /// Whether to log now; if so, the next time is `EVERY` from now.
    pub(crate) fn ready(&mut self, now: Instant) -> bool {
        let ready = self.0.is_none_or(|last| now >= last + Self::EVERY);
        if ready {
            self.0 = Some(now);
        }
        ready
    }
}
