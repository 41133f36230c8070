//! The PROXY protocol, versions 1 and 2 (HAProxy's `proxy-protocol.txt`): a header a proxy
//! sends first on a connection to tell the server who the client is.
//!
//! [`encode`] writes the header levee sends to a backend (`pool.NAME.proxy_protocol`).
//! [`parse`] reads one strictly: it says whether the bytes so far are a whole header, the start
//! of one, or not one at all, and never reads past the header's end. Anything the
//! specification does not allow is an error naming what was wrong.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The version 2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest version 1 header, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;

/// The longest header [`encode`] writes: version 1's bound (version 2 with IPv6 is 52 bytes).
pub const MAX_HEADER: usize = V1_MAX;

/// Which version to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The addresses a header carries: `None` for a connection the sender does not describe
/// (v1 `UNKNOWN`, v2 `LOCAL` or an unspecified family).
pub type Addresses = Option<(SocketAddr, SocketAddr)>;

/// What [`parse`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A prefix of a valid header: more bytes are needed.
    Incomplete,
    /// A whole header of `len` bytes.
    Header { len: usize, addresses: Addresses },
}

/// Why bytes are not a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Neither signature.
    NotProxy,
    /// A version 1 line longer than 107 bytes without its CRLF.
    V1TooLong,
    /// A malformed version 1 line; the text says which part.
    V1(&'static str),
    /// A version 2 version other than 2, or a command other than LOCAL or PROXY.
    V2VersionCommand(u8),
    /// A version 2 family or protocol levee does not take (only TCP over IPv4 and IPv6, or
    /// unspecified).
    V2Family(u8),
    /// A version 2 address block shorter than its family needs.
    V2Length { family: u8, len: u16 },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotProxy => write!(f, "not a PROXY protocol header"),
            Self::V1TooLong => write!(f, "PROXY v1 line longer than {V1_MAX} bytes"),
            Self::V1(what) => write!(f, "bad PROXY v1 header: {what}"),
            Self::V2VersionCommand(b) => {
                write!(
                    f,
                    "PROXY v2 version/command byte {b:#04x} is not 0x20 or 0x21"
                )
            }
            Self::V2Family(b) => write!(f, "PROXY v2 family/protocol byte {b:#04x} is not TCP"),
            Self::V2Length { family, len } => write!(
                f,
                "PROXY v2 address block of {len} bytes is too short for family {family:#04x}"
            ),
        }
    }
}

impl std::error::Error for ParseError {}

/// An IPv4 address seen through an IPv6 socket (`::ffff:a.b.c.d`) as the IPv4 one.
fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => a,
        },
        v4 => v4,
    }
}

/// As IPv6, for a pair of mixed families.
fn to_v6(a: SocketAddr) -> SocketAddrV6 {
    match a {
        SocketAddr::V4(v4) => SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
        SocketAddr::V6(v6) => v6,
    }
}

/// Writes the header for a client at `source` that connected to `destination` into `out`;
/// returns its length. Both IPv4 (also IPv4 seen through IPv6) gives a TCP4 header; otherwise
/// TCP6, with an IPv4 address mapped.
pub fn encode(
    version: Version,
    source: SocketAddr,
    destination: SocketAddr,
    out: &mut [u8; MAX_HEADER],
) -> usize {
    let (s, d) = (unmap(source), unmap(destination));
    let pair = match (s, d) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => Pair::V4(s, d),
        _ => Pair::V6(to_v6(s), to_v6(d)),
    };
    match version {
        Version::V1 => encode_v1(pair, out),
        Version::V2 => encode_v2(pair, out),
    }
}

#[derive(Clone, Copy)]
enum Pair {
    V4(SocketAddrV4, SocketAddrV4),
    V6(SocketAddrV6, SocketAddrV6),
}

fn encode_v1(pair: Pair, out: &mut [u8; MAX_HEADER]) -> usize {
    use std::io::Write;
    let mut w = std::io::Cursor::new(&mut out[..]);
    // At most 104 bytes for TCP6 with the longest addresses and ports: always fits.
    let _ = match pair {
        Pair::V4(s, d) => write!(
            w,
            "PROXY TCP4 {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        ),
        Pair::V6(s, d) => write!(
            w,
            "PROXY TCP6 {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        ),
    };
    w.position() as usize
}

fn encode_v2(pair: Pair, out: &mut [u8; MAX_HEADER]) -> usize {
    out[..12].copy_from_slice(&V2_SIGNATURE);
    // Version 2, command PROXY.
    out[12] = 0x21;
    let len = match pair {
        Pair::V4(s, d) => {
            // TCP over IPv4.
            out[13] = 0x11;
            out[16..20].copy_from_slice(&s.ip().octets());
            out[20..24].copy_from_slice(&d.ip().octets());
            out[24..26].copy_from_slice(&s.port().to_be_bytes());
            out[26..28].copy_from_slice(&d.port().to_be_bytes());
            12u16
        }
        Pair::V6(s, d) => {
            // TCP over IPv6.
            out[13] = 0x21;
            out[16..32].copy_from_slice(&s.ip().octets());
            out[32..48].copy_from_slice(&d.ip().octets());
            out[48..50].copy_from_slice(&s.port().to_be_bytes());
            out[50..52].copy_from_slice(&d.port().to_be_bytes());
            36u16
        }
    };
    out[14..16].copy_from_slice(&len.to_be_bytes());
    16 + usize::from(len)
}

/// Reads a header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
    if buf.is_empty() {
        return Ok(Parsed::Incomplete);
    }
    let v1 = b"PROXY ";
    let n = buf.len().min(v1.len());
    if buf[..n] == v1[..n] {
        return if buf.len() < v1.len() {
            Ok(Parsed::Incomplete)
        } else {
            parse_v1(buf)
        };
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return parse_v2(buf);
    }
    Err(ParseError::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ParseError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        return if buf.len() >= V1_MAX {
            Err(ParseError::V1TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    match window.get(cr + 1) {
        // The LF would be byte 108: too long, however many bytes follow.
        None if buf.len() > cr + 1 => return Err(ParseError::V1TooLong),
        None => return Ok(Parsed::Incomplete),
        Some(b'\n') => {}
        Some(_) => return Err(ParseError::V1("CR not followed by LF")),
    }
    let line = std::str::from_utf8(&window[..cr]).map_err(|_| ParseError::V1("not ASCII text"))?;
    let len = cr + 2;
    let mut words = line.split(' ');
    // "PROXY", checked by the caller.
    words.next();
    let family = words.next().ok_or(ParseError::V1("no protocol"))?;
    if family == "UNKNOWN" {
        // The rest of the line is to be ignored.
        return Ok(Parsed::Header {
            len,
            addresses: None,
        });
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ParseError::V1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let mut field = || words.next().ok_or(ParseError::V1("missing field"));
    let (src, dst, sport, dport) = (field()?, field()?, field()?, field()?);
    if words.next().is_some() {
        return Err(ParseError::V1("extra field"));
    }
    let ip = |s: &str| -> Result<IpAddr, ParseError> {
        if v6 {
            s.parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| ParseError::V1("bad IPv6 address"))
        } else {
            s.parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| ParseError::V1("bad IPv4 address"))
        }
    };
    // Ports: 0 to 65535 in decimal, without a sign or leading zero.
    let port = |s: &str| -> Result<u16, ParseError> {
        let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits || (s.len() > 1 && s.starts_with('0')) {
            return Err(ParseError::V1("bad port"));
        }
        s.parse().map_err(|_| ParseError::V1("bad port"))
    };
    let source = SocketAddr::new(ip(src)?, port(sport)?);
    let destination = SocketAddr::new(ip(dst)?, port(dport)?);
    Ok(Parsed::Header {
        len,
        addresses: Some((source, destination)),
    })
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ParseError> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 || version_command & 0x0f > 1 {
        return Err(ParseError::V2VersionCommand(version_command));
    }
    let local = version_command & 0x0f == 0;
    let family = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]);
    let total = 16 + usize::from(len);
    if buf.len() < total {
        return Ok(Parsed::Incomplete);
    }
    let block = &buf[16..total];
    let need = match family {
        0x00 => 0,
        0x11 => 12,
        0x21 => 36,
        other => {
            // LOCAL connections may carry anything: their addresses are ignored.
            if local {
                0
            } else {
                return Err(ParseError::V2Family(other));
            }
        }
    };
    if block.len() < need {
        return Err(ParseError::V2Length { family, len });
    }
    if local || family == 0x00 {
        return Ok(Parsed::Header {
            len: total,
            addresses: None,
        });
    }
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    let addresses = if family == 0x11 {
        let ip = |at: usize| Ipv4Addr::new(block[at], block[at + 1], block[at + 2], block[at + 3]);
        (
            SocketAddr::new(IpAddr::V4(ip(0)), port(8)),
            SocketAddr::new(IpAddr::V4(ip(4)), port(10)),
        )
    } else {
        let ip = |at: usize| {
            let mut o = [0u8; 16];
            o.copy_from_slice(&block[at..at + 16]);
            Ipv6Addr::from(o)
        };
        (
            SocketAddr::new(IpAddr::V6(ip(0)), port(32)),
            SocketAddr::new(IpAddr::V6(ip(16)), port(34)),
        )
    };
    // TLVs after the addresses are allowed and skipped.
    Ok(Parsed::Header {
        len: total,
        addresses: Some(addresses),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("literal")
    }

    /// Headers written by hand from the specification's examples, byte for byte.
    #[test]
    fn encodes_the_specifications_forms() {
        let mut out = [0u8; MAX_HEADER];
        let n = encode(
            Version::V1,
            a("192.168.0.1:56324"),
            a("192.168.0.11:443"),
            &mut out,
        );
        assert_eq!(
            &out[..n],
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        let n = encode(Version::V1, a("[::1]:1"), a("[2001:db8::2]:80"), &mut out);
        assert_eq!(&out[..n], b"PROXY TCP6 ::1 2001:db8::2 1 80\r\n");
        // IPv4 through an IPv6 socket is written as IPv4.
        let n = encode(
            Version::V1,
            a("[::ffff:10.0.0.1]:5"),
            a("[::ffff:10.0.0.2]:6"),
            &mut out,
        );
        assert_eq!(&out[..n], b"PROXY TCP4 10.0.0.1 10.0.0.2 5 6\r\n");
        let n = encode(Version::V2, a("10.0.0.1:258"), a("10.0.0.2:80"), &mut out);
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 10, 0, 0, 1, 10, 0, 0, 2, 1, 2, 0, 80]);
        assert_eq!(&out[..n], &want[..]);
    }

    #[test]
    fn the_longest_v1_header_fits() {
        let mut out = [0u8; MAX_HEADER];
        let long = a("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535");
        let n = encode(Version::V1, long, long, &mut out);
        assert!(out[..n].ends_with(b"65535 65535\r\n"), "{n}");
        assert!(n <= V1_MAX);
    }

    #[test]
    fn parses_what_it_should_and_refuses_the_rest() {
        let ok = |b: &[u8]| parse(b);
        assert_eq!(
            ok(b"PROXY TCP4 1.2.3.4 5.6.7.8 10 20\r\nGET"),
            Ok(Parsed::Header {
                len: 34,
                addresses: Some((a("1.2.3.4:10"), a("5.6.7.8:20")))
            })
        );
        assert_eq!(
            ok(b"PROXY UNKNOWN whatever\r\n"),
            Ok(Parsed::Header {
                len: 24,
                addresses: None
            })
        );
        assert_eq!(ok(b"PROXY TCP4 1.2.3.4"), Ok(Parsed::Incomplete));
        assert_eq!(ok(b"PRO"), Ok(Parsed::Incomplete));
        assert_eq!(ok(&V2_SIGNATURE[..5]), Ok(Parsed::Incomplete));
        assert_eq!(ok(b"GET / HTTP/1.1\r\n"), Err(ParseError::NotProxy));
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 10 020\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 10 65536\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 10 20\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 10 20\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 10\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 10 20 30\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 10 20\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 10 20\rX",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 10 20\r\n",
        ] {
            assert!(
                matches!(ok(bad), Err(ParseError::V1(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            ok(&[b'P', b'R', b'O', b'X', b'Y', b' ', b'x'].repeat(20)),
            Err(ParseError::V1TooLong)
        );
        // CR as the 107th byte: its LF would be the 108th.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(106, b'x');
        long.extend_from_slice(b"\r\nmore");
        assert_eq!(ok(&long), Err(ParseError::V1TooLong));
        assert_eq!(ok(&long[..107]), Ok(Parsed::Incomplete));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x31, 0x11, 0, 12]);
        assert_eq!(ok(&v2), Err(ParseError::V2VersionCommand(0x31)));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x12, 0, 0]);
        assert_eq!(ok(&v2), Err(ParseError::V2Family(0x12)));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x21, 0, 12]);
        v2.extend_from_slice(&[0; 12]);
        assert_eq!(
            ok(&v2),
            Err(ParseError::V2Length {
                family: 0x21,
                len: 12
            })
        );
        // LOCAL: addresses ignored, header skipped whole, TLVs too.
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x20, 0x00, 0, 3, 1, 2, 3, b'G']);
        assert_eq!(
            ok(&v2),
            Ok(Parsed::Header {
                len: 19,
                addresses: None
            })
        );
    }

    proptest::proptest! {
        /// Whatever it writes, it reads back: the same addresses (IPv4 unmapped), the whole
        /// header and nothing after it; every strict prefix is incomplete.
        #[test]
        fn round_trips(
            v1 in proptest::bool::ANY,
            s in proptest::prelude::any::<SocketAddr>(),
            d in proptest::prelude::any::<SocketAddr>(),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..32),
        ) {
            let version = if v1 { Version::V1 } else { Version::V2 };
            let mut out = [0u8; MAX_HEADER];
            let n = encode(version, s, d, &mut out);
            let mut bytes = out[..n].to_vec();
            bytes.extend_from_slice(&tail);
            let (s, d) = (unmap(s), unmap(d));
            let want = match (s, d) {
                (SocketAddr::V4(_), SocketAddr::V4(_)) => (s, d),
                _ => (SocketAddr::V6(to_v6(s)), SocketAddr::V6(to_v6(d))),
            };
            let strip = |a: SocketAddr| SocketAddr::new(a.ip(), a.port());
            proptest::prop_assert_eq!(
                parse(&bytes),
                Ok(Parsed::Header { len: n, addresses: Some((strip(want.0), strip(want.1))) })
            );
            for k in 0..n {
                proptest::prop_assert_eq!(parse(&bytes[..k]), Ok(Parsed::Incomplete));
            }
        }

        /// Any bytes at all: an answer, never a panic, and a header never longer than the
        /// bytes given.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            if let Ok(Parsed::Header { len, .. }) = parse(&bytes) {
                proptest::prop_assert!(len <= bytes.len());
            }
        }

        /// Bytes that start like a header, mutated: the same.
        #[test]
        fn mutated_headers_never_panic(
            v1 in proptest::bool::ANY,
            at in 0usize..60,
            byte in proptest::prelude::any::<u8>(),
        ) {
            let mut out = [0u8; MAX_HEADER];
            let n = encode(if v1 { Version::V1 } else { Version::V2 }, a("[2001:db8::1]:443"), a("10.0.0.1:80"), &mut out);
            let mut bytes = out[..n].to_vec();
            if at < bytes.len() {
                bytes[at] = byte;
            }
            if let Ok(Parsed::Header { len, .. }) = parse(&bytes) {
                proptest::prop_assert!(len <= bytes.len());
            }
        }
    }
}
