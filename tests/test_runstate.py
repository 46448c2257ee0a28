"""Run locks and records against the real Redis, in a database of the tests' own."""

from collections.abc import Iterator

import pytest

from celeray.runstate import RunStore
from tests._stack import unit_store


@pytest.fixture
def store() -> Iterator[RunStore]:
    with unit_store(lock_ttl=5) as s:
        yield s


def test_one_holder_at_a_time_and_fencing(store: RunStore) -> None:
    assert store.acquire("p", "r1") == "r1"
    assert store.acquire("p", "r2") == "r1"
    assert store.hold("p", "r1") and not store.hold("p", "r2")
    store.release("p", "r2")  # not the holder: no effect
    assert store.holder("p") == "r1"
    store.release("p", "r1")
    assert store.hold("p", "r1")  # its own free lock is taken back (it had expired)
    store.release("p", "r1")
    assert not store.hold("p", "r2")  # r2 never acquired it: no taking a free lock
    assert store.acquire("p", "r2") == "r2"  # a new run acquires the free lock
    assert not store.hold("p", "r1")  # the old run is fenced off
    store.release("p", "r2")
    assert not store.hold("p", "r1")  # ... for good: even once the lock is free again
    assert store.superseded("p", "r1") == "r2" and store.superseded("p", "r2") is None
    assert store.hold("p", "r2")


def test_batches_finish_once_and_counters_add_up(store: RunStore) -> None:
    store.create("r1", "p", trigger="test")
    store.plan("r1", ["b1", "b2"], files_total=3)
    store.set_batch_progress("r1", "b1", {"files_done": 1, "rows_out": 10})
    assert store.get("r1")["rows_out"] == 10
    assert store.finish_batch("r1", "b1", {"files_done": 2, "rows_out": 20}) == 1
    assert store.finish_batch("r1", "b1", {"files_done": 2, "rows_out": 20}) is None
    assert store.finish_batch("r1", "b2", {}, error="boom") == 0
    rec = store.get("r1")
    assert rec["state"] == "RUNNING" and rec["files_total"] == 3
    assert rec["files_done"] == 2 and rec["rows_out"] == 20
    assert rec["batches_done"] == 1 and rec["batches_failed"] == 1
    assert rec["errors"] == [{"batch_id": "b2", "error": "boom"}]
    assert store.recent("p") == ["r1"]


def test_attempts_count_the_starts_that_died(store: RunStore) -> None:
    assert store.begin_attempt("p", "b1") == 0  # the first start
    store.end_attempt("p", "b1")  # ended (well, or with an error that is retried)
    assert store.begin_attempt("p", "b1") == 0  # a retry: nothing died so far
    # ... that start is killed: no end_attempt
    assert store.begin_attempt("p", "b1") == 1  # redelivered: one death before it
    assert store.begin_attempt("p", "b1") == 2  # a resend, or a later run: counted too
    assert store.begin_attempt("p", "b2") == 0  # per batch
    assert store.begin_attempt("q", "b1") == 0  # per pipeline
    assert store.r.ttl("celeray:attempts:p") > 0


def test_a_slot_is_claimed_once_and_again_by_its_own_run(store: RunStore) -> None:
    assert store.claim_slot("p", 120, "r1", ttl=60)
    assert not store.claim_slot("p", 120, "r2", ttl=60)  # the second beat's send
    assert store.claim_slot("p", 120, "r1", ttl=60)  # r1 redelivered
    assert store.claim_slot("p", 180, "r2", ttl=60)  # the next slot
    assert 0 < store.r.ttl("celeray:slot:p:120") <= 60


def test_attempt_with_the_fencing_check_a_mark_and_end_in_one_trip(store: RunStore) -> None:
    store.create("r1", "p")
    assert store.acquire("p", "r1") == "r1"
    assert store.begin_attempt("p", "b1", run_id="r1", mark="first_unit_at") == 0
    first = store.get("r1")["first_unit_at"]
    assert store.begin_attempt("p", "b1", run_id="r1", mark="first_unit_at") == 1
    assert store.get("r1")["first_unit_at"] == first  # set once
    # not the holder: nothing marked, nothing counted
    assert store.begin_attempt("p", "b1", run_id="r2", mark="other") is None
    assert "other" not in store.get("r1")
    assert store.begin_attempt("p", "b1") == 2
    store.end("r2", "p", state="FAILURE")  # r2 does not hold p: its lock stays
    assert store.holder("p") == "r1"
    store.end("r1", "p", state="SUCCESS", finished_at=12.5)
    rec = store.get("r1")
    assert rec["state"] == "SUCCESS" and rec["finished_at"] == 12.5
    assert store.holder("p") is None
    store.end("r1", None, error="late")  # no pipeline: fields only
    assert store.get("r1")["error"] == "late"


def test_finishing_a_batch_marks_progress_and_renews_the_record(store: RunStore) -> None:
    store.create("r1", "p")
    store.plan("r1", ["b1"])
    store.r.hset("celeray:run:r1", "progress_at", 1.0)
    store.r.expire("celeray:run:r1", 5)
    assert store.finish_batch("r1", "b1", {"rows_out": 3}) == 0
    assert store.get("r1")["progress_at"] > 1.0
    assert store.r.ttl("celeray:run:r1") > 5
    store.r.hset("celeray:run:r1", "progress_at", 1.0)
    assert store.finish_batch("r1", "b1", {"rows_out": 3}) is None  # counted before
    assert store.get("r1")["progress_at"] == 1.0 and store.get("r1")["rows_out"] == 3


def test_one_start_of_a_batch_transforms_it_at_a_time(store: RunStore) -> None:
    """The transform lease: a second start of the batch is told who holds it; only the
    holder gives it back; it expires with the time limit when its holder died."""
    assert store.claim_batch("p", "b1", "start-1", ttl=30) is None
    assert store.claim_batch("p", "b1", "start-2", ttl=30) == "start-1"
    assert store.claim_batch("p", "b2", "start-2", ttl=30) is None  # another batch is free
    store.release_batch("p", "b1", "start-2")  # not its lease: nothing happens
    assert store.claim_batch("p", "b1", "start-3", ttl=30) == "start-1"
    assert 0 < store.r.ttl("celeray:busy:p:b1") <= 30
    store.release_batch("p", "b1", "start-1")
    assert store.claim_batch("p", "b1", "start-3", ttl=30) is None
