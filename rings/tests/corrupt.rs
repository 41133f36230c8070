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

/// What a reader holds is a copy: a peer that writes the ring's bytes under a peeked record, a
/// claim or a reservation (here, `pwrite` to the segment file, which every mapping of it sees)
/// changes neither what the reader reads nor what the producer commits.
#[test]
fn records_claims_and_reservations_in_hand_are_copies_a_peer_cannot_change() {
    let s = Scratch::new("copies");
    let path = s.path("r");
    let (mut p, mut c) = spsc::create(&path, 4096).unwrap();
    p.push(b"12345678").unwrap();
    let rec = c.peek().unwrap().expect("a record");
    poke(&path, DATA + 8, b"xxxxxxxx");
    assert_eq!(&rec[..], b"12345678");
    rec.release();
    let mut r = p.reserve(8).unwrap();
    r.copy_from_slice(b"abcdefgh");
    // The reservation's payload starts 16 bytes on: after the first record and its own header.
    poke(&path, DATA + 16 + 8, b"yyyyyyyy");
    r.commit_and_publish();
    let mut out = Vec::new();
    assert!(c.pop(&mut out).unwrap());
    assert_eq!(out, b"abcdefgh");

    let path = s.path("q");
    let q = queue(&path);
    q.producer().unwrap().push(b"ticket").unwrap();
    let mut c = q.consumer().unwrap();
    let claim = c.claim().unwrap().expect("a record");
    // Every entry's claim buffer (the consumer's among them): 48 bytes into each 128-byte entry.
    for entry in 0..4 {
        poke(&path, 1024 + 128 * entry + 48, b"XXXXXX");
    }
    assert_eq!(&claim[..], b"ticket");
}

/// FNV-1a 64, as the segment header's checksum is documented (over bytes 8..112).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Rewrites the header of segment bytes `file` with `kind`, `total` and `params`, and a checksum
/// that matches, as the layout documented in segment.rs has it: a forged header gets past the
/// magic, version and checksum checks, to the checks of what it claims.
fn forge(file: &mut [u8], kind: u32, total: u64, params: [u64; 6]) {
    file[12..16].copy_from_slice(&kind.to_le_bytes());
    file[16..24].copy_from_slice(&total.to_le_bytes());
    for (i, p) in params.iter().enumerate() {
        file[32 + 8 * i..40 + 8 * i].copy_from_slice(&p.to_le_bytes());
    }
    let sum = fnv1a(&file[8..112]);
    file[112..120].copy_from_slice(&sum.to_le_bytes());
}

/// The kind, total length and parameters a segment's header holds.
fn header_fields(file: &[u8]) -> (u32, u64, [u64; 6]) {
    let u64_at = |at: usize| u64::from_le_bytes(file[at..at + 8].try_into().expect("8 bytes"));
    let kind = u32::from_le_bytes(file[12..16].try_into().expect("4 bytes"));
    (
        kind,
        u64_at(16),
        std::array::from_fn(|i| u64_at(32 + 8 * i)),
    )
}

/// The bytes of a fresh segment of each kind: SPSC, MPMC queue, table.
fn real_segment(s: &Scratch, kind: u8) -> Vec<u8> {
    let path = s.path(&format!("real-{kind}"));
    let _ = std::fs::remove_file(&path);
    match kind % 3 {
        0 => {
            let (mut p, _c) = spsc::create(&path, 4096).unwrap();
            p.push(b"a record").unwrap();
        }
        1 => {
            queue(&path).producer().unwrap().push(b"a ticket").unwrap();
        }
        _ => {
            let config = levee_rings::table::Config {
                rows: 4,
                holders: 2,
                words: 1,
                padded: false,
            };
            levee_rings::table::Table::create(&path, &config).unwrap();
        }
    }
    std::fs::read(&path).unwrap()
}

#[test]
fn a_forged_header_gets_past_the_magic_and_its_claims_are_checked() {
    let s = Scratch::new("forged");
    for kind in 0..3 {
        let mut file = real_segment(&s, kind);
        let (k, total, params) = header_fields(&file);
        // Forged with the fields it had: accepted, so the forging is right.
        forge(&mut file, k, total, params);
        let path = s.path("forged");
        std::fs::write(&path, &file).unwrap();
        let info = levee_rings::inspect(&path).expect("a faithful forgery is a segment");
        assert_eq!(info.len, total);
        // Claiming more than the file holds: refused on what it claims, not on the magic.
        forge(&mut file, k, total * 2, params);
        std::fs::write(&path, &file).unwrap();
        match levee_rings::inspect(&path) {
            Err(Error::NotARing { .. }) => panic!("stopped at the magic"),
            Err(Error::BadHeader { .. } | Error::Truncated { .. } | Error::Corrupt { .. }) => {}
            other => panic!("a segment claiming twice its length: {other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Headers that pass the magic, version and checksum checks but claim anything: a kind, a
    /// length, and parameters near a real segment's or arbitrary.
    #[test]
    fn forged_headers_never_crash_a_reader(
        kind_of in 0u8..3,
        kind in prop_oneof![Just(None), (0u32..6).prop_map(Some)],
        total in prop_oneof![Just(None), any::<u64>().prop_map(Some), (0u64..1 << 16).prop_map(Some)],
        tweaks in proptest::collection::vec((0usize..6, any::<u64>(), any::<bool>()), 1..4),
    ) {
        let s = Scratch::new("forgedfuzz");
        let mut file = real_segment(&s, kind_of);
        let (k, t, mut params) = header_fields(&file);
        for (i, value, flip) in tweaks {
            // Either one bit of a real parameter, or a value of its own.
            params[i] = if flip { params[i] ^ (1 << (value % 64)) } else { value };
        }
        forge(&mut file, kind.unwrap_or(k), total.unwrap_or(t), params);
        let mut input = vec![0u8];
        input.extend_from_slice(&file);
        harness::run(&s.dir, &input);
    }

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
