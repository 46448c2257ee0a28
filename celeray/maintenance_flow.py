"""One compaction or vacuum of a pipeline's table, as the ``ray`` worker's task asks for it.

The task (:mod:`tasks.maintain`) hands a :class:`MaintenanceFlow` its message's arguments
and the Ray side as one function (:class:`OnRay`, :func:`tasks._ray.maintain_on_ray`), and
this does the rest: checks the arguments (a bad one is a
:class:`~celeray.errors.MessageRefusedError`), finds the pipeline, claims beat's slot, takes
the table's lock (:class:`celeray.maintenance.MaintenanceLock`), publishes a Delta table's
pending batches first (:func:`celeray.maintenance.publish_pending`), has Ray do the heavy
work (:mod:`ray_jobs.maintain`) and, for a Parquet sink, commits the rewrite through the
ledger (:func:`celeray.maintenance.compact_parquet`). Why Ray tasks and not a Ray Job:
docs/operations.md, "Maintenance".
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

from celeray.errors import MessageRefusedError, UnknownPipelineError
from celeray.maintenance import (
    MaintenanceLock,
    compact_parquet,
    publish_pending,
    retention_hours,
    retention_of,
    table_format,
    vacuum_parquet,
)
from celeray.maintenance_spec import parse_duration
from celeray.pipelines import Pipeline, current_pipelines, get_pipeline
from celeray.runstate import RunStore
from celeray.settings import Settings

__all__ = ["MAINTENANCE_CPUS", "MaintenanceFlow", "OnRay"]

log = logging.getLogger(__name__)

# CPUs (and delta-rs threads) of one compaction task: a compaction is one table's worth of
# work, and the batches of every pipeline keep running beside it on the rest of the cluster.
MAINTENANCE_CPUS = 2
# Share of the task time limit the Ray work may take: the rest is left for the commit and
# the report, so the task ends (with TimeLimitError) before Celery kills it.
DEADLINE_SHARE = 0.95


class OnRay(Protocol):
    """Run ``job`` (a function of :mod:`ray_jobs.maintain`, by name) once per ``calls``
    entry as Ray tasks with the pipeline's ``runtime_env``; results in call order.
    TimeLimitError past ``deadline`` (monotonic), the tasks cancelled."""

    def __call__(self, job: str, calls: list[tuple[Any, ...]], pipeline: Pipeline, *,
                 num_cpus: int, deadline: float) -> list[Any]: ...  # fmt: skip


class MaintenanceFlow:
    """Compaction and vacuum of pipelines' tables with one store, settings and Ray side."""

    def __init__(self, store: RunStore, settings: Settings, on_ray: OnRay) -> None:
        self.store, self.settings, self.on_ray = store, settings, on_ray
        self.lock = MaintenanceLock(store.r, ttl=settings.run_lock_ttl)

    # -- the three tasks' messages ------------------------------------------------------

    def compact(self, name: Any, target_size: Any = None) -> dict[str, Any]:
        """``tasks.compact``: compact pipeline ``name``'s table now."""
        pipeline = self.pipeline(name)
        if target_size is not None and (isinstance(target_size, bool)
                                        or not isinstance(target_size, int) or target_size < 1):
            raise MessageRefusedError(f"target_size: expected bytes > 0, got {target_size!r}")
        return self.compact_pipeline(pipeline, target_size=target_size)

    def vacuum(self, name: Any, retention: Any = None) -> dict[str, Any]:
        """``tasks.vacuum``: vacuum pipeline ``name``'s table now."""
        pipeline = self.pipeline(name)
        try:
            seconds = None if retention is None else parse_duration(retention)
        except ValueError as exc:
            raise MessageRefusedError(f"retention: {exc}") from None
        return self.vacuum_pipeline(pipeline, retention=seconds)

    def maintain(self, name: Any, slot: Any, slot_ttl: Any, token: str) -> dict[str, Any]:
        """``tasks.maintain`` (beat's schedule): compaction, then vacuum, under one hold of
        the table's lock. A slot another beat's send claimed first (``token``: this
        send's) is skipped."""
        pipeline = self.pipeline(name)
        if slot is not None:
            if isinstance(slot, bool) or not isinstance(slot, int) or not isinstance(slot_ttl,
                                                                                     int):
                raise MessageRefusedError(f"slot: expected numbers, got {slot!r}, {slot_ttl!r}")
            if not self.store.claim_slot(f"maint:{pipeline.name}", slot, token, slot_ttl):
                return {"status": "skipped", "duplicate_slot": slot}
        with self.lock.held(pipeline.sink, f"maintain by {socket.gethostname()}") as check:
            compacted = self.compact_pipeline(pipeline, held=check)
            vacuumed = self.vacuum_pipeline(pipeline, held=check)
        return {"status": "done", "compact": compacted, "vacuum": vacuumed}

    def pipeline(self, name: Any) -> Pipeline:
        """The pipeline a message names; MessageRefusedError for a bad or unknown name."""
        if not isinstance(name, str):
            raise MessageRefusedError(f"pipeline: expected a name, got {type(name).__name__}")
        settings = self.settings
        try:
            return get_pipeline(current_pipelines(settings.pipelines,
                                                  **settings.pipeline_rules()), name)  # fmt: skip
        except UnknownPipelineError as exc:
            raise MessageRefusedError(f"pipeline: {exc}") from None

    # -- the work ------------------------------------------------------------------------

    def compact_pipeline(self, pipeline: Pipeline, *, target_size: int | None = None,
                         held: Callable[[], None] | None = None) -> dict[str, Any]:  # fmt: skip
        """Compact ``pipeline``'s table on Ray under its maintenance lock (``held``: the
        check of a lock the caller holds already)."""
        target = target_size or pipeline.maintenance.target_file_size
        if held is None:
            with self.lock.held(pipeline.sink, f"compact by {socket.gethostname()}") as check:
                return self.compact_pipeline(pipeline, target_size=target, held=check)
        deadline = self._deadline()
        cpus = MAINTENANCE_CPUS
        if table_format(pipeline) == "delta":
            pending = publish_pending(pipeline)  # batches whose Delta commit a crash left
            [out] = self.on_ray("compact_delta", [(pipeline.sink, target, cpus)], pipeline,
                                num_cpus=cpus, deadline=deadline)  # fmt: skip
            return {"pipeline": pipeline.name, "target_file_size": target,
                    "published_pending": pending, **out}  # fmt: skip

        def rewrite(calls: list[tuple[list[str], str]]) -> list[dict[str, Any]]:
            args = [(pipeline.sink, paths, out, pipeline.compression,
                     pipeline.compression_level) for paths, out in calls]  # fmt: skip
            return self.on_ray("rewrite_parquet_group", args, pipeline, num_cpus=1,
                               deadline=deadline)  # fmt: skip

        return compact_parquet(pipeline, rewrite, target_size=target, check_lock=held)

    def vacuum_pipeline(self, pipeline: Pipeline, *, retention: float | None = None,
                        held: Callable[[], None] | None = None) -> dict[str, Any]:  # fmt: skip
        """Vacuum ``pipeline``'s table on Ray under its maintenance lock, keeping what any
        version within the retention (never below the task time limit) references."""
        if held is None:
            with self.lock.held(pipeline.sink, f"vacuum by {socket.gethostname()}") as check:
                return self.vacuum_pipeline(pipeline, retention=retention, held=check)
        seconds, notes = retention_of(pipeline, self.settings.task_time_limit, retention)
        for note in notes:
            log.warning("%s: %s", pipeline.name, note)
        if table_format(pipeline) == "delta":
            # First the batches the ledger holds and the table not yet: their files are in
            # no Delta version until then (celeray.maintenance, "pending batches first").
            pending = publish_pending(pipeline)
            held()
            [out] = self.on_ray("vacuum_delta", [(pipeline.sink, retention_hours(seconds))],
                                pipeline, num_cpus=1, deadline=self._deadline())  # fmt: skip
        else:
            pending, out = 0, vacuum_parquet(pipeline)
        return {"pipeline": pipeline.name, "retention_seconds": seconds, "notes": notes,
                "published_pending": pending, **out}  # fmt: skip

    def _deadline(self) -> float:
        return time.monotonic() + DEADLINE_SHARE * self.settings.task_time_limit
