//! What a configuration will allocate. `levee check` says so, and `levee run` refuses a
//! configuration this host's memory cannot hold, rather than fail with "Cannot allocate memory"
//! deep in a forwarder's start.
//!
//! The receive buffers dominate what levee maps: each forwarder maps `engine.buffers` ×
//! `engine.buffer_size` at start and touches them as traffic needs them, so they bound its
//! receive memory. The rest is the connection table, its queues, the io_uring rings, the pools'
//! histograms and (where a pool queues) the overflow tier's shared memory, estimated from the
//! sizes of the structures that hold them. Spliced directions hold kernel memory instead, up to
//! `engine.splice_pipes` × `engine.splice_pipe_size` per forwarder: counted too, since the host
//! pays for it all the same.

use std::fmt;
use std::mem::size_of;
use std::os::fd::RawFd;

use super::conn::Conn;
use super::forwarder::{WAITING_MAX, gather_slots, send_batch};
use super::gather::Gathers;
use super::token::Dir;
use crate::config::{Config, Overflow};
use crate::overflow::ticket::TICKET_LEN;
use crate::stats::histogram::ConnHistograms;

/// Bytes a configuration maps, per forwarder and in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Forwarder threads (`engine.cores`).
    pub forwarders: u64,
    /// One forwarder's receive buffers: `engine.buffers` × `engine.buffer_size`.
    pub buffers: u64,
    /// One forwarder's connection table, queues, io_uring rings and histograms.
    pub tables: u64,
    /// One forwarder's splice pipes at most (`engine.splice_pipes` ×
    /// `engine.splice_pipe_size`; kernel memory, 0 with `engine.splice_after = 0`).
    pub pipes: u64,
    /// The overflow tier's shared memory (queues and park entries), 0 where no pool queues.
    pub overflow: u64,
}

impl Footprint {
    /// The footprint of `cfg` run with `forwarders` forwarder threads.
    pub fn of(cfg: &Config, forwarders: usize) -> Self {
        let e = &cfg.engine;
        let conns = u64::from(e.max_conns);
        let buffers = u64::from(e.buffers);
        let sqes = u64::from(e.ring_entries);
        let tables = conns * size_of::<Conn>() as u64
            // the free list, and the starved and due lists (two directions each)
            + conns * size_of::<u32>() as u64
            + 2 * 2 * conns * size_of::<(u32, Dir)>() as u64
            + WAITING_MAX as u64 * size_of::<(RawFd, u16, u16, u64)>() as u64
            // the provided-buffer ring's entries, and the links that chain buffers per flow
            + buffers * (16 + 2 + 4)
            // gather lists of the sends that take several buffers
            + Gathers::bytes(gather_slots(e.max_conns), send_batch(e.send_batch))
            // submission entries of 64 bytes, completion entries of 16, four per submission
            + sqes * 64
            + 4 * sqes * 16
            // each pool's histograms: the forwarder's own, and as much again for its share of
            // the merged ones and of readers' copies
            + 2 * cfg.pools.len() as u64 * ConnHistograms::bytes();
        let overflow = if cfg.pools.iter().any(|p| p.overflow == Overflow::Queue) {
            let max_queue = u64::from(cfg.overflow.max_queue);
            let queuing = cfg
                .pools
                .iter()
                .filter(|p| p.overflow == Overflow::Queue)
                .count() as u64;
            let f = forwarders as u64;
            // Per pool: a ring of tickets with a header word each, and its dead letters.
            let slot = TICKET_LEN as u64 + 16;
            let queue = (max_queue + f).next_power_of_two() * slot
                + (max_queue / 8).next_power_of_two().clamp(16, 4096) * slot;
            // Park rows: a cap, a word and a count column per holder (the workers and levee).
            let holders = u64::from(cfg.overflow.max_workers) + 1;
            let park = f * max_queue * 8 * (2 + holders);
            queuing * queue + park
        } else {
            0
        };
        let pipes = if e.splice_after > 0 {
            u64::from(e.splice_pipes) * u64::from(e.splice_pipe_size)
        } else {
            0
        };
        Self {
            forwarders: forwarders as u64,
            buffers: u64::from(e.buffers) * u64::from(e.buffer_size),
            tables,
            pipes,
            overflow,
        }
    }

    /// Bytes in all.
    pub fn total(&self) -> u64 {
        self.forwarders * (self.buffers + self.tables + self.pipes) + self.overflow
    }
}

impl fmt::Display for Footprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "up to {} ({} forwarder{} × ({} of receive buffers + {} of connection tables, rings \
             and histograms",
            Bytes(self.total()),
            self.forwarders,
            if self.forwarders == 1 { "" } else { "s" },
            Bytes(self.buffers),
            Bytes(self.tables),
        )?;
        if self.pipes > 0 {
            write!(f, " + {} of splice pipes in the kernel", Bytes(self.pipes))?;
        }
        write!(f, ")")?;
        if self.overflow > 0 {
            write!(f, " + {} of overflow queues", Bytes(self.overflow))?;
        }
        write!(f, ")")
    }
}

/// A byte count in the largest binary unit that keeps it at least 1.
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

/// This host's memory in bytes (MemTotal of /proc/meminfo); `None` where it cannot be read.
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_dominate_and_scale_with_forwarders() {
        let mut cfg = crate::config::parse(
            "listener.web.addr = 127.0.0.1:8080\nlistener.web.pool = web\n\
             pool.web.backend.a.addr = 127.0.0.1:9000\npool.web.overflow = reject\n\
             engine.buffers = 32768\nengine.buffer_size = 1M\n",
            "t",
        )
        .expect("valid");
        let one = Footprint::of(&cfg, 1);
        assert_eq!(one.buffers, 32 << 30);
        assert_eq!(one.overflow, 0);
        let four = Footprint::of(&cfg, 4);
        assert_eq!(four.total(), 4 * one.total());
        cfg.pools[0].overflow = Overflow::Queue;
        assert!(Footprint::of(&cfg, 4).overflow > 0);
    }

    #[test]
    fn splice_pipes_count_only_where_directions_may_splice() {
        let mut cfg = crate::config::parse(
            "listener.web.addr = 127.0.0.1:8080\nlistener.web.pool = web\n\
             pool.web.backend.a.addr = 127.0.0.1:9000\n",
            "t",
        )
        .expect("valid");
        // The defaults: 256 pipes of 256 KiB.
        let on = Footprint::of(&cfg, 2);
        assert_eq!(on.pipes, 64 << 20);
        assert!(on.to_string().contains("64.0 MiB of splice pipes"), "{on}");
        cfg.engine.splice_after = 0;
        let off = Footprint::of(&cfg, 2);
        assert_eq!(off.pipes, 0);
        assert_eq!(on.total() - off.total(), 2 * (64 << 20));
        assert!(!off.to_string().contains("pipes"), "{off}");
    }

    #[test]
    fn bytes_read_as_an_operator_writes_them() {
        assert_eq!(Bytes(512).to_string(), "512 B");
        assert_eq!(Bytes(32 << 30).to_string(), "32.0 GiB");
        assert_eq!(Bytes(3 << 19).to_string(), "1.5 MiB");
    }
}
