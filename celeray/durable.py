"""Make what celeray writes to a local disk survive a crash of the machine.

The ledger entry is the commit point and is fsynced; the Parquet files it names must be
on disk before it, or a power cut right after the commit leaves an entry that names empty
or missing files, while the inputs count as committed and are never read again. Each new
folder's entry in its parent, each file's data, and each file's entry in its folder are
therefore synced: by the Ray task before it reports its files, and by the ledger's own
writes. Object stores need none of this: a PUT that returned is durable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["fsync_path", "make_dirs", "sync_files"]


def fsync_path(path: str) -> None:
    """fsync the file or folder at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)``, and the parent of every folder it made synced."""
    missing = []
    probe = os.path.abspath(path)
    while not os.path.isdir(probe):
        missing.append(probe)
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not missing:
        return
    os.makedirs(path, exist_ok=True)
    for folder in reversed(missing):
        fsync_path(os.path.dirname(folder))


def sync_files(root: str, paths: Iterable[str]) -> None:
    """Sync each file of ``paths`` and every folder from it up to ``root``, once each.

    Folders below ``root`` (hive partitions) were made by the writer: syncing each one up
    to ``root`` records their entries too.
    """
    root = os.path.abspath(root)
    folders: set[str] = set()
    for path in paths:
        path = os.path.abspath(path)
        fsync_path(path)
        folder = os.path.dirname(path)
        while folder not in folders:
            folders.add(folder)
            if folder == root or len(folder) <= len(root):
                break
            folder = os.path.dirname(folder)
    for folder in sorted(folders, key=len, reverse=True):
        fsync_path(folder)
