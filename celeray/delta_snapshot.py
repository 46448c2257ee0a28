"""The newest snapshot of a Delta sink's table, kept by each thread from one batch to the next.

Every batch's commit starts from the table's newest version: its schema check, its app
transaction, the version it writes next. Loading a table reads its log's listing, its last
checkpoint and the commits after it, on every batch; a snapshot kept from the thread's
previous batch is brought up to date with the commits made since
(``DeltaTable.update_incremental``), which reads only those (costs in ``bench/RESULTS.md``).

A kept snapshot is trusted only while the log file of its version is the file it was loaded
with (same size, modification time and ETag): a table deleted and made again under the same
URL, or a log rewritten by hand, is loaded afresh. A snapshot that cannot be brought up to
date (its log cleaned past it) is loaded afresh too.

Each thread keeps its own: a Ray-driving worker commits batches on several threads, and a
snapshot is updated and committed from by one thread at a time. A thread keeps at most
:data:`MAX_TABLES` sinks, the least recently used dropped first.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from celeray import storage
from celeray.delta_location import open_table
from celeray.table_format import DELTA_LOG

__all__ = ["MAX_TABLES", "forget", "newest"]

log = logging.getLogger(__name__)

# A worker commits to the few sinks of its pipelines; each snapshot holds its table's list of
# files in memory, so a thread keeps a handful and loads any other afresh.
MAX_TABLES = 4

_local = threading.local()


@dataclass
class _Kept:
    table: Any
    seen: tuple[int, tuple[Any, ...] | None]  # the version and its log file's signature


def _kept() -> OrderedDict[str, _Kept]:
    tables: OrderedDict[str, _Kept] | None = getattr(_local, "tables", None)
    if tables is None:
        tables = _local.tables = OrderedDict()
    return tables


def _seen(sink: str, version: int) -> tuple[int, tuple[Any, ...] | None]:
    return version, storage.signature(storage.join(sink, DELTA_LOG, f"{version:020d}.json"))


def newest(sink: str) -> Any:
    """The sink's ``DeltaTable`` at its newest version (None when it has no table yet): this
    thread's kept snapshot brought up to date, or a fresh load."""
    tables = _kept()
    kept = tables.pop(sink, None)
    if kept is not None and _seen(sink, kept.seen[0]) == kept.seen:
        try:
            kept.table.update_incremental()
        except Exception as exc:  # a log cleaned past the snapshot: load it afresh
            log.info("Delta table %s loaded afresh: %s", sink, exc)
            kept = None
    else:
        kept = None
    if kept is None:
        table = open_table(sink)
        if table is None:
            return None
        kept = _Kept(table, (-1, None))
    version = int(kept.table.version())
    if version != kept.seen[0]:
        kept.seen = _seen(sink, version)
    tables[sink] = kept
    while len(tables) > MAX_TABLES:
        tables.popitem(last=False)
    return kept.table


def forget(sink: str | None = None) -> None:
    """Drop this thread's snapshot of ``sink`` (of every sink when None)."""
    if sink is None:
        _kept().clear()
    else:
        _kept().pop(sink, None)
