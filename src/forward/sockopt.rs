//! The few socket calls made outside the ring, at a connection's start and end. Each is a
//! cheap, non-blocking system call on a socket levee owns.

use std::io;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::time::Duration;

use socket2::{SockAddr, Socket, Type};

/// Opens a socket for connecting to `addr`, with TCP_NODELAY so small writes leave at once,
/// from local address `source` when one is given: bound with IP_BIND_ADDRESS_NO_PORT, so the
/// kernel picks the port at connect time for the whole 4-tuple and each source address has its
/// own ephemeral ports toward the backend (a plain bind would reserve a port for any peer).
pub fn backend_socket(addr: &SockAddr, source: Option<&SockAddr>) -> io::Result<RawFd> {
    let socket = Socket::new(addr.domain(), Type::STREAM.cloexec(), None)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(source) = source {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a valid int of the size given, on the socket just made.
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
        socket.bind(source)?;
    }
    Ok(socket.into_raw_fd())
}

/// Runs `f` on the socket `fd` without taking ownership of it.
fn with_socket<T>(fd: RawFd, f: impl FnOnce(&Socket) -> T) -> T {
    // SAFETY: callers pass a socket they own and keep open for the duration of the call;
    // ManuallyDrop keeps this borrowed view from closing it.
    let socket = ManuallyDrop::new(unsafe { Socket::from_raw_fd(fd) });
    f(&socket)
}

/// The client's address, for hashing.
pub fn peer_addr(fd: RawFd) -> Option<SocketAddr> {
    with_socket(fd, |s| s.peer_addr().ok()?.as_socket())
}

/// Sends the PROXY protocol header for `client` on `backend`, just connected: the client's
/// address and the one it connected to (`origin`, when a header or a ticket named them, else
/// the socket's own). One non-blocking send of at most 107 bytes into an empty send buffer;
/// anything short of all of it is an error.
pub fn send_proxy_header(
    version: crate::proxy_protocol::Version,
    client: RawFd,
    origin: Option<(SocketAddr, SocketAddr)>,
    backend: RawFd,
) -> io::Result<()> {
    use crate::proxy_protocol::{MAX_HEADER, encode};
    let (source, destination) = match origin {
        Some(o) => o,
        None => {
            let (peer, local) = with_socket(client, |s| (s.peer_addr(), s.local_addr()));
            let addr = |a: io::Result<SockAddr>| {
                a?.as_socket().ok_or_else(|| {
                    io::Error::other("the client's socket is not an internet socket")
                })
            };
            (addr(peer)?, addr(local)?)
        }
    };
    let mut header = [0u8; MAX_HEADER];
    let len = encode(version, source, destination, &mut header);
    with_socket(backend, |s| {
        let sent = s.send_with_flags(&header[..len], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)?;
        if sent == len {
            Ok(())
        } else {
            Err(io::Error::other(
                "the PROXY header did not fit the send buffer",
            ))
        }
    })
}

/// Sends FIN on `fd` once what it holds is sent: shutdown(SHUT_WR).
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    with_socket(fd, |s| s.shutdown(std::net::Shutdown::Write))
}

/// Makes the next close send RST instead of FIN, so the peer learns the connection failed.
/// A failure only means the close sends FIN.
pub fn set_linger_zero(fd: RawFd) {
    let _ = with_socket(fd, |s| s.set_linger(Some(Duration::ZERO)));
}

/// Refuses a just-accepted connection: RST, then close.
pub fn reset_and_close(fd: RawFd) {
    set_linger_zero(fd);
    // SAFETY: `fd` was just accepted and is owned by the caller, who never uses it again.
    unsafe { libc::close(fd) };
}
