//! Who a listener lets in: its `allow` and `deny` lists and a rate of new connections per
//! source address (a token bucket), checked for each new client before a backend is chosen,
//! with the PROXY header's client on a listener that takes one.
//!
//! The rules change at runtime (`levee ctl -w`): `ctl` publishes a new set and bumps a
//! generation, and a forwarder, which reads the generation (one atomic load) for each client,
//! takes the new set only when it changed. The buckets live in a fixed table shared by the
//! forwarders, indexed by a keyed hash of the source address: bounded memory whatever the
//! number of sources, lock-free (one compare-and-swap per client). Sources whose hashes meet in
//! one slot share a bucket; the key is random per process, so a client cannot pick another's
//! slot on purpose.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::ListenerConfig;
use crate::config::cidr::Cidr;
use crate::stats::CloseReason;

/// Buckets per listener: 16,384 × 8 bytes; as many counts of connections held.
const BUCKETS: usize = 16_384;

/// A connection not counted against its source's `max_conns_per_source`.
pub const NO_HOLD: u32 = u32::MAX;

/// A listener's rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    /// Who may send a PROXY header (the socket's own peer); empty: anyone.
    pub upstream: Vec<Cidr>,
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    /// New connections per second per source; 0: no limit.
    pub rate: u32,
    /// Bucket size; 0: as `rate`.
    pub burst: u32,
    /// Connections one source may hold open at once; 0: no limit.
    pub max_conns: u32,
}

impl Rules {
    pub fn of(l: &ListenerConfig) -> Self {
        Self {
            upstream: l.proxy_from.clone(),
            allow: l.allow.clone(),
            deny: l.deny.clone(),
            rate: l.rate_per_source,
            burst: l.burst_per_source,
            max_conns: l.max_conns_per_source,
        }
    }

    /// Whether any rule applies: without one, a client's address is not even read.
    pub fn any(&self) -> bool {
        !self.allow.is_empty() || !self.deny.is_empty() || self.rate > 0 || self.max_conns > 0
    }
}

/// A listener's gate, shared by its forwarders and `ctl`.
#[derive(Debug)]
pub struct Gate {
    rules: Mutex<Arc<Rules>>,
    generation: AtomicU64,
    buckets: Box<[AtomicU64]>,
    /// Connections held per source slot (the same keyed hash as the buckets).
    held: Box<[std::sync::atomic::AtomicU32]>,
    hasher: RandomState,
}

impl Gate {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules: Mutex::new(Arc::new(rules)),
            generation: AtomicU64::new(1),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            held: (0..BUCKETS)
                .map(|_| std::sync::atomic::AtomicU32::new(0))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    /// Publishes new rules (from `ctl`).
    pub fn set(&self, rules: Rules) {
        *self.rules.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(rules);
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn rules(&self) -> Arc<Rules> {
        self.rules
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The table slot of source `ip`. An IPv6 host commonly has a whole /64: one slot for it,
    /// or it could use as many slots as it likes (and crowd out everyone else's).
    fn slot_of(&self, ip: IpAddr) -> usize {
        let key = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
            },
            v4 => v4,
        };
        self.hasher.hash_one(key) as usize % BUCKETS
    }

    /// Counts one more connection held by `ip`'s slot if it holds fewer than `max`: the slot
    /// to give back later, or `None` at the limit.
    fn hold(&self, ip: IpAddr, max: u32) -> Option<u32> {
        let slot = self.slot_of(ip);
        self.held[slot]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| slot as u32)
    }

    /// Gives back a connection `hold` counted (never below zero).
    pub fn release(&self, slot: u32) {
        if let Some(n) = self.held.get(slot as usize) {
            let was = n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            // A release without its hold would lower the limit for everyone in the slot.
            debug_assert!(was.is_ok(), "a source's count released below zero");
        }
    }

    /// Takes one token from `ip`'s bucket at `now_ms` (a monotonic clock): whether it had one.
    fn take(&self, ip: IpAddr, now_ms: u64, rate: u32, burst: u32) -> bool {
        let slot = &self.buckets[self.slot_of(ip)];
        // Tokens in thousandths in the low 31 bits, bit 31 set once the slot is used, and the
        // last refill's time (ms, wrapping) in the high 32. Rates and bursts are at most
        // 1,000,000 (the registry's bound), so tokens fit in 31 bits.
        const USED: u64 = 1 << 31;
        let cap = u64::from(if burst == 0 { rate } else { burst }) * 1000;
        let now = now_ms as u32;
        let mut word = slot.load(Ordering::Relaxed);
        loop {
            let (last, tokens) = ((word >> 32) as u32, word & (USED - 1));
            // A slot never used starts full.
            // Forwarders read the clock at different moments: one a little behind the last
            // refill sees no time passed (a wrapped difference would refill the bucket), and
            // keeps the later time.
            let since = now.wrapping_sub(last);
            let (elapsed, stamp) = if since > u32::MAX / 2 {
                (0, last)
            } else {
                (u64::from(since), now)
            };
            let refilled = if word & USED == 0 {
                cap
            } else {
                (tokens + elapsed * u64::from(rate)).min(cap)
            };
            let (left, ok) = if refilled >= 1000 {
                (refilled - 1000, true)
            } else {
                (refilled, false)
            };
            let next = (u64::from(stamp) << 32) | USED | left;
            match slot.compare_exchange_weak(word, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return ok,
                Err(seen) => word = seen,
            }
        }
    }
}

/// A forwarder's view of a listener's gate: the rules it last took, and their generation.
#[derive(Debug)]
pub struct GateView {
    pub gate: Arc<Gate>,
    rules: Arc<Rules>,
    generation: u64,
}

impl GateView {
    pub fn new(gate: Arc<Gate>) -> Self {
        Self {
            rules: gate.rules(),
            generation: gate.generation(),
            gate,
        }
    }

    /// The rules now, taking new ones only when `ctl` changed them.
    fn current(&mut self) -> &Arc<Rules> {
        let g = self.gate.generation();
        if g != self.generation {
            self.rules = self.gate.rules();
            self.generation = g;
        }
        &self.rules
    }

    /// Whether any rule applies now.
    pub fn active(&mut self) -> bool {
        self.current().any()
    }

    /// Whether a connection from `peer` (the socket's own address) may send a PROXY header;
    /// `None` when no list says who may, and the address need not be read.
    pub fn upstream(&mut self) -> Option<Arc<Rules>> {
        let rules = self.current();
        (!rules.upstream.is_empty()).then(|| rules.clone())
    }

    /// Lets `ip` in, or says why not. In, it returns the slot its connection is counted in
    /// against `max_conns_per_source` (to give back when it ends), or [`NO_HOLD`].
    pub fn admit(&mut self, ip: IpAddr, now_ms: u64) -> Result<u32, CloseReason> {
        let rules = self.current().clone();
        if rules.deny.iter().any(|r| r.contains(ip))
            || (!rules.allow.is_empty() && !rules.allow.iter().any(|r| r.contains(ip)))
        {
            return Err(CloseReason::Denied);
        }
        // Held first: a client refused for holding too many spends no token.
        let held = if rules.max_conns > 0 {
            self.gate
                .hold(ip, rules.max_conns)
                .ok_or(CloseReason::SourceConns)?
        } else {
            NO_HOLD
        };
        if rules.rate > 0 && !self.gate.take(ip, now_ms, rules.rate, rules.burst) {
            if held != NO_HOLD {
                self.gate.release(held);
            }
            return Err(CloseReason::SourceRate);
        }
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("literal")
    }

    #[test]
    fn a_bucket_holds_its_burst_and_refills_at_its_rate() {
        let g = Gate::new(Rules::default());
        let a = ip("198.51.100.1");
        // 10/s, burst 3: three at once, then none until 100 ms have passed.
        let took: Vec<bool> = (0..5).map(|_| g.take(a, 1_000, 10, 3)).collect();
        assert_eq!(took, [true, true, true, false, false]);
        assert!(!g.take(a, 1_050, 10, 3));
        assert!(g.take(a, 1_150, 10, 3));
        // Long idle: back to the burst, not more.
        let later: Vec<bool> = (0..4).map(|_| g.take(a, 60_000, 10, 3)).collect();
        assert_eq!(later, [true, true, true, false]);
        // Another source has its own bucket.
        assert!(g.take(ip("198.51.100.2"), 60_000, 10, 3));
        // A forwarder whose clock reads a little earlier sees no time passed.
        let b = ip("198.51.100.3");
        assert!(g.take(b, 10_005, 1, 1));
        assert!(!g.take(b, 10_005, 1, 1));
        assert!(!g.take(b, 10_003, 1, 1));
        assert!(g.take(b, 11_005, 1, 1));
        // One IPv6 /64 is one source.
        assert!(g.take(ip("2001:db8::1"), 0, 1, 1));
        assert!(!g.take(ip("2001:db8::2:3"), 0, 1, 1));
        assert!(g.take(ip("2001:db8:0:1::1"), 0, 1, 1));
    }

    #[test]
    fn lists_decide_before_the_rate() {
        let rules = Rules {
            upstream: Vec::new(),
            allow: vec![Cidr::parse("10.0.0.0/8").expect("r")],
            deny: vec![Cidr::parse("10.9.0.0/16").expect("r")],
            rate: 1,
            burst: 1,
            max_conns: 0,
        };
        let mut v = GateView::new(Arc::new(Gate::new(rules)));
        assert_eq!(v.admit(ip("10.1.1.1"), 0), Ok(NO_HOLD));
        assert_eq!(v.admit(ip("10.1.1.1"), 0), Err(CloseReason::SourceRate));
        assert_eq!(v.admit(ip("10.9.1.1"), 0), Err(CloseReason::Denied));
        assert_eq!(v.admit(ip("192.0.2.1"), 0), Err(CloseReason::Denied));
        // New rules reach the view.
        v.gate.set(Rules::default());
        assert!(!v.active());
        assert_eq!(v.admit(ip("192.0.2.1"), 0), Ok(NO_HOLD));
        // Two held at once per source; a third waits for one to end.
        v.gate.set(Rules {
            max_conns: 2,
            ..Rules::default()
        });
        let a = ip("198.51.100.1");
        let (h1, h2) = (v.admit(a, 0).expect("1"), v.admit(a, 0).expect("2"));
        assert_eq!(v.admit(a, 0), Err(CloseReason::SourceConns));
        assert!(v.admit(ip("198.51.100.2"), 0).is_ok(), "another source");
        v.gate.release(h1);
        assert!(v.admit(a, 0).is_ok());
        v.gate.release(h2);
    }
}
