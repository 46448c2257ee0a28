"""BatchFlow: one batch's lease, poison check, convert, commit and release, in the core.

Real Redis (the unit tests' own database), real local files and ledger; the Ray side is
what the core is handed anyway, a converter, here one that reports a read without Ray.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeray.batch import ResolvedBatch, resolve
from celeray.batch_flow import BatchFlow
from celeray.errors import BatchBusyError
from celeray.ledger import Ledger
from celeray.pipelines import load_pipelines
from celeray.runs import begin_run
from celeray.runstate import RunStore
from celeray.settings import Settings
from tests._stack import REDIS_HOST, REDIS_PORT, UNIT_DB, unit_store


class Backend:
    """The result backend as the core sees it: what was stored, in order."""

    def __init__(self) -> None:
        self.stored: list[tuple[str, Any, str]] = []

    def store_result(self, task_id: str, result: Any, state: str) -> None:
        self.stored.append((task_id, result, state))


class Converter:
    """Reads every file as one row and writes nothing; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batch: ResolvedBatch, plan: dict[str, Any], *, deadline: float,
                 on_progress: Any) -> dict[str, Any]:  # fmt: skip
        self.calls += 1
        files = [{"url": f["url"], "rows_in": 1, "bytes_in": f["size"]} for f in batch.readable]
        return {"files": files, "quarantined": [], "outputs": [], "rejects": [],
                "rows_in": len(files), "rows_out": 0, "bytes_in": 0, "bytes_out": 0,
                "timings": {"units_s": 0.0, "units": 1, "nodes": {}}}  # fmt: skip


RUN = str(uuid.uuid4())


@pytest.fixture
def store() -> Iterator[RunStore]:
    with unit_store(lock_ttl=30) as s:
        yield s


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "landing").mkdir()
    (tmp_path / "landing" / "part-0.csv").write_text("a,b\n0,x\n")
    (tmp_path / "pipelines.toml").write_text(
        '[pipelines.p]\nsource = "landing/*.csv"\nsink = "lake/p"\n'
    )
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{UNIT_DB}"
    # run_lock_ttl=3: the process-wide lock keeper takes its renewal interval (a third of
    # it, at least 1 s) from its first caller, and tests/test_lock_keeper.py waits for it
    return Settings(home=tmp_path / "home", pipelines=tmp_path / "pipelines.toml",
                    broker_url=url, result_backend=url, max_deliveries=2,
                    run_lock_ttl=3)  # fmt: skip


def _batch(settings: Settings, store: RunStore) -> ResolvedBatch:
    pipeline = load_pipelines(settings.pipelines, **settings.pipeline_rules())["p"]
    [job] = begin_run(RUN, pipeline, store, trigger="api")["jobs"]
    return resolve(job, settings)


def _never(*_: Any) -> None:
    raise AssertionError("a local commit that works defers nothing")


def test_a_local_batch_is_converted_once_committed_and_ends_its_run(
    settings: Settings, store: RunStore
) -> None:
    batch, backend, convert = _batch(settings, store), Backend(), Converter()
    flow = BatchFlow(store, settings, backend, convert=convert, hostname="ray@h",
                     task_id="t-1")
    out = flow.transform(batch, retried=False, defer=_never)
    assert out == {"batch_id": batch.batch_id, "committed": True, "files": 1,
                   "quarantined": 0, "rows_out": 0}  # fmt: skip
    assert convert.calls == 1
    [entry] = Ledger(batch.sink).entries()
    assert entry["workers"] == {"transform": "ray@h", "commit": "ray@h"}
    assert entry["tasks"] == {"transform": "t-1", "commit": "t-1"}  # Flower's task pages
    assert set(entry["timings"]) == {"transform_s", "units_s", "units", "nodes",
                                     "transformed_by", "transform_task"}  # fmt: skip
    assert [(i, s) for i, _, s in backend.stored] == [(RUN, "SUCCESS")]
    # the lease was given back: another start may claim the batch
    assert store.claim_batch(batch.name, batch.batch_id, "next", 60) is None


def test_a_batch_whose_starts_keep_dying_is_quarantined_without_converting(
    settings: Settings, store: RunStore
) -> None:
    batch, convert = _batch(settings, store), Converter()
    for _ in range(settings.max_deliveries):  # starts that died: never ended
        store.begin_attempt(batch.name, batch.batch_id, run_id=batch.run_id)
    flow = BatchFlow(store, settings, Backend(), convert=convert)
    assert flow.transform(batch, retried=False, defer=_never)["quarantined"] == 1
    assert convert.calls == 0
    [entry] = Ledger(batch.sink).entries()
    assert [q["kind"] for q in entry["quarantined"]] == ["poison"]


def test_a_batch_another_start_holds_is_busy(settings: Settings, store: RunStore) -> None:
    batch = _batch(settings, store)
    assert store.claim_batch(batch.name, batch.batch_id, "other", 60) is None
    flow = BatchFlow(store, settings, Backend(), convert=Converter())
    with pytest.raises(BatchBusyError):
        flow.transform(batch, retried=False, defer=_never)


def test_a_start_that_dies_connecting_to_ray_is_no_poison_death(
    settings: Settings, store: RunStore
) -> None:
    """A worker that dies while connecting to Ray (its head down or restarting; RabbitMQ
    gives the batch back at once, to a worker that meets the head still coming back)
    counts no death and holds no lease; the next start converts the batch."""
    batch, convert = _batch(settings, store), Converter()

    def head_down() -> None:
        raise SystemExit("Ray's core ends the process: no GCS")  # as the process dying

    dying = BatchFlow(store, settings, Backend(), convert=convert, connect=head_down)
    for _ in range(settings.max_deliveries + 1):
        with pytest.raises(SystemExit):
            dying.transform(batch, retried=False, defer=_never)
    assert store.claim_batch(batch.name, batch.batch_id, "probe", 60) is None  # no lease kept
    store.release_batch(batch.name, batch.batch_id, "probe")
    flow = BatchFlow(store, settings, Backend(), convert=convert, connect=lambda: None)
    assert flow.transform(batch, retried=False, defer=_never)["quarantined"] == 0
    assert convert.calls == 1
