"""The tasks of one run, each a few lines over one call into the core.

``start_run`` (io) plans the run (:func:`celeray.runs.begin_run`) and sends one chain per
batch: ``stage_batch`` (io) -> ``transform_batch`` (ray) -> ``commit_batch`` (io).
``stage_batch`` is only sent for batches with files Ray cannot read in place (http, sftp,
...), ``commit_batch`` only for sinks the transform does not commit itself
(:func:`celeray.batch_flow.commits_here`). A batch's tasks each call its
:class:`~celeray.batch_flow.BatchFlow` once; the transform's Ray side is
:func:`tasks._ray.convert`. What stays here is Celery's: task options, refusing a
message, retrying a busy batch, sending chains, the watchdog's countdown.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions
from celery import Task, chain

from celeray import runs
from celeray.backlog import sender
from celeray.batch import ResolvedBatch, resolve
from celeray.batch_flow import BatchFlow, commits_here
from celeray.errors import (
    BatchBusyError,
    MessageRefusedError,
    RayUnavailableError,
    SchemaConflictError,
    TransientIOError,
    UnknownPipelineError,
)
from celeray.messages import BatchMessage, parse_batch, parse_run_id, parse_start
from celeray.pipelines import Pipeline
from celeray.planner import needs_staging
from celeray.run_flow import RunFlow
from celeray.settings import get_settings
from tasks._ray import convert, ensure_ray
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
RETRY = {
    "autoretry_for": TRANSIENT,
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 5,
}
BUSY_RETRY_SECONDS = 5  # how often a second start of a batch looks whether the first ended


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
        flow(self).fail(message, f"{type(exc).__name__}: {exc}")


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


def flow(task: Task) -> BatchFlow:
    """The core's batch flow for a task of this worker: its stores, backend and Ray side."""
    store = run_store()
    return BatchFlow(store, get_settings(), app.backend, convert=convert, connect=ensure_ray,
                     hostname=task.request.hostname, task_id=task.request.id,
                     chain=sender(app, store))  # fmt: skip


def run_flow() -> RunFlow:
    """The core's run flow for this worker: its store, settings and result backend."""
    store = run_store()
    return RunFlow(store, get_settings(), app.backend, chain=sender(app, store))


def _resolve(task: Task, raw: Any) -> ResolvedBatch:
    """The batch a received message names, checked against this worker's pipeline file."""
    try:
        return resolve(raw, get_settings())
    except MessageRefusedError as exc:
        raise refused(task.name, task.request.id, exc) from None


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
    try:
        started = run_flow().start(run_id, pipeline, trigger=trigger, slot=slot,
                                   slot_ttl=slot_ttl)  # fmt: skip
    except UnknownPipelineError as exc:
        log.error("refused %s message %s: %s (in %s)", self.name, run_id, exc,
                  get_settings().pipelines)  # fmt: skip
        raise
    if started.jobs and started.pipeline is not None:
        # The watchdog first: its send (and the io worker taking its countdown message)
        # costs CPU that would otherwise compete with the first batch's Ray task; and a
        # start that dies while sending the batches leaves a watchdog to resend them (the
        # jobs are saved).
        watch_run.apply_async((run_id,), countdown=watch_interval())
        for job in started.jobs:
            dispatch(job, started.pipeline)
    return started.answer


def dispatch(message: BatchMessage | dict[str, Any], pipeline: Pipeline) -> None:
    """Send the chain of one batch of ``pipeline``: stage (only if something must be
    copied), transform, commit (only for sinks :func:`commits_here` leaves to
    ``commit_batch``).

    The chain's shape is all that is decided here; each task checks the message itself
    when it arrives (a resent one comes from the broker), so it is not resolved here too.
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
    """Resend the batches of a run that has gone silent; end one that was left unended.

    Celery on Redis loses a message whose worker dies after taking it off the queue and
    before recording it as unacknowledged (seen in the SIGKILL test: one transform in 18
    never came back). Nothing then finishes the run. This watchdog looks every
    :func:`watch_interval` seconds: when no batch of the run has progressed for a whole
    visibility timeout (longer than any task may run), the pending batches are sent
    again; batch ids, output names and the once-only finish make a duplicate harmless.
    It stops when the run has ended. On RabbitMQ, which loses no message this way, it
    stays on: as harmless, and a purged or dropped message is still sent again.
    """
    try:
        parse_run_id(run_id)
    except MessageRefusedError as exc:
        raise refused(self.name, self.request.id, exc) from None
    if run_flow().watch(run_id, resend=dispatch):
        watch_run.apply_async((run_id,), countdown=watch_interval())


@app.task(name="tasks.stage_batch", bind=True, base=BatchTask, throws=REFUSALS, **RETRY)
def stage_batch(self: Task, message: Any) -> BatchMessage:
    """Copy what Ray cannot read in place into staging; quarantine files over the size cap."""
    return flow(self).stage(_resolve(self, message))


@app.task(name="tasks.transform_batch", bind=True, base=BatchTask, throws=REFUSALS, **RETRY)
def transform_batch(self: Task, message: Any) -> dict[str, Any]:
    """Convert the batch on Ray; commit it here (a local sink) or pass it to ``commit_batch``.

    See :meth:`celeray.batch_flow.BatchFlow.transform`: lease, poison check (a batch whose
    starts died more than ``CELERAY_MAX_DELIVERIES`` times is quarantined), convert, commit
    or hand on with this start's lease, release. A batch another start holds is retried
    here every :data:`BUSY_RETRY_SECONDS`, with no retry limit, until that start ends.
    """
    batch = _resolve(self, message)
    try:
        return flow(self).transform(batch, retried=bool(self.request.retries),
                                    defer=commit_batch.apply_async)  # fmt: skip
    except BatchBusyError as exc:  # not a failure: it waits until the other start ends
        # Task.retry reads max_retries=None as the task's own limit (RETRY's 5: 25 s), not
        # as none; one more than done so far never runs out. Seen on RabbitMQ with a 40 s
        # time limit: a start waiting out a lease (held up to the time limit) failed.
        raise self.retry(exc=exc, countdown=BUSY_RETRY_SECONDS,
                         max_retries=self.request.retries + 1) from None


@app.task(name="tasks.commit_batch", bind=True, base=BatchTask, throws=REFUSALS, **RETRY)
def commit_batch(self: Task, message: Any) -> dict[str, Any]:
    """Commit the result the batch's transform saved, give its lease back; the last batch
    of the run ends it (:meth:`celeray.batch_flow.BatchFlow.commit_saved`)."""
    batch = _resolve(self, message)
    return flow(self).commit_saved(batch, resend=lambda m: dispatch(m, batch.pipeline))
