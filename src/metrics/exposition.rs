//! The Prometheus text exposition format, version 0.0.4: each family's `# HELP` and `# TYPE`
//! lines, then its series, one per line; a histogram as cumulative `_bucket{le="..."}` series
//! ending with `le="+Inf"`, then `_sum` and `_count`.

use std::fmt::Write;

use crate::stats::catalog::{Family, Kind, Reading, Stat};
use crate::stats::histogram::Distribution;

/// The `Content-Type` of what [`render`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Writes every statistic that has a family, grouped by family in the order each family first
/// appears (the format wants a family's series together, after its `# TYPE` line).
pub fn render(stats: &[Stat], out: &mut String) {
    let mut families: Vec<(&'static Family, Vec<&Stat>)> = Vec::new();
    for stat in stats {
        let Some(family) = stat.family else { continue };
        match families.iter_mut().find(|(f, _)| f.name == family.name) {
            Some((_, members)) => members.push(stat),
            None => families.push((family, vec![stat])),
        }
    }
    for (family, members) in families {
        let kind = match family.kind {
            Kind::Counter => "counter",
            Kind::Gauge | Kind::State { .. } => "gauge",
            Kind::Histogram(_) => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
        let _ = writeln!(out, "# TYPE {} {kind}", family.name);
        for stat in members {
            series(family, stat, out);
        }
    }
}

/// The lines of one statistic.
fn series(family: &Family, stat: &Stat, out: &mut String) {
    let name = family.name;
    match (&stat.reading, family.kind) {
        (Reading::Count(n), _) if family.per_base_unit == 1.0 => {
            let _ = writeln!(out, "{name}{} {n}", labels(&stat.labels, None));
        }
        (Reading::Count(n), _) => {
            let value = *n as f64 / family.per_base_unit;
            let _ = writeln!(
                out,
                "{name}{} {}",
                labels(&stat.labels, None),
                number(value)
            );
        }
        (Reading::Decimal(x), _) => {
            let value = x / family.per_base_unit;
            let _ = writeln!(
                out,
                "{name}{} {}",
                labels(&stat.labels, None),
                number(value)
            );
        }
        (Reading::Text(now), Kind::State { label, states }) => {
            for state in states {
                let extra = Some((label, *state));
                let on = u8::from(now == state);
                let _ = writeln!(out, "{name}{} {on}", labels(&stat.labels, extra));
            }
        }
        (Reading::Distribution(d), Kind::Histogram(_)) => histogram(name, stat, d, out),
        // A text or a histogram under a family of another kind: nothing a parser could read.
        _ => {}
    }
}

fn histogram(name: &str, stat: &Stat, d: &Distribution, out: &mut String) {
    let measure = d.measure();
    let per_base = measure.per_base_unit();
    for &bound in measure.buckets() {
        let le = number(bound as f64 / per_base);
        let _ = writeln!(
            out,
            "{name}_bucket{} {}",
            labels(&stat.labels, Some(("le", &le))),
            d.count_at_most(bound)
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{} {}",
        labels(&stat.labels, Some(("le", "+Inf"))),
        d.count()
    );
    let plain = labels(&stat.labels, None);
    let sum = if per_base == 1.0 {
        d.sum().to_string()
    } else {
        number(d.sum() as f64 / per_base)
    };
    let _ = writeln!(out, "{name}_sum{plain} {sum}");
    let _ = writeln!(out, "{name}_count{plain} {}", d.count());
}

/// `{a="x",b="y"}`, or nothing without labels.
fn labels(own: &[(&'static str, String)], extra: Option<(&str, &str)>) -> String {
    let all = own
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(extra)
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect::<Vec<_>>();
    if all.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", all.join(","))
    }
}

/// A sample value as the format writes it: Go's float syntax, `+Inf`, `-Inf` or `NaN`.
fn number(x: f64) -> String {
    if x.is_nan() {
        "NaN".to_string()
    } else if x.is_infinite() {
        if x > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        // Rust writes the shortest decimal that reads back to the same float, never with an
        // exponent: a form every Prometheus parser reads.
        format!("{x}")
    }
}

/// A label value: backslash, double quote and line feed escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A help text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::catalog::{self, Reading, Stat};
    use crate::stats::histogram::Measure;

    fn rendered(stats: &[Stat]) -> String {
        let mut out = String::new();
        render(stats, &mut out);
        out
    }

    #[test]
    fn counters_and_gauges_get_help_type_and_labels_once_per_family() {
        let stats = [
            Stat::new(
                "stats.accepted".into(),
                Reading::Count(12),
                &catalog::ACCEPTED,
            ),
            Stat::new(
                "stats.closed.done".into(),
                Reading::Count(3),
                &catalog::CLOSED,
            )
            .label("reason", "done"),
            Stat::ctl_only("stats.overflow.dir".into(), Reading::Text("/x".into())),
            Stat::new(
                "stats.closed.shed".into(),
                Reading::Count(0),
                &catalog::CLOSED,
            )
            .label("reason", "shed"),
        ];
        assert_eq!(
            rendered(&stats),
            "# HELP levee_accepted_connections_total Client connections accepted.\n\
             # TYPE levee_accepted_connections_total counter\n\
             levee_accepted_connections_total 12\n\
             # HELP levee_closed_connections_total Accepted connections closed, by the reason \
             levee closed them.\n\
             # TYPE levee_closed_connections_total counter\n\
             levee_closed_connections_total{reason=\"done\"} 3\n\
             levee_closed_connections_total{reason=\"shed\"} 0\n"
        );
    }

    #[test]
    fn milliseconds_become_seconds_and_states_one_series_each() {
        let stats = [
            Stat::new(
                "stats.pool.p.queue.oldest_wait_ms".into(),
                Reading::Count(1500),
                &catalog::QUEUE_OLDEST_WAIT,
            )
            .label("pool", "p"),
            Stat::new(
                "stats.pool.p.backend.b.status".into(),
                Reading::Text("down".into()),
                &catalog::BACKEND_STATUS,
            )
            .label("pool", "p")
            .label("backend", "b"),
        ];
        let text = rendered(&stats);
        assert!(
            text.contains("levee_pool_queue_oldest_wait_seconds{pool=\"p\"} 1.5\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE levee_backend_status gauge\n"));
        assert!(
            text.contains("levee_backend_status{pool=\"p\",backend=\"b\",status=\"down\"} 1\n")
        );
        assert!(text.contains("levee_backend_status{pool=\"p\",backend=\"b\",status=\"up\"} 0\n"));
        assert_eq!(text.matches("levee_backend_status{").count(), 5);
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_a_sum_in_base_units_and_a_count() {
        let mut d = Distribution::new(Measure::ConnectTime);
        for us in [50, 200, 200, 3_000, 20_000_000] {
            d.record(us);
        }
        let stat = Stat::new(
            "stats.pool.web.connect_time_us".into(),
            Reading::Distribution(d),
            &catalog::CONNECT_TIME,
        )
        .label("pool", "web");
        let text = rendered(&[stat]);
        let name = "levee_pool_connect_time_seconds";
        assert!(text.contains(&format!("# TYPE {name} histogram\n")));
        for (le, count) in [
            ("0.0001", 1),
            ("0.00025", 3),
            ("0.0025", 3),
            ("0.005", 4),
            ("10", 4),
            ("+Inf", 5),
        ] {
            let line = format!("{name}_bucket{{pool=\"web\",le=\"{le}\"}} {count}\n");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        assert!(
            text.contains(&format!("{name}_sum{{pool=\"web\"}} 20.00345\n")),
            "{text}"
        );
        assert!(text.contains(&format!("{name}_count{{pool=\"web\"}} 5\n")));
        let buckets = text.matches("_bucket{").count();
        assert_eq!(buckets, Measure::ConnectTime.buckets().len() + 1);
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_help("a\\b\nc \"q\""), "a\\\\b\\nc \"q\"");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(0.0001), "0.0001");
        assert_eq!(number(1e-7), "0.0000001");
    }
}
