"""Where a sink keeps its table schema: a log of versions beside the ledger.

Layout::

    <sink>/_celeray/schema/v00000000.json   the schema the first committed batch pinned
    <sink>/_celeray/schema/v00000001.json   the next version: a batch added or widened columns

Each version holds two schemas: ``input``, the columns every file is read into (before the
pipeline's SQL and transform), and ``table``, the columns of the rows written (after them;
the same as ``input`` for a pipeline without either), with the changes that made it and
the batch that brought them. A version is created with a conditional write (``O_EXCL``
locally, ``If-None-Match: *`` on object stores), so of two batches that evolve the schema at
once exactly one writes the next version; the other reads it and evolves on top of it
(:meth:`SchemaLog.record`). Two batches that add different columns therefore both end up in
the schema, and a version is never rewritten.

A batch records its schema changes *before* its ledger entry: a crash between the two
leaves a column in the schema that no committed row has yet (readers see nulls), never a
committed row with a column the schema lacks.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from celeray import storage
from celeray.errors import LedgerError
from celeray.table_schema import Change, evolve, schema_from_json, schema_to_json

__all__ = ["SchemaLog", "TableSchema"]

_RACE_LIMIT = 50  # versions written by others while one batch records; far past any real race
_CACHE_LOCK = threading.Lock()
_CACHE: dict[str, TableSchema] = {}  # versions never change once written


@dataclass(frozen=True)
class TableSchema:
    """One version of a sink's schema, and what made it."""

    version: int
    input: pa.Schema
    table: pa.Schema
    changes: dict[str, list[Change]] = field(default_factory=dict)
    batch_id: str | None = None
    run_id: str | None = None
    at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The document kept in the log."""
        return {
            "version": self.version,
            "input": schema_to_json(self.input),
            "table": schema_to_json(self.table),
            "changes": {k: [c.to_json() for c in v] for k, v in self.changes.items()},
            "batch_id": self.batch_id,
            "run_id": self.run_id,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TableSchema:
        """The version :meth:`to_json` wrote."""
        return cls(
            version=int(doc["version"]),
            input=schema_from_json(doc["input"]),
            table=schema_from_json(doc["table"]),
            changes={k: [Change(**c) for c in v] for k, v in (doc.get("changes") or {}).items()},
            batch_id=doc.get("batch_id"),
            run_id=doc.get("run_id"),
            at=float(doc.get("at") or 0.0),
        )

    def for_plan(self) -> dict[str, Any]:
        """What a Ray plan carries: the version and both schemas, without the history."""
        return {
            "version": self.version,
            "input": schema_to_json(self.input),
            "table": schema_to_json(self.table),
        }


class SchemaLog:
    """The schema versions of one sink."""

    def __init__(self, sink_url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.sink = sink_url.rstrip("/")
        self.storage_options = storage_options
        self.folder = storage.join(self.sink, "_celeray", "schema")

    def url(self, version: int) -> str:
        """Where version ``version`` lives."""
        return storage.join(self.folder, f"v{version:08d}.json")

    def history(self) -> list[TableSchema]:
        """Every version, oldest first."""
        urls = sorted(
            u
            for u in storage.list_files(self.folder, self.storage_options)
            if u.rsplit("/", 1)[-1].startswith("v") and u.endswith(".json")
        )
        return [self._load(u) for u in urls]

    def describe(self) -> dict[str, Any]:
        """The JSON the API and ``celeray schema --json`` give: the current columns (as
        written, and as read), and each version's changes."""
        history = self.history()
        current = history[-1] if history else None
        return {
            "sink": self.sink,
            "version": current.version if current else None,
            "columns": _columns(current.table) if current else [],
            "input_columns": _columns(current.input) if current else [],
            "history": [
                {
                    "version": v.version,
                    "at": v.at,
                    "batch_id": v.batch_id,
                    "run_id": v.run_id,
                    "changes": {k: [str(c) for c in cs] for k, cs in v.changes.items() if cs},
                }
                for v in history
            ],
        }

    def at(self, version: int) -> TableSchema | None:
        """Version ``version``; None when the log has no such version."""
        if not storage.exists(self.url(version), self.storage_options):
            return None
        return self._load(self.url(version))

    def current(self) -> TableSchema | None:
        """The newest version; None before the first batch committed."""
        versions = self.history()
        return versions[-1] if versions else None

    def record(
        self,
        input_seen: pa.Schema | None,
        table_seen: pa.Schema | None,
        *,
        batch_id: str,
        run_id: str | None,
    ) -> tuple[TableSchema | None, dict[str, list[Change]]]:
        """Evolve the schema by what a batch read and wrote; the version it commits under.

        Returns the version the batch's rows belong to and the changes this call made
        (empty when the schema already held everything: a redelivered commit, or another
        batch that brought the same column first). ``SchemaConflictError`` when the batch
        does not fit the current version (see :func:`celeray.table_schema.evolve`).
        """
        for _ in range(_RACE_LIMIT):
            current = self.current()
            if input_seen is None or table_seen is None:
                return current, {}
            new_input, input_changes = evolve(current.input if current else None, input_seen)
            new_table, table_changes = evolve(current.table if current else None, table_seen)
            if current is not None and not input_changes and not table_changes:
                return current, {}
            version = TableSchema(
                version=0 if current is None else current.version + 1,
                input=new_input,
                table=new_table,
                changes={"input": input_changes, "table": table_changes},
                batch_id=batch_id,
                run_id=run_id,
                at=time.time(),
            )
            if storage.create_json(self.url(version.version), version.to_json(),
                                   self.storage_options):  # fmt: skip
                return version, version.changes
        raise LedgerError(
            f"the schema of {self.sink} changed {_RACE_LIMIT} times while batch {batch_id} "
            "recorded its own change; the batch stays uncommitted for the next run"
        )

    def _load(self, url: str) -> TableSchema:
        with _CACHE_LOCK:
            found = _CACHE.get(url)
        if found is not None:
            return found
        try:
            found = TableSchema.from_json(storage.read_json(url, self.storage_options))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LedgerError(f"unreadable schema version {url}: {exc}") from exc
        with _CACHE_LOCK:
            _CACHE[url] = found
        return found


def _columns(schema: pa.Schema) -> list[dict[str, str]]:
    return [{"name": f.name, "type": str(f.type)} for f in schema]
