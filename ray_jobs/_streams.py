"""File-like wrappers that count bytes and turn codec failures into input errors.

``CountingSource`` sits under a decompressor and counts (and optionally inspects) the
compressed bytes; ``CappedReader`` sits on top and counts the decompressed bytes, so both
caps hold however the consumer reads.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Callable
from typing import Any

import zstandard

from celeray.errors import DecompressionError, EmptyInputError, InputError, InputTooLargeError
from celeray.sizes import format_size

__all__ = ["CappedReader", "CountingSource"]


class CountingSource:
    """A ``read``-only view of ``raw`` that counts bytes, caps them and shows them to ``feed``.

    ``feed`` (e.g. a zstd frame tracker) sees every chunk before the decompressor does.
    """

    def __init__(
        self,
        raw: Any,
        *,
        url: str,
        max_bytes: int,
        feed: Callable[[bytes], None] | None = None,
    ) -> None:
        self._raw = raw
        self._url = url
        self._max = max_bytes
        self._feed = feed
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes of the raw file."""
        data: bytes = self._raw.read(size)
        self.count += len(data)
        if self.count > self._max:
            raise InputTooLargeError(
                f"the file is larger than the cap of {format_size(self._max)} (max_file_bytes)",
                url=self._url,
            )
        if self._feed is not None and data:
            self._feed(data)
        return data

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the raw file, with the same counting as :meth:`read`."""
        data = self.read(len(memoryview(buffer)))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        """Always true: this is a reader."""
        return True


class CappedReader(io.RawIOBase):
    """Raw stream over ``inner`` that stops at ``max_bytes`` and maps codec errors.

    ``codec`` ("zstd", "gzip" or "none") names the format in error messages. ``at_end`` runs
    once when ``inner`` reports its end, to reject a stream that ended too early. Bad data
    raises ``DecompressionError``, too much of it ``InputTooLargeError``, no bytes at all
    ``EmptyInputError``; all carry ``url``.
    """

    def __init__(
        self,
        inner: Any,
        *,
        url: str,
        codec: str,
        max_bytes: int,
        at_end: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self._inner = inner
        self._url = url
        self._codec = codec
        self._max = max_bytes
        self._at_end = at_end
        self._ended = False
        self.count = 0

    def readable(self) -> bool:
        """Always true: this is a reader."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` with decompressed bytes; 0 means the end of the stream."""
        if self._ended:
            return 0
        try:
            n: int = self._inner.readinto(buffer)
        except InputError:
            raise
        except zstandard.ZstdError as exc:
            raise self._corrupt(exc) from exc
        except (gzip.BadGzipFile, zlib.error) as exc:
            raise self._corrupt(exc) from exc
        except EOFError as exc:
            raise DecompressionError(
                f"truncated {self._codec} data: the file ends before the end of the "
                f"compressed stream (after {format_size(self.count)} of output)",
                url=self._url,
            ) from exc
        if n == 0:
            self._ended = True
            if self._at_end is not None:
                self._at_end()
            if self.count == 0:
                raise EmptyInputError(
                    "the file holds no data (it decompresses to nothing)"
                    if self._codec != "none"
                    else "the file holds no data",
                    url=self._url,
                )
            return 0
        self.count += n
        if self.count > self._max:
            raise InputTooLargeError(
                f"the {self._codec} stream decompresses to more than the cap of "
                f"{format_size(self._max)} (max_decompressed_bytes); stopped reading there"
                if self._codec != "none"
                else f"the file is larger than the cap of {format_size(self._max)} "
                "(max_decompressed_bytes)",
                url=self._url,
            )
        return n

    def _corrupt(self, exc: Exception) -> InputError:
        text = str(exc)
        if "memory" in text.lower() or "window" in text.lower():
            return InputTooLargeError(
                f"the zstd frame needs more memory than zstd_max_window_bytes allows: {text}",
                url=self._url,
            )
        return DecompressionError(
            f"corrupt {self._codec} data after {format_size(self.count)} of output: {text}",
            url=self._url,
        )
