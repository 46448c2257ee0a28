"""Beat's schedule from the pipeline file: cron and interval entries, none for on-demand ones."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from celery.schedules import crontab

from beat_schedule import (
    RECONCILE_ENTRY,
    AlignedInterval,
    build_beat_schedule,
    load_beat_schedule,
    slot_of,
)
from celeray.errors import PipelineFileError
from celeray.pipelines import load_pipelines

REPO = Path(__file__).resolve().parent.parent
TEXT = """
[pipelines.every5]
source = "land/a/*.csv"
sink = "lake/a"
schedule = "*/5 * * * *"

[pipelines.weekdays]
source = "land/b/*.csv"
sink = "lake/b"
schedule = "30  2 1,15 */3 mon-fri"

[pipelines.every90]
source = "land/c/*.csv"
sink = "lake/c"
schedule = 90

[pipelines.manual]
source = "land/d/*.csv"
sink = "lake/d"
"""


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "pipelines.toml"
    p.write_text(TEXT)
    return p


def test_one_entry_per_scheduled_pipeline(path: Path) -> None:
    schedule = build_beat_schedule(load_pipelines(path))
    assert sorted(schedule) == ["celeray:every5", "celeray:every90", "celeray:weekdays"]
    for name, entry in schedule.items():
        pipeline = name.removeprefix("celeray:")
        assert entry["task"] == "tasks.start_run"
        assert entry["args"] == (pipeline,)
        assert entry["options"] == {"queue": "io"}
        json.dumps([entry["args"], entry["options"]])


def test_cron_entries_are_crontabs_with_matching_fields(path: Path) -> None:
    schedule = build_beat_schedule(load_pipelines(path))
    every5 = schedule["celeray:every5"]["schedule"]
    assert isinstance(every5, crontab)
    assert every5 == crontab(minute="*/5")
    assert every5.minute == set(range(0, 60, 5)) and every5.hour == set(range(24))

    weekdays = schedule["celeray:weekdays"]["schedule"]
    assert isinstance(weekdays, crontab)
    assert weekdays.minute == {30}
    assert weekdays.hour == {2}
    assert weekdays.day_of_month == {1, 15}
    assert weekdays.month_of_year == {1, 4, 7, 10}
    assert weekdays.day_of_week == {1, 2, 3, 4, 5}


def test_interval_entries_are_epoch_aligned_intervals(path: Path) -> None:
    when = build_beat_schedule(load_pipelines(path))["celeray:every90"]["schedule"]
    assert isinstance(when, AlignedInterval) and when.seconds == 90.0


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def test_aligned_interval_fires_on_multiples_of_its_period() -> None:
    # Two beats that last fired at different moments of the same period are both due at
    # the next multiple of 90 s, and not before.
    for last in (900.0 * 1000 + 1.0, 900.0 * 1000 + 55.5):
        due_before = AlignedInterval(90.0, nowfun=lambda: _at(900.0 * 1000 + 89.0))
        state = due_before.is_due(_at(last))
        assert not state.is_due and abs(state.next - 1.0) < 1e-6
        due_at = AlignedInterval(90.0, nowfun=lambda: _at(900.0 * 1000 + 90.2))
        state = due_at.is_due(_at(last))
        assert state.is_due and abs(state.next - 89.8) < 1e-6


def test_slots_are_period_starts_shared_by_beats_a_moment_apart() -> None:
    every90 = AlignedInterval(90.0)
    assert slot_of(every90, 90_000.2) == slot_of(every90, 90_003.9) == (90_000, 180)
    assert slot_of(every90, 90_090.1)[0] == 90_090
    assert slot_of(AlignedInterval(1.0), 5.7) == (5, 60)  # keys live at least a minute
    assert slot_of(crontab(minute="*/5"), 125.0) == (120, 120)


def test_on_demand_pipelines_are_absent(path: Path) -> None:
    assert "celeray:manual" not in build_beat_schedule(load_pipelines(path))
    assert build_beat_schedule({}) == {}


def test_load_beat_schedule_reads_the_file(path: Path, tmp_path: Path) -> None:
    pipelines = build_beat_schedule(load_pipelines(path)).keys()
    assert load_beat_schedule(path, reconcile_every=0).keys() == pipelines
    with_pass = load_beat_schedule(path, reconcile_every=120)
    assert with_pass.keys() == {*pipelines, RECONCILE_ENTRY}
    assert with_pass[RECONCILE_ENTRY]["task"] == "tasks.reconcile"
    assert with_pass[RECONCILE_ENTRY]["schedule"].seconds == 120
    broken = tmp_path / "broken.toml"
    broken.write_text(TEXT + 'bad = "x"\n')
    with pytest.raises(PipelineFileError):
        load_beat_schedule(broken)


def test_default_path_comes_from_settings(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from celeray.settings import get_settings

    monkeypatch.setenv("CELERAY_PIPELINES", str(path))
    get_settings.cache_clear()
    try:
        assert "celeray:every5" in load_beat_schedule()
    finally:
        get_settings.cache_clear()


def test_module_does_not_import_tasks() -> None:
    code = "import sys, beat_schedule; assert 'tasks' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
