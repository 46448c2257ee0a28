"""What the pages show, gathered from the core: the run view and state store (live runs),
the sink's ledger (history, files, quarantine), the schema log and the pipeline file.

Nothing here decides anything the JSON API or the CLI would decide differently: each figure
comes from the same core call they make (:mod:`celeray.file_history`,
:mod:`celeray.quarantine`, :mod:`celeray.schema_log`, :func:`celeray.api._runview.load_run`).
"""

from __future__ import annotations

import logging
import math
import time
import tomllib
from datetime import UTC, datetime
from typing import Any

from celery.schedules import crontab

from celeray.api._connections import Connections
from celeray.api._runview import load_run
from celeray.api.pipelines import describe, last_run
from celeray.backlog import backlog_of
from celeray.file_history import file_history, ledger_entries, run_history
from celeray.ledger import quarantine_key
from celeray.pipelines import Pipeline
from celeray.quarantine import Triage
from celeray.run_record import FINAL_STATES
from celeray.schema_log import SchemaLog

__all__ = [
    "HISTORY_RUNS",
    "file_detail",
    "next_run_at",
    "pipeline_detail",
    "pipeline_rows",
    "run_detail",
    "run_live",
    "throughput_points",
]

log = logging.getLogger(__name__)

HISTORY_RUNS = 50  # runs on a pipeline's page and in its chart: a screenful, a readable chart


def next_run_at(pipeline: Pipeline, now: float) -> float | None:
    """When beat sends the pipeline's next run (unix time), None when it runs on demand only.

    Intervals are aligned to the epoch and cron fires on whole minutes, as ``beat_schedule``
    schedules them (cron in UTC, Celery's default timezone).
    """
    spec = pipeline.schedule_spec
    if spec is None:
        return None
    if spec[0] == "interval":
        step = float(spec[1])
        return (math.floor(now / step) + 1) * step
    minute, hour, dom, month, dow = str(spec[1]).split()
    cron = crontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month,
                   day_of_week=dow, nowfun=lambda: datetime.fromtimestamp(now, UTC))  # fmt: skip
    remaining = cron.remaining_estimate(datetime.fromtimestamp(now, UTC)).total_seconds()
    return now + max(remaining, 0.0)


def _last_counts(view: dict[str, Any] | None) -> dict[str, Any]:
    if view is None:
        return {"files": None, "rows": None, "quarantined": None}
    summary = view.get("result") or {}
    progress = view["progress"]
    return {
        "files": summary.get("files_committed", progress["files_done"]),
        "rows": progress["rows_out"],
        "quarantined": summary.get("files_quarantined"),
    }


def pipeline_rows(c: Connections) -> list[dict[str, Any]]:
    """The Pipelines page: each pipeline's face (as ``GET /api/v1/pipelines``), its state,
    next run, the last run's files and rows, and its inputs in quarantine."""
    now = time.time()
    rows = []
    for name, pipeline in c.pipelines().items():
        view = last_run(name)
        holder = c.store.holder(name)
        rows.append({
            **describe(pipeline, view, backlog_of(c.store, name)),
            "state": "RUNNING" if holder else (view["state"] if view else "never run"),
            "running": holder,
            "next_run_at": next_run_at(pipeline, now),
            "last": _last_counts(view),
            "quarantined": _quarantined(pipeline),
        })  # fmt: skip
    return rows


def _quarantined(pipeline: Pipeline) -> int | None:
    """How many of the pipeline's inputs are in quarantine; None (shown as unknown) when its
    sink cannot be read now: one unreachable sink does not take the overview down."""
    try:
        return len(Triage(pipeline.sink).items())
    except Exception as exc:
        log.warning("pipeline %s: its sink's quarantine could not be read: %s: %s",
                    pipeline.name, type(exc).__name__, exc)  # fmt: skip
        return None


def throughput_points(runs: list[dict[str, Any]], busy: dict[str, float]) -> list[tuple[float,
                                                                                        float]]:
    """(end time, rows out a second) of each run with rows, oldest first; a run's seconds
    are its span of commits or, when longer (one batch), its batches' transform time."""
    points = []
    for r in runs:
        if not r.get("ended_at") or not r.get("rows_out"):
            continue
        seconds = max(float(r["ended_at"]) - float(r["started_at"] or r["ended_at"]),
                      busy.get(r["run_id"], 0.0))  # fmt: skip
        if seconds > 0:
            points.append((float(r["ended_at"]), r["rows_out"] / seconds))
    return sorted(points)


def _busy(entries: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for e in entries:
        seconds = float((e.get("timings") or {}).get("transform_s") or 0.0)
        out[str(e.get("run_id"))] = out.get(str(e.get("run_id")), 0.0) + seconds
    return out


def file_settings(path: Any, name: str) -> list[tuple[str, Any]]:
    """The pipeline's table as the pipeline file says it: (dotted key, value) pairs."""
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh).get("pipelines", {}).get(name, {})
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return []
    out: list[tuple[str, Any]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out.append((prefix, value))

    walk("", table)
    return out


def pipeline_detail(c: Connections, pipeline: Pipeline) -> dict[str, Any]:
    """A pipeline's page: its runs from the ledger, the throughput chart's points, the table
    schema with its history, its settings from the file, and live state."""
    runs = run_history(pipeline.sink, HISTORY_RUNS)
    view = last_run(pipeline.name)
    return {
        **describe(pipeline, view, backlog_of(c.store, pipeline.name)),
        "running": c.store.holder(pipeline.name),
        "next_run_at": next_run_at(pipeline, time.time()),
        "runs": runs,
        "points": throughput_points(runs, _busy(ledger_entries(pipeline.sink))),
        "schema": SchemaLog(pipeline.sink).describe(),
        "settings": file_settings(c.settings.pipelines, pipeline.name),
        "quarantined": len(Triage(pipeline.sink).items()),
    }


def _batch(entry: dict[str, Any]) -> dict[str, Any]:
    timings = entry.get("timings") or {}
    nodes = timings.get("nodes") or {}
    return {
        "batch_id": entry["batch_id"],
        "state": "committed",
        "committed_at": entry.get("committed_at"),
        "files": [{**f, "key": quarantine_key(f["url"])} for f in entry.get("inputs", [])],
        "quarantined": [
            {**q, "key": quarantine_key(q["url"])} for q in entry.get("quarantined", [])
        ],
        **{k: entry.get(k) for k in ("rows_in", "rows_out", "bytes_in", "bytes_out")},
        "seconds": timings.get("transform_s"),
        "units": timings.get("units"),
        "nodes": sorted({str(n.get("host") or node_id) for node_id, n in nodes.items()}),
        "workers": entry.get("workers") or {},
        "tasks": entry.get("tasks") or {},
        "delta_version": entry.get("delta_version"),
    }


def run_live(c: Connections, pipeline: Pipeline, run_id: str) -> dict[str, Any]:
    """The run page's live part alone (what its script asks for every second): the state
    store's view, no ledger read. A run the store no longer holds counts as ended."""
    view = load_run(run_id, c.store, c.client)
    if view is not None and view.get("pipeline") not in (None, pipeline.name):
        view = None
    state = view["state"] if view is not None else "SUCCESS"
    return {"run_id": run_id, "pipeline": pipeline.name, "view": view, "state": state,
            "final": view is None or state in FINAL_STATES}  # fmt: skip


def run_detail(c: Connections, pipeline: Pipeline, run_id: str) -> dict[str, Any] | None:
    """A run's page: its live view (while the state store holds it), its batches (committed
    ones from the ledger, the others from the run's batch messages) and its quarantined
    inputs; None when neither the store nor the ledger knows the run."""
    view = load_run(run_id, c.store, c.client)
    if view is not None and view.get("pipeline") not in (None, pipeline.name):
        view = None  # another pipeline's run: not shown under this one
    entries = [e for e in ledger_entries(pipeline.sink) if e.get("run_id") == run_id]
    if view is None and not entries:
        return None
    batches = [_batch(e) for e in entries]
    done = {b["batch_id"] for b in batches}
    pending = c.store.pending(run_id) if view is not None else set()
    for batch_id, job in sorted(c.store.load_jobs(run_id).items()):
        if batch_id not in done:
            batches.append({
                "batch_id": batch_id,
                "state": "running" if batch_id in pending else "not committed",
                "files": [{"url": f["url"], "key": quarantine_key(f["url"]), "rows_in": None}
                          for f in job.get("files", [])],
                "quarantined": [], "nodes": [], "workers": {}, "tasks": {},
                "committed_at": None,
                **dict.fromkeys(("rows_in", "rows_out", "bytes_in", "bytes_out", "seconds",
                                 "units", "delta_version")),
            })  # fmt: skip
    history = next((r for r in run_history(pipeline.sink) if r["run_id"] == run_id), None)
    quarantined = [i for i in Triage(pipeline.sink).items(include_all=True)
                   if i["run_id"] == run_id]  # fmt: skip
    state = view["state"] if view is not None else "SUCCESS"  # only the ledger: it committed
    return {
        "run_id": run_id,
        "pipeline": pipeline.name,
        "view": view,
        "state": state,
        "final": state in FINAL_STATES or view is None,
        "history": history,
        "batches": batches,
        "quarantined": quarantined,
    }


def file_detail(pipeline: Pipeline, key: str) -> dict[str, Any] | None:
    """A file's page: :func:`celeray.file_history.file_history`'s record of the input whose
    key is ``key``, with its quarantine record when it has one; None when the ledger has no
    such input."""
    for f in file_history(pipeline.sink):
        if quarantine_key(f["url"]) == key:
            triage = Triage(pipeline.sink)
            shown = next((i for i in triage.items(include_all=True) if i["url"] == f["url"]),
                         None)  # fmt: skip
            if shown is not None:
                shown = {**shown, "pipeline": pipeline.name}
            return {**f, "key": key, "quarantine": shown}
    return None
