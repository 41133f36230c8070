"""Processes the bench starts, and what /proc says about them.

Every process is started in a session of its own, so that stopping it also stops the children it
forked (nginx's workers). The registry of started processes is what the cleanup walks: the bench
never signals a process it did not start.
"""

import errno
import os
import resource
import signal
import socket
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_list(cpus):
    """taskset's form of one CPU or a list of them ("1", "1,2,3")."""
    if isinstance(cpus, int):
        return str(cpus)
    return ",".join(str(c) for c in cpus)


def pinned(cpus, *argv):
    """The command line `argv` run on one CPU or a list of them."""
    return ["taskset", "-c", cpu_list(cpus), *argv]


class BenchError(Exception):
    """A failure the user must see and act on; the bench stops with its message."""


class Started:
    """One process the bench started, with its log file."""

    def __init__(self, name, argv, log_path, popen):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.popen = popen

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def log_tail(self, lines=15):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


class Processes:
    """Starts processes and stops every one of them, whatever happens."""

    def __init__(self):
        self.running = []

    def start(self, name, argv, log_path, cwd=None):
        log = open(log_path, "ab")
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as e:
            raise BenchError(f"cannot start {name} ({argv[0]}): {e}") from e
        finally:
            log.close()
        p = Started(name, argv, log_path, popen)
        self.running.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, timeout=15.0):
        """Asks `p` to stop with `sig`; kills its session if it has not exited by `timeout`.

        Returns its exit status, or None when it had to be killed."""
        status = None
        if p.alive():
            try:
                p.popen.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                status = p.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                status = None
        else:
            status = p.popen.returncode
        # Whatever is left in its session (a worker that outlived its master) goes too.
        for pid in session_members(p.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if p.alive():
            p.popen.kill()
            p.popen.wait()
        if p in self.running:
            self.running.remove(p)
        return status

    def stop_all(self):
        for p in list(reversed(self.running)):
            self.stop(p, timeout=5.0)


def proc_stats():
    """(pid, fields after the command name) of every process in /proc/PID/stat; processes that
    exit while being read are skipped."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                yield int(entry), f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue


def session_members(sid):
    """Processes in session `sid` (the bench starts each process as a session leader, so these
    are it and what it forked)."""
    return [pid for pid, fields in proc_stats() if int(fields[3]) == sid]


def tree(pid):
    """`pid` and every descendant of it, from /proc."""
    children = {}
    for child, fields in proc_stats():
        children.setdefault(int(fields[1]), []).append(child)
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid):
    """utime + stime of `pid` and its descendants, in seconds.

    /proc/PID/stat fields 14 and 15 already cover every thread of a process, live or exited; the
    descendants are nginx's worker processes."""
    ticks = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def threads(pid):
    """The /proc directory of every live thread of `pid` and its descendants
    (/proc/PID/task/TID)."""
    for p in tree(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            yield f"/proc/{p}/task/{tid}"


def context_switches(pid):
    """Voluntary and involuntary context switches of every live thread of `pid` and its
    descendants, from /proc/PID/task/TID/status."""
    total = 0
    for task in threads(pid):
        try:
            with open(f"{task}/status") as f:
                total += sum(int(line.split()[-1]) for line in f if "ctxt_switches" in line)
        except (OSError, ValueError):
            continue
    return total


def cpu_ns(pid):
    """On-CPU time of every live thread of `pid` and its descendants, in nanoseconds, from
    /proc/PID/task/TID/schedstat: fine enough for a handful of connections, where the clock
    ticks of /proc/PID/stat (10 ms) are not. Threads that have exited are not in it, so it is
    for short windows over processes that keep their threads (the connection-cost probe); None
    where the kernel has no schedstat."""
    total, seen = 0, False
    for task in threads(pid):
        try:
            with open(f"{task}/schedstat") as f:
                total += int(f.read().split()[0])
                seen = True
        except (OSError, ValueError, IndexError):
            continue
    return total if seen else None


def memory_kb(pid):
    """Memory of `pid` and its descendants, in KiB: PSS from /proc/PID/smaps_rollup, summed, and
    VmRSS and VmHWM from /proc/PID/status, summed.

    PSS is the figure to compare: it charges each process its share of the pages it shares, so
    nginx's master and worker (or levee and its worker process) are not charged twice for the
    same pages, as summed RSS and HWM are. The kernel keeps no peak PSS; PSS is read while the
    process still holds what the measurement made it allocate."""
    rss = hwm = pss = 0
    pss_ok = True
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
        except OSError:
            continue
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                        break
        except OSError:
            pss_ok = False
    return {"rss_kb": rss, "hwm_kb": hwm, "pss_kb": pss if pss_ok else None}


POLICY_NAMES = {os.SCHED_OTHER: "normal", os.SCHED_BATCH: "batch", os.SCHED_IDLE: "idle",
                os.SCHED_FIFO: "fifo", os.SCHED_RR: "rr"}


def sched_policies(pid):
    """The scheduling policy of every thread of `pid` and its descendants, counted by thread
    name and policy ("haproxy batch": 1): the record that a like-for-like contender ran as
    configured."""
    out = {}
    for task in threads(pid):
        try:
            with open(f"{task}/comm") as f:
                comm = f.read().strip()
            policy = os.sched_getscheduler(int(os.path.basename(task)))
        except OSError:
            continue
        key = f"{comm} {POLICY_NAMES.get(policy, policy)}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def own_cpu_seconds():
    """CPU time of this script and of the children it has waited for (wrk runs)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def machine_cpu():
    """Jiffies from /proc/stat: total and busy for the machine, steal separately."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return {"total": sum(fields[:8]), "busy": busy, "steal": steal}


def machine_cpu_delta(before, after):
    total = max(after["total"] - before["total"], 1)
    return {
        "busy": round((after["busy"] - before["busy"]) / total, 3),
        "steal": round((after["steal"] - before["steal"]) / total, 3),
    }


NOISY_COMMANDS = ("cargo", "rustc", "cc1", "cc1plus", "ld", "rust-lld", "clippy-driver", "rustdoc")


def noisy_processes():
    """Names of compiler-like processes running now, which would load the machine."""
    seen = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm in NOISY_COMMANDS:
            seen[comm] = seen.get(comm, 0) + 1
    return seen


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def port_free(port, host="127.0.0.1"):
    """True when nothing listens on host:port (a socket in TIME_WAIT does not count)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES):
            return False
        raise
    finally:
        s.close()


def listener_of(port):
    """Best-effort description of what listens on port, for the error message."""
    try:
        out = subprocess.run(
            ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return out or "unknown process"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown process"


def wait_listening(p, port, timeout=10.0, host="127.0.0.1"):
    """Waits until `port` accepts connections while `p` stays alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not p.alive():
            raise BenchError(
                f"{p.name} exited with status {p.popen.returncode} before listening on "
                f"{host}:{port}; its log ({p.log_path}) ends with:\n{p.log_tail()}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise BenchError(
        f"{p.name} did not listen on {host}:{port} within {timeout:.0f}s; its log "
        f"({p.log_path}) ends with:\n{p.log_tail()}"
    )


def wait_path(p, path, timeout=10.0):
    """Waits until `path` exists (a control socket) while `p` stays alive."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if not p.alive():
            raise BenchError(f"{p.name} exited with status {p.popen.returncode} before creating "
                             f"{path}; its log ({p.log_path}) ends with:\n{p.log_tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"{p.name} did not create {path} within {timeout:.0f}s; its log "
                             f"({p.log_path}) ends with:\n{p.log_tail()}")
        time.sleep(0.005)


def established_to(port):
    """ESTABLISHED TCP connections on loopback whose local port is `port` (IPv4)."""
    want = f":{port:04X}"
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split(None, 4)
            if fields[1].endswith(want) and fields[3] == "01":
                n += 1
    return n
