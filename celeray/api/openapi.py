"""``GET /api/v1/openapi.json``: the OpenAPI 3.1 description of this API (token required,
like every route but health).

The document is the package data file ``celeray/api/openapi.json``, read once.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from flask import Blueprint, Response

__all__ = ["bp", "document"]

bp = Blueprint("openapi", __name__)


@cache
def document() -> bytes:
    """The OpenAPI document as shipped with the package."""
    return files("celeray.api").joinpath("openapi.json").read_bytes()


@bp.get("/api/v1/openapi.json")
def openapi() -> Response:
    """The OpenAPI document."""
    return Response(document(), content_type="application/json")
