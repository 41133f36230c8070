//! `levee top`: what an operator watches during an incident, redrawn every interval from a
//! running levee's control socket, with the `list` request `levee ctl -a` makes.
//!
//! [`Snapshot`] parses one `list` reply; [`render`] draws a frame from two snapshots and the
//! time between them, and knows nothing of terminals; [`run`] is the loop around them: read,
//! wait an interval, read again, clear the screen and draw, until Ctrl-C.
//!
//! Per backend, levee counts connections in flight, health checks, downs and ejections, but
//! not connections made, bytes or connect failures: those are counted per forwarder and summed
//! (`stats.accepted`, `stats.bytes_*`, `stats.connect_failures`), and per pool in the
//! histograms (`stats.pool.P.connect_time_us.count`). The frame shows them where they are
//! counted and says so, rather than share a total out among backends.

mod render;
mod snapshot;

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

pub use render::render;
pub use snapshot::{PoolNames, Snapshot};

/// Width a frame is laid out for when neither the terminal nor `COLUMNS` says.
pub const DEFAULT_WIDTH: usize = 100;
/// Shortest interval: each reading copies every pool's histograms in levee.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// How long a reading is retried before levee is taken for gone: a reload hands the control
/// socket from one levee to the next, and a connection caught in between is closed.
const PATIENCE: Duration = Duration::from_secs(1);

/// Exit status when levee cannot be reached at start, as `levee ctl`.
pub const EXIT_UNREACHABLE: u8 = 2;
/// Exit status when levee went away while being watched, or a frame could not be written.
pub const EXIT_GONE: u8 = 1;

/// Clears the screen and puts the cursor top left (ANSI: cursor home, erase display).
const CLEAR: &str = "\x1b[H\x1b[2J";

/// What `levee top` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The running levee's control socket.
    pub socket: PathBuf,
    /// Time between two readings.
    pub interval: Duration,
    /// One frame, without escapes, then exit.
    pub once: bool,
}

/// `--interval`: a duration as the configuration writes one, from 100ms to 1h.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    crate::config::parse_duration(text.trim(), MIN_INTERVAL, MAX_INTERVAL)
}

/// Runs `levee top`; returns the exit status: 0 after Ctrl-C (or the one frame of `--once`),
/// [`EXIT_UNREACHABLE`] when levee cannot be reached at start, [`EXIT_GONE`] when it went away.
pub fn run(options: &Options) -> u8 {
    let socket = &options.socket;
    let (first, at) = match read(socket) {
        Ok(reading) => reading,
        Err(e) => {
            eprintln!("{}", crate::ctl::unreachable("levee top", socket, &e));
            return EXIT_UNREACHABLE;
        }
    };
    if options.once {
        return once(options, &first, at);
    }
    let stop = match stop_signals() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("levee top: {e}");
            return EXIT_GONE;
        }
    };
    let (mut previous, mut previous_at) = (first, at);
    let mut next = at + options.interval;
    loop {
        match stop.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return 0,
        }
        let (current, at) = match read_patiently(socket, &stop) {
            Ok(Some(reading)) => reading,
            Ok(None) => return 0,
            Err(e) => {
                eprintln!("levee top: levee on {} went away: {e}", socket.display());
                return EXIT_GONE;
            }
        };
        let (width, rows) = terminal_size();
        let frame = render(&previous, &current, at - previous_at, width);
        if let Some(status) = write_out(&format!("{CLEAR}{}", fit_rows(&frame, rows))) {
            return status;
        }
        (previous, previous_at) = (current, at);
        next += options.interval;
        // Behind (a slow reply, a suspended terminal): start the cadence again from now.
        if next < Instant::now() {
            next = Instant::now() + options.interval;
        }
    }
}

/// `--once`: a second reading an interval after the first, one frame, no escapes.
fn once(options: &Options, first: &Snapshot, first_at: Instant) -> u8 {
    std::thread::sleep(options.interval);
    let (second, at) = match read(&options.socket) {
        Ok(reading) => reading,
        Err(e) => {
            eprintln!(
                "levee top: levee on {} went away: {e}",
                options.socket.display()
            );
            return EXIT_GONE;
        }
    };
    let (width, _) = terminal_size();
    write_out(&render(first, &second, at - first_at, width)).unwrap_or(0)
}

/// One `list` reply, and when it arrived.
fn read(socket: &Path) -> io::Result<(Snapshot, Instant)> {
    let lines = crate::ctl::list(socket)?;
    Ok((Snapshot::from_lines(lines), Instant::now()))
}

/// [`read`], tried again for up to [`PATIENCE`]; `None` when a stop signal came meanwhile.
fn read_patiently(
    socket: &Path,
    stop: &mpsc::Receiver<()>,
) -> io::Result<Option<(Snapshot, Instant)>> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match read(socket) {
            Ok(reading) => return Ok(Some(reading)),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {}
        }
        match stop.recv_timeout(Duration::from_millis(100)) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return Ok(None),
        }
    }
}

/// Writes `text` to stdout; `None` when it went out, else the exit status: 0 when the reader
/// went away (`levee top | head`), [`EXIT_GONE`] with a message on any other error.
fn write_out(text: &str) -> Option<u8> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => None,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Some(0),
        Err(e) => {
            eprintln!("levee top: cannot write to stdout: {e}");
            Some(EXIT_GONE)
        }
    }
}

/// SIGINT and SIGTERM, blocked in this thread and taken by a thread of their own, which says
/// when one came: the loop waits on that between frames, and returns, so the process exits 0.
fn stop_signals() -> Result<mpsc::Receiver<()>, String> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    // Before the thread starts, so that it inherits the mask too and no thread takes the
    // default action.
    signals
        .thread_block()
        .map_err(|e| format!("cannot block SIGINT and SIGTERM: {e}"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("levee-top-signals".into())
        .spawn(move || {
            let _ = signals.wait();
            let _ = tx.send(());
        })
        .map_err(|e| format!("cannot start the thread that waits for Ctrl-C: {e}"))?;
    Ok(rx)
}

/// Columns and rows of the terminal on stdout; where stdout is not a terminal, `COLUMNS` and
/// `LINES`, else [`DEFAULT_WIDTH`] and no limit on rows.
fn terminal_size() -> (usize, Option<usize>) {
    if io::stdout().is_terminal() {
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` through its argument, which points to a
        // live, writable `winsize` of this frame; the descriptor is this process's stdout.
        let read = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
        if read == 0 && size.ws_col > 0 {
            let rows = (size.ws_row > 0).then_some(usize::from(size.ws_row));
            return (usize::from(size.ws_col), rows);
        }
    }
    let env = |name: &str| {
        std::env::var(name)
            .ok()?
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
    };
    (env("COLUMNS").unwrap_or(DEFAULT_WIDTH), env("LINES"))
}

/// `frame` cut to fit `rows` (keeping the last row free for the cursor), saying how many lines
/// did not fit.
fn fit_rows(frame: &str, rows: Option<usize>) -> String {
    let lines: Vec<&str> = frame.lines().collect();
    match rows {
        Some(rows) if lines.len() >= rows && rows >= 3 => {
            let kept = rows - 2;
            let mut out: String = lines[..kept].iter().map(|l| format!("{l}\n")).collect();
            out.push_str(&format!(
                "... {} more lines: a taller terminal shows them, or levee top --once\n",
                lines.len() - kept
            ));
            out
        }
        _ => frame.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_taller_than_the_terminal_says_what_it_left_out() {
        let frame = "1\n2\n3\n4\n5\n";
        assert_eq!(fit_rows(frame, None), frame);
        assert_eq!(fit_rows(frame, Some(6)), frame);
        let cut = fit_rows(frame, Some(4));
        assert!(cut.starts_with("1\n2\n... 3 more lines"), "{cut}");
        assert_eq!(cut.lines().count(), 3);
    }

    #[test]
    fn the_interval_is_a_duration_as_the_configuration_writes_one() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval(" 250ms "), Ok(Duration::from_millis(250)));
        for bad in ["1", "10ms", "2h", "soon", ""] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }
}
