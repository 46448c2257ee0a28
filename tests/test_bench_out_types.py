"""The bench's comparison of output tables: column kinds per engine against celeray's."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.out_types import differences, kinds_of


def test_kinds_of_reads_the_first_data_file_not_celerays_own(tmp_path: Path) -> None:
    (tmp_path / "_celeray").mkdir()
    pq.write_table(pa.table({"other": [1]}), tmp_path / "_celeray" / "a.parquet")
    when = pa.array([0], pa.timestamp("us", tz="UTC"))
    table = pa.table({"n": pa.array([1], pa.int32()), "x": [1.5], "s": pa.array(["a"]),
                      "t": when, "l": pa.array(["b"], pa.large_string())})
    pq.write_table(table, tmp_path / "part-0.parquet")
    assert kinds_of(tmp_path) == {"n": "integer", "x": "float", "s": "text",
                                  "t": "timestamp", "l": "text"}
    assert kinds_of(tmp_path / "_celeray" / "none") is None


def test_differences_name_each_unlike_column() -> None:
    mine = {"year": "integer", "time_hour": "timestamp", "mph": "float"}
    rows = [
        {"set": "one-csv", "job": "sql", "engine": "celeray", "kinds": mine},
        {"set": "one-csv", "job": "sql", "engine": "duckdb", "kinds": dict(mine)},
        {"set": "one-csv", "job": "sql", "engine": "polars",
         "kinds": {"year": "integer", "time_hour": "text", "mph": "float", "extra": "text"}},
        {"set": "one-csv", "job": "sql", "engine": "raydata", "kinds": None},  # failed
    ]
    assert differences(rows) == [{
        "set": "one-csv", "job": "sql", "engine": "polars",
        "columns": [("time_hour", "text", "timestamp"), ("extra", "text", "-")],
    }]
