//! `user_data` of each io_uring operation: what it was and whose it is.
//!
//! The kind sits in the top byte and the owner's index (a connection slot or a listener) in the
//! low 32 bits, so a completion finds its owner with one shift and one mask.

/// Direction of a relay: `Up` carries client bytes to the backend, `Down` backend bytes to the
/// client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Up = 0,
    Down = 1,
}

impl Dir {
    /// The opposite direction.
    pub const fn other(self) -> Self {
        match self {
            Self::Up => Self::Down,
            Self::Down => Self::Up,
        }
    }
}

/// What an operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Nobody waits for this completion (close, cancel).
    Ignore,
    /// Multishot accept on a listener; the index is the listener's.
    Accept,
    /// The engine asked the forwarders to stop.
    Wake,
    /// The periodic timer: idle timeouts, drain deadline, re-arming.
    Tick,
    Connect,
    ConnectTimeout,
    /// Multishot receive on the source side of a direction.
    Recv(Dir),
    /// Send on the destination side of a direction.
    Send(Dir),
    /// The poll on a parked client that ends when it leaves; the index is the park entry.
    ParkPoll,
    /// The overflow tier's short timer: queue deadlines, notices, shed connections.
    OverflowTick,
    /// A futex wait on a worker's notice ring; the index is the worker's.
    Notice,
    /// A worker's futex wait for tickets in a pool's queue; the index is the pool's.
    QueueWait,
    /// A worker's futex wait for a backend slot to free.
    SlotWait,
    /// A worker's poll on its socket for handed-over descriptors.
    ScmRecv,
    /// The poll for a client's PROXY header; the index is the connection's slot.
    Header,
    /// A spliced direction's poll for its source to become readable.
    Readable(Dir),
    /// A spliced direction's poll for its sink to take more.
    Writable(Dir),
}

impl Kind {
    const fn code(self) -> u64 {
        match self {
            Self::Ignore => 0,
            Self::Accept => 1,
            Self::Wake => 2,
            Self::Tick => 3,
            Self::Connect => 4,
            Self::ConnectTimeout => 5,
            Self::Recv(Dir::Up) => 6,
            Self::Recv(Dir::Down) => 7,
            Self::Send(Dir::Up) => 8,
            Self::Send(Dir::Down) => 9,
            Self::ParkPoll => 10,
            Self::OverflowTick => 11,
            Self::Notice => 12,
            Self::QueueWait => 13,
            Self::SlotWait => 14,
            Self::ScmRecv => 15,
            Self::Header => 16,
            Self::Readable(Dir::Up) => 17,
            Self::Readable(Dir::Down) => 18,
            Self::Writable(Dir::Up) => 19,
            Self::Writable(Dir::Down) => 20,
        }
    }

    const fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            0 => Self::Ignore,
            1 => Self::Accept,
            2 => Self::Wake,
            3 => Self::Tick,
            4 => Self::Connect,
            5 => Self::ConnectTimeout,
            6 => Self::Recv(Dir::Up),
            7 => Self::Recv(Dir::Down),
            8 => Self::Send(Dir::Up),
            9 => Self::Send(Dir::Down),
            10 => Self::ParkPoll,
            11 => Self::OverflowTick,
            12 => Self::Notice,
            13 => Self::QueueWait,
            14 => Self::SlotWait,
            15 => Self::ScmRecv,
            16 => Self::Header,
            17 => Self::Readable(Dir::Up),
            18 => Self::Readable(Dir::Down),
            19 => Self::Writable(Dir::Up),
            20 => Self::Writable(Dir::Down),
            _ => return None,
        })
    }
}

pub const fn encode(kind: Kind, index: u32) -> u64 {
    (kind.code() << 56) | index as u64
}

/// Splits a `user_data` into kind and index; `None` for a value levee never submitted.
pub const fn decode(user_data: u64) -> Option<(Kind, u32)> {
    match Kind::from_code(user_data >> 56) {
        Some(kind) => Some((kind, user_data as u32)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_with_its_index() {
        for code in 0..21 {
            let kind = Kind::from_code(code).expect("codes 0..21 are kinds");
            for index in [0, 1, 77, u32::MAX] {
                assert_eq!(decode(encode(kind, index)), Some((kind, index)));
            }
        }
        assert_eq!(decode(21 << 56), None);
    }
}
