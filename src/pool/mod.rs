//! A pool as every part of levee shares it: what it is (names, addresses, what to hash), how
//! loaded its backends are, and how healthy. It sits below the parts that use it: `forward/`
//! ranks and reserves through it, `health/` writes its health and effective weights, `ctl/`
//! reads and changes it.
//!
//! Who writes what:
//!
//! | field | written by | read by |
//! |---|---|---|
//! | [`Pool`]'s spec fields (`name`, `names`, `addrs`, `hash_key`, `all_down`) | the engine at start | everyone |
//! | [`PoolLoad`] connection counts | whoever opens a backend connection (forwarders) | selectors, `ctl` |
//! | [`PoolLoad`] state and effective weight | the health monitor | selectors |
//! | [`PoolLoad`] `max_conns`, bound | `levee ctl` | selectors, reservations |
//! | [`PoolHealth`] status and counters | the health monitor | `ctl` |
//! | [`PoolHealth`] operator weight and drain | `levee ctl` | the health monitor |
//! | [`Signals`] streaks | forwarders | the health monitor |
//! | [`QueueStats`] counts and waits | forwarders | `ctl` |
//! | [`QueueStats`] drain rate | the overflow supervisor | forwarders (admission), `ctl` |
//! | [`PoolHistograms`] (connect time, duration, bytes) | forwarders, at their tick, never waiting | `ctl`, `/metrics` |

pub mod carried;
mod health;
mod load;
pub mod queue;
mod signals;
pub mod table;

pub use health::{HealthCounts, PoolHealth, Status};
pub use load::PoolLoad;
pub use queue::{Left, QueueStats, Refused};
pub use signals::Signals;

pub use crate::stats::histogram::PoolHistograms;

use socket2::SockAddr;

use crate::balance::Balancer;
use crate::config::{AllDown, Balance, HashKey, Overflow, PoolConfig};

/// A pool as every forwarder, the health monitor and `levee ctl` share it.
pub struct Pool {
    pub name: String,
    pub load: PoolLoad,
    pub balancer: Balancer,
    /// Backend addresses, ready for connect(2); the kernel reads them during a connect.
    pub addrs: Vec<SockAddr>,
    pub names: Vec<String>,
    /// What to hash for the selector, or `None` when its algorithm ignores the flow.
    pub hash_key: Option<HashKey>,
    /// Backend health: what forwarders report, what the monitor decided.
    pub health: PoolHealth,
    /// What a new connection gets when no backend is up.
    pub all_down: AllDown,
    /// What a new connection gets when every backend that is up is full.
    pub overflow: Overflow,
    /// The PROXY protocol header sent to a backend first, if any.
    pub proxy_protocol: Option<crate::proxy_protocol::Version>,
    /// Local addresses to connect from (port 0), in turn; empty: the kernel's choice.
    pub sources: Vec<SockAddr>,
    /// How the pool's queue has fared.
    pub queue: QueueStats,
    /// Connect times, durations and bytes of the connections this process relayed.
    pub histograms: PoolHistograms,
}

impl Pool {
    /// The shared state of the pool `cfg` describes, with `balancer` built for it and a load
    /// that only this process sees.
    pub fn new(cfg: &PoolConfig, balancer: Balancer) -> Self {
        Self::with_load(cfg, balancer, PoolLoad::new(cfg), 1)
    }

    /// The same, with `load` in the overflow tier's shared table, for `forwarders` forwarders.
    pub fn with_load(
        cfg: &PoolConfig,
        balancer: Balancer,
        load: PoolLoad,
        forwarders: usize,
    ) -> Self {
        let hashes = matches!(cfg.balance, Balance::Maglev | Balance::SourceHash);
        Self {
            name: cfg.name.clone(),
            load,
            balancer,
            addrs: cfg
                .backends
                .iter()
                .map(|b| SockAddr::from(b.addr))
                .collect(),
            names: cfg.backends.iter().map(|b| b.name.clone()).collect(),
            hash_key: hashes.then_some(cfg.hash_key),
            health: PoolHealth::new(cfg),
            all_down: cfg.health.all_down,
            overflow: cfg.overflow,
            proxy_protocol: cfg.proxy_protocol.version(),
            sources: cfg
                .source
                .iter()
                .map(|&ip| SockAddr::from(std::net::SocketAddr::new(ip, 0)))
                .collect(),
            queue: QueueStats::new(forwarders),
            histograms: PoolHistograms::new(),
        }
    }
}
