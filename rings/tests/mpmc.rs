//! MPMC queue behaviour in one process, and a property test against a `VecDeque` model.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use common::Scratch;
use levee_rings::mpmc::{Config, Queue};
use levee_rings::{Error, PushError};
use proptest::prelude::*;

fn small(capacity: usize) -> Config {
    Config {
        capacity,
        max_record: 64,
        dead_letter_capacity: 4,
        max_attempts: 3,
        max_handles: 8,
    }
}

#[test]
fn records_are_claimed_in_order_and_acked() {
    let s = Scratch::new("mpmc-order");
    let q = Queue::create(s.path("q"), &small(8)).unwrap();
    let mut p = q.producer().unwrap();
    let mut c = q.consumer().unwrap();
    for i in 0..5 {
        p.push(&common::message(i, 8 + i as usize)).unwrap();
    }
    assert_eq!(q.stats().depth, 5);
    for i in 0..5 {
        let claim = c.claim().unwrap().expect("a record");
        assert_eq!(common::check(&claim), i);
        assert_eq!(claim.len(), 8 + i as usize);
        assert_eq!(claim.attempts(), 0);
        claim.ack();
    }
    assert!(c.claim().unwrap().is_none());
    assert_eq!(q.stats().depth, 0);
}

#[test]
fn full_queue_says_so_at_once() {
    let s = Scratch::new("mpmc-full");
    let q = Queue::create(s.path("q"), &small(4)).unwrap();
    let mut p = q.producer().unwrap();
    for i in 0..4 {
        p.push(&common::message(i, 16)).unwrap();
    }
    assert!(matches!(
        p.push(&common::message(4, 16)),
        Err(PushError::Full)
    ));
    assert!(!p.wait_for_space(Some(Duration::from_millis(10))).unwrap());
    let mut c = q.consumer().unwrap();
    c.claim().unwrap().unwrap().ack();
    p.push(&common::message(4, 16)).unwrap();
    match p.push(&[0u8; 65]) {
        Err(PushError::TooLarge { len: 65, max: 64 }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn an_unacked_claim_is_redelivered_then_dead_lettered() {
    let s = Scratch::new("mpmc-retry");
    let q = Queue::create(s.path("q"), &small(8)).unwrap();
    let mut p = q.producer().unwrap();
    let mut c = q.consumer().unwrap();
    p.push(b"poison").unwrap();
    p.push(b"fine").unwrap();
    for attempt in 0..3 {
        let claim = c.claim().unwrap().expect("redelivered");
        assert_eq!(&claim[..], b"poison");
        assert_eq!(claim.attempts(), attempt);
        let _ = claim; // not acked
    }
    // Three deliveries failed: the poison record is a dead letter now.
    let claim = c.claim().unwrap().expect("the next record");
    assert_eq!(&claim[..], b"fine");
    claim.ack();
    assert!(c.claim().unwrap().is_none());
    let st = q.stats();
    assert_eq!((st.dead_letters, st.dead_lettered), (1, 1));
    let mut dl = q.dead_letters().unwrap();
    let letter = dl.claim().unwrap().expect("a dead letter");
    assert_eq!(&letter[..], b"poison");
    assert_eq!(letter.attempts(), 3);
    letter.ack();
    assert!(dl.claim().unwrap().is_none());
}

#[test]
fn a_consumer_dropped_with_a_claim_gives_it_back() {
    let s = Scratch::new("mpmc-drop");
    let q = Queue::create(s.path("q"), &small(8)).unwrap();
    let mut p = q.producer().unwrap();
    p.push(b"work").unwrap();
    let mut c1 = q.consumer().unwrap();
    let claim = c1.claim().unwrap().unwrap();
    let _ = claim;
    drop(c1);
    let mut c2 = q.consumer().unwrap();
    let claim = c2.claim().unwrap().expect("requeued");
    assert_eq!(&claim[..], b"work");
    assert_eq!(claim.attempts(), 1, "one delivery was not acknowledged");
    claim.ack();
    assert_eq!(q.stats().requeued, 1);
}

#[test]
fn handle_limit_is_enforced_and_freed_on_drop() {
    let s = Scratch::new("mpmc-handles");
    let q = Queue::create(
        s.path("q"),
        &Config {
            max_handles: 2,
            ..small(4)
        },
    )
    .unwrap();
    let p = q.producer().unwrap();
    let _c = q.consumer().unwrap();
    match q.consumer() {
        Err(e @ Error::TooManyHandles { max: 2, .. }) => {
            assert!(e.to_string().contains("max_handles"))
        }
        other => panic!("expected TooManyHandles, got {:?}", other.err()),
    }
    assert_eq!(q.stats().handles, 2);
    drop(p);
    q.consumer().unwrap();
}

#[test]
fn a_released_claim_goes_to_the_tail_without_counting_a_delivery() {
    let s = Scratch::new("mpmc-release");
    let q = Queue::create(s.path("q"), &small(2)).unwrap();
    let mut p = q.producer().unwrap();
    let mut c = q.consumer().unwrap();
    p.push(b"first").unwrap();
    p.push(b"second").unwrap();
    let claim = c.claim().unwrap().expect("a record");
    assert_eq!(&claim[..], b"first");
    // The ring has a free slot again once the claim is copied out: room for it to go back.
    assert!(claim.release().unwrap());
    assert!(c.pending().is_none(), "released, not held");
    let next = c.claim().unwrap().expect("the second, now at the head");
    assert_eq!(&next[..], b"second");
    next.ack();
    let back = c.claim().unwrap().expect("the released one, from the tail");
    assert_eq!((&back[..], back.attempts()), (&b"first"[..], 0));
    // A full ring keeps the claim rather than lose it.
    p.push(b"x").unwrap();
    p.push(b"y").unwrap();
    assert!(!back.release().unwrap(), "the ring is full");
    let kept = c.pending().expect("still held");
    assert_eq!(&kept[..], b"first");
    kept.ack();
    assert_eq!(q.stats().requeued, 0, "a release is not a redelivery");
}

#[test]
fn pending_shows_a_held_claim_without_counting_a_delivery() {
    let s = Scratch::new("mpmc-pending");
    let q = Queue::create(s.path("q"), &small(8)).unwrap();
    let mut p = q.producer().unwrap();
    let mut c = q.consumer().unwrap();
    assert!(c.pending().is_none(), "nothing claimed yet");
    p.push(b"work").unwrap();
    p.push(b"next").unwrap();
    let claim = c.claim().unwrap().expect("a record");
    assert_eq!(&claim[..], b"work");
    let _ = claim; // held across "turns", not acked
    for _ in 0..3 {
        let held = c.pending().expect("still held");
        assert_eq!(&held[..], b"work");
        assert_eq!(held.attempts(), 0, "looking again is not a new delivery");
    }
    // claim() does count one: the held record again, one attempt later.
    let again = c.claim().unwrap().expect("redelivered");
    assert_eq!((&again[..], again.attempts()), (&b"work"[..], 1));
    let _ = again;
    let held = c.pending().expect("still held");
    assert_eq!(held.attempts(), 1);
    held.ack();
    assert!(c.pending().is_none(), "acknowledged through pending");
    let claim = c.claim().unwrap().expect("the next record");
    assert_eq!((&claim[..], claim.attempts()), (&b"next"[..], 0));
    claim.ack();
    assert!(c.pending().is_none());
    assert_eq!(q.stats().requeued, 0);
}

#[test]
fn depth_counts_the_ring_cheaply_from_queue_and_producer() {
    let s = Scratch::new("mpmc-depth");
    let q = Queue::create(s.path("q"), &small(4)).unwrap();
    let mut p = q.producer().unwrap();
    let mut c = q.consumer().unwrap();
    assert_eq!((q.depth(), p.depth()), (0, 0));
    for i in 0..4 {
        p.push(&common::message(i, 8)).unwrap();
        assert_eq!((q.depth(), p.depth()), (i as usize + 1, i as usize + 1));
    }
    assert!(matches!(p.push(b"x"), Err(PushError::Full)));
    assert_eq!(q.depth(), 4, "a full ring is at capacity");
    let claim = c.claim().unwrap().unwrap();
    // Claimed and copied out: the slot is free, the record no longer in the ring.
    assert_eq!((q.depth(), p.depth(), q.stats().depth), (3, 3, 3));
    let _ = claim; // held, not acked: still out of the ring
    assert_eq!(q.depth(), 3);
    while let Some(claim) = c.claim().unwrap() {
        claim.ack();
    }
    assert_eq!((q.depth(), p.depth()), (0, 0));
}

#[test]
fn claim_wait_sleeps_until_a_producer_pushes() {
    let s = Scratch::new("mpmc-wait");
    let q = Queue::create(s.path("q"), &small(8)).unwrap();
    let mut c = q.consumer().unwrap();
    assert!(
        c.claim_wait(Some(Duration::from_millis(20)))
            .unwrap()
            .is_none()
    );
    // Push only once this thread sleeps on the data word: a push before would prove nothing
    // about the wake-up.
    let me = common::gettid();
    let word = c
        .prepare_data_wait()
        .unwrap()
        .expect("an empty queue waits")
        .word() as usize;
    let q2 = q.clone();
    let t = std::thread::spawn(move || {
        common::wait_until("the consumer sleeps", || common::sleeps_on(me, word));
        q2.producer().unwrap().push(b"late").unwrap();
    });
    let claim = c.claim_wait(None).unwrap().expect("woken by the push");
    assert_eq!(&claim[..], b"late");
    claim.ack();
    t.join().unwrap();
}

#[test]
fn threads_deliver_every_record_exactly_once() {
    let s = Scratch::new("mpmc-threads");
    let q = Queue::create(s.path("q"), &small(64)).unwrap();
    const PER: u64 = 20_000;
    const PRODUCERS: u64 = 2;
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|k| {
            let mut p = q.producer().unwrap();
            std::thread::spawn(move || {
                for i in k * PER..(k + 1) * PER {
                    let m = common::message(i, 32);
                    while let Err(e) = p.push(&m) {
                        assert!(matches!(e, PushError::Full), "{e}");
                        p.wait_for_space(None).unwrap();
                    }
                }
            })
        })
        .collect();
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let mut c = q.consumer().unwrap();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while let Some(claim) = c.claim_wait(Some(Duration::from_millis(300))).unwrap() {
                    let id = common::check(&claim);
                    claim.ack();
                    if id == u64::MAX {
                        break;
                    }
                    seen.push(id);
                }
                seen
            })
        })
        .collect();
    for t in producers {
        t.join().unwrap();
    }
    let mut p = q.producer().unwrap();
    for _ in 0..2 {
        while p.push(&common::message(u64::MAX, 32)).is_err() {
            p.wait_for_space(None).unwrap();
        }
    }
    let mut all: Vec<u64> = consumers
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all.len() as u64, PER * PRODUCERS);
    assert!(
        all.iter().enumerate().all(|(i, &id)| i as u64 == id),
        "lost or duplicated ids"
    );
}

#[derive(Debug, Clone)]
enum Op {
    Push(usize),
    ClaimAck(usize),
    ClaimDrop(usize),
    /// Looks at consumer k's held claim with `pending`, acknowledging it when the flag says so.
    Pending(usize, bool),
    DeadLetter,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (1usize..=64).prop_map(Op::Push),
        4 => (0usize..2).prop_map(Op::ClaimAck),
        2 => (0usize..2).prop_map(Op::ClaimDrop),
        2 => (0usize..2, any::<bool>()).prop_map(|(k, ack)| Op::Pending(k, ack)),
        1 => Just(Op::DeadLetter),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    /// Pushes, claims, acks and abandoned claims behave like the model: a FIFO, where each
    /// consumer redelivers its own unacked record until its attempts run out, after which it is
    /// a dead letter; capacity is exact.
    #[test]
    fn behaves_like_a_vecdeque(ops in proptest::collection::vec(op(), 1..300)) {
        let s = Scratch::new("mpmc-prop");
        let q = Queue::create(s.path("q"), &small(8)).unwrap();
        let mut p = q.producer().unwrap();
        let mut cs = [q.consumer().unwrap(), q.consumer().unwrap()];
        let mut dl = q.dead_letters().unwrap();
        let mut ring: VecDeque<Vec<u8>> = VecDeque::new();
        let mut held: [Option<(Vec<u8>, u32)>; 2] = [None, None];
        let mut dead: VecDeque<(Vec<u8>, u32)> = VecDeque::new();
        let mut next = 0u64;
        for op in ops {
            match op {
                Op::Push(len) => {
                    let m = common::message(next, len.max(8));
                    match p.push(&m) {
                        Ok(()) => { prop_assert!(ring.len() < 8); ring.push_back(m); next += 1; }
                        Err(PushError::Full) => prop_assert_eq!(ring.len(), 8),
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::ClaimAck(k) | Op::ClaimDrop(k) => {
                    // What the model expects this consumer to get.
                    let mut want = None;
                    if let Some((m, attempts)) = held[k].take() {
                        if attempts + 1 >= 3 {
                            if dead.len() < 4 {
                                dead.push_back((m, attempts + 1));
                            } else {
                                // No room among the dead letters: it stays with its consumer.
                                want = Some((m, attempts));
                            }
                        } else {
                            want = Some((m, attempts + 1));
                        }
                    }
                    if want.is_none() {
                        want = ring.pop_front().map(|m| (m, 0));
                    }
                    let claim = cs[k].claim().unwrap();
                    match (claim, want) {
                        (Some(c), Some((m, attempts))) => {
                            prop_assert_eq!(&c[..], &m[..]);
                            prop_assert_eq!(c.attempts(), attempts);
                            if matches!(op, Op::ClaimAck(_)) { c.ack(); } else { held[k] = Some((m, attempts)); }
                        }
                        (None, None) => {}
                        (c, w) => prop_assert!(false, "claim {:?} vs model {:?}",
                            c.map(|c| c.to_vec()), w),
                    }
                }
                Op::Pending(k, ack) => match (cs[k].pending(), held[k].take()) {
                    (Some(c), Some((m, attempts))) => {
                        prop_assert_eq!(&c[..], &m[..]);
                        prop_assert_eq!(c.attempts(), attempts);
                        if ack { c.ack(); } else { held[k] = Some((m, attempts)); }
                    }
                    (None, None) => {}
                    (c, w) => prop_assert!(false, "pending {:?} vs model {:?}",
                        c.map(|c| c.to_vec()), w),
                },
                Op::DeadLetter => {
                    let letter = dl.claim().unwrap();
                    match (letter, dead.pop_front()) {
                        (Some(l), Some((m, attempts))) => {
                            prop_assert_eq!(&l[..], &m[..]);
                            prop_assert_eq!(l.attempts(), attempts);
                            l.ack();
                        }
                        (None, None) => {}
                        (l, w) => prop_assert!(false, "dead letter {:?} vs model {:?}",
                            l.map(|l| l.to_vec()), w),
                    }
                }
            }
            let st = q.stats();
            prop_assert_eq!(st.depth, ring.len());
            prop_assert_eq!(q.depth(), ring.len());
            prop_assert_eq!(p.depth(), ring.len());
            prop_assert_eq!(st.dead_letters, dead.len());
        }
    }
}
