//! One active check of one backend: a non-blocking TCP connect, then optionally a request sent
//! and a reply prefix expected, all within the check's deadline. Driven by the monitor's poll
//! loop; never blocks.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use socket2::{Domain, Socket, Type};

/// Where a check is.
enum Phase {
    Connecting,
    Sending { sent: usize },
    Reading { matched: usize },
}

/// A check in flight.
pub struct Probe {
    socket: Socket,
    phase: Phase,
    pub deadline: Instant,
}

/// What a step of a check came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Waiting for the socket again.
    Pending,
    Passed,
    /// Failed, and why, in words for the log.
    Failed(String),
}

/// Why a check could not start.
#[derive(Debug)]
pub enum NotStarted {
    /// The check failed at once: the backend's doing (or the route to it).
    Failed(String),
    /// levee is out of descriptors or memory: no verdict on the backend.
    Local(std::io::Error),
}

impl Probe {
    /// Starts connecting to `addr`. An immediate failure of the connect (no route, refused) is
    /// the check's failure; levee's own want of descriptors or memory is [`NotStarted::Local`],
    /// which says nothing about the backend.
    pub fn start(addr: SocketAddr, deadline: Instant) -> Result<Self, NotStarted> {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            None,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                NotStarted::Local(e)
            }
            _ => NotStarted::Failed(format!("cannot open a socket: {e}")),
        })?;
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(NotStarted::Failed(e.to_string())),
        }
        Ok(Self {
            socket,
            phase: Phase::Connecting,
            deadline,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// The poll events this check waits for.
    pub fn events(&self) -> i16 {
        match self.phase {
            Phase::Connecting | Phase::Sending { .. } => libc::POLLOUT,
            Phase::Reading { .. } => libc::POLLIN,
        }
    }

    /// Moves the check on after poll reported `revents` on its socket.
    pub fn step(&mut self, revents: i16, send: &[u8], expect: &[u8]) -> Step {
        if revents == 0 {
            return Step::Pending;
        }
        loop {
            match self.phase {
                Phase::Connecting => {
                    match self.socket.take_error() {
                        Ok(None) => {}
                        Ok(Some(e)) | Err(e) => return Step::Failed(e.to_string()),
                    }
                    self.phase = Phase::Sending { sent: 0 };
                }
                Phase::Sending { sent } if sent < send.len() => {
                    match (&self.socket).write(&send[sent..]) {
                        Ok(n) => self.phase = Phase::Sending { sent: sent + n },
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Pending,
                        Err(e) => return Step::Failed(format!("sending the check failed: {e}")),
                    }
                }
                Phase::Sending { .. } => self.phase = Phase::Reading { matched: 0 },
                Phase::Reading { matched } if matched < expect.len() => {
                    let mut buf = [0u8; 512];
                    let want = (expect.len() - matched).min(buf.len());
                    match (&self.socket).read(&mut buf[..want]) {
                        Ok(0) => {
                            return Step::Failed(format!(
                                "the backend closed after {matched} of the {} expected bytes",
                                expect.len()
                            ));
                        }
                        Ok(n) => {
                            if buf[..n] != expect[matched..matched + n] {
                                return Step::Failed(format!(
                                    "the reply does not start with `{}`",
                                    String::from_utf8_lossy(expect).escape_debug()
                                ));
                            }
                            self.phase = Phase::Reading {
                                matched: matched + n,
                            };
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Pending,
                        Err(e) => return Step::Failed(format!("reading the reply failed: {e}")),
                    }
                }
                Phase::Reading { .. } => return Step::Passed,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    /// Polls one probe until it settles (bounded by its deadline).
    fn run(mut p: Probe, send: &[u8], expect: &[u8]) -> Step {
        loop {
            let mut pfd = libc::pollfd {
                fd: p.fd(),
                events: p.events(),
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, 100) };
            if n > 0 {
                match p.step(pfd.revents, send, expect) {
                    Step::Pending => {}
                    done => return done,
                }
            }
            if Instant::now() > p.deadline {
                return Step::Failed("timed out".into());
            }
        }
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn a_listening_backend_passes_a_connect_check() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = Probe::start(l.local_addr().expect("addr"), deadline()).expect("start");
        assert_eq!(run(p, b"", b""), Step::Passed);
    }

    #[test]
    fn a_refused_connect_fails() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let outcome = match Probe::start(addr, deadline()) {
            Ok(p) => run(p, b"", b""),
            Err(NotStarted::Failed(e)) => Step::Failed(e),
            Err(NotStarted::Local(e)) => panic!("levee's own shortage, not the backend's: {e}"),
        };
        assert!(
            matches!(&outcome, Step::Failed(m) if m.contains("refused")),
            "{outcome:?}"
        );
    }

    #[test]
    fn the_reply_must_start_with_the_expected_bytes() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            for reply in [
                &b"HTTP/1.1 200 OK\r\n"[..],
                b"HTTP/1.1 503 Busy\r\n",
                b"HTTP",
            ] {
                let (mut s, _) = l.accept().expect("accept");
                let mut req = [0u8; 4];
                s.read_exact(&mut req).expect("request");
                assert_eq!(&req, b"PING");
                s.write_all(reply).expect("reply");
            }
        });
        let expect = b"HTTP/1.1 200";
        assert_eq!(
            run(
                Probe::start(addr, deadline()).expect("start"),
                b"PING",
                expect
            ),
            Step::Passed
        );
        let failed = run(
            Probe::start(addr, deadline()).expect("start"),
            b"PING",
            expect,
        );
        assert!(
            matches!(&failed, Step::Failed(m) if m.contains("does not start with")),
            "{failed:?}"
        );
        let short = run(
            Probe::start(addr, deadline()).expect("start"),
            b"PING",
            expect,
        );
        assert!(
            matches!(&short, Step::Failed(m) if m.contains("closed after 4 of the 12")),
            "{short:?}"
        );
        server.join().expect("server");
    }
}
