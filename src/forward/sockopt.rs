//! The few socket calls made outside the ring, at a connection's start and end. Each is a
//! cheap, non-blocking system call on a socket levee owns: borrowed for the call
//! ([`BorrowedFd`]), or given up to it ([`OwnedFd`]) where the call closes it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use socket2::{SockAddr, SockRef, Socket, Type};

/// Opens a socket for connecting to `addr`, with TCP_NODELAY so small writes leave at once,
/// from local address `source` when one is given: bound with IP_BIND_ADDRESS_NO_PORT, so the
/// kernel picks the port at connect time for the whole 4-tuple and each source address has its
/// own ephemeral ports toward the backend (a plain bind would reserve a port for any peer).
pub fn backend_socket(addr: &SockAddr, source: Option<&SockAddr>) -> io::Result<OwnedFd> {
    let socket = Socket::new(addr.domain(), Type::STREAM.cloexec(), None)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(source) = source {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a valid int of the size given, on the socket just made.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
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
    Ok(socket.into())
}

/// The client's address, for hashing.
pub fn peer_addr(fd: BorrowedFd<'_>) -> Option<SocketAddr> {
    SockRef::from(&fd).peer_addr().ok()?.as_socket()
}

/// Sends the PROXY protocol header for `client` on `backend`, just connected: the client's
/// address and the one it connected to (`origin`, when a header or a ticket named them, else
/// the socket's own). One non-blocking send of at most 107 bytes into an empty send buffer;
/// anything short of all of it is an error.
pub fn send_proxy_header(
    version: crate::proxy_protocol::Version,
    client: BorrowedFd<'_>,
    origin: Option<(SocketAddr, SocketAddr)>,
    backend: BorrowedFd<'_>,
) -> io::Result<()> {
    use crate::proxy_protocol::{MAX_HEADER, encode};
    let (source, destination) = match origin {
        Some(o) => o,
        None => {
            let client = SockRef::from(&client);
            let (peer, local) = (client.peer_addr(), client.local_addr());
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
    let sent = SockRef::from(&backend)
        .send_with_flags(&header[..len], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)?;
    if sent == len {
        Ok(())
    } else {
        Err(io::Error::other(
            "the PROXY header did not fit the send buffer",
        ))
    }
}

/// Sends FIN on `fd` once what it holds is sent: shutdown(SHUT_WR).
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    SockRef::from(&fd).shutdown(std::net::Shutdown::Write)
}

/// Makes the next close send RST instead of FIN, so the peer learns the connection failed.
/// A failure only means the close sends FIN.
pub fn set_linger_zero(fd: BorrowedFd<'_>) {
    let _ = SockRef::from(&fd).set_linger(Some(Duration::ZERO));
}

/// Refuses a just-accepted connection: RST, then close.
pub fn reset_and_close(fd: OwnedFd) {
    use std::os::fd::AsFd;
    set_linger_zero(fd.as_fd());
    drop(fd);
}
