"""The stack's secrets: the API token, Flower's password, the Ray auth token and the key
pair that signs task messages.

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

__all__ = ["api_token", "flower_password", "ray_auth_token_path", "signing_keys"]

log = logging.getLogger(__name__)

API_TOKEN_FILE = "api_token"
FLOWER_PASSWORD_FILE = "flower_password"
RAY_AUTH_TOKEN_FILE = "ray_auth_token"
# RSA (Celery's auth serializer takes no other): 3072 bits is NIST's size for keys used past
# 2030; measured 0.8 ms to sign and 65 us to verify a message here (2048: 0.3 ms / 50 us).
SIGNING_KEY_BITS = 3072
# Celery refuses an expired certificate, and the stack would stop on that day: the pair is
# an identity for signing, not a TLS certificate, and is replaced by deleting it on purpose.
SIGNING_CERT_DAYS = 3650
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


def signing_keys(settings: Settings) -> tuple[Path, Path]:
    """The signing key and certificate the settings name, each made where it is missing.

    The key is made first (mode 0600); a missing certificate is then made from the key on
    disk, self-signed, so of two processes racing both end with the pair that won.
    """
    key_path = settings.effective_signing_key
    cert_path = settings.effective_signing_certificate
    key_pem = _read_or_create(key_path, _new_private_key).encode("ascii")
    _read_or_create(cert_path, lambda: _self_signed(key_pem, settings))
    return key_path, cert_path


def _new_private_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=SIGNING_KEY_BITS)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")  # fmt: skip


def _self_signed(key_pem: bytes, settings: Settings) -> str:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{settings.effective_signing_key} is not an RSA key (Celery signs "
                          "with RSA only)")  # fmt: skip
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                         f"celeray task signing ({settings.home.resolve().name})")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks of other hosts
        .not_valid_after(now + datetime.timedelta(days=SIGNING_CERT_DAYS))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


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
