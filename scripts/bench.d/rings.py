"""`scripts/bench rings`: the rings microbenchmark (bench/rings.rs) in interleaved rounds, its
criterion estimates summarised into a results file, and the generated part of docs/performance.md's
Rings section written from it.

Each round runs the whole criterion binary once, with LEVEE_RINGS_BENCH_ROUND set so that each
group's contenders start at a different one, and with CRITERION_HOME set to a directory of the
round's own, so that an estimate is never one left over from another run. What is kept of each
benchmark is criterion's `new/estimates.json` (time per iteration, ns: per record for the
throughput groups, per round trip for round_trip): the median with its confidence interval, the
mean and the median absolute deviation. Ratios are taken within a round, peer ÷ levee-rings (above
1: levee-rings is faster), and their median over the rounds is the figure to quote.
"""

import argparse
import datetime
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import procs as pr
import setup
from procs import BenchError
from summary import median

BEGIN = "<!-- rings:begin -->"
END = "<!-- rings:end -->"
DOC = os.path.join("docs", "performance.md")
CARGO_ARGS = ["-p", "levee", "--bench", "rings"]

# The comparisons, per group: (levee-rings benchmark, peer benchmark, what it shows). Each ratio
# is peer time ÷ levee time in the same round. The last of each group compares levee-rings with
# itself: across processes against between threads, what the process boundary costs.
PAIRS = {
    "spsc_throughput": [
        ("levee_rings_processes", "rtrb_threads", "SPSC throughput, processes vs rtrb"),
        ("levee_rings_threads", "rtrb_threads", "SPSC throughput, threads vs rtrb"),
        ("levee_rings_processes", "levee_rings_threads",
         "SPSC throughput, processes vs levee-rings threads"),
    ],
    "mpmc_throughput": [
        ("levee_rings_processes", "crossbeam_array_queue_threads",
         "MPMC throughput, processes vs ArrayQueue"),
        ("levee_rings_threads", "crossbeam_array_queue_threads",
         "MPMC throughput, threads vs ArrayQueue"),
        ("levee_rings_processes", "levee_rings_threads",
         "MPMC throughput, processes vs levee-rings threads"),
    ],
    "round_trip": [
        ("levee_rings_spsc_processes", "rtrb_threads", "SPSC round trip, processes vs rtrb"),
        ("levee_rings_spsc_threads", "rtrb_threads", "SPSC round trip, threads vs rtrb"),
        ("levee_rings_mpmc_processes", "crossbeam_array_queue_threads",
         "MPMC round trip, processes vs ArrayQueue"),
        ("levee_rings_mpmc_threads", "crossbeam_array_queue_threads",
         "MPMC round trip, threads vs ArrayQueue"),
        ("levee_rings_spsc_processes", "levee_rings_spsc_threads",
         "SPSC round trip, processes vs levee-rings threads"),
    ],
}
UNITS = {"spsc_throughput": "ns/record", "mpmc_throughput": "ns/record", "round_trip": "ns"}


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="scripts/bench rings",
        description="The rings microbenchmark (bench/rings.rs) in interleaved rounds, "
                    "summarised into bench/results/<date>-<commit>-rings.json.")
    p.add_argument("--rounds", type=int, default=7,
                   help="rounds, each a whole run of the criterion binary (default 7; about "
                        "45 s each)")
    p.add_argument("--from-criterion", metavar="DIR", nargs="+",
                   help="summarise existing criterion output directories instead of running "
                        "(each DIR holds GROUP/BENCH/new/estimates.json; one round each, in order)")
    p.add_argument("--out", help="results JSON path (default bench/results/<date>-<commit>-rings"
                                 "[-<label>].json)")
    p.add_argument("--label", help="a word added to the results file's name after `rings`")
    p.add_argument("--no-docs", action="store_true",
                   help="do not rewrite the generated part of docs/performance.md's Rings section")
    p.add_argument("--report", metavar="JSON",
                   help="only rewrite that part of docs/performance.md from a rings results file")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.label and not all(ch.isalnum() or ch == "-" for ch in args.label):
        p.error("--label: letters, digits and dashes only")
    return args


# ---------------------------------------------------------------------------------------------
# Reading criterion's output


def read_estimates(home):
    """{group: {bench: estimate}} from a criterion output directory (CRITERION_HOME, or
    target/criterion): every GROUP/BENCH/new/estimates.json, named by its benchmark.json."""
    out = {}
    for path in sorted(glob.glob(os.path.join(home, "*", "*", "new", "estimates.json"))):
        new = os.path.dirname(path)
        try:
            with open(os.path.join(new, "benchmark.json")) as f:
                bid = json.load(f)
            group, bench = bid["group_id"], bid["function_id"]
        except (OSError, KeyError, ValueError):
            parts = new.split(os.sep)
            group, bench = parts[-3], parts[-2]
        with open(path) as f:
            e = json.load(f)
        med = e["median"]
        out.setdefault(group, {})[bench] = {
            "median_ns": med["point_estimate"],
            "median_ci_ns": [med["confidence_interval"]["lower_bound"],
                             med["confidence_interval"]["upper_bound"]],
            "mean_ns": e["mean"]["point_estimate"],
            "median_abs_dev_ns": e["median_abs_dev"]["point_estimate"],
        }
    return out


# ---------------------------------------------------------------------------------------------
# Running


def cargo(repo, args, log_path, env=None, timeout=None):
    """cargo in the repository, its output appended to `log_path`."""
    r = subprocess.run(["cargo", *args], cwd=repo, env=env, capture_output=True, text=True,
                       timeout=timeout)
    with open(log_path, "a") as f:
        f.write(f"$ cargo {' '.join(args)}\n{r.stdout}\n{r.stderr}\n")
    return r


def run_rounds(args, repo, log):
    """Builds the bench binary, then runs it once per round; the rounds' estimates."""
    if shutil.which("cargo") is None:
        raise BenchError("cargo is not on PATH: install Rust (https://rustup.rs) to build the "
                         "rings benchmark")
    tmp = tempfile.mkdtemp(prefix="levee-rings-bench-")
    log_path = os.path.join(tmp, "cargo.log")
    log("building: cargo bench --no-run " + " ".join(CARGO_ARGS))
    r = cargo(repo, ["bench", "--no-run", *CARGO_ARGS], log_path)
    if r.returncode != 0:
        raise BenchError(f"cargo bench --no-run failed (log: {log_path}):\n{r.stderr[-4000:]}")
    rounds = []
    try:
        for n in range(1, args.rounds + 1):
            home = os.path.join(tmp, f"criterion-{n}")
            env = dict(os.environ, CRITERION_HOME=home, LEVEE_RINGS_BENCH_ROUND=str(n))
            before = {"loadavg": pr.loadavg()[0], "noisy": pr.noisy_processes()}
            t0 = time.monotonic()
            r = cargo(repo, ["bench", *CARGO_ARGS, "--", "--noplot"], log_path, env=env,
                      timeout=900)
            if r.returncode != 0:
                raise BenchError(f"round {n}: the rings benchmark failed (log: {log_path}):\n"
                                 f"{r.stderr[-4000:]}")
            est = read_estimates(home)
            rounds.append({"round": n, "estimates": est, "seconds": round(time.monotonic() - t0, 1),
                           "loadavg_before": before["loadavg"], "loadavg_after": pr.loadavg()[0],
                           "noisy_before": before["noisy"]})
            log(f"round {n}/{args.rounds}: " + "; ".join(
                f"{g}/{b} {e['median_ns']:.1f} ns" for g, bs in est.items() for b, e in bs.items()))
    except BaseException:
        print(f"rings: logs kept in {tmp}", file=sys.stderr)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return rounds


def summarize(rounds):
    """Per pair: the ratio (peer ÷ levee) in each round and its median; per benchmark: the
    median over rounds of criterion's median."""
    raw = {}
    for rnd in rounds:
        for g, bs in rnd["estimates"].items():
            for b, e in bs.items():
                raw.setdefault(g, {}).setdefault(b, []).append(e["median_ns"])
    benches = {g: {b: {"median_ns": median(xs), "min_ns": min(xs), "max_ns": max(xs),
                       "rounds": len(xs)} for b, xs in bs.items()} for g, bs in raw.items()}
    pairs = []
    for g, ps in PAIRS.items():
        for levee, peer, what in ps:
            per_round = []
            for rnd in rounds:
                e = rnd["estimates"].get(g, {})
                if levee in e and peer in e and e[levee]["median_ns"]:
                    per_round.append(round(e[peer]["median_ns"] / e[levee]["median_ns"], 4))
            if per_round:
                pairs.append({"group": g, "levee": levee, "peer": peer, "what": what,
                              "ratio": median(per_round), "ratio_rounds": per_round,
                              "faster_rounds": sum(1 for x in per_round if x > 1.0)})
    return {"benchmarks": benches, "pairs": pairs}


def results_path(args, repo, git, stamp):
    label = f"-{args.label}" if args.label else ""
    if args.out:
        return os.path.abspath(args.out)
    return os.path.join(repo, "bench", "results",
                        f"{stamp}-{git['short'] or 'nogit'}-rings{label}.json")


def main(argv, repo):
    args = parse_args(argv)
    if args.report:
        rel = os.path.relpath(os.path.abspath(args.report), repo)
        with open(os.path.join(repo, rel)) as f:
            result = json.load(f)
        print(f"wrote {os.path.relpath(write_doc(repo, result, rel), repo)}")
        return 0
    cpus_allowed = sorted(os.sched_getaffinity(0))
    git = setup.git(repo)
    started = datetime.datetime.now(datetime.timezone.utc)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    if args.from_criterion:
        rounds = [{"round": i + 1, "estimates": read_estimates(d), "from": d}
                  for i, d in enumerate(args.from_criterion)]
        empty = [d for d, r in zip(args.from_criterion, rounds) if not r["estimates"]]
        if empty:
            raise BenchError(f"no GROUP/BENCH/new/estimates.json under {', '.join(empty)}")
        command = None
    else:
        if len(cpus_allowed) < 2:
            print(f"note: only CPU {cpus_allowed} is available; the two sides of every "
                  "benchmark share it, and the figures say little about a ring between CPUs",
                  file=sys.stderr)
        rounds = run_rounds(args, repo, print)
        command = "scripts/bench rings " + " ".join(argv)
    finished = datetime.datetime.now(datetime.timezone.utc)
    result = {
        "schema": 1,
        "kind": "rings",
        "command": command.strip() if command else None,
        "source": "criterion output directories: " + ", ".join(args.from_criterion)
                  if args.from_criterion else "run by the command",
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "git": git,
        "machine": setup.machine(cpus_allowed),
        "versions": {"rustc": setup.first_line(["rustc", "-V"]),
                     "cargo": setup.first_line(["cargo", "-V"])},
        "settings": {
            "rounds": len(rounds),
            "bench": "bench/rings.rs (cargo bench " + " ".join(CARGO_ARGS) + " -- --noplot)",
            "criterion": "sample_size 20, warm_up 0.5 s, measurement 2 s (bench/rings.rs)",
            "layout": "the measuring side pinned to CPU 0, the other side (a child process or a "
                      "thread) to CPU 1 when the machine has two CPUs online; both poll",
            "rotation": "each round starts each group at its contender number (round - 1) "
                        "modulo the group's size (LEVEE_RINGS_BENCH_ROUND)",
            "ratio": "peer time ÷ levee-rings time in the same round (above 1: levee-rings "
                     "faster); the median over rounds is the figure to quote",
        },
        "rounds": rounds,
    }
    result["summary"] = summarize(rounds)
    out_path = results_path(args, repo, git, stamp)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
        f.write("\n")
    rel = os.path.relpath(out_path, repo)
    print(f"results: {rel}")
    if not args.no_docs:
        print(f"wrote {os.path.relpath(write_doc(repo, result, rel), repo)}")
    print(console(result))
    return 0


# ---------------------------------------------------------------------------------------------
# Reporting


def console(result):
    lines = ["", "rings (peer ÷ levee-rings per round, median; above 1: levee-rings faster):"]
    for p in result["summary"]["pairs"]:
        lines.append(f"  {p['what']:52s} {p['ratio']:.2f}x  (rounds "
                     + ", ".join(f"{x:.2f}" for x in p["ratio_rounds"]) + ")")
    return "\n".join(lines)


def markdown(result, rel):
    s, m, g = result["summary"], result["machine"], result["git"]
    n = result["settings"]["rounds"]
    how = (f"`{result['command']}`" if result.get("command")
           else f"summarised from {result.get('source')}")
    L = [BEGIN,
         f"<!-- Generated by scripts/bench rings from {rel}; change scripts/bench.d/rings.py, "
         "not this block. -->", "",
         f"From [{rel}](../{rel}): {n} rounds ({how}), commit `{g['short']}`"
         + (" (with uncommitted changes)" if setup.recorded_dirty(g) else "")
         + f", {m['nproc']} CPUs ({m['cpu_model']}), Linux {m['kernel']}. Each ratio is peer "
         "time ÷ levee-rings time within a round (above 1: levee-rings faster); the median of "
         "the rounds, then each round. The rows \"processes vs levee-rings threads\" compare "
         "levee-rings with itself: between threads ÷ across processes, so below 1 is what the "
         "process boundary costs.", "",
         "| comparison | median ratio | levee-rings faster in | rounds |",
         "|---|---|---|---|"]
    for p in s["pairs"]:
        L.append(f"| {p['what']} | **{p['ratio']:.2f}×** | {p['faster_rounds']} of "
                 f"{len(p['ratio_rounds'])} | "
                 + ", ".join(f"{x:.2f}" for x in p["ratio_rounds"]) + " |")
    L += ["", "Criterion's median per benchmark, median over the rounds (lowest–highest round):",
          "", "| group | benchmark | median | range |", "|---|---|---|---|"]
    for grp, bs in s["benchmarks"].items():
        for b, e in bs.items():
            L.append(f"| {grp} | {b} | {e['median_ns']:.1f} {UNITS.get(grp, 'ns')} | "
                     f"{e['min_ns']:.1f}–{e['max_ns']:.1f} |")
    L += ["", END]
    return "\n".join(L)


def write_doc(repo, result, rel):
    """Replaces the block between the rings markers in docs/performance.md."""
    doc = os.path.join(repo, DOC)
    with open(doc) as f:
        text = f.read()
    b, e = text.find(BEGIN), text.find(END)
    if b < 0 or e < b:
        raise BenchError(f"{DOC} has no {BEGIN} ... {END} block in its Rings section; add one "
                         "where the generated figures belong")
    text = text[:b] + markdown(result, rel) + text[e + len(END):]
    with open(doc, "w") as f:
        f.write(text)
    return doc
