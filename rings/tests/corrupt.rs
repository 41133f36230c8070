//! A corrupt or hostile peer cannot make a reader fault, read out of bounds or loop: specific
//! corruptions are reported as such, and arbitrary bytes (the fuzz harness, fed by proptest here)
//! only ever produce values or errors.

mod common;
#[path = "harness/reader.rs"]
mod harness;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use common::Scratch;
use levee_rings::mpmc::{Config, Queue};
use levee_rings::{Error, PushError, spsc};
use proptest::prelude::*;

const TAIL: u64 = 128;
const HEAD: u64 = 256;
const DATA: u64 = 640;

fn poke(path: &std::path::Path, at: u64, bytes: &[u8]) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(bytes, at)
        .unwrap();
}

fn corrupt_what<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    match r {
        Err(Error::Corrupt { what }) => what,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn spsc_tail_beyond_capacity_is_reported() {
    let s = Scratch::new("bad-tail");
    let path = s.path("r");
    let (mut p, mut c) = spsc::create(&path, 4096).unwrap();
    p.push(b"12345678").unwrap();
    poke(&path, TAIL, &(4096u64 + 64).to_le_bytes());
    let what = corrupt_what(c.pending_bytes());
    assert!(what.contains("indices"), "{what}");
    drop(c);
    assert!(corrupt_what(spsc::Consumer::open(&path).map(|_| ())).contains("indices"));
    drop(p);
    assert!(corrupt_what(spsc::Producer::open(&path).map(|_| ())).contains("indices"));
}

#[test]
fn spsc_record_overrunning_the_data_area_is_reported() {
    let s = Scratch::new("bad-len");
    let path = s.path("r");
    let (mut p, mut c) = spsc::create(&path, 4096).unwrap();
    p.push(b"12345678").unwrap();
    // 4090 bytes from offset 0 would end past the 4096-byte data area.
    poke(&path, DATA, &4090u32.to_le_bytes());
    let what = corrupt_what(c.pop(&mut Vec::new()));
    assert!(what.contains("overruns"), "{what}");
}

#[test]
fn spsc_record_longer_than_published_bytes_is_reported_to_a_new_producer() {
    let s = Scratch::new("bad-published");
    let path = s.path("r");
    let (mut p, _c) = spsc::create(&path, 4096).unwrap();
    p.push(b"12345678").unwrap();
    drop(p);
    // Length 1000 in a record whose published extent is 16 bytes: a producer taking over walks
    // the published records to find where they end, and refuses this one.
    poke(&path, DATA, &1000u32.to_le_bytes());
    let what = corrupt_what(spsc::Producer::open(&path).map(|_| ()));
    assert!(what.contains("overruns"), "{what}");
}

#[test]
fn spsc_unknown_record_kind_and_bad_padding_are_reported() {
    let s = Scratch::new("bad-kind");
    let path = s.path("r");
    let (mut p, mut c) = spsc::create(&path, 4096).unwrap();
    p.push(b"12345678").unwrap();
    poke(&path, DATA + 4, &0xdead_beefu32.to_le_bytes());
    assert!(corrupt_what(c.pop(&mut Vec::new())).contains("neither"));
    // Padding that does not run to the end of the data area.
    poke(&path, DATA, &(8u64 | (0x5245_4302u64 << 32)).to_le_bytes());
    assert!(corrupt_what(c.pop(&mut Vec::new())).contains("neither"));
}

#[test]
fn spsc_head_moved_by_a_hostile_consumer_is_reported_to_the_producer() {
    let s = Scratch::new("bad-head");
    let path = s.path("r");
    let (mut p, _c) = spsc::create(&path, 256).unwrap();
    while p.push(&[0u8; 24]).is_ok() {}
    poke(&path, HEAD, &(1u64 << 40).to_le_bytes());
    match p.push(&[0u8; 24]) {
        Err(PushError::Corrupt(Error::Corrupt { what })) => assert!(what.contains("head")),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

fn queue(path: &std::path::Path) -> Queue {
    Queue::create(
        path,
        &Config {
            capacity: 4,
            max_record: 64,
            dead_letter_capacity: 2,
            max_attempts: 2,
            max_handles: 4,
        },
    )
    .unwrap()
}

/// Offset of slot `i` of the main ring in the queue above: control, 4 entries of 128, slots of 80.
fn slot(i: u64) -> u64 {
    1024 + 4 * 128 + 80 * i
}

#[test]
fn mpmc_oversized_record_is_reported_dropped_and_counted() {
    let s = Scratch::new("bad-mlen");
    let path = s.path("q");
    let q = queue(&path);
    let mut p = q.producer().unwrap();
    p.push(b"first").unwrap();
    p.push(b"second").unwrap();
    poke(&path, slot(0) + 8, &1_000_000u32.to_le_bytes());
    let mut c = q.consumer().unwrap();
    let what = corrupt_what(c.claim().map(|c| c.map(|c| c.to_vec())));
    assert!(what.contains("1000000"), "{what}");
    let claim = c.claim().unwrap().expect("the queue goes on");
    assert_eq!(&claim[..], b"second");
    claim.ack();
    assert_eq!(q.stats().corrupt, 1);
}

#[test]
fn mpmc_stamps_that_never_match_are_reported_not_looped_on() {
    let s = Scratch::new("bad-stamps");
    let path = s.path("q");
    let q = queue(&path);
    let mut c = q.consumer().unwrap();
    let mut p = q.producer().unwrap();
    // Every stamp a write in progress, laps "ahead" of every lap a handle could be at: no slot
    // is ever ready or free, however far a handle jumps.
    for i in 0..4 {
        poke(&path, slot(i), &(((1u64 << 55) - 3) << 8).to_le_bytes());
    }
    let what = corrupt_what(c.claim().map(|c| c.is_some()));
    assert!(what.contains("progress"), "{what}");
    assert!(matches!(p.push(b"x"), Err(PushError::Corrupt(_))));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_segment_bytes_never_crash_a_reader(
        mode in 0u8..8,
        at in any::<u16>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let s = Scratch::new("fuzzish");
        let mut input = vec![mode];
        input.extend_from_slice(&(at % 256).to_le_bytes());
        input.extend_from_slice(&bytes);
        harness::run(&s.dir, &input);
    }
}
