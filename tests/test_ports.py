"""celeray.ports: listening ports that outgoing connections cannot take in the meantime."""

from __future__ import annotations

import socket

import pytest

from celeray import ports


def test_ports_lie_outside_the_ephemeral_range_and_are_free() -> None:
    low, high = ports._ephemeral_range()
    picked = [ports.listen_port() for _ in range(20)]
    assert len(set(picked)) == 20  # one process asking many times gets different ports
    for port in picked:
        assert port >= ports.LOWEST_PORT and not low <= port <= high, (port, low, high)
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # nobody listens there


def test_a_port_in_use_is_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        taken = busy.getsockname()[1]
        busy.listen()
        monkeypatch.setattr(ports, "_ephemeral_range", lambda: (1024, 65535))
        monkeypatch.setattr(ports, "LOWEST_PORT", 1024)  # no room: the kernel picks
        assert ports.listen_port() != taken
        assert not ports._bindable(taken)
