"""Record batch streams: read the head up to a limit and keep the rest unread; hand small
batches on in groups, or joined into larger ones."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import pyarrow as pa

__all__ = ["drain", "groups", "held_bytes", "rebatch", "take"]


def take(
    batches: Iterable[pa.RecordBatch], limit: int, size: Callable[[pa.RecordBatch], int]
) -> tuple[list[pa.RecordBatch], Iterator[pa.RecordBatch] | None, int]:
    """The batches until their summed ``size`` passes ``limit``, the rest of the stream
    (``None`` when the stream ended within the limit: the head is all of it), and the
    head's summed ``size`` (so a caller need not measure it again)."""
    source = iter(batches)
    head: list[pa.RecordBatch] = []
    total = 0
    for batch in source:
        head.append(batch)
        total += size(batch)
        if total > limit:
            return head, source, total
    return head, None, total


def held_bytes(batch: pa.RecordBatch) -> int:
    """The memory ``batch`` holds: its buffers whole, each counted once.

    Not ``nbytes``, which follows each array's offsets and costs far more per call (see
    bench/RESULTS.md, session 18). A slice of a larger batch counts the larger one's
    buffers, which it keeps alive.
    """
    return int(batch.get_total_buffer_size())


def drain(head: list[pa.RecordBatch], rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The batches of ``head`` then ``rest``, each dropped from ``head`` as it is handed on.

    A streamed file's head (up to 64 MiB of batches) is then freed as the writer takes
    it, instead of staying alive, held by the caller's list, until the file is written.
    """
    head.reverse()
    while head:
        yield head.pop()
    yield from rest


def groups(
    batches: Iterable[pa.RecordBatch], rows: int, nbytes: int, small: int | None = None
) -> Iterator[list[pa.RecordBatch]]:
    """The batches, in order, in runs of consecutive ones until a run holds ``rows`` rows
    or ``nbytes`` bytes of buffers (the last may hold less); with ``small``, a batch of
    that many rows or more is a run of its own, ending the run before it. Nothing is
    copied, so a run can be worked on as one ``pyarrow.Table`` of its chunks."""
    held: list[pa.RecordBatch] = []
    count = size = 0
    for batch in batches:
        if small is not None and batch.num_rows >= small:
            if held:
                yield held
                held, count, size = [], 0, 0
            yield [batch]
            continue
        held.append(batch)
        count += batch.num_rows
        size += held_bytes(batch)
        if count >= rows or size >= nbytes:
            yield held
            held, count, size = [], 0, 0
    if held:
        yield held


def rebatch(
    batches: Iterable[pa.RecordBatch], rows: int, nbytes: int, small: int
) -> Iterator[pa.RecordBatch]:
    """The rows of ``batches``, in order, with runs of batches of fewer than ``small`` rows
    joined (copied once) into batches of ``rows`` rows or ``nbytes`` bytes of buffers (a
    run's last may be smaller); a batch of ``small`` rows or more passes on unchanged,
    ending the run before it (:func:`groups`). The batches must share one schema."""
    for run in groups(batches, rows, nbytes, small):
        yield _joined(run)


def _joined(held: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(held) == 1:
        return held[0]
    joined = pa.Table.from_batches(held).combine_chunks().to_batches()
    return joined[0] if joined else held[0]
