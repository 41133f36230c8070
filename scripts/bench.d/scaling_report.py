"""The scaling sections of docs/performance.md's generated block: requests/s and connections/s at
each proxy thread count (scripts/bench --cores, the `cores` scenario) and what a connection held
open costs at 10, 1,000 and 10,000 at once (the `conncost` scenario).

report.py calls these with the results file that measured them. A core count the machine could
not run is named in the section, with why, never left out in silence.
"""

import overflow_report as ovf
from summary import median

LIKE = "haproxy_batch"
ORDER = ["direct", "levee", "haproxy", "haproxy_batch", "nginx"]


def fr(v):
    return "–" if v is None else f"{v:.2f}×"


def fnum(v):
    if v is None:
        return "–"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def fmib(kb):
    return "–" if kb is None else f"{kb / 1024:.1f} MiB"


def summ(result, scenario, step, key):
    return result["summary"].get(scenario, {}).get(step, {}).get(key)


def vs(s, base, key):
    return ((s or {}).get("vs_" + base) or {}).get(key)


def keys_in(result, scenario, step):
    have = result["summary"].get(scenario, {}).get(step, {})
    return [k for k in ORDER if k in have] + [k for k in have if k not in ORDER]


def scale_ratio(result, kind, n, base_n, key, metric="rate"):
    """Contender `key`'s `metric` at `n` threads ÷ at `base_n`, per round, and their median."""
    at = {}
    for m in result["measurements"]:
        if m["scenario"] == "cores" and m["contender"] == key:
            at[(m["round"], m["step"])] = m["metrics"].get(metric)
    rs = []
    for (rnd, step), v in at.items():
        if step != f"{kind}-n{n}":
            continue
        b = at.get((rnd, f"{kind}-n{base_n}"))
        if v is not None and b:
            rs.append(v / b)
    return median(rs)


def cores_table(result, kind):
    info = result.get("cores") or {}
    counts = info.get("run") or []
    if not counts:
        return None
    base_n = min(counts)
    labels = ovf.labels(result)
    unit = "requests/s" if kind == "keepalive" else "connections/s"
    cpu_unit = "µs/req" if kind == "keepalive" else "µs/conn"
    header = ["threads", "contender", unit, "× HAProxy batch", "× HAProxy", "× nginx",
              f"× at {base_n}", f"proxy CPU {cpu_unit}", f"proxy + backend {cpu_unit}", "errors"]
    rows = []
    for n in counts:
        step = f"{kind}-n{n}"
        for key in keys_in(result, "cores", step):
            s = summ(result, "cores", step, key)
            rows.append([
                str(n), f"**{labels.get(key, key)}**" if key == "levee" else labels.get(key, key),
                fnum(s.get("rate")) + (" ⚠" if s.get("errors") else ""),
                fr(vs(s, LIKE, "rate")), fr(vs(s, "haproxy", "rate")), fr(vs(s, "nginx", "rate")),
                "–" if n == base_n else fr(scale_ratio(result, kind, n, base_n, key)),
                fnum(s.get("cpu_per_unit")), fnum(s.get("host_cpu_per_unit")),
                str(s.get("errors", 0)),
            ])
    return ovf.table(header, rows)


def layout_lines(result):
    info = result.get("cores") or {}
    out = []
    for n, l in sorted((info.get("layouts") or {}).items(), key=lambda x: int(x[0])):
        backend = ("the proxy's CPUs (shared)" if l.get("backend_shares_proxy_cpus")
                   else f"CPUs {', '.join(map(str, l['backend']))} of its own")
        out.append(f"- {n} thread(s): wrk on CPU(s) {', '.join(map(str, l['load']))} "
                   f"({len(l['load'])} wrk thread(s)); the proxy on CPU(s) "
                   f"{', '.join(map(str, l['proxy']))}, one thread or worker on each; the backend "
                   f"nginx with {len(l['backend'])} worker(s) on {backend}")
    return out


def conncost_table(result):
    steps = sorted(result["summary"].get("conncost", {}),
                   key=lambda s: int("".join(ch for ch in s if ch.isdigit()) or 0))
    if not steps:
        return None
    labels = ovf.labels(result)
    asked = {f"n{c['held']}": c["asked"] for c in (result.get("conncost") or {}).get("counts", [])}
    header = ["connections", "contender", "memory before (PSS)", "growth per connection",
              "× HAProxy", "proxy CPU µs per connection", "proxy + backend µs", "× HAProxy",
              "idle CPU µs/s, all held", "reached the backend", "errors"]
    rows = []
    for step in steps:
        n = int(step[1:])
        held = f"{n:,}" + (f" (asked {asked[step]:,})" if asked.get(step, n) != n else "")
        for key in keys_in(result, "conncost", step):
            s = summ(result, "conncost", step, key)
            ms = [m for m in result["measurements"]
                  if m["scenario"] == "conncost" and m["step"] == step and m["contender"] == key]
            basis = (ms[0]["raw"].get("conncost") or {}).get("basis", "pss_kb") if ms else "pss_kb"
            before = median([m["raw"]["before"].get(basis) for m in ms])
            bc = [m["metrics"].get("backend_conns") for m in ms]
            bc = [x for x in bc if x is not None]
            rows.append([
                held, f"**{labels.get(key, key)}**" if key == "levee" else labels.get(key, key),
                fmib(before), "–" if s.get("rate") is None else f"{s['rate']:,.0f} B",
                fr(vs(s, "haproxy", "rate")), fnum(s.get("cpu_per_unit")),
                fnum(s.get("host_cpu_per_unit")), fr(vs(s, "haproxy", "host_cpu_per_unit")),
                fnum(s.get("idle_cpu_us_per_s")),
                (f"{min(bc):,}–{max(bc):,}" if bc and min(bc) != max(bc)
                 else (f"{bc[0]:,}" if bc else "–")),
                str(s.get("errors", 0)),
            ])
    return ovf.table(header, rows)


def scaling_markdown(result, rel):
    """The scaling section, or a line saying it has not been measured."""
    L = ["## Scaling with cores", ""]
    if result is None:
        return L + ["Not measured at this point: `scripts/bench --cores 1,2,4` runs it (on a "
                    "machine with at least N + 1 CPUs for each count N; it names the counts it "
                    "cannot run).", ""]
    info = result.get("cores") or {}
    st = result["settings"]
    if info:
        L += [f"Each proxy with N threads: levee N forwarders (`engine.cores`, `engine.max_conns` "
              f"shared out so the total cap equals HAProxy's `maxconn`), HAProxy `nbthread N` "
              f"(under the normal policy, and under SCHED_BATCH as `haproxy_batch`), nginx "
              f"`worker_processes N`, each thread pinned to one CPU and, with several, one "
              f"listening socket per thread (SO_REUSEPORT: levee's own, HAProxy one `bind` per "
              f"thread, nginx `reuseport`). wrk with {info.get('connections_per_thread')} "
              f"connections per proxy thread, keep-alive and then `Connection: close`. Ratios are "
              f"medians of per-round ratios; × at {min(info.get('run') or [1])} is each "
              f"contender against itself at the smallest count, in the same round.", ""]
        if info.get("not_run"):
            L += ["**Not run on this machine:** " + "; ".join(
                f"**{x['count']}** ({x['why']})" for x in info["not_run"]) + ".", ""]
        L += layout_lines(result) + [""]
        for kind, title in (("keepalive", "Keep-alive requests"),
                            ("close", "New connection per request")):
            t = cores_table(result, kind)
            if t:
                L += [f"### {title} by thread count", "", t, ""]
    cc = conncost_table(result)
    if cc:
        hold = (result.get("conncost") or {}).get("hold_s")
        L += ["### Cost per connection held", "",
              "N client connections opened through the proxy one after another and held "
              f"without a byte sent, each with its backend connection, for {hold:g} s, then "
              "closed. Memory: PSS growth per connection (/proc/PID/smaps_rollup summed over the "
              "process and its children, read at the end of the hold). CPU: on-CPU time from "
              "/proc/PID/task/*/schedstat (nanoseconds; ten connections cost less than a clock "
              "tick) to open and close one connection, the proxy alone and with the backend, "
              "less what each spends per second with no connection open (read just before); "
              "and the proxy's CPU per second while all of them are held (background included). "
              "Medians over rounds. "
              "Counts above what the open-file limit lets a proxy hold (two descriptors per "
              f"connection, limit {st.get('nofile')}) are lowered to it and say what was asked.",
              "", cc, ""]
    L += ["### Scaling run", ""] + ovf.run_lines(result, rel) + [""]
    return L
