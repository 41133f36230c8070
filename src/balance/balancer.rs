//! The per-pool factory: builds what a pool's algorithm shares (the Maglev table) once, then
//! hands each forwarder a selector of its own.

use std::net::SocketAddr;
use std::sync::Arc;

use super::maglev::MAX_BACKENDS;
use super::{
    BuildError, LeastConn, Maglev, MaglevTable, PowerOfTwoChoices, RoundRobin, Selector,
    SmoothWeighted, SourceHash, flow_hash,
};
use crate::config::{Balance, HashKey, PoolConfig};

/// What a pool's selectors start from.
#[derive(Debug, Clone)]
enum Algorithm {
    Maglev(Arc<MaglevTable>),
    RoundRobin,
    /// Configured weights, to stagger each forwarder's sequence.
    Weighted(Box<[u32]>),
    /// Number of backends, to size the selectors' tie-break state.
    LeastConn(usize),
    P2c,
    SourceHash,
}

/// One pool's balancing: its algorithm, what it hashes, and the state its selectors share.
#[derive(Debug, Clone)]
pub struct Balancer {
    algorithm: Algorithm,
    hash_key: HashKey,
}

impl Balancer {
    /// Builds the pool's shared state; for Maglev this populates the table (milliseconds for
    /// thousands of backends), so do it once per pool and backend set, off the data path.
    pub fn new(cfg: &PoolConfig) -> Result<Self, BuildError> {
        if cfg.backends.len() > MAX_BACKENDS {
            return Err(BuildError::TooManyBackends {
                count: cfg.backends.len(),
                max: MAX_BACKENDS,
            });
        }
        let algorithm = match cfg.balance {
            Balance::Maglev => {
                Algorithm::Maglev(Arc::new(MaglevTable::new(&cfg.backends, cfg.table_size)?))
            }
            Balance::RoundRobin => Algorithm::RoundRobin,
            Balance::Weighted => {
                Algorithm::Weighted(cfg.backends.iter().map(|b| b.weight).collect())
            }
            Balance::LeastConn => Algorithm::LeastConn(cfg.backends.len()),
            Balance::P2c => Algorithm::P2c,
            Balance::SourceHash => Algorithm::SourceHash,
        };
        Ok(Self {
            algorithm,
            hash_key: cfg.hash_key,
        })
    }

    /// A selector for forwarder number `forwarder` (0, 1, …). The number staggers round-robin
    /// starts and seeds random choices, so forwarders that start together do not pick in
    /// lockstep; the same number gives the same sequence, which keeps runs reproducible.
    pub fn selector(&self, forwarder: usize) -> Box<dyn Selector> {
        match &self.algorithm {
            Algorithm::Maglev(table) => Box::new(Maglev::new(Arc::clone(table))),
            Algorithm::RoundRobin => Box::new(RoundRobin::new(forwarder)),
            Algorithm::Weighted(weights) => {
                let mut swrr = SmoothWeighted::new(weights.len());
                swrr.advance(weights, forwarder);
                Box::new(swrr)
            }
            Algorithm::LeastConn(backends) => Box::new(LeastConn::new(*backends, forwarder)),
            Algorithm::P2c => Box::new(PowerOfTwoChoices::new(forwarder as u64)),
            Algorithm::SourceHash => Box::new(SourceHash::new()),
        }
    }

    pub fn balance(&self) -> Balance {
        match self.algorithm {
            Algorithm::Maglev(_) => Balance::Maglev,
            Algorithm::RoundRobin => Balance::RoundRobin,
            Algorithm::Weighted(_) => Balance::Weighted,
            Algorithm::LeastConn(_) => Balance::LeastConn,
            Algorithm::P2c => Balance::P2c,
            Algorithm::SourceHash => Balance::SourceHash,
        }
    }

    /// What the pool's flows are hashed by.
    pub fn hash_key(&self) -> HashKey {
        self.hash_key
    }

    /// [`flow_hash`] of `peer` by this pool's [`HashKey`].
    pub fn flow_hash(&self, peer: &SocketAddr) -> u64 {
        flow_hash(peer, self.hash_key)
    }

    /// The shared Maglev table, for a Maglev pool.
    pub fn maglev_table(&self) -> Option<&Arc<MaglevTable>> {
        match &self.algorithm {
            Algorithm::Maglev(table) => Some(table),
            _ => None,
        }
    }
}
