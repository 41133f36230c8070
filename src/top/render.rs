//! One frame of `levee top`, drawn from two snapshots: a pure function of its inputs, so the
//! frame can be tested against a recorded pair without a terminal or a running levee.
//!
//! Counts are shown as they are in the later snapshot; rates are the difference between the
//! two divided by the time between them. A value that is missing or does not parse, and a rate
//! that cannot be taken (no time between the snapshots, a counter that went backwards, a new
//! levee since the first snapshot), shows as `?`.

use std::fmt::Write as _;
use std::time::Duration;

use super::snapshot::Snapshot;

/// Shown for a value that is missing, does not parse, or a rate that cannot be taken.
const UNKNOWN: &str = "?";
/// Longest backend name shown whole; longer ones are cut.
const MAX_NAME: usize = 24;
/// Narrowest width a frame is laid out for.
const MIN_WIDTH: usize = 20;

/// The frame for `current`, with rates since `previous`, `elapsed` apart, laid out for a
/// terminal `width` columns wide (header lines wrap, table lines are cut). Ends with a newline.
pub fn render(previous: &Snapshot, current: &Snapshot, elapsed: Duration, width: usize) -> String {
    let width = width.max(MIN_WIDTH);
    let seconds = elapsed.as_secs_f64();
    let restarted = match (previous.get("stats.pid"), current.get("stats.pid")) {
        (Some(before), Some(now)) => before != now,
        _ => false,
    };
    let frame = Frame {
        previous,
        current,
        seconds: (seconds > 0.0 && !restarted).then_some(seconds),
    };
    let mut lines = Vec::new();
    frame.header(&mut lines, width);
    let pools = current.pools();
    // One width for the names in every pool's table, so the columns line up down the frame.
    let names = pools
        .iter()
        .flat_map(|p| &p.backends)
        .map(|b| b.chars().count().min(MAX_NAME))
        .max()
        .unwrap_or(0);
    for pool in &pools {
        lines.push(String::new());
        frame.pool(&pool.name, &pool.backends, names, &mut lines, width);
    }
    lines.push(String::new());
    let note = if restarted {
        format!(
            "levee {} replaced levee {} since the last reading: its counters start from zero, \
             rates show again in the next frame",
            count(current, "stats.pid"),
            count(previous, "stats.pid")
        )
    } else {
        format!(
            "rates per second over {seconds:.1} s; levee counts new connections, bytes and \
             connect failures in total (above), and new connections per pool, not per backend"
        )
    };
    lines.extend(wrap(note.split(' ').map(str::to_string), " ", width));
    let mut out = String::new();
    for line in lines {
        out.push_str(&cut(&line, width));
        out.push('\n');
    }
    out
}

/// The two snapshots and the seconds between them, when rates can be taken.
struct Frame<'a> {
    previous: &'a Snapshot,
    current: &'a Snapshot,
    seconds: Option<f64>,
}

impl Frame<'_> {
    /// How much the counter `key` grew between the two snapshots.
    fn delta(&self, key: &str) -> Option<u64> {
        self.current
            .count(key)?
            .checked_sub(self.previous.count(key)?)
    }

    /// Per second.
    fn rate(&self, key: &str) -> Option<f64> {
        Some(self.delta(key)? as f64 / self.seconds?)
    }

    /// The sum of the rates of every counter under `prefix`; unknown if any is, or if there
    /// is none.
    fn rate_under(&self, prefix: &str) -> Option<f64> {
        let mut sum = None;
        for key in self.current.keys_under(prefix) {
            sum = Some(sum.unwrap_or(0.0) + self.rate(key)?);
        }
        sum
    }

    fn count(&self, key: &str) -> String {
        count(self.current, key)
    }

    fn header(&self, lines: &mut Vec<String>, width: usize) {
        let fields = [
            format!("levee {}", self.count("stats.pid")),
            format!("accepted {}", per_second(self.rate("stats.accepted"))),
            format!("active {}", self.count("stats.active")),
            format!("in {}", bytes_per_second(self.rate("stats.bytes_in"))),
            format!("out {}", bytes_per_second(self.rate("stats.bytes_out"))),
            format!(
                "connect failures {}",
                per_second(self.rate("stats.connect_failures"))
            ),
        ];
        lines.extend(wrap(fields, "  ", width));

        // The reasons connections closed for in this interval, the most telling line in an
        // incident: only those that happened, in levee's order.
        let mut closed = vec!["closed/s".to_string()];
        let mut unknown = false;
        for key in self.current.keys_under("stats.closed.") {
            match self.rate(key) {
                Some(r) if r > 0.0 => {
                    closed.push(format!("{} {}", &key["stats.closed.".len()..], rate(r)))
                }
                Some(_) => {}
                None => unknown = true,
            }
        }
        if unknown {
            closed.truncate(1);
            closed.push(UNKNOWN.to_string());
        } else if closed.len() == 1 {
            closed.push("none".to_string());
        }
        lines.extend(wrap(closed, "  ", width));
    }

    /// The pool's line, then its backends' table with names `names` wide.
    fn pool(
        &self,
        pool: &str,
        backends: &[String],
        names: usize,
        lines: &mut Vec<String>,
        width: usize,
    ) {
        let stat = |what: &str| format!("stats.pool.{pool}.{what}");
        let mut fields = vec![
            format!("pool {pool}"),
            // The connect-time histogram counts every connect that succeeded; forwarders hand
            // it over once a tick, so it trails the counters by up to a second.
            format!(
                "connected {}",
                per_second(self.rate(&stat("connect_time_us.count")))
            ),
        ];
        if self.current.get(&stat("queue.depth")).is_some() {
            fields.push(format!("queue {}", self.count(&stat("queue.depth"))));
            fields.push(format!(
                "oldest {}",
                self.current
                    .count(&stat("queue.oldest_wait_ms"))
                    .map_or_else(|| UNKNOWN.to_string(), millis)
            ));
            fields.push(format!(
                "served {}",
                per_second(self.rate(&stat("queue.served")))
            ));
            fields.push(format!(
                "refused {}",
                per_second(self.rate_under(&stat("queue.refused.")))
            ));
            // Workers serve every pool's queue: the same count on each.
            fields.push(format!(
                "workers {}",
                self.count("stats.overflow.workers_attached")
            ));
        } else {
            fields.push("no queue".to_string());
        }
        lines.extend(wrap(fields, "  ", width));

        let mut table = Table::new(&[
            ("BACKEND", Align::Left, names),
            // As wide as the longest status (`ramping`, `ejected`).
            ("STATE", Align::Left, 7),
            ("WEIGHT", Align::Right, 0),
            ("EFFECTIVE", Align::Right, 0),
            ("ACTIVE/MAX", Align::Right, 0),
            ("FAILED CHECKS", Align::Right, 0),
            ("DOWNS", Align::Right, 0),
            ("EJECTIONS", Align::Right, 0),
        ]);
        for backend in backends {
            let config = |what: &str| format!("pool.{pool}.backend.{backend}.{what}");
            let stat = |what: &str| format!("stats.pool.{pool}.backend.{backend}.{what}");
            let max = match self.current.count(&config("max_conns")) {
                Some(0) => "-".to_string(),
                Some(n) => n.to_string(),
                None => UNKNOWN.to_string(),
            };
            table.row(vec![
                cut(backend, MAX_NAME),
                word(self.current.get(&stat("status"))),
                self.count(&config("weight")),
                self.count(&stat("effective_weight")),
                format!("{}/{max}", self.count(&stat("active"))),
                per_second(self.rate(&stat("checks_failed"))),
                self.since_start(&stat("downs")),
                self.since_start(&stat("ejections")),
            ]);
        }
        lines.extend(table.lines().into_iter().map(|l| format!("  {l}")));
    }

    /// A counter since start, with what it grew by in this interval when it grew: `3 (+1)`.
    fn since_start(&self, key: &str) -> String {
        match (self.current.count(key), self.delta(key)) {
            (Some(n), Some(d)) if d > 0 => format!("{n} (+{d})"),
            (Some(n), _) => n.to_string(),
            (None, _) => UNKNOWN.to_string(),
        }
    }
}

/// A value that is one word (a status: `up`, `ejected`), or `?`: anything else, an escape
/// sequence from a confused peer included, is not written to the terminal.
fn word(value: Option<&str>) -> String {
    match value.map(str::trim) {
        Some(v) if !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            v.to_string()
        }
        _ => UNKNOWN.to_string(),
    }
}

/// The counter `key` of `snapshot`, or `?`.
fn count(snapshot: &Snapshot, key: &str) -> String {
    snapshot
        .count(key)
        .map_or_else(|| UNKNOWN.to_string(), |n| n.to_string())
}

/// `text` cut to `width` characters.
fn cut(text: &str, width: usize) -> String {
    text.chars().take(width).collect()
}

/// A rate: one decimal while small, whole above 10, then k and M.
fn rate(r: f64) -> String {
    match r {
        r if !r.is_finite() || r < 0.0 => UNKNOWN.to_string(),
        r if r < 10.0 => format!("{r:.1}"),
        r if r < 100_000.0 => format!("{r:.0}"),
        r if r < 100_000_000.0 => format!("{:.1}k", r / 1e3),
        r => format!("{:.1}M", r / 1e6),
    }
}

fn per_second(r: Option<f64>) -> String {
    r.map_or_else(|| UNKNOWN.to_string(), |r| format!("{}/s", rate(r)))
}

/// Bytes per second in binary units.
fn bytes_per_second(r: Option<f64>) -> String {
    let Some(r) = r.filter(|r| r.is_finite() && *r >= 0.0) else {
        return UNKNOWN.to_string();
    };
    let mut value = r;
    for unit in ["B/s", "KiB/s", "MiB/s", "GiB/s"] {
        if value < 1024.0 {
            return if unit == "B/s" {
                format!("{value:.0} {unit}")
            } else {
                format!("{value:.1} {unit}")
            };
        }
        value /= 1024.0;
    }
    format!("{value:.1} TiB/s")
}

/// A wait in milliseconds: `850 ms`, `12.3 s`, `4m05s`.
fn millis(ms: u64) -> String {
    match ms {
        ms if ms < 1000 => format!("{ms} ms"),
        ms if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        ms => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
    }
}

/// `fields` joined by `sep` into lines of at most `width` characters (a field longer than
/// that gets a line of its own, cut later).
fn wrap(fields: impl IntoIterator<Item = String>, sep: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for field in fields {
        let len = line.chars().count();
        if !line.is_empty() && len + sep.len() + field.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push_str(sep);
        }
        line.push_str(&field);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// Columns as wide as their widest cell (or their least width), two spaces apart.
struct Table {
    /// Heading, alignment, least width.
    columns: Vec<(&'static str, Align, usize)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(columns: &[(&'static str, Align, usize)]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(cells);
    }

    fn lines(&self) -> Vec<String> {
        let head: Vec<String> = self.columns.iter().map(|(h, ..)| h.to_string()).collect();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                std::iter::once(&head)
                    .chain(&self.rows)
                    .map(|row| row.get(i).map_or(0, |c| c.chars().count()))
                    .fold(self.columns[i].2, usize::max)
            })
            .collect();
        std::iter::once(&head)
            .chain(&self.rows)
            .map(|row| {
                let mut line = String::new();
                for (i, cell) in row.iter().enumerate() {
                    if i > 0 {
                        line.push_str("  ");
                    }
                    let w = widths[i];
                    let _ = match self.columns[i].1 {
                        Align::Left => write!(line, "{cell:<w$}"),
                        Align::Right => write!(line, "{cell:>w$}"),
                    };
                }
                line.trim_end().to_string()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(text: &str) -> Snapshot {
        Snapshot::from_lines(text.lines())
    }

    #[test]
    fn garbage_and_values_that_do_not_parse_show_as_unknown() {
        let before = snapshot(
            "stats.pid = 7\n\
             stats.accepted = 10\n\
             stats.bytes_in = 100\n\
             stats.closed.done = 5\n\
             pool.web.backend.b1.weight = 100\n\
             stats.pool.web.backend.b1.checks_failed = 1\n",
        );
        let after = snapshot(
            "\x00\x01garbage\n\
             = = =\n\
             ! stats.what: unknown counter\n\
             stats.pid = 7\n\
             stats.accepted = lots\n\
             stats.active = -3\n\
             stats.bytes_in = 50\n\
             stats.bytes_out = 1e9\n\
             stats.closed.done = 6\n\
             stats.closed.shed = x\n\
             stats.overflow.workers_attached = many\n\
             pool.web.backend.b1.weight = heavy\n\
             pool.web.backend.b1.max_conns = 18446744073709551616\n\
             stats.pool.web.backend.b1.status = \x1b[31mred\n\
             stats.pool.web.backend.b1.active = 2.5\n\
             stats.pool.web.backend.b1.checks_failed = 0\n\
             stats.pool.web.backend.b1.downs = 99999999999999999999999\n\
             stats.pool.web.queue.depth = deep\n\
             stats.pool.web.queue.oldest_wait_ms = \n\
             stats.pool..backend.x.status = up\n\
             stats.pool.web.backend..status = up\n",
        );
        let frame = render(&before, &after, Duration::from_secs(1), 100);
        assert_eq!(
            frame.lines().next(),
            Some("levee 7  accepted ?  active ?  in ?  out ?  connect failures ?"),
            "{frame}"
        );
        assert!(frame.contains("closed/s  ?\n"), "{frame}");
        assert!(
            frame.contains("queue ?  oldest ?  served ?  refused ?  workers ?\n"),
            "{frame}"
        );
        let b1: Vec<_> = frame
            .lines()
            .find(|l| l.starts_with("  b1 "))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        assert_eq!(b1, ["b1", "?", "?", "?", "?/?", "?", "?", "?"], "{frame}");
        assert!(
            !frame.contains('\x1b') && !frame.contains('\0'),
            "{frame:?}"
        );
        // Nothing at all, or the same snapshot twice: still a frame.
        let empty = Snapshot::default();
        let frame = render(&empty, &empty, Duration::ZERO, 0);
        assert!(frame.starts_with("levee ?  accepted ?"), "{frame}");
        let frame = render(&after, &after, Duration::ZERO, 100);
        assert!(frame.contains("closed/s  ?"), "{frame}");
    }

    #[test]
    fn a_new_levee_between_the_snapshots_shows_no_rates() {
        let before = snapshot("stats.pid = 7\nstats.accepted = 1000\n");
        let after = snapshot("stats.pid = 8\nstats.accepted = 10\n");
        let frame = render(&before, &after, Duration::from_secs(1), 100);
        assert!(frame.starts_with("levee 8  accepted ?"), "{frame}");
        assert!(frame.contains("levee 8 replaced levee 7"), "{frame}");
    }

    #[test]
    fn lines_fit_the_width() {
        let s = snapshot(
            "stats.pid = 123456\nstats.accepted = 1\nstats.active = 1\n\
             pool.a_rather_long_pool_name.backend.an_even_longer_backend_name_than_that.weight = 1\n",
        );
        for width in [0, 20, 40, 100] {
            let frame = render(&s, &s, Duration::from_secs(1), width);
            for line in frame.lines() {
                assert!(
                    line.chars().count() <= width.max(MIN_WIDTH),
                    "{width}: {line}"
                );
            }
        }
    }

    #[test]
    fn numbers_read_at_a_glance() {
        assert_eq!(rate(0.0), "0.0");
        assert_eq!(rate(9.94), "9.9");
        assert_eq!(rate(12.5), "12");
        assert_eq!(rate(123_456.0), "123.5k");
        assert_eq!(rate(2.5e9), "2500.0M");
        assert_eq!(rate(f64::NAN), "?");
        assert_eq!(bytes_per_second(Some(1023.0)), "1023 B/s");
        assert_eq!(bytes_per_second(Some(1536.0)), "1.5 KiB/s");
        assert_eq!(bytes_per_second(Some(3.0 * 1024.0 * 1024.0)), "3.0 MiB/s");
        assert_eq!(bytes_per_second(None), "?");
        assert_eq!(millis(850), "850 ms");
        assert_eq!(millis(12_345), "12.3 s");
        assert_eq!(millis(245_000), "4m05s");
    }
}
