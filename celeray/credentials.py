"""The stack's secrets: the API token, Flower's password and the Ray auth token.

Each comes from its setting when one is given (a non-empty ``CELERAY_API_TOKEN`` or
``CELERAY_FLOWER_PASSWORD``), else from a file under ``CELERAY_HOME`` that is generated on
first use: mode 0600, written whole into a temporary file of the same folder and then
hard-linked into place, so a reader never sees a partial file and of two processes racing
to create it, both end with the one value that won. Secrets are never logged; paths are.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from celeray.errors import ConfigError
from celeray.settings import Settings

__all__ = ["api_token", "flower_password", "ray_auth_token_path"]

log = logging.getLogger(__name__)

API_TOKEN_FILE = "api_token"
FLOWER_PASSWORD_FILE = "flower_password"
RAY_AUTH_TOKEN_FILE = "ray_auth_token"
# Where hard links are not supported, fall back to a rename (the race is then
# narrowed to the moment between the existence check and the rename, not closed).
_NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}


def api_token(settings: Settings) -> str:
    """The bearer token of the HTTP API."""
    return _setting_or_file(settings.api_token, settings.home / API_TOKEN_FILE,
                            lambda: secrets.token_urlsafe(32))  # fmt: skip


def flower_password(settings: Settings) -> str:
    """The password of Flower's basic auth (its user is ``settings.flower_user``)."""
    return _setting_or_file(settings.flower_password, settings.home / FLOWER_PASSWORD_FILE,
                            lambda: secrets.token_urlsafe(32))  # fmt: skip


def ray_auth_token_path(settings: Settings) -> Path:
    """The file holding the Ray cluster's auth token (for ``RAY_AUTH_TOKEN_PATH``).

    There is no setting for it: the head and every driver read the same file.
    """
    path = settings.home / RAY_AUTH_TOKEN_FILE
    _read_or_create(path, lambda: secrets.token_hex(32))
    return path.absolute()


def _setting_or_file(value: SecretStr | None, path: Path, make: Callable[[], str]) -> str:
    if value is not None and value.get_secret_value().strip():
        return value.get_secret_value().strip()
    return _read_or_create(path, make)


def _read_or_create(path: Path, make: Callable[[], str]) -> str:
    """The secret in ``path``, generated with ``make()`` if the file does not exist yet."""
    existing = _read(path)
    if existing is not None:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask, never more than the owner
            os.write(fd, make().encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process got there first: theirs wins
            log.info("generated %s", path)
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            if not path.exists():
                os.replace(tmp, path)
                log.info("generated %s", path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    value = _read(path)
    if value is None:
        raise ConfigError(f"{path} vanished right after it was written")
    return value


def _read(path: Path) -> str | None:
    """The stripped content of ``path``, or None when it does not exist."""
    try:
        with path.open("rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            raw = fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by others (mode %o); chmod 600 it", path, mode & 0o777)
    try:
        value = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not ASCII text; delete it to generate a new one") from None
    if not value:
        raise ConfigError(f"{path} is empty; delete it to generate a new one")
    return value
