"""Local-root confinement: local sources, sinks and reads stay inside configured folders.

Pure functions over URLs and paths; they need no settings, so the Ray side applies them
with the roots its plan carries. A URL is local when fsspec opens it with its local file
system (``file://``, ``local://`` or a bare path). Paths are compared after
``os.path.realpath``, which removes ``..`` and follows every symlink, so a symlink in a
landing folder that points elsewhere is outside, whatever its own name says.

Chained URLs (``a::b``) and archives are read as fsspec reads them: each ``::`` part is the
file system the part before it reads from, and an archive's own location (its ``fo``) is
the part after it, so ``zip://*.csv::file:///srv/in.zip`` opens ``/srv/in.zip``. Only
forms whose local reads the URL fully shows are accepted (see :func:`local_target`); the
rest raise :class:`UncheckableURLError` instead of being let through.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from typing import Any

import fsspec
from fsspec.archive import AbstractArchiveFileSystem
from fsspec.implementations.local import LocalFileSystem

from celeray.errors import OutsideRootsError, UncheckableURLError
from celeray.fsoptions import plain_local_path

__all__ = [
    "check_read",
    "inside",
    "local_path",
    "local_target",
    "outside",
    "outside_roots",
    "refusal",
    "resolve_roots",
    "within",
]

# Archives read the file named by the next part of a chain (their ``fo``).
ARCHIVES = frozenset({"zip", "tar", "libarchive"})
# Caches and wrappers hand their path on to the next part's file system unchanged.
WRAPPERS = frozenset(
    {"simplecache", "filecache", "blockcache", "cached", "async_wrapper", "asyncwrapper"}
)
LOCALS = frozenset({"file", "local", "asynclocal"})
# File systems whose local reads the URL does not show: refused wherever roots apply.
UNCHECKABLE = {
    "reference": "a reference file's content names the URLs it reads, local files included",
    "generic": "its paths are whole URLs of any protocol",
    "dir": "it prefixes the next part's path; write the joined path instead",
    "git": "it reads a local repository named in its own syntax",
    "dvc": "it reads a local repository named in its options",
    "dask": "it reads through the file systems of dask workers",
}
_ONE_WORD = re.compile(r"[a-z]*")  # fsspec takes a ``::`` part of only a-z as a protocol name


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
    if (plain := plain_local_path(url)) is not None:
        return plain
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ValueError, ImportError):
        return None
    return str(path) if isinstance(fs, LocalFileSystem) else None


def _chain(url: str) -> list[tuple[str, str]]:
    """``(part, protocol)`` of each ``::`` part of ``url``, split as fsspec splits it."""
    if "::" in url:
        known = set(fsspec.available_protocols())
        bits = [p + "://" if p in known or _ONE_WORD.fullmatch(p) else p for p in url.split("::")]
    else:
        bits = [url]
    return [(bit, fsspec.core.split_protocol(bit)[0] or "file") for bit in bits]


def _kind(protocol: str) -> str:
    """``local``, ``archive``, ``wrapper`` or ``other`` (a store that reads nothing local)."""
    for kind, names in (("local", LOCALS), ("archive", ARCHIVES), ("wrapper", WRAPPERS)):
        if protocol in names:
            return kind
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError):
        return "other"  # unknown or not installed: fsspec cannot open it either
    if issubclass(cls, LocalFileSystem):
        return "local"
    return "archive" if issubclass(cls, AbstractArchiveFileSystem) else "other"


def local_target(url: str) -> tuple[str, bool] | None:
    """The local path fsspec opens for ``url``, and whether it is an archive's own file.

    ``zip://inner.csv::file:///srv/a.zip`` gives ``("/srv/a.zip", True)``,
    ``simplecache::file:///srv/x/*.csv`` ``("/srv/x/*.csv", False)``; None when ``url``
    reads no local file. Raises :class:`UncheckableURLError` for the forms this cannot tell
    from the URL: the protocols of :data:`UNCHECKABLE`, an archive or cache without the part
    that names what it reads (``fo=`` cannot be given in a pipeline file), a local part that
    is not the last one, a cache with a path of its own or another file system in front of a
    local part, and a relative local part in a chain (fsspec resolves it against each
    process's working folder).
    """
    parts = [(bit, protocol, _kind(protocol)) for bit, protocol in _chain(url)]
    for _, protocol, _ in parts:
        if protocol in UNCHECKABLE:
            raise UncheckableURLError(f"{protocol}:// is not allowed: {UNCHECKABLE[protocol]}")
    last, protocol, kind = parts[-1]
    if kind in ("archive", "wrapper"):
        what = "archive" if kind == "archive" else "target"
        raise UncheckableURLError(
            f"{protocol}:// needs its {what} as the next part of a chain, e.g. "
            f"{protocol}://PATH::file:///folder/file (CELERAY_ALLOW_CHAINED_URLS=true)"
        )
    if any(k == "local" for _, _, k in parts[:-1]):
        raise UncheckableURLError("a local path may only be the last part of a chain")
    if kind != "local":
        return None
    if len(parts) == 1:
        path = local_path(url)
        return None if path is None else (path, False)
    for bit, protocol, k in parts[:-1]:
        if k == "wrapper" and fsspec.core.split_protocol(bit)[1]:
            raise UncheckableURLError(
                f"{bit!r}: a cache takes the path of the part after it; write "
                f"{protocol}::file:///path"
            )
        if k not in ("archive", "wrapper"):
            raise UncheckableURLError(
                f"{protocol}:// in front of a local path: what it reads of it is unknown"
            )
    rest = re.sub(r"^(file|local)(://|:)", "", last)
    if not rest.startswith("/"):
        raise UncheckableURLError(
            f"{last!r}: a local path in a chain must be absolute (file:///path); fsspec "
            "resolves a relative one against each process's working folder"
        )
    path = local_path(last)
    if path is None:
        return None
    return path, any(k == "archive" for _, _, k in parts)


def inside(path: str, roots: Iterable[str], *, folders: dict[str, str] | None = None) -> bool:
    """Whether ``path``, symlinks resolved, is one of ``roots`` or below one of them.

    ``roots`` must already be resolved (:func:`resolve_roots`). A path that cannot be
    resolved (a link of it changing while it is read) is not inside. ``folders``: a memo
    of resolved folders, for many paths checked at once (see :func:`outside_roots`).
    """
    real = _resolved(path, folders)
    return real is not None and within(real, roots)


def _resolved(path: str, folders: dict[str, str] | None = None) -> str | None:
    """``os.path.realpath(path)``; None when a link of the path changed while it was read
    (``readlink`` of a name that ``lstat`` found a symlink fails).

    With ``folders``, a path whose last part is not a symlink is its folder's resolved
    path (kept in ``folders``) and its name: what ``realpath`` gives, for one ``lstat``
    instead of one per part of the path.
    """
    folder, name = os.path.split(path)
    try:
        if folders is None or not os.path.isabs(folder) or name in ("", ".", ".."):
            return os.path.realpath(path)
        try:
            plain = not stat.S_ISLNK(os.lstat(path).st_mode)
        except OSError:  # missing, or not ours to look at: realpath decides as it would
            plain = False
        if not plain:
            return os.path.realpath(path)
        real = folders.get(folder)
        if real is None:
            real = folders[folder] = os.path.realpath(folder)
        return os.path.join(real, name)
    except OSError:
        return None


def within(real: str, roots: Iterable[str]) -> bool:
    """Whether the already resolved path ``real`` is one of ``roots`` or below one of them.

    A plain comparison of resolved paths, no file system access (see :func:`inside`).
    """
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


def outside(
    url: str, roots: Iterable[str], *, folders: dict[str, str] | None = None
) -> str | None:
    """The resolved local path ``url`` reads (see :func:`local_target`) when it lies outside
    ``roots``; None when it is inside or nothing local is read.

    Raises :class:`UncheckableURLError` when the URL's local reads cannot be told.
    ``folders``: as for :func:`inside`.
    """
    target = local_target(url)
    if target is None or inside(target[0], roots, folders=folders):
        return None
    return _resolved(target[0]) or f"{target[0]} (its links changed while it was resolved)"


def refusal(
    url: str, roots: Iterable[str], *, folders: dict[str, str] | None = None
) -> OutsideRootsError | None:
    """The error for reading local ``url`` when it lies outside ``roots``, else None.

    An input error: the file is quarantined with it, naming the resolved path and the roots.
    A URL whose local reads cannot be told (:class:`UncheckableURLError`) is refused too.
    ``folders``: as for :func:`inside`.
    """
    roots = tuple(roots)
    try:
        resolved = outside(url, roots, folders=folders)
    except UncheckableURLError as exc:
        return OutsideRootsError(
            f"cannot be checked against the allowed local roots ({', '.join(roots) or 'none'}"
            f"; CELERAY_LOCAL_ROOTS): {exc}; not read",
            url=url,
        )
    if resolved is None:
        return None
    return OutsideRootsError(
        f"resolves to {resolved}, outside the allowed local roots "
        f"({', '.join(roots) or 'none'}; CELERAY_LOCAL_ROOTS); not read",
        url=url,
    )


def outside_roots(urls: Iterable[str], roots: tuple[str, ...]) -> dict[str, Any]:
    """Quarantine records of the local ``urls`` that resolve outside ``roots``, by URL.

    A symlink in the landing folder can point anywhere; such a file is never read, and it is
    quarantined (so committed-or-quarantined holds for every listed file). Each folder is
    resolved once for all of them; each file then costs one ``lstat``.
    """
    found = {}
    folders: dict[str, str] = {}
    for url in urls:
        error = refusal(url, roots, folders=folders)
        if error is not None:
            found[url] = error.record()
    return found


def check_read(url: str, roots: Iterable[str] | None) -> None:
    """Raise :func:`refusal`'s error for ``url``; ``roots`` None: no confinement asked for."""
    if roots is not None and (error := refusal(url, roots)) is not None:
        raise error
