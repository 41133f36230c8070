//! Stand-in selection until the algorithm families land: round robin over backends with room.

use std::net::SocketAddr;

use super::{PoolLoad, Selector};
use crate::config::{HashKey, PoolConfig};

pub struct Balancer {
    backends: usize,
}

impl Balancer {
    pub fn new(cfg: &PoolConfig) -> Self {
        Self {
            backends: cfg.backends.len(),
        }
    }

    pub fn selector(&self, forwarder: usize) -> Box<dyn Selector> {
        Box::new(Interim {
            next: forwarder,
            n: self.backends,
        })
    }
}

struct Interim {
    next: usize,
    n: usize,
}

impl Selector for Interim {
    fn rank(&mut self, _flow: u64, load: &PoolLoad, out: &mut [u16]) -> usize {
        let mut k = 0;
        for i in 0..self.n {
            if k == out.len() {
                break;
            }
            let b = (self.next + i) % self.n;
            if load.has_room(b) {
                out[k] = b as u16;
                k += 1;
            }
        }
        self.next = self.next.wrapping_add(1);
        k
    }
}

pub fn flow_hash(peer: &SocketAddr, _key: HashKey) -> u64 {
    match peer.ip() {
        std::net::IpAddr::V4(a) => u64::from(u32::from(a)),
        std::net::IpAddr::V6(a) => u128::from(a) as u64,
    }
}
