#!/usr/bin/env python3
"""An open-loop load generator for the spike scenario: new connections on a fixed schedule, each
sending one HTTP request with `Connection: close` and reading the whole reply.

    openloop.py --port PORT --phase burst=burst:400 [--phase 2x=rate:320:10 --phase 0.5x=rate:80:10]
                [--control BACKEND_SOCKET] [--kill PID --kill-after 1.0] [--timeout 30]

Phases follow one another on the schedule: `NAME=burst:N[:SECONDS]` opens N connections at the
phase's start (the next phase starts SECONDS later, default 0); `NAME=rate:R:SECONDS` opens one
every 1/R s for SECONDS. Connections are started at their scheduled time whatever the earlier
ones are doing (open loop), and each one's completion time is measured from its scheduled start,
so a slow server cannot slow the arrivals and hide its own tail (coordinated omission).

A connection fails when connecting fails, when it is reset, when the reply is short (EOF before
the whole of it) or not the expected bytes, or when it has not completed within --timeout.

With --control, the backend's counters (countd.py) are reset at each phase's start and read at
the next phase's start (and once everything is done), so each phase gets the backend's own peak
concurrency over its window. With --kill, PID gets SIGKILL --kill-after seconds into the
schedule (the spike scenario's worker-kill variant).

Prints one JSON object: per phase, the counts by outcome, completion-time percentiles of the
successful connections, and time series for the charts.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
OUTCOMES = ("ok", "connect", "reset", "short", "bad", "timeout")


def parse_phase(text):
    try:
        name, spec = text.split("=", 1)
        parts = spec.split(":")
        if parts[0] == "burst":
            n = int(parts[1])
            seconds = float(parts[2]) if len(parts) > 2 else 0.0
            return {"name": name, "kind": "burst", "count": n, "seconds": seconds}
        if parts[0] == "rate":
            rate, seconds = float(parts[1]), float(parts[2])
            return {"name": name, "kind": "rate", "rate": rate, "seconds": seconds,
                    "count": int(round(rate * seconds))}
    except (ValueError, IndexError):
        pass
    raise argparse.ArgumentTypeError(
        f"bad phase {text!r}: NAME=burst:N[:SECONDS] or NAME=rate:PER_SECOND:SECONDS")


def schedule(phases):
    """(phase index, offset in seconds from the schedule's start) for every connection."""
    out, start = [], 0.0
    for i, ph in enumerate(phases):
        ph["start"] = start
        if ph["kind"] == "burst":
            out += [(i, start)] * ph["count"]
        else:
            step = 1.0 / ph["rate"]
            out += [(i, start + k * step) for k in range(ph["count"])]
        start += ph["seconds"]
    return out


def expected_response():
    # Kept in step with countd.py, which the bench starts beside this.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import countd  # noqa: E402
    return countd.RESPONSE


def control(path, command):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
        s.sendall(command.encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        return json.loads(buf)
    finally:
        s.close()


async def one(host, port, t_sched, timeout, expected, rec):
    """One connection, started at loop time `t_sched`; fills in `rec`."""
    loop = asyncio.get_running_loop()
    delay = t_sched - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)
    rec["late"] = loop.time() - t_sched
    writer = None
    stage = "connect"
    try:
        async with asyncio.timeout(timeout - (loop.time() - t_sched)):
            reader, writer = await asyncio.open_connection(host, port)
            stage = "exchange"
            rec["connect_s"] = loop.time() - t_sched
            writer.write(REQUEST)
            await writer.drain()
            data = await reader.read(-1)
        if data == expected:
            rec["outcome"] = "ok"
        elif len(data) < len(expected) and expected.startswith(data):
            rec["outcome"] = "short"
            rec["bytes"] = len(data)
        else:
            rec["outcome"] = "bad"
            rec["bytes"] = len(data)
    except TimeoutError:
        rec["outcome"] = "timeout"
    except (ConnectionResetError, BrokenPipeError):
        rec["outcome"] = "reset" if stage == "exchange" else "connect"
    except OSError as e:
        rec["outcome"] = "connect" if stage == "connect" else "reset"
        rec["error"] = e.strerror or str(e)
    finally:
        rec["t"] = loop.time() - t_sched
        if writer is not None:
            writer.close()


def pct(sorted_xs, q):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_xs:
        return None
    k = max(0, min(len(sorted_xs) - 1, int(-(-q * len(sorted_xs) // 100)) - 1))
    return sorted_xs[k]


def us(x):
    return None if x is None else round(x * 1e6)


def phase_summary(ph, recs, args):
    oks = sorted(r["t"] for r in recs if r["outcome"] == "ok")
    counts = {k: 0 for k in OUTCOMES}
    for r in recs:
        counts[r["outcome"]] += 1
    failed_t = sorted(r["t"] for r in recs if r["outcome"] != "ok")
    out = {
        "name": ph["name"], "kind": ph["kind"], "count": len(recs), "start_s": ph["start"],
        "seconds": ph["seconds"], "rate": ph.get("rate"),
        "outcomes": counts, "failed": len(recs) - counts["ok"],
        "p50_us": us(pct(oks, 50)), "p90_us": us(pct(oks, 90)), "p99_us": us(pct(oks, 99)),
        "max_us": us(oks[-1] if oks else None), "min_us": us(oks[0] if oks else None),
        # When the failures happened, from their scheduled start: a refusal at once and a queue
        # timeout look alike in the counts and not here.
        "failed_p50_us": us(pct(failed_t, 50)), "failed_max_us": us(failed_t[-1] if failed_t else None),
        "late_max_us": us(max((r["late"] for r in recs), default=None)),
        "errors": sorted({r["error"] for r in recs if r.get("error")})[:5],
    }
    if ph["kind"] == "burst":
        # Completed connections by time since the burst: the drain curve.
        step = args.curve_step
        horizon = max([r["t"] for r in recs] + [0.0])
        n_bins = min(int(horizon / step) + 2, 2000)
        curve, k = [], 0
        for b in range(n_bins):
            edge = (b + 1) * step
            while k < len(oks) and oks[k] <= edge:
                k += 1
            curve.append(k)
        out["curve"] = {"step_s": step, "completed": curve}
    else:
        # Completion time and failures by scheduled start, in bins.
        step = args.bin_step
        n_bins = max(1, int(round(ph["seconds"] / step)))
        bins = [[] for _ in range(n_bins)]
        fails = [0] * n_bins
        for r in recs:
            b = min(int((r["sched"] - ph["start"]) / step), n_bins - 1)
            if r["outcome"] == "ok":
                bins[b].append(r["t"])
            else:
                fails[b] += 1
        series = {"step_s": step, "p50_us": [], "max_us": [], "failed": fails,
                  "count": [len(x) + f for x, f in zip(bins, fails)]}
        for x in bins:
            x.sort()
            series["p50_us"].append(us(pct(x, 50)))
            series["max_us"].append(us(x[-1] if x else None))
        out["series"] = series
    return out


def recovery(ph, recs, threshold_s):
    """Seconds from the phase's start until every later connection of the phase succeeded
    within `threshold_s`; None when that never held for the phase's last second."""
    step = 1.0 / ph["rate"] if ph.get("rate") else 0.0
    bad = [r["sched"] for r in recs if r["outcome"] != "ok" or r["t"] > threshold_s]
    if not bad:
        return 0.0, True
    at = max(bad) - ph["start"] + step
    return at, at <= ph["seconds"] - 1.0


async def run(args):
    loop = asyncio.get_running_loop()
    expected = expected_response()
    plan = schedule(args.phase)
    recs = [{"phase": i, "sched": off} for i, off in plan]
    t0 = loop.time() + 0.2
    wall0 = time.time() + 0.2
    # The backend's counters start with the schedule; each later phase resets them again.
    backend = []
    kill = {}

    if args.control:
        control(args.control, "reset")

    async def phase_marks():
        for ph in args.phase[1:]:
            delay = t0 + ph["start"] - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if args.control:
                backend.append(control(args.control, "reset"))

    async def killer():
        await asyncio.sleep(max(0.0, t0 + args.kill_after - loop.time()))
        kill["at_s"] = round(loop.time() - t0, 3)
        try:
            os.kill(args.kill, signal.SIGKILL)
            kill["signalled"] = True
        except OSError as e:
            kill["signalled"] = False
            kill["error"] = str(e)

    marks = asyncio.create_task(phase_marks())
    killing = asyncio.create_task(killer()) if args.kill else None
    tasks = [asyncio.create_task(one(args.host, args.port, t0 + r["sched"], args.timeout,
                                     expected, r)) for r in recs]
    await asyncio.gather(*tasks)
    await marks
    if killing:
        await killing
    if args.control:
        backend.append(control(args.control, "stats"))
    elapsed = loop.time() - t0

    phases = []
    for i, ph in enumerate(args.phase):
        mine = [r for r in recs if r["phase"] == i]
        s = phase_summary(ph, mine, args)
        if backend:
            s["backend"] = backend[i]
        if ph["kind"] == "rate" and i > 0:
            at, ok = recovery(ph, mine, args.recover_ms / 1000)
            s["recovery_s"] = round(at, 3)
            s["recovered"] = ok
        phases.append(s)
    return {"started_unix": round(wall0, 3), "elapsed_s": round(elapsed, 3),
            "timeout_s": args.timeout, "recover_ms": args.recover_ms,
            "kill": kill or None, "phases": phases}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--phase", type=parse_phase, action="append", required=True)
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds a connection may take from its scheduled start (default 30)")
    p.add_argument("--control", help="countd.py's control socket")
    p.add_argument("--kill", type=int, help="PID to SIGKILL during the run")
    p.add_argument("--kill-after", type=float, default=1.0)
    p.add_argument("--recover-ms", type=float, default=100.0,
                   help="completion time that counts as recovered (default 100: twice the "
                        "backend's 50 ms)")
    p.add_argument("--curve-step", type=float, default=0.1)
    p.add_argument("--bin-step", type=float, default=0.25)
    args = p.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
