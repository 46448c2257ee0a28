"""``GET /api/v1/health`` (no token): every part celeray needs, 200 when all are up, else 503.

Without a valid token the answer says only ``ok`` overall and per part: worker host names,
paths, addresses and error messages are internals, shown to token holders alone.

Parts: ``broker`` (a Redis ping, or a RabbitMQ connection), ``backend``, ``state_store``
(Redis pings), ``pipelines`` (the file is
valid), ``workers`` (someone consumes ``io`` and ``ray``), ``ray`` (asked through the ``ray``
worker) and ``system`` (psutil). The pings and the file check run side by side with the
worker broadcast; Ray is asked last, and only when a ``ray`` worker exists, so the answer
takes about a second when all is well or Ray is unaskable, and at most about seven.

That second is too dear to pay for anyone who asks: the answer without a token is kept
for :data:`PUBLIC_TTL` seconds per process, and while one check runs other callers
without a token wait for its answer instead of starting their own. A token holder's
answer is always checked anew (and refreshes the kept public one). Measured under gunicorn
(``python -m tests._slowloris --health``): an anonymous call took 1,009-1,116 ms each
before, and 1-18 ms after the first per process; with 4 anonymous callers looping, a
token holder's trigger took a median 1,774 ms before and 6 ms after.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from flask.blueprints import BlueprintSetupState

from celeray.api import _checks
from celeray.api._auth import has_valid_token, public
from celeray.api._connections import Connections, conns

__all__ = ["PUBLIC_TTL", "PublicAnswer", "bp", "health_report", "public_view"]

# Seconds the answer without a token is reused: a flood of anonymous calls costs one check
# per process in that time, and a monitor polling every 10 s (compose's healthcheck) still
# sees each change within one poll.
PUBLIC_TTL = 3.0
_EXTENSION = "celeray.health_public"

bp = Blueprint("health", __name__)


class PublicAnswer:
    """The last answer anyone may see (a :func:`public_view`), kept for ``ttl`` seconds.

    One process's, shared by its request threads or greenlets; :meth:`get` runs one check
    at a time, the others wait for it and take its answer.
    """

    def __init__(self, ttl: float = PUBLIC_TTL) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._view: dict[str, Any] | None = None
        self._at = -math.inf

    def _fresh(self) -> dict[str, Any] | None:
        if time.monotonic() - self._at < self.ttl:
            return self._view
        return None

    def put(self, view: dict[str, Any]) -> None:
        """Keep ``view``, checked just now."""
        self._view, self._at = view, time.monotonic()

    def get(self, check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The kept view while fresh, else ``check()``'s (kept for the next callers)."""
        view = self._fresh()
        if view is not None:
            return view
        with self._lock:
            view = self._fresh()  # another caller may have checked while this one waited
            if view is None:
                view = check()
                self.put(view)
        return view


@bp.record_once
def _keep_public_answers(state: BlueprintSetupState) -> None:
    state.app.extensions[_EXTENSION] = PublicAnswer()


def health_report(c: Connections, *, details: bool = False) -> dict[str, Any]:
    """Check every part; ``ok`` is true when each part's is.

    ``details`` adds what only token holders see: the pipeline file's problems.
    """
    started = time.monotonic()
    s = c.settings
    with ThreadPoolExecutor(5) as pool:
        futures = {
            "backend": pool.submit(_checks.ping, c, s.result_backend),
            "state_store": pool.submit(_checks.ping, c, s.effective_state_url),
            "pipelines": pool.submit(_checks.pipelines, c, details=details),
            "system": pool.submit(_checks.system, c),
        }
        broker = _checks.broker(c)
        if broker["ok"]:
            workers = _checks.workers(c)
        else:
            workers = {"ok": False, "error": "not checked: the broker is unreachable"}
        parts = {"broker": broker, **{k: f.result() for k, f in futures.items()}}
    if parts["backend"]["ok"]:
        ray = _checks.ray(c, workers)
    else:
        ray = {"ok": False, "error": "not checked: the result backend is unreachable"}
    parts.update(workers=workers, ray=ray)
    order = ("broker", "backend", "state_store", "workers", "ray", "pipelines", "system")
    return {
        "ok": all(p["ok"] for p in parts.values()),
        "seconds": round(time.monotonic() - started, 3),
        **{name: parts[name] for name in order},
    }


def public_view(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` cut down to what anyone may see: ``ok`` overall and per part."""
    parts = {k: {"ok": bool(v["ok"])} for k, v in report.items() if isinstance(v, dict)}
    return {"ok": bool(report["ok"]), **parts}


@bp.get("/api/v1/health")
@public
def health() -> tuple[Response, int]:
    """The health report: 200 when every part is up, 503 (same body) otherwise.

    No token needed for ``ok`` per part (kept up to PUBLIC_TTL seconds); with a valid
    one, every detail (workers, Ray, system, errors, the pipeline file's problems), checked
    now.
    """
    kept: PublicAnswer = current_app.extensions[_EXTENSION]
    c = conns()
    if has_valid_token():
        report = health_report(c, details=True)
        kept.put(public_view(report))
        return jsonify(report), 200 if report["ok"] else 503
    view = kept.get(lambda: public_view(health_report(c)))
    return jsonify(view), 200 if view["ok"] else 503
