"""``tasks.compact``, ``tasks.vacuum``, ``tasks.maintain``: table maintenance on the Ray cluster.

They run on the ``ray`` queue, whose worker (threads pool) is the process connected to Ray,
and each is one call into the core (:class:`celeray.maintenance_flow.MaintenanceFlow`: the
message's checks, the table's lock, pending Delta batches, the commit) with the Ray side
as one function (:func:`tasks._ray.maintain_on_ray`: the work as Ray tasks with the
pipeline's ``runtime_env``): the io workers only list and commit. Why Ray tasks and not a
Ray Job: docs/operations.md, "Maintenance". Beat sends ``tasks.maintain`` on a pipeline's
``maintenance`` schedule (compaction, then vacuum, under one hold of the table's lock); a
slot claimed by another beat's send is skipped.
"""

from __future__ import annotations

from typing import Any

from celeray.celeryconfig import RAY_QUEUE
from celeray.maintenance_flow import MaintenanceFlow
from celeray.settings import get_settings
from tasks._ray import maintain_on_ray
from tasks.app import app, run_store

__all__ = ["compact", "flow", "maintain", "vacuum"]


def flow() -> MaintenanceFlow:
    """The core's maintenance flow for this worker: its store, settings and Ray side."""
    return MaintenanceFlow(run_store(), get_settings(), maintain_on_ray)


_TASK = {
    "queue": RAY_QUEUE,
    "ignore_result": False,  # the CLI waits for the report
    "acks_late": False,  # a maintenance lost with its worker is simply asked for again
}


@app.task(name="tasks.compact", **_TASK)
def compact(name: Any, target_size: Any = None) -> dict[str, Any]:
    """Compact pipeline ``name``'s table now (``celeray compact NAME``)."""
    return flow().compact(name, target_size)


@app.task(name="tasks.vacuum", **_TASK)
def vacuum(name: Any, retention: Any = None) -> dict[str, Any]:
    """Vacuum pipeline ``name``'s table now (``celeray vacuum NAME``)."""
    return flow().vacuum(name, retention)


@app.task(name="tasks.maintain", bind=True, **_TASK)
def maintain(self: Any, name: Any, slot: Any = None, slot_ttl: Any = 3600) -> dict[str, Any]:
    """Beat's maintenance of pipeline ``name``: compaction, then vacuum, under one hold of
    the table's lock. A slot another beat's send claimed first is skipped."""
    return flow().maintain(name, slot, slot_ttl, str(self.request.id or f"maintain-{slot}"))
