"""A pipeline's backlog: the files its last listing left for later runs, and the next run
that a bounded run starts when it ends.

A run of a pipeline with ``max_files_per_run`` or ``max_bytes_per_run`` records what its
listing left (``backlog_files``, ``backlog_bytes``) with its run state
(:func:`celeray.runs.begin_run`). When it ends well with a backlog, :func:`chain_next`
sends the next run at once, through the same lock as every other trigger
(:func:`celeray.runs.trigger_run`): if beat, the API or a second beat started a run
meanwhile, that run holds the lock, takes the backlog on, and no second run starts. The
decision is :func:`celeray.run_bounds.should_chain`: a failed run starts none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celeray.errors import RunActiveError
from celeray.run_bounds import should_chain
from celeray.runstate import RunStore

__all__ = ["BACKLOG_TRIGGER", "Chain", "backlog_of", "chain_next", "sender"]

log = logging.getLogger(__name__)

BACKLOG_TRIGGER = "backlog"  # the trigger of a run started by the end of the one before
RECENT = 5  # runs looked at for the newest listing: a chained run not yet planned, and more

Chain = Callable[[str], str]  # sends a run of the pipeline; its run id, or RunActiveError


def sender(client: Any, store: RunStore) -> Chain:
    """A :data:`Chain` that reserves and sends a run with ``client`` (a Celery app)."""
    from celeray.runs import trigger_run

    return lambda pipeline: trigger_run(pipeline, store, client, trigger=BACKLOG_TRIGGER)


def chain_next(run_id: str, store: RunStore, chain: Chain | None) -> str | None:
    """After run ``run_id`` ended: send the next run of its pipeline if its listing left a
    backlog (:func:`celeray.run_bounds.should_chain`); return the new run's id.

    Once per run, whoever ends it (its last batch, its watchdog, twice): the run record's
    ``chained`` field is claimed first. A pipeline whose lock another run holds already has
    the run that takes the backlog on; nothing is sent then. A send that fails is logged:
    the schedule takes the backlog on instead.
    """
    if chain is None:
        return None
    record = store.get(run_id) or {}
    if not should_chain(record) or not store.claim_field(run_id, "chained", "1"):
        return None
    pipeline = str(record["pipeline"])
    try:
        next_id = chain(pipeline)
    except RunActiveError as exc:
        log.info("run %s of %s left a backlog; run %s already takes it on", run_id,
                 pipeline, exc.run_id)  # fmt: skip
        return None
    except Exception as exc:  # the broker away: the next scheduled run drains it instead
        log.warning("run %s of %s left %s file(s); sending the next run failed: %s: %s",
                    run_id, pipeline, record.get("backlog_files"), type(exc).__name__, exc)
        return None
    store.set_fields(run_id, chained=next_id)
    log.info("run %s of %s left %s file(s) (%s bytes); run %s takes them on", run_id,
             pipeline, record.get("backlog_files"), record.get("backlog_bytes"), next_id)
    return next_id


def backlog_of(store: RunStore, pipeline: str) -> dict[str, Any] | None:
    """The backlog the pipeline's newest listed run recorded: ``files``, ``bytes``, the
    ``run_id`` that listed it and ``as_of`` (when); None when no recent run listed."""
    for run_id in store.recent(pipeline, RECENT):
        record = store.get(run_id) or {}
        if "backlog_files" in record:
            return {
                "files": int(record.get("backlog_files") or 0),
                "bytes": int(record.get("backlog_bytes") or 0),
                "run_id": run_id,
                "as_of": record.get("started_at"),
            }
    return None
