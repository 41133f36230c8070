//! Feeds arbitrary bytes to the segment readers. Shared by the `corrupt` test (proptest inputs)
//! and the `segment_reader` cargo-fuzz target. Success is: no panic, no fault, no hang; every
//! operation returns a value or an error.
//!
//! The first input byte picks how the bytes are used:
//! - `0`: the whole file (header validation, `inspect`, opening either kind);
//! - `1`: a valid SPSC segment with a few records, whose control and data area the rest of the
//!   input overwrites (the first two bytes pick where, in 8-byte steps);
//! - `2`: the same for an MPMC queue (positions, handle entries, slots, dead letters);
//! - `3`: the same for a table (wait line, holder entries, caps, words, counts).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use levee_rings::mpmc::{Config, Queue};
use levee_rings::spsc;
use levee_rings::table::{self, Table};

/// Bounds every loop, so a hostile segment cannot make the harness itself run long.
const STEPS: usize = 64;

pub fn run(dir: &Path, data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let path = dir.join("segment");
    let _ = std::fs::remove_file(&path);
    match mode % 4 {
        0 => {
            std::fs::write(&path, body).expect("write segment file");
            let _ = levee_rings::inspect(&path);
            if let Ok(mut c) = spsc::Consumer::open(&path) {
                drain_spsc(&mut c);
            }
            if let Ok(q) = Queue::open(&path) {
                exercise_queue(&q);
            }
            if let Ok(t) = Table::open(&path) {
                exercise_table(&t);
            }
        }
        1 => {
            let (mut p, c) = spsc::create(&path, 4096).expect("create SPSC");
            for i in 0..8u8 {
                let _ = p.push(&vec![i; 8 + 40 * usize::from(i)]);
            }
            drop(c);
            overwrite(&path, body);
            let _ = levee_rings::inspect(&path);
            if let Ok(mut c) = spsc::Consumer::open(&path) {
                drain_spsc(&mut c);
            }
            for _ in 0..STEPS {
                if p.push(&[7u8; 100]).is_err() {
                    break;
                }
            }
            let _ = p.reserve(64).map(|r| r.commit());
            p.publish();
        }
        3 => {
            let config = table::Config {
                rows: 4,
                holders: 3,
                words: 2,
                padded: mode & 4 != 0,
            };
            let t = Table::create(&path, &config).expect("create table");
            let h = t.holder().expect("holder");
            for row in 0..4 {
                t.set_cap(row, row as u32);
                let _ = h.try_acquire(row);
            }
            overwrite(&path, body);
            let _ = levee_rings::inspect(&path);
            exercise_table(&t);
            if let Ok(t) = Table::open(&path) {
                exercise_table(&t);
            }
            drop(h);
            exercise_table(&t);
        }
        _ => {
            let config = Config {
                capacity: 8,
                max_record: 64,
                dead_letter_capacity: 4,
                max_attempts: 2,
                max_handles: 4,
            };
            let q = Queue::create(&path, &config).expect("create MPMC");
            {
                let mut p = q.producer().expect("producer");
                for i in 0..5u8 {
                    let _ = p.push(&vec![i; 8 * usize::from(i)]);
                }
            }
            overwrite(&path, body);
            let _ = levee_rings::inspect(&path);
            exercise_queue(&q);
            if let Ok(q) = Queue::open(&path) {
                exercise_queue(&q);
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Overwrites part of the segment past its header with `body[2..]`, at the 8-byte step given by
/// `body[..2]`, never growing the file.
fn overwrite(path: &Path, body: &[u8]) {
    if body.len() < 2 {
        return;
    }
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open segment");
    let len = f.metadata().expect("stat").len();
    let at = 128 + 8 * u64::from(u16::from_le_bytes([body[0], body[1]]));
    if at >= len {
        return;
    }
    let room = (len - at) as usize;
    let bytes = &body[2..];
    f.write_all_at(&bytes[..bytes.len().min(room)], at)
        .expect("overwrite");
}

fn drain_spsc(c: &mut spsc::Consumer) {
    let mut out = Vec::new();
    for _ in 0..STEPS {
        match c.pop(&mut out) {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
    }
    let _ = c.pending_bytes();
    if let Ok(Some(r)) = c.peek() {
        let _ = r.len();
        r.release();
    }
    let _ = c.prepare_data_wait();
}

fn exercise_queue(q: &Queue) {
    let _ = q.stats();
    if let Ok(mut c) = q.consumer() {
        for _ in 0..STEPS {
            match c.claim() {
                Ok(Some(claim)) => {
                    let _ = claim.attempts();
                    let _ = claim.len();
                    claim.ack();
                }
                Ok(None) | Err(_) => break,
            }
        }
        let _ = c.reap();
        let _ = c.prepare_data_wait();
    }
    if let Ok(mut p) = q.producer() {
        for i in 0..8u8 {
            let _ = p.push(&[i; 32]);
        }
        let _ = p.prepare_space_wait();
    }
    if let Ok(mut d) = q.dead_letters() {
        for _ in 0..STEPS {
            match d.claim() {
                Ok(Some(l)) => l.ack(),
                Ok(None) | Err(_) => break,
            }
        }
    }
    let _ = q.stats();
}

fn exercise_table(t: &Table) {
    let c = t.config();
    let _ = t.holders();
    for index in 0..c.holders + 1 {
        let _ = t.is_attached(index);
    }
    let rows = c.rows.min(STEPS);
    for row in 0..rows {
        let _ = (t.cap(row), t.count(row));
        for k in 0..c.words {
            let _ = t.word(row, k).load(std::sync::atomic::Ordering::Relaxed);
        }
    }
    let _ = t.prepare_release_wait(|| true);
    let _ = t.prepare_release_wait(|| false);
    if let Ok(h) = t.holder() {
        let _ = h.reap();
        for row in 0..rows {
            let _ = h.try_acquire(row);
            let _ = h.try_acquire_with(row, |others| others < 2);
            h.add(row, 3);
            h.sub(row, 2);
            h.release(row);
            h.release(row);
            let _ = h.held(row);
        }
    }
}
