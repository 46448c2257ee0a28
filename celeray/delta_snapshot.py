"""The newest snapshot of a Delta sink's table, kept by each thread from one batch to the next.

Every batch's commit starts from the table's newest version: its schema check, its app
transaction, the version it writes next. Loading a table reads its log's listing, its last
checkpoint and the commits after it, on every batch; a snapshot kept from the thread's
previous batch is brought up to date with the commits made since
(``DeltaTable.update_incremental``), which reads only those (costs in ``bench/RESULTS.md``).

A kept snapshot is trusted only while the log file of the version it was loaded at is the
file it was then (same size, modification time and ETag): a table deleted and made again
under the same URL, or a log rewritten by hand, is loaded afresh. So is a snapshot whose
log was cleaned past that version, or that cannot be brought up to date. One look at one
file per batch.

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
from celeray.storage import FileInfo
from celeray.table_format import DELTA_LOG

__all__ = ["MAX_TABLES", "forget", "newest"]

log = logging.getLogger(__name__)

# A worker commits to the few sinks of its pipelines; each snapshot holds its table's list of
# files in memory, so a thread keeps a handful and loads any other afresh.
MAX_TABLES = 4

_local = threading.local()


@dataclass(frozen=True)
class _Kept:
    table: Any
    anchor: FileInfo  # the log file of the version the table was loaded at


def _kept() -> OrderedDict[str, _Kept]:
    tables: OrderedDict[str, _Kept] | None = getattr(_local, "tables", None)
    if tables is None:
        tables = _local.tables = OrderedDict()
    return tables


def _brought_up_to_date(sink: str, kept: _Kept) -> bool:
    if storage.file_info(kept.anchor.url) != kept.anchor:
        return False
    try:
        kept.table.update_incremental()
    except Exception as exc:
        log.info("Delta table %s loaded afresh: %s", sink, exc)
        return False
    return True


def newest(sink: str) -> Any:
    """The sink's ``DeltaTable`` at its newest version (None when it has no table yet): this
    thread's kept snapshot brought up to date, or a fresh load."""
    tables = _kept()
    kept = tables.pop(sink, None)
    if kept is None or not _brought_up_to_date(sink, kept):
        table = open_table(sink)
        if table is None:
            return None
        anchor = storage.file_info(storage.join(sink, DELTA_LOG, f"{table.version():020d}.json"))
        if anchor is None:  # its log cleaned meanwhile: nothing to check it by next time
            return table
        kept = _Kept(table, anchor)
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
