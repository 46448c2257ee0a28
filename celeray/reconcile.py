"""Reconciliation: restart the work that runs set out to do and did not commit.

Redis restarted without persistence forgets every queued message, and with them
the batches of the runs that were going; only the sink still knows what is done. Each run
records the inputs it planned in its sink's ledger before it sends a batch, and drops the
record when every batch committed (:class:`celeray.ledger.Ledger`). This pass reads those
records, subtracts what the ledger holds (committed or quarantined), and triggers a run
wherever something is left and no run holds the lock. It drops records with nothing left.

Files that only landed are not its business: no run has taken them on, so the pipeline's
schedule, or its user, starts the run that picks them up. A pipeline without a schedule
runs only when asked, and a run a user just triggered is never beaten to its files.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from celeray.errors import CelerayError, RunActiveError
from celeray.ledger import Ledger
from celeray.pipelines import Pipeline
from celeray.runs import trigger_run
from celeray.runstate import RunStore

__all__ = ["left_behind", "reconcile"]

log = logging.getLogger(__name__)


def left_behind(pipeline: Pipeline, *, prune: bool = False) -> list[str]:
    """Inputs that started runs of the pipeline planned and its ledger does not hold as done.

    With ``prune``, the records of started runs whose inputs are all done are dropped.
    Records are read before the ledger's entries, so a run that commits meanwhile is seen
    as done rather than as left behind.
    """
    ledger = Ledger(pipeline.sink)
    started = ledger.started()
    done = ledger.done_inputs()
    left: set[str] = set()
    for record in started:
        open_inputs = [u for u in record.get("inputs", []) if u not in done]
        left.update(open_inputs)
        if prune and not open_inputs:
            ledger.drop_start(str(record["run_id"]))
    return sorted(left)


def reconcile(
    pipelines: Mapping[str, Pipeline], store: RunStore, client: Any
) -> dict[str, dict[str, Any]]:
    """One pass over every pipeline; return, per pipeline, what was found and done.

    Each answer holds ``uncommitted`` (how many inputs started runs left behind) and, when
    a run was triggered, its ``run_id``; ``running`` when a run already holds the lock (it
    will pick the files up, or the next pass will); ``error`` when the ledger could not be
    read.
    """
    report: dict[str, dict[str, Any]] = {}
    for name, pipeline in pipelines.items():
        holder = store.holder(name)
        try:
            left = left_behind(pipeline, prune=not holder)
        except (CelerayError, OSError) as exc:
            log.warning("reconcile %s: %s", name, exc)
            report[name] = {"uncommitted": None, "error": str(exc)}
            continue
        answer: dict[str, Any] = {"uncommitted": len(left)}
        if left and holder:
            answer["running"] = holder
        elif left:
            try:
                answer["run_id"] = trigger_run(name, store, client, trigger="reconcile")
                log.warning(
                    "reconcile %s: %d input(s) that runs started are not committed; "
                    "started run %s", name, len(left), answer["run_id"],
                )  # fmt: skip
            except RunActiveError as exc:
                answer["running"] = exc.run_id
        report[name] = answer
    return report
