//! Address ranges in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or one address), for the
//! listeners' `allow` and `deny` lists.

use std::fmt;
use std::net::IpAddr;

/// One range: its first address and prefix length. An IPv4 range matches IPv4 clients and
/// IPv4 clients seen through an IPv6 socket (`::ffff:a.b.c.d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// Most ranges in one list: a list is checked in full for each new client.
pub const MAX_RANGES: usize = 256;

impl Cidr {
    /// `ADDR/LEN` or `ADDR`; the address must be the range's first (no host bits set), so a
    /// typo such as `10.1.2.3/8` is an error rather than a range wider than meant.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not an address or ADDR/LEN range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {max}"))?,
        };
        let mut cidr = Cidr { addr, len };
        if cidr.first() != addr {
            return Err(format!(
                "`{text}`: host bits are set; the range starts at {}/{len}",
                cidr.first()
            ));
        }
        // IPv4 written through IPv6 (`::ffff:a.b.c.d/LEN`): clients are matched as IPv4.
        if let IpAddr::V6(v6) = addr
            && let Some(v4) = v6.to_ipv4_mapped()
            && len >= 96
        {
            cidr = Cidr {
                addr: IpAddr::V4(v4),
                len: len - 96,
            };
        }
        Ok(cidr)
    }

    fn first(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask32(self.len)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(self.len)).into()),
        }
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(r), IpAddr::V4(a)) => u32::from(a) & mask32(self.len) == u32::from(r),
            (IpAddr::V6(r), IpAddr::V6(a)) => u128::from(a) & mask128(self.len) == u128::from(r),
            _ => false,
        }
    }
}

fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A comma-separated list of ranges; empty text is an empty list.
pub fn parse_list(text: &str) -> Result<Vec<Cidr>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let list = text
        .split(',')
        .map(|r| Cidr::parse(r.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if list.len() > MAX_RANGES {
        return Err(format!("{} ranges; at most {MAX_RANGES}", list.len()));
    }
    Ok(list)
}

/// The list as `parse_list` reads it.
pub fn format_list(list: &[Cidr]) -> String {
    list.iter()
        .map(Cidr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("literal")
    }

    #[test]
    fn ranges_match_what_they_cover() {
        let r = Cidr::parse("10.0.0.0/8").expect("range");
        assert!(r.contains(ip("10.255.1.2")));
        assert!(r.contains(ip("::ffff:10.1.1.1")));
        assert!(!r.contains(ip("11.0.0.1")));
        assert!(!r.contains(ip("::1")));
        let one = Cidr::parse("192.0.2.7").expect("one");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = Cidr::parse("2001:db8::/32").expect("v6");
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::")));
        let mapped = Cidr::parse("::ffff:192.0.2.0/120").expect("mapped");
        assert!(mapped.contains(ip("192.0.2.1")) && mapped.contains(ip("::ffff:192.0.2.9")));
        assert!(!mapped.contains(ip("192.0.3.1")));
        let all = Cidr::parse("0.0.0.0/0").expect("all");
        assert!(all.contains(ip("203.0.113.1")) && !all.contains(ip("::2")));
    }

    #[test]
    fn bad_ranges_say_why() {
        assert!(Cidr::parse("10.1.2.3/8").unwrap_err().contains("host bits"));
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(
            Cidr::parse("example.com")
                .unwrap_err()
                .contains("not an address")
        );
        assert_eq!(parse_list(" ").expect("empty"), []);
        let list = parse_list("10.0.0.0/8, ::1").expect("list");
        assert_eq!(format_list(&list), "10.0.0.0/8,::1/128");
        assert_eq!(parse_list(&format_list(&list)).expect("again"), list);
    }
}
