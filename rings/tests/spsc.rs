//! SPSC ring behaviour in one process, and a property test against a `VecDeque` model.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use common::Scratch;
use levee_rings::{Error, PushError, spsc};
use proptest::prelude::*;

#[test]
fn records_come_out_in_order_with_their_lengths() {
    let s = Scratch::new("spsc-order");
    let (mut p, mut c) = spsc::create(s.path("r"), 4096).unwrap();
    for len in [0usize, 1, 7, 8, 9, 100, 2000] {
        p.push(&common::message(len as u64, len.max(8))[..len.max(8)])
            .unwrap();
    }
    let mut out = Vec::new();
    for len in [0usize, 1, 7, 8, 9, 100, 2000] {
        assert!(c.pop(&mut out).unwrap());
        assert_eq!(common::check(&out), len as u64);
        assert_eq!(out.len(), len.max(8));
    }
    assert!(!c.pop(&mut out).unwrap());
}

#[test]
fn empty_record_round_trips() {
    let s = Scratch::new("spsc-empty");
    let (mut p, mut c) = spsc::create(s.path("r"), 64).unwrap();
    p.push(&[]).unwrap();
    let mut out = vec![1, 2, 3];
    assert!(c.pop(&mut out).unwrap());
    assert!(out.is_empty());
}

#[test]
fn full_ring_says_so_and_recovers_after_a_pop() {
    let s = Scratch::new("spsc-full");
    let (mut p, mut c) = spsc::create(s.path("r"), 256).unwrap();
    // Each 24-byte record takes 32 bytes, and the end marker 8 more: 7 fit in 256.
    for i in 0..7 {
        p.push(&common::message(i, 24)).unwrap();
    }
    assert!(matches!(
        p.push(&common::message(7, 24)),
        Err(PushError::Full)
    ));
    let mut out = Vec::new();
    assert!(c.pop(&mut out).unwrap());
    c.publish();
    p.push(&common::message(7, 24)).unwrap();
    for want in 1..8 {
        assert!(c.pop(&mut out).unwrap());
        assert_eq!(common::check(&out), want);
    }
}

#[test]
fn oversized_record_is_refused_with_the_limit() {
    let s = Scratch::new("spsc-large");
    let (mut p, _c) = spsc::create(s.path("r"), 1024).unwrap();
    assert_eq!(p.max_record(), 504);
    p.push(&[0u8; 504]).unwrap();
    match p.push(&[0u8; 505]) {
        Err(PushError::TooLarge { len: 505, max: 504 }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn wrap_inserts_padding_and_keeps_records_whole() {
    let s = Scratch::new("spsc-wrap");
    let (mut p, mut c) = spsc::create(s.path("r"), 512).unwrap();
    let mut out = Vec::new();
    // Two 208-byte records advance to offset 416; a 112-byte record then needs the wrap.
    for id in 0..2 {
        p.push(&common::message(id, 200)).unwrap();
        assert!(c.pop(&mut out).unwrap());
    }
    c.publish();
    p.push(&common::message(2, 100)).unwrap();
    p.push(&common::message(3, 100)).unwrap();
    // The padding took 96 bytes: 512 - 96 - 2 * 112 = 192 left, room for one more 112.
    p.push(&common::message(4, 100)).unwrap();
    assert!(matches!(
        p.push(&common::message(5, 100)),
        Err(PushError::Full)
    ));
    for id in 2..5 {
        assert!(c.pop(&mut out).unwrap());
        assert_eq!(common::check(&out), id);
        assert_eq!(out.len(), 100);
    }
    assert!(!c.pop(&mut out).unwrap());
}

#[test]
fn zero_copy_reserve_commit_publish_peek_release() {
    let s = Scratch::new("spsc-zc");
    let (mut p, mut c) = spsc::create(s.path("r"), 1024).unwrap();
    {
        let mut r = p.reserve(16).unwrap();
        common::fill(7, &mut r);
        r.commit();
    }
    // Committed but not published: invisible.
    assert!(c.peek().unwrap().is_none());
    p.publish();
    {
        let rec = c.peek().unwrap().expect("published record");
        assert_eq!(common::check(&rec), 7);
        // Not released: the same record again.
    }
    let rec = c.peek().unwrap().expect("record still there");
    assert_eq!(common::check(&rec), 7);
    rec.release();
    assert!(c.peek().unwrap().is_none());
    // A dropped reservation writes nothing.
    let _ = p.reserve(8).unwrap();
    p.publish();
    assert!(c.peek().unwrap().is_none());
}

#[test]
fn a_producer_that_died_between_tail_and_header_is_taken_over() {
    use std::os::unix::fs::FileExt;
    const TAIL: u64 = 128;
    let s = Scratch::new("spsc-half-published");
    let path = s.path("r");
    let (mut p, mut c) = spsc::create(&path, 4096).unwrap();
    // 24 bytes at offset 0, the end marker at 24.
    p.push(&common::message(1, 16)).unwrap();
    drop(p);
    // What a producer leaves when it dies after storing `tail` for one more record but before
    // the header that would publish it: `tail` at 48, the end marker still at 24.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&48u64.to_le_bytes(), TAIL).unwrap();
    assert_eq!(c.pending_bytes().unwrap(), 48);
    let mut p = spsc::Producer::open(&path).unwrap();
    assert_eq!(
        c.pending_bytes().unwrap(),
        24,
        "the unpublished record's space is taken back"
    );
    p.push(&common::message(2, 16)).unwrap();
    let mut out = Vec::new();
    for want in [1, 2] {
        assert!(c.pop(&mut out).unwrap());
        assert_eq!(common::check(&out), want);
    }
    assert!(!c.pop(&mut out).unwrap());
}

#[test]
fn staged_records_are_published_when_the_ring_fills() {
    let s = Scratch::new("spsc-stage");
    let (mut p, mut c) = spsc::create(s.path("r"), 128).unwrap();
    let mut n = 0;
    loop {
        match p.reserve(8) {
            Ok(r) => {
                r.commit();
                n += 1;
            }
            Err(PushError::Full) => break,
            Err(e) => panic!("{e}"),
        }
    }
    // 16 bytes each, 8 of them held for the end marker: 7 in 128.
    assert_eq!(n, 7);
    let mut out = Vec::new();
    let mut got = 0;
    while c.pop(&mut out).unwrap() {
        got += 1;
    }
    assert_eq!(got, n, "Full must publish what was staged");
}

#[test]
fn each_end_is_held_by_one_handle() {
    let s = Scratch::new("spsc-busy");
    let path = s.path("r");
    let (p, c) = spsc::create(&path, 1024).unwrap();
    assert!(matches!(
        spsc::Producer::open(&path),
        Err(Error::Busy {
            role: "producer",
            ..
        })
    ));
    assert!(matches!(
        spsc::Consumer::open(&path),
        Err(Error::Busy {
            role: "consumer",
            ..
        })
    ));
    drop(p);
    drop(c);
    spsc::Producer::open(&path).unwrap();
    spsc::Consumer::open(&path).unwrap();
}

#[test]
fn reopened_ends_continue_where_the_old_ones_published() {
    let s = Scratch::new("spsc-reopen");
    let path = s.path("r");
    let (mut p, mut c) = spsc::create(&path, 1024).unwrap();
    for i in 0..5 {
        p.push(&common::message(i, 16)).unwrap();
    }
    let r = p.reserve(16).unwrap();
    r.commit(); // staged, then the producer goes away: Drop publishes it
    drop(p);
    let mut out = Vec::new();
    assert!(c.pop(&mut out).unwrap());
    // Peeked but not released, then the consumer goes: redelivered to the next one.
    assert!(c.peek().unwrap().is_some());
    drop(c);
    let mut c = spsc::Consumer::open(&path).unwrap();
    let mut p = spsc::Producer::open(&path).unwrap();
    p.push(&common::message(99, 16)).unwrap();
    let mut ids = Vec::new();
    while c.pop(&mut out).unwrap() {
        ids.push(u64::from_le_bytes(out[..8].try_into().unwrap()));
    }
    assert_eq!(ids, vec![1, 2, 3, 4, 0, 99]);
}

/// The address of the futex word a wait needed now sleeps on; the registration is dropped at
/// once.
fn word_of(w: levee_rings::Result<Option<levee_rings::FutexWait>>) -> usize {
    w.unwrap().expect("the ring says to wait").word() as usize
}

#[test]
fn wait_for_data_times_out_on_an_empty_ring_and_returns_when_data_arrives() {
    let s = Scratch::new("spsc-wait");
    let (mut p, mut c) = spsc::create(s.path("r"), 1024).unwrap();
    assert!(!c.wait_for_data(Some(Duration::from_millis(20))).unwrap());
    // Push only once this thread sleeps on the data word: a push before would prove nothing
    // about the wake-up.
    let (me, word) = (common::gettid(), word_of(c.prepare_data_wait()));
    let t = std::thread::spawn(move || {
        common::wait_until("the consumer sleeps", || common::sleeps_on(me, word));
        p.push(b"wake up!").unwrap();
        p
    });
    assert!(c.wait_for_data(None).unwrap());
    let mut out = Vec::new();
    assert!(c.pop(&mut out).unwrap());
    assert_eq!(out, b"wake up!");
    t.join().unwrap();
}

#[test]
fn wait_for_space_returns_when_the_consumer_frees_room() {
    let s = Scratch::new("spsc-space");
    let (mut p, mut c) = spsc::create(s.path("r"), 128).unwrap();
    while p.push(&[0u8; 8]).is_ok() {}
    assert!(
        !p.wait_for_space(8, Some(Duration::from_millis(20)))
            .unwrap()
    );
    let (me, word) = (common::gettid(), word_of(p.prepare_space_wait(8)));
    let t = std::thread::spawn(move || {
        let mut out = Vec::new();
        common::wait_until("the producer sleeps", || common::sleeps_on(me, word));
        while c.pop(&mut out).unwrap() {}
        c
    });
    assert!(p.wait_for_space(8, None).unwrap());
    p.push(&[1u8; 8]).unwrap();
    t.join().unwrap();
}

#[test]
fn threads_move_many_records_in_order() {
    let s = Scratch::new("spsc-threads");
    let (mut p, mut c) = spsc::create(s.path("r"), 4096).unwrap();
    const N: u64 = 100_000;
    let t = std::thread::spawn(move || {
        for i in 0..N {
            let m = common::message(i, 8 + (i % 120) as usize);
            loop {
                match p.push(&m) {
                    Ok(()) => break,
                    Err(PushError::Full) => {
                        p.wait_for_space(m.len(), None).unwrap();
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
    });
    let mut out = Vec::new();
    for i in 0..N {
        while !c.pop(&mut out).unwrap() {
            c.wait_for_data(None).unwrap();
        }
        assert_eq!(common::check(&out), i);
        assert_eq!(out.len(), 8 + (i % 120) as usize);
    }
    t.join().unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    Push(usize),
    Pop,
    Reserve(usize),
    Peek(bool),
    PublishProducer,
    PublishConsumer,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..249).prop_map(Op::Push),
        4 => Just(Op::Pop),
        2 => (0usize..249).prop_map(Op::Reserve),
        2 => any::<bool>().prop_map(Op::Peek),
        1 => Just(Op::PublishProducer),
        1 => Just(Op::PublishConsumer),
    ]
}

const CAP: u64 = 512;

/// The ring as byte positions: where each record (and the padding before it) lies, and which
/// positions each side has published.
#[derive(Default)]
struct Model {
    /// Published records: (bytes, padding before it not yet skipped, its footprint).
    published: VecDeque<(Vec<u8>, u64, u64)>,
    staged: Vec<(Vec<u8>, u64, u64)>,
    tail: u64,
    head: u64,
    head_published: u64,
}

impl Model {
    fn footprint(&self, len: usize) -> (u64, u64) {
        let need = 8 + (len as u64).next_multiple_of(8);
        let contiguous = CAP - self.tail % CAP;
        (if contiguous < need { contiguous } else { 0 }, need)
    }
    /// The record and its padding fit, with the 8-byte end marker after them.
    fn fits(&self, len: usize) -> bool {
        let (pad, need) = self.footprint(len);
        pad + need + 8 <= CAP - (self.tail - self.head_published)
    }
    fn stage(&mut self, m: Vec<u8>) {
        let (pad, need) = self.footprint(m.len());
        self.tail += pad + need;
        self.staged.push((m, pad, need));
    }
    fn publish(&mut self) {
        self.published.extend(self.staged.drain(..));
    }
    fn consumer_empty(&mut self) {
        self.head_published = self.head;
    }
    fn release(&mut self) -> Vec<u8> {
        let (m, pad, need) = self.published.pop_front().expect("model record");
        self.head += pad + need;
        if self.head - self.head_published >= CAP / 4 {
            self.head_published = self.head;
        }
        m
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    /// Any sequence of operations behaves like a queue: what is published comes out in order and
    /// nothing else does; and a push is refused as Full exactly when the record and its padding
    /// do not fit in the space the consumer has returned.
    #[test]
    fn behaves_like_a_vecdeque(ops in proptest::collection::vec(op(), 1..400)) {
        let s = Scratch::new("spsc-prop");
        let (mut p, mut c) = spsc::create(s.path("r"), CAP as usize).unwrap();
        let mut model = Model::default();
        let mut next = 0u64;
        let mut out = Vec::new();
        for op in ops {
            match op {
                Op::Push(len) | Op::Reserve(len) => {
                    let len = len.max(8);
                    let m = common::message(next, len);
                    let fits = model.fits(len);
                    let result = match op {
                        Op::Push(_) => p.push(&m),
                        _ => p.reserve(len).map(|mut r| {
                            r.copy_from_slice(&m);
                            r.commit();
                        }),
                    };
                    match result {
                        Ok(()) => {
                            prop_assert!(fits, "accepted a record that does not fit");
                            next += 1;
                            model.stage(m);
                            if matches!(op, Op::Push(_)) {
                                model.publish();
                            }
                        }
                        Err(PushError::Full) => {
                            prop_assert!(!fits, "Full although the record fits");
                            model.publish();
                        }
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::Pop => {
                    let got = c.pop(&mut out).unwrap();
                    if model.published.is_empty() {
                        prop_assert!(!got);
                        model.consumer_empty();
                    } else {
                        prop_assert!(got);
                        let want = model.release();
                        prop_assert_eq!(&out, &want);
                    }
                }
                Op::Peek(release) => {
                    let rec = c.peek().unwrap();
                    match (rec, model.published.front_mut()) {
                        (Some(r), Some(front)) => {
                            prop_assert_eq!(&r[..], &front.0[..]);
                            // Peeking skips the padding before the record.
                            model.head += front.1;
                            front.1 = 0;
                            if release {
                                r.release();
                                model.release();
                            }
                        }
                        (None, None) => model.consumer_empty(),
                        (r, w) => prop_assert!(false, "peek {:?} vs model {:?}",
                            r.map(|r| r.len()), w.map(|w| w.0.len())),
                    }
                }
                Op::PublishProducer => { p.publish(); model.publish(); }
                Op::PublishConsumer => { c.publish(); model.consumer_empty(); }
            }
        }
        p.publish();
        model.publish();
        while let Some((want, _, _)) = model.published.pop_front() {
            prop_assert!(c.pop(&mut out).unwrap());
            prop_assert_eq!(&out, &want);
        }
        prop_assert!(!c.pop(&mut out).unwrap());
    }
}
