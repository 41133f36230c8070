//! The value syntax shared by keys: whole numbers, sizes, durations, factors, socket addresses
//! and names. Each parser returns either the value or the whole message that follows
//! `FILE:LINE: key: `, saying what was expected and what was found; each formatter writes the
//! canonical text that its parser reads back to the same value.

use std::net::SocketAddr;
use std::time::Duration;

/// Longest name segment (`listener.NAME`, `pool.NAME`, `backend.NAME`).
pub const MAX_NAME_LEN: usize = 64;

/// What a name segment may be made of, for messages and docs.
pub const NAME_RULE: &str = "1 to 64 characters from A-Z, a-z, 0-9, _ and -";

/// Longest echo of input text in a message: enough to recognise it, short enough for one line.
const MAX_ECHO: usize = 60;

/// `[A-Za-z0-9_-]{1,64}`
pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Input text made safe to print: control characters escaped (a config line must not be able
/// to move the operator's cursor), long text cut short.
pub fn sanitize(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// "found `x`", or "found nothing" for an empty value.
pub fn found(text: &str) -> String {
    if text.is_empty() {
        "found nothing".to_string()
    } else {
        format!("found `{}`", sanitize(text, MAX_ECHO))
    }
}

/// Extra words for a value that looks like it carries a trailing comment.
pub fn comment_hint(text: &str) -> &'static str {
    if text.contains(" #") || text.contains(" ;") || text.contains("\t#") || text.contains("\t;") {
        "; comments must be on a line of their own"
    } else {
        ""
    }
}

/// A plain unsigned decimal number: no sign, no separators, no exponent.
fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A further constraint on a whole number beyond its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountRule {
    Any,
    /// Ring and buffer-ring sizes: the kernel wants a power of two.
    PowerOfTwo,
    /// The maglev table: a prime size makes every backend's permutation visit every slot.
    Prime,
}

/// "a power of two from 64 to 32768"
pub fn describe_count(min: u32, max: u32, rule: CountRule) -> String {
    let what = match rule {
        CountRule::Any => "a whole number",
        CountRule::PowerOfTwo => "a power of two",
        CountRule::Prime => "a prime",
    };
    format!("{what} from {min} to {max}")
}

pub fn parse_count(text: &str, min: u32, max: u32, rule: CountRule) -> Result<u32, String> {
    let expected = describe_count(min, max, rule);
    let Some(n) = parse_digits(text)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| (min..=max).contains(n))
    else {
        return Err(format!("expected {expected}, {}", found(text)));
    };
    match rule {
        CountRule::PowerOfTwo if !n.is_power_of_two() => {
            let below = n.checked_next_power_of_two().map_or(0, |p| p / 2);
            let above = n.checked_next_power_of_two().unwrap_or(0);
            Err(format!(
                "expected {expected}, found `{n}`, which is not one{}",
                neighbours(below, above, min, max)
            ))
        }
        CountRule::Prime if !is_prime(n) => {
            let below = (min..n).rev().find(|&p| is_prime(p)).unwrap_or(0);
            let above = (n..=max).find(|&p| is_prime(p)).unwrap_or(0);
            Err(format!(
                "expected {expected}, found `{n}`, which is not prime{}",
                neighbours(below, above, min, max)
            ))
        }
        _ => Ok(n),
    }
}

/// " (the nearest are 65521 and 65537)", leaving out candidates outside the range.
fn neighbours(below: u32, above: u32, min: u32, max: u32) -> String {
    let inside = |v: u32| v != 0 && (min..=max).contains(&v);
    match (inside(below), inside(above)) {
        (true, true) => format!(" (the nearest are {below} and {above})"),
        (true, false) => format!(" (the nearest is {below})"),
        (false, true) => format!(" (the nearest is {above})"),
        (false, false) => String::new(),
    }
}

/// Trial division: table sizes stay near a million, so at most about a thousand divisions.
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

pub fn parse_size(text: &str, min: u32, max: u32) -> Result<u32, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let multiplier = match unit {
        "" => Some(1),
        "K" | "k" => Some(KIB),
        "M" | "m" => Some(MIB),
        "G" | "g" => Some(GIB),
        _ => None,
    };
    let (Some(n), Some(multiplier)) = (parse_digits(digits), multiplier) else {
        return Err(format!(
            "expected a size: a number of bytes, optionally with K, M or G (x1024), like 16K, {}",
            found(text)
        ));
    };
    n.checked_mul(multiplier)
        .and_then(|bytes| u32::try_from(bytes).ok())
        .filter(|bytes| (min..=max).contains(bytes))
        .ok_or_else(|| {
            format!(
                "expected a size from {} to {}, {}",
                format_size(min),
                format_size(max),
                found(text)
            )
        })
}

/// Bytes in the largest unit that divides them: 16384 → `16K`, 1000 → `1000`.
pub fn format_size(bytes: u32) -> String {
    let bytes = u64::from(bytes);
    for (unit, size) in [("G", GIB), ("M", MIB), ("K", KIB)] {
        if bytes != 0 && bytes % size == 0 {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

const DURATION_UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

pub fn parse_duration(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    // Outer None: not a duration at all; inner None: too large to count in milliseconds.
    let millis: Option<Option<u64>> = match (parse_digits(digits), unit) {
        (Some(0), "") => Some(Some(0)),
        (Some(_), "") => {
            return Err(format!(
                "expected a duration with a unit, like 250ms or 30s (only 0 may go without one), {}",
                found(text)
            ));
        }
        (Some(n), unit) => DURATION_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, scale)| n.checked_mul(*scale)),
        (None, _) => None,
    };
    let Some(millis) = millis else {
        return Err(format!(
            "expected a duration: a whole number with ms, s, m or h, like 250ms or 30s, {}",
            found(text)
        ));
    };
    millis
        .map(Duration::from_millis)
        .filter(|d| (min..=max).contains(d))
        .ok_or_else(|| {
            format!(
                "expected a duration from {} to {}, {}",
                format_duration(min),
                format_duration(max),
                found(text)
            )
        })
}

/// Whole milliseconds in the largest unit that divides them: 300s → `5m`, 0 → `0`.
pub fn format_duration(d: Duration) -> String {
    let millis = d.as_millis();
    if millis == 0 {
        return "0".to_string();
    }
    for (unit, scale) in DURATION_UNITS {
        let scale = u128::from(scale);
        if millis % scale == 0 {
            return format!("{}{unit}", millis / scale);
        }
    }
    format!("{millis}ms")
}

/// Decimal places a factor may have: the balancer keeps factors as thousandths, so more
/// would be silently rounded away.
const FACTOR_DECIMALS: usize = 3;

/// `0` (none) or a decimal in `min..=max` with at most three decimals.
pub fn parse_factor(text: &str, min: f64, max: f64) -> Result<Option<f64>, String> {
    let expected = || {
        format!(
            "expected 0 (none) or a number from {min} to {max} with at most {FACTOR_DECIMALS} decimals, like 1.25, {}",
            found(text)
        )
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let well_formed = (1..=9).contains(&whole.len())
        && (1..=FACTOR_DECIMALS).contains(&fraction.len())
        && whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit());
    if !well_formed {
        return Err(expected());
    }
    let value: f64 = text.parse().map_err(|_| expected())?;
    if value == 0.0 {
        Ok(None)
    } else if (min..=max).contains(&value) {
        Ok(Some(value))
    } else {
        Err(expected())
    }
}

/// `0` for none, else the shortest decimal that reads back to the same number.
pub fn format_factor(value: Option<f64>) -> String {
    value.map_or_else(|| "0".to_string(), |v| v.to_string())
}

pub fn parse_addr(text: &str, port_zero: bool) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text.parse().map_err(|_| {
        format!(
            "expected an IP address and port, like 10.0.0.1:80 or [::1]:80 (host names are not resolved), {}",
            found(text)
        )
    })?;
    if addr.port() == 0 && !port_zero {
        return Err(format!("expected a port from 1 to 65535, {}", found(text)));
    }
    Ok(addr)
}

pub fn parse_name(text: &str) -> Result<String, String> {
    if is_valid_name(text) {
        Ok(text.to_string())
    } else {
        Err(format!("expected a name of {NAME_RULE}, {}", found(text)))
    }
}

/// An absolute path without control characters, or `none`.
/// Most addresses in one list.
pub const MAX_IPS: usize = 64;

/// `ADDR[,ADDR...]` without ports; empty text is an empty list.
pub fn parse_ips(text: &str) -> Result<Vec<std::net::IpAddr>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let list = text
        .split(',')
        .map(|a| {
            let a = a.trim();
            a.parse::<std::net::IpAddr>()
                .map_err(|_| format!("expected IP addresses separated by commas, {}", found(a)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if list.len() > MAX_IPS {
        return Err(format!("{} addresses; at most {MAX_IPS}", list.len()));
    }
    if let Some(bad) = list.iter().find(|a| a.is_unspecified() || a.is_multicast()) {
        return Err(format!("{bad} is not an address to connect from"));
    }
    Ok(list)
}

pub fn parse_path(text: &str) -> Result<Option<std::path::PathBuf>, String> {
    if text == "none" {
        return Ok(None);
    }
    if !text.starts_with('/') || text.chars().any(char::is_control) || text.len() > 107 {
        return Err(format!(
            "expected an absolute path of at most 107 bytes (a Unix socket's limit), or none, {}",
            found(text)
        ));
    }
    Ok(Some(std::path::PathBuf::from(text)))
}

/// A user or group name as `useradd` accepts them (a letter or `_` first, then letters, digits,
/// `_`, `-`, at most 32), or `none`. Whether it exists on this host is checked when levee runs.
pub fn parse_account(text: &str) -> Result<Option<String>, String> {
    if text == "none" {
        return Ok(None);
    }
    let mut chars = text.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !first_ok || !rest_ok || text.len() > 32 {
        return Err(format!(
            "expected a user or group name (a-z or _ first, then a-z, 0-9, _ or -, at most 32), or none, {}",
            found(text)
        ));
    }
    Ok(Some(text.to_string()))
}

/// Longest `overflow.dir`: the Unix sockets a worker binds inside it must stay within the
/// 107 bytes of a socket address.
pub const MAX_DIR_LEN: usize = 80;

/// `auto` (`None`) or an absolute directory path of at most [`MAX_DIR_LEN`] bytes.
pub fn parse_dir(text: &str) -> Result<Option<std::path::PathBuf>, String> {
    if text == "auto" {
        return Ok(None);
    }
    if !text.starts_with('/') || text.chars().any(char::is_control) || text.len() > MAX_DIR_LEN {
        return Err(format!(
            "expected auto, or an absolute path of at most {MAX_DIR_LEN} bytes, {}",
            found(text)
        ));
    }
    Ok(Some(std::path::PathBuf::from(text)))
}

/// Bytes written as text with C-style escapes: `\r`, `\n`, `\t`, `\\`, `\xHH`. Values are
/// trimmed, so a leading or trailing space is written `\x20`.
pub fn parse_bytes(text: &str, max_len: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let escaped = match bytes.next() {
            Some(b'r') => b'\r',
            Some(b'n') => b'\n',
            Some(b't') => b'\t',
            Some(b'\\') => b'\\',
            Some(b'x') => {
                let hex = [bytes.next(), bytes.next()];
                let digits = hex.iter().map(|d| d.and_then(|d| (d as char).to_digit(16)));
                match digits.collect::<Option<Vec<u32>>>() {
                    Some(d) => (d[0] * 16 + d[1]) as u8,
                    None => {
                        return Err(format!(
                            "expected two hex digits after \\x, {}",
                            found(text)
                        ));
                    }
                }
            }
            _ => {
                return Err(format!(
                    "expected an escape among \\r \\n \\t \\\\ \\xHH, {}",
                    found(text)
                ));
            }
        };
        out.push(escaped);
    }
    if out.len() > max_len {
        return Err(format!(
            "expected at most {max_len} bytes, found {}",
            out.len()
        ));
    }
    Ok(out)
}

/// Canonical text of bytes: printable ASCII as is, everything else escaped.
pub fn format_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let last = bytes.len().saturating_sub(1);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\\' => out.push_str("\\\\"),
            // Spaces at either end would be trimmed away when read back.
            b' ' if i == 0 || i == last => out.push_str("\\x20"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// Levenshtein distance over chars, for "did you mean" suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn names_follow_the_rule() {
        assert!(is_valid_name("web-1_A"));
        assert!(is_valid_name(&"a".repeat(64)));
        assert!(!is_valid_name(&"a".repeat(65)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a.b"));
        assert!(!is_valid_name("wéb"));
        assert!(!is_valid_name("a b"));
    }

    #[test]
    fn counts_check_range_and_rule() {
        assert_eq!(
            parse_count("4096", 64, 32768, CountRule::PowerOfTwo),
            Ok(4096)
        );
        assert_eq!(
            parse_count("5000", 64, 32768, CountRule::PowerOfTwo),
            Err("expected a power of two from 64 to 32768, found `5000`, which is not one (the nearest are 4096 and 8192)".into())
        );
        assert_eq!(
            parse_count("65536", 7, 1_000_003, CountRule::Prime),
            Err("expected a prime from 7 to 1000003, found `65536`, which is not prime (the nearest are 65521 and 65537)".into())
        );
        assert_eq!(
            parse_count("8", 7, 10, CountRule::Prime),
            Err(
                "expected a prime from 7 to 10, found `8`, which is not prime (the nearest is 7)"
                    .into()
            )
        );
        assert!(parse_count("65536", 1, 65535, CountRule::Any).is_err());
        assert!(parse_count("99999999999999999999999", 1, 65535, CountRule::Any).is_err());
        assert!(parse_count("-1", 0, 7, CountRule::Any).is_err());
        assert!(parse_count("+1", 0, 7, CountRule::Any).is_err());
        assert!(parse_count("1_000", 0, 7000, CountRule::Any).is_err());
        assert_eq!(parse_count("0", 0, 7, CountRule::Any), Ok(0));
        assert_eq!(parse_count("007", 0, 7, CountRule::Any), Ok(7));
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65537));
        assert!(is_prime(1_000_003));
        assert!(!is_prime(1_000_001));
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("16K", 1024, MIB as u32), Ok(16384));
        assert_eq!(parse_size("16k", 1024, MIB as u32), Ok(16384));
        assert_eq!(parse_size("1M", 1024, MIB as u32), Ok(1 << 20));
        assert_eq!(parse_size("1G", 1, u32::MAX), Ok(1 << 30));
        assert_eq!(parse_size("2000", 1024, MIB as u32), Ok(2000));
        assert_eq!(
            parse_size("2M", 1024, MIB as u32),
            Err("expected a size from 1K to 1M, found `2M`".into())
        );
        assert!(parse_size("1023", 1024, MIB as u32).is_err());
        assert!(parse_size("16KB", 1024, MIB as u32).is_err());
        assert!(parse_size("K", 1024, MIB as u32).is_err());
        assert!(parse_size("1.5K", 1024, MIB as u32).is_err());
        assert!(parse_size("99999999999G", 1, u32::MAX).is_err());
        assert!(parse_size("4G", 1, u32::MAX).is_err());
    }

    #[test]
    fn sizes_format_in_the_largest_whole_unit() {
        assert_eq!(format_size(16384), "16K");
        assert_eq!(format_size(1 << 20), "1M");
        assert_eq!(format_size(3 << 30), "3G");
        assert_eq!(format_size(1536), "1536");
        assert_eq!(format_size(0), "0");
    }

    #[test]
    fn durations_need_a_unit_except_zero() {
        let (lo, hi) = (Duration::ZERO, ms(86_400_000));
        assert_eq!(parse_duration("250ms", lo, hi), Ok(ms(250)));
        assert_eq!(parse_duration("30s", lo, hi), Ok(ms(30_000)));
        assert_eq!(parse_duration("5m", lo, hi), Ok(ms(300_000)));
        assert_eq!(parse_duration("1h", lo, hi), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("0", lo, hi), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s", lo, hi), Ok(Duration::ZERO));
        assert_eq!(
            parse_duration("30", lo, hi),
            Err("expected a duration with a unit, like 250ms or 30s (only 0 may go without one), found `30`".into())
        );
        assert_eq!(
            parse_duration("25h", lo, hi),
            Err("expected a duration from 0 to 24h, found `25h`".into())
        );
        for bad in [
            "",
            "s",
            "1.5s",
            "1d",
            "-1s",
            "1 s",
            "1m30s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad, lo, hi).is_err(), "{bad:?} parsed");
        }
        assert!(parse_duration("0", ms(1), hi).is_err());
    }

    #[test]
    fn durations_format_in_the_largest_whole_unit() {
        assert_eq!(format_duration(ms(300_000)), "5m");
        assert_eq!(format_duration(ms(90_000)), "90s");
        assert_eq!(format_duration(ms(7_200_000)), "2h");
        assert_eq!(format_duration(ms(1500)), "1500ms");
        assert_eq!(format_duration(Duration::ZERO), "0");
    }

    #[test]
    fn factors_are_zero_or_in_range_with_three_decimals() {
        assert_eq!(parse_factor("0", 1.0, 100.0), Ok(None));
        assert_eq!(parse_factor("0.0", 1.0, 100.0), Ok(None));
        assert_eq!(parse_factor("1.25", 1.0, 100.0), Ok(Some(1.25)));
        assert_eq!(parse_factor("100", 1.0, 100.0), Ok(Some(100.0)));
        for bad in [
            "0.5", "100.001", "1.2345", "1e2", "inf", "NaN", "-1", ".5", "1.", "",
        ] {
            assert!(parse_factor(bad, 1.0, 100.0).is_err(), "{bad:?} parsed");
        }
        assert_eq!(format_factor(None), "0");
        assert_eq!(format_factor(Some(1.25)), "1.25");
        assert_eq!(format_factor(Some(2.0)), "2");
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("[::1]:80", false).map(|a| a.to_string()),
            Ok("[::1]:80".to_string())
        );
        assert!(parse_addr("10.0.0.1:0", true).is_ok());
        assert_eq!(
            parse_addr("10.0.0.1:0", false),
            Err("expected a port from 1 to 65535, found `10.0.0.1:0`".into())
        );
        for bad in ["localhost:80", "10.0.0.1", "::1:80", "10.0.0.1:99999", ""] {
            assert!(parse_addr(bad, true).is_err(), "{bad:?} parsed");
        }
        let scoped = parse_addr("[fe80::1%2]:80", false);
        assert_eq!(
            scoped.map(|a| a.to_string()),
            Ok("[fe80::1%2]:80".to_string())
        );
    }

    #[test]
    fn echoed_text_is_escaped_and_cut() {
        assert_eq!(found(""), "found nothing");
        assert_eq!(found("a\u{1b}[31m"), "found `a\\u{1b}[31m`");
        let long = "x".repeat(100);
        assert_eq!(found(&long), format!("found `{}…`", "x".repeat(60)));
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("balanse", "balance"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("ring_entires", "ring_entries"), 2);
    }
}
