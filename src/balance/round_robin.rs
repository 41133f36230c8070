//! Round robin and smooth weighted round robin (the nginx algorithm, `ngx_http_upstream_get_peer`
//! in `src/http/ngx_http_upstream_round_robin.c`).
//!
//! Both rank fallbacks too: round robin the next backends in index order, smooth weighted round
//! robin the backends with the next highest current weights (the ones it would pick next).

use super::{Selector, Take, fill_cyclic, rankable};
use crate::pool::PoolLoad;

/// Plain round robin over the backends with room: each ranking starts one past the previous
/// first choice, so backends with room take turns in index order and a full one gives its turn
/// to the next.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    next: usize,
    /// Picks so far: the key slow start's admission hashes, as a flow would be.
    turns: u64,
}

impl RoundRobin {
    /// Starts at backend `start` (mod the pool size), to stagger forwarders.
    pub fn new(start: usize) -> Self {
        Self {
            next: start,
            turns: 0,
        }
    }
}

impl Selector for RoundRobin {
    fn rank(&mut self, _flow: u64, load: &PoolLoad, out: &mut [u16]) -> usize {
        // The turn counter stands in for a flow: ramping backends take their share of turns.
        let turn = self.turns;
        let n = fill_cyclic(load, self.next, out, 0, Take::Room { admit: Some(turn) });
        self.turns = self.turns.wrapping_add(1);
        if n > 0 {
            self.next = usize::from(out[0]) + 1;
        }
        n
    }
}

/// Smooth weighted round robin: on each pick, every backend with room adds its weight to its
/// current weight; the largest current weight wins and gives back the total. Over any `W`
/// consecutive picks with steady weights (`W` their sum), backend `i` is picked exactly `w_i`
/// times, and picks of one backend are spread out instead of bunched (weights 5, 1, 1 give
/// `a a b a c a a`, not `a a a a a b c`).
///
/// Weights are read live from [`PoolLoad`], so a runtime weight change takes effect on the next
/// pick. A backend without room neither gains current weight nor counts in the total, as in
/// nginx.
#[derive(Debug, Clone)]
pub struct SmoothWeighted {
    current: Box<[i64]>,
}

impl SmoothWeighted {
    pub fn new(backends: usize) -> Self {
        Self {
            current: vec![0; backends].into_boxed_slice(),
        }
    }

    /// Makes `picks` picks over `weights` as if every backend had room, to stagger forwarders:
    /// each then walks the same fair sequence from another point.
    pub fn advance(&mut self, weights: &[u32], picks: usize) {
        let len = weights.len().min(self.current.len());
        for _ in 0..picks {
            let mut total = 0i64;
            let mut best: Option<usize> = None;
            for (i, &w) in weights[..len].iter().enumerate() {
                if w == 0 {
                    continue;
                }
                self.current[i] = self.current[i].saturating_add(i64::from(w));
                total += i64::from(w);
                if best.is_none_or(|b| self.current[i] > self.current[b]) {
                    best = Some(i);
                }
            }
            match best {
                Some(b) => self.current[b] = self.current[b].saturating_sub(total),
                None => return,
            }
        }
    }
}

impl Selector for SmoothWeighted {
    fn rank(&mut self, _flow: u64, load: &PoolLoad, out: &mut [u16]) -> usize {
        let len = rankable(load).min(self.current.len());
        if out.is_empty() {
            return 0;
        }
        let mut total = 0i64;
        let mut n = 0;
        for i in 0..len {
            if !load.has_room(i) {
                continue;
            }
            let w = i64::from(load.weight(i));
            let cw = self.current[i].saturating_add(w);
            self.current[i] = cw;
            total += w;
            // Keep `out[..n]` the backends with the highest current weight, highest first; on a
            // tie the lower index stays ahead, as in nginx.
            if n == out.len() && cw <= self.current[usize::from(out[n - 1])] {
                continue;
            }
            let mut p = n.min(out.len() - 1);
            while p > 0 && cw > self.current[usize::from(out[p - 1])] {
                out[p] = out[p - 1];
                p -= 1;
            }
            out[p] = i as u16;
            n = (n + 1).min(out.len());
        }
        if n > 0 {
            let best = usize::from(out[0]);
            self.current[best] = self.current[best].saturating_sub(total);
        }
        n
    }
}
