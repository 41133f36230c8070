//! Handing a running levee over to a new process: reload and binary upgrade are one operation.
//!
//! The running levee starts the binary at the path it was started from (a new one, when the
//! file was replaced) with the configuration file, and passes it, over a Unix socket pair and
//! `SCM_RIGHTS`, every listening socket it has (one per listener per forwarder, their accept
//! queues with them) and the control socket. The new levee takes the listeners whose name and
//! configured address it still has, binds the others, and says `READY` once its forwarders
//! accept. Only then does the old levee stop accepting and drain: a connection arriving at any
//! moment finds a socket that someone accepts on. A new levee that fails, or does not say ready
//! in time, is killed, and the old one goes on as if nothing happened.
//!
//! The model is HAProxy's `-x` with `expose-fd listeners`, and Envoy's hot restart.
//!
//! Wire format, old to new: one message per descriptor, each with exactly one descriptor,
//! `L <name> <configured address>\n` for a listening socket, `C\n` for the control socket,
//! `M <address>\n` for the metrics endpoint's, then `E\n` without one. New to old:
//! `READY <pid>\n`.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// The environment variable that tells a new levee which descriptor is its end of the pair.
pub const ENV: &str = "LEVEE_HANDOVER_FD";

/// Most listening sockets one handover carries: far more than any configuration has.
const MAX_SOCKETS: usize = 4096;

/// Longest message line.
const MAX_LINE: usize = 512;

/// What a new levee received from the one it takes over from.
pub struct Inherited {
    /// Listening sockets with the listener's name and configured address.
    pub listeners: Vec<(String, SocketAddr, OwnedFd)>,
    /// The control socket's listening socket.
    pub ctl: Option<OwnedFd>,
    /// The metrics endpoint's listening socket, with its address.
    pub metrics: Option<(SocketAddr, OwnedFd)>,
    channel: UnixStream,
}

impl Inherited {
    /// Receives what the old levee sends, when this process was started to take one over
    /// (`LEVEE_HANDOVER_FD` set); `Ok(None)` otherwise. The variable is removed, so that the
    /// processes this one starts do not think they take over too.
    pub fn receive() -> Result<Option<Self>, String> {
        let Some(value) = std::env::var_os(ENV) else {
            return Ok(None);
        };
        // SAFETY: levee is single-threaded at this point of its start (before any engine,
        // logging or control thread), so nothing reads the environment concurrently.
        unsafe { std::env::remove_var(ENV) };
        let fd: RawFd = value
            .to_str()
            .and_then(|v| v.parse().ok())
            .filter(|&fd| fd > 2)
            .ok_or_else(|| format!("{ENV}={value:?} is not a descriptor"))?;
        // The descriptor must be a socket that this process owns: fstat says what it is.
        let mut meta = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat writes a whole `stat` on success and nothing is read unless it succeeds;
        // a descriptor that is not open is EBADF.
        if unsafe { libc::fstat(fd, meta.as_mut_ptr()) } != 0 {
            return Err(format!("{ENV}={fd}: {}", io::Error::last_os_error()));
        }
        // SAFETY: fstat succeeded, so it initialised the struct.
        let meta = unsafe { meta.assume_init() };
        if meta.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(format!("{ENV}={fd} is not a socket"));
        }
        // SAFETY: the old levee left this descriptor open for this process alone (it cleared
        // close-on-exec only in the child), and nothing else in this process owns it.
        let channel = unsafe { UnixStream::from_raw_fd(fd) };
        set_cloexec(fd);
        channel
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| format!("handover: {e}"))?;
        let mut inherited = Self {
            listeners: Vec::new(),
            ctl: None,
            metrics: None,
            channel,
        };
        for _ in 0..=MAX_SOCKETS + 1 {
            let (line, fd) =
                receive_one(&inherited.channel).map_err(|e| format!("handover: {e}"))?;
            let mut words = line.split(' ');
            match (words.next(), fd) {
                (Some("E"), None) => return Ok(Some(inherited)),
                (Some("C"), Some(fd)) => inherited.ctl = Some(fd),
                (Some("M"), Some(fd)) => {
                    let addr = words
                        .next()
                        .and_then(|a| a.parse().ok())
                        .ok_or_else(|| format!("handover: bad message {line:?}"))?;
                    inherited.metrics = Some((addr, fd));
                }
                (Some("L"), Some(fd)) => {
                    let (Some(name), Some(addr), None) = (words.next(), words.next(), words.next())
                    else {
                        return Err(format!("handover: bad message {line:?}"));
                    };
                    let addr = addr
                        .parse()
                        .map_err(|_| format!("handover: bad address in {line:?}"))?;
                    if inherited.listeners.len() == MAX_SOCKETS {
                        return Err(format!("handover: more than {MAX_SOCKETS} sockets"));
                    }
                    inherited.listeners.push((name.to_string(), addr, fd));
                }
                _ => return Err(format!("handover: unexpected message {line:?}")),
            }
        }
        Err("handover: the message stream has no end".to_string())
    }

    /// Tells the old levee that this one accepts now: it stops accepting and drains.
    pub fn ready(mut self) -> io::Result<()> {
        let message = format!("READY {}\n", std::process::id());
        self.channel.write_all(message.as_bytes())
    }

    /// Takes the listening sockets of the listener `name` configured on `addr`, leaving the
    /// others.
    pub fn take_listener(&mut self, name: &str, addr: SocketAddr) -> Vec<OwnedFd> {
        let mut taken = Vec::new();
        let mut i = 0;
        while i < self.listeners.len() {
            if self.listeners[i].0 == name && self.listeners[i].1 == addr {
                taken.push(self.listeners.swap_remove(i).2);
            } else {
                i += 1;
            }
        }
        taken
    }
}

/// One listening socket to hand over.
pub struct Offered<'a> {
    pub name: &'a str,
    pub addr: SocketAddr,
    pub fd: BorrowedFd<'a>,
}

/// Starts `exe run -c config` and hands it `listeners` and `ctl`; returns the new process once
/// it said it accepts, within `timeout`. On any failure the new process is killed and the
/// error says what went wrong; nothing of this process has changed.
pub fn hand_over(
    exe: &Path,
    config: &Path,
    listeners: &[Offered<'_>],
    ctl: Option<BorrowedFd<'_>>,
    metrics: Option<(SocketAddr, BorrowedFd<'_>)>,
    timeout: Duration,
) -> Result<Child, String> {
    let (mine, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let their_fd = theirs.as_raw_fd();
    let mut command = Command::new(exe);
    command
        .args(["run", "-c"])
        .arg(config)
        .env(ENV, their_fd.to_string());
    // SAFETY: runs in the child between fork and exec, and only calls fcntl, which is
    // async-signal-safe: the child's copy of its end of the pair survives the exec.
    unsafe {
        command.pre_exec(move || {
            let flags = libc::fcntl(their_fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(their_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    drop(theirs);
    let fail = |child: &mut Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        Err(why)
    };
    for l in listeners {
        let line = format!("L {} {}\n", l.name, l.addr);
        if let Err(e) = send_one(&mine, &line, Some(l.fd.as_raw_fd())) {
            return fail(&mut child, format!("handing over {}: {e}", l.name));
        }
    }
    if let Some(fd) = ctl {
        if let Err(e) = send_one(&mine, "C\n", Some(fd.as_raw_fd())) {
            return fail(&mut child, format!("handing over the control socket: {e}"));
        }
    }
    if let Some((addr, fd)) = metrics {
        if let Err(e) = send_one(&mine, &format!("M {addr}\n"), Some(fd.as_raw_fd())) {
            return fail(&mut child, format!("handing over the metrics socket: {e}"));
        }
    }
    if let Err(e) = send_one(&mine, "E\n", None) {
        return fail(&mut child, format!("handover: {e}"));
    }
    // Wait for READY, polling the child so that one that died is seen at once.
    let deadline = Instant::now() + timeout;
    let _ = mine.set_read_timeout(Some(Duration::from_millis(100)));
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the new levee exited before it was ready ({status})"
            ));
        }
        if Instant::now() >= deadline {
            return fail(
                &mut child,
                format!("the new levee was not ready within {} s", timeout.as_secs()),
            );
        }
        match (&mine).read(&mut buf) {
            Ok(0) => {
                let _ = child.wait();
                return Err("the new levee closed the handover without being ready".into());
            }
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() > MAX_LINE {
                    return fail(&mut child, "the new levee said too much".into());
                }
                if got.ends_with(b"\n") {
                    let line = String::from_utf8_lossy(&got);
                    return if line.starts_with("READY ") {
                        Ok(child)
                    } else {
                        fail(&mut child, format!("the new levee said {line:?}"))
                    };
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return fail(&mut child, format!("handover: {e}")),
        }
    }
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

fn send_one(channel: &UnixStream, line: &str, fd: Option<RawFd>) -> io::Result<()> {
    let iov = [IoSlice::new(line.as_bytes())];
    let fds = fd.map(|fd| [fd]);
    let cmsgs: Vec<ControlMessage<'_>> = fds.iter().map(|f| ControlMessage::ScmRights(f)).collect();
    let sent = sendmsg::<()>(channel.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None)?;
    if sent != line.len() {
        return Err(io::Error::other("short send"));
    }
    Ok(())
}

/// One message: its line (without the newline) and the descriptor it carried, if any.
fn receive_one(channel: &UnixStream) -> io::Result<(String, Option<OwnedFd>)> {
    let mut buf = [0u8; MAX_LINE];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            channel.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = c {
                fds.extend(received);
            }
        }
        (msg.bytes, fds)
    };
    // SAFETY: each descriptor just arrived with SCM_RIGHTS and belongs to this process alone.
    let mut owned: Vec<OwnedFd> = fds
        .into_iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the old levee went away",
        ));
    }
    if owned.len() > 1 {
        return Err(io::Error::other(
            "a message carried more than one descriptor",
        ));
    }
    let line = std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|l| l.strip_suffix('\n'))
        .ok_or_else(|| io::Error::other("a message is not one line of text"))?
        .to_string();
    Ok((line, owned.pop()))
}
