"""A byte range of a plain text file, widened to whole lines (Hadoop's rule).

A file of ``size`` bytes is cut at nominal offsets ``0 = o0 < o1 < ... < on = size``.
The range ``[s, e)`` reads whole lines: when ``s > 0`` it starts at the first byte after
the first ``\\n`` at or after offset ``s - 1``, and it ends after the line that holds byte
``e - 1`` (at the first ``\\n`` at or after ``e - 1``, or at the end of the file). The next
range skips exactly that line, so the ranges of a file partition its lines: every line is
read by one range, whatever the offsets, and nothing has to be scanned when planning. A
range whose start falls past its end (one long line covers it) is empty.

The offsets may also be those of a compressed file's decompressed text (``compressed`` set
to the file's listed size): its length is not known before it is read, so ``size`` is an
estimate, the stream is read forward (the bytes before the range are decompressed and
dropped) and the last range (``end == size``) reads on to the end of the text, however
long it turns out; a range that starts past the end of a shorter text is empty.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

__all__ = ["ByteRange", "LineRangeReader", "SplitRefused"]

SEARCH_CHUNK = 1024 * 1024  # bytes read at a time while looking for a line break
SKIP_CHUNK = 1024 * 1024  # decompressed bytes read (and dropped) at a time before a range


@dataclass(frozen=True)
class ByteRange:
    """Nominal offsets ``[start, end)`` of a file that was ``size`` bytes when listed.

    With ``compressed`` (the listed size of a compressed file), the offsets are of its
    decompressed text instead, and ``size`` is that text's estimated length.
    """

    start: int
    end: int
    size: int
    compressed: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= self.size:
            raise ValueError(f"bad byte range {self.start}..{self.end} of {self.size} bytes")

    @property
    def first(self) -> bool:
        """Whether this is the range that starts the file (and holds a CSV header)."""
        return self.start == 0

    @property
    def open_ended(self) -> bool:
        """Whether the range reads on to the end of a decompressed text of unknown length."""
        return self.compressed is not None and self.end == self.size

    @property
    def listed_bytes(self) -> int:
        """The range's length; for a compressed file its share of the file's listed size
        (the shares of a file's ranges add up to that size exactly)."""
        if self.compressed is None:
            return self.end - self.start
        return self.compressed * self.end // self.size - self.compressed * self.start // self.size

    def __str__(self) -> str:
        if self.compressed is None:
            return f"bytes {self.start}..{self.end} of {self.size}"
        end = "the end" if self.open_ended else str(self.end)
        return f"decompressed bytes {self.start}..{end} of about {self.size}"


class SplitRefused(Exception):
    """A byte range cannot be read on its own; the file must be read whole instead.

    ``head`` is true when the reason lies in the start of the file (compressed content,
    a changed size, a line break inside a quoted value in the sample...), which every
    range of the file sees alike: the first range then reads the whole file and the others
    give nothing. Otherwise only the range that raised knows, and it reads the whole file.
    """

    def __init__(self, reason: str, *, head: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.head = head


class LineRangeReader(io.RawIOBase):
    """The lines of ``span`` of the binary file ``raw``, as a raw stream.

    ``raw`` is seekable for a plain file; for a compressed one (``span.compressed``) it is
    the forward-only stream of its decompressed text, positioned at its start. Each
    ``readinto`` fills the buffer completely unless the range ends first, so it can be
    handed to pyarrow as it is. ``quotes`` counts the ``"`` bytes served so far.
    """

    def __init__(self, raw: Any, span: ByteRange) -> None:
        super().__init__()
        self._raw = raw
        self._seekable = span.compressed is None
        self._end: int | None = None if span.open_ended else span.end
        self._pending = b""  # bytes read past a line break while looking for it (forward)
        self.quotes = 0
        self.start = 0 if span.first else self._after_newline(span.start - 1)
        self._pos = self.start
        self._done = self._end is not None and self._pos >= self._end
        self._ends_line = False  # whether the last byte served is a line break
        if not self._done and self._seekable:
            raw.seek(self._pos)

    def readable(self) -> bool:
        """Always true: this is a reader."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` with the range's next bytes; 0 means the range is over."""
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and not self._done:
            room = len(view) - filled
            if self._end is None or self._pos < self._end:
                data = self._read(room if self._end is None else min(room, self._end - self._pos))
            elif self._ends_line:
                break  # byte end - 1 closed its line: the range ends exactly at end
            else:
                data = self._read(min(room, SEARCH_CHUNK))
                newline = data.find(b"\n")
                if newline >= 0:
                    data = data[: newline + 1]
                    self._done = True
            if not data:
                break  # the end of the file
            view[filled : filled + len(data)] = data
            filled += len(data)
            self._pos += len(data)
            self.quotes += data.count(b'"')
            self._ends_line = data.endswith(b"\n")
        if filled == 0:
            self._done = True
        return filled

    def _read(self, size: int) -> bytes:
        if self._pending:
            data, self._pending = self._pending[:size], self._pending[size:]
            return data
        return bytes(self._raw.read(size))

    def _after_newline(self, offset: int) -> int:
        """The offset after the first ``\\n`` at or after ``offset`` (the end if none)."""
        position = self._skip(offset)
        while True:
            data = self._raw.read(SEARCH_CHUNK)
            if not data:
                return position
            newline = data.find(b"\n")
            if newline >= 0:
                if not self._seekable:
                    self._pending = bytes(data[newline + 1 :])
                return position + newline + 1
            position += len(data)

    def _skip(self, offset: int) -> int:
        """Go to ``offset`` (read and drop the bytes before it, if forward only); where it
        got to (short of ``offset`` when a decompressed text ends first)."""
        if self._seekable:
            self._raw.seek(offset)
            return offset
        position = 0
        buffer = memoryview(bytearray(SKIP_CHUNK))
        while position < offset:
            got = self._raw.readinto(buffer[: min(SKIP_CHUNK, offset - position)])
            if not got:
                break
            position += got
        return position
