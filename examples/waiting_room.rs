//! A worker that is not `levee worker`: it takes connections over from a running levee's queue,
//! as `docs/overflow-protocol.md` describes, and answers each itself with a fixed reply (an HTTP
//! 503 by default) instead of relaying it to a backend: a "waiting room" page for clients that
//! would otherwise wait.
//!
//! It uses only levee-rings and system calls, never levee's own code, to show that the protocol
//! document is enough.
//!
//! ```sh
//! cargo run --example waiting_room -- /dev/shm/levee.1234 [--pool 0] [--count N] [--reply TEXT]
//! ```
//!
//! Run it with `overflow.workers = 0` (or alongside levee's workers, which then compete with it
//! for tickets). It exits after `--count` connections, or on SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use levee_rings::table::Table;
use levee_rings::{mpmc, spsc};

const DEFAULT_REPLY: &str = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n\
                             Content-Type: text/plain\r\nContent-Length: 29\r\n\
                             Connection: close\r\n\r\nYou are in the waiting room.\n";

struct Args {
    dir: PathBuf,
    pool: usize,
    count: Option<u64>,
    reply: Vec<u8>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut dir = None;
    let mut pool = 0;
    let mut count = None;
    let mut reply = DEFAULT_REPLY.as_bytes().to_vec();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pool" => pool = next_number(&mut args, "--pool")? as usize,
            "--count" => count = Some(next_number(&mut args, "--count")?),
            "--reply" => {
                reply = args
                    .next()
                    .ok_or("--reply needs the text to answer with")?
                    .into_bytes();
            }
            _ if dir.is_none() => dir = Some(PathBuf::from(a)),
            _ => return Err(format!("unexpected argument `{a}`")),
        }
    }
    Ok(Args {
        dir: dir.ok_or("give the running levee's overflow directory (stats.overflow.dir)")?,
        pool,
        count,
        reply,
    })
}

fn next_number(args: &mut impl Iterator<Item = String>, flag: &str) -> Result<u64, String> {
    args.next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{flag} needs a number"))
}

fn main() -> ExitCode {
    match parse_args().and_then(|a| serve(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("waiting_room: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the protocol's ticket says; only the fields this worker needs.
struct Ticket {
    forwarder: usize,
    entry: u32,
    generation: u64,
    pid: u32,
    fd: i32,
    start_ticks: u64,
    cookie: u64,
    deadline_ns: u64,
}

fn decode(b: &[u8]) -> Option<Ticket> {
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |o: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(w)
    };
    if b.len() != 128 || &b[0..4] != b"LVT1" || u32_at(12) != 0 {
        return None;
    }
    Some(Ticket {
        forwarder: usize::from(u16_at(6)),
        entry: u32_at(8),
        generation: u64_at(16) & ((1 << 48) - 1),
        pid: u32_at(24),
        fd: u32_at(28) as i32,
        start_ticks: u64_at(32),
        cookie: u64_at(40),
        deadline_ns: u64_at(64),
    })
}

/// The park word's encoding.
fn park_word(generation: u64, state: u64, low: u64) -> u64 {
    (generation << 16) | (state << 8) | low
}
const QUEUED: u64 = 1;
const TAKING: u64 = 2;
const CLOSING: u64 = 3;
const COMMITTED: u64 = 4;
const EXPIRED: u64 = 3;

fn serve(args: &Args) -> Result<(), String> {
    let conf = std::fs::read_to_string(args.dir.join("levee.conf"))
        .map_err(|e| format!("{}: {e}: is levee running there?", args.dir.display()))?;
    let max_queue: usize = conf
        .lines()
        .find_map(|l| l.strip_prefix("overflow.max_queue = "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("levee.conf has no overflow.max_queue")?;
    let load = Table::open(args.dir.join("load")).map_err(|e| e.to_string())?;
    let holder = load.holder().map_err(|e| e.to_string())?;
    let me = holder.index();
    if me == 0 {
        return Err("no levee is running on this directory".into());
    }
    let park = Table::open(args.dir.join("park")).map_err(|e| e.to_string())?;
    let forwarders = park.config().rows / max_queue;
    let queue = mpmc::Queue::open(args.dir.join(format!("queue.{}", args.pool)))
        .map_err(|e| e.to_string())?;
    let mut consumer = queue.consumer().map_err(|e| e.to_string())?;
    let mut notices: Vec<Option<spsc::Producer>> = (0..forwarders).map(|_| None).collect();
    eprintln!("waiting_room: worker {me} serving pool {}", args.pool);
    let mut served = 0;
    while args.count.is_none_or(|c| served < c) {
        let claim = match consumer.claim_wait(Some(Duration::from_millis(500))) {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => return Err(e.to_string()),
        };
        let Some(t) = decode(&claim) else {
            claim.ack();
            continue;
        };
        let Some(word) = (t.forwarder < forwarders && (t.entry as usize) < max_queue)
            .then(|| park.word(t.forwarder * max_queue + t.entry as usize, 0))
        else {
            claim.ack();
            continue;
        };
        if now_ns() >= t.deadline_ns {
            // Too late: ask levee to close it, as expired.
            let closing = park_word(t.generation, CLOSING, EXPIRED);
            let _ = word.compare_exchange(
                park_word(t.generation, QUEUED, 0),
                closing,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            claim.ack();
            continue;
        }
        if !take(word, t.generation, u64::from(me)) {
            claim.ack(); // gone: timed out, left, or someone else's
            continue;
        }
        let socket = match take_socket(&t) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("waiting_room: cannot take the socket: {e}");
                let _ = word.compare_exchange(
                    park_word(t.generation, TAKING, u64::from(me)),
                    park_word(t.generation, CLOSING, EXPIRED),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                claim.ack();
                continue;
            }
        };
        // The connection is ours only once the entry says so: levee may have given up on it.
        let committed = word
            .compare_exchange(
                park_word(t.generation, TAKING, u64::from(me)),
                park_word(t.generation, COMMITTED, u64::from(me)),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        claim.ack();
        if !committed {
            continue; // dropping `socket` closes only this copy
        }
        commit(&args.dir, me, &t, &mut notices[t.forwarder])?;
        answer(socket, &args.reply);
        served += 1;
    }
    Ok(())
}

fn take(word: &AtomicU64, generation: u64, me: u64) -> bool {
    word.compare_exchange(
        park_word(generation, QUEUED, 0),
        park_word(generation, TAKING, me),
        Ordering::AcqRel,
        Ordering::Acquire,
    )
    .is_ok()
}

/// pidfd_open, check the start time, pidfd_getfd, check the cookie.
fn take_socket(t: &Ticket) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, t.pid as libc::pid_t, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    if start_ticks(t.pid)? != t.start_ticks {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: pidfd_getfd(2) takes a pidfd, a descriptor number and flags.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), t.fd, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    let mut cookie = 0u64;
    let mut len = 8 as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            57, // SO_COOKIE
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc < 0 || cookie != t.cookie {
        return Err(std::io::Error::other("not the ticket's socket"));
    }
    Ok(fd)
}

fn start_ticks(pid: u32) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_ascii_whitespace().nth(19))
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| std::io::Error::other("unparsable /proc stat"))
}

/// The "committed" notice to the forwarder, which then closes its copy.
fn commit(
    dir: &Path,
    me: u32,
    t: &Ticket,
    ring: &mut Option<spsc::Producer>,
) -> Result<(), String> {
    if ring.is_none() {
        let path = dir.join(format!("notice.{me}.{}", t.forwarder));
        *ring = Some(spsc::Producer::open(&path).map_err(|e| e.to_string())?);
    }
    let mut notice = [0u8; 24];
    notice[0..4].copy_from_slice(&1u32.to_le_bytes());
    notice[4..8].copy_from_slice(&t.entry.to_le_bytes());
    notice[8..16].copy_from_slice(&t.generation.to_le_bytes());
    notice[16..24].copy_from_slice(&now_ns().to_le_bytes());
    if let Some(p) = ring.as_mut() {
        // A full ring means levee is behind: try again for a while. (Levee also finds the
        // COMMITTED entry on its own within 50 ms.)
        for _ in 0..100 {
            match p.push(&notice) {
                Err(levee_rings::PushError::Full) => std::thread::sleep(Duration::from_millis(1)),
                _ => break,
            }
        }
    }
    Ok(())
}

/// Reads the request head (briefly) and answers.
fn answer(socket: OwnedFd, reply: &[u8]) {
    let mut s = TcpStream::from(socket);
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = s.write_all(reply);
    let _ = s.shutdown(std::net::Shutdown::Write);
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
