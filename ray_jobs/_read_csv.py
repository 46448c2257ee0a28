"""Stream CSV as record batches with pyarrow, turning its failures into input errors."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv

from celeray.errors import EmptyInputError, InputError, InputTooLargeError, ParseError, SchemaError
from celeray.sizes import format_size
from ray_jobs._casting import missing_declared

__all__ = ["csv_batches"]

# pyarrow's messages, as of pyarrow 26 with use_threads=False (which makes it count rows).
_CONVERSION = re.compile(
    r"In CSV column #(\d+): (?:Row #(\d+): )?CSV conversion error to (.+?): invalid value '(.*)'",
    re.DOTALL,
)
_ROW = re.compile(r"Row #(\d+)")


def csv_batches(
    stream: BinaryIO,
    *,
    url: str,
    types: dict[str, pa.DataType],
    max_row_bytes: int,
    reopen: Callable[[], AbstractContextManager[BinaryIO]] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Record batches of the CSV in ``stream``, declared columns already typed.

    Reads with ``block_size=max_row_bytes`` (a row must fit in a block) and
    ``use_threads=False``: that is what makes pyarrow count rows, so errors carry
    ``row`` (1-based among data rows) and ``line`` (the record's number counting the
    header as line 1, which is the text line when no value holds a newline and no line is
    blank). The first malformed row fails the whole file. ``reopen`` opens the file again
    to learn the column names when the very first block fails to convert.
    """
    bad_rows: list[Any] = []

    def on_invalid(row: Any) -> str:
        bad_rows.append(row)
        return "error"

    names: list[str] = []
    rows = 0
    try:
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(block_size=max_row_bytes, use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types=types),
        )
        names = reader.schema.names
        missing_declared(names, types, url=url)
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            rows += batch.num_rows
            yield batch
    except pa.ArrowInvalid as exc:
        if not names and reopen is not None and _CONVERSION.search(str(exc)):
            names = _header(reopen, max_row_bytes)
        raise _input_error(
            exc, url=url, names=names, bad_rows=bad_rows, rows=rows, max_row_bytes=max_row_bytes
        ) from None


def _header(
    reopen: Callable[[], AbstractContextManager[BinaryIO]], max_row_bytes: int
) -> list[str]:
    """The column names, read again without declared types (which cannot fail)."""
    try:
        with reopen() as stream:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(block_size=max_row_bytes, use_threads=False),
            )
            return list(reader.schema.names)
    except (InputError, pa.ArrowException):
        return []


def _input_error(
    exc: Exception,
    *,
    url: str,
    names: list[str],
    bad_rows: list[Any],
    rows: int,
    max_row_bytes: int,
) -> InputError:
    text = str(exc)
    if "Empty CSV file" in text:
        return EmptyInputError("the file has no header and no rows", url=url)
    if "straddl" in text:
        return InputTooLargeError(
            f"a row after data row {rows} is longer than max_row_bytes "
            f"({format_size(max_row_bytes)}): the reader works in blocks of that size and "
            "a row must fit in one; raise CELERAY_MAX_ROW_BYTES if rows this long are real",
            url=url,
        )
    if bad_rows:
        bad = bad_rows[0]
        number = bad.number if bad.number is not None and bad.number > 0 else None
        return ParseError(
            f"malformed row: expected {bad.expected_columns} columns, got "
            f"{bad.actual_columns}: {_clip(bad.text)!r}",
            url=url,
            line=number,
            row=None if number is None else number - 1,
        )
    m = _CONVERSION.search(text)
    if m:
        index = int(m.group(1))
        column = names[index] if index < len(names) else f"#{index}"
        number = int(m.group(2)) if m.group(2) else None
        return SchemaError(
            f"column {column!r}: value {_clip(m.group(4))!r} does not convert to {m.group(3)}",
            url=url,
            line=number,
            row=None if number is None else number - 1,
        )
    m = _ROW.search(text)
    number = int(m.group(1)) if m else None
    return ParseError(text, url=url, line=number, row=None if number is None else number - 1)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
