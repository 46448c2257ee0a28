"""``POST /api/v1/pipelines/<name>/runs`` starts a run; ``GET /api/v1/runs/<id>`` follows it.

A trigger names a pipeline and nothing else: the request body is read (so the size limit
holds) and ignored, and no URL, path, task name or storage option is ever taken from it.
"""

from __future__ import annotations

import logging
import re

from flask import Blueprint, Response, jsonify, url_for
from werkzeug.exceptions import NotFound

from celeray.api._connections import conns
from celeray.api._runview import load_run
from celeray.errors import RunActiveError
from celeray.pipelines import get_pipeline
from celeray.runs import trigger_run

__all__ = ["PIPELINE_NAME", "RUN_ID", "bp"]

log = logging.getLogger(__name__)

PIPELINE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # the pipeline file's own rule
RUN_ID = re.compile(r"[A-Za-z0-9-]{1,64}")  # uuid4 text, with room for other id shapes

bp = Blueprint("runs", __name__)


@bp.post("/api/v1/pipelines/<name>/runs")
def trigger(name: str) -> tuple[Response, int, dict[str, str]]:
    """Send a run of ``name``: 202 with its id, or 409 naming the run already going.

    The pipeline file is read as it is now, so an edit counts from the next request.
    """
    if not PIPELINE_NAME.fullmatch(name):
        raise NotFound("no such pipeline")
    c = conns()
    get_pipeline(c.pipelines(), name)
    try:
        run_id = trigger_run(name, c.store, c.client, trigger="api")
    except RunActiveError as exc:
        url = url_for("runs.status", run_id=exc.run_id)
        body = {"run_id": exc.run_id, "error": str(exc), "status_url": url}
        return jsonify(body), 409, {"Location": url}
    log.info("run %s of %s sent", run_id, name)
    url = url_for("runs.status", run_id=run_id)
    return jsonify({"run_id": run_id, "status_url": url}), 202, {"Location": url}


@bp.get("/api/v1/runs/<run_id>")
def status(run_id: str) -> Response:
    """The run's state, progress counters, summary (on success) and error (on failure)."""
    if not RUN_ID.fullmatch(run_id):
        raise NotFound("no such run")
    c = conns()
    view = load_run(run_id, c.store, c.client)
    if view is None:
        raise NotFound("no such run (runs are kept for CELERAY_RESULT_EXPIRES seconds)")
    return jsonify(view)
