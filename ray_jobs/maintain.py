"""Table maintenance as a Ray task runs it: Delta compaction and vacuum, Parquet rewrites.

Plain Python over deltalake and pyarrow (the ``ray`` worker wraps these functions as Ray
tasks, :mod:`tasks.maintain`). Each returns metadata only; the Delta functions commit
through the Delta log themselves, the Parquet rewrite leaves its file under the
compaction's hidden folder for the core to commit (:mod:`celeray.compaction`).
"""

from __future__ import annotations

import os
import posixpath
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from celeray import fsoptions
from celeray.durable import make_dirs, sync_files
from celeray.errors import StorageError

__all__ = ["compact_delta", "rewrite_parquet_group", "vacuum_delta"]


def _delta_options(url: str) -> dict[str, str] | None:
    """deltalake's storage options for ``url``: the endpoint and region the node's own
    environment gives (credentials come from the node's AWS chain, never a message)."""
    return fsoptions.delta_options(url) or None


def _table(url: str) -> Any:
    from deltalake import DeltaTable

    return DeltaTable(url, storage_options=_delta_options(url))


def compact_delta(url: str, target_size: int, threads: int = 1) -> dict[str, Any]:
    """``optimize.compact`` of the Delta table at ``url``: one commit that adds the packed
    files and removes the small ones.

    Concurrent appends (celeray's batches) do not conflict with it: delta-rs checks the
    winning commits at commit time and retries on appends. The removed files stay on disk
    (time travel reads them) until a vacuum past the retention.
    """
    started = time.monotonic()
    table = _table(url)
    before = table.version()
    metrics = table.optimize.compact(target_size=target_size, max_concurrent_tasks=threads)
    table.update_incremental()
    return {
        "format": "delta",
        "version_before": before,
        "version": table.version(),
        "files_added": int(metrics.get("numFilesAdded", 0)),
        "files_removed": int(metrics.get("numFilesRemoved", 0)),
        "partitions": int(metrics.get("partitionsOptimized", 0)),
        "seconds": round(time.monotonic() - started, 3),
    }


def vacuum_delta(url: str, retention_hours: int) -> dict[str, Any]:
    """``vacuum`` of the Delta table at ``url``: delete files no version within
    ``retention_hours`` references, which the current version does not reference either.

    The retention is celeray's (never below the task time limit, checked by the caller),
    so Delta's own minimum is not enforced on top of it. Files whose names start with
    ``_`` (``_celeray/``, ``_delta_log/``) are never touched.
    """
    started = time.monotonic()
    table = _table(url)
    deleted = table.vacuum(retention_hours=retention_hours, dry_run=False,
                           enforce_retention_duration=False)  # fmt: skip
    return {
        "format": "delta",
        "retention_hours": retention_hours,
        "deleted": sorted(deleted),
        "files_deleted": len(deleted),
        "seconds": round(time.monotonic() - started, 3),
    }


def rewrite_parquet_group(
    sink: str, paths: list[str], out_url: str, compression: str = "zstd",
    compression_level: int | None = None,
) -> dict[str, Any]:
    """Write the rows of ``paths`` (relative to ``sink``, in that order) as one file at
    ``out_url``; return ``{"path", "rows", "bytes"}`` with ``path`` relative to the
    compaction's folder's root (the same as in the sink).

    Files with different columns (the table gained a column between batches) are combined
    with nulls where a file lacks one; a type that differs refuses the group. On a local
    disk the file and its folders are synced before this returns: its record comes next.
    """
    fs, root = fsoptions.url_to_fs(sink)
    tables = []
    for rel in paths:
        with fs.open(posixpath.join(root.rstrip("/"), rel), "rb") as f:
            tables.append(pq.ParquetFile(f).read())
    try:
        table = pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise StorageError(f"cannot combine {paths[:3]}...: {exc}") from exc
    out_fs, out_path = fsoptions.url_to_fs(out_url)
    codec = None if compression == "none" else compression
    local = out_url.startswith("file://") or "://" not in out_url
    if local:
        make_dirs(os.path.dirname(out_path))
    with out_fs.open(out_path, "wb") as f:
        pq.write_table(table, f, compression=codec, compression_level=compression_level)
    if local:
        sync_files(os.path.dirname(out_path), [out_path])
    return {"rows": table.num_rows, "bytes": int(out_fs.size(out_path))}
