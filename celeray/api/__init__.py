"""celeray's HTTP API (Flask): trigger runs, follow them, list pipelines, health, metrics.

Serve it with ``gunicorn "celeray.api:create_app()"``; the routes and their answers are
described in ``celeray/api/openapi.json``, also served at ``GET /api/v1/openapi.json``.
"""

from celeray.api.app import create_app

__all__ = ["create_app"]
