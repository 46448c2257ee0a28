"""A task-level ``runtime_env`` from a pipeline's extras: local packages uploaded once.

Ray refuses local paths in a task's ``runtime_env`` (only ``ray.init`` uploads them), so
the packages are uploaded here, the way ``ray.init`` does it: zipped under a URI derived
from their content (``gcs://_ray_pkg_<hash>.zip``), skipped when the cluster already holds
that URI, and cached on each node by Ray. The hash is remembered per folder and its files'
sizes and times, so an unchanged package costs one walk of its folder and one GCS check
per batch, not a zip per task. A task's ``py_modules`` replaces the job's, so the job's
URIs are put first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from typing import Any

import ray

__all__ = ["EXCLUDES", "task_runtime_env"]

log = logging.getLogger(__name__)

# Same as celeray.ray_env.EXCLUDES (kept apart: the plan need not name them).
EXCLUDES = ["__pycache__", "*.pyc"]
_lock = threading.Lock()
_uris: dict[str, tuple[str, str]] = {}  # local path -> (signature, uploaded URI)


def _signature(path: str) -> str:
    digest = hashlib.sha1()
    if os.path.isfile(path):
        st = os.stat(path)
        digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        return digest.hexdigest()
    for folder, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".pyc"):
                continue
            st = os.stat(os.path.join(folder, name))
            digest.update(f"{folder}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _upload(path: str) -> str:
    """The URI of the local package ``path`` on the connected cluster, uploaded if needed."""
    from ray._private.runtime_env.packaging import (
        get_uri_for_directory,
        get_uri_for_file,
        upload_package_if_needed,
    )

    is_dir = os.path.isdir(path)
    signature = _signature(path)
    with _lock:
        cached = _uris.get(path)
    if cached is not None and cached[0] == signature:
        uri = cached[1]
    elif is_dir:
        uri = get_uri_for_directory(path, include_gitignore=True, excludes=EXCLUDES)
    else:
        uri = get_uri_for_file(path)
    # Pins the URI for a while and checks the GCS; zips and uploads only when missing
    # (the first time, or after Ray dropped a package no job referenced any more). The zip
    # is made in a folder of this process's own (0700), not in the shared /tmp, where
    # another user could rewrite it between Ray's write and its upload.
    with tempfile.TemporaryDirectory(prefix="cr-pkg-") as scratch:
        if upload_package_if_needed(uri, scratch, path, include_gitignore=True,
                                    include_parent_dir=is_dir, excludes=EXCLUDES):
            log.info("shipped %s to the Ray cluster as %s", path, uri)
    with _lock:
        _uris[path] = (signature, uri)
    return uri


def task_runtime_env(extras: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``runtime_env`` for ``.options()`` of a pipeline's Ray tasks, or None.

    ``extras`` is :func:`celeray.ray_env.pipeline_extras`: ``py_modules`` (local paths),
    ``pip``, ``env_vars``. With ``py_modules``, the job's own ``py_modules`` (celeray's
    code) come first, then the uploaded URIs. ``env_vars`` merge with the job's in Ray.
    """
    if not extras:
        return None
    env = {k: v for k, v in extras.items() if k != "py_modules"}
    local = extras.get("py_modules") or []
    if local:
        job = ray.get_runtime_context().runtime_env or {}
        env["py_modules"] = [*(job.get("py_modules") or []), *(_upload(p) for p in local)]
    return env
