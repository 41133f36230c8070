//! The ticket: what a forwarder puts on a pool's queue for a connection no backend has room for.
//!
//! It says where the client's socket is and how to check it is the right one, never the
//! connection's bytes: the socket stays open in the forwarder until a worker takes it over. The
//! layout is fixed, little-endian and versioned (`docs/overflow-protocol.md`), so a program that
//! is not levee can be a worker.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic and version `LVT1` |
//! | 4 | 2 | pool index, in configuration order |
//! | 6 | 2 | forwarder index |
//! | 8 | 4 | park entry of that forwarder |
//! | 12 | 4 | length of the client bytes carried after the fixed part (always 0 from levee) |
//! | 16 | 8 | park entry generation |
//! | 24 | 4 | forwarder process id |
//! | 28 | 4 | client socket's descriptor number in that process |
//! | 32 | 8 | forwarder process start time, clock ticks after boot |
//! | 40 | 8 | the socket's `SO_COOKIE` |
//! | 48 | 8 | flow hash (what the pool's selector ranks by) |
//! | 56 | 8 | enqueued at, `CLOCK_MONOTONIC` nanoseconds |
//! | 64 | 8 | deadline, `CLOCK_MONOTONIC` nanoseconds |
//! | 72 | 20 | client address: family (2 for IPv4, 10 for IPv6), port, 16 address bytes |
//! | 92 | 20 | local address the client connected to, same form |
//! | 112 | 16 | reserved, zero |
//!
//! Decoding trusts nothing: a record of the wrong length, magic, family or carried length is an
//! error naming the field.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Bytes of the fixed part; also the record size levee's queues are made for.
pub const TICKET_LEN: usize = 128;

const MAGIC: [u8; 4] = *b"LVT1";
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// A connection waiting in a pool's queue, as the forwarder that holds it describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub pool: u16,
    pub forwarder: u16,
    /// Which of the forwarder's park entries holds the connection, and in which generation.
    pub entry: u32,
    pub generation: u64,
    pub pid: u32,
    pub fd: i32,
    pub start_ticks: u64,
    pub cookie: u64,
    pub flow: u64,
    pub enqueued_ns: u64,
    pub deadline_ns: u64,
    pub client: SocketAddr,
    pub local: SocketAddr,
}

/// Why a record is not a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketError {
    Length(usize),
    Magic([u8; 4]),
    Family {
        field: &'static str,
        family: u16,
    },
    /// Client bytes carried in the ticket, which this version does not send or take.
    Carried(u32),
}

impl fmt::Display for TicketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length(n) => write!(f, "ticket of {n} bytes, expected {TICKET_LEN}"),
            Self::Magic(m) => write!(f, "ticket starts with {m:02x?}, not LVT1"),
            Self::Family { field, family } => {
                write!(
                    f,
                    "ticket's {field} address has family {family}, not 2 or 10"
                )
            }
            Self::Carried(n) => write!(
                f,
                "ticket carries {n} client bytes; this version neither sends nor takes any"
            ),
        }
    }
}

impl std::error::Error for TicketError {}

impl Ticket {
    /// The record as it goes on the queue.
    pub fn encode(&self) -> [u8; TICKET_LEN] {
        let mut b = [0u8; TICKET_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.pool.to_le_bytes());
        b[6..8].copy_from_slice(&self.forwarder.to_le_bytes());
        b[8..12].copy_from_slice(&self.entry.to_le_bytes());
        // 12..16: carried length, 0.
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        b[24..28].copy_from_slice(&self.pid.to_le_bytes());
        b[28..32].copy_from_slice(&self.fd.to_le_bytes());
        b[32..40].copy_from_slice(&self.start_ticks.to_le_bytes());
        b[40..48].copy_from_slice(&self.cookie.to_le_bytes());
        b[48..56].copy_from_slice(&self.flow.to_le_bytes());
        b[56..64].copy_from_slice(&self.enqueued_ns.to_le_bytes());
        b[64..72].copy_from_slice(&self.deadline_ns.to_le_bytes());
        put_addr(&mut b[72..92], self.client);
        put_addr(&mut b[92..112], self.local);
        b
    }

    /// Reads a record from a queue, checking every field that could be out of range.
    pub fn decode(b: &[u8]) -> Result<Ticket, TicketError> {
        if b.len() != TICKET_LEN {
            return Err(TicketError::Length(b.len()));
        }
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != MAGIC {
            return Err(TicketError::Magic(magic));
        }
        let carried = u32_at(b, 12);
        if carried != 0 {
            return Err(TicketError::Carried(carried));
        }
        Ok(Ticket {
            pool: u16_at(b, 4),
            forwarder: u16_at(b, 6),
            entry: u32_at(b, 8),
            generation: u64_at(b, 16),
            pid: u32_at(b, 24),
            fd: u32_at(b, 28) as i32,
            start_ticks: u64_at(b, 32),
            cookie: u64_at(b, 40),
            flow: u64_at(b, 48),
            enqueued_ns: u64_at(b, 56),
            deadline_ns: u64_at(b, 64),
            client: addr_at(b, 72, "client")?,
            local: addr_at(b, 92, "local")?,
        })
    }
}

fn put_addr(out: &mut [u8], addr: SocketAddr) {
    let (family, ip) = match addr.ip() {
        IpAddr::V4(v4) => {
            let mut ip = [0u8; 16];
            ip[..4].copy_from_slice(&v4.octets());
            (AF_INET, ip)
        }
        IpAddr::V6(v6) => (AF_INET6, v6.octets()),
    };
    out[0..2].copy_from_slice(&family.to_le_bytes());
    out[2..4].copy_from_slice(&addr.port().to_le_bytes());
    out[4..20].copy_from_slice(&ip);
}

fn addr_at(b: &[u8], off: usize, field: &'static str) -> Result<SocketAddr, TicketError> {
    let family = u16_at(b, off);
    let port = u16_at(b, off + 2);
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&b[off + 4..off + 20]);
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(ip)),
        _ => return Err(TicketError::Family { field, family }),
    };
    Ok(SocketAddr::new(ip, port))
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Ticket {
        Ticket {
            pool: 3,
            forwarder: 1,
            entry: 77,
            generation: 0x0000_1234_5678_9abc,
            pid: 4242,
            fd: 1031,
            start_ticks: 99_000,
            cookie: 0xdead_beef_0000_0001,
            flow: 0x0123_4567_89ab_cdef,
            enqueued_ns: 5_000_000_000,
            deadline_ns: 15_000_000_000,
            client: "[2001:db8::7]:40000".parse().expect("literal"),
            local: "127.0.0.1:8080".parse().expect("literal"),
        }
    }

    /// The documented offsets, checked against bytes written by hand rather than by `encode`.
    #[test]
    fn layout_is_the_documented_one() {
        let b = sample().encode();
        assert_eq!(&b[0..4], b"LVT1");
        assert_eq!(&b[4..8], &[3, 0, 1, 0]);
        assert_eq!(&b[8..16], &[77, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[24..32], &[0x92, 0x10, 0, 0, 0x07, 0x04, 0, 0]);
        assert_eq!(&b[72..76], &[10, 0, 0x40, 0x9c]);
        assert_eq!(&b[76..78], &[0x20, 0x01]);
        assert_eq!(&b[92..100], &[2, 0, 0x90, 0x1f, 127, 0, 0, 1]);
        assert!(b[112..].iter().all(|&x| x == 0));
    }

    #[test]
    fn bad_records_name_what_is_wrong() {
        let good = sample().encode();
        assert_eq!(Ticket::decode(&good[..100]), Err(TicketError::Length(100)));
        let mut b = good;
        b[0] = b'X';
        assert!(matches!(Ticket::decode(&b), Err(TicketError::Magic(_))));
        let mut b = good;
        b[92] = 1;
        assert_eq!(
            Ticket::decode(&b),
            Err(TicketError::Family {
                field: "local",
                family: 1
            })
        );
        let mut b = good;
        b[12] = 5;
        assert_eq!(Ticket::decode(&b), Err(TicketError::Carried(5)));
        assert_eq!(
            TicketError::Family {
                field: "client",
                family: 7
            }
            .to_string(),
            "ticket's client address has family 7, not 2 or 10"
        );
    }

    proptest! {
        #[test]
        fn round_trips(
            pool in any::<u16>(), forwarder in any::<u16>(), entry in any::<u32>(),
            generation in any::<u64>(), pid in any::<u32>(), fd in any::<i32>(),
            nums in any::<[u64; 5]>(), v6 in any::<bool>(), ip in any::<[u8; 16]>(),
            ports in any::<[u16; 2]>(),
        ) {
            let client = if v6 {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), ports[0])
            } else {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])), ports[0])
            };
            let t = Ticket {
                pool, forwarder, entry, generation, pid, fd,
                start_ticks: nums[0], cookie: nums[1], flow: nums[2],
                enqueued_ns: nums[3], deadline_ns: nums[4],
                client, local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ports[1]),
            };
            prop_assert_eq!(Ticket::decode(&t.encode()), Ok(t));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Ticket::decode(&bytes);
        }
    }
}
