"""The reconciliation pass restarts what started runs left uncommitted, and nothing else.

Real Redis (the unit tests' own database, as run state and as the broker the pass sends to),
real local files, the real ledger; no worker: the test reads the message the pass sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celeray.celeryconfig import IO_QUEUE, make_client
from celeray.ledger import Ledger
from celeray.pipelines import load_pipelines
from celeray.reconcile import left_behind, reconcile
from celeray.runs import begin_run, finalize_run
from celeray.runstate import RunStore
from celeray.settings import Settings
from tests._stack import REDIS_HOST, REDIS_PORT, UNIT_DB, unit_store


@pytest.fixture
def store() -> Iterator[RunStore]:
    with unit_store(lock_ttl=30) as s:
        yield s


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "landing").mkdir()
    for i in range(3):
        (tmp_path / "landing" / f"part-{i}.csv").write_text(f"a,b\n{i},x\n")
    (tmp_path / "pipelines.toml").write_text(
        '[pipelines.p]\nsource = "landing/*.csv"\nsink = "lake/p"\nbatch_bytes = "1B"\n'
    )
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{UNIT_DB}"
    return Settings(home=tmp_path / "home", pipelines=tmp_path / "pipelines.toml",
                    broker_url=url, result_backend=url)  # fmt: skip


@pytest.fixture
def client(settings: Settings) -> Iterator[Any]:
    app = make_client(settings)
    yield app
    app.close()


def _pipeline(settings: Settings) -> Any:
    return load_pipelines(settings.pipelines, **settings.pipeline_rules())["p"]


def _sent() -> list[str]:
    """Ids of the start_run messages waiting on the io queue."""
    r = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=UNIT_DB)
    return [json.loads(m)["headers"]["id"] for m in r.lrange(IO_QUEUE, 0, -1)]


def _commit(pipeline: Any, urls: list[str], batch_id: str) -> None:
    entry = {"batch_id": batch_id, "run_id": "r", "inputs": [{"url": u} for u in urls]}
    Ledger(pipeline.sink).commit({**entry, "outputs": []})


def test_files_that_only_landed_start_no_run(settings: Settings, store: RunStore, client: Any):
    """A pipeline nobody ran yet: its files wait for its schedule or its user."""
    report = reconcile({"p": _pipeline(settings)}, store, client)
    assert report == {"p": {"uncommitted": 0}} and _sent() == []


def test_a_run_that_redis_forgot_is_restarted(
    settings: Settings, store: RunStore, client: Any
) -> None:
    """A run planned its batches, committed one, then Redis lost everything: the pass
    starts one run, for the files the ledger does not hold yet."""
    pipeline = _pipeline(settings)
    planned = begin_run("r1", pipeline, store, trigger="api")
    jobs = planned["jobs"]
    assert len(jobs) == 3
    _commit(pipeline, [f["url"] for f in jobs[0]["files"]], jobs[0]["batch_id"])
    store.r.flushdb()  # Redis restarted empty: the lock and the run are gone

    assert len(left_behind(pipeline)) == 2
    report = reconcile({"p": pipeline}, store, client)
    assert report["p"]["uncommitted"] == 2 and _sent() == [report["p"]["run_id"]]
    assert store.holder("p") == report["p"]["run_id"]


def test_while_a_run_holds_the_lock_the_pass_waits(
    settings: Settings, store: RunStore, client: Any
) -> None:
    pipeline = _pipeline(settings)
    begin_run("r1", pipeline, store, trigger="api")
    report = reconcile({"p": pipeline}, store, client)
    assert report == {"p": {"uncommitted": 3, "running": "r1"}} and _sent() == []
    assert len(Ledger(pipeline.sink).started()) == 1


def test_a_successful_run_drops_its_record_a_failed_one_keeps_it(
    settings: Settings, store: RunStore
) -> None:
    pipeline = _pipeline(settings)
    ledger = Ledger(pipeline.sink)
    jobs = begin_run("r1", pipeline, store, trigger="api")["jobs"]
    assert [r["run_id"] for r in ledger.started()] == ["r1"]
    assert sorted(ledger.started()[0]["inputs"]) == sorted(
        f["url"] for j in jobs for f in j["files"]
    )
    store.set_fields("r1", batches_failed=1)
    assert finalize_run("r1", store)["state"] == "FAILURE"
    assert [r["run_id"] for r in ledger.started()] == ["r1"]  # its files are retried

    jobs = begin_run("r2", pipeline, store, trigger="api")["jobs"]
    for job in jobs:
        _commit(pipeline, [f["url"] for f in job["files"]], job["batch_id"])
    assert finalize_run("r2", store)["state"] == "SUCCESS"
    assert [r["run_id"] for r in ledger.started()] == ["r1"]


def test_records_with_every_input_done_are_pruned(
    settings: Settings, store: RunStore, client: Any
) -> None:
    """r1 failed and r2 committed its files: the pass finds nothing to do and drops r1's
    record; a run that found nothing to do leaves no record at all."""
    pipeline = _pipeline(settings)
    ledger = Ledger(pipeline.sink)
    begin_run("r1", pipeline, store, trigger="api")
    store.set_fields("r1", batches_failed=1)
    finalize_run("r1", store)
    for job in begin_run("r2", pipeline, store, trigger="api")["jobs"]:
        _commit(pipeline, [f["url"] for f in job["files"]], job["batch_id"])
    store.r.flushdb()  # r2 never finalized: its record stays too

    assert len(ledger.started()) == 2
    assert reconcile({"p": pipeline}, store, client) == {"p": {"uncommitted": 0}}
    assert ledger.started() == [] and _sent() == []
    assert begin_run("r3", pipeline, store, trigger="api")["jobs"] == []
    assert ledger.started() == []
