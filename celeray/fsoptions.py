"""fsspec storage options per protocol, built from this process's environment.

Every place that opens a URL (the core's storage, ledger and staging, and the Ray side's
readers and writer) gets its file system from :func:`url_to_fs`, so they all agree on the
endpoint, the region and the listing cache. Nothing here carries a secret: S3 credentials
are left to botocore's own chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, instance roles), so they never enter a plan, a
message or a log line.

The variables are read from ``os.environ`` on each call rather than through
:class:`celeray.settings.Settings`: Ray nodes import this module without pydantic-settings
and must use their own environment, and tests change the environment between calls. The
names are the Settings fields' (``CELERAY_S3_ENDPOINT_URL``, ``CELERAY_S3_REGION``), which
validate them where celeray starts.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = [
    "S3_ENDPOINT_ENV",
    "S3_PROTOCOLS",
    "S3_REGION_ENV",
    "delta_options",
    "is_s3",
    "plain_local_path",
    "storage_options",
    "url_to_fs",
]

S3_ENDPOINT_ENV = "CELERAY_S3_ENDPOINT_URL"
S3_REGION_ENV = "CELERAY_S3_REGION"
S3_PROTOCOLS = frozenset({"s3", "s3a"})


def _protocol(url: str) -> str:
    first = url.split("::", 1)[0]
    return first.split("://", 1)[0].lower() if "://" in first else "file"


def is_s3(url: str) -> bool:
    """Whether ``url`` names an object on S3 (or an S3-compatible store)."""
    return _protocol(url) in S3_PROTOCOLS


def storage_options(url: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The fsspec options for ``url``'s protocol from ``environ`` (default: ``os.environ``).

    For S3: the endpoint and region when set, and no listing cache, so a file that landed
    (or a ledger entry another process wrote) a moment ago is seen. Other protocols get
    ``{}``.
    """
    env = os.environ if environ is None else environ
    if not is_s3(url):
        return {}
    client: dict[str, str] = {}
    if env.get(S3_ENDPOINT_ENV):
        client["endpoint_url"] = env[S3_ENDPOINT_ENV]
    if env.get(S3_REGION_ENV):
        client["region_name"] = env[S3_REGION_ENV]
    options: dict[str, Any] = {"use_listings_cache": False}
    if client:
        options["client_kwargs"] = client
    return options


def url_to_fs(url: str, extra: dict[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec file system and protocol-free path for ``url``.

    ``extra`` (a plan's ``storage_options``, normally None) is laid over the options from
    the environment. Raises what fsspec raises (``ValueError``, ``ImportError`` when the
    protocol's package, e.g. ``s3fs``, is missing).
    """
    path = None if extra else plain_local_path(url)
    if path is not None:  # a unit opens hundreds of files: no parse, no instance look-up
        return _local(), path
    options = {**storage_options(url), **(extra or {})}
    return fsspec.core.url_to_fs(url, **options)


def plain_local_path(url: str) -> str | None:
    """The path fsspec's local file system opens for ``url`` when it is a bare absolute
    path or a ``file://`` URL (no chain), without fsspec's parse of the URL; else None."""
    if "::" in url or not url.startswith(("/", "file://")):
        return None
    return str(LocalFileSystem._strip_protocol(url))


@functools.cache
def _local() -> LocalFileSystem:
    return LocalFileSystem()


def delta_options(url: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """deltalake's storage options for ``url`` from the same variables as fsspec's.

    S3: the endpoint (plain HTTP allowed when it says ``http://``) and the region.
    Credentials are left to the environment, where deltalake's S3 client finds
    ``AWS_ACCESS_KEY_ID`` and the rest as botocore does. Other protocols get ``{}``.
    """
    client = storage_options(url, environ).get("client_kwargs") or {}
    out: dict[str, str] = {}
    endpoint = client.get("endpoint_url")
    if endpoint:
        out["AWS_ENDPOINT_URL"] = str(endpoint)
        if str(endpoint).startswith("http://"):
            out["AWS_ALLOW_HTTP"] = "true"
    if client.get("region_name"):
        out["AWS_REGION"] = str(client["region_name"])
    return out
