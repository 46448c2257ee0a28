"""celeray's HTTP API (Flask): trigger runs, follow them, list pipelines, health, metrics.

Serve it with ``gunicorn -c python:celeray.api.gunicorn_conf "celeray.api:create_app()"``;
the routes and their answers are described in ``celeray/api/openapi.json``, also served at
``GET /api/v1/openapi.json``.

``create_app`` is imported on first use, not with the package: gunicorn's master imports
``celeray.api.gunicorn_conf`` (and so this package) before it forks, and the gevent workers
patch the standard library after the fork. Anything imported before the patch (Flask,
Celery, kombu, redis-py) would keep the unpatched, blocking socket and select functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeray.api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from celeray.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
