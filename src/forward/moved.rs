//! Queued clients moved from a levee to the one that takes over from it (a reload or an
//! upgrade), so that the old levee need not stay up until its queue has drained, and no client
//! waits in a queue that newcomers to the new levee would overtake.
//!
//! The old levee's forwarders, once they stop accepting, give up each parked client the new
//! levee queues too (its park entry QUEUED → FREE, so no worker can take it any more: a ticket
//! of it still on the queue is stale) and send its socket, with the time it joined the queue, to
//! the new levee ([`QueueSuccessor`]). The new levee's main thread puts each into a forwarder's
//! [`Inbox`] in turn, and that forwarder serves it as a newcomer that has waited since then:
//! straight to a backend if one has room and nobody waits, else into the new levee's queue with
//! its deadline kept. A client a worker is taking at that moment stays, and the worker serves it.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};

use io_uring::opcode;
use io_uring::types::Fd;
use tracing::warn;

use super::forwarder::{Forwarder, Newcomer, WAITING_MAX};
use super::sockopt::reset_and_close;
use super::token::{self, Kind};
use crate::eventfd::EventFd;
use crate::stats::CloseReason;

/// `Kind::Wake` index of an inbox's wake-up (0 is the stop request's).
pub(super) const INBOX_WAKE: u32 = 1;

/// Most moved clients one inbox holds before its forwarder has taken them: far more than a
/// queue holds (`overflow.max_queue` per forwarder); past it a client is refused, counted.
const INBOX_MAX: usize = 65_536;

/// Where a stopping levee sends the clients still queued in it: the levee that took over.
pub trait QueueSuccessor: Send + Sync + std::fmt::Debug {
    /// Whether the new levee has listener `name` on a pool that queues.
    fn takes(&self, listener: &str) -> bool;
    /// Sends `client`, of listener `listener`, queued since `queued_ns` (`CLOCK_MONOTONIC`)
    /// by forwarder `forwarder`, with the addresses its PROXY header named, if any. Never
    /// blocks: a new levee that does not read is an error.
    fn send(
        &self,
        listener: &str,
        queued_ns: u64,
        forwarder: usize,
        origin: Option<(SocketAddr, SocketAddr)>,
        client: BorrowedFd<'_>,
    ) -> io::Result<()>;
}

/// A client moved from the old levee.
#[derive(Debug)]
pub struct Moved {
    listener: Arc<str>,
    queued_ns: u64,
    origin: Option<(SocketAddr, SocketAddr)>,
    client: OwnedFd,
}

/// One forwarder's moved clients, and the eventfd that wakes it for them.
#[derive(Debug)]
pub struct Inbox {
    moved: Mutex<Arrivals>,
    wake: EventFd,
}

#[derive(Debug, Default)]
struct Arrivals {
    clients: VecDeque<Moved>,
    /// The forwarder has exited: nobody takes clients from here any more.
    closed: bool,
}

impl Inbox {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            moved: Mutex::new(Arrivals::default()),
            wake: EventFd::new()?,
        })
    }

    fn put(&self, m: Moved) -> Result<(), (Moved, &'static str)> {
        {
            let mut moved = self.moved.lock().unwrap_or_else(PoisonError::into_inner);
            if moved.closed {
                return Err((m, "has stopped"));
            }
            if moved.clients.len() >= INBOX_MAX {
                return Err((m, "has too many moved clients waiting for it"));
            }
            moved.clients.push_back(m);
        }
        self.wake.signal();
        Ok(())
    }

    /// Takes what arrived, and clears the wake-up first so that a client put meanwhile wakes
    /// the forwarder again.
    fn take(&self) -> VecDeque<Moved> {
        self.wake.clear();
        std::mem::take(
            &mut self
                .moved
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clients,
        )
    }

    /// Takes no more clients, and returns those that arrived too late.
    fn close(&self) -> VecDeque<Moved> {
        let mut moved = self.moved.lock().unwrap_or_else(PoisonError::into_inner);
        moved.closed = true;
        std::mem::take(&mut moved.clients)
    }

    pub(super) fn fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

/// The new levee's side: hands each moved client to a forwarder, the same one for all the
/// clients of one old forwarder, so that they queue again in the order they had there.
#[derive(Debug, Clone)]
pub struct Mailbox {
    pub(crate) inboxes: Arc<[Arc<Inbox>]>,
    /// The names of this levee's listeners.
    pub(crate) listeners: Arc<[Arc<str>]>,
}

impl Mailbox {
    /// Gives `client`, queued since `queued_ns` by the old levee's forwarder `forwarder` on
    /// listener `listener`, to a forwarder. A client this levee cannot take (no such listener,
    /// a full inbox) is reset, and the error says why.
    pub fn deliver(
        &self,
        listener: &str,
        queued_ns: u64,
        forwarder: usize,
        origin: Option<(SocketAddr, SocketAddr)>,
        client: OwnedFd,
    ) -> Result<(), String> {
        let Some(name) = self.listeners.iter().find(|l| &***l == listener) else {
            reset_and_close(client);
            return Err(format!(
                "a queued client of listener {listener}, which this levee has not"
            ));
        };
        if self.inboxes.is_empty() {
            reset_and_close(client);
            return Err("a queued client, and no forwarder to serve it".into());
        }
        let k = forwarder % self.inboxes.len();
        self.inboxes[k]
            .put(Moved {
                listener: name.clone(),
                queued_ns,
                origin,
                client,
            })
            .map_err(|(m, why)| {
                reset_and_close(m.client);
                format!("a queued client, and forwarder {k} {why}")
            })
    }
}

impl Forwarder {
    /// Waits for clients moved to this forwarder's inbox.
    pub(super) fn arm_inbox(&mut self) {
        if let Some(fd) = self.inbox.as_ref().map(|i| i.fd()) {
            self.push(
                opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
                    .build()
                    .user_data(token::encode(Kind::Wake, INBOX_WAKE)),
            );
        }
    }

    /// Serves the clients moved here: each is a newcomer that has been queued since the old
    /// levee queued it.
    pub(super) fn on_inbox(&mut self) {
        let Some(inbox) = self.inbox.clone() else {
            return;
        };
        for m in inbox.take() {
            let fd = m.client;
            let Some(i) = self.listeners.iter().position(|l| l.name == m.listener) else {
                self.stats.accepted.add(1);
                reset_and_close(fd);
                self.stats.close(CloseReason::LocalError);
                continue;
            };
            self.stats.accept(usize::from(self.listeners[i].index));
            let newcomer = Newcomer {
                fd,
                pool: self.listeners[i].pool,
                listener: i as u16,
                accepted: self.now,
                queued_ns: m.queued_ns,
                origin: m.origin,
                // Its header, if its listener takes one, was read by the levee it comes from.
                greeted: true,
                held: super::gate::NO_HOLD,
            };
            match self.free.pop() {
                Some(slot) if self.waiting.is_empty() => self.open_conn(slot, newcomer),
                slot => {
                    if let Some(slot) = slot {
                        self.free.push(slot);
                    }
                    if self.waiting.len() < WAITING_MAX {
                        self.waiting.push_back(newcomer);
                    } else {
                        warn!(
                            forwarder = self.index,
                            "a moved queued client finds every slot and the waiting line full; refused"
                        );
                        reset_and_close(newcomer.fd);
                        self.stats.close(CloseReason::OverCapacity);
                    }
                }
            }
        }
        self.arm_inbox();
    }

    /// At exit: clients moved here too late to be served are refused, counted.
    pub(super) fn close_inbox(&mut self) {
        let Some(inbox) = self.inbox.clone() else {
            return;
        };
        for m in inbox.close() {
            self.stats.accepted.add(1);
            reset_and_close(m.client);
            self.stats.close(CloseReason::DrainTimeout);
        }
    }
}
