//! One reading of a running levee: the `list` reply of its control socket, parsed.

use std::collections::HashMap;

/// Every `KEY = VALUE` a `list` reply held, in the order levee sent them (configuration keys,
/// then `stats.*`). Values stay text: a value is parsed only where it is shown, so one bad value
/// costs one cell of the frame, not the frame.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    entries: Vec<(String, String)>,
    /// Key to its place in `entries`; a key sent twice keeps its last value.
    index: HashMap<String, usize>,
}

/// A pool as a snapshot names it: from its configuration keys or its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolNames {
    pub name: String,
    pub backends: Vec<String>,
}

impl Snapshot {
    /// Parses reply lines: `= KEY = VALUE` as the protocol sends them, or `KEY = VALUE` as
    /// `levee ctl -a` prints them (so a saved `levee ctl -a` can be read back). Anything else
    /// (an error line, the closing `.`, a key that is not a dotted name) is skipped.
    pub fn from_lines<I, S>(lines: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut snapshot = Self::default();
        for line in lines {
            if let Some((key, value)) = parse_line(line.as_ref()) {
                snapshot.insert(key, value);
            }
        }
        snapshot
    }

    fn insert(&mut self, key: &str, value: &str) {
        match self.index.get(key) {
            Some(&at) => self.entries[at].1 = value.to_string(),
            None => {
                self.index.insert(key.to_string(), self.entries.len());
                self.entries.push((key.to_string(), value.to_string()));
            }
        }
    }

    /// The value of `key`, as sent.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.index.get(key).map(|&at| self.entries[at].1.as_str())
    }

    /// The value of `key` as a whole number; `None` when it is missing or is not one.
    pub fn count(&self, key: &str) -> Option<u64> {
        self.get(key)?.trim().parse().ok()
    }

    /// Every key with its value, in the order sent.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Keys that start with `prefix`, in the order sent.
    pub fn keys_under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(move |k| k.starts_with(prefix))
    }

    /// The pools and their backends, in the order their first key came: from the
    /// configuration keys (`pool.P.backend.B.*`) or the counters (`stats.pool.P.backend.B.*`),
    /// so that a snapshot missing either still shows every backend it names.
    pub fn pools(&self) -> Vec<PoolNames> {
        let mut pools: Vec<PoolNames> = Vec::new();
        for (key, _) in &self.entries {
            let rest = key.strip_prefix("stats.").unwrap_or(key);
            let mut parts = rest.split('.');
            let (Some("pool"), Some(pool)) = (parts.next(), parts.next()) else {
                continue;
            };
            if pool.is_empty() {
                continue;
            }
            let at = match pools.iter().position(|p| p.name == pool) {
                Some(at) => at,
                None => {
                    pools.push(PoolNames {
                        name: pool.to_string(),
                        backends: Vec::new(),
                    });
                    pools.len() - 1
                }
            };
            if let (Some("backend"), Some(backend)) = (parts.next(), parts.next())
                && !backend.is_empty()
                && !pools[at].backends.iter().any(|b| b == backend)
            {
                pools[at].backends.push(backend.to_string());
            }
        }
        pools
    }
}

/// `(KEY, VALUE)` from one reply line, or `None` for a line that is not a key and value.
fn parse_line(line: &str) -> Option<(&str, &str)> {
    let line = line.trim_end_matches(['\n', '\r']);
    let pair = line.strip_prefix("= ").unwrap_or(line);
    // An empty value comes as `KEY = ` (or `KEY =` once trailing blanks are lost).
    let (key, value) = pair
        .split_once(" = ")
        .or_else(|| pair.strip_suffix(" =").map(|key| (key, "")))?;
    // Keys are dotted names, and names are `[A-Za-z0-9_-]`.
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    (!key.is_empty() && key.chars().all(plain)).then_some((key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_protocol_lines_and_ctl_output_alike() {
        let s = Snapshot::from_lines([
            "= stats.accepted = 40",
            "stats.active = 3",
            "= listener.web.refuse_payload = ",
            "listener.api.refuse_payload =",
            "= stats.reload.last_error = a = b",
            ".",
        ]);
        assert_eq!(s.count("stats.accepted"), Some(40));
        assert_eq!(s.count("stats.active"), Some(3));
        assert_eq!(s.get("listener.web.refuse_payload"), Some(""));
        assert_eq!(s.get("listener.api.refuse_payload"), Some(""));
        assert_eq!(s.get("stats.reload.last_error"), Some("a = b"));
        assert_eq!(s.entries().count(), 5);
    }

    #[test]
    fn skips_what_is_not_a_key_and_value() {
        let s = Snapshot::from_lines([
            "",
            "garbage",
            "! stats.nope: unknown counter",
            " = x",
            "a key = 1",
            "esc\x1b[2J = 1",
            "= = =",
        ]);
        assert_eq!(s.entries().count(), 0, "{s:?}");
    }

    #[test]
    fn a_key_sent_twice_keeps_its_last_value_and_its_first_place() {
        let s = Snapshot::from_lines(["a = 1", "b = 2", "a = 3"]);
        assert_eq!(s.count("a"), Some(3));
        let keys: Vec<_> = s.entries().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b"]);
    }

    #[test]
    fn pools_come_from_configuration_or_counters_in_first_seen_order() {
        let s = Snapshot::from_lines([
            "pool.web.balance = maglev",
            "pool.web.backend.b1.addr = 127.0.0.1:1",
            "pool.web.backend.b2.addr = 127.0.0.1:2",
            "stats.pool.api.backend.a1.status = up",
            "stats.pool.web.backend.b1.status = up",
            "stats.pool.web.backend.b3.status = down",
            "stats.pool.web.queue.depth = 0",
            "pool..backend.x.addr = 1",
            "pool.web.backend..addr = 1",
            "stats.pid = 1",
        ]);
        assert_eq!(
            s.pools(),
            [
                PoolNames {
                    name: "web".into(),
                    backends: vec!["b1".into(), "b2".into(), "b3".into()],
                },
                PoolNames {
                    name: "api".into(),
                    backends: vec!["a1".into()],
                },
            ]
        );
    }

    #[test]
    fn a_count_that_is_not_a_whole_number_is_none() {
        let s = Snapshot::from_lines(["a = lots", "b = -1", "c = 1.5", "d = 18446744073709551616"]);
        for key in ["a", "b", "c", "d", "missing"] {
            assert_eq!(s.count(key), None, "{key}");
        }
    }
}
