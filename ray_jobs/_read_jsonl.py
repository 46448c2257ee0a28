"""Stream JSON lines as record batches with pyarrow, turning its failures into input errors.

pyarrow's streaming JSON reader fixes the columns and their types from the first block
(``max_row_bytes`` of text): a key that first shows up later, or a column that was all null
in the first block and gets values later, fails the stream. So the first
``HOLD_BYTES`` of batches are held back; if such a change happens while nothing has been
handed out yet and the whole file is small enough, the file is read again with
``read_json`` as one block, which infers the columns from all of it.

One byte range of a split file is read by :func:`jsonl_range_batches` with the schema
:func:`jsonl_sample` inferred from the start of the file; a key or a type the sample did
not show fails the range (and the caller then reads the whole file the way above).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager, closing
from itertools import chain
from typing import BinaryIO

import pyarrow as pa
import pyarrow.json as pajson

from celeray.errors import EmptyInputError, InputError, InputTooLargeError, ParseError, SchemaError
from celeray.sizes import format_size
from ray_jobs._casting import cast_declared
from ray_jobs._text_guard import json_key_count

__all__ = [
    "HOLD_BYTES",
    "WHOLE_FILE_BYTES",
    "jsonl_batches",
    "jsonl_range_batches",
    "jsonl_sample",
]

HOLD_BYTES = 64 * 1024**2  # Arrow bytes held back before batches are handed out
WHOLE_FILE_BYTES = 128 * 1024**2  # largest text read again in one block after a change
OUT_ROWS = 64 * 1024

_CHANGED = re.compile(r"Column\((.*?)\) changed from (\w+) to (\w+) in row (\d+)")
_IN_ROW = re.compile(r"in row (\d+)")


class _Drift(Exception):
    """The streaming reader met a column the first block did not prepare it for."""

    def __init__(self, error: InputError) -> None:
        super().__init__(str(error))
        self.error = error


def jsonl_batches(
    open_stream: Callable[[], AbstractContextManager[BinaryIO]],
    *,
    url: str,
    types: dict[str, pa.DataType],
    max_row_bytes: int,
    max_columns: int | None = None,
) -> Iterator[pa.RecordBatch]:
    """Record batches of the JSON lines ``open_stream()`` yields, declared columns cast.

    ``open_stream`` is called again for the whole-file retry. Errors carry ``row``: the
    1-based count of JSON objects (blank lines are not counted). Declared columns are cast
    after reading; a declared key absent from the file becomes a column of nulls. Before
    the whole-file retry builds columns from every key of the file, its distinct keys are
    counted (``InputTooLargeError`` past ``max_columns``).
    """
    source = _stream(open_stream, url=url, max_row_bytes=max_row_bytes)
    with closing(source):
        held: list[pa.RecordBatch] = []
        held_bytes = 0
        try:
            for batch in source:
                held.append(batch)
                held_bytes += batch.nbytes
                if held_bytes > HOLD_BYTES:
                    break
        except _Drift as drift:
            yield from _whole_file(
                open_stream,
                url=url,
                types=types,
                max_row_bytes=max_row_bytes,
                max_columns=max_columns,
                drift=drift.error,
            )
            return
        rows = 0
        for batch in chain(held, _unwrap_drift(source)):
            yield cast_declared(batch, types, url=url, rows_before=rows, fill_missing=True)
            rows += batch.num_rows


def jsonl_sample(sample: bytes, *, url: str) -> pa.Schema:
    """The schema pyarrow infers from ``sample`` (the file's first lines, ending in one).

    Declared types are not applied: like :func:`jsonl_batches`, the range reader casts
    them after reading. Raises ``InputError`` when the sample does not parse.
    """
    try:
        table = pajson.read_json(
            io.BytesIO(sample),
            read_options=pajson.ReadOptions(block_size=max(1, len(sample)), use_threads=False),
        )
    except pa.ArrowInvalid as exc:
        raise _input_error(exc, url=url, rows=0, max_row_bytes=len(sample)) from None
    return table.schema


def jsonl_range_batches(
    stream: BinaryIO,
    *,
    url: str,
    schema: pa.Schema,
    types: dict[str, pa.DataType],
    max_row_bytes: int,
) -> Iterator[pa.RecordBatch]:
    """Record batches of one byte range of a JSON lines file, with exactly ``schema``.

    Declared ``types`` are cast after reading, as for a whole file. A range without
    objects gives no batch. Any failure (a bad line, a key or a value type ``schema`` does
    not allow) raises an ``InputError`` whose row, relative to the range, is left out: the
    caller reads the whole file again to report it.
    """
    rows = 0
    try:
        reader = pajson.open_json(
            stream,
            read_options=pajson.ReadOptions(block_size=max_row_bytes, use_threads=False),
            parse_options=pajson.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="error"
            ),
        )
        for batch in reader:
            yield cast_declared(batch, types, url=url, rows_before=rows, fill_missing=True)
            rows += batch.num_rows
    except pa.ArrowInvalid as exc:
        if "Empty JSON" in str(exc):
            return
        raise ParseError(f"in this byte range: {exc}", url=url) from None


def _unwrap_drift(source: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    try:
        yield from source
    except _Drift as drift:
        raise drift.error from None


def _stream(
    open_stream: Callable[[], AbstractContextManager[BinaryIO]], *, url: str, max_row_bytes: int
) -> Generator[pa.RecordBatch, None, None]:
    rows = 0
    with open_stream() as stream:
        try:
            reader = pajson.open_json(
                stream,
                read_options=pajson.ReadOptions(block_size=max_row_bytes, use_threads=False),
            )
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                rows += batch.num_rows
                yield batch
        except pa.ArrowInvalid as exc:
            error = _input_error(exc, url=url, rows=rows, max_row_bytes=max_row_bytes)
            text = str(exc)
            if rows and ("unexpected field" in text or "changed from null" in text):
                raise _Drift(error) from None
            raise error from None


def _whole_file(
    open_stream: Callable[[], AbstractContextManager[BinaryIO]],
    *,
    url: str,
    types: dict[str, pa.DataType],
    max_row_bytes: int,
    max_columns: int | None,
    drift: InputError,
) -> Iterator[pa.RecordBatch]:
    with open_stream() as stream:
        data = stream.read(WHOLE_FILE_BYTES + 1)
    if len(data) > WHOLE_FILE_BYTES:
        raise drift
    _check_line_lengths(data, url=url, max_row_bytes=max_row_bytes)
    if max_columns is not None:
        keys = json_key_count(data)
        if keys > max_columns:
            raise InputTooLargeError(
                f"the file's objects have {keys:,} distinct keys, over the cap of "
                f"{max_columns:,} (max_columns); refused before parsing. Raise "
                "CELERAY_MAX_COLUMNS if tables this wide are real",
                url=url,
            )
    try:
        table = pajson.read_json(
            io.BytesIO(data),
            read_options=pajson.ReadOptions(block_size=len(data) + 1, use_threads=False),
        )
    except pa.ArrowInvalid as exc:
        raise _input_error(exc, url=url, rows=0, max_row_bytes=max_row_bytes) from None
    rows = 0
    for batch in table.to_batches(max_chunksize=OUT_ROWS):
        yield cast_declared(batch, types, url=url, rows_before=rows, fill_missing=True)
        rows += batch.num_rows


def _check_line_lengths(data: bytes, *, url: str, max_row_bytes: int) -> None:
    """Apply the row cap that the block size enforces on the streaming path.

    Jumps from the last newline of one ``max_row_bytes`` window to the next, so it costs
    ``len(data) / max_row_bytes`` searches, not one per line.
    """
    start = 0
    while len(data) - start > max_row_bytes:
        newline = data.rfind(b"\n", start, start + max_row_bytes + 1)
        if newline == -1:
            line = data.count(b"\n", 0, start) + 1
            raise InputTooLargeError(
                f"line {line} is longer than the cap of {format_size(max_row_bytes)} "
                "(max_row_bytes)",
                url=url,
                line=line,
            )
        start = newline + 1


def _input_error(exc: Exception, *, url: str, rows: int, max_row_bytes: int) -> InputError:
    """The input error for pyarrow's ``exc``; ``rows`` objects came before its block."""
    text = str(exc)
    if "Empty JSON" in text:
        return EmptyInputError("the file holds no JSON objects", url=url)
    if "straddl" in text:
        return InputTooLargeError(
            f"a line after object {rows} is longer than max_row_bytes "
            f"({format_size(max_row_bytes)}): the reader works in blocks of that size and "
            "a line must fit in one; raise CELERAY_MAX_ROW_BYTES if lines this long are real",
            url=url,
        )
    m = _CHANGED.search(text)
    if m:
        column = m.group(1).lstrip("/").replace("/", ".")
        return SchemaError(
            f"column {column!r} changes from {m.group(2)} to {m.group(3)}"
            + (
                " after the first block of the file (pyarrow's streaming reader takes the "
                "column types from the first max_row_bytes of text)"
                if m.group(2) == "null"
                else ""
            ),
            url=url,
            row=rows + int(m.group(4)) + 1,
        )
    if "unexpected field" in text:
        return SchemaError(
            f"a key first appears after object {rows}, past the first block of the file "
            "(pyarrow's streaming reader takes the columns from the first max_row_bytes of "
            "text, and the file is too large to read whole)",
            url=url,
        )
    m = _IN_ROW.search(text)
    return ParseError(
        f"bad JSON: {text.removeprefix('JSON parse error: ')}",
        url=url,
        row=rows + int(m.group(1)) + 1 if m else None,
    )
