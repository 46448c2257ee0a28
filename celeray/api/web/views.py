"""The pages one reads: Pipelines (``/``), a pipeline, a run, Quarantine, a file.

Every page needs the session cookie (:mod:`celeray.api.web.guard` sends a browser without
it to the login page). A path names a pipeline by name, a run by id and an input by its key
(:func:`celeray.ledger.quarantine_key`), each held to the JSON API's patterns; no page takes
a URL.
"""

from __future__ import annotations

import time

from flask import Blueprint, render_template, request
from jinja2 import Undefined
from werkzeug.exceptions import BadRequest, NotFound

from celeray.api._connections import conns
from celeray.api.runs import PIPELINE_NAME, RUN_ID
from celeray.api.triage import KEY, KIND
from celeray.api.web import _pages
from celeray.api.web._svg import line_chart
from celeray.messages import MAX_URL_LENGTH
from celeray.pipelines import Pipeline, get_pipeline
from celeray.quarantine import Triage

__all__ = ["bp"]

bp = Blueprint("web", __name__, template_folder="templates")


@bp.app_template_filter("when")
def when(t: float | None) -> str:
    """A unix time as UTC text; empty for None."""
    if t is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(t)))


@bp.app_template_filter("num")
def num(value: float | None) -> str:
    """A count with thousands separators; empty for None."""
    return "" if value is None or isinstance(value, Undefined) else f"{value:,}"


@bp.app_template_filter("basename")
def basename(url: str) -> str:
    """The last part of a URL."""
    return url.rstrip("/").rsplit("/", 1)[-1]


@bp.app_template_filter("schedule")
def schedule(value: str | float | None) -> str:
    """A pipeline's schedule in words."""
    if value is None:
        return "on demand"
    if isinstance(value, int | float):
        return f"every {value:g} s"
    return f"cron {value}"


def _pipeline(name: str) -> Pipeline:
    if not PIPELINE_NAME.fullmatch(name):
        raise NotFound("no such pipeline")
    return get_pipeline(conns().pipelines(), name)


@bp.get("/")
def pipelines() -> str:
    """Every pipeline: schedule, state, next and last run, quarantined inputs, a trigger."""
    return render_template("pipelines.html", rows=_pages.pipeline_rows(conns()))


@bp.get("/pipelines/<name>")
def pipeline(name: str) -> str:
    """One pipeline: its runs from the ledger, throughput, schema and its settings."""
    detail = _pages.pipeline_detail(conns(), _pipeline(name))
    return render_template("pipeline.html", p=detail, chart=line_chart(detail["points"]))


@bp.get("/pipelines/<name>/runs/<run_id>")
def run(name: str, run_id: str) -> str:
    """One run: live progress while it runs, its batches and its quarantined inputs."""
    pipeline = _pipeline(name)
    if not RUN_ID.fullmatch(run_id):
        raise NotFound("no such run")
    if request.args.get("part") == "live":  # the page's script, every second: no ledger read
        return render_template("_run_live.html", r=_pages.run_live(conns(), pipeline, run_id))
    detail = _pages.run_detail(conns(), pipeline, run_id)
    if detail is None:
        raise NotFound("no such run: neither the state store (CELERAY_RESULT_EXPIRES) nor the "
                       "sink's ledger knows it")  # fmt: skip
    return render_template("run.html", r=detail, flower=conns().settings.flower_link)


@bp.get("/quarantine")
def quarantine() -> str:
    """Quarantined inputs of every pipeline (or one), filterable by kind and name."""
    c = conns()
    name = request.args.get("pipeline") or None
    kind = request.args.get("kind") or None
    glob = request.args.get("glob") or None
    include_all = request.args.get("all", "") in ("1", "on", "true")
    if kind is not None and not KIND.fullmatch(kind):
        raise BadRequest("kind: an error kind such as parse or schema")
    if glob is not None and len(glob) > MAX_URL_LENGTH:
        raise BadRequest("glob too long")
    every = c.pipelines()
    chosen = [_pipeline(name)] if name else list(every.values())
    items = [
        {**item, "pipeline": p.name}
        for p in chosen
        for item in Triage(p.sink).items(kind=kind, glob=glob, include_all=include_all)
    ]
    return render_template("quarantine.html", items=items, names=list(every), chosen=name,
                           kind=kind or "", glob=glob or "", include_all=include_all)  # fmt: skip


@bp.get("/pipelines/<name>/files/<key>")
def file(name: str, key: str) -> str:
    """One input: the run and batch that committed it, its rows, where its rows are."""
    pipeline = _pipeline(name)
    if not KEY.fullmatch(key):
        raise NotFound("no such input")
    detail = _pages.file_detail(pipeline, key)
    if detail is None:
        raise NotFound("the sink's ledger knows no such input")
    return render_template("file.html", f=detail, pipeline=name)
