"""DuckDB connections for pipeline SQL: one confined database per process, a cursor per use.

Opening a DuckDB database costs ~30-40 ms (bench/RESULTS.md, 2026-12-05): once per unit it
was 8-13% of a 32-csv sql unit. So each process keeps one in-memory database per thread
count, made on first use with :data:`CONFINED` (the settings are given to
``duckdb.connect``, so they hold before the first statement and, locked, for every
connection to that database), and each use gets a fresh cursor: a cursor is a connection
of its own to the same database, so a view it registers (``input``) is its own and gone
when it closes. Units never see each other's ``input``, whether they run one after another
or on threads of one worker: the lock guards only the shared database's creation and the
making of a cursor.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import duckdb

__all__ = ["CONFINED", "connect", "cursor"]

# DuckDB settings of every pipeline query. External access off: no file, URL, extension
# or Python-variable scan (with it on, `FROM some_name` finds a Python variable of the
# calling frames). Locked: the query cannot set them back. No extension is fetched or
# loaded behind the query's back either.
CONFINED: dict[str, Any] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "lock_configuration": True,
}

_LOCK = threading.Lock()
# threads -> this process's confined database of that thread count; `threads` is a
# database setting, and a locked configuration cannot change it per query.
_SHARED: dict[int, duckdb.DuckDBPyConnection] = {}


def connect(threads: int) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB connection with ``threads`` threads, confined (:data:`CONFINED`)."""
    return duckdb.connect(config={"threads": threads, **CONFINED})


@contextmanager
def cursor(threads: int) -> Iterator[duckdb.DuckDBPyConnection]:
    """A new cursor on this process's confined database of ``threads`` threads, closed after.

    The database is made on first use and kept for the life of the process.
    """
    threads = max(1, int(threads))
    with _LOCK:
        shared = _SHARED.get(threads)
        if shared is None:
            shared = _SHARED[threads] = connect(threads)
        con = shared.cursor()
    try:
        yield con
    finally:
        con.close()
