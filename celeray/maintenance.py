"""Compaction and vacuum of a pipeline's table: the lock, the decisions, the Parquet commit.

Who does what:

- the ``ray`` worker's task (:mod:`tasks.maintain`) takes the table's lock here, then has
  the heavy work done by Ray tasks (:mod:`ray_jobs.maintain`): Delta's ``optimize.compact``
  and ``vacuum`` (which commit through the Delta log themselves), or the rewrite of a
  Parquet sink's small files, which :func:`compact_parquet` then commits through the ledger
  (:mod:`celeray.compaction`). The Ray calls come in as a function (``rewrite``), so this
  module imports neither Ray nor the Ray side, and runs the same in a test.
- a Delta table's pending batches first: :func:`publish_pending` makes the Delta commit of
  every batch the ledger holds but the table does not yet (a crash between a batch's
  ledger entry and its Delta commit, with no run started since), with the same recovery a
  run's start uses (:func:`celeray.delta_table.republish`). Until it is published such a
  batch's files are referenced by no Delta version, so a vacuum (``full`` or not) could
  count them as strays and a compaction would not see them; published first, they are
  ordinary live files. A batch whose entry lands after this pass is one a live task is
  committing: its files are younger than the task time limit, which the retention never
  undercuts, and its own commit (or the next run's recovery) publishes it.
- never two at once for one table: :class:`MaintenanceLock` is one Redis key per sink
  (``SET NX PX`` with a token, renewed while the work runs, deleted only by its holder). A
  second compaction or vacuum of the same table is refused with
  :class:`~celeray.errors.MaintenanceBusyError`; runs of the pipeline go on meanwhile.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import redis

from celeray import delta_table, storage
from celeray._runstate_lua import RELEASE
from celeray.compaction import CompactionLog, compaction_id_for, output_path, plan_groups
from celeray.errors import LedgerError, LockLostError, MaintenanceBusyError
from celeray.ledger import Ledger
from celeray.maintenance_spec import effective_retention, format_duration
from celeray.pipelines import Pipeline
from celeray.table_format import resolve as resolve_format

__all__ = [
    "MaintenanceLock",
    "TableFormat",
    "compact_parquet",
    "publish_pending",
    "retention_hours",
    "retention_of",
    "table_format",
    "vacuum_parquet",
]

log = logging.getLogger(__name__)

TableFormat = Literal["delta", "parquet"]
# What :func:`compact_parquet` asks of Ray: rewrite ``paths`` of the sink as one file at
# ``out_url``, in order, with the pipeline's codec and level; one call per group, all at once.
Rewrite = Callable[[list[tuple[list[str], str]]], list[dict[str, Any]]]

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def table_format(pipeline: Pipeline) -> TableFormat:
    """The sink's format, as its batches are written (:func:`celeray.table_format.resolve`:
    the pipeline's ``table_format``, or what the sink already holds, Delta for a new one)."""
    return "delta" if resolve_format(pipeline.table_format, pipeline.sink) == "delta" else (
        "parquet")


def publish_pending(pipeline: Pipeline) -> int:
    """Publish the Delta commits of committed batches that lack one (see the module
    docstring); how many batches were looked at. 0 for a Parquet sink.

    Call it holding the table's :class:`MaintenanceLock`, before a vacuum or compaction. It
    needs no run lock: a batch's own commit racing it carries the same app transaction, so
    Delta takes only one of the two, and the version is written down by the first writer.
    """
    if table_format(pipeline) != "delta":
        return 0
    return delta_table.republish(Ledger(pipeline.sink))


def retention_hours(seconds: float) -> int:
    """deltalake's ``retention_hours`` for a retention of ``seconds``: whole hours, rounded
    up, so that the floor of :func:`celeray.maintenance_spec.effective_retention` holds."""
    return max(0, -(-int(seconds) // 3600))


class MaintenanceLock:
    """One table's maintenance lock in Redis (see the module docstring)."""

    def __init__(self, client: redis.Redis, *, ttl: float) -> None:
        self.r = client
        self.ttl_ms = max(1000, int(ttl * 1000))
        self._release = client.register_script(RELEASE)
        self._renew = client.register_script(_RENEW)

    @staticmethod
    def key(sink: str) -> str:
        """The lock's key: per sink, so two pipelines that name one table share it."""
        return "celeray:maint:" + hashlib.sha256(sink.rstrip("/").encode()).hexdigest()[:24]

    def acquire(self, sink: str, what: str) -> str | None:
        """Take the lock for ``what`` (e.g. ``"compact by <host>"``); the token, or None
        when another holds it."""
        token = f"{what} {uuid.uuid4().hex[:12]}"
        return token if self.r.set(self.key(sink), token, nx=True, px=self.ttl_ms) else None

    def holder(self, sink: str) -> str | None:
        value = self.r.get(self.key(sink))
        return value.decode() if isinstance(value, bytes) else value

    def renew(self, sink: str, token: str) -> bool:
        return bool(self._renew(keys=[self.key(sink)], args=[token, self.ttl_ms]))

    def release(self, sink: str, token: str) -> None:
        self._release(keys=[self.key(sink)], args=[token])

    @contextmanager
    def held(self, sink: str, what: str) -> Iterator[Callable[[], None]]:
        """Hold the lock while the block runs, renewed every third of its TTL.

        Raises MaintenanceBusyError when another holds it. Yields a check to call before a
        commit: it raises LockLostError when a renewal found the lock gone (Redis lost it,
        or it expired while this process stalled), so two holders never both commit.
        """
        token = self.acquire(sink, what)
        if token is None:
            raise MaintenanceBusyError(sink, self.holder(sink) or "a holder that just left")
        stop = threading.Event()
        lost = threading.Event()

        def keep() -> None:
            while not stop.wait(self.ttl_ms / 3000):
                try:
                    if not self.renew(sink, token):
                        lost.set()
                        return
                except redis.RedisError as exc:
                    log.warning("could not renew the maintenance lock of %s: %s", sink, exc)

        def check() -> None:
            if lost.is_set() or not self.renew(sink, token):
                raise LockLostError(f"the maintenance lock of {sink} was lost; nothing "
                                    "more is committed")  # fmt: skip

        keeper = threading.Thread(target=keep, name="maintenance-lock", daemon=True)
        keeper.start()
        try:
            yield check
        finally:
            stop.set()
            keeper.join()
            self.release(sink, token)


def compact_parquet(
    pipeline: Pipeline, rewrite: Rewrite, *, target_size: int,
    check_lock: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Compact a Parquet sink's small files: recover, plan, rewrite on Ray, commit.

    Only live files of committed batches are touched (:meth:`CompactionLog.live_files`),
    so batches committing meanwhile are unaffected. The rewritten rows must count as many
    as the files they replace (when the ledger knows their counts), or nothing is
    committed. Call it holding the sink's :class:`MaintenanceLock`.
    """
    started = time.monotonic()
    sink = pipeline.sink
    clog = CompactionLog(sink)
    repaired = clog.recover()
    files = clog.live_files(Ledger(sink))
    groups = plan_groups(files, target_size)
    base = {"format": "parquet", "pipeline": pipeline.name, "target_file_size": target_size,
            "files_before": len(files), "recovered": repaired}  # fmt: skip
    if not groups:
        return {**base, "files_added": 0, "files_removed": 0, "files_after": len(files),
                "seconds": round(time.monotonic() - started, 3)}  # fmt: skip
    cid = compaction_id_for(groups)
    staging = clog.staging_url(cid)
    outs = [output_path(g, cid, i) for i, g in enumerate(groups)]
    written = rewrite([([f["path"] for f in g], storage.join(staging, out))
                       for g, out in zip(groups, outs, strict=True)])  # fmt: skip
    record_groups = []
    for g, out, w in zip(groups, outs, written, strict=True):
        counts = [f.get("rows") for f in g]
        expected = sum(int(r) for r in counts if r is not None)
        if None not in counts and expected != int(w["rows"]):
            raise LedgerError(f"compaction {cid}: {out} holds {w['rows']} rows, the files it "
                              f"replaces {expected}; nothing committed")  # fmt: skip
        record_groups.append({"replaced": g, "output": {"path": out, "rows": int(w["rows"]),
                                                        "bytes": int(w["bytes"])}})  # fmt: skip
    check_lock()
    clog.commit({"compaction_id": cid, "pipeline": pipeline.name, "groups": record_groups})
    removed = sum(len(g) for g in groups)
    return {**base, "compaction_id": cid, "files_added": len(groups), "files_removed": removed,
            "files_after": len(files) - removed + len(groups),
            "seconds": round(time.monotonic() - started, 3)}  # fmt: skip


def vacuum_parquet(pipeline: Pipeline) -> dict[str, Any]:
    """A Parquet sink's vacuum: finish or drop interrupted compactions and delete replaced
    files found in place again. Replaced files are deleted when their compaction commits,
    so a plain Parquet sink has no older versions to keep and no retention applies."""
    return {"format": "parquet", "pipeline": pipeline.name,
            **CompactionLog(pipeline.sink).recover()}  # fmt: skip


def retention_of(pipeline: Pipeline, task_time_limit: float,
                 requested: float | None = None) -> tuple[float, list[str]]:
    """The vacuum retention in seconds and notes for people: the pipeline's (or
    ``requested``), raised to the task time limit when shorter."""
    wanted = pipeline.maintenance.vacuum_retention if requested is None else requested
    seconds, why = effective_retention(wanted, task_time_limit)
    notes = [why] if why else []
    hours = retention_hours(seconds)
    if hours * 3600 != seconds:
        notes.append(f"Delta's vacuum takes whole hours: {format_duration(seconds)} is kept as "
                     f"{hours}h")  # fmt: skip
    return seconds, notes

