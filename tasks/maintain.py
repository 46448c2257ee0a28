"""``tasks.compact``, ``tasks.vacuum``, ``tasks.maintain``: table maintenance on the Ray cluster.

They run on the ``ray`` queue, whose worker (threads pool) is the process connected to Ray
(:func:`tasks._ray.ensure_ray`), and submit the work as Ray tasks with the pipeline's
``runtime_env``: the io workers only list and commit. Why Ray tasks and not a Ray Job:
docs/operations.md, "Maintenance". Beat sends ``tasks.maintain`` on a pipeline's
``maintenance`` schedule (compaction, then vacuum, under one hold of the table's lock); a
slot claimed by another beat's send is skipped.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from celeray.celeryconfig import RAY_QUEUE
from celeray.errors import MessageRefusedError, TimeLimitError, UnknownPipelineError
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
from celeray.ray_env import pipeline_extras
from celeray.settings import Settings, get_settings
from ray_jobs import maintain as work
from tasks.app import app, run_store

__all__ = ["compact", "compact_pipeline", "maintain", "vacuum", "vacuum_pipeline"]

log = logging.getLogger(__name__)

# CPUs (and delta-rs threads) of one compaction task: a compaction is one table's worth of
# work, and the batches of every pipeline keep running beside it on the rest of the cluster.
MAINTENANCE_CPUS = 2
# Ray task retries on a system failure (a node lost): a compaction is idempotent (Delta:
# optimize again; Parquet: the same id and names), so a retry can only finish the work.
RAY_RETRIES = 2
_remote: dict[Callable[..., Any], Any] = {}


def _ray_call(
    fn: Callable[..., Any], calls: list[tuple[Any, ...]], pipeline: Pipeline, *,
    num_cpus: int, deadline: float,
) -> list[Any]:
    """Run ``fn(*args)`` for each of ``calls`` as Ray tasks with the pipeline's
    ``runtime_env``, at most twice the cluster's CPUs in flight; results in call order.
    Raises TimeLimitError (the tasks cancelled) past ``deadline`` (monotonic)."""
    import ray

    from ray_jobs._runtime_env import task_runtime_env
    from tasks._ray import cluster_cpus

    if fn not in _remote:
        _remote[fn] = ray.remote(max_retries=RAY_RETRIES, retry_exceptions=False)(fn)
    options: dict[str, Any] = {"num_cpus": num_cpus}
    env = task_runtime_env(pipeline_extras(pipeline.to_plan()))
    if env:
        options["runtime_env"] = env
    task = _remote[fn].options(**options)
    limit = max(1, 2 * cluster_cpus() // num_cpus)
    results: list[Any] = [None] * len(calls)
    pending: dict[Any, int] = {}
    todo = list(enumerate(calls))
    while todo or pending:
        while todo and len(pending) < limit:
            index, args = todo.pop(0)
            pending[task.remote(*args)] = index
        left = deadline - time.monotonic()
        done, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, left))
        if not done:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise TimeLimitError(f"maintenance of {pipeline.name!r} ran past its time limit; "
                                 "nothing more is committed")  # fmt: skip
        for ref in done:
            results[pending.pop(ref)] = ray.get(ref)
    return results


def _deadline(settings: Settings) -> float:
    return time.monotonic() + 0.95 * settings.task_time_limit


def _lock(settings: Settings) -> MaintenanceLock:
    return MaintenanceLock(run_store().r, ttl=settings.run_lock_ttl)


def compact_pipeline(
    pipeline: Pipeline, settings: Settings, lock: MaintenanceLock, *,
    target_size: int | None = None, held: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Compact ``pipeline``'s table on Ray under its maintenance lock (``held``: the check
    of a lock the caller holds already). Ray must be connected."""
    target = target_size or pipeline.maintenance.target_file_size
    if held is None:
        with lock.held(pipeline.sink, f"compact by {socket.gethostname()}") as check:
            return compact_pipeline(pipeline, settings, lock, target_size=target, held=check)
    deadline = _deadline(settings)
    cpus = MAINTENANCE_CPUS
    if table_format(pipeline) == "delta":
        pending = publish_pending(pipeline)  # batches whose Delta commit a crash left unmade
        [out] = _ray_call(work.compact_delta, [(pipeline.sink, target, cpus)], pipeline,
                          num_cpus=cpus, deadline=deadline)  # fmt: skip
        return {"pipeline": pipeline.name, "target_file_size": target,
                "published_pending": pending, **out}  # fmt: skip

    def rewrite(calls: list[tuple[list[str], str]]) -> list[dict[str, Any]]:
        args = [(pipeline.sink, paths, out, pipeline.compression, pipeline.compression_level)
                for paths, out in calls]  # fmt: skip
        return _ray_call(work.rewrite_parquet_group, args, pipeline, num_cpus=1,
                         deadline=deadline)  # fmt: skip

    return compact_parquet(pipeline, rewrite, target_size=target, check_lock=held)


def vacuum_pipeline(
    pipeline: Pipeline, settings: Settings, lock: MaintenanceLock, *,
    retention: float | None = None, held: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Vacuum ``pipeline``'s table on Ray under its maintenance lock, keeping what any
    version within the retention (never below the task time limit) references."""
    if held is None:
        with lock.held(pipeline.sink, f"vacuum by {socket.gethostname()}") as check:
            return vacuum_pipeline(pipeline, settings, lock, retention=retention, held=check)
    seconds, notes = retention_of(pipeline, settings.task_time_limit, retention)
    for note in notes:
        log.warning("%s: %s", pipeline.name, note)
    if table_format(pipeline) == "delta":
        # First the batches the ledger holds and the table not yet: their files are in no
        # Delta version until then (celeray.maintenance, "pending batches first").
        pending = publish_pending(pipeline)
        held()
        [out] = _ray_call(work.vacuum_delta, [(pipeline.sink, retention_hours(seconds))],
                          pipeline, num_cpus=1, deadline=_deadline(settings))  # fmt: skip
    else:
        pending, out = 0, vacuum_parquet(pipeline)
    return {"pipeline": pipeline.name, "retention_seconds": seconds, "notes": notes,
            "published_pending": pending, **out}  # fmt: skip


def _pipeline(name: Any, settings: Settings) -> Pipeline:
    if not isinstance(name, str):
        raise MessageRefusedError(f"pipeline: expected a name, got {type(name).__name__}")
    try:
        return get_pipeline(current_pipelines(settings.pipelines, **settings.pipeline_rules()),
                            name)  # fmt: skip
    except UnknownPipelineError as exc:
        raise MessageRefusedError(f"pipeline: {exc}") from None


_TASK = {
    "queue": RAY_QUEUE,
    "ignore_result": False,  # the CLI waits for the report
    "acks_late": False,  # a maintenance lost with its worker is simply asked for again
}


@app.task(name="tasks.compact", **_TASK)
def compact(name: Any, target_size: Any = None) -> dict[str, Any]:
    """Compact pipeline ``name``'s table now (``celeray compact NAME``)."""
    from tasks._ray import ensure_ray

    settings = get_settings()
    pipeline = _pipeline(name, settings)
    if target_size is not None and (isinstance(target_size, bool)
                                    or not isinstance(target_size, int) or target_size < 1):
        raise MessageRefusedError(f"target_size: expected bytes > 0, got {target_size!r}")
    ensure_ray()
    return compact_pipeline(pipeline, settings, _lock(settings), target_size=target_size)


@app.task(name="tasks.vacuum", **_TASK)
def vacuum(name: Any, retention: Any = None) -> dict[str, Any]:
    """Vacuum pipeline ``name``'s table now (``celeray vacuum NAME``)."""
    from tasks._ray import ensure_ray

    settings = get_settings()
    pipeline = _pipeline(name, settings)
    try:
        seconds = None if retention is None else parse_duration(retention)
    except ValueError as exc:
        raise MessageRefusedError(f"retention: {exc}") from None
    ensure_ray()
    return vacuum_pipeline(pipeline, settings, _lock(settings), retention=seconds)


@app.task(name="tasks.maintain", bind=True, **_TASK)
def maintain(self: Any, name: Any, slot: Any = None, slot_ttl: Any = 3600) -> dict[str, Any]:
    """Beat's maintenance of pipeline ``name``: compaction, then vacuum, under one hold of
    the table's lock. A slot another beat's send claimed first is skipped."""
    from tasks._ray import ensure_ray

    settings = get_settings()
    pipeline = _pipeline(name, settings)
    if slot is not None:
        if isinstance(slot, bool) or not isinstance(slot, int) or not isinstance(slot_ttl, int):
            raise MessageRefusedError(f"slot: expected numbers, got {slot!r}, {slot_ttl!r}")
        token = str(self.request.id or f"maintain-{slot}")
        if not run_store().claim_slot(f"maint:{pipeline.name}", slot, token, slot_ttl):
            return {"status": "skipped", "duplicate_slot": slot}
    ensure_ray()
    lock = _lock(settings)
    with lock.held(pipeline.sink, f"maintain by {socket.gethostname()}") as check:
        compacted = compact_pipeline(pipeline, settings, lock, held=check)
        vacuumed = vacuum_pipeline(pipeline, settings, lock, held=check)
    return {"status": "done", "compact": compacted, "vacuum": vacuumed}
