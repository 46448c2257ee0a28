"""The life of one run, as plain functions the Celery tasks call.

Each function takes its connections (a :class:`RunStore`, the Celery result backend as a
:class:`ResultBackend`, settings) as arguments, so it runs the same under a worker, in the
CLI, or in a test without a broker.

A run moves QUEUED -> RUNNING -> SUCCESS | FAILURE. Its id is the id of its ``start_run``
task message. Every batch is finished exactly once (committed, or failed with its error);
the task that finishes the last one finalizes the run and releases the lock.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Protocol

from celeray import delta_actions, delta_schema, delta_snapshot, delta_table, kill_points, storage
from celeray.archive import after_commit_fields, finish_archives
from celeray.backlog import Chain, chain_next
from celeray.batch import ResolvedBatch
from celeray.errors import LedgerError, LockLostError, RunActiveError, RunFailedError
from celeray.ledger import Ledger
from celeray.messages import BatchMessage, input_file
from celeray.pipelines import Pipeline
from celeray.planner import plan_batches
from celeray.run_record import (
    DELTA_VERSION,
    DROPPED,
    FINAL_STATES,
    SCHEMA_CHANGE,
    progress_of,
    summary_of,
)
from celeray.runstate import RunStore
from celeray.schema_log import SchemaLog
from celeray.table_format import DELTA
from celeray.table_format import resolve as resolve_format
from celeray.table_schema import schema_from_json

__all__ = [
    "ResultBackend",
    "abort_run",
    "after_batch",
    "begin_run",
    "commit_result",
    "end_run",
    "fail_batch",
    "final_result",
    "finalize_run",
    "new_run_id",
    "publish_progress",
    "reserve_run",
    "trigger_run",
]

log = logging.getLogger(__name__)


class ResultBackend(Protocol):
    """Where a run's progress and end are stored: the Celery app's result backend."""

    def store_result(self, task_id: str, result: Any, state: str) -> Any: ...


def new_run_id() -> str:
    """A fresh run id (also the id of the run's ``start_run`` message)."""
    return str(uuid.uuid4())


def reserve_run(store: RunStore, pipeline: str, run_id: str, trigger: str) -> None:
    """Take the pipeline's lock for a run about to be sent, or raise RunActiveError.

    The CLI and the API reserve before they send, so they can answer "already running"
    at once; beat sends without reserving and ``start_run`` takes the lock itself.
    """
    holder = store.acquire(pipeline, run_id)
    if holder != run_id:
        raise RunActiveError(pipeline, holder)
    store.create(run_id, pipeline, trigger=trigger)


def trigger_run(pipeline: str, store: RunStore, client: Any, *, trigger: str) -> str:
    """Reserve and send a run of ``pipeline`` (the task beat sends); return its run id.

    Raises RunActiveError, naming the running run, when the pipeline is busy. If sending
    fails the reservation is dropped, so a broker outage leaves no stale lock behind.
    """
    from celeray.celeryconfig import IO_QUEUE, TASK_NAMES

    run_id = new_run_id()
    reserve_run(store, pipeline, run_id, trigger=trigger)
    try:
        client.send_task(
            TASK_NAMES["start_run"],
            args=[pipeline],
            kwargs={"trigger": trigger},
            task_id=run_id,
            queue=IO_QUEUE,
        )
    except Exception:
        store.release(pipeline, run_id)
        raise
    return run_id


def begin_run(run_id: str, pipeline: Pipeline, store: RunStore, *, trigger: str) -> dict[str, Any]:
    """Lock, repair the ledger, list the source, plan batches; return the jobs to send.

    Returns ``{"status": "skipped", "running": id}`` when another run holds the lock,
    ``{"status": "planned", "jobs": [...], ...}`` otherwise (``jobs`` may be empty).
    A redelivered start of a run that was already planned returns its unfinished jobs.
    """
    planned_before = (store.get(run_id) or {}).get("state") == "RUNNING"
    # A new run takes the lock (and fences older runs off); a redelivered start of a run
    # planned before may only keep or take back its own, never one a newer run took.
    locked = (store.hold(pipeline.name, run_id) if planned_before
              else store.acquire(pipeline.name, run_id) == run_id)
    if not locked:
        return {"status": "skipped", "running": store.holder(pipeline.name)}
    store.create(run_id, pipeline.name, trigger=trigger)  # keeps a planned run's state
    if planned_before:
        saved = store.load_jobs(run_id)
        pending = store.pending(run_id)
        return {"status": "planned", "jobs": [saved[b] for b in sorted(pending) if b in saved]}

    # A pipeline file that contradicts what its sink holds fails the run here, by name.
    table_format = resolve_format(pipeline.table_format, pipeline.sink)
    ledger = Ledger(pipeline.sink)
    repaired = ledger.recover()
    if table_format == DELTA:  # entries whose Delta commit a crash left unmade
        repaired["delta_republished"] = delta_table.republish(ledger)
    listed = storage.list_source(pipeline.source)
    entries = ledger.entries()
    done = ledger.done_inputs(entries)
    if pipeline.archive.action != "keep":  # moves a kill (or an error) left unmade
        repaired.update(finish_archives(ledger, listed, entries))
    plan = plan_batches(pipeline.name, listed, done, pipeline.batch_bytes, ledger.replays(),
                        max_files=pipeline.max_files_per_run,
                        max_bytes=pipeline.max_bytes_per_run)  # fmt: skip
    jobs = []
    for b in plan.batches:
        message = BatchMessage(
            pipeline=pipeline.name,
            run_id=run_id,
            batch_id=b.batch_id,
            files=[input_file(f) for f in b.files],
        )
        jobs.append(message)
    if jobs:  # durable before any batch is sent: what reconciliation may restart
        planned = [f["url"] for b in plan.batches for f in b.files]
        ledger.record_start(run_id, pipeline.name, planned)
    store.save_jobs(run_id, jobs)
    store.plan(
        run_id,
        [b.batch_id for b in plan.batches],
        files_total=plan.files_total,
        files_listed=plan.listed,
        files_skipped=plan.already_done,
        changed_after_commit=plan.changed_after_commit,
        listed_bytes=plan.bytes_total,
        backlog_files=plan.backlog_files,
        backlog_bytes=plan.backlog_bytes,
        sink=pipeline.sink,
        source=pipeline.source,
        ledger_repair=repaired,
    )
    return {
        "status": "planned",
        "jobs": jobs,
        "listed": plan.listed,
        "skipped": plan.already_done,
        "backlog_files": plan.backlog_files,
    }


def _check_fence(store: RunStore, batch: ResolvedBatch) -> None:
    if not store.hold(batch.name, batch.run_id):
        raise LockLostError(
            f"run {batch.run_id} of {batch.name!r} lost its lock to run "
            f"{store.holder(batch.name)}; its batch {batch.batch_id} is not committed "
            "and will be picked up by the newer run"
        )


def commit_result(
    batch: ResolvedBatch, result: dict[str, Any], store: RunStore, *,
    committed_by: str | None = None, commit_task: str | None = None,
) -> tuple[bool, int | None]:
    """Write the batch's ledger entry and count it; return (newly committed, remaining).

    ``committed_by`` (the Celery worker's node name) goes into the entry's ``workers``
    beside ``transformed_by`` from the result's timings, and ``commit_task`` (the Celery
    task id) into its ``tasks`` beside ``transform_task``: the batch's task pages in
    Flower. Refuses with LockLostError when a newer run holds the lock (the fencing check).
    ``remaining`` is None when this batch was already counted (a redelivered commit).
    """
    _check_fence(store, batch)
    ledger = Ledger(batch.sink)
    listed = {f["url"]: f for f in batch.message["files"]}
    _check_result(batch, result)
    # The schema first: a crash before the entry leaves a column no row has yet, never a
    # row with a column the schema lacks. SchemaConflictError: read the batch again.
    schemas = result.get("schemas") or {}
    table = None  # a Delta sink's table, loaded once for its check and its commit
    if batch.is_delta:  # TableFormatError: rows a Delta table cannot take (no entry made)
        table = delta_snapshot.newest(batch.sink)
        delta_schema.check_schema(batch.sink, _schema(schemas.get("table")), table)
    version, changes = SchemaLog(batch.sink).record(
        _schema(schemas.get("input")), _schema(schemas.get("table")),
        batch_id=batch.batch_id, run_id=batch.run_id,
    )
    counts = result.get("schema_counts") or {}
    entry = {
        "batch_id": batch.batch_id,
        "pipeline": batch.name,
        "run_id": batch.run_id,
        "inputs": [
            {**{k: listed[f["url"]].get(k) for k in ("size", "mtime", "etag")}, **f}
            for f in result["files"]
        ],
        "quarantined": result["quarantined"],
        "outputs": result["outputs"],
        "rejects": result.get("rejects") or [],
        "schema_version": version.version if version is not None else None,
        "schema_changes": {k: [c.to_json() for c in v] for k, v in changes.items() if v},
        "schema_counts": counts,
        **{k: result[k] for k in ("rows_in", "rows_out", "bytes_in", "bytes_out")},
        "timings": result.get("timings"),
        "workers": {
            "transform": (result.get("timings") or {}).get("transformed_by"),
            "commit": committed_by,
        },
        "tasks": {
            "transform": (result.get("timings") or {}).get("transform_task"),
            "commit": commit_task,
        },
        **after_commit_fields(batch.pipeline),
    }
    if batch.is_delta:  # what the Delta commit after the entry adds (celeray.delta_table)
        partition_by = list(batch.pipeline.partition_by)
        entry.update(table_format=DELTA, delta={"partition_by": partition_by},
                     delta_actions=delta_actions.add_actions(result["outputs"], partition_by))
    fresh, stored = ledger.commit_entry(entry)
    published: dict[str, int] = {}
    if stored.get("table_format") == DELTA:  # the entry as stored: an earlier one if not fresh
        kill_points.reach(kill_points.AFTER_LEDGER_ENTRY, batch.batch_id)  # tests only
        done = delta_table.publish(ledger, stored, table, new_entry=fresh)
        published[f"{DELTA_VERSION}{batch.batch_id}:{done.version}"] = 1
    delta_snapshot.keep(batch.sink, table)  # for the next batch, on whichever thread
    remaining = store.finish_batch(
        batch.run_id,
        batch.batch_id,
        {
            "files_done": len(batch.files),
            "files_committed": len(result["files"]),
            "files_quarantined": len(result["quarantined"]),
            **{k: result[k] for k in ("rows_in", "rows_out", "bytes_in", "bytes_out")},
            **{k: int(counts.get(k) or 0) for k in ("rows_rescued", "rows_skipped",
                                                    "values_rescued")},
            **{f"{DROPPED}{c}": int(n) for c, n in (counts.get("dropped") or {}).items()},
            **{f"{SCHEMA_CHANGE}{k}:{c}": 1 for k, v in changes.items() for c in v},
            **published,
        },
        quarantined=result["quarantined"],
    )
    if batch.needs_staging:
        storage.remove_tree(batch.staging_url)
    return fresh, remaining




def _schema(doc: dict[str, Any] | None) -> Any:
    return schema_from_json(doc) if doc else None


def _check_result(batch: ResolvedBatch, result: dict[str, Any]) -> None:
    """Refuse a result that names inputs outside the batch or outputs outside its folder.

    The result comes from this batch's own Ray tasks (or the record its transform wrote in
    the batch's staging folder); this keeps a ledger entry from ever naming another file.
    """
    urls = {f["url"] for f in batch.message["files"]}
    named = [f["url"] for f in result["files"]] + [q["url"] for q in result["quarantined"]]
    strange = [u for u in named if u not in urls]
    if strange:
        raise LedgerError(f"batch {batch.batch_id}: its result names inputs not in the "
                          f"batch: {strange[:3]}")  # fmt: skip
    for out in [*result["outputs"], *(result.get("rejects") or [])]:
        parts = str(out.get("path", "")).split("/")
        if not out.get("path") or out["path"].startswith("/") or ".." in parts:
            raise LedgerError(f"batch {batch.batch_id}: output path {out.get('path')!r} "
                              "is not inside the sink")  # fmt: skip
    if batch.is_delta:  # data files of a table, never in its _delta_log or _celeray
        for out in result["outputs"]:
            if str(out["path"]).startswith(("_", ".")):
                raise LedgerError(f"batch {batch.batch_id}: data file {out['path']!r} is "
                                  "not a table file")  # fmt: skip


def fail_batch(
    message: BatchMessage, error: str, store: RunStore, backend: ResultBackend | None = None,
    chain: Chain | None = None,
) -> int | None:
    """Count a batch as failed (its inputs stay uncommitted); return batches remaining.

    With a ``backend``, the run is then ended or its progress shown (:func:`after_batch`).
    """
    remaining = store.finish_batch(message["run_id"], message["batch_id"], {}, error=error)
    if backend is not None:
        after_batch(message["run_id"], remaining, store, backend, chain)
    return remaining


def publish_progress(run_id: str, store: RunStore, backend: ResultBackend) -> None:
    """Store the run's aggregated progress as its PROGRESS state, unless it has ended.

    Two batches of a run can end at once (a threads pool runs them side by side): the
    last one may end the run between this call's look at the record and its write, and a
    PROGRESS stored over the final state would stand for good (``celeray run --wait``
    then waits forever). So the run's state is read again after the write, and an ended
    run's final result is stored again: whichever write lands last, it is the final one.
    """
    record = store.get(run_id)
    if not record or record.get("state") in FINAL_STATES:
        return
    backend.store_result(run_id, progress_of(record), "PROGRESS")
    if store.state(run_id) in FINAL_STATES:
        ended = store.get(run_id)
        if ended:
            backend.store_result(run_id, *final_result(ended))


def final_result(record: dict[str, Any]) -> tuple[Any, str]:
    """What the result backend holds for an ended run, as ``(result, state)``: its summary,
    or the :class:`RunFailedError` that says why it failed."""
    summary = summary_of(record)
    if record.get("state") == "SUCCESS":
        return summary, "SUCCESS"
    if record.get("error"):  # ended before or without its batches (aborted, superseded)
        return RunFailedError(str(record["error"])), "FAILURE"
    errors = "; ".join(e["error"] for e in summary["errors"][:3])
    return RunFailedError(
        f"{summary['batches_failed']} of {summary['batches_total']} batch(es) failed; "
        f"their files stay uncommitted for the next run: {errors}"
    ), "FAILURE"


def end_run(
    run_id: str, store: RunStore, backend: ResultBackend, chain: Chain | None = None
) -> None:
    """End the run (:func:`finalize_run`): its summary, or its failure, goes to ``backend``;
    a run that left a backlog sends the next one with ``chain``
    (:func:`celeray.backlog.chain_next`)."""
    record = finalize_run(run_id, store)
    result, state = final_result(record)
    backend.store_result(run_id, result, state)
    log.info("run %s ended %s: %s", run_id, state, {"rows_out": record.get("rows_out", 0)})
    chain_next(run_id, store, chain)


def after_batch(
    run_id: str, remaining: int | None, store: RunStore, backend: ResultBackend,
    chain: Chain | None = None,
) -> None:
    """After a batch finished: end the run if it was the last, else show progress.

    ``remaining`` is None when the batch had been counted before: a redelivered task whose
    first delivery died after counting. If that was the last batch, its death may have come
    before the run was ended, so an unfinished run with nothing pending is ended now
    (ending twice stores the same summary twice).
    """
    if remaining is None:
        record = store.get(run_id)  # None when Redis lost the run: nothing to end
        if record and not store.pending(run_id) and record.get("state") not in FINAL_STATES:
            end_run(run_id, store, backend, chain)
    elif remaining == 0:
        end_run(run_id, store, backend, chain)
    else:
        publish_progress(run_id, store, backend)


def abort_run(run_id: str, pipeline: str, error: str, store: RunStore) -> None:
    """Mark a run that failed before its batches were sent; release its lock."""
    store.create(run_id, pipeline)
    store.end(run_id, pipeline, state="FAILURE", finished_at=time.time(), error=error)


def finalize_run(run_id: str, store: RunStore) -> dict[str, Any]:
    """End a run whose batches are all finished (state set, lock released); its record.

    A run with every batch committed drops its record of started inputs from the ledger; a
    failed one keeps it, so the reconciliation pass retries the files it left.
    """
    record = store.get(run_id) or {"run_id": run_id}
    state = "FAILURE" if record.get("batches_failed") else "SUCCESS"
    finished = time.time()
    pipeline = str(record["pipeline"]) if record.get("pipeline") else None
    if state == "SUCCESS" and record.get("sink"):  # every batch committed: nothing to redo
        Ledger(str(record["sink"])).drop_start(run_id)
    store.end(run_id, pipeline, state=state, finished_at=finished)  # and the lock released
    record.update(state=state, finished_at=finished)
    return record
