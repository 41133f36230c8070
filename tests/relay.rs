//! Byte-exact relay through a running engine, against real sockets on loopback.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;

use common::*;
use levee::config::Balance;

#[test]
fn echo_round_trip() {
    let backend = Backend::echo();
    let engine = start(&single(pool("p", Balance::RoundRobin, &[backend.addr])));
    let addr = engine.listener_addrs()[0];
    let mut c = connect(addr);
    c.write_all(b"hello levee").expect("write");
    let mut got = [0u8; 11];
    c.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"hello levee");
    c.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_all(&mut c).expect("read to eof"), b"");
    engine.stop();
    let totals = engine.join().expect("join");
    assert_eq!(totals.accepted, 1);
    assert_eq!(totals.closed(levee::stats::CloseReason::Done), 1);
}
