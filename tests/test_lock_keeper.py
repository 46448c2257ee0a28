"""The process-wide run-lock keeper of the ray worker, against the real Redis."""

from collections.abc import Iterator

import pytest

from celeray.lock_keeper import keep_lock
from celeray.runstate import RunStore
from tests._stack import unit_store, wait_for

INTERVAL = 0.05  # seconds between renewals: the keeper's thread is the first caller's


@pytest.fixture
def store() -> Iterator[RunStore]:
    with unit_store(lock_ttl=30) as s:
        yield s


def _ttl_ms(store: RunStore, pipeline: str) -> int:
    return int(store.r.pttl(f"celeray:lock:{pipeline}"))


def test_keeps_locks_alive_reports_loss_and_stops_at_exit(store: RunStore) -> None:
    assert store.acquire("a", "ra") == "ra" and store.acquire("b", "rb") == "rb"
    store.r.pexpire("celeray:lock:a", 2_000)  # shorter than the TTL a renewal sets
    store.r.pexpire("celeray:lock:b", 2_000)
    with keep_lock("a", "ra", store=lambda: store, interval=INTERVAL) as lost_a:
        with keep_lock("b", "rb", store=lambda: store, interval=INTERVAL) as lost_b:
            wait_for(lambda: _ttl_ms(store, "a") > 2_000 and _ttl_ms(store, "b") > 2_000,
                     10, "both locks renewed", interval=0.02)
            store.release("b", "rb")
            assert store.acquire("b", "rb2") == "rb2"  # a newer run takes b's pipeline
            wait_for(lost_b.is_set, 10, "the superseded run told", interval=0.02)
            assert not lost_a.is_set()
        # b's block is left: its lock is never touched again, even when free
        store.release("b", "rb2")
        store.r.pexpire("celeray:lock:a", 2_000)
        wait_for(lambda: _ttl_ms(store, "a") > 2_000, 10, "a renewed after b left",
                 interval=0.02)
        assert store.holder("b") is None
    store.release("a", "ra")
    with keep_lock("c", "rc", store=lambda: store, interval=INTERVAL):
        assert store.acquire("c", "rc") == "rc"
        store.r.pexpire("celeray:lock:c", 2_000)
        wait_for(lambda: _ttl_ms(store, "c") > 2_000, 10, "the keeper still serving",
                 interval=0.02)
    assert store.holder("a") is None  # a's run ended: its free lock was not taken back
