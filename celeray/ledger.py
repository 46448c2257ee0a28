"""The ledger under ``<sink>/_celeray/``: the truth about which inputs are done.

Layout::

    <sink>/_celeray/ledger/<batch_id>.json      one entry per committed batch (the commit)
    <sink>/_celeray/staging/<batch_id>/...      a batch's Parquet before its commit
    <sink>/_celeray/staging/<batch_id>/_result.json  its transform's result, for commit_batch
    <sink>/_celeray/quarantine/<key>.json       one reason record per quarantined input
    <sink>/_celeray/rejects/part-<batch>-...    rows skipped as bad (``on_bad_rows = "skip"``)
    <sink>/_celeray/schema/v<version>.json      the table schema's versions (celeray.schema_log)
    <sink>/_celeray/started/<run_id>.json       the inputs a run set out to commit
    <sink>/_celeray/delta/<batch_id>.json       a Delta sink's batch: its Delta version
    <sink>/_celeray/triage/<key>.json           a quarantined input's replay or dismissal
    <sink>/_celeray/archive/<batch_id>.json     where ``after_commit`` moved its inputs

A Delta sink (:mod:`celeray.delta_table`) has no staged data: its batch's files are written
in place under names no committed version references, its entry records them as add
actions, and the Delta commit after the entry publishes them. Its ``staging/<batch_id>/``
holds only the transform's ``_result.json`` for a commit on another host.

A batch's Parquet is written under ``staging/``, which pyarrow.dataset skips (leading ``_``)
and partition globs do not reach. Committing writes the ledger entry atomically; that is the
commit point. On object stores the entry is one conditional PUT (``If-None-Match: *``), so
of two committers of one batch exactly one writes it; nothing depends on a rename. The
staged files are then moved into the partition folders (renames on local disks, copy and
delete on object stores). A crash between
the two is repaired by :meth:`Ledger.recover`, which finishes the moves of every entry whose
staging folder is still there (redo, never undo). So output reaches readers only after its
entry exists, and an input listed in an entry is never processed again.

A run records the inputs it planned under ``started/`` before it sends a batch, and drops
the record when it ends with every batch committed. A record whose inputs are not all done
is work that a lost Redis (or a failed batch) left behind: the reconciliation pass restarts
exactly that, and never a file that only landed and that no run has taken on yet.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

from celeray import durable, storage
from celeray.compaction import replaced_paths
from celeray.errors import LedgerError

__all__ = ["LEDGER_VERSION", "Ledger", "batch_id_for", "quarantine_key"]

LEDGER_VERSION = 1
RESULT_NAME = "_result.json"  # a leading "_": the dataset writers and readers skip it
_CACHE_LOCK = threading.Lock()
# Entries never change once written, so each process reads each one once.
_ENTRY_CACHE: dict[str, dict[str, Any]] = {}
# Published Delta versions never change either (None is not cached: it may be written yet).
_MARKER_CACHE: dict[str, dict[str, Any]] = {}
DELTA = "delta"  # an entry's table_format for a Delta sink (celeray.table_format.DELTA)


def batch_id_for(pipeline: str, files: list[dict[str, Any]]) -> str:
    """A batch id derived from its inputs and their fingerprints.

    The same inputs give the same id, so a retried batch writes the same output names and
    the same ledger entry, and can only overwrite, never add. A replayed input carries
    ``replay`` (the batch that quarantined it), so replaying an unchanged file that was
    alone in its batch gives a new batch, not the committed one.
    """
    h = hashlib.sha256(pipeline.encode())
    for f in sorted(files, key=lambda f: f["url"]):
        h.update(f"\0{f['url']}\0{f['size']}\0{f.get('etag') or f.get('mtime')}".encode())
        if f.get("replay"):
            h.update(f"\0replay\0{f['replay']}".encode())
    return h.hexdigest()[:24]


def quarantine_key(url: str) -> str:
    """The name of input ``url``'s quarantine and triage records (24 hex digits): how the
    API names a quarantined input without taking a URL."""
    return hashlib.sha256(url.encode()).hexdigest()[:24]


class Ledger:
    """The committed state of one sink."""

    def __init__(self, sink_url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.sink = sink_url.rstrip("/")
        self.storage_options = storage_options
        self.root = storage.join(self.sink, "_celeray")

    def entry_url(self, batch_id: str) -> str:
        """Where the entry of ``batch_id`` lives once committed."""
        return storage.join(self.root, "ledger", f"{batch_id}.json")

    def staging_url(self, batch_id: str) -> str:
        """Where the Ray tasks of ``batch_id`` write Parquet before the commit."""
        return storage.join(self.root, "staging", batch_id)

    def result_url(self, batch_id: str) -> str:
        """Where a transform leaves its batch's result for a ``commit_batch`` on another host.

        The result travels through the sink, not in the message: a commit acts only on what
        the batch's own Ray tasks wrote, in the folder this worker derives for the batch.
        """
        return storage.join(self.staging_url(batch_id), RESULT_NAME)

    def save_result(self, batch_id: str, result: dict[str, Any]) -> None:
        """Keep a transformed batch's result beside its staged Parquet until the commit."""
        storage.atomic_write_json(self.result_url(batch_id), result, self.storage_options)

    def load_result(self, batch_id: str) -> dict[str, Any] | None:
        """The result to commit for ``batch_id``: its entry's when it is committed (a
        redelivered commit), else the one its transform saved; None when there is neither."""
        if self.is_committed(batch_id):
            entry = storage.read_json(self.entry_url(batch_id), self.storage_options)
            return {**entry, "files": entry.get("inputs", [])}
        try:
            result = storage.read_json(self.result_url(batch_id), self.storage_options)
        except FileNotFoundError:
            return None
        return result if isinstance(result, dict) else None

    def quarantine_url(self, url: str) -> str:
        """Where the reason record for input ``url`` lives."""
        return storage.join(self.root, "quarantine", f"{quarantine_key(url)}.json")

    def triage_url(self, url: str) -> str:
        """Where the triage decision (replay or dismiss) about input ``url`` lives."""
        return storage.join(self.root, "triage", f"{quarantine_key(url)}.json")

    def triage(self) -> dict[str, dict[str, Any]]:
        """Input URL -> its triage decision (:mod:`celeray.quarantine`), for every input
        that has one."""
        out: dict[str, dict[str, Any]] = {}
        for url in self._documents("triage"):
            try:
                doc = storage.read_json(url, self.storage_options)
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                raise LedgerError(f"unreadable triage record {url}: {exc}") from exc
            out[doc["url"]] = doc
        return out

    def replays(self) -> dict[str, str]:
        """Input URL -> the batch whose quarantine of it a replay decision answers."""
        return {u: str(t["batch_id"]) for u, t in self.triage().items()
                if t.get("action") == "replay" and t.get("batch_id")}  # fmt: skip

    def quarantine_records(self) -> list[dict[str, Any]]:
        """Every quarantine reason record, each with its ``batch_id`` and ``run_id``."""
        out = []
        for url in self._documents("quarantine"):
            try:
                out.append(storage.read_json(url, self.storage_options))
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                raise LedgerError(f"unreadable quarantine record {url}: {exc}") from exc
        return out

    def record_triage(self, doc: dict[str, Any]) -> None:
        """Write the triage decision ``doc`` (with its ``url``) in one atomic step."""
        storage.atomic_write_json(self.triage_url(doc["url"]), doc, self.storage_options)

    def _documents(self, folder: str) -> list[str]:
        """URLs of the JSON documents in ``_celeray/<folder>`` (temporary files left out)."""
        return [
            u
            for u in storage.list_files(storage.join(self.root, folder), self.storage_options)
            if u.endswith(".json") and not u.rsplit("/", 1)[-1].startswith(".")
        ]

    def started_url(self, run_id: str) -> str:
        """Where the record of the inputs run ``run_id`` planned lives while it is open."""
        return storage.join(self.root, "started", f"{run_id}.json")

    def record_start(self, run_id: str, pipeline: str, inputs: list[str]) -> None:
        """Durably note that ``run_id`` set out to commit ``inputs`` (before any batch is sent)."""
        doc = {"run_id": run_id, "pipeline": pipeline, "started_at": time.time(),
               "inputs": sorted(inputs)}  # fmt: skip
        storage.atomic_write_json(self.started_url(run_id), doc, self.storage_options)

    def drop_start(self, run_id: str) -> None:
        """Forget the record of ``run_id`` (its inputs are done); nothing if there is none."""
        storage.remove_file(self.started_url(run_id), self.storage_options)

    def started(self) -> list[dict[str, Any]]:
        """Every open record of a started run, oldest first."""
        out = []
        for url in self._documents("started"):
            try:
                out.append(storage.read_json(url, self.storage_options))
            except FileNotFoundError:
                continue  # dropped by its run meanwhile
            except (OSError, ValueError) as exc:
                raise LedgerError(f"unreadable record of a started run {url}: {exc}") from exc
        return sorted(out, key=lambda d: d.get("started_at", 0))

    def delta_url(self, batch_id: str) -> str:
        """Where the Delta version of a Delta sink's committed batch is written down."""
        return storage.join(self.root, "delta", f"{batch_id}.json")

    def record_delta(self, batch_id: str, version: int | None) -> None:
        """Write down the Delta version that published ``batch_id`` (None: it had no rows,
        or its commit is too old to find); the first writer's record stays."""
        doc = {"batch_id": batch_id, "delta_version": version, "published_at": time.time()}
        storage.create_json(self.delta_url(batch_id), doc, self.storage_options)

    def delta_marker(self, batch_id: str) -> dict[str, Any] | None:
        """The record :meth:`record_delta` wrote for ``batch_id``; None when there is none."""
        url = self.delta_url(batch_id)
        with _CACHE_LOCK:
            found = _MARKER_CACHE.get(url)
        if found is not None:
            return found
        try:
            found = storage.read_json(url, self.storage_options)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LedgerError(f"unreadable Delta record {url}: {exc}") from exc
        with _CACHE_LOCK:
            _MARKER_CACHE[url] = found
        return found

    def _delta_versions(self) -> dict[str, int | None]:
        """Batch id -> its published Delta version, for every batch written down."""
        out: dict[str, int | None] = {}
        for url in self._documents("delta"):
            batch_id = url.rsplit("/", 1)[-1].removesuffix(".json")
            marker = self.delta_marker(batch_id)
            if marker is not None:
                out[batch_id] = marker.get("delta_version")
        return out

    def entries(self) -> list[dict[str, Any]]:
        """Every committed entry, oldest first.

        An entry of a Delta sink has ``delta_version`` once its Delta commit is written
        down (the entry itself never changes; the version lives beside it), and lacks the
        key while its commit is still to be made (:func:`celeray.delta_table.republish`).
        """
        out = []
        for url in self._documents("ledger"):
            with _CACHE_LOCK:
                entry = _ENTRY_CACHE.get(url)
            if entry is None:
                try:
                    entry = storage.read_json(url, self.storage_options)
                except (OSError, ValueError) as exc:
                    raise LedgerError(f"unreadable ledger entry {url}: {exc}") from exc
                with _CACHE_LOCK:
                    _ENTRY_CACHE[url] = entry
            out.append(entry)
        if any(e.get("table_format") == DELTA for e in out):
            versions = self._delta_versions()
            out = [{**e, "delta_version": versions[e["batch_id"]]}
                   if e.get("table_format") == DELTA and e["batch_id"] in versions else e
                   for e in out]  # fmt: skip
        return sorted(out, key=lambda e: e.get("committed_at", 0))

    def done_inputs(
        self, entries: list[dict[str, Any]] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Input URL -> its record (committed or quarantined) from every entry (``entries``:
        :meth:`entries` read already).

        A quarantined input whose triage decision replays the batch that quarantined it is
        left out, so the next plan takes it again; quarantined by a later batch, it is done
        again (that decision named the earlier batch).
        """
        replays = self.replays()
        done: dict[str, dict[str, Any]] = {}
        for entry in self.entries() if entries is None else entries:
            for f in entry.get("inputs", []):
                done[f["url"]] = f
            for q in entry.get("quarantined", []):
                if replays.get(q["url"]) == entry["batch_id"]:
                    done.pop(q["url"], None)  # and any earlier quarantine of it
                else:
                    done[q["url"]] = q
        return done

    def entry(self, batch_id: str) -> dict[str, Any]:
        """The committed entry of ``batch_id`` (FileNotFoundError when there is none)."""
        url = self.entry_url(batch_id)
        with _CACHE_LOCK:
            found = _ENTRY_CACHE.get(url)
        if found is None:
            found = storage.read_json(url, self.storage_options)
            with _CACHE_LOCK:
                _ENTRY_CACHE[url] = found
        return found

    def is_committed(self, batch_id: str) -> bool:
        """Whether the entry of ``batch_id`` exists."""
        return storage.exists(self.entry_url(batch_id), self.storage_options)

    def commit(self, entry: dict[str, Any]) -> bool:
        """Commit one batch: quarantine records, the entry (the commit point), the moves.

        Returns False when the batch was committed before (a redelivered commit), or by a
        concurrent committer of the same batch whose conditional write of the entry came
        first (object stores); the moves are then finished from the entry that is there, so
        a crash after the entry is repaired here too.
        """
        return self.commit_entry(entry)[0]

    def commit_entry(self, entry: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """:meth:`commit`, also returning the entry as stored: this one, or (not fresh) the
        one an earlier committer wrote, which is the one to publish."""
        batch_id = entry["batch_id"]
        url = self.entry_url(batch_id)
        fresh = not self.is_committed(batch_id)
        if fresh:
            for record in entry.get("quarantined", []):
                storage.atomic_write_json(
                    self.quarantine_url(record["url"]),
                    {**record, "batch_id": batch_id, "run_id": entry.get("run_id")},
                    self.storage_options,
                )
            entry = {**entry, "version": LEDGER_VERSION, "committed_at": time.time()}
            fresh = storage.create_json(url, entry, self.storage_options)
        if not fresh:
            entry = storage.read_json(url, self.storage_options)
        self.roll_forward(entry, fresh=fresh)
        return fresh, entry

    def roll_forward(self, entry: dict[str, Any], *, fresh: bool = False) -> None:
        """Move a committed batch's staged files into place and drop its staging folder.

        Unless the entry was ``fresh`` (written just now), outputs that a compaction
        replaced since are not put back (:mod:`celeray.compaction`): the batch ran again
        after its commit, and its rows are already in the compacted file.
        """
        staging = self.staging_url(entry["batch_id"])
        if not storage.exists(staging, self.storage_options):
            return
        if entry.get("table_format") == DELTA:  # files in place: only the result to drop
            storage.remove_tree(staging, self.storage_options)
            return
        replaced = frozenset() if fresh else replaced_paths(self.sink, self.storage_options)
        for out in [*entry.get("outputs", []), *entry.get("rejects", [])]:
            if out["path"] in replaced:
                continue
            src = storage.join(staging, out["path"])
            dst = storage.join(self.sink, out["path"])
            if not storage.exists(src, self.storage_options):
                continue
            try:
                storage.move(src, dst, self.storage_options)
            except FileNotFoundError:
                # Another committer of the batch moved it first (two redelivered commits).
                if not storage.exists(dst, self.storage_options):
                    raise
        storage.remove_tree(staging, self.storage_options)

    def recover(self, keep: set[str] | frozenset[str] = frozenset()) -> dict[str, int]:
        """Finish interrupted commits and drop staging left by batches that never committed.

        ``keep`` names batch ids still in flight whose staging must stay. Call it only while
        holding the pipeline's run lock.
        """
        committed = {e["batch_id"]: e for e in self.entries()}
        rolled = dropped = 0
        staging_root = storage.join(self.root, "staging")
        fs, path = storage.open_fs(staging_root, self.storage_options)
        fs.invalidate_cache()
        try:
            names = [i["name"].rstrip("/").rsplit("/", 1)[-1] for i in fs.ls(path, detail=True)]
        except FileNotFoundError:
            names = []
            if storage.is_local(fs):  # a new sink: its staging folder made (and synced) once
                durable.make_dirs(path)  # here, not by the run's first Ray task
        for batch_id in names:
            if batch_id in committed:
                self.roll_forward(committed[batch_id])
                rolled += 1
            elif batch_id not in keep:
                storage.remove_tree(self.staging_url(batch_id), self.storage_options)
                dropped += 1
        return {"rolled_forward": rolled, "dropped": dropped}
