//! Connection lifecycle limits: idle and connect timeouts, caps, capacity, and draining on stop.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use common::*;
use levee::config::Balance;
use levee::stats::CloseReason;

/// Reads until the connection ends, accepting EOF or a reset as the end.
fn wait_closed(c: &mut TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("expected the connection to end, got {e}"),
        }
    }
}

/// The accept queue of the socket listening on `addr` (an IPv4 address), as the kernel reports
/// it in /proc/net/tcp (`rx_queue` of a listener), or `None` when nothing listens there.
fn listen_queue(addr: SocketAddr) -> Option<u64> {
    let SocketAddr::V4(v4) = addr else {
        panic!("{addr}: only IPv4 listeners are looked up");
    };
    // The kernel prints the address as the native-endian u32 of its network-order bytes.
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(v4.ip().octets()),
        v4.port()
    );
    const LISTEN: &str = "0A";
    std::fs::read_to_string("/proc/net/tcp")
        .expect("/proc/net/tcp")
        .lines()
        .skip(1)
        .find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(1) != Some(&local.as_str()) || f.get(3) != Some(&LISTEN) {
                return None;
            }
            let (_, rx) = f.get(4)?.split_once(':')?;
            u64::from_str_radix(rx, 16).ok()
        })
}

#[test]
fn idle_connections_are_closed_and_counted() {
    let backend = Backend::echo();
    let mut cfg = single(pool("p", Balance::RoundRobin, &[backend.addr]));
    cfg.engine.idle_timeout = Duration::from_millis(200);
    let engine = start(&cfg);
    let mut c = connect(engine.listener_addrs()[0]);
    c.write_all(b"ping").expect("write");
    let mut got = [0u8; 4];
    c.read_exact(&mut got).expect("echo");
    wait_closed(&mut c);
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::IdleTimeout), 1);
}

#[test]
fn connect_timeout_gives_up_within_its_budget() {
    // A listener with a backlog of one that never accepts: once its queue is full, the kernel
    // drops further SYNs, so a connect to it hangs until levee's budget runs out.
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .expect("literal")
            .into(),
    )
    .expect("bind");
    sock.listen(0).expect("listen");
    let blackhole = sock.local_addr().expect("addr").as_socket().expect("ip");
    let fillers: Vec<_> = (0..4)
        .filter_map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            s.set_nonblocking(true).ok()?;
            let _ = s.connect(&blackhole.into());
            Some(s)
        })
        .collect();
    // Full once it holds more than its backlog of 0; until then levee's connect could complete.
    wait_until("the black hole's accept queue is full", || {
        listen_queue(blackhole).is_some_and(|queued| queued >= 1)
    });

    let mut cfg = single(pool("p", Balance::RoundRobin, &[blackhole]));
    cfg.engine.connect_timeout = Duration::from_millis(300);
    let engine = start(&cfg);
    let mut c = connect(engine.listener_addrs()[0]);
    wait_closed(&mut c);
    engine.stop();
    let t = engine.join().expect("join");
    drop(fillers);
    assert_eq!(t.closed(CloseReason::ConnectFailed), 1, "{t}");
    assert!(t.connect_timeouts >= 1, "{t}");
}

#[test]
fn a_backend_at_its_cap_is_skipped() {
    let a = Backend::named("a");
    let b = Backend::spawn(|mut s| {
        // Holds its connection until the client goes away.
        let _ = s.write_all(b"b");
        let mut sink = [0u8; 16];
        let _ = s.read(&mut sink);
    });
    let mut p = pool("p", Balance::RoundRobin, &[b.addr, a.addr]);
    p.backends[0].max_conns = 1;
    let engine = start(&single(p));
    let addr = engine.listener_addrs()[0];
    // The first connection takes b's only slot and keeps it.
    let mut held = connect(addr);
    let mut one = [0u8; 1];
    held.read_exact(&mut one).expect("b answers");
    assert_eq!(&one, b"b");
    // Now b is full: every new connection goes to a, whatever round robin's turn says.
    for _ in 0..5 {
        assert_eq!(read_all(&mut connect(addr)).expect("a"), b"a");
    }
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::Done), 5);
    drop(held);
}

#[test]
fn every_backend_full_with_overflow_reject_is_refused_with_a_count() {
    let backend = Backend::spawn(|mut s| {
        let mut sink = [0u8; 16];
        let _ = s.read(&mut sink);
    });
    let mut p = pool("p", Balance::RoundRobin, &[backend.addr]);
    p.backends[0].max_conns = 2;
    p.overflow = levee::config::Overflow::Reject;
    let engine = start(&single(p));
    let addr = engine.listener_addrs()[0];
    let held: Vec<_> = (0..2).map(|_| connect(addr)).collect();
    wait_until("both are through to the backend", || {
        backend.accepted.load(Ordering::Relaxed) == 2
    });
    let mut refused = connect(addr);
    wait_closed(&mut refused);
    assert_eq!(engine.pools()[0].load.active(0), 2, "the cap is exact");
    drop(held);
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::Rejected), 1, "{t}");
    assert_eq!(backend.accepted.load(Ordering::Relaxed), 2);
}

#[test]
fn a_full_forwarder_leaves_clients_in_the_backlog() {
    // With room for two connections, a third waits in the kernel's backlog and is served as
    // soon as a slot frees, rather than being accepted and dropped.
    let backend = Backend::echo();
    let mut cfg = single(pool("p", Balance::RoundRobin, &[backend.addr]));
    cfg.engine.max_conns = 2;
    let engine = start(&cfg);
    let addr = engine.listener_addrs()[0];
    let mut first = connect(addr);
    let second = connect(addr);
    first.write_all(b"1").expect("write");
    let mut one = [0u8; 1];
    first.read_exact(&mut one).expect("echo");
    let mut third = connect(addr);
    third.write_all(b"3").expect("write");
    drop(second);
    let mut got = [0u8; 1];
    third
        .read_exact(&mut got)
        .expect("the third is served once a slot frees");
    assert_eq!(&got, b"3");
    drop(first);
    drop(third);
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::OverCapacity), 0, "{t}");
    assert_eq!(t.accepted, 3);
}

#[test]
fn stop_lets_connections_in_flight_finish() {
    let backend = Backend::echo();
    let mut cfg = single(pool("p", Balance::RoundRobin, &[backend.addr]));
    cfg.engine.drain_timeout = Duration::from_secs(20);
    let engine = start(&cfg);
    let addr = engine.listener_addrs()[0];
    let mut c = connect(addr);
    c.write_all(b"before").expect("write");
    let mut got = [0u8; 6];
    c.read_exact(&mut got).expect("echo");
    assert!(listen_queue(addr).is_some(), "levee listens on {addr}");
    engine.stop();
    // Stopped: the listener closes while a connection is still in flight, so new connections
    // are refused...
    wait_until("the listener is closed", || listen_queue(addr).is_none());
    let late = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    assert_eq!(
        late.as_ref().map_err(std::io::Error::kind).err(),
        Some(ErrorKind::ConnectionRefused),
        "{late:?}"
    );
    // ...but the one in flight still works to its end.
    c.write_all(b"after").expect("write during drain");
    let mut got = [0u8; 5];
    c.read_exact(&mut got).expect("echo during drain");
    assert_eq!(&got, b"after");
    c.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(read_all(&mut c).expect("eof"), b"");
    let t = engine.join().expect("join");
    assert_eq!(t.accepted, 1, "{t}");
    assert_eq!(t.closed(CloseReason::Done), 1, "{t}");
    assert_eq!(t.closed(CloseReason::DrainTimeout), 0);
}

#[test]
fn drain_timeout_closes_what_does_not_finish() {
    let backend = Backend::echo();
    let mut cfg = single(pool("p", Balance::RoundRobin, &[backend.addr]));
    cfg.engine.drain_timeout = Duration::from_millis(200);
    let engine = start(&cfg);
    let mut c = connect(engine.listener_addrs()[0]);
    c.write_all(b"x").expect("write");
    let mut got = [0u8; 1];
    c.read_exact(&mut got).expect("echo");
    engine.stop();
    let t = engine
        .join()
        .expect("join returns once the drain deadline has passed");
    assert_eq!(t.closed(CloseReason::DrainTimeout), 1, "{t}");
    wait_closed(&mut c);
}

#[test]
fn a_burst_beyond_capacity_is_served_in_turn_not_dropped() {
    // Four slots, held; fifty clients pile up behind them. When the slots free, the accept that
    // resumes takes many queued clients at once: those without a slot must wait for one, not
    // be reset.
    const BURST: usize = 50;
    let backend = Backend::echo();
    let mut cfg = single(pool("p", Balance::RoundRobin, &[backend.addr]));
    cfg.engine.max_conns = 4;
    let engine = start(&cfg);
    let addr = engine.listener_addrs()[0];
    let held: Vec<TcpStream> = (0..4)
        .map(|i| {
            let mut c = connect(addr);
            c.write_all(&[i]).expect("write");
            let mut b = [0u8; 1];
            c.read_exact(&mut b).expect("echo");
            c
        })
        .collect();
    let sent = Arc::new(AtomicUsize::new(0));
    let burst: Vec<thread::JoinHandle<Vec<u8>>> = (0..BURST)
        .map(|i| {
            let sent = sent.clone();
            thread::spawn(move || {
                let mut c = connect(addr);
                let msg = format!("client {i:02}");
                c.write_all(msg.as_bytes()).expect("write");
                c.shutdown(Shutdown::Write).expect("half-close");
                sent.fetch_add(1, Ordering::SeqCst);
                read_all(&mut c).expect("served in turn")
            })
        })
        .collect();
    // Every client connected and sent its request while no slot was free: all of them wait.
    wait_until("the whole burst is connected", || {
        sent.load(Ordering::SeqCst) == BURST
    });
    assert_eq!(
        backend.accepted.load(Ordering::Relaxed),
        4,
        "no client of the burst got through while the slots were held"
    );
    drop(held);
    for (i, t) in burst.into_iter().enumerate() {
        assert_eq!(
            t.join().expect("client"),
            format!("client {i:02}").into_bytes()
        );
    }
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::OverCapacity), 0, "{t}");
    assert_eq!(t.closed(CloseReason::Done), BURST as u64 + 4, "{t}");
}
