"""A pipeline's quarantined inputs, where each input went, and its runs, from its sink's
ledger (:mod:`celeray.quarantine`, :mod:`celeray.file_history`):

- ``GET /api/v1/pipelines/<name>/quarantine`` (filters ``kind``, ``glob``, ``all``)
- ``GET /api/v1/pipelines/<name>/quarantine/<key>``
- ``POST /api/v1/pipelines/<name>/quarantine/<key>/replay`` and ``.../dismiss``
- ``GET /api/v1/pipelines/<name>/files`` (filter ``glob``)
- ``GET /api/v1/pipelines/<name>/runs`` (``limit``)

No route takes a URL: a quarantined input is named by its key (24 hex digits, in every
listed item), and ``glob`` only filters the ledger's URLs in memory. A decision is recorded
as ``api``: the API has one token, which names nobody.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import BadRequest, Conflict, NotFound

from celeray.api._connections import conns
from celeray.api.runs import PIPELINE_NAME
from celeray.errors import QuarantineError
from celeray.file_history import file_history, run_history
from celeray.messages import MAX_URL_LENGTH
from celeray.pipelines import get_pipeline
from celeray.quarantine import Triage

__all__ = ["API_USER", "KEY", "MAX_LIMIT", "bp"]

bp = Blueprint("triage", __name__)
API_USER = "api"  # who an API decision is recorded as: the one token names no user
MAX_LIMIT = 10_000  # runs per answer at most: a bound on the answer's size
KEY = re.compile(r"[0-9a-f]{24}")  # celeray.ledger.quarantine_key
KIND = re.compile(r"[a-z_]{1,32}")  # an error kind (celeray.errors.InputError.kind)


def _sink(name: str) -> str:
    if not PIPELINE_NAME.fullmatch(name):
        raise NotFound("no such pipeline")
    return get_pipeline(conns().pipelines(), name).sink


def _glob() -> str | None:
    glob = request.args.get("glob") or None
    if glob is not None and len(glob) > MAX_URL_LENGTH:
        raise BadRequest("glob too long")
    return glob


@bp.get("/api/v1/pipelines/<name>/quarantine")
def quarantine_list(name: str) -> Response:
    """Quarantined inputs needing attention (``all=1``: every one), oldest first."""
    include_all = request.args.get("all", "").lower() in ("1", "true", "yes")
    kind = request.args.get("kind") or None
    if kind is not None and not KIND.fullmatch(kind):
        raise BadRequest("kind: an error kind such as parse or schema")
    items = Triage(_sink(name)).items(kind=kind, glob=_glob(), include_all=include_all)
    return jsonify({"items": items})


def _decide(name: str, key: str, action: str) -> Response:
    triage = Triage(_sink(name))
    if not KEY.fullmatch(key):
        raise NotFound("no such quarantined input")
    try:
        url = triage.url_of(key)
        if action == "show":
            return jsonify(triage.show(url))
        if action == "replay":
            return jsonify(triage.replay(url, API_USER))
        return jsonify(triage.dismiss(url, API_USER))
    except QuarantineError as exc:
        raise (NotFound if exc.missing else Conflict)(str(exc)) from None


@bp.get("/api/v1/pipelines/<name>/quarantine/<key>")
def quarantine_show(name: str, key: str) -> Response:
    """One quarantined input: reason, kind, line, batch, run, status and decision."""
    return _decide(name, key, "show")


@bp.post("/api/v1/pipelines/<name>/quarantine/<key>/replay")
def quarantine_replay(name: str, key: str) -> Response:
    """Let the next run take the input again (a run already planned is unaffected)."""
    return _decide(name, key, "replay")


@bp.post("/api/v1/pipelines/<name>/quarantine/<key>/dismiss")
def quarantine_dismiss(name: str, key: str) -> Response:
    """Keep the input out for good and off the default list."""
    return _decide(name, key, "dismiss")


@bp.get("/api/v1/pipelines/<name>/files")
def files(name: str) -> Response:
    """Every input the ledger knows, oldest first: its run, batch, rows and outputs."""
    return jsonify({"files": file_history(_sink(name), _glob())})


@bp.get("/api/v1/pipelines/<name>/runs")
def runs(name: str) -> Response:
    """The pipeline's runs that committed, newest first, from its sink's ledger."""
    try:
        limit = int(request.args.get("limit", "100"))
    except ValueError:
        raise BadRequest("limit must be a whole number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be within 1..{MAX_LIMIT}")
    return jsonify({"runs": run_history(_sink(name), limit)})
