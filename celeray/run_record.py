"""A run's record in the run store, read back: its progress, its summary, its schema and
Delta changes, and the names of the fields that :mod:`celeray.runs` writes into it."""

from __future__ import annotations

import time
from typing import Any

from celeray.runstate import COUNTERS

__all__ = [
    "DELTA_VERSION",
    "DROPPED",
    "FINAL_STATES",
    "SCHEMA_CHANGE",
    "delta_summary",
    "progress_of",
    "schema_summary",
    "summary_of",
]

FINAL_STATES = frozenset({"SUCCESS", "FAILURE"})  # a run's Celery states that never change
DROPPED = "dropped:"  # run record fields: values of a column the table does not take
SCHEMA_CHANGE = "schema:"  # run record fields: a change the run's batches made to the schema
DELTA_VERSION = "delta:"  # run record fields: "delta:<batch_id>:<version>", a Delta commit


def progress_of(record: dict[str, Any]) -> dict[str, Any]:
    """The PROGRESS meta of a run record, as the API and the CLI show it."""
    return {
        "run_id": record.get("run_id"),
        "pipeline": record.get("pipeline"),
        **{k: int(record.get(k) or 0) for k in COUNTERS},
    }


def summary_of(record: dict[str, Any]) -> dict[str, Any]:
    """The run's summary, as stored in the result backend when it ends."""
    started = float(record.get("started_at") or record.get("created_at") or time.time())
    finished = float(record.get("finished_at") or time.time())
    seconds = max(finished - started, 0.0)
    return {
        **progress_of(record),
        "status": "failed" if record.get("batches_failed") else "committed",
        "files_listed": int(record.get("files_listed") or 0),
        "files_skipped": int(record.get("files_skipped") or 0),
        "backlog_files": int(record.get("backlog_files") or 0),
        "backlog_bytes": int(record.get("backlog_bytes") or 0),
        "changed_after_commit": record.get("changed_after_commit") or [],
        "quarantined": record.get("quarantined", []),
        "errors": record.get("errors", []),
        "schema": schema_summary(record),
        **delta_summary(record),
        "source": record.get("source"),
        "sink": record.get("sink"),
        "seconds": round(seconds, 3),
        "mb_per_s": round(int(record.get("bytes_in") or 0) / 1e6 / seconds, 2) if seconds else 0,
    }


def schema_summary(record: dict[str, Any]) -> dict[str, Any]:
    """What the run's batches did to the table schema: the changes they made (``input``
    and ``table`` lists of "column type (added)" / "column: a -> b"), and the columns the
    table did not take (``schema_evolution = "none"``) with how many values each had."""
    changes: dict[str, list[str]] = {"input": [], "table": []}
    dropped: dict[str, int] = {}
    for key, value in record.items():
        if key.startswith(SCHEMA_CHANGE):
            which, _, change = key[len(SCHEMA_CHANGE):].partition(":")
            changes.setdefault(which, []).append(change)
        elif key.startswith(DROPPED):
            dropped[key[len(DROPPED):]] = int(value or 0)
    return {"changes": {k: sorted(v) for k, v in changes.items()}, "dropped_columns": dropped}


def delta_summary(record: dict[str, Any]) -> dict[str, Any]:
    """A Delta sink's run: ``delta_versions`` (batch id -> the Delta version that published
    it; None for a batch without rows) and ``delta_version`` (the newest of them). Nothing
    for a run that published no Delta commit."""
    versions: dict[str, int | None] = {}
    for key in record:
        if key.startswith(DELTA_VERSION):
            batch_id, _, version = key[len(DELTA_VERSION):].rpartition(":")
            versions[batch_id] = None if version == "None" else int(version)
    if not versions:
        return {}
    known = [v for v in versions.values() if v is not None]
    return {"delta_versions": versions, "delta_version": max(known) if known else None}
