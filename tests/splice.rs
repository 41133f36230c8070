//! Bulk directions spliced through a pipe (`engine.splice_after`), against real sockets on
//! loopback: the switch keeps every byte in order, the FIN and a reset still cross, a reader
//! that stops pushes back through the pipe, and the pipes are closed with their connections.
//!
//! The tests here run one at a time: one of them counts this process's pipes.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use common::*;
use levee::config::{Balance, Config};
use levee::engine::Engine;
use levee::stats::CloseReason;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Pipes this process holds open.
fn open_pipes() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("pipe:"))
        .count()
}

fn engine_for(backend: &Backend, splice_after: u32) -> Engine {
    let mut cfg: Config = single(pool("p", Balance::RoundRobin, &[backend.addr]));
    cfg.engine.splice_after = splice_after;
    start(&cfg)
}

/// Downloads 64 MiB through levee with `splice_after`; returns its totals.
fn download(splice_after: u32) -> levee::stats::Totals {
    const TOTAL: u64 = 64 << 20;
    let (backend, sums) = Backend::downloading(TOTAL);
    let engine = engine_for(&backend, splice_after);
    let mut c = connect(engine.listener_addrs()[0]);
    let (len, sum) = drain(&mut c);
    assert_eq!(len, TOTAL);
    assert_eq!(
        Some(sum),
        sums.recv_timeout(IO_TIMEOUT).ok(),
        "bytes differ"
    );
    drop(c);
    wait_until("the connection is closed", || engine.totals().active() == 0);
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.bytes_backend_to_client, TOTAL, "{t}");
    assert_eq!(t.closed(CloseReason::Done), 1, "{t}");
    t
}

#[test]
fn a_download_moves_to_a_pipe_byte_for_byte_and_the_pipe_is_closed_after() {
    let _one = one_at_a_time();
    let before = open_pipes();
    let t = download(256 * 1024);
    assert!(
        t.splices >= 1,
        "64 MiB in whole buffers never switched: {t:?}"
    );
    assert_eq!(open_pipes(), before, "a pipe outlived its connection");
    // The same download with splicing off: no direction switches.
    let t = download(0);
    assert_eq!(t.splices, 0, "{t:?}");
}

#[test]
fn an_upload_then_its_return_splice_each_way_and_each_fin_crosses() {
    let _one = one_at_a_time();
    // The backend takes the whole upload, then sends it back: one way at a time, as a bulk
    // upload and a bulk download do.
    const TOTAL: u64 = 64 << 20;
    let backend = Backend::spawn(|mut s| {
        let mut all = Vec::with_capacity(TOTAL as usize);
        let _ = s.read_to_end(&mut all);
        let _ = s.write_all(&all);
    });
    let engine = engine_for(&backend, 256 * 1024);
    let mut c = connect(engine.listener_addrs()[0]);
    let sent = send_pattern(&mut c, TOTAL);
    c.shutdown(Shutdown::Write).expect("shutdown");
    let (len, sum) = drain(&mut c);
    assert_eq!(
        (len, sum),
        (TOTAL, sent),
        "returned bytes differ from those sent"
    );
    wait_until("the connection is closed", || engine.totals().active() == 0);
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.bytes_client_to_backend, TOTAL, "{t}");
    assert_eq!(t.bytes_backend_to_client, TOTAL, "{t}");
    assert_eq!(t.closed(CloseReason::Done), 1, "{t}");
    assert!(t.splices >= 2, "both directions carry 64 MiB: {t:?}");
}

#[test]
fn a_reader_that_stops_holds_a_spliced_download_back_and_gets_all_of_it_later() {
    let _one = one_at_a_time();
    // The backend writes as fast as it may; the client reads the first 8 MiB (the download
    // switches to the pipe), stops, and the backend must soon be unable to write. Then it reads
    // the rest: nothing lost while the pipe was full.
    const TOTAL: u64 = 256 << 20;
    let (backend, sums) = Backend::downloading(TOTAL);
    let engine = engine_for(&backend, 256 * 1024);
    let mut c = connect(engine.listener_addrs()[0]);
    let mut head = vec![0u8; 8 << 20];
    c.read_exact(&mut head).expect("the first 8 MiB");
    wait_until("the download is spliced", || engine.totals().splices >= 1);
    // Stalled: what left the backend stops growing (the same count read fifty times running),
    // far below the 256 MiB it has to send.
    let mut last = engine.totals().bytes_backend_to_client;
    let mut still = 0;
    wait_until("what levee relays stops growing", || {
        let now = engine.totals().bytes_backend_to_client;
        still = if now == last { still + 1 } else { 0 };
        last = now;
        still >= 50
    });
    assert!(
        last < 64 << 20,
        "levee kept relaying to a reader that stopped: {last} bytes"
    );
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hasher::write(&mut h, &head);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = head.len() as u64;
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                std::hash::Hasher::write(&mut h, &buf[..n]);
                total += n as u64;
            }
            Err(e) => panic!("read after {total} bytes: {e}"),
        }
    }
    assert_eq!(total, TOTAL);
    assert_eq!(
        Some(std::hash::Hasher::finish(&h)),
        sums.recv_timeout(IO_TIMEOUT).ok(),
        "bytes differ"
    );
    drop(c);
    engine.stop();
    engine.join().expect("join");
}

#[test]
fn a_backend_reset_in_a_spliced_download_resets_the_client() {
    let _one = one_at_a_time();
    let before = open_pipes();
    let spliced = Arc::new(AtomicBool::new(false));
    let told = spliced.clone();
    let backend = Backend::spawn(move |mut s| {
        let _ = send_pattern(&mut s, 32 << 20);
        // Reset once told the download is spliced; unsent bytes are dropped with it.
        wait_until("told to reset", || told.load(Ordering::Acquire));
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    });
    let engine = engine_for(&backend, 256 * 1024);
    let c = connect(engine.listener_addrs()[0]);
    let reader = thread::spawn(move || {
        let mut c: TcpStream = c;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            match c.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n as u64,
                Err(e) => return Err((e.kind(), total)),
            }
        }
    });
    wait_until("the download is spliced", || engine.totals().splices >= 1);
    spliced.store(true, Ordering::Release);
    let ended = reader.join().expect("reader");
    assert!(
        matches!(ended, Err((ErrorKind::ConnectionReset, _))),
        "the backend's reset must reach the client as a reset: {ended:?}"
    );
    wait_until("the connection is closed", || engine.totals().active() == 0);
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::BackendError), 1, "{t}");
    assert_eq!(open_pipes(), before, "a pipe outlived its reset connection");
}

#[test]
fn a_client_that_resets_mid_splice_frees_its_pipe() {
    let _one = one_at_a_time();
    let before = open_pipes();
    // The backend would send 1 GiB; the client reads 4 MiB, then resets while the splices
    // (and their polls) are out.
    let (backend, _sums) = Backend::downloading(1 << 30);
    let engine = engine_for(&backend, 256 * 1024);
    let mut c = connect(engine.listener_addrs()[0]);
    let mut head = vec![0u8; 4 << 20];
    c.read_exact(&mut head).expect("the first 4 MiB");
    wait_until("the download is spliced", || engine.totals().splices >= 1);
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(c);
    wait_until("the connection is closed", || engine.totals().active() == 0);
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::ClientError), 1, "{t}");
    assert_eq!(open_pipes(), before, "a pipe outlived its reset connection");
}

#[test]
fn an_urgent_byte_in_a_spliced_upload_is_stepped_over_as_on_buffers() {
    let _one = one_at_a_time();
    // A client sends 8 MiB, one byte with MSG_OOB, then 8 MiB more. Receives into buffers drop
    // the urgent byte from the stream; a spliced direction must do the same, not stall at the
    // urgent mark (where splice stops) or take it for the end.
    const PART: u64 = 8 << 20;
    let backend = Backend::spawn(|mut s| {
        let (len, sum) = drain_until_fin(&mut s);
        let _ = s.write_all(format!("{len} {sum}").as_bytes());
    });
    let engine = engine_for(&backend, 256 * 1024);
    let mut c = connect(engine.listener_addrs()[0]);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    for part in 0..2u64 {
        let mut sent = 0;
        while sent < PART {
            let n = (PART - sent).min(buf.len() as u64) as usize;
            pattern(part * PART + sent, &mut buf[..n]);
            c.write_all(&buf[..n]).expect("upload");
            std::hash::Hasher::write(&mut h, &buf[..n]);
            sent += n as u64;
        }
        if part == 0 {
            wait_until("the upload is spliced", || engine.totals().splices >= 1);
            // SAFETY: send(2) of one byte from our own buffer on our own socket.
            let n = unsafe {
                libc::send(
                    std::os::fd::AsRawFd::as_raw_fd(&c),
                    b"!".as_ptr().cast(),
                    1,
                    libc::MSG_OOB,
                )
            };
            assert_eq!(n, 1, "send MSG_OOB");
        }
    }
    c.shutdown(Shutdown::Write).expect("shutdown");
    let mut answer = String::new();
    c.read_to_string(&mut answer).expect("answer");
    assert_eq!(
        answer,
        format!("{} {}", 2 * PART, std::hash::Hasher::finish(&h)),
        "the backend must get every byte but the urgent one, in order"
    );
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::Done), 1, "{t}");
}

#[test]
fn past_the_last_pipe_bulk_directions_stay_on_buffers_byte_for_byte() {
    let _one = one_at_a_time();
    const TOTAL: u64 = 64 << 20;
    let (backend, sums) = Backend::downloading(TOTAL);
    let mut cfg: Config = single(pool("p", Balance::RoundRobin, &[backend.addr]));
    cfg.engine.splice_after = 256 * 1024;
    cfg.engine.splice_pipes = 1;
    let engine = start(&cfg);
    let addr = engine.listener_addrs()[0];
    let clients: Vec<_> = (0..3)
        .map(|_| thread::spawn(move || drain(&mut connect(addr))))
        .collect();
    let mut got = Vec::new();
    for c in clients {
        let (len, sum) = c.join().expect("client");
        assert_eq!(len, TOTAL);
        got.push(sum);
    }
    for _ in 0..3 {
        let sum = sums.recv_timeout(IO_TIMEOUT).expect("backend sum");
        assert!(got.contains(&sum), "bytes differ");
    }
    wait_until("the connections are closed", || {
        engine.totals().active() == 0
    });
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::Done), 3, "{t}");
    assert!(t.splices >= 1, "{t:?}");
}

#[test]
fn a_client_upload_after_a_spliced_download_still_reaches_the_backend() {
    let _one = one_at_a_time();
    // The backend sends 16 MiB, then reads what the client sends until its FIN and answers
    // with the count: the other direction keeps working while one is piped.
    const DOWN: u64 = 16 << 20;
    let backend = Backend::spawn(|mut s| {
        let _ = send_pattern(&mut s, DOWN);
        let mut n = 0u64;
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k as u64,
            }
        }
        let _ = s.write_all(format!("{n}").as_bytes());
    });
    let engine = engine_for(&backend, 256 * 1024);
    let mut c = connect(engine.listener_addrs()[0]);
    let mut down = vec![0u8; DOWN as usize];
    c.read_exact(&mut down).expect("the download");
    c.write_all(b"twelve bytes").expect("upload");
    c.shutdown(Shutdown::Write).expect("shutdown");
    let mut answer = String::new();
    c.read_to_string(&mut answer).expect("answer");
    assert_eq!(answer, "12");
    engine.stop();
    let t = engine.join().expect("join");
    assert!(t.splices >= 1, "{t:?}");
    assert_eq!(t.closed(CloseReason::Done), 1, "{t}");
}

#[test]
fn small_answers_after_a_spliced_one_go_back_to_buffers_and_a_large_one_splices_again() {
    let _one = one_at_a_time();
    // A kept-alive connection: each request names a size, the backend answers that many
    // pattern bytes. 16 MiB, then fifty answers of 100 bytes, then 16 MiB again.
    let backend = Backend::spawn(|mut s| {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while s.read_exact(&mut byte).is_ok() {
            if byte[0] != b'\n' {
                line.push(byte[0]);
                continue;
            }
            let n: u64 = String::from_utf8_lossy(&line).parse().unwrap_or(0);
            line.clear();
            let _ = send_pattern(&mut s, n);
        }
    });
    let engine = engine_for(&backend, 256 * 1024);
    let mut c = connect(engine.listener_addrs()[0]);
    let mut ask = |n: u64| {
        c.write_all(format!("{n}\n").as_bytes()).expect("request");
        let mut got = vec![0u8; n as usize];
        c.read_exact(&mut got).expect("answer");
        let mut want = vec![0u8; n as usize];
        pattern(0, &mut want);
        assert!(got == want, "an answer of {n} bytes differs");
    };
    ask(16 << 20);
    for _ in 0..50 {
        ask(100);
    }
    ask(16 << 20);
    drop(c);
    wait_until("the connection is closed", || engine.totals().active() == 0);
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(
        t.splices, 2,
        "the answers' direction switches for each large answer, not for the small ones: {t:?}"
    );
}
