"""A byte range of a plain text file, widened to whole lines (Hadoop's rule).

A file of ``size`` bytes is cut at nominal offsets ``0 = o0 < o1 < ... < on = size``.
The range ``[s, e)`` reads whole lines: when ``s > 0`` it starts at the first byte after
the first ``\\n`` at or after offset ``s - 1``, and it ends after the line that holds byte
``e - 1`` (at the first ``\\n`` at or after ``e - 1``, or at the end of the file). The next
range skips exactly that line, so the ranges of a file partition its lines: every line is
read by one range, whatever the offsets, and nothing has to be scanned when planning. A
range whose start falls past its end (one long line covers it) is empty.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

__all__ = ["ByteRange", "LineRangeReader", "SplitRefused"]

SEARCH_CHUNK = 1024 * 1024  # bytes read at a time while looking for a line break


@dataclass(frozen=True)
class ByteRange:
    """Nominal offsets ``[start, end)`` of a file that was ``size`` bytes when listed."""

    start: int
    end: int
    size: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= self.size:
            raise ValueError(f"bad byte range {self.start}..{self.end} of {self.size} bytes")

    @property
    def first(self) -> bool:
        """Whether this is the range that starts the file (and holds a CSV header)."""
        return self.start == 0

    def __str__(self) -> str:
        return f"bytes {self.start}..{self.end} of {self.size}"


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
    """The lines of ``span`` of the seekable binary file ``raw``, as a raw stream.

    Each ``readinto`` fills the buffer completely unless the range ends first, so it can
    be handed to pyarrow as it is. ``quotes`` counts the ``"`` bytes served so far.
    """

    def __init__(self, raw: Any, span: ByteRange) -> None:
        super().__init__()
        self._raw = raw
        self._end = span.end
        self.quotes = 0
        self.start = 0 if span.first else _after_newline(raw, span.start - 1)
        self._pos = self.start
        self._done = self._pos >= self._end
        self._ends_line = False  # whether the last byte served is a line break
        if not self._done:
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
            if self._pos < self._end:
                data = self._raw.read(min(room, self._end - self._pos))
            elif self._ends_line:
                break  # byte end - 1 closed its line: the range ends exactly at end
            else:
                data = self._raw.read(min(room, SEARCH_CHUNK))
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


def _after_newline(raw: Any, offset: int) -> int:
    """The offset after the first ``\\n`` at or after ``offset`` (the file's size if none)."""
    raw.seek(offset)
    position = offset
    while True:
        data = raw.read(SEARCH_CHUNK)
        if not data:
            return position
        newline = data.find(b"\n")
        if newline >= 0:
            return position + newline + 1
        position += len(data)
