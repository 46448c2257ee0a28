"""``GET /api/v1/pipelines``: each pipeline of the file, its schedule and its last run;
``GET /api/v1/pipelines/<name>/schema``: its sink's table schema and the schema's history."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from werkzeug.exceptions import NotFound

from celeray.api._connections import conns
from celeray.api._runview import load_run
from celeray.api.runs import PIPELINE_NAME
from celeray.pipelines import Pipeline, get_pipeline
from celeray.schema_log import SchemaLog

__all__ = ["bp", "describe", "last_run"]

bp = Blueprint("pipelines", __name__)


def describe(pipeline: Pipeline, last_run: dict[str, Any] | None) -> dict[str, Any]:
    """The public face of one pipeline; ``schedule`` is a cron string, seconds, or null."""
    schedule = pipeline.schedule
    if isinstance(schedule, float) and schedule.is_integer():
        schedule = int(schedule)
    return {
        "name": pipeline.name,
        "schedule": schedule,
        "source": pipeline.source,
        "sink": pipeline.sink,
        "format": pipeline.format,
        "last_run": last_run,
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
    found = []
    for name, pipeline in conns().pipelines().items():
        last = None
        view = last_run(name)
        if view is not None:
            last = {k: view[k] for k in ("run_id", "state", "created_at", "finished_at")}
            last["rows_out"] = view["progress"]["rows_out"]
        found.append(describe(pipeline, last))
    return jsonify({"pipelines": found})


@bp.get("/api/v1/pipelines/<name>/schema")
def table_schema(name: str) -> Response:
    """The table schema of ``name``'s sink (null version before its first commit) and the
    history of its versions: which batch of which run added or widened what."""
    if not PIPELINE_NAME.fullmatch(name):
        raise NotFound("no such pipeline")
    pipeline = get_pipeline(conns().pipelines(), name)
    return jsonify(SchemaLog(pipeline.sink).describe())
