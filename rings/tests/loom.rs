//! Loom models of the index protocols. Run with `scripts/rings-loom.sh`
//! (`RUSTFLAGS="--cfg loom"`, preemptions capped); without `cfg(loom)` this file is empty.
#![cfg(loom)]

use levee_rings::model;
use loom::thread;

fn msg(id: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| id.wrapping_mul(17).wrapping_add(i as u8))
        .collect()
}

/// Records published by the producer arrive whole and in order, across the wrap (capacity 64,
/// records of 24, 16 and 24 bytes take 32, 24 and 32, and 8 more stay free for the end marker:
/// the third waits for space and goes to offset 0 behind padding).
#[test]
fn spsc_records_arrive_whole_and_in_order_across_the_wrap() {
    loom::model(|| {
        let (mut p, mut c) = model::spsc(64);
        let lens = [24usize, 16, 24];
        let producer = thread::spawn(move || {
            for (i, &len) in lens.iter().enumerate() {
                while !p.push(&msg(i as u8, len)) {
                    thread::yield_now();
                }
            }
        });
        let mut out = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            while !c.pop(&mut out) {
                thread::yield_now();
            }
            assert_eq!(out, msg(i as u8, len));
        }
        producer.join().unwrap();
        assert!(!c.pop(&mut out));
    });
}

/// Records staged together become visible together, through the one header the publication
/// stores last: the consumer sees none of a batch or all of it, in order. The second batch
/// starts with padding (16 bytes left at offset 48, the record takes 24) held back the same way.
#[test]
fn spsc_staged_batches_appear_whole() {
    loom::model(|| {
        let (mut p, mut c) = model::spsc(64);
        let producer = thread::spawn(move || {
            assert!(p.stage(&msg(0, 8)));
            assert!(p.stage(&msg(1, 24)));
            p.publish();
            while !p.stage(&msg(2, 16)) {
                thread::yield_now();
            }
            p.publish();
        });
        let mut out = Vec::new();
        while !c.pop(&mut out) {
            thread::yield_now();
        }
        assert_eq!(out, msg(0, 8));
        assert!(
            c.pop(&mut out),
            "the rest of the batch is visible with its first record"
        );
        assert_eq!(out, msg(1, 24));
        while !c.pop(&mut out) {
            thread::yield_now();
        }
        assert_eq!(out, msg(2, 16));
        producer.join().unwrap();
        assert!(!c.pop(&mut out));
    });
}

/// Two producers race for slots: both records arrive exactly once.
#[test]
fn mpmc_two_producers_one_consumer() {
    loom::model(|| {
        let q = model::queue(2, 8);
        let handles: Vec<_> = (0..2u8)
            .map(|k| {
                let q = q.clone();
                thread::spawn(move || {
                    while !q.push(u32::from(k), &msg(k, 8)) {
                        thread::yield_now();
                    }
                })
            })
            .collect();
        let mut got = Vec::new();
        let mut out = Vec::new();
        while got.len() < 2 {
            if q.pop(3, &mut out).is_some() {
                got.push(out.clone());
            } else {
                thread::yield_now();
            }
        }
        for h in handles {
            h.join().unwrap();
        }
        got.sort();
        let mut want = vec![msg(0, 8), msg(1, 8)];
        want.sort();
        assert_eq!(got, want);
        assert!(q.pop(3, &mut out).is_none());
    });
}

/// Two consumers compete while the producer pushes: each record goes to exactly one of them
/// (each consumer tries twice, without spinning; the main thread drains what is left).
#[test]
fn mpmc_one_producer_two_consumers() {
    loom::model(|| {
        let q = model::queue(2, 8);
        assert!(q.push(0, &msg(0, 8)));
        let consumers: Vec<_> = (1..3u32)
            .map(|me| {
                let q = q.clone();
                thread::spawn(move || {
                    let mut mine = Vec::new();
                    let mut out = Vec::new();
                    for _ in 0..2 {
                        if q.pop(me, &mut out).is_some() {
                            mine.push(out.clone());
                        }
                    }
                    mine
                })
            })
            .collect();
        assert!(q.push(0, &msg(1, 8)));
        let mut all: Vec<Vec<u8>> = consumers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let mut out = Vec::new();
        while q.pop(0, &mut out).is_some() {
            all.push(out.clone());
        }
        all.sort();
        assert_eq!(all, vec![msg(0, 8), msg(1, 8)]);
    });
}

/// A two-slot ring laps twice: the stamps keep order and nothing is overwritten before it is
/// read.
#[test]
fn mpmc_wraps_without_overwriting() {
    loom::model(|| {
        let q = model::queue(2, 8);
        let q2 = q.clone();
        let producer = thread::spawn(move || {
            for i in 0..4u8 {
                while !q2.push(0, &msg(i, 8)) {
                    thread::yield_now();
                }
            }
        });
        let mut out = Vec::new();
        for i in 0..4u8 {
            while q.pop(1, &mut out).is_none() {
                thread::yield_now();
            }
            assert_eq!(out, msg(i, 8));
        }
        producer.join().unwrap();
    });
}

/// A producer dies mid-write (its slot stays WRITING). Recovery, racing a live producer and a
/// consumer, frees the slot for the next lap: the consumer gets the live record and never the
/// abandoned one, and the ring keeps working.
#[test]
fn mpmc_abandoned_write_is_skipped_after_recovery() {
    loom::model(|| {
        let q = model::queue(2, 8);
        assert!(q.abandon_write(1));
        let q2 = q.clone();
        let producer = thread::spawn(move || {
            while !q2.push(2, &msg(7, 8)) {
                thread::yield_now();
            }
        });
        let q3 = q.clone();
        let reaper = thread::spawn(move || assert!(q3.recover(0, 1)));
        let mut out = Vec::new();
        while q.pop(3, &mut out).is_none() {
            thread::yield_now();
        }
        assert_eq!(out, msg(7, 8));
        producer.join().unwrap();
        reaper.join().unwrap();
        assert!(q.push(2, &msg(8, 8)));
        assert!(q.pop(3, &mut out).is_some());
        assert_eq!(out, msg(8, 8));
    });
}
