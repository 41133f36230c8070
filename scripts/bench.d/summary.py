"""Medians over rounds, and medians of per-round ratios (benchmarking.md: only a ratio measured
side by side, within one round, means anything on these machines)."""

import statistics

METRICS = ("rate", "p50_us", "p99_us", "p999_us", "cpu_per_unit", "hwm_kb", "rss_kb", "pss_kb",
           "backend_cpu_per_unit", "host_cpu_per_unit",
           # open-loop (spike) steps
           "ok", "failed_conns", "p90_us", "max_us", "backend_peak", "backend_peak_inflight",
           "recovery_s", "recovered",
           # handoff steps
           "handed_off", "handed_off_frac",
           # conncost steps
           "idle_cpu_us_per_s", "backend_conns")
# Ratios taken within a round, against every other contender's measurement of the same step.
RATIO_METRICS = ("rate", "p50_us", "p99_us", "max_us", "cpu_per_unit", "hwm_kb", "rss_kb",
                 "pss_kb", "backend_cpu_per_unit", "host_cpu_per_unit", "idle_cpu_us_per_s")


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def with_host_cpu(metrics):
    """`metrics` with host_cpu_per_unit (the proxy's CPU and the backend's together, per unit)
    derived where a results file from before it has both parts."""
    if metrics.get("host_cpu_per_unit") is not None or metrics.get("backend_cpu_per_unit") is None:
        return metrics
    return dict(metrics, host_cpu_per_unit=(metrics.get("cpu_per_unit") or 0.0)
                + metrics["backend_cpu_per_unit"])


def summarize(measurements, contenders):
    """summary[scenario][step][contender] = medians, ranges, error totals and ratios."""
    by_step = {}
    for m in measurements:
        m = dict(m, metrics=with_host_cpu(m["metrics"]))
        by_step.setdefault((m["scenario"], m["step"]), []).append(m)
    out = {}
    for (scenario, step), ms in by_step.items():
        rounds = sorted({m["round"] for m in ms})
        at = {(m["round"], m["contender"]): m["metrics"] for m in ms}
        entry = {}
        for c in contenders:
            mine = [at[(r, c)] for r in rounds if (r, c) in at]
            if not mine:
                continue
            s = {"rounds": len(mine)}
            for k in METRICS:
                vals = [x.get(k) for x in mine]
                s[k] = median(vals)
                present = [v for v in vals if v is not None]
                if present:
                    s[k + "_min"], s[k + "_max"] = min(present), max(present)
            s["errors"] = sum(x.get("errors", 0) for x in mine)
            s["failed_rounds"] = sum(1 for x in mine if x.get("failed") is True)
            for base in contenders:
                if base == c:
                    continue
                rs = {}
                for k in RATIO_METRICS:
                    per_round = [
                        ratio(at[(r, c)].get(k), at[(r, base)].get(k))
                        for r in rounds
                        if (r, c) in at and (r, base) in at
                    ]
                    per_round = [x for x in per_round if x is not None]
                    if per_round:
                        rs[k] = median(per_round)
                        rs[k + "_rounds"] = per_round
                if rs:
                    s["vs_" + base] = rs
            entry[c] = s
        out.setdefault(scenario, {})[step] = entry
    return out
