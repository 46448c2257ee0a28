"""Bearer-token authentication of every route that is not marked :func:`public`."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import TypeVar

from flask import Flask, current_app, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

__all__ = [
    "PAGES",
    "check_auth",
    "given_token",
    "has_valid_token",
    "is_page",
    "is_public",
    "public",
    "set_token",
    "token_bytes",
    "token_matches",
]

_TOKEN = "celeray.api_token"  # app.extensions key; kept out of app.config, which gets dumped
_PUBLIC = "_celeray_public"
PAGES = "web"  # the blueprint of the web pages (celeray.api.web): session cookie, not bearer
F = TypeVar("F", bound=Callable[..., object])


def public(view: F) -> F:
    """Mark ``view`` as answering without a token."""
    setattr(view, _PUBLIC, True)
    return view


def set_token(app: Flask, token: str) -> None:
    """Make ``token`` the one bearer token ``app`` accepts."""
    if not token:
        raise ValueError("the API token must not be empty")
    app.extensions[_TOKEN] = token.encode()


def _refuse(description: str, **params: str) -> Unauthorized:
    challenge = WWWAuthenticate("Bearer", {"realm": "celeray", **params})
    return Unauthorized(description, www_authenticate=challenge)


def given_token() -> str | None:
    """The bearer token the request carries, or None."""
    scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return None
    return given.strip()


def token_matches(given: str) -> bool:
    """Whether ``given`` is the API token (compared in constant time)."""
    return hmac.compare_digest(given.encode(), current_app.extensions[_TOKEN])


def token_bytes() -> bytes:
    """The API token of the current app (the web pages derive their session key from it)."""
    found: bytes = current_app.extensions[_TOKEN]
    return found


def has_valid_token() -> bool:
    """Whether the request carries the right bearer token (compared in constant time)."""
    given = given_token()
    return given is not None and token_matches(given)


def is_page() -> bool:
    """Whether the request is for a web page: those check a session cookie of their own
    (``celeray.api.web``) instead of a bearer token, and redirect to the login page."""
    return request.blueprint == PAGES


def is_public() -> bool:
    """Whether the request's route answers without a token."""
    if request.endpoint is None:
        return False
    view = current_app.view_functions.get(request.endpoint)
    return view is not None and bool(getattr(view, _PUBLIC, False))


def check_auth() -> None:
    """Refuse the request with 401 unless it may pass; a ``before_request`` hook.

    Unknown routes and wrong methods pass through, to be answered 404/405; the web pages
    pass through to their own session check (:func:`is_page`).
    """
    if request.url_rule is None or request.endpoint is None or is_public() or is_page():
        return
    if given_token() is None:
        raise _refuse("missing bearer token: send Authorization: Bearer <token>")
    if not has_valid_token():
        raise _refuse("invalid bearer token", error="invalid_token")
