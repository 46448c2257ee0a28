"""``GET /api/v1/pipelines``: each pipeline of the file, its schedule, its last run and its
backlog; ``GET /api/v1/pipelines/<name>/schema``: its sink's table schema and the schema's
history."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from werkzeug.exceptions import NotFound

from celeray.api._connections import conns
from celeray.api._runview import load_run
from celeray.api.runs import PIPELINE_NAME
from celeray.backlog import backlog_of
from celeray.pipelines import Pipeline, get_pipeline
from celeray.schema_log import SchemaLog

__all__ = ["bp", "describe", "last_run"]

bp = Blueprint("pipelines", __name__)


def describe(
    pipeline: Pipeline, last_run: dict[str, Any] | None, backlog: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The public face of one pipeline; ``schedule`` is a cron string, seconds, or null;
    ``backlog`` what its newest listing left (:func:`celeray.backlog.backlog_of`)."""
    schedule = pipeline.schedule
    if isinstance(schedule, float) and schedule.is_integer():
        schedule = int(schedule)
    return {
        "name": pipeline.name,
        "schedule": schedule,
        "source": pipeline.source,
        "sink": pipeline.sink,
        "format": pipeline.format,
        "max_files_per_run": pipeline.max_files_per_run,
        "max_bytes_per_run": pipeline.max_bytes_per_run,
        "after_commit": pipeline.after_commit,
        "last_run": last_run,
        "backlog": backlog,
    }


def last_run(name: str) -> dict[str, Any] | None:
    """The full view (:func:`celeray.api._runview.view_of`) of ``name``'s most recent run
    the state store still holds, or None."""
    c = conns()
    for run_id in c.store.recent(name, 1):
        return load_run(run_id, c.store, c.client)
    return None


@bp.get("/api/v1/pipelines")
def list_pipelines() -> Response:
    """Every pipeline in file order, each with its most recent run (or null)."""
    c = conns()
    found = []
    for name, pipeline in c.pipelines().items():
        last = None
        view = last_run(name)
        if view is not None:
            last = {k: view[k] for k in ("run_id", "state", "created_at", "finished_at")}
            last["rows_out"] = view["progress"]["rows_out"]
        found.append(describe(pipeline, last, backlog_of(c.store, name)))
    return jsonify({"pipelines": found})


@bp.get("/api/v1/pipelines/<name>/schema")
def table_schema(name: str) -> Response:
    """The table schema of ``name``'s sink (null version before its first commit) and the
    history of its versions: which batch of which run added or widened what."""
    if not PIPELINE_NAME.fullmatch(name):
        raise NotFound("no such pipeline")
    pipeline = get_pipeline(conns().pipelines(), name)
    return jsonify(SchemaLog(pipeline.sink).describe())
