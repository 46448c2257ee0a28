"""Reconciliation: find listed-but-uncommitted inputs and start runs for them.

Redis restarted without persistence forgets every queued message (PITFALLS), and with them
the batches of the runs that were going; only the ledger still knows what is done. This
pass lists each pipeline's source, subtracts what its ledger holds (committed or
quarantined), and triggers a run wherever something is left and no run holds the lock.
The run itself skips what is done, so a pass is harmless when nothing was lost.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from celeray import storage
from celeray.errors import CelerayError, RunActiveError
from celeray.ledger import Ledger
from celeray.pipelines import Pipeline
from celeray.runs import trigger_run
from celeray.runstate import RunStore

__all__ = ["reconcile", "uncommitted"]

log = logging.getLogger(__name__)


def uncommitted(pipeline: Pipeline) -> list[str]:
    """URLs the pipeline's source lists that its ledger neither committed nor quarantined.

    A file whose content changed after its commit counts as done, as the planner says.
    """
    done = Ledger(pipeline.sink).done_inputs()
    return [f.url for f in storage.list_source(pipeline.source) if f.url not in done]


def reconcile(
    pipelines: Mapping[str, Pipeline], store: RunStore, client: Any
) -> dict[str, dict[str, Any]]:
    """One pass over every pipeline; return, per pipeline, what was found and done.

    Each answer holds ``uncommitted`` (a count) and, when a run was triggered, its
    ``run_id``; ``running`` when a run already holds the lock (it will pick the files up,
    or the next pass will); ``error`` when the source or ledger could not be read.
    """
    report: dict[str, dict[str, Any]] = {}
    for name, pipeline in pipelines.items():
        try:
            left = uncommitted(pipeline)
        except CelerayError as exc:
            log.warning("reconcile %s: %s", name, exc)
            report[name] = {"uncommitted": None, "error": str(exc)}
            continue
        answer: dict[str, Any] = {"uncommitted": len(left)}
        holder = store.holder(name)
        if left and holder:
            answer["running"] = holder
        elif left:
            try:
                answer["run_id"] = trigger_run(name, store, client, trigger="reconcile")
                log.warning(
                    "reconcile %s: %d listed file(s) not committed; started run %s",
                    name, len(left), answer["run_id"],
                )
            except RunActiveError as exc:
                answer["running"] = exc.run_id
        report[name] = answer
    return report
