//! Segments: creation, identity, staleness, and refusal of files that are not sound rings.

mod common;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::Scratch;
use levee_rings::{Error, LAYOUT_VERSION, RingKind, mpmc, spsc};

fn patch(path: &std::path::Path, offset: u64, bytes: &[u8]) {
    let mut f = OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn segment_is_private_to_its_user() {
    let s = Scratch::new("seg-mode");
    let path = s.path("r");
    let _ends = spsc::create(&path, 4096).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn inspect_names_kind_creator_and_attached_handles() {
    let s = Scratch::new("seg-inspect");
    let path = s.path("q");
    let q = mpmc::Queue::create(&path, &mpmc::Config::default()).unwrap();
    let info = levee_rings::inspect(&path).unwrap();
    assert_eq!(info.kind, RingKind::Mpmc);
    assert_eq!(info.creator.pid, std::process::id());
    assert!(info.creator_alive);
    assert_eq!(info.attached, 0);
    let _p = q.producer().unwrap();
    let _c = q.consumer().unwrap();
    assert_eq!(levee_rings::inspect(&path).unwrap().attached, 2);
    assert!(!levee_rings::inspect(&path).unwrap().is_stale());
}

#[test]
fn creating_over_a_live_segment_is_refused() {
    let s = Scratch::new("seg-exists");
    let path = s.path("r");
    let _ends = spsc::create(&path, 4096).unwrap();
    match spsc::create(&path, 4096) {
        Err(
            e @ Error::AlreadyExists {
                creator_alive: true,
                ..
            },
        ) => {
            assert!(e.to_string().contains("open it instead"), "{e}");
        }
        other => panic!("expected AlreadyExists, got {:?}", other.err()),
    }
    assert!(!levee_rings::remove_stale(&path).unwrap());
    assert!(path.exists());
}

#[test]
#[ignore = "child process entry"]
fn child_create_and_exit() {
    if !common::is_child() {
        return;
    }
    let q = mpmc::Queue::create(common::var("RING_PATH"), &mpmc::Config::default()).unwrap();
    let mut p = q.producer().unwrap();
    p.push(b"left behind").unwrap();
}

#[test]
fn a_crashed_creators_segment_is_stale_not_live() {
    let s = Scratch::new("seg-stale");
    let path = s.path("q");
    let child = common::spawn(
        "child_create_and_exit",
        &[("RING_PATH", path.display().to_string())],
    );
    common::join(child, "creator");
    let info = levee_rings::inspect(&path).unwrap();
    assert!(!info.creator_alive);
    assert_eq!(info.attached, 0);
    assert!(info.is_stale());
    match mpmc::Queue::create(&path, &mpmc::Config::default()) {
        Err(
            e @ Error::AlreadyExists {
                creator_alive: false,
                attached: false,
                ..
            },
        ) => {
            assert!(e.to_string().contains("stale"), "{e}");
        }
        other => panic!("expected a stale AlreadyExists, got {:?}", other.err()),
    }
    // Its messages are still there for whoever opens it.
    let q = mpmc::Queue::open(&path).unwrap();
    let mut c = q.consumer().unwrap();
    let claim = c
        .claim()
        .unwrap()
        .expect("message left by the dead creator");
    assert_eq!(&claim[..], b"left behind");
    claim.ack();
    drop(c);
    drop(q);
    assert!(levee_rings::remove_stale(&path).unwrap());
    assert!(!path.exists());
}

#[test]
fn wrong_version_is_refused_by_name() {
    let s = Scratch::new("seg-version");
    let path = s.path("r");
    drop(spsc::create(&path, 4096).unwrap());
    // 99, and 1: a ring of the first layout, whose SPSC records were published by `tail` alone.
    for old in [99u32, 1] {
        patch(&path, 8, &old.to_le_bytes());
        match spsc::Consumer::open(&path) {
            Err(
                e @ Error::Version {
                    found, supported, ..
                },
            ) if found == old && supported == LAYOUT_VERSION => {
                assert!(e.to_string().contains(&format!("version {old}")), "{e}")
            }
            other => panic!("expected Version, got {:?}", other.err()),
        }
    }
}

#[test]
fn corrupted_header_fails_its_checksum() {
    let s = Scratch::new("seg-sum");
    let path = s.path("r");
    drop(spsc::create(&path, 4096).unwrap());
    patch(&path, 32, &(1u64 << 20).to_le_bytes()); // capacity field
    assert!(matches!(
        spsc::Consumer::open(&path),
        Err(Error::BadHeader { .. })
    ));
}

#[test]
fn truncated_segment_is_refused_not_faulted_on() {
    let s = Scratch::new("seg-trunc");
    let path = s.path("r");
    drop(spsc::create(&path, 1 << 16).unwrap());
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4096)
        .unwrap();
    match spsc::Consumer::open(&path) {
        Err(Error::Truncated {
            len: 4096,
            expected,
            ..
        }) => assert_eq!(expected, 640 + (1 << 16)),
        other => panic!("expected Truncated, got {:?}", other.err()),
    }
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(10)
        .unwrap();
    assert!(matches!(
        spsc::Producer::open(&path),
        Err(Error::Truncated { len: 10, .. })
    ));
}

#[test]
fn files_that_are_not_rings_are_refused() {
    let s = Scratch::new("seg-notring");
    let text = s.path("text");
    std::fs::write(&text, "x".repeat(4096)).unwrap();
    assert!(matches!(
        spsc::Consumer::open(&text),
        Err(Error::NotARing { .. })
    ));
    let zeros = s.path("zeros");
    std::fs::write(&zeros, vec![0u8; 4096]).unwrap();
    assert!(matches!(
        mpmc::Queue::open(&zeros),
        Err(Error::NotARing { .. })
    ));
    assert!(matches!(
        mpmc::Queue::open_with(&zeros, Duration::from_millis(20)),
        Err(Error::NotPublished { .. })
    ));
    let missing = s.path("missing");
    match spsc::Consumer::open(&missing) {
        Err(e @ Error::Io { op: "open", .. }) => assert!(e.to_string().contains("missing")),
        other => panic!("expected an open error, got {:?}", other.err()),
    }
}

#[test]
fn wrong_kind_is_refused() {
    let s = Scratch::new("seg-kind");
    let path = s.path("r");
    drop(spsc::create(&path, 4096).unwrap());
    assert!(matches!(
        mpmc::Queue::open(&path),
        Err(Error::WrongKind {
            found: "SPSC",
            expected: "MPMC",
            ..
        })
    ));
}

#[test]
fn openers_wait_for_publication() {
    let s = Scratch::new("seg-wait");
    let path = s.path("r");
    let creator_path = path.clone();
    // Create it only once this thread sleeps in the opener's wait: a segment made before would
    // prove nothing about waiting.
    let me = common::gettid();
    let t = std::thread::spawn(move || {
        common::wait_until("the opener waits", || common::sleeps(me));
        spsc::Producer::create(&creator_path, 4096).unwrap()
    });
    let mut c = spsc::Consumer::open_with(&path, Duration::from_secs(30)).unwrap();
    let mut p = t.join().unwrap();
    p.push(b"hello").unwrap();
    let mut out = Vec::new();
    assert!(c.pop(&mut out).unwrap());
    assert_eq!(out, b"hello");
}

#[test]
fn invalid_configuration_says_what_is_wrong() {
    let s = Scratch::new("seg-config");
    let e = spsc::create(s.path("a"), 1000)
        .err()
        .expect("not a power of two");
    assert!(e.to_string().contains("power of two"), "{e}");
    let bad = mpmc::Config {
        max_record: 0,
        ..mpmc::Config::default()
    };
    let e = mpmc::Queue::create(s.path("b"), &bad)
        .err()
        .expect("zero max_record");
    assert!(e.to_string().contains("max_record"), "{e}");
    assert!(!s.path("a").exists() && !s.path("b").exists());
}

#[test]
fn sync_flushes_a_ring_on_a_real_filesystem() {
    let dir = std::env::temp_dir().join(format!("levee-rings-sync-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("r");
    {
        let (mut p, _c) = spsc::create(&path, 4096).unwrap();
        p.push(b"durable").unwrap();
        p.sync().unwrap();
    }
    let mut c = spsc::Consumer::open(&path).unwrap();
    let mut out = Vec::new();
    assert!(c.pop(&mut out).unwrap());
    assert_eq!(out, b"durable");
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}
