"""A run's end in the result backend, against the real Redis run state: the final state
is what stays, whichever of two batches ending at once writes last."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from celeray import runs
from celeray.errors import RunFailedError
from celeray.runstate import RunStore
from tests._stack import unit_store


class Backend:
    """The result backend's one call, kept in memory; ``before_next`` runs inside the
    next write, before it lands (another worker's step squeezed in between)."""

    def __init__(self) -> None:
        self.meta: dict[str, tuple[str, Any]] = {}
        self.before_next: Callable[[], None] | None = None

    def store_result(self, task_id: str, result: Any, state: str) -> None:
        hook, self.before_next = self.before_next, None
        if hook is not None:
            hook()
        self.meta[task_id] = (state, result)


@pytest.fixture
def store() -> Iterator[RunStore]:
    with unit_store(lock_ttl=30) as s:
        yield s


def _two_batches_finished(store: RunStore, run_id: str, *, error: str | None = None) -> None:
    store.create(run_id, "p", trigger="test")
    store.plan(run_id, ["b1", "b2"], files_total=2)
    assert store.finish_batch(run_id, "b1", {"files_done": 1, "rows_out": 3}) == 1
    assert store.finish_batch(run_id, "b2", {"files_done": 1, "rows_out": 4}, error=error) == 0


def test_a_progress_written_after_the_run_ended_does_not_stay(store: RunStore) -> None:
    # Batch 1 looked at the record (running), then batch 2, the last, ended the run and
    # stored SUCCESS, then batch 1's PROGRESS landed: seen in CI as a `run --wait` that
    # waited 300 s on a run its worker had logged as ended.
    backend = Backend()
    _two_batches_finished(store, "r1")
    backend.before_next = lambda: runs.end_run("r1", store, backend)
    runs.publish_progress("r1", store, backend)
    state, result = backend.meta["r1"]
    assert state == "SUCCESS"
    assert (result["rows_out"], result["files_done"], result["status"]) == (7, 2, "committed")


def test_a_failed_run_stays_failed_with_its_batches_error(store: RunStore) -> None:
    backend = Backend()
    _two_batches_finished(store, "r2", error="ValueError: bad row")
    backend.before_next = lambda: runs.end_run("r2", store, backend)
    runs.publish_progress("r2", store, backend)
    state, result = backend.meta["r2"]
    assert state == "FAILURE" and isinstance(result, RunFailedError)
    assert "1 of 2 batch(es) failed" in str(result) and "ValueError: bad row" in str(result)


def test_a_superseded_run_keeps_its_reason(store: RunStore) -> None:
    backend = Backend()
    _two_batches_finished(store, "r3")
    runs.abort_run("r3", "p", "superseded by run r4", store)
    runs.publish_progress("r3", store, backend)  # an ended run: nothing written
    assert "r3" not in backend.meta
    assert runs.final_result(store.get("r3") or {})[1] == "FAILURE"
    assert str(runs.final_result(store.get("r3") or {})[0]) == "superseded by run r4"


def test_progress_of_a_running_run_is_stored(store: RunStore) -> None:
    backend = Backend()
    store.create("r5", "p", trigger="test")
    store.plan("r5", ["b1", "b2"], files_total=2)
    store.finish_batch("r5", "b1", {"files_done": 1, "rows_out": 3})
    runs.publish_progress("r5", store, backend)
    state, result = backend.meta["r5"]
    assert state == "PROGRESS" and (result["files_done"], result["rows_out"]) == (1, 3)
    assert store.state("r5") == "RUNNING" and store.state("nope") is None
