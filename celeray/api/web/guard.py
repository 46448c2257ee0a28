"""The pages' gate, headers and errors: a ``before_request`` of the web blueprint.

- A POST from another site is refused (403) before anything else: ``Sec-Fetch-Site`` and
  ``Origin`` (:func:`celeray.api.web._session.cross_site`).
- Without a logged-in session every page answers 303 to ``/login?next=<the page>``.
- Every POST, the login's included, needs the session's CSRF token in its ``csrf`` field.
- Every page answer carries a Content-Security-Policy (scripts and styles only with the
  answer's nonce), no framing, no caching, no referrer to other sites.
- Errors on pages are HTML pages with the status; the JSON API's handlers stay as they are.
"""

from __future__ import annotations

import logging
import secrets

from flask import Flask, Response, g, redirect, render_template, request, session, url_for
from werkzeug.exceptions import Forbidden, HTTPException
from werkzeug.wrappers import Response as BaseResponse

from celeray.api._auth import token_bytes
from celeray.api._errors import OUTAGES, RETRY_AFTER
from celeray.api.web._session import (
    SESSION_LIFETIME,
    PageSessions,
    cross_site,
    csrf_ok,
    csrf_token,
    session_key,
)
from celeray.api.web.views import bp
from celeray.errors import PipelineFileError, UnknownPipelineError

__all__ = ["install_guard"]

log = logging.getLogger(__name__)
OPEN_ENDPOINTS = frozenset({"web.login_form", "web.login"})  # reachable without a session
_CSP = ("default-src 'none'; script-src 'nonce-{n}'; style-src 'nonce-{n}'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def _gate() -> BaseResponse | None:
    g.celeray_nonce = secrets.token_urlsafe(16)
    if request.method == "POST":
        reason = cross_site(request.headers.get("Origin"),
                            request.headers.get("Sec-Fetch-Site"), request.host)  # fmt: skip
        if reason is not None:
            log.warning("%s %s refused: %s", request.method, request.path, reason)
            raise Forbidden(reason)
    if request.endpoint not in OPEN_ENDPOINTS and not session.get("auth"):
        target = request.full_path.rstrip("?") if request.method == "GET" else "/"
        return redirect(url_for("web.login_form", next=target), 303)
    if request.method == "POST" and not csrf_ok(request.form.get("csrf"), session.get("csrf")):
        log.warning("%s %s refused: CSRF token missing or wrong", request.method, request.path)
        raise Forbidden("the form's CSRF token is missing or stale: reload the page and retry")
    return None


def _headers(response: Response) -> Response:
    nonce = g.get("celeray_nonce", "")
    response.headers["Content-Security-Policy"] = _CSP.format(n=nonce)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def _page_error(status: int, message: str) -> tuple[str, int]:
    return render_template("error.html", status=status, message=message), status


def _http_error(exc: HTTPException) -> Response | tuple[str, int]:
    body, status = _page_error(exc.code or 500, exc.description or exc.name)
    response = Response(body, status, mimetype="text/html")
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _unknown(exc: UnknownPipelineError) -> tuple[str, int]:
    return _page_error(404, str(exc))


def _pipeline_file(exc: PipelineFileError) -> tuple[str, int]:
    problems = "; ".join(str(i) for i in exc.issues)
    return _page_error(503, f"the pipeline file has problems (celeray validate): {problems}")


def _outage(exc: Exception) -> Response:
    log.warning("%s %s: unavailable: %s", request.method, request.path, type(exc).__name__)
    body, status = _page_error(503, "a Redis service celeray needs is unreachable; "
                                    "/api/v1/health shows which")  # fmt: skip
    return Response(body, status, mimetype="text/html", headers={"Retry-After": str(RETRY_AFTER)})


def _internal(exc: Exception) -> tuple[str, int]:
    log.exception("%s %s: unhandled %s", request.method, request.path, type(exc).__name__)
    return _page_error(500, "internal server error; the API's log has the details")


def install_guard(app: Flask) -> None:
    """Give ``app`` the pages' session: cookie, key (from the app's API token), lifetime."""
    with app.app_context():
        key = session_key(token_bytes())
    app.session_interface = PageSessions(key)
    app.permanent_session_lifetime = SESSION_LIFETIME
    app.jinja_env.globals["csrf_token"] = csrf_token


# The blueprint's hooks and handlers, once (a blueprint takes no setup after registration).
bp.before_request(_gate)
bp.after_request(_headers)
bp.register_error_handler(HTTPException, _http_error)
bp.register_error_handler(UnknownPipelineError, _unknown)
bp.register_error_handler(PipelineFileError, _pipeline_file)
for _outage_type in OUTAGES:
    bp.register_error_handler(_outage_type, _outage)
bp.register_error_handler(Exception, _internal)
