"""The process's kept Delta snapshot, on real tables on a local disk: it follows every commit,
whoever makes it, carries the appends made from it without reloading, is held by one thread
at a time and passed to the next batch on any thread, and is never trusted for a table made
again under the same URL."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from celeray import delta_snapshot, delta_table
from celeray.ledger import Ledger
from celeray.schema_log import SchemaLog
from tests.test_delta_table import _batch, _delta_rows, _rows


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    delta_snapshot.forget()
    yield
    delta_snapshot.forget()


def _publish(sink: str, batch_id: str, start: int) -> delta_table.DeltaCommit:
    return delta_table.publish(Ledger(sink), _batch(sink, batch_id, _rows(2, start=start)))


def test_the_snapshot_follows_commits_of_any_writer(tmp_path: Path) -> None:
    sink = (tmp_path / "lake").as_uri()
    assert delta_snapshot.newest(sink) is None  # no table yet
    assert _publish(sink, "b0", 0).version == 0
    first = delta_snapshot.newest(sink)
    assert first.version() == 0
    delta_snapshot.keep(sink, first)
    assert _publish(sink, "b1", 10).version == 1  # celeray's own commit (a plain append)
    write_deltalake(str(tmp_path / "lake"), _rows(1, start=50), mode="append",
                    partition_by=["year", "month"])  # another engine's commit: version 2
    again = delta_snapshot.newest(sink)
    assert again is first and again.version() == 2  # the same snapshot, brought up to date
    assert again.table.version() == 2
    assert sorted(again.table.to_pyarrow_table().column("id").to_pylist()) == [0, 1, 10, 11, 50]


def test_a_table_made_again_under_the_same_url_is_loaded_afresh(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    sink = lake.as_uri()
    write_deltalake(str(lake), pa.table({"id": [1, 2]}))
    old = delta_snapshot.newest(sink)
    delta_snapshot.keep(sink, old)
    shutil.rmtree(lake)
    write_deltalake(str(lake), pa.table({"id": [7], "note": ["x"]}))  # version 0 again
    new = delta_snapshot.newest(sink)
    assert new is not old and new.metadata().id != old.metadata().id
    assert new.table.to_pyarrow_table().column("id").to_pylist() == [7]


def _in_another_thread(fn: Any) -> Any:
    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(fn()))
    worker.start()
    worker.join()
    return out[0]


def test_one_thread_at_a_time_holds_a_snapshot_and_the_next_batch_on_any_thread_gets_it(
    tmp_path: Path,
) -> None:
    sinks = []
    for i in range(delta_snapshot.MAX_TABLES + 1):
        path = tmp_path / f"lake{i}"
        write_deltalake(str(path), pa.table({"id": [i]}))
        sinks.append(path.as_uri())
    mine = delta_snapshot.newest(sinks[0])
    theirs = _in_another_thread(lambda: delta_snapshot.newest(sinks[0]))
    assert theirs is not mine and theirs.version() == mine.version()  # mine is held: loaded
    delta_snapshot.keep(sinks[0], theirs)
    delta_snapshot.keep(sinks[0], mine)
    assert _in_another_thread(lambda: delta_snapshot.newest(sinks[0])) is mine  # handed on
    delta_snapshot.keep(sinks[0], mine)
    for sink in sinks[1:]:  # one more than the process keeps: the least recently used goes
        delta_snapshot.keep(sink, delta_snapshot.newest(sink))
    assert delta_snapshot.newest(sinks[0]) is not mine
    last = delta_snapshot.newest(sinks[-1])
    delta_snapshot.keep(sinks[-1], last)
    assert delta_snapshot.newest(sinks[-1]) is last


def test_of_two_snapshots_given_back_the_newer_stays(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    sink = lake.as_uri()
    write_deltalake(str(lake), pa.table({"id": [1]}))
    older = delta_snapshot.newest(sink)
    newer = delta_snapshot.newest(sink)  # the first is held: a second load
    write_deltalake(str(lake), pa.table({"id": [2]}), mode="append")  # version 1
    assert newer.catch_up(sink) and newer.version() == 1 and older.version() == 0
    delta_snapshot.keep(sink, newer)
    delta_snapshot.keep(sink, older)  # given back late: the newer one stays
    assert delta_snapshot.newest(sink) is newer
    delta_snapshot.keep(sink, None)  # no table: nothing to keep
    delta_snapshot.keep(sink, delta_table.open_table(sink))  # not a snapshot: ignored
    assert delta_snapshot.newest(sink) is not newer  # newer is still out: loaded again


def test_plain_appends_written_by_celeray_read_back_in_every_reader(tmp_path: Path) -> None:
    sink = (tmp_path / "lake").as_uri()
    for i in range(12):  # past the new table's checkpoint interval (10)
        done = _publish(sink, f"b{i}", 10 * i)
        assert done.version == i and done.fresh
    expected = sorted(x for i in range(12) for x in (10 * i, 10 * i + 1))
    assert _delta_rows(sink) == expected
    assert sorted(pl.read_delta(str(tmp_path / "lake"))["id"].to_list()) == expected
    assert (tmp_path / "lake" / "_delta_log" / "00000000000000000009.checkpoint.parquet").exists()
    kept = delta_snapshot.newest(sink)  # renewed by the table loaded for the checkpoint
    assert kept is not None and kept.version() == 11 and kept.table.version() == 9
    history = DeltaTable(str(tmp_path / "lake")).history()
    assert {h.get("engineInfo") for h in history[:11]} == {"celeray"}  # 1..11: celeray's


def _counted_updates(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record each ``update_incremental`` (a listing of the whole log)."""
    updates: list[int] = []
    real = DeltaTable.update_incremental
    monkeypatch.setattr(DeltaTable, "update_incremental",
                        lambda self, *a, **k: (updates.append(1), real(self, *a, **k))[1])
    return updates


def test_own_appends_need_no_reload_until_another_writer_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = (tmp_path / "lake").as_uri()
    _publish(sink, "b0", 0)
    updates = _counted_updates(monkeypatch)
    for i in range(1, 6):  # celeray's own plain appends, one thread
        assert _publish(sink, f"b{i}", 10 * i) == delta_table.DeltaCommit(i, True)
    kept = delta_snapshot.newest(sink)
    assert updates == [] and kept.version() == 5 and kept.table.version() == 0
    assert delta_table._committed(kept, "b3")  # its own appends' app transactions
    delta_snapshot.keep(sink, kept)
    again = delta_table.publish(Ledger(sink), Ledger(sink).entries()[3])  # a redelivery
    assert again == delta_table.DeltaCommit(3, False)
    write_deltalake(str(tmp_path / "lake"), _rows(1, start=500), mode="append",
                    partition_by=["year", "month"])  # another engine: version 6
    assert _publish(sink, "b7", 70) == delta_table.DeltaCommit(7, True)
    assert updates == [1] and delta_snapshot.newest(sink).version() == 7
    expected = sorted([*(x for i in range(6) for x in (10 * i, 10 * i + 1)), 500, 70, 71])
    assert _delta_rows(sink) == expected
    assert sorted(DeltaTable(str(tmp_path / "lake")).to_pyarrow_table()
                  .column("id").to_pylist()) == expected


def test_a_commit_made_between_the_look_and_the_write_loses_and_goes_again(
    tmp_path: Path,
) -> None:
    sink = (tmp_path / "lake").as_uri()
    _publish(sink, "b0", 0)
    kept = delta_snapshot.newest(sink)  # version 0, nothing after it
    assert kept is not None and kept.version() == 0
    write_deltalake(str(tmp_path / "lake"), _rows(1, start=500), mode="append",
                    partition_by=["year", "month"])  # version 1, after the look
    done = delta_table.publish(Ledger(sink), _batch(sink, "b1", _rows(2, start=10)), kept)
    assert done == delta_table.DeltaCommit(2, True)  # version 1 was taken: it went again
    assert _delta_rows(sink) == [0, 1, 10, 11, 500]


def test_appends_a_snapshot_carries_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delta_snapshot, "MAX_APPENDS", 3)
    sink = (tmp_path / "lake").as_uri()
    _publish(sink, "b0", 0)
    for i in range(1, 8):
        assert _publish(sink, f"b{i}", 10 * i).version == i
    kept = delta_snapshot.newest(sink)
    assert kept.version() == 7 and kept.version() - kept.table.version() <= 3
    assert _delta_rows(sink) == sorted(x for i in range(8) for x in (10 * i, 10 * i + 1))


def _no_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each app-transaction look-up (delta-rs reads the log again for each)."""
    looked: list[str] = []
    real = delta_snapshot.Snapshot.transaction_version
    monkeypatch.setattr(delta_snapshot.Snapshot, "transaction_version",
                        lambda self, app: (looked.append(app), real(self, app))[1])
    return looked


def test_a_first_delivery_looks_nothing_up_and_a_redelivery_finds_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``runs.commit_result`` does: the snapshot read, then the entry written, then the
    commit from that snapshot with ``new_entry``: no version record or app transaction is
    looked up. The same entry delivered again (not new) is found committed, not doubled."""
    sink = (tmp_path / "lake").as_uri()
    _publish(sink, "b0", 0)
    looked = _no_lookups(monkeypatch)
    for i in range(1, 4):
        start = delta_snapshot.newest(sink)
        entry = _batch(sink, f"b{i}", _rows(2, start=10 * i))
        done = delta_table.publish(Ledger(sink), entry, start, new_entry=True)
        delta_snapshot.keep(sink, start)
        assert done == delta_table.DeltaCommit(i, True)
    assert looked == []
    b2 = next(e for e in Ledger(sink).entries() if e["batch_id"] == "b2")
    schema = SchemaLog(sink).at(int(b2["schema_version"])).table
    # delivered again, as after a kill between the Delta commit and its version record
    again = delta_table.commit_entry(sink, b2, schema, delta_snapshot.newest(sink))
    assert again == delta_table.DeltaCommit(2, False) and looked == ["celeray-b2"]
    assert _delta_rows(sink) == [0, 1, 10, 11, 20, 21, 30, 31]


def test_a_first_delivery_racing_a_republish_of_its_batch_commits_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry is new, but recovery publishes it between the entry and this commit: this
    commit loses the version, looks again, and finds the batch there."""
    sink = (tmp_path / "lake").as_uri()
    _publish(sink, "b0", 0)
    start = delta_snapshot.newest(sink)
    entry = _batch(sink, "b1", _rows(2, start=10))
    other: list[delta_table.DeltaCommit] = []
    worker = threading.Thread(target=lambda: other.append(delta_table.republish(Ledger(sink))))
    worker.start()  # another thread: a snapshot of its own (this one is held)
    worker.join()
    assert other == [1]
    done = delta_table.publish(Ledger(sink), entry, start, new_entry=True)
    assert done.version == 1 and _delta_rows(sink) == [0, 1, 10, 11]
    assert delta_table.open_table(sink).version() == 1  # one commit of b1


def test_two_threads_committing_to_one_table_hand_the_snapshot_on_and_commit_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the ray worker's threads do, batch after batch, at once: every batch commits once."""
    sink = (tmp_path / "lake").as_uri()
    _publish(sink, "b0", 0)
    entries = [_batch(sink, f"b{i}", _rows(2, start=10 * i)) for i in range(1, 41)]
    errors: list[BaseException] = []

    def commit(mine: list[dict[str, Any]]) -> None:
        try:
            for entry in mine:
                start = delta_snapshot.newest(sink)  # as runs.commit_result
                delta_table.publish(Ledger(sink), entry, start, new_entry=True)
                delta_snapshot.keep(sink, start)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=commit, args=(entries[k::2],)) for k in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert _delta_rows(sink) == sorted(x for i in range(41) for x in (10 * i, 10 * i + 1))
    table = delta_table.open_table(sink)
    assert table.version() == 40  # one commit per batch
    assert all(table.transaction_version(f"celeray-b{i}") == 1 for i in range(41))


def test_batches_on_alternate_threads_need_no_listing_of_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch on another thread than the one before it: each starts from the snapshot
    the one before gave back, so none loads the table or brings a snapshot up to date
    (kept per thread, every one did one or the other: a listing of the whole log)."""
    sink = (tmp_path / "lake").as_uri()
    _publish(sink, "b0", 0)
    updates = _counted_updates(monkeypatch)
    loads: list[str] = []
    load = delta_snapshot.open_table
    monkeypatch.setattr(delta_snapshot, "open_table", lambda s: (loads.append(s), load(s))[1])
    for i in range(1, 9):
        entry = _batch(sink, f"b{i}", _rows(2, start=10 * i))

        def commit(entry: dict[str, Any] = entry) -> delta_table.DeltaCommit:
            start = delta_snapshot.newest(sink)
            done = delta_table.publish(Ledger(sink), entry, start, new_entry=True)
            delta_snapshot.keep(sink, start)
            return done

        assert _in_another_thread(commit) == delta_table.DeltaCommit(i, True)
    assert updates == [] and loads == [sink]  # one: the create made no snapshot to keep
    assert _delta_rows(sink) == sorted(x for i in range(9) for x in (10 * i, 10 * i + 1))
