"""Read a Parquet sink with its table schema: every row of every file, every column.

The files of a sink were written over time, so they differ: a file from before a column
was added lacks it, one from before a widening holds the narrower type. A reader that
takes its schema from one file (``pyarrow.dataset`` without ``schema``, DuckDB without
``union_by_name``) drops the column or fails; :func:`dataset` passes the sink's published
schema (``<sink>/_celeray/schema/``), so readers see the table as it is now: missing
columns as nulls, narrower types widened. DuckDB and Polars scan the dataset it returns::

    import celeray.reading, duckdb, polars as pl
    flights = celeray.reading.dataset("file:///srv/lake/flights")
    duckdb.sql("SELECT origin, count(*) FROM flights GROUP BY origin")
    pl.scan_pyarrow_dataset(flights).collect()
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from celeray import fsoptions
from celeray.errors import LedgerError
from celeray.schema_log import SchemaLog

__all__ = ["dataset"]


def dataset(sink: str, storage_options: dict[str, Any] | None = None) -> ds.Dataset:
    """The rows of the Parquet sink at ``sink`` as a ``pyarrow.dataset`` in its table schema.

    Partition folders (``year=2013/``) become columns of the types the schema gives;
    ``_celeray/`` (the ledger, staging, rejects) and other names starting with ``_`` or
    ``.`` are left out. Raises ``LedgerError`` for a sink that no batch has committed to.
    """
    current = SchemaLog(sink, storage_options).current()
    if current is None:
        raise LedgerError(f"{sink}: no batch has committed to this sink yet; no schema to read")
    fs, root = fsoptions.url_to_fs(sink, storage_options)
    schema = current.table
    keys = _partition_keys(fs, root.rstrip("/"))
    partitioning = None
    if keys:
        partitioning = ds.partitioning(
            pa.schema(
                [schema.field(k) if k in schema.names else pa.field(k, pa.string()) for k in keys]
            ),
            flavor="hive",
        )
    return ds.dataset(
        root, schema=schema, format="parquet", filesystem=fs, partitioning=partitioning,
        ignore_prefixes=[".", "_"],
    )  # fmt: skip


def _partition_keys(fs: Any, root: str) -> list[str]:
    """The partition columns the sink's folders name: the ``k=v`` folders down to the first
    data file (one listing per level, not a walk of the whole sink)."""
    keys: list[str] = []
    folder = root
    while True:
        entries = sorted(fs.ls(folder, detail=True), key=lambda e: e["name"])
        visible = [e for e in entries
                   if not e["name"].rstrip("/").rsplit("/", 1)[-1].startswith(("_", "."))]
        if not visible or any(e["type"] == "file" for e in visible):
            return keys
        folder = visible[0]["name"].rstrip("/")
        name = folder.rsplit("/", 1)[-1]
        if "=" not in name:
            return keys
        keys.append(name.split("=", 1)[0])
