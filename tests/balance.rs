//! Selectors: flow hash golden vectors, ranking invariants for every algorithm, each algorithm's
//! distribution, bounded load and `max_conns` under concurrency.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};

use levee::balance::hash::xxh64;
use levee::balance::{
    Balancer, BuildError, LeastConn, MAX_CANDIDATES, PowerOfTwoChoices, RoundRobin, Selector,
    SmoothWeighted, SourceHash, flow_hash,
};
use levee::config::{BackendConfig, Balance, HashKey, PoolConfig};
use levee::pool::{PoolLoad, Status};
use proptest::prelude::*;

const ALL: [Balance; 6] = [
    Balance::Maglev,
    Balance::RoundRobin,
    Balance::Weighted,
    Balance::LeastConn,
    Balance::P2c,
    Balance::SourceHash,
];

fn pool(balance: Balance, weights: &[u32], max_conns: u32, bound: Option<f64>) -> PoolConfig {
    PoolConfig {
        name: "web".into(),
        balance,
        hash_key: HashKey::SourceIp,
        table_size: 65537,
        bound,
        overflow: levee::config::Overflow::Queue,
        proxy_protocol: levee::config::ProxyProtocol::None,
        source: Vec::new(),
        health: levee::config::HealthConfig::default(),
        backends: weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| BackendConfig {
                weight,
                max_conns,
                ..BackendConfig::new(
                    format!("backend-{i}"),
                    SocketAddr::from(([192, 0, 2, 10], 8000 + i as u16)),
                )
            })
            .collect(),
    }
}

/// First choices of `picks` rankings of flow `flow`, acquiring nothing.
fn firsts(sel: &mut dyn Selector, load: &PoolLoad, picks: usize) -> Vec<u16> {
    let mut out = [0u16; MAX_CANDIDATES];
    (0..picks)
        .filter_map(|_| (sel.rank(0, load, &mut out) > 0).then_some(out[0]))
        .collect()
}

/// Ranks a flow and acquires the first candidate that takes it; returns the backend.
fn place(sel: &mut dyn Selector, flow: u64, load: &PoolLoad) -> Option<usize> {
    let mut out = [0u16; MAX_CANDIDATES];
    let n = sel.rank(flow, load, &mut out);
    out[..n]
        .iter()
        .map(|&b| usize::from(b))
        .find(|&b| load.try_acquire(b))
}

// Flow hash golden vectors, made with the reference XXH64 (Python `xxhash` package, libxxhash
// 0.8.4): `xxhash.xxh64_intdigest(socket.inet_pton(AF_INET, "192.0.2.1"))`, and with
// `+ struct.pack(">H", 443)` appended for the port; likewise for AF_INET6 "2001:db8::1". The
// XXH64 vectors of "", "a" and "abc" also appear in the xxHash specification's examples.

#[test]
fn xxh64_matches_the_reference() {
    let stripes: Vec<u8> = b"0123456789abcdef".repeat(4);
    let hundred: Vec<u8> = (0..100).collect();
    assert_eq!(xxh64(b"", 0), 0xef46_db37_51d8_e999);
    assert_eq!(xxh64(b"a", 0), 0xd24e_c4f1_a98c_6e5b);
    assert_eq!(xxh64(b"abc", 0), 0x44bc_2cf5_ad77_0999);
    assert_eq!(xxh64(&stripes, 0), 0x1af3_ac47_60fe_2f85);
    assert_eq!(xxh64(&hundred, 0), 0x6ac1_e580_3216_6597);
    assert_eq!(xxh64(b"abc", 0x9e37_79b1_85eb_ca87), 0xa7cb_2aac_405e_36c7);
}

#[test]
fn flow_hash_golden_vectors() {
    let v4 = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 443));
    let v6 = SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 443));
    assert_eq!(flow_hash(&v4, HashKey::SourceIp), 0x9c31_63f4_8c1e_d6ff);
    assert_eq!(flow_hash(&v4, HashKey::SourceIpPort), 0x9a85_84dd_5ae5_beff);
    assert_eq!(flow_hash(&v6, HashKey::SourceIp), 0x97f1_1e06_85f6_7ae8);
    assert_eq!(flow_hash(&v6, HashKey::SourceIpPort), 0x4ec7_7c66_eb2f_1cee);
}

#[test]
fn flow_hash_keys() {
    let v4 = |port| SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), port));
    let mapped = |port| SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped(), port));
    // The old IPv4-compatible form is a different IPv6 address, not the IPv4 one.
    let compatible = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1).to_ipv6_compatible(), 443));
    for key in [HashKey::SourceIp, HashKey::SourceIpPort] {
        assert_eq!(flow_hash(&mapped(443), key), flow_hash(&v4(443), key));
        assert_ne!(flow_hash(&compatible, key), flow_hash(&v4(443), key));
    }
    assert_eq!(
        flow_hash(&v4(443), HashKey::SourceIp),
        flow_hash(&v4(50000), HashKey::SourceIp)
    );
    assert_ne!(
        flow_hash(&v4(443), HashKey::SourceIpPort),
        flow_hash(&v4(50000), HashKey::SourceIpPort)
    );
    // Flow label and scope are not part of the flow.
    let v6 = |flowinfo, scope| {
        SocketAddr::V6(std::net::SocketAddrV6::new(
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
            443,
            flowinfo,
            scope,
        ))
    };
    assert_eq!(
        flow_hash(&v6(0, 0), HashKey::SourceIpPort),
        flow_hash(&v6(7, 2), HashKey::SourceIpPort)
    );
    let b = Balancer::new(&PoolConfig {
        hash_key: HashKey::SourceIpPort,
        ..pool(Balance::Maglev, &[1], 0, None)
    });
    assert_eq!(
        b.map(|b| b.flow_hash(&v4(443))),
        Ok(flow_hash(&v4(443), HashKey::SourceIpPort))
    );
}

#[test]
fn balancer_reports_its_configuration() -> Result<(), BuildError> {
    for balance in ALL {
        let b = Balancer::new(&pool(balance, &[1, 2, 3], 0, None))?;
        assert_eq!(b.balance(), balance);
        assert_eq!(b.hash_key(), HashKey::SourceIp);
        assert_eq!(b.maglev_table().is_some(), balance == Balance::Maglev);
    }
    // Only Maglev needs a prime table.
    let mut cfg = pool(Balance::RoundRobin, &[1, 2, 3], 0, None);
    cfg.table_size = 10;
    assert!(Balancer::new(&cfg).is_ok());
    cfg.balance = Balance::Maglev;
    assert_eq!(
        Balancer::new(&cfg).map(|_| ()),
        Err(BuildError::TableSizeNotPrime(10))
    );
    Ok(())
}

#[test]
fn forwarders_share_one_maglev_table() -> Result<(), BuildError> {
    let b = Balancer::new(&pool(Balance::Maglev, &[1; 5], 0, None))?;
    let (s0, s1) = (b.selector(0), b.selector(1));
    let table = b.maglev_table().map(std::sync::Arc::strong_count);
    assert_eq!(table, Some(3));
    drop((s0, s1));
    Ok(())
}

#[test]
fn empty_pool_and_empty_out_rank_nothing() -> Result<(), BuildError> {
    for balance in ALL {
        let cfg = pool(balance, &[], 0, None);
        let load = PoolLoad::new(&cfg);
        let mut sel = Balancer::new(&cfg)?.selector(0);
        let mut out = [0u16; 4];
        assert_eq!(sel.rank(7, &load, &mut out), 0, "{balance:?}");
        let cfg = pool(balance, &[1, 1], 0, None);
        let load = PoolLoad::new(&cfg);
        let mut sel = Balancer::new(&cfg)?.selector(0);
        assert_eq!(sel.rank(7, &load, &mut []), 0, "{balance:?}");
    }
    Ok(())
}

#[test]
fn round_robin_cycles_exactly() {
    let cfg = pool(Balance::RoundRobin, &[1, 5, 1, 1, 1], 0, None);
    let load = PoolLoad::new(&cfg);
    let mut rr = RoundRobin::new(0);
    let expect: Vec<u16> = (0..15).map(|k| k % 5).collect();
    assert_eq!(firsts(&mut rr, &load, 15), expect, "weights are ignored");
    // Fallbacks are the next ones in order.
    let mut out = [0u16; 3];
    assert_eq!(rr.rank(0, &load, &mut out), 3);
    assert_eq!(out, [0, 1, 2]);
    // A backend without room gives its turn to the next one.
    load.set_state(2, Status::Down);
    assert_eq!(firsts(&mut rr, &load, 8), [1, 3, 4, 0, 1, 3, 4, 0]);
    // Forwarders start staggered.
    let mut other = RoundRobin::new(3);
    assert_eq!(firsts(&mut other, &load, 3), [3, 4, 0]);
}

#[test]
fn smooth_weighted_spreads_picks_like_nginx() {
    // The example of nginx's change introducing the algorithm: weights 5, 1, 1 give
    // a a b a c a a.
    let cfg = pool(Balance::Weighted, &[5, 1, 1], 0, None);
    let load = PoolLoad::new(&cfg);
    let mut swrr = SmoothWeighted::new(3);
    assert_eq!(
        firsts(&mut swrr, &load, 14),
        [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]
    );
    // Fallbacks are the next highest current weights: after a pick of `a`, the current
    // weights are a: -2, b: 1, c: 1.
    let mut swrr = SmoothWeighted::new(3);
    let mut out = [0u16; 3];
    assert_eq!(swrr.rank(0, &load, &mut out), 3);
    assert_eq!(out, [0, 1, 2]);
    assert_eq!(swrr.rank(0, &load, &mut out), 3);
    assert_eq!(out, [0, 1, 2]);
    assert_eq!(swrr.rank(0, &load, &mut out), 3);
    assert_eq!(out[0], 1);
}

#[test]
fn smooth_weighted_follows_runtime_weights_and_room() {
    let cfg = pool(Balance::Weighted, &[1, 1, 1], 0, None);
    let load = PoolLoad::new(&cfg);
    let mut swrr = SmoothWeighted::new(3);
    load.set_weight(2, 4);
    load.set_state(0, Status::Drain);
    let picks = firsts(&mut swrr, &load, 50);
    assert!(!picks.contains(&0));
    assert_eq!(picks.iter().filter(|&&b| b == 2).count(), 40);
}

#[test]
fn least_conn_goes_to_the_least_loaded() -> Result<(), BuildError> {
    let cfg = pool(Balance::LeastConn, &[1; 6], 0, None);
    let load = PoolLoad::new(&cfg);
    for (i, n) in [3, 1, 4, 1, 5, 9].into_iter().enumerate() {
        for _ in 0..n {
            assert!(load.try_acquire(i));
        }
    }
    let mut lc = LeastConn::new(6, 0);
    let mut out = [0u16; 6];
    assert_eq!(lc.rank(0, &load, &mut out), 6);
    assert_eq!(out, [1, 3, 0, 2, 4, 5]);
    // 1 and 3 tie, and ties go to the one picked least recently: they alternate.
    assert_eq!(firsts(&mut lc, &load, 4), [3, 1, 3, 1]);
    // Weighted: (active + 1) / weight. Backend 5 with 9 active and weight 20 is now lightest.
    load.set_weight(5, 20);
    lc.rank(0, &load, &mut out);
    assert_eq!(out[0], 5);
    // Placing connections one by one keeps loads level.
    let cfg = pool(Balance::LeastConn, &[1, 1, 2, 4], 0, None);
    let load = PoolLoad::new(&cfg);
    let mut sel = Balancer::new(&cfg)?.selector(3);
    for flow in 0..800 {
        assert!(place(sel.as_mut(), flow, &load).is_some());
    }
    assert_eq!(
        (0..4).map(|i| load.active(i)).collect::<Vec<_>>(),
        [100, 100, 200, 400]
    );
    Ok(())
}

#[test]
fn least_conn_ties_do_not_favour_index_zero() {
    let cfg = pool(Balance::LeastConn, &[1; 5], 0, None);
    let load = PoolLoad::new(&cfg);
    let mut lc = LeastConn::new(5, 0);
    assert_eq!(firsts(&mut lc, &load, 10), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
    let mut other = LeastConn::new(5, 7);
    assert_eq!(firsts(&mut other, &load, 5), [2, 3, 4, 0, 1]);
}

#[test]
fn p2c_spreads_load_roughly_evenly() -> Result<(), BuildError> {
    let n = 8;
    let cfg = pool(Balance::P2c, &vec![1; n], 0, None);
    let load = PoolLoad::new(&cfg);
    let mut sel = Balancer::new(&cfg)?.selector(0);
    // A steady window of 64 open connections; count where each new one goes.
    let mut open = VecDeque::new();
    let mut picked = vec![0u32; n];
    for flow in 0..16_000 {
        let Some(b) = place(sel.as_mut(), flow, &load) else {
            panic!("no backend took flow {flow}: every one has room");
        };
        picked[b] += 1;
        open.push_back(b);
        if open.len() > 64 {
            if let Some(old) = open.pop_front() {
                load.release(old);
            }
        }
    }
    let mean = 16_000.0 / n as f64;
    for (i, &c) in picked.iter().enumerate() {
        let r = f64::from(c) / mean;
        assert!((0.9..=1.1).contains(&r), "backend {i}: {c} of {mean}");
    }
    // No backend is ever far above the others: the window stays level.
    for i in 0..n {
        assert!(load.active(i) <= 12, "backend {i}: {}", load.active(i));
    }
    Ok(())
}

#[test]
fn p2c_never_prefers_the_busier_of_two() {
    let cfg = pool(Balance::P2c, &[1; 4], 0, None);
    let load = PoolLoad::new(&cfg);
    for _ in 0..100 {
        assert!(load.try_acquire(0));
    }
    let mut p2c = PowerOfTwoChoices::new(7);
    let picks = firsts(&mut p2c, &load, 2000);
    assert_eq!(picks.len(), 2000);
    assert!(
        !picks.contains(&0),
        "backend 0 is busier than any other it can be drawn with"
    );
    for b in 1..4 {
        assert!(picks.contains(&b));
    }
    // Distinct forwarders draw differently.
    let mut other = PowerOfTwoChoices::new(8);
    assert_ne!(firsts(&mut other, &load, 64), picks[..64]);
}

#[test]
fn source_hash_is_stable_per_source() {
    let cfg = pool(Balance::SourceHash, &[1; 7], 0, None);
    let load = PoolLoad::new(&cfg);
    let mut sh = SourceHash::new();
    let mut out = [0u16; 3];
    let sources: Vec<u64> = (0..200u16)
        .map(|i| {
            flow_hash(
                &SocketAddr::from(([198, 51, 100, i as u8], i)),
                HashKey::SourceIp,
            )
        })
        .collect();
    let before: Vec<u16> = sources
        .iter()
        .map(|&f| {
            assert_eq!(sh.rank(f, &load, &mut out), 3);
            assert_eq!(u64::from(out[0]), f % 7);
            assert_eq!(out[1], (out[0] + 1) % 7);
            out[0]
        })
        .collect();
    // Down: its sources go to the next index, nobody else moves.
    load.set_state(4, Status::Down);
    for (&f, &b) in sources.iter().zip(&before) {
        sh.rank(f, &load, &mut out);
        let expect = if b == 4 { 5 } else { b };
        assert_eq!(out[0], expect);
    }
}

/// Maglev, hot key: every flow hashes alike, so only bounded load spreads them.
#[test]
fn bounded_load_caps_a_hot_key() -> Result<(), BuildError> {
    let cfg = pool(Balance::Maglev, &[1; 10], 0, Some(1.25));
    let load = PoolLoad::new(&cfg);
    let mut sel = Balancer::new(&cfg)?.selector(0);
    let hot = flow_hash(&SocketAddr::from(([203, 0, 113, 9], 1)), HashKey::SourceIp);
    for t in 1..=1000u32 {
        assert!(place(sel.as_mut(), hot, &load).is_some());
        let cap = (125 * t).div_ceil(1000); // ceil(1.25 × t / 10)
        for i in 0..10 {
            assert!(
                load.active(i) <= cap,
                "t={t}: backend {i} has {}",
                load.active(i)
            );
        }
    }
    Ok(())
}

/// An idle backend in a crowd of hot-key flows gets nothing without a bound.
#[test]
fn without_bound_a_hot_key_stays_on_one_backend() -> Result<(), BuildError> {
    let cfg = pool(Balance::Maglev, &[1; 10], 0, None);
    let load = PoolLoad::new(&cfg);
    let mut sel = Balancer::new(&cfg)?.selector(0);
    for _ in 0..100 {
        assert!(place(sel.as_mut(), 42, &load).is_some());
    }
    assert_eq!((0..10).filter(|&i| load.active(i) > 0).count(), 1);
    Ok(())
}

/// Whether each backend is within `ceil(bound × total × w_i / W)` (in thousandths, as
/// `PoolLoad` stores the bound).
fn within_bound(load: &PoolLoad, milli: u32, weights: &[u32]) -> Result<(), String> {
    let total = u128::from(load.total_active());
    let w_sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    for (i, &w) in weights.iter().enumerate() {
        let cap = (u128::from(milli) * total * u128::from(w)).div_ceil(1000 * w_sum);
        if u128::from(load.active(i)) > cap {
            return Err(format!("backend {i}: {} above {cap}", load.active(i)));
        }
    }
    Ok(())
}

fn check_ranking(
    sel: &mut dyn Selector,
    flow: u64,
    load: &PoolLoad,
    out: &mut [u16],
    in_table: &[bool],
) -> Result<(), TestCaseError> {
    let n = sel.rank(flow, load, out);
    prop_assert!(n <= out.len());
    let ranked = &out[..n];
    for (k, &b) in ranked.iter().enumerate() {
        prop_assert!(usize::from(b) < load.len());
        prop_assert!(load.has_room(usize::from(b)), "{} has no room", b);
        prop_assert!(!ranked[..k].contains(&b), "{} twice in {:?}", b, ranked);
    }
    // Nothing with room is left out while there is space.
    let with_room = (0..load.len())
        .filter(|&i| in_table[i] && load.has_room(i))
        .count();
    prop_assert_eq!(n, with_room.min(out.len()));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn rankings_are_distinct_with_room_and_bounded(
        alg in 0usize..ALL.len(),
        backends in prop::collection::vec((0u32..4, 0u32..4, 0u8..6, 0u32..5), 1..24),
        bound_milli in prop::option::of(1000u32..3000),
        flows in prop::collection::vec(any::<u64>(), 1..12),
        out_len in 0usize..12,
        forwarder in 0usize..4,
    ) {
        // Per backend: weight, max_conns, state (0..3 up), connections to preload.
        let weights: Vec<u32> = backends.iter().map(|b| b.0).collect();
        let mut cfg = pool(ALL[alg], &weights, 0, bound_milli.map(|m| f64::from(m) / 1000.0));
        for (c, b) in cfg.backends.iter_mut().zip(&backends) {
            c.max_conns = b.1;
        }
        let load = PoolLoad::new(&cfg);
        for (i, b) in backends.iter().enumerate() {
            for _ in 0..b.3 {
                load.try_acquire(i);
            }
            match b.2 {
                4 => load.set_state(i, Status::Down),
                5 => load.set_state(i, Status::Drain),
                _ => {}
            }
        }
        let balancer = Balancer::new(&cfg)?;
        let mut sel = balancer.selector(forwarder);
        // A Maglev table holds only backends configured with weight.
        let in_table: Vec<bool> = weights.iter()
            .map(|&w| ALL[alg] != Balance::Maglev || w > 0)
            .collect();
        let mut out = vec![0u16; out_len];
        for flow in flows {
            check_ranking(sel.as_mut(), flow, &load, &mut out, &in_table)?;
        }
    }

    #[test]
    fn bounded_load_holds_for_every_algorithm(
        alg in 0usize..ALL.len(),
        weights in prop::collection::vec(1u32..5, 2..12),
        bound_milli in 1000u32..2500,
        hot in any::<bool>(),
    ) {
        let cfg = pool(ALL[alg], &weights, 0, Some(f64::from(bound_milli) / 1000.0));
        let load = PoolLoad::new(&cfg);
        let mut sel = Balancer::new(&cfg)?.selector(1);
        for flow in 0..300u64 {
            let flow = if hot { 0x5eed } else { flow.wrapping_mul(0x9e37_79b9_7f4a_7c15) };
            // With bound ≥ 1 the capacities add up to more than the demand: someone has room.
            prop_assert!(place(sel.as_mut(), flow, &load).is_some());
            within_bound(&load, bound_milli, &weights).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn smooth_weighted_shares_match_weights(
        weights in prop::collection::vec(0u32..20, 1..16),
        forwarder in 0usize..8,
        rounds in 1usize..4,
    ) {
        let total: u32 = weights.iter().sum();
        prop_assume!(total > 0);
        let cfg = pool(Balance::Weighted, &weights, 0, None);
        let load = PoolLoad::new(&cfg);
        let mut sel = Balancer::new(&cfg)?.selector(forwarder);
        let picks = firsts(sel.as_mut(), &load, total as usize * rounds);
        // Over whole cycles of W picks the shares are exact, which is within any tolerance
        // (the requirement is 2 %).
        for (i, &w) in weights.iter().enumerate() {
            let got = picks.iter().filter(|&&b| usize::from(b) == i).count();
            prop_assert_eq!(got, w as usize * rounds, "backend {}", i);
        }
    }
}

#[test]
fn max_conns_holds_with_concurrent_forwarders() -> Result<(), BuildError> {
    const THREADS: usize = 4;
    const CAP: u32 = 3;
    for balance in ALL {
        let cfg = pool(balance, &[1, 2, 1, 3, 1, 1], CAP, None);
        let load = PoolLoad::new(&cfg);
        let balancer = Balancer::new(&cfg)?;
        // Connections each backend holds, counted apart from `PoolLoad` as a witness.
        let held: Vec<AtomicU32> = (0..6).map(|_| AtomicU32::new(0)).collect();
        let worst = AtomicU32::new(0);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (load, held, worst) = (&load, &held, &worst);
                let mut sel = balancer.selector(t);
                s.spawn(move || {
                    let mut open = VecDeque::new();
                    for k in 0..3000u64 {
                        let flow =
                            (k * THREADS as u64 + t as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
                        if let Some(b) = place(sel.as_mut(), flow, load) {
                            let now = held[b].fetch_add(1, Ordering::SeqCst) + 1;
                            worst.fetch_max(now, Ordering::Relaxed);
                            open.push_back(b);
                        }
                        if open.len() > 4 || (k % 3 == 0 && !open.is_empty()) {
                            if let Some(b) = open.pop_front() {
                                held[b].fetch_sub(1, Ordering::SeqCst);
                                load.release(b);
                            }
                        }
                    }
                    for b in open {
                        held[b].fetch_sub(1, Ordering::SeqCst);
                        load.release(b);
                    }
                });
            }
        });
        assert!(
            worst.load(Ordering::Relaxed) <= CAP,
            "{balance:?}: {worst:?}"
        );
        assert!(
            worst.load(Ordering::Relaxed) > 0,
            "{balance:?} placed nothing"
        );
        assert_eq!(load.total_active(), 0);
        assert!((0..6).all(|i| load.active(i) == 0));
    }
    Ok(())
}
