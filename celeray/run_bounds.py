"""Bounded runs: which of the new files one run takes, and what waits for the next.

A pipeline's ``max_files_per_run`` and ``max_bytes_per_run`` cap one run. The run takes the
oldest new files first, by modification time, then by URL (so two listings of the same
files always take the same ones), until the next file would pass a bound; the rest is the
*backlog*, which the run records and which the next run, started as soon as this one ends
(:func:`should_chain`), takes on. A single file larger than ``max_bytes_per_run`` is taken
alone, so no file is ever too big to be taken. A file without an mtime (some HTTP servers
give none) counts as the oldest.

Both decisions are pure; :func:`celeray.planner.plan_batches` and
:mod:`celeray.run_chain` apply them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celeray.storage import FileInfo

__all__ = ["Selection", "age_key", "select_for_run", "should_chain"]


@dataclass(frozen=True)
class Selection:
    """What one run takes (in listing order) and the backlog it leaves."""

    taken: list[FileInfo]
    backlog_files: int = 0
    backlog_bytes: int = 0


def age_key(f: FileInfo) -> tuple[float, str]:
    """Oldest first: by mtime (none counts as the oldest), then by URL."""
    return (f.mtime if f.mtime is not None else float("-inf"), f.url)


def select_for_run(
    new: Sequence[FileInfo], max_files: int | None, max_bytes: int | None
) -> Selection:
    """The files one run takes from ``new`` (files no run has committed), oldest first,
    within ``max_files`` and ``max_bytes`` (None: no bound); the taken files keep the
    order of ``new``.

    Taking stops at the first file that would pass a bound (a smaller, younger file is not
    taken in its place: the oldest always go first), except that the first file is taken
    whatever its size.
    """
    if max_files is None and max_bytes is None:
        return Selection(list(new))
    chosen: set[str] = set()
    total = 0
    for f in sorted(new, key=age_key):
        if max_files is not None and len(chosen) >= max_files:
            break
        if max_bytes is not None and chosen and total + f.size > max_bytes:
            break
        chosen.add(f.url)
        total += f.size
    taken = [f for f in new if f.url in chosen]
    left = [f for f in new if f.url not in chosen]
    return Selection(taken, len(left), sum(f.size for f in left))


def should_chain(record: dict[str, Any]) -> bool:
    """Whether a run that just ended should start the next one at once.

    Only a run that succeeded, took at least one file and left a backlog: a failed run
    leaves its files for the schedule (or the reconciliation pass) instead, so a run that
    keeps failing never starts another one by itself; and a successful run that took files
    made the backlog shorter, so a chain of runs always ends.
    """
    return (
        record.get("state") == "SUCCESS"
        and int(record.get("files_total") or 0) > 0
        and int(record.get("backlog_files") or 0) > 0
    )
