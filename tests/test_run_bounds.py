"""Bounded runs: which files a run takes, the backlog it leaves, and when it chains."""

from __future__ import annotations

import pytest

from celeray.planner import plan_batches
from celeray.run_bounds import select_for_run, should_chain
from celeray.storage import FileInfo


def _f(name: str, size: int = 10, mtime: float | None = 0.0) -> FileInfo:
    return FileInfo(f"file:///in/{name}", size, mtime)


FILES = [_f("a", mtime=30), _f("b", mtime=10), _f("c", mtime=20), _f("d", mtime=10)]


def test_unbounded_takes_everything_in_listing_order() -> None:
    sel = select_for_run(FILES, None, None)
    assert sel.taken == FILES and (sel.backlog_files, sel.backlog_bytes) == (0, 0)


@pytest.mark.parametrize(("max_files", "taken"), [
    (1, ["b"]), (2, ["b", "d"]), (3, ["b", "c", "d"]), (4, ["a", "b", "c", "d"]),
    (100, ["a", "b", "c", "d"]),
])  # fmt: skip
def test_the_oldest_go_first_ties_by_url(max_files: int, taken: list[str]) -> None:
    sel = select_for_run(FILES, max_files, None)
    assert [f.url[-1] for f in sel.taken] == taken  # kept in listing order
    assert sel.backlog_files == 4 - len(taken) and sel.backlog_bytes == 10 * (4 - len(taken))


def test_bytes_bound_stops_at_the_first_file_that_does_not_fit() -> None:
    files = [_f("a", 40, 1), _f("b", 70, 2), _f("c", 5, 3)]
    sel = select_for_run(files, None, 100)
    # b does not fit after a; c would, but it is younger than b: the oldest go first
    assert [f.url[-1] for f in sel.taken] == ["a"]
    assert (sel.backlog_files, sel.backlog_bytes) == (2, 75)


def test_a_file_larger_than_the_bound_goes_alone() -> None:
    files = [_f("big", 500, 1), _f("small", 5, 2)]
    sel = select_for_run(files, None, 100)
    assert [f.url for f in sel.taken] == ["file:///in/big"] and sel.backlog_files == 1
    after = select_for_run(files[1:], None, 100)
    assert [f.url for f in after.taken] == ["file:///in/small"] and after.backlog_files == 0


def test_both_bounds_the_tighter_wins() -> None:
    files = [_f(str(i), 10, i) for i in range(10)]
    assert len(select_for_run(files, 3, 1000).taken) == 3
    assert len(select_for_run(files, 9, 25).taken) == 2


def test_no_mtime_counts_as_oldest_and_the_choice_is_deterministic() -> None:
    files = [_f("x", mtime=5), _f("y", mtime=None), _f("z", mtime=None)]
    assert [f.url[-1] for f in select_for_run(files, 2, None).taken] == ["y", "z"]
    backwards = select_for_run(list(reversed(files)), 2, None)
    assert [f.url[-1] for f in backwards.taken] == ["z", "y"]  # the same files, in given order


def test_a_backlog_drains_in_bounded_runs_every_file_once() -> None:
    listed = [_f(f"{i:04d}", 10, float(i % 7)) for i in range(2000)]
    done: dict[str, dict] = {}
    runs = []
    while True:
        plan = plan_batches("p", listed, done, batch_bytes=1000, max_files=500)
        if not plan.batches:
            break
        taken = [f for b in plan.batches for f in b.files]
        runs.append((len(taken), plan.backlog_files))
        for f in taken:
            assert f["url"] not in done
            done[f["url"]] = f
    assert runs == [(500, 1500), (500, 1000), (500, 500), (500, 0)]
    assert len(done) == 2000


def test_plan_without_bounds_is_unchanged() -> None:
    listed = [_f(n, 40, m) for n, m in (("a", 3), ("b", 2), ("c", 1))]
    plan = plan_batches("p", listed, {}, batch_bytes=100)
    assert [[f["url"][-1] for f in b.files] for b in plan.batches] == [["a", "b"], ["c"]]
    assert plan.backlog_files == 0


@pytest.mark.parametrize(("record", "chain"), [
    ({"state": "SUCCESS", "files_total": 5, "backlog_files": 3}, True),
    ({"state": "SUCCESS", "files_total": 5, "backlog_files": 0}, False),
    ({"state": "SUCCESS", "files_total": 0, "backlog_files": 3}, False),  # took nothing
    ({"state": "FAILURE", "files_total": 5, "backlog_files": 3}, False),  # never loops
    ({"state": "SUCCESS", "files_total": 5}, False),  # unbounded: no backlog recorded
])  # fmt: skip
def test_should_chain(record: dict, chain: bool) -> None:
    assert should_chain(record) is chain


# -- the chain, against the real Redis: once per run, through the lock, never after a failure


@pytest.fixture
def store():  # type: ignore[no-untyped-def]
    from tests._stack import unit_store

    with unit_store(lock_ttl=5) as s:
        yield s


class _Results:
    """Where end_run stores a run's end (the Celery result backend's one method)."""

    def __init__(self) -> None:
        self.stored: dict[str, tuple[object, str]] = {}

    def store_result(self, task_id: str, result: object, state: str) -> None:
        self.stored[task_id] = (result, state)


def _planned_run(store, run_id: str, *, backlog: int, fail: bool = False) -> None:  # type: ignore[no-untyped-def]
    from celeray.runs import reserve_run

    reserve_run(store, "p", run_id, trigger="test")
    store.plan(run_id, ["b1"], files_total=5, backlog_files=backlog, backlog_bytes=backlog * 10)
    store.finish_batch(run_id, "b1", {"files_done": 5}, error="boom" if fail else None)


def _reserving_chain(store, sent: list[str]):  # type: ignore[no-untyped-def]
    """A chain that takes the lock exactly as a trigger does (runs.reserve_run), without a
    broker: what matters here is the lock, not the message."""
    from celeray.runs import new_run_id, reserve_run

    def chain(pipeline: str) -> str:
        run_id = new_run_id()
        reserve_run(store, pipeline, run_id, trigger="backlog")
        sent.append(run_id)
        return run_id

    return chain


def test_a_run_with_a_backlog_chains_once_whoever_ends_it(store) -> None:  # type: ignore[no-untyped-def]
    from celeray.runs import after_batch, end_run

    sent: list[str] = []
    _planned_run(store, "r1", backlog=3)
    end_run("r1", store, _Results(), _reserving_chain(store, sent))
    after_batch("r1", None, store, _Results(), _reserving_chain(store, sent))  # ended again
    assert len(sent) == 1 and store.holder("p") == sent[0]
    assert store.get("r1")["chained"] == sent[0]
    assert store.get(sent[0])["trigger"] == "backlog"


def test_no_chain_after_a_failure_or_without_backlog(store) -> None:  # type: ignore[no-untyped-def]
    from celeray.runs import end_run

    sent: list[str] = []
    _planned_run(store, "r1", backlog=3, fail=True)
    end_run("r1", store, _Results(), _reserving_chain(store, sent))
    _planned_run(store, "r2", backlog=0)
    end_run("r2", store, _Results(), _reserving_chain(store, sent))
    assert sent == [] and store.holder("p") is None


def test_a_run_that_beat_started_meanwhile_takes_the_backlog(store) -> None:  # type: ignore[no-untyped-def]
    from celeray.runs import end_run

    sent: list[str] = []
    _planned_run(store, "r1", backlog=3)
    store.release("p", "r1")  # as the end does; then beat's run takes the lock first
    assert store.acquire("p", "beat-run") == "beat-run"
    end_run("r1", store, _Results(), _reserving_chain(store, sent))
    assert sent == [] and store.holder("p") == "beat-run"  # no second run
