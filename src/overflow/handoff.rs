//! Moving a client's socket from the forwarder that accepted it to a worker process.
//!
//! Two ways, chosen when a worker attaches (`overflow.handoff`):
//!
//! - **pidfd**: the worker pulls the descriptor with `pidfd_getfd(2)` (Linux 5.6); no help from
//!   the forwarder. The kernel allows it like a ptrace attach: same user and a dumpable
//!   forwarder, or `CAP_SYS_PTRACE`; Yama's `ptrace_scope` and seccomp profiles may forbid it.
//! - **SCM_RIGHTS**: the forwarder sends the descriptor in a datagram to the worker's Unix socket
//!   (`w<N>.sock` in the overflow directory) when the worker asks for it.
//!
//! Either way the worker then checks the socket's `SO_COOKIE`, a number the kernel gives each
//! socket once per boot, against the ticket's: a descriptor number reused for another socket is
//! never mistaken for the queued client.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `SO_COOKIE` (include/uapi/asm-generic/socket.h); the libc crate does not name it.
const SO_COOKIE: libc::c_int = 57;

/// A process to take descriptors from, pinned by a pidfd so a reused pid cannot stand in.
#[derive(Debug)]
pub struct ProcessHandle {
    pub pid: u32,
    pub start_ticks: u64,
    pidfd: OwnedFd,
}

/// A pidfd for `pid`: a descriptor that names that process until it is reaped, and polls
/// readable once it exits.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
}

impl ProcessHandle {
    /// Opens a pidfd for `pid` and checks that the process it names started at `start_ticks`:
    /// opened first and checked after, so the pidfd is known to name that very process.
    pub fn open(pid: u32, start_ticks: u64) -> io::Result<ProcessHandle> {
        let pid_t = libc::pid_t::try_from(pid)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
        let pidfd = pidfd_open(pid_t)?;
        match start_ticks_of(pid) {
            Ok(t) if t == start_ticks => Ok(ProcessHandle {
                pid,
                start_ticks,
                pidfd,
            }),
            Ok(_) => Err(io::Error::from_raw_os_error(libc::ESRCH)),
            Err(e) => Err(e),
        }
    }

    /// A copy of the process's descriptor `fd`, close-on-exec, in this process.
    pub fn take(&self, fd: RawFd) -> io::Result<OwnedFd> {
        // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags (0) and returns a
        // new descriptor or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.pidfd.as_raw_fd(), fd, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
    }
}

/// Start time of process `pid` in clock ticks after boot (`/proc/PID/stat` field 22).
pub fn start_ticks_of(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc stat"))?;
    rest.split_ascii_whitespace()
        .nth(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no start time in /proc stat"))
}

/// The socket's `SO_COOKIE`.
pub fn socket_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Nanoseconds on `CLOCK_MONOTONIC`: the same clock in every process of one boot, so a ticket's
/// times mean the same to the forwarder and to the worker.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

fn unix_addr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is too long for a Unix socket", path.display()),
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// A non-blocking, close-on-exec Unix datagram socket, bound to `path` when given.
pub fn datagram_socket(bind: Option<&Path>) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if let Some(path) = bind {
        let (addr, len) = unix_addr(path)?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        if unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(fd)
}

/// Sends `payload` with descriptor `fd` attached (`SCM_RIGHTS`) to the datagram socket at `to`,
/// without blocking (`WouldBlock` when the receiver's queue is full).
pub fn send_fd(sock: BorrowedFd<'_>, to: &Path, payload: &[u8], fd: RawFd) -> io::Result<()> {
    let (addr, addr_len) = unix_addr(to)?;
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // Room for one descriptor's control message, aligned as cmsghdr wants.
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    debug_assert!(space <= std::mem::size_of_val(&control));
    // SAFETY: an all-zero msghdr is valid; every pointer set below outlives the sendmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw const addr).cast_mut().cast();
    msg.msg_namelen = addr_len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `msg` points at `control`, which has room for one header and one descriptor.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: a valid socket and message; MSG_DONTWAIT keeps it from blocking.
    let rc = unsafe {
        libc::sendmsg(
            sock.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one datagram into `buf` with the descriptor it carries, without blocking. `Ok(None)`
/// when none is waiting. A datagram without exactly one descriptor is read and dropped (its
/// descriptors closed) and reported as `InvalidData`.
pub fn recv_fd(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<(usize, OwnedFd)>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [MaybeUninit::<u64>::uninit(); 8];
    // SAFETY: an all-zero msghdr is valid; every pointer set below outlives the recvmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: a valid socket and message; the kernel writes within the buffers given.
    let n = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if fds.len() != 1 || msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "a handoff datagram carried {} descriptors, not 1",
                fds.len()
            ),
        ));
    }
    let fd = fds
        .pop()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
    Ok(Some((n as usize, fd)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    #[test]
    fn a_socket_taken_with_pidfd_has_the_same_cookie() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let me = std::process::id();
        let handle = ProcessHandle::open(me, start_ticks_of(me).expect("stat")).expect("pidfd");
        let copy = handle.take(client.as_raw_fd()).expect("pidfd_getfd");
        assert_ne!(copy.as_raw_fd(), client.as_raw_fd());
        let cookie = socket_cookie(client.as_fd()).expect("cookie");
        assert_ne!(cookie, 0);
        assert_eq!(socket_cookie(copy.as_fd()).expect("cookie"), cookie);
        let other = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        assert_ne!(socket_cookie(other.as_fd()).expect("cookie"), cookie);
    }

    #[test]
    fn a_wrong_start_time_is_refused() {
        let me = std::process::id();
        let t = start_ticks_of(me).expect("stat");
        let e = ProcessHandle::open(me, t + 1).expect_err("another process's start time");
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn a_socket_sent_with_scm_rights_arrives_with_its_payload() {
        let dir = std::env::temp_dir().join(format!("levee-handoff-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("w1.sock");
        let _ = std::fs::remove_file(&path);
        let receiver = datagram_socket(Some(&path)).expect("bind");
        let sender = datagram_socket(None).expect("socket");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let mut buf = [0u8; 32];
        assert!(recv_fd(receiver.as_fd(), &mut buf).expect("recv").is_none());
        send_fd(sender.as_fd(), &path, b"entry 7", client.as_raw_fd()).expect("send");
        let (n, fd) = recv_fd(receiver.as_fd(), &mut buf)
            .expect("recv")
            .expect("a datagram");
        assert_eq!(&buf[..n], b"entry 7");
        assert_eq!(
            socket_cookie(fd.as_fd()).expect("cookie"),
            socket_cookie(client.as_fd()).expect("cookie")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
