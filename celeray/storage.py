"""File access through fsspec: listing with fingerprints, atomic writes, moves.

Listings never come from fsspec's listing cache, so a file that landed a moment ago is seen.
Writes that must be all-or-nothing go to a temporary file in the same folder, are fsynced
and renamed into place on local disks; object stores get a single PUT, which is atomic.
File systems come from :func:`celeray.fsoptions.url_to_fs`: the endpoint, region and
cache settings of each protocol come from the environment, never from a caller.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from celeray import durable, fsoptions
from celeray.errors import StorageError, TransientIOError

__all__ = [
    "FileInfo",
    "atomic_write_json",
    "create_file",
    "create_json",
    "exists",
    "file_info",
    "is_local",
    "is_local_url",
    "join",
    "list_files",
    "list_source",
    "move",
    "open_fs",
    "read_json",
    "remove_file",
    "remove_tree",
]

log = logging.getLogger(__name__)

GLOB_CHARS = "*?["


@dataclass(frozen=True)
class FileInfo:
    """One listed input file and its fingerprint (size and mtime, or etag)."""

    url: str
    size: int
    mtime: float | None = None
    etag: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for messages and ledger entries."""
        return asdict(self)


def open_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec filesystem and the protocol-free path for ``url``.

    ``storage_options`` are laid over those :mod:`celeray.fsoptions` builds for the
    protocol from the environment.
    """
    try:
        fs, path = fsoptions.url_to_fs(url, storage_options)
    except ImportError as exc:
        hint = " (pip install 'celeray[s3]')" if fsoptions.is_s3(url) else ""
        raise StorageError(f"cannot open {url!r}: {exc}{hint}") from exc
    except ValueError as exc:
        raise StorageError(f"cannot open {url!r}: {exc}") from exc
    return fs, path


def is_local(fs: Any) -> bool:
    """Whether ``fs`` is the local disk (renames, fsync and real folders are available)."""
    return isinstance(fs, LocalFileSystem)


def is_local_url(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``url`` is on the local disk (see :func:`is_local`)."""
    return is_local(open_fs(url, storage_options)[0])


def _unstrip(fs: Any, path: str) -> str:
    """The URL for a path that ``fs`` returned from a listing."""
    return fs.unstrip_protocol(path)


def join(url: str, *parts: str) -> str:
    """``url`` with path parts appended, for any fsspec URL."""
    return posixpath.join(url.rstrip("/"), *parts)


def _mtime(info: dict[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str) and value:
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _etag(info: dict[str, Any]) -> str | None:
    for key in ("ETag", "etag", "md5Hash", "md5"):
        value = info.get(key)
        if value:
            return str(value).strip('"')
    return None


def _hidden(path: str) -> bool:
    name = posixpath.basename(path.rstrip("/"))
    return name.startswith(("_", "."))


def list_source(url: str, storage_options: dict[str, Any] | None = None) -> list[FileInfo]:
    """Every file the source URL (a glob, a folder or one file) names, sorted by URL.

    Names starting with ``_`` or ``.`` are skipped, as pyarrow.dataset does: that is where
    writers keep partial files. The listing cache is dropped first so new files are seen.
    A local symlink to a file is listed like a file (fsspec calls it "other"), with its
    target's size and mtime, so that it is processed or, pointing outside the local roots,
    quarantined (see :func:`celeray.roots.outside_roots`) rather than silently ignored.
    """
    fs, path = open_fs(url, storage_options)
    fs.invalidate_cache()
    try:
        if any(c in path for c in GLOB_CHARS):
            found = fs.glob(path, detail=True)
        elif fs.isdir(path):
            found = {i["name"]: i for i in fs.ls(path, detail=True)}
        elif fs.exists(path):
            found = {path: fs.info(path)}
        else:
            found = {}
    except (FileNotFoundError, NotADirectoryError):
        found = {}
    except OSError as exc:
        raise StorageError(f"cannot list {url!r}: {exc}") from exc
    files = []
    for name, info in found.items():
        if info.get("islink") and is_local(fs) and os.path.isfile(name):
            # fsspec's scandir listing gives a link its target's size but its own mtime; the
            # Ray side compares both with the file it opens, the target
            with contextlib.suppress(OSError):
                info = {**info, "type": "file", "mtime": os.stat(name).st_mtime}
        if info.get("type", "file") != "file" or _hidden(name):
            continue
        if info.get("size") is None:  # e.g. HTTP listings: ask the file itself (HEAD)
            info = {**info, **fs.info(name)}
        files.append(
            FileInfo(
                url=_unstrip(fs, name),
                size=int(info.get("size") or 0),
                mtime=_mtime(info),
                etag=_etag(info),
            )
        )
    return sorted(files, key=lambda f: f.url)


def list_files(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """URLs of the files directly inside folder ``url``; empty when it does not exist."""
    fs, path = open_fs(url, storage_options)
    fs.invalidate_cache()
    try:
        return sorted(
            _unstrip(fs, i["name"]) for i in fs.ls(path, detail=True) if i["type"] == "file"
        )
    except FileNotFoundError:
        return []


def exists(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``url`` names an existing file or folder."""
    fs, path = open_fs(url, storage_options)
    fs.invalidate_cache()
    return bool(fs.exists(path))


def file_info(url: str, storage_options: dict[str, Any] | None = None) -> FileInfo | None:
    """The file at ``url`` as the store says now (no cached listing), None when it is not
    there: its size, mtime and ETag tell a rewritten file from the one seen before."""
    fs, path = open_fs(url, storage_options)
    if not is_local(fs):
        fs.invalidate_cache(path)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    return FileInfo(url=url, size=int(info.get("size") or 0), mtime=_mtime(info),
                    etag=_etag(info))  # fmt: skip


def read_json(url: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The parsed JSON document at ``url``."""
    fs, path = open_fs(url, storage_options)
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, indent=1).encode()


def atomic_write_json(url: str, doc: Any, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``doc`` as JSON so readers see the old state or the whole new file, never a part.

    Local: a temporary file in the same folder, fsync, ``os.replace``, fsync of the folder.
    Object stores: one PUT, which they make visible atomically.
    """
    data = _dumps(doc)
    fs, path = open_fs(url, storage_options)
    if not is_local(fs):
        fs.pipe_file(path, data)
        return
    _replace_local(path, data)


def create_json(url: str, doc: Any, storage_options: dict[str, Any] | None = None) -> bool:
    """Write ``doc`` as JSON at ``url`` if nothing is there yet; True when this call wrote it.

    See :func:`create_file`; a store without conditional writes gets a plain PUT, logged
    once per process: there the last writer wins, which is harmless for documents that two
    writers make alike.
    """
    return create_file(url, _dumps(doc), storage_options, unconditional_ok=True)


def create_file(url: str, data: bytes, storage_options: dict[str, Any] | None = None, *,
                unconditional_ok: bool = False) -> bool:  # fmt: skip
    """Write ``data`` at ``url`` if nothing is there yet; True when this call wrote it.

    Object stores: one conditional PUT (``If-None-Match: *``), so of two writers of the same
    URL exactly one wins and the other gets False (S3 answers it 412). A store that does not
    implement the condition (501) raises ``StorageError``, or with ``unconditional_ok`` gets
    a plain PUT, logged once per process. A concurrent conditional write that S3 refuses
    with 409 raises ``TransientIOError``, to be retried. Local disks write a temporary file,
    fsync it and hard-link it to the name (``link`` fails when the name exists, so there too
    exactly one writer wins).
    """
    fs, path = open_fs(url, storage_options)
    if is_local(fs):
        return _replace_local(path, data, exclusive=True)
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    except OSError as exc:
        code, status = _s3_error(exc)
        if code == "PreconditionFailed" or status == 412:
            return False
        if code == "ConditionalRequestConflict" or status == 409:
            raise TransientIOError(f"conditional write of {url} conflicted: {exc}") from exc
        if code != "NotImplemented" and status != 501:  # 501: no conditional writes here
            raise
        if not unconditional_ok:
            raise StorageError(f"{url}: the store does not support conditional writes "
                               f"(If-None-Match: *; answer {code or status})") from exc  # fmt: skip
        _warn_unconditional(url, code or str(status))
        fs.pipe_file(path, data)
    return True


_warned: set[str] = set()


def _warn_unconditional(url: str, why: str) -> None:
    store = url.split("://", 1)[0] + "://" + url.split("://", 1)[-1].split("/", 1)[0]
    if store not in _warned:
        _warned.add(store)
        log.warning(
            "%s does not support conditional writes (If-None-Match: *; answer %s): "
            "ledger entries there are written with a plain PUT, last writer wins",
            store,
            why,
        )


def _s3_error(exc: BaseException) -> tuple[str | None, int | None]:
    """The S3 error code and HTTP status behind an exception s3fs translated, if any."""
    for err in (exc, exc.__cause__, exc.__context__):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            code = (response.get("Error") or {}).get("Code")
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            return (str(code) if code else None), (int(status) if status else None)
    return None, None


def _replace_local(path: str, data: bytes, *, exclusive: bool = False) -> bool:
    """Temporary file in the same folder, fsync, ``os.replace``, fsync of the folder (and
    of the parent of each folder made for it). ``exclusive``: ``os.link`` instead of the
    replace, and False (nothing written) when ``path`` exists."""
    folder = os.path.dirname(path)
    durable.make_dirs(folder)  # a new ledger folder must survive a crash as the entry does
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if not exclusive:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    durable.fsync_path(folder)
    return True


def move(src_url: str, dst_url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Move one file, replacing the destination; a rename on local disks.

    On object stores a server-side copy then a delete: the destination appears whole (one
    object), and a move interrupted between the two is simply done again.
    """
    fs, src = open_fs(src_url, storage_options)
    _, dst = open_fs(dst_url, storage_options)
    if is_local(fs):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)
    else:
        fs.mv(src, dst)


def remove_file(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Delete one file; nothing happens when it is absent."""
    fs, path = open_fs(url, storage_options)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def remove_tree(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Delete a folder and everything below it; nothing happens when it is absent."""
    fs, path = open_fs(url, storage_options)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)
