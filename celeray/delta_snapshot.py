"""The newest snapshot of a Delta sink's table, kept by the process from one batch to the next.

Every batch's commit starts from the table's newest version: its schema check, its app
transaction, the version it writes next. Loading a table reads its log's listing, its last
checkpoint and the commits after it; bringing a kept one up to date
(``DeltaTable.update_incremental``) still lists the whole log folder, which grows by a file
per batch. So the process keeps a :class:`Snapshot` per sink: delta-rs's table as last
loaded, plus the plain appends committed from it since (they change only the version and
the app transactions). Before each batch one look tells whether the version after the
snapshot's exists: if not, the snapshot is the table's newest and is used as it is; if so
(another writer or process committed), the table is brought up to date. A commit is written
only if its version is free (put-if-absent), so a writer that commits between that look and
this one's commit makes the commit fail and start again from the newest.

A kept snapshot is trusted only while the log file of the version its table was loaded at is
the file it was then (same size, modification time and ETag): a table deleted and made
again under the same URL, or a log rewritten by hand, is loaded afresh. So is a snapshot
whose log was cleaned past that version, or that cannot be brought up to date. Two looks at
one file each per batch, where nothing else committed.

A snapshot is used by one thread at a time: :func:`newest` takes it out of the process's
store and :func:`keep` puts it back once the batch is committed, so the next batch, on
whichever thread of a Ray-driving worker, starts from it (kept per thread, a batch that
followed one of another thread's paid a listing of the log: twice the commit's time at
1,000 versions). A thread that asks while another holds the sink's snapshot loads its own;
of two put back, the newer stays. One that is never put back (the batch failed) is simply
gone: the next batch loads the table. The process keeps at most :data:`MAX_TABLES` sinks,
the least recently used dropped first.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

from celeray import storage
from celeray.delta_location import open_table
from celeray.storage import FileInfo
from celeray.table_format import DELTA_LOG

__all__ = ["MAX_APPENDS", "MAX_TABLES", "Snapshot", "forget", "keep", "newest"]

log = logging.getLogger(__name__)

# A worker commits to the few sinks of its pipelines; each snapshot holds its table's list of
# files in memory, so a process keeps a handful and loads any other afresh.
MAX_TABLES = 4
# Appends a snapshot carries on top of its table before the next batch updates the table
# (a listing): bounds the app ids it holds, and costs one listing per this many batches.
MAX_APPENDS = 100

_lock = threading.Lock()  # guards _tables: taking a snapshot out, putting one back
_tables: OrderedDict[str, Snapshot] = OrderedDict()


class Snapshot:
    """A Delta table as this process knows it: delta-rs's ``table`` and the plain appends
    committed from it since it was loaded or updated.

    It answers what a commit asks of a ``DeltaTable`` (``version``, ``schema``,
    ``protocol``, ``metadata``, ``transaction_version``) for the table with those appends;
    ``create_write_transaction`` (delta-rs's append, for protocols celeray's commit does not
    write) goes to ``table``, which then has no appends on top (they are celeray's own).
    """

    def __init__(self, table: Any, anchor: FileInfo | None) -> None:
        self.table = table
        self.anchor = anchor  # the log file of the version ``table`` was loaded at
        self._apps: dict[str, int] = {}  # app id -> version, of the appends made from it

    def version(self) -> int:
        return int(self.table.version()) + len(self._apps)

    def schema(self) -> Any:
        return self.table.schema()

    def protocol(self) -> Any:
        return self.table.protocol()

    def metadata(self) -> Any:
        return self.table.metadata()

    def transaction_version(self, app_id: str) -> int | None:
        own = self._apps.get(app_id)
        return own if own is not None else self.table.transaction_version(app_id)

    def create_write_transaction(self, *args: Any, **kwargs: Any) -> Any:
        return self.table.create_write_transaction(*args, **kwargs)

    def appended(self, version: int, app_id: str, app_version: int) -> None:
        """``version`` was committed from this snapshot, a plain append (no metadata, no
        protocol) carrying ``app_id``; ignored unless it is the version right after this one."""
        if version == self.version() + 1 and len(self._apps) < MAX_APPENDS:
            self._apps[app_id] = app_version

    def _next_log(self, sink: str) -> str:
        return storage.join(sink, DELTA_LOG, f"{self.version() + 1:020d}.json")

    def adopt(self, sink: str, table: Any) -> None:
        """Take ``table``, freshly loaded at this snapshot's version (for a checkpoint), in
        place of the older table and the appends on top of it; ignored at another version.

        delta-rs reads again, on each app-transaction look-up, every commit after the
        last checkpoint the table was loaded or updated from; renewed at each checkpoint,
        a snapshot's table has at most a checkpoint interval of them.
        """
        version = int(table.version())
        if version != self.version():
            return
        anchor = storage.file_info(storage.join(sink, DELTA_LOG, f"{version:020d}.json"))
        if anchor is not None:
            self.table, self.anchor = table, anchor
            self._apps.clear()

    def catch_up(self, sink: str) -> bool:
        """Make this the table's newest version: False when it cannot be trusted or
        brought up to date (the caller loads the table afresh)."""
        if self.anchor is None or storage.file_info(self.anchor.url) != self.anchor:
            return False
        if storage.file_info(self._next_log(sink)) is None:
            return True  # nothing committed after this snapshot: it is the newest
        try:
            self.table.update_incremental()
        except Exception as exc:
            log.info("Delta table %s loaded afresh: %s", sink, exc)
            return False
        self._apps.clear()  # the table has them now
        return True


def newest(sink: str) -> Snapshot | None:
    """The sink's table at its newest version, for the caller alone until it gives it back
    with :func:`keep` (None when it has no table yet): the process's kept snapshot, brought
    up to date when another commit came after it, or a fresh load."""
    with _lock:
        kept = _tables.pop(sink, None)
    if kept is not None and kept.catch_up(sink):
        return kept
    table = open_table(sink)
    if table is None:
        return None
    # None when the log was cleaned meanwhile: nothing to check it by next time
    return Snapshot(table, storage.file_info(
        storage.join(sink, DELTA_LOG, f"{table.version():020d}.json")))


def keep(sink: str, snapshot: Any) -> None:
    """Give back a snapshot :func:`newest` handed out, once the caller is done with it
    (anything else, None included, is ignored).

    When another thread gave one back meanwhile, the one at the newer version stays.
    """
    if not isinstance(snapshot, Snapshot):
        return
    with _lock:
        other = _tables.get(sink)
        if other is None or other.version() <= snapshot.version():
            _tables[sink] = snapshot
        _tables.move_to_end(sink)
        while len(_tables) > MAX_TABLES:
            _tables.popitem(last=False)


def forget(sink: str | None = None) -> None:
    """Drop the kept snapshot of ``sink`` (of every sink when None)."""
    with _lock:
        if sink is None:
            _tables.clear()
        else:
            _tables.pop(sink, None)
