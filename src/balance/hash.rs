//! Fixed, seedless hashing for balancing: XXH64 (Yann Collet, "xxHash fast digest algorithm",
//! specification v0.1.1, `doc/xxhash_spec.md` of the xxHash repository) and the flow hash built
//! on it.
//!
//! Every levee host behind one ECMP group must send a flow to the same backend, so nothing here
//! may depend on the process, the host or the Rust version: no random seeds and no
//! `std::hash::DefaultHasher` (whose algorithm is unspecified). XXH64 is specified bit for bit,
//! mixes well, and its reference implementation gives independent golden vectors.

use std::net::{IpAddr, SocketAddr};

use crate::config::HashKey;

const PRIME64_1: u64 = 0x9E37_79B1_85EB_CA87;
const PRIME64_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const PRIME64_3: u64 = 0x1656_67B1_9E37_79F9;
const PRIME64_4: u64 = 0x85EB_CA77_C2B2_AE63;
const PRIME64_5: u64 = 0x27D4_EB2F_1656_67C5;

/// Seed of [`flow_hash`].
pub const FLOW_SEED: u64 = 0;

fn read_u64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

fn read_u32(b: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[..4]);
    u32::from_le_bytes(w)
}

fn round(acc: u64, lane: u64) -> u64 {
    acc.wrapping_add(lane.wrapping_mul(PRIME64_2))
        .rotate_left(31)
        .wrapping_mul(PRIME64_1)
}

fn merge_round(acc: u64, val: u64) -> u64 {
    (acc ^ round(0, val))
        .wrapping_mul(PRIME64_1)
        .wrapping_add(PRIME64_4)
}

/// XXH64 of `input` with `seed`, as the reference `XXH64()`.
pub fn xxh64(input: &[u8], seed: u64) -> u64 {
    let mut rest = input;
    let mut h = if rest.len() >= 32 {
        let mut v = [
            seed.wrapping_add(PRIME64_1).wrapping_add(PRIME64_2),
            seed.wrapping_add(PRIME64_2),
            seed,
            seed.wrapping_sub(PRIME64_1),
        ];
        while rest.len() >= 32 {
            for (k, acc) in v.iter_mut().enumerate() {
                *acc = round(*acc, read_u64(&rest[8 * k..]));
            }
            rest = &rest[32..];
        }
        let mut h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for acc in v {
            h = merge_round(h, acc);
        }
        h
    } else {
        seed.wrapping_add(PRIME64_5)
    };
    h = h.wrapping_add(input.len() as u64);
    while rest.len() >= 8 {
        h ^= round(0, read_u64(rest));
        h = h
            .rotate_left(27)
            .wrapping_mul(PRIME64_1)
            .wrapping_add(PRIME64_4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        h ^= u64::from(read_u32(rest)).wrapping_mul(PRIME64_1);
        h = h
            .rotate_left(23)
            .wrapping_mul(PRIME64_2)
            .wrapping_add(PRIME64_3);
        rest = &rest[4..];
    }
    for &byte in rest {
        h ^= u64::from(byte).wrapping_mul(PRIME64_5);
        h = h.rotate_left(11).wrapping_mul(PRIME64_1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(PRIME64_2);
    h ^= h >> 29;
    h = h.wrapping_mul(PRIME64_3);
    h ^ (h >> 32)
}

/// The hash a consistent-hashing selector places a flow by: XXH64 with seed [`FLOW_SEED`] of the
/// client's address bytes in network order, the 4 octets of an IPv4 address or the 16 of an
/// IPv6 one, followed for [`HashKey::SourceIpPort`] by the 2 bytes of the port, big-endian.
///
/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack listener reports for an
/// IPv4 client) hashes as the IPv4 address, so a client lands on the same backend through an
/// IPv4 and a dual-stack listener. IPv6 flow label and scope are not part of the flow.
pub fn flow_hash(peer: &SocketAddr, key: HashKey) -> u64 {
    // 16 address bytes and 2 port bytes at most: a stack buffer keeps this allocation-free.
    let mut buf = [0u8; 18];
    let ip = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let mut len = match ip {
        IpAddr::V4(v4) => {
            buf[..4].copy_from_slice(&v4.octets());
            4
        }
        IpAddr::V6(v6) => {
            buf[..16].copy_from_slice(&v6.octets());
            16
        }
    };
    if key == HashKey::SourceIpPort {
        buf[len..len + 2].copy_from_slice(&peer.port().to_be_bytes());
        len += 2;
    }
    xxh64(&buf[..len], FLOW_SEED)
}
