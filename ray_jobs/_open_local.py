"""Open a local input file so that what is read is what was checked and what was listed.

Checking a path against the local roots and then opening it are two steps: a local user
who can write into a landing folder can swap a symlink in between (seen: 1 of 41 committed
files held the secret a flipping symlink pointed to). Every local input the Ray side reads
is therefore opened by :func:`open_local`, the one place that does it, which checks the
*opened file*, not the name:

1. the path is resolved (``os.path.realpath``) and must lie inside the roots;
2. that resolved path is opened with ``O_NOFOLLOW``: a symlink swapped into its last
   component since is refused (``ELOOP``), not followed. ``O_NONBLOCK`` keeps a FIFO
   swapped in from blocking the open; it changes nothing for a regular file;
3. the descriptor's own path (``readlink /proc/self/fd/N`` on Linux, ``F_GETPATH`` on
   macOS) must lie inside the roots: this covers a symlink swapped into any *folder* of
   the path after step 1, which ``O_NOFOLLOW`` does not see;
4. it must be a regular file (``fstat``), its size and mtime those of the listing when
   the plan read it in place (a staged copy has its own mtime);
5. a hard link cannot be told from its path: another name of a file outside the roots
   is the same inode, and looks inside. So a file with more than one link is refused
   unless the plan's limits say ``allow_hard_links`` (``CELERAY_ALLOW_HARD_LINKS=true``:
   the landing folder's writers are trusted). On Linux, ``fs.protected_hardlinks = 1``
   (the default of most distributions) already stops users from linking files they do
   not own and cannot read and write; with it off, anyone could link ``/etc/shadow``.

A refusal is an :class:`~celeray.errors.InputError` naming what was found, so the file is
quarantined with that reason and the batch's other files go on: ``OutsideRootsError``
(outside the roots, or a hard link) or ``ChangedInputError`` (the file changed since it
was listed or checked). Without roots (``None``, a plan that asks for no confinement) steps
1, 3 and 5 are skipped; the open still refuses a symlink swap, a non-regular file and a
changed fingerprint. Where neither ``/proc`` nor ``F_GETPATH`` exists, step 3 compares the
descriptor's inode with the resolved path's, which a swap back and forth can still beat.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from dataclasses import dataclass
from typing import Any, BinaryIO

from celeray.errors import ChangedInputError, InputError, OutsideRootsError, StorageError
from celeray.roots import within

__all__ = ["ALLOW_HARD_LINKS", "MTIME_TOLERANCE", "LocalCheck", "open_local"]

ALLOW_HARD_LINKS = "allow_hard_links"  # the key in plan["limits"] (0 or 1)
# Listed and opened mtimes come from the same stat field and travel as JSON floats, which
# keep them exactly; the tolerance only absorbs a serializer that rounds to microseconds.
MTIME_TOLERANCE = 1e-6
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_PROC_FD = "/proc/self/fd"
_HAS_PROC_FD = os.path.isdir(_PROC_FD)  # Linux: each descriptor's path, symlinks resolved
_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}  # fmt: skip


@dataclass(frozen=True)
class LocalCheck:
    """What the plan says about one local input: where it may be, what was listed.

    ``roots`` are resolved folders (``None``: no confinement); ``size`` and ``mtime`` the
    listing's fingerprint (``None``: not compared).
    """

    roots: tuple[str, ...] | None = None
    size: int | None = None
    mtime: float | None = None
    allow_hard_links: bool = False

    @classmethod
    def of(cls, plan: dict[str, Any], file: dict[str, Any] | None = None) -> LocalCheck:
        """The check for ``file`` (a unit's file entry) under ``plan``; no entry: no
        fingerprint (e.g. a reference schema's file). The fingerprint is compared only when
        the file is read where it was listed (``read_url`` is its ``url``)."""
        roots = plan.get("local_roots")
        allow = bool(int((plan.get("limits") or {}).get(ALLOW_HARD_LINKS, 0)))
        in_place = file is not None and (file.get("read_url") or file["url"]) == file["url"]
        size = file.get("size") if in_place and file is not None else None
        mtime = file.get("mtime") if in_place and file is not None else None
        return cls(
            roots=None if roots is None else tuple(roots),
            size=None if size is None else int(size),
            mtime=None if mtime is None else float(mtime),
            allow_hard_links=allow,
        )


def open_local(path: str, *, url: str, check: LocalCheck) -> tuple[BinaryIO, os.stat_result]:
    """Open local ``path`` (of input ``url``) for reading after the checks above.

    Returns the open binary file (the caller closes it) and its ``fstat``. Raises
    ``OutsideRootsError`` or ``ChangedInputError`` (input errors: the file is quarantined
    with their reason), ``StorageError`` when the file does not exist, and ``OSError`` as
    raised for other failures of the open (e.g. permissions).
    """
    try:
        real = os.path.realpath(path)
    except FileNotFoundError:  # a folder of the path went away while it was resolved
        raise StorageError(f"{url}: no such file") from None
    except OSError as exc:  # a link of the path changed while it was resolved
        raise ChangedInputError(
            f"{path} changed while it was being resolved ({exc.strerror}); not read", url=url
        ) from None
    roots = check.roots
    if roots is not None and not within(real, roots):
        raise _outside(url, f"resolves to {real}", roots)
    try:
        fd = os.open(real, _FLAGS)
    except FileNotFoundError:
        raise StorageError(f"{url}: no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ChangedInputError(
                f"{real} became a symlink after it was checked; not read", url=url
            ) from None
        raise
    try:
        st = os.fstat(fd)
        _check_opened(fd, st, real, url, check)
        return os.fdopen(fd, "rb"), st
    except BaseException:
        os.close(fd)
        raise


def _check_opened(fd: int, st: os.stat_result, real: str, url: str, check: LocalCheck) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise ChangedInputError(f"{real} is {kind}, not a regular file; not read", url=url)
    roots = check.roots
    if roots is not None:
        opened = _opened_path(fd, st, real)
        if opened is None or not within(opened, roots):
            raise _outside(
                url,
                f"was opened as {opened or 'another file than ' + real} (a folder on its path "
                "was swapped for a symlink after the check)",
                roots,
            )
        if st.st_nlink > 1 and not check.allow_hard_links:
            raise OutsideRootsError(
                f"{real} has {st.st_nlink} hard links: another name of a file outside the "
                "local roots cannot be told from its path, so hard-linked inputs are not read "
                "(CELERAY_ALLOW_HARD_LINKS=true trusts the landing folder's writers)",
                url=url,
            )
    changes = []
    if check.size is not None and st.st_size != check.size:
        changes.append(f"size {check.size:,} -> {st.st_size:,} bytes")
    if check.mtime is not None and abs(st.st_mtime - check.mtime) > MTIME_TOLERANCE:
        changes.append(f"mtime {check.mtime:.6f} -> {st.st_mtime:.6f}")
    if changes:
        raise ChangedInputError(
            f"the file changed after it was listed ({', '.join(changes)}); not read: it is "
            "quarantined rather than committed half-written",
            url=url,
        )


def _opened_path(fd: int, st: os.stat_result, real: str) -> str | None:
    """Where the descriptor's file is now; ``None`` if that cannot be told to be ``real``."""
    if _HAS_PROC_FD:
        return os.readlink(f"{_PROC_FD}/{fd}")
    if sys.platform == "darwin":
        import fcntl

        raw = fcntl.fcntl(fd, getattr(fcntl, "F_GETPATH", 50), bytes(1024))
        return os.fsdecode(raw.split(b"\0", 1)[0])
    try:
        now = os.stat(real)
    except OSError:
        return None
    return real if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino) else None


def _outside(url: str, what: str, roots: tuple[str, ...]) -> InputError:
    return OutsideRootsError(
        f"{what}, outside the allowed local roots ({', '.join(roots) or 'none'}; "
        "CELERAY_LOCAL_ROOTS); not read",
        url=url,
    )
