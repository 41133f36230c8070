"""The contenders and the backend they share: their configurations and how each is started.

Every proxy gets the same thread count (one), the same CPU, the same listen backlog and the same
open-file limit (the bench's own, which they inherit); the configurations live in templates/ so
that an operator can read exactly what was measured.
"""

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
        self.load_cpu = load_cpu
        self.proxy_cpu = proxy_cpu
        self.backend_cpu = backend_cpu
        self.nofile = nofile
        self.levee = levee
        self.stream_module = stream_module

    def values(self, **extra):
        v = {
            "dir": self.dir,
            "backlog": BACKLOG,
            "backend_port": self.backend_port,
            "nofile": self.nofile,
            # Each proxied connection holds two descriptors; leave room for the listener and logs.
            "worker_connections": max(self.nofile - 64, 1024),
            "maxconn": max((self.nofile - 200) // 2, 100),
            "stream_module": self.stream_module,
        }
        v.update(extra)
        return v


def cpu_mask(cpu):
    """nginx's worker_cpu_affinity bit string for one CPU (`10` is CPU 1)."""
    return "1" + "0" * cpu


def write_config(env, template_name, file_name, values):
    """Fills in a template and writes it into the run's directory; returns (text, path)."""
    text = render(template_name, values)
    path = os.path.join(env.dir, file_name)
    with open(path, "w") as f:
        f.write(text)
    return text, path


def nginx_argv(env, cpu, name, config_path):
    """nginx in the foreground on `cpu`, its early errors in `<name>.err` in the run's directory."""
    return pinned(
        cpu, "nginx", "-p", env.dir, "-e", os.path.join(env.dir, f"{name}.err"), "-c", config_path
    )


class Contender:
    """One way of serving the load: `direct` to the backend, or one of the proxies."""

    def __init__(self, key, label, port_offset, color):
        self.key = key
        self.label = label
        self.port_offset = port_offset
        self.color = color
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
    def __init__(self, key="levee", label="levee", port_offset=1, color="#d95f02",
                 sched_policy="batch"):
        super().__init__(key, label, port_offset, color)
        self.sched_policy = sched_policy

    def prepare(self, env):
        self.config_text, path = write_config(
            env, "levee.conf", f"{self.key}.conf",
            env.values(cpu=env.proxy_cpu, port=self.port(env), sched_policy=self.sched_policy),
        )
        self.argv = pinned(env.proxy_cpu, env.levee, "run", "-c", path)
        return self.argv

    def describe(self):
        return (f"levee, one forwarder (`engine.cores` = the proxy CPU), "
                f"`engine.sched_policy = {self.sched_policy}`")


class HAProxy(Contender):
    def __init__(self):
        super().__init__("haproxy", "HAProxy", 2, "#1f77b4")

    def prepare(self, env):
        self.config_text, path = write_config(
            env, "haproxy.cfg", "haproxy.cfg", env.values(cpu=env.proxy_cpu, port=self.port(env))
        )
        # -db: stay in the foreground, so the process we started is the one that relays.
        self.argv = pinned(env.proxy_cpu, "haproxy", "-db", "-f", path)
        return self.argv

    def describe(self):
        return "HAProxy `mode tcp`, `nbthread 1`, `cpu-map` to the proxy CPU"


class NginxStream(Contender):
    def __init__(self):
        super().__init__("nginx", "nginx stream", 3, "#2ca02c")

    def prepare(self, env):
        self.config_text, path = write_config(
            env, "nginx-stream.conf", "nginx-stream.conf",
            env.values(cpu_mask=cpu_mask(env.proxy_cpu), port=self.port(env)),
        )
        self.argv = nginx_argv(env, env.proxy_cpu, "nginx-stream", path)
        return self.argv

    def describe(self):
        return "nginx `stream` module, `worker_processes 1`, `worker_cpu_affinity` to the proxy CPU"


ALL = [Direct(), Levee(), HAProxy(), NginxStream(),
       # Only on request (--contenders): levee with the forwarder's default scheduling policy
       # switched back to SCHED_OTHER, to measure what SCHED_BATCH is worth on this layout.
       Levee("levee_normal", "levee, sched normal", 4, "#a6761d", sched_policy="normal")]
BY_KEY = {c.key: c for c in ALL}
DEFAULT = ["direct", "levee", "haproxy", "nginx"]


class Backend:
    """The small static nginx every contender forwards to (and `direct` hits)."""

    SMALL_BODY = b"levee bench: a small static response.\n"

    def __init__(self):
        self.config_text = None
        self.argv = None
        self.proc = None
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
            "/big.bin": ((bulk_bytes >> 20) << 20, h.hexdigest()),
        }
        self.config_text, path = write_config(
            env, "backend-nginx.conf", "backend.conf",
            env.values(cpu_mask=cpu_mask(env.backend_cpu), port=env.backend_port),
        )
        self.argv = nginx_argv(env, env.backend_cpu, "backend", path)
        return self.argv

    def start(self, env, procs):
        self.proc = procs.start("backend", self.argv, os.path.join(env.dir, "backend.log"))
        wait_listening(self.proc, env.backend_port)
        return self.proc

    def check(self):
        if self.proc is None or not self.proc.alive():
            raise BenchError(
                f"the backend nginx has exited; its log ({self.proc.log_path}) ends with:\n"
                f"{self.proc.log_tail()}"
            )
