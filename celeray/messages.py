"""The wire format: what celeray's task messages carry, written down once.

A message *names* work; it never decides what is read, written or run. Everything else
(sink, staging, SQL, transform, ``ray_env``, schema, limits, roots) is derived by the worker
from its own pipeline file and settings (:mod:`celeray.batch`). The parsers here check the
shape of a message (types, no unknown keys, ids of the right form) and raise
:class:`~celeray.errors.MessageRefusedError` naming the field; what the names mean (is this
pipeline known, do these inputs match its source, is this the batch id they give) is
checked in :mod:`celeray.batch`.

Tasks and their arguments:

====================  ===============================================================
``tasks.start_run``   ``(pipeline, trigger="beat", slot=None, slot_ttl=3600)``
``tasks.stage_batch`` ``(BatchMessage)``
``tasks.transform_batch`` ``(BatchMessage)``
``tasks.commit_batch``    ``(BatchMessage)`` with ``lease`` or ``finished_before``
``tasks.watch_run``   ``(run_id)``
``tasks.reconcile``   ``()``
``tasks.ray_status``  ``()``
====================  ===============================================================
"""

from __future__ import annotations

import math
import re
import uuid
from typing import Any, NotRequired, TypedDict

from celeray.errors import MessageRefusedError

__all__ = [
    "MAX_FILES_PER_MESSAGE",
    "BatchMessage",
    "InputFile",
    "input_file",
    "parse_batch",
    "parse_run_id",
    "parse_start",
]

# More inputs than any batch plan makes (batches are cut by bytes; the run by
# max_files_per_run): a bound on the work a message can make a worker check.
MAX_FILES_PER_MESSAGE = 100_000
MAX_URL_LENGTH = 4096  # PATH_MAX on Linux; object keys are at most 1024 bytes
MAX_SLOT_TTL = 7 * 24 * 3600  # a beat slot outlives the longest schedule period by a margin
_BATCH_ID = re.compile(r"[0-9a-f]{24}")  # celeray.ledger.batch_id_for: 24 hex digits
_PIPELINE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # as the pipeline file allows
_TRIGGER = re.compile(r"[a-z][a-z0-9_-]{0,31}")  # beat, api, cli, reconcile, ...


class InputFile(TypedDict):
    """One input as listed: its URL and its fingerprint (size, and mtime or etag).

    ``replay`` names the batch whose quarantine of the input was replayed
    (:mod:`celeray.quarantine`); the batch id takes it in.
    """

    url: str
    size: int
    mtime: float | None
    etag: str | None
    replay: NotRequired[str]


def input_file(f: dict[str, Any]) -> InputFile:
    """The :class:`InputFile` of a planned file's dict (other keys left out)."""
    out = InputFile(url=f["url"], size=f["size"], mtime=f["mtime"], etag=f["etag"])
    if f.get("replay"):
        out["replay"] = str(f["replay"])
    return out


class BatchMessage(TypedDict):
    """The message of ``stage_batch``, ``transform_batch`` and ``commit_batch``.

    ``lease`` is the transform's hold on the batch, given back by ``commit_batch`` after the
    commit; ``finished_before`` says the transform found the batch finished by another
    start of it.
    """

    pipeline: str
    run_id: str
    batch_id: str
    files: list[InputFile]
    lease: NotRequired[str]
    finished_before: NotRequired[bool]


_BATCH_KEYS = frozenset(BatchMessage.__annotations__)
_REQUIRED = ("pipeline", "run_id", "batch_id", "files")
_FILE_KEYS = frozenset(InputFile.__annotations__)


def _refuse(field: str, why: str) -> MessageRefusedError:
    return MessageRefusedError(f"{field}: {why}")


def parse_run_id(value: Any, field: str = "run_id") -> str:
    """``value`` if it is a run id (a UUID in its usual text form), else refuse.

    Run ids become file names in the ledger (``_celeray/started/<run_id>.json``), so
    nothing but the canonical form gets through.
    """
    if not isinstance(value, str):
        raise _refuse(field, f"expected a UUID string, got {type(value).__name__}")
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        raise _refuse(field, f"{value[:80]!r} is not a UUID") from None
    if canonical != value:
        raise _refuse(field, f"{value[:80]!r} is not a UUID in canonical form")
    return value


def _pipeline_name(value: Any) -> str:
    if not isinstance(value, str) or not _PIPELINE.fullmatch(value):
        raise _refuse("pipeline", f"{str(value)[:80]!r} is not a pipeline name")
    return value


def _input(value: Any, where: str) -> InputFile:
    if not isinstance(value, dict):
        raise _refuse(where, f"expected an object, got {type(value).__name__}")
    extra = set(value) - _FILE_KEYS
    if extra:
        raise _refuse(where, f"unknown key(s) {sorted(extra)}; an input carries only "
                             f"{sorted(_FILE_KEYS)}")  # fmt: skip
    url, size = value.get("url"), value.get("size")
    mtime, etag = value.get("mtime"), value.get("etag")
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise _refuse(f"{where}.url", "expected a URL string")
    if "\0" in url:
        raise _refuse(f"{where}.url", "holds a NUL byte")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _refuse(f"{where}.size", f"expected a byte count, got {size!r}")
    if mtime is not None and (
        isinstance(mtime, bool) or not isinstance(mtime, int | float) or not math.isfinite(mtime)
    ):
        raise _refuse(f"{where}.mtime", f"expected a number or null, got {mtime!r}")
    if etag is not None and (not isinstance(etag, str) or len(etag) > 1024):
        raise _refuse(f"{where}.etag", "expected a string or null")
    out = InputFile(url=url, size=size, mtime=None if mtime is None else float(mtime),
                    etag=etag)  # fmt: skip
    if "replay" in value:
        replay = value["replay"]
        if not isinstance(replay, str) or not _BATCH_ID.fullmatch(replay):
            raise _refuse(f"{where}.replay", "expected a batch id")
        out["replay"] = replay
    return out


def parse_batch(value: Any) -> BatchMessage:
    """``value`` as a :class:`BatchMessage`, or :class:`MessageRefusedError` naming the field.

    Unknown keys are refused, not ignored: a message that tries to say where to write or
    what to run is an attack or a sender of another version, and either way is not acted on.
    """
    if not isinstance(value, dict):
        raise _refuse("message", f"expected an object, got {type(value).__name__}")
    extra = set(value) - _BATCH_KEYS
    if extra:
        raise _refuse("message", f"unknown key(s) {sorted(extra)}: a batch message names "
                                 f"{', '.join(_REQUIRED)} and nothing that decides what is "
                                 "read, written or run")  # fmt: skip
    missing = [k for k in _REQUIRED if k not in value]
    if missing:
        raise _refuse("message", f"missing key(s) {missing}")
    batch_id = value["batch_id"]
    if not isinstance(batch_id, str) or not _BATCH_ID.fullmatch(batch_id):
        raise _refuse("batch_id", f"{str(batch_id)[:80]!r} is not a batch id (24 hex digits)")
    files = value["files"]
    if not isinstance(files, list) or not files or len(files) > MAX_FILES_PER_MESSAGE:
        raise _refuse("files", f"expected a list of 1 to {MAX_FILES_PER_MESSAGE} inputs")
    msg = BatchMessage(
        pipeline=_pipeline_name(value["pipeline"]),
        run_id=parse_run_id(value["run_id"]),
        batch_id=batch_id,
        files=[_input(f, f"files[{i}]") for i, f in enumerate(files)],
    )
    urls = [f["url"] for f in msg["files"]]
    if len(set(urls)) != len(urls):
        raise _refuse("files", "names an input twice")
    if "lease" in value:
        lease = value["lease"]
        if not isinstance(lease, str) or len(lease) > 64:
            raise _refuse("lease", "expected a lease token")
        msg["lease"] = lease
    if "finished_before" in value:
        if not isinstance(value["finished_before"], bool):
            raise _refuse("finished_before", "expected true or false")
        msg["finished_before"] = value["finished_before"]
    return msg


def parse_start(
    pipeline: Any, trigger: Any, slot: Any, slot_ttl: Any
) -> tuple[str, str, int | None, int]:
    """The arguments of ``start_run`` checked for shape, or :class:`MessageRefusedError`."""
    if not isinstance(trigger, str) or not _TRIGGER.fullmatch(trigger):
        raise _refuse("trigger", f"{str(trigger)[:40]!r} is not a trigger name")
    if slot is not None and (isinstance(slot, bool) or not isinstance(slot, int) or slot < 0):
        raise _refuse("slot", f"expected a schedule slot number, got {slot!r}")
    if isinstance(slot_ttl, bool) or not isinstance(slot_ttl, int) or not (
        0 < slot_ttl <= MAX_SLOT_TTL
    ):
        raise _refuse("slot_ttl", f"expected 1 to {MAX_SLOT_TTL} seconds, got {slot_ttl!r}")
    return _pipeline_name(pipeline), trigger, slot, slot_ttl
