"""Free TCP ports for services that must be able to listen on them again after a restart.

Binding port 0 gives a port from the kernel's ephemeral range, the range outgoing
connections take their source ports from. A service restarted later (supervisor bringing
back the Ray head, whose agents bind their ports anew) can then find its port held by any
long-lived connection of the machine. That happened in the bench: the head's dashboard
agent could not bind its gRPC port, failed, took the raylet down with it ~35 s after each
start, for the life of the stack (reproduced by holding that port with a connection).
Ports outside the ephemeral range are never handed out that way.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

__all__ = ["LOWEST_PORT", "listen_port"]

# Above Ray's default worker ports (10002-19999), which its raylet hands out itself.
LOWEST_PORT = 20000
_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_DEFAULT_EPHEMERAL = (32768, 60999)  # Linux's default, for systems without the file
_given: set[int] = set()  # a process asking for several ports gets different ones
_lock = threading.Lock()


def listen_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now, outside the ephemeral range (when there is room).

    Ports are tried in random order, so two processes picking at once rarely meet; the
    port is free when returned, not reserved, as with any port picked ahead of its use.
    """
    low, high = _ephemeral_range()
    outside = [*range(LOWEST_PORT, min(low, 65536)), *range(max(high + 1, LOWEST_PORT), 65536)]
    random.shuffle(outside)
    with _lock:
        for port in outside:
            if port not in _given and _bindable(port):
                _given.add(port)
                return port
        with socket.socket() as s:  # no room outside it: the kernel's choice
            s.bind((host, 0))
            port = int(s.getsockname()[1])
            _given.add(port)
            return port


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(v) for v in _EPHEMERAL.read_text().split())
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL
    return low, high


def _bindable(port: int) -> bool:
    """Whether nothing holds ``port`` on any IPv4 address (the wildcard bind says so)."""
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
