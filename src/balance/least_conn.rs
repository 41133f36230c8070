//! Least connections, weighted: the backend whose load after taking this connection,
//! `(active + 1) / weight`, is lowest. With equal weights that is the backend with the fewest
//! active connections. Counting the new connection matters when loads are low: by
//! `active / weight` (nginx's `least_conn`) idle backends tie whatever their weight, while here
//! the heaviest idle backend goes first and two connections on a weight-2 backend weigh as one
//! on a weight-1 backend.
//!
//! Equally loaded backends take turns: ties go to the one this selector ranked first least
//! recently (nginx breaks them by round robin for the same reason), so index 0 is not favoured and a
//! burst that arrives before any load is counted still spreads. Fallbacks are the next least
//! loaded, in the same order.

use std::cmp::Ordering;

use super::{Selector, rankable};
use crate::pool::PoolLoad;

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
    /// When this selector last ranked each backend first, on its own clock.
    last_first: Box<[u64]>,
    clock: u64,
}

impl LeastConn {
    /// A selector for a pool of `backends`; among ties it starts at backend `start` (mod the
    /// pool size), to stagger forwarders.
    pub fn new(backends: usize, start: usize) -> Self {
        let len = backends.max(1);
        // Backend `start` looks the least recently picked, then `start + 1`, and so on.
        let last_first = (0..backends)
            .map(|i| ((i + len - start % len) % len) as u64)
            .collect();
        Self {
            last_first,
            clock: len as u64,
        }
    }

    fn last(&self, i: usize) -> u64 {
        // Backends the selector was not built for count as never picked.
        self.last_first.get(i).copied().unwrap_or(0)
    }

    fn better(&self, load: &PoolLoad, a: usize, b: usize) -> bool {
        cmp_load(load, a, b)
            .then_with(|| self.last(a).cmp(&self.last(b)))
            .is_lt()
    }
}

impl Selector for LeastConn {
    fn rank(&mut self, _flow: u64, load: &PoolLoad, out: &mut [u16]) -> usize {
        let len = rankable(load);
        if out.is_empty() {
            return 0;
        }
        let mut n = 0;
        for i in 0..len {
            if !load.has_room(i) {
                continue;
            }
            // Keep `out[..n]` the best backends so far, best first.
            if n == out.len() && !self.better(load, i, usize::from(out[n - 1])) {
                continue;
            }
            let mut p = n.min(out.len() - 1);
            while p > 0 && self.better(load, i, usize::from(out[p - 1])) {
                out[p] = out[p - 1];
                p -= 1;
            }
            out[p] = i as u16;
            n = (n + 1).min(out.len());
        }
        if n > 0 {
            self.clock += 1;
            if let Some(t) = self.last_first.get_mut(usize::from(out[0])) {
                *t = self.clock;
            }
        }
        n
    }
}
