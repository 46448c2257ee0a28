"""The tasks of one run. Each is thin: the logic lives in :mod:`celeray.runs` and ``ray_jobs``.

``start_run`` (io) plans and sends one chain per batch:
``stage_batch`` (io) -> ``transform_batch`` (ray) -> ``commit_batch`` (io). ``stage_batch``
is only sent for batches with files Ray cannot read in place (http, sftp, ...).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import redis.exceptions
from celery import Task, chain, states

from celeray import runs, storage
from celeray.batch import ResolvedBatch, resolve
from celeray.batch_schema import plan_with_schema, settle
from celeray.delta_table import drop_files
from celeray.errors import (
    BatchBusyError,
    LedgerError,
    LockLostError,
    MessageRefusedError,
    RayUnavailableError,
    RunFailedError,
    SchemaConflictError,
    TimeLimitError,
    TransientIOError,
    UnknownPipelineError,
)
from celeray.ledger import Ledger
from celeray.messages import BatchMessage, parse_batch, parse_run_id, parse_start
from celeray.pipelines import Pipeline, current_pipelines, get_pipeline
from celeray.planner import needs_staging
from celeray.runstate import RunStore
from celeray.settings import Settings, get_settings
from celeray.staging import load_staged, stage_files
from ray_jobs.merge import merge_unit_results
from tasks._lock_keeper import keep_lock
from tasks.app import app, run_store

__all__ = ["commit_batch", "stage_batch", "start_run", "transform_batch", "watch_run"]

log = logging.getLogger(__name__)

# Worth retrying with backoff; everything else is a real failure of the batch.
TRANSIENT = (
    TransientIOError,
    RayUnavailableError,  # the head restarting (supervisor brings it back)
    # another batch changed the table schema meanwhile: the retry reads against the new one
    SchemaConflictError,
    ConnectionError,
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
# Expected failures: logged by the task itself with their reason, by Celery without a trace.
REFUSALS = (MessageRefusedError,)
DEADLINE_SHARE = 0.95  # of the time limit for the Ray fan-out; the rest merges and returns
RETRY = {
    "autoretry_for": TRANSIENT,
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 5,
}


def publish_progress(run_id: str) -> None:
    """Store the run's aggregated progress as its PROGRESS state, unless it has ended."""
    record = run_store().get(run_id)
    if record and record.get("state") not in runs.FINAL_STATES:
        app.backend.store_result(run_id, runs.progress_of(record), "PROGRESS")


def finalize(run_id: str) -> None:
    """End the run: its summary (or its failure) goes to the result backend."""
    state, summary = runs.finalize_run(run_id, run_store())
    if state == states.SUCCESS:
        app.backend.store_result(run_id, summary, states.SUCCESS)
    else:
        errors = "; ".join(e["error"] for e in summary["errors"][:3])
        exc = RunFailedError(
            f"{summary['batches_failed']} of {summary['batches_total']} batch(es) failed; "
            f"their files stay uncommitted for the next run: {errors}"
        )
        app.backend.store_result(run_id, exc, states.FAILURE)
    log.info("run %s ended %s: %s", run_id, state, {k: summary[k] for k in ("rows_out",)})


def after_batch(run_id: str, remaining: int | None) -> None:
    """After a batch finished: finalize the run if it was the last, else show progress.

    ``remaining`` is None when the batch had been counted before: a redelivered task whose
    first delivery died after counting. If that was the last batch, its death may have come
    before the run was finalized, so an unfinished run with nothing pending is finalized
    now (finalizing twice stores the same summary twice).
    """
    if remaining is None:
        store = run_store()
        record = store.get(run_id)  # None when Redis lost the run: nothing to finalize
        if record and not store.pending(run_id) and record.get("state") not in runs.FINAL_STATES:
            finalize(run_id)
    elif remaining == 0:
        finalize(run_id)
    else:
        publish_progress(run_id)


class BatchTask(Task):
    """A task of one batch: when it fails for good, the batch is counted as failed.

    Its return value (the batch's message) travels to the next task of the chain, and the
    run's record holds its counts and errors, so nothing is written to the result backend
    for it (``ignore_result``): a batch costs no backend keys and six fewer Redis writes.
    A refused message counts nothing: it named no batch this worker knows.
    """

    ignore_result = True

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any):
        if isinstance(exc, MessageRefusedError):
            return
        try:
            message = parse_batch(args[0] if args else kwargs.get("message"))
        except MessageRefusedError:
            return
        remaining = runs.fail_batch(message, f"{type(exc).__name__}: {exc}", run_store())
        after_batch(message["run_id"], remaining)


class StartTask(Task):
    """``start_run``: when it fails for good, the run fails and its lock is released."""

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any):
        if isinstance(exc, MessageRefusedError):
            return
        pipeline = args[0] if args else kwargs.get("pipeline")
        if isinstance(pipeline, str):
            runs.abort_run(task_id, pipeline, f"{type(exc).__name__}: {exc}", run_store())


def refused(task: str, task_id: str | None, exc: MessageRefusedError) -> MessageRefusedError:
    """Log why a message is refused (the worker log is where its sender's attempt shows)."""
    log.error("refused %s message %s: %s; nothing was read, written or counted",
              task, task_id, exc)  # fmt: skip
    return exc


def _resolve(task: Task, raw: Any, settings: Settings) -> ResolvedBatch:
    """The batch a received message names, checked against this worker's pipeline file."""
    try:
        return resolve(raw, settings)
    except MessageRefusedError as exc:
        raise refused(task.name, task.request.id, exc) from None


def _heartbeat(batch: ResolvedBatch) -> AbstractContextManager[threading.Event]:
    """Keep the run's lock alive while a long step runs; the event is set if it was lost."""
    interval = max(1.0, get_settings().run_lock_ttl / 3)
    return keep_lock(batch.name, batch.run_id, store=run_store, interval=interval)


@app.task(
    name="tasks.start_run",
    bind=True,
    base=StartTask,
    throws=REFUSALS,
    ignore_result=True,  # the run's own result is stored when its last batch ends
    store_errors_even_if_ignored=True,
    **RETRY,
)
def start_run(
    self: Task, pipeline: str, trigger: str = "beat", slot: int | None = None,
    slot_ttl: int = 3600,
) -> dict[str, Any]:
    """Plan a run of ``pipeline`` and send a chain per batch; the run id is this task's id.

    Beat's sends carry ``slot``: a slot already claimed by another run (a second beat's
    send of the same period) is skipped.
    """
    run_id = self.request.id
    try:
        parse_run_id(run_id, "task id")
        pipeline, trigger, slot, slot_ttl = parse_start(pipeline, trigger, slot, slot_ttl)
    except MessageRefusedError as exc:
        raise refused(self.name, run_id, exc) from None
    settings = get_settings()
    store = run_store()
    if slot is not None and not store.claim_slot(pipeline, slot, run_id, slot_ttl):
        # Nobody waits on a beat's run id, so no result is stored: two beats cost no keys.
        log.info("run %s of %s skipped: slot %s was sent by another beat", run_id, pipeline, slot)
        return {"status": "skipped", "duplicate_slot": slot}
    try:
        spec = get_pipeline(
            current_pipelines(settings.pipelines, **settings.pipeline_rules()), pipeline
        )
    except UnknownPipelineError as exc:
        log.error("refused %s message %s: %s (in %s)", self.name, run_id, exc,
                  settings.pipelines)  # fmt: skip
        raise
    out = runs.begin_run(run_id, spec, store, trigger=trigger)
    if out["status"] == "skipped":
        log.info("run %s of %s skipped: run %s holds the lock", run_id, pipeline, out["running"])
        app.backend.store_result(
            run_id, {"status": "skipped", "running": out["running"]}, states.SUCCESS
        )
        return out
    if slot is not None:
        store.set_fields(run_id, slot=slot)  # which schedule period this run is for
    jobs = out.pop("jobs")
    if not jobs:
        finalize(run_id)
        return {**out, "batches": 0}
    publish_progress(run_id)
    # The watchdog first: its send (and the io worker taking its countdown message) costs
    # CPU that would otherwise compete with the first batch's Ray task; and a start that
    # dies while sending the batches leaves a watchdog to resend them (the jobs are saved).
    watch_run.apply_async((run_id,), countdown=watch_interval())
    for job in jobs:
        dispatch(job, spec)
    return {**out, "batches": len(jobs)}


def commits_here(sink: str) -> bool:
    """Whether ``transform_batch`` commits a batch of ``sink`` itself, not ``commit_batch``.

    A batch whose sink is a local disk is committed by the transform: its commit is a few
    fsyncs and renames, ~2 ms, less than the queue hop and the task around it. Object
    stores keep ``commit_batch`` on the io queue, whose copies may take seconds that would
    hold a thread driving Ray.
    """
    return storage.is_local_url(sink)


def dispatch(message: BatchMessage | dict[str, Any], pipeline: Pipeline) -> None:
    """Send the chain of one batch of ``pipeline``: stage (only if something must be
    copied), transform, commit (only for sinks :func:`commits_here` leaves to
    ``commit_batch``).

    The chain's shape is all that is decided here; each task checks the message itself
    when it arrives (a resent one comes from Redis), so it is not resolved here too.
    """
    tail = [] if commits_here(pipeline.sink) else [commit_batch.s()]
    if any(needs_staging(str(f.get("url"))) for f in message.get("files") or []):
        chain(stage_batch.si(message), transform_batch.s(), *tail).apply_async()
    else:
        chain(transform_batch.si(message), *tail).apply_async()


def watch_interval() -> int:
    """Seconds between two looks of a run's watchdog: under the visibility timeout, since
    a countdown message longer than that is delivered again while it waits, and under a
    third of the lock's TTL, since the watchdog keeps the lock of a run whose batches
    wait in a queue."""
    settings = get_settings()
    return max(1, min(settings.effective_visibility_timeout // 2, settings.run_lock_ttl // 3))


@app.task(name="tasks.watch_run", bind=True, ignore_result=True, acks_late=True,
          throws=REFUSALS)
def watch_run(self: Task, run_id: str) -> None:
    """Resend the batches of a run that has gone silent; finalize one that was left unended.

    Celery on Redis loses a message whose worker dies after taking it off the queue and
    before recording it as unacknowledged (seen in the SIGKILL test: one transform in 18
    never came back). Nothing then finishes the run. This watchdog looks every
    :func:`watch_interval` seconds: when no batch of the run has progressed for a whole
    visibility timeout (longer than any task may run), the pending batches are sent
    again; batch ids, output names and the once-only finish make a duplicate harmless.
    It stops when the run has ended.
    """
    try:
        parse_run_id(run_id)
    except MessageRefusedError as exc:
        raise refused(self.name, self.request.id, exc) from None
    store = run_store()
    record = store.get(run_id)
    if not record or record.get("state") in runs.FINAL_STATES:
        return
    newer = store.superseded(str(record.get("pipeline")), run_id)
    if newer:  # a newer run holds the pipeline now and commits what this one left
        reason = f"superseded by run {newer}, which takes over its uncommitted files"
        runs.abort_run(run_id, str(record.get("pipeline")), reason, store)
        app.backend.store_result(run_id, RunFailedError(reason), states.FAILURE)
        log.warning("run %s: %s", run_id, reason)
        return
    pending = store.pending(run_id)
    if not pending:
        after_batch(run_id, None)
        return
    # Batches waiting in a busy queue renew nothing themselves: without this, the lock of a
    # live run would expire and a new run (beat's, the reconciliation's) would supersede
    # it, again and again while the queue stays long.
    store.hold(str(record.get("pipeline")), run_id)
    silent = time.time() - float(record.get("progress_at") or record.get("started_at") or 0)
    if silent > get_settings().effective_visibility_timeout:
        jobs = store.load_jobs(run_id)
        log.warning("run %s: silent for %.0fs; resending %d batch(es)", run_id, silent,
                    len(pending))
        pipeline = _pipeline_of(str(record.get("pipeline")))
        for batch_id in sorted(pending):
            if batch_id in jobs and pipeline is not None:
                dispatch(jobs[batch_id], pipeline)
        store.touch_progress(run_id)
    watch_run.apply_async((run_id,), countdown=watch_interval())


def _pipeline_of(name: str) -> Pipeline | None:
    """The pipeline called ``name`` in this worker's file; None (logged) when it is gone."""
    settings = get_settings()
    try:
        return get_pipeline(current_pipelines(settings.pipelines, **settings.pipeline_rules()),
                            name)  # fmt: skip
    except UnknownPipelineError as exc:
        log.error("cannot resend batches: %s (in %s)", exc, settings.pipelines)
        return None


@app.task(name="tasks.stage_batch", bind=True, base=BatchTask, throws=REFUSALS, **RETRY)
def stage_batch(self: Task, message: Any) -> BatchMessage:
    """Copy what Ray cannot read in place into staging; quarantine files over the size cap."""
    settings = get_settings()
    batch = _resolve(self, message, settings)
    if not run_store().hold(batch.name, batch.run_id):
        raise LockLostError(f"run {batch.run_id} was superseded before staging")
    stage_files(batch, settings)
    return batch.message


@app.task(name="tasks.transform_batch", bind=True, base=BatchTask, throws=REFUSALS, **RETRY)
def transform_batch(self: Task, message: Any) -> dict[str, Any]:
    """Drive Ray over the batch's files, reporting progress as Ray tasks finish.

    A batch whose earlier starts died (the worker killed mid-transform, every time) more
    than ``CELERAY_MAX_DELIVERIES`` times is quarantined as poison instead. A local sink's
    batch is committed here; another's result is saved beside its staged Parquet and
    ``commit_batch`` gets the message with this start's lease on the batch.
    """
    settings = get_settings()
    store = run_store()
    batch = _resolve(self, message, settings)
    if self.request.retries and _finished(store, batch):
        log.info("batch %s: finished by another start meanwhile", batch.batch_id)
        return {**batch.message, "finished_before": True}
    token = str(uuid.uuid4())
    holder = store.claim_batch(batch.name, batch.batch_id, token, settings.task_time_limit)
    if holder is not None:  # not a failure: it waits (no retry limit) until the other ends
        raise self.retry(
            exc=BatchBusyError(f"batch {batch.batch_id} is being transformed by another start"),
            countdown=BUSY_RETRY_SECONDS, max_retries=None,
        )
    handed_on = False  # to commit_batch, which gives the lease back after its commit
    try:
        result = _transform_claimed(self, batch, settings, store)
        if not commits_here(batch.sink):
            # until the commit, another start of the batch must not clear the staged files
            Ledger(batch.sink).save_result(batch.batch_id, result)
            handed_on = True
            return {**batch.message, "lease": token}
        return commit_here(batch, result, self.request.hostname, defer=commit_batch.apply_async)
    finally:
        if not handed_on:
            store.release_batch(batch.name, batch.batch_id, token)


BUSY_RETRY_SECONDS = 5  # how often a second start of a batch looks whether the first ended
# A batch whose files disagree on a column's type is read once more into one schema; a
# second disagreement (SQL that gives a column different types per file) fails the batch.
MAX_READS = 2


def _finished(store: RunStore, batch: ResolvedBatch) -> bool:
    """Whether the batch was finished (committed or failed) by another start of it."""
    return bool(store.get(batch.run_id)) and batch.batch_id not in store.pending(batch.run_id)


def _transform_claimed(
    self: Task, batch: ResolvedBatch, settings: Settings, store: RunStore
) -> dict[str, Any]:
    """The result of transforming a batch whose lease this start holds (poison check
    included)."""
    # The fencing check, this start counted, and trigger -> first Ray task (the run's
    # overhead) marked: one round trip.
    deaths = store.begin_attempt(batch.name, batch.batch_id, run_id=batch.run_id,
                                 mark="first_unit_at")  # fmt: skip
    if deaths is None:
        raise LockLostError(f"run {batch.run_id} was superseded before its transform")
    if deaths >= settings.max_deliveries:
        store.end_attempt(batch.name, batch.batch_id)
        log.error("batch %s: its worker died %d times; quarantining it", batch.batch_id, deaths)
        return poison_result(batch, deaths)
    try:
        return _transform(load_staged(batch), settings, store, hostname=self.request.hostname)
    finally:  # not reached when the worker dies: that start counts as a death
        store.end_attempt(batch.name, batch.batch_id)


def commit_here(
    batch: ResolvedBatch, result: dict[str, Any], hostname: str | None, *,
    defer: Callable[..., Any],
) -> dict[str, Any]:
    """Commit a transformed batch in this task; hand it to ``commit_batch`` if that fails.

    A fencing refusal (LockLostError) fails the batch as it would in ``commit_batch``;
    any other error (a full disk, Redis gone a moment) saves the result beside the staged
    Parquet and goes to ``defer`` (sending ``commit_batch`` with its retries), so the Ray
    work is never done again for it.
    """
    try:
        return _commit(batch, result, hostname)
    except (LockLostError, SchemaConflictError):  # the batch fails, or is read again
        raise
    except Exception as exc:
        log.warning("batch %s: committing it here failed (%s: %s); commit_batch takes over",
                    batch.batch_id, type(exc).__name__, exc)
        Ledger(batch.sink).save_result(batch.batch_id, result)
        defer((batch.message,))
        return {"batch_id": batch.batch_id, "committed": None, "deferred": True}


def _transform(
    batch: ResolvedBatch, settings: Settings, store: RunStore, *, hostname: str | None
) -> dict[str, Any]:
    """The body of :func:`transform_batch` once the batch is known not to be poison."""
    from celeray.ray_env import pipeline_extras
    from ray_jobs.dispatcher import run_units
    from ray_jobs.units import balanced_unit_bytes, plan_units
    from tasks._ray import cluster_cpus, ensure_ray

    ensure_ray()
    readable = batch.readable
    cpus = cluster_cpus()
    plan = plan_with_schema(batch.plan, batch.sink)
    unit_bytes = balanced_unit_bytes(readable, unit_bytes=settings.unit_bytes, cpus=cpus)
    units = [
        {"batch_id": batch.batch_id, "unit": i, "files": files, "out_url": batch.out_url}
        for i, files in enumerate(plan_units(readable, unit_bytes=unit_bytes, plan=batch.plan))
    ]
    # A Delta batch's files go straight into the table: each read (attempt) names them
    # anew, so no attempt rewrites a file a committed version references.
    attempt = uuid.uuid4().hex[:8] if batch.is_delta else None
    done = {"files_done": 0, "rows_in": 0, "rows_out": 0, "bytes_in": 0, "bytes_out": 0}

    def on_result(r: dict[str, Any]) -> None:
        done["files_done"] += r["files_done"]  # a file split into ranges counts once
        for k in ("rows_in", "rows_out", "bytes_in", "bytes_out"):
            done[k] += r[k]
        store.set_batch_progress(batch.run_id, batch.batch_id, done)
        publish_progress(batch.run_id)

    # A batch of one unit has nothing to show before its commit_batch, which counts and
    # publishes the same numbers (and marks progress for the watchdog) a moment later:
    # live progress would cost it four Redis round trips for nothing.
    report = on_result if len(units) > 1 else None

    started = time.perf_counter()
    # The threads pool does not enforce Celery's time limits (celery#9203): the dispatcher
    # keeps this deadline itself, under the visibility timeout, so a batch is stopped
    # before Redis could hand it to a second worker while it still runs.
    deadline = time.monotonic() + settings.task_time_limit * DEADLINE_SHARE
    with _heartbeat(batch) as lost:
        for reads in range(1, MAX_READS + 1):
            try:
                if attempt is not None:
                    units = [{**u, "attempt": f"{attempt}{reads}"} for u in units]
                results = run_units(
                    plan,
                    units,
                    # 0 means twice the CPUs: resolved here from the cached count, since
                    # run_units would ask Ray's GCS for it (~1 ms) on every batch
                    max_in_flight=settings.ray_max_in_flight or 2 * cpus,
                    min_free_memory=settings.min_free_memory,
                    on_result=report,
                    deadline=deadline,
                    runtime_env=pipeline_extras(plan),
                )
            except TimeLimitError as exc:
                raise TimeLimitError(
                    f"batch {batch.batch_id} exceeded the time limit of "
                    f"{settings.task_time_limit}s ({exc}); its files stay uncommitted for "
                    "the next run"
                ) from exc
            result = merge_unit_results(results, list(batch.prequarantined.values()))
            settled = settle(plan, result)
            if settled.reread_with is None:
                break
            if batch.is_delta:  # this read's files are in the table folder, never to commit
                drop_files(batch.sink, [*result["outputs"], *(result.get("rejects") or [])])
            if reads == MAX_READS:
                raise SchemaConflictError(
                    f"batch {batch.batch_id}: its files still disagree on column types after "
                    f"{reads} reads; its files stay uncommitted for the next run"
                )
            log.info("batch %s: its files disagree on column types; reading it again into "
                     "one schema", batch.batch_id)  # fmt: skip
            plan = {**plan, "table_schema": settled.reread_with}
            done.update(files_done=0, rows_in=0, rows_out=0, bytes_in=0, bytes_out=0)
    if lost.is_set():
        raise LockLostError(f"run {batch.run_id} lost its lock while transforming")
    result["schemas"] = settled.to_json()
    # Wall time of the fan-out against the Ray tasks' own time: the per-batch overhead.
    result["timings"] = {
        "transform_s": round(time.perf_counter() - started, 4),
        "units_s": round(sum(r["seconds"] for r in results), 4),
        "units": len(units),
        "nodes": nodes_of(results),
        "transformed_by": hostname,
    }
    return result


def nodes_of(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Ray node id -> its host and how many of the batch's units ran there."""
    nodes: dict[str, dict[str, Any]] = {}
    for r in results:
        if r.get("node"):
            seen = nodes.setdefault(r["node"], {"host": r.get("host"), "units": 0})
            seen["units"] += 1
    return nodes


@app.task(name="tasks.commit_batch", bind=True, base=BatchTask, throws=REFUSALS, **RETRY)
def commit_batch(self: Task, message: Any) -> dict[str, Any]:
    """Commit the batch to the ledger; the last batch of the run finalizes it.

    What is committed is the result the batch's transform saved beside its staged Parquet
    (or, for a batch committed before, its entry). Then the transform's lease on the batch
    (``lease``) is given back. A transform that found its batch finished by another start
    passes that on, and nothing is committed.
    """
    settings = get_settings()
    batch = _resolve(self, message, settings)
    if batch.message.get("finished_before"):
        return {"batch_id": batch.batch_id, "committed": None, "finished_before": True}
    result = Ledger(batch.sink).load_result(batch.batch_id)
    if result is None:
        raise LedgerError(f"batch {batch.batch_id} has no saved result to commit and no "
                          "ledger entry; its files stay uncommitted for the next run")  # fmt: skip
    try:
        out = _commit(batch, result, self.request.hostname)
    except SchemaConflictError as exc:  # read it again, against the schema as it is now
        log.info("batch %s: %s; sending its transform again", batch.batch_id, exc)
        out = {"batch_id": batch.batch_id, "committed": None, "read_again": str(exc)}
        dispatch({k: v for k, v in batch.message.items() if k != "lease"}, batch.pipeline)
    if batch.message.get("lease"):
        run_store().release_batch(batch.name, batch.batch_id, batch.message["lease"])
    return out


def _commit(batch: ResolvedBatch, result: dict[str, Any], hostname: str | None) -> dict[str, Any]:
    """The ledger entry, the count, and the run finalized if this was its last batch."""
    fresh, remaining = runs.commit_result(batch, result, run_store(), committed_by=hostname)
    after_batch(batch.run_id, remaining)
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
