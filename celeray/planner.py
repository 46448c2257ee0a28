"""Pure planning of a run: which listed files are new, and how they form batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from celeray.ledger import batch_id_for
from celeray.run_bounds import select_for_run
from celeray.storage import FileInfo

__all__ = ["IN_PLACE_PROTOCOLS", "Batch", "Plan", "needs_staging", "plan_batches"]

# Ray workers read these in place; anything else (http, sftp, ftp, memory...) is staged.
IN_PLACE_PROTOCOLS = frozenset({"file", "local", "s3", "s3a", "gs", "gcs", "abfs", "az", "hdfs"})


def needs_staging(url: str) -> bool:
    """Whether Ray workers cannot read ``url`` where it is and an I/O task must copy it."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    return protocol not in IN_PLACE_PROTOCOLS


@dataclass(frozen=True)
class Batch:
    """A group of inputs committed together under one ledger entry."""

    batch_id: str
    files: list[dict[str, Any]]

    @property
    def bytes(self) -> int:
        """Total size of the inputs as listed."""
        return sum(int(f["size"]) for f in self.files)


@dataclass
class Plan:
    """What a run will do: its batches, and what it skipped and why."""

    batches: list[Batch] = field(default_factory=list)
    listed: int = 0
    already_done: int = 0
    changed_after_commit: list[str] = field(default_factory=list)
    backlog_files: int = 0  # new files left for the next run (max_files/bytes_per_run)
    backlog_bytes: int = 0

    @property
    def files_total(self) -> int:
        """Files this run will process."""
        return sum(len(b.files) for b in self.batches)

    @property
    def bytes_total(self) -> int:
        """Listed bytes this run will process."""
        return sum(b.bytes for b in self.batches)


def plan_batches(
    pipeline: str,
    listed: list[FileInfo],
    done: dict[str, dict[str, Any]],
    batch_bytes: int,
    replays: dict[str, str] | None = None,
    *,
    max_files: int | None = None,
    max_bytes: int | None = None,
) -> Plan:
    """Drop the files the ledger holds and group the rest, in listing order, by bytes.

    A file is identified by its URL: once committed or quarantined it is never processed
    again. One whose size or mtime changed since is reported in ``changed_after_commit``
    and still skipped, so rows are never added twice. A file larger than ``batch_bytes``
    forms a batch of its own. A file in ``replays`` (:meth:`Ledger.replays`) carries
    its entry as ``replay``, which its batch id takes in. With ``max_files`` or
    ``max_bytes`` the run takes only the oldest new files within them
    (:func:`celeray.run_bounds.select_for_run`) and the plan counts the rest as its backlog.
    """
    plan = Plan(listed=len(listed))
    current: list[dict[str, Any]] = []
    current_bytes = 0

    def close() -> None:
        nonlocal current, current_bytes
        if current:
            plan.batches.append(Batch(batch_id_for(pipeline, current), current))
        current, current_bytes = [], 0

    new = []
    for f in listed:
        seen = done.get(f.url)
        if seen is not None:
            plan.already_done += 1
            if "size" in seen and int(seen["size"]) != f.size:
                plan.changed_after_commit.append(f.url)
            continue
        new.append(f)
    selection = select_for_run(new, max_files, max_bytes)
    plan.backlog_files, plan.backlog_bytes = selection.backlog_files, selection.backlog_bytes
    for f in selection.taken:
        if current and current_bytes + f.size > batch_bytes:
            close()
        planned = f.to_dict()
        if replays and f.url in replays:
            planned["replay"] = replays[f.url]
        current.append(planned)
        current_bytes += f.size
    close()
    return plan
