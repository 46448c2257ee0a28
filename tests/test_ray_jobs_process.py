"""ray_jobs.process: one unit end to end, each file all or nothing, retries idempotent."""

from __future__ import annotations

import gzip
import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import zstandard

import ray_jobs.process as process
import ray_jobs.transforms as transforms
import ray_jobs.writer as writer
from celeray.errors import InputError, TransformError
from ray_jobs.process import process_unit, unit_prefix
from ray_jobs.readers import read_batches
from tests._plans import limits, plan

LIMITS = limits()


def rows(start: int, n: int) -> list[dict[str, Any]]:
    return [
        {"year": 2013 + i % 2, "month": 1 + i % 12, "dep_delay": i % 60, "carrier": f"c{i % 5}"}
        for i in range(start, start + n)
    ]


def csv_of(records: list[dict[str, Any]]) -> bytes:
    lines = ["year,month,dep_delay,carrier"]
    lines += [f"{r['year']},{r['month']},{r['dep_delay']},{r['carrier']}" for r in records]
    return ("\n".join(lines) + "\n").encode()


def jsonl_of(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def parquet_of(records: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buf)
    return buf.getvalue()


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def make_plan(**overrides: Any) -> dict[str, Any]:
    defaults = {
        "pipeline": "flights",
        "schema": {"dep_delay": "int32"},
        "partition_by": ["year"],
        "threads": 2,
    }
    return plan(LIMITS, **{**defaults, **overrides})


class Landing:
    """Input files in tmp_path/in, output under tmp_path/out."""

    def __init__(self, root: Path) -> None:
        self.inputs = root / "in"
        self.inputs.mkdir()
        self.out = root / "out"

    def file(self, name: str, data: bytes) -> dict[str, Any]:
        path = self.inputs / name
        path.write_bytes(data)
        return {"url": path.as_uri(), "read_url": path.as_uri(), "size": len(data)}

    def unit(self, files: list[dict[str, Any]], unit: int = 3) -> dict[str, Any]:
        return {"batch_id": "b-42", "unit": unit, "files": files, "out_url": self.out.as_uri()}

    def parquet_files(self) -> list[str]:
        return sorted(str(p.relative_to(self.out)) for p in self.out.rglob("*.parquet"))

    def table(self) -> pa.Table:
        return ds.dataset(self.out, partitioning="hive").to_table()


@pytest.fixture
def landing(tmp_path: Path) -> Landing:
    return Landing(tmp_path)


def test_two_good_files_and_one_bad(landing: Landing) -> None:
    bad_csv = csv_of(rows(0, 100)).replace(b"\n2014,4,3,c3\n", b"\n2014,4,3,c3,extra\n")
    files = [
        landing.file("a.csv.zst", zst(csv_of(rows(0, 1000)))),
        landing.file("b.csv", bad_csv),
        landing.file("c.csv.gz", gzip.compress(csv_of(rows(1000, 500)))),
    ]
    result = process_unit(make_plan(), landing.unit(files))
    assert result["batch_id"] == "b-42" and result["unit"] == 3
    assert [f["url"] for f in result["files"]] == [files[0]["url"], files[2]["url"]]
    assert [f["rows_in"] for f in result["files"]] == [1000, 500]
    assert result["rows_in"] == result["rows_out"] == 1500
    assert result["bytes_in"] == files[0]["size"] + files[2]["size"]
    assert result["bytes_out"] == sum(o["bytes"] for o in result["outputs"]) > 0
    [q] = result["quarantined"]
    assert q["url"] == files[1]["url"] and q["kind"] == "parse" and q["line"] == 5
    assert "expected 4 columns, got 5" in q["error"]
    table = landing.table()
    assert table.num_rows == 1500  # none of the bad file's 100 rows
    assert table.schema.field("dep_delay").type == pa.int32()
    assert landing.parquet_files() == sorted(o["path"] for o in result["outputs"])
    assert all(
        Path(p).name.startswith(unit_prefix("b-42", 3, files) + "-s0-")
        for p in landing.parquet_files()
    )


def test_running_a_unit_twice_leaves_the_same_files(landing: Landing) -> None:
    files = [
        landing.file("a.jsonl", jsonl_of(rows(0, 800))),
        landing.file("b.parquet.zst", zst(parquet_of(rows(800, 300)))),
        landing.file("c.csv", b""),  # quarantined as empty
    ]
    first = process_unit(make_plan(), landing.unit(files))
    listing = landing.parquet_files()
    second = process_unit(make_plan(), landing.unit(files))
    assert landing.parquet_files() == listing
    assert first["outputs"] == second["outputs"]
    assert landing.table().num_rows == 1100
    assert [q["kind"] for q in second["quarantined"]] == ["empty"]


def test_retry_with_a_different_outcome_removes_stale_outputs(landing: Landing) -> None:
    good = landing.file("a.csv", csv_of(rows(0, 100)))
    process_unit(make_plan(), landing.unit([good]))
    (landing.inputs / "a.csv").write_bytes(b"year,month\n")  # the file went bad since
    result = process_unit(make_plan(), landing.unit([good]))
    assert result["outputs"] == [] and result["files"] == []
    assert landing.parquet_files() == []


def test_other_units_and_batches_are_left_alone(landing: Landing) -> None:
    files = [landing.file("a.csv", csv_of(rows(0, 100)))]
    process_unit(make_plan(), landing.unit(files, unit=1))
    process_unit(make_plan(), landing.unit(files, unit=10))
    process_unit(make_plan(), {**landing.unit(files, unit=1), "batch_id": "b-43"})
    process_unit(make_plan(), landing.unit(files, unit=1))
    assert landing.table().num_rows == 300


def test_read_url_is_read_and_url_is_reported(landing: Landing, tmp_path: Path) -> None:
    staged = landing.file("staged-0001.csv.zst", zst(csv_of(rows(0, 10))))
    bad_staged = landing.file("staged-0002.csv.zst", b"not zstd")
    files = [
        {**staged, "url": "sftp://host/landing/a.csv.zst"},
        {**bad_staged, "url": "sftp://host/landing/b.csv.zst"},
    ]
    result = process_unit(make_plan(), landing.unit(files))
    assert [f["url"] for f in result["files"]] == ["sftp://host/landing/a.csv.zst"]
    assert result["quarantined"][0]["url"] == "sftp://host/landing/b.csv.zst"
    assert result["quarantined"][0]["kind"] == "decompression"


def test_sql_and_transform(landing: Landing) -> None:
    files = [
        landing.file("a.csv", csv_of(rows(0, 600))),
        landing.file("b.jsonl", jsonl_of(rows(600, 600))),
    ]
    plan = make_plan(
        sql="SELECT year, carrier, count(*) AS n, sum(dep_delay)::BIGINT AS v "
        "FROM input GROUP BY ALL",
        transform="tests._sample_transforms:double_v",
        partition_by=["year", "carrier"],
    )
    result = process_unit(plan, landing.unit(files))
    table = landing.table()
    # one group of small files: the aggregation covers both files together
    assert table.num_rows == 10 and sum(table.column("n").to_pylist()) == 1200
    assert table.column("v2").to_pylist() == [v * 2 for v in table.column("v").to_pylist()]
    assert result["rows_in"] == 1200 and result["rows_out"] == 10


def test_incompatible_small_files_are_written_as_separate_groups(landing: Landing) -> None:
    text_delay = [dict(r, dep_delay=f"d{r['dep_delay']}") for r in rows(100, 50)]
    files = [
        landing.file("a.csv", csv_of(rows(0, 100))),
        landing.file("b.jsonl", jsonl_of(text_delay)),
    ]
    result = process_unit(make_plan(schema=None), landing.unit(files))
    names = {Path(o["path"]).name.rsplit("-", 1)[0] for o in result["outputs"]}
    prefix = unit_prefix("b-42", 3, files)
    assert names == {f"{prefix}-s0", f"{prefix}-s1"}
    assert result["rows_out"] == 150


def test_small_files_of_one_schema_share_groups_up_to_the_group_size(
    landing: Landing, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [landing.file(f"f{i}.csv", csv_of(rows(100 * i, 100))) for i in range(5)]
    one = pa.Table.from_pylist(rows(0, 100)).nbytes
    monkeypatch.setattr(process, "GROUP_BYTES", 2 * one + one // 2)  # two files a group
    result = process_unit(make_plan(schema=None), landing.unit(files))
    names = sorted({Path(o["path"]).name.rsplit("-", 1)[0] for o in result["outputs"]})
    prefix = unit_prefix("b-42", 3, files)
    assert names == [f"{prefix}-s0", f"{prefix}-s1", f"{prefix}-s2"]
    assert [f["rows_in"] for f in result["files"]] == [100] * 5
    assert sorted(landing.table().column("dep_delay").to_pylist()) == sorted(
        r["dep_delay"] for r in rows(0, 500))


def test_large_file_bad_midway_is_quarantined_and_its_outputs_removed(
    landing: Landing, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(process, "SMALL_FILE_BYTES", 10_000)  # all but small.csv are "large"
    monkeypatch.setattr(writer, "MIN_ROWS_PER_GROUP", 1000)  # flush early: partial files exist
    monkeypatch.setattr(transforms, "SQL_BATCH_ROWS", 2048)
    monkeypatch.setattr(transforms, "FAST_SQL_ROWS", 2048)  # the SQL's results stream out too
    removed: list[list[str]] = []

    def spy(*args: Any, **kwargs: Any) -> list[str]:
        removed.append(writer.remove_outputs(*args, **kwargs))
        return removed[-1]

    monkeypatch.setattr(process, "remove_outputs", spy)

    def slow_to_fail(*args: Any, **kwargs: Any) -> Iterator[pa.RecordBatch]:
        try:
            yield from read_batches(*args, **kwargs)
        except InputError:
            time.sleep(0.5)  # let pyarrow's writer threads put the earlier rows on disk
            raise

    monkeypatch.setattr(process, "read_batches", slow_to_fail)
    lines = csv_of(rows(0, 200_000)).split(b"\n")
    lines[199_960] = b"2014,8,oops,c4"  # data row 199 960, near the end
    bad = b"\n".join(lines)
    files = [
        landing.file("big-good.csv", csv_of(rows(0, 30_000))),
        landing.file("big-bad.csv", bad),
        landing.file("small.csv", csv_of(rows(0, 10))),
    ]
    result = process_unit(make_plan(sql="SELECT * FROM input"), landing.unit(files))
    assert [q["kind"] for q in result["quarantined"]] == ["schema"]
    assert "column 'dep_delay'" in result["quarantined"][0]["error"]
    assert result["quarantined"][0]["row"] == 199_960
    assert [f["rows_in"] for f in result["files"]] == [30_000, 10]
    prefix = unit_prefix("b-42", 3, files)
    assert {Path(p).name.rsplit("-", 1)[0] for p in landing.parquet_files()} == {
        f"{prefix}-f0000",
        f"{prefix}-s0",
    }
    assert landing.table().num_rows == 30_010
    assert removed[0] == []  # the unit's earlier outputs: none
    assert removed[1] and all(f"{prefix}-f0001-" in p for p in removed[1])


def test_transform_error_fails_the_unit(landing: Landing) -> None:
    files = [landing.file("a.csv", csv_of(rows(0, 10)))]
    with pytest.raises(TransformError, match="sql failed"):
        process_unit(make_plan(sql="SELECT nope FROM input"), landing.unit(files))
    with pytest.raises(TransformError, match=r"module 'tests\._nowhere' is not found"):
        process_unit(make_plan(transform="tests._nowhere:fn"), landing.unit(files))
    with pytest.raises(TransformError, match="partition column"):
        process_unit(make_plan(partition_by=["day"]), landing.unit(files))
    with pytest.raises(TransformError, match="unknown column type 'integer'"):
        process_unit(make_plan(schema={"year": "integer"}), landing.unit(files))
    with pytest.raises(TransformError, match="unknown format 'xml'"):
        process_unit(make_plan(format="xml"), landing.unit(files))


def test_threads_are_restored(landing: Landing) -> None:
    before = (pa.cpu_count(), pa.io_thread_count())
    process_unit(make_plan(threads=1), landing.unit([landing.file("a.csv", csv_of(rows(0, 5)))]))
    assert (pa.cpu_count(), pa.io_thread_count()) == before


def test_unit_prefix() -> None:
    files = [{"url": "file:///in/a.csv"}, {"url": "file:///in/b.csv", "range": [0, 100]}]
    assert re.fullmatch(r"part-b42-u00007-[0-9a-f]{8}", unit_prefix("b42", 7, files))
    odd = unit_prefix("2024-01-01/run 1", 7, files)
    assert odd.startswith("part-2024_01_01_run_1_") and "-u00007-" in odd
    assert unit_prefix("a-b", 1, files) != unit_prefix("a_b", 1, files)
    # the same unit number over other files (another plan of the batch): another name
    assert unit_prefix("b42", 7, files) == unit_prefix("b42", 7, [dict(f) for f in files])
    assert unit_prefix("b42", 7, files) != unit_prefix("b42", 7, files[:1])
    assert unit_prefix("b42", 7, files) != unit_prefix(
        "b42", 7, [files[0], {**files[1], "range": [0, 99]}])


def test_two_plans_of_one_batch_never_share_an_output_name(landing: Landing) -> None:
    """A batch planned as one unit, then (the cluster grew) as two: unit 0 of each plan
    holds other files, so their outputs must not overwrite each other in staging."""
    files = [landing.file(f"{n}.csv", csv_of(rows(i * 100, 100))) for i, n in enumerate("abc")]
    whole = process_unit(make_plan(), landing.unit(files, unit=0))
    first = process_unit(make_plan(), landing.unit(files[:2], unit=0))
    second = process_unit(make_plan(), landing.unit(files[2:], unit=1))
    outputs = [{o["path"] for o in r["outputs"]} for r in (whole, first, second)]
    assert not (outputs[0] & outputs[1]) and not (outputs[0] & outputs[2])
    assert set(landing.parquet_files()) == outputs[0] | outputs[1] | outputs[2]
    for paths, rows_out in zip(outputs, (300, 200, 100), strict=True):
        assert sum(pq.read_metadata(landing.out / p).num_rows for p in paths) == rows_out


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT *, dep_delay / month * 60 AS mph FROM input WHERE dep_delay > 0",
        "SELECT year, carrier, dep_delay * 2 AS d2 FROM input "
        "WHERE carrier IN ('c1', 'c2') OR dep_delay BETWEEN 5 AND 9",
        "SELECT * FROM input WHERE carrier LIKE 'c%' AND NOT (month <> 3) OR dep_delay IS NULL",
    ],
)
def test_sql_fast_path_writes_what_duckdb_writes(
    landing: Landing, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sql: str
) -> None:
    """The same unit (CSV, JSON lines, Parquet, NULLs, a text value rescued) with the SQL
    fast path and with DuckDB alone: the same rows, the same table schemas."""
    records = rows(0, 900)
    for r in records[::7]:
        r["dep_delay"] = None
    files = [
        landing.file("a.csv", csv_of(records[:300]).replace(b",c3\n", b",\n")),
        landing.file("b.jsonl", jsonl_of(records[300:600])),
        landing.file("c.parquet", parquet_of(records[600:])),
    ]
    read = pa.schema(
        [("year", pa.int64()), ("month", pa.int64()), ("dep_delay", pa.int32()),
         ("carrier", pa.string())]
    )  # fmt: skip
    assert transforms.fast_sql(sql, read, 1) is not None
    fast = process_unit(make_plan(sql=sql), landing.unit(files))
    fast_table = landing.table()
    monkeypatch.setattr(transforms, "fast_sql", lambda *args: None)
    duck = process_unit(make_plan(sql=sql), landing.unit(files))
    duck_table = landing.table()
    assert fast["table_schemas"] == duck["table_schemas"]
    assert fast["rows_out"] == duck["rows_out"] > 0
    assert fast_table.schema == duck_table.schema
    key = [(c, "ascending") for c in fast_table.column_names]
    assert fast_table.sort_by(key).equals(duck_table.sort_by(key))


def test_sql_and_transform_over_many_small_files_see_their_rows_joined(
    landing: Landing,
) -> None:
    """Small files are grouped into one Parquet file; the SQL and the callable then run
    over batches of many files' rows, not once per file, and every row comes out once."""
    files = [landing.file(f"f{i:02d}.csv", csv_of(rows(20 * i, 20))) for i in range(40)]
    plan = make_plan(sql="SELECT * FROM input WHERE dep_delay >= 0",
                     transform="tests._sample_transforms:tag_chunk", partition_by=[])
    result = process_unit(plan, landing.unit(files))
    table = landing.table()
    assert result["rows_in"] == result["rows_out"] == 800
    assert sorted(table.column("dep_delay").to_pylist()) == sorted(
        r["dep_delay"] for r in rows(0, 800))
    assert set(table.column("chunk_rows").to_pylist()) == {800}  # one call, not 40


def test_a_unit_told_each_files_types_writes_what_inference_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small CSVs whose kinds change from file to file: the guess (the last file's types,
    told where the first row proves them) changes nothing a user sees, rows or results."""
    def texts(i: int) -> list[str]:
        delay = ["5", "2.5", "NA", "true", "7"][i % 5]  # int, float, null, bool, int again
        stamp = ["2013-01-01T10:00:00Z", "2013-01-01 10:00:00", "2013-01-01"][i % 3]
        return [f"{i},{delay},c{i % 3},{stamp}", f"{i + 1},{delay},x,{stamp}"]

    def run(root: Path) -> tuple[dict[str, Any], list[pa.Table]]:
        landing = Landing(root)
        files = [landing.file(f"f{i:02d}.csv", ("id,delay,carrier,at\n" + "\n".join(texts(i))
                                                + "\n").encode()) for i in range(15)]  # fmt: skip
        files.append(landing.file("bad.csv", b"id,delay,carrier,at\n1,5,x,2013-01-01\n2,3\n"))
        result = process_unit(make_plan(schema=None, partition_by=[]), landing.unit(files))
        # the files' kinds differ, so their groups' schemas do: each output read alone
        return result, [pq.read_table(landing.out / p) for p in landing.parquet_files()]

    (tmp_path / "a").mkdir()
    told, told_tables = run(tmp_path / "a")
    monkeypatch.setattr(process.TypeGuess, "told", lambda self, data, declared: None)
    (tmp_path / "b").mkdir()
    inferred, inferred_tables = run(tmp_path / "b")
    assert len(told_tables) == len(inferred_tables) > 1
    for a, b in zip(told_tables, inferred_tables, strict=True):
        assert a.schema == b.schema and a.equals(b)
    def seen(result: dict[str, Any], root: Path) -> Any:
        return (
            [(Path(f["url"]).name, f["rows_in"]) for f in result["files"]],
            [(Path(q["url"]).name, q["kind"], q["line"], q["error"].replace(str(root), "~"))
             for q in result["quarantined"]],
            sorted(o["rows"] for o in result["outputs"]),
            result["rows_in"], result["rows_out"],
        )  # fmt: skip

    assert seen(told, tmp_path / "a") == seen(inferred, tmp_path / "b")
    assert [(q["kind"], q["line"]) for q in told["quarantined"]] == [("parse", 3)]
