"""Splitting one large compressed file into ranges of its decompressed text.

Every row once, the header applied to every range, the file's bytes counted once, and a
bad row reported with its real line by the whole-file read, whatever the estimate of the
text's length (too short: the last range reads on; too long: the last ranges are empty).
"""

from __future__ import annotations

import gzip
import io
from itertools import pairwise
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pytest
import zstandard

import ray_jobs.readers as readers
from ray_jobs._line_range import ByteRange, LineRangeReader, SplitRefused
from ray_jobs.dispatcher import _split_poison
from ray_jobs.merge import merge_unit_results
from ray_jobs.process import process_unit
from ray_jobs.readers import read_batches
from ray_jobs.units import (
    COMPRESSED_EXPANSION,
    MAX_COMPRESSED_RANGES,
    SKIP_COST,
    plan_units,
    range_size,
    skewed_ranges,
)
from tests._plans import limits, plan
from tests.test_ray_jobs_split import N, awkward_cuts, by_id, csv_of, jsonl_of, records

LIMITS = limits()


def zst(data: bytes, *, frames: int = 1) -> bytes:
    """``data`` as zstd: one streamed frame (no content size, as the bench writes) or
    ``frames`` frames one after another."""
    if frames == 1:
        out = io.BytesIO()
        with zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False) as w:
            w.write(data)
        return out.getvalue()
    cuts = [len(data) * i // frames for i in range(frames + 1)]
    return b"".join(zstandard.ZstdCompressor(level=1).compress(data[a:b])
                    for a, b in pairwise(cuts))  # fmt: skip


def compressed_spans(packed: int, text: int, cuts: list[int]) -> list[ByteRange]:
    edges = [0, *cuts, text]
    return [ByteRange(a, b, text, compressed=packed) for a, b in pairwise(edges)]


def read_ranges(url: str, fmt: str, spans: list[ByteRange]) -> list[pa.RecordBatch]:
    return [
        b
        for span in spans
        for b in read_batches(url, fmt=fmt, schema=None, limits=LIMITS, byte_range=span)
    ]


# --- reading ranges of the decompressed text ----------------------------------------------


@pytest.mark.parametrize("codec", ["zstd", "zstd-frames", "gzip"])
@pytest.mark.parametrize("estimate", [0.5, 1.0, 1.7])
def test_csv_ranges_of_compressed_text_read_every_row_once(
    tmp_path: Path, codec: str, estimate: float
) -> None:
    data = csv_of(records(sparse_from=N - 200))
    packed = gzip.compress(data) if codec == "gzip" else zst(data, frames=3 if "frames" in codec
                                                               else 1)  # fmt: skip
    path = tmp_path / ("a.csv.gz" if codec == "gzip" else "a.csv.zst")
    path.write_bytes(packed)
    whole = pacsv.read_csv(io.BytesIO(data))
    text = int(len(data) * estimate)  # the planner's guess of the text's length
    for cuts in awkward_cuts(data):
        cuts = [c for c in cuts if c < text]
        batches = read_ranges(path.as_uri(), "csv", compressed_spans(len(packed), text, cuts))
        assert {b.schema for b in batches} == {whole.schema}, cuts  # the header, every range
        got = pa.Table.from_batches(batches, schema=whole.schema)
        assert got.num_rows == N and by_id(got) == by_id(whole), (cuts, estimate)


def test_jsonl_ranges_of_compressed_text_read_every_row_once(tmp_path: Path) -> None:
    data = jsonl_of(records(sparse_from=N - 200))
    path = tmp_path / "a.jsonl.zst"
    path.write_bytes(packed := zst(data))
    whole = pajson.read_json(io.BytesIO(data))
    for cuts in awkward_cuts(data):
        batches = read_ranges(path.as_uri(), "jsonl", compressed_spans(len(packed), len(data),
                                                                       cuts))  # fmt: skip
        got = pa.Table.from_batches(batches, schema=whole.schema)
        assert by_id(got) == by_id(whole), cuts


def test_forward_line_range_reader_edges() -> None:
    data = b"aa\nbbbb\ncc\n"

    def lines(start: int, end: int, size: int = len(data)) -> bytes:
        span = ByteRange(start, end, size, compressed=1)
        return LineRangeReader(io.BufferedReader(io.BytesIO(data)), span).read()

    assert lines(0, 1) == b"aa\n" and lines(1, 3) == b""
    assert lines(3, 11) == b"bbbb\ncc\n" and lines(3, 4) == b"bbbb\n"
    assert lines(4, 5, size=5) == b"cc\n"  # the last range reads on past the estimate
    assert lines(8, 20, size=20) == b"cc\n" and lines(9, 20, size=20) == b""
    assert lines(15, 20, size=20) == b""  # starts past the end of the text


def test_a_range_refuses_content_that_does_not_fit_it(tmp_path: Path) -> None:
    data = csv_of(records(500))
    plain = tmp_path / "a.csv"
    plain.write_bytes(data)
    with pytest.raises(SplitRefused, match="not compressed") as info:
        list(read_batches(plain.as_uri(), fmt="csv", schema=None, limits=LIMITS,
                          byte_range=ByteRange(100, 200, 200, compressed=len(data))))  # fmt: skip
    assert info.value.head
    packed = tmp_path / "b.csv.zst"
    packed.write_bytes(zst(data))
    with pytest.raises(SplitRefused, match="listed with") as info:
        list(read_batches(packed.as_uri(), fmt="csv", schema=None, limits=LIMITS,
                          byte_range=ByteRange(100, 200, 200, compressed=7)))  # fmt: skip
    assert info.value.head


# --- planning -----------------------------------------------------------------------------


def test_compressed_files_split_into_few_ranges_of_their_estimated_text() -> None:
    files = [{"url": "file:///in/big.csv.zst", "size": 1000}]
    text = 1000 * COMPRESSED_EXPANSION
    units = plan_units(files, unit_bytes=100, plan={"format": None}, cpus=2)
    [first], [second] = units
    assert first["range"][0] == 0 and first["range"][1] == second["range"][0]
    assert second["range"][1] == text
    # the second range decompresses the first's text for nothing: it is given less
    assert first["range"][1] - text // 2 == round(text * SKIP_COST / (2 - SKIP_COST) / 2)
    assert all(u[0]["text_bytes"] == text == range_size(u[0]) for u in units)
    many = plan_units(files, unit_bytes=100, plan={"format": None}, cpus=64)
    assert len(many) == MAX_COMPRESSED_RANGES
    assert len(plan_units(files, unit_bytes=100, plan={"format": None}, cpus=1)) == 2
    assert len(plan_units(files, unit_bytes=text // 2 + 1, plan={"format": None})) == 1
    assert len(plan_units(files, unit_bytes=100, plan={"split_large_files": False})) == 1
    assert range_size({"url": "file:///a.csv", "size": 5, "range": [0, 5]}) == 5


# --- process_unit over every range, then merge ----------------------------------------------


def run(
    tmp_path: Path, name: str, packed: bytes, *, cpus: int, **overrides: Any
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    path = tmp_path / "in" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(packed)
    file = {"url": path.as_uri(), "read_url": path.as_uri(), "size": len(packed)}
    p = plan(LIMITS, **overrides)
    units = plan_units([file], unit_bytes=len(packed), plan=p, cpus=cpus)
    out = (tmp_path / "out").as_uri()
    results = [process_unit(p, {"batch_id": "b", "unit": i, "files": u, "out_url": out})
               for i, u in enumerate(units)]  # fmt: skip
    return file, results, merge_unit_results(results, [])


def kept(tmp_path: Path, merged: dict[str, Any]) -> pa.Table:
    paths = [str(tmp_path / "out" / o["path"]) for o in merged["outputs"]]
    return pa.concat_tables([pa.parquet.read_table(p) for p in paths])


def test_ranges_of_a_compressed_file_give_the_rows_of_the_whole_file(tmp_path: Path) -> None:
    data = csv_of(records(4 * N))
    file, results, merged = run(tmp_path, "big.csv.zst", zst(data), cpus=3,
                                sql="SELECT *, v * 2 AS w FROM input")  # fmt: skip
    assert [r["split"]["mode"] for r in results] == ["range"] * 3
    assert sum(r["files_done"] for r in results) == 1
    assert merged["quarantined"] == []
    assert merged["files"] == [{"url": file["url"], "rows_in": 4 * N, "bytes_in": file["size"]}]
    whole = pacsv.read_csv(io.BytesIO(data))
    got = kept(tmp_path, merged)
    assert got.column_names == [*whole.column_names, "w"]
    assert by_id(got.drop_columns(["w"])) == by_id(whole)
    names = sorted(o["path"] for o in merged["outputs"])
    _, _, again = run(tmp_path, "big.csv.zst", zst(data), cpus=3,
                      sql="SELECT *, v * 2 AS w FROM input")  # fmt: skip
    assert sorted(o["path"] for o in again["outputs"]) == names  # the same names each time


def test_a_bad_row_in_a_later_range_is_quarantined_with_its_real_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "SAMPLE_BYTES", 4096)  # the sample does not see the bad row
    lines = csv_of(records(4 * N)).split(b"\n")
    bad_line = 7 * N // 2  # 1-based text line, header being line 1: in the last range
    lines[bad_line - 1] = b"%d,x,1.0,1,extra" % (bad_line - 2)
    file, results, merged = run(tmp_path, "big.csv.zst", zst(b"\n".join(lines)), cpus=2)
    assert [r["split"]["mode"] for r in results] == ["range", "whole"]
    [q] = merged["quarantined"]
    assert (q["url"], q["kind"], q["line"]) == (file["url"], "parse", bad_line)
    assert merged["files"] == [] and merged["outputs"] == []


def test_a_truncated_compressed_file_is_quarantined_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "SAMPLE_BYTES", 4096)  # only the last range sees the end
    packed = zst(csv_of(records(30 * N)))  # past the 1 MiB read buffer of the sample
    file, results, merged = run(tmp_path, "big.csv.zst", packed[:-1000], cpus=2)
    assert [r["split"]["mode"] for r in results] == ["range", "whole"]
    [q] = merged["quarantined"]
    assert q["url"] == file["url"] and "truncated" in q["error"]


def test_a_poisoned_compressed_range_counts_against_its_text() -> None:
    file = {"url": "file:///in/big.csv.zst", "size": 10, "range": [20, 40], "text_bytes": 40}
    result = _split_poison({"batch_id": "b", "unit": 1, "files": [file]}, 2, "crash")
    assert isinstance(result, dict)
    assert result["split"]["size"] == 40 and result["files_done"] == 1


def test_a_row_longer_than_a_range_block_reads_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "RANGE_BLOCK_BYTES", 4096)  # under max_row_bytes (64 KiB)
    monkeypatch.setattr(readers, "SAMPLE_BYTES", 4096)
    rows = records(4 * N)
    rows[3 * N]["name"] = "x" * 10_000  # in the last range, longer than its blocks
    data = csv_of(rows)
    file, results, merged = run(tmp_path, "big.csv.zst", zst(data), cpus=2)
    assert [r["split"]["mode"] for r in results] == ["range", "whole"]
    assert merged["quarantined"] == []
    assert merged["files"] == [{"url": file["url"], "rows_in": 4 * N, "bytes_in": file["size"]}]
    assert by_id(kept(tmp_path, merged)) == by_id(pacsv.read_csv(io.BytesIO(data)))


def test_skewed_ranges_tile_and_shrink() -> None:
    for size, count in [(1000, 2), (10**9 + 7, 8), (7, 3), (5, 8), (4000, 1)]:
        ranges = skewed_ranges(size, count)
        assert ranges[0][0] == 0 and ranges[-1][1] == size and len(ranges) <= count
        assert all(a[1] == b[0] for a, b in pairwise(ranges))
        lengths = [e - s for s, e in ranges]
        assert all(n > 0 for n in lengths) and lengths == sorted(lengths, reverse=True)
        # each range's length plus the cost of its lead-in is about the same
        costs = [e - s + SKIP_COST * s for s, e in ranges]
        assert max(costs) - min(costs) <= 2 + size * 1e-9
    assert skewed_ranges(1000, 4, skip_cost=0) == [[0, 250], [250, 500], [500, 750], [750, 1000]]
