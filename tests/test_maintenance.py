"""Maintenance decisions (pure), the pipeline key, beat's entries, the lock on real Redis."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from beat_schedule import MAINTAIN_PREFIX, build_beat_schedule
from celeray.compaction import FULL_ENOUGH, compaction_id_for, output_path, plan_groups
from celeray.errors import LockLostError, MaintenanceBusyError
from celeray.maintenance import MaintenanceLock, retention_hours, retention_of
from celeray.maintenance_spec import (
    DEFAULT_TARGET_FILE_SIZE,
    DEFAULT_VACUUM_RETENTION,
    effective_retention,
    format_duration,
    parse_duration,
)
from celeray.pipeline_spec import Pipeline
from tests._stack import unit_store

MiB = 1024**2


def f(path: str, size: int, rows: int = 10) -> dict[str, Any]:
    return {"path": path, "bytes": size, "rows": rows}


def pipeline(**extra: Any) -> Pipeline:
    return Pipeline.model_validate({"name": "p", "source": "/srv/in/*.csv", "sink": "/srv/lake",
                                    **extra})  # fmt: skip


# -- which files are compacted, into which groups ------------------------------------------


@pytest.mark.parametrize(
    ("files", "target", "groups"),
    [
        ([], 10 * MiB, []),
        # one small file: nothing to gain
        ([f("k=1/a", MiB)], 10 * MiB, []),
        # small files of one partition, in path order, packed up to the target
        ([f("k=1/c", 4 * MiB), f("k=1/a", 4 * MiB), f("k=1/b", 4 * MiB), f("k=1/d", 4 * MiB)],
         10 * MiB, [["k=1/a", "k=1/b"], ["k=1/c", "k=1/d"]]),
        # partitions never mix; a lone file left in a partition stays
        ([f("k=1/a", MiB), f("k=2/a", MiB), f("k=1/b", MiB)], 10 * MiB, [["k=1/a", "k=1/b"]]),
        # files already near the target are left alone
        ([f("k=1/a", int(FULL_ENOUGH * 10 * MiB)), f("k=1/b", MiB), f("k=1/c", MiB)], 10 * MiB,
         [["k=1/b", "k=1/c"]]),
        # a group never passes the target, and the one left over alone is no group
        ([f("x/a", 6 * MiB), f("x/b", 6 * MiB), f("x/c", 6 * MiB)], 10 * MiB, []),
        # unpartitioned sinks: files at the top
        ([f("part-1.parquet", 10), f("part-2.parquet", 10)], MiB,
         [["part-1.parquet", "part-2.parquet"]]),
        # many tiny files into one
        ([f(f"k=1/{i:03d}", 1000) for i in range(100)], MiB,
         [[f"k=1/{i:03d}" for i in range(100)]]),
    ],
)
def test_plan_groups(files: list[dict[str, Any]], target: int, groups: list[list[str]]) -> None:
    planned = plan_groups(files, target)
    assert [[x["path"] for x in g] for g in planned] == groups
    for g in planned:
        assert sum(x["bytes"] for x in g) <= target


def test_plan_groups_reaches_the_target_count() -> None:
    """Files per partition drop to what the target implies (one more at most)."""
    files = [f(f"k={k}/{i:04d}", 100_000) for k in range(3) for i in range(500)]
    groups = plan_groups(files, 10 * 1000**2)
    for k in range(3):
        mine = [g for g in groups if g[0]["path"].startswith(f"k={k}/")]
        assert len(mine) == 5  # 50 MB of files in groups of up to 10 MB
        assert sum(len(g) for g in mine) == 500


def test_compaction_ids_and_names_derive_from_the_replaced_files() -> None:
    g1 = [[f("k=1/b", 1), f("k=1/a", 1)]]
    g2 = [[f("k=1/a", 1), f("k=1/b", 1)]]
    assert compaction_id_for(g1) == compaction_id_for(g2)
    assert compaction_id_for(g1) != compaction_id_for([[f("k=1/a", 1), f("k=1/c", 1)]])
    cid = compaction_id_for(g1)
    assert output_path(g1[0], cid, 0) == f"k=1/part-c{cid}-00000.parquet"
    assert output_path([f("part-1.parquet", 1)], cid, 3) == f"part-c{cid}-00003.parquet"


# -- retention -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("7d", 7 * 86400), ("36h", 36 * 3600), ("90m", 5400), ("30s", 30), ("1w", 604800),
    (168, 168 * 3600), (0.5, 1800), ("0h", 0),
])  # fmt: skip
def test_parse_duration(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["7", "7 days", "-1h", -2, True, "h", None])
def test_parse_duration_refuses(bad: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_retention_never_below_the_task_time_limit() -> None:
    assert effective_retention(7200, 1800) == (7200, None)
    assert effective_retention(1800, 1800) == (1800, None)
    seconds, why = effective_retention(600, 1800)
    assert seconds == 1800
    assert why is not None and "10m" in why and "CELERAY_TASK_TIME_LIMIT = 1800s" in why
    assert format_duration(1800) == "30m" and format_duration(86400 * 7) == "1w"


def test_retention_of_a_pipeline_in_whole_hours() -> None:
    p = pipeline(maintenance={"vacuum_retention": "30m"})
    seconds, notes = retention_of(p, task_time_limit=5400)
    assert seconds == 5400
    assert len(notes) == 2 and "shorter than" in notes[0] and "kept as 2h" in notes[1]
    assert retention_of(p, task_time_limit=60, requested=7200) == (7200, [])
    assert retention_hours(5400) == 2 and retention_hours(3600) == 1 and retention_hours(0) == 0


# -- the pipeline key ----------------------------------------------------------------------


def test_maintenance_key_forms() -> None:
    m = pipeline().maintenance
    assert (m.schedule, m.target_file_size, m.vacuum_retention) == (
        None, DEFAULT_TARGET_FILE_SIZE, DEFAULT_VACUUM_RETENTION)
    m = pipeline(maintenance="0  3 * * *").maintenance
    assert m.schedule_spec == ("cron", "0 3 * * *")
    m = pipeline(maintenance=86400).maintenance
    assert m.schedule_spec == ("interval", 86400.0)
    m = pipeline(maintenance={"schedule": "*/30 * * * *", "target_file_size": "64MiB",
                              "vacuum_retention": "2d"}).maintenance  # fmt: skip
    assert (m.target_file_size, m.vacuum_retention) == (64 * MiB, 2 * 86400)


@pytest.mark.parametrize(("value", "message"), [
    ("0 3 * *", "expected 5 fields"),
    ("61 * * * *", "minute field"),
    ({"schedule": 0}, "greater than 0"),
    ({"target_file_size": "big"}, "not a size"),
    ({"vacuum_retention": "a week"}, "not a duration"),
    ({"retention": "7d"}, "Extra inputs"),
    ([1], "maintenance must be"),
])  # fmt: skip
def test_maintenance_key_refused(value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        pipeline(maintenance=value)


def test_beat_schedules_maintenance_on_the_ray_queue() -> None:
    pipelines = {"a": pipeline(maintenance="0 3 * * *"), "b": pipeline(schedule=60)}
    schedule = build_beat_schedule(pipelines)
    assert set(schedule) == {f"{MAINTAIN_PREFIX}a", "celeray:b"}
    entry = schedule[f"{MAINTAIN_PREFIX}a"]
    assert entry["task"] == "tasks.maintain" and entry["args"] == ("a",)
    assert entry["options"] == {"queue": "ray"}


# -- never two at once: the lock on real Redis ---------------------------------------------


def test_lock_one_holder_per_sink() -> None:
    with unit_store(lock_ttl=30) as store:
        lock = MaintenanceLock(store.r, ttl=30)
        token = lock.acquire("file:///lake/t", "compact")
        assert token is not None
        assert lock.acquire("file:///lake/t/", "vacuum") is None  # the same table
        assert lock.acquire("file:///lake/u", "vacuum") is not None  # another table
        lock.release("file:///lake/t", "not the token")
        assert lock.holder("file:///lake/t") == token
        lock.release("file:///lake/t", token)
        assert lock.holder("file:///lake/t") is None


def test_lock_held_refuses_a_second_and_notices_loss() -> None:
    with unit_store(lock_ttl=30) as store:
        lock = MaintenanceLock(store.r, ttl=3)
        with lock.held("s3://b/t", "compact") as check:
            check()
            with pytest.raises(MaintenanceBusyError, match="already running"), \
                    lock.held("s3://b/t", "vacuum"):
                pass
            store.r.delete(MaintenanceLock.key("s3://b/t"))  # Redis lost it
            with pytest.raises(LockLostError):
                check()
        assert lock.holder("s3://b/t") is None
        with lock.held("s3://b/t", "vacuum"):  # free again
            pass
