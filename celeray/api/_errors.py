"""JSON answers for every failure: HTTP errors, unknown pipelines, outages, bugs.

An outage of Redis (broker, backend or state store) is a 503 with ``Retry-After``; a broken
pipeline file is a 503 listing its problems (the service cannot run anything until it is
fixed, and a retry after the fix succeeds); anything unexpected is a 500 whose traceback
goes to the log only.
"""

from __future__ import annotations

import logging

import kombu.exceptions
import redis.exceptions
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from celeray.errors import PipelineFileError, UnknownPipelineError

__all__ = ["OUTAGES", "RETRY_AFTER", "register_errors"]

log = logging.getLogger(__name__)

_OUTAGE_MESSAGE = (
    "a Redis service celeray needs (broker, result backend or state store) is unreachable; "
    "GET /api/v1/health shows which"
)
RETRY_AFTER = 5  # seconds: supervisor restarts Redis within a few
OUTAGES: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,  # also BusyLoadingError: Redis still loading its data
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
)


def _json(status: int, body: dict[str, object]) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def _http_error(exc: HTTPException) -> Response:
    message = exc.description or exc.name
    if message == type(exc).description:  # werkzeug's generic sentence: say it plainly
        message = exc.name.lower()
        if exc.code == 413 and request.max_content_length is not None:
            message = f"request body over {request.max_content_length} bytes"
    response = _json(exc.code or 500, {"error": message})
    for name, value in exc.get_headers():  # keeps Allow (405) and WWW-Authenticate (401)
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _unknown_pipeline(exc: UnknownPipelineError) -> Response:
    return _json(404, {"error": str(exc)})


def _pipeline_file(exc: PipelineFileError) -> Response:
    log.warning("pipeline file %s has %d problem(s)", exc.path, len(exc.issues))
    response = _json(
        503,
        {
            "error": f"the pipeline file has {len(exc.issues)} problem(s); nothing can run "
            "until it is fixed (celeray validate lists them too)",
            "problems": [str(issue) for issue in exc.issues],
        },
    )
    response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


def _outage(exc: Exception) -> Response:
    log.warning("%s %s: unavailable: %s: %s", request.method, request.path,
                type(exc).__name__, exc)  # fmt: skip
    response = _json(503, {"error": _OUTAGE_MESSAGE})
    response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


def _internal(exc: Exception) -> Response:
    log.exception("%s %s: unhandled %s", request.method, request.path, type(exc).__name__)
    return _json(500, {"error": "internal server error; the API's log has the details"})


def register_errors(app: Flask) -> None:
    """Install the JSON error handlers on ``app``."""
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(UnknownPipelineError, _unknown_pipeline)
    app.register_error_handler(PipelineFileError, _pipeline_file)
    for outage in OUTAGES:
        app.register_error_handler(outage, _outage)
    app.register_error_handler(Exception, _internal)
