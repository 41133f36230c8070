//! The metrics endpoint's thread: every connection served at once, multiplexed with `poll(2)`
//! over non-blocking sockets, each one an [`Exchange`].
//!
//! Nothing one client does keeps another out:
//! - at most [`MAX_CLIENTS`] connections are open; a new one arriving at the cap closes the one
//!   accepted the longest ago, so a scraper always gets in;
//! - a request head is bounded ([`MAX_REQUEST`](super::http::MAX_REQUEST)) and must arrive
//!   within a deadline of the accept, a response must be taken within one of its making, and
//!   what is read after it is bounded in bytes and time (see [`super::http`]);
//! - a listener that stays readable while accept fails (out of descriptors) is left out of the
//!   poll set for a while ([`ACCEPT_BACKOFF`]) rather than spun on.
//!
//! The response is made on this thread from [`Live::stat_list`], which takes no lock a
//! forwarder waits on.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use tracing::{debug, info, warn};

use super::exposition::{self, CONTENT_TYPE};
use super::http::{self, Exchange, MAX_REQUEST, Route, Status};
use crate::ctl::Live;
use crate::poller::{self, Throttle};

/// Most connections served at once; a new one beyond closes the one accepted first.
const MAX_CLIENTS: usize = 16;

/// Longest sleep in `poll`: how soon the thread notices it is asked to stop.
const TICK: Duration = Duration::from_millis(50);

/// How long the listener is left out of the poll set after an accept failed for want of
/// resources.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long clients already accepted may take to get their answer once the endpoint stops.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Bytes read at once: a whole request head, or a drained chunk.
const READ_CHUNK: usize = 16 * 1024;

/// The running endpoint; dropping it stops the thread and closes the socket.
pub struct Endpoint {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// A second descriptor of the listening socket, for a levee that takes over (reload).
    listener: std::os::fd::OwnedFd,
}

impl Endpoint {
    /// Listens on `addr` and serves `GET /metrics` from `live`.
    pub fn start(addr: SocketAddr, live: Arc<Live>) -> io::Result<Self> {
        Self::serve_on(TcpListener::bind(addr)?, live)
    }

    /// Serves on `listener`, the listening socket a levee being replaced handed over.
    pub fn adopt(listener: std::os::fd::OwnedFd, live: Arc<Live>) -> io::Result<Self> {
        Self::serve_on(TcpListener::from(listener), live)
    }

    /// The listening socket, for a levee that takes over from this one.
    pub fn listener(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.listener.as_fd()
    }

    fn serve_on(listener: TcpListener, live: Arc<Live>) -> io::Result<Self> {
        use std::os::fd::AsFd;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let dup = listener.as_fd().try_clone_to_owned()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("levee-metrics".into())
                .spawn(move || serve(&listener, &live, &stop))?
        };
        info!(%addr, "metrics: curl http://{addr}/metrics");
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
            listener: dup,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One accepted connection.
struct Client {
    stream: TcpStream,
    exchange: Exchange,
    accepted: Instant,
}

impl Client {
    fn interest(&self) -> PollFlags {
        if !self.exchange.pending().is_empty() {
            PollFlags::POLLOUT
        } else if self.exchange.wants_input() {
            PollFlags::POLLIN
        } else {
            PollFlags::empty()
        }
    }

    /// Reads what is ready, answers a whole request, and writes what it can. Err: the socket
    /// failed, close it.
    fn turn(
        &mut self,
        ready: PollFlags,
        now: Instant,
        buf: &mut [u8],
        answer: &mut dyn FnMut(Route) -> Vec<u8>,
    ) -> io::Result<()> {
        let readable = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
        if ready.intersects(readable) && self.exchange.wants_input() {
            let room = self.exchange.room().min(buf.len());
            let route = match self.stream.read(&mut buf[..room]) {
                Ok(0) => self.exchange.ended(),
                Ok(n) => self.exchange.received(&buf[..n]),
                Err(e) if is_transient(&e) => None,
                Err(e) => return Err(e),
            };
            if let Some(route) = route {
                self.exchange.reply(answer(route), now);
            }
        }
        while !self.exchange.pending().is_empty() {
            match self.stream.write(self.exchange.pending()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    if self.exchange.sent(n, now) {
                        // All of it is out: a FIN follows it, and what the client still sends
                        // is drained.
                        let _ = self.stream.shutdown(Shutdown::Write);
                    }
                }
                Err(e) if is_transient(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// The response to one request.
fn answer(route: Route, live: &Live) -> Vec<u8> {
    match route {
        Route::Metrics { body } => {
            let mut text = String::new();
            exposition::render(&live.stat_list(), &mut text);
            http::response(Status::Ok, CONTENT_TYPE, text.as_bytes(), body)
        }
        other => http::refusal(other),
    }
}

fn serve(listener: &TcpListener, live: &Live, stop: &AtomicBool) {
    let mut clients: Vec<Client> = Vec::new();
    let mut listener_paused_until: Option<Instant> = None;
    let mut poll_failed = Throttle::default();
    let mut accept_failed = Throttle::default();
    let mut buf = vec![0u8; READ_CHUNK.max(MAX_REQUEST + 1)];
    let mut respond = |route: Route| answer(route, live);
    let mut finishing: Option<Instant> = None;
    loop {
        let now = Instant::now();
        // Asked to stop (levee stops, or a reload's levee took the socket over): no new
        // clients, but those already accepted get their answer, within STOP_GRACE.
        if stop.load(Ordering::Acquire) {
            let until = *finishing.get_or_insert(now + STOP_GRACE);
            if clients.is_empty() || now >= until {
                break;
            }
        }
        let listening = finishing.is_none() && listener_paused_until.is_none_or(|t| now >= t);
        if listening {
            listener_paused_until = None;
        }
        let wake = clients
            .iter()
            .map(|c| c.exchange.deadline())
            .chain(listener_paused_until)
            .fold(now + TICK, Instant::min);
        let clients_wait = clients.iter().map(|c| (c.stream.as_fd(), c.interest()));
        let listener_wait = listening.then(|| listener.as_fd());
        let (listener_ready, client_ready) =
            match poller::wait(listener_wait, clients_wait, now, wake) {
                Ok(ready) => ready,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    if poll_failed.ready(now) {
                        warn!(error = %e, "metrics: poll failed; retrying");
                    }
                    std::thread::sleep(TICK);
                    continue;
                }
            };

        let now = Instant::now();
        let mut index = 0;
        clients.retain_mut(|c| {
            let ready = client_ready
                .get(index)
                .copied()
                .unwrap_or(PollFlags::empty());
            index += 1;
            match c.turn(ready, now, &mut buf, &mut respond) {
                Err(e) => {
                    debug!(error = %e, "metrics: connection failed");
                    false
                }
                Ok(()) if c.exchange.done() => false,
                Ok(()) if c.exchange.expired(now) => {
                    debug!("metrics: closing a connection that ran out of time");
                    false
                }
                Ok(()) => true,
            }
        });

        if listener_ready && accept(listener, &mut clients, now, &mut accept_failed) {
            listener_paused_until = Some(now + ACCEPT_BACKOFF);
        }
    }
}

/// Accepts the connections waiting, up to one cap's worth. Returns whether accept failed in a
/// way that calls for leaving the listener alone for a while.
fn accept(
    listener: &TcpListener,
    clients: &mut Vec<Client>,
    now: Instant,
    failed: &mut Throttle,
) -> bool {
    for _ in 0..MAX_CLIENTS {
        match listener.accept() {
            Ok((stream, _)) => admit(clients, stream, now),
            Err(e) if is_transient(&e) => return false,
            // The client gave up before it was accepted: the next one may be there.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(e) => {
                if failed.ready(now) {
                    warn!(error = %e, "metrics: accept failed; retrying shortly");
                }
                return true;
            }
        }
    }
    false
}

/// Takes a new connection in, closing the one accepted first when at the cap.
fn admit(clients: &mut Vec<Client>, stream: TcpStream, now: Instant) {
    if let Err(e) = stream.set_nonblocking(true) {
        debug!(error = %e, "metrics: cannot make a connection non-blocking; closed");
        return;
    }
    if clients.len() >= MAX_CLIENTS
        && let Some(oldest) = (0..clients.len()).min_by_key(|&i| clients[i].accepted)
    {
        debug!("metrics: {MAX_CLIENTS} connections open; closing the oldest");
        clients.swap_remove(oldest);
    }
    clients.push(Client {
        stream,
        exchange: Exchange::new(now),
        accepted: now,
    });
}
