"""The overflow sections of docs/performance.md's generated block, and their charts:

- the spike: levee's queue against HAProxy's and against the proxies that refuse, in front of a
  backend that counts its own concurrency (scripts/bench --scenarios spike);
- the overflow path's cost: levee against itself, with and without the tier, and with
  connections relayed by a worker (scripts/bench --scenarios handoff).

report.py calls these with the results file that measured each (they may be different runs).
"""

import setup
import svg
from summary import median

SPIKE_ORDER = ["levee_queue", "levee_reject", "haproxy_queue", "nginx_cap"]
# Lines drawn wider, underneath: HAProxy's and nginx's, which levee's may lie on.
WIDE = {"haproxy_queue": 4.0, "nginx_cap": 4.0}
COLORS = {"levee_queue": "#d95f02", "levee_reject": "#7570b3", "haproxy_queue": "#1f77b4",
          "nginx_cap": "#2ca02c", "levee_noqueue": "#7570b3", "levee_tier": "#d95f02",
          "levee_handoff": "#e7298a"}
KILL = "burst-kill"
KILL_LABEL = "levee overflow=queue, worker killed"
OUTCOME_NAMES = [("connect", "connect failed or reset before the request"),
                 ("reset", "reset after the request"), ("short", "closed before the whole reply"),
                 ("bad", "wrong bytes"), ("timeout", "no reply within the client timeout")]


# ---------------------------------------------------------------------------------------------
# Helpers


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def labels(result):
    return {c["key"]: c["label"] for c in result["contenders"]}


def rounds_of(result, scenario, step, key):
    """The measurements of one contender at one step, in round order."""
    return sorted((m for m in result["measurements"] if m["scenario"] == scenario
                   and m["step"] == step and m["contender"] == key), key=lambda m: m["round"])


def summ(result, scenario, step, key):
    return result["summary"].get(scenario, {}).get(step, {}).get(key)


def secs(us):
    if us is None:
        return "–"
    s = us / 1e6
    return f"{s:.3f} s" if s < 1 else f"{s:.2f} s"


def ratio(v):
    return "–" if v is None else f"{v:.2f}×"


def span(xs, fmt):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    lo, hi = min(xs), max(xs)
    return fmt(lo) if lo == hi else f"{fmt(lo)}–{fmt(hi)}"


def present(result, scenario, step, order):
    have = {m["contender"] for m in result["measurements"]
            if m["scenario"] == scenario and m["step"] == step}
    return [k for k in order if k in have] + sorted(have - set(order))


def run_lines(result, rel):
    m, g, v = result["machine"], result["git"], result["versions"]
    st = result["settings"]
    c = result.get("conditions") or {}
    la0, la1 = c.get("loadavg_start"), c.get("loadavg_end")
    oc = c.get("others_cpus") or {}
    busy = c.get("measurements_with_compilers_running")
    quiet = la0 and la0[0] < 0.3 and not busy and oc.get("median", 0) < 0.05
    cond = [f"load average {la0[0]:.2f} at the start" if la0 else None,
            f"{la1[0]:.2f} at the end" if la1 else None,
            f"compilers running during {busy} of {len(result['measurements'])} measurements"
            if busy is not None else None,
            f"other processes used a median {oc['median']:.2f} CPUs (at most {oc['max']:.2f})"
            if oc else None]
    return [
        f"- **Command:** `{result['command']}` ({result['kind']}; {st['rounds']} interleaved "
        f"rounds; took {result['elapsed_s'] / 60:.1f} min)",
        f"- **Date:** {result['started']} (UTC); **commit** `{g['short']}` on `{g['branch']}`: "
        f"{g['subject']}" + (" (with uncommitted changes)" if setup.recorded_dirty(g) else ""),
        f"- **Machine:** {m['nproc']} CPUs ({m['cpu_model']}), Linux {m['kernel']}"
        + (", virtual machine" if m.get("virtualized") else ""),
        f"- **Software:** {v.get('levee')}; {v.get('haproxy')}; {v.get('nginx')}; "
        f"Python {v.get('python')}" + (f"; {v.get('wrk')}" if v.get("wrk") else ""),
        f"- **Conditions:** {'quiet' if quiet else '**not quiet: treat the figures as rough**'} "
        f"({'; '.join(x for x in cond if x)})",
        f"- **Raw rounds:** [{rel}](../{rel})",
    ]


# ---------------------------------------------------------------------------------------------
# The spike


def spike_shape(result):
    return result.get("spike") or {}


def spike_target_rows(result):
    """Rows for the targets table: (what, step, required, measured, result)."""
    what0 = "Spike: 0 failed connections, backend under its cap, p99 ≤ HAProxy maxconn + queue"
    if not result or "spike" not in result["summary"]:
        return [(what0, "spike", "–", "not measured in this run", "–")]
    sp = spike_shape(result)
    cap = sp.get("cap")
    rows = []
    ms = rounds_of(result, "spike", "burst", "levee_queue")
    if ms:
        failed = [m["metrics"]["failed_conns"] for m in ms]
        ok = sum(failed) == 0 and not any(m["metrics"].get("failed") is True for m in ms)
        rows.append(("Spike: no failed connection through levee's queue", "spike burst",
                     "0", f"{sum(failed)} of {sp.get('burst', 0) * len(ms)} over {len(ms)} "
                     f"rounds", "**pass**" if ok else "**short**"))
    peaks = [(m["step"], m["metrics"].get("backend_peak")) for m in result["measurements"]
             if m["scenario"] == "spike" and m["contender"].startswith("levee")]
    peaks = [(s, p) for s, p in peaks if p is not None]
    if peaks:
        top = max(p for _, p in peaks)
        rows.append(("Spike: the backend never above its cap through levee",
                     "spike, every step", f"≤ {cap}",
                     f"highest {top} (the backend's own count, {len(peaks)} measurements)",
                     "**pass**" if top <= cap else "**short**"))
    s = summ(result, "spike", "burst", "levee_queue")
    r = ((s or {}).get("vs_haproxy_queue") or {})
    if r.get("p99_us") is not None:
        per = r["p99_us_rounds"]
        met = sum(1 for x in per if x <= 1.0)
        h = summ(result, "spike", "burst", "haproxy_queue")
        rows.append(("Spike: burst p99 no worse than HAProxy's (maxconn + queue)", "spike burst",
                     "≤ 1.00×", f"{r['p99_us']:.3f}× ({secs(s['p99_us'])} vs "
                     f"{secs(h['p99_us'])}); met in {met} of {len(per)} rounds, which ranged "
                     f"{min(per):.3f}–{max(per):.3f}×",
                     "**pass**" if r["p99_us"] <= 1.0 else "**short**"))
    return rows or [(what0, "spike", "–", "not measured in this run", "–")]


def burst_rows(result, lab, ideal):
    rows = []
    steps = [("burst", k) for k in present(result, "spike", "burst", SPIKE_ORDER)]
    steps += [(KILL, k) for k in present(result, "spike", KILL, SPIKE_ORDER)]
    for step, key in steps:
        s = summ(result, "spike", step, key)
        ms = rounds_of(result, "spike", step, key)
        if not s or not ms:
            continue
        failed = [m["metrics"]["failed_conns"] for m in ms]
        n = sum(m["raw"]["phase"]["count"] for m in ms)
        name = KILL_LABEL if step == KILL else lab.get(key, key)
        name = f"**{name}**" if key.startswith("levee") else name
        vh = (s.get("vs_haproxy_queue") or {}).get("p99_us")
        if step == KILL:
            # Against HAProxy's burst in the same round.
            h = {m["round"]: m["metrics"]["p99_us"]
                 for m in rounds_of(result, "spike", "burst", "haproxy_queue")}
            per = [m["metrics"]["p99_us"] / h[m["round"]] for m in ms
                   if m["metrics"]["p99_us"] and h.get(m["round"])]
            vh = median(per)
        peak = s.get("backend_peak_max")
        # The completion time of the few a refusing proxy served says nothing about a drain.
        mostly = sum(failed) <= 0.1 * n
        rows.append([
            name, f"{sum(failed)} of {n}" + (f" ({span(failed, str)} a round)"
                                               if len(ms) > 1 and sum(failed) else ""),
            secs(s["p50_us"]), secs(s["p99_us"]), secs(s["max_us"]),
            ratio(s["p99_us"] / 1e6 / ideal) if s["p99_us"] and ideal and mostly else "–",
            "–" if (key == "haproxy_queue" and step == "burst") or not mostly else ratio(vh),
            f"**{peak}**" if peak is not None and peak > spike_shape(result).get("cap", peak)
            else str(peak),
        ])
    return rows


def sustained_rows(result, lab):
    sp = spike_shape(result)
    rows = []
    for key in present(result, "spike", sp.get("high_name"), SPIKE_ORDER):
        for phase in (sp.get("high_name"), sp.get("low_name")):
            s = summ(result, "spike", phase, key)
            ms = rounds_of(result, "spike", phase, key)
            if not s or not ms:
                continue
            failed = [m["metrics"]["failed_conns"] for m in ms]
            ok = [m["metrics"]["ok"] for m in ms]
            n = ms[0]["raw"]["phase"]["count"]
            rec = "–"
            if phase == sp.get("low_name"):
                got = [m["metrics"] for m in ms if "recovery_s" in m["metrics"]]
                done = [g["recovery_s"] for g in got if g.get("recovered")]
                if got and len(done) == len(got):
                    rec = f"{median(done):.1f} s ({span(done, lambda x: f'{x:.1f}')})"
                elif got:
                    rec = (f"not within {sp.get('seconds', 0):g} s in {len(got) - len(done)} of "
                           f"{len(got)} rounds" + (f"; {median(done):.1f} s in the others"
                                                    if done else ""))
            rate = sp.get("high_rate") if phase == sp.get("high_name") else sp.get("low_rate")
            name = lab.get(key, key)
            rows.append([
                f"**{name}**" if key.startswith("levee") else name,
                f"{phase} ({rate:g}/s)", f"{median(ok):.0f} of {n}",
                f"{median(failed):.0f}" + (f" ({span(failed, str)})" if len(set(failed)) > 1
                                           else ""),
                secs(s["p50_us"]), secs(s["p99_us"]), secs(s["max_us"]),
                str(s.get("backend_peak_max")), rec,
            ])
    return rows


def outcome_rows(result, lab):
    rows = []
    for m_step in ("burst", spike_shape(result).get("high_name"),
                   spike_shape(result).get("low_name"), KILL):
        for key in present(result, "spike", m_step, SPIKE_ORDER):
            ms = rounds_of(result, "spike", m_step, key)
            sums = {k: sum(m["raw"]["phase"]["outcomes"].get(k, 0) for m in ms)
                    for k, _ in OUTCOME_NAMES}
            if not any(sums.values()):
                continue
            fmed = median([m["raw"]["phase"].get("failed_p50_us") for m in ms])
            name = KILL_LABEL if m_step == KILL else lab.get(key, key)
            rows.append([name, m_step] + [str(sums[k]) for k, _ in OUTCOME_NAMES]
                        + [secs(fmed)])
    return rows


def levee_queue_rows(result):
    """What levee's own counters say the queue did, summed over the rounds."""
    keys = [("queued", "stats.pool.bench.queue.queued"),
            ("served", "stats.pool.bench.queue.served"),
            ("expired", "stats.pool.bench.queue.expired"),
            ("refused: predicted wait", "stats.pool.bench.queue.refused.predicted_wait"),
            ("refused: full", "stats.pool.bench.queue.refused.full"),
            ("rejected", "stats.closed.rejected"),
            ("abandoned", "stats.pool.bench.queue.abandoned"),
            ("requeued", "stats.pool.bench.queue.requeued"),
            ("dead-lettered", "stats.pool.bench.queue.dead_lettered")]
    seen, rows = set(), []
    for m in result["measurements"]:
        if m["scenario"] != "spike" or not m["contender"].startswith("levee"):
            continue
        step = m["raw"]["phase"]["name"] if m["step"] != spike_shape(result).get("low_name") \
            else None
        # The sustained step's two phases share one levee: count its counters once.
        ident = (m["round"], m["contender"], m["raw"].get("openloop", {}).get("started_unix"))
        if ident in seen:
            continue
        seen.add(ident)
        st = m["raw"].get("levee_stats") or {}
        label = "sustained" if step == spike_shape(result).get("high_name") else step
        rows.append((m["contender"], label, [st.get(k, 0) for _, k in keys]))
    agg = {}
    for key, step, vals in rows:
        a = agg.setdefault((key, step), [0] * len(keys))
        for i, v in enumerate(vals):
            a[i] += v
    out = []
    for (key, step), vals in agg.items():
        out.append([key, step] + [f"{v:,}" for v in vals])
    return ["contender", "step"] + [k for k, _ in keys], out


def spike_markdown(result, rel, charts):
    if not result or "spike" not in result["summary"]:
        return ["### Overflow spike", "",
                "Not measured yet: `scripts/bench --scenarios spike` measures it.", ""]
    sp = spike_shape(result)
    lab = labels(result)
    ideal = sp["ideal_drain_s"]
    cap, hold = sp["cap"], sp["hold_ms"]
    L = ["### Overflow spike", ""]
    if result["kind"] not in ("full", "spike", "spike-handoff"):
        L += [f"> This is a **{result['kind']}** run ({result['settings']['rounds']} rounds): "
              "not the figures to quote. `scripts/bench --scenarios spike` makes the spike run.",
              ""]
    L += [f"A backend that takes {hold:g} ms per request and may get at most {cap} connections "
          f"at once from the proxy ({sp['capacity_per_s']:g} requests/s), and more new "
          "connections than that. levee with the backend's `max_conns` and `overflow = queue` "
          "(one worker process) or `reject`; HAProxy with `maxconn` on the server and its queue "
          f"(`timeout queue {sp['queue_timeout_s']}s`, levee's `overflow.queue_timeout` the "
          f"same); nginx stream with `max_conns={cap}`, which has no queue in the free version. "
          "The backend (`scripts/bench.d/countd.py`) counts its own open connections; the load "
          "(`scripts/bench.d/openloop.py`) is open-loop: each connection starts at its "
          "scheduled time whatever the others are doing, sends one request with `Connection: "
          "close`, reads the whole reply and compares it byte for byte, and its completion time "
          "counts from its scheduled start. A connection fails when it cannot connect, is reset, "
          f"gets a short or wrong reply, or has no reply within {sp['client_timeout_s']:g} s.",
          ""]
    s = summ(result, "spike", "burst", "levee_queue")
    h = summ(result, "spike", "burst", "haproxy_queue")
    if s and h:
        ms = rounds_of(result, "spike", "burst", "levee_queue")
        failed = sum(m["metrics"]["failed_conns"] for m in ms)
        r = (s.get("vs_haproxy_queue") or {}).get("p99_us")
        L += [f"**At a glance:** {sp['burst']} connections at once ({sp['burst'] / cap:g} times "
              f"the backend's cap; drained in {ideal:g} s at best): through levee's queue "
              f"**{failed} failed** over {len(ms)} rounds, p99 **{secs(s['p99_us'])}** "
              f"({s['p99_us'] / 1e6 / ideal:.2f}× the ideal drain, {ratio(r)} HAProxy's "
              f"{secs(h['p99_us'])}), and the backend never had more than "
              f"{s.get('backend_peak_max')} connections. Medians over rounds; ratios are medians "
              "of per-round ratios.", ""]

    L += [f"#### A burst: {sp['burst']} connections at once", "",
          f"Failed: total over the rounds. Completion times of the connections that succeeded, "
          f"medians over rounds; ideal: {ideal:g} s, the backend's own pace. Backend peak: the "
          "highest count of open connections the backend saw in any round."
          + (f" The last row is levee's queue again with its worker process killed "
             f"(SIGKILL) {sp['kill_after_s']:g} s into the burst; levee's supervisor starts "
             "another." if summ(result, "spike", KILL, "levee_queue") else ""), ""]
    L.append(table(["contender", "failed", "p50", "p99", "max", "p99 ÷ ideal",
                    "p99 × HAProxy", "backend peak"], burst_rows(result, lab, ideal)))
    L += ["", "p99 ÷ ideal and p99 × HAProxy only where at least 90 % were served: the few "
          "that a refusing proxy serves say nothing about draining a burst. p99 × HAProxy is "
          "the median of per-round ratios to HAProxy's burst in the same round.", ""]
    kill = rounds_of(result, "spike", KILL, "levee_queue")
    if kill:
        restarted = sum(1 for m in kill if m["raw"].get("worker_after")
                        and m["raw"]["worker_after"] != m["raw"].get("worker_killed"))
        fk = [m["metrics"]["failed_conns"] for m in kill]
        when = [m["raw"]["phase"].get("failed_p50_us") for m in kill]
        L += [f"With the worker killed: {sum(fk)} failed over {len(kill)} rounds "
              f"({span(fk, str)} a round)"
              + (f", at a median {secs(median(when))} after the burst began" if any(when) else "")
              + f"; a new worker was running after it in {restarted} of {len(kill)} rounds. "
              "What the killed worker was relaying at that moment is lost with it (the client "
              "sees its connection closed); what it had claimed but not yet taken over goes back "
              "on the queue.", ""]
    if "spike-burst.svg" in charts:
        L += [f"![spike burst]({charts['spike-burst.svg']})", ""]

    if summ(result, "spike", sp.get("high_name"), "levee_queue") or \
            summ(result, "spike", sp.get("high_name"), "haproxy_queue"):
        L += [f"#### Sustained: {sp['high']:g}× capacity, then {sp['low']:g}×", "",
              f"{sp['high_rate']:g} new connections/s for {sp['seconds']:g} s, then "
              f"{sp['low_rate']:g}/s for {sp['seconds']:g} s, one schedule. Served and failed: "
              "medians over rounds (with their range). Completion times: medians over rounds. "
              "Backend peak: the highest in any round, over the phase's window. Recovered: from "
              f"the end of the {sp['high']:g}× phase until every later connection of the "
              f"{sp['low']:g}× phase succeeded within {sp['recover_ms']:g} ms (twice the "
              "backend's time); not recovered when that did not hold for the phase's last "
              "second.", ""]
        L.append(table(["contender", "phase", "served", "failed", "p50", "p99", "max",
                        "backend peak", "recovered after"], sustained_rows(result, lab)))
        L.append("")
        L += [f"A FIFO queue whose connections may wait {sp['queue_timeout_s']} s fills to "
              f"about {sp['queue_timeout_s']} s of waiting at {sp['high']:g}× and, served at "
              f"capacity while new connections keep coming at {sp['low']:g}×, takes about "
              f"{sp['queue_timeout_s'] / (1 - sp['low']):g} s to drain; the proxies that refuse "
              "have nothing to drain.", ""]
        if "spike-sustained.svg" in charts:
            L += [f"![spike sustained]({charts['spike-sustained.svg']})", ""]

    rows = outcome_rows(result, lab)
    if rows:
        L += ["#### How connections failed", "",
              "Failed connections by what the client saw, summed over the rounds, and when "
              "(median time from the scheduled start to the failure):", ""]
        L.append(table(["contender", "step"] + [k for k, _ in OUTCOME_NAMES]
                       + ["median time to fail"], rows))
        L += ["", "; ".join(f"{k}: {v}" for k, v in OUTCOME_NAMES) + ".", ""]
    header, lrows = levee_queue_rows(result)
    if lrows:
        L += ["levee's queue counters (`levee ctl -a`, `stats.pool.bench.queue.*`), summed over "
              "the rounds:", "", table(header, lrows), ""]
    hp = [m["raw"].get("haproxy_stats") for m in result["measurements"]
          if m["scenario"] == "spike" and m["contender"] == "haproxy_queue"
          and m["step"] in ("burst", sp.get("high_name"))]
    hp = [x for x in hp if x and "b1" in x]
    if hp:
        L += ["HAProxy's own view (`show stat` after each measurement): server `smax` (most "
              f"sessions on the server at once) {span([x['b1'].get('smax') for x in hp], str)}, "
              f"backend `qmax` (longest queue) {span([x['BACKEND'].get('qmax') for x in hp], str)}.",
              ""]
    L += ["#### Spike run", ""] + run_lines(result, rel) + [
        f"- **Layout:** the load generator on CPU {result['settings']['load_cpu']}; each proxy "
        f"on CPU {result['settings']['proxy_cpu']} with one thread (levee: one forwarder, and "
        f"its worker process pinned to the same CPU with `overflow.cores`); the counting "
        f"backend (one Python process) on CPU {result['settings']['backend_cpu']}",
        "- Each proxy is started fresh for each step of each round; the backend is the same "
        "process throughout, and every step starts with no connection open to it.",
        ""]
    return L


def median_curve(curves):
    """Per-bin median of several cumulative curves of different lengths."""
    n = max(len(c) for c in curves)
    padded = [c + [c[-1]] * (n - len(c)) for c in curves if c]
    return [median([c[i] for c in padded]) for i in range(n)]


def spike_charts(result):
    if not result or "spike" not in result["summary"]:
        return {}
    sp = spike_shape(result)
    lab = labels(result)
    sub = (f"{result['kind']} run {result['started'][:10]}, commit {result['git']['short']}; "
           f"medians of {result['settings']['rounds']} rounds")
    charts = {}
    series, bars = [], []
    for step, key in ([("burst", k) for k in present(result, "spike", "burst", SPIKE_ORDER)]
                      + [(KILL, k) for k in present(result, "spike", KILL, SPIKE_ORDER)]):
        ms = rounds_of(result, "spike", step, key)
        curves = [m["raw"]["phase"]["curve"]["completed"] for m in ms
                  if m["raw"]["phase"].get("curve")]
        if not curves:
            continue
        dt = ms[0]["raw"]["phase"]["curve"]["step_s"]
        med = median_curve(curves)
        label = KILL_LABEL if step == KILL else lab.get(key, key)
        color = "#f4a259" if step == KILL else COLORS.get(key, "#777")
        series.append({"label": label, "color": color, "width": WIDE.get(key, 1.6),
                       "points": [(0.0, 0)] + [((i + 1) * dt, v) for i, v in enumerate(med)],
                       "dash": "5,3" if step == KILL else None})
        s = summ(result, "spike", step, key)
        flag = "⚠" if s and s["errors"] else None
        keys = ("p50_us", "p99_us", "max_us")
        bars.append({"label": label, "color": color,
                     "values": [None if s.get(k) is None else s[k] / 1e6 for k in keys],
                     "lo": [None if s.get(k + "_min") is None else s[k + "_min"] / 1e6
                            for k in keys],
                     "hi": [None if s.get(k + "_max") is None else s[k + "_max"] / 1e6
                            for k in keys],
                     "flags": [flag] * 3})
    if series:
        ideal = sp["ideal_drain_s"]
        x_end = max(p[0] for s in series for p in s["points"])
        series.append({"label": f"ideal ({sp['capacity_per_s']:g}/s)", "color": "#999",
                       "dash": "2,3",
                       "points": [(0.0, 0), (ideal, sp["burst"]), (max(x_end, ideal),
                                                                   sp["burst"])]})
        panels = [svg.LinePanel(f"{sp['burst']} at once: replies completed", series,
                                unit="connections completed", x_unit="seconds since the burst",
                                width=520),
                  svg.Panel("completion time of those served", ["p50", "p99", "max"], bars,
                            unit="seconds")]
        charts["spike-burst.svg"] = svg.chart(
            "Overflow spike: a burst of new connections (higher and earlier is better)", panels,
            subtitle=sub + "; ⚠ = failed connections", row_height=300)

    hi, lo = sp.get("high_name"), sp.get("low_name")
    lat, fail = [], []
    for key in present(result, "spike", hi, SPIKE_ORDER):
        pts_l, pts_f = [], []
        for phase in (hi, lo):
            ms = rounds_of(result, "spike", phase, key)
            ss = [m["raw"]["phase"].get("series") for m in ms]
            ss = [x for x in ss if x]
            if not ss:
                continue
            start = ms[0]["raw"]["phase"]["start_s"]
            dt = ss[0]["step_s"]
            for i in range(len(ss[0]["p50_us"])):
                vals = [x["p50_us"][i] for x in ss if i < len(x["p50_us"])]
                v = median([x for x in vals if x is not None]) if any(
                    x is not None for x in vals) else None
                pts_l.append((start + (i + 0.5) * dt, None if v is None else v / 1e6))
                f = median([x["failed"][i] / dt for x in ss if i < len(x["failed"])])
                pts_f.append((start + (i + 0.5) * dt, f))
        if pts_l:
            lat.append({"label": lab.get(key, key), "color": COLORS.get(key, "#777"),
                        "points": pts_l, "width": WIDE.get(key, 1.6)})
            fail.append({"label": lab.get(key, key), "color": COLORS.get(key, "#777"),
                         "points": pts_f, "width": WIDE.get(key, 1.6)})
    if lat:
        x_max = 2 * sp["seconds"]
        panels = [svg.LinePanel("completion time (p50 of each quarter second)", lat,
                                unit="seconds (log scale)", log=True,
                                x_unit=f"scheduled start, s ({hi} until {sp['seconds']:g}, then "
                                       f"{lo})", width=520, x_max=x_max),
                  svg.LinePanel("failed connections", fail, unit="failed per second",
                                x_unit="scheduled start, s", width=440, x_max=x_max)]
        charts["spike-sustained.svg"] = svg.chart(
            f"Overflow spike: {sp['high_rate']:g}/s then {sp['low_rate']:g}/s "
            "(lower is better)", panels, subtitle=sub, row_height=300)
    return charts


# ---------------------------------------------------------------------------------------------
# The overflow path's cost


def per_round(result, step, key, metric):
    return {m["round"]: m["metrics"].get(metric) for m in rounds_of(result, "handoff", step, key)}


def round_ratios(result, step, a, b, metric):
    x, y = per_round(result, step, a, metric), per_round(result, step, b, metric)
    return [x[r] / y[r] for r in sorted(x) if r in y and x[r] and y[r]]


def handoff_step(result, prefix):
    for step in result["summary"].get("handoff", {}):
        if step.startswith(prefix):
            return step
    return None


def cpu_split(result, step, key):
    """Median over rounds of the worker process's share of levee's CPU per unit."""
    out = []
    for m in rounds_of(result, "handoff", step, key):
        total = m["raw"].get("proxy_cpu_s")
        w = m["raw"].get("worker_cpu_s")
        if total and w is not None:
            out.append(w / total)
    return median(out)


def handed_keys(result, step=None):
    """The contenders whose connections went through the worker, by cap."""
    keys = {m["contender"] for m in result["measurements"] if m["scenario"] == "handoff"
            and m["contender"].startswith("levee_handoff") and (step is None or m["step"] == step)}
    return sorted(keys, key=lambda k: cap_of(result, k))


def cap_of(result, key):
    digits = key[len("levee_handoff"):]
    if digits.isdigit():
        return int(digits)
    return (result.get("handoff") or {}).get("cap", 0)


def handoff_order(result, step=None):
    return ["levee_noqueue", "levee_tier"] + handed_keys(result, step)


def handoff_markdown(result, rel, charts):
    if not result or "handoff" not in result["summary"]:
        return []
    L = ["## The overflow path's cost", ""]
    if result["kind"] not in ("full", "handoff", "spike-handoff"):
        L += [f"> This is a **{result['kind']}** run ({result['settings']['rounds']} rounds): "
              "not the figures to quote. `scripts/bench --scenarios handoff` makes the run.", ""]
    L += ["levee against itself in interleaved rounds, in front of the static nginx backend, "
          "each levee with one forwarder on the proxy CPU:", ""]
    for key in handoff_order(result):
        c = next((c for c in result["contenders"] if c["key"] == key), None)
        if c:
            L.append(f"- `{key}`: {c['describe']}.")
    L += ["", "levee's CPU is utime + stime of the levee process and its worker process "
          "together, from /proc/PID/stat before and after the measured wrk run; the worker's "
          "share is read from its own /proc/PID/stat. The share of connections a worker took "
          "over comes from levee's counters (`stats.closed.handed_off` ÷ `stats.accepted` over "
          "the measured run).", ""]

    close = handoff_step(result, "close")
    if close:
        conns = close.split("-c")[-1]
        handed = handed_keys(result, close)
        L += [f"### New connections, {conns} at a time", "",
              f"wrk `-c{conns} -H 'Connection: close'`: every request a new connection. With a "
              f"backend cap below {conns}, connections keep waiting, a newcomer may not overtake "
              "them, and so (nearly) every connection is parked by the forwarder and relayed by "
              "the worker; the cap is how many the worker relays at once.", ""]
        rows = []
        for key in handoff_order(result, close):
            s = summ(result, "handoff", close, key)
            frac = s.get("handed_off_frac")
            share = cpu_split(result, close, key)
            whole = None
            if s.get("cpu_per_unit") is not None and s.get("backend_cpu_per_unit") is not None:
                whole = s["cpu_per_unit"] + s["backend_cpu_per_unit"]
            cpus = [m["metrics"]["cpu_per_unit"] for m in rounds_of(result, "handoff", close, key)]
            rows.append([f"`{key}`", f"{s['rate']:,.0f}",
                         "–" if frac is None else f"{frac * 100:.1f} %",
                         f"{s['cpu_per_unit']:.2f} ({span(cpus, lambda x: f'{x:.1f}')})",
                         "–" if share is None else f"{share * 100:.0f} %",
                         f"{s['backend_cpu_per_unit']:.1f}",
                         "–" if whole is None else f"{whole:.1f}",
                         f"{s['p99_us'] / 1000:.2f} ms", str(s["errors"])])
        L.append(table(["contender", "connections/s", "handed off", "levee CPU µs/conn "
                        "(range)", "of it the worker", "backend µs/conn", "whole host µs/conn",
                        "p99", "errors"], rows))
        L.append("")
        b = per_round(result, close, "levee_tier", "cpu_per_unit")
        tb = per_round(result, close, "levee_tier", "backend_cpu_per_unit")
        xrows, meets = [], []
        for key in handed:
            a = per_round(result, close, key, "cpu_per_unit")
            f = per_round(result, close, key, "handed_off_frac")
            hb = per_round(result, close, key, "backend_cpu_per_unit")
            extra = {r: (a[r] - b[r]) / f[r] for r in sorted(a)
                     if r in b and a[r] is not None and b[r] is not None and f.get(r)}
            if not extra:
                continue
            wh = {r: (a[r] + hb[r] - b[r] - tb[r]) / f[r] for r in extra
                  if hb.get(r) is not None and tb.get(r) is not None}
            rr = round_ratios(result, close, key, "levee_tier", "rate")
            med = median(list(extra.values()))
            meets.append((cap_of(result, key), med))
            xrows.append([str(cap_of(result, key)), f"{median(rr):.2f}×",
                          f"**{med:.1f}** ({', '.join(f'{v:.1f}' for v in extra.values())})",
                          "–" if not wh else f"{median(list(wh.values())):+.1f} ("
                          + ", ".join(f"{v:+.1f}" for v in wh.values()) + ")",
                          "**pass**" if med <= 10 else "**short**"])
        if xrows:
            L += ["**CPU per handed-off connection above the fast path** (the issue's target: "
                  "≤ 10 µs), per round: (levee CPU per connection with the cap − with "
                  "`levee_tier`, same round) ÷ the share handed off; median, then each round. "
                  "Whole host adds the backend's CPU per connection to both sides.", ""]
            L.append(table(["cap", "connections/s × levee_tier", "levee µs per handed-off "
                            "connection (rounds)", "whole host µs (rounds)", "≤ 10 µs"], xrows))
            L.append("")
            L += ["The two sides of each difference do not serve the same rate: with the cap, "
                  "the backend gets that many connections at once, and fewer connections/s "
                  "means fewer completions for each turn of the forwarder's and the worker's "
                  "loops, so part of a difference is less batching rather than the handoff "
                  "itself; the caps show how much it moves.", ""]
    bulk = handoff_step(result, "bulk")
    if bulk:
        via = handed_keys(result, bulk)
        cap = cap_of(result, via[0]) if via else None
        L += ["### A transfer relayed by a worker", "",
              f"wrk `-c1` fetching the {result['settings']['bulk_mib']} MiB file over one "
              "keep-alive connection. For "
              + ", ".join(f"`{k}`" for k in via) + " the bench first holds the backend's "
              f"{cap} slots with idle connections through levee, starts wrk, and lets one go as "
              "soon as levee's counters show wrk's connection queued: the worker takes it over "
              "and relays the whole run (the bench checks that the queue served it). The others "
              "relay it from the forwarder. The wait before the takeover counts in wrk's time "
              "(recorded in the results as `via_worker`).", ""]
        rows = []
        for key in handoff_order(result, bulk):
            s = summ(result, "handoff", bulk, key)
            rr = round_ratios(result, bulk, key, "levee_tier", "rate") if key != "levee_tier" \
                else []
            cr = round_ratios(result, bulk, key, "levee_tier", "cpu_per_unit") \
                if key != "levee_tier" else []
            rows.append([f"`{key}`", "worker" if key in via else "forwarder",
                         f"{s['rate']:.2f}", "–" if not rr else
                         f"{median(rr):.2f}× ({span(rr, lambda x: f'{x:.2f}')})",
                         f"{s['cpu_per_unit']:,.0f}", "–" if not cr else
                         f"{median(cr):.2f}× ({span(cr, lambda x: f'{x:.2f}')})",
                         str(s["errors"])])
        L.append(table(["contender", "relayed by", "Gbit/s", "× levee_tier (rounds)",
                        "levee CPU ms/GB", "× levee_tier (rounds)", "errors"], rows))
        L.append("")
        for key in via:
            rr = round_ratios(result, bulk, key, "levee_tier", "rate")
            if rr:
                within = sum(1 for x in rr if 0.9 <= x <= 1.1)
                L += [f"Relayed by the worker, the transfer ran at {median(rr):.2f}× the "
                      f"forwarder's rate (`{key}` ÷ `levee_tier`, median of per-round ratios); "
                      f"within 10 % in {within} of {len(rr)} rounds.", ""]
        waits = [v["queued_after_s"] for k in via for m in rounds_of(result, "handoff", bulk, k)
                 for v in m["raw"].get("via_worker", [])[-1:]]
        if waits:
            L += [f"wrk's connection was seen queued {span([w * 1000 for w in waits], lambda x: f'{x:.0f}')}"
                  f" ms after wrk started (the measured runs of {result['settings']['duration_s']:g} s).",
                  ""]
    ka = handoff_step(result, "keepalive")
    if ka:
        conns = ka.split("-c")[-1]
        L += [f"### The fast path with the tier configured, keep-alive, {conns} connections", "",
              f"wrk `-c{conns}` keep-alive (the keepalive scenario's load): `levee_tier` has the "
              "overflow tier (its shared memory and queues, checked for waiting connections on "
              "each new one; with no cap, levee starts no worker) and nothing reaches it; "
              "`levee_noqueue` has none.", ""]
        rows = []
        for key in handoff_order(result, ka):
            s = summ(result, "handoff", ka, key)
            rows.append([f"`{key}`", f"{s['rate']:,.0f}", f"{s['p99_us'] / 1000:.2f} ms",
                         f"{s['cpu_per_unit']:.2f}", str(s["errors"])])
        L.append(table(["contender", "requests/s", "p99", "levee CPU µs/req", "errors"], rows))
        L.append("")
        parts = []
        for metric, what in (("rate", "requests/s"), ("p99_us", "p99"),
                             ("cpu_per_unit", "CPU per request")):
            rr = round_ratios(result, ka, "levee_tier", "levee_noqueue", metric)
            if rr:
                parts.append(f"{what} {median(rr):.3f}× (rounds "
                             + ", ".join(f"{x:.3f}" for x in rr) + ")")
        if parts:
            L += ["`levee_tier` ÷ `levee_noqueue`, per round and their median: "
                  + "; ".join(parts) + ".", ""]
    if "handoff.svg" in charts:
        L += [f"![handoff]({charts['handoff.svg']})", ""]
    L += ["### Handoff run", ""] + run_lines(result, rel) + [
        f"- **Layout:** wrk on CPU {result['settings']['load_cpu']}; levee's forwarder and its "
        f"worker process (`overflow.cores`) on CPU {result['settings']['proxy_cpu']}; the "
        f"backend nginx (1 worker) on CPU {result['settings']['backend_cpu']}; "
        f"{result['settings']['duration_s']:g} s per measured run after "
        f"{result['settings']['warmup_s']:g} s of warm-up",
        ""]
    return L


def color_of(result, key):
    if key in COLORS:
        return COLORS[key]
    c = next((c for c in result["contenders"] if c["key"] == key), None)
    shades = ["#e7298a", "#c51b7d", "#8e0152", "#f1b6da", "#de77ae", "#4d004b"]
    return shades[handed_keys(result).index(key) % len(shades)] if c else "#777"


def handoff_charts(result):
    if not result or "handoff" not in result["summary"]:
        return {}
    sub = (f"{result['kind']} run {result['started'][:10]}, commit {result['git']['short']}; "
           f"medians of {result['settings']['rounds']} rounds, line = lowest..highest round")
    lab = labels(result)
    all_keys = handoff_order(result)
    panels = []
    for prefix, metric, title, unit, scale in (
            ("close", "cpu_per_unit", "new connections: CPU", "levee CPU µs / connection", 1),
            ("bulk", "rate", "transfer: throughput", "Gbit/s", 1),
            ("bulk", "cpu_per_unit", "transfer: CPU", "levee CPU ms / GB", 1),
            ("keepalive", "cpu_per_unit", "keep-alive: CPU", "levee CPU µs / request", 1)):
        step = handoff_step(result, prefix)
        if not step:
            continue
        series = []
        for key in all_keys:
            s = summ(result, "handoff", step, key)
            series.append({"label": lab.get(key, key), "color": color_of(result, key),
                           "values": [None if not s or s.get(metric) is None
                                      else s[metric] * scale],
                           "lo": [None if not s or s.get(metric + "_min") is None
                                  else s[metric + "_min"] * scale],
                           "hi": [None if not s or s.get(metric + "_max") is None
                                  else s[metric + "_max"] * scale],
                           "flags": ["⚠" if s and s["errors"] else None]})
        if panels:
            # The first panel carries every contender, for the legend; the others only theirs.
            series = [x for x in series if x["values"][0] is not None]
        panels.append(svg.Panel(title, [step], series, unit=unit))
    if not panels:
        return {}
    return {"handoff.svg": svg.chart("The overflow path's cost (levee against itself)", panels,
                                     subtitle=sub)}
