"""Where a sink's Delta table lies for deltalake, and opening it there.

deltalake takes a local path or an ``s3://`` URL and its own storage options; celeray's
sinks are fsspec URLs (``file://``, ``s3://``, ``s3a://``) with settings from the
environment (:mod:`celeray.fsoptions`). Every module that hands a sink to deltalake goes
through here, so the table is found with the same endpoint and credentials as the files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from celeray import fsoptions, storage
from celeray.table_format import DELTA_LOG

__all__ = ["delta_uri", "open_table", "storage_options"]


def delta_uri(sink: str) -> str:
    """The location deltalake takes for ``sink``: a local path, or an ``s3://`` URL."""
    if storage.is_local_url(sink):
        _fs, path = storage.open_fs(sink)
        return str(path)
    if sink.startswith("s3a://"):
        return "s3://" + sink[len("s3a://"):]
    return sink


def storage_options(sink: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """deltalake's storage options for ``sink`` (:func:`celeray.fsoptions.delta_options`):
    the same endpoint and region settings as fsspec's, credentials from the environment.
    Commits on S3 use conditional puts, deltalake's default since 1.6: no DynamoDB, no lock.
    """
    return fsoptions.delta_options(sink, environ)


def open_table(sink: str, version: int | None = None) -> Any:
    """The sink's ``DeltaTable`` (its newest version, or ``version``), or None when it has
    none yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    uri = delta_uri(sink)
    if storage.is_local_url(sink) and not os.path.isdir(os.path.join(uri, DELTA_LOG)):
        return None  # no log folder, no table: a stat instead of delta-rs's failed load
    try:  # one load: ``DeltaTable.is_deltatable`` first would list the log a second time
        return DeltaTable(uri, version=version, storage_options=storage_options(sink))
    except TableNotFoundError:
        return None


