"""The Flask app factory: ``gunicorn "celeray.api:create_app()"``.

One app per process. Its connections are made lazily on first use and kept on the app
(``app.extensions``), so forking servers fork before any socket exists. Every route but
health needs ``Authorization: Bearer <token>``; every client (token, or address) is held to
``CELERAY_API_RATE_LIMIT`` requests a minute (429); every answer, errors included, is JSON
(``/metrics`` is Prometheus text); request bodies over :data:`MAX_BODY_BYTES` are refused
with 413, chunked ones too.

No answer is a redirect: werkzeug's redirects (``//`` merged to ``/``, a missing trailing
slash added) build an absolute URL from the request's Host header, which the client
chooses. Merging is off, and any redirect the URL map would still give (a route ending in
``/`` asked without it) is answered 404 instead, so no URL the API gives is built from the
Host header.

The web pages (:mod:`celeray.api.web`) are the one exception, on purpose: a browser without
the session cookie must land on the login page, and after a form's POST on the page it
changed, so pages answer 303 with a *relative* ``Location`` (a path of ours, never built from
the Host header nor taken from the client) and their errors as HTML.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import quote

import psutil
from flask import Flask, Response, g, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import NotFound
from werkzeug.routing import RequestRedirect

from celeray import credentials, signing
from celeray.api import health, metrics, openapi, pipelines, runs, triage, web
from celeray.api._auth import check_auth, is_page, is_public, set_token
from celeray.api._connections import EXTENSION, Connections
from celeray.api._errors import register_errors
from celeray.api._ratelimit import limit_rate
from celeray.runstate import RunStore
from celeray.settings import Settings, get_settings

__all__ = ["MAX_BODY_BYTES", "create_app"]

MAX_BODY_BYTES = 64 * 1024  # no route takes a body; this bounds what a client can push
_CHUNK = 16 * 1024
access_log = logging.getLogger("celeray.api.access")


def _start_clock() -> None:
    g.celeray_started = time.perf_counter()


def _no_redirects() -> None:
    """Answer 404 where werkzeug's URL map would redirect (to a URL built from Host)."""
    if isinstance(request.routing_exception, RequestRedirect):
        raise NotFound()


def _read_body() -> None:
    """Read and drop the body, so MAX_CONTENT_LENGTH holds even though no view reads it.

    werkzeug refuses (413) a Content-Length over the limit at once; a chunked body (the
    server sets ``wsgi.input_terminated``) when a read goes past the limit, which is why
    this reads until the stream ends rather than one ``get_data()``. Only token holders'
    bodies are read (this runs after the token check): a public route's body is left to
    the server, which drains it within its own deadline, so nobody without the token can
    hold a request open by sending a body slowly.
    """
    if request.url_rule is None or is_public() or is_page():
        return  # a page's form is parsed by its view, within MAX_CONTENT_LENGTH all the same
    stream = request.stream
    while stream.read(_CHUNK):
        pass


def _log_request(response: Response) -> Response:
    started = g.get("celeray_started")
    ms = (time.perf_counter() - started) * 1000 if started is not None else -1.0
    path = quote(request.path, safe="/:@!$&'()*+,;=-._~")  # no control chars into the log
    access_log.info("%s %s %d %.1fms", request.method, path, response.status_code, ms)
    return response


def _default_logging() -> None:
    """Log INFO to stderr when nothing configured logging (as under gunicorn)."""
    ours = logging.getLogger("celeray")
    if logging.getLogger().handlers or ours.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False


def create_app(
    settings: Settings | None = None, *, store: RunStore | None = None, client: object = None
) -> Flask:
    """The celeray HTTP API for ``settings`` (default: from the environment).

    ``store`` (a RunStore) and ``client`` (a Celery app from ``make_client``) replace the
    connections the app would make itself. The API token is read (or generated) here, and
    the signing key material checked (the API signs the runs it sends), so an unusable
    ``CELERAY_HOME`` or a missing key stops the server at start, not at its first request.
    """
    settings = settings or get_settings()
    if client is None and not settings.monitor_only:
        signing.check(signing.key_material(settings))
    _default_logging()
    app = Flask(__name__, static_folder=None)
    # No redirects (see the module's docstring); set before any route is added.
    app.url_map.merge_slashes = False
    app.url_map.redirect_defaults = False
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    if isinstance(app.json, DefaultJSONProvider):
        app.json.sort_keys = False  # fields in the order the docs list them
    app.extensions[EXTENSION] = Connections(settings, store=store, client=client)
    set_token(app, credentials.api_token(settings))
    app.before_request(_start_clock)
    app.before_request(_no_redirects)
    app.before_request(limit_rate)
    app.before_request(check_auth)
    app.before_request(_read_body)
    app.after_request(_log_request)
    register_errors(app)
    for module in (runs, pipelines, triage, health, metrics, openapi):
        app.register_blueprint(module.bp)
    web.install(app)
    psutil.cpu_percent(interval=None)  # starts the interval the health check's figure covers
    return app
