//! Park entries: who owns a queued connection, decided by one shared word per entry.
//!
//! A forwarder that queues a connection keeps the client's socket open and *parks* it in one of
//! its entries; the ticket on the queue names the entry and its generation. The entry's word is
//! the only arbiter between the forwarder (which may give up on the connection: timeout, client
//! gone, shutdown) and the workers (which may take it over): every change is one compare-and-swap
//! from a state this side expects, so exactly one side wins.
//!
//! ```text
//!              park                 take (CAS)                commit notice
//!   FREE ─────────────► QUEUED(g) ─────────────► TAKING(g, w) ─────────────► FREE
//!                        │   ▲ cancel (CAS)         │  take over, w dead (CAS)
//!                        │   └──► FREE               └──► TAKING(g, w')
//!                        │ close (CAS), by a worker or the supervisor
//!                        └──────► CLOSING(g, why) ──── forwarder closes the client ──► FREE
//! ```
//!
//! Word: generation (48 bits) | state (8 bits) | worker or reason (8 bits). The generation moves
//! on every park, so a ticket for an entry that has since been reused finds a word that does not
//! match and is dropped as stale.

use std::sync::atomic::{AtomicU64, Ordering};

/// Generations are compared in 48 bits.
pub const GENERATION_MASK: u64 = (1 << 48) - 1;

const FREE: u64 = 0;
const QUEUED: u64 = 1;
const TAKING: u64 = 2;
const CLOSING: u64 = 3;

/// Why someone other than the forwarder asked it to close a queued client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseWhy {
    /// Workers died holding its ticket `overflow.max_attempts` times.
    DeadLettered = 1,
    /// CoDel shed it.
    Shed = 2,
    /// A worker found its deadline passed when it claimed the ticket.
    Expired = 3,
}

impl CloseWhy {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::DeadLettered),
            2 => Some(Self::Shed),
            3 => Some(Self::Expired),
            _ => None,
        }
    }
}

/// An entry's state, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Park {
    Free,
    Queued {
        generation: u64,
    },
    Taking {
        generation: u64,
        worker: u8,
    },
    Closing {
        generation: u64,
        why: CloseWhy,
    },
    /// A value no levee process writes: a corrupt or hostile peer. Treated as nobody's.
    Invalid(u64),
}

fn word(generation: u64, state: u64, low: u8) -> u64 {
    ((generation & GENERATION_MASK) << 16) | (state << 8) | u64::from(low)
}

/// The word for `park`.
pub fn encode(p: Park) -> u64 {
    match p {
        Park::Free => FREE,
        Park::Queued { generation } => word(generation, QUEUED, 0),
        Park::Taking { generation, worker } => word(generation, TAKING, worker),
        Park::Closing { generation, why } => word(generation, CLOSING, why as u8),
        Park::Invalid(w) => w,
    }
}

pub fn decode(w: u64) -> Park {
    let generation = w >> 16;
    let low = w as u8;
    match (w >> 8) & 0xff {
        FREE if w == FREE => Park::Free,
        QUEUED if low == 0 => Park::Queued { generation },
        TAKING => Park::Taking {
            generation,
            worker: low,
        },
        CLOSING => match CloseWhy::from_u8(low) {
            Some(why) => Park::Closing { generation, why },
            None => Park::Invalid(w),
        },
        _ => Park::Invalid(w),
    }
}

/// What a worker's attempt to take a queued connection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// It is this worker's now: take the socket and commit.
    Taken,
    /// A worker that died had taken it; it is this worker's now.
    TakenOver { from: u8 },
    /// The forwarder gave up on it, or it was reused: drop the ticket.
    Stale,
    /// A live worker is taking it.
    Busy,
}

/// A worker (`me`) takes entry `generation` if it is still queued, or if the worker that was
/// taking it is dead (`dead(w)`).
pub fn take(entry: &AtomicU64, generation: u64, me: u8, dead: impl Fn(u8) -> bool) -> Take {
    let generation = generation & GENERATION_MASK;
    let mine = encode(Park::Taking {
        generation,
        worker: me,
    });
    let current = entry.load(Ordering::Acquire);
    let (result, from) = match decode(current) {
        Park::Queued { generation: g } if g == generation => (Take::Taken, None),
        // A holder index is reused only after its previous process died.
        Park::Taking {
            generation: g,
            worker,
        } if g == generation && (worker == me || dead(worker)) => {
            (Take::TakenOver { from: worker }, Some(worker))
        }
        Park::Taking { generation: g, .. } if g == generation => return Take::Busy,
        _ => return Take::Stale,
    };
    match entry.compare_exchange(current, mine, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => match from {
            Some(from) => Take::TakenOver { from },
            None => result,
        },
        // Someone moved it first: look again, once; a second race means it is not ours.
        Err(now) => match decode(now) {
            Park::Taking { generation: g, .. } if g == generation => Take::Busy,
            _ => Take::Stale,
        },
    }
}

/// Asks the forwarder to close a connection it still holds: from QUEUED, or from TAKING by a
/// worker that is dead. `false`: it was taken, given up, or reused meanwhile.
pub fn close(entry: &AtomicU64, generation: u64, why: CloseWhy, dead: impl Fn(u8) -> bool) -> bool {
    let generation = generation & GENERATION_MASK;
    let current = entry.load(Ordering::Acquire);
    let closable = match decode(current) {
        Park::Queued { generation: g } => g == generation,
        Park::Taking {
            generation: g,
            worker,
        } => g == generation && dead(worker),
        _ => false,
    };
    closable
        && entry
            .compare_exchange(
                current,
                encode(Park::Closing { generation, why }),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
}

/// What the forwarder's attempt to give up on a queued connection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// Back to FREE: the client is the forwarder's to close.
    Cancelled,
    /// Someone asked for it to be closed, for this reason; the entry is FREE now.
    Closing(CloseWhy),
    /// Worker `w` is taking it over.
    Taking(u8),
    /// The word does not name this generation (a corrupt peer): the forwarder owns its socket
    /// either way, and the entry is FREE now.
    Lost,
}

/// The forwarder gives up on entry `generation` if no worker is taking it.
pub fn cancel(entry: &AtomicU64, generation: u64) -> Cancel {
    let generation = generation & GENERATION_MASK;
    loop {
        let current = entry.load(Ordering::Acquire);
        let outcome = match decode(current) {
            Park::Queued { generation: g } if g == generation => Cancel::Cancelled,
            Park::Closing { generation: g, why } if g == generation => Cancel::Closing(why),
            Park::Taking {
                generation: g,
                worker,
            } if g == generation => return Cancel::Taking(worker),
            _ => Cancel::Lost,
        };
        if entry
            .compare_exchange(current, FREE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return outcome;
        }
    }
}

/// The forwarder's view after a worker's commit notice: whether worker `w` really holds entry
/// `generation`; if so the entry is FREE again and the forwarder closes its copy of the socket.
pub fn release_committed(entry: &AtomicU64, generation: u64, worker: u8) -> bool {
    let expected = encode(Park::Taking {
        generation: generation & GENERATION_MASK,
        worker,
    });
    entry
        .compare_exchange(expected, FREE, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALIVE: fn(u8) -> bool = |_| false;

    fn entry(p: Park) -> AtomicU64 {
        AtomicU64::new(encode(p))
    }

    #[test]
    fn states_round_trip_and_garbage_is_invalid() {
        for p in [
            Park::Free,
            Park::Queued { generation: 1 },
            Park::Taking {
                generation: GENERATION_MASK,
                worker: 200,
            },
            Park::Closing {
                generation: 9,
                why: CloseWhy::Shed,
            },
        ] {
            assert_eq!(decode(encode(p)), p);
        }
        assert_eq!(decode(0x0102), Park::Invalid(0x0102));
        assert_eq!(decode(0x0300 | 9), Park::Invalid(0x0309));
        assert_eq!(decode(0x0900), Park::Invalid(0x0900));
    }

    #[test]
    fn a_queued_entry_goes_to_exactly_one_side() {
        let e = entry(Park::Queued { generation: 5 });
        assert_eq!(take(&e, 5, 1, ALIVE), Take::Taken);
        assert_eq!(take(&e, 5, 2, ALIVE), Take::Busy);
        assert_eq!(cancel(&e, 5), Cancel::Taking(1));
        assert!(!release_committed(&e, 5, 2));
        assert!(release_committed(&e, 5, 1));
        assert_eq!(decode(e.load(Ordering::Relaxed)), Park::Free);

        let e = entry(Park::Queued { generation: 6 });
        assert_eq!(cancel(&e, 6), Cancel::Cancelled);
        assert_eq!(take(&e, 6, 1, ALIVE), Take::Stale);
    }

    #[test]
    fn stale_generations_are_dropped() {
        let e = entry(Park::Queued { generation: 8 });
        assert_eq!(take(&e, 7, 1, ALIVE), Take::Stale);
        assert!(!close(&e, 7, CloseWhy::Shed, ALIVE));
        // Generations compare in 48 bits, as tickets may carry the full counter.
        assert_eq!(take(&e, 8 | (1 << 48), 1, ALIVE), Take::Taken);
    }

    #[test]
    fn a_dead_worker_is_taken_over_and_a_live_one_is_not() {
        let e = entry(Park::Taking {
            generation: 3,
            worker: 4,
        });
        assert_eq!(take(&e, 3, 5, ALIVE), Take::Busy);
        assert!(!close(&e, 3, CloseWhy::DeadLettered, ALIVE));
        assert_eq!(take(&e, 3, 5, |w| w == 4), Take::TakenOver { from: 4 });
        // The same holder index again is a new process in that slot: the old one died.
        assert_eq!(take(&e, 3, 5, ALIVE), Take::TakenOver { from: 5 });
        assert!(close(&e, 3, CloseWhy::DeadLettered, |w| w == 5));
        assert_eq!(cancel(&e, 3), Cancel::Closing(CloseWhy::DeadLettered));
        assert_eq!(decode(e.load(Ordering::Relaxed)), Park::Free);
    }

    #[test]
    fn a_corrupt_word_is_reclaimed_by_the_forwarder() {
        let e = AtomicU64::new(0xffff_ffff_ffff_ffff);
        assert_eq!(take(&e, 1, 1, ALIVE), Take::Stale);
        assert_eq!(cancel(&e, 1), Cancel::Lost);
        assert_eq!(e.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn racing_takers_and_a_canceller_have_one_winner() {
        for round in 0..200u64 {
            let e = entry(Park::Queued { generation: round });
            let results = std::thread::scope(|s| {
                let takers: Vec<_> = (1..=3u8)
                    .map(|me| {
                        let e = &e;
                        s.spawn(move || take(e, round, me, ALIVE))
                    })
                    .collect();
                let c = cancel(&e, round);
                let t: Vec<Take> = takers
                    .into_iter()
                    .map(|h| h.join().expect("no panic"))
                    .collect();
                (c, t)
            });
            let taken = results.1.iter().filter(|t| **t == Take::Taken).count();
            match results.0 {
                Cancel::Cancelled => assert_eq!(taken, 0),
                Cancel::Taking(_) => assert_eq!(taken, 1),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
