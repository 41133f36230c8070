//! Reading a configuration file: bounded in size and in time, checked to be text, every
//! failure reported as a [`ConfigError`] naming the file.
//!
//! A regular file is read up to [`MAX_FILE_SIZE`]. A pipe or FIFO (`levee check -c <(...)`,
//! `-c /dev/stdin`) is read the same way, but must deliver its end within [`PIPE_DEADLINE`]:
//! a FIFO nobody writes to would otherwise hold the command forever. Devices, sockets and
//! directories are refused without reading a byte (`/dev/zero` is not a configuration).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use super::error::{ConfigError, ConfigErrors, ErrorKind};
use super::{Config, parse};

/// Largest file [`load`](super::load) reads: far above any real configuration, and it keeps a wrong path
/// (a log, a disk image, a device) from being read into memory.
pub const MAX_FILE_SIZE: u64 = 16 << 20;

/// How long a pipe or FIFO may take to deliver a whole configuration.
pub const PIPE_DEADLINE: Duration = Duration::from_secs(5);

pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = read_text(path).map_err(|e| ConfigErrors::new(vec![e]))?;
    parse(&text, &path.display().to_string())
}

/// The text of the file at `path`, read as [`load`] reads a configuration: also for other
/// files in configuration syntax (`levee ctl -p`).
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    let fail = |line, kind, message| ConfigError {
        file: path.display().to_string(),
        line,
        key: None,
        message,
        kind,
    };
    let unreadable = |e: io::Error| {
        fail(
            None,
            ErrorKind::Unreadable,
            format!("cannot read the configuration file: {e}"),
        )
    };
    // Non-blocking, so that opening a FIFO with no writer returns at once instead of waiting
    // for one; a regular file ignores the flag.
    let mut handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(unreadable)?;
    let kind = handle.metadata().map_err(unreadable)?.file_type();
    let refused = if kind.is_dir() {
        Some("a directory")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        None
    };
    if let Some(what) = refused {
        let message = format!("is {what}, not a configuration file");
        return Err(fail(None, ErrorKind::Unreadable, message));
    }
    // Read through a limit rather than trusting the size up front: pipes report none, and a
    // file can grow while it is read.
    let mut bytes = Vec::new();
    let read = if kind.is_fifo() {
        read_pipe(&mut handle, &mut bytes, Instant::now() + PIPE_DEADLINE)
    } else {
        (&mut handle)
            .take(MAX_FILE_SIZE + 1)
            .read_to_end(&mut bytes)
            .map(|_| ())
    };
    match read {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            let message = format!(
                "is a pipe or FIFO that did not deliver a whole configuration (up to its end) \
                 within {} s; write the file, then close the pipe",
                PIPE_DEADLINE.as_secs()
            );
            return Err(fail(None, ErrorKind::Unreadable, message));
        }
        Err(e) => return Err(unreadable(e)),
    }
    if bytes.len() as u64 > MAX_FILE_SIZE {
        let message = format!(
            "larger than {} MiB, too large for a configuration file; is it the right file?",
            MAX_FILE_SIZE >> 20
        );
        return Err(fail(None, ErrorKind::NotText, message));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = bytes[..valid].iter().filter(|&&b| b == b'\n').count() + 1;
        let message = format!(
            "not UTF-8 text (byte {} of the file); configuration files are plain text",
            valid + 1
        );
        fail(Some(line), ErrorKind::NotText, message)
    })
}

/// Reads a non-blocking pipe to its end, at most [`MAX_FILE_SIZE`] + 1 bytes, failing with
/// `TimedOut` at `deadline`.
fn read_pipe(pipe: &mut File, bytes: &mut Vec<u8>, deadline: Instant) -> io::Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut chunk) {
            // The end, or (before any writer came) no writer: either way nothing more comes.
            // A FIFO opened before its writer reads as empty only until the writer opens it,
            // so wait for the first byte or hang-up before believing an empty read.
            Ok(0) if !bytes.is_empty() || writer_came_and_went(pipe)? => return Ok(()),
            Ok(0) => {}
            Ok(n) => {
                bytes.extend_from_slice(&chunk[..n]);
                if bytes.len() as u64 > MAX_FILE_SIZE {
                    return Ok(());
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let ms = u16::try_from(left.as_millis().clamp(1, 10_000)).unwrap_or(10_000);
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether a writer has opened the pipe and closed it again (poll says hang-up): an empty read
/// is then its end. Linux reports no hang-up on a FIFO that no writer has opened yet.
fn writer_came_and_went(pipe: &File) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => Ok(fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP))),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
