"""The contenders and the backend they share: their configurations and how each is started.

Every proxy gets the same thread count (one, or the cores scenario's count: levee forwarders,
HAProxy `nbthread`, nginx `worker_processes`), the same CPUs, the same listen backlog and the same
open-file limit (the bench's own, which they inherit); the configurations live in templates/ so
that an operator can read exactly what was measured.
"""

import copy
import hashlib
import os
import string

from procs import BenchError, pinned, wait_listening

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")

BACKLOG = 4096


def render(template_name, values):
    with open(os.path.join(TEMPLATES, template_name)) as f:
        text = f.read()
    try:
        return string.Template(text).substitute(values)
    except (KeyError, ValueError) as e:
        raise BenchError(f"template {template_name}: cannot fill in {e}") from e


class Env:
    """What the contenders need to know about this run: paths, ports, CPUs, limits."""

    def __init__(self, *, dir, port_base, load_cpu, proxy_cpu, backend_cpu, nofile, levee,
                 stream_module):
        self.dir = dir
        self.backend_port = port_base
        # The spike scenario's counting backend.
        self.count_port = port_base + 10
        self.load_cpu = load_cpu
        self.proxy_cpu = proxy_cpu
        self.backend_cpu = backend_cpu
        # The CPUs of each part: one each, except in the cores scenario (layout()).
        self.load_cpus = [load_cpu]
        self.proxy_cpus = [proxy_cpu]
        self.backend_cpus = [backend_cpu]
        self.nofile = nofile
        self.levee = levee
        self.stream_module = stream_module

    @property
    def threads(self):
        """Threads (or worker processes) of every proxy: one per proxy CPU."""
        return len(self.proxy_cpus)

    def layout(self, *, load, proxy, backend):
        """This environment with other CPUs: wrk on `load` (one thread each), every proxy with
        one thread or worker on each of `proxy`, the backend with one worker on each of
        `backend`."""
        env = copy.copy(self)
        env.load_cpus, env.proxy_cpus, env.backend_cpus = list(load), list(proxy), list(backend)
        env.load_cpu, env.proxy_cpu, env.backend_cpu = load[0], proxy[0], backend[0]
        return env

    def describe_layout(self):
        return {"load_cpus": self.load_cpus, "proxy_cpus": self.proxy_cpus,
                "backend_cpus": self.backend_cpus, "threads": self.threads}

    def values(self, **extra):
        maxconn = max((self.nofile - 200) // 2, 100)
        v = {
            "dir": self.dir,
            "backlog": BACKLOG,
            "backend_port": self.backend_port,
            "nofile": self.nofile,
            # Each proxied connection holds two descriptors; leave room for the listener and logs.
            "worker_connections": max(self.nofile - 64, 1024),
            "maxconn": maxconn,
            # levee's cap is per forwarder: the same total as HAProxy's maxconn.
            "levee_max_conns": max(maxconn // self.threads, 100),
            "threads": self.threads,
            "workers": self.threads,
            "backend_workers": len(self.backend_cpus),
            "stream_module": self.stream_module,
            "cap": SPIKE["cap"],
            "queue_timeout_s": SPIKE["queue_timeout_s"],
            "extra": "",
            "key": "levee",
        }
        v.update(extra)
        return v


def cpu_mask(cpus):
    """nginx's worker_cpu_affinity: one bit string per worker, one CPU each (`10` is CPU 1)."""
    if isinstance(cpus, int):
        cpus = [cpus]
    return " ".join("1" + "0" * cpu for cpu in cpus)


def haproxy_threads(cpus, port, backlog):
    """HAProxy's `cpu-map` lines, one thread per CPU, and its `bind` lines: one, or with several
    threads one per thread, each its own SO_REUSEPORT socket as levee's forwarders and nginx's
    `reuseport` workers have."""
    maps = "\n".join(f"    cpu-map 1/{i + 1} {cpu}" for i, cpu in enumerate(cpus))
    if len(cpus) == 1:
        binds = f"    bind 127.0.0.1:{port} backlog {backlog}"
    else:
        binds = "\n".join(f"    bind 127.0.0.1:{port} backlog {backlog} thread {i + 1}"
                           for i in range(len(cpus)))
    return {"cpu_map": maps, "binds": binds}


def reuseport(env):
    """nginx's listen option for one socket per worker, where there are several workers."""
    return " reuseport" if env.threads > 1 else ""


def write_config(env, template_name, file_name, values):
    """Fills in a template and writes it into the run's directory; returns (text, path)."""
    text = render(template_name, values)
    path = os.path.join(env.dir, file_name)
    with open(path, "w") as f:
        f.write(text)
    return text, path


def nginx_argv(env, cpus, name, config_path):
    """nginx in the foreground on `cpus` (one CPU or a list; worker_cpu_affinity then pins each
    worker to one of them), its early errors in `<name>.err` in the run's directory."""
    return pinned(
        cpus, "nginx", "-p", env.dir, "-e", os.path.join(env.dir, f"{name}.err"), "-c", config_path
    )


class Contender:
    """One way of serving the load: `direct` to the backend, or one of the proxies."""

    def __init__(self, key, label, port_offset, color, scenarios=None):
        self.key = key
        self.label = label
        self.port_offset = port_offset
        self.color = color
        # The scenarios it takes part in unless --contenders names it; None: every one.
        self.scenarios = scenarios
        self.config_text = None
        self.argv = None

    def port(self, env):
        return env.backend_port + self.port_offset

    @property
    def is_proxy(self):
        return self.key != "direct"

    def prepare(self, env):
        """Writes the configuration file; returns the command line that starts the contender."""
        return None


class Direct(Contender):
    def __init__(self):
        super().__init__("direct", "direct", 0, "#8c8c8c")

    def describe(self):
        return "wrk straight to the backend: the ceiling"


class Levee(Contender):
    """levee from templates/levee.conf; `extra` lines (template text too) are appended, and
    `backend` says which backend it forwards to: the static nginx, or the spike scenario's
    counting one."""

    def __init__(self, key="levee", label="levee", port_offset=1, color="#d95f02",
                 sched_policy="batch", extra=(), backend="static", text=None, cap=None):
        super().__init__(key, label, port_offset, color)
        self.sched_policy = sched_policy
        self.extra = list(extra)
        self.backend = backend
        self.text = text
        # The backend cap its extra lines set, where the bench needs to know it.
        self.cap = cap

    def prepare(self, env):
        values = env.values(cpu=",".join(str(c) for c in env.proxy_cpus), port=self.port(env),
                            key=self.key, sched_policy=self.sched_policy)
        if self.backend == "count":
            values["backend_port"] = env.count_port
        extra = "".join(string.Template(line).substitute(values) + "\n" for line in self.extra)
        values["extra"] = extra
        self.config_text, path = write_config(env, "levee.conf", f"{self.key}.conf", values)
        self.argv = pinned(env.proxy_cpus, env.levee, "run", "-c", path)
        return self.argv

    def ctl_socket(self, env):
        return os.path.join(env.dir, f"{self.key}.sock")

    def describe(self):
        if self.text:
            return self.text
        return (f"levee, one forwarder per proxy CPU (`engine.cores` = the proxy CPUs), "
                f"`engine.sched_policy = {self.sched_policy}`")


class HAProxy(Contender):
    """HAProxy `mode tcp`; with `sched_policy = "batch"` started under `chrt -b 0`, so that its
    thread runs under SCHED_BATCH as levee's forwarders do (engine.sched_policy = batch, levee's
    default): the like-for-like comparison."""

    def __init__(self, key="haproxy", label="HAProxy", port_offset=2, color="#1f77b4",
                 sched_policy="normal", scenarios=None, extra=(), maxconn=None):
        super().__init__(key, label, port_offset, color, scenarios)
        self.sched_policy = sched_policy
        # Lines appended to its `listen` section, and a lower `maxconn` where they need
        # descriptors of their own (scripts/ab's `haproxy_splice`: splicing takes pipes).
        self.extra = list(extra)
        self.maxconn = maxconn

    def prepare(self, env):
        self.config_text, path = write_config(
            env, "haproxy.cfg", f"{self.key}.cfg",
            env.values(port=self.port(env), extra="".join(f"    {line}\n" for line in self.extra),
                       **({"maxconn": self.maxconn} if self.maxconn else {}),
                       **haproxy_threads(env.proxy_cpus, self.port(env), BACKLOG))
        )
        # -db: stay in the foreground, so the process we started is the one that relays.
        argv = ["haproxy", "-db", "-f", path]
        if self.sched_policy == "batch":
            argv = ["chrt", "--batch", "0", *argv]
        self.argv = pinned(env.proxy_cpus, *argv)
        return self.argv

    def describe(self):
        policy = ("SCHED_BATCH (`chrt --batch 0`), as levee's forwarders"
                  if self.sched_policy == "batch" else "the normal policy (SCHED_OTHER)")
        return (f"HAProxy `mode tcp`, `nbthread` = the proxy CPUs, `cpu-map` one thread to each, "
                f"under {policy}")


class NginxStream(Contender):
    def __init__(self):
        super().__init__("nginx", "nginx stream", 3, "#2ca02c")

    def prepare(self, env):
        self.config_text, path = write_config(
            env, "nginx-stream.conf", "nginx-stream.conf",
            env.values(cpu_mask=cpu_mask(env.proxy_cpus), port=self.port(env),
                       reuseport=reuseport(env)),
        )
        self.argv = nginx_argv(env, env.proxy_cpus, "nginx-stream", path)
        return self.argv

    def describe(self):
        return ("nginx `stream` module, `worker_processes` = the proxy CPUs, "
                "`worker_cpu_affinity` one worker to each (`reuseport` with several)")


class HAProxyQueue(Contender):
    """HAProxy in front of the counting backend with `maxconn` on the server: past it,
    connections wait in HAProxy's queue for `timeout queue`."""

    def __init__(self):
        super().__init__("haproxy_queue", "HAProxy maxconn + queue", 13, "#1f77b4")

    def prepare(self, env):
        self.config_text, path = write_config(
            env, "haproxy-spike.cfg", "haproxy-spike.cfg",
            env.values(cpu=env.proxy_cpu, port=self.port(env), backend_port=env.count_port),
        )
        self.argv = pinned(env.proxy_cpu, "haproxy", "-db", "-f", path)
        return self.argv

    def stats_socket(self, env):
        return os.path.join(env.dir, "haproxy-spike.sock")

    def describe(self):
        return (f"HAProxy `mode tcp`, `nbthread 1`, server `maxconn {SPIKE['cap']}`, "
                f"`timeout queue {SPIKE['queue_timeout_s']}s`")


class NginxCap(Contender):
    """nginx stream with `max_conns` on the upstream server; the free nginx has no queue, so a
    connection past the cap is closed."""

    def __init__(self):
        super().__init__("nginx_cap", "nginx stream max_conns", 14, "#2ca02c")

    def prepare(self, env):
        self.config_text, path = write_config(
            env, "nginx-stream-spike.conf", "nginx-stream-spike.conf",
            env.values(cpu_mask=cpu_mask(env.proxy_cpu), port=self.port(env),
                       backend_port=env.count_port),
        )
        self.argv = nginx_argv(env, env.proxy_cpu, "nginx-stream-spike", path)
        return self.argv

    def describe(self):
        return (f"nginx `stream`, `worker_processes 1`, upstream server `max_conns={SPIKE['cap']}` "
                "(no queue in the free version)")


# The spike scenario's shape; scripts/bench may change it (its --spike-* options) before the
# contenders write their configurations.
SPIKE = {"cap": 8, "hold_ms": 50, "queue_timeout_s": 10}

# The overflow tier's lines every spike levee shares: one worker on the proxy's CPU (the same CPU
# budget as the other proxies' one thread), the queue timeout HAProxy gets, and the cap.
_SPIKE_TIER = [
    "overflow.workers = 1",
    "overflow.cores = ${cpu}",
    "overflow.queue_timeout = ${queue_timeout_s}s",
    "pool.bench.backend.b1.max_conns = ${cap}",
]
# The handoff scenario: the overflow tier configured the same way in every contender that has
# one, with the worker on the proxy's CPU.
_TIER = ["overflow.workers = 1", "overflow.cores = ${cpu}"]

# The scenarios where the scheduling policy is compared like for like: HAProxy under SCHED_BATCH
# takes part in these by default (the bulk transfer and the idle connections are not decided by
# how the proxy is woken).
LIKE_FOR_LIKE = ("keepalive", "close", "cores")

ALL = [Direct(), Levee(), HAProxy(),
       HAProxy("haproxy_batch", "HAProxy, SCHED_BATCH", 5, "#6baed6", sched_policy="batch",
               scenarios=LIKE_FOR_LIKE),
       NginxStream(),
       # Only on request (--contenders): levee with the forwarder's default scheduling policy
       # switched back to SCHED_OTHER, to measure what SCHED_BATCH is worth on this layout.
       Levee("levee_normal", "levee, sched normal", 4, "#a6761d", sched_policy="normal"),
       # The spike scenario, in front of the counting backend.
       Levee("levee_queue", "levee overflow=queue", 11, "#d95f02", backend="count",
             extra=_SPIKE_TIER + ["pool.bench.overflow = queue"],
             text="levee, one forwarder, backend `max_conns` = the cap, `overflow = queue` with "
                  "one worker process on the proxy CPU"),
       Levee("levee_reject", "levee overflow=reject", 12, "#7570b3", backend="count",
             extra=_SPIKE_TIER + ["pool.bench.overflow = reject"],
             text="levee, one forwarder, backend `max_conns` = the cap, `overflow = reject`"),
       HAProxyQueue(), NginxCap(),
       # The handoff scenario, in front of the static nginx.
       Levee("levee_noqueue", "levee, no overflow tier", 21, "#7570b3",
             extra=["pool.bench.overflow = reject"],
             text="levee, one forwarder, `pool.bench.overflow = reject`: no overflow tier"),
       Levee("levee_tier", "levee, tier unused", 22, "#d95f02", extra=_TIER,
             text="levee, one forwarder, `overflow = queue` (the default), no cap: the tier is "
                  "there and nothing overflows (levee starts its worker only once a backend has a "
                  "cap)")]
BY_KEY = {c.key: c for c in ALL}
DEFAULT = ["direct", "levee", "haproxy", "haproxy_batch", "nginx"]
# The contender levee is compared with like for like: the same scheduling policy as levee's
# forwarders; the ratios against the others are shown too.
LIKE = "haproxy_batch"
SPIKE_DEFAULT = ["levee_queue", "levee_reject", "haproxy_queue", "nginx_cap"]
HANDOFF = ["levee_noqueue", "levee_tier"]
# The handoff scenario's contenders whose connections go through the worker: one per backend
# cap (scripts/bench --handoff-caps), on ports from +23 up.
HANDOFF_PORT = 23
MAX_HANDOFF_CAPS = 6
_HANDOFF_COLORS = ["#e7298a", "#c51b7d", "#8e0152", "#f1b6da", "#de77ae", "#4d004b"]


def handoff_key(cap):
    return f"levee_handoff{cap}"


def register_handoff(caps):
    """Adds a `levee_handoffN` contender for each cap N (and drops any from before)."""
    global ALL, BY_KEY
    ALL = [c for c in ALL if not c.key.startswith("levee_handoff")]
    for i, cap in enumerate(caps):
        ALL.append(Levee(
            handoff_key(cap), f"levee, handed off (cap {cap})", HANDOFF_PORT + i,
            _HANDOFF_COLORS[i % len(_HANDOFF_COLORS)], cap=cap,
            extra=_TIER + [f"pool.bench.backend.b1.max_conns = {cap}"],
            text=f"levee, one forwarder, `overflow = queue` with one worker on the proxy CPU, "
                 f"backend `max_conns = {cap}`: connections wait and the worker relays them"))
    BY_KEY = {c.key: c for c in ALL}
    return [handoff_key(cap) for cap in caps]


class Backend:
    """The small static nginx every contender forwards to (and `direct` hits)."""

    SMALL_BODY = b"levee bench: a small static response.\n"

    def __init__(self):
        self.config_text = None
        self.argv = None
        self.proc = None
        # The CPUs its workers run on, as configured.
        self.cpus = None
        # path -> (length, SHA-256) of what the backend serves there
        self.files = {}

    def prepare(self, env, bulk_bytes):
        www = os.path.join(env.dir, "www")
        os.makedirs(www, exist_ok=True)
        os.makedirs(os.path.join(env.dir, "tmp"), exist_ok=True)
        with open(os.path.join(www, "index.html"), "wb") as f:
            f.write(self.SMALL_BODY)
        # Real bytes, not a sparse file, so the transfer reads page-cache pages like a real one;
        # a different MiB each time, so that a relay mixing up chunks changes the digest.
        h = hashlib.sha256()
        with open(os.path.join(www, "big.bin"), "wb") as f:
            for _ in range(bulk_bytes >> 20):
                chunk = os.urandom(1 << 20)
                h.update(chunk)
                f.write(chunk)
        self.files = {
            "/": (len(self.SMALL_BODY), hashlib.sha256(self.SMALL_BODY).hexdigest()),
        }
        if bulk_bytes:
            self.files["/big.bin"] = ((bulk_bytes >> 20) << 20, h.hexdigest())
        return self.configure(env)

    def configure(self, env):
        """Writes the configuration for `env`'s backend CPUs (one worker on each); the command
        line that starts it."""
        self.config_text, path = write_config(
            env, "backend-nginx.conf", "backend.conf",
            env.values(cpu_mask=cpu_mask(env.backend_cpus), port=env.backend_port,
                       reuseport=" reuseport" if len(env.backend_cpus) > 1 else ""),
        )
        self.argv = nginx_argv(env, env.backend_cpus, "backend", path)
        self.cpus = list(env.backend_cpus)
        return self.argv

    def start(self, env, procs):
        self.proc = procs.start("backend", self.argv, os.path.join(env.dir, "backend.log"))
        wait_listening(self.proc, env.backend_port)
        return self.proc

    def ensure(self, env, procs):
        """Restarts the backend with one worker on each of `env`'s backend CPUs, unless it
        already runs that way."""
        if self.proc is not None and self.cpus == list(env.backend_cpus) and self.proc.alive():
            return self.proc
        if self.proc is not None:
            procs.stop(self.proc)
        self.configure(env)
        return self.start(env, procs)

    def check(self):
        if self.proc is None or not self.proc.alive():
            raise BenchError(
                f"the backend nginx has exited; its log ({self.proc.log_path}) ends with:\n"
                f"{self.proc.log_tail()}"
            )


class CountBackend:
    """The spike scenario's backend (countd.py): holds each request for a fixed time and counts
    its own concurrent connections, which the load generator reads over a Unix socket."""

    SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "countd.py")

    def __init__(self):
        self.argv = None
        self.proc = None
        self.control = None

    def prepare(self, env, python):
        self.control = os.path.join(env.dir, "countd.sock")
        self.argv = pinned(env.backend_cpu, python, self.SCRIPT, "--port", str(env.count_port),
                           "--hold-ms", f"{SPIKE['hold_ms']:g}", "--control", self.control)
        return self.argv

    def start(self, env, procs):
        self.proc = procs.start("countd", self.argv, os.path.join(env.dir, "countd.log"))
        wait_listening(self.proc, env.count_port)
        return self.proc

    def check(self):
        if self.proc is None or not self.proc.alive():
            raise BenchError(
                f"the counting backend has exited; its log ({self.proc.log_path}) ends with:\n"
                f"{self.proc.log_tail()}"
            )
