"""Delta add actions carry the files' column statistics (from the footer the writer wrote):
numRecords, minValues, maxValues, nullCount, only for types whose bounds readers can trust;
deltalake and Polars read them and skip files by value."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from celeray import delta_actions, delta_table
from celeray.ledger import Ledger
from celeray.schema_log import SchemaLog
from ray_jobs._file_stats import delta_stats
from ray_jobs.process import unit_prefix
from ray_jobs.writer import write_parquet

UTC = dt.UTC


def _footer(table: pa.Table, **options: Any) -> pq.FileMetaData:
    buf = io.BytesIO()
    pq.write_table(table, buf, **options)
    return pq.read_metadata(io.BytesIO(buf.getvalue()))


def test_stats_keep_only_trustworthy_bounds() -> None:
    table = pa.table({
        "id": pa.array([5, None, -3], pa.int64()),
        "small": pa.array([1, 2, 3], pa.int8()),
        "day": pa.array([dt.date(2013, 1, 2), dt.date(2013, 1, 1), None]),
        "at": pa.array([1_500, 1, None], pa.timestamp("us", tz="UTC")),
        "at_ns": pa.array([-1, 2_000_000_001, 3], pa.timestamp("ns", tz="America/New_York")),
        "naive": pa.array([1, 2, 3], pa.timestamp("s")),
        "name": ["a", None, "zz"],
        "ratio": [0.5, float("nan"), None],
        "flag": [True, False, None],
        "tags": pa.array([[1], None, [2]], pa.list_(pa.int64())),
    })  # fmt: skip
    stats = delta_stats(_footer(table, row_group_size=2))  # two row groups, combined
    assert stats["minValues"] == {"id": -3, "small": 1, "day": "2013-01-01",
                                  "at": "1970-01-01T00:00:00.000Z",
                                  "at_ns": "1969-12-31T23:59:59.999Z"}  # fmt: skip
    # maxima rounded up to the millisecond: 1500 us -> .002, 2 s + 1 ns -> 2.001
    assert stats["maxValues"] == {"id": 5, "small": 3, "day": "2013-01-02",
                                  "at": "1970-01-01T00:00:00.002Z",
                                  "at_ns": "1970-01-01T00:00:02.001Z"}  # fmt: skip
    assert stats["nullCount"] == {"id": 1, "small": 0, "day": 1, "at": 1, "at_ns": 0,
                                  "naive": 0, "name": 1, "ratio": 1, "flag": 1}  # fmt: skip


def test_stats_of_all_null_and_missing_statistics() -> None:
    table = pa.table({"id": pa.array([None, None, 7, 9], pa.int64())})
    stats = delta_stats(_footer(table, row_group_size=2))  # first group: all null
    assert (stats["minValues"], stats["maxValues"], stats["nullCount"]) == (
        {"id": 7}, {"id": 9}, {"id": 2})
    bare = delta_stats(_footer(table, write_statistics=False))
    assert bare == {"minValues": {}, "maxValues": {}, "nullCount": {}}


def _commit(sink: str, batch_id: str, table: pa.Table) -> None:
    outputs = write_parquet(
        iter(table.to_batches()), out_url=sink, partition_by=["year"], remove_stale=False,
        basename=unit_prefix(batch_id, 0, [{"url": f"file:///{batch_id}"}], "a0"),
    )  # fmt: skip
    assert all("stats" in o for o in outputs)
    version, _ = SchemaLog(sink).record(table.schema, table.schema, batch_id=batch_id,
                                        run_id="r")  # fmt: skip
    assert version is not None
    ledger = Ledger(sink)
    _fresh, stored = ledger.commit_entry({
        "batch_id": batch_id, "run_id": "r", "inputs": [], "quarantined": [],
        "outputs": outputs, "schema_version": version.version, "table_format": "delta",
        "delta": {"partition_by": ["year"]},
        "delta_actions": delta_actions.add_actions(outputs, ["year"]),
    })  # fmt: skip
    delta_table.publish(ledger, stored)


def _rows(start: int, n: int) -> pa.Table:
    return pa.table({
        "id": pa.array(range(start, start + n), pa.int64()),
        "name": [f"r{i}" for i in range(start, start + n)],
        "at": pa.array([dt.datetime(2013, 1, 1, tzinfo=UTC) + dt.timedelta(hours=i)
                        for i in range(start, start + n)], pa.timestamp("s", tz="UTC")),
        "year": [2013] * n,
    })  # fmt: skip


@pytest.fixture
def sink(tmp_path: Path) -> str:
    url = (tmp_path / "lake").as_uri()
    _commit(url, "b1", _rows(0, 100))
    _commit(url, "b2", _rows(1000, 50))
    return url


def test_deltalake_reads_the_stats_and_skips_files(sink: str) -> None:
    table = delta_table.open_table(sink)
    actions = pa.table(table.get_add_actions(flatten=True)).sort_by("num_records")
    assert actions["num_records"].to_pylist() == [50, 100]
    assert actions["min.id"].to_pylist() == [1000, 0]
    assert actions["max.id"].to_pylist() == [1049, 99]
    assert actions["null_count.name"].to_pylist() == [0, 0]
    assert actions["min.name"].to_pylist() == [None, None]  # strings: no bounds
    assert actions["max.at"].to_pylist()[1] == dt.datetime(2013, 1, 5, 3, tzinfo=UTC)
    data = table.to_pyarrow_dataset()
    wanted = pc.field("id") >= 1000
    assert len(list(data.get_fragments(filter=wanted))) == 1  # the other file skipped
    assert data.to_table(filter=wanted).num_rows == 50
    log = Path(delta_table.delta_uri(sink)) / "_delta_log" / f"{1:020d}.json"
    adds = [json.loads(line)["add"] for line in log.read_text().splitlines() if '"add"' in line]
    assert json.loads(adds[0]["stats"])["minValues"]["at"] == "2013-02-11T16:00:00.000Z"


def test_polars_reads_the_table_with_its_stats(sink: str) -> None:
    import polars as pl

    path = delta_table.delta_uri(sink)
    got = pl.scan_delta(path).filter(pl.col("id") >= 1000).select(pl.len()).collect()
    assert got.item() == 50
    assert pl.read_delta(path).height == 150
    assert ds.dataset(path, format="parquet", partitioning="hive").count_rows() == 150
