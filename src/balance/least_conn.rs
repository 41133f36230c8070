//! Least connections, weighted: the backend whose load after taking this connection,
//! `(active + 1) / weight`, is lowest (as HAProxy's `leastconn` and nginx's `least_conn` weigh
//! servers). With equal weights that is the backend with the fewest active connections; with
//! all idle, the heaviest backend goes first.
//!
//! Ties are broken by scan order, and every ranking starts its scan one backend further on, so
//! equally loaded backends take turns instead of index 0 always winning. Fallbacks are the next
//! least loaded.

use std::cmp::Ordering;

use super::{PoolLoad, Selector, rankable};

/// Compares backends `a` and `b` by `(active + 1) / weight`, cross-multiplied so that no
/// division rounds. `Less` means `a` is less loaded.
pub(crate) fn cmp_load(load: &PoolLoad, a: usize, b: usize) -> Ordering {
    let (na, wa) = (u64::from(load.active(a)) + 1, u64::from(load.weight(a)));
    let (nb, wb) = (u64::from(load.active(b)) + 1, u64::from(load.weight(b)));
    (na * wb).cmp(&(nb * wa))
}

/// Least connections over the backends with room.
#[derive(Debug, Clone)]
pub struct LeastConn {
    next: usize,
}

impl LeastConn {
    /// Starts its first scan at backend `start` (mod the pool size), to stagger forwarders.
    pub fn new(start: usize) -> Self {
        Self { next: start }
    }
}

impl Selector for LeastConn {
    fn rank(&mut self, _flow: u64, load: &PoolLoad, out: &mut [u16]) -> usize {
        let len = rankable(load);
        if len == 0 || out.is_empty() {
            return 0;
        }
        let mut i = self.next % len;
        self.next = i + 1;
        let mut n = 0;
        for _ in 0..len {
            if load.has_room(i) {
                // Keep `out[..n]` sorted by load, earlier scan position first among equals.
                let full = n == out.len();
                if !(full && cmp_load(load, i, usize::from(out[n - 1])).is_ge()) {
                    let mut p = n.min(out.len() - 1);
                    while p > 0 && cmp_load(load, i, usize::from(out[p - 1])).is_lt() {
                        out[p] = out[p - 1];
                        p -= 1;
                    }
                    out[p] = i as u16;
                    n = (n + 1).min(out.len());
                }
            }
            i += 1;
            if i == len {
                i = 0;
            }
        }
        n
    }
}
