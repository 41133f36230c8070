//! Loom models of the index protocols and the table's counting protocol. Run with `scripts/rings-loom.sh`
//! (`RUSTFLAGS="--cfg loom"`, preemptions capped); without `cfg(loom)` this file is empty.
#![cfg(loom)]

use levee_rings::model;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
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

/// Holders `0..n` each try a unit of a row capped at `cap` (`tries` times, without spinning),
/// counting themselves inside with an atomic the table does not see: never more than `cap`
/// inside at once, and every unit is given back.
fn table_race(holders: u32, cap: u32, tries: usize) {
    loom::model(move || {
        let t = model::table(1, holders, cap);
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..holders)
            .map(|me| {
                let (t, inside) = (t.clone(), inside.clone());
                thread::spawn(move || {
                    for _ in 0..tries {
                        if t.try_acquire(me, 0) {
                            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(now <= cap as usize, "{now} inside a cap of {cap}");
                            inside.fetch_sub(1, Ordering::SeqCst);
                            t.release(me, 0);
                        }
                    }
                })
            })
            .collect();
        for h in threads {
            h.join().unwrap();
        }
        assert_eq!(t.count(0), 0);
        assert!(t.try_acquire(0, 0), "a free row admits");
    });
}

/// Two holders race for the one unit of a cap-1 row, twice each.
#[test]
fn table_two_holders_race_for_a_cap_1_row() {
    table_race(2, 1, 2);
}

/// Three holders race for a cap-2 row, twice each.
#[test]
fn table_three_holders_race_for_a_cap_2_row() {
    table_race(3, 2, 2);
}

/// A holder waits for the full row's unit; another releases it. The waiter registers, re-checks
/// and "sleeps" until the futex word moves: a lost wake-up would leave it spinning forever.
#[test]
fn table_a_release_wakes_a_waiter() {
    loom::model(|| {
        let t = model::table(1, 2, 1);
        assert!(t.try_acquire(0, 0));
        let t2 = t.clone();
        let releaser = thread::spawn(move || t2.release(0, 0));
        while !t.try_acquire(1, 0) {
            t.wait_for_release(|| t.count(0) >= 1);
        }
        releaser.join().unwrap();
        assert_eq!(t.count(0), 1);
    });
}

/// A holder that died with the row's unit is reaped while another waits for the unit: the
/// reaper's zeroing wakes the waiter, and the unit is acquired exactly once.
#[test]
fn table_a_reaped_dead_holder_wakes_a_waiter() {
    loom::model(|| {
        let t = model::table(1, 3, 1);
        assert!(t.try_acquire(2, 0)); // holder 2 then "dies" holding it
        let t2 = t.clone();
        let reaper = thread::spawn(move || assert!(t2.reap(2)));
        while !t.try_acquire(0, 0) {
            t.wait_for_release(|| t.count(0) >= 1);
        }
        reaper.join().unwrap();
        assert_eq!(t.count(0), 1);
        assert!(!t.try_acquire(1, 0));
    });
}

/// A racer's failed attempt leaves a transient unit that a waiter's re-check may see after the
/// release it waits for has already happened: the racer's undo must wake it. Reaching that
/// takes three preemptions (both racers past the early look, both incremented, the racer paused
/// between its loads and its undo), one more than the script's cap, so this model raises its own
/// bound; it stays well under a second.
#[test]
fn table_a_failed_attempt_wakes_a_waiter_its_transient_unit_blocked() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(builder.preemption_bound.map_or(3, |p| p.max(3)));
    builder.check(|| {
        let t = model::table(1, 3, 1);
        assert!(t.try_acquire(0, 0));
        let (t2, t3) = (t.clone(), t.clone());
        let releaser = thread::spawn(move || t2.release(0, 0));
        let racer = thread::spawn(move || {
            if t3.try_acquire(2, 0) {
                t3.release(2, 0);
            }
        });
        while !t.try_acquire(1, 0) {
            t.wait_for_release(|| t.count(0) >= 1);
        }
        releaser.join().unwrap();
        racer.join().unwrap();
        assert_eq!(t.count(0), 1);
    });
}
