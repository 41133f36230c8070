//! The control socket: one thread serving every `levee ctl` connection at once, multiplexed with
//! `poll(2)` over non-blocking sockets.
//!
//! Nothing one client does keeps another out:
//! - at most [`MAX_CLIENTS`] connections are open; a new one arriving at the cap closes the
//!   one idle the longest, so a new `levee ctl` always gets in;
//! - each connection's input ([`MAX_LINE`]) and output (one reply) are bounded, and each wait
//!   has a deadline ([`CLIENT_TIMEOUT`]): a request line must arrive whole within it from its
//!   first byte, a reply must be taken within it, and an idle connection is closed after it;
//! - one descriptor is kept spare, so that when levee is out of descriptors (accept fails
//!   with EMFILE) an operator still gets in: the spare is closed, that one client accepted
//!   and served, and the spare reopened once it is gone;
//! - a listener that stays readable while accept fails is left out of the poll set for a while
//!   ([`ACCEPT_BACKOFF`]) rather than spun on.
//!
//! The protocol state of one connection is a [`Session`], kept apart from its socket so that its
//! transitions are tested without one.

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use tracing::{debug, info, warn};

use super::{Live, MAX_LINE, MAX_REQUESTS};
use crate::eventfd::EventFd;
use crate::poller::{self, Throttle};

/// How long a client may take over each thing it owes: the rest of a request line after its
/// first byte, taking a reply, or its next request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Most connections served at once; a new one beyond closes the one idle the longest.
const MAX_CLIENTS: usize = 64;

/// Longest sleep in `poll` with no deadline nearer. A stop wakes the thread through its
/// eventfd, so this is only a safety net; each wake-up of an idle thread costs CPU (about
/// 130 us on a virtual machine: bench/results/20261130-225000-674324a-idle-threads.txt).
const TICK: Duration = Duration::from_secs(1);

/// How long the listener is left out of the poll set after an accept failed for want of
/// resources: it stays readable, and polling it would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Longest path a Unix socket can be bound to (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The running control socket; dropping it stops the thread and removes the socket file, if
/// the path still holds the socket it bound.
pub struct Server {
    path: PathBuf,
    /// Device and inode of the socket it bound, read back after the bind.
    bound: Option<(u64, u64)>,
    stop: Arc<AtomicBool>,
    /// An eventfd the thread polls; written once when `stop` is set, so that it stops at once.
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
    /// A second descriptor of the listening socket, to hand to the levee that takes over.
    listener: Option<OwnedFd>,
}

impl Server {
    /// Listens on `path`. A socket left by a levee that is gone is replaced; one that a
    /// running process still answers on is an error, and so is anything else at `path` (a
    /// regular file, a symbolic link, a directory ...): levee replaces only a socket.
    pub fn start(path: &Path, live: Arc<Live>) -> io::Result<Self> {
        let mut server = Self {
            path: path.to_owned(),
            bound: None,
            stop: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(EventFd::new()?),
            thread: None,
            listener: None,
        };
        let listener = bind(path)?;
        // From here on, dropping `server` on an error removes the socket again.
        server.bound = Some(identity(&fs::symlink_metadata(path)?));
        if !server.still_bound() {
            return Err(io::Error::other(
                "something replaced the socket as soon as levee bound it",
            ));
        }
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        server.serve(listener, live)?;
        Ok(server)
    }

    /// Serves on `listener`, the listening socket at `path` that the levee this one takes over
    /// from handed over: clients queued on it are not lost, and the path is not bound again.
    pub fn adopt(path: &Path, listener: OwnedFd, live: Arc<Live>) -> io::Result<Self> {
        let mut server = Self {
            path: path.to_owned(),
            bound: Some(identity(&fs::symlink_metadata(path)?)),
            stop: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(EventFd::new()?),
            thread: None,
            listener: None,
        };
        server.serve(UnixListener::from(listener), live)?;
        Ok(server)
    }

    fn serve(&mut self, listener: UnixListener, live: Arc<Live>) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        self.listener = Some(listener.as_fd().try_clone_to_owned()?);
        let spare = Spare::open();
        self.thread = Some({
            let stop = self.stop.clone();
            let wake = self.wake.clone();
            std::thread::Builder::new()
                .name("levee-ctl".into())
                .spawn(move || serve(&listener, &live, &stop, &wake, spare))?
        });
        let path = self.path.display();
        info!(socket = %path, "runtime control: levee ctl -s {path} -a");
        Ok(())
    }

    /// The listening socket, for the levee that takes over.
    pub fn listener(&self) -> Option<BorrowedFd<'_>> {
        self.listener.as_ref().map(AsFd::as_fd)
    }

    /// Stops serving and leaves the socket where it is: another levee serves on it now.
    pub fn release(mut self) {
        self.bound = None;
        self.halt();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Asks the thread to stop, and wakes it from its poll.
    fn halt(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.signal();
    }

    /// Whether `path` still holds the very socket this server bound (and not a file someone
    /// put there since).
    fn still_bound(&self) -> bool {
        match (self.bound, fs::symlink_metadata(&self.path)) {
            (Some(bound), Ok(meta)) => meta.file_type().is_socket() && identity(&meta) == bound,
            _ => false,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.halt();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.still_bound() {
            let _ = fs::remove_file(&self.path);
        } else if self.bound.is_some() {
            warn!(
                socket = %self.path.display(),
                "ctl.socket: the path no longer holds levee's socket; left as it is"
            );
        }
    }
}

fn identity(meta: &Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// Binds `path`, replacing only a stale socket.
fn bind(path: &Path) -> io::Result<UnixListener> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process answers on it (another levee?); set ctl.socket to another \
                     path",
                ));
            }
            // Nobody listens: left behind by a levee that is gone.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => fs::remove_file(path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "a socket is there, and whether a process answers on it is unknown \
                         ({e}); remove it or set ctl.socket to another path"
                    ),
                ));
            }
        },
        Ok(meta) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "is {}, not a socket; levee replaces only a socket that a stopped levee \
                     left behind: move it away or set ctl.socket to another path",
                    kind_of(&meta)
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path).map_err(|e| match missing_directory(path) {
        Some(why) => io::Error::new(e.kind(), why),
        None => e,
    })
}

/// What a file that is not a socket is, in words.
fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a socket"
    }
}

/// Why `path`'s directory cannot hold it, if it cannot.
fn missing_directory(path: &Path) -> Option<String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => None,
        Ok(_) => Some(format!("{} is not a directory", dir.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Some(format!(
            "its directory {} does not exist; create it or set ctl.socket to another path",
            dir.display()
        )),
        Err(e) => Some(format!("its directory {}: {e}", dir.display())),
    }
}

/// Whether `levee run` could listen on `path` as its `ctl.socket`, as far as can be told
/// without binding: nothing is there yet (in a directory that exists), or a socket is (levee
/// replaces one nobody answers on). Anything else there is an error levee run would refuse.
pub fn check_socket_path(path: &Path) -> Result<(), String> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(format!(
            "{}: {len} bytes, longer than a Unix socket path may be ({MAX_SOCKET_PATH}); pick a \
             shorter path",
            path.display()
        ));
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => Ok(()),
        Ok(meta) => Err(format!(
            "{}: is {}, not a socket; levee will not replace it: move it away or set \
             ctl.socket to another path",
            path.display(),
            kind_of(&meta)
        )),
        Err(e) => match (missing_directory(path), e.kind()) {
            (Some(why), _) => Err(format!("{}: {why}", path.display())),
            (None, io::ErrorKind::NotFound) => Ok(()),
            (None, _) => Err(format!("{}: {e}", path.display())),
        },
    }
}

/// A descriptor held in reserve (`/dev/null`) for the moment levee has none left, so an
/// operator can still connect.
struct Spare(Option<File>);

impl Spare {
    fn open() -> Self {
        // std opens with O_CLOEXEC: the spare never leaks into a worker process.
        match File::open("/dev/null") {
            Ok(f) => Self(Some(f)),
            Err(e) => {
                warn!(error = %e, "ctl: cannot keep a spare descriptor; at the open-file limit \
                                   levee ctl will not get in");
                Self(None)
            }
        }
    }

    /// Closes the spare, if held, so that one accept can succeed.
    fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    fn held(&self) -> bool {
        self.0.is_some()
    }

    /// Takes a descriptor back into reserve; failing that (still at the limit), a later turn
    /// tries again.
    fn reopen(&mut self) {
        if self.0.is_none() {
            self.0 = File::open("/dev/null").ok();
        }
    }
}

/// One accepted connection.
struct Client {
    stream: UnixStream,
    session: Session,
    /// Accepted with the spare descriptor released: the spare is taken back once it is gone.
    spare: bool,
}

impl Client {
    fn interest(&self) -> PollFlags {
        let mut flags = PollFlags::empty();
        if self.session.wants_input() {
            flags |= PollFlags::POLLIN;
        }
        if !self.session.pending().is_empty() {
            flags |= PollFlags::POLLOUT;
        }
        flags
    }

    /// Reads what is ready, answers, and writes what it can. Err: the socket failed, close it.
    fn turn(
        &mut self,
        ready: PollFlags,
        now: Instant,
        buf: &mut [u8],
        respond: &mut dyn FnMut(&str) -> Vec<String>,
    ) -> io::Result<()> {
        let readable = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
        if ready.intersects(readable) && self.session.wants_input() {
            let room = self.session.room().min(buf.len());
            match self.stream.read(&mut buf[..room]) {
                Ok(0) => self.session.ended(),
                Ok(n) => self.session.received(&buf[..n], now),
                Err(e) if is_transient(&e) => {}
                Err(e) => return Err(e),
            }
        }
        // A client that sends several requests at once gets them answered in turn, a few per
        // turn so that it cannot starve the others.
        for _ in 0..8 {
            self.session.answer(now, respond);
            if self.session.pending().is_empty() {
                return Ok(());
            }
            match self.stream.write(self.session.pending()) {
                Ok(n) => self.session.sent(n, now),
                Err(e) if is_transient(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
            if !self.session.pending().is_empty() {
                return Ok(());
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

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

fn serve(
    listener: &UnixListener,
    live: &Live,
    stop: &AtomicBool,
    waker: &EventFd,
    mut spare: Spare,
) {
    let mut clients: Vec<Client> = Vec::new();
    let mut listener_paused_until: Option<Instant> = None;
    let mut poll_failed = Throttle::default();
    let mut accept_failed = Throttle::default();
    let mut buf = vec![0u8; MAX_LINE + 1];
    let mut answer = |request: &str| respond(request, live);
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        let listening = listener_paused_until.is_none_or(|t| now >= t);
        if listening {
            listener_paused_until = None;
        }
        // A client with a whole request waiting (several sent at once) needs no wake-up.
        let wake = clients
            .iter()
            .map(|c| match c.session.can_answer() {
                true => now,
                false => c.session.deadline(),
            })
            .chain(listener_paused_until)
            .fold(now + TICK, Instant::min);
        // The wake eventfd goes last: its readiness follows the clients' and is never read.
        let clients_wait = clients
            .iter()
            .map(|c| (c.stream.as_fd(), c.interest()))
            .chain(std::iter::once((waker.as_fd(), PollFlags::POLLIN)));
        let listener_wait = listening.then(|| listener.as_fd());
        let (listener_ready, client_ready) =
            match poller::wait(listener_wait, clients_wait, now, wake) {
                Ok(ready) => ready,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    if poll_failed.ready(now) {
                        warn!(error = %e, "ctl: poll failed; retrying");
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
            match c.turn(ready, now, &mut buf, &mut answer) {
                Err(e) => {
                    debug!(error = %e, "ctl: connection failed");
                    false
                }
                Ok(()) if c.session.finished() => false,
                Ok(()) => match c.session.expired(now) {
                    None => true,
                    Some(why) => {
                        debug!("ctl: closing a connection: {}", why.describe());
                        if let Some(farewell) = why.farewell() {
                            let _ = c.stream.write(farewell.as_bytes());
                        }
                        false
                    }
                },
            }
        });
        // The client let in with the spare is gone: take its descriptor back before anything
        // else can. While still at the limit this fails, and later turns retry.
        if !spare.held() && !clients.iter().any(|c| c.spare) {
            spare.reopen();
        }

        if listener_ready {
            let paused = accept(listener, &mut clients, &mut spare, now, &mut accept_failed);
            if paused {
                listener_paused_until = Some(now + ACCEPT_BACKOFF);
            }
        }
    }
}

/// Accepts the connections waiting, up to one cap's worth. Returns whether accept failed in a
/// way that calls for leaving the listener alone for a while.
fn accept(
    listener: &UnixListener,
    clients: &mut Vec<Client>,
    spare: &mut Spare,
    now: Instant,
    failed: &mut Throttle,
) -> bool {
    for _ in 0..MAX_CLIENTS {
        match listener.accept() {
            Ok((stream, _)) => admit(clients, stream, false, now),
            Err(e) if is_transient(&e) => return false,
            Err(e) if out_of_descriptors(&e) && spare.release() => {
                // The spare is closed: one descriptor is free for this one client.
                match listener.accept() {
                    Ok((stream, _)) => {
                        if failed.ready(now) {
                            warn!(
                                error = %e,
                                "ctl: out of descriptors; serving one control connection with \
                                 the spare"
                            );
                        }
                        admit(clients, stream, true, now);
                    }
                    Err(again) => {
                        spare.reopen();
                        if !is_transient(&again) {
                            return true;
                        }
                    }
                }
                return false;
            }
            Err(e) => {
                if failed.ready(now) {
                    warn!(error = %e, "ctl: accept failed; retrying shortly");
                }
                return true;
            }
        }
    }
    false
}

/// Takes a new connection in, closing the one idle the longest when at the cap.
fn admit(clients: &mut Vec<Client>, stream: UnixStream, spare: bool, now: Instant) {
    if let Err(e) = stream.set_nonblocking(true) {
        debug!(error = %e, "ctl: cannot make a connection non-blocking; closed");
        return;
    }
    if clients.len() >= MAX_CLIENTS
        && let Some(idlest) = (0..clients.len()).min_by_key(|&i| clients[i].session.last_active)
    {
        debug!("ctl: {MAX_CLIENTS} connections open; closing the one idle the longest");
        // Were it the one let in with the spare, the next turn takes the spare back.
        clients.swap_remove(idlest);
    }
    clients.push(Client {
        stream,
        session: Session::new(now),
        spare,
    });
}

/// Why a connection's time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// Connected, or answered, and then sent nothing.
    Idle,
    /// Began a request line and did not finish it.
    Line,
    /// Did not take its reply.
    Reply,
}

impl Expired {
    fn describe(self) -> &'static str {
        match self {
            Self::Idle => "idle too long",
            Self::Line => "a request line did not arrive whole in time",
            Self::Reply => "it did not read its reply in time",
        }
    }

    /// What the client is told, if anything, before the connection closes.
    fn farewell(self) -> Option<String> {
        match self {
            Self::Line => Some(format!(
                "! request not complete within {} s of its first byte\n.\n",
                CLIENT_TIMEOUT.as_secs()
            )),
            Self::Idle | Self::Reply => None,
        }
    }
}

/// One connection's protocol state: the request line being received, the reply being sent,
/// and by when the client must act. A reply is produced only once the previous one is taken,
/// so the output never holds more than one.
#[derive(Debug)]
struct Session {
    /// Bytes received and not yet answered: at most `MAX_LINE + 1`.
    input: Vec<u8>,
    /// The reply being sent, and how much of it is.
    output: Vec<u8>,
    sent: usize,
    requests: usize,
    /// When the first byte of the request line now in `input` arrived.
    line_since: Option<Instant>,
    /// When the reply in `output` was made.
    reply_since: Instant,
    /// The last byte read or written.
    last_active: Instant,
    /// The client closed its side: nothing more will arrive.
    ended: bool,
    /// Close once the reply is sent (the line was too long, or the requests were used up).
    closing: bool,
}

impl Session {
    fn new(now: Instant) -> Self {
        Self {
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            requests: 0,
            line_since: None,
            reply_since: now,
            last_active: now,
            ended: false,
            closing: false,
        }
    }

    /// Whether to read from the client now: not while a reply is owed to it, nor while a
    /// whole request waits, nor once it ended or is to be closed.
    fn wants_input(&self) -> bool {
        self.pending().is_empty()
            && !self.ended
            && !self.closing
            && !self.input.contains(&b'\n')
            && self.room() > 0
    }

    /// Whether [`Self::answer`] has something to do now, without waiting for the client.
    fn can_answer(&self) -> bool {
        self.pending().is_empty()
            && !self.closing
            && (self.ended || self.input.contains(&b'\n') || self.input.len() > MAX_LINE)
    }

    /// How many bytes may be read without passing the bound on a request line.
    fn room(&self) -> usize {
        (MAX_LINE + 1).saturating_sub(self.input.len())
    }

    fn received(&mut self, bytes: &[u8], now: Instant) {
        if self.input.is_empty() && !bytes.is_empty() {
            self.line_since = Some(now);
        }
        self.input.extend_from_slice(bytes);
        self.last_active = now;
    }

    /// The client shut its side: a last request without a newline is still answered.
    fn ended(&mut self) {
        self.ended = true;
    }

    /// Answers the next whole request, if any and if no reply is owed.
    fn answer(&mut self, now: Instant, respond: &mut dyn FnMut(&str) -> Vec<String>) {
        if !self.pending().is_empty() || self.closing {
            return;
        }
        let newline = self.input.iter().position(|&b| b == b'\n');
        let line: Vec<u8> = match newline {
            // Within the bound: the line, its newline included, is at most MAX_LINE bytes.
            Some(i) if i < MAX_LINE => {
                let mut line: Vec<u8> = self.input.drain(..=i).collect();
                line.pop();
                line
            }
            Some(_) => return self.refuse_long(now),
            None if self.input.len() > MAX_LINE => return self.refuse_long(now),
            None if self.ended && !self.input.is_empty() => std::mem::take(&mut self.input),
            None => {
                self.closing |= self.ended;
                return;
            }
        };
        // What is left is the start of the next request, which begins now.
        self.line_since = (!self.input.is_empty()).then_some(now);
        let text = String::from_utf8_lossy(&line);
        let replies = respond(text.trim_end_matches('\r'));
        self.reply(replies.iter().map(String::as_str), now);
        self.requests += 1;
        if self.requests >= MAX_REQUESTS {
            self.closing = true;
        }
    }

    fn refuse_long(&mut self, now: Instant) {
        let refusal = format!("request longer than {MAX_LINE} bytes");
        self.reply([format!("! {refusal}").as_str()].into_iter(), now);
        self.input.clear();
        self.line_since = None;
        self.closing = true;
    }

    fn reply<'a>(&mut self, lines: impl Iterator<Item = &'a str>, now: Instant) {
        self.output.clear();
        self.sent = 0;
        for line in lines {
            self.output.extend_from_slice(line.as_bytes());
            self.output.push(b'\n');
        }
        self.output.extend_from_slice(b".\n");
        self.reply_since = now;
    }

    /// The part of the reply not yet sent.
    fn pending(&self) -> &[u8] {
        &self.output[self.sent..]
    }

    fn sent(&mut self, n: usize, now: Instant) {
        self.sent = (self.sent + n).min(self.output.len());
        if n > 0 {
            self.last_active = now;
        }
        if self.pending().is_empty() {
            self.output.clear();
            self.sent = 0;
        }
    }

    /// Whether the connection is done: to be closed and nothing left to send.
    fn finished(&self) -> bool {
        self.closing && self.pending().is_empty()
    }

    /// What the client is waiting on, or the server on it, and since when.
    fn waiting(&self) -> (Expired, Instant) {
        if !self.pending().is_empty() {
            (Expired::Reply, self.reply_since)
        } else if let Some(since) = self.line_since {
            (Expired::Line, since)
        } else {
            (Expired::Idle, self.last_active)
        }
    }

    fn deadline(&self) -> Instant {
        self.waiting().1 + CLIENT_TIMEOUT
    }

    fn expired(&self, now: Instant) -> Option<Expired> {
        let (what, since) = self.waiting();
        (now >= since + CLIENT_TIMEOUT).then_some(what)
    }
}

/// The reply lines to one request (without the closing `.`).
fn respond(request: &str, live: &Live) -> Vec<String> {
    // The protocol is line-based: a control character inside a line is never part of a key or
    // a value, and a client that sends one is confused or worse.
    if let Some(c) = request.chars().find(|c| c.is_control()) {
        return vec![format!(
            "! request contains the control character {}: keys and values are plain text",
            c.escape_debug()
        )];
    }
    let (verb, rest) = request.split_once(' ').unwrap_or((request, ""));
    let rest = rest.trim();
    match verb {
        "get" if !rest.is_empty() => vec![match live.get(rest) {
            Ok(v) => format!("= {rest} = {v}"),
            Err(e) => format!("! {e}"),
        }],
        "set" => {
            let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
            vec![match live.set(key, value) {
                Ok(v) => {
                    info!("ctl: {key} = {v}");
                    format!("= {key} = {v}")
                }
                Err(e) => format!("! {e}"),
            }]
        }
        "load" => {
            let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
            vec![match live.load(key, value) {
                Ok(v) => format!("= {key} = {v}"),
                Err(e) => format!("! {e}"),
            }]
        }
        "reload" if rest.is_empty() => vec![match live.reload() {
            Ok(v) => format!("= reload = {v}"),
            Err(e) => format!("! {e}"),
        }],
        "list" => live
            .list()
            .into_iter()
            .map(|(k, v)| format!("= {k} = {v}"))
            .collect(),
        _ => vec![format!(
            "! unknown request `{}`: expected get KEY, set KEY VALUE, load KEY VALUE, list or reload",
            request.escape_debug()
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(request: &str) -> Vec<String> {
        vec![format!("= {request}")]
    }

    /// Everything the session would send, marking it sent.
    fn take(s: &mut Session, now: Instant) -> String {
        let out = String::from_utf8_lossy(s.pending()).into_owned();
        s.sent(s.pending().len(), now);
        out
    }

    #[test]
    fn answers_one_request_at_a_time() {
        let t = Instant::now();
        let mut s = Session::new(t);
        s.received(b"get a\nget b\nget", t);
        s.answer(t, &mut echo);
        // The second request waits until the first reply is taken: one reply buffered at most.
        assert_eq!(s.pending(), b"= get a\n.\n");
        assert!(!s.wants_input());
        s.answer(t, &mut echo);
        assert_eq!(take(&mut s, t), "= get a\n.\n");
        s.answer(t, &mut echo);
        assert_eq!(take(&mut s, t), "= get b\n.\n");
        // The rest is a partial line: nothing to answer, more wanted.
        s.answer(t, &mut echo);
        assert!(s.pending().is_empty());
        assert!(s.wants_input());
        s.received(b" c\r\n", t);
        s.answer(t, &mut echo);
        assert_eq!(take(&mut s, t), "= get c\n.\n");
        assert!(!s.finished());
    }

    #[test]
    fn a_whole_request_waiting_is_work_to_do() {
        let t = Instant::now();
        let mut s = Session::new(t);
        assert!(!s.can_answer());
        s.received(b"get a\nget b\n", t);
        assert!(s.can_answer());
        s.answer(t, &mut echo);
        assert!(!s.can_answer(), "a reply is owed first");
        take(&mut s, t);
        assert!(s.can_answer());
        s.answer(t, &mut echo);
        take(&mut s, t);
        assert!(!s.can_answer());
        s.ended();
        assert!(s.can_answer());
    }

    #[test]
    fn a_line_past_the_bound_is_refused_and_closes() {
        let t = Instant::now();
        let mut s = Session::new(t);
        s.received(&vec![b'x'; s.room()], t);
        assert_eq!(s.room(), 0);
        assert!(!s.wants_input());
        s.answer(t, &mut echo);
        assert_eq!(
            take(&mut s, t),
            format!("! request longer than {MAX_LINE} bytes\n.\n")
        );
        assert!(s.finished());
        // The longest line accepted: MAX_LINE bytes with its newline.
        let mut s = Session::new(t);
        let mut line = vec![b'y'; MAX_LINE - 1];
        line.push(b'\n');
        s.received(&line, t);
        s.answer(t, &mut echo);
        assert!(take(&mut s, t).starts_with("= yyy"));
        assert!(!s.finished());
    }

    #[test]
    fn a_request_line_must_arrive_whole_within_the_timeout_of_its_first_byte() {
        let t = Instant::now();
        let mut s = Session::new(t);
        let first = t + Duration::from_secs(1);
        s.received(b"g", first);
        // More bytes do not extend it: a trickling client is closed all the same.
        for i in 2..6 {
            s.received(b"e", t + Duration::from_secs(i));
        }
        assert_eq!(s.deadline(), first + CLIENT_TIMEOUT);
        assert_eq!(
            s.expired(first + CLIENT_TIMEOUT - Duration::from_millis(1)),
            None
        );
        assert_eq!(s.expired(first + CLIENT_TIMEOUT), Some(Expired::Line));
        assert!(Expired::Line.farewell().is_some());
    }

    #[test]
    fn an_idle_client_expires_after_its_last_activity() {
        let t = Instant::now();
        let mut s = Session::new(t);
        assert_eq!(s.expired(t + CLIENT_TIMEOUT), Some(Expired::Idle));
        let later = t + Duration::from_secs(3);
        s.received(b"list\n", later);
        s.answer(later, &mut echo);
        s.sent(s.pending().len(), later);
        assert_eq!(s.expired(t + CLIENT_TIMEOUT), None);
        assert_eq!(s.expired(later + CLIENT_TIMEOUT), Some(Expired::Idle));
    }

    #[test]
    fn a_reply_not_taken_within_the_timeout_expires() {
        let t = Instant::now();
        let mut s = Session::new(t);
        s.received(b"list\n", t);
        s.answer(t, &mut |_| vec!["= x".repeat(10_000)]);
        // Taken slowly, a byte at a time: still due at the same time.
        for i in 1..5 {
            s.sent(1, t + Duration::from_secs(i));
        }
        assert_eq!(s.expired(t + CLIENT_TIMEOUT), Some(Expired::Reply));
        assert_eq!(Expired::Reply.farewell(), None);
    }

    #[test]
    fn a_last_request_without_newline_is_answered_at_the_end() {
        let t = Instant::now();
        let mut s = Session::new(t);
        s.received(b"get a", t);
        s.ended();
        assert!(!s.wants_input());
        s.answer(t, &mut echo);
        assert_eq!(take(&mut s, t), "= get a\n.\n");
        s.answer(t, &mut echo);
        assert!(s.finished());
    }

    #[test]
    fn the_connection_closes_after_max_requests() {
        let t = Instant::now();
        let mut s = Session::new(t);
        for _ in 0..MAX_REQUESTS {
            assert!(!s.finished());
            s.received(b"list\n", t);
            s.answer(t, &mut echo);
            take(&mut s, t);
        }
        assert!(s.finished());
        assert!(!s.wants_input());
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("levee-ctl-unit-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn check_socket_path_accepts_only_nothing_or_a_socket() {
        let dir = scratch("check");
        let missing = dir.join("ctl.sock");
        assert_eq!(check_socket_path(&missing), Ok(()));
        let socket = dir.join("live.sock");
        let _listener = UnixListener::bind(&socket).expect("bind");
        assert_eq!(check_socket_path(&socket), Ok(()));

        let file = dir.join("notes.txt");
        fs::write(&file, "keep me").expect("write");
        let err = check_socket_path(&file).expect_err("a regular file");
        assert!(
            err.contains("notes.txt") && err.contains("a regular file"),
            "{err}"
        );

        let link = dir.join("link.sock");
        std::os::unix::fs::symlink(&socket, &link).expect("symlink");
        let err = check_socket_path(&link).expect_err("a symlink, even to a socket");
        assert!(err.contains("a symbolic link"), "{err}");

        let err = check_socket_path(&dir).expect_err("a directory");
        assert!(err.contains("a directory"), "{err}");

        let err = check_socket_path(&dir.join("no/such/dir/ctl.sock")).expect_err("no dir");
        assert!(err.contains("does not exist"), "{err}");

        let err = check_socket_path(&file.join("ctl.sock")).expect_err("parent is a file");
        assert!(err.contains("not a directory"), "{err}");

        let long = dir.join("x".repeat(MAX_SOCKET_PATH));
        let err = check_socket_path(&long).expect_err("too long");
        assert!(err.contains("longer than a Unix socket path"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn bind_replaces_only_a_stale_socket() {
        let dir = scratch("bind");
        let stale = dir.join("stale.sock");
        drop(UnixListener::bind(&stale).expect("bind"));
        assert!(bind(&stale).is_ok());

        let live = dir.join("live.sock");
        let _other = UnixListener::bind(&live).expect("bind");
        let err = bind(&live).expect_err("answered");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);

        let file = dir.join("data");
        fs::write(&file, "precious").expect("write");
        let err = bind(&file).expect_err("a regular file");
        assert!(err.to_string().contains("is a regular file"), "{err}");
        assert_eq!(fs::read_to_string(&file).ok().as_deref(), Some("precious"));

        let link = dir.join("link");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        let err = bind(&link).expect_err("a symlink");
        assert!(err.to_string().contains("a symbolic link"), "{err}");
        assert!(fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()));
        let _ = fs::remove_dir_all(&dir);
    }
}
