//! Tables: the segment round trip, exact caps under threads and processes, per-holder gauges,
//! waiting for a release, and recovery of a holder killed with `kill -9`.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Scratch, spawn};
use levee_rings::table::{Config, Holder, MAX_HOLDERS, MAX_ROWS, MAX_WORDS, Table};
use levee_rings::{Error, RingKind, mpmc};

fn config(rows: usize, holders: u32) -> Config {
    Config {
        rows,
        holders,
        words: 2,
        padded: true,
    }
}

fn poke(path: &std::path::Path, at: u64, bytes: &[u8]) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(bytes, at)
        .unwrap();
}

/// Waits (bounded) until `ready()` holds, polling an observable state.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 60 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn table_is_clone_send_sync_and_holder_send_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn clone<T: Clone>() {}
    send_sync::<Table>();
    clone::<Table>();
    send_sync::<Holder>();
}

#[test]
fn create_open_and_inspect_round_trip() {
    let s = Scratch::new("table-round-trip");
    let path = s.path("t");
    let cfg = Config {
        rows: 5,
        holders: 3,
        words: 4,
        padded: false,
    };
    let t = Table::create(&path, &cfg).unwrap();
    assert_eq!(t.config(), cfg);
    assert_eq!(t.path(), path);
    assert_eq!(t.creator().pid, std::process::id());
    t.set_cap(4, 9);
    t.word(4, 3).store(0xfeed, Ordering::Relaxed);
    let h = t.holder().unwrap();
    assert!(h.try_acquire(4));

    let u = Table::open(&path).unwrap();
    assert_eq!(u.config(), cfg);
    assert_eq!(
        (u.cap(4), u.count(4), u.word(4, 3).load(Ordering::Relaxed)),
        (9, 1, 0xfeed)
    );
    let info = levee_rings::inspect(&path).unwrap();
    assert_eq!(info.kind, RingKind::Table);
    assert_eq!(info.attached, 1);
    assert!(info.creator_alive);
    let _h2 = u.holder().unwrap();
    assert_eq!(levee_rings::inspect(&path).unwrap().attached, 2);
}

#[test]
fn the_wrong_kind_is_refused_both_ways() {
    let s = Scratch::new("table-kind");
    let table = s.path("t");
    let queue = s.path("q");
    drop(Table::create(&table, &config(1, 1)).unwrap());
    drop(mpmc::Queue::create(&queue, &mpmc::Config::default()).unwrap());
    match mpmc::Queue::open(&table) {
        Err(
            e @ Error::WrongKind {
                found: "TABLE",
                expected: "MPMC",
                ..
            },
        ) => assert!(e.to_string().contains("kind TABLE"), "{e}"),
        other => panic!("expected WrongKind, got {:?}", other.err()),
    }
    assert!(matches!(
        Table::open(&queue),
        Err(Error::WrongKind {
            found: "MPMC",
            expected: "TABLE",
            ..
        })
    ));
}

#[test]
fn bad_parameters_are_refused_with_the_reason() {
    let s = Scratch::new("table-params");
    let bad = [
        (config(0, 1), "rows 0"),
        (config(MAX_ROWS + 1, 1), "rows"),
        (config(1, MAX_HOLDERS + 1), "holders 257"),
        (
            Config {
                words: MAX_WORDS + 1,
                ..config(1, 1)
            },
            "words 33",
        ),
    ];
    for (i, (cfg, what)) in bad.iter().enumerate() {
        match Table::create(s.path(&format!("t{i}")), cfg) {
            Err(Error::InvalidConfig { reason }) => {
                assert!(reason.contains(what), "{reason} should name {what}")
            }
            other => panic!("{cfg:?}: expected InvalidConfig, got {other:?}"),
        }
        assert!(!s.path(&format!("t{i}")).exists());
    }
    // The largest shapes fit the segment bound (and are refused by nothing else).
    let widest = Config {
        rows: 1,
        holders: MAX_HOLDERS,
        words: MAX_WORDS,
        padded: true,
    };
    Table::create_anonymous(&s.dir, &widest).unwrap();
}

#[test]
fn a_corrupt_padded_flag_in_the_header_is_refused() {
    let s = Scratch::new("table-header");
    let path = s.path("t");
    drop(Table::create(&path, &config(2, 1)).unwrap());
    // The padded flag is parameter 3 (offset 56); the checksum (112) covers bytes 8..112.
    let mut header = std::fs::read(&path).unwrap()[..128].to_vec();
    header[56..64].copy_from_slice(&2u64.to_le_bytes());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in &header[8..112] {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    header[112..120].copy_from_slice(&h.to_le_bytes());
    poke(&path, 0, &header);
    match Table::open(&path) {
        Err(Error::BadHeader { reason, .. }) => assert!(reason.contains("padded"), "{reason}"),
        other => panic!("expected BadHeader, got {other:?}"),
    }
}

#[test]
fn an_anonymous_table_works_and_leaves_no_file() {
    let s = Scratch::new("table-anon");
    let t = Table::create_anonymous(&s.dir, &config(3, 2)).unwrap();
    assert_eq!(t.path(), s.dir);
    let h = t.holder().unwrap();
    t.set_cap(2, 1);
    assert!(h.try_acquire(2));
    assert!(!h.try_acquire(2));
    assert_eq!(t.count(2), 1);
    assert!(t.is_attached(h.index()).unwrap());
    let left: Vec<_> = std::fs::read_dir(&s.dir).unwrap().collect();
    assert!(left.is_empty(), "an anonymous table left {left:?}");
}

#[test]
fn words_are_shared_and_indices_are_checked() {
    let s = Scratch::new("table-words");
    let path = s.path("t");
    let t = Table::create(&path, &config(2, 1)).unwrap();
    let u = Table::open(&path).unwrap();
    t.word(1, 1).store(7, Ordering::Release);
    assert_eq!(
        u.word(1, 1)
            .compare_exchange(7, 8, Ordering::AcqRel, Ordering::Acquire),
        Ok(7)
    );
    assert_eq!(t.word(1, 1).load(Ordering::Acquire), 8);
    assert_eq!(
        t.word(0, 1).load(Ordering::Acquire),
        0,
        "rows do not overlap"
    );
    let h = t.holder().unwrap();
    assert!(
        panic_message(|| {
            let _ = t.word(2, 0);
        })
        .contains("row 2 out of range")
    );
    assert!(
        panic_message(|| {
            let _ = t.word(0, 2);
        })
        .contains("word 2 out of range")
    );
    assert!(
        panic_message(|| {
            let _ = t.count(2);
        })
        .contains("row 2")
    );
    assert!(panic_message(|| t.set_cap(9, 1)).contains("row 9"));
    assert!(
        panic_message(|| {
            let _ = h.try_acquire(2);
        })
        .contains("row 2")
    );
    assert!(panic_message(|| h.release(5)).contains("row 5"));
    assert_eq!(t.count(0) + t.count(1), 0);
}

/// Runs `f`, which must panic, and returns its message.
fn panic_message(f: impl FnOnce()) -> String {
    let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .expect_err("an index out of range panics");
    payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_else(|| "(no message)".into())
}

#[test]
fn holders_take_the_lowest_free_index_up_to_the_limit() {
    let s = Scratch::new("table-holders");
    let t = Table::create_anonymous(&s.dir, &config(1, 2)).unwrap();
    let a = t.holder().unwrap();
    let b = t.holder().unwrap();
    assert_eq!((a.index(), b.index()), (0, 1));
    match t.holder() {
        Err(e @ Error::TooManyHandles { max: 2, .. }) => {
            assert!(e.to_string().contains("holders"), "{e}")
        }
        other => panic!("expected TooManyHandles, got {other:?}"),
    }
    let infos = t.holders().unwrap();
    assert_eq!(infos.len(), 2);
    assert!(infos.iter().all(|i| i.alive && i.pid == std::process::id()));
    assert!(h_alive(&t, 0) && h_alive(&t, 1));
    assert!(!t.is_attached(2).unwrap(), "no such holder");
    drop(a);
    assert!(!h_alive(&t, 0));
    assert_eq!(t.holders().unwrap().len(), 1);
    assert_eq!(t.holder().unwrap().index(), 0);

    let none = Table::create_anonymous(&s.dir, &config(1, 0)).unwrap();
    assert!(matches!(
        none.holder(),
        Err(Error::TooManyHandles { max: 0, .. })
    ));
    none.set_cap(0, 3);
    assert_eq!((none.cap(0), none.count(0)), (3, 0));
}

fn h_alive(t: &Table, index: u32) -> bool {
    t.is_attached(index).unwrap()
}

#[test]
fn a_cap_is_exact_and_a_dropped_holder_gives_back_what_it_held() {
    let s = Scratch::new("table-cap");
    let t = Table::create_anonymous(&s.dir, &config(2, 3)).unwrap();
    t.set_cap(0, 3);
    let a = t.holder().unwrap();
    let b = t.holder().unwrap();
    assert!(a.try_acquire(0) && a.try_acquire(0) && b.try_acquire(0));
    assert!(!a.try_acquire(0) && !b.try_acquire(0));
    assert_eq!((t.count(0), a.held(0), b.held(0)), (3, 2, 1));
    // The other row is its own, and uncapped.
    for _ in 0..100 {
        assert!(b.try_acquire(1));
    }
    assert_eq!(t.count(1), 100);
    drop(a);
    assert_eq!(t.count(0), 1);
    let c = t.holder().unwrap();
    assert_eq!(c.held(0), 0);
    assert!(c.try_acquire(0) && c.try_acquire(0) && !c.try_acquire(0));
}

#[test]
fn admit_sees_the_count_of_the_others() {
    let s = Scratch::new("table-admit");
    let t = Table::create_anonymous(&s.dir, &config(1, 2)).unwrap();
    let a = t.holder().unwrap();
    let b = t.holder().unwrap();
    assert!(a.try_acquire(0) && a.try_acquire(0));
    assert!(b.try_acquire(0));
    let mut seen = None;
    assert!(!b.try_acquire_with(0, |others| {
        seen = Some(others);
        false
    }));
    assert_eq!(seen, Some(3), "two of a's and one of b's, not this one");
    assert_eq!((t.count(0), b.held(0)), (3, 1), "a refusal takes nothing");
    assert!(b.try_acquire_with(0, |others| others < 4));
    assert_eq!((t.count(0), b.held(0)), (4, 2));
    // A bounded-load style rule: at most one more than the others hold.
    assert!(!b.try_acquire_with(0, |others| others < 4));
    // A panicking admit gives the unit back as well.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        b.try_acquire_with(0, |_| panic!("admit failed"))
    }));
    assert!(r.is_err());
    assert_eq!(t.count(0), 4);
}

#[test]
fn a_lowered_cap_takes_nothing_back_and_a_raised_one_admits_more() {
    let s = Scratch::new("table-recap");
    let t = Table::create_anonymous(&s.dir, &config(1, 1)).unwrap();
    let h = t.holder().unwrap();
    t.set_cap(0, 3);
    for _ in 0..3 {
        assert!(h.try_acquire(0));
    }
    t.set_cap(0, 1);
    assert_eq!((t.cap(0), t.count(0)), (1, 3), "nothing taken back");
    assert!(!h.try_acquire(0));
    h.release(0);
    h.release(0);
    assert!(!h.try_acquire(0), "1 held, cap 1: still full");
    h.release(0);
    assert!(h.try_acquire(0));
    t.set_cap(0, 2);
    assert!(h.try_acquire(0) && !h.try_acquire(0));
    t.set_cap(0, 0);
    for _ in 0..50 {
        assert!(h.try_acquire(0), "cap 0: no cap");
    }
    assert_eq!(t.count(0), 52);
}

#[test]
fn stray_releases_and_gauge_decrements_never_wrap() {
    let s = Scratch::new("table-stray");
    let t = Table::create_anonymous(&s.dir, &config(1, 1)).unwrap();
    t.set_cap(0, 2);
    let h = t.holder().unwrap();
    h.release(0);
    assert_eq!((h.held(0), t.count(0)), (0, 0));
    h.add(0, 5);
    assert_eq!(t.count(0), 5, "add ignores the cap");
    assert!(!h.try_acquire(0), "but acquisitions see the gauge");
    h.sub(0, 3);
    assert_eq!(t.count(0), 2);
    h.sub(0, 10);
    assert_eq!((h.held(0), t.count(0)), (0, 0));
    assert!(h.try_acquire(0));
}

#[test]
fn hostile_counts_and_caps_give_wrong_counts_not_panics() {
    let s = Scratch::new("table-hostile");
    let path = s.path("t");
    // holders 2, words 2, padded: rows at (256 + 2 * 64) rounded to 128 = 384, 128 apart; a
    // row is cap (4), reserved (4), 2 words, then counts at +24.
    let t = Table::create(&path, &config(2, 2)).unwrap();
    let a = t.holder().unwrap();
    let b = t.holder().unwrap();
    let (row0, counts) = (384u64, 24u64);
    poke(&path, row0 + counts, &u32::MAX.to_le_bytes());
    poke(&path, row0 + counts + 4, &u32::MAX.to_le_bytes());
    assert_eq!(t.count(0), 2 * u64::from(u32::MAX));
    assert!(!a.try_acquire(0), "our own column would wrap");
    assert_eq!(a.held(0), u32::MAX, "and is left as it was");
    t.set_cap(0, u32::MAX);
    assert!(!b.try_acquire(0));
    assert!(!b.try_acquire_with(0, |_| true));
    a.add(0, 1); // wraps our own column: a wrong count, no panic
    a.sub(0, u32::MAX);
    b.release(0);
    poke(&path, row0, &0xffff_fff0u32.to_le_bytes());
    assert_eq!(t.cap(0), 0xffff_fff0);
    poke(&path, row0 + counts, &[0; 8]);
    assert_eq!(t.count(0), 0);
    assert!(a.try_acquire(0));
    // A hostile entry state counts as a holder that died, and is reaped.
    drop(b);
    poke(&path, 256 + 64, &7u64.to_le_bytes());
    poke(&path, row0 + counts + 4, &5u32.to_le_bytes());
    assert_eq!(t.count(0), 6);
    assert_eq!(a.reap().unwrap(), 1);
    assert_eq!(t.count(0), 1);
}

#[test]
fn threads_sharing_holders_never_exceed_the_cap() {
    const CAP: u64 = 3;
    const THREADS_PER_HOLDER: usize = 3;
    const ITERS: usize = 20_000;
    let s = Scratch::new("table-threads");
    let t = Table::create_anonymous(&s.dir, &config(1, 2)).unwrap();
    t.set_cap(0, CAP as u32);
    let holders = [t.holder().unwrap(), t.holder().unwrap()];
    // The oracle, independent of the table: units held right now, counted after a success and
    // before its release.
    let inside = AtomicU64::new(0);
    let most = AtomicU64::new(0);
    let wins = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for h in &holders {
            for k in 0..THREADS_PER_HOLDER {
                let (inside, most, wins) = (&inside, &most, &wins);
                scope.spawn(move || {
                    for i in 0..ITERS {
                        let got = if k == 0 {
                            h.try_acquire_with(0, |others| others < CAP)
                        } else {
                            h.try_acquire(0)
                        };
                        if !got {
                            continue;
                        }
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(now <= CAP, "{now} holders inside a cap of {CAP}");
                        most.fetch_max(now, Ordering::Relaxed);
                        wins.fetch_add(1, Ordering::Relaxed);
                        if i % 4 == 0 {
                            std::thread::yield_now();
                        }
                        inside.fetch_sub(1, Ordering::SeqCst);
                        h.release(0);
                    }
                });
            }
        }
    });
    assert_eq!(t.count(0), 0, "every unit given back");
    assert!(wins.load(Ordering::Relaxed) > 0);
    eprintln!(
        "{} acquisitions, at most {} held at once",
        wins.load(Ordering::Relaxed),
        most.load(Ordering::Relaxed)
    );
}

#[test]
fn prepare_release_wait_says_go_when_not_blocked() {
    let s = Scratch::new("table-wait-now");
    let t = Table::create_anonymous(&s.dir, &config(1, 1)).unwrap();
    t.set_cap(0, 1);
    let h = t.holder().unwrap();
    assert!(
        t.prepare_release_wait(|| t.count(0) >= 1)
            .unwrap()
            .is_none()
    );
    assert!(h.try_acquire(0));
    let w = t.prepare_release_wait(|| t.count(0) >= 1).unwrap();
    assert!(w.is_some(), "full: wait");
    drop(w);
    // A raised cap is a release too: the word moves, so a wait on the old value returns.
    let w = t
        .prepare_release_wait(|| t.count(0) >= u64::from(t.cap(0)))
        .unwrap()
        .expect("full: wait");
    t.set_cap(0, 2);
    let start = Instant::now();
    w.wait(Some(Duration::from_secs(30)));
    assert!(start.elapsed() < Duration::from_secs(20), "not woken");
    assert!(h.try_acquire(0));
}

fn thread_state(tid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let i = stat.rfind(')')?;
    stat[i + 1..].trim_start().chars().next()
}

#[test]
fn a_release_in_another_thread_wakes_a_sleeping_waiter() {
    let s = Scratch::new("table-wait");
    let t = Table::create_anonymous(&s.dir, &config(1, 2)).unwrap();
    t.set_cap(0, 1);
    let holder = t.holder().unwrap();
    assert!(holder.try_acquire(0));
    let tid = AtomicI32::new(0);
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let me = t.holder().unwrap();
            // SAFETY: gettid has no preconditions.
            tid.store(unsafe { libc::gettid() }, Ordering::SeqCst);
            let start = Instant::now();
            loop {
                if me.try_acquire(0) {
                    return start.elapsed();
                }
                if let Some(w) = t.prepare_release_wait(|| t.count(0) >= 1).unwrap() {
                    w.wait(Some(Duration::from_secs(30)));
                }
            }
        });
        // Release only once the waiter sleeps: a release before it registered would prove
        // nothing about the wake-up.
        wait_until("the waiter to sleep", || {
            let id = tid.load(Ordering::SeqCst);
            id != 0 && thread_state(id) == Some('S')
        });
        holder.release(0);
        let waited = waiter.join().unwrap();
        assert!(waited < Duration::from_secs(20), "woken late: {waited:?}");
    });
    assert_eq!(
        t.count(0),
        0,
        "the waiter's holder gave its unit back on drop"
    );
}

#[test]
fn an_io_uring_futex_wait_is_woken_by_a_release() {
    use io_uring::types::{SubmitArgs, Timespec};
    use io_uring::{IoUring, Probe, opcode};
    // Needs Linux 6.7; fails on an older kernel unless LEVEE_ALLOW_SKIP=1 (see `common::skip`).
    let mut ring = match IoUring::new(8) {
        Ok(ring) => ring,
        Err(e) => {
            common::skip(&format!("io_uring is not available here ({e})"));
            return;
        }
    };
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).expect("probe");
    if !probe.is_supported(opcode::FutexWait::CODE) {
        common::skip("this kernel's io_uring has no FutexWait (Linux 6.7 has it)");
        return;
    }
    let s = Scratch::new("table-uring");
    let t = Table::create_anonymous(&s.dir, &config(1, 1)).unwrap();
    t.set_cap(0, 1);
    let h = t.holder().unwrap();
    assert!(h.try_acquire(0));
    let w = t
        .prepare_release_wait(|| t.count(0) >= 1)
        .unwrap()
        .expect("full: wait");
    // FUTEX2_SIZE_U32 (2), never FUTEX2_PRIVATE; FUTEX_BITSET_MATCH_ANY.
    let sqe = opcode::FutexWait::new(w.word(), u64::from(w.value()), 0xffff_ffff, 0x02)
        .build()
        .user_data(7);
    // SAFETY: the futex word lives in the mapping `w` keeps alive until the completion is reaped.
    unsafe { ring.submission().push(&sqe).expect("sq has room") };
    ring.submit().expect("submit");
    assert!(
        ring.completion().next().is_none(),
        "nothing before the release"
    );
    std::thread::scope(|scope| {
        scope.spawn(|| h.release(0));
    });
    let ts = Timespec::new().sec(30);
    ring.submitter()
        .submit_with_args(1, &SubmitArgs::new().timespec(&ts))
        .expect("FutexWait completed within 30 s");
    let cqe = ring.completion().next().expect("a completion");
    assert!(
        cqe.result() == 0 || cqe.result() == -libc::EAGAIN,
        "{cqe:?}"
    );
    drop(w);
    assert!(h.try_acquire(0));
}

// ---- Across processes ----

const XP_CAP: u64 = 4;
const XP_THREADS: usize = 2;
const XP_ITERS: u64 = 20_000;
/// Row 0 is capped; row 1 word 0 is the oracle (units inside, counted after success and before
/// release), word 1 the start signal.
fn hammer(t: &Table, iters: u64) -> (u64, u64) {
    let h = t.holder().unwrap();
    let inside = t.word(1, 0);
    wait_until("the start signal", || {
        t.word(1, 1).load(Ordering::SeqCst) == 1
    });
    let (most, wins) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|scope| {
        for _ in 0..XP_THREADS {
            scope.spawn(|| {
                for i in 0..iters {
                    if !h.try_acquire(0) {
                        continue;
                    }
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    assert!(now <= XP_CAP, "{now} inside a cap of {XP_CAP}");
                    most.fetch_max(now, Ordering::Relaxed);
                    wins.fetch_add(1, Ordering::Relaxed);
                    if i % 8 == 0 {
                        std::thread::yield_now();
                    }
                    inside.fetch_sub(1, Ordering::SeqCst);
                    h.release(0);
                }
            });
        }
    });
    (most.into_inner(), wins.into_inner())
}

#[test]
#[ignore = "child process entry"]
fn child_table_hammer() {
    if !common::is_child() {
        return;
    }
    let t = Table::open_with(common::var("TABLE_PATH"), Duration::from_secs(30)).unwrap();
    let (most, wins) = hammer(&t, common::var_u64("ITERS"));
    std::fs::write(common::var("OUT"), format!("{most} {wins}")).unwrap();
}

#[test]
fn two_processes_and_this_one_never_exceed_the_cap() {
    let s = Scratch::new("table-xp");
    let path = s.path("t");
    let t = Table::create(&path, &config(2, 4)).unwrap();
    t.set_cap(0, XP_CAP as u32);
    let children: Vec<_> = (0..2)
        .map(|k| {
            spawn(
                "child_table_hammer",
                &[
                    ("TABLE_PATH", path.display().to_string()),
                    ("ITERS", XP_ITERS.to_string()),
                    ("OUT", s.path(&format!("out{k}")).display().to_string()),
                ],
            )
        })
        .collect();
    std::thread::scope(|scope| {
        let mine = scope.spawn(|| hammer(&t, XP_ITERS));
        // Start together, once both children hold a holder.
        wait_until("both children to attach", || {
            t.holders().unwrap().len() >= 3
        });
        t.word(1, 1).store(1, Ordering::SeqCst);
        let (most, wins) = mine.join().unwrap();
        eprintln!("this process: {wins} acquisitions, at most {most} inside");
    });
    for (k, child) in children.into_iter().enumerate() {
        common::join(child, "table hammer");
        let out = std::fs::read_to_string(s.path(&format!("out{k}"))).unwrap();
        eprintln!("child {k}: most inside, acquisitions: {out}");
    }
    assert_eq!(t.count(0), 0);
    assert_eq!(t.word(1, 0).load(Ordering::SeqCst), 0);
    assert!(t.holders().unwrap().is_empty());
}

#[test]
#[ignore = "child process entry"]
fn child_table_hold() {
    if !common::is_child() {
        return;
    }
    let t = Table::open(common::var("TABLE_PATH")).unwrap();
    let h = t.holder().unwrap();
    for _ in 0..3 {
        assert!(h.try_acquire(0));
    }
    common::signal_ready(h.index().to_string().as_bytes());
    std::thread::sleep(Duration::from_secs(60));
}

/// Starts a child that holds 3 units of row 0, waits for it, kills it with SIGKILL and returns
/// its holder index.
fn kill_a_holder_of_three(s: &Scratch, path: &std::path::Path, n: u32) -> u32 {
    let ready = s.path(&format!("ready{n}"));
    let child = spawn(
        "child_table_hold",
        &[
            ("TABLE_PATH", path.display().to_string()),
            ("READY", ready.display().to_string()),
        ],
    );
    common::wait_for_file(&ready);
    wait_until("the index to be written", || {
        std::fs::read_to_string(&ready).is_ok_and(|s| !s.is_empty())
    });
    let index: u32 = std::fs::read_to_string(&ready).unwrap().parse().unwrap();
    let t = Table::open(path).unwrap();
    assert!(t.is_attached(index).unwrap(), "the child lives");
    common::kill9(child);
    index
}

#[test]
fn a_holder_killed_with_units_is_reaped_or_taken_over_exactly() {
    let s = Scratch::new("table-kill");
    let path = s.path("t");
    let t = Table::create(&path, &config(1, 3)).unwrap();
    t.set_cap(0, 4);
    let me = t.holder().unwrap();
    assert!(me.try_acquire(0));

    // Reaped by a live holder.
    let dead = kill_a_holder_of_three(&s, &path, 0);
    assert_ne!(dead, me.index());
    assert!(
        !t.is_attached(dead).unwrap(),
        "a killed holder's lock is gone"
    );
    assert!(t.is_attached(me.index()).unwrap());
    assert_eq!(
        t.count(0),
        4,
        "a dead holder's units stay counted until reaped"
    );
    assert!(!me.try_acquire(0));
    let infos = t.holders().unwrap();
    let info = infos.iter().find(|i| i.index == dead).expect("its entry");
    assert!(!info.alive && info.pid != std::process::id());
    assert_eq!(me.reap().unwrap(), 1);
    assert_eq!(t.count(0), 1, "exactly its 3 units went");
    assert_eq!(me.reap().unwrap(), 0);
    assert_eq!(t.holders().unwrap().len(), 1);
    for _ in 0..3 {
        assert!(me.try_acquire(0), "its units can be taken again");
    }
    assert!(!me.try_acquire(0));
    for _ in 0..3 {
        me.release(0);
    }

    // Taken over by a new holder that lands on its index.
    let dead = kill_a_holder_of_three(&s, &path, 1);
    assert_eq!(t.count(0), 4);
    let heir = t.holder().unwrap();
    assert_eq!(
        heir.index(),
        dead,
        "the lowest free index is the dead one's"
    );
    assert_eq!((t.count(0), heir.held(0)), (1, 0));
    assert!(heir.try_acquire(0) && heir.try_acquire(0) && heir.try_acquire(0));
    assert!(!heir.try_acquire(0));
}
