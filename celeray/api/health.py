"""``GET /api/v1/health`` (no token): every part celeray needs, 200 when all are up, else 503.

Without a valid token the answer says only ``ok`` overall and per part: worker host names,
paths, addresses and error messages are internals, shown to token holders alone.

Parts: ``broker``, ``backend``, ``state_store`` (Redis pings), ``pipelines`` (the file is
valid), ``workers`` (someone consumes ``io`` and ``ray``), ``ray`` (asked through the ``ray``
worker) and ``system`` (psutil). The pings and the file check run side by side with the
worker broadcast; Ray is asked last, and only when a ``ray`` worker exists, so the answer
takes about a second when all is well or Ray is unaskable, and at most about seven.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Blueprint, Response, jsonify

from celeray.api import _checks
from celeray.api._auth import has_valid_token, public
from celeray.api._connections import Connections, conns

__all__ = ["bp", "health_report", "public_view"]

bp = Blueprint("health", __name__)


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
        broker = _checks.ping(c, s.broker_url)
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

    No token needed for ``ok`` per part; with a valid one, every detail (workers, Ray,
    system, errors, the pipeline file's problems).
    """
    details = has_valid_token()
    report = health_report(conns(), details=details)
    body = report if details else public_view(report)
    return jsonify(body), 200 if report["ok"] else 503
