#!/usr/bin/env python3
"""The spike scenario's backend: an HTTP server that holds every request for a fixed time and
counts its own concurrency.

    countd.py --port PORT --hold-ms 50 --control PATH

Each connection reads one request head, waits `--hold-ms`, answers with a fixed response and
`Connection: close`, and closes. It counts

- connections: open from accept until the socket is closed (what a proxy's cap limits);
- requests in service: from the end of the request head until the answer is written;

and their peaks. A Unix socket at `--control` answers one command per connection, one line each:
`stats` (the counters as JSON) and `reset` (the counters as JSON, then the peaks and totals start
again from what is open now). The bench reads the peaks from here: the backend's own count, not a
proxy's.

Single-threaded asyncio: at the scenario's rates (a cap of 8 over 50 ms, 160 requests/s) it uses
a few percent of a CPU.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import time

BODY = b"levee bench: held, then answered.\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
            + str(len(BODY)).encode() + b"\r\nConnection: close\r\n\r\n" + BODY)
MAX_HEAD = 16384


class State:
    def __init__(self):
        self.conns = 0
        self.inflight = 0
        self.reset()

    def reset(self):
        self.peak_conns = self.conns
        self.peak_inflight = self.inflight
        self.accepted = 0
        self.answered = 0
        self.bad_requests = 0
        self.since = time.monotonic()

    def snapshot(self):
        return {
            "conns": self.conns, "inflight": self.inflight,
            "peak_conns": self.peak_conns, "peak_inflight": self.peak_inflight,
            "accepted": self.accepted, "answered": self.answered,
            "bad_requests": self.bad_requests,
            "seconds": round(time.monotonic() - self.since, 3),
        }


def make_protocol(state, hold_s, loop):
    class Conn(asyncio.Protocol):
        def __init__(self):
            self.transport = None
            self.head = b""
            self.timer = None
            self.holding = False
            self.done = False

        def connection_made(self, transport):
            self.transport = transport
            state.conns += 1
            state.accepted += 1
            if state.conns > state.peak_conns:
                state.peak_conns = state.conns

        def data_received(self, data):
            if self.holding or self.done:
                return
            self.head += data
            if b"\r\n\r\n" in self.head:
                self.holding = True
                state.inflight += 1
                if state.inflight > state.peak_inflight:
                    state.peak_inflight = state.inflight
                self.timer = loop.call_later(hold_s, self.answer)
            elif len(self.head) > MAX_HEAD:
                state.bad_requests += 1
                self.done = True
                self.transport.close()

        def answer(self):
            self.timer = None
            self.holding = False
            state.inflight -= 1
            self.done = True
            state.answered += 1
            self.transport.write(RESPONSE)
            self.transport.close()

        def connection_lost(self, exc):
            state.conns -= 1
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if self.holding:
                self.holding = False
                state.inflight -= 1

    return Conn


async def control(state, reader, writer):
    try:
        line = (await reader.readline()).decode(errors="replace").strip()
        snap = state.snapshot()
        if line == "reset":
            state.reset()
        elif line != "stats":
            snap = {"error": f"unknown command {line!r}; say stats or reset"}
        writer.write((json.dumps(snap) + "\n").encode())
        await writer.drain()
    finally:
        writer.close()


async def main(args):
    loop = asyncio.get_running_loop()
    state = State()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(args.backlog)
    server = await loop.create_server(make_protocol(state, args.hold_ms / 1000, loop), sock=sock)
    if os.path.exists(args.control):
        os.unlink(args.control)
    ctl = await asyncio.start_unix_server(lambda r, w: control(state, r, w), path=args.control)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"countd: {args.host}:{args.port}, hold {args.hold_ms} ms, control {args.control}",
          flush=True)
    await stop.wait()
    server.close()
    ctl.close()
    print("countd: stopped " + json.dumps(state.snapshot()), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--hold-ms", type=float, default=50.0)
    p.add_argument("--backlog", type=int, default=4096)
    p.add_argument("--control", required=True, help="Unix socket for stats and reset")
    asyncio.run(main(p.parse_args()))
