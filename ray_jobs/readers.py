"""Read an input file (CSV, JSON lines or Parquet; zstd, gzip or plain) as record batches."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from celeray.arrow_types import arrow_type, arrow_types
from celeray.errors import EmptyInputError, ParseError
from ray_jobs._read_csv import csv_batches
from ray_jobs._read_jsonl import jsonl_batches
from ray_jobs._read_parquet import parquet_batches
from ray_jobs.decompress import open_input, strip_codec_suffix

__all__ = ["FORMATS", "detect_format", "parse_type", "read_batches"]

FORMATS = ("csv", "jsonl", "parquet")
_EXTENSIONS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def detect_format(url: str) -> str:
    """``"csv"``, ``"jsonl"`` or ``"parquet"`` from the file name, compression suffix ignored.

    ``.json`` and ``.ndjson`` count as JSON lines. Raises ``ParseError`` (with ``url``)
    when the name does not tell.
    """
    name = strip_codec_suffix(url)
    fmt = _EXTENSIONS.get(posixpath.splitext(name)[1].lower())
    if fmt is None:
        raise ParseError(
            f"cannot tell the format of {name!r} from its name; set format in the pipeline "
            f"(one of {', '.join(FORMATS)})",
            url=url,
        )
    return fmt


def parse_type(name: str) -> pa.DataType:
    """The pyarrow type a schema entry names (``"int32"``, ``"decimal128(10,2)"``...).

    The rules are :func:`celeray.arrow_types.arrow_type`'s, the ones the pipeline file is
    validated with; an unknown name raises ``ValueError`` listing examples.
    """
    return arrow_type(name)


def read_batches(
    url: str,
    *,
    fmt: str | None,
    schema: dict[str, str] | None,
    limits: dict[str, int],
    storage_options: dict[str, Any] | None = None,
    threads: int = 1,
) -> Iterator[pa.RecordBatch]:
    """Stream the record batches of the file at ``url``; none of them is empty.

    ``fmt`` ``None`` means :func:`detect_format`. ``schema`` maps column names to pyarrow
    type names; CSV converts those columns while parsing, JSON lines and Parquet cast them
    after reading. Every problem with the file's content raises an ``InputError``
    subclass carrying ``url`` and, where pyarrow tells, ``line``/``row``; a file with no
    data rows raises ``EmptyInputError`` once the stream ends. A bad ``fmt`` or type name
    raises ``ValueError`` right away (a pipeline bug, not bad input).
    """
    fmt = fmt or detect_format(url)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    types = arrow_types(schema)
    return _read(url, fmt, types, dict(limits), storage_options, max(1, int(threads)))


def _read(
    url: str,
    fmt: str,
    types: dict[str, pa.DataType],
    limits: dict[str, int],
    storage_options: dict[str, Any] | None,
    threads: int,
) -> Iterator[pa.RecordBatch]:
    def opener() -> Any:
        return open_input(url, limits=limits, storage_options=storage_options)

    max_row = int(limits["max_row_bytes"])
    rows = 0
    if fmt == "jsonl":
        for batch in jsonl_batches(opener, url=url, types=types, max_row_bytes=max_row):
            if batch.num_rows:
                rows += batch.num_rows
                yield batch
    else:
        with opener() as stream:
            batches = (
                csv_batches(stream, url=url, types=types, max_row_bytes=max_row, reopen=opener)
                if fmt == "csv"
                else parquet_batches(stream, url=url, types=types, threads=threads)
            )
            for batch in batches:
                if batch.num_rows:
                    rows += batch.num_rows
                    yield batch
    if rows == 0:
        raise EmptyInputError(
            "the file has a header but no data rows" if fmt == "csv" else "the file has no rows",
            url=url,
        )
