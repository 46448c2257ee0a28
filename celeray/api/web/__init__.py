"""The web UI at ``/``: server-rendered pages over the core the JSON API and CLI use.

Pages log in with the API token and then hold a session cookie (:mod:`._session`); every
form's POST is checked for its origin and CSRF token (:mod:`.guard`). docs/web.md describes
the pages.
"""

from __future__ import annotations

from flask import Flask

from celeray.api.web import actions, guard
from celeray.api.web.views import bp

__all__ = ["bp", "install"]

_ = actions  # its routes are on bp


def install(app: Flask) -> None:
    """Serve the pages from ``app`` (whose API token is set)."""
    guard.install_guard(app)
    app.register_blueprint(bp)
