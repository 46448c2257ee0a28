"""Group input files into units of work, one Ray task each; split large text files.

A large plain CSV or JSON lines file becomes several units, one per byte range, so that
even a single file keeps every core busy. Planning reads nothing: the ranges are nominal
offsets, and each Ray task widens its range to whole lines (:mod:`ray_jobs._line_range`).

Splitting relies on every line break outside quoted values ending a record, which is what
pyarrow's CSV reader assumes too (``newlines_in_values=False``, the setting the whole-file
reader uses). Where that may not hold, the split is refused at run time and the file is
read whole by one task instead, with the same rows and errors as if it had never been
split: when a quoted value in the sample at the start of the file holds a line break (the
first range reads the file whole, the others give nothing), and when a range holds an odd
number of ``"`` characters, which is what a quoted value crossing one of its edges leaves
(that range reads the file whole). Any other failure of a range (a bad row, a type the
sample did not show) also makes that range read the whole file, so errors name the real
line and row. A CSV file that mixes quoted line breaks with stray ``"`` inside unquoted
values can escape these checks: set ``split_large_files = false`` for such a pipeline.

A large compressed file (``.zst``/``.gz``) is split too, by ranges of its decompressed
text, whose length is estimated (:data:`COMPRESSED_EXPANSION` times the file). Each range
decompresses the text from the start and drops what lies before it, so the ranges are
fewer: at most :data:`MAX_COMPRESSED_RANGES`, and at most the cluster's CPUs when the plan
is told them, each shorter than the one before by what its lead-in costs
(:func:`skewed_ranges`). On two cores the 342 MB of CSV in one 77.5 MB ``.csv.zst`` parse
as two ranges at once, the second first decompressing and dropping ~0.3 s of text.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from celeray.errors import InputError
from ray_jobs.decompress import codec_from_name
from ray_jobs.readers import SPLITTABLE_FORMATS, detect_format

__all__ = [
    "COMPRESSED_EXPANSION",
    "MAX_COMPRESSED_RANGES",
    "MIN_UNIT_BYTES",
    "SKIP_COST",
    "balanced_unit_bytes",
    "largest_first",
    "plan_units",
    "range_size",
    "skewed_ranges",
    "split_ranges",
    "unit_work",
    "work_bytes",
]

COMPRESSED_EXPANSION = 4  # csv/jsonl inflate ~4-5x from zstd/gzip; the work follows the text
MIN_UNIT_BYTES = 8 * 1024**2  # ~100 ms of work for one Ray task: smaller is all overhead
# Decompressing a range's lead-in, per byte, against parsing and writing it: measured
# 0.25-0.36 s for 155 MB of .csv.zst text against 1.3 s to convert as much, one thread each.
SKIP_COST = 0.2
# Each range of a compressed file first decompresses the text before it for nothing: with
# SKIP_COST 0.2, 2 skewed ranges end in 0.56 of one unit's time for 11% more CPU, 4 in 0.34
# for 36% more, 8 in 0.24 for 92% more.
MAX_COMPRESSED_RANGES = 4


def work_bytes(file: dict[str, Any]) -> int:
    """The bytes of text a Ray task will parse for ``file``: its size, inflated if compressed."""
    size = int(file["size"])
    return size * COMPRESSED_EXPANSION if codec_from_name(file["url"]) else size


def range_size(file: dict[str, Any]) -> int:
    """The length the ``range`` of a split ``file`` is nominally a part of: the estimated
    decompressed text of a compressed file (``"text_bytes"``), else the file's size."""
    return int(file.get("text_bytes") or file["size"])


def unit_work(unit: dict[str, Any]) -> int:
    """The bytes of text the Ray task of ``unit`` will parse: a range's length, else sizes."""
    total = 0
    for file in unit["files"]:
        span = file.get("range")
        total += int(span[1]) - int(span[0]) if span is not None else work_bytes(file)
    return total


def largest_first(units: list[dict[str, Any]]) -> list[int]:
    """The indexes of ``units``, most :func:`unit_work` first (ties keep their order).

    The order to start them in: a batch that ends on its shortest tasks has its cores
    finish together. 32 equal files in 10 units (two of 4 files, eight of 3) started in
    plan order left one of two cores idle for a quarter of a second at the end.
    """
    return sorted(range(len(units)), key=lambda i: -unit_work(units[i]))


def balanced_unit_bytes(files: list[dict[str, Any]], *, unit_bytes: int, cpus: int) -> int:
    """``unit_bytes`` shrunk so the batch's units come in a multiple of ``cpus``.

    Eleven units on two CPUs leave one core idle for the last one; twelve slightly smaller
    ones do not. Never below :data:`MIN_UNIT_BYTES` (or ``unit_bytes`` if that is smaller),
    so no Ray task carries only overhead.
    """
    works = [work_bytes(f) for f in files]
    total = sum(works)
    if total < 1 or cpus <= 1:
        return unit_bytes
    count = -(-total // unit_bytes)
    count = -(-count // cpus) * cpus
    return max(min(MIN_UNIT_BYTES, unit_bytes), -(-total // count))


def plan_units(
    files: list[dict[str, Any]],
    *,
    unit_bytes: int,
    plan: dict[str, Any] | None = None,
    split_bytes: int | None = None,
    cpus: int | None = None,
) -> list[list[dict[str, Any]]]:
    """Split ``files`` (dicts with at least ``"url"`` and ``"size"``) into units.

    Consecutive files, in the given order, are cut into shares of about ``unit_bytes`` of
    :func:`work_bytes` (sizes, compressed ones inflated): a file joins the share its middle
    falls in, so a run of ``W`` bytes gives about ``W / unit_bytes`` units whatever the file
    sizes. A file of ``unit_bytes`` or more is a unit alone. The same input
    always gives the same units; the file dicts are passed through, not copied.

    With a ``plan`` (the job's plan: its ``format`` and ``split_large_files``, default
    true), a CSV or JSON lines file (the plan's format, else its name's) of at least
    ``2 * split_bytes`` of :func:`work_bytes` (default ``unit_bytes``) becomes
    ``ceil(work / split_bytes)`` units of one file each instead: a copy of its dict with
    ``"range": [start, end]``, nominal offsets of nearly equal length that cover
    ``[0, size)`` exactly. For a compressed file (by its suffix) they cover its estimated
    text, ``"text_bytes"`` (:func:`range_size`), and are at most
    :data:`MAX_COMPRESSED_RANGES` and at most ``cpus`` (when given, and at least 2).
    """
    if unit_bytes < 1:
        raise ValueError(f"unit_bytes must be at least 1, got {unit_bytes}")
    split = split_bytes or unit_bytes
    if split < 1:
        raise ValueError(f"split_bytes must be at least 1, got {split_bytes}")
    splitting = plan is not None and bool(plan.get("split_large_files", True))
    fmt = plan.get("format") if plan is not None else None
    units: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    current_bytes = current_bucket = 0  # work of the run so far; the open unit's share
    for file in files:
        size = int(file["size"])
        if size < 0:
            raise ValueError(f"{file['url']}: negative size {size}")
        work = work_bytes(file)
        if work >= unit_bytes or (splitting and work >= 2 * split):
            if current:
                units.append(current)
                current, current_bytes = [], 0
            if splitting and work >= 2 * split and _splittable(file["url"], fmt):
                units += [[part] for part in _split_file(file, work, split, cpus)]
            else:
                units.append([file])
            continue
        # A file joins the share its middle falls in: units of about unit_bytes each, and
        # a run of W bytes gives about W / unit_bytes units however the sizes fall.
        bucket = (current_bytes + work // 2) // unit_bytes
        if current and bucket > current_bucket:
            units.append(current)
            current = []
        if not current:
            current_bucket = bucket
        current.append(file)
        current_bytes += work
    if current:
        units.append(current)
    return units


def split_ranges(size: int, split_bytes: int) -> list[list[int]]:
    """``ceil(size / split_bytes)`` nominal ranges ``[start, end]`` covering ``[0, size)``.

    Their lengths differ by at most one byte; none is longer than ``split_bytes``.
    """
    if size < 1 or split_bytes < 1:
        raise ValueError(f"cannot split {size} bytes into ranges of {split_bytes}")
    count = -(-size // split_bytes)
    cuts = [size * i // count for i in range(count + 1)]
    return [[cuts[i], cuts[i + 1]] for i in range(count)]


def _split_file(
    file: dict[str, Any], work: int, split: int, cpus: int | None
) -> list[dict[str, Any]]:
    """Copies of ``file``, one per range (:func:`plan_units`)."""
    if codec_from_name(file["url"]) is None:
        return [{**file, "range": r} for r in split_ranges(work, split)]
    count = min(-(-work // split), MAX_COMPRESSED_RANGES, max(2, cpus or MAX_COMPRESSED_RANGES))
    return [{**file, "range": r, "text_bytes": work} for r in skewed_ranges(work, count)]


def skewed_ranges(size: int, count: int, skip_cost: float = SKIP_COST) -> list[list[int]]:
    """``count`` nominal ranges covering ``[0, size)``, each shorter than the one before.

    A range that starts at ``s`` first decompresses ``s`` bytes for nothing, which costs
    ``skip_cost`` of the time parsing them would: the lengths are chosen so that each
    range's length plus that cost of its start is the same, and the ranges end together.
    """
    if size < 1 or count < 1:
        raise ValueError(f"cannot split {size} bytes into {count} ranges")
    keep = 1.0 - skip_cost
    step = size * skip_cost / (1.0 - keep**count) if skip_cost > 0 else size / count
    cuts = [0]
    for _ in range(count - 1):
        cuts.append(min(size, max(cuts[-1], round(cuts[-1] * keep + step))))
    cuts.append(size)
    return [[a, b] for a, b in pairwise(cuts) if b > a]


def _splittable(url: str, fmt: str | None) -> bool:
    if fmt is None:
        try:
            fmt = detect_format(url)
        except InputError:
            return False
    return fmt in SPLITTABLE_FORMATS
