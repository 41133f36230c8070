//! Maglev table properties: golden vectors, determinism across processes, balance, weights and
//! disruption.

use std::error::Error;
use std::process::Command;
use std::sync::Arc;

use levee::balance::maglev::{EMPTY_SLOT, MAX_BACKENDS, MAX_TABLE_SIZE};
use levee::balance::{BuildError, Maglev, MaglevTable, Selector};
use levee::config::{BackendConfig, Balance, HashKey, PoolConfig};
use levee::pool::{PoolLoad, Status};
use proptest::prelude::*;

const M: u32 = 65537;

fn backend(name: &str, weight: u32) -> BackendConfig {
    BackendConfig {
        weight,
        max_conns: 0,
        ..BackendConfig::new(name.to_owned(), ([192, 0, 2, 1], 8080).into())
    }
}

fn named(n: usize) -> Vec<BackendConfig> {
    (0..n)
        .map(|i| backend(&format!("backend-{i}"), 1))
        .collect()
}

fn pool(backends: Vec<BackendConfig>) -> PoolConfig {
    PoolConfig {
        name: "web".into(),
        balance: Balance::Maglev,
        hash_key: HashKey::SourceIp,
        table_size: M,
        bound: None,
        overflow: levee::config::Overflow::Queue,
        proxy_protocol: levee::config::ProxyProtocol::None,
        source: Vec::new(),
        health: levee::config::HealthConfig::default(),
        backends,
    }
}

fn table(backends: &[BackendConfig], size: u32) -> Result<MaglevTable, BuildError> {
    MaglevTable::new(backends, size)
}

/// Name of the backend owning each slot.
fn owners<'a>(t: &MaglevTable, backends: &'a [BackendConfig]) -> Vec<&'a str> {
    t.slots()
        .iter()
        .map(|&b| backends[usize::from(b)].name.as_str())
        .collect()
}

// Golden vectors. They were made with this Python 3 transcription of the paper's Pseudocode 1
// (population) plus weighted turns and name-ordered rounds as `maglev.rs` documents, using the
// reference XXH64 through the `xxhash` package 3.x (libxxhash 0.8.4) — an implementation
// independent of `levee::balance::hash`:
//
//     import xxhash, struct
//     OFFSET_SEED, SKIP_SEED = int.from_bytes(b"maglevof", "big"), int.from_bytes(b"maglevsk", "big")
//     h = lambda b, seed=0: xxhash.xxh64_intdigest(b, seed)
//     def maglev(backends, m):  # [(name, weight)] in config order
//         perm = [(h(n.encode(), OFFSET_SEED) % m, h(n.encode(), SKIP_SEED) % (m - 1) + 1) for n, _ in backends]
//         nxt, taken = [0] * len(backends), [0] * len(backends)
//         order = sorted(range(len(backends)), key=lambda i: (backends[i][0].encode(), i))
//         wmax, table, filled, r = max(w for _, w in backends), [0xFFFF] * m, 0, 0
//         while True:
//             for i in order:
//                 w = backends[i][1]
//                 if w == 0 or r * w < taken[i] * wmax: continue
//                 off, skip = perm[i]
//                 while True:
//                     c = (off + nxt[i] * skip) % m; nxt[i] += 1
//                     if table[c] == 0xFFFF: break
//                 table[c] = i; taken[i] += 1; filled += 1
//                 if filled == m: return table
//             r += 1
//     digest = lambda t: h(b"".join(struct.pack("<H", x) for x in t))

#[test]
fn golden_small_table() -> Result<(), BuildError> {
    let b = [
        backend("alpha", 1),
        backend("bravo", 1),
        backend("charlie", 1),
    ];
    // maglev([("alpha", 1), ("bravo", 1), ("charlie", 1)], 13)
    assert_eq!(
        table(&b, 13)?.slots(),
        [0, 0, 0, 2, 2, 0, 0, 1, 1, 1, 2, 1, 2]
    );
    Ok(())
}

#[test]
fn golden_small_weighted_table() -> Result<(), BuildError> {
    let b = [
        backend("alpha", 1),
        backend("bravo", 2),
        backend("charlie", 3),
    ];
    // maglev([("alpha", 1), ("bravo", 2), ("charlie", 3)], 17)
    assert_eq!(
        table(&b, 17)?.slots(),
        [1, 2, 2, 1, 2, 1, 0, 2, 2, 1, 1, 2, 0, 2, 1, 0, 2]
    );
    Ok(())
}

#[test]
fn golden_default_size_table() -> Result<(), BuildError> {
    // t = maglev([(f"backend-{i}", 1) for i in range(10)], 65537)
    let t = table(&named(10), M)?;
    assert_eq!(t.digest(), 0x7ed7_2be8_ec51_032c);
    assert_eq!(t.slots()[..8], [9, 6, 7, 6, 0, 6, 5, 6]);
    assert_eq!(
        t.entries_per_backend(),
        [6554, 6554, 6554, 6554, 6554, 6554, 6554, 6553, 6553, 6553]
    );
    Ok(())
}

#[test]
fn golden_default_size_weighted_table() -> Result<(), BuildError> {
    // t = maglev([(f"backend-{i}", i % 4) for i in range(10)], 65537)
    let b: Vec<_> = (0..10)
        .map(|i| backend(&format!("backend-{i}"), i % 4))
        .collect();
    let t = table(&b, M)?;
    assert_eq!(t.digest(), 0x97f8_9d5f_0b93_bad8);
    assert_eq!(t.slots()[..8], [9, 6, 7, 6, 5, 6, 5, 6]);
    assert_eq!(
        t.entries_per_backend(),
        [0, 5042, 10083, 15124, 0, 5042, 10082, 15123, 0, 5041]
    );
    Ok(())
}

#[test]
fn table_depends_on_names_not_config_order() -> Result<(), BuildError> {
    let b = named(50);
    let mut shuffled = b.clone();
    shuffled.reverse();
    shuffled.swap(3, 17);
    let (t, u) = (table(&b, M)?, table(&shuffled, M)?);
    assert_ne!(
        t.slots(),
        u.slots(),
        "indices differ, so the raw slots must"
    );
    assert_eq!(owners(&t, &b), owners(&u, &shuffled));
    Ok(())
}

const CHILD_ENV: &str = "LEVEE_BALANCE_MAGLEV_CHILD";

/// Digests the child process reports and the parent checks.
fn cross_process_digests() -> Result<String, BuildError> {
    let weighted: Vec<_> = (0..300)
        .map(|i| backend(&format!("10.1.{}.{}:443", i / 256, i % 256), 1 + i % 7))
        .collect();
    Ok(format!(
        "{:016x} {:016x}",
        table(&named(1000), M)?.digest(),
        table(&weighted, 655_373)?.digest()
    ))
}

#[test]
#[ignore = "child entry point: same_table_in_two_processes runs it in a second process"]
fn child_prints_table_digests() -> Result<(), BuildError> {
    if std::env::var_os(CHILD_ENV).is_some() {
        println!("levee-maglev-digests {}", cross_process_digests()?);
    }
    Ok(())
}

#[test]
fn same_table_in_two_processes() -> Result<(), Box<dyn Error>> {
    let child = Command::new(std::env::current_exe()?)
        .args([
            "--ignored",
            "--exact",
            "child_prints_table_digests",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()?;
    assert!(child.status.success(), "child failed: {child:?}");
    let stdout = String::from_utf8(child.stdout)?;
    // The harness prints the test's name on the same line, so search rather than match lines.
    let theirs = stdout
        .split_once("levee-maglev-digests ")
        .and_then(|(_, rest)| rest.lines().next())
        .ok_or_else(|| format!("no digest line in the child's output: {stdout:?}"))?;
    assert_eq!(theirs, cross_process_digests()?);
    Ok(())
}

#[test]
fn bad_sizes_and_pools_are_errors() {
    let b = named(3);
    assert_eq!(table(&b, 65536), Err(BuildError::TableSizeNotPrime(65536)));
    assert_eq!(table(&b, 1), Err(BuildError::TableSizeNotPrime(1)));
    assert_eq!(table(&b, 0), Err(BuildError::TableSizeNotPrime(0)));
    assert_eq!(
        table(&b, 2),
        Err(BuildError::TableSizeOutOfRange {
            size: 2,
            min: 3,
            max: MAX_TABLE_SIZE
        })
    );
    assert!(matches!(
        table(&b, 16_777_259), // prime above the cap
        Err(BuildError::TableSizeOutOfRange { .. })
    ));
    let msg = table(&b, 65536).map(|_| ()).unwrap_err().to_string();
    assert!(msg.contains("65536") && msg.contains("prime"), "{msg}");
    let many = vec![backend("x", 1); MAX_BACKENDS + 1];
    assert!(matches!(
        table(&many, M),
        Err(BuildError::TooManyBackends { .. })
    ));
}

#[test]
fn tiny_tables_and_pools() -> Result<(), BuildError> {
    // Smallest table: one backend per slot.
    let t = table(&named(3), 3)?;
    let mut slots = t.slots().to_vec();
    slots.sort_unstable();
    assert_eq!(slots, [0, 1, 2]);
    // Nobody with weight: every slot empty, nothing looked up or ranked.
    let zero = [backend("a", 0), backend("b", 0)];
    let t = table(&zero, 7)?;
    assert!(t.slots().iter().all(|&s| s == EMPTY_SLOT));
    assert_eq!(t.lookup(12345), None);
    let load = PoolLoad::new(&pool(zero.to_vec()));
    let mut out = [0u16; 4];
    assert_eq!(Maglev::new(Arc::new(t)).rank(12345, &load, &mut out), 0);
    // No backends at all.
    let t = table(&[], 7)?;
    assert_eq!(t.lookup(1), None);
    Ok(())
}

/// Checks that `n` equal backends split the default table as evenly as integers allow and
/// returns largest share / mean.
///
/// The target "largest / mean ≤ 1.01" is met for every N from 10 to 696. From 697 on, for 70
/// values of N up to 1000, no table of 65537 slots can meet it: some backend must get
/// ⌈M/N⌉ slots, and ⌈M/N⌉ × N / M exceeds 1.01 (N = 818: 81 × 818 / 65537 ≈ 1.0110; the worst,
/// just under 1.015). For those the test holds the table to that optimum, which is what every
/// N gets: each backend owns ⌊M/N⌋ or ⌈M/N⌉ slots.
fn check_balance(n: usize) -> Result<f64, TestCaseError> {
    let counts = table(&named(n), M)?.entries_per_backend();
    let m = M as usize;
    let (lo, hi) = (m / n, m.div_ceil(n));
    for (i, &c) in counts.iter().enumerate() {
        prop_assert!(
            (lo..=hi).contains(&(c as usize)),
            "n={}: backend {} has {} slots",
            n,
            i,
            c
        );
    }
    let max = counts.iter().copied().max().unwrap_or(0);
    let ratio = f64::from(max) * n as f64 / f64::from(M);
    let best = hi as f64 * n as f64 / f64::from(M);
    prop_assert!(ratio <= 1.01 || best > 1.01, "n={}: {}", n, ratio);
    prop_assert!(ratio < 1.015, "n={}: {}", n, ratio);
    Ok(ratio)
}

#[test]
fn equal_backends_share_the_table_within_one_percent() -> Result<(), TestCaseError> {
    for n in [10, 11, 64, 100, 257, 500, 696, 999, 1000] {
        let ratio = check_balance(n)?;
        assert!(ratio <= 1.01, "n={n}: {ratio}");
    }
    // Where 1.01 cannot be met, the optimum is.
    assert!(check_balance(818)? > 1.01);
    Ok(())
}

/// Keys that move when `after` replaces `before`, and those among them that a minimal change
/// would not move (they belonged to, and go to, backends in both sets).
fn moved(
    before: (&MaglevTable, &[BackendConfig]),
    after: (&MaglevTable, &[BackendConfig]),
) -> (usize, usize) {
    let (old, new) = (owners(before.0, before.1), owners(after.0, after.1));
    let in_both = |name: &str| {
        before.1.iter().any(|b| b.name == name) && after.1.iter().any(|b| b.name == name)
    };
    let changed: Vec<usize> = (0..old.len()).filter(|&s| old[s] != new[s]).collect();
    let extra = changed
        .iter()
        .filter(|&&s| in_both(old[s]) && in_both(new[s]))
        .count();
    (changed.len(), extra)
}

/// Share of the key space a rebuild may move beyond the minimum, at M = 65537 and up to 1000
/// backends. Maglev trades exact minimal disruption for balance (paper §3.4): the population
/// order shifts after the first slot that changes. Measured worst cases over 20 removals and 20
/// additions per size were 0.92 % (removal, N = 300) and 0.59 % (addition, N = 1000); a modulo
/// hash would move almost everything.
const REBUILD_EXTRA: f64 = 0.015;

proptest! {
    // Each case builds one or two 65537-slot tables; a dozen cases keep the file near a few
    // seconds in debug builds.
    #![proptest_config(ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn balance_for_any_pool_size(n in 10usize..=1000) {
        check_balance(n)?;
    }

    #[test]
    fn weights_are_respected_within_two_percent(
        weights in prop::collection::vec(0u32..=10, 2..60),
    ) {
        let b: Vec<_> = weights.iter().enumerate()
            .map(|(i, &w)| backend(&format!("backend-{i}"), w)).collect();
        let total: u32 = weights.iter().sum();
        prop_assume!(total > 0);
        let counts = table(&b, M)?.entries_per_backend();
        for (i, (&w, &c)) in weights.iter().zip(&counts).enumerate() {
            if w == 0 {
                prop_assert_eq!(c, 0, "backend {} has weight 0", i);
            } else {
                let expected = f64::from(M) * f64::from(w) / f64::from(total);
                let ratio = f64::from(c) / expected;
                prop_assert!((0.98..=1.02).contains(&ratio), "backend {}: {} slots, {} expected", i, c, expected);
            }
        }
    }

    #[test]
    fn removing_a_backend_moves_its_keys_and_few_others(n in 2usize..=1000, pick in any::<prop::sample::Index>()) {
        let before = named(n);
        let gone = pick.index(n);
        let mut after = before.clone();
        after.remove(gone);
        let (t0, t1) = (table(&before, M)?, table(&after, M)?);
        let its = t0.entries_per_backend()[gone] as usize;
        let (changed, extra) = moved((&t0, &before), (&t1, &after));
        prop_assert_eq!(changed, its + extra);
        prop_assert!(extra as f64 / f64::from(M) <= REBUILD_EXTRA, "extra {}", extra);
    }

    #[test]
    fn adding_a_backend_moves_about_one_in_n_plus_one(n in 1usize..=1000) {
        let before = named(n);
        let mut after = before.clone();
        after.push(backend("newcomer", 1));
        let (t0, t1) = (table(&before, M)?, table(&after, M)?);
        let (changed, extra) = moved((&t0, &before), (&t1, &after));
        // Every slot the newcomer takes moves, and it takes ⌊M/(N+1)⌋ or ⌈M/(N+1)⌉.
        let its = t1.entries_per_backend()[n] as usize;
        prop_assert_eq!(changed, its + extra);
        prop_assert!(its >= M as usize / (n + 1));
        prop_assert!(changed as f64 / f64::from(M) <= 1.0 / (n + 1) as f64 + REBUILD_EXTRA);
    }

    #[test]
    fn a_backend_without_room_moves_only_its_keys(n in 2usize..=300, pick in any::<prop::sample::Index>(), why in 0u8..3) {
        // Skipping in preference order, unlike a rebuild, moves nothing else: every key whose
        // first choice was another backend keeps it.
        let cfg = pool(named(n));
        let t = Arc::new(table(&cfg.backends, M)?);
        let load = PoolLoad::new(&cfg);
        let mut sel = Maglev::new(Arc::clone(&t));
        let mut out = [0u16; 2];
        let firsts: Vec<u16> = (0..u64::from(M)).map(|flow| {
            sel.rank(flow, &load, &mut out);
            out[0]
        }).collect();
        let gone = pick.index(n);
        match why {
            0 => load.set_state(gone, Status::Down),
            1 => load.set_weight(gone, 0),
            _ => {
                load.set_max_conns(gone, 1);
                prop_assert!(load.try_acquire(gone));
            }
        }
        for (flow, &first) in firsts.iter().enumerate() {
            let k = sel.rank(flow as u64, &load, &mut out);
            prop_assert_eq!(k, 2.min(n - 1));
            if usize::from(first) == gone {
                prop_assert_ne!(usize::from(out[0]), gone);
            } else {
                prop_assert_eq!(out[0], first);
            }
        }
    }
}

#[test]
fn ranking_walks_the_table_from_the_flow_slot() -> Result<(), BuildError> {
    let cfg = pool(named(50));
    let t = Arc::new(table(&cfg.backends, M)?);
    let load = PoolLoad::new(&cfg);
    load.set_state(7, Status::Down);
    let mut sel = Maglev::new(Arc::clone(&t));
    let mut out = [0u16; 8];
    for flow in (0..200u64).map(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
        let mut expect = Vec::new();
        let mut s = (flow % u64::from(M)) as usize;
        while expect.len() < 8 {
            let b = t.slots()[s];
            if b != 7 && !expect.contains(&b) {
                expect.push(b);
            }
            s = (s + 1) % M as usize;
        }
        assert_eq!(sel.rank(flow, &load, &mut out), 8);
        assert_eq!(out[..], expect[..], "flow {flow:#x}");
        // `lookup` is the first choice when load does not interfere.
        if t.lookup(flow) != Some(7) {
            assert_eq!(t.lookup(flow), Some(expect[0]));
        }
    }
    Ok(())
}

#[test]
fn full_large_pool_still_finds_the_backends_with_room() -> Result<(), BuildError> {
    // Walking 1000 backends' table until each is seen can take most of its 65537 slots; past
    // the walk's bound the rest come in name order, so the few with room are still found.
    let mut cfg = pool(named(1000));
    for b in &mut cfg.backends {
        b.max_conns = 1;
    }
    let t = Arc::new(table(&cfg.backends, M)?);
    let load = PoolLoad::new(&cfg);
    let free = [3usize, 500, 999];
    for i in (0..1000).filter(|i| !free.contains(i)) {
        assert!(load.try_acquire(i));
    }
    let mut sel = Maglev::new(t);
    let mut out = [0u16; 8];
    let mut firsts = std::collections::HashSet::new();
    for flow in (0..300u64).map(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
        let n = sel.rank(flow, &load, &mut out);
        let mut got: Vec<usize> = out[..n].iter().map(|&b| usize::from(b)).collect();
        firsts.insert(got[0]);
        got.sort_unstable();
        assert_eq!(got, free);
    }
    // Overflowing flows do not all land on one of them.
    assert_eq!(firsts.len(), 3);
    for i in free {
        assert!(load.try_acquire(i));
    }
    assert_eq!(sel.rank(1, &load, &mut out), 0);
    Ok(())
}

/// Slow start: while a backend's effective weight is below the weight its table share stands
/// for, it comes first for that fraction of its flows only (the others rank it last), the same
/// flows at every step, and more of them as the ramp climbs.
#[test]
fn a_ramping_backend_takes_a_growing_consistent_share_of_its_flows() -> Result<(), BuildError> {
    let cfg = pool(
        (0..4)
            .map(|i| backend(&format!("backend-{i}"), 100))
            .collect(),
    );
    let table = Arc::new(table(&cfg.backends, M)?);
    let load = PoolLoad::new(&cfg);
    let mut sel = Maglev::new(table.clone());
    let flows: Vec<u64> = (0..40_000u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    let own: Vec<u64> = flows
        .iter()
        .copied()
        .filter(|&f| table.lookup(f) == Some(2))
        .collect();
    let mut out = [0u16; 4];
    let mut admitted_before: Vec<u64> = Vec::new();
    for weight in [0u32, 1, 25, 50, 75, 100] {
        load.set_weight(2, weight.max(1));
        let mut admitted = Vec::new();
        for &f in &own {
            let n = sel.rank(f, &load, &mut out);
            assert_eq!(n, 4, "a ramping backend is deferred, never dropped");
            if out[0] == 2 {
                admitted.push(f);
            } else {
                assert_eq!(out[3], 2, "a deferred backend ranks last");
            }
        }
        let share = admitted.len() as f64 / own.len() as f64;
        let expected = f64::from(weight.max(1)) / 100.0;
        assert!(
            (share - expected).abs() < 0.03,
            "weight {weight}: share {share}"
        );
        assert!(
            admitted_before.iter().all(|f| admitted.contains(f)),
            "a flow admitted at a lower weight stays admitted"
        );
        admitted_before = admitted;
    }
    Ok(())
}
