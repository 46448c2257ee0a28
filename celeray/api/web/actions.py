"""What a page can do: log in and out, trigger a run, replay or dismiss a quarantined input.

Each is a form's POST, checked by :mod:`celeray.api.web.guard` (same origin, the session's
CSRF token, the session itself but for the login) before it gets here, and answered with a
303 to the page it changed (a relative path of ours). Each calls the core function the JSON
API calls: :func:`celeray.runs.trigger_run`, :class:`celeray.quarantine.Triage`.
"""

from __future__ import annotations

import logging

from flask import redirect, render_template, request, session, url_for
from werkzeug.exceptions import Conflict, NotFound
from werkzeug.wrappers import Response

from celeray.api._auth import token_matches
from celeray.api._connections import conns
from celeray.api.triage import KEY
from celeray.api.web._session import SESSION_LIFETIME, csrf_token, safe_next, who
from celeray.api.web.views import _pipeline, bp
from celeray.errors import QuarantineError, RunActiveError
from celeray.quarantine import Triage
from celeray.runs import trigger_run

__all__ = ["WEB_USER"]

log = logging.getLogger(__name__)
WEB_USER = "web"  # who a page's decision is recorded as; ``web:<name>`` with a login name
_MAX_TOKEN = 512  # characters of a typed token looked at: far past any real one


@bp.get("/login")
def login_form() -> str:
    """The login page: the API token, and a name to record decisions under."""
    csrf_token()  # the form's token, in the (not yet logged-in) session
    return render_template("login.html", next=safe_next(request.args.get("next")), error=None)


@bp.post("/login")
def login() -> Response | tuple[str, int]:
    """Check the token (constant time); a wrong one is refused with 401 and the form again."""
    given = request.form.get("token", "")[:_MAX_TOKEN]
    target = safe_next(request.form.get("next"))
    if not given or not token_matches(given):
        log.warning("web login refused from %s", request.remote_addr)
        return render_template("login.html", next=target, error="wrong token"), 401
    session.clear()  # a new session: nothing from before the login carries over
    session.permanent = True  # expires after SESSION_LIFETIME, checked from its signature
    session["auth"] = True
    name = who(request.form.get("name"))
    session["who"] = f"{WEB_USER}:{name}" if name else WEB_USER
    csrf_token()
    log.info("web login as %s (session of %s)", session["who"], SESSION_LIFETIME)
    return redirect(target, 303)


@bp.post("/logout")
def logout() -> Response:
    """End the session: the browser's cookie is cleared."""
    session.clear()
    return redirect(url_for("web.login_form"), 303)


@bp.post("/pipelines/<name>/runs")
def trigger(name: str) -> Response:
    """Send a run of ``name`` and show it; a run already going is shown instead."""
    pipeline = _pipeline(name)
    c = conns()
    try:
        run_id = trigger_run(pipeline.name, c.store, c.client, trigger="web")
    except RunActiveError as exc:
        run_id = exc.run_id
    else:
        log.info("run %s of %s sent from the web by %s", run_id, name, session.get("who"))
    return redirect(url_for("web.run", name=pipeline.name, run_id=run_id), 303)


def _decide(name: str, key: str, action: str) -> Response:
    pipeline = _pipeline(name)
    if not KEY.fullmatch(key):
        raise NotFound("no such quarantined input")
    triage = Triage(pipeline.sink)
    by = str(session.get("who") or WEB_USER)
    try:
        url = triage.url_of(key)
        (triage.replay if action == "replay" else triage.dismiss)(url, by)
    except QuarantineError as exc:
        raise (NotFound if exc.missing else Conflict)(str(exc)) from None
    back = safe_next(request.form.get("next"))
    return redirect(back if back != "/" else url_for("web.quarantine", pipeline=name), 303)


@bp.post("/pipelines/<name>/quarantine/<key>/replay")
def replay(name: str, key: str) -> Response:
    """Let the next run take the input again (recorded with who and when)."""
    return _decide(name, key, "replay")


@bp.post("/pipelines/<name>/quarantine/<key>/dismiss")
def dismiss(name: str, key: str) -> Response:
    """Keep the input out for good (recorded with who and when)."""
    return _decide(name, key, "dismiss")
