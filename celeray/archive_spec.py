"""A pipeline's ``after_commit``: what becomes of an input file once its batch is committed.

In the pipeline file::

    after_commit = "keep"                          # the default: leave it where it landed
    after_commit = "delete"                        # remove it from the source
    after_commit = "move:file:///srv/archive/flights"   # or "move:s3://bucket/archive/"
    after_commit_quarantined = false               # the same for quarantined files? (no)

A moved file keeps its path below the source's root folder: with ``source =
"file:///srv/landing/flights/*/*.csv"``, ``.../flights/2026/a.csv`` goes to
``<target>/2026/a.csv``. The target must be on the source's file system and outside both
the source's root folder (a moved file would otherwise be listed again) and the sink.

These are the pure parts (parsing, where a file goes, which files a committed entry
archives); :mod:`celeray.archive` does the moves.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "ARCHIVE_PROTOCOLS",
    "AfterCommit",
    "archived_inputs",
    "parse_after_commit",
    "target_of",
]

# The file systems whose files celeray deletes or moves: the local disk and S3 (and the
# aliases fsspec gives them). Others (http, sftp, zip chains...) are read-only to celeray.
ARCHIVE_PROTOCOLS = frozenset({"file", "local", "s3", "s3a"})
KEEP = "keep"


@dataclass(frozen=True)
class AfterCommit:
    """``action`` (keep, delete or move) and, for a move, the ``target`` folder URL."""

    action: Literal["keep", "delete", "move"] = "keep"
    target: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The form a ledger entry records (the target as it was when the batch committed)."""
        return {"action": self.action, "to": self.target}


def parse_after_commit(value: Any) -> AfterCommit:
    """``"keep"``, ``"delete"`` or ``"move:<url>"`` as an :class:`AfterCommit`; the URL is
    returned as written (the pipeline model makes it absolute and checks it). ``ValueError``
    with the accepted forms for anything else."""
    if not isinstance(value, str):
        raise ValueError(f'after_commit must be a string ("keep", "delete" or "move:<url>"), '
                         f"got {type(value).__name__} {value!r}")  # fmt: skip
    text = value.strip()
    if text.lower() in ("keep", "delete"):
        return AfterCommit(text.lower())  # type: ignore[arg-type]
    head, sep, url = text.partition(":")
    if sep and head.lower() == "move":
        if not url.strip():
            raise ValueError('after_commit "move:" needs a folder URL, e.g. '
                             '"move:s3://bucket/archive/"')  # fmt: skip
        return AfterCommit("move", url.strip())
    raise ValueError(f'unknown after_commit {value!r}: expected "keep", "delete" or '
                     '"move:<folder url>"')  # fmt: skip


def _path(url: str) -> str:
    return url.partition("://")[2] if "://" in url else url


def target_of(url: str, source_root: str, target: str) -> str:
    """Where input ``url`` of a source rooted at ``source_root`` goes in folder ``target``:
    its path below the root, kept (its file name alone if it is not below the root)."""
    path, root = _path(url), _path(source_root).rstrip("/")
    below = path.startswith(root + "/")
    relative = path[len(root) + 1 :] if below else posixpath.basename(path)
    return target.rstrip("/") + "/" + relative


def archived_inputs(entry: dict[str, Any]) -> list[str]:
    """The input URLs a committed ledger ``entry`` archives, as its ``after_commit`` asked
    when it was committed: its committed inputs, and its quarantined ones only when the
    entry says so (``quarantined``). Empty for an entry that keeps its inputs."""
    spec = entry.get("after_commit") or {}
    if spec.get("action") not in ("delete", "move"):
        return []
    urls = [str(f["url"]) for f in entry.get("inputs", [])]
    if spec.get("quarantined"):
        urls += [str(q["url"]) for q in entry.get("quarantined", [])]
    return sorted(set(urls))
