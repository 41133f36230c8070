//! Backend health with real backend processes on loopback: a killed backend costs only the
//! connections open on it, active checks take it down after `fall` and bring it back after
//! `rise`, slow start ramps it, drain keeps new connections away, passive ejection acts on
//! resets for a cool-down that doubles with each repeat offence up to `eject.max_time`, without
//! ever ejecting past `eject.max_percent`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use levee::config::{Balance, CheckKind, Config};
use levee::engine::Engine;
use levee::pool::Status;
use levee::stats::CloseReason;

/// The entry point of backend processes (started with `LEVEE_TEST_BACKEND` set, it serves until
/// killed and never returns). In a normal run it checks that fixture, which every test here
/// trusts: a named backend answers with its name, a reset one resets, and a killed one's port
/// refuses at once.
#[test]
fn backend_process() {
    child_backend_main();
    let mut named = spawn("n", refused_addr(), Mode::Named);
    assert_eq!(ask(named.addr).expect("a named backend answers"), "n");
    let reset = spawn("r", refused_addr(), Mode::Reset);
    let e = ask(reset.addr).expect_err("a reset backend never answers");
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "a reset, not a clean close: {e}"
    );
    named.kill();
    let e = std::net::TcpStream::connect(named.addr).expect_err("killed: nothing listens");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
}

fn spawn(name: &str, addr: SocketAddr, mode: Mode) -> BackendProcess {
    BackendProcess::spawn("backend_process", name, addr, mode)
}

/// A round-robin pool over `backends` with fast active checks.
fn checked(backends: &[&BackendProcess]) -> Config {
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let mut p = pool("p", Balance::RoundRobin, &addrs);
    for (cfg, b) in p.backends.iter_mut().zip(backends) {
        cfg.name = b.name.clone();
    }
    p.health.check = CheckKind::Tcp;
    p.health.interval = Duration::from_millis(100);
    p.health.timeout = Duration::from_millis(500);
    p.health.fall = 3;
    p.health.rise = 2;
    p.health.eject_failures = 0;
    single(p)
}

fn status(engine: &Engine, i: usize) -> Status {
    engine.pools()[0].health.status(i)
}

/// Clients opening one short connection after another until told to stop.
struct Stream {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Stream {
    fn start(addr: SocketAddr, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                thread::spawn(move || {
                    // Bounded in count as well as by the stop flag.
                    for _ in 0..100_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match ask(addr) {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            threads,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn a_killed_backend_costs_only_its_open_connections_and_comes_back_after_rise() {
    const CLIENTS: usize = 4;
    let a = spawn("a", refused_addr(), Mode::Named);
    let mut b = spawn("b", refused_addr(), Mode::Named);
    let c = spawn("c", refused_addr(), Mode::Named);
    let mut cfg = checked(&[&a, &b, &c]);
    cfg.pools[0].health.slowstart = Duration::from_millis(600);
    let engine = start(&cfg);
    let addr = engine.listener_addrs()[0];

    // A long-lived connection on each backend: only b's may be lost.
    let mut held: Vec<(String, std::net::TcpStream)> = Vec::new();
    while held.len() < 3 {
        let mut s = connect(addr);
        let name = request(&mut s);
        if !held.iter().any(|(n, _)| *n == name) {
            held.push((name, s));
        }
    }

    let stream = Stream::start(addr, CLIENTS);
    wait_until("the stream is flowing", || stream.ok() > 50);
    let before = stream.failed();
    let killed_at = Instant::now();
    b.kill();
    wait_until("b is down", || status(&engine, 1) == Status::Down);
    let took = killed_at.elapsed();
    let counts = engine.pools()[0].health.counts(1);
    assert_eq!(counts.downs, 1);
    // Taken down at the `fall`-th failed check, not later; with checks every interval that is
    // within fall × interval plus one interval.
    assert_eq!(counts.last_down_after, 3, "{counts:?}");
    eprintln!("b was marked down {took:?} after the kill (fall 3 × 100ms + one interval)");
    let ok_at_down = stream.ok();
    wait_until("more connections flow with b down", || {
        stream.ok() > ok_at_down + 100
    });
    let (ok, failed) = stream.finish();
    // Only connections in flight on b at the kill may fail: at most one per client.
    assert!(
        failed - before <= CLIENTS as u64,
        "{failed} failures of {ok}"
    );

    for (name, mut s) in held {
        let alive = ask_on(&mut s).is_ok();
        assert_eq!(alive, name != "b", "held connection to {name}");
    }

    // Back on the same port: up after `rise` passed checks, then a ramp to full weight.
    let b = spawn("b", b.addr, Mode::Named);
    let mut weights = Vec::new();
    wait_until("b is taking connections again", || {
        status(&engine, 1) != Status::Down
    });
    assert_eq!(
        engine.pools()[0].health.counts(1).last_up_after,
        2,
        "rise is 2"
    );
    wait_until("b's ramp ends", || {
        weights.push(engine.pools()[0].load.weight(1));
        status(&engine, 1) == Status::Up
    });
    assert!(
        weights[0] < 100,
        "slow start begins below the full weight: {weights:?}"
    );
    assert!(
        weights.windows(2).all(|w| w[0] <= w[1]),
        "the ramp only climbs: {weights:?}"
    );
    assert_eq!(engine.pools()[0].load.weight(1), 100);
    assert_eq!(engine.pools()[0].health.counts(1).ups, 1);
    let names: Vec<String> = (0..30).filter_map(|_| ask(addr).ok()).collect();
    assert!(names.iter().any(|n| n == "b"), "b serves again: {names:?}");
    drop(b);
    engine.stop();
    engine.join().expect("join");
}

/// One request on an open connection that must be answered.
fn request(s: &mut std::net::TcpStream) -> String {
    ask_on(s).expect("reply")
}

#[test]
fn drain_takes_no_new_connections_and_keeps_the_old_ones() {
    let a = spawn("a", refused_addr(), Mode::Named);
    let b = spawn("b", refused_addr(), Mode::Named);
    let engine = start(&checked(&[&a, &b]));
    let addr = engine.listener_addrs()[0];
    let mut on_b = loop {
        let mut s = connect(addr);
        if request(&mut s) == "b" {
            break s;
        }
    };
    engine.pools()[0].health.set_drain(1, true);
    wait_until("b drains", || status(&engine, 1) == Status::Drain);
    for _ in 0..30 {
        assert_eq!(ask(addr).expect("served"), "a");
    }
    assert_eq!(
        request(&mut on_b),
        "b",
        "the established connection continues"
    );
    engine.pools()[0].health.set_drain(1, false);
    wait_until("b is back", || status(&engine, 1) == Status::Up);
    let names: Vec<String> = (0..10).filter_map(|_| ask(addr).ok()).collect();
    assert!(names.iter().any(|n| n == "b"), "{names:?}");
    drop(on_b);
    engine.stop();
    engine.join().expect("join");
}

/// The lines levee logs at `warn` and above, from the first call of [`capture_log`] on.
static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends this process's log to [`LOG`] (once; other tests' engines log there too).
fn capture_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
    });
}

/// The captured log lines that name `backend` (its `pool/name (addr)` label).
fn log_lines(backend: &str) -> Vec<String> {
    let log = LOG.lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|l| l.contains(backend))
        .map(str::to_owned)
        .collect()
}

/// One look at a backend: whether it is ejected and how often it was, with the instants just
/// before and just after the two reads.
struct Look {
    before: Instant,
    after: Instant,
    ejected: bool,
    ejections: u64,
}

#[test]
fn resets_eject_a_backend_for_a_cool_down_that_grows() {
    // Cool-downs of 100, 200, 400, then 400 ms (the cap) as long as the backend keeps offending.
    const TIME: Duration = Duration::from_millis(100);
    const MAX_TIME: Duration = Duration::from_millis(400);
    const EJECTIONS: u64 = 5;
    // How much shorter than its cool-down a spell may look: the monitor takes the time at the
    // start of its loop turn and counts the ejection a little later in the same turn.
    const SLACK: Duration = Duration::from_millis(50);
    let cooldown = |k: u64| TIME.saturating_mul(1 << (k - 1)).min(MAX_TIME);

    capture_log();
    let good = spawn("good", refused_addr(), Mode::Named);
    let bad = spawn("bad", refused_addr(), Mode::Reset);
    let mut cfg = checked(&[&good, &bad]);
    // Passive ejection alone: an active check may see the bad backend's reset too and take it
    // down, and while it is down its offences are forgotten.
    cfg.pools[0].health.check = CheckKind::None;
    cfg.pools[0].health.eject_failures = 3;
    cfg.pools[0].health.eject_time = TIME;
    cfg.pools[0].health.eject_max_time = MAX_TIME;
    cfg.pools[0].health.eject_max_percent = 50;
    let engine = start(&cfg);
    let addr = engine.listener_addrs()[0];
    let health = &engine.pools()[0].health;
    // Clients keep coming, so the bad backend offends again as soon as it is back: well within
    // `eject.max_time`, after which its offences would be forgotten.
    let stream = Stream::start(addr, 4);

    // Watch it until the last ejection has ended.
    let mut looks: Vec<Look> = Vec::new();
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let before = Instant::now();
        let ejections = health.counts(1).ejections;
        let ejected = status(&engine, 1) == Status::Ejected;
        looks.push(Look {
            before,
            after: Instant::now(),
            ejected,
            ejections,
        });
        // The count moves a moment before the status: the last spell is over once it was seen
        // and then not, or once a further ejection is counted.
        let last_seen = looks.iter().any(|l| l.ejections == EJECTIONS && l.ejected);
        if ejections > EJECTIONS || (ejections == EJECTIONS && last_seen && !ejected) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out with {ejections} ejections of {EJECTIONS}"
        );
        thread::sleep(Duration::from_millis(1));
    }
    let (ok, _) = stream.finish();
    assert!(ok > 0, "the good backend served throughout");

    // Each spell lasted at least its cool-down: from the last look before the ejection was
    // counted to the first look after it ended (the backend back, or ejected once more).
    let mut spells = Vec::new();
    for k in 1..=EJECTIONS {
        let from = looks
            .iter()
            .rev()
            .find(|l| l.ejections < k)
            .expect("looked before the first ejection")
            .before;
        // Not ejected with the count at k is the end only once the spell was seen: the count
        // moves a moment before the status. Unseen (this thread starved), the next ejection
        // still bounds it.
        let seen = looks.iter().position(|l| l.ejections == k && l.ejected);
        let to = looks[seen.unwrap_or(0)..]
            .iter()
            .find(|l| l.ejections > k || (seen.is_some() && !l.ejected))
            .expect("looked after the spell ended")
            .after;
        spells.push(to - from);
    }
    for (k, spell) in (1..=EJECTIONS).zip(&spells) {
        assert!(
            *spell + SLACK >= cooldown(k),
            "ejection {k} lasted about {spell:?}, its cool-down is {:?} (all: {spells:?})",
            cooldown(k)
        );
    }

    // The cool-downs levee chose, in order: doubling, then held at `eject.max_time`.
    let label = format!("p/bad ({})", bad.addr);
    let chosen: Vec<String> = log_lines(&label)
        .iter()
        .filter_map(|l| {
            let rest = &l[l.find("ejected for ")? + "ejected for ".len()..];
            Some(rest[..rest.find(':')?].to_owned())
        })
        .take(EJECTIONS as usize)
        .collect();
    let expected: Vec<String> = (1..=EJECTIONS)
        .map(|k| format!("{:?}", cooldown(k)))
        .collect();
    assert_eq!(chosen, expected, "log: {:#?}", log_lines(&label));

    assert_eq!(status(&engine, 0), Status::Up);
    assert_eq!(health.counts(0).ejections, 0);
    engine.stop();
    let t = engine.join().expect("join");
    assert!(t.closed(CloseReason::BackendError) >= 3 * EJECTIONS, "{t}");
}

#[test]
fn ejection_never_passes_max_percent() {
    let good = spawn("good", refused_addr(), Mode::Named);
    let bad: Vec<BackendProcess> = (0..3)
        .map(|i| spawn(&format!("bad{i}"), refused_addr(), Mode::Reset))
        .collect();
    let mut all = vec![&good];
    all.extend(bad.iter());
    let mut cfg = checked(&all);
    cfg.pools[0].health.check = CheckKind::None;
    cfg.pools[0].health.eject_failures = 2;
    cfg.pools[0].health.eject_time = Duration::from_secs(30);
    cfg.pools[0].health.eject_max_percent = 25;
    let engine = start(&cfg);
    let addr = engine.listener_addrs()[0];
    let health = &engine.pools()[0].health;
    let ejected = || {
        (0..4)
            .filter(|&i| health.status(i) == Status::Ejected)
            .count()
    };
    wait_until("an ejection is held back", || {
        let _ = ask(addr);
        assert!(ejected() <= 1, "more than 25 % of the pool ejected");
        (1..4)
            .map(|i| health.counts(i).ejections_held_back)
            .sum::<u64>()
            > 0
    });
    assert_eq!(ejected(), 1);
    engine.stop();
    engine.join().expect("join");
}

#[test]
fn all_down_refuses_or_tries_anyway() {
    // Checks that expect a reply the backend never sends: health says down, yet it serves.
    let a = spawn("a", refused_addr(), Mode::Named);
    for (policy, served) in [
        (levee::config::AllDown::Refuse, false),
        (levee::config::AllDown::TryAnyway, true),
    ] {
        let mut cfg = checked(&[&a]);
        cfg.pools[0].health.send = b"who\n".to_vec();
        cfg.pools[0].health.expect = b"nobody".to_vec();
        cfg.pools[0].health.all_down = policy;
        let engine = start(&cfg);
        let addr = engine.listener_addrs()[0];
        wait_until("a is down", || status(&engine, 0) == Status::Down);
        assert_eq!(ask(addr).is_ok(), served, "{policy:?}");
        engine.stop();
        let t = engine.join().expect("join");
        assert_eq!(
            t.closed(CloseReason::NoBackend),
            u64::from(!served),
            "{policy:?}: {t}"
        );
    }
}
