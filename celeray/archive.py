"""Archive a committed batch's inputs: delete them, or move them to another folder.

A pipeline's ``after_commit`` (:mod:`celeray.archive_spec`) is written into each batch's
ledger entry when the batch commits, so what becomes of its inputs is decided durably
with the commit and never by a pipeline file edited later. Only then, after the entry and
(for Delta) the Delta commit that publishes it, are the inputs deleted or moved
(:func:`archive_batch`); a batch that never committed keeps its inputs where they are.

Each move is a copy, then the delete of the source (a rename on one local disk), and
both steps are safe to do again: a source already gone is done, a copy made before is
overwritten by the same bytes. The ledger already holds every input as done, so a kill
between the moves loses nothing and commits nothing twice; the next run's start finishes
the moves of the inputs it still lists (:func:`finish_archives`). The record,
``<sink>/_celeray/archive/<batch_id>.json``, is written when a batch's inputs are all
archived: what went where, for ``celeray files`` (which shows an input whose record a
kill prevented as ``pending``, from its entry).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from typing import Any

from celeray import durable, kill_points, storage
from celeray.archive_spec import archived_inputs, target_of
from celeray.ledger import Ledger
from celeray.pipeline_spec import Pipeline

__all__ = ["after_commit_fields", "archive_batch", "archive_records", "finish_archives"]

log = logging.getLogger(__name__)

FOLDER = "archive"  # under <sink>/_celeray/


def after_commit_fields(pipeline: Pipeline) -> dict[str, Any]:
    """What a batch's ledger entry records of its pipeline's ``after_commit``: nothing when
    it keeps its inputs; else the action, the target, the source's root folder (a moved
    file keeps its path below it) and whether quarantined inputs go too."""
    spec = pipeline.archive
    if spec.action == "keep":
        return {}
    return {"after_commit": {**spec.to_json(), "source_root": pipeline.source_root,
                             "quarantined": pipeline.after_commit_quarantined}}  # fmt: skip


def _record_url(ledger: Ledger, batch_id: str) -> str:
    return storage.join(ledger.root, FOLDER, f"{batch_id}.json")


def archive_batch(
    ledger: Ledger, entry: dict[str, Any], only: Iterable[str] | None = None
) -> dict[str, str | None]:
    """Apply a committed ``entry``'s ``after_commit`` to its inputs (those in ``only``, when
    given: the ones still listed) and write its archive record; return input URL -> where
    it went (None: deleted). Nothing for an entry that keeps its inputs."""
    urls = archived_inputs(entry)
    if not urls:
        return {}
    spec = entry["after_commit"]
    targets: dict[str, str | None] = {
        u: target_of(u, spec["source_root"], spec["to"]) if spec["action"] == "move" else None
        for u in urls
    }
    todo = urls if only is None else [u for u in urls if u in set(only)]
    touched: set[str] = set()  # local folders whose entries changed: synced once each
    for i, url in enumerate(todo):
        target = targets[url]
        if target is None:
            storage.remove_file(url)
        else:
            _move(url, target, after_copy=(lambda: kill_points.reach(
                kill_points.DURING_ARCHIVE, entry["batch_id"])) if i == 0 else None)
        touched.update(_local_folders(url, target))
    for folder in sorted(touched):  # a rename lost to a power cut is only done again
        with contextlib.suppress(FileNotFoundError):
            durable.fsync_path(folder)
    doc = {"batch_id": entry["batch_id"], "run_id": entry.get("run_id"),
           "action": spec["action"], "archived_at": time.time(), "files": targets}  # fmt: skip
    storage.atomic_write_json(_record_url(ledger, entry["batch_id"]), doc)
    return targets


def finish_archives(
    ledger: Ledger, listed: Iterable[storage.FileInfo], entries: list[dict[str, Any]]
) -> dict[str, Any]:
    """Finish the archiving a kill (or an error) interrupted: inputs still listed whose
    committed entry (in ``entries``, the ledger's) asked for them to be archived are
    archived now, and their batches' records written. Returns ``{"archived": n}``, with
    ``archive_error`` when one failed: logged, and tried again by the next start, since a
    target celeray may not write must not stop the pipeline's ingestion. Call it with the
    pipeline's run lock held (from the run's start)."""
    owner: dict[str, dict[str, Any]] = {}
    for entry in entries:
        for url in archived_inputs(entry):
            owner[url] = entry
    if not owner:
        return {"archived": 0}
    left: dict[str, list[str]] = {}
    for f in listed:
        if f.url in owner:
            left.setdefault(owner[f.url]["batch_id"], []).append(f.url)
    by_id = {e["batch_id"]: e for e in entries}
    done = 0
    for batch_id, urls in sorted(left.items()):
        log.info("batch %s: finishing the archiving of %d input(s)", batch_id, len(urls))
        try:
            archive_batch(ledger, by_id[batch_id], only=urls)
        except Exception as exc:
            log.error("batch %s: archiving its inputs failed: %s: %s", batch_id,
                      type(exc).__name__, exc)  # fmt: skip
            return {"archived": done, "archive_error": f"{type(exc).__name__}: {exc}"}
        done += len(urls)
    return {"archived": done}


def archive_records(ledger: Ledger) -> dict[str, dict[str, Any]]:
    """Input URL -> ``{"action", "to", "batch_id", "archived_at"}`` for every archived input."""
    out: dict[str, dict[str, Any]] = {}
    for url in storage.list_files(storage.join(ledger.root, FOLDER)):
        if not url.endswith(".json") or url.rsplit("/", 1)[-1].startswith("."):
            continue
        with contextlib.suppress(FileNotFoundError):
            doc = storage.read_json(url)
            for input_url, to in (doc.get("files") or {}).items():
                out[input_url] = {"action": doc.get("action"), "to": to,
                                  "batch_id": doc.get("batch_id"),
                                  "archived_at": doc.get("archived_at")}  # fmt: skip
    return out


def _local_folders(*urls: str | None) -> list[str]:
    """The local folders of ``urls`` (none for object stores)."""
    return [os.path.dirname(u.removeprefix("file://")) for u in urls
            if u and u.startswith("file://")]  # fmt: skip


def _move(src_url: str, dst_url: str, after_copy: Any = None) -> None:
    """Copy ``src_url`` to ``dst_url``, then delete the source; again after a kill, each
    step is a no-op or the same. A source already gone was moved before (or by a second
    archiver of the batch) and is left at that. ``after_copy`` runs between the two steps
    (the fault suite's kill point)."""
    fs, src = storage.open_fs(src_url)
    _, dst = storage.open_fs(dst_url)
    fs.invalidate_cache()
    if not fs.exists(src):
        if not fs.exists(dst):
            log.warning("archive: %s is gone and not at %s; nothing to move", src_url, dst_url)
        return
    if storage.is_local(fs):
        _move_local(src, dst, after_copy)
        return
    try:
        fs.copy(src, dst)
    except FileNotFoundError:
        if fs.exists(dst):
            return  # another archiver of the batch moved it first
        raise
    if after_copy is not None:
        after_copy()
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(src)


def _move_local(src: str, dst: str, after_copy: Any) -> None:
    """A rename on one disk (one atomic step); across disks a copy to a temporary file in
    the target folder, fsync, rename into place, then the delete of the source. The
    folders are synced by the caller, once per batch."""
    folder = os.path.dirname(dst)
    durable.make_dirs(folder)
    try:
        os.replace(src, dst)
    except FileNotFoundError:
        return  # moved meanwhile by another archiver of the batch
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        try:
            with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
                shutil.copyfileobj(fin, fout)
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(tmp, dst)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        durable.fsync_path(folder)  # the copy is whole before its source goes
        if after_copy is not None:
            after_copy()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(src)
        return
    if after_copy is not None:
        after_copy()
