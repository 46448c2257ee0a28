"""celeray demo: when beat's reconciliation pass ran the demo's files first, show that run."""

from collections.abc import Iterator

import pytest

from celeray.demo import committed_before
from celeray.runstate import RunStore
from tests._stack import unit_store


@pytest.fixture
def store() -> Iterator[RunStore]:
    with unit_store(lock_ttl=5) as s:
        yield s


def view(run_id: str, listed: int, skipped: int, state: str = "SUCCESS") -> dict:
    return {"run_id": run_id, "pipeline": "flights", "state": state,
            "result": {"files_listed": listed, "files_skipped": skipped}}


def test_the_run_that_committed_everything_first_is_the_one_shown(store: RunStore) -> None:
    store.create("r-reconcile", "flights", trigger="reconcile")
    store.end("r-reconcile", "flights", state="SUCCESS")
    store.create("r-demo", "flights", trigger="api")
    store.end("r-demo", "flights", state="SUCCESS")
    assert committed_before(store, view("r-demo", listed=24, skipped=24)) == "r-reconcile"


def test_a_run_that_did_the_work_itself_or_failed_is_shown_as_it_is(store: RunStore) -> None:
    store.create("r-reconcile", "flights", trigger="reconcile")
    store.end("r-reconcile", "flights", state="SUCCESS")
    store.create("r-demo", "flights", trigger="api")
    assert committed_before(store, view("r-demo", listed=24, skipped=0)) is None
    assert committed_before(store, view("r-demo", listed=24, skipped=10)) is None
    assert committed_before(store, view("r-demo", listed=0, skipped=0)) is None
    assert committed_before(store, view("r-demo", 24, 24, state="FAILURE")) is None


def test_no_earlier_successful_run_shows_the_demos_own(store: RunStore) -> None:
    store.create("r-failed", "flights", trigger="reconcile")
    store.end("r-failed", "flights", state="FAILURE")
    store.create("r-demo", "flights", trigger="api")
    assert committed_before(store, view("r-demo", listed=24, skipped=24)) is None
