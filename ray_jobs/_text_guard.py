"""Let only UTF-8 text of a sane shape through to pyarrow's CSV and JSON readers.

pyarrow does not check encodings: a Latin-1 CSV comes out as binary columns, a Latin-1
JSON lines file as strings holding invalid UTF-8, and a UTF-16 file as a parse error about
a stray ``\\x00``. Nor does it bound the width of a table: a CSV header of a million
columns makes it build a million column builders (~9 KiB each). :class:`TextGuard` sits
between the decompressed stream and the reader and refuses, with the byte and line:

- a UTF-16 or UTF-32 byte-order mark, or a NUL byte in the first line (UTF-16 without
  one), as ``EncodingError``;
- a first line longer than ``max_row_bytes``, before it is handed over;
- a CSV header with more than ``max_columns`` names, or a first JSON object with more
  than ``max_columns`` keys, counted from the raw bytes before pyarrow sees them;
- any byte sequence that is not UTF-8, as ``EncodingError`` naming its byte offset and
  line. ASCII chunks cost one ``isascii()`` scan; others are decoded incrementally. The
  line is found only when there is an error, by counting the line breaks before it in
  a second read of the stream: counting them in every chunk cost ~3% of a CSV file's
  whole conversion.
"""

from __future__ import annotations

import codecs
import io
import re
import threading
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from celeray.errors import EncodingError, InputTooLargeError
from celeray.sizes import format_size

__all__ = ["TextGuard", "count_line_breaks", "json_key_count"]

_SEARCH = 1024 * 1024  # bytes read at a time while looking for the end of the first line
_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "UTF-32 (little-endian)"),
    (codecs.BOM_UTF32_BE, "UTF-32 (big-endian)"),
    (codecs.BOM_UTF16_LE, "UTF-16 (little-endian)"),
    (codecs.BOM_UTF16_BE, "UTF-16 (big-endian)"),
)
# A JSON string, and whether a colon follows it (then it is a key). Matching every string
# keeps the scan in step, so a ":" inside a value is never counted.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"(\s*:)?', re.DOTALL)
_CONVERT = "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)"


class TextGuard(io.RawIOBase):
    """A read-only stream over ``raw`` that raises instead of passing on hostile text.

    ``fmt`` is ``"csv"`` or ``"jsonl"`` (it decides how the first line's columns are
    counted). With ``start`` false (a byte range after the first) the first line is not
    checked and errors carry no line number, since the range does not know it.
    ``line_breaks`` (``n`` -> the line breaks in the stream's first ``n`` bytes, found by
    reading it again) gives an encoding error its line; without it the error names the
    byte alone. Reads return as many bytes as asked for unless the stream ends, as
    pyarrow expects.
    """

    def __init__(
        self,
        raw: Any,
        *,
        url: str,
        fmt: str,
        max_row_bytes: int,
        max_columns: int,
        start: bool = True,
        line_breaks: Callable[[int], int | None] | None = None,
    ) -> None:
        super().__init__()
        self._raw = raw
        self._url = url
        self._fmt = fmt
        self._max_row = max_row_bytes
        self._max_columns = max_columns
        self._prefix = b""
        self._started = not start
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._pending = False  # the decoder holds the start of a multi-byte sequence
        self._served = 0
        self._line_breaks = line_breaks if start else None
        self._ended = False
        self._lock = threading.Lock()  # held while a read runs
        self._stopped = False

    def close(self) -> None:
        """Wait for a read in progress (pyarrow's read-ahead thread), then end the stream."""
        with self._lock:
            self._stopped = True
        super().close()

    def readable(self) -> bool:
        """Always true: this is a reader."""
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when negative), fewer only at the end."""
        with self._lock:
            return b"" if self._stopped else self._read(size)

    def _read(self, size: int | None) -> bytes:
        if not self._started:
            self._read_first_line()
        want = -1 if size is None or size < 0 else size
        parts = []
        if self._prefix:
            take = self._prefix if want < 0 else self._prefix[:want]
            self._prefix = self._prefix[len(take) :]
            parts.append(take)
            if want > 0:
                want -= len(take)
        while want != 0:
            data = self._raw.read(want)
            if not data:
                break
            parts.append(data)
            if want < 0:
                continue
            want -= len(data)
        data = b"".join(parts)
        self._check(data)
        return data

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` as :meth:`read` would; 0 means the end of the stream."""
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def _check(self, data: bytes) -> None:
        """Validate the next served bytes as UTF-8; at the end, that nothing is left open."""
        if not data:
            if not self._ended:
                self._ended = True
                if self._pending:
                    self._decode(b"", final=True)
            return
        if not (data.isascii() and not self._pending):
            self._decode(data, final=False)
        self._served += len(data)

    def _decode(self, data: bytes, *, final: bool) -> None:
        held = self._decoder.getstate()[0]
        try:
            self._decoder.decode(data, final=final)
        except UnicodeDecodeError as exc:
            at = exc.start - len(held)  # offset in data; negative: in the held bytes
            whole = held + data
            bad = whole[exc.start : exc.end] or whole[exc.start : exc.start + 1]
            line = None
            if self._line_breaks is not None:
                before = self._line_breaks(self._served + at)
                line = None if before is None else before + 1
            raise EncodingError(
                f"not UTF-8: invalid byte(s) {bad.hex(' ') or '(end of file)'} at byte "
                f"{self._served + at}{_guess(whole, exc.start)}; celeray reads text as "
                f"UTF-8: {_CONVERT}",
                url=self._url,
                line=line,
            ) from None
        self._pending = bool(self._decoder.getstate()[0])

    def _read_first_line(self) -> None:
        """Read the first line whole (or refuse it) and check its encoding and width."""
        self._started = True
        # The first read usually holds the first line (a small file whole): joined alone,
        # it is kept as read (bytes.join returns a lone bytes item itself), not copied into
        # a growing buffer and out again.
        chunks: list[bytes] = []
        held = 0
        newline = -1
        while newline < 0 and held <= self._max_row:
            data = self._raw.read(_SEARCH)
            if not data:
                break
            found = data.find(b"\n")
            newline = held + found if found >= 0 else -1
            chunks.append(data)
            held += len(data)
        self._prefix = b"".join(chunks)
        for bom, name in _BOMS:
            if self._prefix.startswith(bom):
                raise EncodingError(
                    f"the file is {name}: it starts with that byte-order mark "
                    f"({bom.hex(' ')}), not UTF-8 text; "
                    + _CONVERT.replace("latin1", name.split()[0]),
                    url=self._url,
                    line=1,
                )
        end = newline if newline >= 0 else held
        if end > self._max_row:
            raise InputTooLargeError(
                f"the first line is longer than the cap of {format_size(self._max_row)} "
                "(max_row_bytes); stopped reading there. Raise CELERAY_MAX_ROW_BYTES if "
                "lines this long are real",
                url=self._url,
                line=1,
            )
        first = self._prefix[:end]
        nul = first.find(b"\x00")
        if nul >= 0:
            raise EncodingError(
                f"NUL byte at byte {nul} of line 1: the file looks like UTF-16 without a "
                f"byte-order mark (or binary data), not UTF-8 text; {_CONVERT}",
                url=self._url,
                line=1,
            )
        self._check_width(first.removeprefix(codecs.BOM_UTF8).rstrip(b"\r"))

    def _check_width(self, first: bytes) -> None:
        """Refuse a first line with more than ``max_columns`` columns (CSV) or keys (JSON)."""
        cap = self._max_columns
        if self._fmt == "csv":
            if first.count(b",") + 1 <= cap:  # an upper bound: quoted names may hold commas
                return
            count = _csv_fields(first)
            what = f"the header has {count:,} columns"
        else:
            if first.count(b":") <= cap:  # an upper bound on the keys at any depth
                return
            count = sum(1 for m in _JSON_STRING.finditer(first) if m.group(1))
            what = f"the first object has {count:,} keys"
        if count > cap:
            raise InputTooLargeError(
                f"{what}, over the cap of {cap:,} (max_columns); refused before parsing. "
                "Raise CELERAY_MAX_COLUMNS if tables this wide are real",
                url=self._url,
                line=1,
            )


def count_line_breaks(stream: Any, limit: int, *, chunk: int = _SEARCH) -> int:
    """The ``\\n`` bytes among the first ``limit`` bytes read from ``stream``."""
    count = 0
    while limit > 0:
        data = stream.read(min(limit, chunk))
        if not data:
            break
        count += data.count(b"\n")
        limit -= len(data)
    return count


def _csv_fields(line: bytes) -> int:
    """The number of fields of one CSV line: the commas outside quotes, plus one.

    Between the ``"`` characters, even pieces are outside quotes and odd ones inside; an
    escaped ``""`` inside a quoted value makes an empty piece and keeps the parity.
    """
    return sum(piece.count(b",") for piece in line.split(b'"')[0::2]) + 1


def _guess(data: bytes, start: int) -> str:
    """A hint at what the bytes around ``start`` say in Windows-1252, if they are text."""
    window = data[max(0, start - 20) : start + 20]
    try:
        text = window.decode("cp1252")
    except UnicodeDecodeError:
        return ""
    if not text.isprintable():
        text = text.replace("\r", " ").replace("\n", " ")
        if not text.isprintable():
            return ""
    return f", around {text!r} if read as Latin-1/Windows-1252"


def json_key_count(data: bytes) -> int:
    """About the number of distinct keys in the JSON text ``data``, counted in C++.

    Every ``"name"`` followed by a colon counts, at any depth; a ``":`` inside a string
    value may add one, never remove one, so the count errs on the high side. It costs
    ~20-50 ms per MiB: fine before a whole-file re-read, too dear for every first block.
    """
    text = pa.array([data], pa.large_binary()).cast(pa.large_string(), safe=False)
    pieces = pc.list_flatten(pc.split_pattern_regex(text, r'"\s*:'))
    keys = pc.extract_regex(pieces, r'(?P<key>(?:[^"\\]|\\.)*)$').field("key")
    return max(0, len(pc.unique(keys)) - 1)  # the text after the last colon is no key
