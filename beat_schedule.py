"""Celery beat's ``beat_schedule``, built from the pipeline file.

One entry per pipeline with a ``schedule``; on-demand pipelines get none. Each entry sends
``tasks.start_run`` by name to the ``io`` queue, so this module imports nothing from the
``tasks`` package (which imports it). A pipeline with a ``maintenance`` schedule also gets
an entry ``celeray:maint:NAME`` that sends ``tasks.maintain`` (compaction, then vacuum) to
the ``ray`` queue. Cron schedules run in the Celery app's timezone.
Beat reads the schedule when it starts: edit the file, then restart beat.

Beat has no lock, so two beats schedule twice. Every send therefore carries its
*slot*: the start of the schedule period it is for. Intervals are aligned to the epoch
(every 300 s fires at :00, :05, ...) and cron fires on whole minutes, so two beats compute
the same slot, and ``start_run`` runs only the first message of each slot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from celery.schedules import crontab, schedstate, schedule

from celeray.pipelines import Pipeline, load_pipelines

__all__ = [
    "ENTRY_PREFIX",
    "MAINTAIN_PREFIX",
    "RECONCILE_ENTRY",
    "START_RUN_QUEUE",
    "START_RUN_TASK",
    "AlignedInterval",
    "build_beat_schedule",
    "load_beat_schedule",
    "slot_of",
]

ENTRY_PREFIX = "celeray:"  # beat entry names; keeps ours apart from any others in the app
START_RUN_TASK = "tasks.start_run"
START_RUN_QUEUE = "io"
MAINTAIN_TASK = "tasks.maintain"
MAINTAIN_QUEUE = "ray"  # its worker is the one connected to Ray
MAINTAIN_PREFIX = ENTRY_PREFIX + "maint:"  # pipeline names have no ":", so never a clash


MIN_SLOT_TTL = 60  # seconds a slot key lives at least: far beyond two beats' clock skew


class AlignedInterval(schedule):
    """Every ``seconds``, on multiples of ``seconds`` since the epoch.

    Celery's plain interval counts from when each beat started, so two beats would fire
    at different moments and in different slots; aligned, they fire in the same one.
    """

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        last = self.maybe_make_aware(last_run_at).timestamp()
        now = self.maybe_make_aware(self.now()).timestamp()
        step = self.seconds
        next_at = (math.floor(last / step) + 1) * step
        return timedelta(seconds=max(next_at - now, 0.0))

    def is_due(self, last_run_at: datetime) -> schedstate:
        remaining = self.remaining_estimate(last_run_at).total_seconds()
        if remaining > 0:
            return schedstate(is_due=False, next=remaining)
        now = self.maybe_make_aware(self.now()).timestamp()
        step = self.seconds
        return schedstate(is_due=True, next=(math.floor(now / step) + 1) * step - now)

    def __reduce__(self) -> Any:
        return self.__class__, (self.run_every, self.relative, self.nowfun)


def slot_of(when: Any, now: float) -> tuple[int, int]:
    """The slot (epoch seconds of its period's start) a send at ``now`` is for, and the
    seconds its key should live: two periods, at least :data:`MIN_SLOT_TTL`."""
    step = max(1, int(when.seconds)) if isinstance(when, schedule) else 60  # cron: minutes
    return int(now // step) * step, max(MIN_SLOT_TTL, 2 * step)


def _crontab(spec: str) -> crontab:
    minute, hour, day_of_month, month_of_year, day_of_week = spec.split()
    # By keyword: crontab's positional order is minute, hour, day_of_week, day_of_month, ...
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
    )


def build_beat_schedule(pipelines: Mapping[str, Pipeline]) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule`` mapping, keyed ``celeray:NAME``, in name order.

    Cron schedules become ``crontab`` objects, intervals :class:`AlignedInterval`; the
    only argument is the pipeline's name (beat adds the slot when it sends), so messages
    stay small and JSON-serializable.
    """
    schedule: dict[str, dict[str, Any]] = {}
    for name in sorted(pipelines):
        spec = pipelines[name].schedule_spec
        if spec is not None:
            schedule[f"{ENTRY_PREFIX}{name}"] = {
                "task": START_RUN_TASK,
                "schedule": _when(spec),
                "args": (name,),
                "options": {"queue": START_RUN_QUEUE},
            }
        maint = pipelines[name].maintenance.schedule_spec
        if maint is not None:
            schedule[f"{MAINTAIN_PREFIX}{name}"] = {
                "task": MAINTAIN_TASK,
                "schedule": _when(maint),
                "args": (name,),
                "options": {"queue": MAINTAIN_QUEUE},
            }
    return schedule


def _when(spec: tuple[str, Any]) -> crontab | AlignedInterval:
    return _crontab(str(spec[1])) if spec[0] == "cron" else AlignedInterval(float(spec[1]))


RECONCILE_ENTRY = "celeray-reconcile"
RECONCILE_TASK = "tasks.reconcile"


def load_beat_schedule(
    path: str | Path | None = None, *, reconcile_every: float | None = None
) -> dict[str, dict[str, Any]]:
    """The beat schedule of the pipeline file at ``path`` (default: ``CELERAY_PIPELINES``),
    plus the reconciliation pass every ``reconcile_every`` seconds (0: none; default
    ``CELERAY_RECONCILE_INTERVAL``).

    The file is checked with the rules of settings (chained URLs, local roots). Raises
    :class:`celeray.errors.PipelineFileError` listing every issue, so beat refuses to
    start on a broken file instead of silently scheduling part of it.
    """
    from celeray.settings import get_settings

    settings = get_settings()
    path = Path(path) if path is not None else settings.pipelines
    if reconcile_every is None:
        reconcile_every = settings.reconcile_interval
    schedule = build_beat_schedule(load_pipelines(path, **settings.pipeline_rules(path)))
    if reconcile_every:
        schedule[RECONCILE_ENTRY] = {
            "task": RECONCILE_TASK,
            "schedule": AlignedInterval(float(reconcile_every)),
            "options": {"queue": START_RUN_QUEUE, "expires": 60},
        }
    return schedule
