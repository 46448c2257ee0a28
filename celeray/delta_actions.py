"""A batch's data files as the add actions of its Delta commit.

The Ray tasks write a Delta batch's files into the table's hive partition folders and report
each one (path relative to the sink, rows, bytes, column statistics); the batch's ledger
entry keeps them as add actions, so that the Delta commit, made now or by recovery later,
adds exactly those files (:mod:`celeray.delta_table`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from celeray.errors import LedgerError

__all__ = ["HIVE_NULL", "add_actions", "partition_values"]

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # pyarrow's folder name for a null partition value
_STATS_KEYS = ("minValues", "maxValues", "nullCount")


def partition_values(path: str, partition_by: list[str]) -> dict[str, str | None]:
    """The partition values a data file's hive folders name (``year=2013/month=1/x``).

    Folder values are URL-decoded (pyarrow encodes ``/``, spaces...); pyarrow's null folder
    is None. ``LedgerError`` when the folders do not name exactly ``partition_by``, in order.
    """
    folders = path.split("/")[:-1]
    if len(folders) != len(partition_by):
        raise LedgerError(f"data file {path!r} does not lie in the partition folders "
                          f"{partition_by}")  # fmt: skip
    out: dict[str, str | None] = {}
    for folder, column in zip(folders, partition_by, strict=True):
        key, sep, value = folder.partition("=")
        if not sep or unquote(key) != column:
            raise LedgerError(f"data file {path!r}: folder {folder!r} is not {column}=...")
        value = unquote(value)
        out[column] = None if value == HIVE_NULL else value
    return out


def add_actions(outputs: list[dict[str, Any]], partition_by: list[str]) -> list[dict[str, Any]]:
    """The add actions (as the ledger entry keeps them) of a batch's data files.

    ``outputs`` are the writer's (``path`` relative to the sink, ``rows``, ``bytes``, and
    ``stats``: the file's column statistics, which the Ray task took from the footer it
    wrote, :mod:`ray_jobs._file_stats`). The add action's stats are the row count plus
    those min/max/null counts, so engines skip files by value; an output without
    ``stats`` (a result from before they were collected) gets the row count alone.
    """
    return [
        {
            "path": o["path"],
            "size": int(o["bytes"]),
            "partition_values": partition_values(str(o["path"]), partition_by),
            "rows": int(o["rows"] or 0),
            **({"stats": _stats_of(o["stats"])} if o.get("stats") else {}),
        }
        for o in sorted(outputs, key=lambda o: str(o["path"]))
    ]


def _stats_of(stats: Any) -> dict[str, Any]:
    """The statistics an output carries, kept to Delta's three maps (a result is data from
    a worker: nothing else of it reaches the Delta log)."""
    if not isinstance(stats, dict):
        return {}
    return {k: dict(stats[k]) for k in _STATS_KEYS if isinstance(stats.get(k), dict)}
