"""ray_jobs.writer: hive-partitioned Parquet under names that a retry overwrites."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from celeray.errors import EmptyInputError, TransformError
from ray_jobs import writer
from ray_jobs.writer import remove_outputs, write_parquet


def flights(n: int, batch_rows: int = 1000) -> Iterator[pa.RecordBatch]:
    for start in range(0, n, batch_rows):
        ids = list(range(start, min(n, start + batch_rows)))
        yield pa.record_batch(
            {
                "year": [2013 + i % 2 for i in ids],
                "month": [1 + i % 3 for i in ids],
                "dep_delay": [i % 17 for i in ids],
            }
        )


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def write(root: Path, batches: Iterator[pa.RecordBatch], **kwargs) -> list[dict]:
    kwargs.setdefault("basename", "part-b1-u00000-s0")
    kwargs.setdefault("partition_by", ["year", "month"])
    return write_parquet(batches, out_url=root.as_uri(), **kwargs)


def test_partitioned_write(tmp_path: Path) -> None:
    outputs = write(tmp_path, flights(12_000))
    assert [o["path"] for o in outputs] == [
        f"year={y}/month={m}/part-b1-u00000-s0-0.parquet" for y in (2013, 2014) for m in (1, 2, 3)
    ]
    assert sum(o["rows"] for o in outputs) == 12_000
    for o in outputs:
        path = tmp_path / o["path"]
        assert o["bytes"] == path.stat().st_size
        meta = pq.ParquetFile(path).metadata
        assert meta.num_rows == o["rows"]
        assert meta.row_group(0).column(0).compression == "ZSTD"
        assert meta.schema.names == ["dep_delay"]  # partition columns live in the folders
    table = ds.dataset(tmp_path, partitioning="hive").to_table()
    assert table.num_rows == 12_000


def test_retry_overwrites_and_leaves_nothing_stale(tmp_path: Path) -> None:
    write(tmp_path, flights(12_000))
    (tmp_path / "_celeray").mkdir()
    (tmp_path / "_celeray" / "part-b1-u00000-s0-0.parquet").write_bytes(b"ledger, keep")
    (tmp_path / "part-b1-u00000-s01-0.parquet").write_bytes(b"another basename, keep")
    outputs = write(tmp_path, flights(4))  # fewer rows: fewer partitions than the first time
    assert [o["path"] for o in outputs] == [
        "year=2013/month=1/part-b1-u00000-s0-0.parquet",
        "year=2013/month=3/part-b1-u00000-s0-0.parquet",
        "year=2014/month=1/part-b1-u00000-s0-0.parquet",
        "year=2014/month=2/part-b1-u00000-s0-0.parquet",
    ]
    assert [f for f in files_under(tmp_path) if f.endswith(".parquet")] == sorted(
        [o["path"] for o in outputs]
        + ["_celeray/part-b1-u00000-s0-0.parquet", "part-b1-u00000-s01-0.parquet"]
    )
    table = ds.dataset(tmp_path, partitioning="hive", exclude_invalid_files=True).to_table()
    assert table.num_rows == 4


def test_same_work_twice_gives_the_same_files(tmp_path: Path) -> None:
    first = write(tmp_path, flights(5000))
    second = write(tmp_path, flights(5000))
    assert [(o["path"], o["rows"]) for o in first] == [(o["path"], o["rows"]) for o in second]
    assert len(files_under(tmp_path)) == len(first)


def test_no_partitions_and_compression_options(tmp_path: Path) -> None:
    outputs = write(
        tmp_path, flights(3000), partition_by=[], compression="gzip", compression_level=9
    )
    assert [o["path"] for o in outputs] == ["part-b1-u00000-s0-0.parquet"]
    meta = pq.ParquetFile(tmp_path / outputs[0]["path"]).metadata
    assert meta.row_group(0).column(0).compression == "GZIP"
    assert meta.schema.names == ["year", "month", "dep_delay"]


def test_row_groups_are_neither_tiny_nor_huge(tmp_path: Path) -> None:
    outputs = write(tmp_path, flights(300_000, batch_rows=500), partition_by=[])
    meta = pq.ParquetFile(tmp_path / outputs[0]["path"]).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sum(sizes) == 300_000
    assert max(sizes) <= 1024 * 1024
    assert min(sizes[:-1] or sizes) >= 128 * 1024  # 500-row batches are coalesced


def test_small_output_is_one_file_of_one_row_group(tmp_path: Path) -> None:
    outputs = write(tmp_path, flights(5000, batch_rows=700), partition_by=[])
    assert [(o["path"], o["rows"]) for o in outputs] == [("part-b1-u00000-s0-0.parquet", 5000)]
    meta = pq.ParquetFile(tmp_path / outputs[0]["path"]).metadata
    assert meta.num_row_groups == 1
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert outputs[0]["bytes"] == (tmp_path / outputs[0]["path"]).stat().st_size


@pytest.mark.parametrize("rows", [10_000, 10_500])  # ends on a row group's end, or inside one
def test_row_groups_written_while_the_next_is_read_keep_every_row_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: int
) -> None:
    monkeypatch.setattr(writer, "MAX_ROWS_PER_GROUP", 2000)
    outputs = write(tmp_path, flights(rows, batch_rows=500), partition_by=[])
    path = tmp_path / outputs[0]["path"]
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == (
        [2000] * (rows // 2000) + ([rows % 2000] if rows % 2000 else []))
    assert outputs[0]["rows"] == rows
    assert pq.read_table(path).column("dep_delay").to_pylist() == [i % 17 for i in range(rows)]


def test_a_source_failing_after_row_groups_were_written_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "ROW_GROUP_BYTES", 1000)  # every batch is a row group
    error = EmptyInputError("gone", url="file:///x")

    def source() -> Iterator[pa.RecordBatch]:
        yield from flights(20_000)
        raise error

    with pytest.raises(EmptyInputError) as info:
        write(tmp_path, source(), partition_by=[])
    assert info.value is error
    assert files_under(tmp_path) == []


def test_missing_partition_column(tmp_path: Path) -> None:
    with pytest.raises(TransformError, match="partition column\\(s\\) 'day' not in the data"):
        write(tmp_path, flights(10), partition_by=["year", "day"])
    assert files_under(tmp_path) == []


def test_zero_rows_write_nothing(tmp_path: Path) -> None:
    empty = pa.record_batch({"year": pa.array([], pa.int64()), "v": pa.array([], pa.int64())})
    assert write(tmp_path, iter([empty, empty]), partition_by=["year"]) == []
    assert write(tmp_path, iter([])) == []
    assert files_under(tmp_path) == []


def test_later_batch_with_another_schema(tmp_path: Path) -> None:
    def source() -> Iterator[pa.RecordBatch]:
        yield pa.record_batch({"year": [2013], "v": [1]})
        yield pa.record_batch({"year": [2013], "v": [2.5]})  # castable? no: 2.5 -> int64
        yield pa.record_batch({"year": [2013], "w": ["x"]})

    with pytest.raises(TransformError, match="does not fit the schema"):
        write(tmp_path, source(), partition_by=["year"])


def test_castable_later_batch_is_cast(tmp_path: Path) -> None:
    batches = [pa.record_batch({"v": [1, 2]}), pa.record_batch({"v": pa.array([3], pa.int32())})]
    outputs = write(tmp_path, iter(batches), partition_by=[])
    assert pq.read_table(tmp_path / outputs[0]["path"]).column("v").to_pylist() == [1, 2, 3]


@pytest.mark.parametrize("partition_by", [["year", "month"], []])  # dataset writer, one file
def test_errors_of_the_source_come_out_unchanged(tmp_path: Path, partition_by: list[str]) -> None:
    error = EmptyInputError("gone", url="file:///x")

    def source() -> Iterator[pa.RecordBatch]:
        yield from flights(10)
        raise error

    with pytest.raises(EmptyInputError) as info:
        write(tmp_path, source(), partition_by=partition_by)
    assert info.value is error
    assert [f for f in files_under(tmp_path) if f.endswith(".parquet")] == []


def test_remove_outputs(tmp_path: Path) -> None:
    write(tmp_path, flights(100), basename="part-b-u00001-s0")
    write(tmp_path, flights(100), basename="part-b-u00001-f0002")
    write(tmp_path, flights(100), basename="part-b-u00010-s0")
    removed = remove_outputs(tmp_path.as_uri(), r"part-b-u00001-[sf]\d+-\d+\.parquet")
    assert len(removed) == 12 and all("u00001" in p for p in removed)
    assert all("u00010" in p for p in files_under(tmp_path))
    assert remove_outputs((tmp_path / "absent").as_uri(), r".*") == []
