//! The fault suite: what a hostile client, a bad backend or a careless operator can do, each as
//! a real attacker or a real broken peer on loopback, with the promise levee keeps and a figure.
//! Each test prints its figure (`cargo test --test faults -- --nocapture` shows them);
//! `docs/reliability.md` tabulates them.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Backend, pool, single, wait_until};
use levee::config::Balance;
use levee::stats::CloseReason;

/// One probe at a time: together they would share the machine's ephemeral ports (100,000 short
/// connections leave tens of thousands in TIME_WAIT, the idle probe holds 20,000) and its two
/// CPUs, and a probe of what one levee does would measure the others.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn figure(name: &str, text: String) {
    eprintln!("FIGURE {name}: {text}");
}

/// CPU clock ticks (user + system) process `pid` has used so far.
fn process_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat[stat.rfind(')').map_or(0, |i| i + 2)..]
        .split(' ')
        .collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
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
    let _serial = serial();
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
    let _serial = serial();
    // The backend answers the first line, then closes without reading what follows: with junk
    // unread, its kernel resets the connection.
    let backend = Backend::spawn(|mut s| {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while s.read(&mut byte).map(|n| n == 1).unwrap_or(false) && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let _ = s.write_all(b"ok\n");
        // Once junk has arrived (peek returns without taking it), close with it unread.
        let mut junk = [0u8; 1];
        let _ = s.peek(&mut junk);
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
    let _serial = serial();
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
    let _serial = serial();
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
    let _serial = serial();
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
            // Refused so fast that the connect itself may see the reset.
            let mut s = match TcpStream::connect(addr) {
                Ok(s) => s,
                Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
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
    // A client can see its reset a moment before the forwarder's counter shows it.
    wait_until("every refusal is counted", || {
        engine.totals().closed(CloseReason::OverCapacity) >= refused as u64
    });
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

// ---- the probes that held already, kept so they keep holding -------------------------------

/// A `levee run` process, killed when dropped, so a failing test leaves none behind; with
/// its control socket and its log (stderr; shown instead with LEVEE_FAULTS_LOG set).
struct Levee(std::process::Child, std::path::PathBuf, std::path::PathBuf);

impl Levee {
    /// What levee has logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.2).unwrap_or_default()
    }

    /// A counter of the running levee, through `levee ctl`.
    fn stat(&self, key: &str) -> u64 {
        let out = common::levee()
            .args(["ctl", "-n", "-s"])
            .arg(&self.1)
            .arg(key)
            .output()
            .expect("levee ctl");
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{key}: {text:?} {}", String::from_utf8_lossy(&out.stderr)))
    }
}

impl std::ops::Deref for Levee {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Levee {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Levee {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `levee run` in front of `backends`, with `extra` configuration; its listening address.
fn run_levee(name: &str, backends: &[SocketAddr], extra: &str) -> (Levee, SocketAddr) {
    let dir = common::temp_dir(name);
    let addr = common::refused_addr();
    let ctl = dir.join("ctl.sock");
    let log = dir.join("levee.log");
    let mut text = format!(
        "engine.cores = 0\nctl.socket = {}\nlistener.web.addr = {addr}\nlistener.web.pool = web\n\
         pool.web.balance = round_robin\n{extra}",
        ctl.display()
    );
    for (i, b) in backends.iter().enumerate() {
        text.push_str(&format!("pool.web.backend.b{i}.addr = {b}\n"));
    }
    let config = dir.join("levee.conf");
    std::fs::write(&config, text).expect("config");
    let child = common::levee()
        .args(["run", "-c"])
        .arg(&config)
        .stderr(if std::env::var_os("LEVEE_FAULTS_LOG").is_some() {
            std::process::Stdio::inherit()
        } else {
            std::fs::File::create(&log).expect("log file").into()
        })
        .spawn()
        .expect("spawn levee");
    wait_until("levee listens", || TcpStream::connect(addr).is_ok());
    wait_until("levee's control socket is there", || ctl.exists());
    (Levee(child, ctl, log), addr)
}

/// The soft open-file limit of process `pid`, from /proc.
fn open_file_limit(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// How many of process `pid`'s descriptors are sockets.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| {
        dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count()
    })
}

/// VmRSS in KiB and open descriptors of process `pid`.
fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (rss, fds)
}

/// One echo exchange on a new connection: whether it came back whole.
fn echo_once(addr: SocketAddr, payload: &[u8]) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(common::IO_TIMEOUT));
    if s.write_all(payload).is_err() || s.shutdown(std::net::Shutdown::Write).is_err() {
        return false;
    }
    common::read_all(&mut s).is_ok_and(|got| got == payload)
}

#[test]
fn short_connections_leave_no_descriptor_or_memory_behind() {
    let _serial = serial();
    const CONNECTIONS: usize = 100_000;
    let backend = Backend::echo();
    let (mut levee, addr) = run_levee("short", &[backend.addr], "pool.web.overflow = reject\n");
    // Warm up, so what was allocated once (buffers touched, threads' stacks) is not counted.
    assert!((0..200).all(|_| echo_once(addr, b"warm")));
    let (rss0, fds0) = rss_and_fds(levee.id());
    let started = Instant::now();
    let failed: usize = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(move || {
                    (0..CONNECTIONS / 4)
                        .filter(|_| !echo_once(addr, b"ping"))
                        .count()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or(CONNECTIONS))
            .sum()
    });
    let elapsed = started.elapsed();
    wait_until("levee back to its descriptors", || {
        rss_and_fds(levee.id()).1 <= fds0
    });
    let (rss1, fds1) = rss_and_fds(levee.id());
    figure(
        "100k short connections",
        format!(
            "{CONNECTIONS} echo connections in {:.1} s, {failed} failed; levee RSS {} -> {} KiB, \
             descriptors {fds0} -> {fds1}",
            elapsed.as_secs_f64(),
            rss0,
            rss1
        ),
    );
    let _ = levee.kill();
    let _ = levee.wait();
    assert_eq!(failed, 0);
    assert!(fds1 <= fds0, "descriptors leaked: {fds0} -> {fds1}");
    assert!(rss1 < rss0 + 16 * 1024, "memory grew: {rss0} -> {rss1} KiB");
}

#[test]
fn idle_connections_cost_no_memory_to_speak_of() {
    let _serial = serial();
    // Ten thousand: the test holds the clients, a backend process of its own holds the other
    // ends, and levee (which raises its own limit to what max_conns needs where it may) holds
    // twenty thousand descriptors.
    const IDLE: usize = 10_000;
    let backend = common::BackendProcess::spawn(
        "child_backend_entry",
        "hold",
        common::refused_addr(),
        common::Mode::Hold,
    );
    let (levee, addr) = run_levee(
        "idle",
        &[backend.addr],
        "pool.web.overflow = reject\nengine.max_conns = 10100\n",
    );
    let (rss0, fds0) = rss_and_fds(levee.id());
    let sockets0 = sockets(levee.id());
    // Levee raises its open-file limit to what max_conns needs where it may (with
    // CAP_SYS_RESOURCE); elsewhere the hard limit caps how many it can hold.
    let limit = open_file_limit(levee.id());
    let count = IDLE.min(limit.saturating_sub(fds0 + 16) / 2);
    if count < IDLE {
        eprintln!(
            "NOTE: levee's open-file limit is {limit}: {count} idle connections, not {IDLE} \
             (raise the hard limit, or give levee CAP_SYS_RESOURCE, for the full count)"
        );
    }
    let idle: Vec<TcpStream> = (0..count).map(|_| common::connect(addr)).collect();
    // Levee connects each to the backend at once: wait for both descriptors of every one.
    wait_until("every idle connection reaches the backend", || {
        rss_and_fds(levee.id()).1 >= fds0 + 2 * count
    });
    let (rss1, fds1) = rss_and_fds(levee.id());
    let sockets1 = sockets(levee.id());
    figure(
        "idle connections",
        format!(
            "{count} idle connections: levee RSS {rss0} -> {rss1} KiB ({:.2} KiB each), \
             descriptors {fds0} -> {fds1}",
            (rss1.saturating_sub(rss0)) as f64 / count as f64
        ),
    );
    // One more still gets through, past ten thousand idle ones.
    let mut late = common::connect(addr);
    late.write_all(b"x").expect("write");
    wait_until("the late connection reaches the backend too", || {
        rss_and_fds(levee.id()).1 >= fds0 + 2 * count + 2
    });
    drop(late);
    drop(idle);
    // A client and a backend socket each; run_levee's probe connection, half-closed towards
    // a backend that never reads, may hold two more until the idle timeout.
    assert!(
        (2 * count..=2 * count + 2).contains(&(sockets1 - sockets0)),
        "a client and a backend socket each: {sockets0} -> {sockets1} sockets"
    );
    assert!(
        rss1 < rss0 + (count as u64 * 4),
        "more than 4 KiB per idle connection: {rss0} -> {rss1} KiB"
    );
}

#[test]
fn a_backend_killed_under_load_costs_at_most_what_it_held() {
    let _serial = serial();
    let mut a = common::BackendProcess::spawn(
        "child_backend_entry",
        "a",
        common::refused_addr(),
        common::Mode::Named,
    );
    let b = common::BackendProcess::spawn(
        "child_backend_entry",
        "b",
        common::refused_addr(),
        common::Mode::Named,
    );
    let (mut levee, addr) = run_levee("kill9", &[a.addr, b.addr], "");
    let mut failed = 0;
    let mut served = 0;
    for i in 0..300 {
        if i == 100 {
            a.kill();
        }
        match common::ask(addr) {
            Ok(_) => served += 1,
            Err(_) => failed += 1,
        }
    }
    figure(
        "backend kill -9",
        format!(
            "300 sequential connections, one of two backends killed at the 100th: {served} served, {failed} failed"
        ),
    );
    let _ = levee.kill();
    let _ = levee.wait();
    drop(b);
    // Sequential requests: at most the one in flight at the kill may fail; later ones are
    // retried on the other backend.
    assert!(failed <= 1, "{failed} failed");
}

/// The entry of the backend processes above (this binary, re-run with a role); in a normal run
/// it checks that such a process answers with its name.
#[test]
fn child_backend_entry() {
    common::child_backend_main();
    let b = common::BackendProcess::spawn(
        "child_backend_entry",
        "x",
        common::refused_addr(),
        common::Mode::Named,
    );
    assert_eq!(common::ask(b.addr).expect("the backend answers"), "x");
}

#[test]
fn a_backend_that_never_answers_is_closed_at_the_idle_timeout() {
    let _serial = serial();
    // Accepts, never reads, never writes.
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    let silent = Backend::spawn(move |s| {
        if let Ok(mut v) = keep.lock() {
            v.push(s);
        }
    });
    let mut cfg = single(pool("p", Balance::RoundRobin, &[silent.addr]));
    cfg.engine.idle_timeout = Duration::from_millis(400);
    let engine = common::start(&cfg);
    let addr = engine.listener_addrs()[0];
    let started = Instant::now();
    let mut s = common::connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
    let got = common::read_all(&mut s).unwrap_or_default();
    figure(
        "silent backend",
        format!(
            "a backend that accepts and never answers: the client closed after {} ms (idle_timeout 400 ms)",
            started.elapsed().as_millis()
        ),
    );
    assert!(got.is_empty());
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::IdleTimeout), 1, "{t}");
}

#[test]
fn resets_mid_transfer_close_both_sides_and_are_counted() {
    let _serial = serial();
    const BIG: usize = 8 << 20;
    let backend = sized_backend();
    let engine = common::start(&single(pool("p", Balance::RoundRobin, &[backend.addr])));
    let addr = engine.listener_addrs()[0];
    // A client that resets after the first bytes of a large download.
    let mut c = common::connect(addr);
    c.write_all(format!("GET /{BIG} HTTP/1.1\r\n\r\n").as_bytes())
        .expect("request");
    let mut first = [0u8; 4096];
    c.read_exact(&mut first).expect("first bytes");
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(c);
    wait_until("the reset counted", || {
        engine.totals().closed(CloseReason::ClientError) == 1
    });
    // A backend that resets mid-transfer.
    let resetting = Backend::spawn(|mut s| {
        let mut head = [0u8; 64];
        let _ = s.read(&mut head);
        let _ = s.write_all(&vec![7u8; 256 * 1024]);
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    });
    let engine2 = common::start(&single(pool("p", Balance::RoundRobin, &[resetting.addr])));
    let mut c = common::connect(engine2.listener_addrs()[0]);
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("request");
    let mut got = Vec::new();
    let end = c.read_to_end(&mut got);
    let t1 = engine.totals();
    let t2 = engine2.totals();
    figure(
        "resets mid-transfer",
        format!(
            "client reset mid-download: client_error {}, active {}; backend reset after {} bytes: \
             the client saw {:?}, backend_error {}",
            t1.closed(CloseReason::ClientError),
            t1.active(),
            got.len(),
            end.as_ref().map(|_| "an end").map_err(|e| e.kind()),
            t2.closed(CloseReason::BackendError)
        ),
    );
    assert!(end.is_err(), "the client learns the transfer failed");
    assert_eq!(t2.closed(CloseReason::BackendError), 1, "{t2}");
    assert_eq!(t1.active(), 0);
    engine.stop();
    engine.join().expect("join");
    engine2.stop();
    engine2.join().expect("join");
}

#[test]
fn sigterm_mid_transfer_lets_the_transfer_finish() {
    let _serial = serial();
    const BIG: usize = 16 << 20;
    let backend = sized_backend();
    let (mut levee, addr) = run_levee("sigterm", &[backend.addr], "engine.drain_timeout = 20s\n");
    let mut c = common::connect(addr);
    c.write_all(format!("GET /{BIG} HTTP/1.1\r\n\r\n").as_bytes())
        .expect("request");
    let mut first = [0u8; 4096];
    c.read_exact(&mut first).expect("first bytes");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(levee.id() as i32, libc::SIGTERM) };
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("the rest");
    let status = levee.wait().expect("levee");
    let total = first.len() + rest.len();
    figure(
        "SIGTERM mid-transfer",
        format!(
            "a 16 MiB download under way at SIGTERM: {total} bytes received; levee exited {status}"
        ),
    );
    assert!(total > BIG, "head and the whole body");
    assert!(status.success());
}

#[test]
fn running_out_of_descriptors_does_not_spin_and_recovers() {
    let _serial = serial();
    let backend = Backend::echo();
    let (levee, addr) = run_levee("emfile", &[backend.addr], "pool.web.overflow = reject\n");
    let pid = levee.id();
    // With the limit just above the lowest free descriptor, levee can open exactly one more
    // (a client's), and then none for its backend.
    let free = lowest_free_fd(pid);
    let (_, fds) = rss_and_fds(pid);
    let set = |n: usize| set_open_file_limit(pid, n);
    assert_eq!(set(free + 1), 0);
    let clients: Vec<_> = (0..20)
        .map(|_| thread::spawn(move || echo_once(addr, b"later")))
        .collect();
    // The first client takes the last descriptor; its backend socket finds none.
    wait_until("levee holds its last descriptor", || {
        rss_and_fds(pid).1 > fds
    });
    let before = process_ticks(pid);
    thread::sleep(Duration::from_secs(1));
    let used = process_ticks(pid) - before;
    assert_eq!(set(20_000), 0);
    let served = clients
        .into_iter()
        .map(|h| h.join().unwrap_or(false))
        .filter(|&ok| ok)
        .count();
    figure(
        "descriptor exhaustion",
        format!(
            "20 clients while levee had no descriptor left: {used} clock ticks of CPU in 1 s; \
             {served} served once the limit was raised"
        ),
    );
    drop(levee);
    assert!(
        used < 20,
        "spun at the descriptor limit: {used} ticks in 1 s"
    );
    // The first client accepted finds no descriptor for its backend and waits, with the
    // others in the backlog: all are served once descriptors are there again.
    assert_eq!(served, 20, "recovered: {served} of 20 served");
}

/// The lowest descriptor number process `pid` has free.
fn lowest_free_fd(pid: u32) -> usize {
    let used: std::collections::HashSet<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("levee's descriptors")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !used.contains(n)).unwrap_or(0)
}

/// Sets the soft open-file limit of process `pid` (the hard one stays 20,000); 0 on success.
fn set_open_file_limit(pid: u32, n: usize) -> i32 {
    let limit = libc::rlimit {
        rlim_cur: n as u64,
        rlim_max: 20_000,
    };
    // SAFETY: prlimit(2) on our own child with a valid rlimit.
    unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    }
}

#[test]
fn out_of_descriptors_levee_skips_checks_rather_than_fail_its_backends() {
    let _serial = serial();
    let backend = Backend::echo();
    let (levee, _addr) = run_levee(
        "checks-emfile",
        &[backend.addr],
        "pool.web.overflow = reject\npool.web.check.type = tcp\npool.web.check.interval = 20ms\n",
    );
    let key = |what: &str| format!("stats.pool.web.backend.b0.{what}");
    wait_until("a check passed", || levee.stat(&key("checks_passed")) > 0);
    let pid = levee.id();
    let failed = levee.stat(&key("checks_failed"));
    // No descriptor left for a check's socket (nor for levee ctl, whose spare may lie above a
    // limit lowered from outside: the log says when enough checks were skipped).
    assert_eq!(set_open_file_limit(pid, lowest_free_fd(pid)), 0);
    // Far more than `check.fall` (3): had they counted, the backend would be down. The limit
    // is applied again while waiting: read while a check's own socket was open, it left that
    // socket's descriptor free for the next check once closed.
    wait_until("checks skipped", || {
        let _ = set_open_file_limit(pid, lowest_free_fd(pid));
        levee.log().contains("skipped=16")
    });
    assert_eq!(set_open_file_limit(pid, 20_000), 0);
    let status = {
        let out = common::levee()
            .args(["ctl", "-n", "-s"])
            .arg(&levee.1)
            .arg(key("status"))
            .output()
            .expect("levee ctl");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let failed_after = levee.stat(&key("checks_failed"));
    let passed = levee.stat(&key("checks_passed"));
    wait_until("checks pass again", || {
        levee.stat(&key("checks_passed")) > passed
    });
    figure(
        "checks without descriptors",
        format!(
            "levee with no descriptor left: {} checks skipped, {} more failed, backend {status}",
            levee.stat(&key("checks_skipped")),
            failed_after - failed
        ),
    );
    assert_eq!(
        failed_after, failed,
        "levee's shortage counted against the backend"
    );
    assert_eq!(status, "up");
}

/// Whether `tool` runs here; where it does not, the test that needs it fails saying so, or with
/// LEVEE_ALLOW_SKIP=1 passes as skipped, saying so.
fn have(tool: &str) -> bool {
    if Command::new(tool).arg("-V").output().is_ok() {
        return true;
    }
    common::skip(&format!(
        "`{tool}` is not installed (apt-get install {tool})"
    ));
    false
}

#[test]
fn refused_io_uring_submissions_are_counted_and_survived() {
    let _serial = serial();
    // strace's fault injection makes every io_uring_enter of levee fail with ENOMEM while it is
    // attached: what the kernel does when it cannot allocate for a submission.
    if !have("strace") {
        return;
    }
    let backend = Backend::echo();
    let (levee, addr) = run_levee("submit", &[backend.addr], "pool.web.overflow = reject\n");
    assert!(echo_once(addr, b"before"));
    let mut strace = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=io_uring_enter"])
        .args(["-e", "inject=io_uring_enter:error=ENOMEM", "-p"])
        .arg(levee.id().to_string())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("strace");
    wait_until("levee counts refused submissions", || {
        levee.stat("stats.ring_errors") >= 3
    });
    // SIGTERM detaches strace from levee, which goes on.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(strace.id() as i32, libc::SIGTERM) };
    let _ = strace.wait();
    let errors = levee.stat("stats.ring_errors");
    let served = (0..20).filter(|_| echo_once(addr, b"after")).count();
    let mut levee = levee;
    let alive = levee.try_wait().expect("levee").is_none();
    figure(
        "refused submissions",
        format!(
            "every io_uring_enter failing with ENOMEM while traced: {errors} counted in \
             stats.ring_errors, levee alive: {alive}; {served} of 20 served once it stopped"
        ),
    );
    assert!(alive, "levee died of a refused submission");
    assert_eq!(served, 20);
}

/// Clients that send part of a PROXY header and stop cost nothing while they wait: the
/// forwarder sleeps until more bytes come (SO_RCVLOWAT), it does not look again and again.
#[test]
fn clients_stuck_in_a_partial_proxy_header_cost_no_cpu() {
    const CLIENTS: usize = 1000;
    let _serial = serial();
    let backend = Backend::echo();
    let (levee, addr) = run_levee(
        "partial-header",
        &[backend.addr],
        "listener.web.proxy_protocol = v1\nlistener.web.proxy_timeout = 1h\n",
    );
    let pid = levee.id();
    let stuck: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"PROXY TCP4 198.51.100.").expect("part");
            s
        })
        .collect();
    wait_until("levee holds them all", || {
        levee.stat("stats.active") == CLIENTS as u64
    });
    let before = process_ticks(pid);
    thread::sleep(Duration::from_secs(1));
    let used = process_ticks(pid) - before;
    figure(
        "partial PROXY headers",
        format!("{CLIENTS} clients stopped inside their header: {used} clock ticks of CPU in 1 s"),
    );
    assert!(
        used <= 20,
        "the forwarder spins on partial headers: {used} ticks"
    );
    drop(stuck);
}
