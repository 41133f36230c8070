//! The overflow tier end to end: real sockets on loopback, a real levee engine, real worker
//! processes (the `levee` binary), and a backend that counts its own concurrent connections.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{IO_TIMEOUT, pool, single, wait_until};
use levee::config::{Balance, Config, Overflow};
use levee::engine::{Engine, Options};
use levee::pool::{Left, Refused};
use levee::stats::CloseReason;

/// A backend that answers `GET /ID` with a body naming ID after holding the request for
/// `hold` (or, while `gate` is shut, until it opens), and counts how many connections it holds
/// at once: the oracle for "never above the cap", kept by the backend itself.
struct CountingBackend {
    addr: SocketAddr,
    current: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    /// Request ids in the order they reached the backend.
    order: Arc<Mutex<Vec<u32>>>,
    gate: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl CountingBackend {
    fn start(hold: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let b = Self {
            addr,
            current: Arc::default(),
            peak: Arc::default(),
            accepted: Arc::default(),
            order: Arc::default(),
            gate: Arc::new(AtomicBool::new(true)),
            stop: Arc::default(),
        };
        let (current, peak, accepted, order, gate, stop) = (
            b.current.clone(),
            b.peak.clone(),
            b.accepted.clone(),
            b.order.clone(),
            b.gate.clone(),
            b.stop.clone(),
        );
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(1));
                    continue;
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let (current, order, gate) = (current.clone(), order.clone(), gate.clone());
                thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                    let mut head = Vec::new();
                    let mut buf = [0u8; 512];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let id = request_id(&head);
                    if let Some(id) = id {
                        order.lock().expect("order").push(id);
                    }
                    thread::sleep(hold);
                    let deadline = Instant::now() + IO_TIMEOUT;
                    while !gate.load(Ordering::Acquire) && Instant::now() < deadline {
                        thread::sleep(Duration::from_millis(2));
                    }
                    // Counted out before the reply, so that a client that has its reply knows
                    // the backend no longer counts it.
                    current.fetch_sub(1, Ordering::SeqCst);
                    if let Some(id) = id {
                        let body = format!("served request {id}\n");
                        let _ = s.write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        );
                    }
                });
            }
        });
        b
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    fn current(&self) -> usize {
        self.current.load(Ordering::SeqCst)
    }
}

impl Drop for CountingBackend {
    fn drop(&mut self) {
        self.gate.store(true, Ordering::Release);
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn request_id(head: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(head).ok()?;
    text.strip_prefix("GET /")?.split(' ').next()?.parse().ok()
}

/// What one client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The exact reply for its request.
    Served,
    /// Anything else: reset, closed early, wrong bytes.
    Failed(String),
}

fn expected_reply(id: u32) -> Vec<u8> {
    let body = format!("served request {id}\n");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends request `id` on `s` and reads the reply to the end.
fn request_on(mut s: TcpStream, id: u32) -> Outcome {
    let _ = s.set_read_timeout(Some(IO_TIMEOUT * 2));
    if let Err(e) = s.write_all(format!("GET /{id} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()) {
        return Outcome::Failed(format!("write: {e}"));
    }
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) if got == expected_reply(id) => Outcome::Served,
        Ok(_) => Outcome::Failed(format!("got {:?}", String::from_utf8_lossy(&got))),
        Err(e) => Outcome::Failed(format!("read: {e}")),
    }
}

/// Opens `n` connections one after another (so their arrival order is known), then has each
/// send its request and read its reply on a thread of its own. Returns each one's outcome.
fn burst(addr: SocketAddr, ids: std::ops::Range<u32>) -> Vec<thread::JoinHandle<Outcome>> {
    ids.map(|id| {
        let s = TcpStream::connect(addr);
        thread::spawn(move || match s {
            Ok(s) => request_on(s, id),
            Err(e) => Outcome::Failed(format!("connect: {e}")),
        })
    })
    .collect()
}

fn outcomes(handles: Vec<thread::JoinHandle<Outcome>>) -> Vec<Outcome> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or(Outcome::Failed("client panicked".into()))
        })
        .collect()
}

fn failures(o: &[Outcome]) -> Vec<(usize, String)> {
    o.iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Outcome::Served => None,
            Outcome::Failed(why) => Some((i, why.clone())),
        })
        .collect()
}

fn capped(backend: &CountingBackend, cap: u32) -> Config {
    let mut p = pool("p", Balance::RoundRobin, &[backend.addr]);
    p.backends[0].max_conns = cap;
    single(p)
}

fn with_workers(cfg: &Config) -> Engine {
    Engine::start_with(
        cfg,
        &Options {
            worker_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_levee"))),
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("engine failed to start: {e}"))
}

/// Waits until `n` worker processes serve the engine's queues, as its forwarders see them.
fn wait_for_workers(engine: &Engine, n: usize) {
    let tier = engine.overflow().expect("an overflow tier").clone();
    wait_until(&format!("{n} workers serving"), || {
        tier.shared.load.count(levee::pool::table::SETTINGS_ROW) >= n as u64
    });
}

fn queue_stat(engine: &Engine, how: Left) -> u64 {
    engine.pools()[0].queue.left(how)
}

#[test]
fn a_burst_twenty_times_the_cap_is_served_whole_without_exceeding_it() {
    let backend = CountingBackend::start(Duration::from_millis(20));
    let cfg = capped(&backend, 8);
    let engine = with_workers(&cfg);
    wait_for_workers(&engine, 1);
    let addr = engine.listener_addrs()[0];

    let results = outcomes(burst(addr, 0..400));

    assert_eq!(
        failures(&results),
        vec![],
        "every client served, byte-exact"
    );
    assert!(
        backend.peak() <= 8,
        "backend saw {} at once",
        backend.peak()
    );
    assert!(backend.peak() >= 2, "the queue was actually used");
    // Served in arrival order, give or take the connections in service at once: each request
    // reaches the backend within a window of the cap around its arrival position.
    let order = backend.order.lock().expect("order").clone();
    assert_eq!(order.len(), 400);
    let worst = order
        .iter()
        .enumerate()
        .map(|(position, &id)| (position as i64 - i64::from(id)).unsigned_abs())
        .max()
        .unwrap_or(0);
    assert!(
        worst <= 2 * 8,
        "a request reached the backend {worst} places out of order"
    );
    engine.stop();
    // Both counts are final once the engine has stopped (a handoff is counted when the
    // forwarder reads its notice).
    let pools = engine.pools().to_vec();
    let t = engine.join().expect("join");
    let served = pools[0].queue.left(Left::Served);
    assert!(served > 0, "nothing went through the queue");
    assert_eq!(t.closed(CloseReason::HandedOff), served, "{t}");
    assert_eq!(
        t.closed(CloseReason::Done) + served,
        400,
        "each connection either relayed here or handed off: {t}"
    );
}

#[test]
fn two_forwarders_and_two_workers_share_one_cap() {
    let backend = CountingBackend::start(Duration::from_millis(10));
    let mut cfg = capped(&backend, 8);
    cfg.engine.cores = levee::config::CoreSet::List(vec![0, 1]);
    cfg.overflow.workers = 2;
    let engine = with_workers(&cfg);
    wait_for_workers(&engine, 2);
    let addr = engine.listener_addrs()[0];
    // Two bursts at once, from two threads, so both forwarders and both workers are busy.
    let a = thread::spawn(move || outcomes(burst(addr, 0..150)));
    let b = thread::spawn(move || outcomes(burst(addr, 1000..1150)));
    let (a, b) = (a.join().expect("a"), b.join().expect("b"));
    assert_eq!(failures(&a), vec![]);
    assert_eq!(failures(&b), vec![]);
    assert!(
        backend.peak() <= 8,
        "backend saw {} at once",
        backend.peak()
    );
    assert!(queue_stat(&engine, Left::Served) > 0);
    engine.stop();
    engine.join().expect("join");
}

#[test]
fn overflow_reject_refuses_what_has_no_room_and_serves_the_rest() {
    let backend = CountingBackend::start(Duration::ZERO);
    backend.gate.store(false, Ordering::Release);
    let mut cfg = capped(&backend, 2);
    cfg.pools[0].overflow = Overflow::Reject;
    cfg.listeners[0].refuse_payload = b"HTTP/1.1 503 Service Unavailable\r\n\r\n".to_vec();
    let engine = common::start(&cfg);
    assert!(
        engine.overflow().is_none(),
        "no pool queues: no overflow tier"
    );
    let addr = engine.listener_addrs()[0];
    let held = burst(addr, 0..2);
    wait_until("two requests at the backend", || backend.current() == 2);
    let mut refused = Vec::new();
    for _ in 0..3 {
        let mut s = common::connect(addr);
        refused.push(common::read_all(&mut s).unwrap_or_default());
    }
    for r in &refused {
        assert_eq!(r, b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
    }
    backend.gate.store(true, Ordering::Release);
    assert_eq!(failures(&outcomes(held)), vec![]);
    assert_eq!(engine.pools()[0].queue.refused(Refused::Rejected), 3);
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::Rejected), 3, "{t}");
    assert_eq!(t.closed(CloseReason::Done), 2, "{t}");
}

#[test]
fn a_worker_killed_mid_burst_loses_only_what_it_relayed_and_no_slot() {
    let backend = CountingBackend::start(Duration::from_millis(30));
    let cfg = capped(&backend, 8);
    let engine = with_workers(&cfg);
    wait_for_workers(&engine, 1);
    let addr = engine.listener_addrs()[0];
    let clients = burst(addr, 0..200);
    wait_until("the worker relays", || {
        queue_stat(&engine, Left::Served) >= 20
    });
    let pid = engine.worker_pids()[0];
    // SAFETY: kill(2) on the worker's pid, a child of this process not yet reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let results = outcomes(clients);
    let failed = failures(&results);
    assert!(
        failed.len() <= 8,
        "only the connections the killed worker relayed may fail: {failed:?}"
    );
    assert!(
        backend.peak() <= 8,
        "backend saw {} at once",
        backend.peak()
    );
    assert!(
        engine.worker_pids().first().is_some_and(|&p| p != pid),
        "a replacement was started"
    );
    // No slot leaked: the killed worker's are reclaimed, and the backend can be filled again.
    wait_until("no connection counted at the backend", || {
        engine.pools()[0].load.active(0) == 0
    });
    backend.gate.store(false, Ordering::Release);
    let peak_before = backend.peak.swap(0, Ordering::SeqCst);
    assert!(peak_before <= 8);
    let again = burst(addr, 1000..1012);
    wait_until("the backend full again", || backend.current() == 8);
    backend.gate.store(true, Ordering::Release);
    assert_eq!(failures(&outcomes(again)), vec![]);
    assert_eq!(backend.peak(), 8);
    engine.stop();
    engine.join().expect("join");
}

/// An engine whose only backend (cap 1) is busy until its gate opens, without workers.
fn busy_backend(
    tweak: impl FnOnce(&mut Config),
) -> (CountingBackend, Engine, thread::JoinHandle<Outcome>) {
    let backend = CountingBackend::start(Duration::ZERO);
    backend.gate.store(false, Ordering::Release);
    let mut cfg = capped(&backend, 1);
    tweak(&mut cfg);
    let engine = common::start(&cfg);
    let addr = engine.listener_addrs()[0];
    let busy = burst(addr, 0..1).pop().expect("one");
    wait_until("the backend busy", || backend.current() == 1);
    (backend, engine, busy)
}

#[test]
fn queued_connections_expire_at_the_queue_timeout_with_the_refuse_payload() {
    let (backend, engine, busy) = busy_backend(|cfg| {
        cfg.overflow.queue_timeout = Duration::from_millis(300);
        cfg.listeners[0].refuse_payload = b"busy, retry in ${retry_after} s\n".to_vec();
    });
    let addr = engine.listener_addrs()[0];
    let waiting: Vec<_> = (0..3).map(|_| common::connect(addr)).collect();
    for mut s in waiting {
        // No drain rate measured (nothing was served): the queue timeout, rounded up.
        assert_eq!(
            common::read_all(&mut s).expect("read"),
            b"busy, retry in 1 s\n"
        );
    }
    assert_eq!(queue_stat(&engine, Left::Expired), 3);
    assert_eq!(backend.accepted.load(Ordering::Relaxed), 1);
    backend.gate.store(true, Ordering::Release);
    assert_eq!(busy.join().expect("busy"), Outcome::Served);
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::QueueTimeout), 3, "{t}");
}

#[test]
fn a_full_queue_refuses_newcomers() {
    let (backend, engine, busy) = busy_backend(|cfg| cfg.overflow.max_queue = 2);
    let addr = engine.listener_addrs()[0];
    let queued: Vec<_> = (0..2).map(|_| common::connect(addr)).collect();
    wait_until("two queued", || engine.pools()[0].queue.queued() == 2);
    for _ in 0..3 {
        let mut s = common::connect(addr);
        // Reset (no payload set): either an error or an empty read.
        let got = common::read_all(&mut s).unwrap_or_default();
        assert!(got.is_empty());
    }
    assert_eq!(engine.pools()[0].queue.refused(Refused::Full), 3);
    drop(queued);
    backend.gate.store(true, Ordering::Release);
    assert_eq!(busy.join().expect("busy"), Outcome::Served);
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::QueueFull), 3, "{t}");
}

#[test]
fn a_client_that_leaves_while_queued_never_reaches_a_backend() {
    let (backend, engine, busy) = busy_backend(|_| {});
    let addr = engine.listener_addrs()[0];
    let leaver = common::connect(addr);
    wait_until("queued", || engine.pools()[0].queue.queued() == 1);
    drop(leaver);
    wait_until("counted as abandoned", || {
        queue_stat(&engine, Left::Abandoned) == 1
    });
    backend.gate.store(true, Ordering::Release);
    assert_eq!(busy.join().expect("busy"), Outcome::Served);
    assert_eq!(backend.accepted.load(Ordering::Relaxed), 1);
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::Abandoned), 1, "{t}");
}

/// Starts `levee worker --dir DIR` for an engine started without supervised workers.
fn spawn_worker(engine: &Engine, handoff: Option<&str>) -> std::process::Child {
    let dir = engine.overflow().expect("overflow tier").shared.dir.clone();
    let mut cmd = common::levee();
    cmd.arg("worker").arg("--dir").arg(&dir);
    if let Some(h) = handoff {
        cmd.env("LEVEE_OVERFLOW_HANDOFF", h);
    }
    cmd.stderr(std::process::Stdio::piped());
    cmd.spawn().expect("spawn levee worker")
}

fn stop_worker(child: std::process::Child) -> String {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("worker output");
    assert!(out.status.success(), "worker exited with {}", out.status);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn tickets_wait_for_a_worker_that_attaches_later() {
    let (backend, engine, busy) = busy_backend(|_| {});
    let addr = engine.listener_addrs()[0];
    let queued = burst(addr, 1..4);
    wait_until("three queued", || engine.pools()[0].queue.queued() == 3);
    // No worker yet: they wait. One starts now and takes them once the backend has room.
    let worker = spawn_worker(&engine, None);
    wait_for_workers(&engine, 1);
    backend.gate.store(true, Ordering::Release);
    assert_eq!(busy.join().expect("busy"), Outcome::Served);
    assert_eq!(failures(&outcomes(queued)), vec![]);
    // The forwarder counts a handoff when it reads the worker's notice, maybe after the client
    // is done.
    wait_until("three counted as served", || {
        queue_stat(&engine, Left::Served) == 3
    });
    assert!(backend.peak() <= 1);
    let log = stop_worker(worker);
    let expected = if pidfd_permitted() {
        "handoff=\"pidfd\""
    } else {
        eprintln!("note: Yama ptrace_scope forbids pidfd_getfd on a parent; expecting scm_rights");
        "handoff=\"scm_rights\""
    };
    assert!(log.contains(expected), "{log}");
    engine.stop();
    engine.join().expect("join");
}

/// Whether a child may take descriptors from its parent with pidfd_getfd: not under Yama's
/// `ptrace_scope` 1 or above, which allows it only towards descendants.
fn pidfd_permitted() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").map_or(true, |s| s.trim() == "0")
}

#[test]
fn sockets_are_handed_over_with_scm_rights_where_pidfd_is_not_used() {
    let (backend, engine, busy) = busy_backend(|_| {});
    let addr = engine.listener_addrs()[0];
    let worker = spawn_worker(&engine, Some("scm_rights"));
    wait_for_workers(&engine, 1);
    let queued = burst(addr, 1..6);
    wait_until("five queued", || engine.pools()[0].queue.queued() == 5);
    backend.gate.store(true, Ordering::Release);
    assert_eq!(busy.join().expect("busy"), Outcome::Served);
    assert_eq!(failures(&outcomes(queued)), vec![]);
    wait_until("five counted as served", || {
        queue_stat(&engine, Left::Served) == 5
    });
    let log = stop_worker(worker);
    assert!(log.contains("handoff=\"scm_rights\""), "{log}");
    engine.stop();
    engine.join().expect("join");
}

#[test]
fn a_wait_predicted_past_the_timeout_is_refused_at_once() {
    let backend = CountingBackend::start(Duration::from_millis(100));
    let mut cfg = capped(&backend, 1);
    cfg.overflow.queue_timeout = Duration::from_millis(1500);
    let engine = with_workers(&cfg);
    wait_for_workers(&engine, 1);
    let addr = engine.listener_addrs()[0];
    // Forty requests of 100 ms through one slot: four seconds of work queued at once.
    let queued = burst(addr, 0..40);
    wait_until("a drain rate measured", || {
        engine.pools()[0].queue.drain_rate() > 0.0
    });
    let rate = engine.pools()[0].queue.drain_rate();
    let mut s = common::connect(addr);
    let got = common::read_all(&mut s).unwrap_or_default();
    assert!(got.is_empty(), "refused without a payload");
    assert_eq!(
        engine.pools()[0].queue.refused(Refused::Predicted),
        1,
        "rate {rate}/s with about 30 waiting predicts a wait past 1.5 s"
    );
    let results = outcomes(queued);
    // The first ones were served; the ones past the timeout expired, each counted.
    let served = results.iter().filter(|o| **o == Outcome::Served).count() as u64;
    assert!(served >= 2, "{served} served");
    wait_until("every queued one counted", || {
        queue_stat(&engine, Left::Served) + queue_stat(&engine, Left::Expired) == 39
    });
    assert_eq!(
        served,
        1 + queue_stat(&engine, Left::Served),
        "one served directly, the rest through the queue"
    );
    assert_eq!(
        results.len() - served as usize,
        queue_stat(&engine, Left::Expired) as usize,
        "the others expired, each counted"
    );
    engine.stop();
    engine.join().expect("join");
}

/// The `waiting_room` example, built for this test profile if `cargo test` did not build it.
fn waiting_room() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/PROFILE/deps");
    let path = profile_dir.join("examples").join("waiting_room");
    if !path.exists() {
        let target = profile_dir.parent().expect("target dir");
        let mut cargo =
            std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cargo
            .args(["build", "--example", "waiting_room", "--target-dir"])
            .arg(target)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("run cargo");
        assert!(status.success(), "cannot build the waiting_room example");
    }
    path
}

#[test]
fn a_worker_written_from_the_protocol_document_serves_tickets() {
    if !pidfd_permitted() {
        eprintln!(
            "SKIPPED: Yama ptrace_scope forbids the example (a child) pidfd_getfd on this test"
        );
        return;
    }
    // Built first, if need be: a build while clients wait could outlast the queue timeout.
    let room_exe = waiting_room();
    let (backend, engine, busy) = busy_backend(|_| {});
    let addr = engine.listener_addrs()[0];
    let dir = engine.overflow().expect("overflow tier").shared.dir.clone();
    let room = std::process::Command::new(room_exe)
        .arg(&dir)
        .args(["--count", "3", "--reply", "wait here\n"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the waiting room");
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let mut s = common::connect(addr);
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("write");
            s
        })
        .collect();
    for mut s in waiting {
        assert_eq!(common::read_all(&mut s).expect("read"), b"wait here\n");
    }
    let out = room.wait_with_output().expect("waiting room");
    assert!(out.status.success(), "{}", out.status);
    wait_until("three counted as served", || {
        queue_stat(&engine, Left::Served) == 3
    });
    assert_eq!(
        backend.accepted.load(Ordering::Relaxed),
        1,
        "none reached the backend"
    );
    backend.gate.store(true, Ordering::Release);
    assert_eq!(busy.join().expect("busy"), Outcome::Served);
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::HandedOff), 3, "{t}");
}

/// Environment variable that turns this test binary into a worker that claims one ticket and
/// then hangs, as a worker killed between its claim and its commit would: `DIR|TAKE` where
/// TAKE is 1 to also win the park entry first.
const CHILD_CLAIMER: &str = "LEVEE_TEST_CLAIMER";

#[test]
fn child_claimer() {
    let Ok(spec) = std::env::var(CHILD_CLAIMER) else {
        return;
    };
    let (dir, take) = spec.split_once('|').expect("DIR|TAKE");
    let dir = PathBuf::from(dir);
    let load = levee_rings::table::Table::open(dir.join("load")).expect("load table");
    let holder = load.holder().expect("holder");
    let park = levee_rings::table::Table::open(dir.join("park")).expect("park");
    let queue = levee_rings::mpmc::Queue::open(dir.join("queue.0")).expect("queue");
    let mut consumer = queue.consumer().expect("consumer");
    let claim = consumer
        .claim_wait(Some(IO_TIMEOUT))
        .expect("claim")
        .expect("a ticket");
    let t = levee::overflow::ticket::Ticket::decode(&claim).expect("ticket");
    if take == "1" {
        // Parked entries of forwarder 0 are the first rows of the park table.
        let word = park.word(t.entry as usize, 0);
        let taken =
            levee::overflow::park::take(word, t.generation, holder.index() as u8, |_| false);
        assert_eq!(taken, levee::overflow::park::Take::Taken);
    }
    println!("levee-test-claimer claimed");
    // Holds the claim, unacknowledged, until killed.
    let _held = claim;
    loop {
        thread::sleep(Duration::from_secs(60));
    }
}

/// Starts a [`child_claimer`] on `engine`'s queue and waits until it holds a ticket.
fn claim_and_hang(engine: &Engine, take: bool) -> std::process::Child {
    use std::io::BufRead;
    let dir = engine.overflow().expect("overflow tier").shared.dir.clone();
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_claimer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD_CLAIMER,
            format!("{}|{}", dir.display(), u8::from(take)),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn claimer");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.ends_with("levee-test-claimer claimed") => break,
            Some(Ok(_)) => {}
            _ => panic!("the claimer exited before it claimed"),
        }
    }
    thread::spawn(move || for _ in lines {});
    child
}

#[test]
fn a_ticket_whose_worker_died_before_committing_is_served_by_the_next() {
    let (backend, engine, busy) = busy_backend(|_| {});
    let addr = engine.listener_addrs()[0];
    let queued = burst(addr, 1..2);
    wait_until("queued", || engine.pools()[0].queue.queued() == 1);
    // Killed after it claimed the ticket and won the park entry, before it took the socket.
    let mut claimer = claim_and_hang(&engine, true);
    claimer.kill().expect("kill -9");
    claimer.wait().expect("reap");
    let worker = spawn_worker(&engine, None);
    backend.gate.store(true, Ordering::Release);
    assert_eq!(busy.join().expect("busy"), Outcome::Served);
    assert_eq!(failures(&outcomes(queued)), vec![]);
    let tier = engine.overflow().expect("tier").clone();
    assert_eq!(
        tier.shared.queues[0]
            .as_ref()
            .expect("queue")
            .stats()
            .requeued,
        1
    );
    wait_until("served", || queue_stat(&engine, Left::Served) == 1);
    stop_worker(worker);
    engine.stop();
    engine.join().expect("join");
}

#[test]
fn a_ticket_out_of_attempts_is_dead_lettered_and_its_client_closed() {
    let (backend, engine, busy) = busy_backend(|cfg| {
        cfg.overflow.max_attempts = 1;
        cfg.listeners[0].refuse_payload = b"sorry\n".to_vec();
    });
    let addr = engine.listener_addrs()[0];
    let mut client = common::connect(addr);
    wait_until("queued", || engine.pools()[0].queue.queued() == 1);
    let mut claimer = claim_and_hang(&engine, false);
    claimer.kill().expect("kill -9");
    claimer.wait().expect("reap");
    // One delivery was all it had: the supervisor recovers the claim, the queue dead-letters
    // it, and the supervisor has the forwarder close the client.
    assert_eq!(common::read_all(&mut client).expect("read"), b"sorry\n");
    wait_until("counted", || queue_stat(&engine, Left::DeadLettered) == 1);
    assert_eq!(backend.accepted.load(Ordering::Relaxed), 1);
    backend.gate.store(true, Ordering::Release);
    assert_eq!(busy.join().expect("busy"), Outcome::Served);
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::DeadLettered), 1, "{t}");
}

#[test]
fn a_worker_stops_on_its_own_when_the_levee_it_serves_dies() {
    let backend = CountingBackend::start(Duration::ZERO);
    backend.gate.store(false, Ordering::Release);
    let dir = common::temp_dir("orphan");
    let shm = PathBuf::from(format!("/dev/shm/levee-test-orphan.{}", std::process::id()));
    let addr = common::refused_addr();
    let config = dir.join("levee.conf");
    std::fs::write(
        &config,
        format!(
            "engine.cores = 0\nctl.socket = none\noverflow.workers = 0\noverflow.dir = {}\n\
             listener.web.addr = {addr}\nlistener.web.pool = web\n\
             pool.web.backend.a.addr = {}\npool.web.backend.a.max_conns = 1\n",
            shm.display(),
            backend.addr
        ),
    )
    .expect("config");
    let mut levee = common::levee()
        .args(["run", "-c"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn levee");
    wait_until("levee listens", || TcpStream::connect(addr).is_ok());
    // That probe connection went to the backend and holds its one slot; these queue.
    let mut queued: Vec<_> = (0..3).map(|_| common::connect(addr)).collect();
    let mut worker = common::levee()
        .args(["worker", "-c"])
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn worker");
    let mut log = std::io::BufReader::new(worker.stderr.take().expect("stderr"));
    let mut seen = String::new();
    while !seen.contains("worker attached") {
        use std::io::BufRead;
        assert!(
            log.read_line(&mut seen).expect("worker log") > 0,
            "the worker exited: {seen}"
        );
    }
    levee.kill().expect("kill -9 levee");
    levee.wait().expect("reap levee");
    // Their sockets died with levee: the clients see the end.
    for s in &mut queued {
        let _ = common::read_all(s);
    }
    let status = worker.wait().expect("worker");
    log.read_to_string(&mut seen).expect("worker log");
    assert!(status.success(), "{status}: {seen}");
    assert!(seen.contains("has stopped; stopping"), "{seen}");
    let _ = std::fs::remove_dir_all(&shm);
}

/// `levee ctl`'s view of an engine, as `levee run` builds it.
fn live(engine: &Engine, cfg: &Config) -> levee::ctl::Live {
    levee::ctl::Live::new(
        cfg.clone(),
        engine.pools().to_vec(),
        engine.tunables().clone(),
        engine.counters(),
        Box::new(|_| {}),
        engine.overflow().map(|tier| levee::ctl::Overflow {
            tier: tier.clone(),
            workers: engine.worker_target(),
        }),
    )
}

#[test]
fn the_queue_timeout_changes_on_the_running_engine() {
    let (backend, engine, busy) = busy_backend(|cfg| {
        cfg.overflow.queue_timeout = Duration::from_secs(3600);
    });
    let ctl = live(&engine, &capped(&backend, 1));
    assert_eq!(
        ctl.set("overflow.queue_timeout", "200ms").as_deref(),
        Ok("200ms")
    );
    let addr = engine.listener_addrs()[0];
    // Queued after the change: it expires after 200 ms, not after an hour.
    let mut s = common::connect(addr);
    let _ = common::read_all(&mut s);
    assert_eq!(queue_stat(&engine, Left::Expired), 1);
    assert_eq!(
        ctl.get("stats.pool.p.queue.expired").as_deref(),
        Ok("1"),
        "and ctl shows it"
    );
    backend.gate.store(true, Ordering::Release);
    assert_eq!(busy.join().expect("busy"), Outcome::Served);
    engine.stop();
    engine.join().expect("join");
}

#[test]
fn the_number_of_workers_changes_on_the_running_engine() {
    let backend = CountingBackend::start(Duration::ZERO);
    let cfg = capped(&backend, 1);
    let engine = with_workers(&cfg);
    wait_for_workers(&engine, 1);
    let ctl = live(&engine, &cfg);
    assert_eq!(ctl.set("overflow.workers", "3").as_deref(), Ok("3"));
    wait_for_workers(&engine, 3);
    assert_eq!(engine.worker_pids().len(), 3);
    assert_eq!(ctl.set("overflow.workers", "1").as_deref(), Ok("1"));
    wait_until("two workers stopped", || {
        engine
            .overflow()
            .and_then(|t| t.shared.load.holders().ok())
            .map(|h| h.iter().filter(|h| h.alive && h.index != 0).count())
            == Some(1)
    });
    engine.stop();
    engine.join().expect("join");
}

#[test]
fn codel_sheds_connections_that_waited_long_in_a_standing_queue() {
    let backend = CountingBackend::start(Duration::from_millis(20));
    let mut cfg = capped(&backend, 1);
    cfg.overflow.discipline = levee::config::Discipline::Codel;
    cfg.overflow.codel_target = Duration::from_millis(5);
    cfg.overflow.codel_interval = Duration::from_millis(50);
    let engine = with_workers(&cfg);
    wait_for_workers(&engine, 1);
    let addr = engine.listener_addrs()[0];
    // Fifty requests of 20 ms through one slot: a queue that stands for a second.
    let results = outcomes(burst(addr, 0..50));
    let served = results.iter().filter(|o| **o == Outcome::Served).count() as u64;
    wait_until("every queued one counted", || {
        queue_stat(&engine, Left::Served) + queue_stat(&engine, Left::Shed) == 49
    });
    let shed = queue_stat(&engine, Left::Shed);
    assert!(shed > 0, "CoDel shed nothing from a standing queue");
    assert_eq!(served + shed, 50, "each client served or shed, none lost");
    assert!(backend.peak() <= 1);
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::Shed), shed, "{t}");
}

#[test]
fn an_idle_worker_sleeps() {
    match levee::forward::uring::probe() {
        Ok(caps) if caps.futex => {}
        _ => {
            // Needs Linux 6.7 (README, Requirements).
            common::skip(
                "this kernel's io_uring has no FutexWait; an idle worker polls every 10 ms",
            );
            return;
        }
    }
    let backend = CountingBackend::start(Duration::ZERO);
    let engine = with_workers(&capped(&backend, 1));
    wait_for_workers(&engine, 1);
    let pid = engine.worker_pids()[0];
    let cpu = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let fields: Vec<&str> = stat[stat.rfind(')').expect("name") + 2..]
            .split(' ')
            .collect();
        // utime and stime: fields 14 and 15, counted from the state (field 3).
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    };
    let before = cpu();
    thread::sleep(Duration::from_secs(2));
    let used = cpu() - before;
    // Clock ticks are 10 ms: an idle worker wakes once a second for a few system calls.
    assert!(used <= 2, "an idle worker used {used} ticks of CPU in 2 s");
    engine.stop();
    engine.join().expect("join");
}

#[test]
fn a_client_that_half_closes_after_its_request_is_still_served() {
    let (backend, engine, busy) = busy_backend(|_| {});
    let addr = engine.listener_addrs()[0];
    let worker = spawn_worker(&engine, None);
    wait_for_workers(&engine, 1);
    let mut s = common::connect(addr);
    s.write_all(b"GET /7 HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("half-close");
    wait_until("queued", || engine.pools()[0].queue.queued() == 1);
    backend.gate.store(true, Ordering::Release);
    assert_eq!(busy.join().expect("busy"), Outcome::Served);
    assert_eq!(common::read_all(&mut s).expect("read"), expected_reply(7));
    assert_eq!(queue_stat(&engine, Left::Abandoned), 0);
    stop_worker(worker);
    engine.stop();
    engine.join().expect("join");
}

#[test]
fn stopping_closes_what_is_still_queued_at_the_drain_deadline() {
    let (backend, engine, busy) = busy_backend(|cfg| {
        cfg.engine.drain_timeout = Duration::from_millis(300);
        cfg.listeners[0].refuse_payload = b"stopping\n".to_vec();
    });
    let addr = engine.listener_addrs()[0];
    let mut queued: Vec<_> = (0..2).map(|_| common::connect(addr)).collect();
    wait_until("two queued", || engine.pools()[0].queue.queued() == 2);
    engine.stop();
    for s in &mut queued {
        assert_eq!(common::read_all(s).expect("read"), b"stopping\n");
    }
    let pools = engine.pools().to_vec();
    backend.gate.store(true, Ordering::Release);
    let t = engine.join().expect("join");
    let _ = busy.join();
    assert_eq!(pools[0].queue.left(Left::Stopped), 2);
    assert!(t.closed(CloseReason::DrainTimeout) >= 2, "{t}");
}

#[test]
fn workers_start_once_a_pool_can_overflow() {
    let backend = CountingBackend::start(Duration::ZERO);
    let cfg = single(pool("p", Balance::RoundRobin, &[backend.addr]));
    let engine = with_workers(&cfg);
    // No cap, no bound: nothing can overflow, and no worker is started. A worker is started in
    // the turn that finds it wanted, and two more turns include a whole one begun after this
    // point (idle, a turn comes only every second).
    let turns = engine.supervisor_turns();
    wait_until("the supervisor looked twice", || {
        engine.supervisor_turns() >= turns + 2
    });
    assert!(
        engine.worker_pids().is_empty(),
        "a worker for a pool that cannot overflow"
    );
    let ctl = live(&engine, &cfg);
    assert_eq!(
        ctl.set("pool.p.backend.b0.max_conns", "4").as_deref(),
        Ok("4")
    );
    wait_for_workers(&engine, 1);
    engine.stop();
    engine.join().expect("join");
}

#[test]
fn a_client_that_left_is_not_relayed_by_the_worker_that_takes_it() {
    let (backend, engine, busy) = busy_backend(|_| {});
    let addr = engine.listener_addrs()[0];
    let worker = spawn_worker(&engine, None);
    wait_for_workers(&engine, 1);
    let leaver = common::connect(addr);
    wait_until("queued", || engine.pools()[0].queue.queued() == 1);
    drop(leaver);
    // The slot frees at once: the worker may take the ticket before the forwarder's poll on the
    // client is armed. Either way, it is counted as abandoned and no backend sees it.
    backend.gate.store(true, Ordering::Release);
    assert_eq!(busy.join().expect("busy"), Outcome::Served);
    wait_until("counted as abandoned", || {
        queue_stat(&engine, Left::Abandoned) == 1
    });
    assert_eq!(backend.accepted.load(Ordering::Relaxed), 1);
    stop_worker(worker);
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::Abandoned), 1, "{t}");
}
