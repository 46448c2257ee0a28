"""The Celery app of celeray's workers, beat and Flower, configured from settings.

Importing it loads the signing key (:mod:`celeray.signing`) and fails, saying which file
and setting, when it is missing; Flower's process sets ``CELERAY_MONITOR_ONLY`` instead.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery
from celery.beat import PersistentScheduler

from celeray.celeryconfig import CONTROL_CLS, celery_config
from celeray.runstate import RunStore
from celeray.settings import get_settings
from celeray.signing import configure as configure_signing

__all__ = ["PipelineScheduler", "app", "run_store"]

log = logging.getLogger(__name__)


class PipelineScheduler(PersistentScheduler):
    """Beat's scheduler, with the schedule read from the pipeline file when beat starts.

    Reading it here, not at import, keeps a broken pipeline file from stopping workers,
    while beat itself refuses to start on one and says why.
    """

    def setup_schedule(self) -> None:
        from beat_schedule import load_beat_schedule

        path = get_settings().pipelines
        self.app.conf.beat_schedule = load_beat_schedule(path)
        log.info("beat: %d scheduled pipeline(s) from %s", len(self.app.conf.beat_schedule), path)
        super().setup_schedule()

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any):
        """Send a due entry; celeray's entries carry the slot they are for (see
        :func:`beat_schedule.slot_of`), so a second beat's send of the same slot is skipped."""
        from beat_schedule import ENTRY_PREFIX, slot_of

        if entry.name.startswith(ENTRY_PREFIX):
            slot, ttl = slot_of(entry.schedule, time.time())
            entry.kwargs = {**(entry.kwargs or {}), "slot": slot, "slot_ttl": ttl}
        return super().apply_async(entry, producer, advance, **kwargs)


def _make_app() -> Celery:
    settings = get_settings()
    celery = Celery("celeray", control=CONTROL_CLS)
    conf: dict[str, Any] = celery_config(settings)
    conf["beat_scheduler"] = "tasks.app:PipelineScheduler"
    # Each stack keeps its own beat state, so two stacks on one machine do not mix.
    conf["beat_schedule_filename"] = str(settings.home / "beat-schedule")
    celery.conf.update(conf)
    # Workers accept only signed task messages; workers and beat sign what they send. No key
    # here stops the import (so the worker or beat) with what is missing, unless this is a
    # monitor (CELERAY_MONITOR_ONLY, Flower), which holds no key and can make no worker act.
    configure_signing(celery, settings)
    return celery


app = _make_app()

_store: RunStore | None = None


def run_store() -> RunStore:
    """This process's RunStore, connected on first use."""
    global _store
    if _store is None:
        _store = RunStore.from_settings(get_settings())
    return _store
