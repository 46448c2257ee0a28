"""Files read *into* a pinned table schema by a Ray task's body (process_unit, in-process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from celeray.table_schema import schema_from_json, schema_to_json
from ray_jobs._conform import Conformer, Options, bad_positions
from ray_jobs.process import process_unit
from tests._plans import plan

LIMITS = {
    "max_file_bytes": 1 << 30,
    "max_decompressed_bytes": 1 << 30,
    "max_row_bytes": 1 << 20,
    "zstd_max_window_bytes": 1 << 27,
    "max_columns": 1000,
}


def pinned(**columns: pa.DataType) -> dict[str, Any]:
    schema = pa.schema(list(columns.items()))
    return {"version": 0, "input": schema_to_json(schema), "table": schema_to_json(schema)}


def run(tmp_path: Path, files: dict[str, str | bytes], **plan_keys: Any) -> dict[str, Any]:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    listed = []
    for name, data in files.items():
        path = folder / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        listed.append({"url": path.as_uri(), "read_url": path.as_uri(),
                       "size": path.stat().st_size, "mtime": path.stat().st_mtime})  # fmt: skip
    unit = {"batch_id": "b", "unit": 0, "files": listed, "out_url": (tmp_path / "out").as_uri()}
    return process_unit(plan(LIMITS, **plan_keys), unit)


def written(tmp_path: Path) -> pa.Table:
    parts = sorted((tmp_path / "out").glob("*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts], promote_options="permissive")


def seen(result: dict[str, Any]) -> pa.Schema:
    (schema,) = [schema_from_json(s) for s in result["input_schemas"]]
    return schema


def test_csv_is_parsed_with_the_pinned_types_not_inferred(tmp_path: Path) -> None:
    """A zip code pinned as text keeps its leading zero; inference would make it 1234."""
    result = run(tmp_path, {"z.csv": "zip,n\n01234,1\n02345,2\n"},
                 table_schema=pinned(zip=pa.string(), n=pa.int64()))  # fmt: skip
    assert not result["quarantined"]
    assert written(tmp_path)["zip"].to_pylist() == ["01234", "02345"]


def test_a_csv_value_that_widens_the_pinned_type_widens_the_table(tmp_path: Path) -> None:
    result = run(tmp_path, {"f.csv": "id,v\n1,2\n2,2.5\n"},
                 table_schema=pinned(id=pa.int64(), v=pa.int64()))  # fmt: skip
    assert not result["quarantined"]
    assert seen(result).field("v").type == pa.float64()
    assert written(tmp_path)["v"].to_pylist() == [2.0, 2.5]


def test_a_csv_mismatch_names_column_value_types_and_line(tmp_path: Path) -> None:
    text = "id,v\n" + "".join(f"{i},{i}\n" for i in range(50)) + "50,B50\n"
    result = run(tmp_path, {"f.csv": text}, table_schema=pinned(id=pa.int64(), v=pa.int64()))
    (q,) = result["quarantined"]
    assert q["kind"] == "schema" and q["line"] == 52 and q["row"] == 51
    assert "column 'v': value 'B50' does not convert to int64" in q["error"]
    assert "the file's is string" in q["error"]


def test_jsonl_values_are_cast_to_the_pinned_types(tmp_path: Path) -> None:
    lines = [{"id": 1, "t": "2024-01-01T00:00:00", "s": 5}, {"id": 2, "s": 6}]
    result = run(tmp_path, {"f.jsonl": "".join(json.dumps(x) + "\n" for x in lines)},
                 table_schema=pinned(id=pa.int32(), t=pa.timestamp("us"), s=pa.string()))
    assert not result["quarantined"], result["quarantined"]
    table = written(tmp_path)
    assert table.schema.field("id").type == pa.int32()
    assert table["s"].to_pylist() == ["5", "6"] and table["t"].null_count == 1


def test_rescue_policy_keeps_the_raw_value_and_nulls_the_column(tmp_path: Path) -> None:
    result = run(tmp_path, {"f.csv": "id,v\n1,1\n2,oops\n3,3\n"},
                 table_schema=pinned(id=pa.int64(), v=pa.int64()), on_bad_rows="rescue",
                 max_bad_rows=0.5)  # fmt: skip
    table = written(tmp_path)
    assert table["v"].to_pylist() == [1, None, 3]
    rescued = [json.loads(r) if r else None for r in table["_rescued_data"].to_pylist()]
    assert rescued[1] == {"v": "oops", "_file_path": (tmp_path / "in/f.csv").as_uri()}
    assert rescued[0] is None and result["schema_counts"]["rows_rescued"] == 1


def test_max_bad_rows_counts_the_file_share(tmp_path: Path) -> None:
    result = run(tmp_path, {"f.csv": "id,v\n1,a\n2,b\n3,3\n"},
                 table_schema=pinned(id=pa.int64(), v=pa.int64()), on_bad_rows="skip",
                 max_bad_rows=0.5)  # fmt: skip
    (q,) = result["quarantined"]
    assert "2 of 3 rows are bad" in q["error"] and "max_bad_rows (50.0%)" in q["error"]
    assert not result["rejects"]  # a quarantined file's rejects are not kept


def test_declared_type_wins_and_a_missing_declared_column_reads_as_nulls(
    tmp_path: Path,
) -> None:
    result = run(tmp_path, {"f.csv": "id\n1\n"}, schema={"id": "int16", "extra": "string"})
    assert not result["quarantined"]
    table = written(tmp_path)
    assert table.schema.field("id").type == pa.int16()
    assert table["extra"].to_pylist() == [None]


def test_a_file_column_named_like_a_metadata_column_is_refused(tmp_path: Path) -> None:
    result = run(tmp_path, {"f.csv": "id,_batch_id\n1,x\n"}, metadata_columns=["_batch_id"])
    (q,) = result["quarantined"]
    assert "'_batch_id', which celeray fills itself" in q["error"]


@pytest.mark.parametrize("size", [1, 5, 40, 1000])
def test_bad_positions_finds_every_bad_value(size: int) -> None:
    values = [str(i) if i % 7 else f"x{i}" for i in range(size)]
    cast, bad = bad_positions(pa.array(values), pa.int64())
    assert bad == [i for i in range(size) if i % 7 == 0]
    assert cast.to_pylist() == [None if i % 7 == 0 else i for i in range(size)]


def test_conformer_fills_missing_pinned_columns_in_the_tables_order() -> None:
    opts = Options(pinned=pa.schema([("a", pa.int64()), ("b", pa.string())]))
    conformer = Conformer(opts, url="u", fmt="parquet")
    out = conformer.batch(pa.record_batch({"b": ["x"], "c": [1.5]}))
    assert out.schema.names == ["a", "b", "c"] and out["a"].to_pylist() == [None]
