"""One batch's way through a worker: lease, poison check, convert, commit, release.

The Celery tasks of a batch each make one call here (:class:`BatchFlow`): ``stage_batch``
:meth:`~BatchFlow.stage`, ``transform_batch`` :meth:`~BatchFlow.transform`,
``commit_batch`` :meth:`~BatchFlow.commit_saved`, and a batch that failed for good
:meth:`~BatchFlow.fail`. What is Celery's stays in ``tasks``: retrying a batch whose lease
another start holds (:class:`BatchBusyError` raised here), and sending a chain (given here
as the ``defer`` and ``resend`` callables).

The Ray side is given too, as a :class:`Converter` (``tasks._ray.convert``, which calls
:func:`ray_jobs.convert.convert_batch` once per read): the core imports neither side.

A transform, in order:

1. a start that is a retry looks whether another start finished the batch meanwhile;
2. it takes the batch's lease (:meth:`RunStore.claim_batch`), or raises BatchBusyError;
3. it counts itself (a start that never ends is a death) and checks the run still holds
   its lock; a batch whose starts died ``max_deliveries`` times is quarantined as poison
   (:func:`poison_result`) instead of converted;
4. it reads the batch against the sink's current schema, and once more into one schema
   when its files disagree on column types (:func:`celeray.batch_schema.settle`), while
   the run's lock is kept alive (:func:`celeray.lock_keeper.keep_lock`) and under a
   deadline short of the time limit;
5. a batch whose sink :func:`commits_here` is committed at once (:meth:`commit_here`);
   another's result is saved beside its staged Parquet and its lease handed to
   ``commit_batch`` in the message it returns;
6. the lease is released, unless it was handed on.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from celeray import runs, storage
from celeray.archive import archive_batch
from celeray.backlog import Chain
from celeray.batch import ResolvedBatch
from celeray.batch_schema import plan_with_schema, settle
from celeray.delta_table import drop_files
from celeray.errors import (
    BatchBusyError,
    LedgerError,
    LockLostError,
    SchemaConflictError,
    TimeLimitError,
)
from celeray.ledger import Ledger
from celeray.lock_keeper import keep_lock
from celeray.messages import BatchMessage
from celeray.runstate import RunStore
from celeray.settings import Settings
from celeray.staging import load_staged, stage_files

__all__ = [
    "DEADLINE_SHARE",
    "MAX_READS",
    "BatchFlow",
    "Converter",
    "commits_here",
    "poison_result",
]

log = logging.getLogger(__name__)

DEADLINE_SHARE = 0.95  # of the time limit for the Ray fan-out; the rest merges and returns
# A batch whose files disagree on a column's type is read once more into one schema; a
# second disagreement (SQL that gives a column different types per file) fails the batch.
MAX_READS = 2


class Converter(Protocol):
    """Convert a batch on Ray once: its merged result with ``timings`` (``units_s``,
    ``units``, ``nodes``). ``plan`` is the batch's plan with its schema pinned;
    ``on_progress`` gets the batch's totals so far as units finish."""

    def __call__(
        self, batch: ResolvedBatch, plan: dict[str, Any], *, deadline: float,
        on_progress: Callable[[dict[str, int]], None],
    ) -> dict[str, Any]: ...


def commits_here(sink: str) -> bool:
    """Whether ``transform_batch`` commits a batch of ``sink`` itself, not ``commit_batch``.

    A batch whose sink is a local disk is committed by the transform: its commit is a few
    fsyncs and renames, ~2 ms, less than the queue hop and the task around it. Object
    stores keep ``commit_batch`` on the io queue, whose copies may take seconds that would
    hold a thread driving Ray.
    """
    return storage.is_local_url(sink)


@dataclass(frozen=True)
class BatchFlow:
    """What a worker needs to take batches through: its stores, settings and Ray side."""

    store: RunStore
    settings: Settings
    backend: runs.ResultBackend
    convert: Converter | None = None  # only the transform needs Ray
    # Connects to Ray before a start of a transform counts (the lease, the death count): a
    # worker that dies while connecting (its Ray head down or restarting) is no poison
    # death. RabbitMQ gives a dead worker's batch back at once, so a restarted worker meets
    # a head that is still coming back; on Redis the visibility timeout hid this.
    connect: Callable[[], None] | None = None
    hostname: str | None = None  # the Celery worker's node name, for the ledger entry
    task_id: str | None = None  # the Celery task's id, for the ledger entry (Flower's page)
    chain: Chain | None = None  # sends the next run when a run ends with a backlog

    def stage(self, batch: ResolvedBatch) -> BatchMessage:
        """Copy what Ray cannot read in place into staging (the run must still hold its
        lock); quarantine files over the size cap. Returns the message to pass on."""
        if not self.store.hold(batch.name, batch.run_id):
            raise LockLostError(f"run {batch.run_id} was superseded before staging")
        stage_files(batch, self.settings)
        return batch.message

    def transform(
        self, batch: ResolvedBatch, *, retried: bool, defer: Callable[..., Any]
    ) -> dict[str, Any]:
        """Convert the batch and commit it here, or hand it to ``commit_batch``.

        The steps are the module docstring's. ``retried``: this start is a retry of the
        task. ``defer`` sends ``commit_batch`` for a local commit that failed
        (:meth:`commit_here`). Raises BatchBusyError while another start holds the lease.
        """
        if retried and self._finished(batch):
            log.info("batch %s: finished by another start meanwhile", batch.batch_id)
            return {**batch.message, "finished_before": True}
        if self.connect is not None:
            self.connect()
        token = str(uuid.uuid4())
        holder = self.store.claim_batch(batch.name, batch.batch_id, token,
                                        self.settings.task_time_limit)  # fmt: skip
        if holder is not None:
            raise BatchBusyError(f"batch {batch.batch_id} is being transformed by another start")
        handed_on = False  # to commit_batch, which gives the lease back after its commit
        try:
            result = self._claimed(batch)
            if not commits_here(batch.sink):
                # until the commit, another start of the batch must not clear the staged files
                Ledger(batch.sink).save_result(batch.batch_id, result)
                handed_on = True
                return {**batch.message, "lease": token}
            return self.commit_here(batch, result, defer=defer)
        finally:
            if not handed_on:
                self.store.release_batch(batch.name, batch.batch_id, token)

    def commit_saved(
        self, batch: ResolvedBatch, *, resend: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """Commit the result the batch's transform saved beside its staged Parquet (or, for
        a batch committed before, its entry); then give the transform's lease back.

        A batch its transform found finished by another start commits nothing. One whose
        table schema changed meanwhile (SchemaConflictError) goes to ``resend`` (without
        its lease) to be read again against the schema as it is now.
        """
        if batch.message.get("finished_before"):
            return {"batch_id": batch.batch_id, "committed": None, "finished_before": True}
        result = Ledger(batch.sink).load_result(batch.batch_id)
        if result is None:
            raise LedgerError(f"batch {batch.batch_id} has no saved result to commit and "
                              "no ledger entry; its files stay uncommitted for the next run")
        try:
            out = self._commit(batch, result)
        except SchemaConflictError as exc:  # read it again, against the schema as it is now
            log.info("batch %s: %s; sending its transform again", batch.batch_id, exc)
            out = {"batch_id": batch.batch_id, "committed": None, "read_again": str(exc)}
            resend({k: v for k, v in batch.message.items() if k != "lease"})
        if batch.message.get("lease"):
            self.store.release_batch(batch.name, batch.batch_id, batch.message["lease"])
        return out

    def fail(self, message: BatchMessage, error: str) -> None:
        """Count a batch that failed for good; end its run if it was the last."""
        runs.fail_batch(message, error, self.store, self.backend, self.chain)

    def commit_here(
        self, batch: ResolvedBatch, result: dict[str, Any], *, defer: Callable[..., Any]
    ) -> dict[str, Any]:
        """Commit a transformed batch in this task; hand it to ``commit_batch`` if that fails.

        A fencing refusal (LockLostError) fails the batch as it would in ``commit_batch``;
        any other error (a full disk, Redis gone a moment) saves the result beside the staged
        Parquet and goes to ``defer`` (sending ``commit_batch`` with its retries), so the Ray
        work is never done again for it.
        """
        try:
            return self._commit(batch, result)
        except (LockLostError, SchemaConflictError):  # the batch fails, or is read again
            raise
        except Exception as exc:
            log.warning("batch %s: committing it here failed (%s: %s); commit_batch takes over",
                        batch.batch_id, type(exc).__name__, exc)
            Ledger(batch.sink).save_result(batch.batch_id, result)
            defer((batch.message,))
            return {"batch_id": batch.batch_id, "committed": None, "deferred": True}

    def _finished(self, batch: ResolvedBatch) -> bool:
        """Whether the batch was finished (committed or failed) by another start of it."""
        return bool(self.store.get(batch.run_id)) and (
            batch.batch_id not in self.store.pending(batch.run_id)
        )

    def _claimed(self, batch: ResolvedBatch) -> dict[str, Any]:
        """The result of a batch whose lease this start holds (poison check included)."""
        # The fencing check, this start counted, and trigger -> first Ray task (the run's
        # overhead) marked: one round trip.
        deaths = self.store.begin_attempt(batch.name, batch.batch_id, run_id=batch.run_id,
                                          mark="first_unit_at")  # fmt: skip
        if deaths is None:
            raise LockLostError(f"run {batch.run_id} was superseded before its transform")
        if deaths >= self.settings.max_deliveries:
            self.store.end_attempt(batch.name, batch.batch_id)
            log.error("batch %s: its worker died %d times; quarantining it", batch.batch_id,
                      deaths)  # fmt: skip
            return poison_result(batch, deaths)
        try:
            return self._converted(load_staged(batch))
        finally:  # not reached when the worker dies: that start counts as a death
            self.store.end_attempt(batch.name, batch.batch_id)

    def _converted(self, batch: ResolvedBatch) -> dict[str, Any]:
        """The batch read on Ray into one schema, under the deadline, its lock kept alive."""
        if self.convert is None:
            raise TypeError("BatchFlow.transform needs a converter (the Ray side)")
        settings = self.settings
        plan = plan_with_schema(batch.plan, batch.sink)

        def on_progress(done: dict[str, int]) -> None:
            self.store.set_batch_progress(batch.run_id, batch.batch_id, done)
            runs.publish_progress(batch.run_id, self.store, self.backend)

        started = time.perf_counter()
        # The threads pool does not enforce Celery's time limits (celery#9203): the
        # dispatcher keeps this deadline itself, under the visibility timeout, so a batch is
        # stopped before Redis could hand it to a second worker while it still runs.
        deadline = time.monotonic() + settings.task_time_limit * DEADLINE_SHARE
        # A Delta batch's files go straight into the table: each read (attempt) names them
        # anew, so no attempt rewrites a file a committed version may reference.
        attempt = uuid.uuid4().hex[:8] if batch.is_delta else None
        with self._heartbeat(batch) as lost:
            for reads in range(1, MAX_READS + 1):
                if attempt is not None:
                    plan = {**plan, "attempt": f"{attempt}{reads}"}
                try:
                    result = self.convert(batch, plan, deadline=deadline, on_progress=on_progress)
                except TimeLimitError as exc:
                    raise TimeLimitError(
                        f"batch {batch.batch_id} exceeded the time limit of "
                        f"{settings.task_time_limit}s ({exc}); its files stay uncommitted for "
                        "the next run"
                    ) from exc
                settled = settle(plan, result)
                if settled.reread_with is None:
                    break
                if batch.is_delta:  # this read's files are in the table, never to commit
                    drop_files(batch.sink, [*result["outputs"], *(result.get("rejects") or [])])
                if reads == MAX_READS:
                    raise SchemaConflictError(
                        f"batch {batch.batch_id}: its files still disagree on column types "
                        f"after {reads} reads; its files stay uncommitted for the next run"
                    )
                log.info("batch %s: its files disagree on column types; reading it again "
                         "into one schema", batch.batch_id)  # fmt: skip
                plan = {**plan, "table_schema": settled.reread_with}
        if lost.is_set():
            raise LockLostError(f"run {batch.run_id} lost its lock while transforming")
        result["schemas"] = settled.to_json()
        # Wall time of the fan-out against the Ray tasks' own time: the per-batch overhead.
        result["timings"] = {
            "transform_s": round(time.perf_counter() - started, 4),
            **result.get("timings", {}),
            "transformed_by": self.hostname,
            "transform_task": self.task_id,
        }
        return result

    def _archive(self, batch: ResolvedBatch) -> None:
        """Archive the committed batch's inputs; a failure (a target it may not write) is
        logged and left to the next run's start, never the batch's: its rows are in."""
        ledger = Ledger(batch.sink)
        try:
            archive_batch(ledger, ledger.entry(batch.batch_id))
        except Exception as exc:
            log.error("batch %s: archiving its inputs failed (%s: %s); the next run's start "
                      "tries again", batch.batch_id, type(exc).__name__, exc)  # fmt: skip

    def _heartbeat(self, batch: ResolvedBatch) -> AbstractContextManager[threading.Event]:
        """Keep the run's lock alive while the batch converts; the event is set if lost."""
        interval = max(1.0, self.settings.run_lock_ttl / 3)
        store = self.store
        return keep_lock(batch.name, batch.run_id, store=lambda: store, interval=interval)

    def _commit(self, batch: ResolvedBatch, result: dict[str, Any]) -> dict[str, Any]:
        """The ledger entry, the count, the inputs archived (``after_commit``), and the run
        ended if this was its last batch."""
        fresh, remaining = runs.commit_result(batch, result, self.store,
                                              committed_by=self.hostname,
                                              commit_task=self.task_id)  # fmt: skip
        if batch.pipeline.archive.action != "keep":  # only now: the batch is committed
            self._archive(batch)
        runs.after_batch(batch.run_id, remaining, self.store, self.backend, self.chain)
        return {
            "batch_id": batch.batch_id,
            "committed": fresh,
            "files": len(result["files"]),
            "quarantined": len(result["quarantined"]),
            "rows_out": result["rows_out"],
        }


def poison_result(batch: ResolvedBatch, deaths: int) -> dict[str, Any]:
    """A result that quarantines every file of a batch whose worker keeps dying."""
    reason = (
        f"the worker transforming this file's batch died {deaths} times; "
        "quarantined as a poison input"
    )
    return {
        "files": [],
        "quarantined": [
            {"url": f["url"], "kind": "poison", "error": reason, "line": None, "row": None}
            for f in batch.message["files"]
        ],
        "outputs": [],
        "rows_in": 0,
        "rows_out": 0,
        "bytes_in": 0,
        "bytes_out": 0,
    }
