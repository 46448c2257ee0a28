"""The web pages' session: its signed cookie, the CSRF token, the cross-site check.

The cookie is Flask's signed session (itsdangerous), keyed by :func:`session_key`: an HMAC of
the API token, so the key is never stored, never in ``app.config`` (which gets dumped) and
never logged, and a new token ends every session. The cookie is HttpOnly, SameSite=Strict,
and Secure whenever the request came over TLS; it lives :data:`SESSION_LIFETIME` (checked
from the signature's time stamp, not only by the browser). Logging out clears it in the
browser; a copied cookie stays valid until it expires or the token changes (a signed cookie
has no server-side record to revoke).

A POST passes only with the session's CSRF token in its ``csrf`` form field and, when the
browser says where the request comes from (``Sec-Fetch-Site``, ``Origin``), only from this
origin.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, request, session
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer

__all__ = [
    "COOKIE",
    "SESSION_LIFETIME",
    "PageSessions",
    "cross_site",
    "csrf_ok",
    "csrf_token",
    "safe_next",
    "session_key",
    "who",
]

COOKIE = "celeray_session"
SESSION_LIFETIME = timedelta(hours=12)  # a working day: long enough not to annoy, then log in again
_KEY_CONTEXT = b"celeray web session v1"  # domain separation: the key is not the token's hash
_SAME = frozenset({"same-origin", "none"})  # Sec-Fetch-Site values of our own page, or typed
_NEXT = re.compile(r"/(?!/)[A-Za-z0-9/_.~%=&?+*,-]{0,1000}")  # a path of ours, never //host or \
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")  # who a decision is recorded as


def session_key(token: bytes) -> bytes:
    """The key that signs the session cookie, derived from the API token."""
    return hmac.new(token, _KEY_CONTEXT, hashlib.sha256).digest()


class PageSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie session with our key and cookie flags (see the module's doc)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(
            self._key,
            salt=self.salt,
            serializer=self.serializer,
            signer_kwargs={"key_derivation": self.key_derivation,
                           "digest_method": self.digest_method},
        )  # fmt: skip

    def get_cookie_name(self, app: Flask) -> str:
        return COOKIE

    def get_cookie_httponly(self, app: Flask) -> bool:
        return True

    def get_cookie_samesite(self, app: Flask) -> str:
        return "Strict"

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure

    def should_set_cookie(self, app: Flask, session: Any) -> bool:
        return bool(session.modified)  # no fresh Set-Cookie on every page view


def cross_site(origin: str | None, fetch_site: str | None, host: str) -> str | None:
    """Why a POST is refused as cross-site, or None when it may pass.

    ``fetch_site`` (``Sec-Fetch-Site``) must be ``same-origin`` (or ``none``: typed by the
    user); ``same-site`` is refused too, since a sibling host is another site's code.
    ``origin`` (``Origin``), when sent, must name ``host`` (the request's ``Host``, which a
    browser sets to the page's own host). A client that sends neither (curl) passes here and
    still needs the CSRF token.
    """
    if fetch_site and fetch_site.lower() not in _SAME:
        return f"cross-site request refused (Sec-Fetch-Site: {fetch_site})"
    if origin:
        netloc = urlsplit(origin).netloc if origin != "null" else ""
        if netloc.lower() != host.lower():
            return "cross-origin request refused (Origin is not this site)"
    return None


def csrf_token() -> str:
    """The session's CSRF token, made on first use (the form field ``csrf`` carries it)."""
    token = session.get("csrf")
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def csrf_ok(given: str | None, expected: object) -> bool:
    """Whether the form's token ``given`` is the session's ``expected`` one (constant time)."""
    if not given or not isinstance(expected, str) or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def safe_next(target: str | None) -> str:
    """Where to go after logging in: ``target`` when it is a path of this site, else ``/``."""
    if target and _NEXT.fullmatch(target) and "\\" not in target:
        return target
    return "/"


def who(name: str | None) -> str | None:
    """The name a user gave at login (for the record of decisions), or None if unusable."""
    name = (name or "").strip()
    return name if _NAME.fullmatch(name) else None
