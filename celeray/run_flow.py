"""A run's way through the workers: its start and its watchdog, one call each.

``start_run`` calls :meth:`RunFlow.start` and sends the chains of the batches it returns;
``watch_run`` calls :meth:`RunFlow.watch` and looks again later while it says so. Sending
(a chain per batch, the watchdog's countdown) is Celery's and stays in ``tasks``; it is
given here as the ``resend`` callable. The run record's own steps are in
:mod:`celeray.runs`; each batch's in :mod:`celeray.batch_flow`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celeray import run_record, runs
from celeray.backlog import Chain
from celeray.errors import RunFailedError, UnknownPipelineError
from celeray.messages import BatchMessage
from celeray.pipelines import Pipeline, current_pipelines, get_pipeline
from celeray.runstate import RunStore
from celeray.settings import Settings

__all__ = ["RunFlow", "Started"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Started:
    """What :meth:`RunFlow.start` did: the task's answer, and the batches to send."""

    answer: dict[str, Any]
    pipeline: Pipeline | None = None
    jobs: list[BatchMessage] = field(default_factory=list)


@dataclass(frozen=True)
class RunFlow:
    """What a worker needs to start and watch runs: its store, settings and backend."""

    store: RunStore
    settings: Settings
    backend: runs.ResultBackend
    chain: Chain | None = None  # sends the next run when a run ends with a backlog

    def pipeline(self, name: str) -> Pipeline:
        """The pipeline called ``name`` in this worker's file (UnknownPipelineError)."""
        s = self.settings
        return get_pipeline(current_pipelines(s.pipelines, **s.pipeline_rules()), name)

    def start(
        self, run_id: str, pipeline: str, *, trigger: str, slot: int | None, slot_ttl: int
    ) -> Started:
        """Plan the run (:func:`celeray.runs.begin_run`); return the batches to send.

        Skipped when ``slot`` (beat's schedule period) was claimed by another run (nothing
        stored: nobody waits on a beat's run id), or when another run holds the pipeline's
        lock (the skip is the run's result). A run with nothing to do ends at once; another
        shows its first progress. Raises UnknownPipelineError for a pipeline not in this
        worker's file.
        """
        store = self.store
        if slot is not None and not store.claim_slot(pipeline, slot, run_id, slot_ttl):
            log.info("run %s of %s skipped: slot %s was sent by another beat", run_id,
                     pipeline, slot)  # fmt: skip
            return Started({"status": "skipped", "duplicate_slot": slot})
        spec = self.pipeline(pipeline)
        out = runs.begin_run(run_id, spec, store, trigger=trigger)
        if out["status"] == "skipped":
            log.info("run %s of %s skipped: run %s holds the lock", run_id, pipeline,
                     out["running"])  # fmt: skip
            self.backend.store_result(
                run_id, {"status": "skipped", "running": out["running"]}, "SUCCESS"
            )
            return Started(out)
        if slot is not None:
            store.set_fields(run_id, slot=slot)  # which schedule period this run is for
        jobs = out.pop("jobs")
        if not jobs:
            runs.end_run(run_id, store, self.backend)
            return Started({**out, "batches": 0})
        runs.publish_progress(run_id, store, self.backend)
        return Started({**out, "batches": len(jobs)}, spec, jobs)

    def watch(
        self, run_id: str, *, resend: Callable[[dict[str, Any], Pipeline], None]
    ) -> bool:
        """Look at a run once; return whether to look again later.

        An ended run is left alone. A run a newer one superseded fails (the newer one takes
        over its files). A run with no batch pending that was never ended is ended. A live
        run's lock is held for it (its batches waiting in a busy queue renew nothing), and
        when none of its batches progressed for a whole visibility timeout (longer than any
        task may run), its pending batches go to ``resend`` again.
        """
        store = self.store
        record = store.get(run_id)
        if not record or record.get("state") in run_record.FINAL_STATES:
            return False
        name = str(record.get("pipeline"))
        newer = store.superseded(name, run_id)
        if newer:  # a newer run holds the pipeline now and commits what this one left
            reason = f"superseded by run {newer}, which takes over its uncommitted files"
            runs.abort_run(run_id, name, reason, store)
            self.backend.store_result(run_id, RunFailedError(reason), "FAILURE")
            log.warning("run %s: %s", run_id, reason)
            return False
        pending = store.pending(run_id)
        if not pending:
            runs.after_batch(run_id, None, store, self.backend, self.chain)
            return False
        # Without this, the lock of a live run whose batches wait in a long queue would
        # expire and a new run (beat's, the reconciliation's) would supersede it, again and
        # again while the queue stays long.
        store.hold(name, run_id)
        silent = time.time() - float(record.get("progress_at") or record.get("started_at") or 0)
        if silent > self.settings.effective_visibility_timeout:
            jobs = store.load_jobs(run_id)
            log.warning("run %s: silent for %.0fs; resending %d batch(es)", run_id, silent,
                        len(pending))  # fmt: skip
            pipeline = self._resendable(name)
            for batch_id in sorted(pending):
                if batch_id in jobs and pipeline is not None:
                    resend(jobs[batch_id], pipeline)
            store.touch_progress(run_id)
        return True

    def _resendable(self, name: str) -> Pipeline | None:
        """The pipeline called ``name``; None (logged) when it is gone from the file."""
        try:
            return self.pipeline(name)
        except UnknownPipelineError as exc:
            log.error("cannot resend batches: %s (in %s)", exc, self.settings.pipelines)
            return None
