"""Local-root confinement: local sources, sinks and reads stay inside configured folders.

Pure functions over URLs and paths; they need no settings, so the Ray side applies them
with the roots its plan carries. A URL is local when fsspec opens it with its local file
system (``file://``, ``local://`` or a bare path). Paths are compared after
``os.path.realpath``, which removes ``..`` and follows every symlink, so a symlink in a
landing folder that points elsewhere is outside, whatever its own name says.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import fsspec
from fsspec.implementations.local import LocalFileSystem

from celeray.errors import OutsideRootsError

__all__ = ["check_read", "inside", "local_path", "outside", "refusal", "resolve_roots"]


def resolve_roots(roots: Iterable[str | os.PathLike[str]]) -> tuple[str, ...]:
    """Each root as an absolute path with its symlinks resolved, duplicates dropped."""
    found: list[str] = []
    for root in roots:
        real = os.path.realpath(os.path.expanduser(os.fspath(root)))
        if real not in found:
            found.append(real)
    return tuple(found)


def local_path(url: str) -> str | None:
    """The path fsspec would open for ``url`` when that is a local file, else None.

    Chained URLs (``a::b``) are not local as a whole; check their parts one by one.
    """
    if "::" in url:
        return None
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ValueError, ImportError):
        return None
    return str(path) if isinstance(fs, LocalFileSystem) else None


def inside(path: str, roots: Iterable[str]) -> bool:
    """Whether ``path``, symlinks resolved, is one of ``roots`` or below one of them.

    ``roots`` must already be resolved (:func:`resolve_roots`).
    """
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


def outside(url: str, roots: Iterable[str]) -> str | None:
    """The resolved path of local ``url`` when it lies outside ``roots``; None when it is
    inside or not local."""
    path = local_path(url)
    if path is None or inside(path, roots):
        return None
    return os.path.realpath(path)


def refusal(url: str, roots: Iterable[str]) -> OutsideRootsError | None:
    """The error for reading local ``url`` when it lies outside ``roots``, else None.

    An input error: the file is quarantined with it, naming the resolved path and the roots.
    """
    roots = tuple(roots)
    resolved = outside(url, roots)
    if resolved is None:
        return None
    return OutsideRootsError(
        f"resolves to {resolved}, outside the allowed local roots "
        f"({', '.join(roots) or 'none'}; CELERAY_LOCAL_ROOTS); not read",
        url=url,
    )


def check_read(url: str, roots: Iterable[str] | None) -> None:
    """Raise :func:`refusal`'s error for ``url``; ``roots`` None: no confinement asked for."""
    if roots is not None and (error := refusal(url, roots)) is not None:
        raise error
