"""Celery beat's ``beat_schedule``, built from the pipeline file.

One entry per pipeline with a ``schedule``; on-demand pipelines get none. Each entry sends
``tasks.start_run`` by name to the ``io`` queue, so this module imports nothing from the
``tasks`` package (which imports it). Cron schedules run in the Celery app's timezone.
Beat reads the schedule when it starts: edit the file, then restart beat.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from celery.schedules import crontab

from celeray.pipelines import Pipeline, load_pipelines

__all__ = [
    "ENTRY_PREFIX",
    "START_RUN_QUEUE",
    "START_RUN_TASK",
    "build_beat_schedule",
    "load_beat_schedule",
]

ENTRY_PREFIX = "celeray:"  # beat entry names; keeps ours apart from any others in the app
START_RUN_TASK = "tasks.start_run"
START_RUN_QUEUE = "io"


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

    Cron schedules become ``crontab`` objects, intervals a float of seconds; the only
    argument is the pipeline's name, so messages stay small and JSON-serializable.
    """
    schedule: dict[str, dict[str, Any]] = {}
    for name in sorted(pipelines):
        spec = pipelines[name].schedule_spec
        if spec is None:
            continue
        when: crontab | float = _crontab(spec[1]) if spec[0] == "cron" else float(spec[1])
        schedule[f"{ENTRY_PREFIX}{name}"] = {
            "task": START_RUN_TASK,
            "schedule": when,
            "args": (name,),
            "options": {"queue": START_RUN_QUEUE},
        }
    return schedule


def load_beat_schedule(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The beat schedule of the pipeline file at ``path`` (default: ``CELERAY_PIPELINES``).

    The file is checked with the rules of settings (chained URLs, local roots). Raises
    :class:`celeray.errors.PipelineFileError` listing every issue, so beat refuses to
    start on a broken file instead of silently scheduling part of it.
    """
    from celeray.settings import get_settings

    settings = get_settings()
    path = Path(path) if path is not None else settings.pipelines
    return build_beat_schedule(load_pipelines(path, **settings.pipeline_rules(path)))
