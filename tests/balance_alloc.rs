//! `Selector::rank` runs once per new connection and must not allocate. This binary counts the
//! allocations each thread makes, through a global allocator that forwards to the system one.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use levee::balance::{Balancer, BuildError, MAX_CANDIDATES};
use levee::config::{BackendConfig, Balance, HashKey, PoolConfig};
use levee::pool::{PoolLoad, Status};

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds exactly as it does for `System`; the counter is a const
// thread-local `Cell`, which neither allocates nor re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: the caller upholds `alloc`'s contract (non-zero size), which is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn rank_does_not_allocate() -> Result<(), BuildError> {
    for balance in [
        Balance::Maglev,
        Balance::RoundRobin,
        Balance::Weighted,
        Balance::LeastConn,
        Balance::P2c,
        Balance::SourceHash,
    ] {
        for bound in [None, Some(1.1)] {
            let cfg = PoolConfig {
                name: "web".into(),
                balance,
                hash_key: HashKey::SourceIpPort,
                table_size: 65537,
                bound,
                overflow: levee::config::Overflow::Queue,
                proxy_protocol: levee::config::ProxyProtocol::None,
                source: Vec::new(),
                health: levee::config::HealthConfig::default(),
                backends: (0..200)
                    .map(|i| BackendConfig {
                        weight: 1 + i % 4,
                        max_conns: 2,
                        ..BackendConfig::new(
                            format!("backend-{i}"),
                            ([192, 0, 2, 1], 8000 + i as u16).into(),
                        )
                    })
                    .collect(),
            };
            let load = PoolLoad::new(&cfg);
            load.set_state(5, Status::Down);
            let balancer = Balancer::new(&cfg)?;
            let mut sel = balancer.selector(1);
            let mut out = [0u16; MAX_CANDIDATES];
            let before = allocations();
            // Until every backend is full, so the all-full path runs too.
            for flow in 0..1000u64 {
                let n = sel.rank(flow.wrapping_mul(0x9e37_79b9_7f4a_7c15), &load, &mut out);
                if let Some(&b) = out[..n].first() {
                    load.try_acquire(usize::from(b));
                }
            }
            assert_eq!(sel.rank(3, &load, &mut out), 0, "{balance:?} pool not full");
            assert_eq!(allocations() - before, 0, "{balance:?} allocated");
        }
    }
    Ok(())
}

#[test]
fn the_counter_sees_allocations() {
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 64]);
    assert!(allocations() > before);
    drop(v);
}
