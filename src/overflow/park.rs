//! Park entries: who owns a queued connection, decided by one shared word per entry.
//!
//! A forwarder that queues a connection keeps the client's socket open and *parks* it in one of
//! its entries; the ticket on the queue names the entry and its generation. The entry's word is
//! the only arbiter between the forwarder (which may give up on the connection: timeout, client
//! gone, shutdown) and the workers (which may take it over): every change is one compare-and-swap
//! from a state this side expects, so exactly one side wins, and a worker relays a connection
//! only after it has won COMMITTED.
//!
//! ```text
//!            park              take (CAS)             commit (CAS)              notice read
//!   FREE ───────► QUEUED(g) ───────────► TAKING(g, w) ────────────► COMMITTED(g, w) ──────► FREE
//!                  │   ▲ ▲                 │ │ give back (CAS) ──► QUEUED(g)
//!                  │   │ └─ reclaim ───────┘ │    (w stopping; or w's index attaches anew)
//!                  │   │                     ├ take over, w dead (CAS) ──► TAKING(g, w')
//!                  │   └ cancel (CAS) ──► FREE   (forwarder; also from TAKING(g, w) once w is
//!                  │                              dead, or past the forced deadline)
//!                  └ close (CAS), a worker or the supervisor ──► CLOSING(g, why) ──► FREE
//! ```
//!
//! Word: generation (48 bits) | state (8 bits) | worker or reason (8 bits). The generation moves
//! on every park, so a ticket for an entry that has since been reused finds a word that does not
//! match and is dropped as stale.
//!
//! A worker is named by its holder index in the load table, which a new process reuses once the
//! old one is dead. A worker that attaches *reclaims* the entries its index left TAKING (back to
//! QUEUED; their tickets come back to the queue with the dead process's claims), so TAKING by a
//! live index never means a dead predecessor for long.

use std::sync::atomic::{AtomicU64, Ordering};

/// Generations are compared in 48 bits.
pub const GENERATION_MASK: u64 = (1 << 48) - 1;

const FREE: u64 = 0;
const QUEUED: u64 = 1;
const TAKING: u64 = 2;
const CLOSING: u64 = 3;
const COMMITTED: u64 = 4;

/// Why someone other than the forwarder asked it to close a queued client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseWhy {
    /// Workers died holding its ticket `overflow.max_attempts` times.
    DeadLettered = 1,
    /// CoDel shed it.
    Shed = 2,
    /// A worker found its deadline passed when it claimed the ticket, or could not take its
    /// socket.
    Expired = 3,
    /// A worker that took its socket found the client gone (closed, nothing sent).
    Abandoned = 4,
}

impl CloseWhy {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::DeadLettered),
            2 => Some(Self::Shed),
            3 => Some(Self::Expired),
            4 => Some(Self::Abandoned),
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
    Committed {
        generation: u64,
        worker: u8,
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
        Park::Committed { generation, worker } => word(generation, COMMITTED, worker),
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
        COMMITTED => Park::Committed {
            generation,
            worker: low,
        },
        _ => Park::Invalid(w),
    }
}

fn cas(entry: &AtomicU64, from: u64, to: u64) -> bool {
    entry
        .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

/// What a worker's attempt to take a queued connection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// It is this worker's to take now: take the socket, then [`commit`].
    Taken,
    /// A worker that died had begun taking it; it is this worker's now.
    TakenOver { from: u8 },
    /// The forwarder gave up on it, or it was reused: drop the ticket.
    Stale,
    /// A live worker is taking it: look again a little later (its index may be a new process
    /// that has not reclaimed its predecessor's entries yet).
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
    let from = match decode(current) {
        Park::Queued { generation: g } if g == generation => None,
        // Our own index: the process before us in it died mid-take.
        Park::Taking {
            generation: g,
            worker,
        } if g == generation && (worker == me || dead(worker)) => Some(worker),
        Park::Taking { generation: g, .. } if g == generation => return Take::Busy,
        _ => return Take::Stale,
    };
    if cas(entry, current, mine) {
        match from {
            Some(from) => Take::TakenOver { from },
            None => Take::Taken,
        }
    } else {
        // Someone moved it first: look again, once; a second race means it is not ours.
        match decode(entry.load(Ordering::Acquire)) {
            Park::Taking { generation: g, .. } if g == generation => Take::Busy,
            _ => Take::Stale,
        }
    }
}

/// A worker that took entry `generation` and holds its socket makes it its own. `false`: the
/// forwarder gave up on it meanwhile; the worker must drop its copy of the socket.
pub fn commit(entry: &AtomicU64, generation: u64, me: u8) -> bool {
    let generation = generation & GENERATION_MASK;
    cas(
        entry,
        encode(Park::Taking {
            generation,
            worker: me,
        }),
        encode(Park::Committed {
            generation,
            worker: me,
        }),
    )
}

/// A worker that took entry `generation` and stops before committing puts it back in the queue
/// state, so the ticket it puts back can be taken by another.
pub fn give_back(entry: &AtomicU64, generation: u64, me: u8) -> bool {
    let generation = generation & GENERATION_MASK;
    cas(
        entry,
        encode(Park::Taking {
            generation,
            worker: me,
        }),
        encode(Park::Queued { generation }),
    )
}

/// A worker that just attached as index `me` puts back the entries a dead process with that
/// index left TAKING. Returns whether this entry was one.
pub fn reclaim(entry: &AtomicU64, me: u8) -> bool {
    let current = entry.load(Ordering::Acquire);
    match decode(current) {
        Park::Taking { generation, worker } if worker == me => {
            cas(entry, current, encode(Park::Queued { generation }))
        }
        _ => false,
    }
}

/// Asks the forwarder to close a connection it still holds: from QUEUED, or from TAKING by this
/// worker (`me`) or by a dead one. `false`: taken, given up or reused meanwhile.
pub fn close(
    entry: &AtomicU64,
    generation: u64,
    why: CloseWhy,
    me: Option<u8>,
    dead: impl Fn(u8) -> bool,
) -> bool {
    let generation = generation & GENERATION_MASK;
    let current = entry.load(Ordering::Acquire);
    let closable = match decode(current) {
        Park::Queued { generation: g } => g == generation,
        Park::Taking {
            generation: g,
            worker,
        } => g == generation && (Some(worker) == me || dead(worker)),
        _ => false,
    };
    closable && cas(entry, current, encode(Park::Closing { generation, why }))
}

/// What the forwarder's attempt to give up on a queued connection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// Back to FREE: the client is the forwarder's to close.
    Cancelled,
    /// Someone asked for it to be closed, for this reason; the entry is FREE now.
    Closing(CloseWhy),
    /// Worker `w` took it over and relays it: the forwarder closes only its copy of the socket;
    /// the entry is FREE now.
    Committed(u8),
    /// Worker `w` had begun taking it and is dead (or forced: it took too long); the entry is
    /// FREE now, and that worker can no longer commit.
    TakerGone(u8),
    /// Live worker `w` is taking it: leave it be.
    Taking(u8),
    /// The word does not name this generation (a corrupt peer): the forwarder owns its socket
    /// either way, and the entry is FREE now.
    Lost,
}

/// The forwarder gives up on entry `generation` unless a live worker is taking it. With
/// `force`, it gives up on that too.
pub fn cancel(
    entry: &AtomicU64,
    generation: u64,
    dead: impl Fn(u8) -> bool,
    force: bool,
) -> Cancel {
    let generation = generation & GENERATION_MASK;
    loop {
        let current = entry.load(Ordering::Acquire);
        let outcome = match decode(current) {
            Park::Queued { generation: g } if g == generation => Cancel::Cancelled,
            Park::Closing { generation: g, why } if g == generation => Cancel::Closing(why),
            Park::Committed {
                generation: g,
                worker,
            } if g == generation => Cancel::Committed(worker),
            Park::Taking {
                generation: g,
                worker,
            } if g == generation => {
                if force || dead(worker) {
                    Cancel::TakerGone(worker)
                } else {
                    return Cancel::Taking(worker);
                }
            }
            _ => Cancel::Lost,
        };
        if cas(entry, current, FREE) {
            return outcome;
        }
    }
}

/// The forwarder's view after a worker's commit notice: whether worker `w` really committed
/// entry `generation`; if so the entry is FREE again and the forwarder closes its copy.
pub fn release_committed(entry: &AtomicU64, generation: u64, worker: u8) -> bool {
    cas(
        entry,
        encode(Park::Committed {
            generation: generation & GENERATION_MASK,
            worker,
        }),
        FREE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALIVE: fn(u8) -> bool = |_| false;

    fn entry(p: Park) -> AtomicU64 {
        AtomicU64::new(encode(p))
    }

    fn state(e: &AtomicU64) -> Park {
        decode(e.load(Ordering::Relaxed))
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
            Park::Committed {
                generation: 5,
                worker: 3,
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
        assert_eq!(cancel(&e, 5, ALIVE, false), Cancel::Taking(1));
        assert!(!commit(&e, 5, 2), "only the taker commits");
        assert!(commit(&e, 5, 1));
        assert!(!release_committed(&e, 5, 2));
        assert!(release_committed(&e, 5, 1));
        assert_eq!(state(&e), Park::Free);

        let e = entry(Park::Queued { generation: 6 });
        assert_eq!(cancel(&e, 6, ALIVE, false), Cancel::Cancelled);
        assert_eq!(take(&e, 6, 1, ALIVE), Take::Stale);
    }

    #[test]
    fn a_forwarder_that_gives_up_first_keeps_the_worker_from_committing() {
        let e = entry(Park::Queued { generation: 2 });
        assert_eq!(take(&e, 2, 4, ALIVE), Take::Taken);
        // Taking too long: the forwarder forces it.
        assert_eq!(cancel(&e, 2, ALIVE, true), Cancel::TakerGone(4));
        assert!(!commit(&e, 2, 4), "the worker then drops its copy");
        // A commit that came first is seen by a cancel as a handover.
        let e = entry(Park::Queued { generation: 3 });
        assert_eq!(take(&e, 3, 4, ALIVE), Take::Taken);
        assert!(commit(&e, 3, 4));
        assert_eq!(cancel(&e, 3, ALIVE, true), Cancel::Committed(4));
    }

    #[test]
    fn stale_generations_are_dropped() {
        let e = entry(Park::Queued { generation: 8 });
        assert_eq!(take(&e, 7, 1, ALIVE), Take::Stale);
        assert!(!close(&e, 7, CloseWhy::Shed, None, ALIVE));
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
        assert!(!close(&e, 3, CloseWhy::DeadLettered, None, ALIVE));
        assert_eq!(take(&e, 3, 5, |w| w == 4), Take::TakenOver { from: 4 });
        // The same holder index again is a new process in that slot: the old one died.
        assert_eq!(take(&e, 3, 5, ALIVE), Take::TakenOver { from: 5 });
        // A worker may close what it is taking itself.
        assert!(close(&e, 3, CloseWhy::Expired, Some(5), ALIVE));
        assert_eq!(
            cancel(&e, 3, ALIVE, false),
            Cancel::Closing(CloseWhy::Expired)
        );
        assert_eq!(state(&e), Park::Free);
        // The forwarder takes back an entry whose taker died.
        let e = entry(Park::Taking {
            generation: 9,
            worker: 2,
        });
        assert_eq!(cancel(&e, 9, |w| w == 2, false), Cancel::TakerGone(2));
    }

    #[test]
    fn a_worker_gives_back_and_a_new_process_reclaims() {
        let e = entry(Park::Queued { generation: 1 });
        assert_eq!(take(&e, 1, 3, ALIVE), Take::Taken);
        assert!(give_back(&e, 1, 3));
        assert_eq!(state(&e), Park::Queued { generation: 1 });
        assert_eq!(take(&e, 1, 6, ALIVE), Take::Taken);
        assert!(!reclaim(&e, 3), "not index 3's");
        assert!(reclaim(&e, 6), "index 6's predecessor left it");
        assert_eq!(state(&e), Park::Queued { generation: 1 });
        assert_eq!(take(&e, 1, 2, ALIVE), Take::Taken);
    }

    #[test]
    fn a_corrupt_word_is_reclaimed_by_the_forwarder() {
        let e = AtomicU64::new(0xffff_ffff_ffff_ffff);
        assert_eq!(take(&e, 1, 1, ALIVE), Take::Stale);
        assert_eq!(cancel(&e, 1, ALIVE, false), Cancel::Lost);
        assert_eq!(e.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn racing_takers_and_a_canceller_have_one_winner() {
        for round in 0..200u64 {
            let e = entry(Park::Queued { generation: round });
            let (cancelled, takes) = std::thread::scope(|s| {
                let takers: Vec<_> = (1..=3u8)
                    .map(|me| {
                        let e = &e;
                        s.spawn(move || take(e, round, me, ALIVE))
                    })
                    .collect();
                let c = cancel(&e, round, ALIVE, false);
                let t: Vec<Take> = takers
                    .into_iter()
                    .map(|h| h.join().expect("no panic"))
                    .collect();
                (c, t)
            });
            let taken = takes.iter().filter(|t| **t == Take::Taken).count();
            match cancelled {
                Cancel::Cancelled => assert_eq!(taken, 0),
                Cancel::Taking(_) => assert_eq!(taken, 1),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
