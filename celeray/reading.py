"""Read a sink with its table schema: every row of every file, every column.

A Delta sink is read through its Delta log (deltalake's ``to_pyarrow_dataset``): exactly
the files of its newest version, in the table's schema; ``version=`` reads an older one
(time travel). A plain Parquet sink is read as below.

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

from celeray import fsoptions, storage
from celeray.delta_table import delta_uri
from celeray.errors import LedgerError
from celeray.schema_log import SchemaLog
from celeray.table_format import DELTA_LOG

__all__ = ["dataset"]


def dataset(
    sink: str, storage_options: dict[str, Any] | None = None, *, version: int | None = None
) -> ds.Dataset:
    """The rows of the sink at ``sink`` as a ``pyarrow.dataset`` in its table schema.

    A Delta sink: the files of its newest Delta version, or of ``version`` (time travel;
    a batch's version is in its run summary, ``delta_versions``). A Parquet sink: partition
    folders (``year=2013/``) become columns of the types the schema gives; ``_celeray/``
    (the ledger, staging, rejects) and other names starting with ``_`` or ``.`` are left
    out; ``version`` is refused. Raises ``LedgerError`` for a sink that no batch has
    committed to.
    """
    if storage.exists(storage.join(sink, DELTA_LOG), storage_options):
        from deltalake import DeltaTable

        table = DeltaTable(delta_uri(sink), version=version,
                           storage_options=fsoptions.delta_options(sink) or None)  # fmt: skip
        return table.to_pyarrow_dataset()
    if version is not None:
        raise LedgerError(f"{sink} is a plain Parquet sink: it has no versions to read")
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
