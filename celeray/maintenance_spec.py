"""A pipeline's ``maintenance``: when its table is compacted and vacuumed, and how.

In the pipeline file either a cron string (the schedule alone)::

    maintenance = "0 3 * * *"

or a table::

    [pipelines.flights.maintenance]
    schedule = "0 3 * * *"        # cron, or a number of seconds; absent: on demand only
    target_file_size = "128MiB"   # compaction packs small files up to about this size
    vacuum_retention = "7d"       # files unreferenced for less than this are kept

The retention is never shorter than the longest task's time limit
(``CELERAY_TASK_TIME_LIMIT``): :func:`effective_retention` raises a shorter one to it and
says so. The pipeline file is checked without the settings, so that floor is applied when
maintenance runs, not when the file is read.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, field_validator

from celeray._pipeline_checks import schedule_value, show_value
from celeray.sizes import parse_size

__all__ = [
    "DEFAULT_TARGET_FILE_SIZE",
    "DEFAULT_VACUUM_RETENTION",
    "Maintenance",
    "effective_retention",
    "format_duration",
    "maintenance_value",
    "parse_duration",
]

# 128 MiB: a file a reader fetches in a few requests and whose row groups still split across
# threads; delta-rs's own default is 100 MB, Spark's optimize writes 128 MiB-1 GiB.
DEFAULT_TARGET_FILE_SIZE = 128 * 1024**2
# A week: Delta's own default (delta.deletedFileRetentionDuration), so time travel reaches a
# week back and a reader that listed the table up to a week ago still finds its files.
DEFAULT_VACUUM_RETENTION = 7 * 24 * 3600.0

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(value: Any) -> float:
    """Seconds from ``"36h"``, ``"7d"``, ``"90m"``, ``"1w"``, ``"30s"`` or a number of hours
    (the unit deltalake's ``vacuum`` takes); ``ValueError`` for anything else or below 0."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {show_value(value)}")
    if isinstance(value, int | float):
        seconds = float(value) * 3600
    elif isinstance(value, str) and (m := _DURATION.match(value.lower())):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(
            f"not a duration: {show_value(value)}; write a number with a unit s, m, h, d or "
            "w (e.g. '7d', '36h'), or a number of hours"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be 0 or more, got {show_value(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest unit that divides it: ``"7d"``, ``"36h"``, ``"90s"``."""
    for unit in ("w", "d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}s"


def effective_retention(requested: float, task_time_limit: float) -> tuple[float, str | None]:
    """The retention to use and, when ``requested`` was raised, why (a message for people).

    A file a batch wrote but has not yet committed is unreferenced until its commit, which
    comes within the task time limit; a vacuum with a shorter retention could delete it.
    """
    if requested >= task_time_limit:
        return requested, None
    return float(task_time_limit), (
        f"vacuum retention {format_duration(requested)} is shorter than the longest task "
        f"time limit (CELERAY_TASK_TIME_LIMIT = {int(task_time_limit)}s): using "
        f"{format_duration(task_time_limit)}, so that no file a running batch is about to "
        "commit can be deleted"
    )


class Maintenance(BaseModel):
    """``[pipelines.NAME.maintenance]``, validated (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schedule: str | float | None = None
    target_file_size: Annotated[int, BeforeValidator(parse_size)] = DEFAULT_TARGET_FILE_SIZE
    vacuum_retention: Annotated[float, BeforeValidator(parse_duration)] = (
        DEFAULT_VACUUM_RETENTION
    )

    @field_validator("schedule", mode="before")
    @classmethod
    def _check_schedule(cls, value: Any) -> Any:
        return schedule_value(value)

    @property
    def schedule_spec(self) -> tuple[str, str | float] | None:
        """``("cron", "0 3 * * *")``, ``("interval", 86400.0)``, or None (on demand only)."""
        if isinstance(self.schedule, str):
            return ("cron", self.schedule)
        if self.schedule is not None:
            return ("interval", float(self.schedule))
        return None


def maintenance_value(value: Any) -> Any:
    """The key as written: a cron string or number (the schedule alone) becomes a table."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return {"schedule": value}
    if value is None or isinstance(value, dict | Maintenance):
        return value
    raise ValueError(
        "maintenance must be a cron string, a number of seconds or a table "
        f"(schedule, target_file_size, vacuum_retention), got {show_value(value)}"
    )
