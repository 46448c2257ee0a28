"""Stream CSV as record batches with pyarrow, turning its failures into input errors.

Besides a whole file (:func:`csv_batches`), one byte range of a split file can be read
(:func:`csv_range_batches`) with the column names and types that :func:`csv_sample` took
from the start of the file, so that every range of the file gives the same schema.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from celeray.errors import EmptyInputError, InputError, InputTooLargeError, ParseError, SchemaError
from celeray.sizes import format_size
from ray_jobs._csv_guess import TypeGuess

__all__ = ["SkipRow", "csv_batches", "csv_range_batches", "csv_sample"]

SkipRow = Callable[[int | None, str, str], None]  # (line, text, error) of a skipped row

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
    skip_row: SkipRow | None = None,
    guess: TypeGuess | None = None,
) -> Iterator[pa.RecordBatch]:
    """Record batches of the CSV in ``stream``, the columns ``types`` names already typed
    (a column it names that the file lacks is no error: the conformer fills it).

    With ``skip_row``, a malformed row (the wrong number of columns) is skipped and passed
    to it (its line, its text, the error) instead of failing the file.

    Reads with ``block_size=max_row_bytes`` (a row must fit in a block) and
    ``use_threads=False``: that is what makes pyarrow count rows, so errors carry
    ``row`` (1-based among data rows) and ``line`` (the record's number counting the
    header as line 1, which is the text line when no value holds a newline and no line is
    blank). The first malformed row fails the whole file. ``reopen`` opens the file again
    to learn the column names when the very first block fails to convert.

    The types come from the first block, as pyarrow's streaming reader takes them, but
    the rest of the file is read by a second reader told those types: pyarrow (26)
    converts every later block twice while it infers (``InferringColumnDecoder``). The
    first block is cut where pyarrow cuts it
    (after its last line break), so the types and the errors are the same. ``guess``
    (the unit's :class:`~ray_jobs._csv_guess.TypeGuess`) tells the first block the types
    it provably infers, and learns this file's.
    """
    first = stream.read(max_row_bytes)
    cut = max(first.rfind(b"\n"), first.rfind(b"\r")) + 1
    whole = len(first) < max_row_bytes
    if not whole and cut == 0:  # a first row beyond a block
        read = _Read(url, types, max_row_bytes, skip_row=skip_row)
        yield from _blocks(read, _Prefixed(first, stream), reopen=reopen)
        return
    block = first if whole else pa.py_buffer(first).slice(0, cut)  # no copy of the 4 MiB
    head = yield from _first_block(
        first, block, url=url, types=types, max_row_bytes=max_row_bytes, reopen=reopen,
        skip_row=skip_row, guess=guess,
    )  # fmt: skip
    if guess is not None and head.rows:
        guess.learn(head.names, head.types)
    if whole:
        return
    found = dict(zip(head.names, head.types, strict=True)) if head.rows else types
    rest = _Read(url, found, max_row_bytes, names=head.names, rows_before=head.rows + head.skipped,
                 skip_row=skip_row)  # fmt: skip
    yield from _blocks(rest, _Prefixed(first[cut:], stream))


def _first_block(
    first: bytes,
    block: Any,
    *,
    url: str,
    types: dict[str, pa.DataType],
    max_row_bytes: int,
    reopen: Callable[[], AbstractContextManager[BinaryIO]] | None,
    skip_row: SkipRow | None,
    guess: TypeGuess | None,
) -> Generator[pa.RecordBatch, None, _Read]:
    """The batches of a file's first block (``block``, which ``first`` starts with); returns
    the reader, which knows the block's names and types.

    When ``guess`` proves some of the block's types (see :mod:`ray_jobs._csv_guess`), the
    block is read told them first; if that read fails, it is read again inferring, and
    the malformed rows the failed read met are passed to ``skip_row`` only once, by the
    read that counts.
    """
    told = guess.told(first, types) if guess is not None else None
    if told is not None:
        held: list[tuple[int | None, str, str]] = []

        def hold(line: int | None, text: str, error: str) -> None:
            held.append((line, text, error))

        attempt = _Read(url, told, max_row_bytes, skip_row=None if skip_row is None else hold)
        try:
            batches = list(_blocks(attempt, pa.BufferReader(block)))
        except (InputError, pa.ArrowException):
            pass  # read again inferring: the outcome and its errors are inference's
        else:
            if skip_row is not None:
                for row in held:
                    skip_row(*row)
            yield from batches
            return attempt
    head = _Read(url, types, max_row_bytes, skip_row=skip_row)
    yield from _blocks(head, pa.BufferReader(block), reopen=reopen)
    return head


class _Read:
    """One pyarrow reader's options, and what it found: names, types, rows read."""

    def __init__(
        self,
        url: str,
        types: dict[str, pa.DataType],
        block_size: int,
        *,
        names: list[str] | None = None,
        rows_before: int = 0,
        skip_row: SkipRow | None = None,
    ) -> None:
        self.url, self.declared, self.block_size = url, types, block_size
        self.given_names, self.rows_before = names, rows_before
        self.names: list[str] = list(names or [])
        self.types: list[pa.DataType] = []
        self.rows = 0
        self.skipped = 0  # malformed rows handed to skip_row
        self.skip_row = skip_row

    def number(self, local: int) -> int:
        """A record number of the whole file (the header is 1) from this reader's own."""
        return local if self.given_names is None else local + self.rows_before + 1


def _blocks(
    read: _Read,
    source: Any,
    *,
    reopen: Callable[[], AbstractContextManager[BinaryIO]] | None = None,
) -> Iterator[pa.RecordBatch]:
    bad_rows: list[Any] = []

    def on_invalid(row: Any) -> str:
        if read.skip_row is not None:
            read.skipped += 1
            number = read.number(row.number) if row.number is not None and row.number > 0 \
                else None  # fmt: skip
            read.skip_row(number, row.text, f"malformed row: expected {row.expected_columns} "
                          f"columns, got {row.actual_columns}")  # fmt: skip
            return "skip"
        bad_rows.append(row)
        return "error"

    options = pacsv.ReadOptions(
        block_size=read.block_size, use_threads=False, column_names=read.given_names
    )
    try:
        reader = pacsv.open_csv(
            source,
            read_options=options,
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types=read.declared),
        )
        read.names, read.types = reader.schema.names, reader.schema.types
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            read.rows += batch.num_rows
            yield batch
    except pa.ArrowInvalid as exc:
        if read.given_names is not None and "Empty CSV file" in str(exc):
            return  # the first block ended where the file does
        names = read.names
        if not names and reopen is not None and _CONVERSION.search(str(exc)):
            names = _header(reopen, read.block_size)
        raise _input_error(exc, read=read, names=names, bad_rows=bad_rows) from None


class _Prefixed(io.RawIOBase):
    """``prefix`` (the start of a row read ahead), then the rest of ``stream``.

    The prefix is served as a short read of its own: pyarrow joins a block without a
    line break to the next one, and copying the next 4 MiB behind it would cost ~1 ms.
    """

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        super().__init__()
        self._prefix = prefix
        self._stream = stream

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if not self._prefix:
            return self._stream.read(-1 if size is None else size)
        if size is None or size < 0:
            head, self._prefix = self._prefix, b""
            return head + self._stream.read()
        head, self._prefix = self._prefix[:size], self._prefix[size:]
        return head

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(memoryview(buffer)))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)


def csv_sample(
    sample: bytes, *, url: str, types: dict[str, pa.DataType]
) -> tuple[pa.Schema, bool]:
    """The schema pyarrow infers from ``sample`` (the file's first lines, header included).

    ``sample`` must end with a line break. The given ``types`` win over inferred ones, as in
    :func:`csv_batches`. The flag says whether a quoted value (or name) in the sample holds
    a line break: such a file is not split. Raises ``InputError`` when the sample does not
    parse or convert.
    """
    try:
        reader = pacsv.open_csv(
            io.BytesIO(sample),
            read_options=pacsv.ReadOptions(block_size=max(1, len(sample)), use_threads=False),
            convert_options=pacsv.ConvertOptions(column_types=types),
        )
        schema = reader.schema
        multiline = b'"' in sample and (
            any("\n" in n or "\r" in n for n in schema.names)
            or _has_line_break(pa.Table.from_batches(list(reader), schema=schema))
        )
    except pa.ArrowInvalid as exc:
        read = _Read(url, types, max(1, len(sample)))
        raise _input_error(exc, read=read, names=[], bad_rows=[]) from None
    return schema, multiline


def csv_range_batches(
    stream: BinaryIO, *, url: str, schema: pa.Schema, header: bool, max_row_bytes: int
) -> Iterator[pa.RecordBatch]:
    """Record batches of one byte range of a CSV file, converted to ``schema``.

    ``header`` says whether the range starts with the file's header line (the first range
    does); other ranges take the column names from ``schema``. A range without rows gives
    no batch. Any failure raises a ``ParseError`` whose line and row, relative to the
    range, are left out: the caller reads the whole file again to report them.
    """
    read_options = pacsv.ReadOptions(
        block_size=max_row_bytes,
        use_threads=False,
        column_names=None if header else schema.names,
    )
    convert = pacsv.ConvertOptions(column_types={f.name: f.type for f in schema})
    try:
        reader = pacsv.open_csv(stream, read_options=read_options, convert_options=convert)
        if reader.schema.names != schema.names:
            raise ParseError(
                f"the header now names {reader.schema.names}, not {schema.names}", url=url
            )
        yield from reader
    except pa.ArrowInvalid as exc:
        if not header and "Empty CSV file" in str(exc):
            return
        raise ParseError(f"in this byte range: {exc}", url=url) from None


def _has_line_break(table: pa.Table) -> bool:
    for column in table.columns:
        kind = column.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            if pc.any(pc.match_substring_regex(column, "[\r\n]")).as_py():
                return True
        elif (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)) and any(
            b"\n" in v or b"\r" in v for v in column.to_pylist() if v is not None
        ):
            return True
    return False


def _header(
    reopen: Callable[[], AbstractContextManager[BinaryIO]], max_row_bytes: int
) -> list[str]:
    """The column names, read again without declared types (which cannot fail)."""
    try:
        with reopen() as stream:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(block_size=max_row_bytes, use_threads=False),
                # a malformed row in the first block must not hide the header's names
                parse_options=pacsv.ParseOptions(invalid_row_handler=lambda _row: "skip"),
            )
            return list(reader.schema.names)
    except (InputError, pa.ArrowException):
        return []


def _input_error(
    exc: Exception, *, read: _Read, names: list[str], bad_rows: list[Any]
) -> InputError:
    url, rows, max_row_bytes = read.url, read.rows_before + read.rows, read.block_size
    # pyarrow numbers the records it read; a reader of the rest of a file started later
    text = _ROW.sub(lambda m: f"Row #{read.number(int(m.group(1)))}", str(exc))
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
        number = read.number(bad.number) if bad.number is not None and bad.number > 0 else None
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
            column=column if index < len(names) else None,
            converting=True,
        )
    m = _ROW.search(text)
    number = int(m.group(1)) if m else None
    return ParseError(text, url=url, line=number, row=None if number is None else number - 1)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
