//! Listening sockets: one SO_REUSEPORT socket per listener per forwarder, so the kernel spreads
//! new connections over the forwarders with no shared accept queue and no lock.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};

/// Fails with `AddrInUse` when anything already listens on `addr`, even with SO_REUSEPORT:
/// a second levee on the same port would otherwise silently take half the connections.
pub fn ensure_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    // Without SO_REUSEPORT, bind fails if any socket holds the address; SO_REUSEADDR still lets
    // it succeed over connections lingering in TIME_WAIT from an earlier run.
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into())
}

/// Opens a listening socket on `addr` that other sockets of this process can share.
pub fn open(addr: SocketAddr, backlog: u32) -> io::Result<OwnedFd> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: one setsockopt here
    // instead of one per connection.
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}
