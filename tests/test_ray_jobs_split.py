"""Splitting one large text file into byte ranges: every row once, one schema, all or nothing."""

from __future__ import annotations

import io
import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.json as pajson
import pytest
import zstandard

import ray_jobs.process as process
import ray_jobs.readers as readers
import ray_jobs.writer as writer
from celeray.errors import CelerayError
from ray_jobs._line_range import ByteRange, LineRangeReader, SplitRefused
from ray_jobs.merge import merge_unit_results
from ray_jobs.process import process_unit
from ray_jobs.readers import read_batches
from ray_jobs.units import plan_units, skewed_ranges, split_ranges
from tests._plans import MiB, limits, plan

LIMITS = limits()
N = 3000


def records(n: int = N, *, sparse_from: int | None = None) -> list[dict[str, Any]]:
    """Rows with an id; ``opt`` is null before row ``sparse_from`` (always, if None)."""
    return [
        {
            "id": i,
            "name": f"n{i}" * (1 + i % 7),
            "v": i * 0.25,
            "opt": None if sparse_from is None or i < sparse_from else i,
        }
        for i in range(n)
    ]


def csv_of(rows: list[dict[str, Any]], *, eol: str = "\n", trailing: bool = True) -> bytes:
    lines = ["id,name,v,opt"]
    for r in rows:
        opt = "" if r["opt"] is None else r["opt"]
        lines.append(f"{r['id']},{r['name']},{r['v']},{opt}")
    return (eol.join(lines) + (eol if trailing else "")).encode()


def jsonl_of(rows: list[dict[str, Any]], *, trailing: bool = True) -> bytes:
    text = "\n".join(json.dumps({k: v for k, v in r.items() if v is not None}) for r in rows)
    return (text + ("\n" if trailing else "")).encode()


def awkward_cuts(data: bytes) -> list[list[int]]:
    """Offset lists (without 0 and size) that hit every awkward spot, 1 to 6 cuts each."""
    size = len(data)
    newline = data.index(b"\n", size // 3)
    spots = {
        "byte 1": 1,
        "at a newline": newline,
        "after a newline": newline + 1,
        "mid line": data.index(b"\n", size // 2) - 3,
        "size - 1": size - 1,
    }
    mid = [size // 7 * k + 5 for k in range(1, 7)]
    return [
        [spots["byte 1"]],
        [spots["at a newline"], spots["size - 1"]],
        [spots["byte 1"], spots["after a newline"], spots["mid line"]],
        sorted({spots["at a newline"], spots["after a newline"], *mid[:2]}),
        sorted({*mid[:4], spots["size - 1"]}),
        sorted({spots["byte 1"], *mid}),
    ]


def spans(size: int, cuts: list[int]) -> list[ByteRange]:
    edges = [0, *cuts, size]
    return [ByteRange(a, b, size) for a, b in pairwise(edges)]


def read_range(url: str, fmt: str, span: ByteRange, schema: Any = None) -> list[pa.RecordBatch]:
    return list(read_batches(url, fmt=fmt, schema=schema, limits=LIMITS, byte_range=span))


def put(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return path.as_uri()


def by_id(table: pa.Table) -> list[dict[str, Any]]:
    return table.sort_by("id").to_pylist()


# --- reading ranges ---------------------------------------------------------------------


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
@pytest.mark.parametrize("trailing", [True, False])
def test_csv_ranges_read_every_row_once(tmp_path: Path, eol: str, trailing: bool) -> None:
    data = csv_of(records(sparse_from=N - 200), eol=eol, trailing=trailing)
    url = put(tmp_path, "a.csv", data)
    whole = pacsv.read_csv(io.BytesIO(data))
    for cuts in awkward_cuts(data):
        parts = [read_range(url, "csv", span) for span in spans(len(data), cuts)]
        schemas = {b.schema for part in parts for b in part}
        assert schemas == {whole.schema}, cuts  # opt is all null in most ranges: still int64
        got = pa.Table.from_batches([b for part in parts for b in part], schema=whole.schema)
        assert got.num_rows == N and by_id(got) == by_id(whole), cuts


@pytest.mark.parametrize("trailing", [True, False])
def test_jsonl_ranges_read_every_row_once(tmp_path: Path, trailing: bool) -> None:
    data = jsonl_of(records(sparse_from=N - 200), trailing=trailing)
    url = put(tmp_path, "a.jsonl", data)
    whole = pajson.read_json(io.BytesIO(data))
    for cuts in awkward_cuts(data):
        parts = [read_range(url, "jsonl", span) for span in spans(len(data), cuts)]
        assert {b.schema for part in parts for b in part} == {whole.schema}, cuts
        got = pa.Table.from_batches([b for part in parts for b in part], schema=whole.schema)
        assert by_id(got) == by_id(whole), cuts


def test_declared_types_apply_to_every_range(tmp_path: Path) -> None:
    data = csv_of(records())
    url = put(tmp_path, "a.csv", data)
    for span in spans(len(data), [1000, 20_000]):
        for batch in read_range(url, "csv", span, schema={"v": "float32", "opt": "int16"}):
            assert batch.schema.field("v").type == pa.float32()
            assert batch.schema.field("opt").type == pa.int16()


def test_line_range_reader_edges() -> None:
    data = b"aa\nbbbb\ncc\n"

    def lines(start: int, end: int) -> bytes:
        return LineRangeReader(io.BytesIO(data), ByteRange(start, end, len(data))).read()

    assert lines(0, 1) == b"aa\n"  # the line holding byte end - 1 is finished
    assert lines(1, 3) == b""  # starts after the first newline at or after byte 0: none left
    assert lines(0, 3) == b"aa\n" and lines(3, 11) == b"bbbb\ncc\n"  # cut right after a newline
    assert lines(2, 3) == b"" and lines(3, 4) == b"bbbb\n"  # cut at a newline
    assert lines(4, 11) == b"cc\n" and lines(10, 11) == b""
    reader = LineRangeReader(io.BytesIO(b'a,"x"\nb,"y\n'), ByteRange(0, 11, 11))
    reader.read()
    assert reader.quotes == 3


def test_a_long_line_leaves_a_range_empty(tmp_path: Path) -> None:
    rows = records(300)
    rows[150]["name"] = "x" * 20_000
    data = csv_of(rows)
    url = put(tmp_path, "a.csv", data)
    start = data.index(b"x" * 100)
    cuts = [start + 1000, start + 5000, start + 15_000]
    parts = [read_range(url, "csv", span) for span in spans(len(data), cuts)]
    assert [sum(b.num_rows for b in p) for p in parts][1:3] == [0, 0]
    assert sum(b.num_rows for p in parts for b in p) == 300


# --- refusing the split -----------------------------------------------------------------


def test_compressed_content_and_changed_size_are_refused_for_every_range(tmp_path: Path) -> None:
    data = csv_of(records())
    url = put(tmp_path, "a.csv", zstandard.ZstdCompressor().compress(data))
    size = (tmp_path / "a.csv").stat().st_size
    with pytest.raises(SplitRefused, match="zstd") as info:
        read_range(url, "csv", ByteRange(size // 2, size, size))
    assert info.value.head
    url = put(tmp_path, "b.csv", data)
    with pytest.raises(SplitRefused, match="listed with") as info:
        read_range(url, "csv", ByteRange(0, 10, len(data) + 1))
    assert info.value.head


def test_a_quoted_line_break_at_the_start_refuses_the_split(tmp_path: Path) -> None:
    data = b'id,name\n1,"two\nlines"\n' + b"".join(b"%d,n\n" % i for i in range(2, 500))
    url = put(tmp_path, "a.csv", data)
    with pytest.raises(SplitRefused, match="quoted value") as info:
        read_range(url, "csv", ByteRange(len(data) // 2, len(data), len(data)))
    assert info.value.head


def test_a_quoted_value_across_a_cut_is_refused_by_its_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "SAMPLE_BYTES", 200)  # the sample sees no quoted line break
    rows = [b"%d,n%d" % (i, i) for i in range(400)]
    rows[300] = b'300,"spans\n301,two lines"'
    data = b"id,name\n" + b"\n".join(rows) + b"\n"
    url = put(tmp_path, "a.csv", data)
    inside = data.index(b'"spans') + 2  # the range ends at the line break inside the quotes
    first, second = spans(len(data), [inside])
    for span in (first, second):
        with pytest.raises(SplitRefused, match="odd number of quote") as info:
            read_range(url, "csv", span)
        assert not info.value.head
    after = data.index(b"lines") + 2  # the quoted value lies inside the first range
    parts = [read_range(url, "csv", span) for span in spans(len(data), [after])]
    assert sum(b.num_rows for part in parts for b in part) == 400


# --- planning ---------------------------------------------------------------------------


def test_plan_units_splits_large_text_files_only() -> None:
    plan = {"format": None}
    files = [
        {"url": "file:///in/a.csv", "size": 10},
        {"url": "file:///in/big.csv", "size": 1000},
        {"url": "file:///in/big.csv.zst", "size": 1000},
        {"url": "file:///in/big.jsonl.gz", "size": 1000},
        {"url": "file:///in/big.parquet", "size": 1000},
        {"url": "file:///in/big.jsonl", "size": 200},
        {"url": "file:///in/edge.csv", "size": 199},
        {"url": "file:///in/b.csv", "size": 10},
    ]
    units = plan_units(files, unit_bytes=100, plan=plan)
    shape = [(u[0]["url"].rsplit("/", 1)[1], len(u), u[0].get("range")) for u in units]
    assert shape == [
        ("a.csv", 1, None),
        *[("big.csv", 1, [i * 100, i * 100 + 100]) for i in range(10)],
        # compressed: ranges of the estimated text (4 x 1000), at most 4 of them
        *[("big.csv.zst", 1, r) for r in skewed_ranges(4000, 4)],
        *[("big.jsonl.gz", 1, r) for r in skewed_ranges(4000, 4)],
        ("big.parquet", 1, None),
        ("big.jsonl", 1, [0, 100]),
        ("big.jsonl", 1, [100, 200]),
        ("edge.csv", 1, None),  # under 2 x unit_bytes: read whole
        ("b.csv", 1, None),
    ]
    assert "range" not in files[1]  # copies, not the caller's dicts
    assert plan_units(files, unit_bytes=100, plan=plan) == units
    assert plan_units(files, unit_bytes=100) == plan_units(
        files, unit_bytes=100, plan={"split_large_files": False}
    )
    assert len(plan_units(files, unit_bytes=100)) == 8


def test_plan_units_format_and_split_bytes() -> None:
    files = [{"url": "s3://b/dump.txt", "size": 1000}]
    assert len(plan_units(files, unit_bytes=100, plan={"format": None})) == 1
    assert len(plan_units(files, unit_bytes=100, plan={"format": "csv"})) == 10
    assert len(plan_units(files, unit_bytes=100, plan={"format": "parquet"})) == 1
    assert len(plan_units(files, unit_bytes=2000, plan={"format": "csv"}, split_bytes=300)) == 4


def test_split_ranges_cover_exactly() -> None:
    for size, step in [(1000, 100), (1001, 100), (7, 3), (10**9 + 7, 32 * MiB)]:
        ranges = split_ranges(size, step)
        assert len(ranges) == -(-size // step)
        assert ranges[0][0] == 0 and ranges[-1][1] == size
        assert all(a[1] == b[0] for a, b in pairwise(ranges))
        assert all(0 < e - s <= step for s, e in ranges)


# --- process_unit over every range, then merge -------------------------------------------


def make_plan(**overrides: Any) -> dict[str, Any]:
    return plan(LIMITS, **overrides)


class Batch:
    """Files in tmp_path/in, outputs under tmp_path/out, units run one after another."""

    def __init__(self, root: Path) -> None:
        self.inputs = root / "in"
        self.inputs.mkdir()
        self.out = root / "out"

    def file(self, name: str, data: bytes) -> dict[str, Any]:
        path = self.inputs / name
        path.write_bytes(data)
        return {"url": path.as_uri(), "read_url": path.as_uri(), "size": len(data)}

    def run(
        self, files: list[dict[str, Any]], plan: dict[str, Any], *, unit_bytes: int
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        units = plan_units(files, unit_bytes=unit_bytes, plan=plan)
        results = [
            process_unit(
                plan, {"batch_id": "b1", "unit": i, "files": u, "out_url": self.out.as_uri()}
            )
            for i, u in enumerate(units)
        ]
        return results, merge_unit_results(results, [])

    def run_cuts(
        self, file: dict[str, Any], cuts: list[int], plan: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        edges = [0, *cuts, file["size"]]
        units = [{**file, "range": [a, b]} for a, b in pairwise(edges)]
        results = [
            process_unit(
                plan, {"batch_id": "b2", "unit": i, "files": [u], "out_url": self.out.as_uri()}
            )
            for i, u in enumerate(units)
        ]
        return results, merge_unit_results(results, [])

    def kept(self, merged: dict[str, Any]) -> pa.Table:
        paths = [str(self.out / o["path"]) for o in merged["outputs"]]
        return ds.dataset(paths, format="parquet").to_table() if paths else pa.table({})


@pytest.fixture
def batch(tmp_path: Path) -> Batch:
    return Batch(tmp_path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_ranges_and_merge_give_the_rows_of_the_whole_file(batch: Batch, fmt: str) -> None:
    data = (csv_of if fmt == "csv" else jsonl_of)(records(sparse_from=N - 100))
    big = batch.file(f"big.{fmt}", data)
    small = batch.file("small.csv", csv_of(records(10)))
    results, merged = batch.run([big, small], make_plan(), unit_bytes=len(data) // 6)
    count = len(split_ranges(len(data), len(data) // 6))
    assert [r["split"]["mode"] for r in results if "split" in r] == ["range"] * count
    assert sum(r["files_done"] for r in results) == 2
    assert merged["files"] == [
        {"url": big["url"], "rows_in": N, "bytes_in": len(data)},
        {"url": small["url"], "rows_in": 10, "bytes_in": small["size"]},
    ]
    assert merged["quarantined"] == []
    assert merged["rows_in"] == merged["rows_out"] == N + 10
    assert merged["bytes_out"] == sum(o["bytes"] for o in merged["outputs"])
    whole = (pacsv.read_csv if fmt == "csv" else pajson.read_json)(io.BytesIO(data))
    small_rows = pacsv.read_csv(io.BytesIO(csv_of(records(10)))).to_pylist()
    expected = sorted(whole.to_pylist() + small_rows, key=lambda r: (r["id"], r["name"]))
    got = sorted(batch.kept(merged).to_pylist(), key=lambda r: (r["id"], r["name"]))
    assert got == expected


def test_a_bad_row_in_range_2_quarantines_the_file_once(
    batch: Batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "SAMPLE_BYTES", 4096)  # the sample does not see the bad row
    lines = csv_of(records()).split(b"\n")
    bad_line = 5 * N // 6  # 1-based text line, header being line 1
    lines[bad_line - 1] = b"%d,x,1.0,1,extra" % (bad_line - 2)
    data = b"\n".join(lines)
    big = batch.file("big.csv", data)
    other = batch.file("other.csv", csv_of(records(5)))
    results, merged = batch.run([big, other], make_plan(), unit_bytes=len(data) // 3 + 1)
    modes = [r["split"]["mode"] for r in results if "split" in r]
    assert modes == ["range", "range", "whole"]  # the range that failed read the whole file
    assert [q["url"] for q in merged["quarantined"]] == [big["url"]]
    [q] = merged["quarantined"]
    assert q["kind"] == "parse" and q["line"] == bad_line  # the real line, not the range's
    assert merged["files"] == [{"url": other["url"], "rows_in": 5, "bytes_in": other["size"]}]
    assert merged["outputs"] == results[-1]["outputs"]  # the big file's ranges: all dropped
    assert merged["rows_in"] == merged["rows_out"] == 5


def test_a_type_the_sample_did_not_show_falls_back_to_the_whole_file(
    batch: Batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "SAMPLE_BYTES", 4096)  # opt is null all through the sample
    data = csv_of(records(sparse_from=N // 2))
    big = batch.file("big.csv", data)
    results, merged = batch.run([big], make_plan(), unit_bytes=len(data) // 4)
    modes = [r["split"]["mode"] for r in results]
    assert modes[0] == "range" and "whole" in modes
    assert merged["files"] == [{"url": big["url"], "rows_in": N, "bytes_in": len(data)}]
    table = batch.kept(merged)
    assert table.schema.field("opt").type == pa.int64()
    assert by_id(table) == by_id(pacsv.read_csv(io.BytesIO(data)))


def test_quoted_line_breaks_never_lose_or_double_rows(
    batch: Batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "SAMPLE_BYTES", 4096)
    rows = [b'%d,"n%d",%d' % (i, i, i) for i in range(N)]
    for i in range(N // 2, N, 97):  # values with line breaks, only past the sample
        rows[i] = b'%d,"two\nlines, %d",%d' % (i, i, i)
    data = b"id,name,v\n" + b"\n".join(rows) + b"\n"
    whole = by_id(pacsv.read_csv(io.BytesIO(data)))
    big = batch.file("late.csv", data)
    for unit_bytes in range(len(data) // 7, len(data) // 7 + 400, 37):  # cuts land everywhere
        results, merged = batch.run([big], make_plan(), unit_bytes=unit_bytes)
        assert by_id(batch.kept(merged)) == whole
    inside = data.index(b'"two') + 2
    results, merged = batch.run_cuts(big, [inside, inside + 1000], make_plan())
    assert [r["split"]["mode"] for r in results] == ["whole", "whole", "range"]
    assert by_id(batch.kept(merged)) == whole

    early = batch.file("early.csv", b'id,name,v\n0,"a\nb",0\n' + data.split(b"\n", 1)[1])
    results, merged = batch.run([early], make_plan(), unit_bytes=early["size"] // 6)
    assert [r["split"]["mode"] for r in results] == ["whole"] + ["skipped"] * (len(results) - 1)
    assert len(results) >= 6
    assert merged["files"][0]["rows_in"] == N + 1


def test_a_streamed_range_that_fails_late_leaves_no_files_behind(
    batch: Batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(process, "SMALL_FILE_BYTES", 10_000)  # ranges stream into the writer
    monkeypatch.setattr(writer, "MAX_ROWS_PER_GROUP", 200)  # and write files early
    monkeypatch.setattr(readers, "SAMPLE_BYTES", 4096)
    rows = [b'%d,"n%d",%d' % (i, i, i) for i in range(N)]
    rows[N // 3] = b'%d,"two\nlines",%d' % (N // 3, N // 3)
    data = b"id,name,v\n" + b"\n".join(rows) + b"\n"
    big = batch.file("big.csv", data)
    inside = data.index(b'"two') + 2  # the odd quote count shows only at the end of range 0
    results, merged = batch.run_cuts(big, [inside], make_plan(sql="SELECT * FROM input"))
    assert [r["split"]["mode"] for r in results] == ["whole", "whole"]
    on_disk = sorted(str(p.relative_to(batch.out)) for p in batch.out.rglob("*b2-u00000*"))
    assert on_disk == sorted(o["path"] for o in results[0]["outputs"])
    assert all("-f0000-" in path for path in on_disk)
    assert by_id(batch.kept(merged)) == by_id(pacsv.read_csv(io.BytesIO(data)))


def test_compressed_content_under_a_plain_name_is_read_whole_by_the_first_range(
    batch: Batch,
) -> None:
    packed = zstandard.ZstdCompressor(level=1).compress(csv_of(records(5 * N)))
    big = batch.file("big.csv", packed)
    results, merged = batch.run([big], make_plan(), unit_bytes=len(packed) // 3)
    assert [r["split"]["mode"] for r in results] == ["whole", "skipped", "skipped"]
    assert merged["files"] == [{"url": big["url"], "rows_in": 5 * N, "bytes_in": len(packed)}]


def test_rerunning_a_range_unit_overwrites_its_outputs(batch: Batch) -> None:
    data = csv_of(records())
    big = batch.file("big.csv", data)
    _, first = batch.run([big], make_plan(), unit_bytes=len(data) // 3 + 1)
    listing = sorted(p.name for p in batch.out.rglob("*.parquet"))
    _, second = batch.run([big], make_plan(), unit_bytes=len(data) // 3 + 1)
    assert sorted(p.name for p in batch.out.rglob("*.parquet")) == listing
    assert first["outputs"] == second["outputs"] and len(listing) == 3


# --- merge on its own -------------------------------------------------------------------


def unit_result(
    unit: int, *, span: list[int] | None, mode: str = "range", rows: int = 10, bad: bool = False
) -> dict[str, Any]:
    url = "file:///in/big.csv" if span else f"file:///in/u{unit}.csv"
    out = {"path": f"part-b-u{unit:05d}-s0-0.parquet", "rows": rows, "bytes": 100}
    result: dict[str, Any] = {
        "batch_id": "b",
        "unit": unit,
        "files": [] if bad else [{"url": url, "rows_in": rows, "bytes_in": 50}],
        "quarantined": [{"url": url, "kind": "parse", "error": "x", "line": 3, "row": 2}]
        if bad
        else [],
        "outputs": [] if bad else [out],
        "rows_in": 0 if bad else rows,
        "rows_out": 0 if bad else rows,
        "bytes_in": 0 if bad else 50,
        "bytes_out": 0 if bad else 100,
    }
    if span:
        result["split"] = {"url": url, "range": span, "size": 150, "mode": mode, "reason": None}
    return result


def test_merge_folds_ranges_and_keeps_other_files() -> None:
    pre = [{"url": "file:///in/pre.csv", "kind": "too_large", "error": "x"}]
    results = [
        unit_result(0, span=None),
        unit_result(1, span=[0, 50]),
        unit_result(2, span=[50, 100], rows=0),
        unit_result(3, span=[100, 150]),
        unit_result(4, span=None),
    ]
    merged = merge_unit_results(results, pre)
    assert [f["url"] for f in merged["files"]] == [
        "file:///in/u0.csv",
        "file:///in/big.csv",
        "file:///in/u4.csv",
    ]
    assert merged["files"][1] == {"url": "file:///in/big.csv", "rows_in": 20, "bytes_in": 150}
    assert merged["quarantined"] == pre
    assert len(merged["outputs"]) == 5
    assert (merged["rows_in"], merged["rows_out"]) == (40, 40)
    assert (merged["bytes_in"], merged["bytes_out"]) == (250, 500)


def test_merge_quarantines_a_file_once_and_drops_all_its_ranges() -> None:
    results = [
        unit_result(0, span=[0, 50]),
        unit_result(1, span=[50, 100], bad=True),
        unit_result(2, span=[100, 150], bad=True),
        unit_result(3, span=None),
    ]
    merged = merge_unit_results(results, [])
    assert [q["url"] for q in merged["quarantined"]] == ["file:///in/big.csv"]
    assert merged["files"] == [{"url": "file:///in/u3.csv", "rows_in": 10, "bytes_in": 50}]
    assert merged["outputs"] == results[3]["outputs"]
    assert (merged["rows_in"], merged["rows_out"], merged["bytes_out"]) == (10, 10, 100)


def test_merge_prefers_the_first_whole_read_and_checks_coverage() -> None:
    whole = unit_result(2, span=[100, 150], mode="whole", rows=30)
    results = [unit_result(0, span=[0, 50]), unit_result(1, span=[50, 100]), whole]
    later = unit_result(3, span=[100, 150], mode="whole", rows=30)
    merged = merge_unit_results([*results, later], [])
    assert merged["outputs"] == whole["outputs"] and merged["rows_in"] == 30
    with pytest.raises(CelerayError, match="do not cover"):
        merge_unit_results(results[:2], [])
    skipped = unit_result(1, span=[50, 100], mode="skipped")
    with pytest.raises(CelerayError, match="do not cover"):
        merge_unit_results([results[0], skipped, unit_result(2, span=[100, 150])], [])
    empty = [unit_result(i, span=[50 * i, 50 * i + 50], rows=0) for i in range(3)]
    assert merge_unit_results(empty, [])["quarantined"][0]["kind"] == "empty"
