//! Backend selection: Maglev table builds, lookups and every selector's `rank`.
//!
//! `cargo bench --bench balance`; filter with e.g. `cargo bench --bench balance -- rank/`.

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use levee::balance::{
    Balancer, MAX_CANDIDATES, MaglevTable, flow_hash, maglev::DEFAULT_TABLE_SIZE,
};
use levee::config::{BackendConfig, Balance, HashKey, PoolConfig};
use levee::pool::PoolLoad;

fn pool(balance: Balance, n: usize, bound: Option<f64>) -> PoolConfig {
    PoolConfig {
        name: "bench".into(),
        balance,
        hash_key: HashKey::SourceIp,
        table_size: DEFAULT_TABLE_SIZE,
        bound,
        overflow: levee::config::Overflow::Queue,
        proxy_protocol: levee::config::ProxyProtocol::None,
        source: Vec::new(),
        health: levee::config::HealthConfig::default(),
        backends: (0..n)
            .map(|i| BackendConfig {
                weight: 1 + (i % 3) as u32,
                max_conns: 0,
                ..BackendConfig::new(
                    format!("10.0.{}.{}:8080", i / 256, i % 256),
                    SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 8080)),
                )
            })
            .collect(),
    }
}

/// Flow hashes of distinct clients, cycled through so lookups do not hit one cache line.
fn flows() -> Vec<u64> {
    (0..4096u32)
        .map(|i| {
            flow_hash(
                &SocketAddr::from((Ipv4Addr::from(0xc633_6400 + i), 0)),
                HashKey::SourceIp,
            )
        })
        .collect()
}

/// A pool with some load on it, as ranking sees it in steady state.
fn loaded(cfg: &PoolConfig) -> PoolLoad {
    let load = PoolLoad::new(cfg);
    for i in 0..load.len() {
        for _ in 0..(i * 7) % 13 {
            load.try_acquire(i);
        }
    }
    load
}

fn maglev_build(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev_build");
    g.sample_size(20);
    for n in [10, 100, 1000] {
        let cfg = pool(Balance::Maglev, n, None);
        g.bench_with_input(BenchmarkId::from_parameter(n), &cfg, |b, cfg| {
            b.iter(|| MaglevTable::new(black_box(&cfg.backends), cfg.table_size))
        });
    }
    g.finish();
}

fn maglev_lookup(c: &mut Criterion) {
    let flows = flows();
    let mut g = c.benchmark_group("maglev_lookup");
    g.throughput(Throughput::Elements(flows.len() as u64));
    for n in [10, 1000] {
        let cfg = pool(Balance::Maglev, n, None);
        let Ok(table) = MaglevTable::new(&cfg.backends, cfg.table_size) else {
            panic!("bench pool builds");
        };
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                flows
                    .iter()
                    .map(|&f| table.lookup(black_box(f)).map_or(0, u64::from))
                    .sum::<u64>()
            })
        });
    }
    g.finish();
}

/// One `rank` into `MAX_CANDIDATES` slots per element.
fn rank_group(c: &mut Criterion, group: &str, cases: &[(&str, PoolConfig)]) {
    let flows = flows();
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(flows.len() as u64));
    for (label, cfg) in cases {
        let Ok(balancer) = Balancer::new(cfg) else {
            panic!("bench pool builds");
        };
        let load = loaded(cfg);
        let mut sel = balancer.selector(0);
        let mut out = [0u16; MAX_CANDIDATES];
        g.bench_function(*label, |b| {
            b.iter(|| {
                let mut sum = 0usize;
                for &f in &flows {
                    sum += sel.rank(black_box(f), &load, &mut out);
                }
                sum
            })
        });
    }
    g.finish();
}

fn rank(c: &mut Criterion) {
    let cases: Vec<(&str, PoolConfig)> = vec![
        ("maglev/100", pool(Balance::Maglev, 100, None)),
        ("maglev_bound/100", pool(Balance::Maglev, 100, Some(1.25))),
        ("maglev_bound/1000", pool(Balance::Maglev, 1000, Some(1.25))),
        ("round_robin/100", pool(Balance::RoundRobin, 100, None)),
        ("weighted/100", pool(Balance::Weighted, 100, None)),
        ("least_conn/100", pool(Balance::LeastConn, 100, None)),
        ("least_conn/1000", pool(Balance::LeastConn, 1000, None)),
        ("p2c/100", pool(Balance::P2c, 100, None)),
        ("source_hash/100", pool(Balance::SourceHash, 100, None)),
    ];
    rank_group(c, "rank", &cases);
}

/// The worst case: every backend is full, so a ranking looks at all of them and returns
/// nothing (the overflow path).
fn rank_all_full(c: &mut Criterion) {
    let mut g = c.benchmark_group("rank_all_full");
    for (label, balance) in [
        ("maglev", Balance::Maglev),
        ("least_conn", Balance::LeastConn),
    ] {
        for n in [100, 1000] {
            let mut cfg = pool(balance, n, None);
            for b in &mut cfg.backends {
                b.max_conns = 1;
            }
            let Ok(balancer) = Balancer::new(&cfg) else {
                panic!("bench pool builds");
            };
            let load = PoolLoad::new(&cfg);
            for i in 0..n {
                load.try_acquire(i);
            }
            let mut sel = balancer.selector(0);
            let mut out = [0u16; MAX_CANDIDATES];
            g.bench_function(BenchmarkId::new(label, n), |b| {
                b.iter(|| sel.rank(black_box(0x1234_5678), &load, &mut out))
            });
        }
    }
    g.finish();
}

fn hash(c: &mut Criterion) {
    let mut g = c.benchmark_group("flow_hash");
    let v4 = SocketAddr::from((Ipv4Addr::new(198, 51, 100, 7), 51234));
    let v6 = SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6), 51234));
    g.bench_function("v4_ip_port", |b| {
        b.iter(|| flow_hash(black_box(&v4), HashKey::SourceIpPort))
    });
    g.bench_function("v6_ip_port", |b| {
        b.iter(|| flow_hash(black_box(&v6), HashKey::SourceIpPort))
    });
    g.finish();
}

fn config() -> Criterion {
    // Shared 2-core machines: shorter runs, compare within one run only.
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = maglev_build, maglev_lookup, rank, rank_all_full, hash
}
criterion_main!(benches);
