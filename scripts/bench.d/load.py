"""The load: wrk for requests and transfers, and a small socket client for idle connections."""

import hashlib
import json
import os
import socket
import subprocess
import time

from procs import BenchError, established_to, pinned

LUA = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "bench", "wrk", "report.lua",
)
MARK = "LEVEE_BENCH "


def wrk_argv(env, port, *, connections, seconds, path="/", close=False, timeout_s=5):
    """wrk with one thread on each of the load CPUs (one, but in the cores scenario)."""
    argv = pinned(
        env.load_cpus, "wrk",
        f"-t{len(env.load_cpus)}", f"-c{connections}", f"-d{seconds:g}s", f"--timeout={timeout_s}s", "--latency",
        "-s", LUA,
    )
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://127.0.0.1:{port}{path}")
    return argv


def run_wrk(argv, seconds):
    """Runs wrk and returns what report.lua printed, parsed."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"wrk did not finish within {seconds + 60:.0f}s: {' '.join(argv)}") from e
    return parse_wrk(argv, out.stdout, out.stderr, out.returncode)


def parse_wrk(argv, stdout, stderr, status):
    """What report.lua printed in wrk's output, parsed."""
    for line in stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise BenchError(
        f"wrk printed no result (status {status}): {' '.join(argv)}\n"
        f"stdout: {stdout[-2000:]}\nstderr: {stderr[-2000:]}"
    )


def error_count(w):
    return sum(w["errors"].values())


class IdleClient:
    """Holds `n` client connections open through a proxy without sending a byte."""

    def __init__(self):
        self.socks = []

    def open(self, port, n, connect_timeout=5.0, deadline_s=None):
        """Opens up to `n` connections; the count that failed (those not tried before
        `deadline_s` seconds had passed count as failed)."""
        failed = 0
        stop = None if deadline_s is None else time.monotonic() + deadline_s
        for i in range(n):
            if stop is not None and time.monotonic() > stop:
                return failed + (n - i)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(connect_timeout)
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                s.close()
                failed += 1
                continue
            s.setblocking(False)
            self.socks.append(s)
        return failed

    def still_open(self):
        """Connections the proxy has not closed (a read finds nothing, not EOF or an error)."""
        alive = 0
        for s in self.socks:
            try:
                if s.recv(1):
                    alive += 1  # a byte from the backend: odd, but the connection is open
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        return alive

    def close(self):
        for s in self.socks:
            s.close()
        self.socks = []


def wait_backend_conns(backend_port, want, timeout=10.0):
    """Waits until the backend holds at least `want` established connections; returns the count.

    A proxy connects to the backend when it accepts a client, but asynchronously: this is how the
    bench knows every idle connection is complete end to end before it reads memory."""
    deadline = time.monotonic() + timeout
    n = established_to(backend_port)
    while n < want and time.monotonic() < deadline:
        time.sleep(0.1)
        n = established_to(backend_port)
    return n


def fetch_digest(port, path, timeout=60.0):
    """GETs `path` with Connection: close; returns (status, body length, SHA-256 of the body)."""
    h = hashlib.sha256()
    head, length, buf = b"", 0, bytearray(1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        view = memoryview(buf)
        while True:
            n = s.recv_into(buf)
            if n == 0:
                break
            if head is not None and b"\r\n\r\n" not in head:
                head += bytes(view[:n])
                if b"\r\n\r\n" in head:
                    head, body = head.split(b"\r\n\r\n", 1)
                    h.update(body)
                    length += len(body)
                    status = int(head.split(b" ", 2)[1])
                    head = None
                continue
            h.update(view[:n])
            length += n
    if head is not None:
        raise BenchError(f"GET {path} on port {port}: no complete response header")
    return status, length, h.hexdigest()
