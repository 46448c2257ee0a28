"""Write the rows a unit skipped (``on_bad_rows = "skip"``) as one Parquet file of rejects."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ray_jobs.writer import write_parquet

__all__ = ["REJECTS_FOLDER", "REJECTS_SCHEMA", "write_rejects"]

REJECTS_FOLDER = "_celeray/rejects"  # under the sink: readers of the table skip "_" folders
REJECTS_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("line", pa.int64()),
        ("row", pa.int64()),
        ("raw", pa.string()),  # JSON: column -> raw value, or {"_raw": the line's text}
        ("error", pa.string()),
        ("batch_id", pa.string()),
    ]
)


def write_rejects(
    rejects: list[dict[str, Any]],
    *,
    out_url: str,
    basename: str,
    batch_id: str,
    storage_options: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """Write ``rejects`` under ``out_url``/``REJECTS_FOLDER``; the outputs, paths relative
    to ``out_url`` (the commit moves them into the sink beside the data)."""
    if not rejects:
        return []
    table = pa.Table.from_pylist(
        [{**r, "batch_id": batch_id} for r in rejects], schema=REJECTS_SCHEMA
    )
    written = write_parquet(
        iter(table.to_batches()),
        out_url=f"{out_url.rstrip('/')}/{REJECTS_FOLDER}",
        basename=basename,
        partition_by=[],
        storage_options=storage_options,
    )
    return [{**o, "path": f"{REJECTS_FOLDER}/{o['path']}"} for o in written]
