"""Read an input file (CSV, JSON lines or Parquet; zstd, gzip or plain) as record batches.

A plain CSV or JSON lines file can also be read one byte range at a time
(:mod:`ray_jobs._line_range`): each range first reads a sample from the start of the file
(``SAMPLE_BYTES``, whole lines) and takes the column names and types from it, so all
ranges of a file give the same schema. The types pyarrow infers from a prefix are never
wider than those it infers from the whole first block, and a value that does not fit them
fails its range, after which the caller reads the whole file as usual: a split file that
succeeds has exactly the schema and rows of the file read whole.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from functools import partial
from typing import Any, BinaryIO, cast

import pyarrow as pa

from celeray.arrow_types import arrow_types
from celeray.errors import EmptyInputError, InputError, ParseError, StorageError
from celeray.sizes import DEFAULT_MAX_COLUMNS, format_size
from ray_jobs._csv_guess import TypeGuess
from ray_jobs._line_range import ByteRange, LineRangeReader, SplitRefused
from ray_jobs._open_local import LocalCheck
from ray_jobs._read_csv import SkipRow, csv_batches, csv_range_batches, csv_sample
from ray_jobs._read_jsonl import jsonl_batches, jsonl_range_batches, jsonl_sample
from ray_jobs._read_parquet import parquet_batches
from ray_jobs._text_guard import TextGuard, count_line_breaks
from ray_jobs.decompress import open_input, strip_codec_suffix

__all__ = [
    "FORMATS",
    "RANGE_BLOCK_BYTES",
    "SAMPLE_BYTES",
    "SPLITTABLE_FORMATS",
    "detect_format",
    "read_batches",
]

# open_input of one file with its limits, storage options and check bound; byte_range free
Opener = Callable[..., AbstractContextManager[BinaryIO]]
FORMATS = ("csv", "jsonl", "parquet")
SPLITTABLE_FORMATS = ("csv", "jsonl")  # formats whose records are lines
SAMPLE_BYTES = 1024 * 1024  # start of a split file that every range infers its types from
# pyarrow's streaming readers read up to 32 blocks ahead of the parse on an I/O thread: with
# 4 MiB blocks (max_row_bytes) that is 128 MiB of text held. A range reads 1 MiB blocks:
# a 155 MB range of a .csv.zst peaked at 429 MB RSS instead of 556, at the same speed. A
# row longer than a block fails its range, which then reads the whole file as usual.
RANGE_BLOCK_BYTES = 1024 * 1024
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


def read_batches(
    url: str,
    *,
    fmt: str | None,
    schema: dict[str, str] | None,
    limits: dict[str, int],
    storage_options: dict[str, Any] | None = None,
    threads: int = 1,
    byte_range: ByteRange | None = None,
    check: LocalCheck | None = None,
    types: dict[str, pa.DataType] | None = None,
    skip_row: SkipRow | None = None,
    guess: TypeGuess | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream the record batches of the file at ``url``; none of them is empty.

    ``fmt`` ``None`` means :func:`detect_format`. ``schema`` maps column names to pyarrow
    type names; CSV converts those columns while parsing, JSON lines and Parquet cast them
    after reading. ``types``, when given, replaces ``schema``'s types (the caller has laid
    the table's pinned types and the declared ones together). With ``skip_row`` a
    malformed CSV row is skipped and passed to it instead of failing the file. ``guess``
    carries a CSV's types to the next file a unit reads, where they are told to pyarrow
    only when provably what it would infer (:mod:`ray_jobs._csv_guess`). Every
    problem with the file's content raises an ``InputError`` subclass carrying ``url``
    and, where pyarrow tells, ``line``/``row``; a file with no data rows raises
    ``EmptyInputError`` once the stream ends. A bad ``fmt`` or type name raises
    ``ValueError`` right away (a pipeline bug, not bad input). CSV and JSON lines must be
    UTF-8 (see :mod:`ray_jobs._text_guard`). A local file is checked by ``check`` each
    time it is opened (see :mod:`ray_jobs._open_local`).

    With ``byte_range`` (CSV or JSON lines only) just the lines of that range are read;
    a range may have no rows. The stream then raises ``SplitRefused`` when the range
    cannot be read on its own (see its ``head`` flag), and any ``InputError`` it raises
    has no line or row: the caller is expected to read the whole file to report those.
    """
    fmt = fmt or detect_format(url)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    types = arrow_types(schema) if types is None else dict(types)
    limits = dict(limits)
    opener = partial(open_input, url, limits=limits, storage_options=storage_options, check=check)
    if byte_range is not None:
        if fmt not in SPLITTABLE_FORMATS:
            raise ValueError(f"a {fmt} file cannot be read by byte ranges")
        return _read_range(url, fmt, types, limits, opener, byte_range)
    return _read(url, fmt, types, limits, opener, max(1, int(threads)), skip_row, guess)


def _read(
    url: str,
    fmt: str,
    types: dict[str, pa.DataType],
    limits: dict[str, int],
    open_raw: Opener,
    threads: int,
    skip_row: SkipRow | None,
    guess: TypeGuess | None,
) -> Iterator[pa.RecordBatch]:
    def opener() -> Any:
        return _open_text(url, fmt, limits, open_raw)

    max_row = int(limits["max_row_bytes"])
    rows = 0
    if fmt == "jsonl":
        for batch in jsonl_batches(
            opener,
            url=url,
            types=types,
            max_row_bytes=max_row,
            max_columns=_max_columns(limits),
        ):
            if batch.num_rows:
                rows += batch.num_rows
                yield batch
    else:
        with opener() if fmt == "csv" else open_raw() as stream:
            batches = (
                csv_batches(stream, url=url, types=types, max_row_bytes=max_row,
                            reopen=opener, skip_row=skip_row, guess=guess)
                if fmt == "csv"
                else parquet_batches(
                    stream,
                    url=url,
                    types=types,
                    threads=threads,
                    max_columns=_max_columns(limits),
                )
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


def _read_range(
    url: str,
    fmt: str,
    types: dict[str, pa.DataType],
    limits: dict[str, int],
    open_raw: Opener,
    span: ByteRange,
) -> Iterator[pa.RecordBatch]:
    block = min(int(limits["max_row_bytes"]), RANGE_BLOCK_BYTES)
    sample = _sample(url, fmt, limits, open_raw)
    try:
        if fmt == "csv":
            schema, multiline = csv_sample(sample, url=url, types=types)
        else:
            schema, multiline = jsonl_sample(sample, url=url), False
    except InputError as exc:
        raise SplitRefused(f"the start of the file does not read: {exc}", head=True) from None
    if multiline:
        raise SplitRefused(
            "a quoted value near the start of the file holds a line break", head=True
        )
    with (
        open_raw(byte_range=span) as r,
        closing(_guard(r, url, fmt, limits, start=span.first)) as guard,
    ):
        stream = cast(LineRangeReader, r)
        s = cast(BinaryIO, guard)
        if fmt == "jsonl":
            yield from jsonl_range_batches(
                s, url=url, schema=schema, types=types, max_row_bytes=block
            )
            return
        yield from csv_range_batches(
            s, url=url, schema=schema, header=span.first, max_row_bytes=block
        )
        if stream.quotes % 2:
            raise SplitRefused(
                f"{span} hold an odd number of quote characters: a quoted value may "
                "cross a range boundary",
                head=False,
            )


@contextmanager
def _open_text(url: str, fmt: str, limits: dict[str, int], open_raw: Opener) -> Iterator[BinaryIO]:
    """``open_raw()`` (:func:`open_input` of ``url``), its stream behind a :class:`TextGuard`.

    An encoding error finds its line by reading the file again up to the bad byte.
    """

    def line_breaks(limit: int) -> int | None:
        try:
            with open_raw() as again:
                return count_line_breaks(again, limit)
        except (InputError, StorageError, OSError):
            return None  # the file changed or went away: the error names the byte alone

    with (
        open_raw() as stream,
        closing(_guard(stream, url, fmt, limits, start=True, line_breaks=line_breaks)) as guard,
    ):
        yield cast(BinaryIO, guard)


def _guard(
    stream: Any,
    url: str,
    fmt: str,
    limits: dict[str, int],
    *,
    start: bool,
    line_breaks: Callable[[int], int | None] | None = None,
) -> TextGuard:
    return TextGuard(
        stream,
        url=url,
        fmt=fmt,
        max_row_bytes=int(limits["max_row_bytes"]),
        max_columns=_max_columns(limits),
        line_breaks=line_breaks,
        start=start,
    )


def _max_columns(limits: dict[str, int]) -> int:
    # Plans made before the cap existed (a message redelivered across an upgrade) lack it.
    return int(limits.get("max_columns", DEFAULT_MAX_COLUMNS))


def _sample(url: str, fmt: str, limits: dict[str, int], open_raw: Opener) -> bytes:
    """The whole lines in the first ``SAMPLE_BYTES`` (at least one line) of the file.

    Read through the :class:`TextGuard`, so a header too wide or not UTF-8 refuses the
    split (the first range then reads the whole file and reports it).
    """
    max_row = int(limits["max_row_bytes"])
    try:
        with _open_text(url, fmt, limits, open_raw) as stream:
            data = stream.read(SAMPLE_BYTES)
            end = data.rfind(b"\n")
            if end < 0 and len(data) == SAMPLE_BYTES:
                data += stream.read(max(0, max_row - len(data)))
                end = data.rfind(b"\n")
    except InputError as exc:
        raise SplitRefused(f"the file does not open: {exc}", head=True) from None
    if end < 0:
        raise SplitRefused(
            f"no line break in the first {format_size(max(max_row, len(data)))}", head=True
        )
    return data[: end + 1]
