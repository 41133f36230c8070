"""What the run needs before it starts: the peers installed, levee built, and the facts recorded
next to every figure (machine, commit, versions)."""

import glob
import os
import platform
import re
import shutil
import subprocess

from procs import BenchError

PACKAGES = ["wrk", "haproxy", "nginx", "libnginx-mod-stream"]
STREAM_MODULE_GLOBS = [
    "/usr/lib/nginx/modules/ngx_stream_module.so",
    "/usr/lib*/nginx/modules/ngx_stream_module.so",
    "/usr/share/nginx/modules/ngx_stream_module.so",
]


def stream_module():
    for pattern in STREAM_MODULE_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def missing_tools():
    missing = [p for p in ("wrk", "haproxy", "nginx") if shutil.which(p) is None]
    if stream_module() is None:
        missing.append("libnginx-mod-stream")
    if shutil.which("taskset") is None:
        missing.append("util-linux")
    return missing


def install(log):
    """Installs the peers with apt-get when any is missing; stops the system nginx the package
    may have started (it is never one of ours: ours use their own configuration files)."""
    missing = missing_tools()
    if not missing:
        return []
    if shutil.which("apt-get") is None:
        raise BenchError(f"missing {', '.join(missing)} and there is no apt-get to install them")
    if os.geteuid() != 0:
        raise BenchError(
            f"missing {', '.join(missing)}; install them with\n"
            f"  sudo apt-get install -y {' '.join(PACKAGES)}"
        )
    log(f"installing {' '.join(PACKAGES)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", *PACKAGES]):
        r = subprocess.run(argv, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"{' '.join(argv)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    stop_system_nginx(log)
    still = missing_tools()
    if still:
        raise BenchError(f"still missing after apt-get install: {', '.join(still)}")
    return missing


def stop_system_nginx(log):
    """The Debian package starts nginx on port 80 with /etc/nginx/nginx.conf; stop that service
    only (through systemd, or through its own pid file), never any other nginx."""
    if shutil.which("systemctl"):
        r = subprocess.run(["systemctl", "is-active", "--quiet", "nginx"])
        if r.returncode == 0:
            log("stopping the system nginx service the package started")
            subprocess.run(["systemctl", "stop", "nginx"])
            return
    if os.path.exists("/run/nginx.pid") and os.path.exists("/etc/nginx/nginx.conf"):
        log("stopping the system nginx the package started (/run/nginx.pid)")
        subprocess.run(["nginx", "-c", "/etc/nginx/nginx.conf", "-s", "quit"],
                       capture_output=True)


def build_levee(repo, log):
    if shutil.which("cargo") is None:
        raise BenchError("cargo is not on PATH: install Rust (https://rustup.rs) to build levee, "
                         "or pass --levee PATH to a levee binary")
    log("building levee: cargo build --release")
    r = subprocess.run(["cargo", "build", "--release", "--bin", "levee"], cwd=repo,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"cargo build --release failed:\n{r.stderr[-4000:]}")
    path = os.path.join(repo, "target", "release", "levee")
    if not os.access(path, os.X_OK):
        raise BenchError(f"cargo build succeeded but {path} is not there")
    return path


def first_line(argv):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (r.stdout + r.stderr).strip()
    return text.splitlines()[0] if text else None


def versions(levee):
    return {
        "levee": first_line([levee, "--version"]),
        "haproxy": first_line(["haproxy", "-v"]),
        "nginx": first_line(["nginx", "-v"]),
        "wrk": re.sub(r"\s+Copyright.*", "", first_line(["wrk", "-v"]) or ""),
        "python": platform.python_version(),
    }


def machine(cpus_allowed):
    """The machine's facts; `cpus_allowed` is the CPU set the bench was given, read before it
    pinned itself to the load generator's CPU (after that, its own mask says only that)."""
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "nproc": os.cpu_count(),
        "cpus_allowed": sorted(cpus_allowed),
        "cpu_model": model,
        "kernel": platform.release(),
        "mem_gib": round(mem_kb / 1048576, 1) if mem_kb else None,
        "virtualized": virtualization(),
    }


def virtualization():
    try:
        with open("/proc/cpuinfo") as f:
            return "hypervisor" in f.read()
    except OSError:
        return None


# The bench's own outputs change with every run; only other changes make the build differ.
OUTPUTS = ("bench/results/", "docs/performance.md", "docs/perf/")
# How `changed` was read; results files without it were written by a parser that stripped the
# first status line's leading space and so cut the first letter off its path (see
# recorded_dirty).
STATUS_FORMAT = "porcelain-v1-z"


def changed_paths(porcelain_z):
    """Paths in `git status --porcelain -z` output, the bench's own outputs left out. Each entry
    is "XY PATH"; a rename or copy is followed by its source path as an entry of its own."""
    entries = porcelain_z.split("\0")
    out, i = [], 0
    while i < len(entries):
        e = entries[i]
        i += 1
        if len(e) < 4:
            continue
        if e[0] in "RC":
            i += 1  # the source path of a rename or copy
        path = e[3:]
        if not path.startswith(OUTPUTS):
            out.append(path)
    return out


def git(repo):
    def out(*args, strip=True):
        r = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
        if r.returncode != 0:
            return None
        return r.stdout.strip() if strip else r.stdout

    changed = changed_paths(out("status", "--porcelain=v1", "-z", strip=False) or "")
    return {
        "commit": out("rev-parse", "HEAD"),
        "short": out("rev-parse", "--short=10", "HEAD"),
        "branch": out("rev-parse", "--abbrev-ref", "HEAD"),
        "subject": out("log", "-1", "--format=%s"),
        "dirty": bool(changed),
        "changed": changed[:20],
        "status_format": STATUS_FORMAT,
    }


def recorded_dirty(g):
    """Whether a results file's build had changes of its own. Files written before
    STATUS_FORMAT lost the first letter of the first changed path ("ocs/perf/bench-cost.svg"),
    so a run whose only changes were the bench's own outputs was marked dirty: read that path
    as it was."""
    changed = list(g.get("changed") or [])
    if g.get("status_format") or not changed:
        return bool(g.get("dirty"))
    if any(changed[0].startswith(p[1:]) for p in OUTPUTS):
        changed = changed[1:]
    return bool(changed)
