"""Small-file compaction of a plain Parquet sink, committed through the ledger.

Layout, beside the ledger (:mod:`celeray.ledger`)::

    <sink>/_celeray/compaction/<id>.json        one record per compaction (the commit)
    <sink>/_celeray/compaction/<id>/<k=v>/...   its new files before the commit

The files a compaction may replace are the *live* data files: the outputs of committed
ledger entries whose moves are finished (no staging folder left), minus what earlier
compactions replaced, plus what they wrote. Never a staged file, never a file of a batch
being committed. :func:`plan_groups` packs a partition's small live files into groups of
about the target size; the Ray side writes each group's rows, in order, as one new file
under the compaction's folder (hidden from readers by the leading ``_``).

The record names, per group, the new file and the files it replaces. Writing it
(:meth:`CompactionLog.commit`, one conditional create: a PUT with ``If-None-Match: *`` on
object stores, a hard link on local disks) is the commit point. Then the new files are moved
into their partitions and only after that the replaced ones deleted. A crash anywhere is
repaired by :meth:`CompactionLog.recover` (redo, never undo): a record whose folder is still
there is rolled forward; a folder without a record (a crash before the commit) is dropped,
and the old files, never touched, still hold the rows.

What a reader that lists the partitions sees: rows are never missing, since the new file is
in place before an old one goes; but between the move and the last delete (milliseconds on
a local disk, one delete request per replaced file on S3) a listing can see a group's rows
twice. Delta sinks have no such window: the compaction is one commit of the Delta log, and
readers read the log, not the listing. Read a Parquet sink after maintenance ends, or use
Delta.

A batch whose transform ran again after its commit (a redelivered message) rolls its entry
forward again; :meth:`celeray.ledger.Ledger.roll_forward` skips every output a compaction
replaced, whose rows are in the compacted file. If that redo read the records just before a
compaction committed, it may put a replaced file back; :meth:`CompactionLog.recover` (at the
start of every maintenance) deletes replaced files found in place again.
"""

from __future__ import annotations

import hashlib
import posixpath
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celeray import storage
from celeray.errors import LedgerError

if TYPE_CHECKING:
    from celeray.ledger import Ledger

__all__ = [
    "COMPACTION_VERSION",
    "CompactionLog",
    "compaction_id_for",
    "output_path",
    "plan_groups",
    "replaced_paths",
]

COMPACTION_VERSION = 1
# A file at least this share of the target is left alone: rewriting it gains little.
FULL_ENOUGH = 0.75
FOLDER = "compaction"


def _partition(path: str) -> str:
    return posixpath.dirname(path)


def plan_groups(files: Iterable[Mapping[str, Any]], target_size: int) -> list[list[dict[str, Any]]]:
    """Groups of a partition's small files, each to be rewritten as one file.

    ``files`` are live data files (``path`` relative to the sink, ``bytes``, ``rows``).
    Files of at least :data:`FULL_ENOUGH` of ``target_size`` stay as they are. The rest are
    taken partition by partition in path order (batch names, so roughly the order they
    landed) and packed while a group stays within ``target_size``; a group of one file is
    no group. Pure: the same files give the same groups.
    """
    by_partition: dict[str, list[dict[str, Any]]] = {}
    for f in files:
        if int(f["bytes"]) < FULL_ENOUGH * target_size:
            by_partition.setdefault(_partition(str(f["path"])), []).append(dict(f))
    groups: list[list[dict[str, Any]]] = []
    for partition in sorted(by_partition):
        current: list[dict[str, Any]] = []
        size = 0
        for f in sorted(by_partition[partition], key=lambda f: f["path"]):
            if current and size + int(f["bytes"]) > target_size:
                groups.append(current)
                current, size = [], 0
            current.append(f)
            size += int(f["bytes"])
        groups.append(current)
    return [g for g in groups if len(g) > 1]


def compaction_id_for(groups: Sequence[Sequence[Mapping[str, Any]]]) -> str:
    """An id derived from the files a compaction replaces: a retry writes the same names."""
    h = hashlib.sha256()
    for path in sorted(str(f["path"]) for g in groups for f in g):
        h.update(path.encode() + b"\0")
    return h.hexdigest()[:24]


def output_path(group: Sequence[Mapping[str, Any]], compaction_id: str, index: int) -> str:
    """Where group ``index``'s new file goes, relative to the sink: in its partition, named
    after the compaction (``part-c<id>-<index>.parquet``), never a batch's name."""
    name = f"part-c{compaction_id}-{index:05d}.parquet"
    partition = _partition(str(group[0]["path"]))
    return posixpath.join(partition, name) if partition else name


def replaced_paths(sink: str, storage_options: dict[str, Any] | None = None) -> frozenset[str]:
    """Every data file (relative path) some compaction of ``sink`` replaced."""
    return CompactionLog(sink, storage_options).replaced()


class CompactionLog:
    """The compaction records of one Parquet sink."""

    def __init__(self, sink_url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.sink = sink_url.rstrip("/")
        self.storage_options = storage_options
        self.root = storage.join(self.sink, "_celeray", FOLDER)

    def record_url(self, compaction_id: str) -> str:
        return storage.join(self.root, f"{compaction_id}.json")

    def staging_url(self, compaction_id: str) -> str:
        """Where the Ray tasks write the compaction's new files before its commit."""
        return storage.join(self.root, compaction_id)

    def records(self) -> list[dict[str, Any]]:
        """Every committed record, oldest first."""
        out = []
        for url in storage.list_files(self.root, self.storage_options):
            name = url.rsplit("/", 1)[-1]
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                out.append(storage.read_json(url, self.storage_options))
            except (OSError, ValueError) as exc:
                raise LedgerError(f"unreadable compaction record {url}: {exc}") from exc
        return sorted(out, key=lambda r: r.get("committed_at", 0))

    def replaced(self) -> frozenset[str]:
        """Every path some committed compaction replaced."""
        return frozenset(
            f["path"] for r in self.records() for g in r["groups"] for f in g["replaced"]
        )

    def live_files(self, ledger: Ledger) -> list[dict[str, Any]]:
        """The data files a reader of the sink should see, once every commit is rolled
        forward: what compaction may replace (see the module docstring), by path."""
        in_flight = set(_folder_names(ledger.staging_url(""), self.storage_options))
        live: dict[str, dict[str, Any]] = {}
        for entry in ledger.entries():
            if entry["batch_id"] in in_flight:
                continue  # its moves are not finished: not compacted until they are
            for out in entry.get("outputs", []):
                live[out["path"]] = {k: out[k] for k in ("path", "rows", "bytes")}
        for record in self.records():
            for g in record["groups"]:
                for f in g["replaced"]:
                    live.pop(f["path"], None)
                live[g["output"]["path"]] = dict(g["output"])
        return [live[p] for p in sorted(live)]

    def commit(self, record: Mapping[str, Any]) -> bool:
        """Write ``record`` (the commit point), then roll it forward; True when this call
        wrote it, False when it was there before (the same compaction done twice)."""
        fresh, doc = self.write_record(record)
        self.roll_forward(doc)
        return fresh

    def write_record(self, record: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
        """The commit point alone: create the record unless it exists; (whether this call
        wrote it, the record as stored). Its new files must be staged and durable."""
        url = self.record_url(record["compaction_id"])
        doc = {**record, "version": COMPACTION_VERSION, "committed_at": time.time()}
        if storage.create_json(url, doc, self.storage_options):
            return True, doc
        return False, storage.read_json(url, self.storage_options)

    def roll_forward(self, record: Mapping[str, Any]) -> None:
        """Move the record's new files into place, then delete the files they replace, then
        its folder. Each step is done again harmlessly: a move whose source is gone was
        made, a delete of a missing file is nothing."""
        staging = self.staging_url(record["compaction_id"])
        for g in record["groups"]:
            out = g["output"]["path"]
            src = storage.join(staging, out)
            if storage.exists(src, self.storage_options):
                storage.move(src, storage.join(self.sink, out), self.storage_options)
            elif not storage.exists(storage.join(self.sink, out), self.storage_options):
                raise LedgerError(
                    f"compaction {record['compaction_id']}: its file {out} is neither staged "
                    "nor in place; the files it replaces are kept"
                )
        for g in record["groups"]:
            for f in g["replaced"]:
                storage.remove_file(storage.join(self.sink, f["path"]), self.storage_options)
        storage.remove_tree(staging, self.storage_options)

    def recover(self) -> dict[str, int]:
        """Finish interrupted compactions, drop uncommitted ones, delete replaced files
        found in place again. Call it only while holding the sink's maintenance lock."""
        records = self.records()
        committed = {r["compaction_id"]: r for r in records}
        rolled = dropped = removed = 0
        for name in _folder_names(self.root, self.storage_options):
            if name in committed:
                self.roll_forward(committed[name])
                rolled += 1
            else:
                storage.remove_tree(self.staging_url(name), self.storage_options)
                dropped += 1
        replaced = {f["path"] for r in records for g in r["groups"] for f in g["replaced"]}
        if replaced:
            for path in _data_files(self.sink, self.storage_options):
                if path in replaced:
                    storage.remove_file(storage.join(self.sink, path), self.storage_options)
                    removed += 1
        return {"rolled_forward": rolled, "dropped": dropped, "removed_again": removed}


def _folder_names(url: str, storage_options: dict[str, Any] | None) -> list[str]:
    """Names of the folders directly inside ``url``; empty when it does not exist."""
    fs, path = storage.open_fs(url, storage_options)
    fs.invalidate_cache()
    try:
        items = fs.ls(path.rstrip("/"), detail=True)
    except FileNotFoundError:
        return []
    return sorted(i["name"].rstrip("/").rsplit("/", 1)[-1] for i in items
                  if i["type"] == "directory")  # fmt: skip


def _data_files(sink: str, storage_options: dict[str, Any] | None) -> list[str]:
    """Paths (relative to ``sink``) of every file outside folders starting ``_`` or ``.``."""
    fs, root = storage.open_fs(sink, storage_options)
    fs.invalidate_cache()
    root = root.rstrip("/")
    try:
        found = fs.find(root)
    except FileNotFoundError:
        return []
    out = []
    for p in found:
        rel = posixpath.relpath(p, root)
        if not any(part.startswith(("_", ".")) for part in rel.split("/")[:-1]):
            out.append(rel)
    return out
