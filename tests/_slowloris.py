"""Slow clients (slowloris) against an API on loopback, and a token holder timing its calls.

Only loopback addresses are ever a target; every loop is bounded in count and time, and
every socket opened here is closed here. Run as a script to measure a server command::

    .venv/bin/python -m tests._slowloris --clients 64 --seconds 20 -- \\
        gunicorn -c python:celeray.api.gunicorn_conf "celeray.api:create_app()"

(the bind address is added to the command). It prints the token holder's latencies.
With ``--health``, ``--clients`` callers of the public health route loop instead.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

__all__ = ["MAX_CLIENTS", "MAX_SECONDS", "SlowClients", "timed_request"]

MAX_CLIENTS = 2000  # a bound on what one test or measurement may open
MAX_SECONDS = 120.0  # and on how long it may hold them
LOOPBACK = "127.0.0.1"


class SlowClients:
    """``count`` sockets that each send a request's first line, then one header line every
    ``interval`` seconds and never the blank line that ends the head.

    A socket the server closes is opened again at once (what an attacker does); ``closed``
    counts those. Stops after ``seconds`` or when the context ends, closing every socket.
    """

    def __init__(self, port: int, count: int, *, interval: float = 2.0, seconds: float = 10.0,
                 path: str = "/api/v1/health") -> None:  # fmt: skip
        if not 0 < count <= MAX_CLIENTS or not 0 < seconds <= MAX_SECONDS:
            raise ValueError(f"at most {MAX_CLIENTS} clients for at most {MAX_SECONDS}s")
        self.port, self.count, self.interval, self.seconds = port, count, interval, seconds
        self.path = path
        self.opened = 0
        self.closed = 0
        self.lines = 0
        self._socks: list[socket.socket | None] = [None] * count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slowloris", daemon=True)

    def _open(self, i: int) -> None:
        try:
            s = socket.create_connection((LOOPBACK, self.port), timeout=2)
            s.sendall(f"GET {self.path}?slow={i} HTTP/1.1\r\nHost: {LOOPBACK}\r\n".encode())
            s.setblocking(False)
        except OSError:
            self._socks[i] = None
            return
        self._socks[i] = s
        self.opened += 1

    def _drop(self, i: int) -> None:
        s = self._socks[i]
        if s is not None:
            s.close()
            self._socks[i] = None
            self.closed += 1

    def _alive(self, s: socket.socket) -> bool:
        try:
            return s.recv(65536) != b""  # an answer (408/400) also ends the slow request
        except BlockingIOError:
            return True
        except OSError:
            return False

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        for i in range(self.count):
            if self._stop.is_set():
                return
            self._open(i)
        while not self._stop.wait(self.interval) and time.monotonic() < deadline:
            for i, s in enumerate(self._socks):
                if s is None or not self._alive(s):
                    self._drop(i)
                    self._open(i)
                    continue
                try:
                    s.send(f"X-Slow-{self.lines % 1000}: {i}\r\n".encode())
                    self.lines += 1
                except OSError:
                    self._drop(i)
                    self._open(i)

    def open_now(self) -> int:
        """How many slow sockets are open at this moment."""
        return sum(1 for s in self._socks if s is not None)

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self._stop.set()
        self._thread.join(timeout=self.interval + 10)
        for i in range(self.count):
            s = self._socks[i]
            if s is not None:
                s.close()
                self._socks[i] = None


def timed_request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
                  timeout: float = 30.0) -> tuple[float, int, bytes]:  # fmt: skip
    """(seconds, status, body) of one request on a fresh connection; status 0 if it failed."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        status, body = r.status, r.read()
    except OSError:
        status, body = 0, b""
    finally:
        conn.close()
    return time.perf_counter() - started, status, body


def _measure(argv: list[str], clients: int, seconds: float, interval: float) -> None:
    from tests._api_server import api_server
    from tests._stack import VENV_BIN

    if not os.path.isabs(argv[0]):
        argv = [str(VENV_BIN / argv[0]), *argv[1:]]
    path = "/api/v1/pipelines/flights/runs"
    with tempfile.TemporaryDirectory() as tmp, api_server(Path(tmp), argv=argv) as api:
        for _ in range(3):  # warm: the first calls make the connections
            timed_request(api.port, "POST", path, api.auth)
        quiet = [timed_request(api.port, "POST", path, api.auth)[0] for _ in range(5)]
        times: list[float] = []
        statuses: list[int] = []
        with SlowClients(api.port, clients, interval=interval, seconds=seconds) as slow:
            time.sleep(min(3.0, interval + 1))  # all open and past their first line
            end = time.monotonic() + seconds - 3
            while time.monotonic() < end:
                took, status, _ = timed_request(api.port, "POST", path, api.auth,
                                                timeout=seconds)  # fmt: skip
                times.append(took)
                statuses.append(status)
                time.sleep(max(0.0, 1.0 - took))
            open_now = slow.open_now()
    print(f"argv={' '.join(argv)}")
    print(f"quiet: median {statistics.median(quiet) * 1000:.1f} ms")
    print(f"{clients} slow clients (one header line every {interval}s, {seconds}s): "
          f"open at end {open_now}, reopened {slow.closed}; trigger n={len(times)} "
          f"median {statistics.median(times) * 1000:.1f} ms "
          f"max {max(times) * 1000:.1f} ms statuses {sorted(set(statuses))}")  # fmt: skip


def _measure_health(argv: list[str], clients: int, seconds: float) -> None:
    """Anonymous health: one caller's times, then ``clients`` callers looping while a token
    holder triggers once a second."""
    from concurrent.futures import ThreadPoolExecutor

    from tests._api_server import api_server
    from tests._stack import VENV_BIN

    if not os.path.isabs(argv[0]):
        argv = [str(VENV_BIN / argv[0]), *argv[1:]]
    health, trigger = "/api/v1/health", "/api/v1/pipelines/flights/runs"
    with tempfile.TemporaryDirectory() as tmp, api_server(Path(tmp), argv=argv) as api:
        alone = [timed_request(api.port, "GET", health)[0] for _ in range(10)]
        stop = time.monotonic() + seconds

        def loop() -> int:
            n = 0
            while time.monotonic() < stop:
                timed_request(api.port, "GET", health, timeout=seconds)
                n += 1
            return n

        times: list[float] = []
        with ThreadPoolExecutor(clients) as pool:
            calls = [pool.submit(loop) for _ in range(clients)]
            time.sleep(0.5)
            while time.monotonic() < stop - 1:
                took = timed_request(api.port, "POST", trigger, api.auth, timeout=seconds)[0]
                times.append(took)
                time.sleep(max(0.0, 1.0 - took))
            answered = sum(f.result() for f in calls)
    print(f"argv={' '.join(argv)}")
    print("anonymous health, one caller, 10 calls (ms): "
          + " ".join(f"{t * 1000:.1f}" for t in alone))  # fmt: skip
    print(f"{clients} anonymous health callers for {seconds}s: {answered} answers; trigger "
          f"n={len(times)} median {statistics.median(times) * 1000:.1f} ms "
          f"max {max(times) * 1000:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--health", action="store_true",
                        help="measure anonymous health calls instead of slow clients")
    parser.add_argument("argv", nargs="+", help="the server command, without --bind")
    args = parser.parse_args()
    if args.health:
        _measure_health(args.argv, args.clients, args.seconds)
    else:
        _measure(args.argv, args.clients, args.seconds, args.interval)
