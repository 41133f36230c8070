//! Byte-exact relay through a running engine, against real sockets on loopback: bulk transfers
//! both ways, half-close in each direction, resets, failover, many connections at once.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::*;
use levee::config::Balance;
use levee::stats::CloseReason;

fn echo_through(total: u64) {
    let backend = Backend::echo();
    let engine = start(&single(pool("p", Balance::RoundRobin, &[backend.addr])));
    let mut c = connect(engine.listener_addrs()[0]);
    let mut reader = c.try_clone().expect("clone");
    let rx = thread::spawn(move || drain(&mut reader));
    let sent = send_pattern(&mut c, total);
    c.shutdown(Shutdown::Write).expect("shutdown");
    let (len, sum) = rx.join().expect("reader");
    assert_eq!(len, total);
    assert_eq!(sum, sent, "echoed bytes differ from those sent");
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.bytes_client_to_backend, total);
    assert_eq!(t.bytes_backend_to_client, total);
    assert_eq!(t.closed(CloseReason::Done), 1);
}

#[test]
fn one_mebibyte_echoes_byte_for_byte() {
    echo_through(1 << 20);
}

#[test]
fn sixty_four_mebibytes_echo_byte_for_byte() {
    echo_through(64 << 20);
}

#[test]
fn download_then_fin_reaches_the_client() {
    const TOTAL: u64 = 64 << 20;
    let (backend, rx) = Backend::downloading(TOTAL);
    let engine = start(&single(pool("p", Balance::RoundRobin, &[backend.addr])));
    let mut c = connect(engine.listener_addrs()[0]);
    let (len, sum) = drain(&mut c);
    assert_eq!(len, TOTAL);
    assert_eq!(Some(sum), rx.recv_timeout(IO_TIMEOUT).ok());
    drop(c);
    engine.stop();
    engine.join().expect("join");
}

#[test]
fn client_half_close_still_receives_the_reply() {
    // The backend reads the whole upload (to the client's FIN), then answers with its length and
    // checksum: the FIN must cross, and the reply must still flow back.
    const TOTAL: u64 = 3 << 20;
    let backend = Backend::spawn(|mut s| {
        let (len, sum) = drain(&mut s);
        let _ = s.write_all(format!("{len} {sum}").as_bytes());
    });
    let engine = start(&single(pool("p", Balance::RoundRobin, &[backend.addr])));
    let mut c = connect(engine.listener_addrs()[0]);
    let sum = send_pattern(&mut c, TOTAL);
    c.shutdown(Shutdown::Write).expect("half-close");
    let reply = String::from_utf8(read_all(&mut c).expect("reply")).expect("utf8");
    assert_eq!(reply, format!("{TOTAL} {sum}"));
    engine.stop();
    engine.join().expect("join");
}

#[test]
fn backend_half_close_lets_the_client_keep_sending() {
    let (tx, rx) = mpsc::channel();
    let backend = Backend::spawn(move |mut s| {
        let _ = s.write_all(b"bye early");
        let _ = s.shutdown(Shutdown::Write);
        let got = read_all(&mut s).unwrap_or_default();
        let _ = tx.send(got);
    });
    let engine = start(&single(pool("p", Balance::RoundRobin, &[backend.addr])));
    let mut c = connect(engine.listener_addrs()[0]);
    let mut first = [0u8; 9];
    c.read_exact(&mut first).expect("greeting");
    assert_eq!(&first, b"bye early");
    let mut eof = [0u8; 1];
    assert_eq!(
        c.read(&mut eof).expect("eof"),
        0,
        "the backend's FIN must reach the client"
    );
    c.write_all(b"still talking")
        .expect("write after the backend's FIN");
    c.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(
        rx.recv_timeout(IO_TIMEOUT).expect("backend result"),
        b"still talking"
    );
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::Done), 1);
}

#[test]
fn client_reset_resets_the_backend() {
    let (tx, rx) = mpsc::channel();
    let backend = Backend::spawn(move |mut s| {
        let mut buf = [0u8; 5];
        let _ = s.read_exact(&mut buf);
        let _ = tx.send(buf.to_vec());
        let mut rest = [0u8; 16];
        let outcome = s.read(&mut rest);
        let _ = tx.send(match outcome {
            Err(e) if e.kind() == ErrorKind::ConnectionReset => b"reset".to_vec(),
            Ok(0) => b"eof".to_vec(),
            other => format!("{other:?}").into_bytes(),
        });
    });
    let engine = start(&single(pool("p", Balance::RoundRobin, &[backend.addr])));
    let c = connect(engine.listener_addrs()[0]);
    (&c).write_all(b"hello").expect("write");
    assert_eq!(
        rx.recv_timeout(IO_TIMEOUT).expect("backend got data"),
        b"hello"
    );
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(c);
    assert_eq!(
        rx.recv_timeout(IO_TIMEOUT).expect("backend outcome"),
        b"reset"
    );
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::ClientError), 1);
}

#[test]
fn backend_reset_resets_the_client() {
    let backend = Backend::spawn(|mut s| {
        let mut buf = [0u8; 5];
        let _ = s.read_exact(&mut buf);
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    });
    let engine = start(&single(pool("p", Balance::RoundRobin, &[backend.addr])));
    let mut c = connect(engine.listener_addrs()[0]);
    c.write_all(b"hello").expect("write");
    let mut buf = [0u8; 16];
    let err = c
        .read(&mut buf)
        .expect_err("the backend's reset must reach the client");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::BackendError), 1);
}

#[test]
fn refused_backend_fails_over_to_the_next() {
    let good = Backend::echo();
    let dead = refused_addr();
    let engine = start(&single(pool("p", Balance::RoundRobin, &[dead, good.addr])));
    let addr = engine.listener_addrs()[0];
    for i in 0..20u32 {
        let mut c = connect(addr);
        let msg = format!("try {i}");
        c.write_all(msg.as_bytes()).expect("write");
        c.shutdown(Shutdown::Write).expect("half-close");
        assert_eq!(
            read_all(&mut c).expect("echo"),
            msg.as_bytes(),
            "connection {i}"
        );
    }
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::Done), 20);
    assert!(
        t.connect_failures >= 1,
        "round robin must have tried the refused backend: {t}"
    );
    assert_eq!(t.connect_failures + 20, t.connect_attempts);
}

#[test]
fn every_backend_refusing_closes_the_client_and_counts_it() {
    let engine = start(&single(pool(
        "p",
        Balance::RoundRobin,
        &[refused_addr(), refused_addr()],
    )));
    let mut c = connect(engine.listener_addrs()[0]);
    let mut buf = [0u8; 8];
    match c.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection to be refused, got {other:?}"),
    }
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::ConnectFailed), 1);
    assert_eq!(t.connect_failures, 2);
}

#[test]
fn a_thousand_concurrent_connections() {
    const N: usize = 1000;
    let backend = Backend::echo();
    let mut cfg = single(pool("p", Balance::RoundRobin, &[backend.addr]));
    cfg.engine.cores = levee::config::CoreSet::Auto;
    let engine = start(&cfg);
    let addr = engine.listener_addrs()[0];
    let mut conns: Vec<TcpStream> = (0..N).map(|_| connect(addr)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(format!("conn {i:04}").as_bytes())
            .expect("write");
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let mut got = [0u8; 9];
        c.read_exact(&mut got).expect("echo");
        assert_eq!(&got, format!("conn {i:04}").as_bytes());
    }
    assert_eq!(engine.totals().active(), N as u64);
    drop(conns);
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.accepted, N as u64);
    assert_eq!(t.active(), 0);
}

#[test]
fn ipv6_on_both_sides() {
    let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!("skipped: no IPv6 loopback on this host");
        return;
    };
    drop(probe);
    let backend = Backend::spawn_on("[::1]:0".parse().expect("literal"), |mut s| {
        let peer = s.peer_addr().map(|a| a.is_ipv6()).unwrap_or(false);
        let _ = s.write_all(if peer { b"v6" } else { b"v4" });
    });
    let mut cfg = single(pool("p", Balance::RoundRobin, &[backend.addr]));
    cfg.listeners[0].addr = "[::1]:0".parse::<SocketAddr>().expect("literal");
    let engine = start(&cfg);
    let addr = engine.listener_addrs()[0];
    assert!(addr.is_ipv6());
    let mut c = connect(addr);
    assert_eq!(read_all(&mut c).expect("reply"), b"v6");
    engine.stop();
    engine.join().expect("join");
}

#[test]
fn two_listeners_reach_their_own_pools() {
    let a = Backend::named("pool-a");
    let b = Backend::named("pool-b");
    let mut cfg = single(pool("a", Balance::RoundRobin, &[a.addr]));
    cfg.pools.push(pool("b", Balance::RoundRobin, &[b.addr]));
    let mut second = cfg.listeners[0].clone();
    second.name = "second".into();
    second.pool = 1;
    cfg.listeners.push(second);
    let engine = start(&cfg);
    let addrs = engine.listener_addrs().to_vec();
    for _ in 0..3 {
        assert_eq!(read_all(&mut connect(addrs[0])).expect("a"), b"pool-a");
        assert_eq!(read_all(&mut connect(addrs[1])).expect("b"), b"pool-b");
    }
    engine.stop();
    engine.join().expect("join");
}

#[test]
fn a_slow_reader_pushes_back_on_the_backend() {
    // The client reads nothing; the backend writes without blocking until it cannot. What the
    // backend managed to write is what levee and the kernel buffers hold: it must be bounded,
    // far below the 256 MiB the backend tries.
    let (tx, rx) = mpsc::channel();
    let backend = Backend::spawn(move |s| {
        s.set_nonblocking(true).expect("nonblocking");
        let buf = vec![7u8; 64 * 1024];
        let mut written = 0u64;
        let mut stalled = 0;
        while written < (256 << 20) && stalled < 200 {
            match (&s).write(&buf) {
                Ok(n) => {
                    written += n as u64;
                    stalled = 0;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    stalled += 1;
                    thread::sleep(Duration::from_millis(5));
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(written);
    });
    let engine = start(&single(pool("p", Balance::RoundRobin, &[backend.addr])));
    let c = connect(engine.listener_addrs()[0]);
    let written = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("backend result");
    assert!(
        written < 64 << 20,
        "levee buffered without bound: the backend wrote {written} bytes"
    );
    drop(c);
    engine.stop();
    engine.join().expect("join");
}

#[test]
fn a_tiny_buffer_pool_starves_and_recovers_without_losing_a_byte() {
    // Sixteen 1 KiB buffers for eight connections moving a MiB each way at once: receives run
    // out of buffers again and again, and must resume as sends return them.
    const CONNS: usize = 8;
    const TOTAL: u64 = 1 << 20;
    let backend = Backend::echo();
    let mut cfg = single(pool("p", Balance::RoundRobin, &[backend.addr]));
    cfg.engine.buffers = 16;
    cfg.engine.buffer_size = 1024;
    let engine = start(&cfg);
    let addr = engine.listener_addrs()[0];
    let clients: Vec<_> = (0..CONNS)
        .map(|_| {
            thread::spawn(move || {
                let mut c = connect(addr);
                let mut reader = c.try_clone().expect("clone");
                let rx = thread::spawn(move || drain(&mut reader));
                let sent = send_pattern(&mut c, TOTAL);
                c.shutdown(Shutdown::Write).expect("shutdown");
                (sent, rx.join().expect("reader"))
            })
        })
        .collect();
    for c in clients {
        let (sent, (len, sum)) = c.join().expect("client");
        assert_eq!((len, sum), (TOTAL, sent));
    }
    engine.stop();
    let t = engine.join().expect("join");
    assert_eq!(t.closed(CloseReason::Done), CONNS as u64, "{t}");
}

/// Fifty clients at once, each behind a backend that answers a few hundred KiB and then
/// resets: every client must see the reset, not a hang (with receive bundles of two buffers
/// on Linux 6.18, one in ten or so waited until it gave up: the reset was lost).
fn resets_after_a_burst_reach_every_client(recv_bundle: u32) -> usize {
    let backend = Backend::spawn(|mut s| {
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).is_err() {
            return;
        }
        let _ = send_pattern(&mut s, 200 * 1024 + u64::from(b[0]) * 1024);
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    });
    let mut cfg = single(pool("p", Balance::RoundRobin, &[backend.addr]));
    cfg.engine.recv_bundle = recv_bundle;
    let engine = start(&cfg);
    let addr = engine.listener_addrs()[0];
    let clients: Vec<_> = (0..50u8)
        .map(|i| {
            thread::spawn(move || {
                let mut c = connect(addr);
                c.write_all(&[i * 4]).expect("request");
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) => return "an end, not a reset".to_string(),
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::ConnectionReset => return String::new(),
                        Err(e) => return format!("{e}"),
                    }
                }
            })
        })
        .collect();
    let failed: Vec<String> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .filter(|e| !e.is_empty())
        .collect();
    engine.stop();
    engine.join().expect("join");
    if !failed.is_empty() {
        eprintln!("engine.recv_bundle = {recv_bundle}: {failed:?}");
    }
    failed.len()
}

#[test]
fn a_backend_reset_after_a_burst_reaches_every_client() {
    let recv_bundle = common::engine_config().recv_bundle;
    assert_eq!(
        resets_after_a_burst_reach_every_client(recv_bundle),
        0,
        "clients that never saw their backend's reset (engine.recv_bundle = {recv_bundle})"
    );
}
