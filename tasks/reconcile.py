"""``tasks.reconcile``: beat's periodic pass that restarts what started runs left uncommitted.

The logic lives in :mod:`celeray.reconcile`; this task gives it the worker's connections.
"""

from __future__ import annotations

from typing import Any

from celeray.pipelines import current_pipelines
from celeray.reconcile import reconcile as reconcile_pass
from celeray.settings import get_settings
from tasks.app import app, run_store

__all__ = ["reconcile"]


@app.task(
    name="tasks.reconcile",
    ignore_result=False,  # Flower and the tests read the report
    acks_late=False,  # a lost pass is made up by the next one
    expires=60,  # a pass nobody ran within a minute is dropped, not run late
)
def reconcile() -> dict[str, dict[str, Any]]:
    """Trigger a run for each pipeline whose started runs left inputs uncommitted."""
    settings = get_settings()
    pipelines = current_pipelines(settings.pipelines, **settings.pipeline_rules())
    return reconcile_pass(pipelines, run_store(), app)
