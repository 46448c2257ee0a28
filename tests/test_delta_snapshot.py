"""A thread's kept Delta snapshot, on real tables on a local disk: it follows every commit,
whoever makes it, and is never trusted for a table made again under the same URL."""

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
    assert _publish(sink, "b1", 10).version == 1  # celeray's own commit (a plain append)
    write_deltalake(str(tmp_path / "lake"), _rows(1, start=50), mode="append",
                    partition_by=["year", "month"])  # another engine's commit: version 2
    again = delta_snapshot.newest(sink)
    assert again is first and again.version() == 2  # the same snapshot, brought up to date
    assert sorted(again.to_pyarrow_table().column("id").to_pylist()) == [0, 1, 10, 11, 50]


def test_a_table_made_again_under_the_same_url_is_loaded_afresh(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    sink = lake.as_uri()
    write_deltalake(str(lake), pa.table({"id": [1, 2]}))
    old = delta_snapshot.newest(sink)
    shutil.rmtree(lake)
    write_deltalake(str(lake), pa.table({"id": [7], "note": ["x"]}))  # version 0 again
    new = delta_snapshot.newest(sink)
    assert new is not old and new.metadata().id != old.metadata().id
    assert new.to_pyarrow_table().column("id").to_pylist() == [7]


def test_each_thread_keeps_its_own_and_only_a_few(tmp_path: Path) -> None:
    sinks = []
    for i in range(delta_snapshot.MAX_TABLES + 1):
        path = tmp_path / f"lake{i}"
        write_deltalake(str(path), pa.table({"id": [i]}))
        sinks.append(path.as_uri())
    mine = delta_snapshot.newest(sinks[0])
    theirs: list[Any] = []
    worker = threading.Thread(target=lambda: theirs.append(delta_snapshot.newest(sinks[0])))
    worker.start()
    worker.join()
    assert theirs[0] is not mine and theirs[0].version() == mine.version()
    for sink in sinks[1:]:  # one more than a thread keeps: the least recently used goes
        delta_snapshot.newest(sink)
    assert delta_snapshot.newest(sinks[0]) is not mine
    assert delta_snapshot.newest(sinks[-1]) is delta_snapshot.newest(sinks[-1])


def test_plain_appends_written_by_celeray_read_back_in_every_reader(tmp_path: Path) -> None:
    sink = (tmp_path / "lake").as_uri()
    for i in range(12):  # past the new table's checkpoint interval (10)
        done = _publish(sink, f"b{i}", 10 * i)
        assert done.version == i and done.fresh
    expected = sorted(x for i in range(12) for x in (10 * i, 10 * i + 1))
    assert _delta_rows(sink) == expected
    assert sorted(pl.read_delta(str(tmp_path / "lake"))["id"].to_list()) == expected
    assert (tmp_path / "lake" / "_delta_log" / "00000000000000000009.checkpoint.parquet").exists()
    history = DeltaTable(str(tmp_path / "lake")).history()
    assert {h.get("engineInfo") for h in history[:11]} == {"celeray"}  # 1..11: celeray's
