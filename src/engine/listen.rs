//! The listening sockets: one per listener per forwarder, bound afresh or taken over from the
//! levee this one replaces.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::{StartError, local_addr};
use crate::config::Config;
use crate::forward::{self, ListenerSetup, gate};

/// The listeners bound for a new engine.
pub(super) struct Bound {
    /// Each listener's address, in configuration order (the real port for port 0).
    pub addrs: Vec<SocketAddr>,
    /// Each forwarder's sockets.
    pub sockets: Vec<Vec<ListenerSetup>>,
    /// A second descriptor of every socket, with its listener's name and configured address,
    /// for a levee that replaces this one.
    pub handover: Vec<(String, SocketAddr, OwnedFd)>,
    /// Each listener's gate, shared by its sockets.
    pub gates: Vec<Arc<gate::Gate>>,
}

/// Binds every listener of `cfg` once per forwarder, taking over from `inherited` the sockets
/// whose listener name and configured address match (removed from it).
pub(super) fn bind(
    cfg: &Config,
    forwarders: usize,
    inherited: &mut Vec<(String, SocketAddr, OwnedFd)>,
) -> Result<Bound, StartError> {
    // One socket per listener per forwarder. The first decides the port, so a listener on
    // port 0 gets one ephemeral port shared by all its sockets.
    let mut addrs = Vec::with_capacity(cfg.listeners.len());
    let mut sockets: Vec<Vec<ListenerSetup>> = (0..forwarders).map(|_| Vec::new()).collect();
    let mut handover = Vec::new();
    let mut gates = Vec::with_capacity(cfg.listeners.len());
    for (index, l) in cfg.listeners.iter().enumerate() {
        let mut addr = l.addr;
        let listen_error = |addr, error| StartError::Listen {
            listener: l.name.clone(),
            addr,
            error,
        };
        let mut adopted: Vec<OwnedFd> = Vec::new();
        let mut i = 0;
        while i < inherited.len() {
            if inherited[i].0 == l.name && inherited[i].1 == l.addr {
                adopted.push(inherited.swap_remove(i).2);
            } else {
                i += 1;
            }
        }
        match adopted.first() {
            // Taken over: the port stays what it was, also for a listener on port 0.
            Some(fd) => addr = local_addr(fd).map_err(StartError::Io)?,
            None => forward::ensure_free(addr).map_err(|e| listen_error(addr, e))?,
        }
        let payload: Arc<[u8]> = Arc::from(l.refuse_payload.as_slice());
        let name: Arc<str> = Arc::from(l.name.as_str());
        let proxy = l.proxy_protocol.version().map(|v| (v, l.proxy_timeout));
        let gate = Arc::new(gate::Gate::new(gate::Rules::of(l)));
        gates.push(gate.clone());
        let count = sockets.len();
        let setup = |fd, addr| ListenerSetup {
            fd,
            name: name.clone(),
            index,
            proxy,
            gate: gate.clone(),
            pool: l.pool,
            refuse_payload: payload.clone(),
            addr,
        };
        for per_core in &mut sockets {
            let fd = match adopted.pop() {
                Some(fd) => fd,
                None => forward::open_listener(addr, cfg.engine.backlog)
                    .map_err(|e| listen_error(addr, e))?,
            };
            if addr.port() == 0 {
                addr = local_addr(&fd).map_err(StartError::Io)?;
            }
            // A second descriptor of every listening socket, to hand to a levee that
            // replaces this one (reload, upgrade).
            let dup = fd.try_clone().map_err(StartError::Io)?;
            handover.push((l.name.clone(), l.addr, dup));
            per_core.push(setup(fd, addr));
        }
        // More sockets than forwarders (the levee replaced had more): each still gets a
        // forwarder, so no accept queue is left with no one accepting on it.
        for (i, fd) in adopted.into_iter().enumerate() {
            let dup = fd.try_clone().map_err(StartError::Io)?;
            handover.push((l.name.clone(), l.addr, dup));
            sockets[i % count].push(setup(fd, addr));
        }
        addrs.push(addr);
    }
    Ok(Bound {
        addrs,
        sockets,
        handover,
        gates,
    })
}
