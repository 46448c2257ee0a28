"""Convert one batch on Ray: plan its units, run them, merge their results. One call.

:func:`convert_batch` is all the Celery side asks of ``ray_jobs`` for a batch (through
the converter it hands the core, :func:`tasks._ray.convert`). The caller has connected
with ``ray.init``; the batch's Ray tasks write their own Parquet under ``out_url`` and
the merged result says what they wrote, read and quarantined.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray_jobs.dispatcher import run_units
from ray_jobs.merge import merge_unit_results
from ray_jobs.units import balanced_unit_bytes, plan_units

__all__ = ["PROGRESS_KEYS", "convert_batch", "nodes_of"]

PROGRESS_KEYS = ("files_done", "rows_in", "rows_out", "bytes_in", "bytes_out")


def convert_batch(
    plan: dict[str, Any],
    files: list[dict[str, Any]],
    *,
    batch_id: str,
    out_url: str,
    prequarantined: list[dict[str, Any]],
    unit_bytes: int,
    cpus: int,
    max_in_flight: int,
    min_free_memory: float,
    deadline: float | None,
    runtime_env: dict[str, Any] | None = None,
    on_progress: Callable[[dict[str, int]], None] | None = None,
) -> dict[str, Any]:
    """The batch's merged result (:func:`ray_jobs.merge.merge_unit_results`) with
    ``timings``: ``units_s`` (the Ray tasks' own time), ``units`` and ``nodes``.

    ``files`` are the inputs Ray reads (each with ``read_url``); ``prequarantined`` the
    records of those that never reach Ray. Units are planned over ``files`` with
    ``unit_bytes`` balanced to ``cpus`` (:func:`~ray_jobs.units.balanced_unit_bytes`) and
    run by :func:`~ray_jobs.dispatcher.run_units` with ``max_in_flight``,
    ``min_free_memory``, ``deadline`` and ``runtime_env`` (its errors come out as they
    are: ``TimeLimitError`` past the deadline). ``on_progress`` gets the batch's totals so
    far (:data:`PROGRESS_KEYS`) as each unit finishes, only when there is more than one
    unit: a batch of one unit has nothing to show before its commit, which counts the same
    numbers a moment later.
    """
    size = balanced_unit_bytes(files, unit_bytes=unit_bytes, cpus=cpus)
    units = [
        {"batch_id": batch_id, "unit": i, "files": unit, "out_url": out_url}
        for i, unit in enumerate(plan_units(files, unit_bytes=size, plan=plan, cpus=cpus))
    ]
    done = dict.fromkeys(PROGRESS_KEYS, 0)

    def on_result(r: dict[str, Any]) -> None:
        done["files_done"] += r["files_done"]  # a file split into ranges counts once
        for k in PROGRESS_KEYS[1:]:
            done[k] += r[k]
        if on_progress is not None:
            on_progress(dict(done))

    results = run_units(
        plan,
        units,
        max_in_flight=max_in_flight,
        min_free_memory=min_free_memory,
        on_result=on_result if on_progress is not None and len(units) > 1 else None,
        deadline=deadline,
        runtime_env=runtime_env,
    )
    result = merge_unit_results(results, prequarantined)
    result["timings"] = {
        "units_s": round(sum(r["seconds"] for r in results), 4),
        "units": len(units),
        "nodes": nodes_of(results),
    }
    return result


def nodes_of(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Ray node id -> its host, how many of the batch's units ran there and their
    ``seconds`` (summed; against the batch's ``transform_s`` it shows a node's idle time)."""
    nodes: dict[str, dict[str, Any]] = {}
    for r in results:
        if r.get("node"):
            seen = nodes.setdefault(r["node"], {"host": r.get("host"), "units": 0,
                                                "seconds": 0.0})  # fmt: skip
            seen["units"] += 1
            seen["seconds"] = round(seen["seconds"] + float(r.get("seconds") or 0.0), 4)
    return nodes

