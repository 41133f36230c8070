"""docs/performance.md's generated block and its charts, from one results file.

Only the text between BEGIN and END is replaced; the rest of the file belongs to others (the rings
section, microbenchmarks) and is kept as it is. The file is created when missing.
"""

import os

import svg
from summary import median as median_of
from summary import summarize

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
DOC = os.path.join("docs", "performance.md")
CHART_DIR = os.path.join("docs", "perf")

# Targets from shared/brief.md and the forwarder issue's speed check; `ratio` is levee / HAProxy
# in the same round, `le`/`ge` how it must compare with the bound.
TARGETS = [
    ("keepalive", "rate", "ge", 1.2, "Keep-alive requests/s vs HAProxy"),
    ("keepalive", "p99_us", "le", 1.0, "Keep-alive p99 latency vs HAProxy"),
    ("keepalive", "cpu_per_unit", "le", 0.7, "Keep-alive proxy CPU per request vs HAProxy"),
    ("close", "rate", "ge", 1.2, "New connections/s (`Connection: close`) vs HAProxy"),
]
HEADLINE_STEP = "c50"

UNITS = {
    "keepalive": ("requests/s", "CPU µs/req"),
    "close": ("connections/s", "CPU µs/conn"),
    "bulk": ("Gbit/s", "CPU ms/GB"),
    "idle": ("bytes/conn", None),
}


def write(result, repo, results_path):
    """Writes the charts and the block; returns the paths written."""
    summary = summarize(result["measurements"], [c["key"] for c in result["contenders"]])
    result = dict(result, summary=summary)
    chart_dir = os.path.join(repo, CHART_DIR)
    os.makedirs(chart_dir, exist_ok=True)
    written = []
    charts = {}
    for name, text in charts_svg(result).items():
        path = os.path.join(chart_dir, name)
        with open(path, "w") as f:
            f.write(text)
        written.append(path)
        charts[name] = f"perf/{name}"
    block = markdown(result, os.path.relpath(results_path, repo), charts)
    doc = os.path.join(repo, DOC)
    written.append(splice(doc, block))
    return written


def splice(doc, block):
    if os.path.exists(doc):
        with open(doc) as f:
            text = f.read()
    else:
        text = ("# Performance\n\nHow levee compares with the proxies an operator would pick "
                "instead, and what its parts cost.\n\n")
    b, e = text.find(BEGIN), text.find(END)
    if b >= 0 and e > b:
        text = text[:b] + block + text[e + len(END):]
    elif b >= 0 or e >= 0:
        raise ValueError(f"{doc}: only one of {BEGIN} / {END} is there; fix the file by hand")
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(doc, "w") as f:
        f.write(text)
    return doc


# ---------------------------------------------------------------------------------------------
# Formatting


def fnum(v, digits=3):
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def fratio(v):
    return "–" if v is None else f"{v:.2f}×"


def fms(us):
    if us is None:
        return "–"
    ms = us / 1000
    return f"{ms:.3g} ms" if ms < 100 else f"{ms:,.0f} ms"


def fmib(kb):
    return "–" if kb is None else f"{kb / 1024:.1f} MiB"


def label_of(result):
    return {c["key"]: c["label"] for c in result["contenders"]}


def steps_of(result, scenario):
    return list(result["summary"].get(scenario, {}).keys())


def step_sort_key(step):
    digits = "".join(ch for ch in step if ch.isdigit())
    return int(digits) if digits else 0


def get(result, scenario, step, contender):
    return result["summary"].get(scenario, {}).get(step, {}).get(contender)


def vs(s, base, key):
    if not s:
        return None
    return (s.get("vs_" + base) or {}).get(key)


# ---------------------------------------------------------------------------------------------
# Targets


def judge(value, op, bound):
    if value is None:
        return None
    return value >= bound if op == "ge" else value <= bound


def target_rows(result):
    rows = []
    lv = lambda sc, st: get(result, sc, st, "levee")  # noqa: E731
    for scenario, key, op, bound, what in TARGETS:
        steps = sorted(steps_of(result, scenario), key=step_sort_key)
        step = HEADLINE_STEP if HEADLINE_STEP in steps else (steps[0] if steps else None)
        s = lv(scenario, step) if step else None
        r = vs(s, "haproxy", key)
        ok = judge(r, op, bound)
        need = ("≥ " if op == "ge" else "≤ ") + f"{bound:.2f}×"
        if s is None or r is None:
            rows.append((what, "–", need, "not measured in this run", "–"))
            continue
        verdict = "**pass**" if ok else "**short**"
        if s["errors"]:
            verdict = f"**short** ({s['errors']} errors)"
        h = get(result, scenario, step, "haproxy")
        per_round = (s.get("vs_haproxy") or {}).get(key + "_rounds") or []
        met = sum(1 for x in per_round if judge(x, op, bound))
        measured = (f"{fratio(r)} ({fmt_metric(scenario, key, s.get(key))} vs "
                    f"{fmt_metric(scenario, key, h.get(key) if h else None)}); "
                    f"met in {met} of {len(per_round)} rounds, which ranged "
                    f"{min(per_round):.2f}–{max(per_round):.2f}×")
        rows.append((what, f"{scenario} {step}", need, measured, verdict))
    # The forwarder issue's own check: at least as many requests/s as HAProxy, p99 no higher,
    # less CPU per request, at wrk -t1 -c50.
    s = lv("keepalive", HEADLINE_STEP)
    if s:
        r_rate, r_p99, r_cpu = (vs(s, "haproxy", k) for k in ("rate", "p99_us", "cpu_per_unit"))
        parts_ok = [judge(r_rate, "ge", 1.0), judge(r_p99, "le", 1.0),
                    r_cpu is not None and r_cpu < 1.0]
        ok = all(parts_ok) and not s["errors"]
        rows.append((
            "Forwarder check: requests/s ≥ HAProxy, p99 no higher, less CPU/request",
            f"keepalive {HEADLINE_STEP}", "≥ 1.00×, ≤ 1.00×, < 1.00×",
            f"{fratio(r_rate)}, {fratio(r_p99)}, {fratio(r_cpu)}",
            "**pass**" if ok else "**short**",
        ))
    rows.append((
        "Spike: 0 failed connections, backend under its cap, p99 ≤ HAProxy maxconn + queue",
        "spike", "–", "not measured: overflow tier not built yet", "–",
    ))
    return rows


def sweep_table(result):
    rows = []
    for step in sorted(steps_of(result, "keepalive"), key=step_sort_key):
        s = get(result, "keepalive", step, "levee")
        if not s or not s.get("vs_haproxy"):
            continue
        cells, ok_all = [], not s["errors"]
        for key, op, bound in (("rate", "ge", 1.2), ("p99_us", "le", 1.0),
                               ("cpu_per_unit", "le", 0.7)):
            r = vs(s, "haproxy", key)
            ok = judge(r, op, bound)
            ok_all = ok_all and bool(ok)
            cells.append(f"{fratio(r)} {'✓' if ok else '✗'}")
        rows.append([step[1:], *cells, str(s["errors"]),
                     "**pass**" if ok_all else "**short**"])
    if not rows:
        return None
    return table(["connections", "requests/s (≥ 1.2×)", "p99 (≤ 1.0×)", "CPU/request (≤ 0.7×)",
                  "levee errors", "all three"], rows)


def fmt_metric(scenario, key, v):
    if v is None:
        return "–"
    if key in ("p50_us", "p99_us", "p999_us"):
        return fms(v)
    if key == "rate":
        if scenario == "bulk":
            return f"{v:.2f} Gbit/s"
        if scenario == "idle":
            return f"{v:,.0f} B/conn"
        return f"{v:,.0f}/s"
    if key == "cpu_per_unit":
        return f"{v:.2f} µs" if scenario != "bulk" else f"{v:.0f} ms/GB"
    return fnum(v)


def shortfalls(result):
    """Plain sentences for every place levee is behind HAProxy or has errors, every step."""
    out = []
    for scenario in ("keepalive", "close", "bulk", "idle"):
        for step in sorted(steps_of(result, scenario), key=step_sort_key):
            s = get(result, scenario, step, "levee")
            if not s:
                continue
            where = f"{scenario} {step}"
            if s["errors"]:
                out.append(f"{where}: levee had {s['errors']} errors over {s['rounds']} rounds.")
            if s.get("failed_rounds"):
                out.append(f"{where}: levee exited during {s['failed_rounds']} measurement(s).")
            r = vs(s, "haproxy", "rate")
            if r is not None:
                if scenario == "idle":
                    if r > 1.0:
                        out.append(f"{where}: levee holds an idle connection in {r:.2f}× "
                                   f"HAProxy's memory.")
                elif r < 1.0:
                    out.append(f"{where}: levee is slower than HAProxy ({r:.2f}×).")
                elif scenario in ("keepalive", "close") and r < 1.2:
                    out.append(f"{where}: levee is ahead of HAProxy ({r:.2f}×) but short of the "
                               f"1.2× target.")
            p = vs(s, "haproxy", "p99_us")
            if p is not None and p > 1.0 and scenario in ("keepalive", "close"):
                out.append(f"{where}: levee's p99 is {p:.2f}× HAProxy's.")
            c = vs(s, "haproxy", "cpu_per_unit")
            if c is not None and scenario in ("keepalive", "close", "bulk"):
                if c > 1.0:
                    out.append(f"{where}: levee spends {c:.2f}× HAProxy's CPU per "
                               f"{'GB' if scenario == 'bulk' else 'request'}.")
                elif scenario == "keepalive" and c > 0.7:
                    out.append(f"{where}: levee's CPU per request is {c:.2f}× HAProxy's, above "
                               f"the 0.7× target.")
    return out


# ---------------------------------------------------------------------------------------------
# Markdown


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def request_table(result, scenario):
    labels = label_of(result)
    rate_unit, cpu_unit = UNITS[scenario]
    header = ["conns", "contender", rate_unit, "× HAProxy", "× direct", "p50", "p99", "p99.9",
              cpu_unit, "CPU × HAProxy", "peak RSS", "errors"]
    rows = []
    for step in sorted(steps_of(result, scenario), key=step_sort_key):
        for key, s in result["summary"][scenario][step].items():
            name = labels.get(key, key)
            name = f"**{name}**" if key == "levee" else name
            rate = fnum(s["rate"])
            if s["errors"] or s.get("failed_rounds"):
                rate += " ⚠"
            rows.append([
                step.lstrip("c"), name, rate,
                fratio(vs(s, "haproxy", "rate")), fratio(vs(s, "direct", "rate")),
                fms(s["p50_us"]), fms(s["p99_us"]), fms(s["p999_us"]),
                fnum(s["cpu_per_unit"]), fratio(vs(s, "haproxy", "cpu_per_unit")),
                fmib(s["hwm_kb"]), errors_cell(s),
            ])
    return table(header, rows)


def errors_cell(s):
    e = str(s["errors"])
    if s.get("failed_rounds"):
        e += f", exited in {s['failed_rounds']} round(s)"
    return f"**{e}**" if e != "0" else e


def bulk_table(result):
    labels = label_of(result)
    header = ["contender", "Gbit/s", "× HAProxy", "× direct", "CPU ms/GB", "CPU × HAProxy",
              "peak RSS", "errors"]
    rows = []
    for step in steps_of(result, "bulk"):
        for key, s in result["summary"]["bulk"][step].items():
            rows.append([
                f"**{labels[key]}**" if key == "levee" else labels.get(key, key),
                f"{s['rate']:.2f}" if s["rate"] is not None else "–",
                fratio(vs(s, "haproxy", "rate")), fratio(vs(s, "direct", "rate")),
                fnum(s["cpu_per_unit"]), fratio(vs(s, "haproxy", "cpu_per_unit")),
                fmib(s["hwm_kb"]), errors_cell(s),
            ])
    return table(header, rows)


def idle_table(result):
    labels = label_of(result)
    header = ["contender", "RSS before", "RSS holding them", "× HAProxy",
              "growth per connection", "reached the backend", "errors"]
    rows = []
    n = result["settings"]["idle_conns"]
    for step in steps_of(result, "idle"):
        for key, s in result["summary"]["idle"][step].items():
            ms = [m for m in result["measurements"]
                  if m["scenario"] == "idle" and m["contender"] == key]
            bc = [m["raw"]["idle"]["backend_conns"] for m in ms]
            before = median_of([m["raw"]["before"]["rss_kb"] for m in ms])
            rows.append([
                f"**{labels[key]}**" if key == "levee" else labels.get(key, key),
                fmib(before), fmib(s["rss_kb"]), fratio(vs(s, "haproxy", "rss_kb")),
                f"{s['rate']:,.0f} B" if s["rate"] is not None else "–",
                f"{min(bc)}–{max(bc)} of {n}" if bc and min(bc) != max(bc)
                else (f"{bc[0]} of {n}" if bc else "–"),
                errors_cell(s),
            ])
    return table(header, rows)


def levee_counters_table(result):
    rows = {}
    for m in result["measurements"]:
        c = m["raw"].get("levee_counters") if m["contender"] == "levee" else None
        if not c:
            continue
        acc = rows.setdefault((m["scenario"], m["step"]), {})
        for k, v in c.items():
            if k != "active":
                acc[k] = acc.get(k, 0) + v
    if not rows:
        return None
    out = []
    for (scenario, step), c in rows.items():
        closes = ", ".join(f"{k[7:]} {v:,}" for k, v in c.items()
                           if k.startswith("closed_") and v)
        out.append([f"{scenario} {step}", f"{c.get('accepted', 0):,}",
                    f"{c.get('connect_failures', 0):,}", f"{c.get('connect_timeouts', 0):,}",
                    f"{c.get('accept_errors', 0):,}", closes or "–"])
    return table(["step", "accepted", "connect failures", "connect timeouts", "accept errors",
                  "closed, by reason"], out)


def headline(result):
    s = get(result, "keepalive", HEADLINE_STEP, "levee")
    h = get(result, "keepalive", HEADLINE_STEP, "haproxy")
    if not s or not h:
        return None
    others = [f"{fratio(vs(s, 'haproxy', 'rate'))} HAProxy ({h['rate']:,.0f})"]
    n = get(result, "keepalive", HEADLINE_STEP, "nginx")
    if n:
        others.append(f"{fratio(vs(s, 'nginx', 'rate'))} nginx stream ({n['rate']:,.0f})")
    d = get(result, "keepalive", HEADLINE_STEP, "direct")
    if d:
        others.append(f"{fratio(vs(s, 'direct', 'rate'))} direct to the backend ({d['rate']:,.0f})")
    return (
        f"**At a glance:** at {HEADLINE_STEP[1:]} keep-alive connections levee served "
        f"**{s['rate']:,.0f} requests/s**: {', '.join(others)}; p99 {fms(s['p99_us'])} "
        f"(HAProxy {fms(h['p99_us'])}); {fnum(s['cpu_per_unit'])} µs of proxy CPU per request, "
        f"{fratio(vs(s, 'haproxy', 'cpu_per_unit'))} HAProxy's {fnum(h['cpu_per_unit'])} µs"
        + (f"; **{s['errors']} errors**" if s["errors"] else "")
        + ". Ratios are medians of per-round ratios, figures medians over rounds."
    )


def markdown(result, results_rel, charts):
    m, g, v, st = result["machine"], result["git"], result["versions"], result["settings"]
    cond = result.get("conditions", {})
    kind = result["kind"]
    L = [BEGIN,
         f"<!-- Generated by scripts/bench from {results_rel}; change scripts/bench.d/report.py, "
         "not this block: the next run rewrites it. -->",
         "",
         "## Peer comparison",
         ""]
    if kind != "full":
        L += [f"> This is a **{kind}** run ({st['rounds']} rounds of {st['duration_s']:g} s): "
              "not the figures to quote. `scripts/bench` without options makes the full run.",
              ""]
    h = headline(result)
    if h:
        L += [h, ""]

    L += ["### Targets", "",
          "Each ratio is levee ÷ HAProxy within one round, median over the rounds "
          "(the brief's targets; levee with errors cannot pass).", ""]
    L.append(table(["target", "step", "required", "levee measured (median ratio; medians)",
                    "result"], target_rows(result)))
    L.append("")
    sweep = sweep_table(result)
    if sweep:
        L += ["The keep-alive targets at every concurrency of the sweep (levee ÷ HAProxy, median "
              "of per-round ratios):", "", sweep, ""]
    falls = shortfalls(result)
    L += ["**Where levee falls short in this run:**", ""]
    L += [f"- {x}" for x in falls] if falls else ["- nowhere against HAProxy in this run."]
    L.append("")

    if charts:
        L += ["### Charts", "",
              "Bars are medians over the rounds; the thin line spans the lowest and the highest "
              "round; ⚠ marks a contender with errors.", ""]
        for name in ("bench-throughput.svg", "bench-latency.svg", "bench-cost.svg"):
            if name in charts:
                L += [f"![{name[6:-4]}]({charts[name]})", ""]

    L += ["### Run", "",
          f"- **Command:** `{result['command']}` ({kind}; {st['rounds']} interleaved rounds, "
          f"{st['duration_s']:g} s per measured run after {st['warmup_s']:g} s of warm-up; "
          f"took {result['elapsed_s'] / 60:.1f} min)",
          f"- **Date:** {result['started']} (UTC)",
          f"- **Commit:** `{g['short']}` on `{g['branch']}`: {g['subject']}"
          + (" (with uncommitted changes)" if g.get("dirty") else ""),
          f"- **Machine:** {m['nproc']} CPUs ({m['cpu_model']}), Linux {m['kernel']}, "
          f"{m['mem_gib']} GiB" + (", virtual machine" if m.get("virtualized") else ""),
          f"- **Software:** {v.get('levee')}; {v.get('haproxy')}; {v.get('nginx')}; "
          f"{v.get('wrk')}",
          f"- **Layout:** wrk on CPU {st['load_cpu']}; the proxy on CPU {st['proxy_cpu']} with one "
          f"thread; the backend nginx (1 worker) on CPU {st['backend_cpu']}; open-file limit "
          f"{st['nofile']} for everyone",
          f"- **Conditions:** {conditions_text(cond, len(result['measurements']))}",
          f"- **Bytes relayed intact:** {integrity_text(result)}",
          f"- **Raw rounds:** [{results_rel}](../{results_rel})",
          ""]

    if steps_of(result, "keepalive"):
        L += ["### Keep-alive requests", "",
              "wrk `-t1 -cN --latency` for a small static response (38-byte body), each wrk "
              "connection kept open for the whole run.", "",
              request_table(result, "keepalive"), ""]

    if steps_of(result, "close"):
        L += ["### New connection per request", "",
              f"wrk with `Connection: close`, {st['close_concurrency']} connections: every request "
              "opens a client connection and, through a proxy, a backend connection.", "",
              request_table(result, "close"), ""]
    if steps_of(result, "bulk"):
        L += ["### Bulk transfer", "",
              f"wrk `-c1` fetching one {st['bulk_mib']} MiB file over and over; throughput counts "
              "every byte received.", "", bulk_table(result), ""]
        step = steps_of(result, "bulk")[0]
        lv, hp = get(result, "bulk", step, "levee"), get(result, "bulk", step, "haproxy")
        if lv and hp and lv.get("hwm_kb") and hp.get("hwm_kb") and lv["hwm_kb"] > 1.5 * hp["hwm_kb"]:
            L += ["levee's peak RSS here is its receive-buffer pool: `engine.buffers` × "
                  "`engine.buffer_size` (2048 × 16 KiB = 32 MiB by default) form a ring the kernel "
                  "fills in order, so one long transfer writes every buffer once. The pool is per "
                  "forwarder and does not grow with connections; with small responses only the "
                  "first page of each buffer is touched (about 8 MiB, the keep-alive steps' peak).",
                  ""]
    if steps_of(result, "idle"):
        L += ["### Idle connections", "",
              f"{st['idle_conns']} client connections opened through the proxy and held without a "
              "byte sent, each with its backend connection; the proxy's resident memory (VmRSS, "
              "process and children) before them and once all of them reached the backend. "
              "Socket buffers live in the kernel and are not in any contender's RSS.", "",
              idle_table(result), ""]
        lv = get(result, "idle", steps_of(result, "idle")[0], "levee")
        if lv and lv["rate"] is not None and lv["rate"] < 100:
            L += ["levee's RSS hardly grows per connection because it allocates every "
                  "connection slot (`engine.max_conns`, 16384 by default) when it starts: its "
                  "per-connection cost is already in the RSS before.", ""]
    counters = levee_counters_table(result)
    if counters:
        L += ["### levee's own counters", "",
              "From levee's `stopped:` line at the end of each measurement, summed over the "
              "rounds (connections opened by the bench to see that levee listens are included).",
              "", counters, ""]
    L += ["### Overflow spike", "",
          "Not measured: the overflow tier is not built yet. The scenario is a placeholder in "
          "`scripts/bench` (`spike`), skipped with that message until it is.", ""]

    L += ["### Method", "",
          "- Contenders run one after another within a round, for each step (direct, levee, "
          "HAProxy, nginx; the first of them rotates each round), so that a ratio compares "
          "measurements taken seconds apart; figures are medians over rounds, ratios the median "
          "of the per-round ratios.",
          "- The median of per-round ratios can differ from the ratio of the medians when the "
          "rounds swing (the virtual CPUs move between placements for seconds at a time); the "
          "per-round ratio is the figure to trust, and the targets table gives its range.",
          "- Every proxy is started fresh for each measurement, so its peak RSS (VmHWM, summed "
          "over the process and its children) belongs to that measurement alone.",
          "- Proxy CPU is utime + stime from /proc/PID/stat (all threads, plus children for "
          "nginx's worker) just before and after the measured wrk run, divided by the requests "
          "completed (or the gigabytes moved). direct has no proxy, so no proxy CPU.",
          "- Latency comes from wrk's histogram, printed by `bench/wrk/report.lua` (p50, p99, "
          "p99.9) with wrk's error counts: connect, read, write, timeout (5 s; 60 s for bulk) and "
          "HTTP status ≥ 400. A figure marked ⚠ had errors in some round.",
          "- Configurations: `scripts/bench.d/templates/` (levee `engine.cores` = the proxy CPU; "
          "HAProxy `nbthread 1`, `cpu-map`; nginx stream `worker_processes 1`, "
          "`worker_cpu_affinity`; the same connection cap for all, what the open-file limit "
          "allows: HAProxy `maxconn` = levee `engine.max_conns`, nginx `worker_connections` "
          "twice that; backlog 4096 and 16 KiB buffers for all; the backend with "
          "`keepalive_requests` high enough never to close a keep-alive run). The results file "
          "holds every configuration as it ran.",
          "- Before the rounds, each contender serves the small response and the bulk file once "
          "and the bytes are compared with the files, so a relay that changes bytes is never "
          "timed.",
          ""]
    L += ["### Reproduce", "",
          "```",
          "scripts/bench            # full run (installs wrk, haproxy, nginx with apt-get if missing)",
          "scripts/bench --quick    # smoke comparison, under 3 minutes",
          f"scripts/bench --report {results_rel}   # regenerate this section from the JSON",
          "```", "",
          "Quote figures only from a run on a quiet machine (load average under about 0.3, no "
          "compiler running), and only as ratios within the run.",
          "", END]
    return "\n".join(L)


def integrity_text(result):
    checks = result.get("integrity")
    if not checks:
        return "not checked in this run"
    labels = label_of(result)
    good = [labels.get(k, k) for k, v in checks.items() if all(x["ok"] for x in v.values())]
    bad = [labels.get(k, k) for k in checks if labels.get(k, k) not in good]
    text = (f"before the rounds, each contender served the small response and the whole "
            f"{result['settings']['bulk_mib']} MiB file once, compared by length and SHA-256: "
            f"{', '.join(good)} intact")
    return text + (f"; **{', '.join(bad)} not**" if bad else "")


def conditions_text(cond, n_measurements):
    if not cond:
        return "not recorded"
    la0, la1 = cond.get("loadavg_start"), cond.get("loadavg_end")
    parts = []
    if la0:
        parts.append(f"load average {la0[0]:.2f} at the start")
    if la1:
        parts.append(f"{la1[0]:.2f} at the end")
    busy = cond.get("measurements_with_compilers_running")
    if busy is not None:
        parts.append(f"compilers (cargo/rustc) running during {busy} of {n_measurements} "
                     "measurements")
    oc = cond.get("others_cpus")
    if oc:
        parts.append(f"other processes used a median {oc['median']:.2f} CPUs (at most "
                     f"{oc['max']:.2f}) during the measured runs")
    mc = cond.get("machine_cpu")
    if mc:
        parts.append(f"steal {mc['steal'] * 100:.1f}%")
    quiet = (la0 and la0[0] < 0.3) and not busy and (not oc or oc["median"] < 0.05)
    verdict = "quiet" if quiet else "**not quiet: treat the figures as rough**"
    return f"{verdict} ({'; '.join(parts)})"


def console_summary(result):
    summary = summarize(result["measurements"], [c["key"] for c in result["contenders"]])
    result = dict(result, summary=summary)
    lines = ["", "summary (medians; ratio = median of per-round ratios to HAProxy):"]
    width = max([8] + [len(c["key"]) for c in result["contenders"]])
    for scenario in ("keepalive", "close", "bulk", "idle"):
        for step in sorted(steps_of(result, scenario), key=step_sort_key):
            for key, s in result["summary"][scenario][step].items():
                rate = fmt_metric(scenario, "rate", s["rate"])
                line = f"  {scenario:9s} {step:6s} {key:{width}s} {rate:>16s} x{fratio(vs(s, 'haproxy', 'rate')):>6s}"
                if s.get("p99_us") is not None and scenario != "idle":
                    line += f"  p99 {fms(s['p99_us']):>9s}"
                if s.get("cpu_per_unit") is not None:
                    line += f"  cpu {fnum(s['cpu_per_unit']):>6s} x{fratio(vs(s, 'haproxy', 'cpu_per_unit'))}"
                if s["errors"]:
                    line += f"  errors {s['errors']}"
                lines.append(line)
    lines.append("")
    lines.append("targets:")
    for row in target_rows(result):
        lines.append(f"  {row[4].replace('**', ''):6s} {row[0]}: {row[3]}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Charts


def series_for(result, scenario, steps, key, scale=1.0, proxies_only=False, ranges=True):
    out = []
    for c in result["contenders"]:
        if proxies_only and c["key"] == "direct":
            continue
        vals, lo, hi, flags = [], [], [], []
        for step in steps:
            s = get(result, scenario, step, c["key"])
            val = s.get(key) if s else None
            vals.append(None if val is None else val * scale)
            if ranges and s and s.get(key + "_min") is not None:
                lo.append(s[key + "_min"] * scale)
                hi.append(s[key + "_max"] * scale)
            else:
                lo.append(None)
                hi.append(None)
            flags.append("⚠" if s and (s["errors"] or s.get("failed_rounds")) else None)
        out.append({"label": c["label"], "color": color_of(c["key"]), "values": vals, "lo": lo,
                    "hi": hi, "flags": flags})
    return out


def color_of(key):
    return {"direct": "#8c8c8c", "levee": "#d95f02", "haproxy": "#1f77b4",
            "nginx": "#2ca02c", "levee_normal": "#a6761d"}.get(key, "#777")


def charts_svg(result):
    charts = {}
    ka = sorted(steps_of(result, "keepalive"), key=step_sort_key)
    cl = steps_of(result, "close")
    bu = steps_of(result, "bulk")
    idle = steps_of(result, "idle")
    sub = (f"{result['kind']} run {result['started'][:10]}, commit {result['git']['short']}; "
           f"medians of {result['settings']['rounds']} rounds, line = lowest..highest round, "
           f"⚠ = errors")

    panels = []
    if ka:
        panels.append(svg.Panel("keep-alive requests/s", [f"{s[1:]} conns" for s in ka],
                                series_for(result, "keepalive", ka, "rate"),
                                unit="requests/s"))
    if cl:
        panels.append(svg.Panel("Connection: close", [f"{s[1:]} conns" for s in cl],
                                series_for(result, "close", cl, "rate"),
                                unit="connections/s"))
    if bu:
        panels.append(svg.Panel("bulk transfer", ["1 conn"],
                                series_for(result, "bulk", bu, "rate"),
                                unit="Gbit/s"))
    if panels:
        charts["bench-throughput.svg"] = svg.chart("Throughput (higher is better)", panels,
                                                   subtitle=sub)

    panels = []
    for scenario, steps in (("keepalive", ka), ("close", cl)):
        for step in steps:
            groups, per = ["p50", "p99", "p99.9"], []
            for c in result["contenders"]:
                s = get(result, scenario, step, c["key"])
                keys = ("p50_us", "p99_us", "p999_us")
                scaled = lambda k: None if not s or s.get(k) is None else s[k] / 1000  # noqa: E731
                flag = "⚠" if s and s["errors"] else None
                per.append({"label": c["label"], "color": color_of(c["key"]),
                            "values": [scaled(k) for k in keys],
                            "lo": [scaled(k + "_min") for k in keys],
                            "hi": [scaled(k + "_max") for k in keys],
                            "flags": [flag] * 3})
            title = f"{'keep-alive' if scenario == 'keepalive' else 'close'}, {step[1:]} conns"
            panels.append(svg.Panel(title, groups, per, unit="ms (log scale)", log=True))
    if panels:
        charts["bench-latency.svg"] = svg.chart(
            "Latency percentiles (lower is better)", panels, subtitle=sub)

    panels = []
    if ka:
        panels.append(svg.Panel("CPU per request, keep-alive", [f"{s[1:]} conns" for s in ka],
                                series_for(result, "keepalive", ka, "cpu_per_unit",
                                           proxies_only=True), unit="proxy CPU µs / request"))
    if cl:
        panels.append(svg.Panel("CPU per conn, close", [f"{s[1:]} conns" for s in cl],
                                series_for(result, "close", cl, "cpu_per_unit", proxies_only=True),
                                unit="proxy CPU µs / request"))
    if ka:
        panels.append(svg.Panel("peak RSS, keep-alive", [f"{s[1:]} conns" for s in ka],
                                series_for(result, "keepalive", ka, "hwm_kb", scale=1 / 1024,
                                           proxies_only=True), unit="MiB (VmHWM)"))
    if idle:
        panels.append(svg.Panel("idle conns held",
                                [f"{result['settings']['idle_conns']} held"],
                                series_for(result, "idle", idle, "rss_kb", scale=1 / 1024,
                                           proxies_only=True),
                                unit="MiB (VmRSS)"))
    if panels:
        charts["bench-cost.svg"] = svg.chart("Proxy cost (lower is better)", panels, subtitle=sub)
    return charts
