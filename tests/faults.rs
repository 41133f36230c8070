//! The fault suite: what a hostile client, a bad backend or a careless operator can do, each as
//! a real attacker or a real broken peer on loopback, with the promise levee keeps and a figure.
//! Each test prints its figure (`cargo test --test faults -- --nocapture` shows them);
//! `docs/reliability.md` tabulates them.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::{Backend, pool, single, wait_until};
use levee::config::Balance;
use levee::stats::CloseReason;

fn figure(name: &str, text: String) {
    eprintln!("FIGURE {name}: {text}");
}

/// A backend that answers `GET /N` with N bytes of a known pattern, then closes.
fn sized_backend() -> Backend {
    Backend::spawn(|mut s| {
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&head);
        let size: usize = text
            .strip_prefix("GET /")
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let _ =
            s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").as_bytes());
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            if s.write_all(&chunk[..n]).is_err() {
                return;
            }
            left -= n;
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
    })
}

/// A client socket whose receive buffer is as small as the kernel allows.
fn small_window(addr: SocketAddr) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(4096).expect("rcvbuf");
    s.connect(&addr.into()).expect("connect");
    s.into()
}

#[test]
fn readers_that_stop_reading_hold_only_their_share_of_the_buffers() {
    const BIG: usize = 4 << 20;
    let backend = sized_backend();
    let mut cfg = single(pool("p", Balance::RoundRobin, &[backend.addr]));
    // A small pool, so a few dozen stalled readers could hold it all.
    cfg.engine.buffers = 256;
    cfg.engine.buffer_size = 16 * 1024;
    let engine = common::start(&cfg);
    let addr = engine.listener_addrs()[0];
    // Forty clients ask for 4 MiB each and never read a byte.
    let stalled: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = small_window(addr);
            s.write_all(format!("GET /{BIG} HTTP/1.1\r\n\r\n").as_bytes())
                .expect("request");
            s
        })
        .collect();
    wait_until("the stalled transfers underway", || {
        engine.totals().bytes_backend_to_client > 40 * 16 * 1024
    });
    // A client that reads gets its whole download.
    let started = Instant::now();
    let mut c = common::connect(addr);
    c.write_all(format!("GET /{BIG} HTTP/1.1\r\n\r\n").as_bytes())
        .expect("request");
    let got = common::read_all(&mut c).expect("download");
    let body = &got[got.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4..];
    assert_eq!(body.len(), BIG, "the whole body");
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, &b)| b == ((i % (64 * 1024)) % 251) as u8),
        "byte for byte"
    );
    figure(
        "stalled readers",
        format!(
            "40 readers stopped on 4 MiB each, 256 buffers of 16 KiB: a 4 MiB download took {} ms",
            started.elapsed().as_millis()
        ),
    );
    drop(stalled);
    engine.stop();
    engine.join().expect("join");
}

#[test]
fn a_client_cannot_get_a_backend_ejected() {
    // The backend answers the first line, then closes without reading what follows: with junk
    // unread, its kernel resets the connection.
    let backend = Backend::spawn(|mut s| {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while s.read(&mut byte).map(|n| n == 1).unwrap_or(false) && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let _ = s.write_all(b"ok\n");
        // Let the junk arrive, then close with it unread.
        let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
        thread::sleep(Duration::from_millis(50));
    });
    let mut p = pool("p", Balance::RoundRobin, &[backend.addr]);
    p.health.eject_failures = 3;
    let engine = common::start(&single(p));
    let addr = engine.listener_addrs()[0];
    let junk = vec![b'x'; 64 * 1024];
    for _ in 0..10 {
        let mut s = common::connect(addr);
        s.write_all(b"hello\n").expect("line");
        let mut ok = [0u8; 3];
        s.read_exact(&mut ok).expect("answer");
        let _ = s.write_all(&junk);
        let _ = common::read_all(&mut s);
    }
    let t = engine.totals();
    let ejections = engine.pools()[0].health.counts(0).ejections;
    figure(
        "junk then close",
        format!(
            "10 clients provoked backend resets ({} closed as backend_error): {ejections} ejections",
            t.closed(CloseReason::BackendError)
        ),
    );
    assert!(
        t.closed(CloseReason::BackendError) > 0,
        "the resets happened: {t}"
    );
    assert_eq!(ejections, 0, "a client's junk got the backend ejected");
    let mut s = common::connect(addr);
    s.write_all(b"legit\n").expect("line");
    let mut ok = [0u8; 3];
    s.read_exact(&mut ok)
        .expect("a legitimate client is served");
    engine.stop();
    engine.join().expect("join");
}

/// A backend that listens and never accepts, its accept queue full: SYNs to it go unanswered.
struct BlackHole {
    addr: SocketAddr,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl BlackHole {
    fn new() -> Self {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        s.listen(0).expect("listen");
        let listener: TcpListener = s.into();
        let addr = listener.local_addr().expect("addr");
        // Fill the accept queue; later SYNs are dropped. A filler's connect may itself hang,
        // so each gets a short timeout.
        let mut fillers = Vec::new();
        for _ in 0..4 {
            if let Ok(c) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                fillers.push(c);
            }
        }
        Self {
            addr,
            _listener: listener,
            _fillers: fillers,
        }
    }
}

#[test]
fn a_black_holed_backend_is_failed_over_within_the_connect_budget() {
    let good = Backend::named("good");
    let hole = BlackHole::new();
    let mut cfg = single(pool("p", Balance::RoundRobin, &[hole.addr, good.addr]));
    cfg.engine.connect_timeout = Duration::from_secs(2);
    cfg.engine.connect_retries = 1;
    // Passive ejection would hide the failover after a few attempts.
    cfg.pools[0].health.eject_failures = 0;
    let engine = common::start(&cfg);
    let addr = engine.listener_addrs()[0];
    let started = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            thread::spawn(move || {
                let mut s = common::connect(addr);
                common::read_all(&mut s).unwrap_or_default()
            })
        })
        .collect();
    let served = clients
        .into_iter()
        .map(|h| h.join().unwrap_or_default())
        .filter(|got| got == b"good")
        .count();
    let t = engine.totals();
    figure(
        "black-holed backend",
        format!(
            "8 clients round robin over a black hole and a good backend, connect_timeout 2 s, 1 retry: \
             {served} served in {} ms; {} connect timeouts, {} connect failures",
            started.elapsed().as_millis(),
            t.connect_timeouts,
            t.connect_failures
        ),
    );
    assert_eq!(
        served, 8,
        "every client failed over to the good backend: {t}"
    );
    assert_eq!(
        t.connect_timeouts, t.connect_failures,
        "each timed-out attempt counted once"
    );
    engine.stop();
    engine.join().expect("join");
}

/// CPU time (clock ticks) of the thread of `pid` named `name`.
fn thread_ticks(pid: u32, name: &str) -> Option<u64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
        return Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?);
    }
    None
}

#[test]
fn a_failing_poll_does_not_spin_the_health_thread() {
    let holes: Vec<BlackHole> = (0..24).map(|_| BlackHole::new()).collect();
    let dir = common::temp_dir("pollspin");
    let addr = common::refused_addr();
    let mut text = format!(
        "engine.cores = 0\nctl.socket = none\nlistener.web.addr = {addr}\nlistener.web.pool = web\n\
         pool.web.check.type = tcp\npool.web.check.interval = 10ms\npool.web.check.timeout = 5s\n"
    );
    for (i, h) in holes.iter().enumerate() {
        text.push_str(&format!("pool.web.backend.h{i}.addr = {}\n", h.addr));
    }
    let config = dir.join("levee.conf");
    std::fs::write(&config, text).expect("config");
    let mut child = common::levee()
        .args(["run", "-c"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn levee");
    let pid = child.id();
    wait_until("levee listens", || TcpStream::connect(addr).is_ok());
    wait_until("the health thread runs", || {
        thread_ticks(pid, "levee-health").is_some()
    });
    // Checks to black holes stay in flight (5 s timeout): two dozen sockets in every poll. An
    // open-file limit below that makes poll(2) fail with EINVAL on every call.
    let limit = libc::rlimit {
        rlim_cur: 16,
        rlim_max: 16,
    };
    // SAFETY: prlimit(2) on our own child with a valid rlimit; the old value is not read.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let before = thread_ticks(pid, "levee-health").expect("health thread");
    thread::sleep(Duration::from_secs(2));
    let used = thread_ticks(pid, "levee-health").expect("health thread") - before;
    figure(
        "failing poll",
        format!("health thread with poll(2) failing for 2 s: {used} clock ticks of CPU (of 200)"),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(used < 20, "the health thread spun: {used} ticks in 2 s");
}

#[test]
fn a_forwarder_whose_slots_are_all_held_refuses_rather_than_hangs() {
    let backend = Backend::echo();
    let mut cfg = single(pool("p", Balance::RoundRobin, &[backend.addr]));
    cfg.engine.max_conns = 8;
    let engine = common::start(&cfg);
    let addr = engine.listener_addrs()[0];
    // Eight idle clients hold every slot, as slow or idle attackers would.
    let held: Vec<TcpStream> = (0..8)
        .map(|i| {
            let mut s = common::connect(addr);
            s.write_all(&[i]).expect("write");
            let mut b = [0u8; 1];
            s.read_exact(&mut b).expect("echo");
            s
        })
        .collect();
    // Legitimate clients: each learns it was refused (a reset or a close), none hangs.
    let started = Instant::now();
    let refused = (0..20)
        .filter(|_| {
            let mut s = common::connect(addr);
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let _ = s.write_all(b"x");
            let mut b = [0u8; 1];
            // Refused: a reset or an end. Still waiting after 5 s: hanging.
            match s.read(&mut b) {
                Ok(0) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            }
        })
        .count();
    let t = engine.totals();
    figure(
        "every slot held",
        format!(
            "8 idle clients held all 8 slots: 20 newcomers refused in {} ms ({} over_capacity, \
             forwarders full now: {})",
            started.elapsed().as_millis(),
            t.closed(CloseReason::OverCapacity),
            t.full_now
        ),
    );
    assert_eq!(refused, 20);
    assert_eq!(t.closed(CloseReason::OverCapacity), 20, "{t}");
    assert_eq!(t.full_now, 1, "exposed as full");
    // A slot frees: new clients are served again.
    drop(held);
    wait_until("a newcomer served again", || {
        let mut s = common::connect(addr);
        let _ = s.write_all(b"y");
        let mut b = [0u8; 1];
        matches!(s.read(&mut b), Ok(1))
    });
    assert_eq!(engine.totals().full_now, 0);
    engine.stop();
    engine.join().expect("join");
}
