"""An iterator wrapper that remembers the exception its source raised."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["ErrorTap"]

T = TypeVar("T")


class ErrorTap(Generic[T]):
    """Iterate ``source``; if it raises, keep the exception in ``error`` and re-raise it.

    Code that hands the iterator to a library which wraps or flattens exceptions (DuckDB
    turns a Python exception inside an Arrow stream into a text message) can look here
    to re-raise the original.
    """

    def __init__(self, source: Iterator[T]) -> None:
        self._source = source
        self.error: Exception | None = None

    def __iter__(self) -> ErrorTap[T]:
        return self

    def __next__(self) -> T:
        try:
            return next(self._source)
        except StopIteration:
            raise
        except Exception as exc:
            self.error = exc
            raise
