//! Real processes sharing rings: the children are this test binary, re-executed with a role.
//! Each `child_*` test is an ignored entry that does nothing unless started by `common::spawn`.

mod common;

use std::time::Duration;

use common::{Scratch, spawn};
use levee_rings::mpmc::{Config, Queue};
use levee_rings::{PushError, spsc};

const STOP: u64 = u64::MAX;

fn mpmc_push(p: &mut levee_rings::mpmc::Producer, m: &[u8]) {
    loop {
        match p.push(m) {
            Ok(()) => return,
            Err(PushError::Full) => {
                p.wait_for_space(Some(Duration::from_millis(100))).unwrap();
            }
            Err(e) => panic!("push: {e}"),
        }
    }
}

fn spsc_len(id: u64) -> usize {
    8 + (id % 57) as usize
}

// ---- SPSC: a million records from a child producer to this process ----

#[test]
#[ignore = "child process entry"]
fn child_spsc_producer() {
    if !common::is_child() {
        return;
    }
    let mut p =
        spsc::Producer::open_with(common::var("RING_PATH"), Duration::from_secs(30)).unwrap();
    let mut m = [0u8; 64];
    for id in 0..common::var_u64("COUNT") {
        let len = spsc_len(id);
        common::fill(id, &mut m[..len]);
        loop {
            match p.push(&m[..len]) {
                Ok(()) => break,
                Err(PushError::Full) => {
                    p.wait_for_space(len, Some(Duration::from_millis(100)))
                        .unwrap();
                }
                Err(e) => panic!("push: {e}"),
            }
        }
    }
}

#[test]
fn spsc_a_million_records_cross_processes_in_order() {
    const COUNT: u64 = 1_000_000;
    let s = Scratch::new("xp-spsc");
    let path = s.path("r");
    let mut c = spsc::Consumer::create(&path, 1 << 16).unwrap();
    let child = spawn(
        "child_spsc_producer",
        &[
            ("RING_PATH", path.display().to_string()),
            ("COUNT", COUNT.to_string()),
        ],
    );
    let mut out = Vec::new();
    for id in 0..COUNT {
        while !c.pop(&mut out).unwrap() {
            c.wait_for_data(Some(Duration::from_secs(30))).unwrap();
        }
        assert_eq!(out.len(), spsc_len(id));
        assert_eq!(common::check(&out), id);
    }
    common::join(child, "SPSC producer");
    assert!(!c.pop(&mut out).unwrap());
}

// ---- SPSC: kill -9 of either end ----

#[test]
#[ignore = "child process entry"]
fn child_spsc_stall() {
    if !common::is_child() {
        return;
    }
    let path = common::var("RING_PATH");
    if common::var("ROLE") == "producer" {
        let mut p = spsc::Producer::open(&path).unwrap();
        p.push(&common::message(1, 16)).unwrap();
        let mut r = p.reserve(16).unwrap();
        r[..8].copy_from_slice(&[0xee; 8]); // half written, never committed
        common::signal_ready(b"");
        std::thread::sleep(Duration::from_secs(60));
    } else {
        let mut c = spsc::Consumer::open(&path).unwrap();
        let rec = c.peek().unwrap().expect("a record to hold");
        assert_eq!(common::check(&rec), 1);
        common::signal_ready(b"");
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
fn spsc_survives_kill_9_of_either_end() {
    let s = Scratch::new("xp-spsc-kill");
    let path = s.path("r");
    drop(spsc::Producer::create(&path, 4096).unwrap());
    let vars = |role: &str, ready: &str| {
        vec![
            ("RING_PATH", path.display().to_string()),
            ("ROLE", role.to_string()),
            ("READY", s.path(ready).display().to_string()),
        ]
    };
    // A producer killed mid-write: what it published stays, what it reserved never appears.
    let child = spawn("child_spsc_stall", &vars("producer", "p-ready"));
    common::wait_for_file(&s.path("p-ready"));
    common::kill9(child);
    let mut p = spsc::Producer::open(&path).unwrap();
    p.push(&common::message(2, 16)).unwrap();
    // A consumer killed while it holds a record it has not released: the record is read again.
    let child = spawn("child_spsc_stall", &vars("consumer", "c-ready"));
    common::wait_for_file(&s.path("c-ready"));
    common::kill9(child);
    let mut c = spsc::Consumer::open(&path).unwrap();
    let mut out = Vec::new();
    let mut ids = Vec::new();
    while c.pop(&mut out).unwrap() {
        ids.push(common::check(&out));
    }
    assert_eq!(ids, vec![1, 2]);
}

// ---- MPMC: N producers, M consumers, a million records, each delivered once ----

#[test]
#[ignore = "child process entry"]
fn child_mpmc_producer() {
    if !common::is_child() {
        return;
    }
    let q = Queue::open_with(common::var("RING_PATH"), Duration::from_secs(30)).unwrap();
    let mut p = q.producer().unwrap();
    let (first, count) = (common::var_u64("FIRST"), common::var_u64("COUNT"));
    let mut m = [0u8; 64];
    for id in first..first + count {
        common::fill(id, &mut m);
        mpmc_push(&mut p, &m);
    }
}

/// Claims until a STOP record, keeping a bitmap of ids seen (a second sighting counts as a
/// duplicate), then writes "count duplicates" and the bitmap to OUT. With LOG set, appends each
/// id to that file before acknowledging it, so a kill loses nothing from the accounting.
#[test]
#[ignore = "child process entry"]
fn child_mpmc_consumer() {
    use std::io::Write;
    if !common::is_child() {
        return;
    }
    let q = Queue::open_with(common::var("RING_PATH"), Duration::from_secs(30)).unwrap();
    let mut c = q.consumer().unwrap();
    let total = common::var_u64("TOTAL") as usize;
    let mut log = std::env::var("LOG").ok().map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
    });
    let mut seen = vec![0u8; total.div_ceil(8)];
    let (mut count, mut dups) = (0u64, 0u64);
    loop {
        let Some(claim) = c.claim_wait(Some(Duration::from_secs(60))).unwrap() else {
            panic!("no record for 60 s");
        };
        let id = common::check(&claim);
        if id == STOP {
            claim.ack();
            break;
        }
        if let Some(f) = log.as_mut() {
            f.write_all(&id.to_le_bytes()).unwrap();
        }
        claim.ack();
        let (byte, bit) = (id as usize / 8, 1u8 << (id % 8));
        if seen[byte] & bit != 0 {
            dups += 1;
        }
        seen[byte] |= bit;
        count += 1;
    }
    let mut out = format!("{count} {dups}\n").into_bytes();
    out.extend_from_slice(&seen);
    std::fs::write(common::var("OUT"), out).unwrap();
}

fn read_consumer_output(path: &std::path::Path) -> (u64, u64, Vec<u8>) {
    let raw = std::fs::read(path).unwrap();
    let nl = raw.iter().position(|&b| b == b'\n').unwrap();
    let head = std::str::from_utf8(&raw[..nl]).unwrap();
    let mut it = head.split(' ').map(|n| n.parse::<u64>().unwrap());
    (
        it.next().unwrap(),
        it.next().unwrap(),
        raw[nl + 1..].to_vec(),
    )
}

#[test]
fn mpmc_a_million_records_from_2_producer_to_2_consumer_processes_exactly_once() {
    const TOTAL: u64 = 1_000_000;
    const PRODUCERS: u64 = 2;
    const CONSUMERS: u64 = 2;
    let s = Scratch::new("xp-mpmc");
    let path = s.path("q");
    let q = Queue::create(
        &path,
        &Config {
            capacity: 4096,
            max_record: 64,
            ..Config::default()
        },
    )
    .unwrap();
    let ring = ("RING_PATH", path.display().to_string());
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|k| {
            spawn(
                "child_mpmc_consumer",
                &[
                    ring.clone(),
                    ("TOTAL", TOTAL.to_string()),
                    ("OUT", s.path(&format!("out{k}")).display().to_string()),
                ],
            )
        })
        .collect();
    let per = TOTAL / PRODUCERS;
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|k| {
            spawn(
                "child_mpmc_producer",
                &[
                    ring.clone(),
                    ("FIRST", (k * per).to_string()),
                    ("COUNT", per.to_string()),
                ],
            )
        })
        .collect();
    for child in producers {
        common::join(child, "MPMC producer");
    }
    let mut p = q.producer().unwrap();
    for _ in 0..CONSUMERS {
        mpmc_push(&mut p, &common::message(STOP, 64));
    }
    for child in consumers {
        common::join(child, "MPMC consumer");
    }
    let mut union = vec![0u8; (TOTAL as usize).div_ceil(8)];
    let mut delivered = 0;
    for k in 0..CONSUMERS {
        let (count, dups, seen) = read_consumer_output(&s.path(&format!("out{k}")));
        assert_eq!(dups, 0, "consumer {k} saw duplicates");
        for (u, b) in union.iter_mut().zip(&seen) {
            assert_eq!(*u & b, 0, "a record went to two consumers");
            *u |= b;
        }
        delivered += count;
    }
    assert_eq!(delivered, TOTAL);
    assert!(union.iter().all(|&b| b == 0xff), "a record was lost");
    let st = q.stats();
    assert_eq!(
        (st.depth, st.requeued, st.abandoned_writes, st.corrupt),
        (0, 0, 0, 0)
    );
}

// ---- MPMC: kill -9 of a consumer holding a claim, and of a producer mid-write ----

#[test]
#[ignore = "child process entry"]
fn child_mpmc_stall() {
    if !common::is_child() {
        return;
    }
    let q = Queue::open(common::var("RING_PATH")).unwrap();
    match common::var("ROLE").as_str() {
        "claim" => {
            let mut c = q.consumer().unwrap();
            let claim = c.claim().unwrap().expect("a record to hold");
            common::signal_ready(&claim[..]);
            std::thread::sleep(Duration::from_secs(60));
        }
        "mid-claim" => {
            let mut c = q.consumer().unwrap();
            assert!(c.stall_mid_claim_for_crash_test().unwrap());
            common::signal_ready(b"");
            std::thread::sleep(Duration::from_secs(60));
        }
        "mid-push" => {
            let mut p = q.producer().unwrap();
            p.push(b"before").unwrap();
            assert!(p.stall_mid_push_for_crash_test(b"partial").unwrap());
            common::signal_ready(b"");
            std::thread::sleep(Duration::from_secs(60));
        }
        role => panic!("unknown role {role}"),
    }
}

fn stall(s: &Scratch, path: &std::path::Path, role: &str, n: u32) -> Vec<u8> {
    let ready = s.path(&format!("ready-{role}-{n}"));
    let child = spawn(
        "child_mpmc_stall",
        &[
            ("RING_PATH", path.display().to_string()),
            ("ROLE", role.to_string()),
            ("READY", ready.display().to_string()),
        ],
    );
    common::wait_for_file(&ready);
    common::kill9(child);
    std::fs::read(&ready).unwrap()
}

#[test]
fn mpmc_claims_of_a_killed_consumer_are_requeued_then_dead_lettered() {
    let s = Scratch::new("xp-claim");
    let path = s.path("q");
    let q = Queue::create(
        &path,
        &Config {
            max_attempts: 3,
            ..Config::default()
        },
    )
    .unwrap();
    let mut p = q.producer().unwrap();
    p.push(b"poison").unwrap();
    p.push(b"fine").unwrap();
    // Killed while holding a copied claim, then while holding a claim not yet copied out.
    assert_eq!(stall(&s, &path, "claim", 0), b"poison");
    let mut c = q.consumer().unwrap(); // attaching looks for the dead
    let claim = c.claim().unwrap().expect("fine is next");
    assert_eq!(&claim[..], b"fine");
    claim.ack();
    drop(c);
    stall(&s, &path, "mid-claim", 1);
    let mut c = q.consumer().unwrap();
    let claim = c.claim().unwrap().expect("poison requeued twice");
    assert_eq!(&claim[..], b"poison");
    assert_eq!(claim.attempts(), 2);
    let _ = claim;
    drop(c);
    // The consumer above gave it back (third failed delivery): it is a dead letter now.
    let st = q.stats();
    assert_eq!(
        (st.requeued, st.dead_lettered, st.dead_letters, st.depth),
        (2, 1, 1, 0)
    );
    let mut dl = q.dead_letters().unwrap();
    let letter = dl.claim().unwrap().expect("a dead letter");
    assert_eq!(&letter[..], b"poison");
    assert_eq!(letter.attempts(), 3);
    letter.ack();
}

#[test]
fn mpmc_a_producer_killed_mid_write_does_not_wedge_the_queue() {
    let s = Scratch::new("xp-write");
    let path = s.path("q");
    let q = Queue::create(
        &path,
        &Config {
            capacity: 4,
            ..Config::default()
        },
    )
    .unwrap();
    let mut c = q.consumer().unwrap();
    stall(&s, &path, "mid-push", 0);
    let mut p = q.producer().unwrap();
    p.push(b"after").unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let claim = c
            .claim_wait(Some(Duration::from_secs(30)))
            .unwrap()
            .expect("a record");
        got.push(claim.to_vec());
        claim.ack();
    }
    assert_eq!(got, vec![b"before".to_vec(), b"after".to_vec()]);
    assert_eq!(q.stats().abandoned_writes, 1);
    // The freed slot is usable on the next lap: fill the ring to the brim and drain it.
    for i in 0..4 {
        p.push(&common::message(i, 16)).unwrap();
    }
    for i in 0..4 {
        let claim = c.claim().unwrap().expect("a record");
        assert_eq!(common::check(&claim), i);
        claim.ack();
    }
    assert!(c.claim().unwrap().is_none());
}

// ---- MPMC: consumers killed at arbitrary moments while records flow ----

#[test]
fn mpmc_consumers_killed_at_random_lose_nothing() {
    const TOTAL: u64 = 20_000;
    const KILLS: u32 = 4;
    let s = Scratch::new("xp-chaos");
    let path = s.path("q");
    let q = Queue::create(
        &path,
        &Config {
            capacity: 256,
            max_record: 64,
            max_attempts: 100,
            ..Config::default()
        },
    )
    .unwrap();
    let ring = ("RING_PATH", path.display().to_string());
    let consumer = |n: u32| {
        spawn(
            "child_mpmc_consumer",
            &[
                ring.clone(),
                ("TOTAL", TOTAL.to_string()),
                ("OUT", s.path(&format!("out{n}")).display().to_string()),
                ("LOG", s.path(&format!("log{n}")).display().to_string()),
            ],
        )
    };
    let producer = spawn(
        "child_mpmc_producer",
        &[
            ring.clone(),
            ("FIRST", "0".into()),
            ("COUNT", TOTAL.to_string()),
        ],
    );
    let mut victim = consumer(0);
    let survivor = consumer(1);
    // Kill the victim at moments spread over the run, restarting it each time.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    for n in 1..=KILLS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_millis(5 + x % 40));
        common::kill9(victim);
        victim = consumer(n + 1);
    }
    common::join(producer, "producer");
    let mut p = q.producer().unwrap();
    for _ in 0..2 {
        mpmc_push(&mut p, &common::message(STOP, 64));
    }
    common::join(victim, "last victim");
    common::join(survivor, "survivor");
    // Every id was logged at least once; a kill can repeat at most the one record it held.
    let mut times = vec![0u32; TOTAL as usize];
    for n in 0..=KILLS + 1 {
        let Ok(log) = std::fs::read(s.path(&format!("log{n}"))) else {
            continue;
        };
        for id in log.chunks_exact(8) {
            let id = u64::from_le_bytes(id.try_into().unwrap());
            times[id as usize] += 1;
        }
    }
    let lost = times.iter().filter(|&&t| t == 0).count();
    let repeats: u32 = times.iter().map(|&t| t.saturating_sub(1)).sum();
    assert_eq!(lost, 0, "records lost");
    assert!(
        repeats <= KILLS,
        "{repeats} repeated deliveries for {KILLS} kills"
    );
    let st = q.stats();
    assert_eq!(st.depth, 0);
    assert!(st.requeued <= u64::from(KILLS));
}
