"""TLS for ``rediss://`` URLs, from settings, in the shapes Celery and redis-py want.

A password travels inside the URL (``redis://:password@host:port/db``) and needs nothing
here. For a ``rediss://`` URL the server's certificate is always verified, against
``CELERAY_REDIS_TLS_CA_FILE`` or else the system's CAs; a client certificate and key are
sent when ``CELERAY_REDIS_TLS_CERT_FILE`` / ``_KEY_FILE`` name them. ``redis://`` URLs get
no TLS options, so one Redis may use TLS and another not.
"""

from __future__ import annotations

import ssl
from typing import Any

import redis

from celeray.settings import Settings

__all__ = ["celery_ssl", "redis_client", "redis_ssl"]


def _is_tls(url: str) -> bool:
    return url.lower().startswith("rediss://")


def _files(settings: Settings) -> dict[str, str]:
    found = {
        "ssl_ca_certs": settings.redis_tls_ca_file,
        "ssl_certfile": settings.redis_tls_cert_file,
        "ssl_keyfile": settings.redis_tls_key_file,
    }
    return {k: str(v) for k, v in found.items() if v is not None}


def redis_ssl(settings: Settings, url: str) -> dict[str, Any]:
    """Keyword arguments of ``redis.Redis.from_url`` for ``url``: empty unless ``rediss://``."""
    if not _is_tls(url):
        return {}
    return {"ssl_cert_reqs": "required", **_files(settings)}


def celery_ssl(settings: Settings, url: str) -> dict[str, Any] | None:
    """Celery's ``broker_use_ssl`` / ``redis_backend_use_ssl`` for ``url``; None unless TLS."""
    if not _is_tls(url):
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED, **_files(settings)}


def redis_client(settings: Settings, url: str, **options: Any) -> redis.Redis:
    """A redis-py client of ``url`` with the TLS options of settings, plus ``options``."""
    return redis.Redis.from_url(url, **redis_ssl(settings, url), **options)
