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
//! The clients queued in the old levee follow once it stops accepting: each parked client of a
//! listener that the new levee queues too is given up there and sent over the same socket with
//! the time it joined the queue, and the new levee queues it as of then (`forward/moved.rs`).
//! The old levee keeps only what its workers are taking at that moment, and exits once the
//! connections it relays are done.
//!
//! Wire format, old to new: one message per descriptor, each with exactly one descriptor,
//! `L <name> <configured address>\n` for a listening socket, `C\n` for the control socket,
//! `M <address>\n` for the metrics endpoint's, `T <pool> <backend> <address> <row>\n` with the
//! load table that counts that backend's connections (`pool/carried.rs`), then `E\n` without
//! one. New to old:
//! `READY <pid>\n`. Then, old to new, `Q <listener> <queued since, CLOCK_MONOTONIC ns>
//! <forwarder>[ <source> <destination>]\n` (the addresses its PROXY header named) with a queued
//! client's socket, until the old levee exits.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use levee_rings::table::Table;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::pool::carried::OldRow;

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
    /// The old levee's load tables, and where each of its backends is counted in them.
    pub loads: Vec<Table>,
    pub rows: Vec<OldRow>,
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
            loads: Vec::new(),
            rows: Vec::new(),
            channel,
        };
        // The same table comes once per backend: mapped once.
        let mut tables: Vec<(u64, u64)> = Vec::new();
        for _ in 0..=2 * MAX_SOCKETS + 1 {
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
                (Some("T"), Some(fd)) => {
                    let (Some(pool), Some(backend), Some(addr), Some(row), None) = (
                        words.next(),
                        words.next(),
                        words.next(),
                        words.next(),
                        words.next(),
                    ) else {
                        return Err(format!("handover: bad message {line:?}"));
                    };
                    let (Ok(addr), Ok(row)) = (addr.parse(), row.parse()) else {
                        return Err(format!("handover: bad message {line:?}"));
                    };
                    if inherited.rows.len() == MAX_SOCKETS {
                        return Err(format!("handover: more than {MAX_SOCKETS} backends"));
                    }
                    let id = file_id(&fd).map_err(|e| format!("handover: {e}"))?;
                    let table = match tables.iter().position(|&t| t == id) {
                        Some(t) => t,
                        None => {
                            let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
                            let t = Table::open(&path).map_err(|e| {
                                format!("handover: the old levee's load table: {e}")
                            })?;
                            tables.push(id);
                            inherited.loads.push(t);
                            tables.len() - 1
                        }
                    };
                    inherited.rows.push(OldRow {
                        pool: pool.to_string(),
                        backend: backend.to_string(),
                        addr,
                        table,
                        row,
                    });
                }
                _ => return Err(format!("handover: unexpected message {line:?}")),
            }
        }
        Err("handover: the message stream has no end".to_string())
    }

    /// Tells the old levee that this one accepts now: it stops accepting, sends what it has
    /// queued, and drains. Returns the channel its queued clients come on.
    pub fn ready(mut self) -> io::Result<Predecessor> {
        let message = format!("READY {}\n", std::process::id());
        self.channel.write_all(message.as_bytes())?;
        // From now on the old levee sends only when it has something, for as long as it runs.
        self.channel.set_read_timeout(None)?;
        Ok(Predecessor {
            channel: self.channel,
        })
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

/// The levee this one took over from, while it drains: it sends the clients it had queued.
pub struct Predecessor {
    channel: UnixStream,
}

/// A client the old levee had queued.
pub struct QueuedClient {
    pub listener: String,
    /// When it joined the old levee's queue, `CLOCK_MONOTONIC` ns.
    pub queued_ns: u64,
    /// The old levee's forwarder that had queued it.
    pub forwarder: usize,
    /// The addresses its PROXY header named, if any.
    pub origin: Option<(SocketAddr, SocketAddr)>,
    pub socket: OwnedFd,
}

impl Predecessor {
    /// The next queued client the old levee sends, waiting up to `wait` for one: `Ok(None)`
    /// once the old levee has exited, `Ok(Some(None))` when none came in time.
    pub fn next_within(&self, wait: Duration) -> io::Result<Option<Option<QueuedClient>>> {
        let mut pfd = libc::pollfd {
            fd: self.channel.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            0 => return Ok(Some(None)),
            n if n < 0 => {
                let e = io::Error::last_os_error();
                return if e.kind() == io::ErrorKind::Interrupted {
                    Ok(Some(None))
                } else {
                    Err(e)
                };
            }
            _ => {}
        }
        self.next().map(|c| c.map(Some))
    }

    /// The next queued client the old levee sends; `Ok(None)` once it has exited. Blocks.
    pub fn next(&self) -> io::Result<Option<QueuedClient>> {
        let (line, fd) = match receive_one(&self.channel) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut words = line.split(' ');
        let bad = || io::Error::other(format!("bad message {line:?}"));
        let (kind, listener, ns, forwarder) =
            (words.next(), words.next(), words.next(), words.next());
        let origin = match (words.next(), words.next(), words.next()) {
            (None, None, None) => None,
            (Some(s), Some(d), None) => {
                Some((s.parse().map_err(|_| bad())?, d.parse().map_err(|_| bad())?))
            }
            _ => return Err(bad()),
        };
        match (kind, listener, ns, forwarder, fd) {
            (Some("Q"), Some(listener), Some(ns), Some(forwarder), Some(socket)) => {
                Ok(Some(QueuedClient {
                    listener: listener.to_string(),
                    queued_ns: ns.parse().map_err(|_| bad())?,
                    forwarder: forwarder.parse().map_err(|_| bad())?,
                    origin,
                    socket,
                }))
            }
            _ => Err(io::Error::other(format!("unexpected message {line:?}"))),
        }
    }
}

/// The levee that took over, as the old one sees it: where the clients queued in the old one
/// go (for the listeners `takes` names: the new levee has them on a pool that queues).
#[derive(Debug)]
pub struct Successor {
    channel: std::sync::Mutex<UnixStream>,
    takes: Vec<String>,
}

impl Successor {
    pub fn new(channel: UnixStream, takes: Vec<String>) -> io::Result<Self> {
        // Forwarders send: never wait on a new levee that does not read.
        channel.set_nonblocking(true)?;
        Ok(Self {
            channel: std::sync::Mutex::new(channel),
            takes,
        })
    }
}

impl crate::forward::QueueSuccessor for Successor {
    fn takes(&self, listener: &str) -> bool {
        self.takes.iter().any(|t| t == listener)
    }

    fn send(
        &self,
        listener: &str,
        queued_ns: u64,
        forwarder: usize,
        origin: Option<(SocketAddr, SocketAddr)>,
        client: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let line = match origin {
            Some((source, destination)) => {
                format!("Q {listener} {queued_ns} {forwarder} {source} {destination}\n")
            }
            None => format!("Q {listener} {queued_ns} {forwarder}\n"),
        };
        // One message at a time from all forwarders: a stream carries them in order, whole.
        let channel = self
            .channel
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        send_one(&channel, &line, Some(client.as_raw_fd()))
    }
}

/// Device and inode of an open file.
fn file_id(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let mut meta = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a whole `stat` on success and nothing is read unless it succeeds.
    if unsafe { libc::fstat(fd.as_raw_fd(), meta.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it initialised the struct.
    let meta = unsafe { meta.assume_init() };
    Ok((meta.st_dev, meta.st_ino))
}

/// A backend's load to hand over: the table that counts its connections, and its row there.
pub struct OfferedLoad<'a> {
    pub pool: &'a str,
    pub backend: &'a str,
    pub addr: SocketAddr,
    pub row: usize,
    pub table: BorrowedFd<'a>,
}

/// One listening socket to hand over.
pub struct Offered<'a> {
    pub name: &'a str,
    pub addr: SocketAddr,
    pub fd: BorrowedFd<'a>,
}

/// Starts `exe run -c config` and hands it `listeners` and `ctl`; returns the new process once
/// it said it accepts, within `timeout`, with the channel to it (for a [`Successor`]). On any
/// failure the new process is killed and the error says what went wrong; nothing of this
/// process has changed.
pub fn hand_over(
    exe: &Path,
    config: &Path,
    listeners: &[Offered<'_>],
    ctl: Option<BorrowedFd<'_>>,
    metrics: Option<(SocketAddr, BorrowedFd<'_>)>,
    loads: &[OfferedLoad<'_>],
    timeout: Duration,
) -> Result<(Child, UnixStream), String> {
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
    for l in loads {
        let line = format!("T {} {} {} {}\n", l.pool, l.backend, l.addr, l.row);
        if let Err(e) = send_one(&mine, &line, Some(l.table.as_raw_fd())) {
            return fail(
                &mut child,
                format!("handing over the load of {}: {e}", l.backend),
            );
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
                        Ok((child, mine))
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
