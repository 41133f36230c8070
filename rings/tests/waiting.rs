//! Waiting: an io_uring `FutexWait` on the word a ring exposes is woken by a producer or consumer
//! in another process, and an idle consumer sleeps instead of spinning.
//!
//! The `FutexWait` tests need io_uring's futex operations, Linux 6.7 or later (levee itself runs
//! on 6.0, where its overflow tier polls every 10 ms instead). Where the kernel lacks them, or
//! io_uring is disabled, they fail, saying so; with `LEVEE_ALLOW_SKIP=1` in the environment they
//! print `SKIPPED: <why>` to stderr and pass instead (see `common::skip`).

mod common;

use std::time::Duration;

use common::{Scratch, spawn};
use io_uring::types::{SubmitArgs, Timespec};
use io_uring::{IoUring, Probe, opcode};
use levee_rings::mpmc::{Config, Queue};
use levee_rings::{FutexWait, spsc};

/// futex2 flag: the word is 32 bits. No `FUTEX2_PRIVATE` (128): the word is shared.
const FUTEX2_SIZE_U32: u32 = 0x02;
const FUTEX_BITSET_MATCH_ANY: u64 = 0xffff_ffff;

/// A ring with FutexWait; where the kernel lacks it, a failure, or `None` when skips are allowed
/// (see the module's doc).
fn uring() -> Option<IoUring> {
    let ring = match IoUring::new(8) {
        Ok(ring) => ring,
        Err(e) => {
            common::skip(&format!("io_uring is not available here ({e})"));
            return None;
        }
    };
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).expect("probe");
    if !probe.is_supported(opcode::FutexWait::CODE) {
        common::skip("this kernel's io_uring has no FutexWait (Linux 6.7 has it)");
        return None;
    }
    Some(ring)
}

fn submit_futex_wait(ring: &mut IoUring, w: &FutexWait) {
    let sqe = opcode::FutexWait::new(
        w.word(),
        u64::from(w.value()),
        FUTEX_BITSET_MATCH_ANY,
        FUTEX2_SIZE_U32,
    )
    .build()
    .user_data(7);
    // SAFETY: the futex word lives in the mapping that `w` keeps alive until the completion has
    // been reaped below.
    unsafe { ring.submission().push(&sqe).expect("sq has room") };
    ring.submit().expect("submit");
}

/// Waits (at most 30 s) for the FutexWait's completion and returns its result.
fn complete(ring: &mut IoUring) -> i32 {
    let ts = Timespec::new().sec(30);
    let args = SubmitArgs::new().timespec(&ts);
    ring.submitter()
        .submit_with_args(1, &args)
        .expect("FutexWait completed within 30 s");
    let cqe = ring.completion().next().expect("a completion");
    assert_eq!(cqe.user_data(), 7);
    cqe.result()
}

#[test]
#[ignore = "child process entry"]
fn child_waker() {
    if !common::is_child() {
        return;
    }
    let path = common::var("RING_PATH");
    match common::var("ROLE").as_str() {
        "spsc-push" => spsc::Producer::open(&path).unwrap().push(b"hello").unwrap(),
        "spsc-drain" => {
            let mut c = spsc::Consumer::open(&path).unwrap();
            let mut out = Vec::new();
            while c.pop(&mut out).unwrap() {}
        }
        "mpmc-drain" => {
            let q = Queue::open(&path).unwrap();
            let mut c = q.consumer().unwrap();
            while let Some(claim) = c.claim().unwrap() {
                claim.ack();
            }
        }
        role => panic!("unknown role {role}"),
    }
}

fn wake_from_child(path: &std::path::Path, role: &str) {
    let child = spawn(
        "child_waker",
        &[
            ("RING_PATH", path.display().to_string()),
            ("ROLE", role.to_string()),
        ],
    );
    common::join(child, role);
}

#[test]
fn io_uring_futex_wait_for_spsc_data_is_woken_by_another_process() {
    let Some(mut ring) = uring() else { return };
    let s = Scratch::new("uring-data");
    let path = s.path("r");
    let mut c = spsc::Consumer::create(&path, 4096).unwrap();
    let w = c.prepare_data_wait().unwrap().expect("an empty ring waits");
    submit_futex_wait(&mut ring, &w);
    assert!(
        ring.completion().next().is_none(),
        "nothing may complete before the push"
    );
    wake_from_child(&path, "spsc-push");
    let res = complete(&mut ring);
    // 0: woken; -EAGAIN: the push landed before the kernel queued the wait. Both are wake-ups.
    assert!(res == 0 || res == -libc::EAGAIN, "FutexWait result {res}");
    drop(w);
    let mut out = Vec::new();
    assert!(c.pop(&mut out).unwrap());
    assert_eq!(out, b"hello");
}

#[test]
fn io_uring_futex_wait_for_spsc_space_is_woken_by_another_process() {
    let Some(mut ring) = uring() else { return };
    let s = Scratch::new("uring-space");
    let path = s.path("r");
    let mut p = spsc::Producer::create(&path, 256).unwrap();
    while p.push(&[1u8; 24]).is_ok() {}
    let w = p
        .prepare_space_wait(24)
        .unwrap()
        .expect("a full ring waits");
    submit_futex_wait(&mut ring, &w);
    assert!(
        ring.completion().next().is_none(),
        "nothing may complete before the drain"
    );
    wake_from_child(&path, "spsc-drain");
    let res = complete(&mut ring);
    assert!(res == 0 || res == -libc::EAGAIN, "FutexWait result {res}");
    drop(w);
    p.push(&[2u8; 24]).unwrap();
}

#[test]
fn io_uring_futex_wait_for_mpmc_space_is_woken_by_another_process() {
    let Some(mut ring) = uring() else { return };
    let s = Scratch::new("uring-mpmc");
    let path = s.path("q");
    let q = Queue::create(
        &path,
        &Config {
            capacity: 4,
            ..Config::default()
        },
    )
    .unwrap();
    let mut p = q.producer().unwrap();
    while p.push(b"ticket").is_ok() {}
    let w = p.prepare_space_wait().unwrap().expect("a full queue waits");
    submit_futex_wait(&mut ring, &w);
    assert!(
        ring.completion().next().is_none(),
        "nothing may complete before the drain"
    );
    wake_from_child(&path, "mpmc-drain");
    let res = complete(&mut ring);
    assert!(res == 0 || res == -libc::EAGAIN, "FutexWait result {res}");
    drop(w);
    p.push(b"ticket").unwrap();
}

#[test]
fn a_registered_waiter_sees_the_word_move_on_the_next_push() {
    let Some(mut ring) = uring() else { return };
    let s = Scratch::new("uring-eagain");
    let q = Queue::create(s.path("q"), &Config::default()).unwrap();
    let mut c = q.consumer().unwrap();
    let w = c
        .prepare_data_wait()
        .unwrap()
        .expect("an empty queue waits");
    // The push lands between registration and submission: the producer saw the waiter and
    // moved the word, so the wait cannot sleep through it.
    q.producer().unwrap().push(b"raced").unwrap();
    submit_futex_wait(&mut ring, &w);
    assert_eq!(complete(&mut ring), -libc::EAGAIN);
    drop(w);
    let claim = c.claim().unwrap().expect("the raced record");
    assert_eq!(&claim[..], b"raced");
    claim.ack();
    assert!(
        c.prepare_data_wait().unwrap().is_some(),
        "empty again: wait again"
    );
}

#[test]
#[ignore = "child process entry"]
fn child_idle_consumer() {
    if !common::is_child() {
        return;
    }
    let q = Queue::open(common::var("RING_PATH")).unwrap();
    let mut c = q.consumer().unwrap();
    common::signal_ready(b"");
    let claim = c
        .claim_wait(Some(Duration::from_secs(60)))
        .unwrap()
        .expect("a record");
    assert_eq!(&claim[..], b"wake");
    claim.ack();
}

/// The states of every thread of process `pid` (R running, S sleeping, ...).
fn thread_states(pid: u32) -> Vec<char> {
    let mut states = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap_or_default();
        if let Some(i) = stat.rfind(')') {
            states.extend(stat[i + 1..].trim_start().chars().next());
        }
    }
    states
}

#[test]
fn an_idle_consumer_sleeps_instead_of_spinning() {
    let s = Scratch::new("idle");
    let path = s.path("q");
    let q = Queue::create(&path, &Config::default()).unwrap();
    let ready = s.path("ready");
    let child = spawn(
        "child_idle_consumer",
        &[
            ("RING_PATH", path.display().to_string()),
            ("READY", ready.display().to_string()),
        ],
    );
    common::wait_for_file(&ready);
    let pid = child.id();
    // Once past its brief spin, every thread of it sleeps; then look at it for a while: a thread
    // that spins would be seen running.
    common::wait_until("the idle consumer sleeps", || {
        thread_states(pid).iter().all(|&st| st == 'S')
    });
    let mut running = 0;
    for _ in 0..20 {
        running += thread_states(pid).iter().filter(|&&st| st == 'R').count();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        running <= 2,
        "the idle consumer was seen running {running} times out of 20"
    );
    q.producer().unwrap().push(b"wake").unwrap();
    common::join(child, "idle consumer");
}
