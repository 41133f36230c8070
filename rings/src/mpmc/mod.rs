//! Multi-producer, competing-consumer queue of bounded records, in a shared segment, surviving
//! the crash of any producer or consumer.
//!
//! # Algorithm
//!
//! Dmitry Vyukov's bounded MPMC queue ("Bounded MPMC queue", 1024cores.net; crossbeam's
//! `ArrayQueue` is the same algorithm): `capacity` slots, a 64-bit free-running enqueue position
//! and dequeue position, and in each slot a stamp saying which lap of the ring the slot is ready
//! for. A producer at position `pos` may write slot `pos % capacity` only when its stamp says
//! "free for lap `pos / capacity`"; a consumer may take it only when it says "ready for that
//! lap". Positions are hints that any side helps advance; the stamps decide.
//!
//! Two changes make it safe across processes that crash:
//!
//! - **Owned transitions.** A stamp is `lap (54 bits) | state (2 bits) | owner (8 bits)`, with
//!   states FREE → WRITING → READY → CLAIMED → FREE(next lap). Producers and consumers move a
//!   slot with a compare-and-swap on its stamp (not on the position), and the WRITING and CLAIMED
//!   states carry the index of the handle that holds the slot. A record becomes visible only by
//!   the final store of READY, so a producer killed mid-write leaves a WRITING slot naming it.
//! - **Liveness by lock.** Each handle holds an open-file-description lock on its own byte of the
//!   segment file (beyond its end). The kernel drops the lock when the holder dies, however it
//!   dies, and PID reuse cannot fake it. Any handle that takes a dead handle's lock owns its
//!   recovery: WRITING slots of the dead become FREE for the next lap (consumers skip them),
//!   its claims go back to the queue with their attempt count raised, and a record that reached
//!   `max_attempts` goes to the dead-letter ring instead.
//!
//! A consumer copies a claimed record into its own claim buffer (in its handle entry) before
//! freeing the slot, so a slow consumer never holds ring space and producers are never blocked by
//! unacknowledged work. Acknowledging is a store to the consumer's own line. Delivery is
//! at-least-once: a consumer that dies between processing and acknowledging is redelivered to.
//! The [`Claim`] itself dereferences to a further copy in the consumer's process memory: the
//! claim buffer is in the segment, which every attached process can write.
//!
//! Stamps compare in modular 56-bit arithmetic; a handle would have to stall for 2^53 laps of
//! the ring for a stale stamp to look current.
//!
//! # Layers
//!
//! One file each: `layout` (offsets, stamps, the checked geometry), `core` (the lock-free push and
//! claim protocol), `recover` (what a dead handle held goes back), and `handle` (the public
//! handles, which attach, reap and wait).
//!
//! Push and claim take a stop point as a const parameter. Normal use runs them to the end; the
//! crash hooks (`Producer::stall_mid_push_for_crash_test` and
//! `Consumer::stall_mid_claim_for_crash_test`, only with the `crash-hooks` feature) and the loom
//! models run the same functions stopped where a killed process would stop.

mod core;
#[cfg(not(loom))]
mod handle;
mod layout;
mod recover;

#[cfg(loom)]
pub(crate) use self::core::{QueueCore, model_queue};
#[cfg(not(loom))]
pub use self::handle::{Claim, Consumer, DeadLetters, Producer, Queue, Stats};
pub(crate) use self::layout::QueueLayout;
pub use self::layout::{Config, MAX_HANDLES_LIMIT, MAX_RECORD_LIMIT, MAX_SEGMENT, MAX_SLOTS};
