"""Run units on Ray with a bounded number in flight, results as they finish.

(And :func:`run_calls`: any plain function of the Ray side, such as table maintenance's,
fanned out the same way.)

The caller has already connected with ``ray.init``. The plan is put into the object store
once and every task gets its reference (a batch of one task passes it inline). Tasks write
their own output and return only the small summary of :func:`ray_jobs.process.process_unit`.
"""

from __future__ import annotations

import logging
import mmap
import os
import shutil
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import psutil
import ray
from ray.exceptions import (
    OutOfMemoryError,
    RayError,
    RaySystemError,
    RayTaskError,
    WorkerCrashedError,
)

from celeray.errors import CelerayError, PoisonInputError, RayUnavailableError, TimeLimitError
from ray_jobs._malloc import tune_malloc
from ray_jobs._runtime_env import task_runtime_env
from ray_jobs.process import process_unit
from ray_jobs.units import largest_first, range_size

__all__ = ["process_unit_task", "run_calls", "run_units", "warm_workers"]

log = logging.getLogger(__name__)


# One retry when a task's worker dies (Ray's default is 3): a worker killed by chance (the
# OOM killer, a lost node) gets its second chance, and a poison input is found sooner, since
# a unit that dies twice is split file by file (each file again with one retry).
RAY_RETRIES = 1


@ray.remote(num_cpus=1, max_retries=RAY_RETRIES, retry_exceptions=False)
def process_unit_task(plan: dict[str, Any], unit: dict[str, Any]) -> dict[str, Any]:
    """:func:`ray_jobs.process.process_unit` as a Ray task (retried only if the worker dies).

    The result also names where it ran: ``node`` (the Ray node id) and ``host``. The
    worker's malloc thresholds are set on its first task (:mod:`ray_jobs._malloc`).
    """
    tune_malloc()
    result = process_unit(plan, unit)
    result["node"] = ray.get_runtime_context().get_node_id()
    result["host"] = socket.gethostname()
    return result


_WARM_ROWS = 20_000  # enough rows for every code path, little enough to take ~0.2 s
_WARM_PLAN: dict[str, Any] = {
    "pipeline": "warm-up",
    "format": "csv",
    "schema": None,
    "sql": "SELECT *, b * 2 AS d FROM input",  # starts DuckDB too
    "transform": None,
    "partition_by": [],
    "compression": "zstd",
    "compression_level": None,
    "limits": {
        "max_file_bytes": 1 << 30,
        "max_decompressed_bytes": 1 << 30,
        "max_row_bytes": 1 << 20,
        "zstd_max_window_bytes": 1 << 27,
        "max_columns": 100,
    },
    "storage_options": None,
    "threads": 1,
}


_WARM_POOL_BYTES = 128 * 1024**2  # what a worker keeps after units of 32 MiB (~110-160 MB)
_WARM_BUFFER_BYTES = 4 * 1024**2  # the size of a CSV block, the reader's usual allocation


@ray.remote(num_cpus=1, max_retries=0)
def _warm() -> int:
    """Convert a small CSV in a temporary folder of this Ray worker, then delete it.

    Importing is not enough: the first CSV read, DuckDB query and zstd Parquet write of a
    process also load codecs and grow Arrow's memory pool (measured: the first 342 MB run
    took 1.76 s after imports alone, 1.51 s after this, 1.37 s warm). Then the pool is
    grown to a unit's size, by touching every page of ``_WARM_POOL_BYTES`` of buffers
    and freeing them: the pool keeps the memory, and the kernel's first touch of it (in
    the system time of the task) is paid here. Without it each worker's first unit of a
    run right after start (4 files of the bench's 32-zst set) took 0.72-0.79 s, with it
    0.52-0.53 s, as in later runs; in a bare Ray, 3 files took 0.58-0.64 s instead of
    0.36-0.42 s, 0.23 s of it in the kernel.
    """
    tune_malloc()
    _grow_memory_pool(_WARM_POOL_BYTES, _WARM_BUFFER_BYTES)
    folder = tempfile.mkdtemp(prefix="celeray-warm-")
    try:
        path = os.path.join(folder, "warm.csv")
        with open(path, "w") as f:
            f.write("a,b,c\n")
            f.writelines(f"{i},{i * 0.5},x{i}\n" for i in range(_WARM_ROWS))
        url = "file://" + path
        entry = {"url": url, "read_url": url, "size": os.path.getsize(path)}
        unit = {"batch_id": "warm", "unit": 0, "files": [entry], "out_url": f"file://{folder}/out"}
        process_unit(_WARM_PLAN, unit)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return os.getpid()


def _grow_memory_pool(total: int, piece: int) -> None:
    """Allocate ``total`` bytes of Arrow buffers of ``piece`` bytes, write a byte per page.

    Through a memoryview, not numpy: pyarrow does not need numpy, and a Ray node without
    it would skip the whole warm-up.
    """
    import pyarrow as pa

    buffers = [pa.allocate_buffer(piece) for _ in range(max(1, total // piece))]
    for buffer in buffers:
        pages = memoryview(buffer).cast("B")[:: mmap.PAGESIZE]
        pages[:] = b"\x01" * len(pages)
    del buffers


def warm_workers(timeout: float = 120.0) -> int:
    """Run one small conversion per CPU, warming Ray's workers; return how many ran.

    A cold Ray worker spends about a second importing pyarrow and DuckDB on its first task,
    and its first real conversion is slower still; doing both before the first run keeps
    them out of the run's time. Ray keeps up to one
    idle worker per CPU alive, so the warmed ones stay. The caller has done ``ray.init``.
    """
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    # Counted by answers, not distinct pids: a worker that finished its warm-up first may
    # take the next one too, and it is warm all the same.
    return len(ray.get([_warm.remote() for _ in range(cpus)], timeout=timeout))


# Ray task retries on a system failure (a node lost) for :func:`run_calls`: the functions it
# runs (table maintenance) are idempotent, so a retry can only finish the work.
CALL_RETRIES = 2
_remote: dict[Callable[..., Any], Any] = {}


def run_calls(
    fn: Callable[..., Any], calls: list[tuple[Any, ...]], *, num_cpus: int,
    runtime_env: dict[str, Any] | None, deadline: float, what: str,
) -> list[Any]:  # fmt: skip
    """Run ``fn(*args)`` for each of ``calls`` as Ray tasks of ``num_cpus`` CPUs, at most
    twice the cluster's CPUs' worth in flight; results in call order.

    ``runtime_env``: the pipeline's (:func:`celeray.ray_env.pipeline_extras`). Past
    ``deadline`` (monotonic) the pending tasks are cancelled and TimeLimitError names
    ``what``.
    """
    if fn not in _remote:
        _remote[fn] = ray.remote(max_retries=CALL_RETRIES, retry_exceptions=False)(fn)
    options: dict[str, Any] = {"num_cpus": num_cpus}
    env = task_runtime_env(runtime_env)
    if env:
        options["runtime_env"] = env
    task = _remote[fn].options(**options)
    limit = max(1, 2 * int(ray.cluster_resources().get("CPU", 1)) // num_cpus)
    results: list[Any] = [None] * len(calls)
    pending: dict[Any, int] = {}
    todo = deque(enumerate(calls))
    while todo or pending:
        while todo and len(pending) < limit:
            index, args = todo.popleft()
            pending[task.remote(*args)] = index
        done, _ = ray.wait(list(pending), num_returns=1,
                           timeout=max(0.0, deadline - time.monotonic()))  # fmt: skip
        if not done:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise TimeLimitError(f"{what} ran past its time limit; nothing more is committed")
        for ref in done:
            results[pending.pop(ref)] = ray.get(ref)
    return results


def run_units(
    plan: dict[str, Any],
    units: list[dict[str, Any]],
    *,
    max_in_flight: int,
    min_free_memory: float,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    task_options: dict[str, Any] | None = None,
    deadline: float | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Process ``units`` as Ray tasks; return their results in the order of ``units``.

    At most ``max_in_flight`` tasks are pending at a time (0: twice the cluster's CPUs).
    The largest units are submitted first (:func:`~ray_jobs.units.largest_first`), so
    the batch ends on its shortest tasks.
    Before each submission, while the node's available memory is below ``min_free_memory``
    (a fraction of the total, from psutil) and a task is in flight, it waits for one to
    finish first. ``on_result`` is called with each result as it arrives (in completion
    order, in this thread). ``task_options`` go to ``.options()`` of the task, e.g.
    ``{"num_cpus": 2}`` to match ``plan["threads"]``. ``runtime_env`` is the pipeline's
    extras (:func:`celeray.ray_env.pipeline_extras`: its transform's package as a local
    path, ``pip``, ``env_vars``); the package is uploaded once per content and every task
    of the batch runs with it on top of the job's ``runtime_env`` (None: the job's alone).

    An error inside a task that is a ``CelerayError`` (``TransformError`` above all) is
    re-raised as itself; a task that failed otherwise raises ``CelerayError`` naming the
    batch and unit. A task whose worker died every time (a crash or an OOM kill, past
    Ray's retries) is a poison: a unit of several files is split into one unit per file
    (so the good files still go through), and a unit of one file (or of one byte range)
    quarantines that file as ``PoisonInputError``. ``deadline`` (a ``time.monotonic()``
    value) bounds the whole call: past it, every pending task is cancelled with
    ``force=True`` (its worker is killed) and ``TimeLimitError`` is raised. On any error
    the tasks still pending are cancelled. Without ``ray.init`` it raises
    ``RayUnavailableError``.
    """
    if not ray.is_initialized():
        raise RayUnavailableError("Ray is not connected: call ray.init before run_units")
    if not units:
        return []
    limit = max_in_flight if max_in_flight > 0 else _default_in_flight()
    options = dict(task_options or {})
    task_env = task_runtime_env(runtime_env)
    if task_env:
        options["runtime_env"] = task_env
    plain = process_unit_task.options(**options) if options else process_unit_task
    # Shared by several tasks, the plan is put into the object store once and passed by
    # reference; a lone task gets it inline in its spec instead (Ray inlines small
    # arguments), which spares the put and the worker's fetch: ~0.9 ms of a 1-task batch.
    plan_ref = ray.put(plan) if len(units) > 1 else plan
    units = list(units)  # poison splits append to it
    results: list[dict[str, Any] | None] = [None] * len(units)
    pending: dict[Any, int] = {}
    # Ray starts queued tasks of one kind in the order they were submitted.
    queue = deque(largest_first(units))
    force = False
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                if pending and _short_of_memory(min_free_memory):
                    log.info(
                        "memory below %.0f%% free: waiting before submitting", 100 * min_free_memory
                    )
                    break
                index = queue.popleft()
                task = plain
                if units[index].get("retry"):  # split out of a crashed unit
                    task = process_unit_task.options(
                        **{**options, "max_retries": POISON_RETRIES}
                    )
                pending[task.remote(plan_ref, units[index])] = index
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
            if not done:
                force = True
                raise TimeLimitError(
                    f"batch {units[0].get('batch_id')} ran past its time limit with "
                    f"{len(pending)} Ray task(s) unfinished; they were cancelled"
                )
            for ref in done:
                index = pending.pop(ref)
                try:
                    result = _get(ref, units[index])
                except _Crashed as crash:
                    split = _split_poison(units[index], len(units), crash.reason)
                    if isinstance(split, dict):  # one file: quarantined
                        result = split
                    else:  # several files: each goes again on its own
                        queue.extend(range(len(units), len(units) + len(split)))
                        units.extend(split)
                        results.extend([None] * len(split))
                        continue
                results[index] = result
                if on_result is not None:
                    on_result(result)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=force)
        raise
    return [r for r in results if r is not None]


POISON_RETRIES = 1  # a file split out of a crashed unit: one retry, as every unit


class _Crashed(Exception):
    """A Ray task's worker died past its retries (a crash or an OOM kill)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def _split_poison(
    unit: dict[str, Any], next_number: int, reason: str
) -> dict[str, Any] | list[dict[str, Any]]:
    """A crashed unit's files, each as a unit of its own; or, for one file, its quarantine.

    The new units are numbered from ``next_number`` so their output names are new too.
    """
    files = unit["files"]
    if len(files) > 1:
        log.warning(
            "batch %s unit %s: its worker died every time; trying its %d files one by one",
            unit.get("batch_id"), unit.get("unit"), len(files),
        )
        return [
            {**unit, "unit": next_number + i, "files": [f], "retry": True}
            for i, f in enumerate(files)
        ]
    file = files[0]
    record = PoisonInputError(
        f"the Ray worker reading this file died every time ({reason}); "
        "quarantined as a poison input",
        url=file["url"],
    ).record()
    result: dict[str, Any] = {
        "batch_id": unit.get("batch_id"),
        "unit": unit.get("unit"),
        "files": [],
        "quarantined": [record],
        "outputs": [],
        "rows_in": 0,
        "rows_out": 0,
        "bytes_in": 0,
        "bytes_out": 0,
        "files_done": 1,
        "seconds": 0.0,
    }
    if file.get("range") is not None:
        result["split"] = {
            "url": file["url"], "range": list(file["range"]), "size": range_size(file),
            "mode": "range", "reason": None,
        }
        result["files_done"] = int(file["range"][1] == range_size(file))
    return result


def _get(ref: Any, unit: dict[str, Any]) -> dict[str, Any]:
    name = f"Ray task for batch {unit.get('batch_id')} unit {unit.get('unit')}"
    try:
        result: dict[str, Any] = ray.get(ref)
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, CelerayError):
            raise cause from exc
        raise CelerayError(
            f"{name} failed: {cause!r}" if cause else f"{name} failed: {exc}"
        ) from exc
    except RaySystemError as exc:
        raise RayUnavailableError(f"{name}: lost the Ray cluster: {exc}") from exc
    except (WorkerCrashedError, OutOfMemoryError) as exc:
        if not _cluster_answers():  # the head went away: not the input's fault
            raise RayUnavailableError(f"{name}: lost the Ray cluster: {exc}") from exc
        raise _Crashed(type(exc).__name__) from exc
    except RayError as exc:
        raise CelerayError(f"{name} died: {type(exc).__name__}: {exc}") from exc
    return result


def _cluster_answers() -> bool:
    """Whether the Ray head still answers (after a task died, was it the task or Ray?)."""
    try:
        return any(n.get("Alive") for n in ray.nodes())
    except Exception:
        return False


def _default_in_flight() -> int:
    return max(1, 2 * int(ray.cluster_resources().get("CPU", 1)))


def _short_of_memory(min_free: float) -> bool:
    if min_free <= 0:
        return False
    memory = psutil.virtual_memory()
    return bool(memory.available / memory.total < min_free)
