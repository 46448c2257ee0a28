"""Stream a Parquet file's record batches, spooling a compressed one to disk first."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from celeray.errors import InputTooLargeError, ParseError
from ray_jobs._casting import cast_declared, missing_declared

__all__ = ["parquet_batches", "parquet_schema"]

SPOOL_IN_MEMORY = 64 * 1024**2  # a decompressed .parquet.zst stays in RAM up to this, then disk
BATCH_ROWS = 64 * 1024
_COPY_CHUNK = 1024 * 1024


def parquet_batches(
    stream: BinaryIO,
    *,
    url: str,
    types: dict[str, pa.DataType],
    threads: int,
    max_columns: int,
) -> Iterator[pa.RecordBatch]:
    """Record batches of the Parquet data in ``stream``, declared columns cast.

    Parquet needs random access: a forward-only (decompressed) stream is first copied into
    a ``SpooledTemporaryFile``; its size is already capped by the stream. Unreadable
    content raises ``ParseError``; declared columns that are missing or do not cast raise
    ``SchemaError`` (with the row, found by bisecting the failing batch). A file with
    more than ``max_columns`` leaf columns raises ``InputTooLargeError`` from its footer,
    before any column is read. The table's schema is laid over the batches by the caller
    (:mod:`ray_jobs._conform`).
    """
    with _parquet_file(stream, url=url) as pf:
        width = pf.metadata.num_columns
        if width > max_columns:
            raise InputTooLargeError(
                f"the file has {width:,} columns, over the cap of {max_columns:,} "
                "(max_columns); raise CELERAY_MAX_COLUMNS if tables this wide are real",
                url=url,
            )
        missing_declared(pf.schema_arrow.names, types, url=url)
        batches = pf.iter_batches(batch_size=BATCH_ROWS, use_threads=threads > 1)
        rows = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except pa.ArrowException as exc:
                raise ParseError(f"corrupt Parquet data after row {rows}: {exc}", url=url) from None
            batch = cast_declared(batch, types, url=url, rows_before=rows, fill_missing=False)
            rows += batch.num_rows
            yield batch


def parquet_schema(stream: BinaryIO, *, url: str) -> pa.Schema:
    """The Arrow schema in the footer of the Parquet data in ``stream``; or ``ParseError``."""
    with _parquet_file(stream, url=url) as pf:
        return pf.schema_arrow


@contextmanager
def _parquet_file(stream: BinaryIO, *, url: str) -> Iterator[pq.ParquetFile]:
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
        source: BinaryIO = stream
        if not stream.seekable():
            shutil.copyfileobj(stream, spool, _COPY_CHUNK)
            spool.seek(0)
            source = spool  # type: ignore[assignment]
        try:
            pf = pq.ParquetFile(source)
        except pa.ArrowException as exc:
            raise ParseError(f"not a readable Parquet file: {exc}", url=url) from None
        yield pf
